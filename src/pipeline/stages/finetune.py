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

from pipeline.errors import PipelineError, instantiate
from pipeline.stages import NO_EFFECT, config_dict, ended, experiment, hydra_entry, layout, pick


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


def budget_index(y, splits: dict, kind: str, k: int, seed: int, val_labels: str) -> dict:
    """The rows one budget x seed trains, selects and tests on. Budget subsets nest across k at a fixed
    seed; validation labels follow the same budget unless `transfer.val_labels=all` (an optimistic
    few-shot protocol, kept for comparison)."""
    from pipeline.data import label_budget

    return {
        "train": label_budget(y, splits["train"], kind, k, seed),
        "val": label_budget(y, splits["val"], kind, k, seed) if val_labels == "budget" else splits["val"],
        "test": splits["test"],
    }


def fit_linear(cfg: DictConfig, exp_name: str, tgt, budgets, seeds, tracker, name: str, x, source: dict) -> list[dict]:
    """The linear sanity baseline `name` on inputs x (the raw inputs, or the source's features) at every
    budget x seed: one MLflow run and one result record each."""
    import torch

    from pipeline.multitask.baselines import LINEAR_FEATURES, linear_on_budget
    from pipeline.tracking import digest
    from pipeline.training import per_task_metrics

    task, y = tgt.tasks[0], tgt.y[:, 0]
    params = linear_params(cfg, name, source["run_id"])
    lineage = source_lineage(source) if name == LINEAR_FEATURES else {}
    records = []
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
                "finetune",
                variant=name,
                seed=seed,
                data_hash=tgt.data_hash,
                params=params,
                budget=k,
                tags={"strategy": name, "classic": "true"},
                dataset=("target", tgt.provenance),
                **lineage,
            ) as run_id:
                tracker.log_metrics(run_id, {**test, "fit/alpha": alpha, "fit/n_train": len(index["train"]), "fit/seconds": seconds})
            records.append(
                {
                    "config_digest": digest({**params, "data_hash": tgt.data_hash}),
                    "strategy": name,
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
            print(f"finetune {exp_name} {name:<18} k={k:<3} seed={seed} {metric}={test[metric]:.4f} (scikit-learn)", flush=True)
    return records


def train_one(c: dict, job: tuple) -> dict:
    """One run (strategy, budget, seed) on the stage's target `c`; in a worker process or this one
    (`pipeline.training.parallel`)."""
    import torch

    from pipeline.stages.pretrain import split_tensors
    from pipeline.training import TaskModule
    from pipeline.transfer.schedule import train_plan

    strategy_name, k, seed = job
    tgt, tcfg = c["tgt"], c["tcfg"]
    task = tgt.tasks[0]
    index = budget_index(tgt.y[:, 0], tgt.splits, task.kind, k, seed, tcfg.val_labels)
    torch.manual_seed(seed)  # the new layers' initialisation belongs to the seed too
    plan = c["strategies"][strategy_name].build(c["ctx"], tcfg.lr)
    inputs = c["features"] if plan.inputs == "features" else tgt.x
    start = time.perf_counter()
    module = TaskModule.single(plan.net, task, plan.param_groups, instantiate(c["optimizer"], "optimizer"), plan.extra_loss)
    result = train_plan(plan, module, split_tensors(tgt, inputs, index), tcfg, c["trainer"], seed)
    return {"result": result, "seconds": time.perf_counter() - start, "n_train": len(index["train"])}


def run(cfg: DictConfig) -> list[dict]:
    from pipeline.config import settings

    # User input first: a mistake in it is reported before torch and Lightning load.
    trainer_cfg, tcfg = settings(cfg, "trainer", "transfer")
    name, exp = experiment(cfg, "transfer")
    strategy_names, classic = selected(cfg)
    budgets = pick(cfg.get("budget"), list(exp.budgets), "label budget")
    seeds = pick(cfg.get("seed"), list(cfg.seeds), "seed")
    if tcfg.val_labels not in ("budget", "all"):
        raise PipelineError(f"transfer.val_labels must be 'budget' or 'all', got {tcfg.val_labels!r}")

    import numpy as np

    from pipeline.data import TaskSet
    from pipeline.io import read_json, write_json
    from pipeline.models import load_checkpoint
    from pipeline.multitask.baselines import LINEAR, LINEAR_FEATURES
    from pipeline.tracking import Tracker, digest
    from pipeline.training.parallel import jobs, worker_count
    from pipeline.transfer import TransferContext

    paths = layout(cfg, name)
    tgt = TaskSet.load(paths.data / "target")
    ckpt = load_checkpoint(paths.source / "model.pt")
    knowledge = read_json(paths.knowledge / "summary.json", "extract summary")
    features = np.load(paths.knowledge / "features.npy")
    task = tgt.tasks[0]
    ctx = TransferContext(source=ckpt, target=task, input_dim=tgt.x.shape[1], model_cfg=cfg.model, feature_dim=features.shape[1])
    strategies = {s: instantiate(cfg.transfer.strategies[s], f"transfer strategy {s}") for s in strategy_names}
    # What each strategy takes from the source, for its runs' tags and lineage (the same at every seed).
    plans = {s: strategy.build(ctx, tcfg.lr) for s, strategy in strategies.items()}
    context = {
        "tgt": tgt,
        "tcfg": tcfg,
        "trainer": trainer_cfg,
        "optimizer": cfg.optimizer,
        "strategies": strategies,
        "ctx": ctx,
        "features": features,
    }
    job_list = [(s, k, seed) for s in strategy_names for k in budgets for seed in seeds]
    metric = task.primary
    results = []
    with jobs(train_one, context, job_list, worker_count(trainer_cfg.workers, len(job_list), trainer_cfg.accelerator)) as outs:
        tracker = Tracker(name, cfg.tracking.uri)
        # The linear baselines are fitted here while the workers train.
        inputs = {LINEAR: tgt.x, LINEAR_FEATURES: features}
        linear_results = [r for c in classic for r in fit_linear(cfg, name, tgt, budgets, seeds, tracker, c, inputs[c], ckpt)]
        configured = {s: run_params(cfg, s) for s in strategy_names}
        for strategy_name, k, seed in job_list:
            plan, params = plans[strategy_name], configured[strategy_name]
            uses_source = bool(plan.copied) or plan.inputs == "features"
            tags = {"strategy": strategy_name, **({"knowledge_run_id": knowledge["run_id"]} if plan.inputs == "features" else {})}
            lineage = source_lineage(ckpt) if uses_source else {}
            with tracker.run(
                "finetune",
                variant=strategy_name,
                seed=seed,
                data_hash=tgt.data_hash,
                params=params,
                budget=k,
                tags=tags,
                dataset=("target", tgt.provenance),
                **lineage,
            ) as run_id:
                out = next(outs)  # a failed run raises here: its MLflow run ends FAILED
                result, seconds = out["result"], out["seconds"]
                tracker.log_recorded(run_id, result.logged)
                tracker.log_metrics(
                    run_id,
                    {
                        "fit/best_epoch": result.best_epoch,
                        "fit/seconds": seconds,
                        "fit/n_train": out["n_train"],
                        "fit/n_copied": len(plan.copied),
                        "fit/n_frozen": len(plan.frozen),
                    },
                )
            results.append(
                {
                    "config_digest": digest({**params, "data_hash": tgt.data_hash, "source_run_id": ckpt["run_id"]}),
                    "strategy": strategy_name,
                    "budget": int(k),
                    "seed": int(seed),
                    "run_id": run_id,
                    "test": result.test,
                    "best_epoch": result.best_epoch,
                    "steps": result.steps,
                    "seconds": round(seconds, 2),
                    "n_train": int(out["n_train"]),
                }
            )
            print(
                f"finetune {name} {strategy_name:<18} k={k:<3} seed={seed} test/{metric}={result.test[f'test/{metric}']:.4f} "
                f"{ended(result.epochs, result.best_epoch, tcfg.max_epochs)} {seconds:5.1f}s",
                flush=True,
            )
    results += linear_results
    # Written only once every run has finished, so a failure leaves no partial results behind.
    for r in results:
        write_json(paths.finetune / r["strategy"] / f"k{r['budget']}_seed{r['seed']}.json", r)
    return results


main = hydra_entry(run)
