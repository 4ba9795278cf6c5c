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
per-class shrinkage sums to the one above since the trace is linear); only lambda is written here,
as no scikit-learn estimator chooses it by this rule (its "auto" is Ledoit-Wolf, not the paper's).

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

from pipeline.knowledge import NotApplicable, Score
from pipeline.knowledge.hscore import class_means


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

    def shrinkage(self, x: np.ndarray, y: np.ndarray) -> float:
        """lambda = exp(-a sigma_max(S_w)): S_w = R^T R / n with R the rows minus their class mean."""
        residual = x - class_means(x, y)
        if np.sum(residual**2) <= 1e-12 * len(y):  # tr S_w ~ 0 (x has tr S_t = 1)
            raise NotApplicable(
                "sfda needs labelled rows that differ within a class; with one row per class (or constant features) the within-class scatter is zero"
            )
        return max(float(np.exp(-self.rate * np.linalg.norm(residual, 2) ** 2 / len(y))), 1e-10)

    def compute(self, x: np.ndarray, y: np.ndarray) -> float:
        import warnings

        from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

        z = x - x.mean(axis=0)
        z /= max(float(np.sqrt(np.mean(np.sum(z**2, axis=1)))), 1e-300)
        lam = self.shrinkage(z, y)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Only one sample available", UserWarning)  # a class of one row: zero scatter, as meant
            first = LinearDiscriminantAnalysis(solver="eigen", shrinkage=lam).fit(z, y).predict_proba(z)
            mixed = confmix(z, y, first)
            second = LinearDiscriminantAnalysis(solver="eigen", shrinkage=lam).fit(mixed, y).predict_proba(mixed)
        return float(np.mean(second[np.arange(len(y)), y]))
