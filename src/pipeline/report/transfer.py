"""Transfer comparison: strategy x label budget, mean ± std over seeds, paired gain over the baseline
strategy (`transfer.baseline`), negative transfer flagged. Only the runs of the current configuration
are read: strategies x budgets x seeds from the config, each with the config digest it would have now.

Two sanity rows sit beside the network strategies: the linear baseline fitted by the finetune stage
on the same k target rows (`linear`: ridge or logistic regression), and, where the source model predicts the target's
own labels, that model with no target labels (`source_no_labels`, one value repeated across budgets
and seeds, from the extract stage). Findings say when either beats every network strategy."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

from pipeline.data import TaskSpec
from pipeline.errors import PipelineError
from pipeline.multitask.baselines import LINEAR, LINEAR_FEATURES
from pipeline.report import baseline_first, fmt_interval, interval, listing, spread, tuning
from pipeline.report.outputs import metric_key
from pipeline.tracking import ui_hint

# The zero-label source model's row (not a fine-tune run: the extract stage's zero-shot metrics).
ZERO_SHOT = "source_no_labels"
INPUTS = {LINEAR: "the raw inputs", LINEAR_FEATURES: "the frozen source network's features"}  # what each linear sanity row reads


def expected_runs(cfg: DictConfig, exp: DictConfig, data_hash: str, source_run_id: str) -> dict[tuple[str, int, int], str]:
    """(strategy, budget, seed) -> the config digest its result record carries when it is current
    (as `stages.finetune` computes it), the linear baseline included; the selectors
    `strategy`, `budget`, `seed` narrow the set."""
    from pipeline.stages import pick
    from pipeline.stages.finetune import linear_params, run_params, selected
    from pipeline.tracking import digest

    strategies, classic = selected(cfg)
    budgets = pick(cfg.get("budget"), list(exp.budgets), "label budget")
    seeds = pick(cfg.get("seed"), list(cfg.transfer.seeds), "seed")
    digests = {s: digest({**run_params(cfg, s), "data_hash": data_hash, "source_run_id": source_run_id}) for s in strategies}
    for c in classic:  # the raw-input baseline's digest names no source: it does not depend on one
        digests[c] = digest({**linear_params(cfg, c, source_run_id), "data_hash": data_hash})
    return {(s, int(b), int(seed)): d for s, d in digests.items() for b in budgets for seed in seeds}


def load_results(finetune_dir: str | Path, expected: dict[tuple[str, int, int], str]) -> tuple[pd.DataFrame, list[str], list[dict]]:
    """One row per expected fine-tune run that finished (strategy, budget, seed, run_id, every test
    metric); the result files ignored: other strategies, budgets or seeds, or a config digest that is not
    the current one; and the failed runs of the current ones (`failed_runs`).

    A missing expected run is a PipelineError naming it; a failed one is not missing."""
    finetune_dir = Path(finetune_dir)
    files = sorted(finetune_dir.glob("*/*.json"))
    if not files:
        raise PipelineError(f"missing upstream output {finetune_dir}: no fine-tune results; run the finetune stage first")
    rows, stale, failed, lost = [], [], [], set()
    for f in files:
        r = json.loads(f.read_text())
        key = (r.get("strategy"), r.get("budget"), r.get("seed"))
        if key not in expected or r.get("config_digest") != expected[key]:
            stale.append(str(f.relative_to(finetune_dir)))
            continue
        failed += failed_runs(r)
        if r.get("failed"):
            lost.add(key)
            continue
        rows.append(
            {
                "strategy": r["strategy"],
                "budget": r["budget"],
                "seed": r["seed"],
                "run_id": r["run_id"],
                "trial": r.get("trial", 0),
                "trials": r.get("trials"),  # every trial's setting, CV score and test metrics (tuning)
                **{k.split("/", 1)[1]: v for k, v in r["test"].items() if k != "test/loss"},
            }
        )
    missing = sorted(set(expected) - {(r["strategy"], r["budget"], r["seed"]) for r in rows} - lost)
    if missing:
        names = ", ".join(f"{s}/k{b}_seed{seed}.json" for s, b, seed in missing[:10]) + (
            f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        )
        raise PipelineError(
            f"{finetune_dir}: no result of the current configuration for {names}"
            f"{f' ({len(stale)} stale result files ignored)' if stale else ''}; run the finetune stage"
        )
    return pd.DataFrame(rows), stale, failed


def failed_runs(record: Mapping) -> list[dict]:
    """The failed MLflow runs behind one result record: its failed trials (every trial, when the record
    itself failed), each with what became of the cell: `lost` (no result at this seed) or the trial chosen instead."""
    trials = record.get("trials") or ([{"trial": 0, "run_id": record.get("run_id"), "failed": record["failed"]}] if record.get("failed") else [])
    lost = bool(record.get("failed"))
    return [
        {
            "strategy": record["strategy"],
            "budget": int(record["budget"]),
            "seed": int(record["seed"]),
            "trial": int(t.get("trial", 0)),
            "run_id": t.get("run_id"),
            "why": t["failed"],
            "lost": lost,
            "chosen": None if lost else record.get("trial"),
        }
        for t in trials
        if t.get("failed")
    ]


def summarise(df: pd.DataFrame, metric: str, baseline: str | None = None, higher_is_better: bool = True) -> pd.DataFrame:
    """Per strategy x budget: mean, std, n over seeds, the mean's 95 % t-interval (lo, hi; NaN with one
    seed), and (with a baseline) the gain over it at the same seed with its paired interval.

    Seeds fix the labelled subset, so the gain is a paired difference, sign-flipped when lower is better:
        gain(s, k) = mean over seeds i of  ±(M[s, k, i] - M[baseline, k, i]),
    and its interval is the t-interval of those per-seed differences. The verdict follows the interval:
    `negative` (negative transfer) where it lies below zero, `better` where it lies above, neither
    ("no detectable difference") where it contains zero. `wins` counts seeds where the strategy won.
    """
    sign = 1.0 if higher_is_better else -1.0
    if df.empty:
        return pd.DataFrame(columns=["strategy", "budget", "mean", "std", "n", "lo", "hi"])
    df = df.dropna(subset=[metric])  # a sanity row may lack a secondary metric
    groups = df.groupby(["strategy", "budget"])[metric]
    stats = groups.agg(mean="mean", std=spread, n="count")
    # A t-interval of a few seeds can reach past what the metric can be (accuracy above 1): clipped to its range.
    low, high = RANGES.get(metric, (None, None))
    stats[["lo", "hi"]] = _intervals(groups).clip(lower=low, upper=high)
    if baseline is not None and baseline in set(df["strategy"]):
        base = df[df.strategy == baseline].set_index(["budget", "seed"])[metric]
        # Paired where both runs of a seed finished: a seed whose run failed on either side has no pair.
        paired = df.join(base.rename("base"), on=["budget", "seed"]).dropna(subset=["base"])
        paired["gain"] = sign * (paired[metric] - paired["base"])
        g = paired.groupby(["strategy", "budget"])["gain"]
        stats["paired"] = g.count()
        stats["gain"] = g.mean()
        stats["gain_std"] = g.agg(spread)
        stats[["gain_lo", "gain_hi"]] = _intervals(g)
        stats["wins"] = g.agg(lambda s: int((s > 0).sum()))
        stats["negative"] = stats["gain_hi"] < 0  # NaN (one seed) compares False: no verdict
        stats["better"] = stats["gain_lo"] > 0
    return stats.reset_index()


# The values each metric can take (pipeline.training.metrics); an interval is clipped to them.
RANGES = {"acc": (0.0, 1.0), "f1": (0.0, 1.0), "rmse": (0.0, None), "r2": (None, 1.0)}


def _intervals(groups) -> pd.DataFrame:
    """(lo, hi) of each group's 95 % t-interval; NaN where a group has one value (no spread to estimate)."""
    rows = {key: interval(v)[1:] for key, v in groups}
    return pd.DataFrame.from_dict(rows, orient="index", columns=["lo", "hi"]).reindex(groups.size().index)


