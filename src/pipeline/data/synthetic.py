"""Synthetic tasks with known structure, for checking what sharing can and cannot do."""

from __future__ import annotations

import numpy as np

from pipeline.data import Source, TaskSpec
from pipeline.errors import PipelineError


def synthetic_linear(
    n_tasks: int = 10, n_per_task: int = 100, n_features: int = 20, relatedness: float = 0.5, noise: float = 0.5, seed: int = 0
) -> Source:
    """Linear regression tasks sharing part of their weights.

    w_t = sqrt(r) * w_shared + sqrt(1 - r) * u_t with r = relatedness (0: unrelated tasks, 1: one
    weight vector for all). w_shared and every u_t are N(0, I / n_features), so each w_t has the
    same scale for any r and the expected cosine between two tasks' weights is r. x ~ N(0, I),
    y_t = x . w_t + noise * N(0, 1): unit signal variance, so `noise` is the noise-to-signal std
    ratio. Each sample belongs to one task and is labelled only for it. The true weights are in
    the provenance (`weights`, `shared_weight`).
    """
    if not 0.0 <= relatedness <= 1.0:
        raise PipelineError(f"synthetic_linear: relatedness must be in [0, 1], got {relatedness}")
    for key, val in {"n_tasks": n_tasks, "n_per_task": n_per_task, "n_features": n_features}.items():
        if int(val) < 1:
            raise PipelineError(f"synthetic_linear: {key} must be at least 1, got {val}")
    if noise < 0:
        raise PipelineError(f"synthetic_linear: noise must be non-negative, got {noise}")
    rng = np.random.default_rng(seed)
    scale = 1.0 / np.sqrt(n_features)
    shared = rng.normal(0.0, scale, n_features)
    own = rng.normal(0.0, scale, (n_tasks, n_features))
    w = np.sqrt(relatedness) * shared + np.sqrt(1.0 - relatedness) * own
    task = np.repeat(np.arange(n_tasks), n_per_task)
    x = rng.normal(size=(len(task), n_features))
    value = np.einsum("nd,nd->n", x, w[task]) + noise * rng.normal(size=len(task))
    y = np.full((len(task), n_tasks), np.nan, dtype=np.float32)
    y[np.arange(len(task)), task] = value
    return Source(
        x=x.astype(np.float32),
        y=y,
        tasks=[TaskSpec(f"task_{t}", "regression") for t in range(n_tasks)],
        input_shape=[n_features],
        provenance={
            "adapter": "synthetic_linear",
            "package": "numpy",
            "version": np.__version__,
            "seed": seed,
            "n_tasks": n_tasks,
            "n_per_task": n_per_task,
            "n_features": n_features,
            "relatedness": relatedness,
            "noise": noise,
            "weights": w.tolist(),
            "shared_weight": shared.tolist(),
        },
        feature_names=[f"x{j}" for j in range(n_features)],
    )
