"""Soft parameter sharing (the survey's "parameter mapping into a shared space"): every task has
its own trunk, and a penalty ties the trunks to their shared mean,

    Omega = lambda * sum_t sum_l || W_t^l - mean_s W_s^l ||^2,

so lambda = 0 gives independent models and lambda -> inf one shared trunk. The right strength
depends on how related the tasks are (a fixed strong coupling hurts unrelated tasks), so
`coupling: auto` lets the multitask stage pick it on validation data from `auto_grid`.
No parameter is literally shared, so gradient-aggregation weightings do not apply to this scheme.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from pipeline.multitask.architectures.single_task import SingleTask


class SoftSharing(SingleTask):
    """Single-task networks plus the coupling penalty."""

    name = "soft"

    def __init__(
        self,
        input_dim,
        tasks,
        hidden: Sequence[int] = (256, 128),
        head_hidden: Sequence[int] = (),
        dropout: float = 0.0,
        coupling: float = 1e-3,
        activation: str = "relu",
    ) -> None:
        super().__init__(input_dim, tasks, hidden, head_hidden, dropout, activation)
        self.coupling = float(coupling)

    def penalty(self):
        if self.coupling == 0.0 or len(self.trunks) < 2:
            return None
        per_layer = zip(*(t.parameters() for t in self.trunks))
        total = sum(((torch.stack(ws) - torch.stack(ws).mean(0)) ** 2).sum() for ws in per_layer)
        return self.coupling * total
