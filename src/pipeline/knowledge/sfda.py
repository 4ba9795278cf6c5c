"""SFDA (Shao et al., ECCV 2022, "Not All Models Are Equal: Predicting Model Transferability in a
Self-challenging Fisher Space"): how well a regularised Fisher discriminant separates the classes,
after each row has been pushed toward the classes it is confused with.

Fisher space. With class means mu_c, priors pi_c = n_c / n and the within-class and total scatters

    S_w = sum_c pi_c cov(X_c),   S_t = cov(X),

the within scatter is shrunk toward a sphere of its own mean variance, the more the tighter the
classes (the smaller its largest eigenvalue sigma_max(S_w)),

    lambda = max(exp(-a sigma_max(S_w)), 1e-10),   S_w^lambda = (1 - lambda) S_w + lambda tr(S_w)/d I,

and the Fisher projection solves S_b w = e S_w^lambda w with S_b = S_t^lambda - S_w^lambda. The
Bayes classifier with Gaussian classes of shared covariance in that space is

    p(c | x) = softmax_c( x^T S_w^-1 mu_c - 1/2 mu_c^T S_w^-1 mu_c + log pi_c ),   S_w = S_w^lambda,

which is scikit-learn's `LinearDiscriminantAnalysis(solver="eigen", shrinkage=lambda)` exactly (its
per-class shrinkage sums to the one above since the trace is linear; no scikit-learn estimator
chooses lambda by this rule, its "auto" is Ledoit-Wolf, not the paper's). That estimator solves the
generalised eigenproblem for all d directions W (W^T S_w W = I) and takes S_w^-1 = W W^T; only the
classifier is needed here, so `discriminant` solves S_w C^T = M^T for the coefficients directly, the
same numbers (to rounding) at a fraction of the cost (tests/unit/test_knowledge_scores.py checks it
against that eigenproblem).

Self-challenge (ConfMix). The probabilities of a first fit, softened once more, q_i = softmax(p(. |
x_i)), move each row toward the mean of the other classes' means by how unsure it is of its own:

    x~_i = q_i,y_i x_i + (1 - q_i,y_i) mean_{c != y_i} mu_c,

so classes that are only just separable come closer, as hard examples would under fine-tuning. A
second fit on the x~ with the same lambda gives the score, the mean probability of the true class,

    SFDA = 1/n sum_i p~(y_i | x~_i)   in (0, 1].

As in the authors' code: the mean probability rather than its log (bounded, never -inf), the
softening softmax of probabilities, a = 5 (`rate`). Two choices are ours: sigma_max is exact (the
code takes three power iterations), and the rows are centred and scaled to unit mean squared norm
(tr S_t = 1) first; the classifier does not depend on scale but lambda does, and candidates'
activations differ in scale. The classifier is scored on the rows it was fitted on: with fewer
labelled rows than features any features classify them all and SFDA nears 1. With one row per class
S_w is zero and distinct rows always classify perfectly, so the score says nothing: not applicable."""

from __future__ import annotations

import numpy as np

from pipeline.knowledge import NotApplicable, Score, one_hot


def scatter(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(class means mu_c, priors pi_c, S_w = R^T R / n, R = the rows minus their class mean)."""
    counts = np.bincount(y)
    means = one_hot(y).T @ x / counts[:, None]  # a product, not np.add.at: several times faster
    residual = x - means[y]
    return means, counts / len(y), residual.T @ residual / len(y), residual


def discriminant(x: np.ndarray, lam: float, means: np.ndarray, priors: np.ndarray, within: np.ndarray) -> np.ndarray:
    """p(c | x_i) of the shrunk shared-covariance Gaussian classifier of x's `scatter`, for its rows."""
    d = x.shape[1]
    shrunk = (1.0 - lam) * within
    shrunk[np.diag_indices(d)] += lam * np.trace(within) / d
    coef = np.linalg.solve(shrunk, means.T).T  # M S_w^-1, as S_w is symmetric
    logits = x @ coef.T + (np.log(priors) - 0.5 * np.sum(means * coef, axis=1))
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    return p / p.sum(axis=1, keepdims=True)


def confmix(x: np.ndarray, y: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Each row mixed with the mean of the other classes' means, weighted by its softened true-class probability."""
    means = np.stack([x[y == c].mean(axis=0) for c in range(probs.shape[1])])
    others = (means.sum(axis=0) - means) / (len(means) - 1)
    soft = np.exp(probs) / np.exp(probs).sum(axis=1, keepdims=True)
    own = soft[np.arange(len(y)), y][:, None]
    return own * x + (1.0 - own) * others[y]


class SFDA(Score):
    name = "sfda"

    def __init__(self, rate: float = 5.0) -> None:
        self.rate = float(rate)

    def shrinkage(self, within: np.ndarray, residual: np.ndarray) -> float:
        """lambda = exp(-a sigma_max(S_w)), S_w = R^T R / n from `scatter`; sigma_max from the smaller of
        S_w and R R^T / n (the same nonzero eigenvalues)."""
        n, d = residual.shape
        if np.sum(residual**2) <= 1e-12 * n:  # tr S_w ~ 0 (x has tr S_t = 1)
            raise NotApplicable(
                "sfda needs labelled rows that differ within a class; with one row per class (or constant features) the within-class scatter is zero"
            )
        small = within if d <= n else residual @ residual.T / n
        return max(float(np.exp(-self.rate * np.linalg.eigvalsh(small)[-1])), 1e-10)

    def compute(self, x: np.ndarray, y: np.ndarray) -> float:
        z = x - x.mean(axis=0)
        z /= max(float(np.sqrt(np.mean(np.sum(z**2, axis=1)))), 1e-300)
        means, priors, within, residual = scatter(z, y)
        lam = self.shrinkage(within, residual)
        mixed = confmix(z, y, discriminant(z, lam, means, priors, within))
        second = discriminant(mixed, lam, *scatter(mixed, y)[:3])
        return float(np.mean(second[np.arange(len(y)), y]))
