"""multitask: several tasks trained jointly, one sharing scheme x one weighting method per run,
next to the single-task baseline and classic scikit-learn baselines fitted on the same splits.

One MLflow run per scheme x weighting x seed (x coupling candidate), trained side by side on the
machine's cores (`pipeline.training.parallel`) and logged by this process. `scheme`, `weighting` and `seed`
select one value each (Hydra multirun sweeps them); null runs the experiment's grid: every scheme
with equal weights, and every weighting on the schemes in `weightings_on`. A weighting that needs
shared parameters is skipped for schemes that share none (asked for explicitly, that pair is an
error). Architecture knobs set to `auto` are chosen on validation data
from the scheme's `auto_grid`; every candidate is an MLflow run, the chosen one tagged `selected`.
"""

from __future__ import annotations

import itertools
import time

from omegaconf import DictConfig, OmegaConf

from pipeline.errors import Diverged, PipelineError, instantiate
from pipeline.stages import NO_EFFECT, config_dict, ended, experiment, hydra_entry, layout, pick, warn_failed


def baseline(mcfg) -> tuple[str, str]:
    """(scheme, weighting) of `multitask.baseline`, checked against the configured ones."""
    scheme, _, weighting = mcfg.baseline.partition("+")
    if scheme not in mcfg.archs or weighting not in mcfg.weightings:
        raise PipelineError(
            f"multitask.baseline must be <scheme>+<weighting> of multitask.archs {sorted(mcfg.archs)} and "
            f"multitask.weightings {sorted(mcfg.weightings)}, got {mcfg.baseline!r}"
        )
    return scheme, weighting


def auto_candidates(arch_cfg: DictConfig) -> list[dict]:
    """Every assignment of the knobs set to `auto`, from the scheme's `auto_grid`."""
    raw = OmegaConf.to_container(arch_cfg, resolve=True)
    grid_cfg = raw.pop("auto_grid", None) or {}
    autos = [k for k, v in raw.items() if v == "auto"]
    missing = [k for k in autos if k not in grid_cfg]
    if missing:
        raise PipelineError(f"scheme {raw.get('_target_')}: {missing} set to auto but missing from its auto_grid")
    return [{**raw, **dict(zip(autos, values))} for values in itertools.product(*(grid_cfg[k] for k in autos))]


def grid(cfg: DictConfig, exp: DictConfig) -> tuple[list[str], list[str], list[str], bool, tuple[str, str]]:
    """The names the selectors and the experiment pick, checked without building anything: schemes,
    weightings, the schemes every weighting is tried on, whether one pair was asked for by name, and
    the baseline pair."""
    from pipeline.config import settings

    (mcfg,) = settings(cfg, "multitask")
    mt = cfg.multitask
    base = baseline(mcfg)
    # The experiment's own grid (`schemes`, `weightings`; null = all configured), then the selectors.
    schemes = pick(cfg.get("scheme"), pick(exp.get("schemes"), mt.archs.keys(), "scheme in the experiment's schemes"), "scheme")
    weightings = pick(
        cfg.get("weighting"), pick(exp.get("weightings"), mt.weightings.keys(), "weighting in the experiment's weightings"), "weighting"
    )
    explicit = cfg.get("scheme") is not None and cfg.get("weighting") is not None
    # Schemes every weighting is tried on; the others train with equal weights only (unless a
    # scheme is selected by name). Null: the full schemes x weightings product.
    weightings_on = exp.get("weightings_on", mcfg.weightings_on)
    if weightings_on is not None and cfg.get("scheme") is None:
        weightings_on = pick(weightings_on, mt.archs.keys(), "scheme in weightings_on")
    else:
        weightings_on = schemes
    return schemes, weightings, weightings_on, explicit, base


