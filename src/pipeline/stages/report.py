"""report: the experiment's comparison, from the results on disk of the current configuration.

Transfer experiments (`report.transfer`): reports/<experiment>.md (strategy x label budget, mean
over seeds with 95 % intervals, paired gain over `transfer.baseline` with its interval) and the
label-efficiency figure; `report.sources`: reports/<experiment>_sources.md (the candidate sources
ranked by each score against fine-tuning from each) and its figures, one per budget. Multitask
experiments (`report.multitask`): Δm of every method against `multitask.baseline` (per-task mean and
over test rows; `delta_m` in the metrics and plot is the one the verdict rests on), per-task changes
and the task-weight figure. Both also write the compact DVC metrics file (means only) and the plots
file (`report.outputs`, all at once), and log the report and figures as artifacts of a `report` run
in MLflow with its summary metrics.
"""

from __future__ import annotations

from omegaconf import DictConfig

from pipeline.stages import hydra_entry


def mlflow_ui(uri: str) -> str:
    """The command that opens the UI on `uri`, runnable as printed: `mlflow` when the shell finds this
    environment's, else its path (a shell without the activated environment finds none, or another).
    A tracking server serves its own UI: its address."""
    import os
    import shutil
    import sys
    from pathlib import Path

    if uri.startswith(("http://", "https://")):
        return uri
    here = Path(sys.executable).parent / "mlflow"
    found = shutil.which("mlflow")
    exe = "mlflow" if found and Path(found).resolve() == here.resolve() else os.path.relpath(here) if here.is_relative_to(Path.cwd()) else str(here)
    return f"{exe} ui --backend-store-uri {uri}"


def metrics_dir(rows: dict) -> object:
    """reports/metrics/<exp>/ for `dvc metrics show`: one small file per row, so the table has a row
    per strategy or method and a handful of columns (budgets or Δm) rather than one wide row per experiment."""
    from pipeline.report.outputs import Directory

    return Directory({f"{row}.json": values for row, values in rows.items()})


def shown_store(cfg: DictConfig) -> str:
    """The store a report names: MLFLOW_TRACKING_URI when set (a server), else tracking.uri as written,
    so that a committed report does not name the path of the clone it was made in."""
    import os

    return os.environ.get("MLFLOW_TRACKING_URI") or cfg.tracking.uri


def run(cfg: DictConfig) -> dict:
    from pipeline.stages import experiment_kind
    from pipeline.tracking import check_store

    kind = experiment_kind(cfg)
    check_store(cfg.tracking.uri)
    return run_multitask(cfg) if kind == "multitask" else run_transfer(cfg)


def run_transfer(cfg: DictConfig) -> dict:
    from pipeline.report import outputs, sources, transfer
    from pipeline.stages import layout
    from pipeline.tracking import tracking_uri

    t = transfer.load(cfg)
    name, fig = t.name, f"figures/{t.name}_label_efficiency.png"
    metrics = transfer.dvc_metrics(t)
    paths = layout(cfg, name)
    zoo = sources.load(paths.knowledge, paths.finetune, paths.rank, paths.sources, name, t.task.primary, t.task.higher_is_better, t.exp.budgets)
    found = sources.agreements(zoo)  # the bootstraps, once for the text and the figures
    zoo_figs = sources.figures(zoo, found)
    written = outputs.write(
        cfg.paths.reports,
        {
            f"{name}.md": transfer.render(t, fig, shown_store(cfg)),
            f"{name}_sources.md": sources.render(zoo, found),
            fig: transfer.figure(t),
            sources.figure_dir(name): outputs.Directory(zoo_figs),
            f"metrics/{name}": metrics_dir(metrics),
            f"plots/{name}.csv": transfer.dvc_plot(t),
        },
    )
    outputs.log(
        cfg,
        name,
        {k: written[k] for k in (f"{name}.md", f"{name}_sources.md", fig)}
        | {f"{sources.figure_dir(name)}/{f}": written[sources.figure_dir(name)] / f for f in zoo_figs},
        data_hash=t.data_hash,
        source_run_id=t.source["run_id"],
        params={"n_runs": t.n_runs, "n_stale": len(t.stale), "baseline": t.baseline},
        metrics=transfer.mlflow_metrics(t),
    )
    print(
        f"report {name}: {written[f'{name}.md']} and {written[fig]} ({len(t.df)} runs, {len(t.stale)} stale ignored);"
        f" MLflow UI: {mlflow_ui(tracking_uri(cfg.tracking.uri))}"
    )
    return metrics


def run_multitask(cfg: DictConfig) -> dict:
    from pipeline.report import multitask, outputs
    from pipeline.tracking import tracking_uri

    t = multitask.load(cfg)
    name = t.name
    results_fig, weights_fig = f"figures/{name}_per_task.png", f"figures/{name}_task_weights.png"
    metrics = multitask.dvc_metrics(t)
    results_plot, weights_plot = multitask.figures(t)
    written = outputs.write(
        cfg.paths.reports,
        {
            f"{name}.md": multitask.render(t, cfg.multitask.archs, weights_fig, results_fig, shown_store(cfg)),
            results_fig: results_plot,
            weights_fig: weights_plot,
            f"metrics/{name}": metrics_dir(metrics),
            f"plots/{name}.csv": multitask.dvc_plot(t),
        },
    )
    n_runs = int(t.df[["method", "seed"]].drop_duplicates().shape[0])
    outputs.log(
        cfg,
        name,
        {k: written[k] for k in (f"{name}.md", results_fig, weights_fig)},
        data_hash=t.ts.data_hash,
        params={
            "n_runs": n_runs,
            "n_stale": len(t.stale),
            "baseline": t.baseline,
            "n_tasks_delta_m": len(t.tasks_used[0]),
            "n_tasks_delta_m_per_task": len(t.tasks_used[0]) - len(t.zero_baseline),
            "delta_m_basis": t.basis[0],
        },
        metrics={outputs.metric_key(f"{form}/{m}"): v for form, values in multitask.summary(t).items() for m, v in values.items()},
        run_metrics=multitask.run_delta_m(t),
    )
    print(f"report {name}: {', '.join(str(p) for p in written.values())}; MLflow UI: {mlflow_ui(tracking_uri(cfg.tracking.uri))}")
    return metrics


main = hydra_entry(run)
