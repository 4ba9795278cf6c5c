"""Multitask architectures: input -> one output per task, and which parameters the tasks share.

The survey's three sharing schemes plus the independent baseline, one module each:
`hard` (shared parameters), `soft` (per-task parameters tied to a shared space), `mmoe` (shared
sub-networks, per-task routing) and `single_task` (nothing shared). Weighting methods see only this
interface, so any scheme pairs with any weighting that its sharing allows.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from pipeline.data import TaskSpec
from pipeline.models import MLP


class MultitaskNet(nn.Module):
    """Base class. Subclasses build their modules and implement `forward`."""

    name = "multitask"
    # True: forward(x, labelled) takes the [N, T] bool mask of labelled entries and may compute only
    # those (the others are NaN); the training module passes it (`pipeline.training.module.outputs`).
    routes_by_task = False
    # True: training adds the penalty's gradient itself (`add_penalty_grad`) instead of back-propagating
    # `penalty()` (pipeline.training.module.backward_step).
    closed_form_penalty = False

    def __init__(self, input_dim: int, tasks: Sequence[TaskSpec]) -> None:
        super().__init__()
        self.input_dim = int(input_dim)
        self.tasks = list(tasks)

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
        """Per-task outputs, and the shared representation the task heads read (None if none)."""
        raise NotImplementedError

    def shared_parameters(self) -> list[nn.Parameter]:
        return []

    def task_parameters(self, t: int) -> list[nn.Parameter]:
        raise NotImplementedError

    def penalty(self) -> torch.Tensor | None:
        """An extra loss term coupling the tasks' parameters (soft sharing); None when there is none."""
        return None


def heads(in_dim: int, tasks: Sequence[TaskSpec], hidden: Sequence[int] = (), dropout: float = 0.0) -> nn.ModuleList:
    """One head per task: an optional MLP tower, then a linear output sized for the task."""
    out = nn.ModuleList()
    for task in tasks:
        tower = MLP(in_dim, hidden, dropout)
        out.append(nn.Sequential(tower, nn.Linear(tower.out_dim, task.n_outputs)))
    return out
