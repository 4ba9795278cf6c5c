"""`single_task` and `soft` run their per-task networks as one batched, task-routed computation: on a
masked label matrix they give the per-task outputs, masked losses and gradients of the plain loop over
per-task `MLP` trunks and heads carrying the same weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pipeline.data import TaskSpec
from pipeline.models import MLP
from pipeline.multitask.architectures import heads
from pipeline.multitask.architectures.single_task import SingleTask
from pipeline.multitask.architectures.soft import SoftSharing
from pipeline.multitask.weighting.equal import Equal
from pipeline.training.metrics import masked_losses
from pipeline.training.module import backward_step

TASKS = [TaskSpec("digit", "classification", ["a", "b", "c"]), TaskSpec("score", "regression"), TaskSpec("pass", "classification", ["no", "yes"])]
D, HIDDEN, HEAD_HIDDEN, N = 5, (8, 6), (4,), 12
NAN = float("nan")


def labels(pattern: str) -> torch.Tensor:
    """y [N, T]: 'long' = each row labelled for one task (task 2 for none), 'wide' = every row for
    every task, 'mixed' = some rows for one task, some for several, some for none."""
    g = torch.Generator().manual_seed(1)
    full = torch.stack(
        [torch.randint(0, 3, (N,), generator=g).float(), torch.randn(N, generator=g), torch.randint(0, 2, (N,), generator=g).float()], 1
    )
    keep = torch.zeros(N, len(TASKS), dtype=torch.bool)
    if pattern == "wide":
        keep[:] = True
    elif pattern == "long":
        keep[torch.arange(N), torch.arange(N) % 2] = True
    else:
        keep[:4, 0] = True  # one task each
        keep[4:6, 1] = True
        keep[6, 2] = True
        keep[7:10] = torch.tensor([[1, 1, 0], [1, 0, 1], [1, 1, 1]], dtype=torch.bool)  # several
        # rows 10, 11: none
    return torch.where(keep, full, torch.full_like(full, NAN))


def build(cls, **kw):
    torch.manual_seed(0)
    return cls(D, TASKS, hidden=HIDDEN, head_hidden=HEAD_HIDDEN, **kw)


def reference(net: SingleTask) -> nn.ModuleList:
    """The plain per-task networks (MLP trunk -> head tower -> Linear) loaded with net's weights."""
    ws, bs = net.branches.weights, net.branches.biases
    branches = nn.ModuleList()
    for t, task in enumerate(TASKS):
        trunk = MLP(D, HIDDEN)
        head = heads(trunk.out_dim, [task], HEAD_HIDDEN)[0]
        linears = [b.linear for b in trunk.blocks] + [b.linear for b in head[0].blocks] + [head[1]]
        with torch.no_grad():
            for lin, w, b in zip(linears, ws, bs):
                lin.weight.copy_(w[t, :, : lin.out_features].T)
                lin.bias.copy_(b[t, 0, : lin.out_features])
        branches.append(nn.Sequential(trunk, head))
    return branches


def reference_grads(net: SingleTask, ref: nn.ModuleList) -> list[torch.Tensor]:
    """The reference's gradients in net's stacked layout (zero in the unused output columns)."""
    grads = [torch.zeros_like(p) for p in net.branches.parameters()]
    n_layers = len(net.branches.weights)
    for t, branch in enumerate(ref):
        trunk, head = branch
        linears = [b.linear for b in trunk.blocks] + [b.linear for b in head[0].blocks] + [head[1]]
        for i, lin in enumerate(linears):
            k = lin.out_features
            if lin.weight.grad is None:  # a task with no labelled row
                continue
            grads[i][t, :, :k] = lin.weight.grad.T
            grads[n_layers + i][t, 0, :k] = lin.bias.grad
    return grads


