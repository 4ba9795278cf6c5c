"""A user's CSV or Parquet table: `table` (one target column, e.g. a transfer source or target) and
`multi_table` (several tasks, wide or long). Every check names the file and the column at fault."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline.data import Source, TaskSpec
from pipeline.errors import PipelineError


def read_table(path: Path):
    import pandas as pd

    if not path.exists():
        raise PipelineError(f"{path}: file not found")
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".txt", ".parquet", ".pq"):
        raise PipelineError(f"{path}: unsupported file type {suffix!r}; use .csv or .parquet")
    try:
        if suffix in (".csv", ".txt"):
            df = pd.read_csv(path)
        else:
            df = pd.read_parquet(path)
    except Exception as exc:  # pandas/pyarrow raise many types; the user needs the file name
        raise PipelineError(f"{path}: cannot be read as {suffix[1:]}: {exc}") from None
    if suffix in (".csv", ".txt"):
        import csv

        # pandas renames a repeated column `a` to `a.1` without a word: the header as written says it.
        with open(path, newline="", encoding="utf-8") as fh:
            names = next(csv.reader(fh), [])
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise PipelineError(f"{path}: column names {repeated} appear more than once in the header")
    if len(df) == 0:
        raise PipelineError(f"{path}: has columns {list(df.columns)[:8]} but no rows")
    return df


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
    """Every value of `columns` present and, where numeric, finite: a NaN or an infinity in a feature
    would turn every loss it touches into NaN."""
    import pandas as pd

    for c in columns:
        n_nan = int(df[c].isna().sum())
        if n_nan:
            rows = df.index[df[c].isna()][:5].tolist()
            raise PipelineError(f"{p}: column {c!r} has {n_nan} missing (NaN) values, first at rows {rows}")
        if pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c]):
            infinite = np.isinf(df[c].to_numpy(dtype=float))
            if infinite.any():
                raise PipelineError(f"{p}: column {c!r} has {int(infinite.sum())} infinite values, first at rows {df.index[infinite][:5].tolist()}")


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


def _as_written(values):
    """A NaN makes pandas store an integer column as float; give such a column back its integers."""
    known = values.dropna()
    if values.isna().any() and known.dtype.kind == "f" and len(known) and (known == known.round()).all():
        return values.astype("Int64")
    return values


def _check_task(task: str, p: Path) -> None:
    if task not in ("auto", "classification", "regression"):
        raise PipelineError(f"{p}: task must be auto, classification or regression, got {task!r}")


def _task_column(values, task: str, p: Path, classes: Sequence[str] | None = None) -> tuple[np.ndarray, TaskSpec]:
    """One label column as one task named after it: class indices or values, NaN = unlabelled."""
    values = _as_written(values)
    kind = infer_kind(values.dropna()) if task == "auto" else task
    if kind == "classification":
        y, names = encode_classes(values, p, classes)
        return y, TaskSpec(str(values.name), kind, names)
    return regression_values(values, p), TaskSpec(str(values.name), kind)


def _source(
    df, p: Path, feats: list[str], columns: list[np.ndarray], tasks: list[TaskSpec], standardize: bool, label_columns: list[str], **provenance
) -> Source:
    return Source(
        x=df[feats].to_numpy(dtype=np.float32),
        y=np.stack(columns, axis=1),
        tasks=tasks,
        input_shape=[len(feats)],
        provenance={**provenance, "file": str(p), "file_sha256": hashlib.sha256(p.read_bytes()).hexdigest()[:16]},
        feature_names=feats,
        standardize=standardize,
        target_of_task=label_columns,
    )


def multi_table(
    path: str,
    targets: Sequence[str] | None = None,
    task_column: str | None = None,
    target: str | None = None,
    task: str = "auto",
    features: Sequence[str] | None = None,
    standardize: bool = True,
) -> Source:
    """A user's CSV or Parquet file with several tasks, in one of two layouts.

    wide: `targets=[...]`, one task per target column; NaN in a target = unlabelled for that task.
    long: `task_column` and `target`, one task per distinct value of task_column, named by it; each
    row is labelled for its own task only. The tasks share the target column, so a regression
    target is standardised once over all tasks (their offset and scale are the same).
    task: `classification`, `regression` or `auto` (strings and small-integer targets are classes),
    for every task. features: the numeric feature columns, default every other column; a feature
    may have no missing values.
    """
    p = Path(path)
    _check_task(task, p)
    df = read_table(p)
    cols = list(df.columns)
    if (targets is None) == (task_column is None):
        raise PipelineError(
            f"{p}: give either targets (one column per task) or task_column with target (one row per labelled sample), not both or neither"
        )
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
            y, spec = _task_column(df[c], task, p)
            specs.append(spec)
            columns.append(y)
    else:
        check_no_nan(df, [task_column], p)
        values = _as_written(df[target])
        kind = infer_kind(values.dropna()) if task == "auto" else task
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
    # Long format: one label column for every task, standardised once (build.standardize_targets).
    shared = [str(c) for c in targets] if targets is not None else [str(target)] * len(specs)
    return _source(df, p, feats, columns, specs, standardize, shared, adapter="multi_table", **layout)


def table(
    path: str,
    target: str,
    task: str = "auto",
    features: Sequence[str] | None = None,
    classes: Sequence[str] | None = None,
    standardize: bool = True,
) -> Source:
    """A user's CSV or Parquet file: numeric feature columns and one target column, one task named
    after it (e.g. a transfer source or target); every row labelled.

    task: `classification`, `regression` or `auto` (strings and small-integer targets are classes).
    features: the feature columns, default every column but the target.
    classes: the class names in label order; default the sorted distinct target values. Give it for
    a source and target that must share one label space.
    """
    p = Path(path)
    _check_task(task, p)
    df = read_table(p)
    if target not in df.columns:
        raise PipelineError(f"{p}: label column {target!r} not found; columns are {list(df.columns)}")
    feats = feature_columns(df, p, features, exclude=[target], what=f"the label column {target!r}")
    check_no_nan(df, [*feats, target], p)
    y, spec = _task_column(df[target], task, p, classes)
    return _source(df, p, feats, [y], [spec], standardize, [target], adapter="table")
