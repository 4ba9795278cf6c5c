"""A training stage killed with SIGKILL mid-way and rerun resumes where it was (the fit's last epoch,
the grid's finished runs) and ends with the metrics of an uninterrupted run, to the last digit; no
MLflow run is left RUNNING, and the stage's declared output is never there half-written."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from support import BIN, ROOT, SYNTHETIC, TINY, mlflow_runs, run_stages

pytestmark = [pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL"), pytest.mark.slow]


def start(stage: str, tmp: Path, overrides: list[str]) -> subprocess.Popen:
    """`pipeline <stage>` as a user runs it, in tmp (its artifacts, store and .resume/ there)."""
    args = [*TINY, *SYNTHETIC, "sources={}", *overrides, f"paths.artifacts={tmp / 'artifacts'}", f"tracking.uri=sqlite:///{tmp / 'mlflow.db'}"]
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "PIPELINE_CONF_DIR": str(ROOT / "conf"), "PIPELINE_RESUME_EVERY_S": "0"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.Popen([str(BIN / "pipeline"), stage, *args], cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def kill_when(proc: subprocess.Popen, ready, what: str, timeout: float = 90) -> None:
    """SIGKILL `proc` as soon as ready() holds (the resume folder shows progress)."""
    deadline = time.time() + timeout
    while not ready():
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"the stage ended (or hung) before {what}: rc {proc.returncode}\n{out[-2000:]}\n{err[-3000:]}")
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def finish(stage: str, tmp: Path, overrides: list[str]) -> str:
    proc = start(stage, tmp, overrides)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, f"{out[-2000:]}\n{err[-3000:]}"
    return out


def epochs_on_disk(tmp: Path, exp: str, stage: str, job: str = "*") -> int:
    """The epochs of the fit `job` (all: the most) in the stage's resume folder."""
    return max((int(p.read_text() or 0) for p in (tmp / ".resume" / exp).glob(f"{stage}-*/fits/{job}.epoch")), default=0)


def finished_runs(tmp: Path, exp: str, stage: str) -> int:
    return len(list((tmp / ".resume" / exp).glob(f"{stage}-*/runs/*.json")))


def running(tmp: Path) -> bool:
    """Whether the stage has an MLflow run RUNNING in tmp's store (read as the UI would, beside the writer)."""
    import sqlite3

    try:
        with sqlite3.connect(f"file:{tmp / 'mlflow.db'}?mode=ro", uri=True, timeout=0.1) as db:
            return bool(db.execute("select count(*) from runs where status = 'RUNNING'").fetchone()[0])
    except sqlite3.Error:
        return False


def check_no_half_output(out: Path) -> None:
    """The stage's declared output is absent (`dvc repro` deleted it and the stage never got to write
    it), and no scratch copy of it is left beside it."""
    assert not out.exists(), f"{out} was written by a stage killed mid-way"
    assert not list(out.parent.glob(f".{out.name}.*")), list(out.parent.iterdir())


def check_runs(tmp: Path, cfg, exp: str) -> list:
    """No run RUNNING; those of the killed process FAILED, saying so."""
    from omegaconf import OmegaConf

    local = OmegaConf.merge(cfg, {"tracking": {"uri": f"sqlite:///{tmp / 'mlflow.db'}"}})
    _, runs = mlflow_runs(local, exp)
    assert not [r.info.run_name for r in runs if r.info.status == "RUNNING"]
    killed = [r for r in runs if r.info.status == "FAILED"]
    assert killed and all(r.data.tags["failure"].startswith("killed: its process (pid") for r in killed)
    return runs


def copy_inputs(src: Path, dst: Path, exp: str, parts) -> Path:
    for part in parts:
        shutil.copytree(src / "artifacts" / exp / part, dst / "artifacts" / exp / part)
    return dst