@pytest.mark.parametrize("cls,kw", [(SingleTask, {}), (SoftSharing, {"coupling": 0.3})], ids=["single_task", "soft"])
@pytest.mark.parametrize("pattern", ["mixed", "long", "wide"])
def test_batched_routed_model_matches_the_per_task_loop(cls, kw, pattern):
    net = build(cls, **kw)
    ref = reference(net)
    x, y = torch.randn(N, D), labels(pattern)
    labelled = ~torch.isnan(y)

    expected = [branch(x) for branch in ref]
    full, _ = net(x)  # no labels: every row through every branch
    for t, (out, exp) in enumerate(zip(full, expected)):
        torch.testing.assert_close(out, exp, atol=1e-5, rtol=1e-5, msg=f"task {t}, all rows")
    routed, _ = net(x, labelled=labelled)
    for t, (out, exp) in enumerate(zip(routed, expected)):
        assert out.shape == exp.shape
        torch.testing.assert_close(out[labelled[:, t]], exp[labelled[:, t]], atol=1e-5, rtol=1e-5, msg=f"task {t}, labelled rows")
        if pattern != "wide":  # routed: the unlabelled entries are not computed
            assert torch.isnan(out[~labelled[:, t]]).all()

    # One training step as the multitask stage takes it, against the loop's summed losses + penalty.
    losses, _ = backward_step(net, TASKS, Equal(len(TASKS)), x, y)
    ref_losses = masked_losses(TASKS, expected, y)
    torch.testing.assert_close(torch.stack(losses).detach(), torch.stack(ref_losses).detach(), atol=1e-5, rtol=1e-5)
    total = sum(ref_losses)
    if cls is SoftSharing:
        trunks = [branch[0] for branch in ref]
        per_layer = zip(*(trunk.parameters() for trunk in trunks))
        penalty = kw["coupling"] * sum(((torch.stack(ps) - torch.stack(ps).mean(0)) ** 2).sum() for ps in per_layer)
        torch.testing.assert_close(net.penalty(), penalty, atol=1e-5, rtol=1e-5)
        total = total + penalty
    total.backward()
    for i, (p, g) in enumerate(zip(net.branches.parameters(), reference_grads(net, ref))):
        torch.testing.assert_close(p.grad, g, atol=1e-5, rtol=1e-5, msg=f"stacked parameter {i}")
    if pattern == "long" and cls is SingleTask:  # task 2 has no row: no gradient reaches its slice (soft: the penalty's does)
        assert all((p.grad[2] == 0).all() for p in net.branches.parameters())


def test_initialisation_follows_nn_linear():
    """Per layer, every task's weights and biases lie within nn.Linear's bound 1/sqrt(fan_in) and
    differ between tasks (independent draws)."""
    net = SingleTask(17, TASKS * 10, hidden=(256, 128))
    for w, b in zip(net.branches.weights, net.branches.biases):
        bound = w.shape[1] ** -0.5
        assert w.abs().max() <= bound and b.abs().max() <= bound
        assert w.abs().max() > 0.95 * bound  # uniform over the whole range, not a narrower one
        torch.testing.assert_close(w.std().item(), bound / 3**0.5, rtol=0.05, atol=0)  # U(-a, a) has std a / sqrt(3)
        assert not torch.equal(w[0], w[1])


@pytest.mark.parametrize("kind", ["regression", "classification"])
@pytest.mark.parametrize("pattern", ["mixed", "long", "wide"])
def test_losses_of_stacked_outputs_equal_the_per_task_loop(kind, pattern):
    """Tasks of one kind and width take masked_losses' one-gather path: the same per-task values and
    gradients as the loop over tasks, and an absent task is still 0 with no graph."""
    tasks = [TaskSpec(f"t{t}", kind, None if kind == "regression" else ["a", "b", "c"]) for t in range(3)]
    torch.manual_seed(0)
    net = SingleTask(D, tasks, hidden=HIDDEN)
    x, y = torch.randn(N, D), labels(pattern)
    if kind == "classification":
        y = torch.where(torch.isnan(y), y, y.abs().round().clamp(max=2))
    out, _ = net(x, labelled=~torch.isnan(y))
    assert out.full is not None
    fast = masked_losses(tasks, out, y)
    loop = masked_losses(tasks, list(out), y)  # a plain list: the loop
    assert [loss.requires_grad for loss in fast] == [loss.requires_grad for loss in loop]
    torch.testing.assert_close(torch.stack(fast), torch.stack(loop), atol=1e-6, rtol=1e-6)
    grads = [torch.autograd.grad(sum(losses), list(net.parameters()), retain_graph=True) for losses in (fast, loop)]
    for g_fast, g_loop in zip(*grads):
        torch.testing.assert_close(g_fast, g_loop, atol=1e-6, rtol=1e-6)