@dataclass
class TransferReport:
    """What a transfer report is made of: the current runs and their upstream summaries."""

    name: str
    exp: DictConfig
    task: TaskSpec
    data_hash: str
    source: dict
    knowledge: dict
    baseline: str
    df: pd.DataFrame
    stale: list[str]
    sanity: tuple[str, ...] = ()  # rows that are not network strategies: the linear baseline, the zero-label source model
    tuning: dict | None = None  # transfer.tuning (read when the records hold several trials)
    failed: list[dict] = field(default_factory=list)  # failed runs of the current configuration (`failed_runs`)

    @property
    def lost(self) -> dict[tuple[str, int], list[int]]:
        """(strategy, budget) -> the seeds with no result because its run failed."""
        out: dict = {}
        for f in self.failed:
            if f["lost"] and f["seed"] not in out.get((f["strategy"], f["budget"]), []):
                out.setdefault((f["strategy"], f["budget"]), []).append(f["seed"])
        return {k: sorted(v) for k, v in out.items()}

    @property
    def unit(self) -> str:
        """What a label budget k counts."""
        return "labels per class" if self.task.kind == "classification" else "labelled rows"

    @property
    def order(self) -> list[str]:
        """The baseline, the other network strategies, then the sanity rows."""
        networks = baseline_first([s for s in self.df.strategy if s not in self.sanity], self.baseline)
        return networks + [s for s in self.sanity if s in set(self.df.strategy)]

    @property
    def n_runs(self) -> int:
        """Fine-tune runs read (the zero-label row is not one)."""
        return int((self.df.strategy != ZERO_SHOT).sum())

    @property
    def networks(self) -> list[str]:
        return [s for s in self.order if s not in self.sanity]

    @cached_property
    def stats(self) -> pd.DataFrame:
        return summarise(self.df, self.task.primary, self.baseline, self.task.higher_is_better)


