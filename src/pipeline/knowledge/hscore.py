"""H-score (Bao et al., ICIP 2019): how much of the features' variance the class means explain,

    H(f) = tr( cov(f)^-1 cov(E[f | y]) ),

cov(E[f | y]) the covariance of the features with every row replaced by its class mean. With few
labelled rows cov(f) is singular or nearly so and H explodes; the shrinkage form (Ibrahim et al.,
ICLR 2023) uses the Ledoit-Wolf estimate instead, (1 - a) cov(f) + a mu I with a and mu from
scikit-learn's `LedoitWolf`, and scales the between-class covariance by the same (1 - a):

    H_shrink(f) = tr( ((1 - a) cov(f) + a mu I)^-1 (1 - a) cov(E[f | y]) ).

Without shrinkage the pseudo-inverse (numpy's `pinv`) stands in for a singular cov(f)."""

from __future__ import annotations

import numpy as np

from pipeline.knowledge import Score


def class_means(f: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Every row of f replaced by the mean of its class."""
    sums = np.zeros((int(y.max()) + 1, f.shape[1]))
    np.add.at(sums, y, f)
    return (sums / np.bincount(y)[:, None])[y]


class HScore(Score):
    def __init__(self, shrinkage: bool = False) -> None:
        self.shrinkage = bool(shrinkage)
        self.name = "hscore_shrinkage" if self.shrinkage else "hscore"

    def compute(self, x: np.ndarray, y: np.ndarray) -> float:
        f = x - x.mean(axis=0)
        between = np.cov(class_means(f, y), rowvar=False, bias=True)
        if not self.shrinkage:
            return float(np.trace(np.linalg.pinv(np.cov(f, rowvar=False, bias=True), hermitian=True) @ between))
        from sklearn.covariance import LedoitWolf

        lw = LedoitWolf(assume_centered=True).fit(f)
        return float(np.trace(np.linalg.solve(lw.covariance_, (1.0 - lw.shrinkage_) * between)))
