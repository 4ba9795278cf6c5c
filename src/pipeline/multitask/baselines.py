"""Classic scikit-learn baselines in the same table as the neural models: a weak single-task
baseline makes any sharing look good, so every multitask result is also set against these.

- `ridge_per_task`: one ridge regression (logistic regression for classes) per task, on that task's
  labelled rows only.
- `ridge_pooled`: one model on all tasks' rows stacked, with a one-hot task indicator appended to the
  inputs: a shared slope with per-task intercepts, the fixed-effects analogue of a mixed model with
  a random intercept per task. Only for tasks of one kind (all regression or all classification with
  the same classes).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from pipeline.data import TaskSpec


def _model(kind: str, alpha: float):
    from sklearn.linear_model import LogisticRegression, Ridge

    return Ridge(alpha=alpha) if kind == "regression" else LogisticRegression(C=1.0 / alpha, max_iter=2000)


def ridge_per_task(x: np.ndarray, y: np.ndarray, tasks: Sequence[TaskSpec], train: np.ndarray, alpha: float = 1.0) -> list[np.ndarray]:
    """Predictions [N] (or class probabilities [N, C]) per task for every row of x."""
    preds = []
    for t, task in enumerate(tasks):
        rows = train[~np.isnan(y[train, t])]
        model = _model(task.kind, alpha).fit(x[rows], y[rows, t])
        preds.append(_predict(model, task, x))
    return preds


def ridge_pooled(x: np.ndarray, y: np.ndarray, tasks: Sequence[TaskSpec], train: np.ndarray, alpha: float = 1.0) -> list[np.ndarray] | None:
    kinds = {t.kind for t in tasks}
    if len(kinds) != 1 or (kinds == {"classification"} and len({tuple(t.classes) for t in tasks}) != 1):
        return None
    eye = np.eye(len(tasks), dtype=np.float32)
    xs, ys = [], []
    for t in range(len(tasks)):
        rows = train[~np.isnan(y[train, t])]
        xs.append(np.hstack([x[rows], np.repeat(eye[t : t + 1], len(rows), 0)]))
        ys.append(y[rows, t])
    model = _model(tasks[0].kind, alpha).fit(np.vstack(xs), np.concatenate(ys))
    return [_predict(model, task, np.hstack([x, np.repeat(eye[t : t + 1], len(x), 0)])) for t, task in enumerate(tasks)]


def _predict(model, task: TaskSpec, x: np.ndarray) -> np.ndarray:
    if task.kind == "regression":
        return model.predict(x)[:, None]
    proba = np.zeros((len(x), task.n_outputs), dtype=np.float32)
    proba[:, model.classes_.astype(int)] = model.predict_proba(x)
    return proba