def load(cfg: DictConfig) -> TransferReport:
    from pipeline.io import read_json
    from pipeline.stages import experiment, layout

    name, exp = experiment(cfg, "transfer")
    paths = layout(cfg, name)
    baseline = cfg.transfer.baseline
    if baseline not in cfg.transfer.strategies:
        raise PipelineError(f"transfer.baseline={baseline!r} is not one of transfer.strategies {sorted(cfg.transfer.strategies)}")
    source = read_json(paths.source / "summary.json", "pretrain summary")
    knowledge = read_json(paths.knowledge / "summary.json", "extract summary")
    meta = read_json(paths.data / "target" / "meta.json", "prepared target task set")
    task, data_hash = TaskSpec(**meta["tasks"][0]), meta["provenance"]["content_hash"]
    df, stale, failed = load_results(paths.finetune, expected_runs(cfg, exp, data_hash, source["run_id"]))
    if df.empty or baseline not in set(df.strategy):
        if any(f["strategy"] == baseline for f in failed):
            first = next(f["why"] for f in failed if f["strategy"] == baseline)
            raise PipelineError(f"transfer.baseline={baseline!r}: every run of it failed, so no gain can be paired with it: {first}")
        raise PipelineError(f"transfer.baseline={baseline!r}: no runs of it selected (strategy={cfg.get('strategy')!r}); the gains need them")
    df = with_zero_shot(df, task, knowledge)
    from omegaconf import OmegaConf

    from pipeline.transfer.tuning import mirrors

    sanity = (LINEAR, LINEAR_FEATURES, ZERO_SHOT)
    tuned = {**OmegaConf.to_container(cfg.transfer.tuning), "mirrored": mirrors(cfg.transfer)}
    return TransferReport(name, exp, task, data_hash, source, knowledge, baseline, df, stale, sanity, tuned, failed)


