"""Data sources, the MNIST -> UCI mapping, splits, the one build path, label budgets and the on-disk task set."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from pipeline.data import SPLITS, TaskSet, TaskSpec, label_budget
from pipeline.data.build import build_taskset
from pipeline.data.digits import mnist_sample, uci_digits
from pipeline.data.splits import random_splits
from pipeline.data.tables import infer_kind, table
from pipeline.data.uci import mnist_to_uci, plain_resize
from pipeline.errors import PipelineError

DIGIT_TASK = TaskSpec("digit", "classification", [str(c) for c in range(10)])

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
    assert s.tasks == [DIGIT_TASK] and s.y.shape == (5000, 1)
    np.testing.assert_array_equal(s.y[:, 0], mnist_arrays[1].astype(np.float32))
    np.testing.assert_array_equal(np.bincount(s.y[:, 0].astype(int)), [500] * 10)
    assert s.provenance["representation"] == "uci8x8"


def test_mnist_class_subset_is_remapped(mnist_uci, mnist_arrays):
    labels = mnist_arrays[1]
    sub = mnist_sample(classes=[5, 6], representation="uci8x8")
    assert sub.x.shape == (1000, 64)
    assert sub.tasks[0].classes == ["5", "6"]
    assert set(np.unique(sub.y)) == {0.0, 1.0}
    keep = np.isin(labels, [5, 6])
    np.testing.assert_array_equal(sub.x, mnist_uci.x[keep])
    np.testing.assert_array_equal(sub.y[:, 0], (labels[keep] == 6).astype(np.float32))
    # the order given defines the label values
    rev = mnist_sample(classes=[6, 5], representation="uci8x8")
    assert rev.tasks[0].classes == ["6", "5"]
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
    assert s.tasks == [DIGIT_TASK] and s.tasks[0].n_outputs == 10 and s.y.shape == (1797, 1)
    sub = uci_digits(classes=[9, 0])
    assert sub.tasks[0].classes == ["9", "0"]
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
    assert s.tasks == [TaskSpec("target", "classification", ["0", "1", "2"])]
    assert s.feature_names == feats and s.input_shape == [13]
    assert s.x.shape == (178, 13) and s.x.dtype == np.float32
    np.testing.assert_allclose(s.x, wine[feats].to_numpy(np.float32))
    np.testing.assert_array_equal(s.y[:, 0], wine["target"].to_numpy(np.float32))
    assert s.provenance["file"] == str(path) and len(s.provenance["file_sha256"]) == 16


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_table_regression_inferred_for_float_target(tmp_path, diabetes, suffix):
    path = _write(diabetes, tmp_path / f"diabetes{suffix}")
    s = table(str(path), target="target")
    assert [t.kind for t in s.tasks] == ["regression"] and s.tasks[0].n_outputs == 1
    assert s.x.shape == (442, 10)
    np.testing.assert_allclose(s.y[:, 0], diabetes["target"].to_numpy(np.float32))


def test_table_classes_fix_label_order(tmp_path, wine):
    path = _write(wine, tmp_path / "wine.csv")
    s = table(str(path), target="target", classes=["2", "1", "0"])
    assert s.tasks[0].classes == ["2", "1", "0"]
    np.testing.assert_array_equal(s.y[:, 0], 2 - wine["target"].to_numpy(np.float32))
    # string labels: sorted by default
    named = wine.assign(target=wine["target"].map({0: "cv_a", 1: "cv_b", 2: "cv_c"}))
    s2 = table(str(_write(named, tmp_path / "named.parquet")), target="target")
    assert s2.tasks[0].classes == ["cv_a", "cv_b", "cv_c"]
    np.testing.assert_array_equal(s2.y[:, 0], wine["target"].to_numpy(np.float32))


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
# random_splits (the one split function) for one classification task


@pytest.fixture(scope="module")
def digits_y() -> np.ndarray:
    from sklearn.datasets import load_digits

    return load_digits().target.astype(np.float32)


def _class_splits(y: np.ndarray, seed: int = 0, val: float = 0.25, test: float = 0.3) -> dict[str, np.ndarray]:
    splits, how = random_splits(y[:, None], [DIGIT_TASK], val, test, seed)
    assert how == "class"
    return splits


def test_random_splits_partition_and_stratify_by_class(digits_y):
    s = _class_splits(digits_y)
    assert set(s) == set(SPLITS)
    parts = [set(s[k].tolist()) for k in SPLITS]
    assert sum(len(p) for p in parts) == len(digits_y)
    assert set().union(*parts) == set(range(len(digits_y)))
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    # each class of n rows gives round(0.3 n) to test and round(0.25 n) to val
    for c in range(10):
        n = int((digits_y == c).sum())
        assert (digits_y[s["test"]] == c).sum() == int(np.floor(0.3 * n + 0.5)), c
        assert (digits_y[s["val"]] == c).sum() == int(np.floor(0.25 * n + 0.5)), c
    assert len(s["test"]) == pytest.approx(0.3 * len(digits_y), abs=5)  # at most half a row per class off
    for k in SPLITS:
        assert set(np.unique(digits_y[s[k]])) == set(range(10)), k
        assert np.all(np.diff(s[k]) > 0)  # sorted


def test_random_splits_deterministic_per_seed(digits_y):
    a, b, c = _class_splits(digits_y, seed=3), _class_splits(digits_y, seed=3), _class_splits(digits_y, seed=4)
    for k in SPLITS:
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a["test"], c["test"])


def test_random_splits_regression_and_error():
    y = np.linspace(0, 1, 100, dtype=np.float32)[:, None]
    s, how = random_splits(y, [TaskSpec("r", "regression")], 0.2, 0.2, seed=0)
    assert how == "none" and {k: len(s[k]) for k in SPLITS} == {"train": 60, "val": 20, "test": 20}
    assert sorted(np.concatenate([s[k] for k in SPLITS]).tolist()) == list(range(100))
    with pytest.raises(PipelineError, match=r"val=0.25 and test=0.0 must be positive"):
        random_splits(y, [TaskSpec("r", "regression")], 0.25, 0.0, seed=0)


# --------------------------------------------------------------------------------------------------
# label_budget


@pytest.fixture(scope="module")
def pool(digits_y) -> np.ndarray:
    return _class_splits(digits_y)["train"]


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
        y=s.y,
        tasks=s.tasks,
        splits=_class_splits(s.y[:, 0]),
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


# --------------------------------------------------------------------------------------------------
# build_taskset: one path for a transfer source or target and a multitask set

SPLIT = OmegaConf.create({"val": 0.25, "test": 0.3, "seed": 0})


def _built(adapter: str, **kw) -> TaskSet:
    return build_taskset(OmegaConf.create({"_target_": f"pipeline.data.tables.{adapter}", **kw}), SPLIT, "target")


@pytest.mark.parametrize("frame, kind, how", [("wine", "classification", "class"), ("diabetes", "regression", "none")])
def test_one_task_table_same_taskset_via_table_and_multi_table(tmp_path, request, frame, kind, how):
    path = str(_write(request.getfixturevalue(frame), tmp_path / f"{frame}.csv"))
    one = _built("table", path=path, target="target")
    multi = _built("multi_table", path=path, targets=["target"])
    assert one.tasks == multi.tasks and [t.kind for t in one.tasks] == [kind]
    np.testing.assert_array_equal(one.x, multi.x)
    np.testing.assert_array_equal(one.y, multi.y)
    for k in SPLITS:
        np.testing.assert_array_equal(one.splits[k], multi.splits[k])
    assert one.content_hash() == multi.content_hash()
    assert one.provenance["split_stratified_by"] == multi.provenance["split_stratified_by"] == how
    assert (one.provenance["adapter"], multi.provenance["adapter"]) == ("table", "multi_table")


def test_standardisation_uses_train_split_statistics_only(tmp_path, diabetes):
    path = _write(diabetes, tmp_path / "diabetes.csv")
    ts = _built("table", path=str(path), target="target")
    train = ts.splits["train"]
    raw_x, raw_y = diabetes.drop(columns="target").to_numpy(np.float32), diabetes["target"].to_numpy(np.float32)
    task = ts.tasks[0]
    assert task.offset == pytest.approx(raw_y[train].mean(), rel=1e-6) and task.scale == pytest.approx(raw_y[train].std(), rel=1e-6)
    np.testing.assert_allclose(ts.y[:, 0] * task.scale + task.offset, raw_y, rtol=1e-5)
    np.testing.assert_allclose(ts.x[train].mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(ts.x[train].std(0), 1, atol=1e-4)
    np.testing.assert_allclose(ts.x, (raw_x - raw_x[train].mean(0)) / raw_x[train].std(0), atol=1e-4)
    # Changing every val and test row (features and targets) leaves the train rows and the statistics as they were.
    held_out = np.setdiff1d(np.arange(len(diabetes)), train)
    shifted = diabetes.copy()
    shifted.iloc[held_out] = shifted.iloc[held_out] * 10 + 1000
    other = _built("table", path=str(_write(shifted, tmp_path / "shifted.csv")), target="target")
    np.testing.assert_array_equal(other.splits["train"], train)
    assert other.tasks == ts.tasks
    np.testing.assert_array_equal(other.x[train], ts.x[train])
    np.testing.assert_array_equal(other.y[train], ts.y[train])
    assert not np.allclose(other.x[held_out], ts.x[held_out])


def test_transfer_target_from_a_one_task_multi_table_prepares_like_table(make_cfg, tmp_path, wine):
    from omegaconf import open_dict

    from pipeline.stages import layout, prepare

    src = _write(wine.iloc[::2], tmp_path / "source.csv")
    tgt = _write(wine.iloc[1::2], tmp_path / "target.csv")
    cfg = make_cfg(
        "+experiment@experiments.mine=my_tables",
        "exp=mine",
        f"experiments.mine.source.path={src}",
        f"experiments.mine.target.path={tgt}",
        "experiments.mine.source.target=target",
        "experiments.mine.target.target=target",
        "experiments.mine.source.classes=null",
        "experiments.mine.target.classes=null",
        "experiments.mine.budgets=[1,3]",
    )
    first = prepare.run(cfg)
    as_table = TaskSet.load(layout(cfg, "mine").data / "target")
    assert as_table.provenance["role"] == "target" and as_table.provenance["split_stratified_by"] == "class"
    with open_dict(cfg):
        cfg.experiments.mine.target = OmegaConf.create({"_target_": "pipeline.data.tables.multi_table", "path": str(tgt), "targets": ["target"]})
    again = prepare.run(cfg)
    as_multi = TaskSet.load(layout(cfg, "mine").data / "target")
    assert again["target"]["hash"] == first["target"]["hash"] == as_multi.data_hash
    assert as_multi.tasks == as_table.tasks and as_multi.provenance["adapter"] == "multi_table"
