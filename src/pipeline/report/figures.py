"""Figures for the report; matplotlib with the Agg backend, so no display is needed."""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def label_efficiency(stats: pd.DataFrame, metric: str, path: str | Path, title: str, reference: float | None = None,
                     reference_label: str = "") -> None:
    from pipeline.report import strategy_order

    plt = _plt()
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


def per_task_results(stats: pd.DataFrame, path: str | Path, title: str, max_tasks: int = 12) -> None:
    """Grouped bars (few tasks) or, for many tasks, each method's per-task change over the baseline."""
    import numpy as np

    from pipeline.report.multitask import BASELINE

    plt = _plt()
    methods = [m for m in sorted(stats.method.unique()) if m != BASELINE]
    methods = [BASELINE, *methods] if BASELINE in set(stats.method) else methods
    tasks = sorted(stats.task.unique())
    fig, ax = plt.subplots(figsize=(max(6.4, 0.5 * len(methods) + 3), 4.2), dpi=120)
    if len(tasks) <= max_tasks:
        width = 0.8 / len(methods)
        for i, m in enumerate(methods):
            s = stats[stats.method == m].set_index("task").reindex(tasks)
            ax.bar(np.arange(len(tasks)) + i * width, s["mean"], width, yerr=s["std"], label=m, capsize=2)
        ax.set_xticks(np.arange(len(tasks)) + 0.4 - width / 2, tasks, rotation=30, ha="right")
        ax.set_ylabel("test metric (mean ± std over seeds)")
    else:
        base = stats[stats.method == BASELINE].set_index("task")["mean"]
        changes = [(stats[stats.method == m].set_index("task")["mean"] - base).dropna().to_numpy() for m in methods]
        ax.boxplot(changes, tick_labels=methods)
        ax.axhline(0, color="grey", linestyle=":")
        ax.set_ylabel(f"per-task change vs {BASELINE}")
        plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
    ax.set_title(title)
    ax.legend(fontsize=7) if len(tasks) <= max_tasks else None
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def weights_over_training(histories: dict[str, list[dict]], path: str | Path, title: str, max_lines: int = 10) -> None:
    """Task weights per epoch, one panel per weighting method (first seed), plus gradient cosine."""
    plt = _plt()
    names = list(histories)
    ncols = min(4, len(names) + 1)
    nrows = -(-(len(names) + 1) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 2.8 * nrows), dpi=110, squeeze=False)
    axes = axes.flatten()
    for ax in axes[len(names) + 1:]:
        ax.set_visible(False)
    for ax, name in zip(axes, names):
        hist = histories[name]
        keys = sorted({k for h in hist for k in h if k.startswith("weight/")})[:max_lines]
        for k in keys:
            ax.plot([h["epoch"] for h in hist], [h.get(k) for h in hist], label=k.split("/", 1)[1])
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("epoch")
        if len(keys) <= 4:
            ax.legend(fontsize=7)
    cos_ax = axes[len(names)]
    for name in names:
        hist = [h for h in histories[name] if "grad/cos_mean" in h]
        if hist:
            cos_ax.plot([h["epoch"] for h in hist], [h["grad/cos_mean"] for h in hist], label=name)
    cos_ax.axhline(0, color="grey", linestyle=":")
    cos_ax.set_title("mean cosine of task gradients", fontsize=9)
    cos_ax.set_xlabel("epoch")
    cos_ax.legend(fontsize=6)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
