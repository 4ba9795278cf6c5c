"""Many tiny tasks (a long-format table of small groups): Δm that tiny tasks cannot skew (issue 8 item 4),
and no task silently dropped from the metrics, model selection or Δm (item 5)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from pipeline.data import TaskSet, TaskSpec
from pipeline.report import delta_m as deltas
from pipeline.report import multitask as mt
from pipeline.training import per_task_metrics, selection_score

BASE = "single_task+equal"
JOINT = "hard+equal"


def _long_table(n_groups: int, test_rows, seed: int = 0) -> pd.DataFrame:
    """A long-format table: one row per (group, observation), a shared target `y` whose level depends on
    the group; each group has 6 train, 2 val and test_rows(g) test rows."""
    rng = np.random.default_rng(seed)
    rows = []
    for g in range(n_groups):
        level = rng.normal()
        for split, n in (("train", 6), ("val", 2), ("test", test_rows(g))):
            for _ in range(n):
                x = rng.normal(size=2)
                rows.append({"group": f"g{g:03d}", "split": split, "x1": x[0], "x2": x[1], "y": level + x[0] + 0.3 * rng.normal()})
    return pd.DataFrame(rows)


def _taskset(df: pd.DataFrame) -> TaskSet:
    """The table as a task set: one regression task per group, its label column NaN outside its rows;
    the target standardised once, all tasks sharing its offset and scale."""
    groups = sorted(df.group.unique())
    offset, scale = float(df[df.split == "train"].y.mean()), float(df[df.split == "train"].y.std())
    y = np.full((len(df), len(groups)), np.nan, dtype=np.float32)
    y[np.arange(len(df)), df.group.map({g: i for i, g in enumerate(groups)}).to_numpy()] = (df.y.to_numpy() - offset) / scale
    return TaskSet(
        x=df[["x1", "x2"]].to_numpy(np.float32),
        y=y,
        tasks=[TaskSpec(g, "regression", offset=offset, scale=scale) for g in groups],
        splits={s: np.flatnonzero(df.split.to_numpy() == s) for s in ("train", "val", "test")},
        input_shape=[2],
        provenance={"content_hash": "tiny"},
    )


def _predict(ts: TaskSet, noise: float, rng) -> list[torch.Tensor]:
    """Per-task outputs on the test rows: the truth plus noise of SD `noise` (standardised units)."""
    truth = np.nan_to_num(ts.y[ts.splits["test"]])
    return [torch.as_tensor(truth[:, t] + noise * rng.normal(size=len(truth)), dtype=torch.float32)[:, None] for t in range(len(ts.tasks))]


def _record(method: str, seed: int, ts: TaskSet, outputs) -> dict:
    metrics = per_task_metrics(ts.tasks, outputs, torch.as_tensor(ts.y[ts.splits["test"]]))
    scheme, weighting = method.split("+")
    return {
        "scheme": scheme,
        "weighting": weighting,
        "seed": seed,
        "run_id": f"{method}-{seed}",
        "test": {f"test/{k}": v for k, v in metrics.items()},
    }


def _rmse_all_rows(ts: TaskSet, outputs) -> float:
    """RMSE over every labelled test row, in the target's units (not from per-task metrics)."""
    y = ts.y[ts.splits["test"]]
    err = np.concatenate([(o[:, 0].numpy() - y[:, t])[~np.isnan(y[:, t])] for t, o in enumerate(outputs)])
    return float(np.sqrt(np.mean(err**2)) * ts.tasks[0].scale)


def _report(ts: TaskSet, records: list[dict]) -> mt.MultitaskReport:
    exp = OmegaConf.create({"data": {"_target_": "pipeline.data.tables.long_table"}})
    return mt.MultitaskReport("tiny", exp, ts, BASE, records, [], {})


