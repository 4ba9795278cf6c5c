"""Batch spectral shrinkage (Chen et al., NeurIPS 2019): parameter transfer plus a penalty on the
smallest singular values of each batch's feature matrix F [b, d] (the backbone's output),

    Omega = eta * sum_{i=1..k} sigma_{-i}(F)^2,

which damps the feature directions the few target labels cannot pin down, where negative transfer
and overfitting concentrate."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from pipeline.transfer import TransferContext, TransferPlan
from pipeline.transfer.param_transfer import ParamTransfer


class SpectralShrinkage:
    """Omega above from the features of the net's last forward pass (a forward hook on its backbone
    keeps them: the penalty is asked for right after the step's forward)."""

    def __init__(self, backbone: nn.Module, eta: float, k: int) -> None:
        self.eta, self.k = float(eta), int(k)
        self.features: torch.Tensor | None = None
        backbone.register_forward_hook(self.keep)

    def keep(self, module, inputs, output) -> None:
        self.features = output

    def __call__(self, net: nn.Module) -> torch.Tensor:
        sigma = torch.linalg.svdvals(self.features.flatten(1))  # descending
        return self.eta * sigma[-self.k :].pow(2).sum()


class BSS(ParamTransfer):
    name = "bss"

    def __init__(self, eta: float = 0.001, k: int = 1, source_lr_scale: float = 0.1, transfer: Sequence[str] = ("backbone",), freeze=()) -> None:
        super().__init__(source_lr_scale=source_lr_scale, transfer=transfer, freeze=freeze)
        self.eta, self.k = float(eta), int(k)

    def build(self, ctx: TransferContext, lr: float) -> TransferPlan:
        plan = super().build(ctx, lr)
        plan.extra_loss = SpectralShrinkage(plan.net.backbone, self.eta, self.k)
        return plan
