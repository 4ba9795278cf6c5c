"""Multitask comparison: which records are current, per-task results by method, Δm against the
baseline method (`multitask.baseline`; the maths is in `report.delta_m`), the report's text and figures.

Only the records of the current configuration are read: the runs the multitask stage would make now,
each with the config digest it would have now.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from pipeline.data import TaskSet
from pipeline.errors import PipelineError
from pipeline.report import baseline_first, fmt, fmt_interval, listing, spread
from pipeline.report.delta_m import common_tasks, delta_m, interval, per_task, task_change_intervals, task_changes, verdict_basis, zero_baseline
from pipeline.tracking import ui_hint


def read_results(directory: str | Path) -> dict[str, dict]:
    """The multitask stage's result records (one per method x seed), by file path relative to `directory`."""
    directory = Path(directory)
    files = sorted(directory.glob("*/seed*.json"))
    if not files:
        raise PipelineError(f"missing upstream output {directory}: no multitask results; run the multitask stage first")
    return {str(f.relative_to(directory)): json.loads(f.read_text()) for f in files}


def expected_records(cfg: DictConfig, exp: DictConfig, ts: TaskSet) -> dict[tuple[str, str, int], str]:
    """(scheme, weighting, seed) -> config digest of every neural run the multitask stage makes for the
    current configuration (its `plan` x the selected seeds), as the stage computes it."""
    from pipeline.stages import pick
    from pipeline.stages.multitask import plan, run_params
    from pipeline.tracking import digest

    seeds = pick(cfg.get("seed"), list(cfg.multitask.seeds), "seed")
    pairs = plan(cfg, exp, ts.x.shape[1], ts.tasks)
    return {(s, w, int(seed)): digest({**run_params(cfg, s, w), "data_hash": ts.data_hash}) for s, w in pairs for seed in seeds}


def current_records(
    records: dict[str, dict], expected: dict[tuple[str, str, int], str], classic: dict[str, str]
) -> tuple[list[dict], list[str], list[dict]]:
    """The records of the current configuration that finished, the files of all others (stale or not
    selected), and the failed runs of the current ones (`failed_runs`).

    expected: neural runs as from `expected_records`; classic: baseline name -> its current digest.
    A missing expected neural run is a PipelineError naming it; a failed one is not missing."""
    current, stale, failed, found = [], [], [], set()
    for path, r in records.items():
        if r.get("classic"):
            ok = classic.get(r["scheme"]) == r.get("config_digest")
        else:
            key = (r["scheme"], r["weighting"], r["seed"])
            ok = expected.get(key) == r.get("config_digest")
            if ok:
                found.add(key)
        if not ok:
            stale.append(path)
            continue
        failed += failed_runs(r)
        if not r.get("failed"):
            current.append(r)
    missing = sorted(set(expected) - found)
    if missing:
        raise PipelineError(
            f"no multitask result of the current configuration for {listing(f'{s}+{w}/seed{seed}.json' for s, w, seed in missing)}"
            f"{f' ({len(stale)} stale result files ignored)' if stale else ''}; run the multitask stage"
        )
    return current, stale, failed


def failed_runs(record: dict) -> list[dict]:
    """The failed MLflow runs behind one result record (its failed coupling candidates, or itself), each
    with whether the method lost this seed (`lost`) or another candidate was chosen."""
    lost = bool(record.get("failed"))
    runs = record.get("failed_candidates") or ([{"run_id": record.get("run_id"), "failed": record["failed"]}] if lost else [])
    method = f"{record['scheme']}+{record['weighting']}"
    return [{"method": method, "seed": int(record["seed"]), "run_id": f.get("run_id"), "why": f["failed"], "lost": lost} for f in runs]


