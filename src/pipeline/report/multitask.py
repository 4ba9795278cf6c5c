"""Multitask comparison: per-task results by method, and Δm against the single-task baseline.

    Δm(method) = 100/K * sum_k s_k * (M_method,k - M_base,k) / M_base,k

over tasks k with their primary metric (accuracy for classes, RMSE for values), s_k = +1 when
higher is better and -1 when lower is better (Maninis et al. 2019; Vandenhende et al. 2021). The
baseline is the single-task network trained in the same experiment, paired by seed; it is never
the run's own first epoch. R² and F1 are shown but kept out of Δm: R² near 0 makes ratios explode.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.errors import PipelineError

BASELINE = "single_task+equal"


def primary(kind: str) -> tuple[str, bool]:
    return ("acc", True) if kind == "classification" else ("rmse", False)


def read_results(directory: str | Path) -> list[dict]:
    """The multitask stage's result records (one per method x seed), as written."""
    files = sorted(Path(directory).glob("*/seed*.json"))
    if not files:
        raise PipelineError(f"missing upstream output {directory}: no multitask results; run the multitask stage first")
    return [json.loads(f.read_text()) for f in files]


def table(records: list[dict]) -> pd.DataFrame:
    """Long table: one row per method x seed x task x metric."""
    rows = []
    for r in records:
        method = f"{r['scheme']}+{r['weighting']}"
        for key, value in r["test"].items():
            parts = key.split("/")
            if len(parts) == 3:
                rows.append({"method": method, "seed": r["seed"], "task": parts[1], "metric": parts[2], "value": value,
                             "classic": bool(r.get("classic")), "run_id": r.get("run_id")})
    return pd.DataFrame(rows)


def primary_rows(df: pd.DataFrame, kinds: dict[str, str]) -> pd.DataFrame:
    """The rows holding each task's primary metric."""
    return df[[row.metric == primary(kinds[row.task])[0] for row in df.itertuples()]]


def delta_m(df: pd.DataFrame, kinds: dict[str, str], baseline: str = BASELINE) -> pd.DataFrame:
    """Δm per method and seed, paired with the baseline at the same seed (classic baselines are
    deterministic and compared with each baseline seed)."""
    prim = primary_rows(df, kinds)
    base = prim[prim.method == baseline].set_index(["seed", "task"])["value"]
    if base.empty:
        raise PipelineError(f"no {baseline} runs: Δm needs the single-task baseline trained in the same experiment")
    out = []
    for (method, seed), g in prim.groupby(["method", "seed"]):
        seeds = sorted(base.index.get_level_values(0).unique()) if g.classic.iloc[0] else [seed]
        for s in seeds:
            rel = []
            for row in g.itertuples():
                b = base.get((s, row.task))
                if b is None or b == 0 or not np.isfinite(b):
                    continue
                sign = 1.0 if primary(kinds[row.task])[1] else -1.0
                rel.append(sign * (row.value - b) / abs(b))
            out.append({"method": method, "seed": s, "delta_m": 100.0 * float(np.mean(rel)) if rel else float("nan")})
    return pd.DataFrame(out)


def per_task(df: pd.DataFrame, kinds: dict[str, str], baseline: str = BASELINE) -> pd.DataFrame:
    """Mean ± std of each task's primary metric per method, and whether it is worse than the baseline."""
    prim = primary_rows(df, kinds)
    stats = prim.groupby(["method", "task"])["value"].agg(mean="mean", std=lambda s: s.std(ddof=1) if len(s) > 1 else 0.0).reset_index()
    base = stats[stats.method == baseline].set_index("task")["mean"]
    higher = stats.task.map(lambda t: primary(kinds[t])[1])
    diff = stats["mean"] - stats.task.map(base)
    stats["worse"] = np.where(higher, diff < 0, diff > 0) & (stats.method != baseline)
    return stats
