"""finetune: the target task learned from few labels by each transfer strategy.

One MLflow run per strategy x label budget x seed, trained side by side on the machine's cores
(`pipeline.training.parallel`, start-up paid once) and logged by this process.
`strategy`, `budget` and `seed` select one value each (Hydra multirun sweeps them); null runs all.
The seed fixes both the initialisation and which k labels per class are drawn, so at one seed every
strategy sees the same labelled examples and their differences are paired.

Next to the strategies, two linear sanity baselines (ridge for regression, logistic regression for
classes; `multitask.baselines.linear_on_budget`) are fitted on the same k labelled rows per budget x
seed, alpha chosen on the same validation labels: `linear` on the raw inputs, and `linear_features` on
the frozen source network's features (`extract`), so a network strategy that loses to a linear model
on the source's own features shows. One MLflow run each (tag `classic`), its record next to the
strategies' (`classic: true`). `strategy=<its name>` selects one alone; null fits them with the rest.
"""

from __future__ import annotations

import time

from omegaconf import DictConfig

from pipeline.data import budget_index
from pipeline.errors import Diverged, PipelineError, instantiate
from pipeline.stages import NO_EFFECT, check_direction, config_dict, ended, experiment, hydra_entry, layout, pick, warn_failed


def run_params(cfg: DictConfig, strategy_name: str) -> dict:
    """What one strategy's runs are configured with: logged as MLflow params, and digested into each
    result record so the report can tell results of the current configuration from stale ones."""
    fit_cfg = {k: v for k, v in config_dict(cfg, "trainer")["trainer"].items() if k not in NO_EFFECT}
    fit_cfg.update({k: v for k, v in config_dict(cfg, "transfer")["transfer"].items() if k not in ("strategies", "baseline")})
    return config_dict(cfg, "model", "optimizer") | {
        "transfer": fit_cfg,
        "strategy": config_dict(cfg.transfer.strategies, strategy_name)[strategy_name],
    }


def selected(cfg: DictConfig) -> tuple[list[str], list[str]]:
    """The transfer strategies the `strategy` selector picks, and the linear baselines it picks
    (`linear`, `linear_features`; null picks all of them)."""
    from pipeline.multitask.baselines import LINEAR, LINEAR_FEATURES

    classic = [LINEAR, LINEAR_FEATURES]
    chosen = pick(cfg.get("strategy"), [*cfg.transfer.strategies.keys(), *classic], "strategy")
    return [s for s in chosen if s not in classic], [s for s in classic if s in chosen]


def linear_params(cfg: DictConfig, name: str | None = None, source_run_id: str | None = None) -> dict:
    """What a linear baseline's runs are configured with (as run_params for a strategy): `linear`
    (default) on the raw inputs; `linear_features` on the features of the source run's network."""
    from pipeline.multitask.baselines import ALPHAS, LINEAR

    params = {"classic": LINEAR, "alphas": list(ALPHAS), "val_labels": cfg.transfer.val_labels}
    return params if name in (None, LINEAR) else params | {"classic": name, "inputs": "source features", "source_run_id": source_run_id}


def source_lineage(ckpt: dict) -> dict:
    """`Tracker.start`'s lineage arguments for a run that used the source checkpoint: its pretrain run and model."""
    return {"source_run_id": ckpt["run_id"], "source_model_id": ckpt.get("model_id")}


