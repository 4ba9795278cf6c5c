"""The reports' figures, as `matplotlib.figure.Figure` objects (no pyplot state, no display needed);
`report.outputs.write` saves them."""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd


def _figure(**kwargs):
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def _rotate(ax) -> None:
    for label in ax.get_xticklabels():
        label.set_rotation(30)
        label.set_horizontalalignment("right")


def label_efficiency(
    stats: pd.DataFrame,
    order: list[str],
    baseline: str,
    metric: str,
    xlabel: str,
    title: str,
    reference: float | None = None,
    reference_label: str = "",
):
    """Test metric against label budget, one line per strategy in `order` (the baseline dashed)."""
    fig = _figure(figsize=(6.4, 4.2), dpi=120)
    ax = fig.subplots()
    for name in order:
        s = stats[stats.strategy == name].sort_values("budget")
        style = {"linestyle": "--", "color": "black"} if name == baseline else {}
        ax.errorbar(s.budget, s["mean"], yerr=s["std"], marker="o", capsize=3, label=name, **style)
    if reference is not None:
        ax.axhline(reference, color="grey", linestyle=":", label=reference_label)
    ax.set_xscale("log")
    budgets = sorted(stats.budget.unique())
    ax.set_xticks(budgets, [str(b) for b in budgets])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"test {metric} (mean ± std over seeds)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def per_task_results(stats: pd.DataFrame, methods: list[str], baseline: str, title: str, max_tasks: int = 12):
    """Grouped bars (few tasks) or, for many tasks, each method's per-task change over the baseline."""
    import numpy as np

    tasks = sorted(stats.task.unique())
    fig = _figure(figsize=(max(6.4, 0.5 * len(methods) + 3), 4.2), dpi=120)
    ax = fig.subplots()
    if len(tasks) <= max_tasks:
        width = 0.8 / len(methods)
        for i, m in enumerate(methods):
            s = stats[stats.method == m].set_index("task").reindex(tasks)
            ax.bar(np.arange(len(tasks)) + i * width, s["mean"], width, yerr=s["std"], label=m, capsize=2)
        ax.set_xticks(np.arange(len(tasks)) + 0.4 - width / 2, tasks)
        ax.set_ylabel("test metric (mean ± std over seeds)")
        ax.legend(fontsize=7)
    else:
        base = stats[stats.method == baseline].set_index("task")["mean"]
        changes = [(stats[stats.method == m].set_index("task")["mean"] - base).dropna().to_numpy() for m in methods]
        ax.boxplot(changes, tick_labels=methods)
        ax.axhline(0, color="grey", linestyle=":")
        ax.set_ylabel(f"per-task change vs {baseline}")
    _rotate(ax)
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return fig


def weights_over_training(weights: Mapping[str, list[dict]], cosines: Mapping[str, list[dict]], title: str, max_lines: int = 10):
    """One panel of task weights per epoch for each method in `weights`, and one panel with the mean
    gradient cosine per epoch of each method in `cosines`; with neither, a figure that says so."""
    names = list(weights)
    panels = len(names) + bool(cosines)
    if not panels:
        fig = _figure(figsize=(6.4, 2.0), dpi=110)
        ax = fig.subplots()
        ax.axis("off")
        ax.text(0.5, 0.5, "no per-epoch task weights or gradient cosines in these results", ha="center", va="center")
        ax.set_title(title, fontsize=10)
        return fig
    ncols = min(4, panels)
    nrows = -(-panels // ncols)
    fig = _figure(figsize=(3.2 * ncols, 2.8 * nrows), dpi=110)
    axes = fig.subplots(nrows, ncols, squeeze=False).flatten()
    for ax in axes[panels:]:
        ax.set_visible(False)
    for ax, name in zip(axes, names):
        hist = weights[name]
        keys = sorted({k for h in hist for k in h if k.startswith("weight/")})[:max_lines]
        for k in keys:
            ax.plot([h["epoch"] for h in hist], [h.get(k) for h in hist], label=k.split("/", 1)[1])
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("epoch")
        if len(keys) <= 4:
            ax.legend(fontsize=7)
    if cosines:
        cos_ax = axes[len(names)]
        for name, hist in cosines.items():
            hist = [h for h in hist if "grad/cos_mean" in h]
            cos_ax.plot([h["epoch"] for h in hist], [h["grad/cos_mean"] for h in hist], label=name)
        cos_ax.axhline(0, color="grey", linestyle=":")
        cos_ax.set_title("mean cosine of task gradients", fontsize=9)
        cos_ax.set_xlabel("epoch")
        cos_ax.legend(fontsize=6)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
