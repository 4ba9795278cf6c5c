r"""Dynamic Weight Average (Liu, Johns & Davison, CVPR 2019): a task whose loss fell more slowly
over the last epochs gets more weight in the next one. With L_t(e) the mean training loss of task t
over epoch e, during epoch e

    r_t = L_t(e-1) / L_t(e-2),      w_t = T exp(r_t / tau) / sum_k exp(r_k / tau),

so the weights sum to T; w_t = 1 during the first two epochs, before two means exist. The
temperature tau smooths the weights: large tau tends to equal weighting, small tau gives the slowest
task almost all of it (the paper uses tau = 2). The weights need no gradient, only the epoch means
the training loop passes to `on_epoch_end` (same rule as `torchjd.scalarization.DWA`).

A task with no positive finite mean in either epoch (no labels seen) gets r_t = 1, i.e. counts as
neither improving nor worsening.
"""

from __future__ import annotations

import torch
from torch import Tensor

from pipeline.errors import PipelineError
from pipeline.multitask.weighting import Step, Weighting, weighted_sum_backward


class DWA(Weighting):
    name = "dwa"

    def __init__(self, n_tasks: int, temperature: float = 2.0) -> None:
        super().__init__(n_tasks)
        if not temperature > 0:
            raise PipelineError(f"weighting 'dwa': temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        # Buffers of fixed shape, so a checkpoint restores the history mid-training.
        self.register_buffer("history", torch.full((2, self.n_tasks), float("nan")))  # epochs e-2, e-1
        self.register_buffer("epochs_seen", torch.zeros((), dtype=torch.long))
        self.register_buffer("weights", torch.ones(self.n_tasks))

    def on_epoch_end(self, epoch_mean_losses: Tensor) -> None:
        means = epoch_mean_losses.detach().reshape(self.n_tasks).to(self.history)
        self.history.copy_(torch.stack([self.history[1], means]))
        self.epochs_seen += 1
        if self.epochs_seen >= 2:
            older, newer = self.history
            ok = (older > 0) & (newer > 0) & older.isfinite() & newer.isfinite()
            ratio = torch.where(ok, newer / older, torch.ones_like(newer))
            self.weights.copy_(self.n_tasks * torch.softmax(ratio / self.temperature, dim=0))

    def _backward(self, step: Step) -> Tensor:
        return weighted_sum_backward(step.losses, self.weights)
