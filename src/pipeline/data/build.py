"""Source -> TaskSet: the one path from an adapter config to a prepared task set, for a transfer
source or target (one task) and a multitask experiment (a label column per task) alike."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from pipeline.data import SPLITS, Source, TaskSet, TaskSpec
from pipeline.errors import PipelineError


def build_taskset(data_cfg: Any, split_cfg: Any, role: str, what: str | None = None, frame: TaskSet | None = None) -> TaskSet:
    """Instantiate the adapter `data_cfg`, split (its own splits, else `random_splits` with
    `split_cfg`'s val/test/seed), check every task is labelled in every split, standardise.

    role: what the set is for (`source`, `target`: one task; `multitask`), recorded in the provenance.
    what: how error messages name it (default `role`).
    frame: a transfer target's prepared source. The target is put in the source's frame: its
    feature columns matched to the source's by name, its features and regression labels mapped with
    the source's train-split statistics (`in_source_frame`), none computed from the target; else the
    set is standardised with its own train-split statistics.
    """
    from pipeline.data.splits import random_splits
    from pipeline.errors import instantiate

    what = what or role
    src = instantiate(data_cfg, what)
    if not isinstance(src, Source):
        raise PipelineError(f"{what}: data {data_cfg.get('_target_')!r} returned {type(src).__name__}, not a pipeline.data.Source")
    if role in ("source", "target") and len(src.tasks) != 1:
        names = [t.name for t in src.tasks]
        raise PipelineError(
            f"{what}: a transfer {role} has one task; data {data_cfg.get('_target_')!r} gives {len(names)} {names} (use a multitask experiment)"
        )
    where = f"{what} ({src.provenance['file']})" if "file" in src.provenance else what
    check_task_names(src.tasks, where)
    if src.splits is not None:
        splits = {s: np.sort(np.asarray(src.splits[s], dtype=np.int64)) for s in SPLITS}
        extra = {"splits": "predefined"}
    else:
        val, test, seed = float(split_cfg.val), float(split_cfg.test), int(split_cfg.seed)
        try:
            splits, how = random_splits(src.y, src.tasks, val, test, seed, src.groups)
        except PipelineError as exc:
            raise PipelineError(f"{what}: {exc}") from exc
        extra = {"splits": "random", "split_seed": seed, "split_val": val, "split_test": test, "split_stratified_by": how}
    check_labels(src.y, src.tasks, splits, where)
    if frame is None:
        x, names = src.x, src.feature_names
        scaling = feature_scaling(x, splits["train"]) if src.standardize else None
        y, tasks = standardize_targets(src.y, src.tasks, splits["train"], src.target_of_task)
        extra["frame"] = {"from": "own train split"}
    else:
        x, names, y, tasks, scaling, extra["frame"] = in_source_frame(src, frame, where)
    if scaling is not None:
        x = ((x - np.asarray(scaling["mean"], np.float32)) / np.asarray(scaling["std"], np.float32)).astype(np.float32)
        extra["standardized"], extra["feature_scaling"] = True, scaling
    prov = {**src.provenance, **extra, "role": role}
    if names:
        prov["feature_names"] = names
    return TaskSet(x=x, y=y, tasks=tasks, splits=splits, input_shape=src.input_shape, provenance=prov)


def in_source_frame(src: Source, frame: TaskSet, where: str) -> tuple:
    """A transfer target in its source's frame: (x, feature names, y, tasks, feature scaling, frame record).

    Features: columns matched by name and put in the source's order; standardised with the source's
    train mean and std where the source is standardised, raw where it is raw (the target's own
    `standardize` flag yields to the source's). A regression label y becomes (y - offset) / scale with
    the source's regression offset and scale, so an identical relation x -> y in both domains stays
    identical after preparation and the source model's outputs on target inputs are predictions in
    the target's standardised units; the TaskSpec carries that offset/scale, so metrics stay in the
    target's units. With a classification source the target's regression labels stay in their units
    (offset 0, scale 1): statistics of the target's labels would use labels the budgets do not have.
    """
    x = match_columns(src.x, src.feature_names, frame, where)
    names = frame.provenance.get("feature_names") or src.feature_names
    scaling = frame.provenance.get("feature_scaling")
    ref = next((t for t in frame.tasks if t.kind == "regression"), None)
    y, tasks = src.y.astype(np.float32), list(src.tasks)
    for t, task in enumerate(tasks):
        if task.kind == "regression":
            offset, scale = (ref.offset, ref.scale) if ref is not None else (0.0, 1.0)
            y[:, t] = (y[:, t] - offset) / scale
            tasks[t] = dataclasses.replace(task, offset=offset, scale=scale)
    note = {
        "from": "source",
        "source": frame.provenance.get("file", frame.provenance.get("adapter")),
        "features": "source train split" if scaling else "raw",
    }
    if any(t.kind == "regression" for t in tasks):
        note["labels"] = "source offset/scale" if ref else "raw units"
    return x, names, y, tasks, scaling, note


def match_columns(x: np.ndarray, names: list[str] | None, source: TaskSet, where: str) -> np.ndarray:
    """The target's feature columns in the source's order, matched by name.

    Extra target columns are an error, not dropped: a column the source never had is often a renamed
    one, or an id or label column read as a feature, and the fix (list `features:`) is one line.
    Without names on both sides (images) columns are matched by position and their number must agree.
    """
    source_names = source.provenance.get("feature_names")
    if not names or not source_names:
        if x.shape[1] != source.x.shape[1]:
            raise PipelineError(f"{where}: target inputs have {x.shape[1]} features, source inputs {source.x.shape[1]}; they must match")
        return x
    missing = [c for c in source_names if c not in names]
    extra = [c for c in names if c not in source_names]
    if missing or extra:
        parts = ([f"lacks the source's feature columns {missing}"] if missing else []) + (
            [f"has feature columns {extra} that the source lacks"] if extra else []
        )
        fix = "; list the shared ones as the target's `features:`" if extra and not missing else ""
        raise PipelineError(f"{where}: {' and '.join(parts)} (feature columns are matched by name){fix}")
    return x[:, [names.index(c) for c in source_names]]


def check_task_names(tasks: list[TaskSpec], where: str) -> None:
    """Task names (label columns, a long table's group values) become metric names, `test/<task>/acc`,
    which MLflow may store as paths and the reports split on '/'."""
    from pipeline.config import name_refusal

    for task in tasks:
        why = name_refusal(task.name)
        if why:
            raise PipelineError(f"{where}: task name {task.name!r} (a label column or group value) {why}")


def check_labels(y: np.ndarray, tasks: list[TaskSpec], splits: dict[str, np.ndarray], where: str) -> None:
    """Every task needs a labelled example in every split (to train, to select a model, to test),
    and a classification task every class in the train split (a class never trained on cannot be learnt)."""
    labelled = ~np.isnan(y)
    for t, task in enumerate(tasks):
        for name, idx in splits.items():
            if not labelled[idx, t].any():
                raise PipelineError(
                    f"{where}: task {task.name!r} has no labelled example in the {name} split "
                    f"({int(labelled[:, t].sum())} labelled rows in all); give it more labelled rows or drop it"
                )
        if task.kind == "classification":
            train = y[splits["train"], t]
            absent = [c for i, c in enumerate(task.classes) if not (train == i).any()]
            if absent:
                raise PipelineError(f"{where}: task {task.name!r}: classes {absent} have no labelled example in the train split; give them more rows")


def feature_scaling(x: np.ndarray, train: np.ndarray) -> dict:
    """Per-feature mean and std over the train split only, so validation and test stay unseen;
    a constant feature keeps std 1. Saved in the provenance: a transfer target reuses its source's."""
    mean, std = x[train].mean(0), x[train].std(0)
    std[std == 0] = 1.0
    return {"mean": mean.tolist(), "std": std.tolist()}


def standardize_targets(
    y: np.ndarray, tasks: list[TaskSpec], train: np.ndarray, target_of_task: list[str] | None = None
) -> tuple[np.ndarray, list[TaskSpec]]:
    """Each regression label column as z = (y - offset) / scale, offset and scale the mean and std of
    the column's labelled train rows (scale 1 if they are constant), so one learning rate suits any
    target unit; the TaskSpec keeps offset/scale so errors are reported in the original unit.

    target_of_task: the label column of each task (default its own). Tasks sharing a column are
    standardised once, with the mean and std over all their labelled train rows, and get the same
    offset/scale: per-task statistics would set every task's train mean to 0 and hide how far a
    small task's mean lies from the others', which pooling across tasks could otherwise learn.
    """
    y, tasks = y.astype(np.float32), list(tasks)
    column = list(target_of_task) if target_of_task is not None else [t.name for t in tasks]
    assert len(column) == len(tasks), f"target_of_task has {len(column)} entries for {len(tasks)} tasks"
    for name in dict.fromkeys(column[t] for t, task in enumerate(tasks) if task.kind == "regression"):
        members = [t for t, task in enumerate(tasks) if column[t] == name and task.kind == "regression"]
        values = y[np.ix_(train, members)]
        values = values[~np.isnan(values)]
        mean, std = float(values.mean()), float(values.std()) or 1.0
        for t in members:
            y[:, t] = (y[:, t] - mean) / std
            tasks[t] = dataclasses.replace(tasks[t], offset=mean, scale=std)
    return y, tasks
