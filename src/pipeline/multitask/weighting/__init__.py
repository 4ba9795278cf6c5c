"""Multitask weighting: how T per-task losses become one update of the model's parameters.

A method is one module here plus one file in `conf/multitask/weighting/`; the multitask stage
builds it for its T tasks with `build(cfg, n_tasks=T)`, and calls `backward` once
per training step (manual optimisation), then its optimizer's `step`. Two families:

- loss weightings (`equal`, `uncertainty`, `dwa`, `gradnorm`) back-propagate `sum_t w_t L_t`;
- gradient aggregators (`aggregator.TorchJD`: UPGrad, MGDA, PCGrad, ...) form the Jacobian
  J = [grad_shared L_1; ...; grad_shared L_T] and store an aggregate `A(J)` in the shared
  parameters' `.grad`; task-specific parameters get their own task's gradient.

Both return the weights actually applied (for aggregators, w with `A(J) = J^T w`), so runs log one
comparable quantity, `train/weight/<task>`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from pipeline.errors import PipelineError, instantiate


@dataclass
class Step:
    """What a weighting sees of one training step."""

    losses: Tensor  # the T per-task losses, stacked [T]
    per_task: list[Tensor]  # the same losses one by one (their graphs kept apart when given as a sequence)
    present: Tensor  # [T] bool: the tasks with labels in the batch
    shared: list[Tensor]  # trainable parameters every task uses ([] when none are shared)
    features: list[Tensor] | None  # the shared representation the heads read, or None
    heads: list[list[Tensor]]  # heads[t]: trainable parameters only task t uses


class Weighting(nn.Module):
    """Base: subclasses implement `_backward`. A module, so that its state (log-variances, loss
    history) moves with the model and lands in its checkpoint."""

    name = "weighting"
    needs_shared_grads = False  # True: needs per-task gradients on the shared parameters
    uses_shared_grads_to = ""  # what it does with them, for `check_compatible`'s message
    # Its whole state is in its state_dict (buffers, parameters), so a killed fit resumes exactly from a
    # checkpoint (pipeline.training.resume); False: such a fit starts over.
    resumable = True

    def __init__(self, n_tasks: int) -> None:
        super().__init__()
        if int(n_tasks) < 1:
            raise PipelineError(f"weighting '{self.name}': n_tasks must be >= 1, got {n_tasks}")
        self.n_tasks = int(n_tasks)

    def backward(
        self, losses: Tensor | Sequence[Tensor], shared_params: list[Tensor], features: list[Tensor] | None, task_params: list[list[Tensor]]
    ) -> Tensor:
        """Populate `.grad` of every parameter (accumulating, like autograd) from the task losses.

        losses: the T per-task losses with their graph, a [T] tensor or a sequence of T scalars; a
        task absent from the batch has loss 0 and no graph through its head. Prefer the sequence
        for gradient methods: stacking joins the tasks' graphs, so each task's backward pass also
        runs (with zeros) through every other head, T^2 head passes. shared_params: parameters
        every task uses ([] when none are shared). features: the shared representation the heads
        read, or None. task_params[t]: the parameters only task t uses. Returns the task weights
        applied, detached, shape [T]."""
        if isinstance(losses, Tensor):
            if losses.shape != (self.n_tasks,):
                raise ValueError(f"weighting '{self.name}' expects losses of shape [{self.n_tasks}], got {list(losses.shape)}")
            per_task = list(losses.unbind())
        else:
            per_task = list(losses)
            if len(per_task) != self.n_tasks or any(loss.ndim != 0 for loss in per_task):
                raise ValueError(f"weighting '{self.name}' expects {self.n_tasks} scalar losses, got {[tuple(loss.shape) for loss in per_task]}")
            losses = torch.stack(per_task)
        # Absent: no graph, or loss exactly 0 (a present task at exactly 0 has a zero gradient anyway).
        with_graph = torch.tensor([loss.requires_grad for loss in per_task], device=losses.device)
        present = with_graph & (losses.detach() != 0)
        if not present.any():  # no task has a label in this batch: nothing to learn from
            return torch.zeros_like(losses.detach())
        shared, heads = _trainable(shared_params), [_trainable(ps) for ps in task_params]
        return self._backward(Step(losses, per_task, present, shared, features, heads)).detach()

    # True when the update is the gradient of the plain sum of the losses (equal weights): the
    # training step then back-propagates the sum itself, without this class's per-step bookkeeping.
    plain_sum = False

    def _backward(self, step: Step) -> Tensor:
        """Populate the gradients from `step`; return the weights applied [T]. Absent tasks'
        parameters must get no gradient, as with autograd."""
        raise NotImplementedError

    def extra_parameters(self) -> list[Tensor]:
        """Parameters the main optimizer must train too (e.g. log-variances); default none."""
        return []

    def on_epoch_end(self, epoch_mean_losses: Tensor) -> None:
        """Called with the epoch's mean training loss per task [T]; default no-op."""


def _trainable(params: list[Tensor]) -> list[Tensor]:
    return [p for p in params if p.requires_grad]  # frozen layers get no gradient


def connected(per_task: list[Tensor], present: Tensor, anchor: Tensor) -> list[Tensor]:
    """`per_task` with each absent task's loss replaced by a 0 that depends only on `anchor`:
    torchjd differentiates every loss (an absent one may have no graph), a zero row is what an
    absent task contributes, and this keeps its backward pass out of the other tasks' graphs."""
    return [loss if p else anchor.sum() * 0 for loss, p in zip(per_task, present.tolist())]


def rows_at_once(device: torch.device) -> int | None:
    """Jacobian rows torchjd back-propagates together (its `parallel_chunk_size`): one at a time on
    CPU, where a loop of backward passes beat torch.vmap's batched kernels in
    benchmarks/weighting_step.py; all at once (None) on an accelerator."""
    return 1 if device.type == "cpu" else None


def weighted_sum_backward(losses: Tensor, weights: Tensor) -> Tensor:
    """Back-propagate `sum_t w_t L_t` with constant weights; return the weights."""
    weights = weights.detach().to(losses)
    (weights * losses).sum().backward()
    return weights


def build(cfg: Any, n_tasks: int) -> Weighting:
    """The weighting a `conf/multitask/weighting/` config describes, for `n_tasks` tasks. A bad
    `_target_`, an unknown key or a value the constructor rejects is a PipelineError naming it; any
    other exception from a constructor is a bug and keeps its traceback and type."""
    weighting = instantiate(cfg, "weighting config", n_tasks=n_tasks)
    if not isinstance(weighting, Weighting):
        raise PipelineError(f"weighting config: _target_ {cfg.get('_target_')!r} is not a pipeline.multitask.weighting.Weighting")
    return weighting


def check_compatible(weighting: Weighting, n_shared: int, scheme_name: str) -> None:
    """Fail before training when the weighting needs shared gradients the scheme does not have."""
    if weighting.needs_shared_grads and n_shared == 0:
        raise PipelineError(
            f"weighting '{weighting.name}' {weighting.uses_shared_grads_to} on shared parameters, "
            f"but scheme '{scheme_name}' shares none; use weighting=equal"
        )
