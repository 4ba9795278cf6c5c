"""Reports built from finished runs: `transfer` (strategy x label budget against a baseline strategy),
`multitask` (Δm of each sharing scheme x weighting against a baseline method), `figures`, and
`outputs` (all files written at once, then logged to MLflow). The stage `stages/report.py` composes them."""

from __future__ import annotations

import numpy as np
import pandas as pd


def failed_runs(n: int, consequence: str, columns: list[str], rows: list[list]) -> list[str]:
    """Markdown lines of a report's "Failed runs" section: how many, what a failed run does to the
    tables (`consequence`), and one row each; none without failed runs."""
    if not n:
        return []
    return [
        "",
        "## Failed runs",
        "",
        f"{n} runs failed; each MLflow run ended FAILED with the reason in its `failure` tag. A failed run is never scored: {consequence}",
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
        *("| " + " | ".join(map(str, row)) + " |" for row in rows),
    ]


def spread(values: pd.Series) -> float:
    """Sample standard deviation (ddof=1); 0 for a single value."""
    return float(values.std(ddof=1)) if len(values) > 1 else 0.0


def interval(values, level: float = 0.95) -> tuple[float, float, float]:
    """Mean and the two ends of its Student-t interval (`level`) over the values (seeds); with one
    value there is no spread to estimate, so the ends are NaN (and every verdict on them is none)."""
    from scipy import stats

    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(v.mean())
    if len(v) < 2:
        return mean, float("nan"), float("nan")
    half = float(stats.t.ppf(0.5 + level / 2, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))
    return mean, mean - half, mean + half


def fmt_interval(mean: float, lo: float, hi: float, digits: int = 3, signed: bool = False) -> str:
    """`0.620 [0.555, 0.685]`; the mean alone where there is no interval (one seed)."""
    f = f"{{:+.{digits}f}}" if signed else f"{{:.{digits}f}}"
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return f.format(mean)
    return f"{f.format(mean)} [{f.format(lo)}, {f.format(hi)}]"


def fmt(mean: float, std: float, digits: int = 3) -> str:
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def baseline_first(names, baseline: str) -> list[str]:
    """Sorted names, the baseline first when present."""
    rest = sorted(n for n in set(names) if n != baseline)
    return ([baseline] if baseline in set(names) else []) + rest


def listing(items, limit: int = 20) -> str:
    """`a`, `b`, … and N more: a list that stays one readable line."""
    items = list(items)
    shown = ", ".join(f"`{i}`" for i in items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")