def test_pretrain_killed_mid_fit_resumes_from_its_last_epoch(pipeline_run, tmp_path):
    from pipeline.stages import pretrain

    exp = "mnist_to_digits"
    longer = ["pretrain.max_epochs=12", "pretrain.patience=12"]
    killed = copy_inputs(pipeline_run["tmp"], tmp_path / "killed", exp, ["data"])
    proc = start("pretrain", killed, [f"exp={exp}", *longer])
    kill_when(proc, lambda: epochs_on_disk(killed, exp, "pretrain") >= 3, "its third epoch")
    check_no_half_output(killed / "artifacts" / exp / "sources" / "source")
    at = epochs_on_disk(killed, exp, "pretrain")

    out = finish("pretrain", killed, [f"exp={exp}", *longer])
    assert f"resumed from epoch {at}" in out
    assert not (killed / ".resume").exists()  # the stage succeeded: nothing left to resume

    ref = copy_inputs(pipeline_run["tmp"], tmp_path / "ref", exp, ["data"])
    cfg, done = run_stages(ref, [pretrain], [f"exp={exp}", *longer])
    summary = json.loads((killed / "artifacts" / exp / "sources" / "source" / "summary.json").read_text())
    expected = done["pretrain"]
    assert (summary["test"], summary["best_epoch"], summary["epochs"]) == (expected["test"], expected["best_epoch"], expected["epochs"])
    assert summary["best_epoch"] >= at and summary["epochs"] > at  # it trained past the kill

    runs = check_runs(killed, cfg, exp)
    resumed = next(r for r in runs if r.info.run_id == summary["run_id"])
    assert resumed.info.status == "FINISHED" and resumed.data.tags["resumed_from_epoch"] == str(at)
    # The whole training history (every epoch's loss and validation metrics), the killed epochs' included.
    _, ref_runs = mlflow_runs(cfg, exp)
    reference = next(r for r in ref_runs if r.info.run_id == expected["run_id"])
    assert histories(cfg, killed, resumed) == histories(cfg, ref, reference)


def histories(cfg, tmp: Path, run) -> dict:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}")
    keys = [k for k in run.data.metrics if not k.startswith("fit/")]  # fit/seconds: wall time
    return {k: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, k)] for k in keys}


def comparable(folder: Path) -> dict:
    """A stage's result files less what differs between two runs of it: wall times and run ids."""

    def strip(obj):
        if isinstance(obj, dict):
            return {k: strip(v) for k, v in obj.items() if k not in ("seconds", "run_id")}
        return [strip(v) for v in obj] if isinstance(obj, list) else obj

    return {str(p.relative_to(folder)): strip(json.loads(p.read_text())) for p in sorted(folder.rglob("*.json"))}


def test_finetune_killed_mid_grid_reuses_the_finished_runs(pipeline_run, tmp_path):
    from pipeline.stages import finetune

    exp = "mnist_to_digits"
    grid = [f"exp={exp}", "strategy=[scratch,param_transfer]", "trainer.workers=1", "transfer.max_epochs=6", "transfer.patience=6"]
    killed = copy_inputs(pipeline_run["tmp"], tmp_path / "killed", exp, ["data", "sources", "knowledge"])
    proc = start("finetune", killed, grid)
    kill_when(proc, lambda: finished_runs(killed, exp, "finetune") >= 3 and running(killed), "three finished grid runs and a fourth started")
    check_no_half_output(killed / "artifacts" / exp / "finetune")
    done = finished_runs(killed, exp, "finetune")
    kept = {json.loads(p.read_text())["run_id"] for p in (killed / ".resume" / exp).glob("finetune-*/runs/*.json")}

    out = finish("finetune", killed, grid)
    assert f"resumed: {done} of 8 grid runs reused" in out
    ref = copy_inputs(pipeline_run["tmp"], tmp_path / "ref", exp, ["data", "sources", "knowledge"])
    cfg, _ = run_stages(ref, [finetune], grid)
    assert comparable(killed / "artifacts" / exp / "finetune") == comparable(ref / "artifacts" / exp / "finetune")
    runs = check_runs(killed, cfg, exp)
    written = {json.loads(p.read_text())["run_id"] for p in (killed / "artifacts" / exp / "finetune").rglob("*.json")}
    assert kept <= written  # the finished runs' records and MLflow runs, reused
    assert all(r.info.status == "FINISHED" for r in runs if r.info.run_id in written)
    assert len([r for r in runs if r.info.status == "FINISHED"]) == 8  # nothing trained twice


