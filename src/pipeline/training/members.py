"""Several runs of one configuration trained as one batched network: the members.

Runs that see the same batches in the same order and differ only in a number that scales a term of
the loss (soft sharing's coupling candidates at one seed) can train as one network whose parameters
are the members' stacked side by side (`SingleTask.members`). The loss is the sum of the members'
losses, so each member's gradient is the one it would get alone; AdamW works element by element, so
each member's update is the one it would make alone. One step of the stacked network costs little
more than one member's on these small models, whose steps are mostly per-operation overhead.

What stays per member is what a run of its own would do (`fit` with ModelCheckpoint and
EarlyStopping): its validation score picks its best epoch (strictly better, the first epoch always
kept), it stops `patience` validations after its best or at a non-finite score, and it is tested
with its best weights. The stacked network trains until every member has stopped; a member's later
epochs change nothing of its own. Each member's logged metrics are the ones its own run would log
(at the optimizer step the member had reached). Dropout draws from one
random stream for all members, so members with dropout are not the runs they would be alone:
`fit_members` refuses them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from pipeline.config import FitConfig, TrainerConfig
from pipeline.data import TaskSpec
from pipeline.training.fit import FitResult, trainer
from pipeline.training.loader import TensorLoader
from pipeline.training.module import TaskModule, epoch_means, epoch_record, evaluation, outputs


class MembersModule(TaskModule):
    """`members` runs of `tasks` as one net over tasks x members (member m's task t is output
    m * T + t), equal weights, each member selected and stopped on its own (`patience` validations)."""

    validates_at_epoch_end = False  # per-member selection lives in its own _evaluate

    def __init__(self, net: nn.Module, tasks: Sequence[TaskSpec], members: int, param_groups, optimizer, patience: int) -> None:
        super().__init__(net, list(tasks) * members, param_groups, optimizer, log_gradient_cosine=False)
        self.base, self.members, self.patience = list(tasks), int(members), int(patience)
        self.member_log: list[list[tuple[str, float, int, int]]] = [[] for _ in range(self.members)]
        self.member_history: list[list[dict]] = [[] for _ in range(self.members)]
        self.member_test: list[dict[str, float]] = [{} for _ in range(self.members)]
        inf = float("-inf") if self.maximise else float("inf")
        self.stop_best = [inf] * self.members  # EarlyStopping's best (NaN stops the member)
        self.kept_score: list[float | None] = [None] * self.members  # ModelCheckpoint's best (NaN counts as the worst)
        self.kept_epoch = [0] * self.members
        self.wait = [0] * self.members
        self.stopped_at: list[int | None] = [None] * self.members
        self.kept: list[dict[str, torch.Tensor] | None] = [None] * self.members
        self.steps_at: dict[int, int] = {}

    @property
    def maximise(self) -> bool:
        return self.monitor()[1] == "max"

    def monitor(self) -> tuple[str, str]:
        from pipeline.training.metrics import selection

        return selection(self.base)

    def labels(self, y: torch.Tensor) -> torch.Tensor:
        return y.repeat(1, self.members)

    def _active(self, m: int) -> bool:
        return self.stopped_at[m] is None or self.stopped_at[m] == self.current_epoch

    def _member_outputs(self, out, m: int):
        t = len(self.base)
        part = out[m * t : (m + 1) * t]
        full = getattr(out, "full", None)
        if full is None:
            return part
        return type(out)(part, full[m * t : (m + 1) * t])  # keeps masked_losses' stacked path, as alone

    def _record(self, m: int, values: Mapping[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        self.member_log[m].extend((k, float(v), int(step), now) for k, v in values.items())

    def on_train_epoch_end(self) -> None:
        if not self._losses:
            return
        t = len(self.base)
        mean_losses, mean_weights = epoch_means(self._losses, self._weights)
        for m in range(self.members):
            if not self._active(m):
                continue
            part = slice(m * t, (m + 1) * t)
            record = epoch_record(self.base, mean_losses[part], mean_weights[part])
            if not math.isfinite(record["train/loss"]):  # the stacked net fails as a whole, naming the member
                exc = self.divergence([loss[part] for loss in self._losses])
                exc.member = m
                raise exc
            if t > 1:
                self.member_history[m].append({"epoch": self.current_epoch, **record})
            self._record(m, record, self.global_step)
        self._losses, self._weights, self._probe = [], [], None

    def _evaluate(self, batch, prefix: str) -> None:
        x, y = batch
        out, _ = outputs(self.net, x, self.labels(y))
        monitor = self.monitor()[0].replace("val/", f"{prefix}/")
        for m in range(self.members):
            if prefix == "val" and not self._active(m):
                continue
            values = evaluation(self.base, self._member_outputs(out, m), y, prefix)
            if prefix == "test":
                self.member_test[m] = values
                self._record(m, values, self.member_steps(m))
                continue
            self._record(m, values, self.global_step)
            self._select(m, values[monitor])
        if prefix == "val":
            self.steps_at[self.current_epoch] = self.global_step
            if all(s is not None for s in self.stopped_at):
                self.trainer.should_stop = True

    def _select(self, m: int, score: float) -> None:
        better = (lambda a, b: a > b) if self.maximise else (lambda a, b: a < b)
        ranked = score if math.isfinite(score) else (float("-inf") if self.maximise else float("inf"))
        if self.kept_score[m] is None or better(ranked, self.kept_score[m]):
            self.kept_score[m], self.kept_epoch[m] = ranked, self.current_epoch
            self.kept[m] = self.net.member_state(m, self.members)
        if not math.isfinite(score):
            self.stopped_at[m] = self.current_epoch
            return
        if better(score, self.stop_best[m]):
            self.stop_best[m], self.wait[m] = score, 0
        else:
            self.wait[m] += 1
            if self.wait[m] >= self.patience:
                self.stopped_at[m] = self.current_epoch

    def member_epochs(self, m: int) -> int:
        return self.stopped_at[m] + 1 if self.stopped_at[m] is not None else self.trainer.current_epoch

    def member_steps(self, m: int) -> int:
        return self.steps_at[self.stopped_at[m]] if self.stopped_at[m] is not None else self.trainer.global_step

    def restore_kept(self) -> None:
        """Every member's kept (best) weights into the stacked net: members are independent, so one test pass tests them all."""
        for m, state in enumerate(self.kept):
            if state is not None:
                self.net.load_member_state(m, self.members, state)


