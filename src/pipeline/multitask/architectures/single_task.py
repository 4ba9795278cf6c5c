"""The baseline every sharing scheme is measured against: one independent network per task, of the
same family and size as one branch of the shared models, trained in the same run and budget.

The T networks are stored stacked and run as one batched computation (`Branches`): layer l of task t
is h -> act(h W_t^l + b_t^l) with W^l of shape [T, d_in, d_out], one `torch.baddbmm` per layer for
all tasks instead of a Python loop over T modules. Rows are routed by task: given which rows are
labelled for which task, task t's network runs only on its own rows (a long-format table, each row
labelled for one task, costs one network pass per row instead of T).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch
from torch import nn

from pipeline.errors import PipelineError
from pipeline.models import ACTIVATIONS
from pipeline.multitask.architectures import MultitaskNet


class Branches(nn.Module):
    """T independent MLPs of the same layer sizes `dims` (d_0 -> ... -> d_L), as stacked parameters
    `weights[l]` [T, d_l, d_{l+1}] and `biases[l]` [T, 1, d_{l+1}]. Layer l applies `acts[l]`, then
    dropout where `drops[l]` (Linear -> activation -> Dropout, as `pipeline.models.Block`; the output
    layer has neither). Initialised as nn.Linear: W, b ~ U(-1/sqrt(d_in), 1/sqrt(d_in)) (its
    kaiming_uniform(a=sqrt(5)) bound), independently per task."""

    def __init__(self, n: int, dims: Sequence[int], acts: Sequence[str], drops: Sequence[bool], dropout: float) -> None:
        super().__init__()
        self.n = int(n)
        self.weights = nn.ParameterList(nn.Parameter(torch.empty(self.n, d_in, d_out)) for d_in, d_out in zip(dims, dims[1:]))
        self.biases = nn.ParameterList(nn.Parameter(torch.empty(self.n, 1, d_out)) for d_out in dims[1:])
        for w, b in zip(self.weights, self.biases):
            bound = 1 / math.sqrt(w.shape[1])
            nn.init.uniform_(w, -bound, bound)
            nn.init.uniform_(b, -bound, bound)
        self.acts = [ACTIVATIONS[a] for a in acts]
        self.drops = list(drops)
        self.drop = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """h [T, M, d_0] (row block t goes through network t) -> [T, M, d_L]."""
        for w, b, act, drop in zip(self.weights, self.biases, self.acts, self.drops):
            h = act(torch.baddbmm(b, h, w))
            if drop:
                h = self.drop(h)
        return h

    def routed(self, x: torch.Tensor, labelled: torch.Tensor | None) -> torch.Tensor:
        """Outputs [T, N, d_L] of every network for the rows x [N, d_0] that need them: where
        labelled [N, T] (bool) is False, the entry is NaN and nothing was computed for it; None =
        every row through every network. Rows are grouped by task into blocks padded to the largest
        task's count M, so the work is T * M rows rather than T * N."""
        n_rows = x.shape[0]
        if labelled is not None:
            task, row = labelled.T.nonzero(as_tuple=True)  # sorted by task
            counts = torch.bincount(task, minlength=self.n)
            longest = int(counts.max()) if len(task) else 0
        if labelled is None or longest == n_rows:  # some task needs every row: no saving from routing
            return self(x.expand(self.n, *x.shape))
        pos = torch.arange(len(task), device=x.device) - (counts.cumsum(0) - counts)[task]  # row's place in its task's block
        blocks = x.new_zeros(self.n, longest, x.shape[1])
        blocks[task, pos] = x[row]
        out = self(blocks)
        full = out.new_full((self.n, n_rows, out.shape[-1]), float("nan"))
        full[task, row] = out[task, pos]
        return full


class Stacked(list):
    """Per-task outputs that are views of one tensor `full` [T, N, d] (NaN where not computed):
    `pipeline.training.masked_losses` reads every labelled entry with one gather instead of a
    Python loop over the T tasks."""

    def __init__(self, outputs: Sequence[torch.Tensor], full: torch.Tensor) -> None:
        super().__init__(outputs)
        self.full = full


