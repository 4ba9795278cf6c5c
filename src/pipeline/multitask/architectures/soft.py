"""Soft parameter sharing (the survey's "parameter mapping into a shared space"): every task has
its own trunk, and a penalty ties the trunks to their shared mean,

    Omega = lambda * sum_t sum_l || W_t^l - mean_s W_s^l ||^2,

so lambda = 0 gives independent models and lambda -> inf one shared trunk. The right strength
depends on how related the tasks are (a fixed strong coupling hurts unrelated tasks), so
`coupling: auto` lets the multitask stage pick it on validation data from `auto_grid`.
No parameter is literally shared, so gradient-aggregation weightings do not apply to this scheme.
The trunks are `SingleTask`'s stacked branches, so each sum over t is one reduction over the stacked dim;
several coupling candidates can train as the members of one net (`pipeline.training.members`).
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
        self.couplings = torch.tensor([self.coupling])  # one per member (`SingleTask.members`)

    def join_members(self, nets) -> None:
        self.couplings = torch.tensor([n.coupling for n in nets])

    def penalty(self):
        t = len(self.tasks) // self.n_members
        if t < 2 or not bool((self.couplings != 0).any()):
            return None
        b = self.branches  # trunk layers only: the heads stay free
        stacked = [*b.weights[: self.trunk_layers], *b.biases[: self.trunk_layers]]
        spreads = sum(Spread.apply(p.view(self.n_members, t, *p.shape[1:])) for p in stacked)  # one per member
        return (self.couplings.to(spreads) * spreads).sum()


class Spread(torch.autograd.Function):
    """S_m(W) = sum_t ||W_mt - mean_s W_ms||^2 for each member m of W [M, T, ...], with its gradient in
    closed form: dS_m/dW_mt = 2 (W_mt - mean) - (2/T) sum_s (W_ms - mean) = 2 (W_mt - mean), the
    centred W saved from the forward pass. Autograd through the mean would take several more passes
    over the trunks' weights, which at 63 tasks x [256, 128] cost more than the networks' own step;
    so does any full-size temporary beyond the centred W (the norm reduces it in place)."""

    @staticmethod
    def forward(ctx, w: torch.Tensor) -> torch.Tensor:
        centred = w - w.mean(1, keepdim=True)
        ctx.save_for_backward(centred)
        return torch.linalg.vector_norm(centred.reshape(len(w), -1), dim=1) ** 2

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (centred,) = ctx.saved_tensors
        return centred * (2 * grad).view(-1, *[1] * (centred.ndim - 1))
