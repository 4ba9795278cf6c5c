"""report: the experiment's comparison, from the fine-tune results on disk.

Writes reports/<experiment>.md (strategy x label budget, mean ± std over seeds, paired gain over
`scratch`, negative transfer flagged), the label-efficiency figure, and the DVC metrics and plots
files; the report and figure are also logged as artifacts of a `report` run in MLflow.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from omegaconf import DictConfig

from pipeline.stages import experiment, hydra_entry, layout


def render(name: str, exp, stats, df, metrics: list[str], primary: str, higher: bool, task, source: dict, knowledge: dict,
           mlflow_uri: str, figure: str, unit: str) -> str:
    from pipeline.report import BASELINE, fmt, strategy_order

    budgets = sorted(int(b) for b in df.budget.unique())
    order = strategy_order(df.strategy)
    seeds = sorted(int(s) for s in df.seed.unique())
    lines = [f"# {name}: does the source help the target?", ""]
    lines += [
        f"- Source: `{exp.source._target_.rsplit('.', 1)[1]}` {dict(_plain(exp.source))}; target: `{exp.target._target_.rsplit('.', 1)[1]}` {dict(_plain(exp.target))}.",
        f"- Target task `{task.name}` ({task.kind}{f', {task.n_outputs} classes' if task.classes else ''}); {unit} k ∈ {budgets}; seeds {seeds} (a seed fixes the labelled subset and the initialisation, so gains are paired).",
        f"- Source model: test {primary} {source['test'].get('test/' + primary, float('nan')):.3f} on the source's own test split (MLflow run `{source['run_id']}`).",
    ]
    if "zero_shot_acc" in knowledge:
        lines.append(f"- Domain gap: the source model, with no target labels at all, scores accuracy {knowledge['zero_shot_acc']:.3f} on the target test split.")
    if "leep" in knowledge:
        lines.append(f"- Transferability (LEEP of the source's predictions on the target train split): {knowledge['leep']:.3f}.")
    lines += ["", f"## Test {primary} (mean ± std over {len(seeds)} seeds)", ""]
    header = "| strategy | " + " | ".join(f"k={b}" for b in budgets) + " |"
    lines += [header, "|" + "---|" * (len(budgets) + 1)]
    cell = {(r.strategy, r.budget): r for r in stats.itertuples()}
    for s in order:
        lines.append(f"| {s} | " + " | ".join(fmt(cell[s, b].mean, cell[s, b].std) if (s, b) in cell else "–" for b in budgets) + " |")
    if BASELINE in order and len(order) > 1:
        lines += ["", f"## Gain over `{BASELINE}` in {primary} (paired by seed: mean ± std, seeds won)", ""]
        lines += [header, "|" + "---|" * (len(budgets) + 1)]
        negatives = []
        for s in order[1:]:
            cells = []
            for b in budgets:
                if (s, b) not in cell:
                    cells.append("–")
                    continue
                r = cell[s, b]
                flag = " ⚠ negative transfer" if r.negative else ""
                if r.negative:
                    negatives.append((s, b, r.gain, r.wins))
                cells.append(f"{r.gain:+.3f} ± {r.gain_std:.3f} ({r.wins}/{r.n}){flag}")
            lines.append(f"| {s} | " + " | ".join(cells) + " |")
        lines += ["", "## Findings", ""]
        for b in budgets:
            at_b = stats[stats.budget == b]
            best = at_b.loc[at_b["mean"].idxmax() if higher else at_b["mean"].idxmin()]
            lines.append(f"- k={b}: best is `{best.strategy}` ({fmt(best['mean'], best['std'])}).")
        if negatives:
            # Losing on every seed is a consistent effect; losing on average only may be seed noise.
            every = [f"`{s}` at k={b} ({g:+.3f})" for s, b, g, w in negatives if w == 0]
            some = [f"`{s}` at k={b} ({g:+.3f})" for s, b, g, w in negatives if w > 0]
            if every:
                lines.append(f"- Negative transfer on every seed (below `{BASELINE}` each time): {', '.join(every)}.")
            if some:
                lines.append(f"- Below `{BASELINE}` on average but not on every seed: {', '.join(some)}.")
        else:
            lines.append(f"- No strategy falls below `{BASELINE}` on average at any budget.")
    others = [m for m in metrics if m != primary]
    for m in others:
        sub = stats_for(df, m)
        lines += ["", f"## Test {m} (mean ± std)", "", header, "|" + "---|" * (len(budgets) + 1)]
        c2 = {(r.strategy, r.budget): r for r in sub.itertuples()}
        for s in order:
            lines.append(f"| {s} | " + " | ".join(fmt(c2[s, b].mean, c2[s, b].std) if (s, b) in c2 else "–" for b in budgets) + " |")
    lines += ["", "## Figure", "", f"![label efficiency]({figure})", "",
              "## Reproduce and inspect", "",
              f"`dvc repro` rebuilds this file from the pipeline; every number above is a fine-tune run in the MLflow experiment `{name}`"
              f" (`mlflow ui --backend-store-uri {mlflow_uri}`), named `finetune/<strategy>/k<k>/seed<seed>`.", ""]
    return "\n".join(lines)


def _plain(node) -> dict:
    from omegaconf import OmegaConf

    return {k: v for k, v in OmegaConf.to_container(node).items() if k != "_target_"}


def stats_for(df, metric):
    from pipeline.report import summarise

    return summarise(df, metric, higher_is_better=metric not in ("rmse",))


def run(cfg: DictConfig) -> dict:
    from pipeline.data import TaskSpec
    from pipeline.io import atomic_file, read_json, write_json
    from pipeline.report import load_results, strategy_order
    from pipeline.report.figures import label_efficiency
    from pipeline.tracking import Tracker, tracking_uri

    name, exp = experiment(cfg, "transfer")
    paths = layout(cfg, name)
    df = load_results(paths.finetune)
    source = read_json(paths.source / "summary.json", "pretrain summary")
    knowledge = read_json(paths.knowledge / "summary.json", "extract summary")
    import json

    task = TaskSpec(**json.loads((paths.data / "target" / "meta.json").read_text())["tasks"][0])
    metrics = ["acc", "f1"] if task.kind == "classification" else ["rmse", "r2"]
    primary, higher = metrics[0], task.kind == "classification"
    unit = "labels per class" if task.kind == "classification" else "labelled rows"
    stats = stats_for(df, primary)

    reports = Path(cfg.paths.reports)
    md_path, fig_path = reports / f"{name}.md", reports / "figures" / f"{name}_label_efficiency.png"
    ref = knowledge.get("zero_shot_acc")
    fig_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_fig = tempfile.mkstemp(suffix=".png", dir=fig_path.parent)
    os.close(fd)
    label_efficiency(stats, primary, tmp_fig, f"{name}: {primary} vs {unit}", ref, "source model, no target labels" if ref is not None else "")
    text = render(name, exp, stats, df, metrics, primary, higher, task, source, knowledge, cfg.tracking.uri,
                  f"figures/{fig_path.name}", unit)
    # Means only: `dvc exp show` / `dvc metrics diff` stay readable; spreads and gains are in the report.
    metrics_out = {s: {f"k{r.budget}": round(float(r.mean), 4) for r in stats[stats.strategy == s].itertuples()}
                   for s in strategy_order(stats.strategy)}
    wide = stats.pivot(index="budget", columns="strategy", values="mean")[strategy_order(stats.strategy)]
    wide.index.name = "labels_per_class"

    with atomic_file(md_path) as fh:
        fh.write(text)
    os.replace(tmp_fig, fig_path)
    write_json(reports / "metrics" / f"{name}.json", metrics_out)
    with atomic_file(reports / "plots" / f"{name}.csv") as fh:
        wide.round(4).to_csv(fh)

    tracker = Tracker(name, cfg.tracking.uri)
    run_id = tracker.start("report", "all", None, knowledge.get("source_run_id", ""), params={"n_runs": len(df)},
                           source_run_id=source["run_id"])
    tracker.log_artifact(run_id, md_path)
    tracker.log_artifact(run_id, fig_path, "figures")
    tracker.finish(run_id)
    print(f"report {name}: {md_path} and {fig_path} ({len(df)} runs); MLflow UI: mlflow ui --backend-store-uri {tracking_uri(cfg.tracking.uri)}")
    return metrics_out


main = hydra_entry(run)
