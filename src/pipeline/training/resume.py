"""A fit's last epoch on disk, so that a killed fit resumes there and ends as the uninterrupted one would.

Lightning's own checkpoint holds the weights, the optimizer, the loops' progress and the callbacks'
state (early stopping's, model selection's), but not what else decides the rest of a run here: the
random streams (torch's, dropout's; numpy's; Python's; and the TensorLoader's, which orders the
batches), the best epoch's weights (`fit` keeps them in memory), the metrics recorded so far (logged to
MLflow at the end), the module's per-epoch history, and whether early stopping had already ended the
fit. `LastEpoch` adds them to the checkpoint, written after every epoch (tmp file + os.replace, so a
kill leaves the previous one whole), and puts them back when `fit` resumes from it.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Checkpoint

# Seconds between two checkpoints of a fit (0: every epoch; the first epoch's is always written). A
# checkpoint of the default MLP costs ~3 ms (850 kB), 15 % of a pretrain epoch here; every 2 s it is
# noise, and a kill costs at most 2 s of training.
EVERY_S = float(os.environ.get("PIPELINE_RESUME_EVERY_S", "2"))


def rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos, "has_gauss": has_gauss, "gauss": gauss},
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class LastEpoch(Checkpoint):
    """Writes the fit's state to `path` at the end of every training epoch (a `Checkpoint`, so Lightning
    calls it after model selection and early stopping have seen the epoch). `loader`: the training
    TensorLoader. The best epoch's weights are in fit's in-memory checkpoint store, the strategy's
    `checkpoint_io`."""

    def __init__(self, path: Path, loader) -> None:
        self.path, self.loader = Path(path), loader
        self.pending: dict[str, Any] | None = None  # loaded state, put back at on_train_start
        self.last = 0.0

    def state_dict(self) -> dict[str, Any]:
        trainer = self._trainer
        module = trainer.lightning_module
        return {
            "rng": rng_state(),
            "loader": self.loader.gen.get_state(),
            "best": {
                p: {k: v for k, v in c.items() if k in ("state_dict", "epoch", "global_step")}
                for p, c in self._saved().items()
                if p != str(self.path)
            },
            "recorded": [list(m) for m in getattr(trainer.logger, "metrics", [])],
            "history": list(getattr(module, "history", [])),
            "should_stop": bool(trainer.should_stop),
            "epochs": int(trainer.current_epoch) + 1,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Here, not at on_train_start: a fit killed after its last epoch resumes straight to its test.
        trainer = self._trainer
        self._saved().update(state_dict["best"])
        if hasattr(trainer.logger, "metrics"):
            trainer.logger.metrics[:] = [tuple(m) for m in state_dict["recorded"]]
        if hasattr(trainer.lightning_module, "history"):
            trainer.lightning_module.history[:] = state_dict["history"]
        self.pending = state_dict

    def setup(self, trainer, pl_module, stage: str) -> None:
        self._trainer = trainer

    def _saved(self) -> dict[str, dict]:
        return self._trainer.strategy.checkpoint_io.saved

    def on_train_start(self, trainer, pl_module) -> None:
        state, self.pending = self.pending, None
        self._saved().pop(str(self.path), None)  # read by now (resume_point)
        if state is None:
            return
        trainer.should_stop = state["should_stop"]
        self.loader.gen.set_state(state["loader"])
        set_rng_state(state["rng"])  # last: nothing may draw from the streams before the next batch

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        import time

        now = time.monotonic()
        if EVERY_S and now - self.last < EVERY_S:
            return
        self.last = now
        checkpoint = trainer._checkpoint_connector.dump_checkpoint(weights_only=False)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        torch.save(checkpoint, tmp)
        os.replace(tmp, self.path)
        # For the stage and for tests that wait on it: how far the fit on disk has come.
        marker = self.path.with_suffix(".epoch")
        marker.with_name(f".{marker.name}").write_text(str(trainer.current_epoch + 1))
        os.replace(marker.with_name(f".{marker.name}"), marker)


def resume_point(path: Path | None, store) -> str | None:
    """The checkpoint `fit` resumes from (`trainer.fit(ckpt_path=...)`), put into its in-memory store, which
    serves Lightning's reads; None when there is none. Loaded with `weights_only=True`: tensors and plain
    values only."""
    if path is None or not Path(path).exists():
        return None
    store.saved[str(path)] = torch.load(path, map_location="cpu", weights_only=True)
    return str(path)


def callback(path: Path | None, loader) -> list[L.Callback]:
    return [] if path is None else [LastEpoch(path, loader)]
