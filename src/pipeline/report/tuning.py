"""The transfer report's tuning sections: what each strategy tried, what cross-validation chose, and
the oracle (best trial by test score), printed apart so a reader sees what selection costs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd

from pipeline.report import fmt_interval, interval


def fmt_setting(setting: Mapping) -> str:
    """`lr 0.001, alpha 0.01`: the learning rate first, then the strategy's knobs by name."""
    keys = sorted(setting, key=lambda k: (k != "lr", k))
    return ", ".join(f"{k} {setting[k]:.3g}" if isinstance(setting[k], float) else f"{k} {setting[k]}" for k in keys) or "configured"


def n_trials(df: pd.DataFrame) -> int:
    """Trials per strategy x budget x seed (1: untuned)."""
    counts = df["trials"].map(lambda x: len(x) if isinstance(x, list) else 1) if "trials" in df else pd.Series([1])
    return int(counts.max())


def oracle(df: pd.DataFrame, metric: str, higher_is_better: bool) -> pd.DataFrame:
    """Per strategy x budget x seed: the selected trial's test metric and the best test metric of any
    trial (`oracle`), which no user could have picked."""
    rows = []
    for r in df.itertuples():
        trials = r.trials if isinstance(r.trials, list) else None
        if not trials:
            continue
        tests = [t["test"][f"test/{metric}"] for t in trials if "test" in t]  # a failed trial has none
        rows.append(
            {
                "strategy": r.strategy,
                "budget": r.budget,
                "seed": r.seed,
                "selected": getattr(r, metric),
                "oracle": max(tests) if higher_is_better else min(tests),
            }
        )
    return pd.DataFrame(rows)


def section(df: pd.DataFrame, order: Sequence[str], budgets: Sequence[int], metric: str, higher_is_better: bool, tuning: Mapping, table) -> list[str]:
    """Markdown lines: how hyperparameters were set; with tuning, the trials, the chosen trial per
    seed, and the oracle table. `table(order, budgets, cell)` renders a strategy x budget table."""
    nets = df[df.strategy.isin(order)]
    n = n_trials(nets)
    lines = ["", "## Hyperparameters", ""]
    if n <= 1:
        return lines + [
            "Every strategy trained with its configured setting (`transfer.tuning.trials=1`: no search). Verdicts may then"
            " rest on defaults that happen to suit one strategy; `transfer.tuning.trials=8` gives every strategy the same"
            " tuning budget, chosen by cross-validation on the labelled rows of each budget."
        ]
    lines += [
        f"Every strategy had {n} trials per budget and seed: trial 0 its configured setting, trials 1–{n - 1} drawn from its"
        f" `search:` space (`transfer.tuning.seed={tuning['seed']}`: the same draws at every budget and seed). Each trial was"
        + (
            " scored by 2-fold stratified cross-validation on the budget's labelled rows: a fit on its train rows with the epoch"
            " chosen and scored on its validation rows, then the mirror (k rows per class on each side), and the best mean"
            " chose; the chosen trial's first fold, trained as an untuned run, is the result."
            if tuning.get("mirrored")
            else f" scored by {tuning['folds']}-fold stratified cross-validation on the budget's labelled train and validation rows"
            " (one fit per fold, its epochs chosen on the held-out fold), and the best score chose; the chosen setting then"
            " trained on the train rows with its epoch chosen on the validation rows, as an untuned run."
        )
        + " The test split chose nothing.",
        "",
        "Trials (`t<i>`; the same at every budget and seed):",
        "",
    ]
    settings = {}
    for r in nets.itertuples():
        if isinstance(r.trials, list):
            settings.setdefault(r.strategy, {t["trial"]: t["setting"] for t in r.trials})
    lines += ["| strategy | " + " | ".join(f"t{i}" for i in range(n)) + " |", "|" + "---|" * (n + 1)]
    lines += [f"| {s} | " + " | ".join(fmt_setting(settings[s][i]) if i in settings.get(s, {}) else "–" for i in range(n)) + " |" for s in order]
    chosen = {(r.strategy, r.budget): [] for r in nets.itertuples()}
    for r in nets.sort_values("seed").itertuples():
        chosen[r.strategy, r.budget].append(f"t{int(r.trial)}")
    lines += ["", "Chosen trial per seed (seeds in order):", ""]
    lines += table(order, budgets, lambda s, b: " ".join(chosen[s, b]) if (s, b) in chosen else None)
    o = oracle(nets, metric, higher_is_better)
    if not o.empty:
        cost = {}
        for (s, b), g in o.groupby(["strategy", "budget"]):
            mean, lo, hi = interval(g["oracle"].to_numpy())
            cost[s, b] = f"{fmt_interval(mean, lo, hi)} ({(g['selected'] - g['oracle']).mean():+.3f})"
        lines += [
            "",
            f"## Oracle: best trial by test {metric} (not a result)",
            "",
            f"⚠ Picking the trial by its test score is not possible for a user and not a fair comparison: this table only shows"
            f" what selection costs. Each cell: the oracle's mean test {metric} with its 95 % t-interval over seeds, and in"
            f" parentheses the selected trial's mean minus the oracle's.",
            "",
        ]
        lines += table(order, budgets, lambda s, b: cost.get((s, b)))
    return lines
