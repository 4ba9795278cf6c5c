"""Multitask architectures built from the real conf/multitask/arch/*.yaml files (every candidate of a
knob set to `auto`), as the multitask stage builds them: which parameters the tasks share, which
each task owns, and what reaches each task's output."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from pipeline.data import TaskSpec
from pipeline.multitask.architectures import MultitaskNet
from pipeline.multitask.architectures.mmoe import MMoE
from pipeline.multitask.architectures.single_task import SingleTask
from pipeline.multitask.architectures.soft import SoftSharing
from pipeline.stages.multitask import auto_candidates

REPO = Path(__file__).resolve().parents[2]
ARCH = REPO / "conf" / "multitask" / "arch"
INPUT_DIM = 6
TASKS = [TaskSpec("digit", "classification", ["a", "b", "c"]), TaskSpec("score", "regression"), TaskSpec("pass", "classification", ["no", "yes"])]
# (file, candidate): one network per assignment of the `auto` knobs, e.g. soft at every coupling.
CANDIDATES = [(p.stem, i, c) for p in sorted(ARCH.glob("*.yaml")) for i, c in enumerate(auto_candidates(OmegaConf.load(p)))]
IDS = [f"{name}-{i}" for name, i, _ in CANDIDATES]


def build(spec: dict, **overrides) -> MultitaskNet:
    torch.manual_seed(0)
    return instantiate({**spec, **overrides}, _partial_=True)(input_dim=INPUT_DIM, tasks=TASKS)


def ids(params) -> list[int]:
    return [id(p) for p in params]


def assert_partition(net: MultitaskNet) -> None:
    """shared_parameters() and task_parameters(t) for every t: no parameter listed twice, none in two
    groups, and together every parameter of the network. Stacked per-task parameters (single_task,
    soft): task t's parameters are slice t of each, and nothing is shared."""
    if isinstance(net, SingleTask):
        stacked = list(net.parameters())
        assert net.shared_parameters() == [] and all(p.shape[0] == len(TASKS) for p in stacked)
        for t in range(len(TASKS)):
            own = net.task_parameters(t)
            assert len(own) == len(stacked) and all(v.data_ptr() == p[t].data_ptr() and v.shape == p[t].shape for v, p in zip(own, stacked))
        return
    groups = [ids(net.shared_parameters())] + [ids(net.task_parameters(t)) for t in range(len(TASKS))]
    listed = [i for g in groups for i in g]
    assert len(listed) == len(set(listed)), "a parameter is listed twice or in two groups"
    assert set(listed) == set(ids(net.parameters())), "shared + task parameters are not all of the network's parameters"
    assert all(groups[1:]), "a task owns no parameter"


def assert_outputs_depend_on_own_and_shared_only(net: MultitaskNet) -> None:
    """Task t's output has a gradient (not None) from every shared parameter and every parameter of
    task t, and from no other parameter."""
    x = torch.randn(5, INPUT_DIM)
    outs, _ = net(x)
    assert [o.shape for o in outs] == [(5, t.n_outputs) for t in TASKS]
    if isinstance(net, SingleTask):  # stacked: output t's gradient is nonzero in slice t of every parameter, zero elsewhere
        for t, out in enumerate(outs):
            for i, g in enumerate(torch.autograd.grad(out.sum(), list(net.parameters()), retain_graph=True)):
                assert g[t].abs().sum() > 0, f"task {t} does not reach its slice of parameter {i}"
                assert (torch.cat([g[:t], g[t + 1 :]]) == 0).all(), f"task {t} reaches another task's slice of parameter {i}"
        return
    names = {id(p): n for n, p in net.named_parameters()}
    for t, out in enumerate(outs):
        allowed = set(ids(net.shared_parameters())) | set(ids(net.task_parameters(t)))
        params = list(net.parameters())
        grads = torch.autograd.grad(out.sum(), params, retain_graph=True, allow_unused=True)
        reached = {id(p) for p, g in zip(params, grads) if g is not None}
        assert reached == allowed, (
            f"task {t}: reached but not its own or shared {[names[i] for i in reached - allowed]}; "
            f"its own or shared but not reached {[names[i] for i in allowed - reached]}"
        )