def plan(cfg: DictConfig, exp: DictConfig, input_dim: int, tasks) -> list[tuple[str, str]]:
    """(scheme, weighting) pairs to run, the baseline (`multitask.baseline`) first."""
    from pipeline.multitask.weighting import build, check_compatible

    mt = cfg.multitask
    schemes, weightings, weightings_on, explicit, base = grid(cfg, exp)
    # How many parameters each scheme shares decides which weightings apply; build each net once.
    n_shared = {
        s: len(instantiate(auto_candidates(mt.archs[s])[0], f"scheme {s}", input_dim=input_dim, tasks=tasks).shared_parameters()) for s in schemes
    }
    pairs = []
    for s, w in itertools.product(schemes, weightings):
        if s == base[0] and w != base[1] and not explicit:
            continue  # the baseline is trained once, on plain summed losses
        if w != base[1] and s not in weightings_on:
            continue
        weighting = build(mt.weightings[w], n_tasks=len(tasks))
        try:
            check_compatible(weighting, n_shared[s], s)
        except PipelineError:
            if explicit:
                raise
            print(f"multitask: skipping {s}+{w}: the weighting needs shared parameters and {s} shares none")
            continue
        pairs.append((s, w))
    if cfg.get("scheme") is None and cfg.get("weighting") is None and base not in pairs:
        pairs.insert(0, base)
    return pairs


def classic(ts, names) -> tuple[list[dict], dict[str, str]]:
    """Test metrics of the scikit-learn baselines, in the same form as the neural runs, and the
    baselines that do not apply to these tasks: {name: why} (a baseline returns its reason)."""
    import torch

    from pipeline.multitask import baselines
    from pipeline.training import per_task_metrics, selection_score

    out, skipped = [], {}
    test = ts.splits["test"]
    for name in names:
        fitted = getattr(baselines, name)(ts.x, ts.y, ts.tasks, ts.splits)
        if isinstance(fitted, str):
            skipped[name] = fitted
            print(f"multitask: skipping classic baseline {name}: {fitted}", flush=True)
            continue
        preds, info = fitted
        outputs = [torch.as_tensor(p[test]) for p in preds]
        # Probabilities are fine for the metrics (argmax), values for regression as they are.
        metrics = per_task_metrics(ts.tasks, outputs, torch.as_tensor(ts.y[test]))
        test_metrics = {f"test/{k}": v for k, v in metrics.items()}
        test_metrics["test/score"] = selection_score(ts.tasks, metrics)
        out.append({"scheme": name, "weighting": "sklearn", "seed": 0, "test": test_metrics, "classic": True, "params": info})
    return out, skipped


def run_params(cfg: DictConfig, scheme: str, wname: str) -> dict:
    """The configuration of one scheme x weighting (its `auto` knobs unresolved): digested into each
    result record so the report can tell results of the current configuration from stale ones."""
    mt = config_dict(cfg, "multitask")["multitask"]
    # Left out: what selects runs or reports on them, not how one run trains.
    fit_cfg = {k: v for k, v in config_dict(cfg, "trainer")["trainer"].items() if k not in NO_EFFECT}
    fit_cfg |= {k: v for k, v in mt.items() if k not in ("archs", "weightings", "classic", "baseline", "weightings_on", "batch_candidates")}
    return {
        "multitask": fit_cfg,
        "arch": mt["archs"][scheme],
        "weighting": mt["weightings"][wname],
        "optimizer": config_dict(cfg, "optimizer")["optimizer"],
    }


def train_candidate(c: dict, job: tuple) -> dict:
    """One run (scheme, weighting, seed, arch candidate) on the stage's task set `c`; in a worker
    process or this one (`pipeline.training.parallel`)."""
    import torch

    from pipeline.multitask.weighting import build
    from pipeline.resume import resumed_from
    from pipeline.tracking import digest
    from pipeline.training import TaskModule, fit

    scheme, wname, seed, arch = job
    ts, mcfg = c["ts"], c["mcfg"]
    start = time.perf_counter()
    torch.manual_seed(seed)
    net = instantiate(arch, f"scheme {scheme}", input_dim=ts.x.shape[1], tasks=ts.tasks)
    weighting = build(c["mt"].weightings[wname], n_tasks=len(ts.tasks))
    module = TaskModule(net, ts.tasks, [{"params": list(net.parameters()), "lr": mcfg.lr}], instantiate(c["optimizer"], "optimizer"), weighting)
    state = c.get("state")  # the stage's pipeline.resume.Resume
    last = state.checkpoint((scheme, wname, seed, digest(arch))) if state is not None and weighting.resumable else None
    resumed = resumed_from(last)
    try:
        result = fit(module, c["data"], mcfg, c["trainer"], seed, resume=last)
    except Diverged as exc:  # a result, not an exception: the grid goes on and the stage logs the run FAILED
        return {"failed": exc.describe(), "logged": exc.logged or [], "seconds": time.perf_counter() - start}
    return {"result": result, "history": module.history, "seconds": time.perf_counter() - start, "resumed": resumed}


