"""One tuning budget for every strategy: the same number of hyperparameter trials each, chosen by
cross-validation on the labelled rows a user with k labels per class has (Oliver et al. 2018).

A strategy's config declares its search space under `search:`: the fine-tuning rate `lr` and its own
knobs (keyword arguments of its class), each a range `{log: [low, high]}` (log-uniform),
`{uniform: [low, high]}`, or a list of choices. Trial 0 is the configured setting; trials 1..n-1 are
drawn from the space by scikit-learn's ParameterSampler with `transfer.tuning.seed`, so every budget
and seed tries the same settings and only the data differ.

A trial's score is the mean over folds of the best validation metric of a fit on the other folds
(stratified k-fold over the budget's labelled train and validation rows: scikit-learn's
StratifiedKFold, KFold for regression). The trial with the best score is the strategy's result; its
test metrics come from a fit on the budget's train rows with the epoch chosen on its validation rows,
as an untuned run's. The test split never selects anything: the report prints the best trial by test
score apart, as an oracle that shows what selection costs.

Two folds over a budget whose validation labels are its own (k per class in train and in validation)
are the budget's split and its mirror (`mirrored`): both halves hold k rows per class, so they are a
stratified 2-fold partition, and the first fold's fit is the one an untuned run makes. A trial then
costs 2 fits, not 3: the result's fit is also its first fold.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.errors import PipelineError

RANGES = ("log", "uniform")


@dataclass(frozen=True)
class Space:
    """A strategy's search space: {key: scipy distribution or list of choices}."""

    strategy: str
    dims: dict[str, Any]

    def __bool__(self) -> bool:
        return bool(self.dims)


def knobs(target: str) -> list[str]:
    """The keyword arguments of a strategy class (its `_target_`): what its search may vary besides `lr`."""
    from hydra.utils import get_class

    return [p for p in inspect.signature(get_class(target)).parameters if p not in ("self", "args", "kwargs")]


def parse_space(strategy: str, search: Mapping | None, target: str) -> Space:
    """Space of `search` (the strategy config's `search:` node), checked: every key is `lr` or a knob of
    the strategy, ranges have 0 < low <= high for `log` and low <= high for `uniform`, lists are not empty,
    and `lr` stays positive."""
    from scipy import stats

    allowed = ["lr", *knobs(target)]
    dims: dict[str, Any] = {}
    for key, spec in (search or {}).items():
        where = f"transfer.strategies.{strategy}.search.{key}"
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise PipelineError(f"{where}: {strategy} has no knob {key!r}{hint}; it has {allowed}")
        if isinstance(spec, Mapping):
            if len(spec) != 1 or next(iter(spec)) not in RANGES:
                raise PipelineError(f"{where}: a range is {{log: [low, high]}} or {{uniform: [low, high]}}, got {dict(spec)}")
            ((kind, bounds),) = spec.items()
            if not (isinstance(bounds, Sequence) and len(bounds) == 2):
                raise PipelineError(f"{where}.{kind}: expected [low, high], got {bounds!r}")
            low, high = (float(b) for b in bounds)
            if not low <= high or (kind == "log" or key == "lr") and low <= 0:
                raise PipelineError(f"{where}.{kind}: [{low}, {high}] must have {'0 < ' if kind == 'log' or key == 'lr' else ''}low <= high")
            dims[key] = stats.loguniform(low, high) if kind == "log" and low < high else stats.uniform(low, high - low) if low < high else [low]
        else:
            choices = list(spec) if isinstance(spec, Sequence) and not isinstance(spec, str) else None
            if not choices:
                raise PipelineError(f"{where}: a list of choices must not be empty, got {spec!r}")
            if key == "lr" and any(float(c) <= 0 for c in choices):
                raise PipelineError(f"{where}: learning rates must be positive, got {choices}")
            dims[key] = choices
    return Space(strategy, dims)


def draw(space: Space, configured: Mapping[str, Any], n: int, seed: int) -> list[dict[str, Any]]:
    """n trial settings over the keys of `space`: the configured values first, then n - 1 draws."""
    from sklearn.model_selection import ParameterSampler

    first = {k: configured[k] for k in space.dims}
    if n <= 1 or not space:
        return [first]
    if all(isinstance(d, list) for d in space.dims.values()):  # a finite grid: drawn without replacement
        size = int(np.prod([len(d) for d in space.dims.values()]))
        if size < n - 1:
            raise PipelineError(
                f"transfer.strategies.{space.strategy}.search has {size} settings, fewer than the {n - 1} draws of"
                f" transfer.tuning.trials={n}: every strategy gets the same number of trials; add choices or a range"
            )
    rest = ParameterSampler(space.dims, n_iter=n - 1, random_state=seed)
    return [first, *({k: _plain(v) for k, v in t.items()} for t in rest)]


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value


