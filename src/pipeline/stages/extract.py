"""extract ("knowledge extraction"): the frozen source model over every target sample.

Writes the source features and class probabilities of each target sample, and scores that say how
far the domains are before any target training:

- every transferability score of `knowledge.scores` (`pipeline.knowledge`, conf/knowledge/) at every
  label budget x seed, from that budget's labelled rows only (its train and validation rows: what
  fine-tuning sees), into `scores.json` and the MLflow run (`knowledge/<score>` at step k, the mean over
  seeds); a score not defined for these tasks is listed with its reason instead;
- where source and target share the task (the same class list, or a regression target of the same
  name), the source model's test metrics on the target test split with no target labels at all
  (`zero_shot_<metric>`: accuracy and F1, or RMSE in the target's units and R²).
"""

from __future__ import annotations

from omegaconf import DictConfig

from pipeline.stages import experiment, hydra_entry, layout


def shares_task(source, target) -> bool:
    """Whether the source model's outputs are predictions of the target's labels: the same class list,
    or a regression target of the same name."""
    if source.kind != target.kind:
        return False
    return source.classes == target.classes if source.kind == "classification" else source.name == target.name


def zero_shot(source, target, outputs, y, test) -> dict[str, float]:
    """The source model's test metrics on the target's test rows, no target labels used. Regression
    outputs are in the source's standardised units: mapped into the target's (the identity when the
    target was standardised with the source's statistics) before `task_metrics` reports RMSE in the target's units."""
    import torch

    from pipeline.training import task_metrics

    out = torch.as_tensor(outputs[test], dtype=torch.float32)
    if target.kind == "regression":
        out = (out * source.scale + source.offset - target.offset) / target.scale
    return {k: float(v) for k, v in task_metrics(target, out, torch.as_tensor(y[test], dtype=torch.float32)).items()}


def transferability(scores: dict, inputs: dict, y, kind: str, splits: dict, budgets, seeds, val_labels: str, candidate: str) -> list[dict]:
    """Every score at every budget x seed on that budget's labelled rows: one record each, {score,
    budget, seed, value} or, where the score does not apply, {..., value: None, reason}. `inputs` maps
    "features" and "probs" to the source's outputs for every target row (probs None without source classes)."""

    from pipeline.data import budget_index, labelled_rows
    from pipeline.knowledge import NotApplicable

    records = []
    for k in budgets:
        for seed in seeds:
            index = budget_index(y, splits, kind, k, seed, val_labels)
            rows = labelled_rows(index)
            for name, score in scores.items():
                record = {"score": name, "budget": int(k), "seed": int(seed)}
                try:
                    if inputs.get(score.inputs) is None:
                        raise NotApplicable(f"{name} reads the source's class probabilities; this source has no classes")
                    record["value"] = score(inputs[score.inputs][rows], y[rows], kind, where=f"candidate {candidate}, k={k}, seed {seed}")
                except NotApplicable as exc:
                    record |= {"value": None, "reason": str(exc)}
                records.append(record)
    return records


def by_budget(records: list[dict]) -> dict[str, dict[int, float]]:
    """{score: {budget: mean over seeds}} of the records that have a value."""
    import numpy as np

    out: dict[str, dict[int, list]] = {}
    for r in records:
        if r["value"] is not None:
            out.setdefault(r["score"], {}).setdefault(r["budget"], []).append(r["value"])
    return {s: {k: float(np.mean(v)) for k, v in per.items()} for s, per in out.items()}


