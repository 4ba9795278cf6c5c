"""Lightning training of one or many tasks, tuned for many small in-memory runs.

One module (`module.TaskModule`) trains every model of the pipeline: a transfer target or a source
task is a task set of one task trained with equal weights, a multitask model several tasks whose
weighting method owns the backward pass. Per-step work is kept to the optimisation itself: batches
are sliced from tensors already in memory (`loader.TensorLoader`, no per-sample collate) and several
minibatches go into one Lightning batch (`steps_per_batch`), the optimisation is a
manual-optimization training_step (no closure machinery), the training loss is summed on-device and
logged once per epoch straight to the loggers, validation runs the whole split as one batch, and
model-selection checkpoints stay in memory (`fit._MemoryCheckpointIO`). Lightning still owns the
loop, callbacks (checkpointing for model selection, early stopping) and loggers.
`benchmarks/training_loop.py` measures this path against a plain PyTorch loop.

    loader   TensorLoader
    metrics  task_metrics, per_task_metrics, selection_score, masked_losses
    module   TaskModule, OneTaskNet, backward_step
    fit      trainer (the factory), fit, FitResult
"""

from __future__ import annotations

from pipeline.training.fit import FitResult, fit, quiet, trainer
from pipeline.training.loader import TensorLoader
from pipeline.training.metrics import masked_losses, per_task_metrics, selection_score, task_metrics
from pipeline.training.module import OneTaskNet, TaskModule, backward_step

__all__ = [
    "FitResult",
    "OneTaskNet",
    "TaskModule",
    "TensorLoader",
    "backward_step",
    "fit",
    "masked_losses",
    "per_task_metrics",
    "quiet",
    "selection_score",
    "task_metrics",
    "trainer",
]
