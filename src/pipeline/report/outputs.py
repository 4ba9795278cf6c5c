"""A report's files, written all at once: every output goes to a scratch directory first and is moved
into `reports/` only when all of them exist, so a failure on the way leaves no stray or half-new file.
Then the report and its figures are logged to MLflow."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError


def _save(value: Any, path: Path) -> None:
    if hasattr(value, "savefig"):  # a matplotlib Figure
        value.savefig(path)
    elif isinstance(value, str):
        path.write_text(value)
    else:  # DVC metrics: sorted, indented JSON, as `pipeline.io.write_json` writes it
        path.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")


class Directory(dict):
    """A directory output, {file name: value}: it replaces the whole directory, so a file of a row that
    no longer exists (a strategy dropped from the config) does not linger in it."""


def write(reports: str | Path, files: Mapping[str, Any]) -> dict[str, Path]:
    """Write `files` ({path relative to `reports`: text, JSON-able dict, Figure or Directory}); their
    final paths.

    Outputs are rendered into a hidden scratch directory inside `reports` (same filesystem, so each
    move is an atomic rename) and moved in only after every one was written. A Directory's previous
    contents are moved aside by a rename and removed after the new one is in place.
    """
    from pipeline.io import umask

    reports = Path(reports)
    targets = {rel: reports / rel for rel in files}
    for rel in files:  # names in these paths come from the config (checked there too)
        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            raise PipelineError(f"report output {rel!r} would lie outside {reports}")
    reports.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".report.", dir=reports))
    mode = 0o666 & ~umask()
    try:
        for i, (rel, value) in enumerate(files.items()):
            if isinstance(value, Directory):
                folder = scratch / str(i)
                folder.mkdir()
                os.chmod(folder, 0o777 & ~umask())
                for name, content in value.items():
                    _save(content, folder / name)
                    os.chmod(folder / name, mode)
                continue
            path = scratch / f"{i}{Path(rel).suffix}"
            _save(value, path)
            os.chmod(path, mode)
        for rel, target in targets.items():
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.is_dir() != isinstance(files[rel], Directory) and target.exists():
                raise PipelineError(f"cannot write the report output {target}: a {'directory' if target.is_dir() else 'file'} is in the way")
        for i, (rel, target) in enumerate(targets.items()):
            if isinstance(files[rel], Directory):
                if target.exists():
                    os.replace(target, scratch / f"{i}.previous")
                os.replace(scratch / str(i), target)
            else:
                os.replace(scratch / f"{i}{target.suffix}", target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return targets


def metric_key(name: str) -> str:
    """An MLflow metric name: letters, digits and `_-./ ` only (anything else, such as the `+` of a
    multitask method, becomes `.`)."""
    return re.sub(r"[^A-Za-z0-9_\-./ ]", ".", name)


def log(
    cfg,
    name: str,
    artifacts: Mapping[str, Path],
    *,
    data_hash: str,
    params: Mapping[str, Any],
    source_run_id: str | None = None,
    metrics: Mapping[str, float] | None = None,
    run_metrics: Mapping[str, Mapping[str, float]] | None = None,
) -> str:
    """A `report` run in MLflow holding `artifacts` ({relative path: file}, kept in their folders) and
    `metrics`; `run_metrics` ({run id: metrics}) are logged back onto the runs the report compared."""
    from pipeline.tracking import Tracker

    tracker = Tracker(name, cfg.tracking.uri)
    with tracker.run("report", data_hash=data_hash, params=params, source_run_id=source_run_id) as run_id:
        if metrics:
            tracker.log_metrics(run_id, metrics)
        for rel, path in artifacts.items():
            folder = str(Path(rel).parent)
            tracker.log_artifact(run_id, path, None if folder == "." else folder)
    for other, values in (run_metrics or {}).items():
        tracker.log_metrics(other, values)
    return run_id
