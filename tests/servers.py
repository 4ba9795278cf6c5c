"""Real servers for tests, on 127.0.0.1 only: a free port, an `mlflow server` (started, waited for, stopped)
and a throwaway PostgreSQL cluster. Plain module, imported by the test modules that need them."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from support import BIN


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen, grace: float = 20) -> None:
    """SIGTERM to the process group we started (the server and its workers), SIGKILL after `grace` seconds."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@contextmanager
def mlflow_server(backend_uri: str, folder: Path, *extra: str, timeout: float = 120) -> Iterator[str]:
    """`mlflow server` with `backend_uri` as its store, new artifacts proxied over HTTP into
    `folder`/artifacts, its log in `folder`/mlflow-server.log; yields its URL once /health answers.
    Job execution off and one worker: it starts in seconds, not half a minute (README "Scaling out")."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = folder / "mlflow-server.log"
    cmd = [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    cmd += ["--backend-store-uri", backend_uri, "--artifacts-destination", str(folder / "artifacts"), *extra]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url + "/health", timeout=2):
                    break
            except (urllib.error.URLError, OSError):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"mlflow server at {url} not healthy after {timeout} s:\n{log.read_text()[-3000:]}") from None
                time.sleep(0.3)
        yield url
    finally:
        _stop(proc)


def postgres_bin() -> Path | None:
    """The folder with PostgreSQL's initdb and pg_ctl: on PATH, or Debian's /usr/lib/postgresql/<version>/bin."""
    if found := shutil.which("pg_ctl"):
        return Path(found).resolve().parent  # a link to the versioned folder, which has createdb too
    folders = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0)
    return next((Path(p) for p in reversed(folders) if (Path(p) / "initdb").exists() and (Path(p) / "pg_ctl").exists()), None)


@contextmanager
def postgres(database: str = "mlflow") -> Iterator[str]:
    """A throwaway PostgreSQL cluster on 127.0.0.1 (a free port; its unix socket in its own tmp dir) with
    `database` created; yields its SQLAlchemy URI. PostgreSQL refuses to run as root, so as root the cluster
    runs as the `postgres` user (Debian's package makes it) or `nobody`."""
    pg = postgres_bin()
    assert pg is not None, "no PostgreSQL binaries (initdb, pg_ctl): skip before calling"
    home = Path(tempfile.mkdtemp(prefix="pg-"))  # not under pytest's tmp: that is private to root
    prefix: list[str] = []
    if os.geteuid() == 0:
        user = "postgres" if _user_exists("postgres") else "nobody"
        shutil.chown(home, user)
        prefix = ["runuser", "-u", user, "--"]
    data, port = home / "data", free_port()

    def run(*cmd: str) -> None:
        subprocess.run([*prefix, *cmd], check=True, capture_output=True, text=True, cwd=home)

    started = False
    try:
        # trust on loopback: a test cluster, gone when the test ends; fsync off for speed.
        run(str(pg / "initdb"), "-D", str(data), "-U", "mlflow", "--auth=trust", "-E", "UTF8", "--no-sync")
        opts = f"-h 127.0.0.1 -p {port} -k {home} -F"
        run(str(pg / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(home / "log"), "-w", "-t", "60", "start")
        started = True
        run(str(pg / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "mlflow", database)
    except subprocess.CalledProcessError as exc:
        log = (home / "log").read_text()[-2000:] if (home / "log").exists() else ""
        _stop_postgres(prefix, pg, data, home, started)
        raise RuntimeError(f"{' '.join(exc.cmd)} failed ({exc.returncode}): {exc.stderr[-2000:]}\n{log}") from None
    try:
        yield f"postgresql://mlflow@127.0.0.1:{port}/{database}"
    finally:
        _stop_postgres(prefix, pg, data, home, started)


def _stop_postgres(prefix: list[str], pg: Path, data: Path, home: Path, started: bool) -> None:
    if started:
        subprocess.run([*prefix, str(pg / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"], capture_output=True)
    shutil.rmtree(home, ignore_errors=True)


def _user_exists(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True
