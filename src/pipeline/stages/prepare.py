"""prepare: data sources -> the experiment's task sets, with fixed splits.

A transfer experiment gets a source and a target task set of one task each; a multitask experiment
one task set with a label column per task; all three come from `pipeline.data.build.build_taskset`.
A transfer target is prepared in its source's frame: feature columns matched by name, features and
regression labels standardised with the source's train statistics (`build.in_source_frame`), so
what holds in both domains still holds after preparation. Stages after this one never read raw data. Label budgets are drawn later, per seed, from the
target's train split; here we only check that every budget can be met.
"""

from __future__ import annotations

from omegaconf import DictConfig

from pipeline.stages import experiment, experiment_kind, hydra_entry, layout


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


def note_files_outside_own_folder(name: str, *sets) -> None:
    """dvc.yaml's prepare@<name> depends on data/<name>/ only: say so when a file read lies elsewhere."""
    from pathlib import Path

    own = (Path("data") / name).resolve()
    for ts in sets:
        f = ts.provenance.get("file")
        if f and own not in Path(f).resolve().parents:
            print(f"note: {f} is outside data/{name}/, the folder dvc.yaml's prepare stage of {name} depends on; `dvc repro` will not see it change")


def run(cfg: DictConfig) -> dict:
    from pipeline.data.build import build_taskset
    from pipeline.io import atomic_dir

    if experiment_kind(cfg) == "multitask":
        return run_multitask(cfg)
    name, exp = experiment(cfg, "transfer")
    source = build_taskset(exp.source, exp.split, "source", f"experiment {name} source")
    # The target in the source's frame (columns by name, the source's statistics): what transfers stays identical.
    target = build_taskset(exp.target, exp.split, "target", f"experiment {name} target", frame=source)
    check_budgets(target, exp.budgets, "target")
    note_files_outside_own_folder(name, source, target)
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
    note_files_outside_own_folder(name, ts)
    out = layout(cfg, name).data
    with atomic_dir(out) as tmp:
        ts.save(tmp / "tasks")
    sizes = {s: int(len(i)) for s, i in ts.splits.items()}
    print(f"prepare {name}: {len(ts.x)} samples, {len(ts.tasks)} tasks, splits {sizes} ({ts.data_hash}) -> {out / 'tasks'}")
    return {"tasks": {"n": len(ts.x), "n_tasks": len(ts.tasks), "splits": sizes, "hash": ts.data_hash}}


main = hydra_entry(run)
