"""WiSE-FT (Wortsman et al., CVPR 2022): weight-space ensembling of the model before and after
fine-tuning, w_a = (1 - a) w_0 + a w_1. Here the head is new, so w_0 is the source network with a
linear-probed head (LP-FT's first phase) rather than a random one, and w_1 the fully fine-tuned
network (its second phase). a = 0 gives the probe, a = 1 the fine-tuned model; `alphas` lists the
mixing weights tried, chosen on the validation split (a single value: fixed, 0.5 in the paper)."""

from __future__ import annotations

from collections.abc import Sequence

from pipeline.errors import PipelineError
from pipeline.transfer import TransferContext, TransferPlan
from pipeline.transfer.lp_ft import LPFT


class WiSEFT(LPFT):
    name = "wise_ft"

    def __init__(self, alphas: Sequence[float] = (0.5,), source_lr_scale: float = 0.1, transfer: Sequence[str] = ("backbone",), freeze=()) -> None:
        if not alphas or any(not 0 <= float(a) <= 1 for a in alphas):
            raise PipelineError(f"wise_ft: alphas must be values in [0, 1], got {list(alphas)}")
        super().__init__(source_lr_scale=source_lr_scale, transfer=transfer, freeze=freeze)
        self.alphas = [float(a) for a in alphas]

    def build(self, ctx: TransferContext, lr: float) -> TransferPlan:
        plan = super().build(ctx, lr)
        plan.interpolate = list(self.alphas)
        return plan
