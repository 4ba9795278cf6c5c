"""MNIST into the UCI optical-digits representation, the way the UCI set was made.

UCI's digits were size-normalised: each glyph cropped to its bounding box and scaled so its longer
side fills a 32x32 bitmap, centred, binarised; then the on pixels counted in non-overlapping 4x4
blocks, giving an 8x8 grid of counts 0..16. A plain 28->8 resize keeps MNIST's margins and thin
strokes and yields a different input distribution, so we redo the normalisation per glyph.
"""

from __future__ import annotations

import numpy as np


def mnist_to_uci(images: np.ndarray, ink_threshold: float = 0.5) -> np.ndarray:
    """`images`: [N, 784] grey levels 0..255. Returns float32 [N, 64] with values 0..16."""
    from PIL import Image

    grids = np.asarray(images, dtype=np.float32).reshape(-1, 28, 28)
    out = np.zeros((len(grids), 64), dtype=np.float32)
    cut = ink_threshold * 255.0
    for i, g in enumerate(grids):
        rows, cols = np.nonzero(g > cut)
        if len(rows) == 0:
            continue
        crop = g[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        h, w = crop.shape
        scale = 32.0 / max(h, w)
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        img = Image.fromarray(crop.astype(np.uint8)).resize((nw, nh), Image.Resampling.BILINEAR)
        canvas = np.zeros((32, 32), dtype=np.float32)
        top, left = (32 - nh) // 2, (32 - nw) // 2
        canvas[top : top + nh, left : left + nw] = np.asarray(img, dtype=np.float32)
        on = canvas > cut
        out[i] = on.reshape(8, 4, 8, 4).sum(axis=(1, 3)).reshape(64)
    return out


def plain_resize(images: np.ndarray) -> np.ndarray:
    """The naive mapping (28x28 -> 8x8 average, rescaled to 0..16), kept to show the domain gap."""
    from PIL import Image

    grids = np.asarray(images, dtype=np.float32).reshape(-1, 28, 28)
    out = np.stack([np.asarray(Image.fromarray(g.astype(np.uint8)).resize((8, 8), Image.Resampling.BOX), dtype=np.float32) for g in grids])
    return (out.reshape(len(grids), 64) / 255.0 * 16.0).astype(np.float32)