def with_zero_shot(df: pd.DataFrame, task: TaskSpec, knowledge: dict) -> pd.DataFrame:
    """`df` with the zero-label source model's row at every budget x seed present (the same value each
    time, so its gains pair by seed like a strategy's), where the extract stage scored it."""
    scores = {m: knowledge[f"zero_shot_{m}"] for m in task.metrics if f"zero_shot_{m}" in knowledge}
    if task.primary not in scores:
        return df
    cells = df[["budget", "seed"]].drop_duplicates().assign(strategy=ZERO_SHOT, run_id=knowledge.get("run_id"), **scores)
    return pd.concat([df, cells], ignore_index=True)


def _plain(node) -> dict:
    from omegaconf import OmegaConf

    return {k: v for k, v in OmegaConf.to_container(node).items() if k != "_target_"}


def _table(order: list[str], budgets: list[int], cell) -> list[str]:
    """A strategy x budget markdown table; `cell(strategy, budget)` gives the text or None (shown –)."""
    lines = ["| strategy | " + " | ".join(f"k={b}" for b in budgets) + " |", "|" + "---|" * (len(budgets) + 1)]
    return lines + [f"| {s} | " + " | ".join(cell(s, b) or "–" for b in budgets) + " |" for s in order]


def render(t: TransferReport, figure: str, mlflow_uri: str) -> str:
    df, stats, task, baseline, primary = t.df, t.stats, t.task, t.baseline, t.task.primary
    budgets = sorted(int(b) for b in df.budget.unique())
    order = t.order
    seeds = sorted(int(s) for s in df.seed.unique())
    exp = t.exp
    lines = [f"# {t.name}: does the source help the target?", ""]
    lines += [
        f"- Source: `{exp.source._target_.rsplit('.', 1)[1]}` {dict(_plain(exp.source))};"
        f" target: `{exp.target._target_.rsplit('.', 1)[1]}` {dict(_plain(exp.target))}.",
        f"- Target task `{task.name}` ({task.kind}{f', {task.n_outputs} classes' if task.classes else ''}); {t.unit} k ∈ {budgets};"
        f" seeds {seeds} (a seed fixes the labelled subset and the initialisation, so gains are paired).",
        (
            f"- Source model: test {primary} {t.source['test'].get('test/' + primary, float('nan')):.3f} on the source's own test split"
            if t.source["test"]
            else "- Source model: not tested on the source split (it predicts another task)"
        )
        + (f", loaded from `{t.source['loaded_from']}` (not trained here)" if t.source.get("loaded_from") else "")
        + f" (MLflow run `{t.source['run_id']}`).",
    ]
    if t.source.get("best_epoch_at_cap"):
        lines.append(
            f"- ⚠ Under-trained source: the source model's best epoch ({t.source['best_epoch']}) was the last allowed"
            f" (max_epochs={t.source.get('max_epochs')}): raise pretrain.max_epochs."
        )
    zero = {m: t.knowledge[f"zero_shot_{m}"] for m in task.metrics if f"zero_shot_{m}" in t.knowledge}
    if zero:
        lines.append(
            "- Domain gap: the source model, with no target labels at all, scores "
            + ", ".join(f"{m} {v:.3f}" for m, v in zero.items())
            + f" on the target test split (row `{ZERO_SHOT}`)."
        )
    else:
        lines.append("- Domain gap: not measured — the source model predicts another task than the target's, so it has no zero-label score.")
    lines.append(
        f"- {t.n_runs} fine-tune runs of the current configuration"
        + (f"; {len(t.stale)} result files of other configurations or runs ignored (stale): {listing(t.stale)}." if t.stale else ".")
    )
    if t.failed:
        lines.append(f"- ⚠ {len(t.failed)} runs failed and are left out of every mean and gain: see [Failed runs](#failed-runs).")
    linear = [s for s in t.sanity if s in order and s != ZERO_SHOT]
    if linear:
        model = "ridge regression" if task.kind == "regression" else "logistic regression"
        lines.append(
            f"- Sanity rows: {' and '.join(f'`{s}`' for s in linear)} {'are' if len(linear) > 1 else 'is'} a {model} fitted on the same k"
            f" target rows as the strategies ({', '.join(f'`{s}` on {INPUTS[s]}' for s in linear)}; regularisation chosen on the same"
            " validation labels), paired by seed"
            + (f"; `{ZERO_SHOT}` is the source model with no target labels (the same value at every k)." if ZERO_SHOT in order else ".")
        )
    networks = t.networks
    lost = t.lost
    gone = [s for s in dict.fromkeys(s for s, _ in lost) if s not in order]  # every run of it failed
    shown = networks + gone + [s for s in order if s not in networks]
    lines += failed_section(t)
    cell = {(r.strategy, r.budget): r for r in stats.itertuples()}

    def mean(s, b):
        seeds_lost = lost.get((s, b), [])
        if (s, b) not in cell:
            return f"failed (seeds {seeds_lost})" if seeds_lost else None
        r = cell[s, b]
        short = f" † {int(r.n)} of {int(r.n) + len(seeds_lost)} seeds, seeds {seeds_lost} failed" if seeds_lost else ""
        return fmt_interval(r.mean, r.lo, r.hi) + short

    lines += ["", f"## Test {primary} (mean and 95 % t-interval over {len(seeds)} seeds{_clipped(primary)})", ""]
    lines += _table(shown, budgets, mean)
    if len(order) > 1:
        compared = {(s, b): r for (s, b), r in cell.items() if s in networks and s != baseline and not pd.isna(r.gain)}
        negatives = sorted((s, b) for (s, b), r in compared.items() if r.negative)
        better = sorted((s, b) for (s, b), r in compared.items() if r.better)

        def gain(s, b):
            # A seed whose run failed, here or in the baseline, has no pair: said, not paired with another seed.
            unpaired = sorted(set(lost.get((s, b), [])) | set(lost.get((baseline, b), [])))
            if (s, b) not in cell or pd.isna(cell[s, b].gain):
                return f"no pair: seeds {unpaired} failed" if unpaired else None
            r = cell[s, b]
            mark = " ⚠ negative transfer" if r.negative else " ✓ better" if r.better else ""
            short = f" † seeds {unpaired} unpaired (a run failed)" if unpaired else ""
            return f"{fmt_interval(r.gain, r.gain_lo, r.gain_hi, signed=True)} ({int(r.wins)}/{int(r.paired)}){mark}{short}"

        lines += [
            "",
            f"## Gain over `{baseline}` in {primary} (paired by seed: mean, 95 % t-interval, seeds won)",
            "",
            f"⚠ negative transfer: the interval lies below 0; ✓ better: above 0; no mark: no detectable difference"
            f" (the interval contains 0). With {len(seeds)} seeds a t-interval spans about"
            f" ±{_t_factor(len(seeds)):.1f} standard errors.",
            "",
        ]
        lines += _table([s for s in shown if s in networks[1:] or s in gone], budgets, gain)
        lines += ["", "## Findings", ""]
        for b in budgets:
            at_b = stats[(stats.budget == b) & stats.strategy.isin(networks)]
            if at_b.empty:  # every network run at this budget failed
                continue
            best = at_b.loc[at_b["mean"].idxmax() if task.higher_is_better else at_b["mean"].idxmin()]
            lines.append(f"- k={b}: highest mean among network strategies: `{best.strategy}` ({fmt_interval(best['mean'], best['lo'], best['hi'])}).")
            lines += sanity_findings(t, b, best)
        cells = lambda keys: ", ".join(f"`{s}` at k={b} ({cell[s, b].gain:+.3f})" for s, b in keys)  # noqa: E731
        if better:
            lines.append(f"- Better than `{baseline}` (paired interval above 0): {cells(better)}.")
        if negatives:
            lines.append(f"- Negative transfer (paired interval below 0): {cells(negatives)}.")
        rest = len(compared) - len(better) - len(negatives)
        lines.append(
            f"- No detectable difference from `{baseline}` in the other {rest} of {len(compared)} strategy × budget comparisons"
            " (their paired intervals contain 0); more seeds narrow the intervals."
            if rest
            else f"- Every strategy × budget comparison with `{baseline}` has a verdict."
        )
    lines += tuning.section(df, networks, budgets, primary, task.higher_is_better, t.tuning, _table)
    lines += transferability(t.knowledge, budgets)
    for m in task.metrics[1:]:
        sub = {(r.strategy, r.budget): r for r in summarise(df, m).itertuples()}
        lines += ["", f"## Test {m} (mean and 95 % t-interval{_clipped(m)})", ""]
        lines += _table(order, budgets, lambda s, b, sub=sub: fmt_interval(sub[s, b].mean, sub[s, b].lo, sub[s, b].hi) if (s, b) in sub else None)
    lines += [
        "",
        "## Figure",
        "",
        f"![label efficiency]({figure})",
        "",
        "## Reproduce and inspect",
        "",
        f"`dvc repro` rebuilds this file from the pipeline; every number above is a fine-tune run in the MLflow experiment `{t.name}`"
        f" ({ui_hint(mlflow_uri)}), named `<strategy> k<k> s<seed>`"
        + (f"; the `{ZERO_SHOT}` row is the `extract/source` run." if ZERO_SHOT in order else "."),
        "",
    ]
    return "\n".join(lines)


