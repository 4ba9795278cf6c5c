"""reports/<experiment>_sources.md: which candidate source? Every transferability score's ranking of
the candidates against what fine-tuning from each candidate achieves on the target.

Two references, each a test metric per candidate, mean over seeds, on the budget's k labelled rows
per class (the rows the scores read):
- the linear probe (`linear_features`): a logistic or ridge regression on the candidate's features;
- parameter transfer (`param_transfer`, tuned as the finetune stage tunes it): the candidate's network
  fine-tuned on the target (a layer view `<candidate>:block<i>`: its first i blocks transferred).
The rank stage fits both from every candidate (artifacts/<exp>/rank/); the own source's come from
the finetune stage (its `linear_features` and `param_transfer` results).

Agreement is Kendall's τ between a score's mean and a reference's mean over candidates, with a 95 %
percentile bootstrap interval over seeds (seeds resampled with replacement, both means recomputed:
scipy.stats.bootstrap), and the weighted τ (scipy.stats.weightedtau), which counts swaps near the top
more: a user picks the top candidate.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

PROBE = "linear_features"
PARAM = "param_transfer"
REFERENCES = {PROBE: "linear probe", PARAM: "parameter transfer"}
PHRASE = {PROBE: "the linear probe", PARAM: "parameter transfer"}  # in a sentence
OWN = "source"
COLUMNS = ["candidate", "budget", "seed", "value"]


def _empty() -> pd.DataFrame:
    return pd.DataFrame(columns=COLUMNS)


@dataclass
class SourcesReport:
    name: str
    metric: str  # the references' test metric (the target's primary)
    higher_is_better: bool
    budgets: list[int]
    scores: pd.DataFrame  # candidate, score, budget, seed, value
    probe: pd.DataFrame  # candidate, budget, seed, value
    about: dict[str, str]  # candidate -> what it is
    baselines: list[str]  # the naive scores (knn, probe)
    transfer: pd.DataFrame = field(default_factory=_empty)  # parameter transfer: candidate, budget, seed, value
    failed: list[dict] = field(default_factory=list)  # {candidate, strategy, budget, seed, run_id, why}
    setting: dict | None = None  # parameter transfer's configured setting (trial 0)
    trials: int = 1  # parameter transfer's trials per result (1: untuned)
    ranked: bool = True  # whether the rank stage's results were there

    def reference(self, name: str) -> pd.DataFrame:
        return self.probe if name == PROBE else self.transfer


def load(
    knowledge_dir: Path, finetune_dir: Path, rank_dir: Path, sources_dir: Path, name: str, metric: str, higher_is_better: bool, budgets
) -> SourcesReport:
    """The scores (extract's scores.json) and every candidate's fine-tuned results: the own source's in
    finetune/<strategy>/, the others' in rank/<strategy>/<candidate>/."""
    from pipeline.io import read_json

    summary = read_json(knowledge_dir / "summary.json", "extract summary")
    records = read_json(knowledge_dir / "scores.json", "extract scores")
    scores = pd.DataFrame([r for r in records if r.get("value") is not None], columns=["candidate", "score", "budget", "seed", "value"])
    views = summary.get("candidates", {OWN: {}})
    rows: dict[str, list] = {PROBE: [], PARAM: []}
    failed, setting, trials = [], None, 1
    for candidate in views:
        for strategy in REFERENCES:
            folder = finetune_dir / strategy if candidate == OWN else rank_dir / strategy / candidate
            for f in sorted(folder.glob("k*_seed*.json")):
                r = json.loads(f.read_text())
                if strategy == PARAM and r.get("trials"):
                    setting = setting or r["trials"][0].get("setting")
                    trials = max(trials, len(r["trials"]))
                where = {"candidate": candidate, "strategy": strategy, "budget": int(r["budget"]), "seed": int(r["seed"])}
                if r.get("failed"):
                    failed.append(where | {"run_id": r.get("run_id"), "why": r["failed"]})
                    continue
                rows[strategy].append(where | {"value": float(r["test"][f"test/{metric}"])})
    about = {}
    for candidate, part in views.items():
        model = part.get("model", candidate)
        kept = read_json(sources_dir / model / "summary.json", "pretrain summary")
        what = (kept.get("candidate") or {}).get("note") or ("the experiment's own source" if model == OWN else model)
        depth = part.get("depth")
        about[candidate] = f"{what}; features after hidden block {depth}" if depth else what
    return SourcesReport(
        name,
        metric,
        higher_is_better,
        [int(b) for b in budgets],
        scores,
        pd.DataFrame(rows[PROBE], columns=COLUMNS),
        about,
        list(summary.get("baseline_scores", [])),
        transfer=pd.DataFrame(rows[PARAM], columns=COLUMNS),
        failed=failed,
        setting=setting,
        trials=trials,
        ranked=rank_dir.is_dir() or len(views) == 1,
    )


def agreement(t: SourcesReport, score: str, budget: int, reference: str = PROBE, n_resamples: int = 2000) -> dict | None:
    """Kendall's τ between `score`'s and the `reference`'s means over candidates at `budget`, its 95 %
    bootstrap interval over seeds, and the weighted τ; None with fewer than 3 candidates that have both."""
    from scipy import stats

    s = t.scores[(t.scores.score == score) & (t.scores.budget == budget)].pivot_table(index="seed", columns="candidate", values="value")
    ref = t.reference(reference)
    p = ref[ref.budget == budget].pivot_table(index="seed", columns="candidate", values="value")
    cands = [c for c in s.columns if c in p.columns]
    seeds = [x for x in s.index if x in p.index]
    if len(cands) < 3 or not seeds:
        return None
    s, p = s.loc[seeds, cands].to_numpy(), p.loc[seeds, cands].to_numpy()
    sign = 1.0 if t.higher_is_better else -1.0

    def tau(idx) -> float:
        idx = np.asarray(idx, dtype=int)
        return float(stats.kendalltau(np.nanmean(s[idx], 0), sign * np.nanmean(p[idx], 0)).statistic)

    point = tau(np.arange(len(seeds)))
    low = high = float("nan")
    if len(seeds) >= 3:  # fewer seeds give no interval worth the name
        boot = stats.bootstrap(
            (np.arange(len(seeds)),), tau, n_resamples=n_resamples, method="percentile", vectorized=False, random_state=np.random.default_rng(0)
        )
        low, high = float(boot.confidence_interval.low), float(boot.confidence_interval.high)
    smean, pmean = np.nanmean(s, 0), sign * np.nanmean(p, 0)
    weighted = float(stats.weightedtau(smean, pmean).statistic)
    top, best = cands[int(np.argmax(smean))], cands[int(np.argmax(pmean))]
    return {"tau": point, "low": low, "high": high, "weighted": weighted, "n": len(cands), "seeds": len(seeds), "top": top, "best": best}


def judge(found: Mapping[str, dict], baselines: list[str]) -> dict:
    """Which scores rank the candidates reliably (τ's interval above 0), the best naive baseline's τ, and
    the score that predicted best: the reliable one of highest τ above that baseline over the same
    candidates (τ over fewer candidates, as LEEP's without the inner blocks' probabilities, is not comparable)."""
    reliable = [s for s, a in found.items() if a["low"] > 0]
    present = [b for b in baselines if b in found]
    base = max((found[b]["tau"] for b in present), default=float("nan"))
    n_base = max((found[b]["n"] for b in present), default=0)
    better = [s for s in reliable if s not in baselines and (not present or (found[s]["n"] == n_base and found[s]["tau"] > base))]
    best = max(better, key=lambda s: found[s]["tau"], default=None)
    return {"reliable": reliable, "base": base, "n_base": n_base, "better": better, "best": best, "baselines": present}


def verdict(found: Mapping[str, dict], baselines: list[str], best: str | None, what: str = PHRASE[PROBE]) -> list[str]:
    """One line: the reference's best candidate, which scores rank reliably, and which score predicted
    best, or plainly that none beat the naive baselines."""
    if not found:
        return ["Too few candidates to rank."]
    j = judge(found, baselines)
    out = f"Best candidate by {what} here: `{best}`. " if best else ""
    out += (
        f"The ranking agrees with the ranking by {what} across seeds (τ's interval above 0) for {', '.join(f'`{s}`' for s in j['reliable'])}"
        if j["reliable"]
        else f"No score's ranking agrees with the ranking by {what} across seeds (no τ interval lies above 0)"
    )
    names = ", ".join(f"`{b}`" for b in j["baselines"])
    if j["best"]:
        a = found[j["best"]]
        out += f". **`{j['best']}` predicted best** (τ {a['tau']:+.2f} [{a['low']:+.2f}, {a['high']:+.2f}] over {a['n']} candidates"
        out += f"; the best naive baseline, of {names}, {j['base']:+.2f})." if j["baselines"] else "; no naive baseline was computed)."
    elif j["baselines"]:
        out += f". **No score beat the naive baselines** {names} (best τ {j['base']:+.2f} over the same {j['n_base']} candidates)."
    else:
        out += ". No score ranks reliably, and no naive baseline was computed."
    return [out]


def summary_cell(found: Mapping[str, dict], baselines: list[str]) -> str:
    """The verdicts table's cell: the score that predicted best, or that none beat the baselines."""
    if not found:
        return "too few candidates"
    j = judge(found, baselines)
    if j["best"]:
        return f"`{j['best']}` (τ {found[j['best']]['tau']:+.2f})"
    return f"none beat {', '.join(f'`{b}`' for b in j['baselines'])} (τ {j['base']:+.2f})" if j["baselines"] else "none ranks reliably"


def _means(df: pd.DataFrame, k: int) -> pd.Series:
    return df[df.budget == k].groupby("candidate")["value"].mean()


def _ranking(values: pd.Series, higher_is_better: bool) -> list[str]:
    """Candidates best first (ties by name)."""
    sign = -1.0 if higher_is_better else 1.0
    return sorted(values.index, key=lambda c: (sign * values[c], c))


def figure_path(name: str, k: int) -> str:
    """A budget's figure, relative to reports/: one folder per experiment (a DVC output)."""
    return f"{figure_dir(name)}/k{k}.png"


def figure_dir(name: str) -> str:
    return f"figures/{name}_sources"


def agreements(t: SourcesReport) -> dict[tuple[int, str], dict[str, dict]]:
    """{(budget, reference): {score: its agreement}} for the scores that rank 3 candidates or more."""
    found: dict[tuple[int, str], dict[str, dict]] = {}
    for k in t.budgets:
        for ref in REFERENCES:
            found[k, ref] = {s: a for s in dict.fromkeys(t.scores.score) if (a := agreement(t, s, k, ref)) is not None}
    return found


def render(t: SourcesReport, found: Mapping | None = None) -> str:
    score_names = list(dict.fromkeys(t.scores.score))
    setting = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in (t.setting or {}).items())
    lines = [
        f"# {t.name}: which source?",
        "",
        "Every candidate source was scored by `extract` from each budget's labelled target rows alone, before any fine-tuning.",
        f"Two references rank the candidates by target test {t.metric}, mean over seeds, fitted on the same labelled rows:",
        f"the **linear probe** (`{PROBE}`: a linear model on the candidate's features) and **parameter transfer** (`{PARAM}`:",
        "the candidate's network fine-tuned on the target; a layer view `<candidate>:block<i>` transfers its first i blocks,",
        "the rest and the head start afresh).",
        *(
            [
                f"Parameter transfer is **tuned** as the finetune stage tunes it: {t.trials} trial settings per result (trial 0 the configured",
                f"one{f', {setting}' if setting else ''}; the others drawn from the search space of conf/transfer/{PARAM}.yaml), the trial",
                "chosen by cross-validation on the budget's labelled rows (`transfer.tuning`); the own source's result is the finetune stage's.",
            ]
            if t.trials > 1
            else [
                f"Parameter transfer runs with its configured setting{f' ({setting})' if setting else ''} of conf/transfer/{PARAM}.yaml:",
                "**untuned** (`transfer.tuning.trials=1`); the own source's result is the finetune stage's.",
            ]
        ),
        "Kendall's τ compares a score's ranking of the candidates with a reference's (1: the same order, 0: unrelated,",
        "−1: reversed), with a 95 % bootstrap interval over seeds (3 seeds or more); weighted τ counts swaps near the top more.",
        "A score is worth using where its τ beats the naive baselines " + ", ".join(f"`{b}`" for b in t.baselines) + " over the same candidates.",
        "",
    ]
    if not t.ranked:
        lines += [f"No results of the rank stage (artifacts/{t.name}/rank): run `pipeline rank exp={t.name}`; only the own source is fine-tuned.", ""]
    if t.probe.empty and t.transfer.empty:
        lines += ["No fine-tuned results: nothing to rank the scores against.", ""]
    found = agreements(t) if found is None else found
    lines += [
        "## Verdicts",
        "",
        "Per budget, the score that predicted each reference's ranking best (τ's interval above 0 and above the best naive baseline's τ).",
        "",
    ]
    lines += ["| k | " + " | ".join(f"against {PHRASE[ref]}" for ref in REFERENCES) + " |", "|---|" + "---|" * len(REFERENCES)]
    lines += [f"| {k} | " + " | ".join(summary_cell(found[k, ref], t.baselines) for ref in REFERENCES) + " |" for k in t.budgets]
    lines += ["", "## Candidates", "", "| candidate | what it is |", "|---|---|", *[f"| `{c}` | {what} |" for c, what in t.about.items()]]
    for k in t.budgets:
        means = {ref: _means(t.reference(ref), k) for ref in REFERENCES}
        rankings = {label: _ranking(means[ref], t.higher_is_better) for ref, label in REFERENCES.items()}
        at_k = t.scores[t.scores.budget == k].groupby(["candidate", "score"])["value"].mean()
        for s in score_names:
            rankings[s] = _ranking(at_k.xs(s, level="score") if s in at_k.index.get_level_values("score") else pd.Series(dtype=float), True)
        order = list(rankings[REFERENCES[PARAM]] or rankings[REFERENCES[PROBE]])
        order += [c for c in t.about if c not in order]
        lines += ["", f"## k = {k} labelled rows per class", ""]
        lines += [f"| candidate | probe test {t.metric} | param transfer test {t.metric} | " + " | ".join(score_names) + " |"]
        lines.append("|" + "---|" * (len(score_names) + 3))
        for c in order:
            refs = [_cell(t.reference(ref), c, k) for ref in REFERENCES]
            cells = [f"{at_k[(c, s)]:.3f}" if (c, s) in at_k.index else "–" for s in score_names]
            lines.append(f"| `{c}` | " + " | ".join(refs) + " | " + " | ".join(cells) + " |")
        lines += ["", "Rankings, best first (the two references, then each score):", ""]
        lines += ["| rank | " + " | ".join(rankings) + " |", "|---|" + "---|" * len(rankings)]
        depth = max(len(r) for r in rankings.values())
        for i in range(depth):
            lines.append(f"| {i + 1} | " + " | ".join(f"`{r[i]}`" if i < len(r) else "" for r in rankings.values()) + " |")
        lines += ["", f"![k = {k}: each score against fine-tuned test {t.metric}]({figure_path(t.name, k)})"]
        for ref, label in REFERENCES.items():
            lines += ["", f"### Against {PHRASE[ref]}", ""]
            lines += ["| score | Kendall τ [95 % interval] | weighted τ | its top candidate | candidates |", "|---|---|---|---|---|"]
            for s in score_names:
                a = found[k, ref].get(s)
                if a is None:
                    lines.append(f"| {s} | – | – | – | fewer than 3 |")
                    continue
                shown = f"{s} (baseline)" if s in t.baselines else s
                hit = "" if a["top"] == a["best"] else f" (not the best by {PHRASE[ref]})"
                lines.append(
                    f"| {shown} | {a['tau']:+.2f} [{a['low']:+.2f}, {a['high']:+.2f}] | {a['weighted']:+.2f} | `{a['top']}`{hit} | {a['n']} |"
                )
            best = rankings[label][0] if rankings[label] else None
            lines += ["", *verdict(found[k, ref], t.baselines, best, PHRASE[ref])]
    lines += _failed(t)
    return "\n".join(lines) + "\n"


