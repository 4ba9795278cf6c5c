"""The report's parts on small fake result sets: Δm over one task set, what the text says about it,
the label-efficiency axis, the task-weight figure and its caption, and the all-or-nothing outputs."""

from __future__ import annotations

import json
import re

import matplotlib
import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from pipeline.data import TaskSet, TaskSpec
from pipeline.errors import PipelineError
from pipeline.report import delta_m as deltas
from pipeline.report import multitask as mt
from pipeline.report import outputs, transfer

BASE = "single_task+equal"
TASKS = [TaskSpec("a", "classification"), TaskSpec("b", "classification"), TaskSpec("c", "regression")]


def _record(method: str, seed: int, values: dict[str, float], classic: bool = False, history: list | None = None) -> dict:
    scheme, weighting = method.split("+")
    metric = {t.name: t.primary for t in TASKS}
    r = {
        "scheme": scheme,
        "weighting": weighting,
        "seed": seed,
        "run_id": f"{method}-{seed}",
        "test": {f"test/{task}/{metric[task]}": v for task, v in values.items()},
    }
    return r | ({"classic": True} if classic else {}) | ({"history": history} if history else {})


def _history(weights: tuple[float, float, float] | None, cos: float | None = None, epochs: int = 3) -> list[dict]:
    out = []
    for e in range(epochs):
        h = {"epoch": e, **{f"weight/{t.name}": (1.0 if weights is None else w * (1 + e)) for t, w in zip(TASKS, weights or (1, 1, 1))}}
        out.append(h | ({"grad/cos_mean": cos - 0.1 * e, "grad/cos_min": cos - 0.5} if cos is not None else {}))
    return out


# --------------------------------------------------------------------------------------------------
# Δm over the same tasks for every method (defect 7)


def test_delta_m_averages_every_method_over_the_same_tasks():
    # c has fewer than 2 test labels in `partial`'s run, so that run reports no c: before, `partial`
    # averaged a and b only while `good` averaged a, b and c, so the two Δm were not comparable.
    records = [
        _record(BASE, 0, {"a": 0.5, "b": 0.8, "c": 2.0}),
        _record("good+equal", 0, {"a": 0.55, "b": 0.88, "c": 3.0}),
        _record("partial+equal", 0, {"a": 0.55, "b": 0.88}),
    ]
    df = mt.table(records)
    used, left_out = deltas.common_tasks(df, TASKS, BASE)
    assert used == ["a", "b"] and left_out == {"c": ["partial+equal"]}
    dm = deltas.delta_m(df, TASKS, BASE).set_index("method").delta_m
    assert dm["good+equal"] == pytest.approx(10.0)  # +10% on a and b; c's -50% is out for everyone
    assert dm["partial+equal"] == pytest.approx(10.0)
    assert dm[BASE] == pytest.approx(0.0)


def test_delta_m_signs_and_baseline_from_the_argument():
    records = [_record("hard+equal", 0, {"a": 0.5, "b": 0.5, "c": 2.0}), _record(BASE, 0, {"a": 0.4, "b": 0.5, "c": 1.0})]
    dm = deltas.delta_m(mt.table(records), TASKS, "hard+equal").set_index("method").delta_m
    # against hard+equal: a -20%, b 0, c RMSE halved = +50% (lower is better) -> +10
    assert dm[BASE] == pytest.approx(10.0)
    with pytest.raises(PipelineError, match="multitask.baseline='nope'"):
        deltas.delta_m(mt.table(records), TASKS, "nope")


def _taskset(n_test_c: int) -> TaskSet:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, (20, 3)).astype("float32")
    test = np.arange(10, 20)
    y[test[n_test_c:], 2] = np.nan
    return TaskSet(
        x=rng.normal(size=(20, 4)).astype("float32"),
        y=y,
        tasks=TASKS,
        splits={"train": np.arange(0, 6), "val": np.arange(6, 10), "test": test},
        input_shape=[4],
        provenance={"content_hash": "h"},
    )


def _report(records, skipped=None, stale=(), n_test_c=1) -> mt.MultitaskReport:
    exp = OmegaConf.create({"data": {"_target_": "pipeline.data.multitask.synthetic_linear"}})
    return mt.MultitaskReport("fake", exp, _taskset(n_test_c), BASE, records, list(stale), dict(skipped or {}))


