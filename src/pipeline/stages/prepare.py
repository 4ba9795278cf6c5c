"""prepare: data sources -> the experiment's task sets, with fixed splits.

A transfer experiment gets a source and a target task set; a multitask experiment one task set
with a label column per task. Stages after this one never read raw data. Label budgets are drawn
later, per seed, from the target's train split; here we only check that every budget can be met.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from omegaconf import DictConfig

from pipeline.errors import PipelineError
from pipeline.stages import experiment, experiment_kind, hydra_entry, layout


def _instantiate(source_cfg: Any, role: str):
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        return instantiate(source_cfg)
    except InstantiationException as exc:
        cause = exc.__cause__
        if isinstance(cause, PipelineError):
            raise PipelineError(f"{role}: {cause}") from None
        raise PipelineError(f"{role}: cannot build data source {source_cfg.get('_target_')!r}: {exc}") from None


def build_taskset(source_cfg: Any, split: Any, role: str):
    from pipeline.data import TaskSet, stratified_splits

    src = _instantiate(source_cfg, role)
    splits = stratified_splits(src.y, src.task.kind, float(split.val), float(split.test), int(split.seed))
    x = src.x
    extra = {}
    if src.standardize:
        # Train-split statistics only, so validation and test stay unseen.
        mean, std = x[splits["train"]].mean(0), x[splits["train"]].std(0)
        std[std == 0] = 1.0
        x = ((x - mean) / std).astype(np.float32)
        extra = {"standardized": True}
    y, task = src.y, src.task
    if task.kind == "regression":
        # Standardised with train-split statistics so one learning rate suits any target unit;
        # TaskSpec keeps offset/scale so RMSE is reported in the original unit.
        mean, std = float(y[splits["train"]].mean()), float(y[splits["train"]].std()) or 1.0
        y = ((y - mean) / std).astype(np.float32)
        task = dataclasses.replace(task, offset=mean, scale=std)
    prov = {**src.provenance, **extra, "split_seed": int(split.seed), "role": role}
    if src.feature_names:
        prov["feature_names"] = src.feature_names
    return TaskSet(x=x, y=y.reshape(-1, 1), tasks=[task], splits=splits, input_shape=src.input_shape, provenance=prov)


def random_splits(y: np.ndarray, tasks: list, val: float, test: float, seed: int, groups: np.ndarray | None = None) -> tuple[dict[str, np.ndarray], str]:
    """Random train/val/test indices, and how they were stratified.

    Rows of one group stay together (fractions count groups). Otherwise strata: the class when
    there is one classification task, the task when every row is labelled for exactly one task
    (so each task gets its share of every split), else none.
    """
    if not (val > 0 and test > 0 and val + test < 1):
        raise PipelineError(f"split: val={val} and test={test} must be positive and sum to less than 1")
    rng = np.random.default_rng(seed)
    labelled = ~np.isnan(y)
    if groups is not None:
        units, row_unit = np.unique(groups, return_inverse=True)
        strata, how = np.zeros(len(units), dtype=int), "grouped"
    else:
        row_unit = np.arange(len(y))
        if len(tasks) == 1 and tasks[0].kind == "classification":
            strata, how = np.where(labelled[:, 0], y[:, 0], -1), "class"
        elif len(tasks) > 1 and (labelled.sum(1) == 1).all():
            strata, how = labelled.argmax(1), "task"
        else:
            strata, how = np.zeros(len(y), dtype=int), "none"
    part = np.empty(len(strata), dtype=int)  # 0 train, 1 val, 2 test, per unit
    for s in np.unique(strata):
        members = rng.permutation(np.flatnonzero(strata == s))
        n_test, n_val = (int(np.floor(f * len(members) + 0.5)) for f in (test, val))
        part[members] = 0
        part[members[:n_test]] = 2
        part[members[n_test : n_test + n_val]] = 1
    rows = part[row_unit]
    return {name: np.flatnonzero(rows == i) for i, name in enumerate(("train", "val", "test"))}, how


def check_labels(y: np.ndarray, tasks: list, splits: dict[str, np.ndarray], where: str) -> None:
    """Every task needs a labelled example in every split: to train, to select a model, to test."""
    labelled = ~np.isnan(y)
    for t, task in enumerate(tasks):
        for name, idx in splits.items():
            if not labelled[idx, t].any():
                raise PipelineError(
                    f"{where}: task {task.name!r} has no labelled example in the {name} split "
                    f"({int(labelled[:, t].sum())} labelled rows in all); give it more labelled rows or drop it"
                )


def build_multitask_set(data_cfg: Any, split: Any, name: str):
    """The experiment's one task set: a label column per task, splits, standardised features/targets."""
    from pipeline.data import SPLITS, TaskSet
    from pipeline.data.multitask import MultiSource

    role = f"experiment {name}"
    src = _instantiate(data_cfg, role)
    if not isinstance(src, MultiSource):
        raise PipelineError(f"{role}: data {data_cfg.get('_target_')!r} is not a multitask adapter (see pipeline.data.multitask)")
    where = f"{role} ({src.provenance['file']})" if "file" in src.provenance else role
    if src.splits is not None:
        splits = {s: np.sort(np.asarray(src.splits[s], dtype=np.int64)) for s in SPLITS}
        extra = {"splits": "predefined"}
    else:
        try:
            splits, how = random_splits(src.y, src.tasks, float(split.val), float(split.test), int(split.seed), src.groups)
        except PipelineError as exc:
            raise PipelineError(f"{role}: {exc}") from None
        extra = {"splits": "random", "split_seed": int(split.seed), "split_val": float(split.val), "split_test": float(split.test), "split_stratified_by": how}
    check_labels(src.y, src.tasks, splits, where)
    x, train = src.x, splits["train"]
    if src.standardize:
        # Train-split statistics only, so validation and test stay unseen.
        mean, std = x[train].mean(0), x[train].std(0)
        std[std == 0] = 1.0
        x = ((x - mean) / std).astype(np.float32)
        extra["standardized"] = True
    y, tasks = src.y.copy(), list(src.tasks)
    for t, task in enumerate(tasks):
        if task.kind == "regression":
            # As in build_taskset: per task, from the train split's labelled rows; TaskSpec keeps
            # offset/scale so errors are reported in the target's unit.
            values = y[train, t][~np.isnan(y[train, t])]
            mean, std = float(values.mean()), float(values.std()) or 1.0
            y[:, t] = (y[:, t] - mean) / std
            tasks[t] = dataclasses.replace(task, offset=mean, scale=std)
    prov = {**src.provenance, **extra, "role": "multitask"}
    if src.feature_names:
        prov["feature_names"] = src.feature_names
    return TaskSet(x=x, y=y.astype(np.float32), tasks=tasks, splits=splits, input_shape=src.input_shape, provenance=prov)


