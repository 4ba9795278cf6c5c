"""rank: fine-tuning from every candidate source, the reference the sources report
(reports/<experiment>_sources.md) ranks the transferability scores against.

For every view `extract` scored (each candidate's last features and, with `knowledge.layers`, its inner
blocks `<candidate>:block<i>`), at every label budget x seed, on the k labelled rows per class the
scores and the finetune stage read (`pipeline.data.budget_index`):

- the linear probe (`linear_features`, `finetune.fit_linear`): a linear model on the view's features;
- parameter transfer (`param_transfer`), tuned as the finetune stage tunes it (`transfer.tuning`: the
  same trial settings, the trial chosen by cross-validation on the budget's labelled rows, as fine-tuning
  results are obtained in the transferability literature) and trained by `finetune.train_one`: a whole
  candidate transfers the strategy's `transfer` layers, a layer view `<candidate>:block<i>` its first i
  blocks, the rest and the head freshly initialised. `transfer.tuning.trials=1`: its configured setting.

The own source's last features are not refitted here: the finetune stage fits both there
(`linear_features`, and `param_transfer` with the same tuning) and the report reads them from it. Kept
apart from finetune so that a change to the zoo does not retrain the strategies.

One MLflow run per fit or trial (stage `rank`, tags `strategy`, `source` and `trial`), trained side by side on the
machine's cores (`pipeline.training.parallel`); a fit whose loss diverges ends FAILED and the grid goes
on, as in finetune. Results go to artifacts/<experiment>/rank/<strategy>/<view>/k<k>_seed<seed>.json,
all at once when every run has finished. A rerun after the stage was killed reuses the fits it
finished (`pipeline.resume`).
"""

from __future__ import annotations

from omegaconf import DictConfig

from pipeline.errors import PipelineError
from pipeline.stages import check_direction, experiment, hydra_entry, layout, warn_failed

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
    """One parameter-transfer trial from view `job[0]` at (budget, seed, trial): `finetune.train_one` with
    that view's source (its TransferContext) and strategy, keyed by the view's name."""
    from pipeline.stages.finetune import train_one

    return train_one({**c, "ctx": c["contexts"][job[0]]}, job)