def failed_section(t: TransferReport) -> list[str]:
    """Markdown lines: the failed runs, each with what became of its cell and why it failed."""
    from pipeline.report import failed_runs

    rows = [
        # The message names the run; the columns do here.
        [f["strategy"], f["budget"], f["seed"], f"t{f['trial']}", "no result at this seed" if f["lost"] else f"trial t{f['chosen']} chosen instead"]
        + [f["why"].split(": ", 1)[-1], f"`{f['run_id']}`"]
        for f in sorted(t.failed, key=lambda f: (f["strategy"], f["budget"], f["seed"], f["trial"]))
    ]
    consequence = (
        "its seed is left out of the cell's mean (marked † with the seeds it averages) and of every gain"
        " paired with it (a gain pairs only seeds where both runs finished); a failed tuning trial is not chosen."
    )
    return failed_runs(len(t.failed), consequence, ["strategy", "k", "seed", "trial", "the cell", "why", "MLflow run"], rows)


def transferability(knowledge: Mapping, budgets: Sequence[int]) -> list[str]:
    """Markdown lines: the extract stage's scores of the source per budget (mean over seeds), and the
    scores that do not apply, with their reason."""
    scores = knowledge.get("scores") or {}
    if not scores and not knowledge.get("not_applicable"):
        return []
    lines = [
        "",
        "## Transferability of the source",
        "",
        "Scores `extract` computed before any fine-tuning, each from the budget's labelled rows alone (its train and validation"
        " rows, the ones fine-tuning sees), mean over seeds; higher means the source should serve the target better. `knn`"
        " (leave-one-out nearest-neighbour accuracy) and `probe` (cross-validated logistic regression) on the source's features"
        " are the naive baselines a score must beat to be worth its name. A score ranks sources; one source alone is not ranked.",
        "",
        "| score | " + " | ".join(f"k={b}" for b in budgets) + " |",
        "|" + "---|" * (len(budgets) + 1),
    ]
    for name, per in scores.items():
        label = f"{name} (baseline)" if name in knowledge.get("baseline_scores", ()) else name
        lines.append(f"| {label} | " + " | ".join(f"{per[str(b)]:.3f}" if str(b) in per else "–" for b in budgets) + " |")
    missing = knowledge.get("not_applicable") or {}
    return lines + ([""] if missing else []) + [f"- `{name}`: not applicable ({reason})." for name, reason in missing.items()]