def test_rank_killed_mid_grid_reuses_the_finished_trials(zoo_run, tmp_path):
    from pipeline.stages import rank

    exp = "mnist_to_digits"
    grid = [f"exp={exp}", "trainer.workers=1", "transfer.tuning.trials=2", f"experiments.{exp}.budgets=[1,3]", "transfer.seeds=[0]"]
    grid += ["transfer.max_epochs=6", "transfer.patience=6"]
    parts = ["data", "sources", "knowledge"]
    killed = copy_inputs(zoo_run["tmp"], tmp_path / "killed", exp, parts)
    proc = start("rank", killed, grid)
    # The probes of every view are kept first (one record each), then each trial as it ends.
    views = len(json.loads((killed / "artifacts" / exp / "knowledge" / "summary.json").read_text())["candidates"]) - 1
    kill_when(proc, lambda: finished_runs(killed, exp, "rank") >= views + 3 and running(killed), "three finished trials and a fourth started")
    check_no_half_output(killed / "artifacts" / exp / "rank")
    kept = {json.loads(p.read_text()).get("run_id") for p in (killed / ".resume" / exp).glob("rank-*/runs/*.json")} - {None}

    out = finish("rank", killed, grid)
    assert re.search(r"resumed: \d+ of \d+ param_transfer trials reused", out)
    ref = copy_inputs(zoo_run["tmp"], tmp_path / "ref", exp, parts)
    cfg, _ = run_stages(ref, [rank], grid, zoo=True)
    assert comparable(killed / "artifacts" / exp / "rank") == comparable(ref / "artifacts" / exp / "rank")
    runs = check_runs(killed, cfg, exp)
    written = [json.loads(p.read_text()) for p in (killed / "artifacts" / exp / "rank" / "param_transfer").rglob("*.json")]
    tried = {t["run_id"] for r in written for t in r["trials"]}
    assert len(kept) >= 3 and kept <= tried  # the finished trials' records and MLflow runs, reused
    trained = [r for r in runs if r.data.tags.get("stage") == "rank" and r.data.tags.get("strategy") == "param_transfer"]
    assert len([r for r in trained if r.info.status == "FINISHED"]) == len(tried)  # no trial trained twice
    assert not (killed / ".resume" / exp).exists()


def test_multitask_killed_mid_fit_resumes_the_fit_and_reuses_finished_runs(tmp_path):
    from pipeline.stages import multitask, prepare

    exp = "synthetic_related"
    grid = [
        f"exp={exp}",
        "scheme=hard",
        "weighting=equal",
        "trainer.workers=1",
        "multitask.max_epochs=25",
        "multitask.patience=25",
        f"multitask_experiments.{exp}.data.n_tasks=3",
    ]
    ref = tmp_path / "ref"
    ref.mkdir()
    cfg, _ = run_stages(ref, [prepare], grid)
    killed = copy_inputs(ref, tmp_path / "killed", exp, ["data"])
    proc = start("multitask", killed, grid)
    kill_when(proc, lambda: epochs_on_disk(killed, exp, "multitask", "hard_equal_1_*") >= 3, "seed 1's third epoch")
    check_no_half_output(killed / "artifacts" / exp / "multitask")
    at = epochs_on_disk(killed, exp, "multitask", "hard_equal_1_*")

    out = finish("multitask", killed, grid)
    assert "resumed: 1 of 2 grid runs reused" in out and f"seed=1: resumed from epoch {at}" in out
    run_stages(ref, [multitask], grid)
    assert comparable(killed / "artifacts" / exp / "multitask") == comparable(ref / "artifacts" / exp / "multitask")
    check_runs(killed, cfg, exp)
