"""Soft parameter sharing (the survey's "parameter mapping into a shared space"): every task has
its own trunk, and a penalty ties the trunks to their shared mean,

    Omega = lambda * sum_t sum_l || W_t^l - mean_s W_s^l ||^2,

so lambda = 0 gives independent models and lambda -> inf one shared trunk. The right strength
depends on how related the tasks are (a fixed strong coupling hurts unrelated tasks), so
`coupling: auto` lets the multitask stage pick it on validation data from `auto_grid`.
No parameter is literally shared, so gradient-aggregation weightings do not apply to this scheme.
The trunks are `SingleTask`'s stacked branches, so each sum over t is one reduction over the stacked dim.
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
        if self.coupling == 0.0 or len(self.tasks) < 2:
            return None
        b = self.branches  # trunk layers only: the heads stay free
        stacked = [*b.weights[: self.trunk_layers], *b.biases[: self.trunk_layers]]
        return self.coupling * sum(Spread.apply(p) for p in stacked)


class Spread(torch.autograd.Function):
    """S(W) = sum_t ||W_t - mean_s W_s||^2 over the stacked dim 0, with its gradient in closed form:
    dS/dW_t = 2 (W_t - mean) - (2/T) sum_s (W_s - mean) = 2 (W_t - mean), the centred W saved from the
    forward pass. Autograd through the mean would take several more passes over the trunks' weights,
    which at 63 tasks x [256, 128] cost more than the networks' own step."""

    @staticmethod
    def forward(ctx, w: torch.Tensor) -> torch.Tensor:
        centred = w - w.mean(0)
        ctx.save_for_backward(centred)
        flat = centred.reshape(-1)
        return torch.dot(flat, flat)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (centred,) = ctx.saved_tensors
        return centred * (2 * grad)