def train_members(c: dict, job: tuple) -> list[dict]:
    """The coupling candidates of one scheme x weighting x seed as members of one stacked net
    (`pipeline.training.members`): one result per candidate, each the run it would be alone."""
    import torch

    from pipeline.training.members import MembersModule, fit_members

    scheme, wname, seed, archs = job
    ts, mcfg = c["ts"], c["mcfg"]
    start = time.perf_counter()
    nets = []
    for arch in archs:
        torch.manual_seed(seed)  # every candidate starts from the seed's initialisation, as alone
        nets.append(instantiate(arch, f"scheme {scheme}", input_dim=ts.x.shape[1], tasks=ts.tasks))
    net = type(nets[0]).members(nets)
    params = [{"params": list(net.parameters()), "lr": mcfg.lr}]
    module = MembersModule(net, ts.tasks, len(nets), params, instantiate(c["optimizer"], "optimizer"), mcfg.patience)
    try:
        results, histories = fit_members(module, c["data"], mcfg, c["trainer"], seed)
    except Diverged as exc:  # one member diverged: the stacked net fails as a whole, each candidate's run FAILED
        seconds = (time.perf_counter() - start) / len(nets)
        why = f"{exc.describe()} (candidate {exc.member}, trained as a member of one net with the others)"
        return [{"failed": why, "logged": module.member_log[i], "seconds": seconds} for i in range(len(nets))]
    seconds = (time.perf_counter() - start) / len(nets)
    return [{"result": r, "history": h, "seconds": seconds} for r, h in zip(results, histories)]


def train_job(c: dict, job: tuple):
    """A job of the stage: one run, or (a list of archs) the candidates trained as members."""
    return train_members(c, job) if isinstance(job[3], list) else train_candidate(c, job)


def together(mt, scheme: str, wname: str, archs: list[dict]) -> bool:
    """Whether the candidates can train as members of one net and be exactly their runs alone: a
    scheme that stacks (`members`), equal weights (the loss is the sum of the members'), no dropout."""
    from hydra.utils import get_class

    from pipeline.multitask.weighting import build

    if not mt.batch_candidates or len(archs) < 2 or any(a.get("dropout", 0) for a in archs):
        return False
    return hasattr(get_class(archs[0]["_target_"]), "members") and build(mt.weightings[wname], n_tasks=1).plain_sum


def log_classic(tracker, name: str, ts, mcfg) -> tuple[list[dict], dict[str, str]]:
    """The classic baselines fitted (`classic`), one FINISHED MLflow run each: (their records, the skipped ones)."""
    from pipeline.tracking import digest

    fitted, skipped = classic(ts, mcfg.classic)
    for c in fitted:
        method = f"{c['scheme']}+sklearn"
        with tracker.run(
            "multitask",
            variant=method,
            data_hash=ts.data_hash,
            params={"classic": c["params"]},
            tags={"method": method, "scheme": c["scheme"], "weighting": "sklearn", "n_tasks": str(len(ts.tasks))},
            dataset=("tasks", ts.provenance),
        ) as run_id:
            tracker.log_metrics(run_id, c["test"])
            c["run_id"] = run_id
        c["config_digest"] = digest({"classic": c["scheme"], "data_hash": ts.data_hash})
        print(f"multitask {name} {c['scheme']:<24} test/score={c['test']['test/score']:.4f} (scikit-learn)", flush=True)
    return fitted, skipped