def _clipped(metric: str) -> str:
    low, high = RANGES.get(metric, (None, None))
    if low is None and high is None:
        return ""
    return f", clipped to {metric}'s range [{'-∞' if low is None else low}, {'∞' if high is None else high}]"


def _t_factor(n: int) -> float:
    """The Student-t quantile a 95 % interval over n seeds multiplies the standard error by."""
    from scipy import stats

    return float(stats.t.ppf(0.975, n - 1)) if n > 1 else float("nan")


def sanity_findings(t: TransferReport, budget: int, best) -> list[str]:
    """A line for each sanity row that beats every network strategy at this budget (`best`: the best one's stats)."""
    sign = 1.0 if t.task.higher_is_better else -1.0
    lines = []
    for s in t.sanity:
        row = t.stats[(t.stats.strategy == s) & (t.stats.budget == budget)]
        if row.empty or not sign * (row["mean"].iloc[0] - best["mean"]) > 0:
            continue
        what = {
            ZERO_SHOT: "the source model with no target labels",
            LINEAR_FEATURES: "a linear model on the source's features of the same k rows",
        }.get(s, "a linear model on the same k rows")
        lines.append(
            f"- k={budget}: `{s}` ({what}, {fmt_interval(row['mean'].iloc[0], row['lo'].iloc[0], row['hi'].iloc[0])}) is above every"
            f" network strategy on the mean (best `{best.strategy}`, {best['mean']:.3f}): the networks are not earning their keep here."
        )
    return lines