def test_verdict_on_many_tiny_groups_agrees_with_the_metric_over_all_test_rows():
    """Before: Δm was the mean of per-task RMSE ratios, which 2-5-row groups send far below zero when the
    baseline's RMSE on two rows is small by chance, so the report called a method that lowers the RMSE
    over all test rows on every seed negative transfer."""
    ts = _taskset(_long_table(120, lambda g: 2 + g % 4))
    rng = np.random.default_rng(1)
    records, overall = [], {}
    for seed in (0, 1, 2):
        for method, noise in ((BASE, 1.0), (JOINT, 0.9)):
            outputs = _predict(ts, noise, rng)
            records.append(_record(method, seed, ts, outputs))
            overall[method, seed] = _rmse_all_rows(ts, outputs)
    assert all(overall[JOINT, s] < overall[BASE, s] for s in (0, 1, 2))  # better over all test rows on every seed

    t = _report(ts, records)
    dm = t.dm[t.dm.method == JOINT].set_index("seed")
    for s in (0, 1, 2):  # Δm over test rows is exactly the change of the RMSE over all test rows
        assert dm.delta_m_rows[s] == pytest.approx(100 * (overall[BASE, s] - overall[JOINT, s]) / overall[BASE, s], rel=1e-4)
    assert (dm.delta_m < 0).all()  # the per-task mean says the opposite: the skew this guards against
    assert t.basis[0] == "delta_m_rows"
    text = mt.render(t, OmegaConf.create({}), "w.png", "r.png", "sqlite:///m.db")
    assert "- The verdict rests on Δm over test rows: the 120 tasks in Δm have 2 to 5 labelled test rows (rule:" in text
    best = next(line for line in text.splitlines() if line.startswith("- Best joint neural method"))
    assert f"Δm {dm.delta_m_rows.mean():+.2f} [" in best and "% (Δm over test rows) —" in best and "Negative transfer" not in text
    metrics = mt.summary(t)
    assert metrics["delta_m"][JOINT] == metrics["delta_m_rows"][JOINT] > 0 > metrics["delta_m_per_task"][JOINT]
    assert mt.run_delta_m(t)[f"{JOINT}-0"]["test/delta_m"] == pytest.approx(dm.delta_m_rows[0])


def test_verdict_rests_on_the_per_task_mean_when_tasks_are_large_and_alike():
    ts = _taskset(_long_table(4, lambda g: 30))
    rng = np.random.default_rng(2)
    records = [_record(m, 0, ts, _predict(ts, noise, rng)) for m, noise in ((BASE, 1.0), (JOINT, 0.9))]
    t = _report(ts, records)
    assert t.basis[0] == "delta_m"
    assert mt.summary(t)["delta_m"][JOINT] == mt.summary(t)["delta_m_per_task"][JOINT]
    assert "Δm +12.32% (Δm per-task mean) —" in mt.render(t, OmegaConf.create({}), "w.png", "r.png", "sqlite:///m.db")  # one seed: no interval


def test_a_task_with_one_test_row_keeps_its_metrics_selection_and_place_in_delta_m():
    """Before: per_task_metrics skipped tasks with fewer than 2 labelled rows, so they vanished from the
    test metrics, from model selection (selection_score) and from Δm while the report counted them."""
    ts = _taskset(_long_table(5, lambda g: [1, 0, 3, 3, 3][g]))
    outputs = _predict(ts, 0.5, np.random.default_rng(3))
    y = torch.as_tensor(ts.y[ts.splits["test"]])
    metrics = per_task_metrics(ts.tasks, outputs, y)
    assert "g000/rmse" in metrics and "g000/r2" not in metrics  # RMSE is defined on one row, R² is not
    assert not any(k.startswith("g001/") for k in metrics)  # no labelled test row: nothing to compute
    assert {"g002/rmse", "g002/r2"} <= set(metrics)
    # Model selection counts the one-row task: a worse prediction there lowers the score.
    worse = [o.clone() for o in outputs]
    worse[0] += 3.0
    assert selection_score(ts.tasks, per_task_metrics(ts.tasks, worse, y)) < selection_score(ts.tasks, metrics)
    one = TaskSpec("c", "classification", ["a", "b"])
    assert set(per_task_metrics([one], [torch.tensor([[0.2, 0.8]])], torch.tensor([[1.0]]))) == {"c/acc"}

    records = [_record(m, 0, ts, _predict(ts, noise, np.random.default_rng(4))) for m, noise in ((BASE, 1.0), (JOINT, 0.9))]
    t = _report(ts, records)
    assert t.tasks_used[0] == ["g000", "g002", "g003", "g004"]
    text = mt.render(t, OmegaConf.create({}), "w.png", "r.png", "sqlite:///m.db")
    assert "- Tasks in Δm: 4 of 5, the same for every method; left out (" in text and "`g001` (no labelled test row)" in text


def test_a_zero_baseline_leaves_the_per_task_mean_only():
    tasks = [TaskSpec("a", "classification", ["0", "1"]), TaskSpec("b", "classification", ["0", "1"])]
    records = [
        {"scheme": "single_task", "weighting": "equal", "seed": 0, "run_id": "b", "test": {"test/a/acc": 0.0, "test/b/acc": 0.5}},
        {"scheme": "hard", "weighting": "equal", "seed": 0, "run_id": "h", "test": {"test/a/acc": 1.0, "test/b/acc": 0.5}},
    ]
    df = mt.table(records)
    dm = deltas.delta_m(df, tasks, BASE, {"a": 1, "b": 3}).set_index("method")
    assert dm.delta_m[JOINT] == pytest.approx(0.0)  # b only: a's ratio is undefined
    assert dm.delta_m_rows[JOINT] == pytest.approx(100 * (0.625 - 0.375) / 0.375)  # accuracy over all 4 test rows: 1.5/4 -> 2.5/4
