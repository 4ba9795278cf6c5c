"""LEEP (Nguyen et al., ICML 2020): the average log-likelihood of the target labels under the
"expected empirical predictor", which maps the source's class posterior theta(x) through the
empirical conditional of target label y given source label z:

    P(y, z) = 1/n sum_{i: y_i = y} theta(x_i)_z,   P(y | z) = P(y, z) / P(z)
    LEEP    = 1/n sum_i log sum_z P(y_i | z) theta(x_i)_z

Higher (nearer 0) means the source posteriors separate the target classes better. No library we
depend on ships it, hence the lines here."""

from __future__ import annotations

import numpy as np

from pipeline.knowledge import Score


def expected_empirical_predictor(probs: np.ndarray, y: np.ndarray, n_classes: int) -> float:
    joint = np.zeros((n_classes, probs.shape[1]))
    np.add.at(joint, y, probs)
    joint /= len(y)
    conditional = joint / np.clip(joint.sum(axis=0, keepdims=True), 1e-12, None)
    likelihood = (probs @ conditional.T)[np.arange(len(y)), y]
    return float(np.mean(np.log(np.clip(likelihood, 1e-12, None))))


class LEEP(Score):
    name = "leep"
    inputs = "probs"

    def compute(self, x: np.ndarray, y: np.ndarray) -> float:
        return expected_empirical_predictor(x, y, int(y.max()) + 1)
