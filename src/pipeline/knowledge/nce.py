"""NCE (Tran et al., ICCV 2019): the negative conditional entropy of the target labels given the
source model's hard labels z = argmax theta(x),

    NCE = -H(Y | Z) = sum_{y,z} P(y, z) log P(y | z),

with P the empirical joint distribution over the labelled rows. 0 when the source's label determines
the target's; more negative the less it tells. scikit-learn's mutual information would give
H(Y) - H(Y|Z), which also moves with the target's class balance; the entropy itself is three lines."""

from __future__ import annotations

import numpy as np

from pipeline.knowledge import Score


class NCE(Score):
    name = "nce"
    inputs = "probs"

    def compute(self, x: np.ndarray, y: np.ndarray) -> float:
        z = x.argmax(axis=1)
        joint = np.zeros((int(y.max()) + 1, x.shape[1]))
        np.add.at(joint, (y, z), 1.0)
        joint /= len(y)
        p_z = joint.sum(axis=0, keepdims=True)
        seen = joint > 0
        return float(np.sum(joint[seen] * np.log((joint / np.where(p_z > 0, p_z, 1.0))[seen])))