def figure(t: TransferReport):
    from pipeline.report.figures import label_efficiency

    ref = t.knowledge.get(f"zero_shot_{t.task.primary}")
    return label_efficiency(
        t.stats,
        [s for s in t.order if s != ZERO_SHOT],  # a constant: drawn as the reference line
        t.baseline,
        t.task.primary,
        f"target {t.unit} (k)",
        f"{t.name}: {t.task.primary} vs {t.unit}",
        ref,
        "source model, no target labels" if ref is not None else "",
        t.sanity,
    )


def budget_key(budget: int, budgets) -> str:
    """`k` and the budget zero-padded to the widest of `budgets` (at least 2 digits): k01, k03, k10, k30 sort
    as numbers in `dvc metrics show`, which orders columns as text."""
    width = max(2, *(len(str(int(b))) for b in budgets))
    return f"k{int(budget):0{width}d}"


def dvc_metrics(t: TransferReport) -> dict[str, dict[str, float]]:
    """The compact summary for `dvc metrics show`, one row per strategy ({strategy: {k01: …}}, one file
    each): the mean test metric per budget, budgets in numeric order, and the zero-label source model's
    one value at `k00`. Spreads, gains and other metrics are in the report."""
    budgets = sorted(int(b) for b in t.stats.budget.unique())
    out: dict = {}
    for s in t.order:
        rows = t.stats[t.stats.strategy == s].sort_values("budget")
        if s == ZERO_SHOT:  # the same value at every budget: it used no target label
            out[s] = {budget_key(0, budgets): round(float(rows["mean"].iloc[0]), 4)}
        else:
            out[s] = {budget_key(r.budget, budgets): round(float(r.mean), 4) for r in rows.itertuples()}
    return out


def mlflow_metrics(t: TransferReport) -> dict[str, float]:
    """What the report run logs to MLflow: `<metric>/<strategy>/k<k>` the mean test metric and, for the
    network strategies, `gain/<strategy>/k<k>` the paired gain over the baseline and `wins/...` the seeds won."""
    budgets = sorted(int(b) for b in t.stats.budget.unique())
    out = {}
    for r in t.stats.itertuples():
        k = budget_key(r.budget, budgets)
        out[metric_key(f"{t.task.primary}/{r.strategy}/{k}")] = float(r.mean)
        if r.strategy in t.networks and r.strategy != t.baseline and "gain" in t.stats:
            out[metric_key(f"gain/{r.strategy}/{k}")] = float(r.gain)
            out[metric_key(f"wins/{r.strategy}/{k}")] = float(r.wins)
    return out


def dvc_plot(t: TransferReport) -> str:
    """The label-efficiency curve as CSV for `dvc plots` (x column `labels_per_class`, as dvc.yaml reads it)."""
    wide = t.stats.pivot(index="budget", columns="strategy", values="mean")[t.order]
    wide.index.name = "labels_per_class"
    return wide.round(4).to_csv()
