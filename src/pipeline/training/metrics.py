"""Losses and metrics over T tasks whose labels are NaN where a sample has none, and the score that
selects a model."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch.nn import functional as F

from pipeline.data import TaskSpec


def task_metrics(task: TaskSpec, out: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """Accuracy and macro-F1 for classes, RMSE and R² for values (torchmetrics), over n >= 1 rows.

    Accuracy and RMSE are defined on one row; R² (a variance in its denominator) and macro-F1 (an
    average over the classes present) are not, so with one row they are left out. Keeping the rest
    means no task with a labelled row disappears from model selection or from Δm."""
    from torchmetrics.functional import mean_squared_error, r2_score
    from torchmetrics.functional.classification import multiclass_accuracy, multiclass_f1_score

    several = len(y) >= 2
    if task.kind == "classification":
        n = task.n_outputs
        target = y.long()
        values = {"acc": multiclass_accuracy(out, target, num_classes=n, average="micro")}
        return values | ({"f1": multiclass_f1_score(out, target, num_classes=n, average="macro")} if several else {})
    pred = out.squeeze(-1)
    return {"rmse": mean_squared_error(pred, y).sqrt() * task.scale} | ({"r2": r2_score(pred, y)} if several else {})


def masked_losses(tasks: Sequence[TaskSpec], outputs: Sequence[torch.Tensor], y: torch.Tensor, dense: bool = False) -> list[torch.Tensor]:
    """T per-task mean losses over labelled entries of y [N, T]; 0 (no graph) for a task absent from the batch.
    dense=True promises y has no NaN (the caller checked the whole split once), so no mask is built.

    A list, not a stacked tensor: a weighting that back-propagates one task at a time would otherwise
    run through every other task's head too. Outputs that are already one tensor (`full` [T, N, d],
    the stacked per-task networks) of tasks of one kind and width take one pass over their labelled
    entries instead of a loop over tasks (the loop cost more than the networks' step at 63 tasks)."""
    full = getattr(outputs, "full", None)
    if full is not None and len({(t.kind, t.n_outputs) for t in tasks}) == 1 and tasks[0].n_outputs == full.shape[-1]:
        return _stacked_losses(tasks[0].kind, full, y)
    if dense:  # every single-task step: a mask and its count per step cost ~5% of the default MLP's step
        return [_loss(task, out, y[:, t]) for t, (task, out) in enumerate(zip(tasks, outputs))]
    losses = []
    for t, (task, out) in enumerate(zip(tasks, outputs)):
        mask = ~torch.isnan(y[:, t])
        n = int(mask.sum())
        if n == 0:
            losses.append(out.new_zeros(()))
            continue
        target = y[:, t]
        if n < len(mask):  # fully labelled: no copies
            out, target = out[mask], target[mask]
        losses.append(_loss(task, out, target))
    return losses


def _loss(task: TaskSpec, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(out, target.long()) if task.kind == "classification" else F.mse_loss(out.squeeze(-1), target)


def _stacked_losses(kind: str, full: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    """masked_losses for outputs full [T, N, d]: the mean loss of each task over its labelled rows,
    sum_i l(full[t, i], y[i, t]) / n_t, from one gather of the labelled entries."""
    task, row = (~torch.isnan(y)).T.nonzero(as_tuple=True)
    pred, target = full[task, row], y[row, task]
    if kind == "classification":
        per_entry = F.cross_entropy(pred, target.long(), reduction="none")
    else:
        per_entry = (pred.squeeze(-1) - target) ** 2
    counts = torch.bincount(task, minlength=full.shape[0])
    sums = per_entry.new_zeros(full.shape[0]).index_add(0, task, per_entry)
    zero = per_entry.new_zeros(())  # a task absent from the batch: 0 with no graph, as in the loop
    return [loss if n else zero for loss, n in zip((sums / counts.clamp(min=1)).unbind(), counts.tolist())]


def per_task_metrics(tasks: Sequence[TaskSpec], outputs: Sequence[torch.Tensor], y: torch.Tensor, task_names: bool = True) -> dict[str, float]:
    """`<task>/<metric>` over each task's labelled entries (a task with none has no metrics; with one,
    only those defined on one row, see task_metrics); `<metric>` alone with task_names=False (one task)."""
    values: dict[str, float] = {}
    for t, (task, out) in enumerate(zip(tasks, outputs)):
        mask = ~torch.isnan(y[:, t])
        if not bool(mask.any()):
            continue
        for k, v in task_metrics(task, out[mask], y[mask, t]).items():
            values[f"{task.name}/{k}" if task_names else k] = float(v)
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


def selection(tasks: Sequence[TaskSpec]) -> tuple[str, str]:
    """The validation metric that picks the best epoch, and whether it is maximised: one task's
    primary metric in its direction; for several tasks `val/score` (selection_score)."""
    if len(tasks) == 1:
        return f"val/{tasks[0].primary}", "max" if tasks[0].higher_is_better else "min"
    return "val/score", "max"
