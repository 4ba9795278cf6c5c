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
    from pipeline.stages import experiment_kind

    return run_multitask(cfg) if experiment_kind(cfg) == "multitask" else run_transfer(cfg)


def run_transfer(cfg: DictConfig) -> dict:
    from pipeline.data import TaskSpec
    from pipeline.io import atomic_file, read_json, umask, write_json
    from pipeline.report import load_results, strategy_order
    from pipeline.report.figures import label_efficiency
    from pipeline.tracking import Tracker, tracking_uri

    name, exp = experiment(cfg, "transfer")
    paths = layout(cfg, name)
    df = load_results(paths.finetune)
    source = read_json(paths.source / "summary.json", "pretrain summary")
    knowledge = read_json(paths.knowledge / "summary.json", "extract summary")
    import json

    meta = json.loads((paths.data / "target" / "meta.json").read_text())
    task, data_hash = TaskSpec(**meta["tasks"][0]), meta["provenance"]["content_hash"]
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
    os.chmod(tmp_fig, 0o666 & ~umask())  # mkstemp makes 0600
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
    with tracker.run("report", data_hash=data_hash, params={"n_runs": len(df)},
                     source_run_id=source["run_id"]) as run_id:
        tracker.log_artifact(run_id, md_path)
        tracker.log_artifact(run_id, fig_path, "figures")
    print(f"report {name}: {md_path} and {fig_path} ({len(df)} runs); MLflow UI: mlflow ui --backend-store-uri {tracking_uri(cfg.tracking.uri)}")
    return metrics_out


