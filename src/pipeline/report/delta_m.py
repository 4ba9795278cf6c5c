"""Δm: how much better than the baseline method a method does over the tasks, in two forms.

Per-task mean (Maninis et al. 2019; Vandenhende et al. 2021):

    Δm(method) = 100/K * sum_k s_k * (M_method,k - M_base,k) / |M_base,k|

Over test rows (each task weighted by its number of labelled test rows n_k): the primary metric pooled
over every test row of the Δm tasks, then the same relative change,

    P_acc  = sum_k n_k acc_k / sum_k n_k                              (accuracy over all test rows)
    P_rmse = sqrt(sum_k n_k (rmse_k / scale_k)^2 / sum_k n_k)         (RMSE over all test rows, standardised units)
    Δm_rows(method) = 100 * sum_kind N_kind s_kind (P_method - P_base) / |P_base| / sum_kind N_kind

(with one shared regression target, as in a long-format table, this is the change of the RMSE over all
test rows). The per-task mean lets a task with 2 test rows weigh as much as one with 2000, and its ratio
explodes when the baseline's metric on two rows is small by chance; so the verdict rests on Δm over test
rows when any Δm task has fewer than MIN_TEST_ROWS test rows or the largest has more than MAX_SIZE_RATIO
times the test rows of the smallest, and on the per-task mean otherwise (`verdict_basis`).

Both average over the K tasks every compared method and the baseline have a result for (the same task
set for every method; a task with a zero baseline value is left out of the per-task mean only, its ratio
being undefined), with each task's primary metric (`TaskSpec.primary`: accuracy for classes, RMSE for
values) and s_k = +1 when higher is better, -1 when lower is better (`TaskSpec.higher_is_better`). The
baseline is trained in the same experiment and paired by seed; it is never the run's own first epoch.
R² and F1 are shown but kept out of Δm: R² near 0 makes ratios explode.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from pipeline.data import TaskSpec
from pipeline.errors import PipelineError
from pipeline.report import interval, spread


def primary_rows(df: pd.DataFrame, tasks: Sequence[TaskSpec]) -> pd.DataFrame:
    """The rows holding each task's primary metric."""
    primary = {t.name: t.primary for t in tasks}
    return df[df.metric == df.task.map(primary)]


# When the verdict rests on Δm over test rows rather than the per-task mean (see the module docstring).
MIN_TEST_ROWS = 10
MAX_SIZE_RATIO = 4.0


def common_tasks(df: pd.DataFrame, tasks: Sequence[TaskSpec], baseline: str) -> tuple[list[str], dict[str, list[str]]]:
    """The tasks Δm averages over: those with a finite value from every compared method at every seed;
    and the others, each with the methods lacking it (a task with no labelled test row has no metrics)."""
    prim = primary_rows(df, tasks)
    runs = prim[["method", "seed"]].drop_duplicates()
    have = {t: g for t, g in prim[np.isfinite(prim.value.astype(float))].groupby("task")}
    used, left_out = [], {}
    for t in tasks:
        g = have.get(t.name, prim.iloc[:0])
        got = set(zip(g.method, g.seed))
        lacking = sorted({m for m, s in zip(runs.method, runs.seed) if (m, s) not in got})
        if lacking:
            left_out[t.name] = lacking
        else:
            used.append(t.name)
    return used, left_out


def zero_baseline(df: pd.DataFrame, tasks: Sequence[TaskSpec], baseline: str, used: Sequence[str]) -> list[str]:
    """Tasks of `used` whose baseline value is 0 at some seed: their ratio is undefined, so they are left
    out of the per-task mean (Δm over test rows keeps them)."""
    prim = primary_rows(df, tasks)
    zero = prim[(prim.method == baseline) & (prim.value == 0)].task
    return [t for t in used if t in set(zero)]


