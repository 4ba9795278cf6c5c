"""One Lightning module for one task or many: the weighting method owns the backward pass.

A multitask net maps x to (per-task outputs, shared features) and says which parameters the tasks
share (`pipeline.multitask.architectures.MultitaskNet`); a single-task backbone -> head `Net` is
seen through `OneTaskNet` as a multitask net of one task, trained with equal weights, so single-task
training is multitask training with T = 1. Per step the loss is

    L = sum_t w_t L_t + Omega(net),

where L_t are the masked per-task losses (labels are NaN where a sample has none), w_t are set by
the weighting (or it aggregates task gradients instead), and Omega is the net's `penalty()`: soft
sharing's coupling, or a transfer strategy's `extra_loss`. Parameter groups keep their own
learning rates (transfer plans).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import lightning as L
import torch
from lightning.pytorch.plugins.precision import Precision
from lightning.pytorch.strategies import SingleDeviceStrategy
from torch import nn
from torch.nn import functional as F

from pipeline.data import TaskSpec
from pipeline.errors import Diverged
from pipeline.training.metrics import masked_losses, per_task_metrics, selection, selection_score


class OneTaskNet(nn.Module):
    """A backbone -> head `Net` as a multitask net of one task: outputs [head(z)], features [z],
    nothing shared; `extra_loss(net)` (a transfer strategy's term, or None) is its penalty."""

    closed_form_penalty = False  # its penalty (a strategy's extra_loss) is back-propagated

    def __init__(self, net: nn.Module, extra_loss: Callable[[nn.Module], torch.Tensor] | None = None) -> None:
        super().__init__()
        self.net = net
        self.extra_loss = extra_loss

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        z = self.net.backbone(x)
        return [self.net.head(z)], [z]

    def shared_parameters(self) -> list[nn.Parameter]:
        return []

    def task_parameters(self, t: int) -> list[nn.Parameter]:
        return list(self.net.parameters())

    def penalty(self) -> torch.Tensor | None:
        return None if self.extra_loss is None else self.extra_loss(self.net)


def outputs(net, x: torch.Tensor, y: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
    """net(x) for computing losses and metrics against labels y [N, T]: a net that routes rows by task
    (`MultitaskNet.routes_by_task`) computes only the labelled entries, the only ones these read."""
    return net(x, labelled=~torch.isnan(y)) if getattr(net, "routes_by_task", False) else net(x)


def backward_step(
    net, tasks: Sequence[TaskSpec], weighting, x: torch.Tensor, y: torch.Tensor, dense: bool = False
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """One step's forward and backward pass (the optimizer's step is the caller's): the per-task
    losses and the task weights the weighting applied. The penalty's gradient accumulates with the
    weighting's, so it is the gradient of the sum above; a net with `closed_form_penalty` (soft
    sharing) adds it itself after the tasks' backward pass. dense: y has no NaN (see masked_losses)."""
    out, features = outputs(net, x, y) if not dense else net(x)
    losses = masked_losses(tasks, out, y, dense)
    closed_form = net.closed_form_penalty
    penalty = None if closed_form else net.penalty()
    if penalty is not None:
        # Kept: a penalty on the step's features (BSS) shares the forward graph the losses need next.
        penalty.backward(retain_graph=True)
    result = _task_backward(net, tasks, weighting, losses, features, dense)
    if closed_form:
        net.add_penalty_grad()
    return result


def _task_backward(net, tasks, weighting, losses, features, dense: bool = False) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The task losses' backward pass as the weighting makes it; returns (losses, task weights)."""
    if weighting.plain_sum:
        # What Weighting.backward does for equal weights, without listing parameters every step
        # (a tenth of a single-task step of the default MLP): a task is present when its loss has a
        # graph and is not exactly 0; with none present there is no backward pass at all.
        if len(losses) == 1:  # the same without stacking (every single-task step)
            loss = losses[0]
            if dense:  # every row labelled: present, and no host sync to ask whether the loss is 0
                loss.backward()
                return losses, _ONE
            if not (loss.requires_grad and bool(loss != 0)):
                return losses, loss.detach().new_zeros(1)
            loss.backward()
            return losses, loss.detach().new_ones(1)
        stacked = torch.stack(losses)
        present = torch.tensor([loss.requires_grad for loss in losses], device=stacked.device) & (stacked.detach() != 0)
        if not bool(present.any()):
            return losses, torch.zeros_like(stacked.detach())
        stacked.sum().backward()
        return losses, torch.ones_like(stacked.detach())
    weights = weighting.backward(losses, net.shared_parameters(), features, [net.task_parameters(t) for t in range(len(tasks))])
    return losses, weights


_ONE = torch.ones(1)  # the weight of a present single task (read only: summed per epoch)


def epoch_means(losses: list[torch.Tensor], weights: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The epoch's mean per-task losses and weights from its steps' [T] tensors, stacked once per
    epoch: a running sum costs two tensor operations a step."""
    return torch.stack(losses).mean(0), torch.stack(weights).to(losses[0].device).mean(0)


def epoch_record(tasks: Sequence[TaskSpec], mean_losses: torch.Tensor, mean_weights: torch.Tensor) -> dict[str, float]:
    """An epoch's training metrics: the summed loss and, for several tasks, each task's loss and weight."""
    record = {"train/loss": float(mean_losses.sum())}
    if len(tasks) > 1:
        for task, loss, w in zip(tasks, mean_losses.tolist(), mean_weights.tolist()):
            record[f"train/{task.name}/loss"] = loss
            record[f"weight/{task.name}"] = w
    return record


def evaluation(tasks: Sequence[TaskSpec], out, y: torch.Tensor, prefix: str) -> dict[str, float]:
    """`<prefix>/...` metrics of outputs `out` against labels y: `<prefix>/<metric>` and the loss for
    one task; per task `<prefix>/<task>/<metric>`, `<prefix>/score` and the summed loss for several."""
    one = len(tasks) == 1
    metrics = per_task_metrics(tasks, out, y, task_names=not one)
    loss = {f"{prefix}/loss": float(sum(masked_losses(tasks, out, y)))}
    values = {f"{prefix}/{k}": v for k, v in metrics.items()}
    return {**loss, **values} if one else {**values, f"{prefix}/score": selection_score(tasks, metrics), **loss}


# Plain attributes written many times per step: Lightning's `_current_fx_name` (around every hook
# call) and our loss counters. nn.Module.__setattr__'s type checks cost ~10x a plain write.
_PLAIN_ATTRS = frozenset({"_current_fx_name", "_losses", "_weights", "_probe"})


class TaskModule(L.LightningModule):
    """Trains `net` on `tasks` (labels y [N, T]). param_groups: [{"params", "lr", ...}], groups with
    no trainable parameter left out; the weighting's own parameters (e.g. log-variances) train at
    the first group's rate. weighting: None = equal weights. Model selection follows `monitor()`:
    one task's primary metric (`val/acc`, `val/rmse`) in its direction, or `val/score` for several.
    Metrics are `<split>/<metric>` for one task, `<split>/<task>/<metric>` and `<split>/score` for several."""

    def __init__(
        self,
        net: nn.Module,
        tasks: Sequence[TaskSpec],
        param_groups: Sequence[Mapping[str, Any]],
        optimizer: Callable[..., torch.optim.Optimizer] | None,
        weighting: nn.Module | None = None,
        log_gradient_cosine: bool = True,
    ) -> None:
        super().__init__()
        from pipeline.multitask.weighting.equal import Equal

        # Manual optimization: the weighting decides how task losses become one update, and the
        # automatic closure (zero_grad/step hook calls, closure and result objects) cost ~0.25 ms a
        # step, ~10% of a step of the default MLP on CPU. LightningOptimizer.step's hooks still run.
        self.automatic_optimization = False
        self.net = net
        self.tasks = list(tasks)
        self.weighting = weighting if weighting is not None else Equal(len(self.tasks))
        self.param_groups = [dict(g) for g in param_groups]
        self.optimizer_factory = optimizer
        self.log_gradient_cosine = log_gradient_cosine and len(self.tasks) > 1
        self._losses: list[torch.Tensor] = []  # per step, [T] each (detached)
        self._weights: list[torch.Tensor] = []
        self._probe: tuple[torch.Tensor, torch.Tensor] | None = None
        self.dense_labels = False  # the training labels have no NaN: set by `fit`, see masked_losses
        self.validation_data: tuple[torch.Tensor, torch.Tensor] | None = None  # validated each epoch's end: set by `fit`
        self.history: list[dict[str, float]] = []  # per-epoch weights and gradient cosines (several tasks), for the report
        self.test_results: dict[str, float] = {}

    @classmethod
    def single(
        cls,
        net: nn.Module,
        task: TaskSpec,
        param_groups: Sequence[Mapping[str, Any]],
        optimizer: Callable[..., torch.optim.Optimizer] | None,
        extra_loss: Callable[[nn.Module], torch.Tensor] | None = None,
    ) -> TaskModule:
        """One task on a backbone -> head `Net`, equal weights (labels y [N, 1])."""
        return cls(OneTaskNet(net, extra_loss), [task], param_groups, optimizer)

    # `fit` may hand the validation split to `validation_data` instead of Lightning's evaluation loop.
    validates_at_epoch_end = True

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _PLAIN_ATTRS:
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def forward(self, x: torch.Tensor):
        return self.net(x)

    def transfer_batch_to_device(self, batch, device: torch.device, dataloader_idx: int):
        # TensorLoader's batches are slices of tensors in one place: one look at the first tensor, not
        # Lightning's walk over every tensor of a grouped batch (~0.2 ms a batch of 64 steps).
        first = batch[0][0] if isinstance(batch, list) else batch[0]
        if isinstance(first, torch.Tensor) and first.device == device:
            return batch
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def monitor(self) -> tuple[str, str]:
        return selection(self.tasks)

    def configure_optimizers(self):
        # A group's own options (e.g. L2-SP's weight_decay 0) go to the optimizer; its name is ours.
        groups = [{k: v for k, v in g.items() if k != "name"} for g in self.param_groups if any(p.requires_grad for p in g["params"])]
        extra = list(self.weighting.extra_parameters())
        if extra:
            groups.append({"params": extra, "lr": self.param_groups[0]["lr"]})
        return self.optimizer_factory(groups)

    def training_step(self, batch, batch_idx):
        # A batch is one (x, y) minibatch, or a group of them from TensorLoader(steps_per_batch=k).
        opt, progress = self._stepper()
        several = self.trainer.world_size > 1  # DDP: this process holds its share of each minibatch
        for x, y in batch if isinstance(batch, list) else [batch]:
            if self._probe is None and self.log_gradient_cosine:
                self._probe = (x, y)
            opt.zero_grad(set_to_none=True)
            losses, weights = backward_step(self.net, self.tasks, self.weighting, x, self.labels(y), self.dense_labels)
            if several:
                self.average_gradients()
            if progress is None:
                opt.step()
            else:
                progress.increment_ready()
                opt.step()
                progress.increment_completed()
            # Summed on-device and logged per epoch: a per-step self.log costs more than the step.
            self._losses.append(torch.stack(losses).detach() if len(losses) > 1 else losses[0].detach().view(1))
            self._weights.append(weights)

    def average_gradients(self) -> None:
        """The mean of the processes' gradients, in place, before each optimizer step (DDP). DDP's own
        reducer only sees `manual_backward`; here the weighting runs the backward pass (TorchJD writes
        `.grad` itself), so the gradients are averaged once it is done, in one all-reduce."""
        from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

        params = [p for p in self.parameters() if p.requires_grad]
        for p in params:
            if p.grad is None:  # no gradient here (a task without labels in this share) may have one elsewhere
                p.grad = torch.zeros_like(p)
        grads = [p.grad for p in params]
        mean = self.trainer.strategy.reduce(_flatten_dense_tensors(grads), reduce_op="mean")
        for g, m in zip(grads, _unflatten_dense_tensors(mean, grads)):
            g.copy_(m)

    def _stepper(self):
        """(optimizer, step counter): the torch optimizer itself and the loop's counter of optimizer steps
        (global_step, which checkpointing and logging read) where, as with 32-bit precision on one
        device, LightningOptimizer.step would do nothing more than step it; else (LightningOptimizer,
        None). Its closure and on_before_optimizer_step hooks (none here) are ~3% of a step of the
        default MLP on CPU (benchmarks/training_loop.py)."""
        trainer = self.trainer
        if type(trainer.precision_plugin) is Precision and type(trainer.strategy) is SingleDeviceStrategy:
            return self.optimizers(use_pl_optimizer=False), trainer.fit_loop.epoch_loop.manual_optimization.optim_step_progress
        return self.optimizers(), None

    def labels(self, y: torch.Tensor) -> torch.Tensor:
        """The label matrix the net's outputs are scored against (`members.MembersModule` repeats it per member)."""
        return y

    def on_train_start(self) -> None:
        if self.validation_data is not None:
            self.validation_data = tuple(t.to(self.device) for t in self.validation_data)

    def on_train_epoch_end(self) -> None:
        record = None
        if self._losses:
            mean_losses, mean_weights = epoch_means(self._losses, self._weights)
            if self.trainer.world_size > 1:  # DDP: each process saw its share of the minibatches; the epoch's are their mean
                mean_losses = self.trainer.strategy.reduce(mean_losses, reduce_op="mean")
            record = epoch_record(self.tasks, mean_losses, mean_weights)
            # The epoch's summed mean loss is read anyway (one host sync an epoch): a NaN or infinite
            # step makes it non-finite, so the check costs nothing per step.
            if not math.isfinite(record["train/loss"]):
                raise self.divergence()
        if self.validation_data is not None:
            self._validate()
        if record is None:
            return
        if len(self.tasks) > 1:
            if self._probe is not None:
                record.update(self.gradient_cosine(*self._probe))
            self.history.append({"epoch": self.current_epoch, **record})
        self._to_loggers(record)
        self.weighting.on_epoch_end(mean_losses)
        self._losses, self._weights, self._probe = [], [], None

    def divergence(self, losses: list[torch.Tensor] | None = None) -> Diverged:
        """The Diverged error for this epoch: its first optimizer step whose loss is not finite, and that loss."""
        stacked = torch.stack(self._losses if losses is None else losses).sum(1)
        first = int((~torch.isfinite(stacked)).nonzero()[0, 0])
        step = self.global_step - len(stacked) + first + 1
        return Diverged.at(self.current_epoch + 1, step, float(stacked[first]))

    def _validate(self) -> None:
        """The validation pass of `validation_data`, run from the training epoch's end hook, which
        Lightning calls before checkpointing and early stopping read the monitored value. Its own
        evaluation loop (fetchers, hooks, result bookkeeping) costs ~0.6 ms an epoch, ~3% of an epoch
        of the default MLP (benchmarks/training_loop.py)."""
        self.eval()
        with torch.no_grad():
            self._evaluate(self.validation_data, "val")
        self.train()

    def gradient_cosine(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """Cosine similarity between task gradients on the shared parameters (one batch per epoch),
        cos_ij = <g_i, g_j> / (|g_i| |g_j|), g_t = d L_t / d theta_shared; mean and min over i != j.
        Negative values are conflicting tasks, the case gradient aggregators are designed for."""
        shared = self.net.shared_parameters()
        if not shared or len(self.tasks) < 2:
            return {}
        outputs, _ = self.net(x)
        losses = masked_losses(self.tasks, outputs, y)
        grads = []
        for t in range(len(self.tasks)):
            if not losses[t].requires_grad:
                continue
            g = torch.autograd.grad(losses[t], shared, retain_graph=True, allow_unused=True)
            grads.append(torch.cat([(gi if gi is not None else torch.zeros_like(p)).flatten() for gi, p in zip(g, shared)]))
        if len(grads) < 2:
            return {}
        G = F.normalize(torch.stack(grads), dim=1)
        cos = G @ G.T
        off = cos[~torch.eye(len(grads), dtype=torch.bool)]
        return {"grad/cos_mean": float(off.mean()), "grad/cos_min": float(off.min())}

    def _to_loggers(self, values: Mapping[str, float]) -> None:
        """Metrics no callback monitors go straight to the loggers: `self.log` costs ~0.5-1 ms per
        key in result bookkeeping, a large share of a small model's epoch."""
        for logger in self.loggers:
            logger.log_metrics({k: float(v) for k, v in values.items()}, step=self.global_step)

    def _evaluate(self, batch, prefix: str) -> dict[str, float]:
        x, y = batch
        out, _ = outputs(self.net, x, y)
        values = evaluation(self.tasks, out, y, prefix)
        monitor = self.monitor()[0].replace("val/", f"{prefix}/")
        # ModelCheckpoint and EarlyStopping read the monitored value from trainer.callback_metrics,
        # set here directly: self.log's result bookkeeping (~0.5 ms) is a tenth of a small model's
        # validation. The loggers get every value at this step.
        self.trainer.callback_metrics[monitor] = torch.tensor(values[monitor])
        self._to_loggers(values)
        return values

    def validation_step(self, batch, batch_idx):
        self._evaluate(batch, "val")

    def test_step(self, batch, batch_idx):
        self.test_results = self._evaluate(batch, "test")

    def predict_step(self, batch, batch_idx):
        """(features, outputs), class probabilities for classification tasks; for one task its own
        tensors, for several the per-task lists."""
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        outputs, features = self.net(x)
        outputs = [o.softmax(-1) if task.kind == "classification" else o for o, task in zip(outputs, self.tasks)]
        return (features[0], outputs[0]) if len(self.tasks) == 1 else (features, outputs)
