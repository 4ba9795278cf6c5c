"""pretrain: backbone + head trained on the source task; the checkpoint keeps its architecture."""

from __future__ import annotations

import sys
import time
from dataclasses import asdict

from omegaconf import DictConfig

from pipeline.errors import instantiate
from pipeline.stages import config_dict, experiment, hydra_entry, layout


def split_tensors(ts, x=None, index=None):
    """{split: (inputs, labels [n, 1])} tensors for a single-task set, optionally on other inputs/indices."""
    import torch

    x = ts.x if x is None else x
    index = index or ts.splits
    return {s: (torch.as_tensor(x[i]), torch.as_tensor(ts.y[i][:, :1])) for s, i in index.items()}


def best_epoch_at_cap(best_epoch: int, max_epochs: int, val_every: int = 1) -> bool:
    """Whether the kept epoch (0-based) is the last one validated before the epoch cap: the validation
    metric was still improving when training had to stop, so more epochs would likely help. (Early
    stopping ends `patience` validations after the best, so it never makes the best the last.)"""
    return best_epoch + int(val_every) >= int(max_epochs)


def run(cfg: DictConfig) -> dict:
    from pipeline.config import settings

    # User input first: a mistake in it is reported before torch and Lightning load.
    trainer_cfg, pre = settings(cfg, "trainer", "pretrain")
    name, exp = experiment(cfg, "transfer")

    import torch

    from pipeline.data import TaskSet
    from pipeline.io import atomic_dir, write_json
    from pipeline.models import architecture, build, save_checkpoint
    from pipeline.tracking import Tracker
    from pipeline.training import TaskModule, fit

    paths = layout(cfg, name)
    src = TaskSet.load(paths.data / "source")
    task = src.tasks[0]
    seed = pre.seed
    arch = architecture(cfg.model, src.x.shape[1], task.n_outputs)
    torch.manual_seed(seed)
    net = build(arch)
    tracker = Tracker(name, cfg.tracking.uri)
    params = config_dict(cfg, "model", "pretrain", "optimizer") | {"source": exp.source}
    with tracker.run("pretrain", seed=seed, data_hash=src.data_hash, params=params, dataset=("source", src.provenance)) as run_id:
        start = time.perf_counter()
        module = TaskModule.single(net, task, [{"params": list(net.parameters()), "lr": pre.lr}], instantiate(cfg.optimizer, "optimizer"))
        result = fit(module, split_tensors(src), pre, trainer_cfg, seed)
        tracker.log_recorded(run_id, result.logged)
        seconds = time.perf_counter() - start
        at_cap = best_epoch_at_cap(result.best_epoch, pre.max_epochs, trainer_cfg.val_every_n_epochs)
        tracker.log_metrics(run_id, {"fit/best_epoch": result.best_epoch, "fit/seconds": seconds, "fit/best_epoch_at_cap": float(at_cap)})
        summary = {
            "run_id": run_id,
            "task": asdict(task),
            "data_hash": src.data_hash,
            "test": result.test,
            "best_epoch": result.best_epoch,
            "epochs": result.epochs,
            "max_epochs": int(pre.max_epochs),
            "best_epoch_at_cap": at_cap,
            "seconds": round(seconds, 2),
        }
        # The source model as an MLflow LoggedModel (the checkpoint file), which fine-tune runs take as input.
        model_id = tracker.create_model(run_id, "source_model", params={"arch": arch}, tags={"data_hash": src.data_hash, "task": task.name})
        summary["model_id"] = model_id
        with atomic_dir(paths.source) as tmp:
            save_checkpoint(tmp / "model.pt", net, arch, {"run_id": run_id, "model_id": model_id, "task": asdict(task), "data_hash": src.data_hash})
            write_json(tmp / "summary.json", summary)
        tracker.model_ready(run_id, model_id, paths.source / "model.pt")
        registered = f"{name}.source"
        version = tracker.register(registered, model_id, run_id, {"data_hash": src.data_hash, "experiment": name})
    metric = task.primary
    if at_cap:
        print(
            f"warning: pretrain {name}: the source model's best epoch ({result.best_epoch}) was the last allowed"
            f" (pretrain.max_epochs={pre.max_epochs}): it may be under-trained; raise pretrain.max_epochs",
            file=sys.stderr,
        )
    print(
        f"pretrain {name}: source test/{metric}={result.test[f'test/{metric}']:.4f} best epoch {result.best_epoch} {seconds:.1f}s run {run_id};"
        f" registered as models:/{registered}/{version}"
    )
    return summary


main = hydra_entry(run)
