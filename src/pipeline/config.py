"""Schema of the fit settings: the `trainer` node and the `pretrain`, `transfer` and `multitask`
nodes of conf/config.yaml, as dataclasses (OmegaConf structured configs).

Stages validate their nodes with `settings(cfg, name)` before any work: an unknown or misspelt key,
or a value of the wrong type, is a PipelineError naming it (`transfer.paitence`), where a
`.get(key, default)` would silently train with the default. The schema has no defaults: conf/
provides every value, so there is one place where a default lives.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf

from pipeline.errors import PipelineError


@dataclass
class TrainerConfig:
    """How Lightning runs (conf/trainer/)."""

    accelerator: str = MISSING
    devices: int = MISSING  # processes a run trains on (Lightning DDP); 1 = this one
    strategy: str | None = MISSING  # Lightning's strategy when devices > 1; null = its default (ddp)
    num_threads: int | None = MISSING  # torch threads; null = torch's default
    workers: int = MISSING  # processes training a stage's independent runs side by side; 0 = one per core
    progress_bar: bool = MISSING
    deterministic: bool = MISSING
    val_every_n_epochs: int = MISSING
    steps_per_batch: int = MISSING  # minibatches per Lightning batch; 0 = one


@dataclass
class FitConfig:
    """One training run's optimisation budget and model selection."""

    lr: float = MISSING
    batch_size: int = MISSING
    max_epochs: int = MISSING
    patience: int = MISSING  # validation epochs without improvement before early stopping
    min_steps_per_epoch: int = MISSING


@dataclass
class PretrainConfig(FitConfig):
    seed: int = MISSING


@dataclass
class TuningConfig:
    """The tuning budget every strategy gets (pipeline.transfer.tuning)."""

    trials: int = MISSING  # settings tried per strategy x budget x seed; 1 = the configured setting only
    folds: int = MISSING  # cross-validation folds over the budget's labelled rows
    seed: int = MISSING  # draws the trials and the folds


@dataclass
class TransferConfig(FitConfig):
    baseline: str = MISSING
    seeds: list[int] = MISSING  # resampled label sets (and initialisations), paired across strategies
    val_labels: str = MISSING  # budget | all
    tuning: TuningConfig = MISSING
    strategies: dict[str, Any] = MISSING


@dataclass
class MultitaskConfig(FitConfig):
    baseline: str = MISSING
    seeds: list[int] = MISSING
    classic: list[str] = MISSING
    weightings_on: list[str] | None = MISSING
    archs: dict[str, Any] = MISSING
    weightings: dict[str, Any] = MISSING
    batch_candidates: bool = MISSING  # coupling candidates as members of one net where exact


@dataclass
class SplitConfig:
    """Fractions of the rows (or groups) held out for validation and test, and the split's seed."""

    val: float = MISSING
    test: float = MISSING
    seed: int = MISSING


# Keys an experiment node may have (conf/experiment/); data nodes are the adapters' own arguments,
# checked against their signatures when instantiated. Optional keys may be absent: `weightings_on`
# absent means the study's `multitask.weightings_on`, null the full product.
EXPERIMENT_KEYS = {
    "transfer": {"source", "target", "split", "budgets", "source_model"},
    "multitask": {"data", "split", "schemes", "weightings", "weightings_on"},
}
REQUIRED_EXPERIMENT_KEYS = {"transfer": {"source", "target", "split", "budgets"}, "multitask": {"data", "split"}}


# A key only the other kind has: the experiment file is declared in the wrong dict of conf/config.yaml.
KIND_KEYS = {"transfer": {"source", "target", "budgets"}, "multitask": {"data", "schemes", "weightings", "weightings_on"}}
# Where experiments are declared: transfer chains in `experiments`, joint training in `multitask_experiments`.
EXPERIMENT_KINDS = {"transfer": "experiments", "multitask": "multitask_experiments"}


