"""Soft parameter sharing (the survey's "parameter mapping into a shared space"): every task has
its own trunk, and a penalty ties the trunks to their shared mean,

    Omega = lambda * sum_t sum_l || W_t^l - mean_s W_s^l ||^2,

so lambda = 0 gives independent models and lambda -> inf one shared trunk. The right strength
depends on how related the tasks are (a fixed strong coupling hurts unrelated tasks), so
`coupling: auto` lets the multitask stage pick it on validation data from `auto_grid`.
No parameter is literally shared, so gradient-aggregation weightings do not apply to this scheme.
The trunks are `SingleTask`'s stacked branches, so each sum over t is one reduction over the stacked dim;
training adds the penalty's gradient in closed form (`add_penalty_grad`);
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

    closed_form_penalty = True  # training needs only the gradient: `add_penalty_grad`

    def _trunk(self) -> tuple[int, list[torch.Tensor]]:
        """(tasks per member, the trunk's stacked weights and biases, the heads staying free); no tensors
        when nothing is coupled (one task, or every coupling 0)."""
        t, b = len(self.tasks) // self.n_members, self.branches
        if t < 2 or not bool((self.couplings != 0).any()):
            return t, []
        return t, [*b.weights[: self.trunk_layers], *b.biases[: self.trunk_layers]]

    def penalty(self):
        t, trunk = self._trunk()
        if not trunk:
            return None
        total = 0
        for p in trunk:
            w = p.view(self.n_members, t, -1)
            spread = ((w - w.mean(1, keepdim=True)) ** 2).sum((1, 2))  # one per member
            total = total + (self.couplings.to(spread) * spread).sum()
        return total

    def add_penalty_grad(self) -> None:
        """grad += dOmega/dW, in place. For member m with coupling lambda_m,
        dOmega/dW_mt = 2 lambda_m (W_mt - mean) - (2 lambda_m / T) sum_s (W_ms - mean) = 2 lambda_m (W_mt - mean),
        as the centred weights sum to zero. Autograd through `penalty()` makes full-size temporaries
        (the centred weights, their gradient) and several passes over the trunks, which at 63 tasks x
        [256, 128] cost more than the networks' own step; here each trunk tensor is read twice and
        its gradient updated twice, with nothing larger than the mean allocated."""
        t, trunk = self._trunk()
        for p in trunk:
            w = p.detach().view(self.n_members, t, -1)
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            g = p.grad.view(self.n_members, t, -1)
            scale = (2 * self.couplings).to(w).view(-1, 1, 1)
            g.addcmul_(w, scale)
            g.addcmul_(w.mean(1, keepdim=True), scale, value=-1)
