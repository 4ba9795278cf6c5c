"""rank: fine-tuning from every candidate source, the reference the sources report
(reports/<experiment>_sources.md) ranks the transferability scores against.

For every view `extract` scored (each candidate's last features and, with `knowledge.layers`, its inner
blocks `<candidate>:block<i>`), at every label budget x seed, on the k labelled rows per class the
scores and the finetune stage read (`pipeline.data.budget_index`):

- the linear probe (`linear_features`, `finetune.fit_linear`): a linear model on the view's features;
- parameter transfer (`param_transfer`) with its configured setting (trial 0 of its config, untuned),
  trained by `finetune.train_one`: a whole candidate transfers the strategy's `transfer` layers, a
  layer view `<candidate>:block<i>` its first i blocks, the rest and the head freshly initialised.

The own source's last features are not refitted here: the finetune stage fits both there
(`linear_features`, and `param_transfer`, whose trial 0 is this same setting) and the report reads
them from it. Kept apart from finetune so that a change to the zoo does not retrain the strategies.

One MLflow run per fit (stage `rank`, tags `strategy` and `source`), trained side by side on the
machine's cores (`pipeline.training.parallel`); a fit whose loss diverges ends FAILED and the grid goes
on, as in finetune. Results go to artifacts/<experiment>/rank/<strategy>/<view>/k<k>_seed<seed>.json,
all at once when every run has finished.
"""

from __future__ import annotations

import dataclasses

from omegaconf import DictConfig

from pipeline.errors import PipelineError
from pipeline.stages import check_direction, experiment, hydra_entry, layout

PARAM = "param_transfer"


def check_features(x, view: str, path) -> None:
    """A candidate's extracted features must be finite: an error naming the candidate and the file."""
    import numpy as np

    bad = ~np.isfinite(x)
    if bad.any():
        rows = np.flatnonzero(bad.any(axis=1))
        raise PipelineError(
            f"the features of candidate {view} ({path}) hold NaN or infinite values in {len(rows)} rows, first at rows {rows[:5].tolist()};"
            f" rerun extract, or drop the candidate"
        )


def check_classes(y, splits: dict, kind: str, budgets, seeds, val_labels: str) -> None:
    """Each budget x seed's labelled train rows hold at least two classes (a classifier, probe or
    network, needs two): an error naming the budget, seed and the one class otherwise."""
    import numpy as np

    from pipeline.data import budget_index

    if kind != "classification":
        return
    for k in budgets:
        for seed in seeds:
            classes = np.unique(y[budget_index(y, splits, kind, k, seed, val_labels)["train"]])
            if len(classes) < 2:
                raise PipelineError(
                    f"the labelled rows at k={k}, seed {seed} hold a single class ({classes.tolist()}): fine-tuning and ranking"
                    " candidates need at least two; the target's train split has one class only"
                )


def block_prefixes(net, depth: int) -> list[str] | None:
    """The layers `<candidate>:block<depth>` transfers: the backbone's first `depth` blocks; None when the
    backbone has no `blocks` to name (the view then gets the probe only)."""
    blocks = getattr(net.backbone, "blocks", None)
    if blocks is None or depth > len(blocks):
        return None
    return [f"backbone.blocks.{j}" for j in range(depth)]


def fit_one(c: dict, job: tuple) -> dict:
    """One parameter-transfer fit from view `job[0]` at (budget, seed): `finetune.train_one` with that
    view's source (its TransferContext) and strategy, keyed by the view's name (trial 0, no folds)."""
    from pipeline.stages.finetune import train_one

    view, k, seed = job
    return train_one({**c, "ctx": c["contexts"][view]}, (view, k, seed, 0))


def rank_params(cfg: DictConfig, transfer: list[str]) -> dict:
    """What a parameter-transfer run here is configured with: finetune's, less tuning (one untuned
    setting) and the configured model (the architecture comes from the candidate's checkpoint)."""
    from pipeline.stages.finetune import run_params

    params = run_params(cfg, PARAM)
    params.pop("model")
    params["transfer"] = {k: v for k, v in params["transfer"].items() if k != "tuning"}
    params["strategy"] = {**params["strategy"], "transfer": list(transfer)}
    params["strategy"].pop("search", None)
    return params


