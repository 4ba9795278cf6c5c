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
                        raise NotApplicable(
                            f"{name} reads the source's class probabilities; {candidate} gives none (an inner block, or a source without classes)"
                        )
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


def views(net, name: str, layers: bool) -> list[tuple[str, int | None]]:
    """(candidate name, depth) of what is scored from one network: its last features (depth None) and,
    with `layers`, the output of each hidden block but the last (`<name>:block<i>`); a backbone without
    `blocks` and `features(x, depth)` (a user's TorchScript module) gives its last features only."""
    import torch

    blocks = getattr(net.backbone, "blocks", None)
    inner = layers and blocks is not None and not isinstance(net, torch.jit.ScriptModule)
    return [(name, None), *((f"{name}:block{i}", i) for i in (range(1, len(blocks)) if inner else []))]


def outputs(net, x, depth: int | None, classification: bool):
    """(features, class probabilities or regression outputs, or None at an inner depth) of `net` on every
    row of x: one forward pass in chunks (a Lightning Trainer here cost more to import than the pass)."""
    import torch

    with torch.inference_mode():
        chunks = torch.as_tensor(x).split(4096)
        if depth is None:
            feats = torch.cat([net.backbone(c) for c in chunks])
            out = net.head(feats)
            return feats.numpy(), (out.softmax(-1) if classification else out).numpy()
        return torch.cat([net.backbone.features(c, depth) for c in chunks]).numpy(), None


def run(cfg: DictConfig) -> dict:
    from pipeline.config import candidates, settings

    # User input first: a mistake in it is reported before torch and Lightning load.
    trainer_cfg, tcfg = settings(cfg, "trainer", "transfer")
    name, exp = experiment(cfg, "transfer")
    zoo = candidates(cfg, name)
    from pipeline.errors import instantiate

    scores = {s: instantiate(node, f"knowledge.scores.{s}") for s, node in cfg.get("knowledge", {}).get("scores", {}).items()}
    layers = bool(cfg.get("knowledge", {}).get("layers", False))

    from pipeline.tracking import check_store

    check_store(cfg.tracking.uri)  # a store that is down or wrong stops the stage before it trains

    import time

    import numpy as np
    import torch

    from pipeline.config import OWN_SOURCE
    from pipeline.data import TaskSet, TaskSpec
    from pipeline.io import atomic_dir, read_json, write_json
    from pipeline.models import load_source
    from pipeline.tracking import Tracker

    paths = layout(cfg, name)
    tgt = TaskSet.load(paths.data / "target")
    if trainer_cfg.num_threads:
        torch.set_num_threads(int(trainer_cfg.num_threads))
    task = tgt.tasks[0]
    y = tgt.y[:, 0]
    tracker = Tracker(name, cfg.tracking.uri)
    # threadpoolctl caps only the thread pools already loaded: scipy's and scikit-learn's come in with them.
    import scipy.linalg  # noqa: F401
    import sklearn.linear_model  # noqa: F401
    from threadpoolctl import threadpool_limits

    summary: dict = {}
    records: list[dict] = []
    arrays: dict[str, dict] = {}
    for cand in [OWN_SOURCE, *zoo]:
        folder = paths.source if cand == OWN_SOURCE else paths.candidate(cand)
        ckpt, net = load_source(folder)
        read_json(folder / "summary.json", "pretrain summary")
        src_task = TaskSpec(**ckpt["task"])
        for view, depth in views(net, cand, layers):
            feats, probs = outputs(net, tgt.x, depth, src_task.kind == "classification")
            inputs = {"features": feats, "probs": probs if src_task.kind == "classification" else None}
            # BLAS's own threads on top of other processes' training oversubscribe the cores (the probe ran 20x slower).
            with threadpool_limits(int(trainer_cfg.num_threads) if trainer_cfg.num_threads else None):
                found = transferability(scores, inputs, y, task.kind, tgt.splits, exp.budgets, tcfg.seeds, tcfg.val_labels, view)
            records += [{"candidate": view, **r} for r in found]
            part = {
                "source_run_id": ckpt["run_id"],
                "source_model_id": ckpt.get("model_id"),
                "feature_dim": int(feats.shape[1]),
                "depth": depth,
                "model": cand,
            }
            part["scores"] = by_budget(found)
            part["not_applicable"] = {r["score"]: r["reason"] for r in found if r["value"] is None}
            if view == OWN_SOURCE:
                summary |= {k: v for k, v in part.items() if k not in ("depth", "model", "source_model_id")} | {"shared_label_space": False}
                summary["baseline_scores"] = [s for s, score in scores.items() if score.baseline]
                if shares_task(src_task, task):
                    summary["shared_label_space"] = True
                    summary |= {f"zero_shot_{k}": v for k, v in zero_shot(src_task, task, probs, y, tgt.splits["test"]).items()}
            with tracker.run(
                "extract",
                variant=None if view == OWN_SOURCE else view,
                data_hash=tgt.data_hash,
                params={"feature_dim": feats.shape[1], "depth": depth if depth is not None else "last"},
                tags={"source": view},
                source_run_id=ckpt["run_id"],
                source_model_id=ckpt.get("model_id"),
                dataset=("target", tgt.provenance, "eval"),  # read through the source model, not trained on
            ) as run_id:
                metrics = part if view != OWN_SOURCE else summary
                tracker.log_metrics(run_id, {f"knowledge/{k}": v for k, v in metrics.items() if isinstance(v, float)})
                now = int(time.time() * 1000)  # the label budget is the step: the UI draws each score over k
                tracker.log_recorded(
                    run_id, [(f"knowledge/{score}", v, int(k), now) for score, per in part["scores"].items() for k, v in per.items()]
                )
            part["run_id"] = run_id
            if view == OWN_SOURCE:
                summary["run_id"] = run_id
            arrays[view] = {"features": feats, "probs": probs}
            summary.setdefault("candidates", {})[view] = part
    with atomic_dir(paths.knowledge) as tmp:
        own = arrays.pop(OWN_SOURCE)
        np.save(tmp / "features.npy", own["features"].astype(np.float32))
        np.save(tmp / "probs.npy", own["probs"].astype(np.float32))
        for view, a in arrays.items():  # the candidates' features: fine-tuning's linear probe reads them
            (tmp / "candidates" / view).mkdir(parents=True)
            np.save(tmp / "candidates" / view / "features.npy", a["features"].astype(np.float32))
        write_json(tmp / "summary.json", summary)
        write_json(tmp / "scores.json", records)
        tracker.log_artifact(summary["run_id"], tmp / "scores.json")
    shown = ", ".join(f"{k}={v:.4f}" for k, v in summary.items() if isinstance(v, float))
    print(f"extract {name}: {len(tgt.x)} target samples -> {summary['feature_dim']}-d source features{'; ' + shown if shown else ''}")
    for view, part in summary["candidates"].items():
        for score, per in part["scores"].items():
            print(f"extract {name}: {view:<24} {score:<17} " + "  ".join(f"k={k}: {v:.4f}" for k, v in per.items()) + " (mean over seeds)")
    for score, reason in summary["not_applicable"].items():
        print(f"extract {name}: {score:<17} not applicable: {reason}")
    return summary


main = hydra_entry(run)
