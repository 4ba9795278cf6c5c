"""Joint multitask training: masking, Δm's sign convention, and the stage on the real config."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch

from pipeline.data import TaskSpec
from pipeline.errors import PipelineError
from pipeline.report.delta_m import delta_m
from pipeline.training import masked_losses
from support import mlflow_runs


def test_masked_labels_contribute_nothing_to_the_gradient():
    torch.manual_seed(0)
    tasks = [TaskSpec("a", "regression"), TaskSpec("b", "classification", ["0", "1", "2"])]
    w = torch.randn(4, 1, requires_grad=True)
    v = torch.randn(4, 3, requires_grad=True)
    x = torch.randn(6, 4)
    nan = float("nan")
    y = torch.tensor([[0.5, 1.0], [nan, 2.0], [1.5, nan], [nan, 0.0], [0.1, 1.0], [2.0, nan]])

    def grad_a(inputs):
        return torch.autograd.grad(masked_losses(tasks, [inputs @ w, inputs @ v], y)[0], w)[0]

    # Task a's gradient is the gradient over its labelled rows alone...
    rows = ~torch.isnan(y[:, 0])
    ref = torch.autograd.grad(torch.nn.functional.mse_loss((x[rows] @ w).squeeze(-1), y[rows, 0]), w)[0]
    assert torch.allclose(grad_a(x), ref)
    # ...so whatever the rows unlabelled for a contain, a's gradient does not move; b's does.
    shifted = x.clone()
    shifted[[1, 3]] += 100.0
    assert torch.allclose(grad_a(shifted), grad_a(x))
    grad_b = lambda inputs: torch.autograd.grad(masked_losses(tasks, [inputs @ w, inputs @ v], y)[1], v)[0]  # noqa: E731
    assert not torch.allclose(grad_b(shifted), grad_b(x))


def test_task_absent_from_batch_has_zero_loss_without_graph():
    tasks = [TaskSpec("a", "regression"), TaskSpec("b", "regression")]
    out = [torch.randn(3, 1, requires_grad=True), torch.randn(3, 1, requires_grad=True)]
    y = torch.tensor([[1.0, float("nan")]] * 3)
    losses = masked_losses(tasks, out, y)
    assert losses[1].item() == 0.0 and not losses[1].requires_grad and losses[0].requires_grad


def test_delta_m_sign_convention_on_a_hand_computed_example():
    tasks = [TaskSpec("digit", "classification"), TaskSpec("price", "regression")]
    rows = []
    for method, acc, rmse in [("single_task+equal", 0.80, 2.0), ("good", 0.88, 1.8), ("bad", 0.72, 2.2)]:
        rows += [
            {"method": method, "seed": 0, "task": "digit", "metric": "acc", "value": acc, "classic": False},
            {"method": method, "seed": 0, "task": "price", "metric": "rmse", "value": rmse, "classic": False},
            {"method": method, "seed": 0, "task": "price", "metric": "r2", "value": 0.5, "classic": False},
        ]
    dm = delta_m(pd.DataFrame(rows), tasks, "single_task+equal").set_index("method").delta_m
    # good: accuracy +10%, RMSE 10% lower (better) -> +10; bad: the mirror image -> -10.
    assert dm["good"] == pytest.approx(10.0)
    assert dm["bad"] == pytest.approx(-10.0)
    assert dm["single_task+equal"] == pytest.approx(0.0)


def test_classic_baseline_that_does_not_apply_is_reported_with_its_reason(capsys):
    """Defect 7: ridge_pooled on tasks of different kinds used to vanish from the results silently."""
    import numpy as np

    from pipeline.data import TaskSet
    from pipeline.stages.multitask import classic

    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 3)).astype(np.float32)
    y = np.stack([x[:, 0] + 0.1 * rng.normal(size=60), (x[:, 1] > 0).astype(float)], axis=1).astype(np.float32)
    tasks = [TaskSpec("value", "regression"), TaskSpec("sign", "classification", ["neg", "pos"])]
    ts = TaskSet(x, y, tasks, {"train": np.arange(40), "val": np.arange(40, 50), "test": np.arange(50, 60)}, [3])
    fitted, skipped = classic(ts, ["ridge_per_task", "ridge_pooled"])
    assert [c["scheme"] for c in fitted] == ["ridge_per_task"]
    assert set(skipped) == {"ridge_pooled"} and "different kinds" in skipped["ridge_pooled"]
    assert "skipping classic baseline ridge_pooled: tasks of different kinds" in capsys.readouterr().out


TINY_MT = [
    "exp=synthetic_related",
    "multitask.seeds=[0]",
    "multitask.max_epochs=4",
    "multitask.min_steps_per_epoch=2",
    "multitask_experiments.synthetic_related.data.n_tasks=3",
]


def test_incompatible_scheme_and_weighting_names_both(make_cfg):
    from pipeline.stages import multitask, prepare

    cfg = make_cfg(*TINY_MT, "scheme=single_task", "weighting=upgrad")
    prepare.run(cfg)
    with pytest.raises(PipelineError, match=r"upgrad.*single_task|single_task.*upgrad"):
        multitask.run(cfg)


def test_unknown_baseline_is_an_error_naming_the_key(make_cfg):
    from pipeline.stages import multitask, prepare

    cfg = make_cfg(*TINY_MT, "multitask.baseline=single_task+nope")
    prepare.run(cfg)
    with pytest.raises(PipelineError, match=r"multitask\.baseline.*single_task\+nope"):
        multitask.run(cfg)


def test_multitask_stage_logs_runs_weights_and_report(make_cfg, tmp_path):
    from pipeline.stages import multitask, prepare, report

    cfg = make_cfg(
        *TINY_MT,
        "+multitask_experiments.synthetic_related.schemes=[single_task,hard,soft]",
        "+multitask_experiments.synthetic_related.weightings=[equal,upgrad]",
        "multitask.archs.soft.auto_grid.coupling=[0.0,0.01]",
    )
    prepare.run(cfg)
    results = multitask.run(cfg)
    methods = {(r["scheme"], r["weighting"]) for r in results}
    assert {("single_task", "equal"), ("hard", "equal"), ("hard", "upgrad"), ("soft", "equal")} <= methods
    assert ("soft", "upgrad") not in methods  # soft shares no parameters: skipped in the grid
    assert {"ridge_per_task", "ridge_pooled"} <= {r["scheme"] for r in results if r.get("classic")}
    pooled = next(r for r in results if r["scheme"] == "ridge_pooled")
    assert pooled["params"]["alpha"] in (0.01, 0.1, 1.0, 10.0, 100.0)  # chosen on the val split
    assert json.loads((tmp_path / "artifacts" / "synthetic_related" / "multitask" / "skipped.json").read_text()) == {}  # all applied

    client, runs = mlflow_runs(cfg, "synthetic_related")
    mt = [r for r in runs if r.data.tags["stage"] == "multitask"]
    hard_up = [r for r in mt if r.data.tags["scheme"] == "hard" and r.data.tags["weighting"] == "upgrad"]
    assert len(hard_up) == 1
    m = hard_up[0].data.metrics
    assert {"test/task_0/rmse", "test/task_2/r2", "weight/task_1", "grad/cos_mean"} <= set(m)
    assert len(client.get_metric_history(hard_up[0].info.run_id, "weight/task_0")) >= 2  # weights over training
    soft = [r for r in mt if r.data.tags["scheme"] == "soft"]
    assert len(soft) == 2 and sum(r.data.tags.get("selected") == "true" for r in soft) == 1  # coupling picked on val
    # Short names; scheme, weighting and seed as params too; the task set as the dataset input.
    assert hard_up[0].info.run_name == "hard+upgrad s0" and {r.info.run_name for r in soft} == {"soft+equal s0 c0", "soft+equal s0 c1"}
    assert {k: hard_up[0].data.params[k] for k in ("scheme", "weighting", "seed")} == {"scheme": "hard", "weighting": "upgrad", "seed": "0"}
    (ds,) = hard_up[0].inputs.dataset_inputs
    assert (ds.dataset.name, ds.dataset.digest) == ("synthetic_related/tasks", hard_up[0].data.tags["data_hash"])

    metrics = report.run(cfg)
    assert metrics["single_task+equal"]["delta_m"] == pytest.approx(0.0)
    assert all(math.isfinite(v["delta_m"]) for v in metrics.values())
    md = (tmp_path / "reports" / "synthetic_related.md").read_text()
    assert "Δm against `single_task+equal`" in md and "ridge_pooled+sklearn" in md
    assert (tmp_path / "reports" / "figures" / "synthetic_related_task_weights.png").exists()
    # One seed: each run's own Δm, logged back onto it, is the table's value.
    logged = client.get_run(hard_up[0].info.run_id).data.metrics["test/delta_m"]
    assert logged == pytest.approx(metrics["hard+upgrad"]["delta_m"], abs=1e-3)
    ridge = client.get_run(pooled["run_id"])  # the classic baselines are MLflow runs too
    assert ridge.data.tags["scheme"] == "ridge_pooled" and "test/task_0/rmse" in ridge.data.metrics
    assert ridge.data.metrics["test/delta_m"] == pytest.approx(metrics["ridge_pooled+sklearn"]["delta_m"], abs=1e-3)


def _mean_rmse(results, scheme):
    r = next(r for r in results if r["scheme"] == scheme)
    vals = [v for k, v in r["test"].items() if k.endswith("/rmse")]
    return sum(vals) / len(vals)


def _synthetic(make_cfg, relatedness):
    from pipeline.stages import multitask, prepare

    cfg = make_cfg(
        "exp=synthetic_related",
        "multitask.seeds=[0]",
        f"multitask_experiments.synthetic_related.data.relatedness={relatedness}",
        "multitask_experiments.synthetic_related.data.n_tasks=5",
        "multitask_experiments.synthetic_related.data.n_per_task=60",
        "multitask_experiments.synthetic_related.data.noise=0.3",
        "+multitask_experiments.synthetic_related.schemes=[single_task,hard]",
        "+multitask_experiments.synthetic_related.weightings=[equal]",
        # The survey's shared-parameter linear model: a linear trunk x -> w.x, one scale per task.
        # Shared, it can express one weight vector for all tasks; per task, one each.
        "multitask.archs.hard.hidden=[1]",
        "multitask.archs.single_task.hidden=[1]",
        "multitask.archs.hard.activation=identity",
        "multitask.archs.single_task.activation=identity",
        "multitask.max_epochs=60",
        "multitask.patience=15",
        "multitask.lr=0.01",
    )
    prepare.run(cfg)
    return multitask.run(cfg)


def test_identical_tasks_hard_sharing_reaches_the_pooled_least_squares_fit(make_cfg):
    """Relatedness 1: all tasks share one weight vector. Pooling the data is optimal; hard sharing
    should get close to the pooled least-squares (ridge) fit and clearly beat separate models."""
    results = _synthetic(make_cfg, 1.0)
    hard, single, pooled, per_task = (_mean_rmse(results, s) for s in ("hard", "single_task", "ridge_pooled", "ridge_per_task"))
    assert pooled < per_task  # sanity: with identical tasks pooling is the better linear fit
    assert hard < single
    assert hard < 1.1 * pooled, (hard, pooled)


def test_unrelated_tasks_single_task_is_not_worse_than_hard_sharing(make_cfg):
    """Relatedness 0: nothing to share. Separate models must not lose to a shared trunk."""
    results = _synthetic(make_cfg, 0.0)
    hard, single = _mean_rmse(results, "hard"), _mean_rmse(results, "single_task")
    assert single <= 1.05 * hard, (single, hard)
