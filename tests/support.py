"""Test helpers shared by the test modules (plain module: two conftest.py files cannot both be imported as `conftest`)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
BIN = Path(sys.executable).parent

# Small enough to run every stage in seconds, large enough that training does something.
TINY = [
    "pretrain.max_epochs=3",
    "transfer.max_epochs=3",
    "transfer.patience=2",
    "transfer.min_steps_per_epoch=2",
    "transfer.seeds=[0,1]",
    "transfer.tuning.trials=1",  # tests/test_tuning_stage.py tunes
    "multitask.seeds=[0,1]",
    "experiments.mnist_to_digits.budgets=[1,3]",
    "trainer.progress_bar=false",
]


# The survey's synthetic linear tasks: in conf/experiment/ but not in the default study.
SYNTHETIC = [f"+experiment@multitask_experiments.{n}={n}" for n in ("synthetic_related", "synthetic_unrelated")]


def _pretrain_candidates(cfg: DictConfig) -> dict:
    from pipeline.stages import pretrain

    return pretrain.run_candidates(cfg)


# A stage-like step for run_stages: every candidate source of the experiment, as its DVC stages would.
candidates = SimpleNamespace(__name__="pipeline.stages.candidates", run=_pretrain_candidates)


def cpu_settings(steps_per_batch: int = 0):
    """The trainer settings unit tests fit with: one CPU process and thread, no bar, as conf/trainer/ spells them."""
    from pipeline.config import TrainerConfig

    return TrainerConfig(
        accelerator="cpu",
        devices=1,
        strategy=None,
        num_threads=1,
        workers=1,
        progress_bar=False,
        deterministic=False,
        val_every_n_epochs=1,
        steps_per_batch=steps_per_batch,
    )


def run_stages(tmp: Path, stages, overrides: list[str] = (), zoo: bool = False) -> tuple[DictConfig, dict]:
    """Run `stages` in order on the real conf/ (TINY plus `overrides`) with tmp as working directory
    and store: (the config, {stage name: what its run returned}). zoo: keep conf/'s candidate sources."""
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    old = os.getcwd()
    os.chdir(tmp)  # contextlib.chdir needs Python 3.11; the project supports 3.10
    try:
        cfg = compose_cfg(tmp, list(overrides), zoo=zoo)
        return cfg, {stage.__name__.rsplit(".", 1)[1]: stage.run(cfg) for stage in stages}
    finally:
        os.chdir(old)


def compose_cfg(tmp: Path, overrides: list[str] = (), zoo: bool = False) -> DictConfig:
    """The real conf/ shrunk (TINY), its stores in tmp; without `zoo` no candidate sources (each would
    need its own pretrain run), as a user's experiment without `sources:` has."""
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose("config", overrides=[*TINY, *SYNTHETIC, *overrides])
    with open_dict(cfg):
        if not zoo:
            cfg.sources = {}
        cfg.paths.artifacts = str(tmp / "artifacts")
        cfg.paths.reports = str(tmp / "reports")
        cfg.tracking.uri = f"sqlite:///{tmp / 'mlflow.db'}"
    return cfg


def mlflow_runs(cfg: DictConfig, experiment: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(cfg.tracking.uri)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no MLflow experiment {experiment}"
    return client, client.search_runs([exp.experiment_id], max_results=1000)


def run_cli(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", **(env or {})}
    full_env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run([str(BIN / "pipeline"), *args], cwd=cwd, capture_output=True, text=True, env=full_env)


def sh(*cmd: str, cwd: Path) -> str:
    """A command line tool (dvc, git, pipeline-params) as a user runs it: the project's bin/ on PATH, a
    git identity, no MLFLOW_TRACKING_URI from the caller; its output, or a failed assert with it."""
    env = {
        **os.environ,
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    res = subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True, env=env)
    assert res.returncode == 0, f"{' '.join(cmd)} failed:\n{res.stdout}\n{res.stderr}"
    return res.stdout + res.stderr


def copy_project(dst: Path) -> Path:
    """A copy of the tracked project files (what a fresh clone has), as a new git repo."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        src = ROOT / f
        if src.is_file():
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / f)
    return dst


def read_metrics(reports: Path, name: str) -> dict[str, dict[str, float]]:
    """reports/metrics/<name>/ as the report wrote it for `dvc metrics show`: {row (file stem): values}."""
    import json

    return {p.stem: json.loads(p.read_text()) for p in sorted((Path(reports) / "metrics" / name).glob("*.json"))}