def table(records: list[dict]) -> pd.DataFrame:
    """Long table: one row per method x seed x task x metric."""
    rows = []
    for r in records:
        method = f"{r['scheme']}+{r['weighting']}"
        for key, value in r["test"].items():
            parts = key.split("/")
            if len(parts) == 3:
                rows.append(
                    {
                        "method": method,
                        "seed": r["seed"],
                        "task": parts[1],
                        "metric": parts[2],
                        "value": value,
                        "classic": bool(r.get("classic")),
                        "run_id": r.get("run_id"),
                    }
                )
    return pd.DataFrame(rows, columns=["method", "seed", "task", "metric", "value", "classic", "run_id"])


def histories(records: list[dict]) -> tuple[int | None, dict[str, list[dict]], dict[str, list[dict]]]:
    """Per-epoch histories for the task-weight figure, at the first seed any neural record has one:
    the seed; {method: history} of the methods whose task weights move (not all 1 throughout); and
    {method: history} of the methods with gradient cosines (schemes that share parameters)."""
    with_history = [r for r in records if not r.get("classic") and r.get("history")]
    if not with_history:
        return None, {}, {}
    seed = min(r["seed"] for r in with_history)
    weights, cosines = {}, {}
    for r in sorted(with_history, key=lambda r: (r["scheme"], r["weighting"])):
        if r["seed"] != seed:
            continue
        method, hist = f"{r['scheme']}+{r['weighting']}", r["history"]
        if any(v != 1.0 for h in hist for k, v in h.items() if k.startswith("weight/")):
            weights[method] = hist
        if any("grad/cos_mean" in h for h in hist):
            cosines[method] = hist
    return seed, weights, cosines


def auto_choices(records: list[dict], archs: DictConfig) -> dict[str, dict[str, tuple[list, list]]]:
    """Knobs set to `auto` in a scheme's config: per method, knob -> (values validation picked by seed, its auto_grid)."""
    chosen: dict = {}
    for r in records:
        arch_cfg = archs.get(r["scheme"]) or {}
        grid = arch_cfg.get("auto_grid") or {}
        for k in [k for k, v in arch_cfg.items() if v == "auto"]:
            values, _ = chosen.setdefault(f"{r['scheme']}+{r['weighting']}", {}).setdefault(k, ([], list(grid.get(k, []))))
            values.append(r["arch"][k])
    return chosen


@dataclass
class MultitaskReport:
    """What a multitask report is made of: the current records of one experiment."""

    name: str
    exp: DictConfig
    ts: TaskSet
    baseline: str
    records: list[dict]
    stale: list[str]
    skipped: dict[str, str]  # classic baseline -> why it has no result
    failed: list[dict] = field(default_factory=list)  # failed runs of the current configuration (`failed_runs`)

    @property
    def lost(self) -> dict[str, list[int]]:
        """method -> the seeds with no result because its run failed."""
        out: dict = {}
        for f in self.failed:
            if f["lost"]:
                out.setdefault(f["method"], set()).add(f["seed"])
        return {m: sorted(v) for m, v in out.items()}

    @cached_property
    def df(self) -> pd.DataFrame:
        return table(self.records)

    @cached_property
    def tasks_used(self) -> tuple[list[str], dict[str, list[str]]]:
        return common_tasks(self.df, self.ts.tasks, self.baseline)

    @cached_property
    def rows(self) -> dict[str, int]:
        """Labelled test rows per task."""
        return {t.name: self.test_labels(t.name) for t in self.ts.tasks}

    @cached_property
    def dm(self) -> pd.DataFrame:
        """Both Δm per method and seed, and `delta_m_verdict`: the one the verdict rests on (`basis`)."""
        dm = delta_m(self.df, self.ts.tasks, self.baseline, self.rows, unpaired=self.lost.get(self.baseline, ()))
        return dm.assign(delta_m_verdict=dm[self.basis[0]])

    @cached_property
    def basis(self) -> tuple[str, str]:
        return verdict_basis(self.rows, self.tasks_used[0])

    @cached_property
    def zero_baseline(self) -> list[str]:
        return zero_baseline(self.df, self.ts.tasks, self.baseline, self.tasks_used[0])

    @cached_property
    def stats(self) -> pd.DataFrame:
        return per_task(self.df, self.ts.tasks, self.baseline)

    @cached_property
    def changes(self) -> pd.DataFrame:
        """Each method's change against the baseline per task in Δm (mean over seeds and t-interval, %)."""
        ch = task_changes(self.df, self.ts.tasks, self.baseline)
        return task_change_intervals(ch[ch.task.isin(self.tasks_used[0])])

    @cached_property
    def dm_intervals(self) -> pd.DataFrame:
        """Δm (the form the verdict rests on) per method: mean over seeds and t-interval."""
        rows = [(m, *interval(g.delta_m_verdict)) for m, g in self.dm.groupby("method")]
        return pd.DataFrame(rows, columns=["method", "mean", "lo", "hi"])

    @property
    def classic_dm(self) -> dict[str, float]:
        return {m: float(self.dm[self.dm.method == m].delta_m_verdict.mean()) for m in sorted(self.df[self.df.classic].method.unique())}

    @property
    def seeds(self) -> list[int]:
        return sorted(int(s) for s in self.df[~self.df.classic].seed.unique())

    def test_labels(self, task: str) -> int:
        i = [t.name for t in self.ts.tasks].index(task)
        return int(np.sum(~np.isnan(self.ts.y[self.ts.splits["test"], i])))


