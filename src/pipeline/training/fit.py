"""The trainer factory and `fit`: train, keep the best validation epoch (in memory), test it."""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins import CheckpointIO
from lightning.pytorch.loggers import Logger

from pipeline.config import FitConfig, TrainerConfig
from pipeline.errors import Diverged
from pipeline.training.loader import TensorLoader


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


class Recorder(Logger):
    """Keeps what Lightning and the module log, as (key, value, step, time in ms), for the stage to
    send to its MLflow run in one batch: a run may train in a worker process (`parallel`), which
    must not write the store, and each SQLite write is a transaction (~10 ms here)."""

    def __init__(self) -> None:
        super().__init__()
        self.metrics: list[tuple[str, float, int, int]] = []

    @property
    def name(self) -> str:
        return "recorder"

    @property
    def version(self) -> int:
        return 0

    def log_metrics(self, metrics, step=None) -> None:
        import time

        now = int(time.time() * 1000)
        self.metrics.extend((k, float(v), int(step or 0), now) for k, v in metrics.items())

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass  # the stage logs a run's configuration itself


class EpochBar(L.pytorch.callbacks.ProgressBar):
    """One bar per run over its epochs (Lightning's bars count batches, which here take milliseconds,
    and show a logger version): `epoch 14/60  val/acc 0.912 (best 0.915 @ 11)`, and `early stop` when
    early stopping ends the run before its last epoch."""

    def __init__(self, file=None) -> None:
        super().__init__()
        self.bar = None
        self.enabled = True
        self.file = file  # None: stderr

    def disable(self) -> None:
        self.enabled = False

    def enable(self) -> None:
        self.enabled = True

    def on_train_start(self, trainer, pl_module) -> None:
        from tqdm.auto import tqdm

        if self.enabled:
            self.bar = tqdm(total=trainer.max_epochs, desc="epoch", unit="epoch", leave=False, dynamic_ncols=True, file=self.file or sys.stderr)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        # The previous epoch, shown now: its validation may run in the module's epoch-end hook, which
        # Lightning calls after a progress bar's.
        if trainer.current_epoch > 0:
            self._show(trainer, pl_module)

    def _show(self, trainer, pl_module) -> None:
        if self.bar is None:
            return
        monitor, _ = pl_module.monitor()
        ckpt = trainer.checkpoint_callback
        value = trainer.callback_metrics.get(monitor)
        parts = [f"{monitor} {float(value):.4g}"] if value is not None else []
        if ckpt is not None and ckpt.best_model_score is not None:
            parts.append(f"(best {float(ckpt.best_model_score):.4g})")
        self.bar.set_description(f"epoch {trainer.current_epoch}/{trainer.max_epochs}", refresh=False)
        self.bar.set_postfix_str(" ".join(parts), refresh=False)
        self.bar.update(trainer.current_epoch - self.bar.n)

    def on_train_end(self, trainer, pl_module) -> None:
        if self.bar is not None:
            self._show(trainer, pl_module)
            if trainer.should_stop and trainer.current_epoch < trainer.max_epochs:
                self.bar.set_description(f"early stop at epoch {trainer.current_epoch}/{trainer.max_epochs}")
            self.bar.refresh()
            self.bar.close()
            self.bar = None


@dataclass
class FitResult:
    test: dict[str, float]
    best_epoch: int
    epochs: int
    steps: int
    best_val: float | None = None  # the monitored validation metric at the kept epoch
    logged: list[tuple[str, float, int, int]] = field(default_factory=list)  # Recorder.metrics, for the run's MLflow log


def quiet() -> None:
    import logging
    import warnings

    # Device banners and tips would drown the one line per run that users watch in `dvc repro`.
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    logging.getLogger("lightning.fabric").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
    # `fit` validates in the module's epoch-end hook (TaskModule._validate), not in a val loop.
    warnings.filterwarnings("ignore", message=".*`validation_step` but have no `val_dataloader`.*")
    # TorchJD's Nash-MTL solver, once per run and worker: says solves are not cached, nothing about the run.
    warnings.filterwarnings("ignore", message=".*not DPP.*")


def trainer(
    settings: TrainerConfig, max_epochs: int, logger=None, callbacks: Sequence[L.Callback] = (), progress_bar: bool | None = None
) -> L.Trainer:
    """A Lightning Trainer for `settings` (conf/trainer/); progress_bar overrides the setting."""
    quiet()
    if settings.num_threads:
        torch.set_num_threads(int(settings.num_threads))
    from pipeline.training.parallel import in_worker

    # Side by side, workers' bars would overwrite each other: they train quietly and the stage prints a
    # line per finished run.
    own_bar = any(isinstance(c, L.pytorch.callbacks.ProgressBar) for c in callbacks)  # a caller's (tests)
    bar = bool((settings.progress_bar if progress_bar is None else progress_bar) and not in_worker() and sys.stderr.isatty())
    return L.Trainer(
        max_epochs=int(max_epochs),
        accelerator=settings.accelerator,
        devices=int(settings.devices),  # > 1: Lightning DDP, see pipeline.training.distributed
        strategy=settings.strategy or "auto",
        logger=logger if logger is not None else False,
        callbacks=[*callbacks, *([EpochBar()] if bar and not own_bar else [])],
        enable_checkpointing=any(isinstance(c, L.pytorch.callbacks.ModelCheckpoint) for c in callbacks),
        enable_model_summary=False,
        enable_progress_bar=bar or own_bar,
        num_sanity_val_steps=0,
        check_val_every_n_epoch=int(settings.val_every_n_epochs),
        log_every_n_steps=1_000_000,  # epoch-level metrics only, see TaskModule.training_step
        deterministic=bool(settings.deterministic),
    )