def _render(t: mt.MultitaskReport) -> str:
    return mt.render(t, OmegaConf.create({}), "figures/w.png", "figures/r.png", "sqlite:///m.db")


def test_report_says_which_tasks_entered_delta_m_and_which_classic_baselines_were_skipped():
    records = [
        _record(BASE, 0, {"a": 0.5, "b": 0.8}),
        _record("hard+equal", 0, {"a": 0.55, "b": 0.88}),
        _record("ridge_per_task+sklearn", 0, {"a": 0.6, "b": 0.7, "c": 1.0}, classic=True),
    ]
    text = _render(_report(records, skipped={"ridge_pooled": "tasks of different kinds"}, stale=["old+equal/seed0.json"]))
    assert "Tasks in Δm: 2 of 3, the same for every method" in text
    assert "`c` (1 test labels; no result from hard+equal, single_task+equal)" in text
    assert "`ridge_pooled`: tasks of different kinds" in text
    assert "1 result files of other configurations or runs ignored (stale): `old+equal/seed0.json`" in text


# --------------------------------------------------------------------------------------------------
# The task-weight figure and the gradient-conflict finding (defect 3)


def _titles(fig) -> list[str]:
    return [ax.get_title() for ax in fig.axes if ax.get_visible()]


def test_weight_figure_and_finding_without_hard_sharing_at_the_first_seed_present():
    # No `hard` scheme, seeds 1 and 2: before, the figure took `hard` runs at min(cfg.seeds) only and came out empty.
    full = {"a": 0.5, "b": 0.5, "c": 1.0}
    records = [_record(BASE, s, full, history=_history(None)) for s in (1, 2)]
    records += [_record("mmoe+equal", s, full, history=_history(None, cos=0.3 + 0.1 * s)) for s in (1, 2)]
    records += [_record("mmoe+upgrad", s, full | {"a": 0.6}, history=_history((0.2, 0.3, 0.5), cos=-0.3)) for s in (1, 2)]
    t = _report(records)
    seed, weights, cosines = mt.histories(t.records)
    assert seed == 1 and list(weights) == ["mmoe+upgrad"] and list(cosines) == ["mmoe+equal", "mmoe+upgrad"]
    assert weights["mmoe+upgrad"] is records[4]["history"]
    _, fig = mt.figures(t)
    assert _titles(fig) == ["mmoe+upgrad", "mean cosine of task gradients"]
    assert [line.get_label() for line in fig.axes[1].get_lines() if not line.get_label().startswith("_")] == ["mmoe+equal", "mmoe+upgrad"]
    assert "seed 1" in fig._suptitle.get_text()
    text = _render(t)
    assert (
        "Task weights per epoch (seed 1): `mmoe+upgrad`; mean cosine of the task gradients on the shared parameters: `mmoe+equal`, `mmoe+upgrad`."
        in text
    )
    # The best joint method is mmoe+upgrad: conflict is measured on its scheme with the baseline's weighting.
    assert "Gradient conflict under `mmoe+equal` (seed 1)" in text and "averaged +0.300 over 3 epochs" in text
    # Only seed 2 selected: the figure and the text follow it.
    t2 = _report([r for r in records if r["seed"] == 2])
    assert "seed 2" in mt.figures(t2)[1]._suptitle.get_text()
    assert "Task weights per epoch (seed 2)" in _render(t2) and "Gradient conflict under `mmoe+equal` (seed 2)" in _render(t2)


def test_weight_figure_and_text_say_when_there_are_no_histories():
    full = {"a": 0.5, "b": 0.5, "c": 1.0}
    t = _report([_record(BASE, 0, full), _record("hard+equal", 0, full)])
    _, fig = mt.figures(t)
    assert [x.get_text() for x in fig.axes[0].texts] == ["no per-epoch task weights or gradient cosines in these results"]
    text = _render(t)
    assert "Task weights and gradient cosines: none" in text and "Gradient conflict: not measured" in text


# --------------------------------------------------------------------------------------------------
# Label-efficiency axis (defect 5)


def _transfer(task: TaskSpec) -> transfer.TransferReport:
    rows = [
        (s, k, seed, 0.5 + 0.01 * k + (0.1 if s == "param_transfer" else 0))
        for s in ("scratch", "param_transfer")
        for k in (10, 40)
        for seed in (0, 1)
    ]
    df = pd.DataFrame(rows, columns=["strategy", "budget", "seed", task.primary]).assign(run_id="r")
    return transfer.TransferReport("fake", None, task, "h", {"run_id": "s", "test": {}}, {}, "scratch", df, [])