def load(cfg: DictConfig) -> MultitaskReport:
    from pipeline.io import read_json
    from pipeline.stages import experiment, layout
    from pipeline.tracking import digest

    name, exp = experiment(cfg, "multitask")
    paths = layout(cfg, name)
    ts = TaskSet.load(paths.data / "tasks")
    baseline = cfg.multitask.baseline
    records = read_results(paths.multitask)
    skipped_file = paths.multitask / "skipped.json"
    skipped = read_json(skipped_file, "skipped classic baselines") if skipped_file.exists() else {}
    # Classic baselines run only when no scheme or weighting is selected (as in the stage).
    names = list(cfg.multitask.classic) if cfg.get("scheme") is None and cfg.get("weighting") is None else []
    classic = {c: digest({"classic": c, "data_hash": ts.data_hash}) for c in names}
    current, stale, failed = current_records(records, expected_records(cfg, exp, ts), classic)
    present = {r["scheme"] for r in current if r.get("classic")}
    skipped.update({c: "no result written and no reason recorded by the multitask stage" for c in names if c not in present and c not in skipped})
    if baseline not in {f"{r['scheme']}+{r['weighting']}" for r in current}:
        if any(f["method"] == baseline for f in failed):
            first = next(f["why"] for f in failed if f["method"] == baseline)
            raise PipelineError(f"multitask.baseline={baseline!r}: every run of it failed, so Δm has nothing to pair with: {first}")
        raise PipelineError(f"multitask.baseline={baseline!r}: no results of it among the current runs in {paths.multitask}; Δm needs it")
    return MultitaskReport(name, exp, ts, baseline, current, stale, skipped, failed)


def dm_verdict(lo: float, hi: float) -> str:
    """What an interval of Δm says against the baseline."""
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return ""
    return "✓ better" if lo > 0 else "⚠ worse" if hi < 0 else "(no detectable difference)"


