r"""Gradient aggregation with TorchJD (Jacobian descent): the shared parameters are updated with
an aggregate of the per-task gradients instead of the gradient of a weighted sum of losses.

With J in R^{T x n} the Jacobian of the losses w.r.t. the n shared parameters (row t = grad L_t),
an aggregator A maps J to one update direction. For the aggregators configured here A is weighted:
A(J) = J^T w(J) (w from the Gramian J J^T for most, from J itself for Nash-MTL), e.g.

- UPGrad: project each row onto the dual cone {x: J x >= 0} of all rows and average, so that
  <A(J), grad L_t> >= 0 for every t: to first order no task's loss increases;
- MGDA: the min-norm point of the convex hull of the rows;
- PCGrad, IMTL-G, Aligned-MTL, CAGrad, Nash-MTL: see `torchjd.aggregation`.

Task-specific parameters get plain gradients (only their task reaches them). With `features` given,
`torchjd.autojac.mtl_backward` back-propagates each task only down to the features and computes
the Jacobian of the trunk once from there; without, `torchjd.autojac.backward` computes it from the
losses, and autograd the heads' gradients.

Effective weights: `torchjd.autojac.jac_to_grad` returns w, captured by a hook on the aggregator's
weighting (for Gramian-based aggregators, the weighting applied to the summed Gramian). Scale:
UPGrad and MGDA average (w_t = 1/T without conflict) where `equal` sums, on the shared parameters
only (heads get their full task gradient); Adam-type optimizers are insensitive to it. An
aggregator with no weighting (e.g. GradDrop) logs NaN weights.

`jacobian: features` (Sener & Koltun 2018, "MGDA-UB") takes the weights from the Gramian of the
Jacobian with respect to the shared features Z instead of the shared parameters: each task is
back-propagated only through its head, w = weighting(J_Z J_Z^T), and one backward pass of
sum_t w_t grad_Z L_t through the trunk gives J^T w. One trunk pass instead of T, so the cost of a step
stays near an equal-weights step; the price is that w is computed from an upper-bound proxy of the
Gramian, not the Gramian itself. Only for aggregators whose weights depend on the Gramian alone.

An absent task (no label in the batch) is left out of the Jacobian and gets weight 0: a zero row
makes the Gramian singular, on which e.g. Aligned-MTL's eigendecomposition fails. Aggregators sized
to n_tasks (Nash-MTL) keep a zero row instead; Nash-MTL's solver then fails on 1 / (G w)_t and keeps
its previous weights (torchjd's fallback).

`aggregator` names a class of `torchjd.aggregation`, case and underscores ignored (`imtl_g` is
IMTLG); the other keyword arguments are its knobs, lists becoming tensors (`pref_vector`).
`n_tasks` is passed to the classes that take it (Nash-MTL). CAGrad and Nash-MTL need a convex solver
(cvxpy, ecos, clarabel) and UPGrad a QP solver (quadprog): `pip install 'pipeline[solvers]'`.
"""

from __future__ import annotations

import inspect
import re
from typing import Any

import torch
from torch import Tensor

from pipeline.errors import PipelineError, check_keys
from pipeline.multitask.weighting import Step, Weighting, connected, rows_at_once

SOLVERS_HINT = "pip install 'pipeline[solvers]'"