def experiment_file(name: str, kind: str) -> str:
    """The file an experiment node was composed from: Hydra's choice for `experiment@<dict>.<name>`
    when this run composed conf/, else inferred from the name (params.yaml keeps no choices)."""
    from hydra.core.hydra_config import HydraConfig

    choice = HydraConfig.get().runtime.choices.get(f"experiment@{EXPERIMENT_KINDS[kind]}.{name}") if HydraConfig.initialized() else None
    return f"conf/experiment/{choice or name}.yaml"


def check_experiment(node: DictConfig, name: str, kind: str) -> None:
    """An experiment node's keys (a misspelt `weightings` would silently run the whole grid), its
    kind (a multitask file declared among the transfer experiments, or the reverse) and its split.
    Messages name the experiment's file, the key and the fix."""
    where = f"{EXPERIMENT_KINDS[kind]}.{name}"
    path = experiment_file(name, kind)
    stem = Path(path).stem
    keys = {str(k) for k in node.keys()}
    other = "multitask" if kind == "transfer" else "transfer"
    if keys & KIND_KEYS[other] and not keys & KIND_KEYS[kind]:
        key, declared = sorted(keys & KIND_KEYS[other])[0], EXPERIMENT_KINDS[kind]
        raise PipelineError(
            f"experiment {name} ({path}) is a {other} experiment (key `{key}`) declared under `{declared}`; "
            f"declare it as `- experiment@{EXPERIMENT_KINDS[other]}.{name}: {stem}` in conf/config.yaml"
        )
    unknown = sorted(keys - EXPERIMENT_KEYS[kind])
    if unknown:
        close = {k: difflib.get_close_matches(k, EXPERIMENT_KEYS[kind], n=1) for k in unknown}
        hints = "".join(f" ({where}.{k}: did you mean {c[0]}?)" for k, c in close.items() if c)
        takes = sorted(EXPERIMENT_KEYS[kind])
        raise PipelineError(
            f"experiment {name} ({path}): unknown key(s) {[f'{where}.{k}' for k in unknown]}{hints}; a {kind} experiment takes {takes}"
        )
    absent = sorted(REQUIRED_EXPERIMENT_KEYS[kind] - keys)
    if absent:
        fix = " (e.g. `split: {val: 0.2, test: 0.2, seed: 0}`)" if "split" in absent else ""
        raise PipelineError(f"experiment {name} ({path}) lacks {', '.join(f'`{k}:` ({where}.{k})' for k in absent)}; add it to {path}{fix}")
    _merge(SplitConfig, node.split, f"{where}.split")
    if kind == "transfer":
        budgets = OmegaConf.to_container(node.budgets) if OmegaConf.is_list(node.budgets) else node.budgets
        whole = isinstance(budgets, list) and budgets and all(isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in budgets)
        if not whole:
            raise PipelineError(f"experiment {name} ({path}): {where}.budgets must be a list of whole numbers >= 1 (labels per class), got {budgets}")


@dataclass
class CandidateConfig:
    """One candidate source of a transfer experiment (top-level `sources:`): a model trained here by its
    own DVC stage (`pretrain@<name>`) and scored by `extract` next to the experiment's own source."""

    exp: str = MISSING  # the transfer experiment it is a candidate for
    note: str = ""  # what it is, for the report
    data: dict[str, Any] | None = None  # keys merged onto the experiment's `source` data (a `_target_` replaces it)
    model: dict[str, Any] | None = None  # keys merged onto `model` (a `_target_` replaces it)
    pretrained: bool = True  # false: the architecture at its seeded random initialisation (the floor)
    # A user's own model instead of training: a checkpoint file ({arch, state_dict}, or TorchScript) or
    # models:/<name>/<version> from the MLflow Model Registry; pretrain adopts it (`pretrain.adopt`).
    source_model: str | None = None


# The experiment's own source: a reserved candidate name (its model is `pretrain@<experiment>`'s).
OWN_SOURCE = "source"


