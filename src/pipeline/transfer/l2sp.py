"""L2-SP (Li, Grandvalet & Davoine, ICML 2018): parameter transfer whose penalty pulls the copied
weights towards their source values instead of towards zero,

    Omega(w) = alpha/2 ||w_S - w_S^0||^2 + beta/2 ||w_new||^2,

w_S the trainable layers copied from the source (w_S^0 their source values), w_new every other
trainable parameter (the new head). The optimizer's own weight decay would pull the copied layers to
zero, forgetting the source, so it is switched off for this strategy's groups: Omega replaces it.
Everything trains at one rate, as in the paper."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from pipeline.transfer import TransferContext, TransferPlan
from pipeline.transfer.param_transfer import ParamTransfer


class StartingPointPenalty:
    """Omega above for the parameters of one net, found by name at each call (the net's own tensors,
    wherever the module has been moved); the source values follow the parameters' device."""

    def __init__(self, anchors: dict[str, torch.Tensor], new: Sequence[str], alpha: float, beta: float) -> None:
        self.anchors, self.new, self.alpha, self.beta = anchors, list(new), float(alpha), float(beta)

    def __call__(self, net: nn.Module) -> torch.Tensor:
        named = dict(net.named_parameters())
        total = next(iter(named.values())).new_zeros(())
        for n, anchor in self.anchors.items():
            p = named[n]
            if anchor.device != p.device:
                self.anchors[n] = anchor = anchor.to(p.device)
            total = total + 0.5 * self.alpha * (p - anchor).pow(2).sum()
        for n in self.new:
            total = total + 0.5 * self.beta * named[n].pow(2).sum()
        return total


class L2SP(ParamTransfer):
    name = "l2sp"

    def __init__(self, alpha: float = 0.01, beta: float = 0.01, transfer: Sequence[str] = ("backbone",), freeze: Sequence[str] = ()) -> None:
        super().__init__(source_lr_scale=1.0, transfer=transfer, freeze=freeze)
        self.alpha, self.beta = float(alpha), float(beta)

    def build(self, ctx: TransferContext, lr: float) -> TransferPlan:
        plan = super().build(ctx, lr)
        named = dict(plan.net.named_parameters())
        anchors = {n: named[n].detach().clone() for n in plan.copied if named[n].requires_grad}
        new = [n for n in plan.reinitialised if named[n].requires_grad]
        for group in plan.param_groups:
            group["weight_decay"] = 0.0
        plan.extra_loss = StartingPointPenalty(anchors, new, self.alpha, self.beta)
        return plan