def run(cfg: DictConfig) -> dict:
    from pipeline.config import settings

    # User input first: a mistake in it is reported before torch and Lightning load.
    trainer_cfg, tcfg = settings(cfg, "trainer", "transfer")
    name, exp = experiment(cfg, "transfer")
    from pipeline.errors import instantiate

    scores = {s: instantiate(node, f"knowledge.scores.{s}") for s, node in cfg.get("knowledge", {}).get("scores", {}).items()}

    from pipeline.tracking import check_store

    check_store(cfg.tracking.uri)  # a store that is down or wrong stops the stage before it trains

    import time

    import numpy as np
    import torch

    from pipeline.data import TaskSet, TaskSpec
    from pipeline.io import atomic_dir, read_json, write_json
    from pipeline.models import build, load_checkpoint
    from pipeline.tracking import Tracker

    paths = layout(cfg, name)
    tgt = TaskSet.load(paths.data / "target")
    ckpt = load_checkpoint(paths.source / "model.pt")
    read_json(paths.source / "summary.json", "pretrain summary")
    src_task = TaskSpec(**ckpt["task"])
    net = build(ckpt["arch"])
    net.load_state_dict(ckpt["state_dict"])
    net.eval()
    if trainer_cfg.num_threads:
        torch.set_num_threads(int(trainer_cfg.num_threads))
    # One forward pass in chunks: a Lightning Trainer here cost more to import than the pass itself.
    with torch.inference_mode():
        feats = torch.cat([net.backbone(chunk) for chunk in torch.as_tensor(tgt.x).split(4096)])
        outputs = net.head(feats)
    probs = (outputs.softmax(-1) if src_task.kind == "classification" else outputs).numpy()
    feats = feats.numpy()

    task = tgt.tasks[0]
    y = tgt.y[:, 0]
    summary = {"source_run_id": ckpt["run_id"], "feature_dim": int(feats.shape[1]), "shared_label_space": False}
    inputs = {"features": feats, "probs": probs if src_task.kind == "classification" else None}
    from threadpoolctl import threadpool_limits

    # BLAS's own threads on top of other processes' training oversubscribe the cores (the probe ran 20x slower).
    with threadpool_limits(int(trainer_cfg.num_threads) if trainer_cfg.num_threads else None):
        records = transferability(scores, inputs, y, task.kind, tgt.splits, exp.budgets, tcfg.seeds, tcfg.val_labels, "source")
    summary["scores"] = by_budget(records)
    summary["not_applicable"] = {r["score"]: r["reason"] for r in records if r["value"] is None}
    summary["baseline_scores"] = [s for s, score in scores.items() if score.baseline]
    if shares_task(src_task, task):
        summary["shared_label_space"] = True
        summary |= {f"zero_shot_{k}": v for k, v in zero_shot(src_task, task, probs, y, tgt.splits["test"]).items()}
    tracker = Tracker(name, cfg.tracking.uri)
    with tracker.run(
        "extract",
        data_hash=tgt.data_hash,
        params={"feature_dim": feats.shape[1]},
        source_run_id=ckpt["run_id"],
        source_model_id=ckpt.get("model_id"),
        dataset=("target", tgt.provenance, "eval"),  # read through the source model, not trained on
    ) as run_id:
        tracker.log_metrics(run_id, {f"knowledge/{k}": v for k, v in summary.items() if isinstance(v, float)})
        now = int(time.time() * 1000)  # the label budget is the step: the UI draws each score over k
        tracker.log_recorded(run_id, [(f"knowledge/{score}", v, int(k), now) for score, per in summary["scores"].items() for k, v in per.items()])
        summary["run_id"] = run_id
        with atomic_dir(paths.knowledge) as tmp:
            np.save(tmp / "features.npy", feats.astype(np.float32))
            np.save(tmp / "probs.npy", probs.astype(np.float32))
            write_json(tmp / "summary.json", summary)
            write_json(tmp / "scores.json", records)
            tracker.log_artifact(run_id, tmp / "scores.json")
    shown = ", ".join(f"{k}={v:.4f}" for k, v in summary.items() if isinstance(v, float))
    print(f"extract {name}: {len(feats)} target samples -> {feats.shape[1]}-d source features{'; ' + shown if shown else ''}")
    for score, per in summary["scores"].items():
        print(f"extract {name}: {score:<17} " + "  ".join(f"k={k}: {v:.4f}" for k, v in per.items()) + " (mean over seeds)")
    for score, reason in summary["not_applicable"].items():
        print(f"extract {name}: {score:<17} not applicable: {reason}")
    return summary


main = hydra_entry(run)
