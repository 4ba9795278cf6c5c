"""MLflow conventions: tags named for what they hold, keyword-only, and one way to end a run."""

from __future__ import annotations

import json

import pytest

from pipeline.tracking import REQUIRED_TAGS, Tracker
from support import mlflow_runs


def test_report_run_is_tagged_with_the_target_data_hash(pipeline_run):
    """The report run's `data_hash` is the target task set's content hash (it once received the source
    run id through a positional argument in the wrong slot), and no run carries a made-up strategy."""
    cfg, tmp = pipeline_run["cfg"], pipeline_run["tmp"]
    target = json.loads((tmp / "artifacts" / "mnist_to_digits" / "data" / "target" / "meta.json").read_text())
    source = json.loads((tmp / "artifacts" / "mnist_to_digits" / "data" / "source" / "meta.json").read_text())
    _, runs = mlflow_runs(cfg, "mnist_to_digits")
    by_stage = {}
    for r in runs:
        assert all(r.data.tags.get(t) is not None for t in REQUIRED_TAGS), r.data.tags
        by_stage.setdefault(r.data.tags["stage"], []).append(r)
    (report,) = by_stage["report"]
    assert report.data.tags["data_hash"] == target["provenance"]["content_hash"]
    assert report.data.tags["source_run_id"] == pipeline_run["pretrain"]["run_id"]
    (pretrain,) = by_stage["pretrain"]
    assert pretrain.data.tags["data_hash"] == source["provenance"]["content_hash"]
    # `strategy` is a fine-tune tag only: pretrain, extract and report runs have none.
    assert {r.data.tags["stage"] for r in runs if "strategy" in r.data.tags} == {"finetune"}


@pytest.fixture
def tracker(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    return Tracker("scenario", f"sqlite:///{tmp_path / 'mlflow.db'}")


def test_tags_are_keyword_only(tracker):
    with pytest.raises(TypeError):
        tracker.start("finetune", "scratch", 0, "hash")  # the old positional call


def test_run_context_finishes_or_marks_failed(tracker):
    with tracker.run("finetune", variant="scratch", seed=0, data_hash="h", budget=3, tags={"strategy": "scratch"}) as ok:
        pass
    with pytest.raises(ZeroDivisionError), tracker.run("finetune", variant="scratch", seed=1, data_hash="h") as bad:
        raise ZeroDivisionError("a bug inside the run")
    client = tracker.client
    assert client.get_run(ok).info.status == "FINISHED"
    assert client.get_run(bad).info.status == "FAILED"
    assert client.get_run(ok).info.run_name == "scratch k3 s0"
    assert client.get_run(bad).data.tags["seed"] == "1" and "strategy" not in client.get_run(bad).data.tags


def test_an_experiment_made_without_a_kind_gets_the_training_kind(tmp_path, monkeypatch):
    """The UI opens a training experiment on its runs: the kind is set on new experiments and on
    experiments an older version of the pipeline made without it."""
    from mlflow.tracking import MlflowClient

    from pipeline.tracking import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    old = client.create_experiment("old")
    assert EXPERIMENT_KIND_TAG not in client.get_experiment(old).tags
    assert Tracker("old", uri).experiment_id == old
    new = Tracker("new", uri).experiment_id
    assert client.get_experiment(old).tags[EXPERIMENT_KIND_TAG] == client.get_experiment(new).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND


def test_runs_of_a_hydra_multirun_are_named_apart_from_dvc_runs(tmp_path, monkeypatch):
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from support import CONF

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("DVC_STAGE", "finetune@mnist_to_digits")
    dvc = Tracker("scenario", uri)
    monkeypatch.delenv("DVC_STAGE")
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose("config", overrides=["strategy=scratch"], return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.mode = "MULTIRUN"
        cfg.hydra.job.num = 3
    HydraConfig.instance().set_config(cfg)
    try:
        sweep = Tracker("scenario", uri)
    finally:
        HydraConfig.instance().cfg = None
    started = [t.start("finetune", variant="scratch", seed=0, budget=3, data_hash="h", tags={"strategy": "scratch"}) for t in (dvc, sweep)]
    runs = [dvc.client.get_run(run_id) for run_id in started]
    assert [r.info.run_name for r in runs] == ["scratch k3 s0", "scratch k3 s0 job3"]
    assert [r.data.tags["launcher"] for r in runs] == ["dvc", "multirun"]
    assert runs[0].data.tags["dvc_stage"] == "finetune@mnist_to_digits" and "strategy=scratch" in runs[1].data.tags["hydra_overrides"]
    # strategy, budget and seed are params too, so the compare view can plot a metric against them.
    assert {k: runs[1].data.params[k] for k in ("strategy", "budget", "seed")} == {"strategy": "scratch", "budget": "3", "seed": "0"}


def test_git_commit_is_dirty_for_code_changes_not_for_what_the_pipeline_writes(tmp_path, monkeypatch):
    """`dvc repro` rewrites dvc.lock, params.yaml and the reports while its runs are logged: those
    leave the commit clean; a changed source file makes it dirty."""
    import subprocess

    from pipeline.tracking import git_commit, pipeline_outputs
    from support import ROOT

    outputs = pipeline_outputs(ROOT)
    assert {"dvc.lock", "params.yaml", "reports/", "reports/figures/", "reports/metrics/"} <= set(outputs)
    assert not any(o.startswith(("src", "conf", "tests")) for o in outputs)

    dvc_yaml = "stages:\n  report:\n    foreach: [a]\n    do:\n      cmd: x\n      outs:\n        - reports/${item}.md:\n            cache: false\n"
    (tmp_path / "dvc.yaml").write_text(dvc_yaml)
    for name in ("dvc.lock", "params.yaml", "reports/a.md", "src/code.py"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("0\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run([*git, "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([*git, "add", "."], cwd=tmp_path, check=True)
    subprocess.run([*git, "commit", "-qm", "init"], cwd=tmp_path, check=True)
    sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True, check=True).stdout.strip()
    monkeypatch.chdir(tmp_path)
    for name in ("dvc.lock", "params.yaml", "reports/a.md"):
        (tmp_path / name).write_text("1\n")
    git_commit.cache_clear()
    try:
        assert git_commit() == sha
        (tmp_path / "src" / "code.py").write_text("1\n")
        git_commit.cache_clear()
        assert git_commit() == sha + "-dirty"
    finally:
        git_commit.cache_clear()
