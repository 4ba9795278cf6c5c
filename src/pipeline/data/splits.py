"""The one way train/val/test indices are drawn: for transfer sources and targets, multitask sets
and MultiMNIST's pools of source digits alike."""

from __future__ import annotations

import numpy as np

from pipeline.data import TaskSpec
from pipeline.errors import PipelineError


def random_splits(
    y: np.ndarray, tasks: list[TaskSpec], val: float, test: float, seed: int, groups: np.ndarray | None = None
) -> tuple[dict[str, np.ndarray], str]:
    """Random train/val/test indices (sorted), and how they were stratified.

    `y` is the [N, T] label matrix (NaN = unlabelled). Rows of one group stay together (fractions
    count groups). Otherwise strata: the class when there is one classification task, the task when
    every row is labelled for exactly one task (so each task gets its share of every split), else
    none. Each stratum of n units gives round(test * n) to test, round(val * n) to val, the rest to
    train.
    """
    if not (val > 0 and test > 0 and val + test < 1):
        raise PipelineError(f"split: val={val} and test={test} must be positive and sum to less than 1")
    rng = np.random.default_rng(seed)
    labelled = ~np.isnan(y)
    if groups is not None:
        units, row_unit = np.unique(groups, return_inverse=True)
        strata, how = np.zeros(len(units), dtype=int), "grouped"
    else:
        row_unit = np.arange(len(y))
        if len(tasks) == 1 and tasks[0].kind == "classification":
            strata, how = np.where(labelled[:, 0], y[:, 0], -1), "class"
        elif len(tasks) > 1 and (labelled.sum(1) == 1).all():
            strata, how = labelled.argmax(1), "task"
        else:
            strata, how = np.zeros(len(y), dtype=int), "none"
    part = np.empty(len(strata), dtype=int)  # 0 train, 1 val, 2 test, per unit
    for s in np.unique(strata):
        members = rng.permutation(np.flatnonzero(strata == s))
        n_test, n_val = (int(np.floor(f * len(members) + 0.5)) for f in (test, val))
        part[members] = 0
        part[members[:n_test]] = 2
        part[members[n_test : n_test + n_val]] = 1
    rows = part[row_unit]
    return {name: np.flatnonzero(rows == i) for i, name in enumerate(("train", "val", "test"))}, how
