"""Data sources, the MNIST -> UCI mapping, splits, label budgets and the on-disk task set."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

from pipeline.data import SPLITS, TaskSet, TaskSpec, label_budget, stratified_splits
from pipeline.data.sources import infer_kind, mnist_sample, table, uci_digits
from pipeline.data.uci import mnist_to_uci, plain_resize
from pipeline.errors import PipelineError

# --------------------------------------------------------------------------------------------------
# mnist_sample


@pytest.fixture(scope="module")
def mnist_uci(cached_mnist):
    return mnist_sample(representation="uci8x8")


def test_mnist_uci8x8_shape_range_and_labels(mnist_uci, mnist_arrays):
    s = mnist_uci
    assert s.x.shape == (5000, 64) and s.x.dtype == np.float32
    assert s.input_shape == [8, 8]
    assert s.x.min() == 0.0 and s.x.max() == 1.0
    # x = block counts / 16: every value times 16 is an integer count 0..16
    counts = s.x * 16
    np.testing.assert_array_equal(counts, np.round(counts))
    assert s.task == TaskSpec("digit", "classification", [str(c) for c in range(10)])
    np.testing.assert_array_equal(s.y, mnist_arrays[1].astype(np.float32))
    np.testing.assert_array_equal(np.bincount(s.y.astype(int)), [500] * 10)
    assert s.provenance["representation"] == "uci8x8"


def test_mnist_class_subset_is_remapped(mnist_uci, mnist_arrays):
    labels = mnist_arrays[1]
    sub = mnist_sample(classes=[5, 6], representation="uci8x8")
    assert sub.x.shape == (1000, 64)
    assert sub.task.classes == ["5", "6"]
    assert set(np.unique(sub.y)) == {0.0, 1.0}
    keep = np.isin(labels, [5, 6])
    np.testing.assert_array_equal(sub.x, mnist_uci.x[keep])
    np.testing.assert_array_equal(sub.y, (labels[keep] == 6).astype(np.float32))
    # the order given defines the label values
    rev = mnist_sample(classes=[6, 5], representation="uci8x8")
    assert rev.task.classes == ["6", "5"]
    np.testing.assert_array_equal(rev.y, 1.0 - sub.y)


def test_mnist_raw_representation(cached_mnist, mnist_arrays):
    s = mnist_sample(classes=[0, 1], representation="raw")
    assert s.x.shape == (1000, 784) and s.input_shape == [28, 28]
    assert s.x.min() == 0.0 and s.x.max() == 1.0
    keep = np.isin(mnist_arrays[1], [0, 1])
    np.testing.assert_allclose(s.x, mnist_arrays[0][keep] / 255.0, rtol=1e-6)


def test_mnist_unknown_class_lists_available(cached_mnist):
    with pytest.raises(PipelineError) as err:
        mnist_sample(classes=[3, 11])
    msg = str(err.value)
    assert "[11]" in msg and "mnist_sample" in msg
    assert "available: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]" in msg


def test_mnist_bad_representation_named(cached_mnist):
    with pytest.raises(PipelineError, match=r"representation.*'uci16x16'"):
        mnist_sample(representation="uci16x16")


# --------------------------------------------------------------------------------------------------
# MNIST -> UCI mapping


def test_uci_mapping_is_closer_to_real_uci_digits_than_plain_resize(mnist_arrays, mnist_uci):
    from sklearn.datasets import load_digits

    images, labels = mnist_arrays
    digits = load_digits()
    real = digits.data / 16.0
    normalised = mnist_uci.x  # mnist_to_uci(images) / 16, as the pipeline feeds it
    naive = plain_resize(images) / 16.0

    # mean intensity (measured: real 0.305, normalised 0.262, plain resize 0.130)
    gap_norm = abs(normalised.mean() - real.mean())
    gap_naive = abs(naive.mean() - real.mean())
    assert gap_norm < 0.5 * gap_naive

    # distance between the mean images (measured: 0.133 vs 0.175 mean absolute per-pixel difference)
    d_norm = np.abs(normalised.mean(0) - real.mean(0)).mean()
    d_naive = np.abs(naive.mean(0) - real.mean(0)).mean()
    assert d_norm < d_naive

    # per class: every digit's mean image is closer to UCI's mean image of that digit
    for c in range(10):
        uci_c = real[digits.target == c].mean(0)
        assert np.linalg.norm(normalised[labels == c].mean(0) - uci_c) < np.linalg.norm(naive[labels == c].mean(0) - uci_c), c


def _image(rows: slice, cols: slice, value: float = 255.0) -> np.ndarray:
    g = np.zeros((28, 28), dtype=np.float32)
    g[rows, cols] = value
    return g.reshape(1, 784)


def test_uci_mapping_tall_rectangle_fills_height_and_is_centred():
    # 20 tall x 8 wide -> scaled by 32/20 to 32 x 13 px, placed at columns 9..21 of the 32x32 canvas.
    # Column blocks of 4 px: block 2 holds cols 9-11 (3), blocks 3 and 4 full (4), block 5 cols 20-21 (2);
    # every block row is 4 px tall, so counts 12, 16, 16, 8 in every row of the 8x8 grid.
    out = mnist_to_uci(_image(slice(4, 24), slice(10, 18))).reshape(8, 8)
    expected_row = np.array([0, 0, 12, 16, 16, 8, 0, 0], dtype=np.float32)
    np.testing.assert_array_equal(out, np.tile(expected_row, (8, 1)))
    assert out.sum() == 32 * 13


def test_uci_mapping_wide_rectangle_fills_width_and_is_centred():
    # 4 tall x 24 wide -> 5 x 32 px at rows 13..17: block row 3 has rows 13-15 (3), block row 4 rows 16-17 (2).
    out = mnist_to_uci(_image(slice(10, 14), slice(2, 26))).reshape(8, 8)
    expected = np.zeros((8, 8), dtype=np.float32)
    expected[3], expected[4] = 12, 8
    np.testing.assert_array_equal(out, expected)


def test_uci_mapping_position_invariant_and_edge_cases():
    # the same glyph anywhere in the 28x28 field maps to the same counts (crop to bounding box)
    a = mnist_to_uci(_image(slice(0, 10), slice(0, 6)))
    b = mnist_to_uci(_image(slice(15, 25), slice(20, 26)))
    np.testing.assert_array_equal(a, b)
    full = mnist_to_uci(_image(slice(0, 28), slice(0, 28)))
    np.testing.assert_array_equal(full, np.full((1, 64), 16.0))
    # faint strokes below the ink threshold are no ink at all
    faint = mnist_to_uci(_image(slice(5, 20), slice(5, 20), value=100.0))
    np.testing.assert_array_equal(faint, np.zeros((1, 64)))
    out = mnist_to_uci(np.concatenate([_image(slice(3, 9), slice(3, 25)), _image(slice(2, 27), slice(13, 15))]))
    assert out.shape == (2, 64) and out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 16


# --------------------------------------------------------------------------------------------------
# uci_digits


def test_uci_digits():
    s = uci_digits()
    assert s.x.shape == (1797, 64) and s.x.dtype == np.float32
    assert s.x.min() == 0.0 and s.x.max() == 1.0
    assert s.input_shape == [8, 8]
    assert s.task.classes == [str(c) for c in range(10)] and s.task.n_outputs == 10
    sub = uci_digits(classes=[9, 0])
    assert sub.task.classes == ["9", "0"]
    assert len(sub.x) == int(np.isin(s.y, [0, 9]).sum())
    with pytest.raises(PipelineError, match=r"uci_digits: classes \[10\] do not exist"):
        uci_digits(classes=[10])


# --------------------------------------------------------------------------------------------------
# table()


@pytest.fixture(scope="module")
def wine() -> pd.DataFrame:
    from sklearn.datasets import load_wine

    return load_wine(as_frame=True).frame


@pytest.fixture(scope="module")
def diabetes() -> pd.DataFrame:
    from sklearn.datasets import load_diabetes

    return load_diabetes(as_frame=True, scaled=False).frame


def _write(df: pd.DataFrame, path):
    if path.suffix == ".csv":
        df.to_csv(path, index=False)
    else:
        df.to_parquet(path, index=False)
    return path


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_table_classification_inferred_for_integer_labels(tmp_path, wine, suffix):
    path = _write(wine, tmp_path / f"wine{suffix}")
    s = table(str(path), target="target")
    feats = [c for c in wine.columns if c != "target"]
    assert s.task == TaskSpec("target", "classification", ["0", "1", "2"])
    assert s.feature_names == feats and s.input_shape == [13]
    assert s.x.shape == (178, 13) and s.x.dtype == np.float32
    np.testing.assert_allclose(s.x, wine[feats].to_numpy(np.float32))
    np.testing.assert_array_equal(s.y, wine["target"].to_numpy(np.float32))
    assert s.provenance["file"] == str(path) and len(s.provenance["file_sha256"]) == 16


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_table_regression_inferred_for_float_target(tmp_path, diabetes, suffix):
    path = _write(diabetes, tmp_path / f"diabetes{suffix}")
    s = table(str(path), target="target")
    assert s.task.kind == "regression" and s.task.n_outputs == 1
    assert s.x.shape == (442, 10)
    np.testing.assert_allclose(s.y, diabetes["target"].to_numpy(np.float32))


def test_table_classes_fix_label_order(tmp_path, wine):
    path = _write(wine, tmp_path / "wine.csv")
    s = table(str(path), target="target", classes=["2", "1", "0"])
    assert s.task.classes == ["2", "1", "0"]
    np.testing.assert_array_equal(s.y, 2 - wine["target"].to_numpy(np.float32))
    # string labels: sorted by default
    named = wine.assign(target=wine["target"].map({0: "cv_a", 1: "cv_b", 2: "cv_c"}))
    s2 = table(str(_write(named, tmp_path / "named.parquet")), target="target")
    assert s2.task.classes == ["cv_a", "cv_b", "cv_c"]
    np.testing.assert_array_equal(s2.y, wine["target"].to_numpy(np.float32))


def test_table_label_outside_declared_classes(tmp_path, wine):
    path = _write(wine, tmp_path / "wine.csv")
    with pytest.raises(PipelineError) as err:
        table(str(path), target="target", classes=["0", "1"])
    msg = str(err.value)
    assert str(path) in msg and "'target'" in msg and "['2']" in msg


def test_infer_kind():
    assert infer_kind(pd.Series([0, 1, 2, 1])) == "classification"
    assert infer_kind(pd.Series(["a", "b"])) == "classification"
    assert infer_kind(pd.Series([True, False])) == "classification"
    assert infer_kind(pd.Series([0.5, 1.5])) == "regression"
    assert infer_kind(pd.Series(range(50))) == "regression"  # more than 20 distinct integers


def test_table_missing_file(tmp_path):
    path = tmp_path / "absent.csv"
    with pytest.raises(PipelineError, match=re.escape(f"{path}: file not found")):
        table(str(path), target="y")


def test_table_label_column_absent_lists_columns(tmp_path, wine):
    path = _write(wine, tmp_path / "wine.csv")
    with pytest.raises(PipelineError) as err:
        table(str(path), target="cultivar")
    msg = str(err.value)
    assert str(path) in msg and "'cultivar'" in msg
    assert "'alcohol'" in msg and "'target'" in msg  # the columns that do exist


def test_table_feature_column_absent(tmp_path, wine):
    path = _write(wine, tmp_path / "wine.csv")
    with pytest.raises(PipelineError, match=r"feature columns \['acidity'\] not found"):
        table(str(path), target="target", features=["alcohol", "acidity"])


def test_table_non_numeric_feature_named(tmp_path, wine):
    bad = wine.astype({"magnesium": object})
    bad.loc[5, "magnesium"] = "low"
    path = _write(bad, tmp_path / "wine.csv")
    with pytest.raises(PipelineError) as err:
        table(str(path), target="target")
    msg = str(err.value)
    assert str(path) in msg and "'magnesium'" in msg and "not numeric" in msg
    assert "row 5" in msg and "'low'" in msg


def test_table_nan_feature_names_column_and_rows(tmp_path, wine):
    bad = wine.copy()
    bad.loc[[3, 7], "proline"] = np.nan
    path = _write(bad, tmp_path / "wine.parquet")
    with pytest.raises(PipelineError) as err:
        table(str(path), target="target")
    msg = str(err.value)
    assert str(path) in msg and "'proline'" in msg
    assert "2 missing" in msg and "[3, 7]" in msg


def test_table_unsupported_suffix(tmp_path, wine):
    path = tmp_path / "wine.json"
    wine.to_json(path)
    with pytest.raises(PipelineError) as err:
        table(str(path), target="target")
    assert str(path) in str(err.value) and "'.json'" in str(err.value)


def test_table_unreadable_parquet_names_file(tmp_path):
    path = tmp_path / "broken.parquet"
    path.write_text("not a parquet file\n")
    with pytest.raises(PipelineError, match=re.escape(f"{path}: cannot be read as parquet")):
        table(str(path), target="y")


# --------------------------------------------------------------------------------------------------
# stratified_splits


@pytest.fixture(scope="module")
def digits_y() -> np.ndarray:
    from sklearn.datasets import load_digits

    return load_digits().target.astype(np.float32)


def test_stratified_splits_partition_and_stratify(digits_y):
    s = stratified_splits(digits_y, "classification", val=0.25, test=0.3, seed=0)
    assert set(s) == set(SPLITS)
    parts = [set(s[k].tolist()) for k in SPLITS]
    assert sum(len(p) for p in parts) == len(digits_y)
    assert set().union(*parts) == set(range(len(digits_y)))
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert len(s["test"]) == pytest.approx(0.3 * len(digits_y), abs=1)
    assert len(s["val"]) == pytest.approx(0.25 * len(digits_y), abs=1)
    for k in SPLITS:
        assert set(np.unique(digits_y[s[k]])) == set(range(10)), k
        assert np.all(np.diff(s[k]) > 0)  # sorted


def test_stratified_splits_deterministic_per_seed(digits_y):
    a = stratified_splits(digits_y, "classification", 0.25, 0.3, seed=3)
    b = stratified_splits(digits_y, "classification", 0.25, 0.3, seed=3)
    c = stratified_splits(digits_y, "classification", 0.25, 0.3, seed=4)
    for k in SPLITS:
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a["test"], c["test"])


def test_stratified_splits_regression_and_error():
    y = np.linspace(0, 1, 100, dtype=np.float32)
    s = stratified_splits(y, "regression", 0.2, 0.2, seed=0)
    assert sorted(np.concatenate([s[k] for k in SPLITS]).tolist()) == list(range(100))
    with pytest.raises(PipelineError, match=r"cannot split 4 samples into val=0.25, test=0.3"):
        stratified_splits(np.array([0, 0, 0, 1], dtype=np.float32), "classification", 0.25, 0.3, seed=0)


# --------------------------------------------------------------------------------------------------
# label_budget


@pytest.fixture(scope="module")
def pool(digits_y) -> np.ndarray:
    return stratified_splits(digits_y, "classification", 0.25, 0.3, seed=0)["train"]


@pytest.mark.parametrize("k", [1, 3, 10])
def test_label_budget_k_per_class_from_pool(digits_y, pool, k):
    idx = label_budget(digits_y, pool, "classification", k, seed=0)
    assert len(idx) == 10 * k and len(set(idx.tolist())) == len(idx)
    assert set(idx.tolist()) <= set(pool.tolist())
    np.testing.assert_array_equal(np.bincount(digits_y[idx].astype(int), minlength=10), [k] * 10)


def test_label_budget_nested_across_k_and_seed_dependent(digits_y, pool):
    for seed in (0, 1, 2):
        s1, s3, s10 = (set(label_budget(digits_y, pool, "classification", k, seed).tolist()) for k in (1, 3, 10))
        assert s1 < s3 < s10, seed
    a = label_budget(digits_y, pool, "classification", 10, seed=0)
    np.testing.assert_array_equal(a, label_budget(digits_y, pool, "classification", 10, seed=0))
    assert not np.array_equal(a, label_budget(digits_y, pool, "classification", 10, seed=1))


def test_label_budget_skips_unlabelled_rows(digits_y, pool):
    y = digits_y.copy()
    unlabelled = pool[::2]
    y[unlabelled] = np.nan
    idx = label_budget(y, pool, "classification", 5, seed=0)
    assert not set(idx.tolist()) & set(unlabelled.tolist())
    assert len(idx) == 50


def test_label_budget_regression_gives_k_rows():
    y = np.linspace(-1, 1, 60, dtype=np.float32)
    pool = np.arange(0, 60, 2)
    idx = label_budget(y, pool, "regression", 7, seed=0)
    assert len(idx) == 7 and len(set(idx.tolist())) == 7 and set(idx.tolist()) <= set(pool.tolist())
    assert set(idx.tolist()) < set(label_budget(y, pool, "regression", 12, seed=0).tolist())
    with pytest.raises(PipelineError, match=r"label budget 31 rows exceeds the 30 labelled rows of the train split"):
        label_budget(y, pool, "regression", 31, seed=0)


def test_label_budget_class_with_fewer_than_k(digits_y, pool):
    y = digits_y.copy()
    threes = pool[y[pool] == 3]
    y[threes[2:]] = np.nan  # class 3 keeps 2 labelled rows in the pool
    with pytest.raises(PipelineError) as err:
        label_budget(y, pool, "classification", 3, seed=0, where="val split")
    msg = str(err.value)
    assert "class 3 has 2 labelled examples" in msg and "k=3" in msg and "val split" in msg
    assert len(label_budget(y, pool, "classification", 2, seed=0)) == 20


# --------------------------------------------------------------------------------------------------
# TaskSpec / TaskSet


def test_taskspec_kind_validated_and_outputs():
    with pytest.raises(PipelineError, match=r"task 'grade'.*'ordinal'"):
        TaskSpec("grade", "ordinal")
    assert TaskSpec("d", "classification", ["a", "b", "c"]).n_outputs == 3
    assert TaskSpec("r", "regression").n_outputs == 1


@pytest.fixture()
def taskset(digits_y) -> TaskSet:
    s = uci_digits()
    return TaskSet(
        x=s.x,
        y=s.y[:, None],
        tasks=[s.task],
        splits=stratified_splits(s.y, "classification", 0.25, 0.3, seed=0),
        input_shape=s.input_shape,
        provenance={"adapter": "uci_digits"},
    )


def test_taskset_round_trip(tmp_path, taskset):
    taskset.save(tmp_path / "ts")
    meta = json.loads((tmp_path / "ts" / "meta.json").read_text())
    assert meta["n_samples"] == 1797
    assert meta["split_sizes"] == {k: len(taskset.splits[k]) for k in SPLITS}
    loaded = TaskSet.load(tmp_path / "ts")
    np.testing.assert_array_equal(loaded.x, taskset.x)
    np.testing.assert_array_equal(loaded.y, taskset.y)
    assert loaded.x.dtype == taskset.x.dtype and loaded.y.dtype == taskset.y.dtype
    for k in SPLITS:
        np.testing.assert_array_equal(loaded.splits[k], taskset.splits[k])
    assert loaded.tasks == taskset.tasks
    assert loaded.input_shape == [8, 8]
    assert loaded.provenance["adapter"] == "uci_digits"
    # the hash is a function of the data, stable across save/load
    h = taskset.content_hash()
    assert loaded.content_hash() == h == loaded.provenance["content_hash"] == loaded.data_hash


def test_taskset_hash_changes_with_data(taskset):
    h = taskset.content_hash()
    assert taskset.content_hash() == h
    x = taskset.x.copy()
    x[0, 0] += 1.0 / 16
    assert TaskSet(x, taskset.y, taskset.tasks, taskset.splits, taskset.input_shape).content_hash() != h
    y = taskset.y.copy()
    y[5, 0] = np.nan
    assert TaskSet(taskset.x, y, taskset.tasks, taskset.splits, taskset.input_shape).content_hash() != h
    splits = {**taskset.splits, "train": taskset.splits["train"][1:], "val": np.sort(np.r_[taskset.splits["val"], taskset.splits["train"][0]])}
    assert TaskSet(taskset.x, taskset.y, taskset.tasks, splits, taskset.input_shape).content_hash() != h


def test_taskset_load_missing_dir_names_path(tmp_path):
    missing = tmp_path / "artifacts" / "target"
    with pytest.raises(PipelineError, match=re.escape(str(missing))):
        TaskSet.load(missing)