def candidates(cfg: DictConfig, name: str) -> dict[str, CandidateConfig]:
    """The candidate sources of transfer experiment `name`, checked: {candidate: its config}. A
    misspelt key, a value of the wrong type or a name that is not a plain identifier is an error
    naming `sources.<candidate>`."""
    import re

    out = {}
    for cand, node in (cfg.get("sources") or {}).items():
        where = f"sources.{cand}"
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", str(cand)) or cand == OWN_SOURCE:
            raise PipelineError(f"{where}: a candidate's name is letters, digits and _ (it names a folder and a DVC stage), not {OWN_SOURCE!r}")
        c = OmegaConf.to_object(_merge(CandidateConfig, node, where))
        if c.source_model is not None:
            clash = [k for k in ("data", "model") if getattr(c, k)] + (["pretrained"] if not c.pretrained else [])
            if clash:
                raise PipelineError(f"{where}: source_model {c.source_model} is a model already trained; {where}.{clash[0]} does not apply to it")
        # A candidate of an experiment left out of the study is not this stage's business: its own
        # stage (candidate@<name>, exp=<its exp>) stops with the unknown experiment named.
        if c.exp == name:
            out[str(cand)] = c
    return out


SCHEMAS = {"trainer": TrainerConfig, "pretrain": PretrainConfig, "transfer": TransferConfig, "multitask": MultitaskConfig}


# Values a type admits but training cannot use (a batch of 0 divides by zero deep in a worker; -1 epochs
# trains nothing and says nothing): (smallest value, whether it is allowed itself).
RANGES = {
    "lr": (0, False),
    "batch_size": (1, True),
    "max_epochs": (1, True),
    "patience": (0, True),
    "min_steps_per_epoch": (1, True),
    "workers": (0, True),
    "val_every_n_epochs": (1, True),
    "steps_per_batch": (0, True),
    "trials": (1, True),
    "folds": (1, True),
}


def check_ranges(obj: Any, name: str) -> None:
    """The numbers of a validated node (and its nested nodes) within RANGES; lists of seeds not empty."""
    for f in fields(obj):
        value = getattr(obj, f.name)
        if hasattr(value, "__dataclass_fields__"):
            check_ranges(value, f"{name}.{f.name}")
        elif f.name in RANGES and isinstance(value, (int, float)) and not isinstance(value, bool):
            low, inclusive = RANGES[f.name]
            if value < low or (value == low and not inclusive):
                raise PipelineError(f"config key {name}.{f.name} must be {'>=' if inclusive else '>'} {low}, got {value}")
        elif f.name == "seeds" and not value:
            raise PipelineError(f"config key {name}.seeds is empty; list at least one seed, e.g. [0]")


def validate(node: Any, name: str):
    """`node` checked against the schema of config node `name`: the dataclass instance."""
    schema = SCHEMAS[name]
    if not OmegaConf.is_config(node) and not isinstance(node, dict):
        raise PipelineError(f"config node {name} must be a mapping of {sorted(f.name for f in fields(schema))}, got {node!r}")
    obj = OmegaConf.to_object(_merge(schema, node, name))
    check_ranges(obj, name)
    if name == "transfer" and obj.baseline not in obj.strategies:
        raise PipelineError(f"transfer.baseline={obj.baseline!r} is not one of transfer.strategies {sorted(obj.strategies)}")
    return obj


def unknown_key(node: str, key: str, valid: list[str]) -> PipelineError:
    """The error for `<node>.<key>`, which is not one of `valid`, with the closest valid key."""
    close = difflib.get_close_matches(key.rsplit(".", 1)[-1], valid, n=1)
    hint = f" (did you mean {node}.{close[0]}?)" if close else ""
    return PipelineError(f"unknown config key {node}.{key}{hint}; valid keys of {node}: {valid}")


def _merge(schema: type, node: Any, name: str):
    """`node` merged onto `schema`: unknown keys, wrong types and missing keys are errors naming them."""
    from omegaconf.errors import ConfigKeyError, ValidationError

    container = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node)
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), container)
    except ConfigKeyError as exc:
        raise unknown_key(name, str(exc.full_key), [f.name for f in fields(schema)]) from None
    except ValidationError as exc:
        raise PipelineError(f"config key {name}.{exc.full_key}: {str(exc).splitlines()[0]}") from None
    missing = sorted(OmegaConf.missing_keys(merged))
    if missing:
        raise PipelineError(f"config node {name} lacks {[f'{name}.{k}' for k in missing]}")
    return merged


