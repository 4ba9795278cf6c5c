"""One run on several processes (Lightning DDP, `trainer.devices` > 1): which settings work, and which
process is the one that tracks and writes.

Lightning's `ddp` strategy starts the other processes by running the same command again with
`LOCAL_RANK` set (its subprocess-script launcher, on the first `Trainer.fit`), so they rerun the
stage from its start. Only rank zero creates MLflow runs and writes outputs; the others train their
share of each minibatch beside it and return. `ddp_spawn` and `ddp_fork` would train in child
processes whose results (the kept epoch, the recorded metrics) never reach the process that logs them.
"""

from __future__ import annotations

import os

from pipeline.errors import PipelineError

STRATEGIES = (None, "auto", "ddp")  # "auto" with several devices is Lightning's ddp (or ddp_notebook in Jupyter)


def rank() -> int:
    """This process's global rank in Lightning's environment variables (0 when none is set)."""
    for key in ("RANK", "LOCAL_RANK"):  # what Lightning's launcher sets in the processes it starts
        if os.environ.get(key):
            return int(os.environ[key])
    return 0


def follower(settings) -> bool:
    """Whether this process is one of a DDP run's other ranks, which train and write nothing."""
    return int(settings.devices) > 1 and rank() != 0


def check(settings, stage: str, supported: bool = False) -> None:
    """trainer.devices and trainer.strategy for `stage`, checked before anything trains: several devices
    only where the stage supports them, with a strategy that trains in this process, and not beside
    `workers` processes (each would start its own process group)."""
    devices, strategy = settings.devices, settings.strategy
    if int(devices) < 1:
        raise PipelineError(f"trainer.devices must be 1 or more (processes one run trains on), got {devices}")
    if int(devices) == 1:
        return
    if not supported:
        raise PipelineError(f"trainer.devices={devices}: the {stage} stage trains on one device; multi-process training is the finetune stage's")
    if strategy not in STRATEGIES:
        raise PipelineError(
            f"trainer.strategy={strategy}: with trainer.devices={devices} use ddp (or null): the stage logs a run's results from the"
            " process that trained it, which ddp_spawn and ddp_fork leave in their child processes"
        )
    if int(settings.workers) > 1:
        raise PipelineError(
            f"trainer.workers={settings.workers} with trainer.devices={devices}: one run on several processes, or several runs side by side,"
            " not both; set trainer.workers=1 (or 0)"
        )
