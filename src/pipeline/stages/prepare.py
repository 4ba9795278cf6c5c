"""prepare: data sources -> the experiment's task sets, with fixed splits.

A transfer experiment gets a source and a target task set of one task each; a multitask experiment
one task set with a label column per task; all three come from `pipeline.data.build.build_taskset`.
Stages after this one never read raw data. Label budgets are drawn later, per seed, from the
target's train split; here we only check that every budget can be met.
"""

from __future__ import annotations

from omegaconf import DictConfig

from pipeline.errors import PipelineError
from pipeline.stages import experiment, experiment_kind, hydra_entry, layout


def one_task(data_cfg, split, role: str, what: str):
    """A transfer source or target: a task set of exactly one task."""
    from pipeline.data.build import build_taskset

    ts = build_taskset(data_cfg, split, role, what)
    if len(ts.tasks) != 1:
        names = [t.name for t in ts.tasks]
        raise PipelineError(
            f"{what}: a transfer {role} has one task; data {data_cfg.get('_target_')!r} gives {len(names)} {names} (use a multitask experiment)"
        )
    return ts


def check_budgets(ts, budgets, role: str) -> None:
    from pipeline.data import label_budget

    task = ts.tasks[0]
    for k in budgets:
        for split in ("train", "val"):
            label_budget(
                ts.y[:, 0],
                ts.splits[split],
                task.kind,
                int(k),
                seed=0,
                where=f"{role} {split} split ({ts.provenance.get('file', ts.provenance['adapter'])})",
            )


def run(cfg: DictConfig) -> dict:
    from pipeline.io import atomic_dir

    if experiment_kind(cfg) == "multitask":
        return run_multitask(cfg)
    name, exp = experiment(cfg, "transfer")
    source, target = (one_task(exp[role], exp.split, role, f"experiment {name} {role}") for role in ("source", "target"))
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
    from pipeline.data.build import build_taskset
    from pipeline.io import atomic_dir

    name, exp = experiment(cfg, "multitask")
    ts = build_taskset(exp.data, exp.split, "multitask", f"experiment {name}")
    out = layout(cfg, name).data
    with atomic_dir(out) as tmp:
        ts.save(tmp / "tasks")
    sizes = {s: int(len(i)) for s, i in ts.splits.items()}
    print(f"prepare {name}: {len(ts.x)} samples, {len(ts.tasks)} tasks, splits {sizes} ({ts.data_hash}) -> {out / 'tasks'}")
    return {"tasks": {"n": len(ts.x), "n_tasks": len(ts.tasks), "splits": sizes, "hash": ts.data_hash}}


main = hydra_entry(run)