def fit_linear(
    cfg: DictConfig,
    exp_name: str,
    tgt,
    budgets,
    seeds,
    tracker,
    name: str,
    x,
    source: dict,
    candidate: str | None = None,
    records: list | None = None,
    stage: str = "finetune",
) -> list[dict]:
    """The linear sanity baseline `name` on inputs x (the raw inputs, or the source's features) at every
    budget x seed: one MLflow run and one result record each, appended to `records` as each is logged
    (what a store failing mid-way keeps). `candidate`: x are that candidate source's features (extract),
    the linear probe the sources report ranks candidates by (stage `rank`)."""
    import torch

    from pipeline.config import OWN_SOURCE
    from pipeline.multitask.baselines import LINEAR_FEATURES, linear_on_budget
    from pipeline.tracking import digest
    from pipeline.training import per_task_metrics

    task, y = tgt.tasks[0], tgt.y[:, 0]
    params = linear_params(cfg, name, source["run_id"])
    lineage = source_lineage(source) if name == LINEAR_FEATURES else {}
    records = [] if records is None else records
    for k in budgets:
        for seed in seeds:
            index = budget_index(y, tgt.splits, task.kind, k, seed, cfg.transfer.val_labels)
            start = time.perf_counter()
            pred, alpha = linear_on_budget(x, y, task, index)
            test = {
                f"test/{m}": v for m, v in per_task_metrics([task], [torch.as_tensor(pred)], torch.as_tensor(y[index["test"], None]), False).items()
            }
            seconds = time.perf_counter() - start
            with tracker.run(
                stage,
                variant=f"{name}@{candidate}" if candidate else name,
                seed=seed,
                data_hash=tgt.data_hash,
                params=params,
                budget=k,
                tags={"strategy": name, "classic": "true", **({"source": candidate or OWN_SOURCE} if name == LINEAR_FEATURES else {})},
                dataset=("target", tgt.provenance),
                **lineage,
            ) as run_id:
                tracker.log_metrics(run_id, {**test, "fit/alpha": alpha, "fit/n_train": len(index["train"]), "fit/seconds": seconds})
            records.append(
                {
                    "config_digest": digest({**params, "data_hash": tgt.data_hash}),
                    "strategy": name,
                    **({"candidate": candidate} if candidate else {}),
                    "classic": True,
                    "budget": int(k),
                    "seed": int(seed),
                    "run_id": run_id,
                    "test": test,
                    "alpha": alpha,
                    "seconds": round(seconds, 3),
                    "n_train": int(len(index["train"])),
                }
            )
            metric = f"test/{task.primary}"
            label = f"{name}@{candidate}" if candidate else name
            print(f"{stage} {exp_name} {label:<18} k={k:<3} seed={seed} {metric}={test[metric]:.4f} (scikit-learn)", flush=True)
    return records


def cv_folds(tgt, tcfg, budgets, seeds) -> dict[tuple[int, int], list]:
    """(budget, seed) -> its cross-validation folds, (fit rows, held-out rows) over the budget's labelled
    train and validation rows; none when untuned. Computed up front, so a fold count the smallest class
    cannot fill is an error before any training."""
    from pipeline.data import labelled_rows
    from pipeline.transfer.tuning import folds, mirrored, mirrors

    if int(tcfg.tuning.trials) <= 1:
        return {}
    task, y = tgt.tasks[0], tgt.y[:, 0]
    out = {}
    for k in budgets:
        for seed in seeds:
            index = budget_index(y, tgt.splits, task.kind, k, seed, tcfg.val_labels)
            if mirrors(tcfg):
                out[k, seed] = mirrored(index)
            else:
                out[k, seed] = folds(
                    y, labelled_rows(index), task.kind, int(tcfg.tuning.folds), int(tcfg.tuning.seed) + int(seed), f"k={k}, seed {seed}"
                )
    return out


