"""Comparison tables from finished runs: mean ± std over seeds, paired gains over the baseline."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from pipeline.errors import PipelineError

BASELINE = "scratch"


def load_results(finetune_dir: str | Path) -> pd.DataFrame:
    """One row per fine-tune run: strategy, budget, seed and every test metric."""
    files = sorted(Path(finetune_dir).glob("*/*.json"))
    if not files:
        raise PipelineError(f"missing upstream output {finetune_dir}: no fine-tune results; run the finetune stage first")
    rows = []
    for f in files:
        r = json.loads(f.read_text())
        rows.append({"strategy": r["strategy"], "budget": r["budget"], "seed": r["seed"], "run_id": r["run_id"],
                     **{k.split("/", 1)[1]: v for k, v in r["test"].items() if k != "test/loss"}})
    return pd.DataFrame(rows)


def summarise(df: pd.DataFrame, metric: str, higher_is_better: bool = True) -> pd.DataFrame:
    """Per strategy x budget: mean, std, n over seeds, and the gain over `scratch` at the same seed.

    Seeds fix the labelled subset, so the gain is a paired difference; `wins` counts seeds where the
    strategy beat the baseline. `negative` flags a mean gain below zero (negative transfer).
    """
    sign = 1.0 if higher_is_better else -1.0
    stats = df.groupby(["strategy", "budget"])[metric].agg(mean="mean", std=lambda s: s.std(ddof=1) if len(s) > 1 else 0.0, n="count")
    if BASELINE in set(df["strategy"]):
        base = df[df.strategy == BASELINE].set_index(["budget", "seed"])[metric]
        paired = df.join(base.rename("base"), on=["budget", "seed"])
        paired["gain"] = sign * (paired[metric] - paired["base"])
        g = paired.groupby(["strategy", "budget"])["gain"]
        stats["gain"] = g.mean()
        stats["gain_std"] = g.agg(lambda s: s.std(ddof=1) if len(s) > 1 else 0.0)
        stats["wins"] = g.agg(lambda s: int((s > 0).sum()))
        stats["negative"] = stats["gain"] < 0
    return stats.reset_index()


def fmt(mean: float, std: float, digits: int = 3) -> str:
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def strategy_order(strategies) -> list[str]:
    rest = sorted(s for s in set(strategies) if s != BASELINE)
    return ([BASELINE] if BASELINE in set(strategies) else []) + rest
