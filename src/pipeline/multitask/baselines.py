"""Classic scikit-learn baselines in the same table as the neural models: a weak single-task
baseline makes any sharing look good, so every multitask result is also set against these.

- `ridge_per_task`: one ridge regression (logistic regression for classes) per task, on that task's
  labelled rows only.
- `ridge_pooled`: one model on all tasks' rows stacked, with a one-hot task indicator appended to the
  inputs: a shared slope with per-task intercepts, the fixed-effects analogue of a mixed model with
  a random intercept per task. Only for tasks of one kind (all regression or all classification with
  the same classes).

Each model's regularisation strength is chosen on the validation split from `alphas` (the neural
models select on the same split); fits use the train split only.

Transfer experiments use the same linear models as a sanity baseline (`linear_on_budget`): fitted on
the k labelled target rows of a label budget, alpha chosen on that budget's validation labels, as the
transfer strategies are; if it beats every network, the networks are not earning their keep.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pipeline.data import TaskSpec

ALPHAS = (0.01, 0.1, 1.0, 10.0, 100.0)


def _model(kind: str, alpha: float):
    from sklearn.linear_model import LogisticRegression, Ridge

    return Ridge(alpha=alpha) if kind == "regression" else LogisticRegression(C=1.0 / alpha, max_iter=2000)


def _selected(kind: str, x_fit, y_fit, x_val, y_val, alphas: Sequence[float]):
    """The model fitted on (x_fit, y_fit) whose alpha scores best on the validation rows (MSE, or
    accuracy for classes), and that alpha; with no validation rows, the middle of the grid."""
    if len(y_val) == 0:
        alpha = sorted(alphas)[len(alphas) // 2]
        return _model(kind, alpha).fit(x_fit, y_fit), alpha
    best = None
    for alpha in alphas:
        model = _model(kind, alpha).fit(x_fit, y_fit)
        pred = model.predict(x_val)
        score = -float(np.mean((pred - y_val) ** 2)) if kind == "regression" else float(np.mean(pred == y_val))
        if best is None or score > best[0]:
            best = (score, model, alpha)
    return best[1], best[2]


def ridge_per_task(
    x: np.ndarray, y: np.ndarray, tasks: Sequence[TaskSpec], splits: dict[str, np.ndarray], alphas: Sequence[float] = ALPHAS
) -> tuple[list[np.ndarray], dict]:
    """Predictions [N, 1] (or class probabilities [N, C]) per task for every row of x, and the alphas chosen."""
    preds, chosen = [], {}
    for t, task in enumerate(tasks):
        tr, va = (splits[s][~np.isnan(y[splits[s], t])] for s in ("train", "val"))
        model, chosen[task.name] = _selected(task.kind, x[tr], y[tr, t], x[va], y[va, t], alphas)
        preds.append(_predict(model, task, x))
    return preds, {"alpha": chosen}


def ridge_pooled(
    x: np.ndarray, y: np.ndarray, tasks: Sequence[TaskSpec], splits: dict[str, np.ndarray], alphas: Sequence[float] = ALPHAS
) -> tuple[list[np.ndarray], dict] | str:
    """As ridge_per_task, or why the tasks cannot be pooled (a string)."""
    kinds = {t.kind for t in tasks}
    if len(kinds) != 1:
        return f"tasks of different kinds ({', '.join(sorted(kinds))}) cannot share one model"
    if kinds == {"classification"} and len({tuple(t.classes) for t in tasks}) != 1:
        return "classification tasks with different class sets cannot share one model"
    eye = np.eye(len(tasks), dtype=np.float32)

    def stacked(split: str):
        xs, ys = [], []
        for t in range(len(tasks)):
            rows = splits[split][~np.isnan(y[splits[split], t])]
            xs.append(np.hstack([x[rows], np.repeat(eye[t : t + 1], len(rows), 0)]))
            ys.append(y[rows, t])
        return np.vstack(xs), np.concatenate(ys)

    model, alpha = _selected(tasks[0].kind, *stacked("train"), *stacked("val"), alphas)
    return [_predict(model, task, np.hstack([x, np.repeat(eye[t : t + 1], len(x), 0)])) for t, task in enumerate(tasks)], {"alpha": alpha}


def _predict(model, task: TaskSpec, x: np.ndarray) -> np.ndarray:
    if task.kind == "regression":
        return model.predict(x)[:, None]
    proba = np.zeros((len(x), task.n_outputs), dtype=np.float32)
    proba[:, model.classes_.astype(int)] = model.predict_proba(x)
    return proba


# The name a transfer report and MLflow give the linear sanity baseline (ridge or logistic regression).
LINEAR = "linear"
LINEAR_FEATURES = "linear_features"  # the same on the source network's features (transfer experiments)


def linear_on_budget(x: np.ndarray, y: np.ndarray, task: TaskSpec, index: dict[str, np.ndarray], alphas: Sequence[float] = ALPHAS):
    """Ridge (regression) or logistic regression (classes) fitted on the rows index['train'] of one
    task's labels y [N], alpha chosen on the rows index['val']: predictions [n_test, 1] (or class
    probabilities) for the rows index['test'], and the alpha chosen."""
    tr, va = index["train"], index["val"]
    model, alpha = _selected(task.kind, x[tr], y[tr], x[va], y[va], alphas)
    return _predict(model, task, x[index["test"]]), alpha
