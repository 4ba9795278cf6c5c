"""The reports' figures, as `matplotlib.figure.Figure` objects (no pyplot state, no display needed);
`report.outputs.write` saves them."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd


def _figure(**kwargs):
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def colours(names: Sequence[str]) -> dict[str, tuple]:
    """One colour per name, none repeated up to 20 names (tab10, then tab20's lighter shades)."""
    from matplotlib import colormaps

    tab10, tab20 = colormaps["tab10"], colormaps["tab20"]
    palette = [tab10(i) for i in range(10)] + [tab20(2 * i + 1) for i in range(10)]
    return {n: palette[i % len(palette)] for i, n in enumerate(names)}


def outliers(values, reach=None, ratio: float = 3.0) -> np.ndarray:
    """Which values to clip so the rest stay readable: the farthest from the median, as long as each lies more
    than `ratio` times as far from it as anything kept reaches (the kept values, the ends of their intervals
    `reach`: [(lo, hi)], and 0, the baseline's line, which the axis always shows); at most a quarter of the
    values (one of 3 to 7), none of fewer than 3."""
    v = np.asarray(values, dtype=float)
    out = np.zeros(len(v), dtype=bool)
    finite = np.flatnonzero(np.isfinite(v))
    if len(finite) < 3:
        return out
    median = float(np.median(v[finite]))
    dist = np.abs(v - median)
    extent = dist.copy()
    if reach is not None:
        ends = np.abs(np.asarray(reach, dtype=float).reshape(len(v), 2) - median)
        extent = np.fmax(extent, np.nanmax(np.where(np.isfinite(ends), ends, 0.0), axis=1))
    order = finite[np.argsort(-dist[finite], kind="stable")]
    for i in range(max(1, len(finite) // 4)):
        kept = order[i + 1 :]
        if dist[order[i]] > ratio * max(float(extent[kept].max()), abs(median), 1e-12):
            out[order[: i + 1]] = True
    return out


def _limits(lo: np.ndarray, hi: np.ndarray, clipped: np.ndarray) -> tuple[float, float]:
    """x limits spanning 0 and the intervals of the values not clipped, with a margin."""
    keep = ~clipped & np.isfinite(lo) & np.isfinite(hi)
    a = min(0.0, float(lo[keep].min())) if keep.any() else -1.0
    b = max(0.0, float(hi[keep].max())) if keep.any() else 1.0
    pad = 0.08 * ((b - a) or 1.0)
    return a - pad, b + pad


def _point_ranges(ax, stats: pd.DataFrame, rows: Sequence[str], colour: Mapping[str, tuple]) -> int:
    """One dot (mean) with its interval (lo..hi) per row of `stats` (index: method); outliers clipped to the
    axis edge as a triangle with the value printed. Returns how many were clipped."""
    s = stats.reindex(rows)
    mean, lo, hi = (s[c].to_numpy(dtype=float) for c in ("mean", "lo", "hi"))
    clipped = outliers(mean, np.column_stack([lo, hi]))
    left, right = _limits(lo, hi, clipped)
    y = np.arange(len(rows))
    for i, name in enumerate(rows):
        if not np.isfinite(mean[i]):
            continue
        c = colour[name]
        if clipped[i]:
            edge = left if mean[i] < left else right
            ax.plot([edge], [y[i]], marker="<" if mean[i] < left else ">", color=c, markersize=8, clip_on=False)
            ax.annotate(
                f"{mean[i]:+.1f} (clipped)",
                (edge, y[i]),
                xytext=(8 if mean[i] < left else -8, 0),
                textcoords="offset points",
                ha="left" if mean[i] < left else "right",
                va="center",
                fontsize=7,
            )
        else:
            ax.errorbar([mean[i]], [y[i]], xerr=[[mean[i] - lo[i]], [hi[i] - mean[i]]], fmt="o", color=c, capsize=3, markersize=5)
    ax.axvline(0, color="grey", linewidth=1)
    ax.set_xlim(left, right)
    ax.grid(alpha=0.3, axis="x")
    return int(clipped.sum())


def label_efficiency(
    stats: pd.DataFrame,
    order: list[str],
    baseline: str,
    metric: str,
    xlabel: str,
    title: str,
    reference: float | None = None,
    reference_label: str = "",
    sanity: Sequence[str] = (),
):
    """Test metric against label budget (log axis), one colour per strategy in `order`, its 95 % t-interval
    over seeds as a band: the baseline dashed, the `sanity` rows dotted; the legend outside the axes."""
    fig = _figure(figsize=(7.6, 4.2), dpi=120, layout="constrained")
    ax = fig.subplots()
    colour = colours(order)
    for name in order:
        s = stats[stats.strategy == name].sort_values("budget")
        style = "--" if name == baseline else ":" if name in sanity else "-"
        label = f"{name} (baseline)" if name == baseline else name
        ax.plot(s.budget, s["mean"], marker="o", label=label, color=colour[name], linestyle=style)
        if {"lo", "hi"} <= set(s) and s["lo"].notna().any():
            ax.fill_between(s.budget, s["lo"], s["hi"], color=colour[name], alpha=0.12, linewidth=0)
    if reference is not None:
        ax.axhline(reference, color="grey", linestyle="-.", linewidth=1, label=reference_label)
    ax.set_xscale("log")
    budgets = sorted(stats.budget.unique())
    ax.set_xticks(budgets, [str(b) for b in budgets])
    ax.minorticks_off()
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"test {metric} (mean; band: 95 % t-interval over seeds)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    return fig


def per_task_changes(
    dm: pd.DataFrame,
    changes: pd.DataFrame,
    methods: list[str],
    baseline: str,
    dm_label: str,
    title: str,
    max_panels: int = 6,
):
    """Each method against `baseline`, one row per method (best Δm on top, the baseline is the 0 line):
    a first panel with Δm, then one panel per task with the method's change on it (few tasks), or one
    panel with the distribution of its per-task changes (many tasks). Dots are means over seeds with
    their 95% t-interval; a value far outside the others is clipped to the edge with its value printed.

    dm: method, mean, lo, hi (Δm, %); changes: method, task, mean, lo, hi (`delta_m.task_change_intervals`)."""
    rows = [m for m in methods if m != baseline]
    order = dm.set_index("method")["mean"].reindex(rows).fillna(-np.inf).sort_values(ascending=True)
    rows = list(order.index)  # the best at the top (highest y)
    colour = colours(sorted(rows))
    tasks = sorted(changes.task.unique())
    many = len(tasks) > max_panels
    panels = 1 + (1 if many else len(tasks))
    width = 2.1 + 2.6 * panels + (1.4 if many else 0)
    fig = _figure(figsize=(width, 1.4 + 0.32 * len(rows)), dpi=120, layout="constrained")
    axes = fig.subplots(1, panels, sharey=True, squeeze=False)[0]
    notes = []
    n = _point_ranges(axes[0], dm.set_index("method"), rows, colour)
    axes[0].set_title(f"Δm (%), {dm_label}", fontsize=9)
    if n:
        notes.append(f"{n} clipped in Δm")
    if many:
        ax = axes[1]
        per_method = [changes[changes.method == m]["mean"].to_numpy(dtype=float) for m in rows]
        everything = np.concatenate([v for v in per_method if len(v)]) if any(len(v) for v in per_method) else np.zeros(1)
        lo, hi = np.percentile(everything, [1, 99])
        lo, hi = min(lo, 0.0), max(hi, 0.0)
        pad = 0.05 * ((hi - lo) or 1.0)
        import matplotlib

        # `vert` is deprecated from Matplotlib 3.11; `orientation` exists from 3.10.
        horizontal = {"orientation": "horizontal"} if tuple(map(int, matplotlib.__version__.split(".")[:2])) >= (3, 10) else {"vert": False}
        ax.boxplot(per_method, positions=np.arange(len(rows)), widths=0.6, showfliers=False, manage_ticks=False, **horizontal)
        rng = np.random.default_rng(0)
        outside = 0
        for i, (m, v) in enumerate(zip(rows, per_method)):
            shown = np.clip(v, lo - pad, hi + pad)
            outside += int((shown != v).sum())
            ax.scatter(shown, i + rng.uniform(-0.2, 0.2, len(v)), s=6, color=colour[m], alpha=0.6, zorder=3)
            worse = int((v < 0).sum())
            ax.annotate(
                f"worse on {worse}/{len(v)}",
                (1.0, i),
                xycoords=("axes fraction", "data"),
                xytext=(4, 0),
                textcoords="offset points",
                va="center",
                fontsize=7,
            )
        ax.axvline(0, color="grey", linewidth=1)
        ax.set_xlim(lo - pad, hi + pad)
        ax.grid(alpha=0.3, axis="x")
        ax.set_title(f"change on each of {len(tasks)} tasks (%, mean over seeds)", fontsize=9)
        if outside:
            notes.append(f"{outside} task values beyond the 1st–99th percentile drawn at the edge")
    else:
        for ax, task in zip(axes[1:], tasks):
            n = _point_ranges(ax, changes[changes.task == task].set_index("method"), rows, colour)
            ax.set_title(f"task {task}: change (%)", fontsize=9)
            if n:
                notes.append(f"{n} clipped on {task}")
    axes[0].set_yticks(np.arange(len(rows)), rows, fontsize=8)
    axes[0].set_ylim(-0.6, len(rows) - 0.4)
    for ax in axes:
        ax.tick_params(axis="x", labelsize=8)
    caption = f"relative to {baseline} (0 line), higher is better; dots: mean over seeds, bars: 95% t-interval"
    fig.suptitle(title, fontsize=10)
    text = caption + ("; " + "; ".join(notes) if notes else "")
    fig.supxlabel(textwrap.fill(text, width=int(13 * width)), fontsize=8)
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


def scores_against_results(
    points: pd.DataFrame, scores: Sequence[str], references: Mapping[str, str], taus: Mapping, metric: str, title: str, baselines: Sequence[str] = ()
):
    """One panel per score: each candidate's score (x) against its fine-tuned test metric (y), both means
    over seeds; one marker per reference (`references`: name -> label, e.g. the linear probe and
    parameter transfer), one colour and number per candidate (the legend names them); each panel's title
    gives the score's Kendall τ against each reference (`taus[(score, reference)]`, absent when not ranked);
    the naive `baselines` are marked so.

    points: candidate, score, reference, x, y."""
    from matplotlib.lines import Line2D

    cands = sorted(points.candidate.unique())
    colour = colours(cands)
    number = {c: i + 1 for i, c in enumerate(cands)}
    markers = dict(zip(references, "o^sDv"))
    ncols = min(4, max(1, len(scores)))
    nrows = max(1, -(-len(scores) // ncols))
    fig = _figure(figsize=(3.0 * ncols + 2.6, 2.7 * nrows + 0.6), dpi=110, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).flatten()
    for ax in axes[len(scores) :]:
        ax.set_visible(False)
    for ax, score in zip(axes, scores):
        here = points[points.score == score]
        for ref in references:
            for _, p in here[here.reference == ref].iterrows():
                ax.scatter([p.x], [p.y], marker=markers[ref], color=colour[p.candidate], s=30, zorder=3)
                ax.annotate(str(number[p.candidate]), (p.x, p.y), xytext=(3, 2), textcoords="offset points", fontsize=6)
        parts = [f"{label.split()[-1]} {taus[(score, ref)]:+.2f}" for ref, label in references.items() if taus.get((score, ref)) is not None]
        ax.set_title(
            f"{score}{' (naive baseline)' if score in baselines else ''}" + (f"\nτ: {', '.join(parts)}" if parts else "\nτ: too few candidates"),
            fontsize=8,
        )
        ax.set_xlabel(f"{score} (mean over seeds)", fontsize=7)
        ax.set_ylabel(f"test {metric}", fontsize=7)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if here.empty:
            ax.text(0.5, 0.5, "not computed", ha="center", va="center", transform=ax.transAxes, fontsize=8)
    handles = [Line2D([], [], marker=markers[r], linestyle="", color="grey", label=label) for r, label in references.items()]
    handles += [Line2D([], [], marker="o", linestyle="", color=colour[c], label=f"{number[c]} {c}") for c in cands]
    fig.legend(handles=handles, loc="outside right upper", fontsize=7, frameon=False)
    fig.suptitle(title, fontsize=10)
    return fig
