"""Layer-wise learning-rate decay (discriminative fine-tuning: Howard & Ruder, ACL 2018; Clark et
al., ICLR 2020): parameter transfer in which each layer's rate shrinks geometrically with its depth
below the output,

    lr_l = lr * decay^(L - l),   l = 1..L the layers from the input, the head l = L at lr,

so the general low-level features the source learned move least and the new head moves most."""

from __future__ import annotations

from collections.abc import Sequence

from pipeline.errors import PipelineError
from pipeline.transfer import TransferContext, TransferPlan
from pipeline.transfer.param_transfer import ParamTransfer


def layer_of(name: str) -> str:
    return name.rsplit(".", 1)[0]


class LLRD(ParamTransfer):
    name = "llrd"

    def __init__(self, decay: float = 0.5, transfer: Sequence[str] = ("backbone",), freeze: Sequence[str] = ()) -> None:
        if not 0 < float(decay) <= 1:
            raise PipelineError(f"llrd: decay must be in (0, 1], got {decay}")
        super().__init__(source_lr_scale=1.0, transfer=transfer, freeze=freeze)
        self.decay = float(decay)

    def build(self, ctx: TransferContext, lr: float) -> TransferPlan:
        plan = super().build(ctx, lr)
        named = list(plan.net.named_parameters())
        depth = self.depths([n for n, _ in named])
        groups: dict[str, dict] = {}
        for n, p in named:
            if p.requires_grad:
                layer = layer_of(n)
                groups.setdefault(layer, {"name": layer, "params": [], "lr": lr * self.decay ** depth[n]})["params"].append(p)
        plan.param_groups = list(groups.values())
        return plan

    @staticmethod
    def depths(names: Sequence[str]) -> dict[str, int]:
        """Each parameter's depth below the output layer (0 for the head's), layers in the net's order."""
        layers = list(dict.fromkeys(layer_of(n) for n in names))
        return {n: len(layers) - 1 - layers.index(layer_of(n)) for n in names}
