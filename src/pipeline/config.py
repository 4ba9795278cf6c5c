"""Schema of the fit settings: the `trainer` node and the `pretrain`, `transfer` and `multitask`
nodes of conf/config.yaml, as dataclasses (OmegaConf structured configs).

Stages validate their nodes with `settings(cfg, name)` before any work: an unknown or misspelt key,
or a value of the wrong type, is a PipelineError naming it (`transfer.paitence`), where a
`.get(key, default)` would silently train with the default. The schema has no defaults: conf/
provides every value, so there is one place where a default lives.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, fields
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf

from pipeline.errors import PipelineError


@dataclass
class TrainerConfig:
    """How Lightning runs (conf/trainer/)."""

    accelerator: str = MISSING
    num_threads: int | None = MISSING  # torch threads; null = torch's default
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
class TransferConfig(FitConfig):
    baseline: str = MISSING
    val_labels: str = MISSING  # budget | all
    strategies: dict[str, Any] = MISSING


@dataclass
class MultitaskConfig(FitConfig):
    baseline: str = MISSING
    classic: list[str] = MISSING
    weightings_on: list[str] | None = MISSING
    archs: dict[str, Any] = MISSING
    weightings: dict[str, Any] = MISSING


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
    "transfer": {"source", "target", "split", "budgets"},
    "multitask": {"data", "split", "schemes", "weightings", "weightings_on"},
}
REQUIRED_EXPERIMENT_KEYS = {"transfer": {"source", "target", "split", "budgets"}, "multitask": {"data", "split"}}


def check_experiment(node: DictConfig, where: str, kind: str) -> None:
    """An experiment node's keys (a misspelt `weightings` would silently run the whole grid) and split."""
    keys = {str(k) for k in node.keys()}
    unknown = sorted(keys - EXPERIMENT_KEYS[kind])
    if unknown:
        close = {k: difflib.get_close_matches(k, EXPERIMENT_KEYS[kind], n=1) for k in unknown}
        hints = "".join(f" ({where}.{k}: did you mean {c[0]}?)" for k, c in close.items() if c)
        raise PipelineError(f"unknown key(s) {[f'{where}.{k}' for k in unknown]}{hints}; a {kind} experiment takes {sorted(EXPERIMENT_KEYS[kind])}")
    absent = sorted(REQUIRED_EXPERIMENT_KEYS[kind] - keys)
    if absent:
        raise PipelineError(f"{where} lacks {[f'{where}.{k}' for k in absent]}")
    _merge(SplitConfig, node.split, f"{where}.split")


SCHEMAS = {"trainer": TrainerConfig, "pretrain": PretrainConfig, "transfer": TransferConfig, "multitask": MultitaskConfig}


def validate(node: Any, name: str):
    """`node` checked against the schema of config node `name`: the dataclass instance."""
    schema = SCHEMAS[name]
    if not OmegaConf.is_config(node) and not isinstance(node, dict):
        raise PipelineError(f"config node {name} must be a mapping of {sorted(f.name for f in fields(schema))}, got {node!r}")
    return OmegaConf.to_object(_merge(schema, node, name))


def _merge(schema: type, node: Any, name: str):
    """`node` merged onto `schema`: unknown keys, wrong types and missing keys are errors naming them."""
    from omegaconf.errors import ConfigKeyError, ValidationError

    container = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node)
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), container)
    except ConfigKeyError as exc:
        valid = [f.name for f in fields(schema)]
        close = difflib.get_close_matches(str(exc.key), valid, n=1)
        hint = f" (did you mean {name}.{close[0]}?)" if close else ""
        raise PipelineError(f"unknown config key {name}.{exc.full_key}{hint}; valid keys of {name}: {valid}") from None
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