def run(cfg: DictConfig) -> list[dict]:
    from pipeline.config import settings

    # User input first: a mistake in it is reported before torch and Lightning load.
    trainer_cfg, mcfg = settings(cfg, "trainer", "multitask")
    name, exp = experiment(cfg, "multitask")
    grid(cfg, exp)
    from pipeline.tracking import check_store

    check_store(cfg.tracking.uri)  # a store that is down or wrong stops the stage before it trains
    from pipeline.training.distributed import check

    check(trainer_cfg, "multitask")

    import torch

    from pipeline.data import TaskSet
    from pipeline.io import write_tree
    from pipeline.resume import Resume, reap
    from pipeline.tracking import Tracker, digest, store_guard
    from pipeline.training.parallel import jobs, worker_count

    paths = layout(cfg, name)
    ts = TaskSet.load(paths.data / "tasks")
    seeds = pick(cfg.get("seed"), list(cfg.multitask.seeds), "seed")
    mt = cfg.multitask
    pairs = plan(cfg, exp, ts.x.shape[1], ts.tasks)
    x, y = torch.as_tensor(ts.x), torch.as_tensor(ts.y)
    # What a killed earlier try of this stage (same config and data) finished is kept, not retrained.
    state = Resume.open(cfg, name, "multitask", {"data_hash": ts.data_hash})
    context = {
        "state": state,
        "ts": ts,
        "mt": mt,
        "mcfg": mcfg,
        "trainer": trainer_cfg,
        "optimizer": cfg.optimizer,
        "data": {s: (x[i], y[i]) for s, i in ts.splits.items()},
    }
    # One job per run: every coupling candidate of every scheme x weighting x seed.
    groups = [((scheme, wname, seed), auto_candidates(mt.archs[scheme])) for (scheme, wname), seed in itertools.product(pairs, seeds)]
    batched = {key: together(mt, key[0], key[1], archs) for key, archs in groups}
    # Candidates a killed earlier try finished are not trained again (a stacked job trains if any of its members is left).
    done = {(*key, i) for key, archs in groups for i in range(len(archs)) if state.done((*key, i)) is not None}
    if done:
        print(f"multitask {name}: resumed: {len(done)} of {sum(len(a) for _, a in groups)} grid runs reused from the killed run", flush=True)
    job_list = []
    for key, archs in groups:
        left = [i for i in range(len(archs)) if (*key, i) not in done]
        job_list += ([(*key, archs)] if left else []) if batched[key] else [(*key, archs[i]) for i in left]
    classic_wanted = cfg.get("scheme") is None and cfg.get("weighting") is None
    results, skipped, failures, fitted, neural = [], None, [], [], []
    guard = store_guard(
        f"multitask {name}",
        cfg.tracking.uri,
        paths.multitask,
        lambda: (
            [f"{c}+sklearn seed=0" for c in (mcfg.classic if classic_wanted else []) if c not in (skipped or {})]
            + [f"{scheme}+{wname} seed={seed}" for (scheme, wname, seed), _ in groups]
        ),
        lambda: [*fitted, *neural],
        lambda r: f"{r['scheme']}+{r['weighting']} seed={r['seed']}",
        lambda r: f"{r['scheme']}+{r['weighting']}/seed{r['seed']}.json",
    )
    with (
        jobs(train_job, context, job_list, worker_count(trainer_cfg.workers, len(job_list), trainer_cfg.accelerator, trainer_cfg.devices)) as outs,
        guard,
    ):
        tracker = Tracker(name, cfg.tracking.uri, trainer=trainer_cfg)
        reap(tracker, "multitask")
        if classic_wanted:
            # Fitted here while the workers train: deterministic fits, one MLflow run each, next to
            # the neural runs they are compared with.
            fitted, skipped = state.once(("classic",), lambda: log_classic(tracker, name, ts, mcfg))
        for (scheme, wname, seed), archs in groups:
            candidates, members = [], None
            configured = run_params(cfg, scheme, wname)
            for i, arch in enumerate(archs):
                params = {**configured, "arch": arch}  # the candidate's `auto` knobs resolved
                method = f"{scheme}+{wname}"
                tags = {"method": method, "scheme": scheme, "weighting": wname, "n_tasks": str(len(ts.tasks))}
                saved = state.done((scheme, wname, seed, i))
                if saved is not None:  # finished before the stage was killed: its record and MLflow run as they were
                    candidates.append(saved)
                    failures += [saved["failed"]] if "failed" in saved else []
                    continue
                with tracker.run(
                    "multitask",
                    variant=method,
                    seed=seed,
                    data_hash=ts.data_hash,
                    params=params,
                    tags=tags | ({"candidate": str(i)} if len(archs) > 1 else {}),
                    dataset=("tasks", ts.provenance),
                    suffix=f"c{i}" if len(archs) > 1 else None,
                ) as run_id:
                    if batched[(scheme, wname, seed)]:
                        members = next(outs) if members is None else members  # a job that raised (a bug) raises here: its run ends FAILED
                        out = members[i]
                    else:
                        out = next(outs)
                    if out.get("resumed"):
                        tracker.set_tags(run_id, {"resumed_from_epoch": str(out["resumed"])})
                        print(f"multitask {name} {method} seed={seed}: resumed from epoch {out['resumed']}", flush=True)
                    if "failed" in out:  # diverged: the run ends FAILED, the grid goes on
                        label = f"{method} seed={seed}" + (f" candidate {i}" if len(archs) > 1 else "")
                        hint = f"lower multitask.lr (it trained with lr {mcfg.lr:g}) or check {method}'s settings"
                        message = f"multitask {name} {label}: {out['failed']}; {hint}"
                        tracker.log_recorded(run_id, out["logged"])
                        tracker.fail(run_id, message)
                    else:
                        res = out["result"]
                        tracker.log_recorded(run_id, res.logged)
                if "failed" in out:
                    failures.append(message)
                    candidates.append({"run_id": run_id, "arch": arch, "failed": message, "seconds": out["seconds"], "steps": 0})
                    state.finish((scheme, wname, seed, i), candidates[-1])
                    print(
                        f"multitask {name} {scheme:<11} {wname:<12} seed={seed}{f' c{i}' if len(archs) > 1 else ''} FAILED: {out['failed']}",
                        flush=True,
                    )
                    continue
                candidates.append(
                    {
                        "scheme": scheme,
                        "weighting": wname,
                        "seed": int(seed),
                        "run_id": run_id,
                        "arch": arch,
                        "test": res.test,
                        "best_val": res.best_val,
                        "best_epoch": res.best_epoch,
                        "epochs": res.epochs,
                        "steps": res.steps,
                        "seconds": out["seconds"],
                        "history": out["history"],
                    }
                )
                state.finish((scheme, wname, seed, i), candidates[-1])
            finished = [c for c in candidates if "failed" not in c]  # a failed candidate is never chosen
            failed = [{k: c[k] for k in ("run_id", "arch", "failed")} for c in candidates if "failed" in c]
            cost = {"seconds": round(sum(c["seconds"] for c in candidates), 2), "steps": sum(c["steps"] for c in candidates)}
            digested = digest({**configured, "data_hash": ts.data_hash})
            if not finished:  # every candidate failed: the result is a failure, which the report lists
                neural.append(
                    {
                        "scheme": scheme,
                        "weighting": wname,
                        "seed": int(seed),
                        "run_id": failed[0]["run_id"],
                        "failed": failed[0]["failed"],
                        "failed_candidates": failed,
                        **cost,
                        "config_digest": digested,
                    }
                )
                continue
            chosen = max(finished, key=lambda c: float("-inf") if c["best_val"] is None else c["best_val"])
            if len(candidates) > 1:
                tracker.client.set_tag(chosen["run_id"], "selected", "true")
            # The time and steps of every candidate: what this scheme x weighting x seed cost.
            chosen = {**chosen, **cost, "config_digest": digested, **({"failed_candidates": failed} if failed else {})}
            neural.append(chosen)
            print(
                f"multitask {name} {scheme:<11} {wname:<12} seed={seed} test/score={chosen['test'].get('test/score', float('nan')):.4f} "
                f"{ended(chosen['epochs'], chosen['best_epoch'], mcfg.max_epochs)} {chosen['seconds']:5.1f}s",
                flush=True,
            )
        warn_failed(f"multitask {name}", failures, sum(len(a) for _, a in groups), paths.multitask)
        results = neural + (fitted if classic_wanted else [])
    # Written once every run has finished, so a failure leaves no partial results behind.
    files = {f"{r['scheme']}+{r['weighting']}/seed{r['seed']}.json": r for r in results}
    if skipped is not None:
        files["skipped.json"] = skipped  # the classic baselines that did not apply, and why
    write_tree(paths.multitask, files)
    state.close()
    return results


main = hydra_entry(run)
