"""The other naive baseline: a cross-validated linear probe on the labelled rows' features, logistic
regression for classes (accuracy) and ridge for a regression target (R^2), scikit-learn throughout.
Folds are stratified (classification) and drawn after ordering the rows by content, so the score
does not depend on the order they came in."""

from __future__ import annotations

import numpy as np

from pipeline.knowledge import NotApplicable, Score, canonical_order


class Probe(Score):
    name = "probe"
    kinds = ("classification", "regression")
    baseline = True

    def __init__(self, folds: int = 3, c: float = 100.0, tol: float = 1e-3) -> None:
        self.folds, self.c, self.tol = int(folds), float(c), float(tol)

    def compute(self, x: np.ndarray, y: np.ndarray) -> float:
        from sklearn.linear_model import LogisticRegression, Ridge
        from sklearn.model_selection import KFold, StratifiedKFold, cross_val_score

        order = canonical_order(x)
        # One scale for all features (mean squared row norm 1), so C means the same for every candidate and
        # lbfgs converges in a few iterations; per-feature standardising would inflate the near-constant ones.
        x, y = x[order] / max(float(np.sqrt(np.mean(np.sum(x**2, axis=1)))), 1e-12), y[order]
        if np.issubdtype(y.dtype, np.integer):
            folds = min(self.folds, int(np.bincount(y).min()))
            if folds < 2:
                raise NotApplicable("probe needs at least 2 labelled rows per class")
            model, cv = LogisticRegression(C=self.c, tol=self.tol, max_iter=1000), StratifiedKFold(folds)
        else:
            folds = min(self.folds, len(y))
            if folds < 2:
                raise NotApplicable("probe needs at least 2 labelled rows")
            model, cv = Ridge(alpha=1.0 / self.c), KFold(folds)
        return float(np.mean(cross_val_score(model, x, y, cv=cv)))
