"""Atomic writes: a failed stage leaves the previous output or nothing, never half a file."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _scratch_prefix(target: Path) -> str:
    """The scratch name's prefix for `target`, with this process's id; scratch copies a killed process
    left beside `target` (they would sit in a folder a DVC stage depends on) are removed first."""
    import psutil

    for old in target.parent.glob(f".{target.name}.pid*.*"):
        pid = old.name[len(target.name) + 5 :].split(".", 1)[0]
        if pid.isdigit() and not psutil.pid_exists(int(pid)):
            shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink(missing_ok=True)
    return f".{target.name}.pid{os.getpid()}."


@contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield a scratch directory that replaces `target` only if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=_scratch_prefix(target), dir=target.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    os.chmod(tmp, 0o777 & ~umask())  # mkdtemp makes 0700; outputs should be as readable as any file
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)


@contextmanager
def atomic_file(target: str | Path, mode: str = "w") -> Iterator[Any]:
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_scratch_prefix(target), dir=target.parent)
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
    except BaseException:
        os.unlink(tmp)
        raise
    os.chmod(tmp, 0o666 & ~umask())  # mkstemp makes 0600
    os.replace(tmp, target)


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_file(path) as fh:
        json.dump(obj, fh, indent=2, sort_keys=True)
        fh.write("\n")


def write_tree(root: str | Path, files: dict[str, Any]) -> None:
    """JSON files {path under root: content}: a new `root` appears whole or not at all (`atomic_dir`), as
    under `dvc repro`, which deletes a stage's outs first; into an existing one (results of other
    selections beside them) each file is written atomically."""
    root = Path(root)
    if root.exists():
        for rel, obj in files.items():
            write_json(root / rel, obj)
        return
    with atomic_dir(root) as tmp:
        for rel, obj in files.items():
            write_json(tmp / rel, obj)


def read_json(path: str | Path, what: str) -> Any:
    from pipeline.errors import PipelineError

    path = Path(path)
    if not path.exists():
        raise PipelineError(f"missing upstream output {path} ({what}); run the stage that makes it first, e.g. `dvc repro`")
    return json.loads(path.read_text())
