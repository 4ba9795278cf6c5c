"""Faults around a stage: a tracking store that is down or is not an MLflow store stops the stage
before it trains, naming the URI, within seconds; a killed stage takes its worker processes with it."""

from __future__ import annotations

import http.server
import json
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


# A store that fails mid-grid, for real: the folder of its SQLite file made unwritable once some runs
# have finished, so the next transaction cannot write its journal (SQLite: "unable to open database
# file", MLflow: TEMPORARILY_UNAVAILABLE). Root ignores permissions: as root the folder is also made
# immutable (chattr +i), which stops root too.
def _lock(folder: Path) -> None:
    folder.chmod(0o555)
    if os.geteuid() == 0:
        subprocess.run(["chattr", "+i", str(folder)], check=True, capture_output=True)


def _unlock(folder: Path) -> None:
    if os.geteuid() == 0:
        subprocess.run(["chattr", "-i", str(folder)], capture_output=True)
    folder.chmod(0o755)


def _finished(db: Path, stage: str) -> dict[str, str]:
    """{run id: run name} of the runs of `stage` that ended FINISHED, read from the SQLite file itself."""
    with sqlite3.connect(db, timeout=20) as con:  # not read-only: it may have to roll back a journal left behind
        rows = con.execute(
            "select r.run_uuid, r.name from runs r join tags t on t.run_uuid = r.run_uuid"
            " where t.key = 'stage' and t.value = ? and r.status = 'FINISHED'",
            (stage,),
        ).fetchall()
    return dict(rows)


def _fail_store_after(db: Path, stage: str, runs: int) -> threading.Thread:
    """Lock the store's folder once `runs` runs of `stage` have finished (polled every 10 ms)."""

    def watch():
        deadline = time.time() + 300
        while time.time() < deadline:
            try:
                if db.exists() and len(_finished(db, stage)) >= runs:
                    _lock(db.parent)
                    return
            except sqlite3.Error:  # the store being created
                pass
            time.sleep(0.01)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


@pytest.fixture
def store_dir(tmp_path):
    if os.geteuid() == 0 and (shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(tmp_path)], capture_output=True).returncode):
        pytest.skip("as root, making a folder unwritable needs chattr +i")
    if os.geteuid() == 0:
        subprocess.run(["chattr", "-i", str(tmp_path)], check=True)
    folder = tmp_path / "store"
    folder.mkdir()
    yield folder
    _unlock(folder)


def _check_incomplete(err: str, out: Path, db: Path, stage: str, planned: list[str]) -> dict:
    """The error and `<out>.incomplete/`: exactly the results whose runs the store holds as FINISHED are
    saved, and every other result of the grid is named as not logged."""
    incomplete = out.with_name(out.name + ".incomplete")
    summary = json.loads((incomplete / "incomplete.json").read_text())
    _unlock(db.parent)  # a transaction cut short may have left its journal: reading the store rolls it back
    finished = _finished(db, stage)
    saved = {str(p.relative_to(incomplete)): json.loads(p.read_text()) for p in incomplete.rglob("*.json") if p.name != "incomplete.json"}
    assert {r["run_id"] for r in saved.values()} <= set(finished), "a saved result whose run the store does not hold as finished"
    assert 0 < len(saved) < len(planned), (len(saved), planned)  # the store failed mid-grid, not before or after
    assert sorted(summary["logged"] + summary["not_logged"]) == sorted(planned)
    assert len(summary["logged"]) == len(saved)
    assert f"the tracking store sqlite:///{db} failed mid-grid (" in err  # SQLite's words: unable to open database file, disk I/O error
    assert f"{len(saved)} of {len(planned)} results were logged and are saved in {incomplete}" in err
    assert f"not logged: {', '.join(summary['not_logged'][:8])}" in err
    assert not out.exists(), "the grid's own output is written only when it completes"
    return saved


def test_a_store_that_fails_mid_finetune_grid_keeps_the_finished_results(pipeline_run, make_cfg, tmp_path, store_dir):
    from pipeline.stages import finetune

    for part in ("data", "sources", "knowledge"):
        shutil.copytree(pipeline_run["tmp"] / "artifacts" / "mnist_to_digits" / part, tmp_path / "artifacts" / "mnist_to_digits" / part)
    db = store_dir / "mlflow.db"
    cfg = make_cfg("strategy=[scratch,linear]", "transfer.seeds=[0,1,2,3]", "trainer.workers=1")
    cfg.tracking.uri = f"sqlite:///{db}"
    watcher = _fail_store_after(db, "finetune", 10)  # the 8 linear baselines first, then 2 of the 8 scratch runs
    with pytest.raises(PipelineError) as err:
        finetune.run(cfg)
    watcher.join(5)
    planned = [f"scratch k={k} seed={s}" for k in (1, 3) for s in range(4)] + [f"linear k={k} seed={s}" for k in (1, 3) for s in range(4)]
    saved = _check_incomplete(str(err.value), tmp_path / "artifacts" / "mnist_to_digits" / "finetune", db, "finetune", planned)
    assert str(err.value).startswith("finetune mnist_to_digits: the tracking store")
    assert "linear/k1_seed0.json" in saved and "scratch/k1_seed0.json" in saved and "scratch/k3_seed3.json" not in saved


def test_a_store_that_fails_mid_multitask_grid_keeps_the_finished_results(make_cfg, tmp_path, store_dir):
    from pipeline.stages import multitask, prepare

    db = store_dir / "mlflow.db"
    cfg = make_cfg(
        "exp=synthetic_related",
        "multitask.seeds=[0,1,2,3,4,5]",
        "multitask.max_epochs=4",
        "multitask.min_steps_per_epoch=2",
        "multitask_experiments.synthetic_related.data.n_tasks=3",
        "+multitask_experiments.synthetic_related.schemes=[hard]",
        "+multitask_experiments.synthetic_related.weightings=[equal]",
        "trainer.workers=1",
    )
    cfg.tracking.uri = f"sqlite:///{db}"
    prepare.run(cfg)
    watcher = _fail_store_after(db, "multitask", 4)  # the 2 scikit-learn baselines, then 2 of the 6 networks
    with pytest.raises(PipelineError) as err:
        multitask.run(cfg)
    watcher.join(5)
    planned = ["ridge_per_task+sklearn seed=0", "ridge_pooled+sklearn seed=0"] + [
        f"{m}+equal seed={s}" for m in ("single_task", "hard") for s in range(6)
    ]
    saved = _check_incomplete(str(err.value), tmp_path / "artifacts" / "synthetic_related" / "multitask", db, "multitask", planned)
    assert "ridge_pooled+sklearn/seed0.json" in saved and "single_task+equal/seed0.json" in saved and "hard+equal/seed5.json" not in saved
    print(err.value)