def _pooled(values: np.ndarray, specs: Sequence[TaskSpec], rows: np.ndarray) -> dict[bool, tuple[float, float]]:
    """Per direction of the primary metric (accuracy: higher is better; RMSE: lower): the metric pooled
    over all test rows of these tasks, and those rows' count (module docstring)."""
    out = {}
    for higher in (True, False):
        pick = np.array([s.higher_is_better == higher for s in specs])
        if not pick.any():
            continue
        n = rows[pick]
        if higher:
            value = float(np.sum(n * values[pick]) / n.sum())
        else:
            scale = np.array([s.scale for s in specs])[pick]
            value = float(np.sqrt(np.sum(n * (values[pick] / scale) ** 2) / n.sum()))
        out[higher] = (value, float(n.sum()))
    return out


def _relative_pooled(values: np.ndarray, base: np.ndarray, specs: Sequence[TaskSpec], rows: np.ndarray) -> float:
    """100 * the row-weighted relative change of the pooled primary metric against the baseline's."""
    ours, theirs = _pooled(values, specs, rows), _pooled(base, specs, rows)
    total = sum(n for _, n in ours.values())
    change = sum(n * (1.0 if higher else -1.0) * (v - theirs[higher][0]) / abs(theirs[higher][0]) for higher, (v, n) in ours.items())
    return 100.0 * change / total if all(theirs[h][0] != 0 for h in ours) else float("nan")


def delta_m(
    df: pd.DataFrame, tasks: Sequence[TaskSpec], baseline: str, rows: Mapping[str, int] | None = None, unpaired: Sequence[int] = ()
) -> pd.DataFrame:
    """Δm per method and seed over `common_tasks`, paired with the baseline at the same seed (classic
    baselines are deterministic and compared with each baseline seed): `delta_m` the per-task mean
    (without `zero_baseline` tasks) and, given each task's labelled test rows `rows`, `delta_m_rows`
    over test rows. `unpaired`: seeds whose baseline run failed; a method's run at one has no Δm."""
    used, _ = common_tasks(df, tasks, baseline)
    zero = set(zero_baseline(df, tasks, baseline, used))
    spec = {t.name: t for t in tasks}
    prim = primary_rows(df, tasks)
    prim = prim[prim.task.isin(used)]
    base = prim[prim.method == baseline].set_index(["seed", "task"])["value"]
    if base.empty:
        raise PipelineError(
            f"multitask.baseline={baseline!r}: no results of it in common tasks; Δm needs the baseline trained in the same experiment"
        )
    base_seeds = sorted(base.index.get_level_values(0).unique())
    out = []
    for (method, seed), g in prim.groupby(["method", "seed"]):
        if not g.classic.iloc[0] and seed not in base_seeds:
            if seed in unpaired:
                continue
            raise PipelineError(f"multitask.baseline={baseline!r} has no run at seed {seed}, which {method} has; Δm pairs them by seed")
        specs = [spec[t] for t in g.task]
        values, ratio = g.value.to_numpy(dtype=float), ~g.task.isin(zero).to_numpy()
        sign = np.where([s.higher_is_better for s in specs], 1.0, -1.0)
        for s in base_seeds if g.classic.iloc[0] else [seed]:
            b = base.loc[[(s, t) for t in g.task]].to_numpy(dtype=float)
            per_task = 100.0 * float(np.mean(sign[ratio] * (values - b)[ratio] / np.abs(b[ratio]))) if ratio.any() else float("nan")
            row = {"method": method, "seed": s, "delta_m": per_task}
            if rows is not None:
                row["delta_m_rows"] = _relative_pooled(values, b, specs, np.array([rows[t] for t in g.task], dtype=float))
            out.append(row)
    return pd.DataFrame(out, columns=["method", "seed", "delta_m", *(["delta_m_rows"] if rows is not None else [])])


