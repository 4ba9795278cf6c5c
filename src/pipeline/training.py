"""Lightning training of one supervised task, tuned for many small in-memory runs.

Per-step work is kept to the optimisation itself: batches are sliced from tensors already in memory
(no per-sample collate), the optimisation is a manual-optimization training_step (no closure
machinery), the training loss is summed on-device and logged once per epoch, validation runs the
whole split as one batch, and model-selection checkpoints stay in memory. Lightning still owns the
loop, callbacks (checkpointing for model selection, early stopping) and loggers.
`benchmarks/training_loop.py` measures this path against a plain PyTorch loop.
"""

from __future__ import annotations

import math
import sys
import tempfile
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import lightning as L
import torch
from lightning.fabric.plugins import CheckpointIO
from torch import nn
from torch.nn import functional as F

from pipeline.data import TaskSpec


class TensorLoader:
    """Shuffled index batches over in-memory tensors; each pass is one epoch.

    `min_batches` stretches an epoch over several passes when the data set is a handful of labels,
    so epoch-level overhead (validation, checkpointing) is not paid after every single step.
    `steps_per_batch` > 0 groups that many minibatches into one Lightning batch (a list of
    (x, y) pairs, one optimizer step each): Lightning's per-batch hooks and bookkeeping, which cost
    more than a small model's step, are then paid once per group while the optimisation itself is
    unchanged (same minibatches, same order, one update per minibatch).
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, shuffle: bool = True, seed: int = 0, min_batches: int = 1,
                 steps_per_batch: int = 0) -> None:
        self.x, self.y = x, y
        self.batch_size = min(int(batch_size), len(x)) if shuffle else int(batch_size)
        self.shuffle = shuffle
        self.per_pass = math.ceil(len(x) / self.batch_size)
        self.passes = max(1, math.ceil(min_batches / self.per_pass)) if shuffle else 1
        self.group = int(steps_per_batch)
        self.gen = torch.Generator().manual_seed(seed)

    def steps(self) -> int:
        return self.per_pass * self.passes

    def __len__(self) -> int:
        return math.ceil(self.steps() / self.group) if self.group > 0 else self.steps()

    def minibatches(self):
        n, bs = len(self.x), self.batch_size
        for _ in range(self.passes):
            order = torch.randperm(n, generator=self.gen) if self.shuffle else torch.arange(n)
            for start in range(0, n, bs):
                idx = order[start : start + bs]
                yield self.x[idx], self.y[idx]

    def __iter__(self):
        if self.group <= 0:
            yield from self.minibatches()
            return
        group = []
        for pair in self.minibatches():
            group.append(pair)
            if len(group) == self.group:
                yield group
                group = []
        if group:
            yield group


def task_metrics(task: TaskSpec, out: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """Accuracy and macro-F1 for classes, RMSE and R² for values (torchmetrics)."""
    from torchmetrics.functional import mean_squared_error, r2_score
    from torchmetrics.functional.classification import multiclass_accuracy, multiclass_f1_score

    if task.kind == "classification":
        n = task.n_outputs
        target = y.long()
        return {
            "acc": multiclass_accuracy(out, target, num_classes=n, average="micro"),
            "f1": multiclass_f1_score(out, target, num_classes=n, average="macro"),
        }
    pred = out.squeeze(-1)
    return {"rmse": mean_squared_error(pred, y).sqrt() * task.scale, "r2": r2_score(pred, y)}


def selection(task: TaskSpec) -> tuple[str, str]:
    """The validation metric that picks the best epoch, and whether it is maximised."""
    return ("val/acc", "max") if task.kind == "classification" else ("val/rmse", "min")


# Plain attributes written many times per step: Lightning's `_current_fx_name` (around every hook
# call) and our loss counters. nn.Module.__setattr__'s type checks cost ~10x a plain write.
_PLAIN_ATTRS = frozenset({"_current_fx_name", "_loss_sum", "_steps"})


class SupervisedModule(L.LightningModule):
    def __init__(
        self,
        net: nn.Module,
        task: TaskSpec,
        param_groups: Sequence[Mapping[str, Any]],
        optimizer: Callable[..., torch.optim.Optimizer],
        extra_loss: Callable[[nn.Module], torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        # Manual optimization: the automatic closure (zero_grad/step hook calls, closure and result
        # objects) cost ~0.25 ms a step, ~10% of a step of the default MLP on CPU. Backward and
        # optimizer-step hooks still run (manual_backward, LightningOptimizer.step), as do AMP scaling.
        self.automatic_optimization = False
        self.net = net
        self.task = task
        self.param_groups = [dict(g) for g in param_groups]
        self.optimizer_factory = optimizer
        self.extra_loss = extra_loss
        self._loss_sum: torch.Tensor | None = None
        self._steps = 0
        self.test_results: dict[str, float] = {}

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _PLAIN_ATTRS:
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def monitor(self) -> tuple[str, str]:
        return selection(self.task)

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.task.kind == "classification":
            return F.cross_entropy(out, y.long())
        return F.mse_loss(out.squeeze(-1), y)

    def training_step(self, batch, batch_idx):
        # A batch is one (x, y) minibatch, or a group of them from TensorLoader(steps_per_batch=k).
        opt = self.optimizers()
        for x, y in batch if isinstance(batch, list) else [batch]:
            loss = self.loss(self(x), y)
            if self.extra_loss is not None:
                loss = loss + self.extra_loss(self.net)
            opt.zero_grad(set_to_none=True)
            self.manual_backward(loss)
            opt.step()
            # Summed on-device and logged per epoch: a per-step self.log costs more than the step.
            d = loss.detach()
            self._loss_sum = d if self._loss_sum is None else self._loss_sum + d
            self._steps += 1

    def on_train_epoch_end(self) -> None:
        if self._steps:
            self._to_loggers({"train/loss": self._loss_sum / self._steps})
        self._loss_sum, self._steps = None, 0

    def _to_loggers(self, values: Mapping[str, torch.Tensor]) -> None:
        """Metrics no callback monitors go straight to the loggers: `self.log` costs ~0.5-1 ms per
        key in result bookkeeping, a large share of a small model's epoch."""
        for logger in self.loggers:
            logger.log_metrics({k: float(v) for k, v in values.items()}, step=self.global_step)

    def _evaluate(self, batch, prefix: str) -> dict[str, torch.Tensor]:
        x, y = batch
        out = self(x)
        values = {f"{prefix}/loss": self.loss(out, y), **{f"{prefix}/{k}": v for k, v in task_metrics(self.task, out, y).items()}}
        monitor = selection(self.task)[0].replace("val/", f"{prefix}/")
        self.log(monitor, values[monitor], batch_size=len(x))  # ModelCheckpoint and EarlyStopping read it
        self._to_loggers({k: v for k, v in values.items() if k != monitor})
        return values

    def validation_step(self, batch, batch_idx):
        self._evaluate(batch, "val")

    def test_step(self, batch, batch_idx):
        values = self._evaluate(batch, "test")
        self.test_results = {k: float(v) for k, v in values.items()}

    def predict_step(self, batch, batch_idx):
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        feats = self.net.backbone(x)
        return feats, self.net.head(feats).softmax(-1) if self.task.kind == "classification" else self.net.head(feats)

    def configure_optimizers(self):
        groups = [{"params": g["params"], "lr": g["lr"]} for g in self.param_groups if any(p.requires_grad for p in g["params"])]
        return self.optimizer_factory(groups)


