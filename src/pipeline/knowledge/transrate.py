"""TransRate (Huang et al., ICML 2022): the mutual information between features and labels measured
by coding rates, the bits needed to encode the features up to distortion eps,

    R(Z)     = 1/2 log det( I + d / (n eps^2) Z^T Z )
    R(Z | Y) = sum_c n_c / n * 1/2 log det( I + d / (n_c eps^2) Z_c^T Z_c )
    TrR      = R(Z) - R(Z | Y),

Z the centred features (scaled to unit mean squared norm here, so candidates of different scales
compare) and Z_c the rows of class c. High where the whole set spreads but each class is compact.
With fewer labelled rows than feature dimensions both rates follow the rank, and random features,
which have it in full, can outscore separating ones (tests/unit/test_knowledge_scores.py).

Each log det is taken on the smaller Gram matrix, det(I_d + c Z^T Z) = det(I_n + c Z Z^T) (Sylvester):
a class of few rows costs an n_c x n_c determinant instead of a d x d one."""

from __future__ import annotations

import numpy as np

from pipeline.knowledge import Score


def coding_rate(z: np.ndarray, eps: float) -> float:
    n, d = z.shape
    gram = z.T @ z if d <= n else z @ z.T
    return 0.5 * float(np.linalg.slogdet(np.eye(len(gram)) + d / (n * eps**2) * gram)[1])


class TransRate(Score):
    name = "transrate"

    def __init__(self, eps: float = 1.0) -> None:
        self.eps = float(eps)

    def compute(self, x: np.ndarray, y: np.ndarray) -> float:
        z = x - x.mean(axis=0)
        scale = np.sqrt(np.mean(np.sum(z**2, axis=1)))
        z = z / scale if scale > 0 else z
        n = len(y)
        given = sum((y == c).sum() / n * coding_rate(z[y == c], self.eps) for c in np.unique(y))
        return coding_rate(z, self.eps) - given