def folds(y: np.ndarray, rows: np.ndarray, kind: str, n_folds: int, seed: int, where: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """(fit rows, held-out rows) per fold over `rows`, stratified by class for classification. A fold
    count larger than the smallest class is an error naming `where` rather than a silent smaller count."""
    from sklearn.model_selection import KFold, StratifiedKFold

    if n_folds < 2:
        raise PipelineError(f"transfer.tuning.folds must be at least 2, got {n_folds}")
    if kind == "classification":
        _, counts = np.unique(y[rows], return_counts=True)
        if counts.min() < n_folds:
            raise PipelineError(
                f"transfer.tuning.folds={n_folds} is larger than the smallest class at {where} ({int(counts.min())} labelled rows); "
                f"use at most {int(counts.min())} folds or a larger budget"
            )
        splitter = StratifiedKFold(n_folds, shuffle=True, random_state=seed)
        return [(rows[a], rows[b]) for a, b in splitter.split(rows, y[rows])]
    if len(rows) < n_folds:
        raise PipelineError(f"transfer.tuning.folds={n_folds} is larger than the {len(rows)} labelled rows at {where}")
    return [(rows[a], rows[b]) for a, b in KFold(n_folds, shuffle=True, random_state=seed).split(rows)]


def mirrors(tcfg) -> bool:
    """Whether cross-validation uses the budget's own split and its mirror (`mirrored`): `transfer.tuning.folds`
    is 2 and the validation labels are the budget's (`transfer.val_labels=budget`)."""
    return int(tcfg.tuning.folds) == 2 and tcfg.val_labels == "budget"


def mirrored(index: Mapping[str, np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    """The 2 folds of a budget whose train and validation rows are both k per class: (train, validation)
    (the result's own fit) and its mirror (validation, train)."""
    train, val = np.asarray(index["train"]), np.asarray(index["val"])
    return [(train, val), (val, train)]


def split_search(node) -> tuple[Any, dict]:
    """A strategy's config node without its `search:` (what its class is built from), and the search."""
    from omegaconf import OmegaConf

    container = OmegaConf.to_container(node, resolve=True)
    search = container.pop("search", None) or {}
    return OmegaConf.create(container), search


def configured(node, space: Space, lr: float) -> dict[str, Any]:
    """The configured value of every key of `space` (trial 0): `transfer.lr`, else the strategy's config
    value, else its class's default."""
    from hydra.utils import get_class
    from omegaconf import OmegaConf

    defaults = {k: p.default for k, p in inspect.signature(get_class(node._target_)).parameters.items()}
    values = {k: OmegaConf.to_container(node[k]) if OmegaConf.is_config(node[k]) else node[k] for k in space.dims if k in node}
    return {k: lr if k == "lr" else _plain(values[k]) if k in values else defaults[k] for k in space.dims}


def best_trial(scores: Sequence[float], higher_is_better: bool) -> int:
    """The trial with the best cross-validated score; ties and non-finite scores favour the earlier
    trial (trial 0 is the configured setting)."""
    sign = 1.0 if higher_is_better else -1.0
    ranked = [sign * s if np.isfinite(s) else -np.inf for s in scores]
    return int(np.argmax(ranked))


def plan(nodes, tcfg, names: Sequence[str]) -> tuple[dict[str, list[dict]], dict[tuple[str, int], Any]]:
    """Per strategy of `names` (config nodes `nodes`, `transfer.strategies`) its trial settings ({key: value}
    over its search space, trial 0 the configured one) and the strategy built with each trial's knobs,
    keyed (strategy, trial). Search spaces are checked even when untuned (`transfer.tuning.trials=1`)."""
    from omegaconf import OmegaConf

    from pipeline.errors import instantiate

    n = int(tcfg.tuning.trials)
    if n < 1:
        raise PipelineError(f"transfer.tuning.trials must be at least 1 (1 = the configured setting only), got {n}")
    trials, strategies = {}, {}
    for s in names:
        node, search = split_search(nodes[s])
        space = parse_space(s, search, str(node._target_))
        if n > 1 and not space:
            raise PipelineError(
                f"transfer.strategies.{s}.search is empty: with transfer.tuning.trials={n} every strategy gets {n} trials,"
                f" so each needs a search space (conf/transfer/{s}.yaml)"
            )
        trials[s] = draw(space, configured(node, space, tcfg.lr), n, int(tcfg.tuning.seed))
        for i, setting in enumerate(trials[s]):
            knobs = {k: v for k, v in setting.items() if k != "lr"}
            strategies[s, i] = instantiate(OmegaConf.merge(node, knobs), f"transfer strategy {s}" + (f" (trial {i}: {setting})" if i else ""))
    return trials, strategies
