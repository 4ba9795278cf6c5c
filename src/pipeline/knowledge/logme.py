"""LogME (You et al., ICML 2021): the log marginal evidence of a Bayesian linear model on the
features, per target column, maximised over its prior precision alpha and noise precision beta:

    p(y | F, a, b) = N(y; 0, I/b + F F^T / a),
    L(a, b) = n/2 log b + d/2 log a - n/2 log 2 pi - b/2 ||F m - y||^2 - a/2 m^T m - 1/2 log |A|,
    A = a I + b F^T F,   m = b A^-1 F^T y.

With F = U S V^T (sigma_i = s_i^2, z = U^T y, t = a / b) everything is a sum over the singular
values: m^T m = sum sigma_i z_i^2 / (sigma_i + t)^2, ||F m - y||^2 = sum (t z_i / (sigma_i + t))^2 +
||y||^2 - ||z||^2, log |A| = sum log(a + b sigma_i) + (d - r) log a. The maximum is the fixed point
gamma = sum sigma_i / (sigma_i + t), a = gamma / m^T m, b = (n - gamma) / ||F m - y||^2. LogME is
L / n averaged over the columns (one-hot classes, or the regression target).

Few-shot data are often separable (n <= d): F m fits y exactly as t -> 0, the residual goes to 0 and
b to infinity. The residual is floored at `floor` x ||y||^2, which keeps the fixed point finite
and the score comparable; no library we depend on ships LogME."""

from __future__ import annotations

import numpy as np

from pipeline.knowledge import Score, one_hot


def evidence(s: np.ndarray, z: np.ndarray, yy: float, n: int, d: int, alpha: float, beta: float) -> tuple[float, float, float]:
    """(L(alpha, beta), m^T m, ||F m - y||^2) from F's singular values s, z = U^T y and ||y||^2."""
    sigma = s**2
    t = alpha / beta
    mm = float(np.sum(sigma * z**2 / (sigma + t) ** 2))
    res = float(np.sum((t * z / (sigma + t)) ** 2) + max(yy - float(z @ z), 0.0))
    log_det = float(np.sum(np.log(alpha + beta * sigma)) + (d - len(s)) * np.log(alpha))
    value = n / 2 * np.log(beta) + d / 2 * np.log(alpha) - n / 2 * np.log(2 * np.pi) - beta / 2 * res - alpha / 2 * mm - log_det / 2
    return float(value), mm, res


def maximise(s: np.ndarray, z: np.ndarray, yy: float, n: int, d: int, floor: float, iterations: int = 100, tol: float = 1e-5):
    """(alpha, beta) at the fixed point above, from alpha = beta = 1."""
    sigma = s**2
    alpha, beta = 1.0, 1.0
    for _ in range(iterations):
        t = alpha / beta
        gamma = float(np.sum(sigma / (sigma + t)))
        _, mm, res = evidence(s, z, yy, n, d, alpha, beta)
        alpha = gamma / max(mm, 1e-300)
        beta = max(n - gamma, 1e-12) / max(res, floor * yy, 1e-300)
        if abs(alpha / beta - t) / t < tol:
            break
    return alpha, beta


class LogME(Score):
    name = "logme"
    kinds = ("classification", "regression")

    def __init__(self, floor: float = 1e-6) -> None:
        self.floor = float(floor)

    def compute(self, x: np.ndarray, y: np.ndarray) -> float:
        n, d = x.shape
        targets = one_hot(y) if np.issubdtype(y.dtype, np.integer) else ((y - y.mean()) / (y.std() or 1.0))[:, None]
        u, s, _ = np.linalg.svd(x, full_matrices=False)
        keep = s > s.max() * max(n, d) * np.finfo(float).eps  # the rank's singular values
        u, s = u[:, keep], s[keep]
        total = 0.0
        for column in targets.T:
            z, yy = u.T @ column, float(column @ column)
            alpha, beta = maximise(s, z, yy, n, d, self.floor)
            total += evidence(s, z, yy, n, d, alpha, beta)[0] / n
        return total / targets.shape[1]