def render_multitask(name: str, exp, ts, df, dm, stats, classic_dm, histories: dict, chosen: dict, histories_fig: str,
                     results_fig: str, mlflow_uri: str) -> str:
    from pipeline.report import fmt
    from pipeline.report.multitask import BASELINE, primary

    kinds = {t.name: t.kind for t in ts.tasks}
    seeds = sorted(int(s) for s in df[~df.classic].seed.unique())
    lines = [f"# {name}: does training the tasks together help?", ""]
    lines += [
        f"- Data: `{exp.data._target_.rsplit('.', 1)[1]}`; {len(ts.tasks)} tasks "
        f"({', '.join(sorted({t.kind for t in ts.tasks}))}); {ts.x.shape[0]} samples, {ts.x.shape[1]} features; "
        f"splits train/val/test {len(ts.splits['train'])}/{len(ts.splits['val'])}/{len(ts.splits['test'])}.",
        f"- Baseline for Δm and negative transfer: `{BASELINE}` (one independent network per task, same family and size,"
        f" same budget, trained in this experiment), paired by seed; seeds {seeds}.",
        "- Δm = mean over tasks of the relative change of the task's primary metric (accuracy, or RMSE with its sign"
        " flipped) against that baseline, in %; higher is better.",
        "",
        "## Δm against the single-task baseline (mean ± std over seeds)",
        "",
        "| method | Δm (%) | seeds with Δm > 0 | tasks worse than baseline |",
        "|---|---|---|---|",
    ]
    worse = stats.groupby("method")["worse"].sum()
    mean_dm = dm.groupby("method").delta_m.mean()
    for method in sorted(mean_dm.index, key=lambda m: (m != BASELINE, -mean_dm[m])):
        g = dm[dm.method == method].delta_m
        lines.append(f"| {method} | {fmt(g.mean(), g.std(ddof=1) if len(g) > 1 else 0.0, 2)} | "
                     f"{'–' if method == BASELINE else f'{int((g > 0).sum())}/{len(g)}'} | {int(worse.get(method, 0))}/{len(ts.tasks)} |")
    neural = mean_dm.drop([BASELINE, *classic_dm], errors="ignore")
    lines += ["", "## Findings", ""]
    if len(neural):
        top = neural.idxmax()
        wins, n = int((dm[dm.method == top].delta_m > 0).sum()), int((dm.method == top).sum())
        if neural.max() <= 0:
            verdict = "no joint method beats the single-task baseline here"
        elif wins == n:
            verdict = f"joint training helps here, on every seed ({wins}/{n})"
        else:
            verdict = f"ahead on average but on {wins}/{n} seeds only: not a consistent gain"
        lines.append(f"- Best joint neural method: `{top}`, Δm {neural.max():+.2f}% — {verdict}.")
        losing = [m for m, v in neural.sort_values().items() if v < 0]
        if losing:
            lines.append(f"- Below the single-task baseline (negative transfer on average): {', '.join(f'`{m}`' for m in losing)}.")
    if classic_dm:
        lines.append("- Classic baselines against the same single-task network: " + ", ".join(f"`{m}` Δm {v:+.2f}%" for m, v in classic_dm.items()) + ".")
        beaten_by = [m for m, v in classic_dm.items() if len(neural) and v > neural.max()]
        if beaten_by:
            lines.append(f"- {', '.join(f'`{m}`' for m in beaten_by)} beats every neural method: here a linear model is the one to beat,"
                         " and no sharing scheme or weighting does.")
    equal = [h for h in histories.get("equal", []) if "grad/cos_mean" in h]
    if equal:
        cos = [h["grad/cos_mean"] for h in equal]
        lines.append(f"- Gradient conflict under hard sharing with equal weights (seed {min(seeds)}): the task gradients' mean cosine"
                     f" on the shared trunk averaged {sum(cos) / len(cos):+.3f} over {len(cos)} epochs (lowest pairwise"
                     f" {min(h['grad/cos_min'] for h in equal):+.3f}); negative values are the conflict gradient aggregators target.")
    for method, picks in chosen.items():
        text = ", ".join(f"{k} = {values}" for k, (values, _) in picks.items())
        edge = [k for k, (values, grid) in picks.items() if grid and any(v in (min(grid), max(grid)) and v != 0 for v in values)]
        lines.append(f"- `{method}`: {text} (chosen on validation data, by seed)"
                     + (f"; {', '.join(edge)} at the edge of its `auto_grid`: widen the grid." if edge else "."))
    tasks = sorted(kinds)
    if len(tasks) <= 12:
        metric_names = {t: primary(kinds[t])[0] for t in tasks}
        lines += ["", "## Per task (test " + ", ".join(sorted(set(metric_names.values()))) + "; ⚠ = worse than the baseline)", "",
                  "| method | " + " | ".join(f"{t} ({metric_names[t]})" for t in tasks) + " |", "|" + "---|" * (len(tasks) + 1)]
        cell = {(r.method, r.task): r for r in stats.itertuples()}
        for method in sorted(stats.method.unique(), key=lambda m: (m != BASELINE, m)):
            lines.append(f"| {method} | " + " | ".join(
                (fmt(cell[method, t].mean, cell[method, t].std) + (" ⚠" if cell[method, t].worse else "")) if (method, t) in cell else "–"
                for t in tasks) + " |")
    else:
        lines += ["", f"{len(tasks)} tasks: the per-task table is in `reports/metrics/{name}.json`; the figure shows each method's per-task change."]
    lines += ["", "## Figures", "", f"![per-task results]({results_fig})", "", f"![task weights and gradient conflict]({histories_fig})", "",
              "## Reproduce and inspect", "",
              f"`dvc repro` rebuilds this file; every row is a set of runs in the MLflow experiment `{name}` (`mlflow ui --backend-store-uri {mlflow_uri}`),"
              " named `multitask/<scheme>+<weighting>/seed<seed>`, with task weights and gradient cosines logged per epoch.", ""]
    return "\n".join(lines)