def train_one(c: dict, job: tuple) -> dict:
    """One trial (strategy, budget, seed, trial) on the stage's target `c`, in a worker process or this
    one (`pipeline.training.parallel`): with tuning, its cross-validated score (one fit per fold,
    `pipeline.transfer.tuning`), then the fit on the budget's train rows, its epoch chosen on the
    validation rows, tested."""
    import torch

    from pipeline.stages.pretrain import split_tensors
    from pipeline.training import TaskModule
    from pipeline.transfer.schedule import train_plan

    strategy_name, k, seed, trial = job
    tgt, tcfg = c["tgt"], c["tcfg"]
    task = tgt.tasks[0]
    strategy, setting = c["strategies"][strategy_name, trial], c["trials"][strategy_name][trial]
    lr = float(setting.get("lr", tcfg.lr))
    index = budget_index(tgt.y[:, 0], tgt.splits, task.kind, k, seed, tcfg.val_labels)

    fits = []  # fit() calls, for benchmarks/pipeline_time.py

    def train(rows: dict):
        torch.manual_seed(seed)  # the new layers' initialisation belongs to the seed too
        plan = strategy.build(c["ctx"], lr)
        fits.append(len(plan.phases or [None]))
        inputs = c["features"] if plan.inputs == "features" else tgt.x
        module = TaskModule.single(plan.net, task, plan.param_groups, instantiate(c["optimizer"], "optimizer"), plan.extra_loss)
        return train_plan(plan, module, split_tensors(tgt, inputs, rows), tcfg, c["trainer"], seed)

    start = time.perf_counter()
    result, folds = None, []
    cv, fold = c["folds"].get((k, seed), []), None
    try:
        for i, (fit_rows, held) in enumerate(cv):
            fold = f"cross-validation fold {i + 1} of {len(cv)}"
            if i == 0 and c["mirrored"]:  # the budget's own split: the result's fit is this fold's
                result = train(index)
                folds.append(result.best_val)
            else:  # the held-out rows choose the fold's epochs and score it; its "test" pass reads them too (unused)
                folds.append(train({"train": fit_rows, "val": held, "test": held}).best_val)
        fold = None
        result = result or train(index)
    except Diverged as exc:  # a result, not an exception: the grid goes on and the stage logs the run FAILED
        exc.where = (*exc.where, *([fold] if fold else []))
        return {"failed": exc.describe(), "logged": exc.logged or [], "seconds": time.perf_counter() - start, "n_train": len(index["train"])}
    folds = [float("nan") if v is None else float(v) for v in folds]  # None: no finite validation score
    return {"result": result, "seconds": time.perf_counter() - start, "n_train": len(index["train"]), "folds": folds, "fits": sum(fits)}


def log_trial(tracker, run_id: str, out: dict, plan, metric: str) -> None:
    """A finished trial's MLflow metrics: what its fits logged, the kept fit's figures and, when tuned, its
    cross-validated score."""
    import numpy as np

    result, folds = out["result"], out["folds"]
    tracker.log_recorded(run_id, result.logged)
    cv = {f"cv/{metric}": float(np.mean(folds)), "cv/folds": len(folds)} if folds else {}
    fit = {
        "best_epoch": result.best_epoch,
        "seconds": out["seconds"],
        "n_train": out["n_train"],
        "n_copied": len(plan.copied),
        "n_frozen": len(plan.frozen),
    }
    tracker.log_metrics(run_id, {**{f"fit/{k}": v for k, v in fit.items()}, **cv})


def trial_entry(out: dict, trial: int, setting: dict, run_id: str, failed: str | None = None) -> dict:
    """One trial of a result (`train_one`'s output `out`, logged as `run_id`), as `select` chooses among them."""
    import numpy as np

    if failed is not None:
        return {"trial": trial, "setting": setting, "cv": None, "run_id": run_id, "failed": failed, "seconds": round(out["seconds"], 2)}
    result, folds = out["result"], out["folds"]
    return {
        "trial": trial,
        "setting": setting,
        "cv": float(np.mean(folds)) if folds else None,
        "run_id": run_id,
        "test": result.test,
        "best_val": result.best_val,
        "best_epoch": result.best_epoch,
        "steps": result.steps,
        "seconds": round(out["seconds"], 2),
        "fits": out["fits"],
        "n_train": int(out["n_train"]),
    }


TRIAL_KEYS = ("trial", "setting", "cv", "run_id", "test", "seconds", "fits", "failed")


