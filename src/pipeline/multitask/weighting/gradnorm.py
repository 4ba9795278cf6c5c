r"""GradNorm (Chen, Badrinarayanan, Lee & Rabinovich, ICML 2018): learnable task weights w_t,
adjusted so that the weighted tasks' gradients on the shared layer W have norms in proportion to
how far behind each task is. With L_t(0) a task's first loss,

    G_t = || grad_W w_t L_t ||,      r_t = (L_t / L_t(0)) / mean_k (L_k / L_k(0)),
    L_grad = sum_t | G_t - mean_k(G_k) r_t^alpha |      (the target held constant),

the model trains on sum_t w_t L_t while w alone takes an Adam step on L_grad, then is renormalised
to sum to T. Since G_t = w_t ||grad_W L_t||, dL_grad/dw_t = sign(G_t - target_t) ||grad_W L_t|| is
exact without differentiating twice: the per-task gradient norms take one backward pass per task,
down to W only.

Knobs: alpha sets the asymmetry (0 equalises the gradient norms; larger pulls harder on the tasks
that train slowest; the paper tunes it per data set, within 0 to 3); lr is the weights' own rate;
layer picks W: "last", the last shared weight matrix (the paper's choice, cheap), or "all"
shared parameters. "last" assumes `shared_params` are in module order, as `named_parameters` gives.

Tasks absent from the batch (loss exactly 0) take no part in the means and keep their weight.
"""

from __future__ import annotations

import torch
from torch import Tensor

from pipeline.errors import PipelineError
from pipeline.multitask.weighting import Step, Weighting, weighted_sum_backward

MIN_WEIGHT = 1e-4  # floor before renormalising: a task's weight stays positive


class GradNorm(Weighting):
    name = "gradnorm"
    needs_shared_grads = True
    uses_shared_grads_to = "balances per-task gradient norms"
    resumable = False  # its own optimizer's moments are not in its state_dict

    def __init__(self, n_tasks: int, alpha: float = 1.5, lr: float = 0.025, layer: str = "last") -> None:
        super().__init__(n_tasks)
        if not alpha >= 0 or not lr > 0:
            raise PipelineError(f"weighting 'gradnorm': needs alpha >= 0 and lr > 0, got alpha={alpha}, lr={lr}")
        if layer not in ("last", "all"):
            raise PipelineError(f"weighting 'gradnorm': layer must be 'last' or 'all', got {layer!r}")
        self.alpha, self.lr, self.layer = float(alpha), float(lr), layer
        # Buffers, not parameters: the main optimizer must not train the weights on the task loss.
        self.register_buffer("task_weights", torch.ones(self.n_tasks))
        self.register_buffer("initial_losses", torch.full((self.n_tasks,), float("nan")))
        self._optimizer: torch.optim.Optimizer | None = None

    def _backward(self, step: Step) -> Tensor:
        losses, per_task, present, shared_params = step.losses, step.per_task, step.present, step.shared
        if not shared_params:
            raise PipelineError("weighting 'gradnorm' needs shared parameters; the scheme has none")
        layer = shared_params if self.layer == "all" else [_last_layer(shared_params)]
        # One backward pass per task, each through its own head only (when the losses came as a
        # sequence); torchjd's `jac` would run every row through all T losses' graphs.
        norms = torch.zeros(self.n_tasks, device=losses.device, dtype=losses.dtype)
        for t in present.nonzero().flatten().tolist():
            grads = torch.autograd.grad(per_task[t], layer, retain_graph=True, materialize_grads=True)
            norms[t] = torch.sqrt(sum(g.pow(2).sum() for g in grads))
        applied = weighted_sum_backward(losses, self.task_weights.clone())
        self._update(losses.detach(), norms.to(self.task_weights), present)
        return applied

    @torch.no_grad()
    def _update(self, losses: Tensor, norms: Tensor, present: Tensor) -> None:
        w = self.task_weights
        first = present & self.initial_losses.isnan()
        self.initial_losses[first] = losses[first].to(w)
        if present.sum() < 2:  # a single task has nothing to be balanced against
            return
        rate = losses.to(w) / self.initial_losses
        rate = rate / rate[present].mean()
        grad_norms = w * norms
        target = grad_norms[present].mean() * rate.pow(self.alpha)
        before = w.clone()
        w.grad = torch.where(present, torch.sign(grad_norms - target) * norms, torch.zeros_like(w))
        self._optimizer_for(w).step()
        w.grad = None
        w.copy_(torch.where(present, w, before).clamp(min=MIN_WEIGHT))
        w.mul_(self.n_tasks / w.sum())

    def _optimizer_for(self, w: Tensor) -> torch.optim.Optimizer:
        # Rebuilt if `.to(device)` replaced the buffer.
        if self._optimizer is None or self._optimizer.param_groups[0]["params"][0] is not w:
            self._optimizer = torch.optim.Adam([w], lr=self.lr)
        return self._optimizer


def _last_layer(params: list[Tensor]) -> Tensor:
    """The last weight matrix (ndim >= 2) among `params`, else the last parameter."""
    return next((p for p in reversed(params) if p.ndim >= 2), params[-1])