@pytest.mark.parametrize(
    "task, label",
    [
        (TaskSpec("y", "regression"), "target labelled rows (k)"),
        (TaskSpec("digit", "classification", [str(i) for i in range(3)]), "target labels per class (k)"),
    ],
)
def test_label_efficiency_axis_names_what_a_budget_counts(task, label):
    fig = transfer.figure(_transfer(task))
    assert fig.axes[0].get_xlabel() == label
    assert fig.axes[0].get_ylabel().startswith(f"test {task.primary}")


def test_transfer_gain_direction_follows_the_task():
    t = _transfer(TaskSpec("y", "regression"))  # param_transfer has the higher RMSE: worse
    stats = t.stats.set_index(["strategy", "budget"])
    assert stats.loc[("param_transfer", 10), "gain"] == pytest.approx(-0.1) and stats.loc[("param_transfer", 10), "negative"]


# --------------------------------------------------------------------------------------------------
# All outputs or none (defect 4)


def test_outputs_failure_leaves_no_file_and_the_previous_outputs(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    (tmp_path / "figures").mkdir()
    (tmp_path / "x.md").write_text("previous")
    real = outputs._save

    def failing(value, path):
        if path.suffix == ".csv":
            raise OSError("disk full")
        real(value, path)

    monkeypatch.setattr(outputs, "_save", failing)
    files = {"x.md": "new", "figures/x.png": Figure(), "metrics/x.json": {"a": 1}, "plots/x.csv": "a,b\n"}
    with pytest.raises(OSError, match="disk full"):
        outputs.write(tmp_path, files)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == ["figures", "x.md"]
    assert (tmp_path / "x.md").read_text() == "previous"
    monkeypatch.setattr(outputs, "_save", real)
    written = outputs.write(tmp_path, files)
    assert (tmp_path / "x.md").read_text() == "new" and written["plots/x.csv"].read_text() == "a,b\n"
    assert (tmp_path / "figures" / "x.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["figures", "metrics", "plots", "x.md"]


def test_outputs_directory_replaces_the_whole_directory_and_a_failure_keeps_the_old_one(tmp_path, monkeypatch):
    """A Directory output (reports/metrics/<exp>/, a file per row) is swapped in whole: a row dropped
    from the config loses its file, and a failure on the way leaves the previous directory as it was."""
    (tmp_path / "metrics" / "x").mkdir(parents=True)
    (tmp_path / "metrics" / "x" / "dropped.json").write_text("{}")
    real = outputs._save

    def failing(value, path):
        if path.suffix == ".csv":
            raise OSError("disk full")
        real(value, path)

    files = {"metrics/x": outputs.Directory({"a.json": {"k01": 0.5}, "b+c.json": {"delta_m": 1.0}}), "plots/x.csv": "a\n"}
    monkeypatch.setattr(outputs, "_save", failing)
    with pytest.raises(OSError, match="disk full"):
        outputs.write(tmp_path, files)
    assert sorted(p.name for p in (tmp_path / "metrics" / "x").iterdir()) == ["dropped.json"]
    monkeypatch.setattr(outputs, "_save", real)
    outputs.write(tmp_path, files)
    assert sorted(p.name for p in (tmp_path / "metrics" / "x").iterdir()) == ["a.json", "b+c.json"]
    assert json.loads((tmp_path / "metrics" / "x" / "a.json").read_text()) == {"k01": 0.5}
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".report")] == []  # no scratch left
    (tmp_path / "metrics" / "y").write_text("a file where the directory goes")
    with pytest.raises(PipelineError, match="a file is in the way"):
        outputs.write(tmp_path, {"metrics/y": outputs.Directory({"a.json": {}})})


def test_conflict_is_measured_under_the_baselines_weighting_when_the_best_method_shares_nothing():
    # As on STAR: the best joint method (soft) has no shared parameters, so no cosines; the conflict the
    # aggregators face is the one under plain equal weights, not under whichever aggregator sorts first.
    full = {"a": 0.5, "b": 0.5, "c": 1.0}
    records = [_record(BASE, 0, full, history=_history(None))]
    records += [_record("hard+aligned_mtl", 0, full, history=_history((0.2, 0.3, 0.5), cos=0.9))]
    records += [_record("hard+equal", 0, full, history=_history(None, cos=0.2))]
    records += [_record("soft+equal", 0, full | {"a": 0.7}, history=_history(None))]
    text = _render(_report(records))
    assert "Best joint neural method: `soft+equal`" in text
    assert "Gradient conflict under `hard+equal` (seed 0)" in text and "averaged +0.100" in text


