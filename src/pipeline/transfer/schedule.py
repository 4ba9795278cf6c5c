"""Training a transfer plan: one `fit`, or several phases with different layers trainable (LP-FT,
gradual unfreezing), and optionally a weight-space interpolation between the first phase's weights and
the last's (WiSE-FT), its mixing weight chosen on the validation split.

Each phase is a whole `fit` (its own optimizer, early stopping and model selection) that starts from
the best weights of the phase before; the run's metrics continue across phases (steps and epochs
offset), so MLflow shows one history. Layers the plan froze stay frozen in every phase.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from pipeline.config import FitConfig, TrainerConfig
from pipeline.errors import Diverged
from pipeline.models import under
from pipeline.training import FitResult, TaskModule, fit
from pipeline.training.module import evaluation, outputs
from pipeline.transfer import TransferPlan


def train_plan(plan: TransferPlan, module: TaskModule, data: Mapping[str, tuple], run: FitConfig, settings: TrainerConfig, seed: int) -> FitResult:
    """`fit` for every phase of `plan`; the FitResult of the whole run (test metrics of the weights kept)."""
    if not plan.phases:
        return fit(module, data, run, settings, seed)
    named = dict(plan.net.named_parameters())
    trainable = {n for n, p in named.items() if p.requires_grad}  # the plan's own freezing holds throughout
    results, logged, steps, epochs, start = [], [], 0, 0, None
    for i, layers in enumerate(plan.phases):
        for n, p in named.items():
            p.requires_grad_(n in trainable and under(n, layers))
        try:
            result = fit(module, data, run, settings, seed)
        except Diverged as exc:  # counted over the whole run, as its history is
            exc.logged = logged + [(k, v, step + steps, ms) for k, v, step, ms in exc.logged or []]
            exc.epoch, exc.step, exc.where = exc.epoch + epochs, exc.step + steps, (*exc.where, f"phase {i + 1} of {len(plan.phases)}")
            raise
        logged += [(k, v, step + steps, ms) for k, v, step, ms in result.logged]
        results.append(result)
        steps, epochs = steps + result.steps, epochs + result.epochs
        if i == 0 and plan.interpolate:
            start = {n: p.detach().clone() for n, p in named.items()}
    for n, p in named.items():
        p.requires_grad_(n in trainable)
    last = results[-1]
    best_epoch = epochs - last.epochs + last.best_epoch
    if plan.interpolate and start is not None:
        alpha, val, test = interpolate(module, plan.net, start, plan.interpolate, data)
        logged.append(("fit/wise_alpha", alpha, steps, logged[-1][3] if logged else 0))
        return FitResult(test=test, best_epoch=best_epoch, epochs=epochs, steps=steps, best_val=val, logged=logged)
    return FitResult(test=last.test, best_epoch=best_epoch, epochs=epochs, steps=steps, best_val=last.best_val, logged=logged)


def mix(start: Mapping[str, torch.Tensor], end: Mapping[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """(1 - alpha) start + alpha end, parameter by parameter."""
    return {n: torch.lerp(start[n], end[n], alpha) for n in end}


@torch.no_grad()
def interpolate(module: TaskModule, net, start: Mapping[str, torch.Tensor], alphas, data) -> tuple[float, float, dict[str, float]]:
    """The mixing weight among `alphas` whose weights of `net` (the plan's network inside `module`)
    score best on data['val'] (ties: the larger alpha, nearer the fine-tuned end); the net keeps those
    weights. Returns (alpha, its validation score, its test metrics)."""
    named = dict(net.named_parameters())
    end = {n: p.detach().clone() for n, p in named.items()}
    monitor, mode = module.monitor()
    sign = 1.0 if mode == "max" else -1.0
    module.eval()

    def score(split: str, prefix: str) -> dict[str, float]:
        x, y = data[split]
        out, _ = outputs(module.net, x, y)
        return evaluation(module.tasks, out, y, prefix)

    best = None
    for alpha in sorted(float(a) for a in alphas):
        for n, w in mix(start, end, alpha).items():
            named[n].copy_(w)
        value = score("val", "val")[monitor]
        if best is None or sign * value >= sign * best[1]:
            best = (alpha, value)
    for n, w in mix(start, end, best[0]).items():
        named[n].copy_(w)
    return best[0], best[1], score("test", "test")