def run_multitask(cfg: DictConfig) -> dict:
    from pipeline.data import TaskSet
    from pipeline.io import atomic_file, write_json
    from pipeline.report.figures import per_task_results, weights_over_training
    from pipeline.report.multitask import BASELINE, delta_m, per_task, read_results, table
    from pipeline.tracking import Tracker, tracking_uri

    name, exp = experiment(cfg, "multitask")
    paths = layout(cfg, name)
    ts = TaskSet.load(paths.data / "tasks")
    kinds = {t.name: t.kind for t in ts.tasks}
    records = read_results(paths.multitask)
    df = table(records)
    dm = delta_m(df, kinds)
    stats = per_task(df, kinds)
    classic_methods = sorted(df[df.classic].method.unique())
    classic_dm = {m: float(dm[dm.method == m].delta_m.mean()) for m in classic_methods}
    histories, chosen = {}, {}
    for r in records:
        if r["scheme"] == "hard" and r["seed"] == min(cfg.seeds) and r.get("history"):
            histories[r["weighting"]] = r["history"]
        # Knobs set to `auto` in the scheme's config: which value validation picked, per seed.
        autos = [k for k, v in (cfg.multitask.archs.get(r["scheme"]) or {}).items() if v == "auto"]
        grid = cfg.multitask.archs.get(r["scheme"], {}).get("auto_grid") or {}
        for k in autos:
            values, _ = chosen.setdefault(f"{r['scheme']}+{r['weighting']}", {}).setdefault(k, ([], list(grid.get(k, []))))
            values.append(r["arch"][k])

    reports = Path(cfg.paths.reports)
    md_path = reports / f"{name}.md"
    results_fig = reports / "figures" / f"{name}_per_task.png"
    weights_fig = reports / "figures" / f"{name}_task_weights.png"
    tmp_dir = Path(tempfile.mkdtemp(dir=reports.parent if reports.parent.exists() else None))
    try:
        per_task_results(stats, tmp_dir / results_fig.name, f"{name}: per-task test results")
        weights_over_training(histories, tmp_dir / weights_fig.name, f"{name}: task weights (hard sharing, seed {min(cfg.seeds)})")
        text = render_multitask(name, exp, ts, df, dm, stats, classic_dm, histories, chosen, f"figures/{weights_fig.name}",
                                f"figures/{results_fig.name}", cfg.tracking.uri)
        results_fig.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(md_path) as fh:
            fh.write(text)
        os.replace(tmp_dir / results_fig.name, results_fig)
        os.replace(tmp_dir / weights_fig.name, weights_fig)
    finally:
        import shutil

        shutil.rmtree(tmp_dir, ignore_errors=True)
    metrics_out = {
        "delta_m": {m: round(float(g.delta_m.mean()), 3) for m, g in dm.groupby("method")},
        "per_task": {m: {r.task: round(float(r.mean), 4) for r in g.itertuples()} for m, g in stats.groupby("method")},
    }
    write_json(reports / "metrics" / f"{name}.json", metrics_out)
    with atomic_file(reports / "plots" / f"{name}.csv") as fh:
        fh.write("method,delta_m\n" + "".join(f"{m},{v}\n" for m, v in metrics_out["delta_m"].items()))
    tracker = Tracker(name, cfg.tracking.uri)
    n_runs = int(df[["method", "seed"]].drop_duplicates().shape[0])
    with tracker.run("report", data_hash=ts.data_hash, params={"n_runs": n_runs, "baseline": BASELINE}) as run_id:
        tracker.log_metrics(run_id, {f"delta_m/{m.replace('+', '.')}": v for m, v in metrics_out["delta_m"].items()})  # MLflow keys allow no "+"
        tracker.log_artifact(run_id, md_path)
        tracker.log_artifact(run_id, results_fig, "figures")
        tracker.log_artifact(run_id, weights_fig, "figures")
    # Each multitask run also gets its own Δm (against the baseline at its seed), to sort runs by in the UI.
    # Classic baselines are fitted once and compared with every baseline seed: they get the mean.
    neural = df[~df.classic].groupby(["method", "seed"]).run_id.first()
    for r in dm.itertuples():
        if (r.method, r.seed) in neural.index and neural[r.method, r.seed]:
            tracker.log_metrics(neural[r.method, r.seed], {"test/delta_m": r.delta_m})
    for method, run in df[df.classic].groupby("method").run_id.first().items():
        if run:
            tracker.log_metrics(run, {"test/delta_m": classic_dm[method]})
    print(f"report {name}: {md_path}, {results_fig}, {weights_fig}; MLflow UI: mlflow ui --backend-store-uri {tracking_uri(cfg.tracking.uri)}")
    return metrics_out


main = hydra_entry(run)