def kept(tr: L.Trainer, store: _MemoryCheckpointIO, path: str) -> dict:
    """The kept epoch's checkpoint. Under DDP only rank zero saves checkpoints: it sends its copy to the
    other ranks, which then test the same weights (and keep calling the same collectives as it)."""
    if tr.world_size == 1:
        return store.load_checkpoint(path)
    return tr.strategy.broadcast(store.load_checkpoint(path) if tr.is_global_zero else None)


def fit(
    module: L.LightningModule,
    data: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
    run: FitConfig,
    settings: TrainerConfig,
    seed: int,
    callbacks: Sequence[L.Callback] = (),
    resume: Path | None = None,
) -> FitResult:
    """Train on data['train'] with `run`'s budget, keep the epoch with the best validation metric, test it.

    `module.monitor()` names the validation metric that selects the epoch and whether it is
    maximised; the module's test_step leaves its metrics in `module.test_results`. `callbacks` run
    next to model selection and early stopping (benchmarks/training_loop.py times the loop with one).
    What the module logs is kept in the result (`logged`); nothing is written anywhere, except with
    `resume` (a file): the fit's last epoch, after each epoch, from which a rerun goes on (training.resume).
    """
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    monitor, mode = module.monitor()
    L.seed_everything(seed, workers=False, verbose=False)
    x, y = data["train"]
    module.dense_labels = not bool(torch.isnan(y).any())  # checked once here rather than per step
    whole = lambda split: TensorLoader(*data[split], batch_size=len(data[split][0]), shuffle=False)  # noqa: E731
    # Validation every epoch runs inside the module's epoch-end hook (TaskModule._validate), without
    # Lightning's evaluation loop; checkpointing and early stopping act on the training epoch's end.
    own_validation = int(settings.val_every_n_epochs) == 1 and getattr(module, "validates_at_epoch_end", False)
    from pipeline.training import resume as last_epoch

    with tempfile.TemporaryDirectory(prefix="ckpt-") as tmp:
        # A resumed fit's dirpath must be the killed one's (Lightning restores its best epoch only then); nothing is written there.
        tmp = tmp if resume is None else f"{resume}.best"
        ckpt = ModelCheckpoint(
            dirpath=tmp, monitor=monitor, mode=mode, save_top_k=1, save_weights_only=True, enable_version_counter=False, save_on_train_epoch_end=True
        )
        stop = EarlyStopping(monitor=monitor, mode=mode, patience=run.patience, check_on_train_epoch_end=True)
        recorder = Recorder()
        saver = last_epoch.callback(resume, None)  # it saves the loader's random state, given below
        tr = trainer(settings, run.max_epochs, logger=recorder, callbacks=[ckpt, stop, *callbacks, *saver])
        # Under DDP each process takes its share of every minibatch (rank, world).
        train = TensorLoader(
            x,
            y,
            run.batch_size,
            shuffle=True,
            seed=seed,
            min_batches=run.min_steps_per_epoch,
            steps_per_batch=settings.steps_per_batch,
            rank=tr.global_rank,
            world=tr.world_size,
        )
        for cb in saver:
            cb.loader = train
        store = tr.strategy.checkpoint_io = _MemoryCheckpointIO()
        ckpt_path = last_epoch.resume_point(resume, store)
        try:
            if own_validation:
                module.validation_data = data["val"]
                try:
                    tr.fit(module, train, ckpt_path=ckpt_path)
                finally:
                    module.validation_data = None
            else:
                tr.fit(module, train, whole("val"), ckpt_path=ckpt_path)
        except Diverged as exc:  # the history up to the divergence, for the failed run's MLflow log
            exc.logged = recorder.metrics
            raise
        best = kept(tr, store, ckpt.best_model_path)
        module.load_state_dict(best["state_dict"])
        best_epoch = int(best.get("epoch", tr.current_epoch))
        tr.test(module, whole("test"), verbose=False)
    best_val = float(ckpt.best_model_score) if ckpt.best_model_score is not None else None
    return FitResult(
        test=module.test_results, best_epoch=best_epoch, epochs=tr.current_epoch, steps=tr.global_step, best_val=best_val, logged=recorder.metrics
    )
