"""Where the default study's time goes: every stage's run(cfg) in this process, next to a plain PyTorch loop.

Composes conf/ as `dvc repro` does (default budgets; artifacts, reports and the MLflow SQLite store in a
temporary directory, so the repository is untouched), then runs prepare/pretrain/extract/finetune/report
for every experiment in `experiments` and prepare/multitask/report for every one in
`multitask_experiments`. Printed per stage x experiment, and inside finetune per strategy (summed over
budgets and seeds), inside multitask per scheme+weighting (summed over seeds and coupling candidates):

  run s    the stage's wall time; for a part, the `seconds` of its result records (each run's own time,
           summed over runs that trained side by side on `trainer.workers` processes)
  fit s    time inside pipeline.training.fit (Trainer, training, validation, test), summed over runs
  steps    optimizer steps, from the FitResult of every fit() call
  plain s  the same steps in a plain loop: the same net (a copy), batch size and training tensors,
           AdamW, one thread, summed task losses (+ the net's penalty), no validation; 200 steps timed
           once per process x net shapes x batch size, right after the first such fit, and scaled by
           the step count (that timing runs inside the stage and is printed below the table)
  x plain  run s / plain s: for a part, what our pipeline pays per step over the bare optimisation
           (for weightings other than equal the plain loop still sums the losses, so the factor
           includes the method's own extra work: per-task backward passes of mgda, pcgrad, ...); for
           a stage, its wall time over one process's plain loop, so the workers' gain shows in it

    PYTHONPATH=src python benchmarks/pipeline_time.py [--exp NAME ...] [--quick] [--workers N]

`--workers 1` trains every run in the stage's process, one after another: the time before
pipeline.training.parallel, measured on the same code.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
PLAIN_STEPS = 200
FITS: list[dict] = []  # one entry per fit() call, appended by the wrappers from record_fits()
OWN: list[dict] = []  # the same, in a worker process (or in jobs run in this one), shipped back with each job
PLAIN: dict[tuple, float] = {}  # seconds per plain-loop step, per process x net shapes x batch size
CLASSIC: list[float] = []  # seconds of each multitask stage's scikit-learn baselines (their records carry none)


def compose_cfg(tmp: Path, quick: bool, only: list[str]):
    """conf/ as `dvc repro` runs it, outputs under tmp; quick: 2 epochs, seed 0, the first budget, no sklearn baselines."""
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    overrides = ["trainer.progress_bar=false"]
    if quick:
        overrides += ["pretrain.max_epochs=2", "transfer.max_epochs=2", "multitask.max_epochs=2", "transfer.seeds=[0]", "multitask.seeds=[0]"]
        overrides += ["multitask.classic=[]"]  # the scikit-learn baselines alone take ~80 s on multimnist
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        cfg = compose("config", overrides=overrides)
    os.environ["PIPELINE_ALLOWED_OUTPUTS"] = str(tmp)  # outputs outside the project, allowed by whoever runs it (pipeline.config.check_paths)
    with open_dict(cfg):
        cfg.paths.artifacts = str(tmp / "artifacts")
        cfg.paths.reports = str(tmp / "reports")
        cfg.tracking.uri = f"sqlite:///{tmp / 'mlflow.db'}"
        for group in ("experiments", "multitask_experiments"):
            unknown = set(only) - set(cfg.experiments) - set(cfg.multitask_experiments)
            if unknown:
                raise SystemExit(f"--exp: unknown experiment(s) {sorted(unknown)}")
            for name in list(cfg[group]):
                if only and name not in only:
                    del cfg[group][name]
                elif quick and group == "experiments":
                    cfg[group][name].budgets = list(cfg[group][name].budgets)[:1]
    return cfg


def record_fits() -> None:
    """Wrap pipeline.training.fit (the stages import it inside run()) to keep each call's time and steps, and
    the plain loop's seconds per step on the same net and tensors, timed right after the fit in the process
    that ran it: a stage's runs train in forked workers (pipeline.training.parallel), whose nets stay there.
    What a worker's fits kept comes back with the job's result, taken by the wrapped `jobs`."""
    import pipeline.training as training
    import pipeline.training.parallel as parallel

    real, real_jobs = training.fit, parallel.jobs
    in_jobs = [False]

    def timed(module, data, run, settings, seed, **kwargs):
        start = time.perf_counter()
        result = real(module, data, run, settings, seed, **kwargs)
        seconds = time.perf_counter() - start
        x, y = data["train"]
        bs = min(run.batch_size, len(x))
        # Timed once per process x architecture (trainable shapes) x batch size: weightings and seeds share it.
        key = (type(module.net).__name__, tuple((tuple(p.shape), p.requires_grad) for p in module.net.parameters()), bs, x.shape[1], len(y))
        timing = 0.0
        if key not in PLAIN:
            t0 = time.perf_counter()
            PLAIN[key] = plain_step_seconds(module.net, module.tasks, x, y, bs)
            timing = time.perf_counter() - t0
        result.bench = {"seconds": seconds, "steps": result.steps, "plain": PLAIN[key] * result.steps, "timing": timing}
        (OWN if in_jobs[0] else FITS).append(result.bench)
        return result

    def traced(fn):
        def job(context, one):
            # This job's fit() calls (a fine-tune job makes one per phase, fold and trial), in the process that ran it.
            start = len(OWN)
            out = fn(context, one)
            return out, OWN[start:]

        return job

    @contextmanager
    def taken(fn, context, job_list, workers):
        in_jobs[0] = True
        try:
            with real_jobs(traced(fn), context, job_list, workers) as outs:

                def each():
                    for out, fits in outs:
                        FITS.extend(fits)
                        yield out

                yield each()
        finally:
            in_jobs[0] = False

    import pipeline.training.members as members

    real_members = members.fit_members

    def timed_members(module, data, run, settings, seed):
        # Members train as one stacked net: its plain loop is the same stacked net on the labels repeated
        # per member, for as many steps as the longest member ran, shared out evenly.
        start = time.perf_counter()
        results, histories = real_members(module, data, run, settings, seed)
        seconds, m = time.perf_counter() - start, module.members
        x, y = data["train"]
        bs = min(run.batch_size, len(x))
        key = ("members", m, tuple(tuple(p.shape) for p in module.net.parameters()), bs, x.shape[1], len(y))
        timing = 0.0
        if key not in PLAIN:
            t0 = time.perf_counter()
            PLAIN[key] = plain_step_seconds(module.net, module.tasks, x, module.labels(y), bs)
            timing = time.perf_counter() - t0
        longest = max(r.steps for r in results)
        for r in results:
            r.bench = {"seconds": seconds / m, "steps": r.steps, "plain": PLAIN[key] * longest / m, "timing": timing / m}
            (OWN if in_jobs[0] else FITS).append(r.bench)
        return results, histories

    import pipeline.transfer.schedule as schedule

    training.fit, parallel.jobs, members.fit_members = timed, taken, timed_members
    schedule.fit = timed  # imported by name there

    import pipeline.stages.multitask as multitask  # run() calls its module-level classic() by name

    real_classic = multitask.classic

    def timed_classic(*args):
        start = time.perf_counter()
        out = real_classic(*args)
        CLASSIC.append(time.perf_counter() - start)
        return out

    multitask.classic = timed_classic


def plain_step_seconds(net, tasks, x, y, bs: int) -> float:
    """Seconds per optimizer step of a plain loop over the net, tensors and batch size (200 steps timed after 20 of warm-up)."""
    import torch

    from pipeline.training.metrics import masked_losses
    from pipeline.training.module import outputs

    kept, mode = {k: v.clone() for k, v in net.state_dict().items()}, net.training  # the stage saves the trained net
    net.train()
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-3, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(0)
    for i in range(20 + PLAIN_STEPS):
        if i == 20:
            start = time.perf_counter()
        idx = torch.randperm(len(x), generator=gen)[:bs]
        out, _ = outputs(net, x[idx], y[idx])
        loss = torch.stack(masked_losses(tasks, out, y[idx])).sum()
        penalty = net.penalty()
        if penalty is not None:
            loss = loss + penalty
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    seconds = (time.perf_counter() - start) / PLAIN_STEPS
    net.load_state_dict(kept)
    net.train(mode)
    return seconds


def parts(stage: str, cfg, records, fits: list[dict], seconds: float) -> list[tuple[str, int, float, list[dict]]]:
    """(strategy or scheme+weighting, records, their seconds, their fit() calls) inside finetune/multitask
    (of `seconds` in all), and what the records do not account for."""
    from pipeline.stages.multitask import auto_candidates

    out: dict[str, list] = defaultdict(lambda: [0, 0.0, []])
    calls = iter(fits)
    for r in records:
        if r.get("classic"):
            label, n = r["strategy"] if stage == "finetune" else "sklearn baselines (fits)", 0
        elif stage == "finetune":
            # fit() calls come in record order (strategy x budget x seed x trial): each trial's folds and
            # final fit, each of them one call per phase; a record holds every trial of its run.
            trials = r.get("trials") or [r]
            label, n = r["strategy"], sum(t.get("fits", 1) for t in trials)
        else:
            label, n = f"{r['scheme']}+{r['weighting']}", len(auto_candidates(cfg.multitask.archs[r["scheme"]]))
        taken = [next(calls) for _ in range(n)]
        seconds = sum(t.get("seconds", 0.0) for t in r["trials"]) if stage == "finetune" and r.get("trials") else r.get("seconds", 0.0)
        out[label][0] += 1
        out[label][1] += seconds - sum(f["timing"] for f in taken)  # less this benchmark's own plain loop
        out[label][2] += taken
    if "sklearn baselines (fits)" in out:
        out["sklearn baselines (fits)"][1] = CLASSIC[-1]
    return [(label, *v) for label, v in out.items()]


class Table:
    def __init__(self) -> None:
        self.rows: list[tuple] = []

    def add(self, exp: str, name: str, runs: int, seconds: float, fits: list[dict]) -> None:
        self.rows.append((exp, name, runs, seconds, fits))

    def print(self, total: float) -> None:
        """The table: one row per stage and part, then the totals."""

        def cell(v, fmt):
            return format(v, fmt) if v is not None else "-".rjust(len(format(0, fmt)))

        rows = [
            (exp, name, runs, sec, sum(f["seconds"] for f in fits), sum(f["steps"] for f in fits), sum(f["plain"] for f in fits))
            if fits
            else (exp, name, runs, sec, None, None, None)
            for exp, name, runs, sec, fits in self.rows
        ]
        head = f"{'experiment':<18} {'stage / part':<28} {'runs':>5} {'run s':>8} {'fit s':>8} {'steps':>8} {'plain s':>8} {'x plain':>8}"
        print(head + "\n" + "-" * len(head))
        for exp, name, runs, sec, fit_s, steps, plain in rows:
            factor = sec / plain if plain else None
            cells = f"{cell(fit_s, '8.1f')} {cell(steps, '8d')} {cell(plain, '8.2f')} {cell(factor, '8.1f')}"
            print(f"{exp:<18} {name:<28} {cell(runs or None, '5d')} {sec:>8.1f} {cells}")
        stages = [r for r in rows if not r[1].startswith(" ")]
        fit_s = sum(r[4] or 0 for r in stages)
        steps, plain = sum(r[5] or 0 for r in stages), sum(r[6] or 0 for r in stages)
        print("-" * len(head))
        print(f"{'total':<18} {'all stages':<28} {'':>5} {total:>8.1f} {fit_s:>8.1f} {steps:>8d} {plain:>8.2f} {total / plain if plain else 0:>8.1f}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--exp", action="append", default=[], help="only this experiment (repeatable)")
    p.add_argument("--quick", action="store_true", help="2 epochs, seed 0, one budget, no sklearn baselines: does it run (about a minute)")
    p.add_argument("--workers", type=int, default=None, help="trainer.workers (default: conf/, 0 = one per core)")
    p.add_argument("--trials", type=int, default=None, help="transfer.tuning.trials (default: conf/): the tuning budget's cost")
    args = p.parse_args(argv)

    import torch
    from omegaconf import open_dict

    from pipeline.stages import extract, finetune, multitask, prepare, pretrain, rank, report
    from pipeline.training import quiet

    quiet()
    torch.set_num_threads(1)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.chdir(ROOT)  # prepare reads data/<name>/ relative to the working directory
    record_fits()
    table = Table()
    with tempfile.TemporaryDirectory(prefix="pipeline-time-") as tmp:
        cfg = compose_cfg(Path(tmp), args.quick, args.exp)
        if args.workers is not None:
            cfg.trainer.workers = args.workers
        if args.trials is not None:
            cfg.transfer.tuning.trials = args.trials
        tuning: list[tuple[str, int, float]] = []  # (experiment, trials, finetune seconds)
        candidates = SimpleNamespace(__name__="candidates", run=pretrain.run_candidates)  # DVC's candidate@<name> stages
        chains = [(n, [prepare, pretrain, candidates, extract, finetune, rank, report]) for n in cfg.experiments]
        chains += [(n, [prepare, multitask, report]) for n in cfg.multitask_experiments]
        t0 = time.perf_counter()
        for exp, stages in chains:
            with open_dict(cfg):
                cfg.exp = exp
            for stage in stages:
                name = stage.__name__.rsplit(".", 1)[1]
                first, start = len(FITS), time.perf_counter()
                records = stage.run(cfg)
                seconds, fits = time.perf_counter() - start, FITS[first:]
                runs = len(records) if isinstance(records, list) else len(fits)  # prepare/extract/report: 0
                table.add(exp, name, runs, seconds, fits)
                if name == "finetune":
                    tuning.append((exp, sum(len(r.get("trials") or [r]) for r in records if not r.get("classic")), seconds))
                if name in ("finetune", "multitask"):
                    for label, n, sec, part_fits in parts(name, cfg, records, fits, seconds):
                        table.add(exp, f"  {label}", n, sec, part_fits)
        total = time.perf_counter() - t0
    budgets = "--quick" if args.quick else "default budgets"
    from pipeline.training.parallel import worker_count

    workers = worker_count(cfg.trainer.workers, 1_000_000, cfg.trainer.accelerator)
    print(f"\ntorch {torch.__version__}, {os.cpu_count()} cpus, torch threads {torch.get_num_threads()}, {workers} worker(s); {budgets}")
    table.print(total)
    print("run s: stage wall time, or the result records' seconds for a part; x plain = run s / plain s (see the module docstring)")
    print(f"plain-loop timing inside the stages: {sum(f['timing'] for f in FITS):.1f} s over {workers} process(es)")
    folds = int(cfg.transfer.tuning.folds) if int(cfg.transfer.tuning.trials) > 1 else 0
    for exp, trials, seconds in tuning:
        print(
            f"finetune {exp}: {trials} trials (transfer.tuning.trials={cfg.transfer.tuning.trials}, {folds} folds) in {seconds:.1f} s,"
            f" {trials / seconds:.2f} trials/s"
        )


if __name__ == "__main__":
    main()