def select(group: list[dict], higher_is_better: bool, tracker) -> dict:
    """A result from its trials (`trial_entry`s): the trial with the best cross-validated score (a failed
    one is never chosen; every trial failed: a failure the report lists) and every trial in brief. Each
    trial's run is tagged `selected` when there were several."""
    from pipeline.transfer import tuning

    finished = [g for g in group if "failed" not in g]
    if finished:
        chosen = finished[tuning.best_trial([g["cv"] if g["cv"] is not None else float("nan") for g in finished], higher_is_better)]
        if len(group) > 1:
            for g in group:
                tracker.set_tags(g["run_id"], {"selected": str(g is chosen).lower()})
        record = dict(chosen)
    else:
        record = {"run_id": group[0]["run_id"], "failed": group[0]["failed"] if len(group) == 1 else f"all {len(group)} trials failed"}
    return record | {"trials": [{key: g[key] for key in TRIAL_KEYS if key in g} for g in group]}


def train_beside(context: dict, job_list: list) -> list[dict]:
    """A DDP follower (pipeline.training.distributed): Lightning's launcher reran this stage with
    LOCAL_RANK > 0; it trains its share of rank zero's runs, in the same order, and logs and writes
    nothing (rank zero does)."""
    for job in job_list:
        train_one(context, job)
    return []


def result_label(r: dict) -> str:
    """One result (a strategy, linear baseline or candidate's probe at a budget x seed), as an error names it."""
    return f"{r['strategy']}{'@' + r['candidate'] if r.get('candidate') else ''} k={r['budget']} seed={r['seed']}"


def result_path(r: dict) -> str:
    """Where a result is written, relative to the stage's output folder."""
    return f"{'sources/' + r['candidate'] if r.get('candidate') else r['strategy']}/k{r['budget']}_seed{r['seed']}.json"


def grid_labels(job_list: list[tuple], classic: list[str], budgets: list, seeds: list) -> list[str]:
    """The `result_label` of every result the grid makes: the strategies' (trials collapsed) and the linear baselines'."""
    keys = [*dict.fromkeys((s, k, seed) for s, k, seed, _ in job_list)]
    keys += [(c, k, seed) for c in classic for k in budgets for seed in seeds]
    return [f"{s} k={k} seed={seed}" for s, k, seed in keys]