# --------------------------------------------------------------------------------------------------
# Compact DVC metrics, MLflow summary metrics, DVC plot templates (issue 10, items 2 and 3)


def _transfer_grid(budgets=(1, 3, 10, 30)) -> transfer.TransferReport:
    strategies = ("scratch", "param_transfer", "structure_transfer", "linear")
    rows = [(s, k, seed, 0.3 + 0.01 * k + 0.02 * i + 0.001 * seed) for i, s in enumerate(strategies) for k in budgets for seed in (0, 1, 2)]
    df = pd.DataFrame(rows, columns=["strategy", "budget", "seed", "acc"]).assign(run_id="r", f1=lambda d: d.acc)
    df = transfer.with_zero_shot(df, TaskSpec("digit", "classification", [str(i) for i in range(3)]), {"zero_shot_acc": 0.7})
    task = TaskSpec("digit", "classification", [str(i) for i in range(3)])
    return transfer.TransferReport("fake", None, task, "h", {"run_id": "s", "test": {}}, {}, "scratch", df, [], ("linear", transfer.ZERO_SHOT))


def test_transfer_dvc_metrics_are_one_row_per_strategy_with_budgets_in_numeric_order():
    t = _transfer_grid()
    metrics = transfer.dvc_metrics(t)
    assert list(metrics) == list(t.order)  # a row (a file) per strategy
    assert list(metrics["scratch"]) == ["k01", "k03", "k10", "k30"]
    assert metrics["param_transfer"]["k10"] == pytest.approx(0.3 + 0.1 + 0.02 + 0.001)
    assert metrics[transfer.ZERO_SHOT] == {"k00": 0.7}  # one value, at zero labels per class
    columns = {c for row in metrics.values() for c in row}
    assert sorted(columns) == ["k00", "k01", "k03", "k10", "k30"]  # the table's few columns, in numeric order as text
    assert transfer.budget_key(5, [1, 5, 200]) == "k005" and transfer.budget_key(3, [1, 3]) == "k03"


def test_transfer_report_run_logs_means_and_gains_under_valid_mlflow_names():
    t = _transfer_grid()
    logged = transfer.mlflow_metrics(t)
    assert all(re.fullmatch(r"[A-Za-z0-9_\-./ ]+", k) for k in logged)
    assert logged["acc/scratch/k01"] == pytest.approx(0.311)
    assert logged["gain/param_transfer/k30"] == pytest.approx(0.02) and logged["wins/param_transfer/k30"] == 3
    assert not any(k.startswith(("gain/scratch", "gain/linear", f"gain/{transfer.ZERO_SHOT}")) for k in logged)  # baseline and sanity rows
    assert outputs.metric_key("delta_m/hard+mgda") == "delta_m/hard.mgda"


def test_multitask_dvc_metrics_hold_delta_m_per_method_only():
    t = _report([_record(m, s, {"a": 0.5 + d, "b": 0.8 + d, "c": 2.0}) for m, d in ((BASE, 0), ("hard+equal", 0.05)) for s in (0, 1)])
    metrics = mt.dvc_metrics(t)
    assert metrics == {m: {"delta_m": v} for m, v in mt.summary(t)["delta_m"].items()} and set(metrics) == {BASE, "hard+equal"}


def _yaml(path: str) -> dict:
    import yaml

    from support import ROOT

    return yaml.safe_load((ROOT / path).read_text())


def test_label_efficiency_plot_template_has_a_log_budget_axis_and_one_colour_per_strategy():
    template = _json(".dvc/plots/label_efficiency.json")
    enc = template["encoding"]
    assert enc["x"]["field"] == "<DVC_METRIC_X>" and enc["x"]["scale"]["type"] == "log"
    # DVC names each series (a y column of the CSV: a strategy) in the datapoints' `field`.
    assert enc["color"]["field"] == "field" and enc["color"]["legend"]["labelLimit"] == 0
    assert "strokeDash" not in enc or enc["strokeDash"]["field"] == "rev"  # dashes tell revisions apart, not strategies
    t = _transfer_grid()
    columns = transfer.dvc_plot(t).splitlines()[0].split(",")
    for plot in _yaml("dvc.yaml")["plots"]:
        (spec,) = plot.values()
        assert spec["template"] == "label_efficiency" and spec["x"] == columns[0] == "labels_per_class"
        (ys,) = spec["y"].values()
        assert "scratch" in ys and "linear" in ys and transfer.ZERO_SHOT not in ys  # a constant: not a curve


