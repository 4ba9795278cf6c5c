"""pretrain: backbone + head trained on the source task; the checkpoint keeps its architecture.

An experiment's `source_model` (a checkpoint file, or `models:/<name>/<version>` from the MLflow Model
Registry) replaces the training: that model, checked, is this experiment's source (`adopt`); a candidate's
`source_model` (`sources.<name>.source_model`) does the same for that candidate. Either way the source
becomes a LoggedModel of the pretrain run and a new version of the registered model `<experiment>.source`
(a candidate's: `<experiment>.<candidate>`).
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict

from omegaconf import DictConfig

from pipeline.errors import Diverged, PipelineError, instantiate
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
    cand_name = cfg.get("candidate")
    cand = None
    if cand_name is not None:
        from pipeline.config import candidates
        from pipeline.stages import pick

        own = candidates(cfg, name)
        cand = own[pick(cand_name, own, f"candidate source of experiment {name}")[0]]
    from pipeline.tracking import check_store

    check_store(cfg.tracking.uri)  # a store that is down or wrong stops the stage before it trains
    from pipeline.training.distributed import check

    check(trainer_cfg, "pretrain")

    import torch

    from pipeline.data import TaskSet
    from pipeline.models import architecture, build
    from pipeline.tracking import Tracker
    from pipeline.training import TaskModule, fit

    paths = layout(cfg, name)
    src = TaskSet.load(paths.data / "source")
    seed = pre.seed
    tracker = Tracker(name, cfg.tracking.uri, trainer=trainer_cfg)
    if cand is not None and cand.source_model:
        return adopt(cand.source_model, name, src, TaskSet.load(paths.data / "target"), tracker, paths, candidate=cand_name, note=cand.note)
    if exp.get("source_model") and cand is None:
        return adopt(str(exp.source_model), name, src, TaskSet.load(paths.data / "target"), tracker, paths)
    model_cfg, source_cfg = cfg.model, exp.source
    if cand is not None:
        model_cfg, source_cfg = overlay(cfg.model, cand.model), overlay(exp.source, cand.data)
        if cand.data:  # its own source data, in the experiment's frame (the target was prepared in it)
            from pipeline.data.build import build_taskset

            src = build_taskset(source_cfg, exp.split, "source", f"candidate {cand_name} ({name})", frame=src)
    task = src.tasks[0]
    arch = architecture(model_cfg, src.x.shape[1], task.n_outputs)
    torch.manual_seed(seed)
    net = build(arch)
    from omegaconf import OmegaConf

    params = {"model": OmegaConf.to_container(model_cfg, resolve=True), **config_dict(cfg, "pretrain", "optimizer"), "source": source_cfg}
    label = f"pretrain {name}" + (f" candidate {cand_name}" if cand is not None else "")
    tags = {"source": cand_name} if cand is not None else {"source": "source"}
    variant = {"variant": cand_name} if cand is not None else {}
    from pipeline.resume import Resume, reap, resumed_from

    reap(tracker, "pretrain")
    state = Resume.open(cfg, name, f"candidate-{cand_name}" if cand is not None else "pretrain", {"data_hash": src.data_hash})
    last = state.checkpoint(("fit",))
    if resumed_from(last):
        print(f"{label}: resumed from epoch {resumed_from(last)} (its checkpoint in {last.parent})", flush=True)
        tags["resumed_from_epoch"] = str(resumed_from(last))
    with tracker.run(
        "pretrain", seed=seed, data_hash=src.data_hash, params=params, tags=tags, dataset=("source", src.provenance), **variant
    ) as run_id:
        start = time.perf_counter()
        if cand is not None and not cand.pretrained:
            result = None  # the seeded initialisation itself: tested as it is
        else:
            module = TaskModule.single(net, task, [{"params": list(net.parameters()), "lr": pre.lr}], instantiate(cfg.optimizer, "optimizer"))
            try:
                result = fit(module, split_tensors(src), pre, trainer_cfg, seed, resume=last)
            except Diverged as exc:  # fatal for the chain: every later stage needs this model
                message = f"{label} seed={seed}: {exc.describe()}; lower pretrain.lr (it trained with lr {pre.lr:g})"
                tracker.log_recorded(run_id, exc.logged or [])
                tracker.fail(run_id, message)
                raise PipelineError(message) from None
            tracker.log_recorded(run_id, result.logged)
        seconds = time.perf_counter() - start
        at_cap = result is not None and best_epoch_at_cap(result.best_epoch, pre.max_epochs, trainer_cfg.val_every_n_epochs)
        test = result.test if result is not None else source_test(net, task, src)
        tracker.log_metrics(
            run_id,
            {"fit/seconds": seconds, **test, **({"fit/best_epoch": result.best_epoch, "fit/best_epoch_at_cap": float(at_cap)} if result else {})},
        )
        summary = {
            "run_id": run_id,
            "task": asdict(task),
            "data_hash": src.data_hash,
            "test": test,
            "best_epoch": result.best_epoch if result else None,
            "epochs": result.epochs if result else 0,
            "max_epochs": int(pre.max_epochs),
            "best_epoch_at_cap": at_cap,
            "seconds": round(seconds, 2),
        }
        if cand is not None:
            summary["candidate"] = {"name": cand_name, "note": cand.note, "pretrained": cand.pretrained}
        out = paths.candidate(cand_name) if cand is not None else paths.source
        version = publish(tracker, run_id, name, net, arch, task, src.data_hash, summary, out, registered=f"{name}.{cand_name or 'source'}")
    state.close()
    metric = task.primary
    if at_cap:
        print(
            f"warning: {label}: the source model's best epoch ({result.best_epoch}) was the last allowed"
            f" (pretrain.max_epochs={pre.max_epochs}): it may be under-trained; raise pretrain.max_epochs",
            file=sys.stderr,
        )
    how = f"best epoch {result.best_epoch}" if result is not None else "untrained"
    print(
        f"{label}: test/{metric}={test[f'test/{metric}']:.4f} {how} {seconds:.1f}s run {run_id};"
        f" registered as models:/{name}.{cand_name or 'source'}/{version}"
    )
    return summary


def run_candidates(cfg: DictConfig) -> dict:
    """Every candidate source of `cfg.exp` in this process, as DVC's candidate@<name> stages do one each
    (benchmarks, tests): {candidate: its summary}."""
    from omegaconf import open_dict

    from pipeline.config import candidates

    out = {}
    for name in candidates(cfg, cfg.exp):
        one = cfg.copy()
        with open_dict(one):
            one.candidate = name
        out[name] = run(one)
    return out


def overlay(base, keys):
    """`keys` (a candidate's `model:` or `data:`) merged onto `base`; one with `_target_` replaces it."""
    from omegaconf import OmegaConf

    if not keys:
        return base
    return OmegaConf.create(keys) if "_target_" in keys else OmegaConf.merge(base, keys)


def source_test(net, task, src) -> dict:
    """A network's metrics on the source test split, as it is (an untrained candidate's floor, a user's
    model): {"test/<metric>": value}."""
    import torch

    from pipeline.training import task_metrics

    net.eval()
    with torch.inference_mode():
        x, y = (torch.as_tensor(a[src.splits["test"]]) for a in (src.x, src.y[:, 0]))
        return {f"test/{k}": float(v) for k, v in task_metrics(task, net(x), y).items()}


def publish(
    tracker, run_id: str, name: str, net, arch: dict, task, data_hash: str, summary: dict, out, loaded_from: str | None = None, registered: str = ""
) -> str:
    """The source as this experiment's output: an MLflow LoggedModel of `run_id` (which fine-tune runs
    take as input), the checkpoint and `summary` written at once into the folder `out`, and a new version
    of the registered model `registered` (default `<name>.source`). Returns the version."""
    from pipeline.io import atomic_dir, write_json
    from pipeline.models import save_checkpoint

    origin = {"loaded_from": loaded_from} if loaded_from else {}
    model_id = tracker.create_model(
        run_id,
        "source_model",
        params={"arch": arch if arch is not None else "torchscript"},
        tags={"data_hash": data_hash, "task": task.name, **origin},
    )
    summary["model_id"] = model_id
    with atomic_dir(out) as tmp:
        extra = {"run_id": run_id, "model_id": model_id, "task": asdict(task), "data_hash": data_hash, **origin}
        if arch is None:  # a user's TorchScript model without its architecture: kept scripted (models.load_source)
            import torch

            torch.jit.save(net, str(tmp / "scripted.pt"))
        save_checkpoint(tmp / "model.pt", net, arch, extra)
        write_json(tmp / "summary.json", summary)
    # The registered file is what `models:/` gives a later user: the TorchScript file itself where there is no arch.
    tracker.model_ready(run_id, model_id, out / ("scripted.pt" if arch is None else "model.pt"))
    return tracker.register(registered or f"{name}.source", model_id, run_id, {"data_hash": data_hash, "experiment": name, **origin})


def adopt(spec: str, name: str, src, tgt, tracker, paths, candidate: str | None = None, note: str = "") -> dict:
    """The user's model `spec` as this experiment's source, or as its candidate source `candidate`
    (`sources.<candidate>.source_model`): loaded safely and checked against the target's input size,
    tested on the source split when it predicts the source's task, logged and registered (`<name>.source`
    or `<name>.<candidate>`) as a trained source would be. Its own task comes from its checkpoint when it
    carries one. Nothing is written before every check has passed."""
    import tempfile

    import torch

    from pipeline.data import TaskSpec
    from pipeline.models import load_user_model

    key = f"sources.{candidate}.source_model" if candidate else "source_model"
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="source-model-") as tmp:
        ckpt = load_user_model(spec, fetch=lambda s: tracker.model_file(s, tmp, key), key=key)
    net, arch = ckpt["net"], ckpt["arch"]
    has = tgt.x.shape[1]
    if arch is None:
        if candidate is None:
            raise PipelineError(
                f"{key} {spec}: a TorchScript model without its architecture (extra file arch.json) can be a candidate source"
                " (sources.<name>.source_model: scored by extract) but not the experiment's own source, which fine-tuning rebuilds from"
                " its arch; save it with torch.jit.save(m, path, _extra_files={'arch.json': json.dumps(arch)}) or as {arch, state_dict}"
            )
        try:  # its input size is not written anywhere: one target row through it says whether it fits
            with torch.inference_mode():
                n_outputs = int(net.head(net.backbone(torch.as_tensor(tgt.x[:1]))).shape[1])
        except RuntimeError as exc:
            first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
            raise PipelineError(f"{key} {spec}: the TorchScript model does not take the target's rows of {has} features ({first:.200})") from None
        takes = has
    else:
        takes, n_outputs = arch["backbone"].get("input_dim"), int(arch["n_outputs"])
    if takes != has:
        raise PipelineError(f"{key} {spec}: the model takes inputs of size {takes}, the target's rows have {has} features ({paths.data / 'target'})")
    own = src.tasks[0]
    matches = src.x.shape[1] == takes and own.n_outputs == n_outputs
    if "task" in ckpt:
        task = TaskSpec(**ckpt["task"])
    else:  # a checkpoint from elsewhere: the experiment's source task if the model fits it, else unnamed classes
        task = own if matches else TaskSpec("source", "classification", [str(i) for i in range(n_outputs)])
    test = source_test(net, own, src) if matches and task.kind == own.kind else {}
    tags = {"source_model": spec, "source": candidate or "source"}
    params = {"source_model": spec, "arch": arch if arch is not None else "torchscript"}
    variant = {"variant": candidate} if candidate else {}
    registered = f"{name}.{candidate or 'source'}"
    with tracker.run("pretrain", data_hash=src.data_hash, params=params, tags=tags, **variant) as run_id:
        tracker.log_metrics(run_id, test)
        summary = {"run_id": run_id, "task": asdict(task), "data_hash": src.data_hash, "test": test, "loaded_from": spec}
        if candidate:
            summary["candidate"] = {"name": candidate, "note": note, "pretrained": True, "source_model": spec}
        if arch is None:
            summary["torchscript"] = "scripted.pt"  # no arch: extract scores it, fine-tuning cannot rebuild it
        summary["seconds"] = round(time.perf_counter() - start, 2)
        out = paths.candidate(candidate) if candidate else paths.source
        version = publish(tracker, run_id, name, net, arch, task, src.data_hash, summary, out, loaded_from=spec, registered=registered)
    tested = ", ".join(f"{k}={v:.4f}" for k, v in test.items()) or "not tested (it predicts another task than the source data's)"
    what = f"candidate {candidate}" if candidate else "source model"
    print(f"pretrain {name}: {what} loaded from {spec}, {tested}; run {run_id}; registered as models:/{registered}/{version}")
    return summary


main = hydra_entry(run)
