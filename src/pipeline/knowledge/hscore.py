"""H-score (Bao et al., ICIP 2019): how much of the features' variance the class means explain,

    H(f) = tr( cov(f)^-1 cov(E[f | y]) ),

cov(E[f | y]) the covariance of the features with every row replaced by its class mean. With few
labelled rows cov(f) is singular or nearly so and H explodes; the shrinkage form (Ibrahim et al.,
ICLR 2023) uses the Ledoit-Wolf estimate instead, (1 - a) cov(f) + a mu I with a and mu from
scikit-learn's `ledoit_wolf`, and scales the between-class covariance by the same (1 - a):

    H_shrink(f) = tr( ((1 - a) cov(f) + a mu I)^-1 (1 - a) cov(E[f | y]) ).

Without shrinkage the pseudo-inverse stands in for a singular cov(f), as numpy's `pinv(hermitian=True)`
forms it: cov(f) = V diag(l) V^T, 1/l_i kept where |l_i| > 1e-15 max |l|. Neither trace needs a d x d
product: cov(E[f | y]) = W^T W with W the class means scaled by sqrt(n_c / n) (C rows), so

    H(f)        = sum_i (1/l_i) ||W v_i||^2,
    H_shrink(f) = (1 - a) tr( W ((1 - a) cov(f) + a mu I)^-1 W^T ),

the same numbers (to rounding) as the traces above."""

from __future__ import annotations

import numpy as np

from pipeline.knowledge import Score


class HScore(Score):
    def __init__(self, shrinkage: bool = False) -> None:
        self.shrinkage = bool(shrinkage)
        self.name = "hscore_shrinkage" if self.shrinkage else "hscore"

    def compute(self, x: np.ndarray, y: np.ndarray) -> float:
        f = x - x.mean(axis=0)
        counts = np.bincount(y)
        means = np.zeros((len(counts), f.shape[1]))
        np.add.at(means, y, f)  # these sums, not a one-hot product: with few rows H is ill-conditioned, moves with rounding
        means /= counts[:, None]
        w = means * np.sqrt(counts / len(y))[:, None]  # cov(E[f | y]) = W^T W, as f is centred
        if not self.shrinkage:
            values, vectors = np.linalg.eigh(np.cov(f, rowvar=False, bias=True))
            large = np.abs(values) > 1e-15 * np.abs(values).max()  # numpy pinv's cutoff
            return float(np.sum(np.sum((w @ vectors[:, large]) ** 2, axis=0) / values[large]))
        from sklearn.covariance import ledoit_wolf  # the function, not the estimator: no precision matrix (a pinvh) is formed

        shrunk, a = ledoit_wolf(f, assume_centered=True)
        return float((1.0 - a) * np.sum(w * np.linalg.solve(shrunk, w.T).T))
