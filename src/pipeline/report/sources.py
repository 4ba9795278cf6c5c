"""reports/<experiment>_sources.md: which candidate source? Every transferability score's ranking of
the candidates against what a model trained on the candidate's features achieves on the target.

The reference ranking is the test metric of the linear probe (`linear_features`: a logistic or ridge
regression fitted on the candidate's features of the budget's k labelled rows per class, the same rows
the scores read), mean over seeds. Agreement is Kendall's τ between a score's mean and the probe's mean
over candidates, with a 95 % percentile bootstrap interval over seeds (seeds resampled with replacement,
both means recomputed: scipy.stats.bootstrap), and the weighted τ (scipy.stats.weightedtau), which
counts swaps near the top more: a user picks the top candidate.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

PROBE = "linear_features"


@dataclass
class SourcesReport:
    name: str
    metric: str  # the probe's test metric (the target's primary)
    higher_is_better: bool
    budgets: list[int]
    scores: pd.DataFrame  # candidate, score, budget, seed, value
    probe: pd.DataFrame  # candidate, budget, seed, value
    about: dict[str, str]  # candidate -> what it is
    baselines: list[str]  # the naive scores (knn, probe)


def load(knowledge_dir: Path, finetune_dir: Path, sources_dir: Path, name: str, metric: str, higher_is_better: bool, budgets) -> SourcesReport:
    """The scores (extract's scores.json) and every candidate's probe results (finetune): the own
    source's in finetune/linear_features/, the others' in finetune/sources/<candidate>/."""
    from pipeline.io import read_json

    summary = read_json(knowledge_dir / "summary.json", "extract summary")
    records = read_json(knowledge_dir / "scores.json", "extract scores")
    scores = pd.DataFrame([r for r in records if r.get("value") is not None], columns=["candidate", "score", "budget", "seed", "value"])
    rows = []
    for candidate in summary.get("candidates", {"source": {}}):
        folder = finetune_dir / PROBE if candidate == "source" else finetune_dir / "sources" / candidate
        for f in sorted(folder.glob("k*_seed*.json")):
            r = json.loads(f.read_text())
            rows.append({"candidate": candidate, "budget": int(r["budget"]), "seed": int(r["seed"]), "value": float(r["test"][f"test/{metric}"])})
    about = {}
    for candidate, part in summary.get("candidates", {"source": {}}).items():
        model = part.get("model", candidate)
        kept = read_json(sources_dir / model / "summary.json", "pretrain summary")
        what = (kept.get("candidate") or {}).get("note") or ("the experiment's own source" if model == "source" else model)
        depth = part.get("depth")
        about[candidate] = f"{what}; features after hidden block {depth}" if depth else what
    return SourcesReport(
        name,
        metric,
        higher_is_better,
        [int(b) for b in budgets],
        scores,
        pd.DataFrame(rows, columns=["candidate", "budget", "seed", "value"]),
        about,
        list(summary.get("baseline_scores", [])),
    )


def agreement(t: SourcesReport, score: str, budget: int, n_resamples: int = 2000) -> dict | None:
    """Kendall's τ between `score`'s and the probe's means over candidates at `budget`, its 95 % bootstrap
    interval over seeds, and the weighted τ; None with fewer than 3 candidates that have both."""
    from scipy import stats

    s = t.scores[(t.scores.score == score) & (t.scores.budget == budget)].pivot_table(index="seed", columns="candidate", values="value")
    p = t.probe[t.probe.budget == budget].pivot_table(index="seed", columns="candidate", values="value")
    cands = [c for c in s.columns if c in p.columns]
    seeds = [x for x in s.index if x in p.index]
    if len(cands) < 3 or not seeds:
        return None
    s, p = s.loc[seeds, cands].to_numpy(), p.loc[seeds, cands].to_numpy()
    sign = 1.0 if t.higher_is_better else -1.0

    def tau(idx) -> float:
        idx = np.asarray(idx, dtype=int)
        return float(stats.kendalltau(s[idx].mean(0), sign * p[idx].mean(0)).statistic)

    point = tau(np.arange(len(seeds)))
    low = high = float("nan")
    if len(seeds) >= 3:  # fewer seeds give no interval worth the name
        boot = stats.bootstrap(
            (np.arange(len(seeds)),), tau, n_resamples=n_resamples, method="percentile", vectorized=False, random_state=np.random.default_rng(0)
        )
        low, high = float(boot.confidence_interval.low), float(boot.confidence_interval.high)
    weighted = float(stats.weightedtau(s.mean(0), sign * p.mean(0)).statistic)
    top = cands[int(np.argmax(s.mean(0)))]
    best = cands[int(np.argmax(sign * p.mean(0)))]
    return {"tau": point, "low": low, "high": high, "weighted": weighted, "n": len(cands), "seeds": len(seeds), "top": top, "best": best}


def render(t: SourcesReport) -> str:
    sign = 1.0 if t.higher_is_better else -1.0
    score_names = list(dict.fromkeys(t.scores.score))
    lines = [
        f"# {t.name}: which source?",
        "",
        "Every candidate source was scored by `extract` from each budget's labelled target rows alone, before any fine-tuning;",
        f"the reference is the target test {t.metric} of a linear probe (`{PROBE}`: a linear model fitted on the candidate's",
        "features of the same labelled rows), mean over seeds. Kendall's τ compares a score's ranking of the candidates with",
        "the probe's (1: the same order, 0: unrelated, −1: reversed), with a 95 % bootstrap interval over seeds; weighted τ",
        "counts swaps near the top more (intervals need 3 seeds or more). A score is worth using where its τ beats the naive baselines "
        + ", ".join(f"`{b}`" for b in t.baselines)
        + ". Fine-tuning from each candidate (parameter transfer, feature re-training) is not in this report yet.",
        "",
        *(
            [f"No linear-probe results (`{PROBE}` was not fine-tuned in this configuration): nothing to rank the scores against.", ""]
            if t.probe.empty
            else []
        ),
        "## Candidates",
        "",
        "| candidate | what it is |",
        "|---|---|",
        *[f"| `{c}` | {what} |" for c, what in t.about.items()],
    ]
    for k in t.budgets:
        probe = t.probe[t.probe.budget == k].groupby("candidate")["value"]
        means, sems, counts = probe.mean(), probe.sem(), probe.count()
        order = sorted(means.index, key=lambda c: -sign * means[c])
        lines += ["", f"## k = {k} labelled rows per class", "", f"| candidate | probe test {t.metric} | " + " | ".join(score_names) + " |"]
        lines.append("|" + "---|" * (len(score_names) + 2))
        at_k = t.scores[t.scores.budget == k].groupby(["candidate", "score"])["value"].mean()
        for c in order:
            half = _half_width(sems[c], counts[c])
            cells = [f"{at_k[(c, s)]:.3f}" if (c, s) in at_k.index else "–" for s in score_names]
            lines.append(f"| `{c}` | {means[c]:.3f} ± {half:.3f} | " + " | ".join(cells) + " |")
        lines += ["", "| score | Kendall τ [95 % interval] | weighted τ | its top candidate | candidates |", "|---|---|---|---|---|"]
        found = {}
        for s in score_names:
            a = agreement(t, s, k)
            if a is None:
                lines.append(f"| {s} | – | – | – | fewer than 3 |")
                continue
            found[s] = a
            label = f"{s} (baseline)" if s in t.baselines else s
            hit = "" if a["top"] == a["best"] else " (not the probe's best)"
            lines.append(f"| {label} | {a['tau']:+.2f} [{a['low']:+.2f}, {a['high']:+.2f}] | {a['weighted']:+.2f} | `{a['top']}`{hit} | {a['n']} |")
        lines += ["", *verdict(found, t.baselines, order[0] if order else None)]
    return "\n".join(lines) + "\n"


def verdict(found: Mapping[str, dict], baselines: list[str], best: str | None) -> list[str]:
    """One line: which scores rank the candidates reliably (interval above 0), and whether any beats the baselines."""
    if not found:
        return ["Too few candidates to rank."]
    reliable = [s for s, a in found.items() if a["low"] > 0]
    base = max((found[b]["tau"] for b in baselines if b in found), default=float("nan"))
    n_base = max((found[b]["n"] for b in baselines if b in found), default=0)
    # τ over fewer candidates (a score without probabilities skips inner blocks) is not comparable.
    better = [s for s in reliable if s not in baselines and found[s]["n"] == n_base and found[s]["tau"] > base]
    out = f"The probe's best candidate here is `{best}`. "
    out += (
        f"The ranking agrees with the probe's across seeds (τ's interval above 0) for {', '.join(f'`{s}`' for s in reliable)}"
        if reliable
        else "No score's ranking agrees with the probe's across seeds (no τ interval lies above 0)"
    )
    if not np.isnan(base):
        out += (
            f"; of them, {', '.join(f'`{s}`' for s in better)} ha{'s' if len(better) == 1 else 've'} a higher τ"
            f" than the best naive baseline ({base:+.2f}, over the same {n_base} candidates)."
            if better
            else f"; none of them has a higher τ than the best naive baseline over the same {n_base} candidates ({base:+.2f})."
        )
    return [out]


def _half_width(sem: float, n: int) -> float:
    from scipy import stats

    return float(stats.t.ppf(0.975, n - 1) * sem) if n > 1 and np.isfinite(sem) else float("nan")