def run(cfg: DictConfig) -> list[dict]:
    from pipeline.config import settings

    # User input first: a mistake in it is reported before torch and Lightning load.
    trainer_cfg, tcfg = settings(cfg, "trainer", "transfer")
    name, exp = experiment(cfg, "transfer")
    budgets, seeds = list(exp.budgets), list(tcfg.seeds)
    if PARAM not in cfg.transfer.strategies:
        raise PipelineError(
            f"rank fine-tunes every candidate source with transfer.strategies.{PARAM}, which is not configured;"
            f" add it (conf/transfer/{PARAM}.yaml) to the defaults of conf/config.yaml"
        )
    if tcfg.val_labels not in ("budget", "all"):
        raise PipelineError(f"transfer.val_labels must be 'budget' or 'all', got {tcfg.val_labels!r}")

    from pipeline.tracking import check_store
    from pipeline.training.distributed import check

    check_store(cfg.tracking.uri)  # a store that is down or wrong stops the stage before it trains
    check(trainer_cfg, "rank")  # one device: several would rerun this stage in each process

    import sys

    import numpy as np
    from omegaconf import OmegaConf

    from pipeline.config import OWN_SOURCE
    from pipeline.data import TaskSet
    from pipeline.errors import instantiate
    from pipeline.io import atomic_dir, read_json, write_json
    from pipeline.models import build, load_checkpoint
    from pipeline.multitask.baselines import LINEAR_FEATURES
    from pipeline.report.tuning import fmt_setting
    from pipeline.stages import ended
    from pipeline.stages.finetune import fit_linear, source_lineage
    from pipeline.tracking import Tracker, digest
    from pipeline.training.parallel import jobs, worker_count
    from pipeline.transfer import TransferContext, tuning

    paths = layout(cfg, name)
    tgt = TaskSet.load(paths.data / "target")
    task, y = tgt.tasks[0], tgt.y[:, 0]
    check_direction(f"val/{task.primary}", task.higher_is_better)
    check_classes(y, tgt.splits, task.kind, budgets, seeds, tcfg.val_labels)
    knowledge = read_json(paths.knowledge / "summary.json", "extract summary")
    views = {v: part for v, part in knowledge.get("candidates", {}).items() if v != OWN_SOURCE}
    features = {}
    for view in views:
        path = paths.knowledge / "candidates" / view / "features.npy"
        if not path.is_file():
            raise PipelineError(f"missing upstream output {path} (candidate {view}'s features); rerun extract")
        features[view] = np.load(path)
        check_features(features[view], view, path)

    # Trial 0 of param_transfer: its configured setting, as an untuned finetune run trains it.
    untuned = dataclasses.replace(tcfg, tuning=dataclasses.replace(tcfg.tuning, trials=1))
    trials, strategies = tuning.plan(cfg.transfer.strategies, untuned, [PARAM])
    setting = trials[PARAM][0]
    node, _ = tuning.split_search(cfg.transfer.strategies[PARAM])
    checkpoints, contexts, chosen, layers = {}, {}, {}, {}
    for view, part in views.items():
        model = part.get("model", view)
        if model not in checkpoints:
            checkpoints[model] = load_checkpoint(paths.candidate(model) / "model.pt")
        ckpt = checkpoints[model]
        depth = part.get("depth")
        if depth:
            prefixes = block_prefixes(build(ckpt["arch"]), int(depth))
            if prefixes is None:
                continue  # a backbone without named blocks: the probe only
            knobs = OmegaConf.merge(node, {"transfer": prefixes})
            chosen[view] = instantiate(knobs, f"transfer strategy {PARAM} (first {depth} blocks of {model})")
        else:
            chosen[view] = strategies[PARAM, 0]
        layers[view] = list(chosen[view].transfer)
        contexts[view] = TransferContext(source=ckpt, target=task, input_dim=tgt.x.shape[1], model_cfg=cfg.model)
    plans = {v: chosen[v].build(contexts[v], float(setting.get("lr", tcfg.lr))) for v in chosen}  # what each copies: tags, metrics
    context = {
        "tgt": tgt,
        "tcfg": tcfg,
        "trainer": trainer_cfg,
        "optimizer": cfg.optimizer,
        "strategies": {(v, 0): s for v, s in chosen.items()},  # train_one looks a strategy up by (name, trial)
        "trials": {v: [setting] for v in chosen},
        "folds": {},  # untuned: no cross-validation
        "mirrored": False,
        "contexts": contexts,
        "features": None,  # parameter transfer trains on the raw inputs
    }
    job_list = [(v, k, seed) for v in chosen for k in budgets for seed in seeds]
    metric = task.primary
    probes, records, failures = [], [], []
    params = {v: rank_params(cfg, layers[v]) for v in chosen}
    with jobs(fit_one, context, job_list, worker_count(trainer_cfg.workers, len(job_list), trainer_cfg.accelerator, trainer_cfg.devices)) as outs:
        tracker = Tracker(name, cfg.tracking.uri, trainer=trainer_cfg)
        # The probes are fitted here while the workers train.
        for view, part in views.items():
            source = {"run_id": part["source_run_id"], "model_id": part.get("source_model_id")}
            probes += fit_linear(cfg, name, tgt, budgets, seeds, tracker, LINEAR_FEATURES, features[view], source, view, stage="rank")
        for view, k, seed in job_list:
            plan, ckpt = plans[view], contexts[view].source
            with tracker.run(
                "rank",
                variant=f"{PARAM}@{view}",
                seed=seed,
                data_hash=tgt.data_hash,
                params={**params[view], "trial": setting},
                budget=k,
                tags={"strategy": PARAM, "source": view, "trial": "0"},
                dataset=("target", tgt.provenance),
                **source_lineage(ckpt),
            ) as run_id:
                out = next(outs)  # a fit that raised (a bug) raises here: its MLflow run ends FAILED
                if "failed" in out:  # diverged: the run ends FAILED, the grid goes on
                    message = (
                        f"rank {name} {PARAM}@{view} k={k} seed={seed}: {out['failed']};"
                        f" lower its learning rate (it trained with {fmt_setting(setting)})"
                    )
                    tracker.log_recorded(run_id, out["logged"])
                    tracker.fail(run_id, message)
                else:
                    result = out["result"]
                    tracker.log_recorded(run_id, result.logged)
                    tracker.log_metrics(
                        run_id,
                        {
                            "fit/best_epoch": result.best_epoch,
                            "fit/seconds": out["seconds"],
                            "fit/n_train": out["n_train"],
                            "fit/n_copied": len(plan.copied),
                            "fit/n_frozen": len(plan.frozen),
                        },
                    )
            record = {
                "config_digest": digest({**params[view], "data_hash": tgt.data_hash, "source_run_id": ckpt["run_id"]}),
                "strategy": PARAM,
                "candidate": view,
                "budget": int(k),
                "seed": int(seed),
                "trial": 0,
                "setting": setting,
                "transfer": layers[view],
                "run_id": run_id,
                "seconds": round(out["seconds"], 2),
                "n_train": int(out["n_train"]),
            }
            if "failed" in out:
                failures.append(message)
                records.append(record | {"failed": message})
                print(f"rank {name} {PARAM + '@' + view:<30} k={k:<3} seed={seed} FAILED: {out['failed']}", flush=True)
                continue
            records.append(
                record
                | {"test": result.test, "best_val": result.best_val, "best_epoch": result.best_epoch, "steps": result.steps, "fits": out["fits"]}
            )
            print(
                f"rank {name} {PARAM + '@' + view:<30} k={k:<3} seed={seed} test/{metric}={result.test[f'test/{metric}']:.4f}"
                f" {ended(result.epochs, result.best_epoch, tcfg.max_epochs)} {out['seconds']:5.1f}s",
                flush=True,
            )
    if failures:  # not stages.warn_failed: these are the param_transfer runs alone, listed by the sources report
        more = f"; and {len(failures) - 1} more" if len(failures) > 1 else ""
        print(
            f"warning: rank {name}: {len(failures)} of {len(job_list)} {PARAM} runs failed and are recorded as failed in {paths.rank}"
            f" (their MLflow runs are FAILED; the sources report lists them): {failures[0]}{more}",
            file=sys.stderr,
        )
    # Written only once every run has finished, so a failure leaves no partial results behind.
    with atomic_dir(paths.rank) as tmp:
        for r in [*probes, *records]:
            write_json(tmp / r["strategy"] / r["candidate"] / f"k{r['budget']}_seed{r['seed']}.json", r)
    print(f"rank {name}: {len(probes)} probe and {len(records)} {PARAM} fits over {len(views)} candidate views -> {paths.rank}")
    return probes + records


main = hydra_entry(run)
