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
        # Not `features(x)`: torch.jit.script compiles forward, and cannot slice a ModuleList by a variable.
        x = x.flatten(1)
        for block in self.blocks:
            x = block(x)
        return x

    def features(self, x: torch.Tensor, depth: int | None = None) -> torch.Tensor:
        """The output after the first `depth` blocks (None: all of them, the backbone's output), flat."""
        x = x.flatten(1)
        for block in self.blocks[:depth]:
            x = block(x)
        return x


class LeNet(nn.Module):
    """LeNet-5 for small grey images: conv 6@5x5 (pad 2) -> ReLU -> maxpool 2 -> conv 16@5x5 -> ReLU ->
    maxpool 2 -> Linear 120 -> ReLU -> Linear 84 -> ReLU, dropout after each Linear; `out_dim` = 84.

    Rows arrive flat (the task set's inputs), `image` = [channels, height, width] restores their shape.
    The four stages are `blocks`, as MLP's, so extract's layer views and `features(x, depth)` work alike.
    """

    def __init__(self, input_dim: int, image: Sequence[int] = (1, 28, 28), dropout: float = 0.0) -> None:
        super().__init__()
        self.image = tuple(int(v) for v in image)
        if len(self.image) != 3 or int(input_dim) != self.image[0] * self.image[1] * self.image[2]:
            raise PipelineError(
                f"LeNet: inputs of size {int(input_dim)} are not images of shape {list(self.image)} (channels, height, width);"
                " set model.image to the data's shape"
            )
        c, h, w = self.image
        side = [((s // 2) - 4) // 2 for s in (h, w)]  # after conv(pad 2), pool, conv (no pad), pool
        if min(side) < 1:
            raise PipelineError(f"LeNet: images of shape {list(self.image)} are too small for two 5x5 convolutions and two 2x2 poolings")
        self.blocks = nn.ModuleList(
            [
                nn.Sequential(nn.Conv2d(c, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2)),
                nn.Sequential(nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten()),
                nn.Sequential(nn.Linear(16 * side[0] * side[1], 120), nn.ReLU(), nn.Dropout(dropout)),
                nn.Sequential(nn.Linear(120, 84), nn.ReLU(), nn.Dropout(dropout)),
            ]
        )
        self.out_dim = 84

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(-1, self.image[0], self.image[1], self.image[2])
        for block in self.blocks:
            x = block(x)
        return x

    def features(self, x: torch.Tensor, depth: int | None = None) -> torch.Tensor:
        """The output after the first `depth` blocks (None: all of them, the backbone's output), flat."""
        x = x.reshape(-1, *self.image)
        for block in self.blocks[:depth]:
            x = block(x)
        return x.flatten(1)


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
        torch.save({"arch": None if arch is None else dict(arch), "state_dict": model.state_dict(), **extra}, fh)


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


def load_user_model(spec: str, fetch=None, key: str = "source_model") -> dict:
    """A user's source model, `spec` a checkpoint file or `models:/<name>/<version>` (`fetch(spec)` gives
    the registry's file), `key` the config key that named it (for messages): {"arch", "state_dict", "net",
    ...}. A state-dict checkpoint is loaded with `weights_only=True` (a file from elsewhere runs no code)
    and checked to build and load strictly. A TorchScript file (`torch.jit.save`) is accepted when it has
    `backbone` and `head` submodules (features = backbone(x), outputs = head(features)); with its
    architecture in the extra file `arch.json` it is rebuilt as an ordinary checkpoint, without one it
    is kept scripted ({"arch": None, "net": the ScriptModule}): scored by extract, but not rebuilt for
    fine-tuning. Anything else is an error naming the file and what it lacks."""
    import pickle

    path = Path(fetch(spec)) if spec.startswith("models:/") else Path(spec)
    where = f"{key} {spec}" + (f" ({path})" if spec.startswith("models:/") else "")
    if not path.is_file():
        raise PipelineError(f"{where}: no such file; give a checkpoint path (relative to the repository) or models:/<name>/<version>")
    if is_torchscript(path):
        return load_torchscript(path, where)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PipelineError(f"{where}: not a checkpoint torch loads with weights_only=True ({reason})") from None
    if not isinstance(ckpt, Mapping) or not {"arch", "state_dict"} <= set(ckpt):
        got = sorted(map(str, ckpt)) if isinstance(ckpt, Mapping) else type(ckpt).__name__
        raise PipelineError(
            f"{where}: a source checkpoint is a dict with `arch` (the architecture, as pretrain saves it) and `state_dict`; got {got}."
            " Save one with torch.save({'arch': {'backbone': {...}, 'n_outputs': C}, 'state_dict': net.state_dict()}, path), or a TorchScript file"
        )
    return {**ckpt, "net": strict(ckpt["arch"], ckpt["state_dict"], where)}


def strict(arch: Mapping[str, Any], state: Mapping[str, torch.Tensor], where: str) -> Net:
    """The network `arch` describes with `state` loaded, every key and shape matching."""
    if not isinstance(arch, Mapping) or not isinstance(arch.get("backbone"), Mapping) or "n_outputs" not in arch:
        raise PipelineError(f"{where}: its arch is not {{'backbone': {{'_target_': ..., 'input_dim': ...}}, 'n_outputs': C}}; got {arch!r:.200}")
    net = build(arch)
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        raise PipelineError(f"{where}: its state_dict does not fit its arch: {str(exc).splitlines()[1].strip()}") from None
    return net


def is_torchscript(path: Path) -> bool:
    """Whether `path` is a TorchScript archive (torch's own test: a zip holding constants.pkl)."""
    import zipfile

    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n == "constants.pkl" or n.endswith("/constants.pkl") for n in z.namelist())


def load_torchscript(path: Path, where: str) -> dict:
    """A TorchScript source model (see `load_user_model`)."""
    import json

    extra = {"arch.json": ""}
    try:
        scripted = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except RuntimeError as exc:
        raise PipelineError(f"{where}: torch.jit.load cannot read it ({str(exc).strip().splitlines()[0]})") from None
    missing = [m for m in ("backbone", "head") if not isinstance(getattr(scripted, m, None), torch.jit.ScriptModule)]
    if missing:
        raise PipelineError(
            f"{where}: a TorchScript source model has submodules `backbone` (inputs -> features) and `head` (features -> outputs); it lacks {missing}"
        )
    state = {k: v.detach().clone() for k, v in scripted.state_dict().items()}
    if extra["arch.json"]:
        try:
            arch = json.loads(extra["arch.json"])
        except ValueError as exc:
            raise PipelineError(f"{where}: its extra file arch.json is not JSON ({exc})") from None
        return {"arch": arch, "state_dict": state, "net": strict(arch, state, where), "torchscript": True}
    scripted.eval()
    return {"arch": None, "state_dict": state, "net": scripted, "torchscript": True}


def load_source(folder: str | Path) -> tuple[dict, nn.Module]:
    """A pretrain output folder's checkpoint and its network, in eval mode: rebuilt from its arch, or the
    TorchScript module kept beside it (`scripted.pt`) when a user's scripted model came without one."""
    folder = Path(folder)
    ckpt = load_checkpoint(folder / "model.pt")
    if ckpt.get("arch") is None:
        net = torch.jit.load(str(folder / "scripted.pt"), map_location="cpu")
    else:
        net = build(ckpt["arch"])
        net.load_state_dict(ckpt["state_dict"])
    return ckpt, net.eval()
