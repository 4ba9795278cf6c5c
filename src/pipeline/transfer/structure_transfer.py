"""Structure transfer: the source architecture, rebuilt for the target from the configuration saved
in the source checkpoint (not from the current config), keeps only the layers listed in `copy`;
every other layer is re-initialised, and the whole network is trained at one rate. What transfers
is mainly the structure, plus the low-level layers the user chooses to carry over."""

from __future__ import annotations

from collections.abc import Sequence

from pipeline.models import build, load_matching
from pipeline.transfer import Strategy, TransferContext, TransferPlan, target_arch


class StructureTransfer(Strategy):
    name = "structure_transfer"

    def __init__(self, copy: Sequence[str] = ("backbone.blocks.0",)) -> None:
        self.copy = list(copy)

    def build(self, ctx: TransferContext, lr: float) -> TransferPlan:
        net = build(target_arch(ctx.source["arch"], ctx.target))
        copied = load_matching(net, ctx.source["state_dict"], self.copy, "structure_transfer") if self.copy else []
        return TransferPlan(net, [{"name": "all", "params": list(net.parameters()), "lr": lr}], copied=copied)
