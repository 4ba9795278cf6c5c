"""Baseline: the configured architecture, randomly initialised, trained on the target labels only."""

from __future__ import annotations

from pipeline.models import architecture, build
from pipeline.transfer import Strategy, TransferContext, TransferPlan


class Scratch(Strategy):
    name = "scratch"

    def build(self, ctx: TransferContext, lr: float) -> TransferPlan:
        net = build(architecture(ctx.model_cfg, ctx.input_dim, ctx.target.n_outputs))
        return TransferPlan(net, [{"name": "all", "params": list(net.parameters()), "lr": lr}])
