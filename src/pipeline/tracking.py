"""MLflow conventions in one place: store location, run names, tags, params, lineage.

One MLflow experiment per scenario; run names `<stage>[/<variant>][/k<budget>][/seed<k>]`; every run
tagged with stage, scenario, seed, git commit and data hash, plus `source_run_id` where a
source model was used, so the UI's compare view lines strategies up and lineage can be followed.
"""

from __future__ import annotations

import functools
import os
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REQUIRED_TAGS = ("stage", "scenario", "seed", "git_commit", "data_hash")  # on every run; stages add theirs


def tracking_uri(configured: str | None = None) -> str:
    """`MLFLOW_TRACKING_URI` (a server) wins; else the configured URI; else SQLite at the repo root."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or configured or "sqlite:///mlflow.db"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        # Relative SQLite paths would follow the working directory; pin them to where we run.
        uri = "sqlite:///" + str(Path(uri[len("sqlite:///") :]).resolve())
    return uri


@functools.lru_cache(maxsize=1)
def git_commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = str(v)[:6000]
    return out


def digest(obj: Any) -> str:
    """A short content hash of a JSON-able config: equal configs, equal digests."""
    import hashlib
    import json

    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_name(stage: str, variant: str | None, seed: int | None, budget: int | None = None) -> str:
    parts = [stage] + ([variant] if variant else []) + ([f"k{budget}"] if budget is not None else []) + ([f"seed{seed}"] if seed is not None else [])
    return "/".join(parts)


class Tracker:
    """Thin layer over `MlflowClient` for one scenario (= one MLflow experiment)."""

    def __init__(self, scenario: str, uri: str | None = None, artifact_root: str = "mlartifacts") -> None:
        from mlflow.tracking import MlflowClient

        self.uri = tracking_uri(uri)
        self.scenario = scenario
        self.client = MlflowClient(tracking_uri=self.uri)
        exp = self.client.get_experiment_by_name(scenario)
        if exp is None:
            location = None
            if self.uri.startswith("sqlite:"):
                # Keep artifacts beside the embedded store, not in whatever directory a stage ran from.
                location = Path(artifact_root).resolve().joinpath(scenario).as_uri()
            self.experiment_id = self.client.create_experiment(scenario, artifact_location=location)
        else:
            self.experiment_id = exp.experiment_id

    def start(
        self,
        stage: str,
        *,
        variant: str | None = None,
        seed: int | None = None,
        data_hash: str,
        params: Mapping[str, Any] | None = None,
        budget: int | None = None,
        source_run_id: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> str:
        """A new run named `<stage>[/<variant>][/k<budget>][/seed<k>]`; its id.

        variant: what distinguishes the run within its stage (a strategy, a method); its tag is the
        caller's business (`tags={"strategy": ...}`), since a strategy and a method are not the same thing.
        """
        from mlflow.entities import Param

        all_tags = {
            "stage": stage,
            "scenario": self.scenario,
            "seed": "" if seed is None else str(seed),
            "git_commit": git_commit(),
            "data_hash": data_hash,
        }
        if budget is not None:
            all_tags["budget"] = str(budget)
        if source_run_id:
            all_tags["source_run_id"] = source_run_id
        all_tags.update(tags or {})
        run = self.client.create_run(self.experiment_id, run_name=run_name(stage, variant, seed, budget), tags=all_tags)
        run_id = run.info.run_id
        flat = list(flatten(params or {}).items())
        for i in range(0, len(flat), 100):  # MLflow's per-call limit
            self.client.log_batch(run_id, params=[Param(k, v) for k, v in flat[i : i + 100]])
        return run_id

    @contextmanager
    def run(self, stage: str, **kwargs: Any) -> Iterator[str]:
        """`start` a run, yield its id, and end it FINISHED, or FAILED if the block raises (then re-raise)."""
        run_id = self.start(stage, **kwargs)
        try:
            yield run_id
        except BaseException:
            self.finish(run_id, "FAILED")
            raise
        self.finish(run_id)

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:
        import time

        now = int(time.time() * 1000)
        self.log_recorded(run_id, [(k, float(v), step, now) for k, v in metrics.items()])

    def log_text(self, run_id: str, text: str, name: str) -> None:
        self.client.log_text(run_id, text, name)

    def log_artifact(self, run_id: str, path: str | Path, subdir: str | None = None) -> None:
        self.client.log_artifact(run_id, str(path), subdir)

    def log_recorded(self, run_id: str, recorded) -> None:
        """Metrics a `pipeline.training.fit.Recorder` kept during training: (key, value, step, ms)."""
        from mlflow.entities import Metric

        items = [Metric(k, v, ms, step) for k, v, step, ms in recorded]
        for i in range(0, len(items), 1000):  # MLflow's per-call limit
            self.client.log_batch(run_id, metrics=items[i : i + 1000])

    def finish(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status)
