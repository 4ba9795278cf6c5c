"""A naive baseline any score must beat to be worth showing: the leave-one-out accuracy (R^2 for a
regression target) of k nearest neighbours on the labelled rows' features. scikit-learn's
`NearestNeighbors.kneighbors()` without a query leaves each row out of its own neighbours, which is
leave-one-out in one call."""

from __future__ import annotations

import numpy as np

from pipeline.knowledge import NotApplicable, Score


class KNN(Score):
    name = "knn"
    kinds = ("classification", "regression")
    baseline = True

    def __init__(self, neighbours: int = 1) -> None:
        self.neighbours = int(neighbours)

    def compute(self, x: np.ndarray, y: np.ndarray) -> float:
        from sklearn.metrics import r2_score
        from sklearn.neighbors import NearestNeighbors

        k = min(self.neighbours, len(y) - 1)
        if k < 1:
            raise NotApplicable("knn needs at least 2 labelled rows")
        _, idx = NearestNeighbors(n_neighbors=k).fit(x).kneighbors()
        if np.issubdtype(y.dtype, np.integer):
            votes = np.zeros((len(y), int(y.max()) + 1))
            np.add.at(votes, (np.arange(len(y))[:, None], y[idx]), 1.0)  # one bincount per row, in one call
            return float(np.mean(votes.argmax(axis=1) == y))  # ties: the lowest class id
        return float(r2_score(y, y[idx].mean(axis=1)))