def settings(cfg: DictConfig, *names: str) -> tuple:
    """The validated nodes `names` of the composed config, in order."""
    for name in names:
        if name not in cfg:
            raise PipelineError(f"config node {name} is missing")
    return tuple(validate(cfg[name], name) for name in names)


# Where a config's `_target_` may point: the project's registries (data adapters, models, transfer
# strategies, multitask schemes and weightings, transferability scores) and torch's optimisers and
# layers. Not the whole of torch (`torch.load` with `weights_only: false` unpickles), nor of
# scikit-learn (`sklearn.utils._testing` runs Python source), nor the project's stages and file
# writers. PIPELINE_ALLOWED_TARGETS (comma-separated prefixes) adds modules of one's own: it is set by
# whoever runs the pipeline, never by a config file.
ALLOWED_TARGETS = (
    "pipeline.data.",
    "pipeline.models.",
    "pipeline.transfer.",
    "pipeline.multitask.",
    "pipeline.knowledge.",
    "torch.optim.",
    "torch.nn.",
)
_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+")


def allowed_targets() -> tuple[str, ...]:
    extra = [p.strip() for p in os.environ.get("PIPELINE_ALLOWED_TARGETS", "").split(",") if p.strip()]
    return ALLOWED_TARGETS + tuple(p if p.endswith(".") else p + "." for p in extra)


def _allowed(path: str) -> bool:
    return any(path.startswith(prefix) for prefix in allowed_targets())


def target_refusal(target: Any) -> str | None:
    """Why `target` (a `_target_` value) may not be instantiated, or None. A string must be a dotted
    path of identifiers, without dunder parts, under an allowed prefix; a class or function (set in
    code) must be defined in an allowed module."""
    if isinstance(target, str):
        if not _DOTTED.fullmatch(target) or any(part.startswith("__") for part in target.split(".")):
            return "is not a dotted path of Python names"
        if not _allowed(target):
            return "lies outside the modules a config may instantiate from"
        return None
    module = getattr(target, "__module__", None)
    if not isinstance(module, str) or not callable(target) or not _allowed(f"{module}."):
        return f"is {target!r}, defined outside the modules a config may instantiate from"
    return None


def defined_in_allowed_module(obj: Any) -> bool:
    """Whether an object a `_target_` resolved to was defined where targets may point: a path under an
    allowed prefix can still reach another module's function through an import (`pipeline.data.tables.pd.read_pickle`)."""
    module = getattr(obj, "__module__", None)
    return callable(obj) and isinstance(module, str) and _allowed(f"{module}.")


def refused_target(key: str, target: Any, why: str) -> PipelineError:
    prefixes = ", ".join(p + "*" for p in allowed_targets())
    return PipelineError(
        f"config key {key}: _target_ {target!r} {why}; a config may only instantiate from {prefixes}"
        " (set PIPELINE_ALLOWED_TARGETS=<module prefix> to add a module of your own)"
    )


def targets(node: Any, where: str = "") -> list[tuple[str, Any]]:
    """(key, value) of every `_target_` in `node`, a config or plain dicts and lists, at any depth."""
    if OmegaConf.is_config(node):
        try:
            node = OmegaConf.to_container(node, resolve=True, throw_on_missing=False)
        except Exception:  # an interpolation that resolves only later (Hydra's own): judged unresolved
            node = OmegaConf.to_container(node, resolve=False)
    found = []
    if isinstance(node, dict):
        for k, v in node.items():
            key = f"{where}.{k}" if where else str(k)
            found += [(key, v)] if k == "_target_" else targets(v, key)
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            found += targets(v, f"{where}[{i}]")
    return found


def check_targets(node: Any, where: str = "") -> None:
    """Every `_target_` in `node` (nested at any depth, `_partial_` ones included) under the allowed
    prefixes: a shared experiment file cannot make the pipeline call `os.system`. Checked on the
    strings alone, before anything is imported."""
    for key, value in targets(node, where):
        why = target_refusal(value)
        if why:
            raise refused_target(key, value, why)