def check_budgets(ts, budgets, role: str) -> None:
    from pipeline.data import label_budget

    task = ts.tasks[0]
    for k in budgets:
        for split in ("train", "val"):
            label_budget(ts.y[:, 0], ts.splits[split], task.kind, int(k), seed=0, where=f"{role} {split} split ({ts.provenance.get('file', ts.provenance['adapter'])})")


def run(cfg: DictConfig) -> dict:
    from pipeline.io import atomic_dir

    if experiment_kind(cfg) == "multitask":
        return run_multitask(cfg)
    name, exp = experiment(cfg, "transfer")
    source = build_taskset(exp.source, exp.split, "source")
    target = build_taskset(exp.target, exp.split, "target")
    if source.x.shape[1] != target.x.shape[1]:
        raise PipelineError(f"experiment {name}: source inputs have {source.x.shape[1]} features, target inputs {target.x.shape[1]}; they must match")
    if source.provenance.get("feature_names") and source.provenance.get("feature_names") != target.provenance.get("feature_names"):
        raise PipelineError(f"experiment {name}: source and target tables must have the same feature columns in the same order")
    check_budgets(target, exp.budgets, "target")
    out = layout(cfg, name).data
    with atomic_dir(out) as tmp:
        source.save(tmp / "source")
        target.save(tmp / "target")
    summary = {"source": {"n": len(source.x), "hash": source.data_hash}, "target": {"n": len(target.x), "hash": target.data_hash}}
    print(f"prepare {name}: source {len(source.x)} samples ({source.data_hash}), target {len(target.x)} samples ({target.data_hash}) -> {out}")
    return summary


def run_multitask(cfg: DictConfig) -> dict:
    from pipeline.io import atomic_dir

    name, exp = experiment(cfg, "multitask")
    ts = build_multitask_set(exp.data, exp.split, name)
    out = layout(cfg, name).data
    with atomic_dir(out) as tmp:
        ts.save(tmp / "tasks")
    sizes = {s: int(len(i)) for s, i in ts.splits.items()}
    print(f"prepare {name}: {len(ts.x)} samples, {len(ts.tasks)} tasks, splits {sizes} ({ts.data_hash}) -> {out / 'tasks'}")
    return {"tasks": {"n": len(ts.x), "n_tasks": len(ts.tasks), "splits": sizes, "hash": ts.data_hash}}


main = hydra_entry(run)