def run(cfg: DictConfig) -> list[dict]:
    from pipeline.config import settings

    # User input first: a mistake in it is reported before torch and Lightning load.
    trainer_cfg, tcfg = settings(cfg, "trainer", "transfer")
    name, exp = experiment(cfg, "transfer")
    strategy_names, classic = selected(cfg)
    budgets = pick(cfg.get("budget"), list(exp.budgets), "label budget")
    seeds = pick(cfg.get("seed"), list(cfg.transfer.seeds), "seed")
    if tcfg.val_labels not in ("budget", "all"):
        raise PipelineError(f"transfer.val_labels must be 'budget' or 'all', got {tcfg.val_labels!r}")

    from pipeline.tracking import check_store

    check_store(cfg.tracking.uri)  # a store that is down or wrong stops the stage before it trains
    from pipeline.training.distributed import check, follower

    check(trainer_cfg, "finetune", supported=True)

    import numpy as np

    from pipeline.config import OWN_SOURCE
    from pipeline.data import TaskSet
    from pipeline.io import read_json, write_tree
    from pipeline.models import load_checkpoint
    from pipeline.multitask.baselines import LINEAR, LINEAR_FEATURES
    from pipeline.report.tuning import fmt_setting
    from pipeline.resume import Resume, reap
    from pipeline.tracking import Tracker, digest, store_guard
    from pipeline.training.parallel import jobs, worker_count
    from pipeline.transfer import TransferContext, tuning

    paths = layout(cfg, name)
    tgt = TaskSet.load(paths.data / "target")
    ckpt = load_checkpoint(paths.source / "model.pt")
    knowledge = read_json(paths.knowledge / "summary.json", "extract summary")
    features = np.load(paths.knowledge / "features.npy")
    task = tgt.tasks[0]
    check_direction(f"val/{task.primary}", task.higher_is_better)
    ctx = TransferContext(source=ckpt, target=task, input_dim=tgt.x.shape[1], model_cfg=cfg.model, feature_dim=features.shape[1])
    trials, strategies = tuning.plan(cfg.transfer.strategies, tcfg, strategy_names)
    # What each strategy takes from the source, for its runs' tags and lineage (the same at every seed and trial).
    plans = {s: strategies[s, 0].build(ctx, tcfg.lr) for s in strategy_names}
    context = {
        "tgt": tgt,
        "tcfg": tcfg,
        "trainer": trainer_cfg,
        "optimizer": cfg.optimizer,
        "strategies": strategies,
        "trials": trials,
        "folds": cv_folds(tgt, tcfg, budgets, seeds),
        "mirrored": tuning.mirrors(tcfg),
        "ctx": ctx,
        "features": features,
    }
    n_trials = int(tcfg.tuning.trials)
    job_list = [(s, k, seed, i) for s in strategy_names for k in budgets for seed in seeds for i in range(len(trials[s]))]
    if follower(trainer_cfg):
        return train_beside(context, job_list)
    metric = task.primary
    results, failures, linear_results = [], [], []
    guard = store_guard(
        f"finetune {name}",
        cfg.tracking.uri,
        paths.finetune,
        lambda: grid_labels(job_list, classic, budgets, seeds),
        lambda: [*linear_results, *results],
        result_label,
        result_path,
    )
    # The runs a killed earlier try of this stage (same config and inputs) finished are kept, not retrained.
    # Not under DDP: both processes must train the same jobs in the same order.
    inputs = {"data_hash": tgt.data_hash, "source_run_id": ckpt["run_id"], "knowledge_run_id": knowledge["run_id"]}
    state = Resume.open(cfg, name, "finetune", inputs) if int(trainer_cfg.devices) == 1 else Resume(None)
    todo = [job for job in job_list if state.done(job) is None]
    if len(todo) < len(job_list):
        print(f"finetune {name}: resumed: {len(job_list) - len(todo)} of {len(job_list)} grid runs reused from the killed run", flush=True)

    def linear_once(key: tuple, into: list, *args, **kwargs) -> None:
        """fit_linear's records appended to `into` as each is logged (what a failing store keeps), or
        the records a killed earlier try finished."""
        n = len(into)
        got = state.once(key, lambda: fit_linear(cfg, name, tgt, budgets, seeds, tracker, *args, **kwargs, records=into)[n:])
        if len(into) == n:  # reused, not fitted
            into += got

    with jobs(train_one, context, todo, worker_count(trainer_cfg.workers, len(todo), trainer_cfg.accelerator, trainer_cfg.devices)) as outs, guard:
        tracker = Tracker(name, cfg.tracking.uri, trainer=trainer_cfg)
        reap(tracker, "finetune")
        # The linear baselines are fitted here while the workers train.
        inputs = {LINEAR: tgt.x, LINEAR_FEATURES: features}
        for c in classic:
            linear_once(("linear", c), linear_results, c, inputs[c], ckpt)
        configured = {s: run_params(cfg, s) for s in strategy_names}
        group: list[dict] = []
        for strategy_name, k, seed, trial in job_list:
            plan, params = plans[strategy_name], configured[strategy_name]
            uses_source = bool(plan.copied) or plan.inputs == "features"
            tags = {
                "strategy": strategy_name,
                **({"source": OWN_SOURCE} if uses_source else {}),  # the candidate the sources report and the MLflow UI group by
                **({"knowledge_run_id": knowledge["run_id"]} if plan.inputs == "features" else {}),
            }
            setting = trials[strategy_name][trial]
            job = (strategy_name, k, seed, trial)
            saved = state.done(job)
            if saved is not None:  # finished before the stage was killed: its record and MLflow run as they were
                group.append(saved)
                failures += [saved["failed"]] if "failed" in saved else []
                print(
                    f"finetune {name} {strategy_name:<18} k={k:<3} seed={seed}{f' t{trial}' if n_trials > 1 else ''} reused (run {saved['run_id']})",
                    flush=True,
                )
            else:
                with tracker.run(
                    "finetune",
                    variant=strategy_name,
                    seed=seed,
                    data_hash=tgt.data_hash,
                    params={**params, "trial": setting},  # the trial number is a tag and a param (PARAM_TAGS)
                    budget=k,
                    tags={**tags, "trial": str(trial)},
                    dataset=("target", tgt.provenance),
                    suffix=f"t{trial}" if n_trials > 1 else None,
                    **(source_lineage(ckpt) if uses_source else {}),
                ) as run_id:
                    out = next(outs)  # a run that raised (a bug) raises here: its MLflow run ends FAILED
                    if "failed" in out:  # diverged: the run ends FAILED, the grid goes on
                        label = f"{strategy_name} k={k} seed={seed}" + (f" trial {trial}" if n_trials > 1 else "")
                        message = f"finetune {name} {label}: {out['failed']}; lower its learning rate (it trained with {fmt_setting(setting)})"
                        tracker.log_recorded(run_id, out["logged"])
                        tracker.fail(run_id, message)
                    else:
                        log_trial(tracker, run_id, out, plan, metric)
                group.append(trial_entry(out, trial, setting, run_id, message if "failed" in out else None))
                if "failed" in out:
                    failures.append(message)
                    print(
                        f"finetune {name} {strategy_name:<18} k={k:<3} seed={seed}{f' t{trial}' if n_trials > 1 else ''} FAILED: {out['failed']}",
                        flush=True,
                    )
                else:
                    result, seconds = out["result"], out["seconds"]
                    # A phased plan (LP-FT, gradual unfreezing) trains up to max_epochs in each phase.
                    phases = len(plan.phases or [None])
                    how = (
                        ended(result.epochs, result.best_epoch, tcfg.max_epochs)
                        if phases == 1
                        else f"epochs {result.epochs} in {phases} phases (at most {phases * tcfg.max_epochs}), best {result.best_epoch + 1}"
                    )
                    print(
                        f"finetune {name} {strategy_name:<18} k={k:<3} seed={seed}{f' t{trial}' if n_trials > 1 else ''} "
                        f"test/{metric}={result.test[f'test/{metric}']:.4f} {how} {seconds:5.1f}s",
                        flush=True,
                    )
                state.finish(job, group[-1])
            if len(group) < len(trials[strategy_name]):
                continue
            record = {
                "config_digest": digest({**params, "data_hash": tgt.data_hash, "source_run_id": ckpt["run_id"]}),
                "strategy": strategy_name,
                "budget": int(k),
                "seed": int(seed),
            }
            results.append(record | select(group, task.higher_is_better, tracker))
            group = []
    warn_failed(f"finetune {name}", failures, len(job_list), paths.finetune)
    results += linear_results
    # Written only once every run has finished, so a failure leaves no partial results behind.
    write_tree(paths.finetune, {f"{r['strategy']}/k{r['budget']}_seed{r['seed']}.json": r for r in results})
    state.close()
    return results


def objective(results: list[dict]) -> float:
    """What a Hydra sweeper (Optuna) optimises for one job of this stage: the mean over its strategy runs
    of the score the stage selects on, the cross-validated score when tuned, else the validation score
    at the kept epoch; both read only the labels a user has at the budget, never the test split. NaN (a
    failed trial to Optuna) when a run had no finite validation score."""
    import math

    if not results:  # a DDP follower's (train_beside): rank zero's process returns the objective
        return float("nan")
    scores = [r["cv"] if r.get("cv") is not None else r.get("best_val") for r in results if not r.get("classic")]
    if not scores:
        raise PipelineError("a sweep of the finetune stage optimises the validation score of a network strategy: select one with strategy=")
    return float("nan") if any(s is None for s in scores) else math.fsum(scores) / len(scores)


main = hydra_entry(run, objective=objective)
