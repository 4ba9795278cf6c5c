"""prepare: data sources -> the experiment's source and target task sets, with fixed splits.

Stages after this one never read raw data. Label budgets are drawn later, per seed, from the
target's train split; here we only check that every budget can be met.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from omegaconf import DictConfig

from pipeline.errors import PipelineError
from pipeline.stages import experiment, hydra_entry, layout


def build_taskset(source_cfg: Any, split: Any, role: str):
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    from pipeline.data import TaskSet, stratified_splits

    try:
        src = instantiate(source_cfg)
    except InstantiationException as exc:
        cause = exc.__cause__
        if isinstance(cause, PipelineError):
            raise PipelineError(f"{role}: {cause}") from None
        raise PipelineError(f"{role}: cannot build data source {source_cfg.get('_target_')!r}: {exc}") from None
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


def check_budgets(ts, budgets, role: str) -> None:
    from pipeline.data import label_budget

    task = ts.tasks[0]
    for k in budgets:
        for split in ("train", "val"):
            label_budget(ts.y[:, 0], ts.splits[split], task.kind, int(k), seed=0, where=f"{role} {split} split ({ts.provenance.get('file', ts.provenance['adapter'])})")


def run(cfg: DictConfig) -> dict:
    from pipeline.io import atomic_dir

    name, exp = experiment(cfg)
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


main = hydra_entry(run)
