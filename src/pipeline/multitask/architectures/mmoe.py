"""Multi-gate mixture of experts (Ma et al., KDD 2018), the survey's "shared network structure":
shared expert sub-networks, and per task a gate that routes the input to a mixture of them,

    f_t(x) = tower_t( sum_e softmax(G_t x)_e * expert_e(x) ).

Experts are shared; gates and towers belong to their task, so related tasks can share experts and
unrelated ones route apart."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from pipeline.models import MLP
from pipeline.multitask.architectures import MultitaskNet, heads


class MMoE(MultitaskNet):
    name = "mmoe"

    def __init__(
        self, input_dim, tasks, n_experts: int = 4, expert_hidden: Sequence[int] = (256, 128), head_hidden: Sequence[int] = (), dropout: float = 0.0
    ) -> None:
        super().__init__(input_dim, tasks)
        self.experts = nn.ModuleList(MLP(input_dim, expert_hidden, dropout) for _ in range(int(n_experts)))
        width = self.experts[0].out_dim
        self.gates = nn.ModuleList(nn.Linear(self.input_dim, int(n_experts)) for _ in tasks)
        self.heads = heads(width, tasks, head_hidden, dropout)

    def forward(self, x):
        x = x.flatten(1)
        feats = [e(x) for e in self.experts]
        stacked = torch.stack(feats, dim=1)  # [B, E, H]
        outs = []
        for gate, head in zip(self.gates, self.heads):
            mix = torch.einsum("be,beh->bh", gate(x).softmax(-1), stacked)
            outs.append(head(mix))
        return outs, feats

    def shared_parameters(self):
        return list(self.experts.parameters())

    def task_parameters(self, t):
        return [*self.gates[t].parameters(), *self.heads[t].parameters()]
