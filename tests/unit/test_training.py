"""The training package: TensorLoader's grouping, the selection score, the gradient cosine, and the
one module trained with one task doing exactly a plain optimisation step."""

from __future__ import annotations

import copy
import functools
import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from pipeline.data import TaskSpec
from pipeline.models import architecture, build
from pipeline.training import TaskModule, TensorLoader, selection_score, trainer
from support import cpu_settings

SETTINGS = cpu_settings()


@pytest.mark.parametrize("k", [1, 3, 4, 7])
def test_grouped_loader_yields_the_same_minibatches_in_the_same_order(k):
    x, y = torch.arange(23.0)[:, None], torch.arange(23.0)[:, None] * 10
    plain = list(TensorLoader(x, y, batch_size=4, seed=5, min_batches=10))
    grouped = list(TensorLoader(x, y, batch_size=4, seed=5, min_batches=10, steps_per_batch=k))
    assert len(grouped) == len(TensorLoader(x, y, batch_size=4, seed=5, min_batches=10, steps_per_batch=k)) == math.ceil(len(plain) / k)
    assert all(isinstance(g, list) for g in grouped)
    assert [len(g) for g in grouped[:-1]] == [k] * (len(grouped) - 1) and 1 <= len(grouped[-1]) <= k
    flat = [pair for g in grouped for pair in g]
    assert len(flat) == len(plain)
    for (xa, ya), (xb, yb) in zip(plain, flat):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_min_batches_stretches_an_epoch_over_whole_shuffled_passes():
    x = torch.arange(10.0)[:, None]
    loader = TensorLoader(x, x, batch_size=4, seed=0, min_batches=7)
    batches = list(loader)
    # 3 minibatches per pass (4 + 4 + 2 rows): 7 asked for -> 3 whole passes, 9 steps.
    assert loader.steps() == len(loader) == len(batches) == 9
    passes = [torch.cat([b[0] for b in batches[i : i + 3]]).flatten().sort().values for i in (0, 3, 6)]
    assert all(torch.equal(p, x.flatten()) for p in passes)  # each pass sees every row once
    assert len({tuple(torch.cat([b[0] for b in batches[i : i + 3]]).flatten().tolist()) for i in (0, 3, 6)}) > 1  # reshuffled
    assert len(list(TensorLoader(x, x, batch_size=4, seed=0, min_batches=1))) == 3


def test_selection_score_on_hand_values():
    tasks = [TaskSpec("digit", "classification", ["0", "1"]), TaskSpec("price", "regression", scale=2.0), TaskSpec("rent", "regression")]
    # digit: 0.8; price: 1 - (1.0 / 2)^2 = 0.75; rent: 1 - 0.5^2 = 0.75 -> mean 0.7666...
    metrics = {"digit/acc": 0.8, "price/rmse": 1.0, "price/r2": -5.0, "rent/rmse": 0.5}
    assert selection_score(tasks, metrics) == pytest.approx((0.8 + 0.75 + 0.75) / 3)
    # A task without metrics (too few labels) or with a NaN one is left out of the mean.
    assert selection_score(tasks, {"digit/acc": 0.8, "price/rmse": float("nan")}) == pytest.approx(0.8)
    assert math.isnan(selection_score(tasks, {}))


