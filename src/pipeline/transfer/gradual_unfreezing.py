"""Gradual unfreezing (Howard & Ruder, ACL 2018): parameter transfer trained in phases, top down.
Phase 1 trains the new head alone; each later phase also unfreezes the next layer below, until the
last phase trains every layer. Each phase starts from the best weights of the one before."""

from __future__ import annotations

from pipeline.transfer import TransferContext, TransferPlan
from pipeline.transfer.param_transfer import ParamTransfer


class GradualUnfreezing(ParamTransfer):
    name = "gradual_unfreezing"

    def build(self, ctx: TransferContext, lr: float) -> TransferPlan:
        plan = super().build(ctx, lr)
        layers = list(dict.fromkeys(n.rsplit(".", 1)[0] for n, _ in plan.net.named_parameters()))  # input to output
        plan.phases = [layers[len(layers) - i :] for i in range(1, len(layers) + 1)]
        return plan
