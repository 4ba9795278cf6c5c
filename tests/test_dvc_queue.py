"""DVC's experiment queue and remotes on a tiny multitask chain, in a fresh copy of the project: queued
experiments run in temporary copies under `.dvc/tmp/exps/` that DVC deletes, yet their MLflow runs land
in the project's own store; outputs travel through a DVC remote, experiments through a git remote."""

from __future__ import annotations

import hashlib
import shutil
import time
from pathlib import Path

import pytest
import yaml

from support import BIN, copy_project, sh

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]

EXP = "synthetic_related"


def test_a_relative_store_follows_the_dvc_project_and_an_explicit_uri_wins(tmp_path, monkeypatch):
    """DVC sets DVC_ROOT to the user's repository in every stage, a queued one included: the default
    `sqlite:///mlflow.db` and the `mlartifacts` root resolve there, not in the working directory."""
    from pipeline.tracking import Tracker, tracking_uri

    project, workdir = tmp_path / "project", tmp_path / "project" / ".dvc" / "tmp" / "exps" / "tmpabc"
    workdir.mkdir(parents=True)
    monkeypatch.chdir(workdir)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    assert tracking_uri("sqlite:///mlflow.db") == f"sqlite:///{workdir / 'mlflow.db'}"  # outside DVC: the working directory
    monkeypatch.setenv("DVC_ROOT", str(project))
    assert tracking_uri("sqlite:///mlflow.db") == tracking_uri(None) == f"sqlite:///{project / 'mlflow.db'}"
    assert tracking_uri("sqlite:///stores/../m.db") == f"sqlite:///{project / 'm.db'}"
    assert tracking_uri("sqlite:////abs/m.db") == "sqlite:////abs/m.db"
    tracker = Tracker("scenario", "sqlite:///mlflow.db")
    assert (project / "mlflow.db").is_file() and not (workdir / "mlflow.db").exists()
    assert tracker.client.get_experiment(tracker.experiment_id).artifact_location == (project / "mlartifacts" / "scenario").as_uri()
    # The user's MLFLOW_TRACKING_URI wins over the configured store (a relative file is the project's too).
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking_uri("sqlite:///mlflow.db") == "http://127.0.0.1:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///team.db")
    assert tracking_uri("sqlite:///mlflow.db") == f"sqlite:///{project / 'team.db'}"


def tiny_project(repo: Path) -> Path:
    """The project with one multitask experiment (2 synthetic tasks, hard sharing vs the single-task
    baseline, one seed, 2 epochs) as its whole study: conf/ is what `dvc exp run -S` composes."""
    copy_project(repo)
    conf = repo / "conf" / "config.yaml"
    cfg = yaml.safe_load(conf.read_text())
    cfg["defaults"] = [d for d in cfg["defaults"] if not (isinstance(d, dict) and any(k.startswith(("experiment@", "candidates@")) for k in d))]
    cfg["defaults"].insert(cfg["defaults"].index("_self_"), {f"experiment@multitask_experiments.{EXP}": EXP})
    cfg["experiments"] = {}
    cfg["multitask_experiments"] = {EXP: {"schemes": ["hard"], "weightings": ["equal"], "data": {"n_tasks": 2, "n_per_task": 40}}}
    cfg["multitask"].update(seeds=[0], max_epochs=2, min_steps_per_epoch=1, classic=[])
    cfg["trainer"] = {"progress_bar": False}
    conf.write_text(yaml.safe_dump(cfg, sort_keys=False))
    (repo / "dvc.lock").unlink(missing_ok=True)
    sh(str(BIN / "pipeline-params"), cwd=repo)
    return repo


def tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_queued_experiments_land_in_the_projects_store_and_travel_through_remotes(tmp_path):
    from mlflow.tracking import MlflowClient

    repo = tiny_project(tmp_path / "repo")
    dvc = str(BIN / "dvc")
    sh("git", "init", "-q", "-b", "main", cwd=repo)
    sh("git", "init", "-q", "--bare", str(tmp_path / "origin.git"), cwd=tmp_path)
    sh("git", "remote", "add", "origin", str(tmp_path / "origin.git"), cwd=repo)
    sh(dvc, "remote", "add", "-d", "storage", str(tmp_path / "dvc-storage"), cwd=repo)
    sh("git", "add", "-A", cwd=repo)
    sh("git", "commit", "-qm", "tiny study", cwd=repo)

    # Two experiments queued, then run by DVC's queue workers, each in its own copy under .dvc/tmp/exps/.
    target = f"multitask@{EXP}"
    for name, lr in (("lr3", "0.003"), ("lr10", "0.01")):
        sh(dvc, "exp", "run", "--queue", "-n", name, "-S", f"multitask.lr={lr}", target, cwd=repo)
    sh(dvc, "queue", "start", cwd=repo)
    deadline = time.monotonic() + 300
    while (status := sh(dvc, "queue", "status", cwd=repo)) and any(s in status for s in ("Queued", "Running")):
        assert time.monotonic() < deadline, status
        time.sleep(2)
    assert status.count("Success") == 2, status + "\n" + "\n".join(p.read_text() for p in (repo / ".dvc" / "tmp" / "exps").rglob("*.out"))

    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    exp = client.get_experiment_by_name(EXP)
    assert exp is not None and exp.artifact_location == (repo / "mlartifacts" / EXP).as_uri()
    runs = client.search_runs([exp.experiment_id])
    got = sorted((r.data.tags["dvc_exp"], r.data.params["multitask.lr"], r.info.run_name, r.info.status) for r in runs)
    assert got == [
        ("lr10", "0.01", "hard+equal s0", "FINISHED"),
        ("lr10", "0.01", "single_task+equal s0", "FINISHED"),
        ("lr3", "0.003", "hard+equal s0", "FINISHED"),
        ("lr3", "0.003", "single_task+equal s0", "FINISHED"),
    ]
    assert all(r.data.tags["launcher"] == "dvc" and r.data.tags["dvc_stage"] == target for r in runs)
    assert not list((repo / ".dvc" / "tmp").rglob("mlflow.db"))

    # Outputs through a DVC remote: push, lose the outputs and the cache, pull them back identical.
    sh(dvc, "exp", "apply", "lr3", cwd=repo)
    outs = repo / "artifacts" / EXP
    before = tree_digest(outs)
    assert {"data", "multitask"} <= {p.split("/")[0] for p in before}
    sh(dvc, "push", cwd=repo)
    shutil.rmtree(outs)
    shutil.rmtree(repo / ".dvc" / "cache")
    sh(dvc, "pull", cwd=repo)
    assert tree_digest(outs) == before

    # Experiments through a git remote: a colleague's clone pulls one and gets the same outputs.
    sh("git", "push", "-q", "origin", "main", cwd=repo)
    sh(dvc, "exp", "push", "origin", "lr3", "lr10", cwd=repo)  # the refs, and their data to the default DVC remote
    sh("git", "clone", "-q", "-b", "main", str(tmp_path / "origin.git"), str(tmp_path / "colleague"), cwd=tmp_path)
    colleague = tmp_path / "colleague"
    assert "lr10" in sh(dvc, "exp", "list", "origin", cwd=colleague)
    sh(dvc, "exp", "pull", "origin", "lr3", cwd=colleague)
    sh(dvc, "exp", "apply", "lr3", cwd=colleague)
    assert tree_digest(colleague / "artifacts" / EXP) == before