class _Shared(nn.Module):
    """z = w.x shared by two regression tasks whose heads are the identity."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Linear(3, 1, bias=False)
        with torch.no_grad():
            self.trunk.weight.copy_(torch.tensor([[0.5, -1.0, 2.0]]))

    def forward(self, x):
        z = self.trunk(x)
        return [z, z], [z]

    def shared_parameters(self):
        return list(self.trunk.parameters())

    def task_parameters(self, t):
        return []

    def penalty(self):
        return None


def _cosine(x, y):
    tasks = [TaskSpec("a", "regression"), TaskSpec("b", "regression")]
    net = _Shared()
    return TaskModule(net, tasks, [{"params": list(net.parameters()), "lr": 0.1}], None).gradient_cosine(x, y)


def test_gradient_cosine_identical_tasks_is_one_and_opposed_is_minus_one():
    x = torch.tensor([[1.0, 2.0, 3.0]])  # z = 0.5 - 2 + 6 = 4.5
    same = _cosine(x, torch.tensor([[1.0, 1.0]]))
    assert same["grad/cos_mean"] == pytest.approx(1.0) and same["grad/cos_min"] == pytest.approx(1.0)
    # Residuals z - y of +1 and -1: gradients 2 (z - y) x point opposite ways.
    opposed = _cosine(x, torch.tensor([[3.5, 5.5]]))
    assert opposed["grad/cos_mean"] == pytest.approx(-1.0) and opposed["grad/cos_min"] == pytest.approx(-1.0)


def test_gradient_cosine_matches_a_hand_computation():
    x = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # z = [0.5, -1.0]
    y = torch.tensor([[0.5 - 1.0, 0.5 - 2.0], [-1.0 + 1.0, -1.0 - 1.0]])  # residuals z - y a: (1, -1), b: (2, 1)
    # g_t = (2 / N) sum_i r_it x_i: g_a = (1, -1, 0), g_b = (2, 1, 0); cos = (2 - 1) / (sqrt 2 sqrt 5).
    assert _cosine(x, y)["grad/cos_mean"] == pytest.approx(1 / math.sqrt(10), abs=1e-6)


@pytest.mark.filterwarnings("ignore:You defined a `validation_step` but have no `val_dataloader`")
def test_one_task_module_step_is_a_plain_step_with_group_rates_and_extra_loss():
    torch.manual_seed(0)
    task = TaskSpec("digit", "classification", [str(i) for i in range(4)])
    net = build(architecture({"_target_": "pipeline.models.MLP", "hidden": [8], "dropout": 0.0}, 5, 4))
    ref, init = copy.deepcopy(net), copy.deepcopy(net)
    x, y = torch.randn(12, 5), torch.randint(0, 4, (12,)).float()
    extra = lambda n: 0.5 * (n.head.weight**2).sum()  # noqa: E731
    sgd = functools.partial(torch.optim.SGD, momentum=0.0)

    groups = [{"params": list(net.backbone.parameters()), "lr": 0.1}, {"params": list(net.head.parameters()), "lr": 0.01}]
    module = TaskModule.single(net, task, groups, sgd, extra_loss=extra)
    tr = trainer(SETTINGS, max_epochs=1)
    tr.fit(module, TensorLoader(x, y[:, None], batch_size=len(x), shuffle=False))
    assert tr.global_step == 1

    opt = sgd([{"params": list(ref.backbone.parameters()), "lr": 0.1}, {"params": list(ref.head.parameters()), "lr": 0.01}])
    opt.zero_grad()
    (F.cross_entropy(ref(x), y.long()) + extra(ref)).backward()
    opt.step()
    for (name, p), q in zip(net.named_parameters(), ref.parameters()):
        assert torch.allclose(p, q, atol=1e-7), name
    assert all(not torch.equal(p, q) for p, q in zip(net.parameters(), init.parameters()))  # every group took the step


@pytest.mark.parametrize("kinds", [("classification",), ("regression",), ("classification", "regression")])
def test_dense_labels_step_equals_the_masked_step(kinds):
    """`fit` marks NaN-free training labels dense: the step then skips the masks but must compute the
    same losses and gradients, bit for bit."""
    from pipeline.multitask.architectures.hard import HardSharing
    from pipeline.multitask.weighting.equal import Equal
    from pipeline.training import OneTaskNet, backward_step

    tasks = [TaskSpec(f"t{i}", kind, ["a", "b", "c"] if kind == "classification" else []) for i, kind in enumerate(kinds)]
    torch.manual_seed(1)
    x = torch.randn(16, 5)
    y = torch.stack([torch.randint(0, 3, (16,)).float() if k == "classification" else torch.randn(16) for k in kinds], 1)
    if len(tasks) == 1:
        model = OneTaskNet(build(architecture({"_target_": "pipeline.models.MLP", "hidden": [8], "dropout": 0.0}, 5, tasks[0].n_outputs)))
    else:
        model = HardSharing(5, tasks, hidden=[8])
    grads = []
    for dense in (False, True):
        model.zero_grad(set_to_none=True)
        losses, weights = backward_step(model, tasks, Equal(len(tasks)), x, y, dense=dense)
        grads.append(([loss.detach() for loss in losses], weights, [p.grad.clone() for p in model.parameters()]))
    (l0, w0, g0), (l1, w1, g1) = grads
    assert all(torch.equal(a, b) for a, b in zip(l0, l1)) and torch.equal(w0, w1)
    assert all(torch.equal(a, b) for a, b in zip(g0, g1))


def test_epoch_bar_counts_epochs_names_the_monitored_metric_and_early_stopping():
    """The progress bar a person watches: epochs of max epochs, the monitored validation metric with
    its best value, `early stop` when early stopping ended the run; no logger version (`v_num`)."""
    import io

    from pipeline.config import FitConfig
    from pipeline.training import fit
    from pipeline.training.fit import EpochBar

    torch.manual_seed(0)
    task = TaskSpec("digit", "classification", ["a", "b"])
    net = build(architecture({"_target_": "pipeline.models.MLP", "hidden": [4], "dropout": 0.0}, 3, 2))
    x = torch.randn(40, 3)
    y = torch.randint(0, 2, (40, 1)).float()  # labels unrelated to x: validation stops improving early
    data = {s: (x, y) for s in ("train", "val", "test")}
    module = TaskModule.single(net, task, [{"params": list(net.parameters()), "lr": 1e-3}], functools.partial(torch.optim.SGD))
    out = io.StringIO()
    run = FitConfig(lr=1e-3, batch_size=40, max_epochs=50, patience=2, min_steps_per_epoch=1)
    result = fit(module, data, run, SETTINGS, 0, callbacks=[EpochBar(out)])
    text = out.getvalue()
    assert result.epochs < 50
    assert f"early stop at epoch {result.epochs}/50" in text
    assert "val/acc" in text and "best" in text and "v_num" not in text


@pytest.mark.parametrize("steps_per_batch", [0, 3, 64])
def test_fit_counts_every_step_and_keeps_the_best_validation_epoch(steps_per_batch):
    """`fit` steps the torch optimizer itself and advances Lightning's step counter: global_step (the
    result's steps) counts every minibatch, and model selection, which saves only when that counter has
    moved, keeps the weights of the epoch with the best validation accuracy, not the first epoch's."""
    import dataclasses

    import lightning as L

    from pipeline.config import FitConfig
    from pipeline.training import fit

    class Watch(L.Callback):  # the weights at each epoch's end: at the next epoch's start, and at the end
        def __init__(self) -> None:
            self.seen: list[dict] = []

        def _keep(self, module) -> None:
            self.seen.append({k: v.detach().clone() for k, v in module.state_dict().items()})

        def on_train_epoch_start(self, trainer, module) -> None:
            if trainer.current_epoch > 0:
                self._keep(module)

        def on_train_end(self, trainer, module) -> None:
            self._keep(module)

    torch.manual_seed(0)
    task = TaskSpec("digit", "classification", ["a", "b", "c"])
    x = torch.randn(90, 4)
    y = (x[:, :2].sum(1) > 0).float() + (x[:, 2] > 1).float()  # learnable: accuracy rises over epochs
    data = {"train": (x[:60], y[:60, None]), "val": (x[60:], y[60:, None]), "test": (x[60:], y[60:, None])}
    net = build(architecture({"_target_": "pipeline.models.MLP", "hidden": [8], "dropout": 0.0}, 4, 3))
    module = TaskModule.single(net, task, [{"params": list(net.parameters()), "lr": 0.05}], functools.partial(torch.optim.SGD))
    run = FitConfig(lr=0.05, batch_size=8, max_epochs=12, patience=100, min_steps_per_epoch=1)
    watch = Watch()
    result = fit(module, data, run, dataclasses.replace(SETTINGS, steps_per_batch=steps_per_batch), 0, callbacks=[watch])

    assert result.epochs == 12 and result.steps == 12 * math.ceil(60 / 8)
    accs = [v for k, v, _, _ in result.logged if k == "val/acc"]  # one per epoch, as validated
    assert len(accs) == len(watch.seen) == 12
    best = max(range(len(accs)), key=lambda e: (accs[e], -e))  # the first epoch with the best score
    assert best > 0, accs  # the check below must tell the kept epoch from the first
    assert result.best_epoch == best and result.best_val == pytest.approx(accs[best])
    kept = module.state_dict()
    assert all(torch.equal(kept[k], v) for k, v in watch.seen[best].items())