def render(t: MultitaskReport, archs: DictConfig, histories_fig: str, results_fig: str, mlflow_uri: str) -> str:
    ts, dm, stats, baseline = t.ts, t.dm, t.stats, t.baseline
    used, left_out = t.tasks_used
    seeds = t.seeds
    lines = [f"# {t.name}: does training the tasks together help?", ""]
    lines += [
        f"- Data: `{t.exp.data._target_.rsplit('.', 1)[1]}`; {len(ts.tasks)} tasks "
        f"({', '.join(sorted({x.kind for x in ts.tasks}))}); {ts.x.shape[0]} samples, {ts.x.shape[1]} features; "
        f"splits train/val/test {len(ts.splits['train'])}/{len(ts.splits['val'])}/{len(ts.splits['test'])}.",
        f"- Baseline for Δm and negative transfer: `{baseline}` (`multitask.baseline`; trained in this experiment, same budget),"
        f" paired by seed; seeds {seeds}.",
        "- Δm = relative change of the primary metric (accuracy, or RMSE with its sign flipped) against that baseline, in %;"
        " higher is better. Two forms: the mean over tasks of each task's change (per-task mean), and the change of the"
        " metric pooled over all labelled test rows (over test rows: each task weighted by its test rows).",
        f"- The verdict rests on {_BASIS[t.basis[0]]}: {t.basis[1]}.",
        f"- Tasks in Δm: {len(used)} of {len(ts.tasks)}, the same for every method"
        + (
            "."
            if not left_out
            else "; left out (no result from every method, so Δm would average different tasks): "
            + _capped([f"`{task}` ({_why_out(t, task, ms)})" for task, ms in left_out.items()])
            + "."
        ),
    ]
    if t.zero_baseline:
        lines.append(
            f"- Left out of the per-task mean only ({len(used) - len(t.zero_baseline)} tasks enter it; Δm over test rows keeps them):"
            f" {listing(t.zero_baseline)}, where `{baseline}` scores 0 at some seed, so the ratio is undefined."
        )
    lines.append(
        f"- {len(t.records)} result records of the current configuration"
        + (f"; {len(t.stale)} result files of other configurations or runs ignored (stale): {listing(t.stale)}." if t.stale else ".")
    )
    if t.failed:
        lines.append(f"- ⚠ {len(t.failed)} runs failed and are left out of Δm and every table: see [Failed runs](#failed-runs).")
    if t.skipped:
        lines.append("- Classic baselines without a result: " + "; ".join(f"`{c}`: {why}" for c, why in sorted(t.skipped.items())) + ".")
    lines += failed_section(t)
    verdict_header = {k: f"{v} (%)" + (" ← verdict" if k == t.basis[0] else "") for k, v in _BASIS.items()}
    lines += [
        "",
        f"## Δm against `{baseline}` (mean ± std over seeds; verdict: mean and 95 % t-interval)",
        "",
        f"| method | {verdict_header['delta_m_rows']} | {verdict_header['delta_m']} | verdict Δm, 95 % t-interval | seeds with Δm > 0 |"
        " tasks worse than baseline (paired interval below 0) |",
        "|---|---|---|---|---|---|",
    ]
    worse = stats.groupby("method")["worse"].sum()
    mean_dm = dm.groupby("method").delta_m_verdict.mean()
    ci = t.dm_intervals.set_index("method")
    for method in sorted(mean_dm.index, key=lambda m: (m != baseline, -mean_dm[m])):
        g = dm[dm.method == method]
        lo, hi = ci.lo[method], ci.hi[method]
        said = "–" if method == baseline else f"{fmt_interval(mean_dm[method], lo, hi, 2, signed=True)} {dm_verdict(lo, hi)}"
        # A seed whose run failed, the method's or the baseline's, has no pair: said, not paired with another seed.
        unpaired = sorted(set(t.lost.get(method, [])) | set(t.lost.get(baseline, [])))
        short = f" † seeds {unpaired} unpaired (a run failed)" if unpaired and method != baseline else ""
        won = "–" if method == baseline else f"{int((g.delta_m_verdict > 0).sum())}/{len(g)}{short}"
        lines.append(
            f"| {method} | {fmt(g.delta_m_rows.mean(), spread(g.delta_m_rows), 2)} | {fmt(g.delta_m.mean(), spread(g.delta_m), 2)} | {said} | "
            f"{won} | {int(worse.get(method, 0))}/{len(ts.tasks)} |"
        )
    for method in sorted(set(t.lost) - set(mean_dm.index)):
        lines.append(f"| {method} | failed (seeds {t.lost[method]}) | – | – | – | – |")
    classic_dm = t.classic_dm
    neural = mean_dm.drop([baseline, *classic_dm], errors="ignore")
    lines += ["", "## Findings", ""]
    top = None
    if len(neural):
        top = neural.idxmax()
        lo, hi = ci.lo[top], ci.hi[top]
        if not np.isfinite(lo):
            verdict = "one seed: no interval, no verdict"
        elif lo > 0:
            verdict = "joint training helps here (the 95 % interval of Δm lies above 0)"
        elif hi < 0:
            verdict = "even the best joint method is worse than the baseline (its interval lies below 0)"
        else:
            verdict = "no detectable difference from the baseline (its interval contains 0)"
        lines.append(
            f"- Best joint neural method: `{top}`, Δm {fmt_interval(neural.max(), lo, hi, 2, signed=True)}% ({_BASIS[t.basis[0]]}) — {verdict}."
        )
        several = [m for m in neural.index if np.isfinite(ci.hi[m])]  # one seed: no interval, no verdict
        losing = [m for m in several if ci.hi[m] < 0]
        helping = [m for m in several if ci.lo[m] > 0]
        if helping:
            lines.append(f"- Better than the baseline (Δm interval above 0): {', '.join(f'`{m}`' for m in helping)}.")
        if losing:
            lines.append(f"- Negative transfer (Δm interval below 0): {', '.join(f'`{m}`' for m in losing)}.")
        rest = len(several) - len(helping) - len(losing)
        if rest:
            lines.append(f"- No detectable difference from the baseline for the other {rest} joint methods (their Δm intervals contain 0).")
    if classic_dm:
        lines.append("- Classic baselines against the same baseline: " + ", ".join(f"`{m}` Δm {v:+.2f}%" for m, v in classic_dm.items()) + ".")
        beaten_by = [m for m, v in classic_dm.items() if len(neural) and v > neural.max()]
        if beaten_by:
            lines.append(
                f"- {', '.join(f'`{m}`' for m in beaten_by)} {'beats' if len(beaten_by) == 1 else 'beat'} every neural method:"
                " here a linear model is the one to beat,"
                " and no sharing scheme or weighting does."
            )
    lines.append(conflict_finding(t, top))
    for method, picks in auto_choices(t.records, archs).items():
        text = ", ".join(f"{k} = {values}" for k, (values, _) in picks.items())
        edge = [k for k, (values, grid) in picks.items() if grid and any(v in (min(grid), max(grid)) and v != 0 for v in values)]
        lines.append(
            f"- `{method}`: {text} (chosen on validation data, by seed)"
            + (f"; {', '.join(edge)} at the edge of its `auto_grid`: widen the grid." if edge else ".")
        )
    names = sorted(x.name for x in ts.tasks)
    if len(names) <= 12:
        metric = {x.name: x.primary for x in ts.tasks}
        lines += [
            "",
            "## Per task (test " + ", ".join(sorted(set(metric.values()))) + "; ⚠ = worse than the baseline)",
            "",
            "| method | " + " | ".join(f"{n} ({metric[n]})" for n in names) + " |",
            "|" + "---|" * (len(names) + 1),
        ]
        cell = {(r.method, r.task): r for r in stats.itertuples()}
        for method in baseline_first(stats.method, baseline):
            lines.append(
                f"| {method} | "
                + " | ".join(
                    (fmt(cell[method, n].mean, cell[method, n].std) + (" ⚠" if cell[method, n].worse else "")) if (method, n) in cell else "–"
                    for n in names
                )
                + " |"
            )
    else:
        methods = baseline_first(stats.method, baseline)
        cell = {(r.method, r.task): r for r in stats.itertuples()}
        metric = {x.name: x.primary for x in ts.tasks}
        lines += [
            "",
            f"## Per task ({len(names)} tasks; test mean over seeds; ⚠ = worse than the baseline)",
            "",
            "The figure shows the distribution of each method's per-task change; the values, one row per task:",
            "",
            "<details><summary>per-task table</summary>",
            "",
            "| task (metric) | " + " | ".join(methods) + " |",
            "|" + "---|" * (len(methods) + 1),
        ]
        for n in names:
            lines.append(
                f"| {n} ({metric[n]}) | "
                + " | ".join((f"{cell[m, n].mean:.3f}" + (" ⚠" if cell[m, n].worse else "")) if (m, n) in cell else "–" for m in methods)
                + " |"
            )
        lines += ["", "</details>"]
    lines += [
        "",
        "## Figures",
        "",
        f"![per-task results]({results_fig})",
        "",
        f"![task weights and gradient conflict]({histories_fig})",
        "",
        histories_caption(t),
        "",
        "## Reproduce and inspect",
        "",
        f"`dvc repro` rebuilds this file; every row is a set of runs in the MLflow experiment `{t.name}`"
        f" ({ui_hint(mlflow_uri)}),"
        " named `<scheme>+<weighting> s<seed>`, with task weights and gradient cosines logged per epoch.",
        "",
    ]
    return "\n".join(lines)