def fit_members(module: MembersModule, data: Mapping[str, tuple[torch.Tensor, torch.Tensor]], run: FitConfig, settings: TrainerConfig, seed: int):
    """`fit` for every member of `module` at once: one FitResult per member (with its `logged`
    metrics) and each member's per-epoch history, as `fit(...)` and `TaskModule.history` of its own run."""
    import lightning as L

    if any(isinstance(mod, nn.Dropout) and mod.p > 0 for mod in module.net.modules()):
        raise ValueError("fit_members: members with dropout would share one random stream; train them one by one")
    L.seed_everything(seed, workers=False, verbose=False)
    x, y = data["train"]
    train = TensorLoader(x, y, run.batch_size, shuffle=True, seed=seed, min_batches=run.min_steps_per_epoch, steps_per_batch=settings.steps_per_batch)
    whole = lambda split: TensorLoader(*data[split], batch_size=len(data[split][0]), shuffle=False)  # noqa: E731
    tr = trainer(settings, run.max_epochs, callbacks=[])
    tr.fit(module, train, whole("val"))
    module.restore_kept()
    tr.test(module, whole("test"), verbose=False)
    results = [
        FitResult(
            test=module.member_test[m],
            best_epoch=module.kept_epoch[m],
            epochs=module.member_epochs(m),
            steps=module.member_steps(m),
            best_val=module.kept_score[m],
            logged=module.member_log[m],
        )
        for m in range(module.members)
    ]
    return results, module.member_history
