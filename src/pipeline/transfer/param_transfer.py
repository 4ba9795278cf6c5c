"""Parameter transfer: the source weights initialise the target model, a new head is added, and
everything is fine-tuned. Transferred layers get their own learning rate (`source_lr_scale` x the
fine-tuning rate): a smaller rate keeps them near the source solution while the new head learns."""

from __future__ import annotations

from collections.abc import Sequence

from pipeline.models import build, load_matching
from pipeline.transfer import Strategy, TransferContext, TransferPlan, freeze, target_arch


class ParamTransfer(Strategy):
    name = "param_transfer"

    def __init__(self, source_lr_scale: float = 0.1, transfer: Sequence[str] = ("backbone",), freeze: Sequence[str] = ()) -> None:
        self.source_lr_scale = float(source_lr_scale)
        self.transfer = list(transfer)
        self.freeze = list(freeze)

    def build(self, ctx: TransferContext, lr: float) -> TransferPlan:
        net = build(target_arch(ctx.source["arch"], ctx.target))
        copied = load_matching(net, ctx.source["state_dict"], self.transfer, "param_transfer")
        frozen = freeze(net, self.freeze)
        named = dict(net.named_parameters())
        groups = [
            {"name": "transferred", "params": [named[n] for n in copied], "lr": lr * self.source_lr_scale},
            {"name": "new", "params": [p for n, p in named.items() if n not in copied], "lr": lr},
        ]
        return TransferPlan(net, [g for g in groups if g["params"]], copied=copied, frozen=frozen)