def failed_section(t: MultitaskReport) -> list[str]:
    """Markdown lines: the failed runs, each with what became of its method's seed and why it failed."""
    from pipeline.report import failed_runs

    rows = [
        [
            f["method"],
            f["seed"],
            "no result at this seed" if f["lost"] else "another candidate chosen",
            f["why"].split(": ", 1)[-1],
            f"`{f['run_id']}`",
        ]
        for f in sorted(t.failed, key=lambda f: (f["method"], f["seed"]))
    ]
    consequence = (
        "its seed is left out of its method's Δm and tables, and Δm pairs a method with the baseline only at"
        " seeds where both runs finished (a failed coupling candidate is not chosen)."
    )
    return failed_runs(len(t.failed), consequence, ["method", "seed", "the result", "why", "MLflow run"], rows)


_BASIS = {"delta_m_rows": "Δm over test rows", "delta_m": "Δm per-task mean"}


def _why_out(t: MultitaskReport, task: str, methods: list[str]) -> str:
    n = t.test_labels(task)
    return "no labelled test row" if n == 0 else f"{n} test labels; no result from {', '.join(methods)}"


def _capped(entries: list[str], limit: int = 20) -> str:
    return "; ".join(entries[:limit]) + (f"; and {len(entries) - limit} more" if len(entries) > limit else "")


