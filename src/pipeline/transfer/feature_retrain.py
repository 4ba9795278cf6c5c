"""Feature re-training: the frozen source network maps target inputs to features (the `extract`
stage computes them once); a new target model is trained on those features alone."""

from __future__ import annotations

from collections.abc import Sequence

from pipeline.errors import PipelineError
from pipeline.models import build
from pipeline.transfer import Strategy, TransferContext, TransferPlan


class FeatureRetrain(Strategy):
    name = "feature_retrain"

    def __init__(self, hidden: Sequence[int] = (), dropout: float = 0.0) -> None:
        self.hidden = list(hidden)  # [] = a linear model on the source features
        self.dropout = dropout

    def build(self, ctx: TransferContext, lr: float) -> TransferPlan:
        if ctx.feature_dim is None:
            raise PipelineError("feature_retrain needs the extracted source features; run the extract stage first")
        arch = {
            "backbone": {"_target_": "pipeline.models.MLP", "input_dim": ctx.feature_dim, "hidden": self.hidden, "dropout": self.dropout},
            "n_outputs": ctx.target.n_outputs,
        }
        net = build(arch)
        return TransferPlan(net, [{"name": "all", "params": list(net.parameters()), "lr": lr}], inputs="features")
