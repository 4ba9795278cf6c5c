"""Resuming a training stage after its process was killed (SIGKILL, out of memory, a lost machine).

`dvc repro` deletes a stage's outs before it reruns it, so what a stage needs to resume lives beside
them, in `.resume/<experiment>/<stage>-<digest>/` at the project root (`tracking.store_root`), keyed
by a digest of the stage's configuration and input data: a changed config never picks up stale state.

    state = Resume.open(cfg, name, "finetune", inputs={...})
    state.done(job) / state.finish(job, record)    the grid runs already finished: their result records
                                                   (with their MLflow run ids), reused, not retrained
    state.checkpoint(job)                          where `fit` keeps a job's last epoch (training.resume)
    state.close()                                  the stage succeeded: the folder goes

Runs the dead process left RUNNING in MLflow are marked FAILED (`reap`); resumed work goes into new
runs, tagged `resumed_from_epoch`. A folder whose owner is still alive (the same stage and config
running twice at once) is not shared: the second process trains from zero, without resume state.
"""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path
from typing import Any

FOLDER = ".resume"
OWNER = "owner.json"


def process_id(pid: int | None = None) -> dict:
    """A process as pid, host and start time: a pid alone may have been reused by a newer process."""
    import psutil

    pid = os.getpid() if pid is None else int(pid)
    return {"pid": pid, "host": socket.gethostname(), "started": psutil.Process(pid).create_time()}


def alive(pid: int, started: float | None = None, before: float | None = None) -> bool:
    """Whether process `pid` of this host is running and is the one meant: started at `started`, or
    (`before`, seconds) already running at that time (a newer process may have been given the pid)."""
    import psutil

    try:
        created = psutil.Process(int(pid)).create_time()
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:  # another user's: running
        return True
    if started is not None:
        return abs(created - float(started)) < 0.5
    return before is None or created <= float(before)


def stage_digest(cfg, inputs: dict[str, Any]) -> str:
    """What a stage's results depend on: its resolved config (less the settings that cannot change a
    run, `stages.NO_EFFECT`) and its inputs' content hashes and run ids."""
    from omegaconf import OmegaConf

    from pipeline.stages import NO_EFFECT
    from pipeline.tracking import digest

    tree = OmegaConf.to_container(cfg, resolve=True)
    tree["trainer"] = {k: v for k, v in (tree.get("trainer") or {}).items() if k not in NO_EFFECT}
    return digest({"config": tree, "inputs": inputs})


class Resume:
    """A stage's resume folder (see the module's doc); `enabled` False: nothing is kept or reused."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder

    @property
    def enabled(self) -> bool:
        return self.folder is not None

    @classmethod
    def open(cls, cfg, experiment: str, stage: str, inputs: dict[str, Any]) -> Resume:
        from pipeline.io import write_json
        from pipeline.tracking import store_root

        base = store_root() / FOLDER / experiment
        folder = base / f"{stage}-{stage_digest(cfg, inputs)}"
        if base.is_dir():  # another config's state for this stage, left by a dead process: stale
            for other in base.glob(f"{stage}-*"):
                if other != folder and not cls._owned(other):
                    shutil.rmtree(other, ignore_errors=True)
        if cls._owned(folder):
            print(f"warning: {folder} belongs to a running process: this {stage} run keeps no resume state", flush=True)
            return cls(None)
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / OWNER, process_id())
        return cls(folder)

    @staticmethod
    def _owned(folder: Path) -> bool:
        """Whether a live process (not this one) of this host owns `folder`."""
        import json

        try:
            owner = json.loads((folder / OWNER).read_text())
        except (OSError, ValueError):
            return False
        if owner.get("host") != socket.gethostname():
            return True  # another machine's: left alone
        if owner.get("pid") == os.getpid():
            return False  # this process's, from a stage it ran before
        return alive(owner["pid"], started=owner.get("started"))

    def _record(self, job: tuple) -> Path:
        return self.folder / "runs" / ("_".join(str(p) for p in job) + ".json")

    def done(self, job: tuple) -> dict | None:
        """The record `finish` kept for `job`, or None when it has to run."""
        if not self.enabled:
            return None
        import json

        path = self._record(job)
        if not path.exists():
            return None
        return json.loads(path.read_text())

    def finish(self, job: tuple, record: dict) -> None:
        """`job` ended (its MLflow run too): its record, kept for a rerun."""
        if self.enabled:
            from pipeline.io import write_json

            write_json(self._record(job), record)

    def once(self, job: tuple, compute):
        """compute()'s result for `job`, from an earlier run of the stage when one finished it."""
        found = self.done(job)
        if found is not None:
            return found["value"]
        value = compute()
        self.finish(job, {"value": value})
        return value

    def checkpoint(self, job: tuple) -> Path | None:
        """Where `fit` keeps `job`'s last epoch (pipeline.training.resume), or None."""
        if not self.enabled:
            return None
        path = self.folder / "fits" / ("_".join(str(p) for p in job) + ".ckpt")
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def close(self) -> None:
        """The stage's outputs are written: nothing left to resume."""
        if self.enabled:
            shutil.rmtree(self.folder, ignore_errors=True)
            try:
                self.folder.parent.rmdir()  # the experiment's folder, when it was the last stage in it
                self.folder.parent.parent.rmdir()
            except OSError:
                pass


def resumed_from(path: Path | None) -> int | None:
    """The epochs a fit's checkpoint at `path` holds (training.resume writes it), or None."""
    if path is None:
        return None
    marker = path.with_suffix(".epoch")
    try:
        return int(marker.read_text())
    except (OSError, ValueError):
        return None


def reap(tracker, stage: str) -> list[str]:
    """Runs of `stage` in the tracker's experiment that a process of this host left RUNNING and that
    process is gone (killed): marked FAILED, with a `failure` tag saying so. Their ids."""
    host = socket.gethostname()
    query = f"attributes.status = 'RUNNING' and tags.stage = '{stage}' and tags.host = '{host}'"
    dead = []
    for run in tracker.client.search_runs([tracker.experiment_id], filter_string=query, max_results=5000):
        pid = run.data.tags.get("pid")
        if not pid or not pid.isdigit() or alive(int(pid), before=run.info.start_time / 1000):
            continue
        message = f"killed: its process (pid {pid} on {host}) ended while the run was RUNNING; a rerun of the stage resumed the work"
        tracker.client.set_tag(run.info.run_id, "failure", message)
        tracker.client.set_terminated(run.info.run_id, "FAILED")
        dead.append(run.info.run_id)
    if dead:
        print(f"{stage}: marked {len(dead)} MLflow run(s) of a killed process FAILED: {', '.join(d[:8] for d in dead)}", flush=True)
    return dead
