"""Lightning training of several tasks at once, with the weighting method owning the backward pass.

Manual optimisation: the weighting method decides how per-task losses (or their gradients) become
one update, so the loop only computes masked per-task losses, lets the weighting populate the
gradients, and steps. Labels are NaN where a sample has no label for a task; such entries are
masked out of every loss and metric.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import lightning as L
import torch
from torch.nn import functional as F

from pipeline.data import TaskSpec
from pipeline.training import task_metrics


def masked_losses(tasks: Sequence[TaskSpec], outputs: Sequence[torch.Tensor], y: torch.Tensor) -> list[torch.Tensor]:
    """T per-task mean losses over labelled entries; 0 (no graph) for a task absent from the batch.

    A list, not a stacked tensor: a weighting that back-propagates one task at a time would otherwise
    run through every other task's head too."""
    losses = []
    for t, (task, out) in enumerate(zip(tasks, outputs)):
        mask = ~torch.isnan(y[:, t])
        if not bool(mask.any()):
            losses.append(out.new_zeros(()))
            continue
        target = y[mask, t]
        if task.kind == "classification":
            losses.append(F.cross_entropy(out[mask], target.long()))
        else:
            losses.append(F.mse_loss(out[mask].squeeze(-1), target))
    return losses


def per_task_metrics(tasks: Sequence[TaskSpec], outputs: Sequence[torch.Tensor], y: torch.Tensor) -> dict[str, float]:
    values: dict[str, float] = {}
    for t, (task, out) in enumerate(zip(tasks, outputs)):
        mask = ~torch.isnan(y[:, t])
        if int(mask.sum()) < 2:
            continue
        for k, v in task_metrics(task, out[mask], y[mask, t]).items():
            values[f"{task.name}/{k}"] = float(v)
    return values


def selection_score(tasks: Sequence[TaskSpec], metrics: dict[str, float]) -> float:
    """Mean over tasks of accuracy (classification) or 1 - MSE in units of the train split's target
    variance (regression): comparable across tasks, higher is better. Not R²: R² divides by the
    variance of the few rows a task has in the evaluated split, which is noise when a task has ten
    validation rows (one school), and model selection would follow that noise."""
    scores = []
    for t in tasks:
        if t.kind == "classification":
            scores.append(metrics.get(f"{t.name}/acc"))
        elif f"{t.name}/rmse" in metrics:
            scores.append(1.0 - (metrics[f"{t.name}/rmse"] / t.scale) ** 2)  # targets were standardised by t.scale
    scores = [s for s in scores if s is not None and math.isfinite(s)]
    return sum(scores) / len(scores) if scores else float("nan")


def backward_step(net, tasks: Sequence[TaskSpec], weighting, x: torch.Tensor, y: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """One step's forward and backward pass (the optimizer's step is the caller's): the per-task
    losses and the task weights the weighting applied."""
    outputs, features = net(x)
    losses = masked_losses(tasks, outputs, y)
    penalty = net.penalty()
    if penalty is not None:
        penalty.backward()
    weights = weighting.backward(losses, net.shared_parameters(), features, [net.task_parameters(t) for t in range(len(tasks))])
    return losses, weights


class MultitaskModule(L.LightningModule):
    def __init__(self, net, tasks: Sequence[TaskSpec], weighting, optimizer: Callable[..., torch.optim.Optimizer], lr: float,
                 log_gradient_cosine: bool = True) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.net = net
        self.tasks = list(tasks)
        self.weighting = weighting
        self.optimizer_factory = optimizer
        self.lr = float(lr)
        self.log_gradient_cosine = log_gradient_cosine
        self._sums: torch.Tensor | None = None
        self._weights: torch.Tensor | None = None
        self._steps = 0
        self._probe: tuple[torch.Tensor, torch.Tensor] | None = None
        self.history: list[dict[str, float]] = []  # per-epoch weights and gradient cosines, for the report
        self.test_results: dict[str, float] = {}

    def monitor(self) -> tuple[str, str]:
        return "val/score", "max"

    def configure_optimizers(self):
        params = [*self.net.parameters(), *self.weighting.extra_parameters()]
        return self.optimizer_factory([{"params": params, "lr": self.lr}])

    def training_step(self, batch, batch_idx):
        # A batch is one (x, y) minibatch, or a group of them (TensorLoader steps_per_batch).
        opt = self.optimizers()
        for x, y in batch if isinstance(batch, list) else [batch]:
            if self._probe is None:
                self._probe = (x, y)
            opt.zero_grad(set_to_none=True)
            losses, weights = backward_step(self.net, self.tasks, self.weighting, x, y)
            opt.step()
            d, w = torch.stack(losses).detach(), weights.detach()
            self._sums = d if self._sums is None else self._sums + d
            self._weights = w if self._weights is None else self._weights + w
            self._steps += 1

    def on_train_epoch_end(self) -> None:
        if not self._steps:
            return
        mean_losses = self._sums / self._steps
        mean_weights = self._weights / self._steps
        record = {"train/loss": float(mean_losses.sum())}
        for task, loss, w in zip(self.tasks, mean_losses.tolist(), mean_weights.tolist()):
            record[f"train/{task.name}/loss"] = loss
            record[f"weight/{task.name}"] = w
        if self.log_gradient_cosine and self._probe is not None:
            record.update(self.gradient_cosine(*self._probe))
        self.log_dict(record)
        self.history.append({"epoch": self.current_epoch, **record})
        self.weighting.on_epoch_end(mean_losses)
        self._sums = self._weights = self._probe = None
        self._steps = 0

    def gradient_cosine(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """Cosine similarity between task gradients on the shared parameters (one batch per epoch):
        negative values are conflicting tasks, the case gradient aggregators are designed for."""
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

    def _evaluate(self, batch, prefix: str) -> dict[str, float]:
        x, y = batch
        outputs, _ = self.net(x)
        metrics = per_task_metrics(self.tasks, outputs, y)
        values = {f"{prefix}/{k}": v for k, v in metrics.items()}
        values[f"{prefix}/score"] = selection_score(self.tasks, metrics)
        values[f"{prefix}/loss"] = float(sum(masked_losses(self.tasks, outputs, y)))
        self.log_dict(values, batch_size=len(x))
        return values

    def validation_step(self, batch, batch_idx):
        self._evaluate(batch, "val")

    def test_step(self, batch, batch_idx):
        self.test_results = self._evaluate(batch, "test")
