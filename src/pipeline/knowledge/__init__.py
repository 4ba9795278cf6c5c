"""Transferability scores: estimates, before any fine-tuning, of how well a source model will serve
a target task. Each takes the frozen source model's outputs on labelled target samples."""

from __future__ import annotations

import numpy as np


def leep(source_probs: np.ndarray, labels: np.ndarray, n_classes: int) -> float:
    """LEEP (Nguyen et al., ICML 2020): the average log-likelihood of the target labels under the
    "expected empirical predictor" that maps the source's class posterior through the empirical
    conditional P(y | z) of target label y given source label z.

        P(y, z) = 1/n sum_{i: y_i = y} theta(x_i)_z,   P(y | z) = P(y, z) / P(z)
        LEEP    = 1/n sum_i log sum_z P(y_i | z) theta(x_i)_z

    Higher (closer to 0) means the source posteriors separate the target classes better. No library
    we depend on ships it, hence the dozen lines here.
    """
    probs = np.asarray(source_probs, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    joint = np.zeros((n_classes, probs.shape[1]))
    np.add.at(joint, y, probs)
    joint /= len(y)
    conditional = joint / np.clip(joint.sum(axis=0, keepdims=True), 1e-12, None)
    likelihood = (probs @ conditional.T)[np.arange(len(y)), y]
    return float(np.mean(np.log(np.clip(likelihood, 1e-12, None))))
