"""Shared fixtures: the real `conf/`, composed and shrunk to tiny budgets, and stores in tmp dirs."""

from __future__ import annotations

import pytest

from support import candidates, compose_cfg, run_stages


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
    cfg, out = run_stages(tmp, (prepare, pretrain, extract, finetune, report))
    return {"cfg": cfg, "tmp": tmp, **out}


@pytest.fixture(scope="module")
def zoo_run(tmp_path_factory):
    """The transfer chain on mnist_to_digits with conf/'s candidate sources, fine-tuning only what the
    sources report reads from the own source (the linear probe, parameter transfer) and the baseline the
    transfer report needs; the rank stage fine-tunes from every other candidate."""
    from pipeline.stages import extract, finetune, prepare, pretrain, rank, report

    tmp = tmp_path_factory.mktemp("zoo")
    stages = (prepare, pretrain, candidates, extract, finetune, rank, report)
    cfg, out = run_stages(tmp, stages, ["strategy=[scratch,param_transfer,linear_features]"], zoo=True)
    return {"cfg": cfg, "tmp": tmp, **out}


# The bad-input catalogue (tests/test_bad_input.py, its `test_catalogue_*` tables): how many cases ran.
CATALOGUE = "test_bad_input.py::test_catalogue_"


def pytest_terminal_summary(terminalreporter):
    reports = [r for key in ("passed", "failed", "skipped") for r in terminalreporter.stats.get(key, []) if CATALOGUE in getattr(r, "nodeid", "")]
    calls = [r for r in reports if r.when == "call" or r.outcome == "skipped"]
    if calls:
        passed = sum(r.outcome == "passed" for r in calls)
        terminalreporter.write_line(f"bad-input catalogue: {len(calls)} cases ({passed} passed)")