class _MemoryCheckpointIO(CheckpointIO):
    """ModelCheckpoint's files only live for one fit() (a temporary directory): keep a copy of the
    weights in memory instead of serialising and writing ~200 kB (~2 ms) per improving epoch."""

    def __init__(self) -> None:
        self.saved: dict[str, dict] = {}

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        state = {k: v.detach().clone() for k, v in checkpoint["state_dict"].items()}  # the live weights move on
        self.saved[str(path)] = {**checkpoint, "state_dict": state}

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict[str, Any]:
        return self.saved[str(path)]

    def remove_checkpoint(self, path) -> None:
        self.saved.pop(str(path), None)


@dataclass
class FitResult:
    test: dict[str, float]
    best_epoch: int
    epochs: int
    steps: int
    best_val: float | None = None  # the monitored validation metric at the kept epoch


def _quiet() -> None:
    import logging
    import warnings

    # Device banners and tips would drown the one line per run that users watch in `dvc repro`.
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    logging.getLogger("lightning.fabric").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")


def trainer(train_cfg: Mapping[str, Any], logger=None, callbacks=(), max_epochs: int | None = None) -> L.Trainer:
    _quiet()
    threads = train_cfg.get("num_threads")
    if threads:
        torch.set_num_threads(int(threads))
    return L.Trainer(
        max_epochs=max_epochs if max_epochs is not None else int(train_cfg["max_epochs"]),
        accelerator=train_cfg.get("accelerator", "auto"),
        devices=1,
        logger=logger if logger is not None else False,
        callbacks=list(callbacks),
        enable_checkpointing=any(isinstance(c, L.pytorch.callbacks.ModelCheckpoint) for c in callbacks),
        enable_model_summary=False,
        enable_progress_bar=bool(train_cfg.get("progress_bar", True)) and sys.stderr.isatty(),
        num_sanity_val_steps=0,
        check_val_every_n_epoch=int(train_cfg.get("val_every_n_epochs", 1)),
        log_every_n_steps=1_000_000,  # epoch-level metrics only, see SupervisedModule.training_step
        deterministic=bool(train_cfg.get("deterministic", False)),
    )


def fit(
    module: L.LightningModule,
    data: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
    train_cfg: Mapping[str, Any],
    seed: int,
    logger=None,
) -> FitResult:
    """Train on data['train'], keep the epoch with the best validation metric, test it.

    `module.monitor()` names the validation metric that selects the epoch and whether it is
    maximised; the module's test_step leaves its metrics in `module.test_results`.
    """
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    monitor, mode = module.monitor()
    L.seed_everything(seed, workers=False, verbose=False)
    x, y = data["train"]
    train = TensorLoader(x, y, train_cfg["batch_size"], shuffle=True, seed=seed, min_batches=int(train_cfg.get("min_steps_per_epoch", 1)),
                         steps_per_batch=int(train_cfg.get("steps_per_batch", 0)))
    whole = lambda split: TensorLoader(*data[split], batch_size=len(data[split][0]), shuffle=False)  # noqa: E731
    with tempfile.TemporaryDirectory(prefix="ckpt-") as tmp:
        ckpt = ModelCheckpoint(dirpath=tmp, monitor=monitor, mode=mode, save_top_k=1, save_weights_only=True, enable_version_counter=False)
        stop = EarlyStopping(monitor=monitor, mode=mode, patience=int(train_cfg.get("patience", 10)))
        tr = trainer(train_cfg, logger=logger, callbacks=[ckpt, stop])
        store = tr.strategy.checkpoint_io = _MemoryCheckpointIO()
        tr.fit(module, train, whole("val"))
        best = store.load_checkpoint(ckpt.best_model_path)
        module.load_state_dict(best["state_dict"])
        best_epoch = int(best.get("epoch", tr.current_epoch))
        tr.test(module, whole("test"), verbose=False)
    best_val = float(ckpt.best_model_score) if ckpt.best_model_score is not None else None
    return FitResult(test=module.test_results, best_epoch=best_epoch, epochs=tr.current_epoch, steps=tr.global_step, best_val=best_val)
