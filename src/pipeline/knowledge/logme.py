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


def fit_terms(sigma: np.ndarray, z2: np.ndarray, rest, t) -> tuple[np.ndarray, np.ndarray]:
    """(m^T m, ||F m - y||^2) at t = alpha / beta from z^2 (one target column per row, the singular
    directions along the last axis) and rest = ||y||^2 - ||z||^2, one value per row."""
    t = np.asarray(t)[..., None]
    w = z2 / (sigma + t) ** 2
    return np.sum(sigma * w, axis=-1), np.sum(t**2 * w, axis=-1) + rest


def evidence(s: np.ndarray, z: np.ndarray, yy, n: int, d: int, alpha, beta):
    """(L(alpha, beta), m^T m, ||F m - y||^2) from F's singular values s, z = U^T y and ||y||^2; z may
    hold several target columns as rows (shape (columns, r)), with yy, alpha and beta one value each."""
    sigma = s**2
    mm, res = fit_terms(sigma, z**2, np.maximum(yy - np.sum(z**2, axis=-1), 0.0), alpha / beta)
    log_det = np.sum(np.log(np.asarray(alpha)[..., None] + np.asarray(beta)[..., None] * sigma), axis=-1) + (d - len(s)) * np.log(alpha)
    value = n / 2 * np.log(beta) + d / 2 * np.log(alpha) - n / 2 * np.log(2 * np.pi) - beta / 2 * res - alpha / 2 * mm - log_det / 2
    return value, mm, res


def maximise(s: np.ndarray, z: np.ndarray, yy, n: int, d: int, floor: float, iterations: int = 100, tol: float = 1e-5):
    """(alpha, beta) at the fixed point above, from alpha = beta = 1, for every target column of z at
    once (rows, as in `evidence`); each column stops at its own convergence, as if iterated alone."""
    sigma, z2 = s**2, z**2
    yy = np.asarray(yy, dtype=float)
    rest = np.maximum(yy - np.sum(z2, axis=-1), 0.0)
    alpha, beta = np.ones(yy.shape), np.ones(yy.shape)
    active = np.ones(yy.shape, dtype=bool)
    for _ in range(iterations):
        t = alpha / beta
        gamma = np.sum(sigma / (sigma + t[..., None]), axis=-1)
        mm, res = fit_terms(sigma, z2, rest, t)
        alpha = np.where(active, gamma / np.maximum(mm, 1e-300), alpha)
        beta = np.where(active, np.maximum(n - gamma, 1e-12) / np.maximum(np.maximum(res, floor * yy), 1e-300), beta)
        active &= ~(np.abs(alpha / beta - t) / t < tol)
        if not active.any():
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
        z, yy = targets.T @ u, np.sum(targets**2, axis=0)  # all target columns at once, one row each
        alpha, beta = maximise(s, z, yy, n, d, self.floor)
        return float(np.mean(evidence(s, z, yy, n, d, alpha, beta)[0] / n))
