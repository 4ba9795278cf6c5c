r"""Uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018): each task has a learnable
log-variance s_t = log sigma_t^2, trained with the model by the main optimizer, and

    L = sum_t exp(-s_t) L_t + s_t,        w_t = exp(-s_t).

For fixed L_t the optimum is s_t = log L_t, so a task's weight tends to 1 / L_t: noisy
(high-loss) tasks are down-weighted and the + s_t term stops every sigma from growing without bound.

Classification vs regression: the paper derives 1/(2 sigma^2) L + log sigma for a Gaussian
(regression) likelihood and approximately 1/sigma^2 L + log sigma for a softmax (classification)
one. Every task uses the form above here, whatever its type (as LibMTL does); it is twice the
regression form, a global factor. The task-type factor would not change where a weight settles:
with factor c, c exp(-s) L + s/2 is minimised at exp(-s) = 1/(2cL), so the effective weight
c exp(-s) is 1/(2L) for either c. It only changes the weight while s_t is still moving (1 for
classification, 1/2 for regression at s = 0), which one form for all tasks avoids.

A task absent from the batch (loss exactly 0) contributes nothing: its + s_t term alone would push
its log-variance down at every step in which it has no labels.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pipeline.multitask.weighting import Step, Weighting


class Uncertainty(Weighting):
    name = "uncertainty"

    def __init__(self, n_tasks: int, init_log_var: float = 0.0) -> None:
        super().__init__(n_tasks)
        # Learn s = log sigma^2, not sigma: unconstrained, and exp(-s) never divides by zero.
        self.log_var = nn.Parameter(torch.full((self.n_tasks,), float(init_log_var)))

    def _backward(self, step: Step) -> Tensor:
        weights = torch.exp(-self.log_var)
        ((weights * step.losses + self.log_var) * step.present.to(step.losses)).sum().backward()
        return weights

    def extra_parameters(self) -> list[Tensor]:
        return [self.log_var]
