"""The baseline every sharing scheme is measured against: one independent network per task, of the
same family and size as one branch of the shared models, trained in the same run and budget."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from pipeline.models import MLP
from pipeline.multitask.architectures import MultitaskNet, heads


class SingleTask(MultitaskNet):
    name = "single_task"

    def __init__(
        self, input_dim, tasks, hidden: Sequence[int] = (256, 128), head_hidden: Sequence[int] = (), dropout: float = 0.0, activation: str = "relu"
    ) -> None:
        super().__init__(input_dim, tasks)
        self.trunks = nn.ModuleList(MLP(input_dim, hidden, dropout, activation) for _ in tasks)
        self.heads = nn.ModuleList(heads(t.out_dim, [task], head_hidden, dropout)[0] for t, task in zip(self.trunks, tasks))

    def forward(self, x):
        return [h(t(x)) for t, h in zip(self.trunks, self.heads)], None

    def task_parameters(self, t):
        return [*self.trunks[t].parameters(), *self.heads[t].parameters()]
