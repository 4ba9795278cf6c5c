"""Source -> TaskSet: the one path from an adapter config to a prepared task set, for a transfer
source or target (one task) and a multitask experiment (a label column per task) alike."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from pipeline.data import SPLITS, Source, TaskSet, TaskSpec
from pipeline.errors import PipelineError


def build_taskset(data_cfg: Any, split_cfg: Any, role: str, what: str | None = None) -> TaskSet:
    """Instantiate the adapter `data_cfg`, split (its own splits, else `random_splits` with
    `split_cfg`'s val/test/seed), check every task is labelled in every split, standardise.

    role: what the set is for (`source`, `target`, `multitask`), recorded in the provenance.
    what: how error messages name it (default `role`).
    """
    from pipeline.data.splits import random_splits
    from pipeline.errors import instantiate

    what = what or role
    src = instantiate(data_cfg, what)
    if not isinstance(src, Source):
        raise PipelineError(f"{what}: data {data_cfg.get('_target_')!r} returned {type(src).__name__}, not a pipeline.data.Source")
    where = f"{what} ({src.provenance['file']})" if "file" in src.provenance else what
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
    train = splits["train"]
    x = src.x
    if src.standardize:
        x = standardize_features(x, train)
        extra["standardized"] = True
    y, tasks = standardize_targets(src.y, src.tasks, train)
    prov = {**src.provenance, **extra, "role": role}
    if src.feature_names:
        prov["feature_names"] = src.feature_names
    return TaskSet(x=x, y=y, tasks=tasks, splits=splits, input_shape=src.input_shape, provenance=prov)


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


def standardize_features(x: np.ndarray, train: np.ndarray) -> np.ndarray:
    """z = (x - mean) / std per feature, mean and std over the train split only so validation and
    test stay unseen; a constant feature keeps std 1."""
    mean, std = x[train].mean(0), x[train].std(0)
    std[std == 0] = 1.0
    return ((x - mean) / std).astype(np.float32)


def standardize_targets(y: np.ndarray, tasks: list[TaskSpec], train: np.ndarray) -> tuple[np.ndarray, list[TaskSpec]]:
    """Each regression target as z = (y - offset) / scale, offset and scale the mean and std of the
    task's labelled train rows (scale 1 if they are constant), so one learning rate suits any target
    unit; the TaskSpec keeps offset/scale so errors are reported in the original unit."""
    y, tasks = y.astype(np.float32), list(tasks)
    for t, task in enumerate(tasks):
        if task.kind == "regression":
            values = y[train, t][~np.isnan(y[train, t])]
            mean, std = float(values.mean()), float(values.std()) or 1.0
            y[:, t] = (y[:, t] - mean) / std
            tasks[t] = dataclasses.replace(task, offset=mean, scale=std)
    return y, tasks