class TorchJD(Weighting):
    needs_shared_grads = True
    uses_shared_grads_to = "aggregates per-task gradients"

    @property
    def resumable(self) -> bool:
        return self.name not in ("nash_mtl", "excess_mtl", "cr_mogm")  # keep state between steps outside any state_dict

    def __init__(self, n_tasks: int, aggregator: str, parallel_chunk_size: int | str | None = "auto", jacobian: str = "params", **knobs: Any) -> None:
        from torchjd.aggregation import GramianWeightedAggregator

        self.name = str(aggregator)
        super().__init__(n_tasks)
        if jacobian not in ("params", "features"):
            raise PipelineError(f"weighting '{self.name}': jacobian must be 'params' or 'features', got {jacobian!r}")
        self.jacobian = jacobian
        # Jacobian rows back-propagated together (torchjd's knob): None = all, through torch.vmap;
        # "auto" = `rows_at_once(device)`.
        self.parallel_chunk_size = parallel_chunk_size
        cls = _aggregator_class(self.name)
        check_keys(cls, list(knobs), f"weighting '{self.name}'")
        kwargs = {k: _as_tensor_if_sequence(v) for k, v in knobs.items()}
        self.all_rows = "n_tasks" in inspect.signature(cls).parameters  # sized to T: absent tasks keep a zero row
        if self.all_rows:
            kwargs["n_tasks"] = self.n_tasks
        try:
            self.aggregator = cls(**kwargs)
        except ImportError as e:  # torchjd checks its optional solvers at construction
            if "to be installed" not in str(e):  # not that check: a broken install or a bug
                raise
            missing = str(e).split(". Install")[0]  # torchjd's own hint names its extra, not ours
            raise PipelineError(f"weighting '{self.name}' needs an optional solver: {missing}; install it with: {SOLVERS_HINT}") from e
        except ValueError as e:  # torchjd validates its knobs' values and names the one it rejects
            named = [k for k in knobs if re.search(rf"\b{re.escape(k)}\b", str(e))]
            if not named:
                raise
            raise PipelineError(f"weighting '{self.name}': bad value for {', '.join(f'{k}={knobs[k]!r}' for k in named)}: {e}") from e
        if jacobian == "features" and not isinstance(self.aggregator, GramianWeightedAggregator):
            raise PipelineError(
                f"weighting '{self.name}': jacobian=features needs weights computed from the Gramian alone, "
                f"and {type(self.aggregator).__name__} computes them from the Jacobian; use jacobian=params"
            )

    def _backward(self, step: Step) -> Tensor:
        if not step.shared:
            raise PipelineError(f"weighting '{self.name}' needs shared parameters; the scheme has none")
        chunk = self.parallel_chunk_size
        if chunk == "auto":
            chunk = rows_at_once(step.losses.device)
        rows = torch.ones_like(step.present) if self.all_rows else step.present  # the tasks that get a Jacobian row
        index = rows.nonzero().flatten()
        keep = index.tolist()
        has_labels = step.present.tolist()
        heads = [step.heads[t] if has_labels[t] else [] for t in keep]  # absent: no .grad
        kept = [step.per_task[t] for t in keep]
        if self.jacobian == "features":
            if not step.features:
                raise PipelineError(f"weighting '{self.name}' with jacobian=features needs a scheme that exposes shared features")
            weights = self._backward_features(kept, step.features, heads, step.shared)
        else:
            weights = self._backward_params(step.losses, kept, step.present[index], step.features, heads, step.shared, chunk)
            if weights is None:
                return torch.full_like(step.losses, float("nan"))
        return step.losses.new_zeros(step.losses.shape).index_copy(0, index, weights.to(step.losses))

    def _backward_params(
        self,
        losses: Tensor,
        kept: list[Tensor],
        present: Tensor,
        features: list[Tensor] | None,
        heads: list[list[Tensor]],
        shared_params: list[Tensor],
        chunk: int | None,
    ) -> Tensor | None:
        """The Jacobian of the kept losses `kept` (`present[i]`: loss i's task has labels) on the shared
        parameters, aggregated into their `.grad`; heads[i]: loss i's own parameters. Returns w, or
        None for an aggregator without a weighting."""
        from torchjd.aggregation import GramianWeightedAggregator
        from torchjd.autojac import backward, jac_to_grad, mtl_backward

        kept = connected(kept, present, features[0] if features else shared_params[0])
        # retain_graph: the losses may share graph nodes after the features (a stack, a joint
        # head), so one task's pass must not free what the next one needs.
        if features:
            mtl_backward(kept, features=features, tasks_params=heads, shared_params=shared_params, retain_graph=True, parallel_chunk_size=chunk)
        else:
            backward(kept, inputs=shared_params, retain_graph=True, parallel_chunk_size=chunk)
            if any(heads):  # each head only sees its own task, so the sum's gradient is that task's
                torch.autograd.backward(losses.sum(), inputs=[p for ps in heads for p in ps])
        # Summing per-parameter Gramians skips concatenating the Jacobian: less memory, and
        # faster on CPU; only for weights that depend on the Gramian alone.
        gramian_only = isinstance(self.aggregator, GramianWeightedAggregator)
        return jac_to_grad(shared_params, self.aggregator, optimize_gramian_computation=gramian_only)

    def _backward_features(self, per_task: list[Tensor], features: list[Tensor], heads: list[list[Tensor]], shared_params: list[Tensor]) -> Tensor:
        """Weights of the present tasks' losses `per_task` (heads[i]: loss i's own parameters)."""
        # Plain autograd: torchjd's autojac has no entry point that stops the Jacobian at the features
        # and then back-propagates one weighted row through the trunk.
        rows = []
        for loss, params in zip(per_task, heads):
            grads = torch.autograd.grad(loss, [*features, *params], retain_graph=True, allow_unused=True)
            on_features, on_params = grads[: len(features)], grads[len(features) :]
            rows.append(torch.cat([(torch.zeros_like(f) if g is None else g).flatten() for f, g in zip(features, on_features)]))
            for p, g in zip(params, on_params):
                if g is not None:  # a head parameter its loss does not reach gets no .grad, as with autograd
                    p.grad = g if p.grad is None else p.grad + g
        jac = torch.stack(rows)
        weights = self.aggregator.gramian_weighting(jac @ jac.T)
        combined = (weights @ jac).split([f.numel() for f in features])
        torch.autograd.backward(features, grad_tensors=[c.view_as(f) for c, f in zip(combined, features)], inputs=shared_params)
        return weights


def _aggregator_class(name: str) -> type:
    import torchjd.aggregation as agg

    key = name.replace("_", "").replace("-", "").lower()
    classes = {
        n.lower(): getattr(agg, n)
        for n in agg.__all__
        if isinstance(getattr(agg, n), type) and issubclass(getattr(agg, n), agg.Aggregator) and not inspect.isabstract(getattr(agg, n))
    }
    classes = {k: c for k, c in classes.items() if c not in (agg.WeightedAggregator, agg.GramianWeightedAggregator)}
    if key not in classes:
        raise PipelineError(f"weighting aggregator '{name}' is not in torchjd.aggregation; choose one of {sorted(classes)}")
    return classes[key]


def _as_tensor_if_sequence(value: Any) -> Any:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or hasattr(value, "keys"):
        return value
    return torch.as_tensor(list(value), dtype=torch.get_default_dtype())
