"""Transferability scores: estimates, before any fine-tuning, of how well a source model will serve a
target task, from the frozen source's outputs on the labelled target rows a user has.

A score is one class here (`Score`) plus one file in `conf/knowledge/`; `extract` instantiates every
entry of `knowledge.scores` by its `_target_`, so adding a score never touches a stage. A score reads
either the source's features (`inputs = "features"`, the backbone's output) or its class
probabilities (`"probs"`), says which target kinds it is defined for, and is higher where the source
should transfer better.
"""

from __future__ import annotations

import numpy as np

from pipeline.errors import PipelineError


class NotApplicable(Exception):
    """A score that is not defined for these data (a target kind, a source without classes, too few
    labelled rows per class): the report says so instead of the stage failing."""


class Score:
    """Base: subclasses implement `compute(x, y)`; `__call__` checks the inputs first."""

    name = "score"
    inputs = "features"  # or "probs": the source model's class probabilities
    kinds: tuple[str, ...] = ("classification",)
    baseline = False  # a naive baseline (kNN, probe) that the other scores must beat to be worth showing

    def __call__(self, x: np.ndarray, y: np.ndarray, kind: str, where: str = "") -> float:
        if kind not in self.kinds:
            raise NotApplicable(f"{self.name} is defined for {' and '.join(self.kinds)} targets, not {kind}")
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y)
        at = f" ({where})" if where else ""
        if x.ndim != 2 or len(x) != len(y):
            raise PipelineError(f"{self.name}{at}: expected {len(y)} rows of {self.inputs}, got shape {x.shape}")
        if not np.isfinite(x).all():
            raise PipelineError(f"{self.name}{at}: the source {self.inputs} hold NaN or infinite values")
        if kind == "classification":
            classes, y = np.unique(y, return_inverse=True)  # classes 0..C-1 in sorted order
            if len(classes) < 2:
                raise PipelineError(f"{self.name}{at}: the labelled rows hold a single class; a score needs at least two")
        else:
            y = y.astype(np.float64)
        return float(self.compute(x, y))

    def compute(self, x: np.ndarray, y: np.ndarray) -> float:
        raise NotImplementedError


def canonical_order(x: np.ndarray) -> np.ndarray:
    """Row order by content (lexicographic over the columns): splits drawn after it do not depend on
    the order the rows came in, so a cross-validated score is invariant to permuting the samples."""
    return np.lexsort(x.T[::-1])


def one_hot(y: np.ndarray) -> np.ndarray:
    return np.eye(int(y.max()) + 1)[y]
