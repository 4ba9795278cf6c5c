"""Backbones and heads built from config, and the checkpoint format that carries their architecture."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.errors import PipelineError, instantiate

ACTIVATIONS = {"relu": torch.relu, "identity": lambda x: x}


class MLP(nn.Module):
    """Blocks of Linear -> activation -> Dropout; `out_dim` is the feature size a head sees.

    `activation: identity` makes the network linear, for linear problems such as the survey's
    shared-parameter regression example.
    """

    def __init__(self, input_dim: int, hidden: Sequence[int] = (256, 128), dropout: float = 0.0, activation: str = "relu") -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise PipelineError(f"activation {activation!r} is not one of {sorted(ACTIVATIONS)}")
        if any(int(h) < 1 for h in hidden):
            raise PipelineError(f"hidden sizes must be whole numbers >= 1, got {list(hidden)}")
        dims = [int(input_dim), *map(int, hidden)]
        self.blocks = nn.ModuleList(Block(dims[i], dims[i + 1], dropout, activation) for i in range(len(dims) - 1))
        self.out_dim = dims[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        for block in self.blocks:
            x = block(x)
        return x


class Block(nn.Module):
    def __init__(self, d_in: int, d_out: int, dropout: float, activation: str = "relu") -> None:
        super().__init__()
        self.linear = nn.Linear(d_in, d_out)
        self.drop = nn.Dropout(dropout)
        self.act = ACTIVATIONS[activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.act(self.linear(x)))


class Net(nn.Module):
    """backbone -> head. Transfer strategies copy, freeze or re-initialise parts by name."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def build(arch: Mapping[str, Any]) -> Net:
    """`arch` = {"backbone": {_target_, input_dim, ...}, "n_outputs": int}, as saved in checkpoints."""
    backbone = instantiate(dict(arch["backbone"]), "model backbone")
    return Net(backbone, nn.Linear(backbone.out_dim, int(arch["n_outputs"])))


def architecture(model_cfg: Mapping[str, Any], input_dim: int, n_outputs: int) -> dict:
    from omegaconf import OmegaConf

    backbone = OmegaConf.to_container(model_cfg, resolve=True) if not isinstance(model_cfg, dict) else dict(model_cfg)
    return {"backbone": {**backbone, "input_dim": int(input_dim)}, "n_outputs": int(n_outputs)}


def save_checkpoint(path: str | Path, model: Net, arch: Mapping[str, Any], extra: Mapping[str, Any]) -> None:
    from pipeline.io import atomic_file

    with atomic_file(path, "wb") as fh:
        torch.save({"arch": dict(arch), "state_dict": model.state_dict(), **extra}, fh)


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise PipelineError(f"missing upstream output {path} (source checkpoint); run the pretrain stage first (`dvc repro`)")
    return torch.load(path, map_location="cpu", weights_only=False)


def load_matching(target: nn.Module, state: Mapping[str, torch.Tensor], prefixes: Sequence[str], what: str) -> list[str]:
    """Copy the parameters under `prefixes` from `state` into `target`; name every mismatch.

    Returns the copied parameter names. A missing or differently shaped layer is an error that lists
    the layers at fault, so a checkpoint from another architecture never half-loads silently.
    """
    own = target.state_dict()
    wanted = [k for k in own if under(k, prefixes)]
    unknown = [p for p in prefixes if not any(under(k, [p]) for k in own)]
    if unknown:
        raise PipelineError(f"{what}: layers {unknown} do not exist in the target model; it has {layer_names(own)}")
    missing = [k for k in wanted if k not in state]
    shape = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs target {tuple(own[k].shape)}" for k in wanted if k in state and state[k].shape != own[k].shape
    ]
    if missing or shape:
        parts = ([f"missing in checkpoint: {missing}"] if missing else []) + ([f"shape mismatch: {shape}"] if shape else [])
        raise PipelineError(f"{what}: checkpoint architecture does not match the target model; " + "; ".join(parts))
    with torch.no_grad():
        for k in wanted:
            own[k].copy_(state[k])
    return wanted


def under(name: str, prefixes: Sequence[str]) -> bool:
    """Whether parameter `name` belongs to one of the layers `prefixes` (dotted module paths)."""
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def layer_names(param_names) -> list[str]:
    return sorted({k.rsplit(".", 1)[0] for k in param_names})


def load_user_model(spec: str, fetch=None) -> dict:
    """A user's source model, `spec` a checkpoint file or `models:/<name>/<version>` (`fetch(spec)` gives
    the registry's file): {"arch": ..., "state_dict": ...}, loaded with `weights_only=True` (a file from
    elsewhere runs no code) and checked to build and load strictly. Anything else is an error naming
    the file and what it lacks."""
    import pickle

    path = Path(fetch(spec)) if spec.startswith("models:/") else Path(spec)
    where = f"source_model {spec}" + (f" ({path})" if spec.startswith("models:/") else "")
    if not path.is_file():
        raise PipelineError(f"{where}: no such file; give a checkpoint path (relative to the repository) or models:/<name>/<version>")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PipelineError(f"{where}: not a checkpoint torch loads with weights_only=True ({reason})") from None
    if not isinstance(ckpt, Mapping) or not {"arch", "state_dict"} <= set(ckpt):
        got = sorted(map(str, ckpt)) if isinstance(ckpt, Mapping) else type(ckpt).__name__
        raise PipelineError(
            f"{where}: a source checkpoint is a dict with `arch` (the architecture, as pretrain saves it) and `state_dict`; got {got}."
            " Save one with torch.save({'arch': {'backbone': {...}, 'n_outputs': C}, 'state_dict': net.state_dict()}, path)"
        )
    net = build(ckpt["arch"])
    try:
        net.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:
        raise PipelineError(f"{where}: its state_dict does not fit its arch: {str(exc).splitlines()[1].strip()}") from None
    return {**ckpt, "net": net}