def histories_caption(t: MultitaskReport) -> str:
    """What the task-weight figure shows, exactly."""
    seed, weights, cosines = histories(t.records)
    if seed is None:
        return "Task weights and gradient cosines: none — no run in these results logged per-epoch histories."
    parts = [
        f"Task weights per epoch (seed {seed}): "
        + (", ".join(f"`{m}`" for m in weights) if weights else "none (every weighting kept all weights at 1)"),
        "mean cosine of the task gradients on the shared parameters: "
        + (", ".join(f"`{m}`" for m in cosines) if cosines else "none (no method shares parameters)"),
    ]
    return "; ".join(parts) + "."


def conflict_finding(t: MultitaskReport, best: str | None) -> str:
    """Gradient conflict, measured on one run with cosines at the figure's seed: the baseline's weighting on
    the best joint method's scheme if that was run, else the best method itself, else the first scheme run
    with the baseline's weighting (the conflict aggregators face, not one they already changed), else the
    first with cosines."""
    seed, _, cosines = histories(t.records)
    if not cosines:
        return "- Gradient conflict: not measured — no run in these results logged gradient cosines (no method shares parameters)."
    plain_weighting = t.baseline.split("+", 1)[1] if "+" in t.baseline else None
    preferred = [f"{best.split('+', 1)[0]}+{plain_weighting}", best] if best else []
    preferred += [m for m in cosines if m.split("+", 1)[-1] == plain_weighting]
    method = next((m for m in preferred if m in cosines), next(iter(cosines)))
    cos = [h for h in cosines[method] if "grad/cos_mean" in h]
    mean = sum(h["grad/cos_mean"] for h in cos) / len(cos)
    return (
        f"- Gradient conflict under `{method}` (seed {seed}): the task gradients' mean cosine on the shared parameters averaged"
        f" {mean:+.3f} over {len(cos)} epochs (lowest pairwise {min(h['grad/cos_min'] for h in cos):+.3f}); negative values are the"
        " conflict gradient aggregators target."
    )