def test_delta_m_plot_clips_an_outlier_and_its_template_reads_the_columns():
    records = [_record(BASE, 0, {"a": 0.5, "b": 0.5})]
    records += [_record(f"m{i}+equal", 0, {"a": 0.5 + 0.01 * i, "b": 0.5}) for i in range(1, 6)]
    records += [_record("ridge_pooled+sklearn", 0, {"a": 0.1, "b": 0.1}, classic=True)]  # Δm -80%
    rows = {r.split(",")[0]: r.split(",") for r in mt.dvc_plot(_report(records)).splitlines()}
    assert rows["method"] == ["method", "delta_m", "shown", "note", "kind"]
    pooled = rows["ridge_pooled+sklearn"]
    assert float(pooled[1]) == pytest.approx(-80.0) and pooled[3] == "-80.0 (clipped)" and pooled[4] == "classic"
    assert -10 < float(pooled[2]) < -float(rows["m5+equal"][2]) == -5.0  # just past the longest other bar
    assert rows["m3+equal"][2] == rows["m3+equal"][1] and rows["m3+equal"][3] == "" and rows[BASE][4] == "baseline"
    spec = _yaml("dvc.yaml")["stages"]["mt_report"]["do"]["plots"][0]["reports/plots/${key}.csv"]
    assert spec["template"] == "delta_m" and spec["x"] == "shown" and spec["y"] == "method"
    template = json.dumps(_json(".dvc/plots/delta_m.json"))
    assert '"field": "kind"' in template and '"field": "note"' in template


def _json(path: str) -> dict:
    from support import ROOT

    return json.loads((ROOT / path).read_text())


# --------------------------------------------------------------------------------------------------
# Figures a reader takes in at a glance (issue 10, item 4)


def test_per_task_changes_are_signed_relative_differences_to_the_baseline_paired_by_seed():
    records = [_record(BASE, s, {"a": 0.5, "b": 0.8, "c": 2.0 + s}) for s in (0, 1, 2)]
    records += [_record("hard+equal", s, {"a": 0.5 + 0.05 * (s + 1), "b": 0.8, "c": 1.0 + s}) for s in (0, 1, 2)]
    records += [_record("ridge+sklearn", 0, {"a": 0.25, "b": 0.8, "c": 2.0}, classic=True)]
    ch = deltas.task_changes(mt.table(records), TASKS, BASE).set_index(["method", "task", "seed"]).sort_index().change
    assert ch["hard+equal", "a", 1] == pytest.approx(20.0)  # accuracy 0.5 -> 0.6: +20 %
    assert ch["hard+equal", "c", 0] == pytest.approx(50.0)  # RMSE 2 -> 1: lower is better, +50 %
    assert ch["hard+equal", "c", 2] == pytest.approx(25.0)  # paired with the baseline at seed 2 (RMSE 4 -> 3)
    assert list(ch["ridge+sklearn", "a"]) == pytest.approx([-50.0] * 3)  # a classic baseline against every baseline seed
    stats = deltas.task_change_intervals(deltas.task_changes(mt.table(records), TASKS, BASE)).set_index(["method", "task"])
    row = stats.loc["hard+equal", "a"]  # changes +10, +20, +30: mean 20, sd 10, t(0.975, 2) = 4.303
    assert row["mean"] == pytest.approx(20.0) and row.hi - row["mean"] == pytest.approx(4.3027 * 10 / np.sqrt(3), rel=1e-4)
    assert stats.loc["ridge+sklearn", "b"]["mean"] == 0.0 and stats.loc["ridge+sklearn", "b"].n == 3


def test_outliers_clip_a_far_value_but_not_a_wide_spread():
    from pipeline.report.figures import outliers

    values = [-2.0, -1.2, -2.3, -0.4, 1.9, 0.0, -45.0]
    assert list(np.flatnonzero(outliers(values))) == [6]
    assert not outliers([-2.0, -1.0, 0.5, 1.0, -4.0]).any()
    # -4 lies far from the means but not from their intervals: kept.
    means = [0.2, 0.3, 0.1, 0.4, -4.0]
    assert outliers(means).any() and not outliers(means, [(m - 1.5, m + 1.5) for m in means]).any()