class SingleTask(MultitaskNet):
    name = "single_task"
    routes_by_task = True

    def __init__(
        self, input_dim, tasks, hidden: Sequence[int] = (256, 128), head_hidden: Sequence[int] = (), dropout: float = 0.0, activation: str = "relu"
    ) -> None:
        super().__init__(input_dim, tasks)
        if activation not in ACTIVATIONS:
            raise PipelineError(f"activation {activation!r} is not one of {sorted(ACTIVATIONS)}")
        # Trunk (activation, dropout), head tower (relu, dropout, as `heads`), output layer sized for
        # the widest task; a task with fewer outputs reads the first n_outputs (the rest is unused).
        self.n_outputs = [t.n_outputs for t in self.tasks]
        dims = [self.input_dim, *map(int, hidden), *map(int, head_hidden), max(self.n_outputs)]
        acts = [activation] * len(hidden) + ["relu"] * len(head_hidden) + ["identity"]
        drops = [True] * (len(hidden) + len(head_hidden)) + [False]
        self.branches = Branches(len(self.tasks), dims, acts, drops, dropout)
        self.trunk_layers = len(hidden)
        self.n_members = 1  # several nets stacked as one (`members`)
        self._views: tuple[tuple, list[list[torch.Tensor]]] = ((), [])

    @classmethod
    def members(cls, nets: Sequence[SingleTask]) -> SingleTask:
        """M nets of this class and shape as one over M x T tasks, member m's task t at m * T + t:
        their branches stacked, so the members train as one batched computation
        (`pipeline.training.members`). The nets' weights are copied; `member_state` takes one out."""
        first = nets[0]
        shapes = {(type(n), tuple(tuple(p.shape) for p in n.branches.parameters())) for n in nets}
        if len(shapes) != 1 or any(n.n_members != 1 for n in nets):
            raise ValueError("members: the nets must be single nets of one class and shape")
        first._views = ((), [])  # views of the parameters cannot be deep-copied
        net = copy.deepcopy(first)
        net.tasks, net.n_outputs = list(first.tasks) * len(nets), first.n_outputs * len(nets)
        net.branches.n, net.n_members = first.branches.n * len(nets), len(nets)
        for name in ("weights", "biases"):
            for layer, p in enumerate(getattr(net.branches, name)):
                p.data = torch.cat([getattr(n.branches, name)[layer].detach() for n in nets])
        net.join_members(nets)
        return net

    def join_members(self, nets: Sequence[SingleTask]) -> None:
        """What a subclass keeps per member besides the branches (soft: the couplings)."""

    def member_state(self, m: int, members: int) -> list[torch.Tensor]:
        """Member m's slices of the stacked parameters, copied."""
        t = self.branches.n // members
        return [p.detach()[m * t : (m + 1) * t].clone() for p in self.branches.parameters()]

    def load_member_state(self, m: int, members: int, state: Sequence[torch.Tensor]) -> None:
        t = self.branches.n // members
        with torch.no_grad():
            for p, kept in zip(self.branches.parameters(), state):
                p[m * t : (m + 1) * t] = kept

    def forward(self, x: torch.Tensor, labelled: torch.Tensor | None = None):
        """Per-task outputs [N, n_outputs_t]; with labelled [N, T] (bool), only the entries where it
        is True are computed and the others are NaN (see `Branches.routed`)."""
        full = self.branches.routed(x.flatten(1), labelled)
        return Stacked([o if k == o.shape[-1] else o[:, :k] for o, k in zip(full.unbind(0), self.n_outputs)], full), None

    def task_parameters(self, t: int) -> list[torch.Tensor]:
        """Task t's slices of the stacked parameters: views, not leaf tensors, so autograd cannot
        differentiate with respect to them; only the gradient aggregators (which need shared
        parameters, and so never run on a scheme that shares none) would. Made once per set of
        parameter tensors (training asks for all T every step)."""
        params = list(self.branches.parameters())
        key = tuple((p.data_ptr(), p.requires_grad) for p in params)  # new after .to() or requires_grad_()
        if self._views[0] != key:
            self._views = (key, [list(vs) for vs in zip(*(p.unbind(0) for p in params))])
        return self._views[1][t]
