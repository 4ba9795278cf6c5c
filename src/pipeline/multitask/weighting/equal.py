"""Equal weighting: the update is the gradient of the plain sum of the task losses,

    L = sum_t L_t,   w_t = 1,

the baseline every other weighting is compared with."""

from __future__ import annotations

import torch
from torch import Tensor

from pipeline.multitask.weighting import Step, Weighting, weighted_sum_backward


class Equal(Weighting):
    name = "equal"
    plain_sum = True

    def _backward(self, step: Step) -> Tensor:
        return weighted_sum_backward(step.losses, torch.ones_like(step.losses))