def verdict_basis(rows: Mapping[str, int], used: Sequence[str]) -> tuple[str, str]:
    """Which Δm the verdict rests on (the `delta_m` table's column: `delta_m_rows` or `delta_m`), and why,
    from the labelled test rows of the tasks in Δm (rule: module docstring)."""
    sizes = [rows[t] for t in used]
    if not sizes:
        return "delta_m", "no task in Δm"
    small, large = min(sizes), max(sizes)
    span = f"the {len(sizes)} tasks in Δm have " + (
        f"{small} labelled test rows each" if small == large else f"{small} to {large} labelled test rows"
    )
    rule = (
        f"rule: Δm over test rows when any task in Δm has fewer than {MIN_TEST_ROWS} test rows or the largest more than"
        f" {MAX_SIZE_RATIO:g}× the smallest, else the per-task mean"
    )
    if small < MIN_TEST_ROWS or large > MAX_SIZE_RATIO * max(small, 1):
        return "delta_m_rows", f"{span} ({rule})"
    return "delta_m", f"{span} ({rule})"


def per_task(df: pd.DataFrame, tasks: Sequence[TaskSpec], baseline: str) -> pd.DataFrame:
    """Mean ± std of each task's primary metric per method, and whether it is worse than the baseline:
    the 95 % t-interval of the paired per-seed difference (signed so that higher is better) lies below
    0. With one seed, or no paired baseline value, there is no interval and no flag."""
    prim = primary_rows(df, tasks)
    stats = prim.groupby(["method", "task"])["value"].agg(mean="mean", std=spread).reset_index()
    sign = {t.name: 1.0 if t.higher_is_better else -1.0 for t in tasks}
    prim = prim[np.isfinite(prim.value.astype(float))]
    base = prim[prim.method == baseline][["task", "seed", "value"]].rename(columns={"value": "base"})
    classic = prim.classic.astype(bool)
    pairs = pd.concat([prim[~classic].merge(base, on=["task", "seed"]), prim[classic].drop(columns="seed").merge(base, on="task")])
    pairs["diff"] = pairs.task.map(sign) * (pairs.value.astype(float) - pairs.base.astype(float))
    upper = {key: interval(g)[2] for key, g in pairs.groupby(["method", "task"])["diff"]}
    hi = pd.Series([upper.get((m, t), np.nan) for m, t in zip(stats.method, stats.task)], index=stats.index)
    stats["worse"] = (hi < 0) & (stats.method != baseline)
    return stats


def task_changes(df: pd.DataFrame, tasks: Sequence[TaskSpec], baseline: str) -> pd.DataFrame:
    """Each method's change against the baseline on each task, per seed, in % of the baseline's value and
    signed so that higher is better: 100 * s_k * (M_method,k - M_base,k) / |M_base,k| (the terms Δm
    averages), paired by seed; a classic baseline (fitted once) is compared with every baseline seed.
    Columns method, task, seed, change; a task with a zero or missing baseline value has no row."""
    prim = primary_rows(df, tasks)
    prim = prim[np.isfinite(prim.value.astype(float))]
    sign = {t.name: 1.0 if t.higher_is_better else -1.0 for t in tasks}
    base = prim[prim.method == baseline][["task", "seed", "value"]].rename(columns={"value": "base"})
    neural = prim[~prim.classic.astype(bool)].merge(base, on=["task", "seed"])
    classic = prim[prim.classic.astype(bool)].drop(columns="seed").merge(base, on="task")
    both = pd.concat([neural, classic], ignore_index=True)
    both = both[both.base != 0]
    change = 100.0 * both.task.map(sign) * (both.value.astype(float) - both.base.astype(float)) / both.base.abs()
    return both.assign(change=change)[["method", "task", "seed", "change"]].reset_index(drop=True)


def task_change_intervals(changes: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """Per method x task: the mean change over seeds (`task_changes`) and its t-interval (lo, hi), n seeds."""
    rows = []
    for (method, task), g in changes.groupby(["method", "task"]):
        mean, lo, hi = interval(g.change, level)
        rows.append({"method": method, "task": task, "mean": mean, "lo": lo, "hi": hi, "n": len(g)})
    return pd.DataFrame(rows, columns=["method", "task", "mean", "lo", "hi", "n"])