def rank_params(cfg: DictConfig, transfer: list[str]) -> dict:
    """What a parameter-transfer run here is configured with: finetune's, less the configured model (the
    architecture comes from the candidate's checkpoint), with the layers this view transfers."""
    from pipeline.stages.finetune import run_params

    params = run_params(cfg, PARAM)
    params.pop("model")
    params["strategy"] = {**params["strategy"], "transfer": list(transfer)}
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

    import functools

    import numpy as np
    from omegaconf import OmegaConf

    from pipeline.config import OWN_SOURCE
    from pipeline.data import TaskSet
    from pipeline.io import atomic_dir, read_json, write_json
    from pipeline.models import build, load_checkpoint
    from pipeline.multitask.baselines import LINEAR_FEATURES
    from pipeline.report.tuning import fmt_setting
    from pipeline.resume import Resume, reap
    from pipeline.stages import ended
    from pipeline.stages.finetune import cv_folds, fit_linear, log_trial, select, source_lineage, trial_entry
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

    # param_transfer tuned as the finetune stage tunes it (transfer.tuning): the same trial settings for every
    # view, the trial chosen by cross-validation on the budget's labelled rows; trials=1: the configured setting.
    node = cfg.transfer.strategies[PARAM]
    checkpoints, contexts, strategies, layers, trials = {}, {}, {}, {}, []
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
            view_node = OmegaConf.merge(node, {"transfer": prefixes})  # transfers the view's first `depth` blocks
        else:
            view_node = node
        trials, built = tuning.plan({PARAM: view_node}, tcfg, [PARAM])
        trials = trials[PARAM]
        strategies |= {(view, i): built[PARAM, i] for i in range(len(trials))}
        layers[view] = list(built[PARAM, 0].transfer)
        contexts[view] = TransferContext(source=ckpt, target=task, input_dim=tgt.x.shape[1], model_cfg=cfg.model)
    plans = {v: strategies[v, 0].build(contexts[v], float(tcfg.lr)) for v in contexts}  # what each copies: tags, metrics
    context = {
        "tgt": tgt,
        "tcfg": tcfg,
        "trainer": trainer_cfg,
        "optimizer": cfg.optimizer,
        "strategies": strategies,  # train_one looks a strategy up by (name, trial): here (view, trial)
        "trials": {v: trials for v in contexts},
        "folds": cv_folds(tgt, tcfg, budgets, seeds),
        "mirrored": tuning.mirrors(tcfg),
        "contexts": contexts,
        "features": None,  # parameter transfer trains on the raw inputs
    }
    n_trials = len(trials)
    job_list = [(v, k, seed, i) for v in contexts for k in budgets for seed in seeds for i in range(n_trials)]
    metric = task.primary
    probes, records, failures, group = [], [], [], []
    params = {v: rank_params(cfg, layers[v]) for v in contexts}
    # The fits a killed earlier try of this stage (same config and inputs) finished are kept, not retrained.
    state = Resume.open(cfg, name, "rank", {"data_hash": tgt.data_hash, "knowledge_run_id": knowledge["run_id"]})
    todo = [job for job in job_list if state.done(job) is None]
    if len(todo) < len(job_list):
        print(f"rank {name}: resumed: {len(job_list) - len(todo)} of {len(job_list)} {PARAM} trials reused from the killed run", flush=True)
    with jobs(fit_one, context, todo, worker_count(trainer_cfg.workers, len(todo), trainer_cfg.accelerator, trainer_cfg.devices)) as outs:
        tracker = Tracker(name, cfg.tracking.uri, trainer=trainer_cfg)
        reap(tracker, "rank")
        # The probes are fitted here while the workers train.
        for view, part in views.items():
            source = {"run_id": part["source_run_id"], "model_id": part.get("source_model_id")}
            fit = functools.partial(fit_linear, cfg, name, tgt, budgets, seeds, tracker, LINEAR_FEATURES, features[view], source, view, stage="rank")
            probes += state.once(("probe", view), fit)
        for view, k, seed, trial in job_list:
            plan, ckpt, setting = plans[view], contexts[view].source, trials[trial]
            label = f"{PARAM}@{view} k={k} seed={seed}" + (f" trial {trial}" if n_trials > 1 else "")
            saved = state.done((view, k, seed, trial))
            if saved is not None:  # finished before the stage was killed: its record and MLflow run as they were
                group.append(saved)
                failures += [saved["failed"]] if "failed" in saved else []
                print(f"rank {name} {label} reused (run {saved['run_id']})", flush=True)
            else:
                with tracker.run(
                    "rank",
                    variant=f"{PARAM}@{view}",
                    seed=seed,
                    data_hash=tgt.data_hash,
                    params={**params[view], "trial": setting},
                    budget=k,
                    tags={"strategy": PARAM, "source": view, "trial": str(trial)},
                    dataset=("target", tgt.provenance),
                    suffix=f"t{trial}" if n_trials > 1 else None,
                    **source_lineage(ckpt),
                ) as run_id:
                    out = next(outs)  # a fit that raised (a bug) raises here: its MLflow run ends FAILED
                    message = None
                    if "failed" in out:  # diverged: the run ends FAILED, the grid goes on
                        message = f"rank {name} {label}: {out['failed']}; lower its learning rate (it trained with {fmt_setting(setting)})"
                        tracker.log_recorded(run_id, out["logged"])
                        tracker.fail(run_id, message)
                    else:
                        log_trial(tracker, run_id, out, plan, metric)
                group.append(trial_entry(out, trial, setting, run_id, message))
                state.finish((view, k, seed, trial), group[-1])
                if message:
                    failures.append(message)
                    print(f"rank {name} {label} FAILED: {out['failed']}", flush=True)
                else:
                    result = out["result"]
                    print(
                        f"rank {name} {label} test/{metric}={result.test[f'test/{metric}']:.4f}"
                        f" {ended(result.epochs, result.best_epoch, tcfg.max_epochs)} {out['seconds']:5.1f}s",
                        flush=True,
                    )
            if len(group) < n_trials:
                continue
            record = {
                "config_digest": digest({**params[view], "data_hash": tgt.data_hash, "source_run_id": ckpt["run_id"]}),
                "strategy": PARAM,
                "candidate": view,
                "budget": int(k),
                "seed": int(seed),
                "transfer": layers[view],
            }
            records.append(record | select(group, task.higher_is_better, tracker))
            group = []
    warn_failed(f"rank {name}", failures, len(job_list), paths.rank, reader="the sources report", what=f"{PARAM} runs")
    # Written only once every run has finished, so a failure leaves no partial results behind.
    with atomic_dir(paths.rank) as tmp:
        for r in [*probes, *records]:
            write_json(tmp / r["strategy"] / r["candidate"] / f"k{r['budget']}_seed{r['seed']}.json", r)
    state.close()
    print(
        f"rank {name}: {len(probes)} probe fits and {len(records)} {PARAM} results ({n_trials} trials each)"
        f" over {len(views)} candidate views -> {paths.rank}"
    )
    return probes + records


main = hydra_entry(run)
