"""Coupling candidates trained as the members of one stacked net are the runs each would be alone:
the same kept weights, epochs, steps, test metrics, logged metrics and history."""

from __future__ import annotations

import pytest
import torch

from pipeline.config import FitConfig
from pipeline.data import TaskSpec
from pipeline.multitask.architectures.soft import SoftSharing
from pipeline.training import TaskModule, fit
from pipeline.training.members import MembersModule, fit_members
from support import cpu_settings

SETTINGS = cpu_settings(steps_per_batch=4)
RUN = FitConfig(lr=0.03, batch_size=32, max_epochs=30, patience=2, min_steps_per_epoch=1)
COUPLINGS = [0.0, 0.05, 3.0]


def tasks_and_data(kind: str):
    g = torch.Generator().manual_seed(3)
    n, d, t = 300, 6, 3
    x = torch.randn(n, d, generator=g)
    w = torch.randn(t, d, generator=g)
    y = x @ w.T + 0.5 * torch.randn(n, t, generator=g)
    if kind == "classification":
        y = (y > 0).float()
        tasks = [TaskSpec(f"t{i}", "classification", ["no", "yes"]) for i in range(t)]
    else:
        tasks = [TaskSpec(f"t{i}", "regression") for i in range(t)]
    owner = torch.arange(n) % t  # long format: each row labelled for one task
    y = torch.where(torch.nn.functional.one_hot(owner, t).bool(), y, torch.full_like(y, float("nan")))
    return tasks, {"train": (x[:180], y[:180]), "val": (x[180:240], y[180:240]), "test": (x[240:], y[240:])}


def build(tasks, coupling, seed=0):
    torch.manual_seed(seed)
    return SoftSharing(6, tasks, hidden=[16, 8], coupling=coupling)


def without_time(logged):
    return sorted((k, round(v, 5), step) for k, v, step, _ in logged)


@pytest.mark.parametrize("kind", ["regression", "classification"])
def test_members_reach_the_weights_and_results_of_their_runs_alone(kind):
    tasks, data = tasks_and_data(kind)
    alone = []
    for c in COUPLINGS:
        net = build(tasks, c)
        module = TaskModule(net, tasks, [{"params": list(net.parameters()), "lr": RUN.lr}], torch.optim.AdamW)
        alone.append((net, module, fit(module, data, RUN, SETTINGS, seed=0)))

    nets = [build(tasks, c) for c in COUPLINGS]
    joint = SoftSharing.members(nets)
    module = MembersModule(joint, tasks, len(nets), [{"params": list(joint.parameters()), "lr": RUN.lr}], torch.optim.AdamW, RUN.patience)
    results, histories = fit_members(module, data, RUN, SETTINGS, seed=0)

    assert len({r.epochs for _, _, r in alone}) > 1  # the members stop at different epochs: each is stopped on its own
    for m, (net, mod, ref) in enumerate(alone):
        got = results[m]
        assert (got.best_epoch, got.epochs, got.steps) == (ref.best_epoch, ref.epochs, ref.steps), f"member {m}"
        assert got.best_val == pytest.approx(ref.best_val, abs=1e-6)
        assert got.test.keys() == ref.test.keys()
        for k in ref.test:
            assert got.test[k] == pytest.approx(ref.test[k], abs=1e-5), (m, k)
        for mine, theirs in zip(joint.member_state(m, len(nets)), net.branches.parameters()):
            torch.testing.assert_close(mine, theirs.detach(), atol=1e-6, rtol=1e-5)  # kept (best) weights
        assert without_time(got.logged) == without_time(ref.logged)
        assert [{k: round(v, 5) for k, v in h.items()} for h in histories[m]] == [{k: round(v, 5) for k, v in h.items()} for h in mod.history]


def test_members_with_dropout_are_refused():
    tasks, data = tasks_and_data("regression")
    torch.manual_seed(0)
    nets = [SoftSharing(6, tasks, hidden=[8], dropout=0.2, coupling=c) for c in COUPLINGS]
    joint = SoftSharing.members(nets)
    module = MembersModule(joint, tasks, len(nets), [{"params": list(joint.parameters()), "lr": RUN.lr}], torch.optim.AdamW, RUN.patience)
    with pytest.raises(ValueError, match="dropout"):
        fit_members(module, data, RUN, SETTINGS, seed=0)
