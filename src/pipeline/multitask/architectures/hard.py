"""Hard parameter sharing (the survey's "shared parameters"): one trunk for all tasks, one head
each; the tasks' losses are combined by the weighting method into one update of the trunk."""

from __future__ import annotations

from collections.abc import Sequence

from pipeline.models import MLP
from pipeline.multitask.architectures import MultitaskNet, heads


class HardSharing(MultitaskNet):
    name = "hard"

    def __init__(
        self, input_dim, tasks, hidden: Sequence[int] = (256, 128), head_hidden: Sequence[int] = (), dropout: float = 0.0, activation: str = "relu"
    ) -> None:
        super().__init__(input_dim, tasks)
        self.trunk = MLP(input_dim, hidden, dropout, activation)
        self.heads = heads(self.trunk.out_dim, tasks, head_hidden, dropout)

    def forward(self, x):
        z = self.trunk(x)
        return [h(z) for h in self.heads], [z]

    def shared_parameters(self):
        return list(self.trunk.parameters())

    def task_parameters(self, t):
        return list(self.heads[t].parameters())
