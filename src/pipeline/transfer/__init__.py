"""Transfer strategies: how the target model is built from what the source task taught.

A strategy is one class here plus one file in `conf/transfer/`; the config's `_target_` finds it,
so the fine-tune stage never branches on strategy names. `build` says, for every parameter of the
target model, whether it was copied from the source, frozen, or freshly initialised, and which
learning rate it trains with; tests and MLflow read that plan back.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from pipeline.data import TaskSpec


@dataclass
class TransferContext:
    source: Mapping[str, Any]  # the source checkpoint: {"arch", "state_dict", "run_id", ...}
    target: TaskSpec
    input_dim: int
    model_cfg: Mapping[str, Any]  # the configured architecture (what `scratch` builds)
    feature_dim: int | None = None  # size of the extracted source features


@dataclass
class TransferPlan:
    net: nn.Module
    param_groups: list[dict]  # {"name", "params", "lr", optimizer options...}
    inputs: str = "raw"  # "raw" target inputs, or "features" extracted by the source model
    copied: list[str] = field(default_factory=list)
    frozen: list[str] = field(default_factory=list)
    extra_loss: Callable[[nn.Module], torch.Tensor] | None = None
    # Training in phases (`pipeline.transfer.schedule`): the layers (prefixes) that train in each
    # phase, each phase a whole fit from the best weights of the one before; None = one phase.
    phases: list[list[str]] | None = None
    # WiSE-FT: mix the weights after the first phase (w0) and after the last (w1) as (1 - a) w0 + a w1,
    # a chosen on validation among these values; None = no mixing.
    interpolate: list[float] | None = None

    @property
    def reinitialised(self) -> list[str]:
        return [n for n, _ in self.net.named_parameters() if n not in self.copied]

    def lr_of(self, name: str) -> float | None:
        """The learning rate parameter `name` trains with; None when frozen."""
        param = dict(self.net.named_parameters())[name]
        if not param.requires_grad:
            return None
        return next(g["lr"] for g in self.param_groups if any(p is param for p in g["params"]))


class Strategy:
    """Base: subclasses implement `build`. `lr` is the fine-tuning rate given by `transfer.lr`."""

    name = "strategy"

    def build(self, ctx: TransferContext, lr: float) -> TransferPlan:
        raise NotImplementedError


def freeze(net: nn.Module, prefixes: list[str]) -> list[str]:
    """Stop gradients for the layers under `prefixes`; a name matching no layer is an error, since a
    typo would otherwise silently fine-tune what the user meant to keep fixed."""
    from pipeline.errors import PipelineError
    from pipeline.models import layer_names, under

    named = dict(net.named_parameters())
    unknown = [q for q in prefixes if not any(under(n, [q]) for n in named)]
    if unknown:
        raise PipelineError(f"freeze: layers {unknown} do not exist in the target model; it has {layer_names(named)}")
    frozen = [n for n in named if under(n, prefixes)]
    for n in frozen:
        named[n].requires_grad_(False)
    return frozen


def target_arch(arch: Mapping[str, Any], target: TaskSpec) -> dict:
    """The source architecture with its head resized for the target task."""
    return {**arch, "n_outputs": target.n_outputs}
