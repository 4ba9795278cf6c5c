"""A model of the user's own as the source (`source_model`): a checkpoint file or a registered model
version replaces pretraining and runs through extract and fine-tuning; a bad one stops pretrain with a
message naming the file or URI, and nothing is written."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.errors import PipelineError
from support import compose_cfg

EXP = "mnist_to_digits"


def chain(tmp: Path, pipeline_run, spec: str, stages: tuple[str, ...] = ("pretrain", "extract", "finetune"), store: Path | None = None):
    """The fixture chain's prepared data in tmp, then `stages` with `source_model: spec`; {stage: result}."""
    from omegaconf import open_dict

    from pipeline import stages as all_stages

    data = tmp / "artifacts" / EXP / "data"
    if not data.exists():
        shutil.copytree(pipeline_run["tmp"] / "artifacts" / EXP / "data", data)
    cfg = compose_cfg(tmp, [f"experiments.{EXP}.source_model={spec}", "strategy=[param_transfer,feature_retrain]", "budget=1", "transfer.seeds=[0]"])
    if store is not None:
        with open_dict(cfg):
            cfg.tracking.uri = f"sqlite:///{store}"
    old = os.getcwd()
    os.chdir(tmp)
    try:
        import importlib

        return cfg, {s: importlib.import_module(f"{all_stages.__name__}.{s}").run(cfg) for s in stages}
    finally:
        os.chdir(old)


def fixture_checkpoint(pipeline_run) -> dict:
    return torch.load(pipeline_run["tmp"] / "artifacts" / EXP / "sources" / "source" / "model.pt", weights_only=False)


def test_a_checkpoint_file_is_the_source_through_extract_and_fine_tuning(pipeline_run, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    ckpt = fixture_checkpoint(pipeline_run)
    (tmp_path / "data" / EXP).mkdir(parents=True)
    torch.save({"arch": ckpt["arch"], "state_dict": ckpt["state_dict"]}, tmp_path / "data" / EXP / "mine.pt")  # no task, no run
    cfg, out = chain(tmp_path, pipeline_run, f"data/{EXP}/mine.pt")
    summary = out["pretrain"]
    assert summary["loaded_from"] == f"data/{EXP}/mine.pt"
    # The same weights on the same source test split as the chain that trained them.
    assert summary["test"]["test/acc"] == pytest.approx(pipeline_run["pretrain"]["test"]["test/acc"], abs=1e-6)
    kept = torch.load(tmp_path / "artifacts" / EXP / "sources" / "source" / "model.pt", weights_only=True)
    assert all(torch.equal(kept["state_dict"][k], v) for k, v in ckpt["state_dict"].items())
    mine = np.load(tmp_path / "artifacts" / EXP / "knowledge" / "features.npy")
    np.testing.assert_allclose(mine, np.load(pipeline_run["tmp"] / "artifacts" / EXP / "knowledge" / "features.npy"), rtol=1e-6)
    assert {r["strategy"] for r in out["finetune"] if not r.get("classic")} == {"param_transfer", "feature_retrain"}
    from mlflow import MlflowClient

    client = MlflowClient(cfg.tracking.uri)
    (version,) = client.search_model_versions(f"name='{EXP}.source'")
    assert version.run_id == summary["run_id"] and version.tags["loaded_from"] == f"data/{EXP}/mine.pt"
    assert client.get_run(summary["run_id"]).data.tags["source_model"] == f"data/{EXP}/mine.pt"


def test_a_registered_model_version_is_the_source(pipeline_run, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    store = tmp_path / "mlflow.db"
    shutil.copy(pipeline_run["tmp"] / "mlflow.db", store)  # the chain's store, where pretrain registered version 1
    _, out = chain(tmp_path, pipeline_run, f"models:/{EXP}.source/1", stages=("pretrain", "extract"), store=store)
    assert out["pretrain"]["loaded_from"] == f"models:/{EXP}.source/1"
    assert out["pretrain"]["task"] == fixture_checkpoint(pipeline_run)["task"]  # carried by the registered checkpoint
    mine = np.load(tmp_path / "artifacts" / EXP / "knowledge" / "features.npy")
    np.testing.assert_allclose(mine, np.load(pipeline_run["tmp"] / "artifacts" / EXP / "knowledge" / "features.npy"), rtol=1e-6)


class RunsCode:
    """Unpickling this would run a shell command: weights_only loading must refuse it."""

    def __reduce__(self):
        return (os.system, ("touch pwned",))


def _bad(tmp: Path, ckpt: dict, case: str) -> str:
    from pipeline.models import build

    path = tmp / "data" / EXP / "bad.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    small = {**ckpt["arch"], "backbone": {**ckpt["arch"]["backbone"], "input_dim": 30}}
    content = {
        "tensor": torch.zeros(3),
        "no_arch": {"state_dict": ckpt["state_dict"]},
        "code": {"arch": ckpt["arch"], "state_dict": ckpt["state_dict"], "extra": RunsCode()},
        "input_size": {"arch": small, "state_dict": build(small).state_dict()},
        "mismatch": {"arch": small, "state_dict": ckpt["state_dict"]},
    }.get(case)
    if content is not None:
        torch.save(content, path)
    return {"missing": f"data/{EXP}/nope.pt", "registry": f"models:/{EXP}.nope/1", "uri": f"models:/{EXP}.source"}.get(case, f"data/{EXP}/bad.pt")


@pytest.mark.parametrize(
    "case,message",
    [
        ("tensor", r"source_model data/mnist_to_digits/bad\.pt: a source checkpoint is a dict with `arch` .* got Tensor"),
        ("no_arch", r"source_model data/mnist_to_digits/bad\.pt: a source checkpoint is a dict with `arch` .* got \['state_dict'\]"),
        ("code", r"source_model data/mnist_to_digits/bad\.pt: not a checkpoint torch loads with weights_only=True"),
        ("input_size", r"source_model data/mnist_to_digits/bad\.pt: the model takes inputs of size 30, the target's rows have 64 features"),
        ("mismatch", r"source_model data/mnist_to_digits/bad\.pt: its state_dict does not fit its arch: size mismatch for backbone"),
        ("missing", r"source_model data/mnist_to_digits/nope\.pt: no such file"),
        ("registry", r"source_model models:/mnist_to_digits\.nope/1: not found in the model registry at sqlite:///"),
        ("uri", r"source_model models:/mnist_to_digits\.source: expected models:/<name>/<version>"),
    ],
)
def test_a_bad_source_model_stops_pretrain_naming_it_and_writes_nothing(pipeline_run, tmp_path, monkeypatch, case, message):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    spec = _bad(tmp_path, fixture_checkpoint(pipeline_run), case)
    with pytest.raises(PipelineError, match=message):
        chain(tmp_path, pipeline_run, spec, stages=("pretrain",))
    assert not (tmp_path / "artifacts" / EXP / "sources" / "source").exists()
    assert not (tmp_path / "pwned").exists() and not Path("pwned").exists()
