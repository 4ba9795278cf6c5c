"""Independent training runs side by side, one per CPU core, in forked worker processes.

A stage's runs (seeds, budgets, strategies, scheme x weighting pairs, coupling candidates) share
only their inputs, and one run of these small models keeps one core busy (torch uses one thread,
conf/trainer/), so C cores finish the grid in about 1/C of the time. Each run is exactly the run
the stage's own process would make: its seed fixes initialisation and batches, and nothing carries
over between runs. Workers are forked, so they inherit the stage's tensors (`context`) instead of
unpickling a copy per run; a job and its result are small. MLflow is written by the stage's process
alone, from the results: several writers to one SQLite store race.

    with jobs(train_one, context, [job, ...], workers) as results:
        for job, result in zip(job_list, results): ...   # in job order, as soon as each is done
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from typing import Any

_TASK: tuple[Callable, Any] | None = None  # (fn, context), inherited by the forked workers
_IN_WORKER = False


def in_worker() -> bool:
    """Whether this process is one of `jobs`' workers (whose progress bars would overwrite each other's)."""
    return _IN_WORKER


def worker_count(setting: int, n_jobs: int, accelerator: str = "cpu", devices: int = 1) -> int:
    """Processes for n_jobs runs: `setting` (conf/trainer/ `workers`) when positive; 0 = one per core
    this process may use, or one when the runs go to a GPU (one device, shared). Never more than the
    jobs, and one where processes cannot be forked (Windows) or a run trains on several processes
    (`devices` > 1, pipeline.training.distributed)."""
    if int(setting) < 0:
        from pipeline.errors import PipelineError

        raise PipelineError(f"trainer.workers must be 0 (one per core) or a positive count, got {setting}")
    if n_jobs <= 1 or int(devices) > 1 or "fork" not in multiprocessing.get_all_start_methods():
        return 1
    if int(setting) > 0:
        return min(int(setting), n_jobs)
    if accelerator != "cpu":
        import torch

        if torch.cuda.is_available():
            return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores, n_jobs))


def _die_with_parent(parent: int) -> None:
    """End this worker when the stage's process ends, killed included (a killed `dvc repro` stage
    left its workers training otherwise): Linux's PR_SET_PDEATHSIG, one libc call no library wraps.
    Elsewhere a killed stage's workers end after their current job."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    # SIGKILL: Lightning's own SIGTERM handler would finish the step and the worker take the next job;
    # a worker writes nothing (the stage does), so nothing is left half-written.
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the stage died before the call above
        os._exit(1)


def _start_worker(parent: int) -> None:
    global _IN_WORKER
    _IN_WORKER = True
    _die_with_parent(parent)
    # numpy/scipy BLAS gets one thread per worker too, as torch does.
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)


def _call(job: Any) -> Any:
    fn, context = _TASK
    return fn(context, job)


@contextmanager
def jobs(fn: Callable[[Any, Any], Any], context: Any, job_list: Sequence[Any], workers: int) -> Iterator[Iterator[Any]]:
    """fn(context, job) for every job on `workers` processes, results yielded in job order. With
    one worker the jobs run lazily in this process, one per result taken. The workers are forked
    when the block is entered (create MLflow clients and such inside it); leaving the block cancels
    what has not started. A job's exception is raised where its result is taken, with the
    worker's traceback attached as its cause."""
    global _TASK
    if workers <= 1:
        yield (fn(context, job) for job in job_list)
        return
    from threadpoolctl import threadpool_limits

    _TASK = (fn, context)
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"), initializer=_start_worker, initargs=(os.getpid(),))
    try:
        futures = [pool.submit(_call, job) for job in job_list]
        # What this process computes meanwhile (scikit-learn baselines) takes one core, not all of them
        # away from the workers (seen here: multi-threaded BLAS in it left each worker 40% of a core).
        with threadpool_limits(1):
            yield (f.result() for f in futures)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        _TASK = None
