"""The report's parts on small fake result sets: Δm over one task set, what the text says about it,
the label-efficiency axis, the task-weight figure and its caption, and the all-or-nothing outputs."""

from __future__ import annotations

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