def _cell(df: pd.DataFrame, candidate: str, k: int) -> str:
    v = df[(df.budget == k) & (df.candidate == candidate)]["value"]
    if v.empty:
        return "–"
    return f"{v.mean():.3f} ± {_half_width(v.sem(), v.count()):.3f}"


def _failed(t: SourcesReport) -> list[str]:
    from pipeline.report import failed_runs

    rows = [[f"`{f['candidate']}`", f["strategy"], f["budget"], f["seed"], f["why"], f"`{f['run_id']}`"] for f in t.failed]
    consequence = "its seed is left out of the candidate's mean and of τ's bootstrap for that reference."
    return failed_runs(len(rows), consequence, ["candidate", "strategy", "k", "seed", "why", "MLflow run"], rows)


def figures(t: SourcesReport, found: Mapping | None = None) -> dict[str, object]:
    """{k<k>.png: the budget's figure}: each score (x) against each reference's test metric (y)."""
    from pipeline.report.figures import scores_against_results

    found = agreements(t) if found is None else found
    out = {}
    score_names = list(dict.fromkeys(t.scores.score))
    for k in t.budgets:
        rows = []
        at_k = t.scores[t.scores.budget == k].groupby(["candidate", "score"])["value"].mean()
        for ref in REFERENCES:
            means = _means(t.reference(ref), k)
            rows += [{"candidate": c, "score": s, "reference": ref, "x": v, "y": means[c]} for (c, s), v in at_k.items() if c in means.index]
        taus = {(s, ref): found[k, ref][s]["tau"] for ref in REFERENCES for s in found[k, ref]}
        points = pd.DataFrame(rows, columns=["candidate", "score", "reference", "x", "y"])
        out[f"k{k}.png"] = scores_against_results(
            points,
            score_names,
            REFERENCES,
            taus,
            t.metric,
            f"{t.name}, k = {k}: each score against the fine-tuned test {t.metric} (means over seeds)",
            t.baselines,
        )
    return out


def _half_width(sem: float, n: int) -> float:
    from scipy import stats

    return float(stats.t.ppf(0.975, n - 1) * sem) if n > 1 and np.isfinite(sem) else float("nan")
