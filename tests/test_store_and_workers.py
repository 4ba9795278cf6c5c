"""Faults around a stage: a tracking store that is down or is not an MLflow store stops the stage
before it trains, naming the URI, within seconds; a killed stage takes its worker processes with it."""

from __future__ import annotations

import http.server
import os
import shutil
import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import pytest

from pipeline.errors import PipelineError
from pipeline.tracking import check_store
from servers import free_port
from support import BIN, ROOT, TINY, run_cli


def test_a_sqlite_store_that_is_not_one_is_an_error_naming_it(tmp_path):
    text = tmp_path / "notes.db"
    text.write_text("not a database at all, but long enough to have a header\n" * 4)
    with pytest.raises(PipelineError, match=rf"tracking store sqlite:///{text}: {text} is not a SQLite database"):
        check_store(f"sqlite:///{text}")
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as db:
        db.execute("create table invoices (id integer)")
    with pytest.raises(PipelineError, match=r"is a SQLite database but not an MLflow store \(tables \['invoices'\]\)"):
        check_store(f"sqlite:///{other}")
    assert [r[0] for r in sqlite3.connect(other).execute("select name from sqlite_master")] == ["invoices"]  # untouched
    with pytest.raises(PipelineError, match=r"the folder .*/nowhere does not exist"):
        check_store(f"sqlite:///{tmp_path / 'nowhere' / 'mlflow.db'}")
    assert check_store(f"sqlite:///{tmp_path / 'new.db'}") == f"sqlite:///{tmp_path / 'new.db'}"  # MLflow creates it


def test_a_server_that_answers_otherwise_is_named_with_its_status(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)  # no /health: 404
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        uri = f"http://127.0.0.1:{server.server_address[1]}"
        with pytest.raises(PipelineError, match=rf"tracking store {uri} answered HTTP 404 to /health"):
            check_store(uri)
    finally:
        server.shutdown()
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "2"  # capped for the rest of the stage


@pytest.mark.parametrize("stage", ["pretrain", "finetune", "multitask"])
def test_no_server_at_the_uri_stops_the_stage_in_seconds_not_minutes(tmp_path, stage):
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    exp = "exam_schools" if stage == "multitask" else "mnist_to_digits"
    start = time.perf_counter()
    res = run_cli(stage, f"exp={exp}", f"tracking.uri={uri}", cwd=tmp_path, env={"PIPELINE_CONF_DIR": str(ROOT / "conf")})
    seconds = time.perf_counter() - start
    assert res.returncode == 2, res.stderr[-2000:]
    assert f"error: tracking store {uri} does not answer" in res.stderr and "Traceback" not in res.stderr
    assert seconds < 60, seconds  # MLflow's own retries would take about 4 minutes
    assert not (tmp_path / "artifacts").exists()


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [int(p) for p in out]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")  # a zombie has ended; only its parent's reaping is left


@pytest.mark.skipif(not Path("/proc").is_dir() or shutil.which("pgrep") is None, reason="needs Linux /proc and pgrep")
def test_a_killed_stage_takes_its_workers_with_it(pipeline_run, tmp_path):
    for part in ("data", "sources", "knowledge"):
        shutil.copytree(pipeline_run["tmp"] / "artifacts" / "mnist_to_digits" / part, tmp_path / "artifacts" / "mnist_to_digits" / part)
    long = ["transfer.max_epochs=100000", "transfer.patience=100000", "trainer.workers=2", "strategy=scratch", "transfer.seeds=[0,1]"]
    args = [*TINY, *long, f"paths.artifacts={tmp_path / 'artifacts'}", f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}"]
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "PIPELINE_CONF_DIR": str(ROOT / "conf")}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.Popen([str(BIN / "pipeline"), "finetune", "exp=mnist_to_digits", *args], cwd=tmp_path, env=env, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while len(workers := _children(proc.pid)) < 2 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.5)
        assert len(workers) >= 2, (
            f"the stage never started its workers: {proc.poll()} {proc.stderr.read().decode()[-1500:] if proc.poll() is not None else ''}"
        )
        time.sleep(2)  # the workers are training
        assert all(_alive(w) for w in workers)
        proc.send_signal(signal.SIGKILL)  # no handler runs: only the kernel can end the workers now
        proc.wait(timeout=30)
        deadline = time.time() + 20
        while any(_alive(w) for w in workers) and time.time() < deadline:
            time.sleep(0.2)
        assert not any(_alive(w) for w in workers), "orphaned workers kept training after their stage was killed"
    finally:
        for w in _children(proc.pid):
            os.kill(w, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
