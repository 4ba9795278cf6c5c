"""Reports built from finished runs: `transfer` (strategy x label budget against a baseline strategy),
`multitask` (Δm of each sharing scheme x weighting against a baseline method), `figures`, and
`outputs` (all files written at once, then logged to MLflow). The stage `stages/report.py` composes them."""

from __future__ import annotations

import pandas as pd


def spread(values: pd.Series) -> float:
    """Sample standard deviation (ddof=1); 0 for a single value."""
    return float(values.std(ddof=1)) if len(values) > 1 else 0.0


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