def figures(t: MultitaskReport) -> tuple:
    """(per-task change figure, task-weight figure)."""
    from pipeline.report.figures import per_task_changes, weights_over_training

    seed, weights, cosines = histories(t.records)
    methods = baseline_first(t.df.method, t.baseline)
    results = per_task_changes(t.dm_intervals, t.changes, methods, t.baseline, _BASIS[t.basis[0]], f"{t.name}: each method against {t.baseline}")
    title = f"{t.name}: task weights and gradient cosines" + ("" if seed is None else f" (seed {seed})")
    return results, weights_over_training(weights, cosines, title)


def summary(t: MultitaskReport) -> dict[str, dict[str, float]]:
    """Δm per method, mean over seeds, in its three columns: `delta_m` (the one the verdict rests on),
    `delta_m_rows` (over test rows) and `delta_m_per_task` (per-task mean)."""
    g = t.dm.groupby("method")
    return {
        "delta_m": {m: round(float(v), 3) for m, v in g.delta_m_verdict.mean().items()},
        "delta_m_rows": {m: round(float(v), 3) for m, v in g.delta_m_rows.mean().items()},
        "delta_m_per_task": {m: round(float(v), 3) for m, v in g.delta_m.mean().items()},
    }


def dvc_metrics(t: MultitaskReport) -> dict[str, dict[str, float]]:
    """The compact summary for `dvc metrics show`, one row per method ({method: {"delta_m": …}}, one file
    each): Δm in the form the verdict rests on; both forms and the per-task results are in the report."""
    return {method: {"delta_m": value} for method, value in summary(t)["delta_m"].items()}


def dvc_plot(t: MultitaskReport) -> str:
    """Δm per method as CSV for `dvc plots` (template `.dvc/plots/delta_m.json`): `delta_m` the value,
    `shown` the bar's length: for a value far outside the others (`figures.outliers`),
    a little past the longest other bar, its `note` printing the value; `kind` baseline, neural or classic."""
    from pipeline.report.figures import outliers

    dm = pd.Series(summary(t)["delta_m"])
    clipped = outliers(dm.to_numpy())
    edge = 1.15 * (float(dm[~clipped].abs().max()) or 1.0)  # a clipped bar reaches past the longest other one
    classic = set(t.df[t.df.classic].method)
    lines = ["method,delta_m,shown,note,kind"]
    for (method, value), c in zip(dm.items(), clipped):
        shown = float(np.sign(value)) * edge if c else value
        kind = "baseline" if method == t.baseline else "classic" if method in classic else "neural"
        lines.append(f"{method},{value},{round(shown, 3)},{f'{value:+.1f} (clipped)' if c else ''},{kind}")
    return "\n".join(lines) + "\n"


def run_delta_m(t: MultitaskReport) -> dict[str, dict[str, float]]:
    """Each run's own Δm (against the baseline at its seed; `test/delta_m` the form the verdict rests on),
    to log back onto it and sort runs by in the UI.
    Classic baselines are fitted once and compared with every baseline seed: they get the mean."""
    out = {}
    for r in t.records:
        g = t.dm[(t.dm.method == f"{r['scheme']}+{r['weighting']}") & (r.get("classic") or t.dm.seed == r["seed"])]
        if r.get("run_id") and len(g):
            out[r["run_id"]] = {"test/delta_m": float(g.delta_m_verdict.mean()), "test/delta_m_rows": float(g.delta_m_rows.mean())}
    return out
