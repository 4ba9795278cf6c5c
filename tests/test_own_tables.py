"""A user's own tables (issue 8), on generated data: a transfer target prepared in its source's frame
(an identical relation stays identical, no statistic of target labels), one standardisation per
label column in long format, feature columns matched by name, experiment-file mistakes named with
their file and fix, and DVC prepare stages that depend on their own experiment's files only."""

from __future__ import annotations

import os
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from pipeline.data import TaskSet, label_budget
from pipeline.data.build import build_taskset
from pipeline.errors import PipelineError
from pipeline.stages import layout, prepare
from support import BIN, ROOT, copy_project, run_cli

# y = 2 x1 - x2 + 0.5 x3 + 10 in both domains; the target's inputs are shifted and scaled.
WEIGHTS, BIAS = np.array([2.0, -1.0, 0.5]), 10.0
COLUMNS = ["x1", "x2", "x3"]


def linear_table(n: int, loc, scale, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(loc, scale, size=(n, 3))
    return pd.DataFrame({**dict(zip(COLUMNS, x.T)), "y": x @ WEIGHTS + BIAS})


def source_target(tmp_path, target: pd.DataFrame | None = None, name: str = "target.csv"):
    src = tmp_path / "source.csv"
    linear_table(400, [0.0, 5.0, -3.0], [1.0, 2.0, 3.0], seed=0).to_csv(src, index=False)
    tgt = tmp_path / name
    (linear_table(200, [4.0, -2.0, 10.0], [3.0, 0.5, 6.0], seed=1) if target is None else target).to_csv(tgt, index=False)
    return src, tgt


def regression_cfg(make_cfg, src, tgt, budgets="[5,10]"):
    return make_cfg(
        "+experiment@experiments.mine=my_tables",
        "exp=mine",
        f"experiments.mine.source.path={src}",
        f"experiments.mine.target.path={tgt}",
        *(f"experiments.mine.{role}.{key}" for role in ("source", "target") for key in ("target=y", "task=regression", "classes=null")),
        f"experiments.mine.budgets={budgets}",
    )


def prepared(cfg) -> tuple[TaskSet, TaskSet]:
    prepare.run(cfg)
    out = layout(cfg, "mine").data
    return TaskSet.load(out / "source"), TaskSet.load(out / "target")


# --------------------------------------------------------------------------------------------------
# Items 1 + 2: the target in the source's frame, no statistic of target labels


def test_identical_relation_stays_identical_in_the_prepared_arrays(make_cfg, tmp_path):
    source, target = prepared(regression_cfg(make_cfg, *source_target(tmp_path)))
    train = source.splits["train"]
    design = np.c_[source.x[train], np.ones(len(train))].astype(np.float64)
    coef, *_ = np.linalg.lstsq(design, source.y[train, 0].astype(np.float64), rcond=None)
    # The source's least-squares fit, with no target label, predicts the prepared target exactly.
    pred = np.c_[target.x, np.ones(len(target.x))] @ coef
    np.testing.assert_allclose(pred, target.y[:, 0], atol=1e-3)
    # Same offset/scale as the source, so RMSE in standardised units times scale is in the target's units.
    src_task, tgt_task = source.tasks[0], target.tasks[0]
    assert (tgt_task.offset, tgt_task.scale) == (src_task.offset, src_task.scale)
    raw = pd.read_csv(tmp_path / "target.csv")
    np.testing.assert_allclose(target.y[:, 0] * tgt_task.scale + tgt_task.offset, raw["y"], rtol=1e-5)
    # The target's features use the source's train statistics: its train mean is far from 0.
    assert np.abs(target.x[target.splits["train"]].mean(0)).max() > 1.0
    frame = target.provenance["frame"]
    assert frame == {"from": "source", "source": str(tmp_path / "source.csv"), "features": "source train split", "labels": "source offset/scale"}
    assert target.provenance["feature_scaling"] == source.provenance["feature_scaling"]
    assert source.provenance["frame"] == {"from": "own train split"}


def test_target_labels_outside_a_budget_change_nothing_else(make_cfg, tmp_path):
    src, tgt = source_target(tmp_path)
    cfg = regression_cfg(make_cfg, src, tgt)
    _, before = prepared(cfg)
    budget = label_budget(before.y[:, 0], before.splits["train"], "regression", 5, seed=0)
    others = np.setdiff1d(np.arange(len(before.y)), budget)
    df = pd.read_csv(tgt)
    df.loc[others, "y"] = df.loc[others, "y"] * 7 - 300  # every label a k=5 user does not have
    df.to_csv(tgt, index=False)
    _, after = prepared(cfg)
    assert after.tasks == before.tasks
    np.testing.assert_array_equal(after.x, before.x)
    for s in before.splits:
        np.testing.assert_array_equal(after.splits[s], before.splits[s])
    np.testing.assert_array_equal(after.y[budget], before.y[budget])
    assert not np.isclose(after.y[others, 0], before.y[others, 0]).any()


def test_classification_source_leaves_regression_target_labels_in_their_units(tmp_path):
    # No source regression statistics to borrow: raw units rather than statistics of the target's labels.
    src, tgt = source_target(tmp_path)
    df = pd.read_csv(src)
    df["y"] = np.where(df["y"] > df["y"].median(), "high", "low")
    df.to_csv(src, index=False)
    split = OmegaConf.create({"val": 0.25, "test": 0.3, "seed": 0})
    source = build_taskset(OmegaConf.create({"_target_": "pipeline.data.tables.table", "path": str(src), "target": "y"}), split, "source")
    target = build_taskset(
        OmegaConf.create({"_target_": "pipeline.data.tables.table", "path": str(tgt), "target": "y"}), split, "target", frame=source
    )
    assert (target.tasks[0].offset, target.tasks[0].scale) == (0.0, 1.0)
    np.testing.assert_allclose(target.y[:, 0], pd.read_csv(tgt)["y"], rtol=1e-6)
    assert target.provenance["frame"]["labels"] == "raw units"


# --------------------------------------------------------------------------------------------------
# Item 3: one standardisation per label column


def long_table(path, seed: int = 0):
    """Group `big` (300 rows, mean 10) and group `small` (40 rows, mean 20): y = x + group mean + noise."""
    rng = np.random.default_rng(seed)
    rows = []
    for group, n, mean in (("big", 300, 10.0), ("small", 40, 20.0)):
        x = rng.normal(size=n)
        rows.append(pd.DataFrame({"x": x, "group": group, "score": x + mean + 0.1 * rng.normal(size=n)}))
    pd.concat(rows, ignore_index=True).to_csv(path, index=False)
    return path


SPLIT = OmegaConf.create({"val": 0.2, "test": 0.2, "seed": 0})


def test_long_format_target_standardised_once_over_all_tasks(tmp_path):
    path = long_table(tmp_path / "long.csv")
    ts = build_taskset(
        OmegaConf.create({"_target_": "pipeline.data.tables.multi_table", "path": str(path), "task_column": "group", "target": "score"}),
        SPLIT,
        "multitask",
    )
    big, small = ts.tasks
    assert (big.offset, big.scale) == (small.offset, small.scale)
    train = ts.splits["train"]
    labelled = ts.y[train][~np.isnan(ts.y[train])]
    assert abs(labelled.mean()) < 1e-4 and abs(labelled.std() - 1) < 1e-4
    # The small group keeps its distance from the grand mean (per-task statistics would make it 0).
    assert np.nanmean(ts.y[train, 1]) > 1.5 and np.nanmean(ts.y[train, 0]) < 0
    raw = pd.read_csv(path)
    rows = (raw["group"] == "small").to_numpy()
    np.testing.assert_allclose(ts.y[rows, 1] * small.scale + small.offset, raw.loc[rows, "score"], rtol=1e-5)


def test_wide_format_keeps_one_standardisation_per_target_column(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=300)
    path = tmp_path / "wide.csv"
    pd.DataFrame({"x": x, "price": 1000 + 50 * x, "rating": 3 + 0.1 * x + 0.01 * rng.normal(size=300)}).to_csv(path, index=False)
    ts = build_taskset(
        OmegaConf.create({"_target_": "pipeline.data.tables.multi_table", "path": str(path), "targets": ["price", "rating"]}), SPLIT, "multitask"
    )
    train = ts.splits["train"]
    for t in range(2):
        assert abs(ts.y[train, t].mean()) < 1e-4 and abs(ts.y[train, t].std() - 1) < 1e-3
    assert ts.tasks[0].offset == pytest.approx(1000, abs=10) and ts.tasks[1].offset == pytest.approx(3, abs=0.1)


# --------------------------------------------------------------------------------------------------
# Item 7: feature columns matched by name


def test_target_columns_matched_by_name(make_cfg, tmp_path):
    src, tgt = source_target(tmp_path)
    _, in_order = prepared(regression_cfg(make_cfg, src, tgt))
    shuffled = pd.read_csv(tgt)[["y", "x3", "x1", "x2"]]
    _, tgt2 = source_target(tmp_path, shuffled, "shuffled.csv")
    _, by_name = prepared(regression_cfg(make_cfg, src, tgt2))
    np.testing.assert_array_equal(by_name.x, in_order.x)
    assert by_name.provenance["feature_names"] == COLUMNS


@pytest.mark.parametrize(
    "mutate, fragments",
    [
        (lambda d: d.drop(columns="x2"), ["lacks the source's feature columns ['x2']", "matched by name"]),
        (lambda d: d.assign(row_id=range(len(d))), ["has feature columns ['row_id'] that the source lacks", "target's `features:`"]),
        (lambda d: d.drop(columns="x2").assign(x_2=1.0), ["lacks the source's feature columns ['x2']", "['x_2'] that the source lacks"]),
    ],
    ids=["missing", "extra", "renamed"],
)
def test_missing_or_extra_target_columns_named(make_cfg, tmp_path, mutate, fragments):
    src, tgt = source_target(tmp_path)
    _, bad = source_target(tmp_path, mutate(pd.read_csv(tgt)), "bad.csv")
    cfg = regression_cfg(make_cfg, src, bad)
    with pytest.raises(PipelineError) as err:
        prepare.run(cfg)
    for f in ["experiment mine target", str(bad), *fragments]:
        assert f in str(err.value), str(err.value)
    assert not layout(cfg, "mine").data.exists()


# --------------------------------------------------------------------------------------------------
# Item 9: experiment-file mistakes, through the CLI


def bad_conf(tmp_path, declare: str, edit=None):
    conf = tmp_path / "conf"
    shutil.copytree(ROOT / "conf", conf)
    if edit:
        edit(conf)
    top = conf / "config.yaml"
    top.write_text(top.read_text().replace("  - _self_\n", f"  - {declare}\n  - _self_\n", 1))
    return {"PIPELINE_CONF_DIR": str(conf)}


def drop_split(conf):
    f = conf / "experiment" / "my_tables.yaml"
    f.write_text("".join(line for line in f.read_text().splitlines(keepends=True) if not line.startswith("split:")))


@pytest.mark.parametrize(
    "stage, declare, edit, exp, message",
    [
        (
            "prepare",
            "experiment@experiments.mine: my_tables",
            drop_split,
            "mine",
            "error: experiment mine (conf/experiment/my_tables.yaml) lacks `split:` (experiments.mine.split); "
            "add it to conf/experiment/my_tables.yaml (e.g. `split: {val: 0.2, test: 0.2, seed: 0}`)",
        ),
        (
            "prepare",
            "experiment@experiments.synthetic_related: synthetic_related",
            None,
            "synthetic_related",
            "error: experiment synthetic_related (conf/experiment/synthetic_related.yaml) is a multitask experiment (key `data`) declared under "
            "`experiments`; declare it as `- experiment@multitask_experiments.synthetic_related: synthetic_related` in conf/config.yaml",
        ),
        (
            "multitask",
            "experiment@multitask_experiments.mine: my_tables",
            None,
            "mine",
            "error: experiment mine (conf/experiment/my_tables.yaml) is a transfer experiment (key `budgets`) declared under "
            "`multitask_experiments`; declare it as `- experiment@experiments.mine: my_tables` in conf/config.yaml",
        ),
    ],
    ids=["no-split", "multitask-as-transfer", "transfer-as-multitask"],
)
def test_experiment_file_mistakes_name_file_key_and_fix(tmp_path, stage, declare, edit, exp, message):
    res = run_cli(stage, f"exp={exp}", cwd=tmp_path, env=bad_conf(tmp_path, declare, edit))
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip().splitlines() == [message]
    assert "Traceback" not in res.stderr + res.stdout
    assert not (tmp_path / "artifacts").exists()


# --------------------------------------------------------------------------------------------------
# Item 11: each prepare stage depends on its own experiment's files


def test_every_experiment_has_its_data_folder():
    import yaml

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    names = {*params["experiments"], *params["multitask_experiments"], *(f.stem for f in (ROOT / "conf" / "experiment").glob("*.yaml"))}
    absent = sorted(n for n in names if not (ROOT / "data" / n).is_dir())
    assert not absent, f"dvc.yaml's prepare stages depend on data/<experiment>/; create {[f'data/{n}/' for n in absent]}"


@pytest.mark.timeout(600)
def test_a_new_file_under_data_leaves_other_experiments_prepared(tmp_path):
    repo = copy_project(tmp_path / "repo")
    (repo / "dvc.lock").unlink(missing_ok=True)
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)

    def sh(*cmd):
        res = subprocess.run(list(cmd), cwd=repo, capture_output=True, text=True, env=env)
        assert res.returncode == 0, f"{' '.join(cmd)}:\n{res.stdout}\n{res.stderr}"
        return res.stdout

    sh("git", "init", "-q")
    mt = "multitask_experiments.synthetic_related"
    sh(
        str(BIN / "pipeline-params"),
        "+experiment@experiments.my_tables=my_tables",
        "~experiment@experiments.mnist_to_digits",
        "~experiment@experiments.mnist_new_classes",
        *(f"~experiment@multitask_experiments.{e}" for e in ("multimnist", "exam_schools", "star")),
        f"+experiment@{mt}=synthetic_related",
        f"{mt}.data.n_tasks=3",
    )
    sh(str(BIN / "dvc"), "repro", "--single-item", "prepare@my_tables", "mt_prepare@synthetic_related")
    assert "prepare@" not in sh(str(BIN / "dvc"), "status")

    # A file for another (new) experiment, and one in the folder of my_tables: only prepare@my_tables is stale.
    (repo / "data" / "someone_else").mkdir()
    (repo / "data" / "someone_else" / "theirs.csv").write_text("a,b\n1,2\n")
    (repo / "data" / "notes.txt").write_text("a user's note\n")
    assert "prepare@" not in sh(str(BIN / "dvc"), "status")
    (repo / "data" / "my_tables" / "extra.csv").write_text("a,b\n1,2\n")
    stale = {line.rstrip(":") for line in sh(str(BIN / "dvc"), "status").splitlines() if "prepare@" in line}
    assert stale == {"prepare@my_tables"}