def _points(ax) -> dict[float, float]:
    """y -> x of the dots drawn with error bars on `ax`."""
    return {float(line.get_ydata()[0]): float(line.get_xdata()[0]) for line in ax.lines if line.get_marker() == "o"}


def test_per_task_figure_shows_each_methods_change_one_row_per_method_with_the_outlier_clipped():
    records = [_record(BASE, s, {"a": 0.5, "b": 0.5, "c": 1.0}) for s in (0, 1)]
    methods = [f"m{i}+equal" for i in range(12)]
    records += [_record(m, s, {"a": 0.5 + 0.01 * i + 0.005 * s, "b": 0.5, "c": 1.0}) for i, m in enumerate(methods) for s in (0, 1)]
    records += [_record("ridge+sklearn", 0, {"a": 0.05, "b": 0.5, "c": 1.0}, classic=True)]  # -90 % on a
    t = _report(records, n_test_c=5)
    fig, _ = mt.figures(t)
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in axes[1:]] == ["task a: change (%)", "task b: change (%)", "task c: change (%)"]
    rows = [label.get_text() for label in axes[0].get_yticklabels()]
    assert len(rows) == len(set(rows)) == 13 and BASE not in rows and rows[-1] == "m11+equal"  # best Δm on top
    a = _points(axes[1])
    assert a[rows.index("m11+equal")] == pytest.approx(100 * (0.11 + 0.0025) / 0.5)  # a difference to the baseline, not 0.6125
    assert [x.get_text() for x in axes[1].texts] == ["-90.0 (clipped)"] and axes[1].get_xlim()[0] > -20
    assert len({line.get_color() for line in axes[1].lines if line.get_marker() == "o"}) == 12  # no colour repeated


def test_per_task_figure_with_many_tasks_shows_their_distribution_per_method():
    from pipeline.report.figures import per_task_changes

    rng = np.random.default_rng(0)
    methods = [BASE, "hard+equal", "soft+equal"]
    changes = pd.DataFrame(
        [{"method": m, "task": f"t{k:02d}", "mean": v, "lo": v - 1, "hi": v + 1} for m in methods[1:] for k, v in enumerate(rng.normal(0, 5, 63))]
    )
    dm = pd.DataFrame({"method": methods[1:], "mean": [1.0, -1.0], "lo": [0.0, -2.0], "hi": [2.0, 0.0]})
    fig = per_task_changes(dm, changes, methods, BASE, "Δm per-task mean", "t")
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == 2 and axes[1].get_title() == "change on each of 63 tasks (%, mean over seeds)"
    worse = int((changes[changes.method == "soft+equal"]["mean"] < 0).sum())
    assert f"worse on {worse}/63" in [x.get_text() for x in axes[1].texts]


def test_label_efficiency_figure_has_a_log_axis_one_colour_per_strategy_and_the_legend_outside():
    fig = transfer.figure(_transfer_grid())
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    handles, labels = ax.get_legend_handles_labels()
    assert labels == ["scratch (baseline)", "param_transfer", "structure_transfer", "linear"]
    colours = [h.get_color() for h in handles]
    assert len(set(map(str, colours))) == 4
    # the 95 % intervals drawn as bands, one per strategy with several seeds, in its colour
    rgb = lambda c: tuple(round(float(v), 4) for v in matplotlib.colors.to_rgb(c))  # noqa: E731
    bands = {rgb(b.get_facecolor()[0]) for b in ax.collections}
    assert len(ax.collections) == 4 and bands == {rgb(c) for c in colours}
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    assert ax.get_legend().get_window_extent(renderer).x0 >= ax.get_window_extent(renderer).x1  # outside the data