@pytest.mark.parametrize("name,i,spec", CANDIDATES, ids=IDS)
def test_shared_and_task_parameters_partition_the_network(name, i, spec):
    net = build(spec)
    assert_partition(net)
    # Independent networks (single_task, and soft, which ties them by a penalty only) share nothing.
    assert (net.shared_parameters() == []) == isinstance(net, SingleTask), name


@pytest.mark.parametrize("name,i,spec", CANDIDATES, ids=IDS)
def test_each_task_output_depends_only_on_shared_and_its_own_parameters(name, i, spec):
    assert_outputs_depend_on_own_and_shared_only(build(spec))


@pytest.mark.parametrize("name,i,spec", CANDIDATES, ids=IDS)
def test_features_are_the_shared_representation(name, i, spec):
    """The features a scheme returns (what `jacobian: features` weightings differentiate) are computed
    from the shared parameters alone; a scheme without shared parameters returns none."""
    net = build(spec)
    _, features = net(torch.randn(5, INPUT_DIM))
    if not net.shared_parameters():
        assert features is None
        return
    params = list(net.parameters())
    grads = torch.autograd.grad(sum(f.sum() for f in features), params, allow_unused=True)
    assert {id(p) for p, g in zip(params, grads) if g is not None} == set(ids(net.shared_parameters()))


@pytest.mark.parametrize("name,i,spec", CANDIDATES, ids=IDS)
def test_only_soft_sharing_has_a_penalty(name, i, spec):
    net = build(spec)
    if not isinstance(net, SoftSharing):
        assert net.penalty() is None


SOFT = OmegaConf.to_container(OmegaConf.load(ARCH / "soft.yaml"))
SOFT.pop("auto_grid", None)


def test_soft_penalty_is_zero_for_identical_trunks_and_measures_their_spread():
    net = build(SOFT, coupling=0.5)
    trunk = [*net.branches.weights[: net.trunk_layers], *net.branches.biases[: net.trunk_layers]]
    with torch.no_grad():
        for p in trunk:
            p[1:] = p[0]
    assert net.penalty() < 1e-9  # zero up to rounding: the float32 mean of three equal numbers
    # Move one weight of trunk 0 by delta: the mean moves by delta/T, and
    # sum_t ||W_t - mean||^2 = delta^2 (1 - 1/T)^2 + (T - 1) (delta/T)^2 = delta^2 (T - 1) / T.
    delta, n = 0.3, len(TASKS)
    with torch.no_grad():
        trunk[0][0].view(-1)[0] += delta
    torch.testing.assert_close(net.penalty(), torch.tensor(0.5 * delta**2 * (n - 1) / n))
    # Its gradient pulls the trunks together: trunk 0's moved weight down, the others' up.
    net.penalty().backward()
    grads = [trunk[0].grad[t].view(-1)[0] for t in range(n)]
    assert grads[0] > 0 and all(g < 0 for g in grads[1:])


def test_soft_penalty_is_positive_for_different_trunks_and_off_at_coupling_zero():
    net = build(SOFT, coupling=1e-3)  # independently initialised trunks
    assert net.penalty() > 0
    off = build(SOFT, coupling=0.0)
    assert off.penalty() is None or off.penalty() == 0


MMOE = OmegaConf.to_container(OmegaConf.load(ARCH / "mmoe.yaml"))


def test_mmoe_has_one_gate_per_task_that_routes_only_its_task():
    net = build(MMOE)
    assert isinstance(net, MMoE) and len(net.gates) == len(TASKS)
    for t, gate in enumerate(net.gates):
        assert gate.out_features == len(net.experts)
        assert set(ids(gate.parameters())) <= set(ids(net.task_parameters(t)))
    x = torch.randn(5, INPUT_DIM)
    before, _ = net(x)
    with torch.no_grad():
        net.gates[1].bias.copy_(torch.tensor([10.0] + [0.0] * (len(net.experts) - 1)))  # task 1 -> expert 0
    after, _ = net(x)
    assert torch.equal(after[0], before[0]) and torch.equal(after[2], before[2])
    assert not torch.allclose(after[1], before[1])
