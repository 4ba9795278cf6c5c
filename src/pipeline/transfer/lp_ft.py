"""LP-FT (Kumar et al., ICLR 2022): a linear probe first, then full fine-tuning from it. Phase 1
trains only the new head on the frozen source layers; phase 2 fine-tunes everything from the probed
head, so the source features are not distorted by gradients through a random head."""

from __future__ import annotations

from pipeline.transfer import TransferContext, TransferPlan
from pipeline.transfer.param_transfer import ParamTransfer


class LPFT(ParamTransfer):
    name = "lp_ft"

    def build(self, ctx: TransferContext, lr: float) -> TransferPlan:
        plan = super().build(ctx, lr)
        top = [name for name, _ in plan.net.named_children()]  # backbone, head
        plan.phases = [["head"], top]
        return plan
