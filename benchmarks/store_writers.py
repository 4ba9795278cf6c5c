"""How many processes can log to one tracking store at once: N writer processes, each logging runs
the way a fine-tune job does (create the run with its tags, its params in batches of 100, per-epoch
metrics in one batch, end it FINISHED), all started together against one store.

Printed per N: wall seconds, runs per second, runs that landed FINISHED of those written, and the
errors by kind (SQLite's "database is locked" is the one to watch). The store is created, and its
experiment too, before the writers start, as `pipeline.sweeps.TrackingStore` does for a sweep;
`--new-store` skips that to show what happens to a new SQLite file opened by N processes at once.

    PYTHONPATH=src python benchmarks/store_writers.py [--writers 1 2 4 8] [--runs 20] [--uri sqlite:///...]
"""

from __future__ import annotations

import argparse
import collections
import multiprocessing as mp
import tempfile
import time
from pathlib import Path


def write(uri: str, experiment: str, writer: int, runs: int, params: int, epochs: int, start, out) -> None:
    errors: collections.Counter = collections.Counter()
    try:
        from pipeline.tracking import Tracker

        start.wait()
        tracker = Tracker(experiment, uri)
    except Exception as exc:  # noqa: BLE001 - the benchmark counts failures by kind
        out.put((writer, 0, {f"{type(exc).__name__}: {str(exc).splitlines()[0][:90]}": 1}))
        return
    done = 0
    for i in range(runs):
        try:
            with tracker.run(
                "finetune", variant="scratch", seed=i, budget=writer, data_hash="h", params={f"p{j}": j for j in range(params)}
            ) as run_id:
                recorded = [(key, 0.5, step, 0) for step in range(epochs) for key in ("train/loss", "val/acc", "val/loss")]
                tracker.log_recorded(run_id, recorded)
            done += 1
        except Exception as exc:  # noqa: BLE001
            errors[f"{type(exc).__name__}: {str(exc).splitlines()[0][:90]}"] += 1
    out.put((writer, done, dict(errors)))


def measure(uri: str, n: int, runs: int, params: int, epochs: int, new_store: bool) -> dict:
    from mlflow.tracking import MlflowClient

    experiment = f"store_writers_{n}_{int(time.time())}"  # apart from earlier measurements on the same server
    if not new_store:
        from pipeline.tracking import experiment_id

        client = MlflowClient(uri)
        client.search_experiments(max_results=1)
        experiment_id(client, experiment, uri)
    ctx = mp.get_context("spawn")  # as joblib's loky and submitit start their jobs: fresh interpreters
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=write, args=(uri, experiment, w, runs, params, epochs, start, out)) for w in range(n)]
    for p in procs:
        p.start()
    time.sleep(8)  # let every writer import MLflow before the gun
    t0 = time.perf_counter()
    start.set()
    results = [out.get() for _ in procs]
    seconds = time.perf_counter() - t0
    for p in procs:
        p.join()
    errors: collections.Counter = collections.Counter()
    for _, _, e in results:
        errors.update(e)
    landed = None
    try:
        client = MlflowClient(uri)
        exp = client.get_experiment_by_name(experiment)
        found = client.search_runs([exp.experiment_id], max_results=50000) if exp else []
        landed = sum(r.info.status == "FINISHED" for r in found)
    except Exception as exc:  # noqa: BLE001 - a corrupted store is a result here
        errors[f"reading the store: {type(exc).__name__}"] += 1
    return {"writers": n, "seconds": seconds, "written": sum(d for _, d, _ in results), "landed": landed, "errors": dict(errors)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--writers", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--runs", type=int, default=20, help="runs per writer")
    parser.add_argument("--params", type=int, default=120, help="params per run (a fine-tune run logs about 120)")
    parser.add_argument("--epochs", type=int, default=60, help="steps of 3 metrics per run")
    parser.add_argument("--uri", help="a tracking server (http://...); default: a new SQLite file per N in a temporary folder")
    parser.add_argument("--new-store", action="store_true", help="do not create the store and experiment before the writers start")
    args = parser.parse_args()
    print(f"{'writers':>7} {'seconds':>8} {'runs/s':>7} {'landed':>11}  errors")
    for n in args.writers:
        with tempfile.TemporaryDirectory() as tmp:
            uri = args.uri or f"sqlite:///{Path(tmp) / 'mlflow.db'}"
            r = measure(uri, n, args.runs, args.params, args.epochs, args.new_store)
        landed = f"{r['landed']}/{n * args.runs}" if r["landed"] is not None else "unreadable"
        print(f"{n:>7} {r['seconds']:>8.1f} {r['written'] / r['seconds']:>7.1f} {landed:>11}  {r['errors'] or 'none'}", flush=True)


if __name__ == "__main__":
    main()
