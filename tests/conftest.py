"""Shared fixtures: the real `conf/`, composed and shrunk to tiny budgets, and stores in tmp dirs."""

from __future__ import annotations

import os

import pytest

from support import compose_cfg


@pytest.fixture
def make_cfg(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)  # MLflow artifacts and anything relative land in the tmp dir
    return lambda *overrides: compose_cfg(tmp_path, list(overrides))


@pytest.fixture(scope="session")
def pipeline_run(tmp_path_factory):
    """The whole transfer chain on mnist_to_digits at tiny budgets, run once per session."""
    from pipeline.stages import extract, finetune, prepare, pretrain, report

    tmp = tmp_path_factory.mktemp("chain")
    old = os.getcwd()
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.chdir(tmp)
    try:
        cfg = compose_cfg(tmp)
        out = {"cfg": cfg, "tmp": tmp}
        for stage in (prepare, pretrain, extract, finetune, report):
            out[stage.__name__.rsplit(".", 1)[1]] = stage.run(cfg)
    finally:
        os.chdir(old)
    return out