# Names that become file or folder names under artifacts/ and reports/ (`artifacts/<experiment>/finetune/<strategy>/`).
NAMED_DICTS = ("experiments", "multitask_experiments", "transfer.strategies", "multitask.archs", "multitask.weightings")


def name_refusal(name: Any) -> str | None:
    """Why `name` cannot be a file or folder name inside the outputs, or None."""
    text = str(name)
    if text in ("", ".", "..") or any(c in text for c in "/\\\0"):
        return "cannot name a file or folder of the outputs: a name must not contain '/' or '\\' nor be '.' or '..'"
    return None


def check_names(cfg: DictConfig) -> None:
    """The names in the config that become output paths: experiments, strategies, schemes, weightings
    and classic baselines. `../../x` as an experiment name would write artifacts/../../x."""
    for dotted in NAMED_DICTS:
        node = OmegaConf.select(cfg, dotted, default=None)
        for name in node.keys() if OmegaConf.is_dict(node) else ():
            why = name_refusal(name)
            if why:
                raise PipelineError(f"config key {dotted}: the name {str(name)!r} {why}")
    classic = OmegaConf.select(cfg, "multitask.classic", default=None)
    for name in classic if OmegaConf.is_list(classic) else ():
        why = name_refusal(name)
        if why:
            raise PipelineError(f"config key multitask.classic: the name {str(name)!r} {why}")
    exp = cfg.get("exp")
    if exp is not None and name_refusal(exp):
        raise PipelineError(f"config key exp: the experiment name {str(exp)!r} {name_refusal(exp)}")


# The project's output folders (dvc.yaml's outs, .gitignore): `paths.*` may point inside them, relative to
# the working directory, the project a stage runs in. Elsewhere only with PIPELINE_ALLOWED_OUTPUTS (folders,
# os.pathsep-separated), set by whoever runs the pipeline, never by a config file.
OUTPUT_FOLDERS = ("artifacts", "reports")


def allowed_outputs() -> list[Path]:
    extra = [p.strip() for p in os.environ.get("PIPELINE_ALLOWED_OUTPUTS", "").split(os.pathsep) if p.strip()]
    return [Path.cwd() / f for f in OUTPUT_FOLDERS] + [Path(p) for p in extra]


def check_paths(cfg: DictConfig) -> None:
    """Where outputs go (`paths.artifacts`, `paths.reports`): inside the project's output folders. Stages
    replace whole folders under them (`<artifacts>/<experiment>/finetune`), so `paths.artifacts=src` or
    `/home/me` in a shared config would delete what lies there. Checked on the path as written and on
    where it leads through symbolic links."""
    paths = cfg.get("paths")
    if not OmegaConf.is_dict(paths):
        raise PipelineError(f"config key paths must be a mapping of output folders (artifacts, reports), got {paths!r}")
    allowed = allowed_outputs()
    for key, value in paths.items():
        if not isinstance(value, str) or not value.strip():
            raise PipelineError(f"config key paths.{key} must be a folder name, got {value!r}")
        target = Path.cwd() / os.path.normpath(value)
        if not any(_inside(target, a) and _inside(target.resolve(), a.resolve()) for a in allowed):
            raise PipelineError(
                f"config key paths.{key}: {value!r} lies outside the project's output folders {[str(a) for a in allowed]};"
                f" a config may not put outputs elsewhere (set PIPELINE_ALLOWED_OUTPUTS={target} to allow that folder)"
            )


def _inside(path: Path, folder: Path) -> bool:
    path, folder = Path(os.path.normpath(path)), Path(os.path.normpath(folder))
    return path == folder or folder in path.parents


def check_untrusted(cfg: DictConfig) -> None:
    """What a shared config could abuse, checked before a stage does anything: its `_target_`s, the
    names that become output paths and the output folders."""
    check_targets(cfg)
    check_names(cfg)
    check_paths(cfg)
