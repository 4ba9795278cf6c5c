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
    assert client.get_run(ok).info.run_name == "finetune/scratch/k3/seed0"
    assert client.get_run(bad).data.tags["seed"] == "1" and "strategy" not in client.get_run(bad).data.tags
