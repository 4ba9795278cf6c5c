"""Equal weighting: the update is the gradient of the plain sum of the task losses,

    L = sum_t L_t,   w_t = 1,

the baseline every other weighting is compared with."""

from __future__ import annotations

import torch
from torch import Tensor

from pipeline.multitask.weighting import Weighting, weighted_sum_backward


class Equal(Weighting):
    name = "equal"

    def _backward(
        self,
        losses: Tensor,
        per_task: list[Tensor],
        present: Tensor,
        shared_params: list[Tensor],
        features: list[Tensor] | None,
        task_params: list[list[Tensor]],
    ) -> Tensor:
        return weighted_sum_backward(losses, torch.ones_like(losses))
