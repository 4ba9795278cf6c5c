"""Figures for the report; matplotlib with the Agg backend, so no display is needed."""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def label_efficiency(stats: pd.DataFrame, metric: str, path: str | Path, title: str, reference: float | None = None,
                     reference_label: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pipeline.report import strategy_order

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for name in strategy_order(stats.strategy):
        s = stats[stats.strategy == name].sort_values("budget")
        style = {"linestyle": "--", "color": "black"} if name == "scratch" else {}
        ax.errorbar(s.budget, s["mean"], yerr=s["std"], marker="o", capsize=3, label=name, **style)
    if reference is not None:
        ax.axhline(reference, color="grey", linestyle=":", label=reference_label)
    ax.set_xscale("log")
    budgets = sorted(stats.budget.unique())
    ax.set_xticks(budgets, [str(b) for b in budgets])
    ax.set_xlabel("target labels per class (k)")
    ax.set_ylabel(f"test {metric} (mean ± std over seeds)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