def test_a_task_is_worse_than_the_baseline_only_where_its_paired_interval_lies_below_zero():
    """Per-task flags follow the paired 95 % interval over seeds, as the transfer verdicts do: a lower
    mean with an interval that contains 0 is no flag; a consistently lower score is one; with one
    seed there is no interval and no flag. RMSE tasks flip the sign (lower is better)."""
    from pipeline.report.delta_m import per_task

    tasks = [TaskSpec("a", "classification", ["0", "1"]), TaskSpec("r", "regression")]
    rows = []
    base = {"a": [0.80, 0.70, 0.90], "r": [1.0, 1.2, 0.8]}
    methods = {
        "noisy": {"a": [0.85, 0.60, 0.88], "r": [0.9, 1.5, 0.85]},  # a: -0.02 on average, interval contains 0
        "consistent": {"a": [0.75, 0.66, 0.84], "r": [1.1, 1.31, 0.92]},  # worse on both, on every seed
    }
    for method, values in {"base": base, **methods}.items():
        for task, vs in values.items():
            metric = "acc" if task == "a" else "rmse"
            rows += [{"method": method, "seed": s, "task": task, "metric": metric, "value": v, "classic": False} for s, v in enumerate(vs)]
    rows += [{"method": "one", "seed": 0, "task": "a", "metric": "acc", "value": 0.1, "classic": False}]
    stats = per_task(pd.DataFrame(rows), tasks, "base").set_index(["method", "task"])
    assert not stats.worse["noisy", "a"] and not stats.worse["noisy", "r"]
    assert stats.worse["consistent", "a"] and stats.worse["consistent", "r"]
    assert not stats.worse["one", "a"] and not stats.worse["base", "a"]


def test_transfer_intervals_stay_within_what_the_metric_can_be():
    """Two seeds at 0.2 and 0.95 give a t-interval of about [-4.5, 5.6]: shown clipped to accuracy's [0, 1],
    and an RMSE interval is clipped at 0; the mean and the paired gains are left as they are."""
    df = pd.DataFrame({"strategy": ["s", "s"], "budget": [1, 1], "seed": [0, 1], "acc": [0.2, 0.95], "rmse": [0.1, 3.0]})
    acc = transfer.summarise(df, "acc").iloc[0]
    assert (acc.lo, acc.hi) == (0.0, 1.0) and acc["mean"] == pytest.approx(0.575)
    rmse = transfer.summarise(df, "rmse", higher_is_better=False).iloc[0]
    assert rmse.lo == 0.0 and rmse.hi > 3.0


# --------------------------------------------------------------------------------------------------
# Failed runs: listed, never averaged in, and a gain that lacks a seed says so (issue 14)


def test_a_failed_baseline_seed_is_left_unpaired_and_said():
    from omegaconf import OmegaConf

    task = TaskSpec("digit", "classification", [str(i) for i in range(3)])
    acc = {("scratch", 0): 0.50, ("scratch", 1): 0.52, ("scratch", 2): 0.54}
    rows = [(s, 10, seed, acc.get((s, seed), 0.6 + 0.01 * seed)) for s in ("scratch", "param_transfer") for seed in (0, 1, 2)]
    rows = [r for r in rows if (r[0], r[2]) != ("scratch", 0)]  # scratch's seed-0 run failed
    df = pd.DataFrame(rows, columns=["strategy", "budget", "seed", "acc"]).assign(run_id="r", f1=lambda d: d.acc)
    failed = [
        {"strategy": "scratch", "budget": 10, "seed": 0, "trial": 0, "run_id": "f0", "why": "finetune x scratch k=10 seed=0: diverged", "lost": True}
    ]
    exp = OmegaConf.create({"source": {"_target_": "pipeline.data.digits.mnist_sample"}, "target": {"_target_": "pipeline.data.digits.uci_digits"}})
    t = transfer.TransferReport("fake", exp, task, "h", {"run_id": "s", "test": {}}, {}, "scratch", df, [], failed=failed)
    stats = t.stats.set_index(["strategy", "budget"])
    # paired over seeds 1 and 2 only (+0.09, +0.08), never seed 0's 0.60 against another seed's baseline
    assert stats.loc[("param_transfer", 10), "paired"] == 2 and stats.loc[("param_transfer", 10), "gain"] == pytest.approx(0.085)
    md = transfer.render(t, "f.png", "sqlite:///x.db")
    assert "| scratch | 0.530 [0.403, 0.657] † 2 of 3 seeds, seeds [0] failed |" in md
    assert re.search(r"\| param_transfer \| \+0\.085 \[[^]]+\] \(2/2\)[^|]* † seeds \[0\] unpaired \(a run failed\) \|", md), md
    assert "| scratch | 10 | 0 | t0 | no result at this seed | diverged | `f0` |" in md
