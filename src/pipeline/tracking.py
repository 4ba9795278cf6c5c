"""MLflow conventions in one place: store location, run names, tags, params, lineage.

One MLflow experiment per scenario, of MLflow's training kind (`mlflow.experimentKind`:
`custom_model_development`). Run names are short: `<strategy|method|stage>[ k<budget>][ s<seed>]`
(`param_transfer k3 s0`, `hard+mgda s1`, `pretrain s0`), with ` job<n>` appended for the jobs of a
Hydra multirun. Every run is tagged with stage, scenario, seed, git commit, data hash and launcher
(`dvc`, `multirun`, `cli`, `python`); strategy, budget, seed, scheme and weighting are params as well
as tags, so the compare view plots metrics against them. The task set a run used is an MLflow dataset
input (digest: our content hash `data_hash`); the pretrain run logs the source model as an MLflow
LoggedModel, and the runs that use it have it as a model input (and `source_run_id`, with a link in
the run's description).
"""

from __future__ import annotations

import functools
import os
import socket
import subprocess
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError

REQUIRED_TAGS = ("stage", "scenario", "seed", "git_commit", "data_hash")  # on every run; stages add theirs

# The tag MLflow's UI reads to tell a training experiment (runs first) from a GenAI one (traces first).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
# Tags that are logged as params too (when a run has them), so charts can put them on an axis.
PARAM_TAGS = ("strategy", "budget", "seed", "trial", "scheme", "weighting")
# Files the pipeline itself rewrites while it runs (besides the outs of dvc.yaml): not code changes.
PIPELINE_FILES = ("dvc.lock", "params.yaml")


def store_root() -> Path:
    """The folder a relative store path or artifact root is relative to: the DVC project's root when DVC
    runs the stage (`DVC_ROOT`), else the working directory. DVC sets `DVC_ROOT` for every stage, and for
    a queued or `--temp` experiment points it at the user's repository, not at the temporary copy under
    `.dvc/tmp/exps/` the stage runs in (and which is deleted afterwards, with any store inside it)."""
    return Path(os.environ.get("DVC_ROOT") or ".").resolve()


def tracking_uri(configured: str | None = None) -> str:
    """`MLFLOW_TRACKING_URI` (a server) wins; else the configured URI; else SQLite at the repo root."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or configured or "sqlite:///mlflow.db"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        # Relative SQLite paths would follow the working directory; pin them to the project (`store_root`).
        uri = "sqlite:///" + str((store_root() / uri[len("sqlite:///") :]).resolve())
    return uri


def ui_hint(uri: str) -> str:
    """How a report tells its reader to browse the runs in `uri`: a server serves its own UI."""
    return f"the tracking server {uri}" if uri.startswith(("http://", "https://")) else f"`mlflow ui --backend-store-uri {uri}`"


def check_store(configured: str | None = None) -> str:
    """The tracking URI (`tracking_uri`), checked before a stage trains anything: a server that does
    not answer, a file that is not an MLflow SQLite store, or a store that cannot be written is an
    error naming the URI within seconds (MLflow's client retries for about 4 minutes first). For a
    server, MLflow's HTTP retries and timeout are also capped for the rest of the process unless the
    user set them, so a server that goes away mid-grid fails in seconds too."""
    uri = tracking_uri(configured)
    if uri.startswith(("http://", "https://")):
        import urllib.error
        import urllib.parse
        import urllib.request

        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=10):
                pass
        except urllib.error.HTTPError as exc:  # it answered, but not as an MLflow server would
            hint = " (a server reached by a name it does not expect answers 403: start it with --allowed-hosts)" if exc.code == 403 else ""
            raise PipelineError(f"tracking store {uri} answered HTTP {exc.code} to /health{hint}") from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise PipelineError(
                f"tracking store {uri} does not answer ({reason}); start the server, or unset MLFLOW_TRACKING_URI to use tracking.uri"
            ) from None
        # MLflow 3 answers /health whatever the Host header, but refuses its API to a host name missing
        # from --allowed-hosts: ask the API too, or the stage would fail at its first run with a traceback.
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/api/2.0/mlflow/experiments/get-by-name?experiment_name=Default", timeout=10):
                pass
        except urllib.error.HTTPError as exc:
            body = exc.read().decode(errors="replace")[:200]
            if exc.code == 403 and "Host header" in body:
                host = urllib.parse.urlsplit(uri).netloc
                msg = f"tracking store {uri} refuses the host name {host} ({body}): start the server with --allowed-hosts {host}"
                raise PipelineError(msg) from None
        except (urllib.error.URLError, OSError, ValueError):
            pass  # answered /health a moment ago; MLflow's client reports whatever this is
    elif uri.startswith("sqlite:///"):
        check_sqlite(uri, Path(uri[len("sqlite:///") :]))
    return uri


def check_sqlite(uri: str, path: Path) -> None:
    """The SQLite store `path` as MLflow needs it: a folder it can create the file in, or an MLflow
    database at the schema revision this MLflow knows, that a write transaction can change. The write
    is tried (and rolled back), not inferred from permissions: root ignores them, while an immutable
    file, a read-only mount or a folder where SQLite cannot make its journal stop it all the same."""
    import sqlite3
    import tempfile
    from contextlib import closing

    if not path.parent.is_dir():
        raise PipelineError(f"tracking store {uri}: the folder {path.parent} does not exist")
    if not path.exists():
        try:
            with tempfile.TemporaryFile(dir=path.parent):
                pass
        except OSError as exc:
            raise PipelineError(f"tracking store {uri}: the folder {path.parent} is not writable ({exc.strerror})") from None
        return
    try:
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            tables = {row[0] for row in db.execute("select name from sqlite_master where type='table'")}
            revision = db.execute("select version_num from alembic_version").fetchone() if "alembic_version" in tables else None
    except sqlite3.DatabaseError as exc:
        raise PipelineError(f"tracking store {uri}: {path} is not a SQLite database ({exc})") from None
    if tables and "experiments" not in tables:  # another application's database: MLflow would add its tables to it
        raise PipelineError(f"tracking store {uri}: {path} is a SQLite database but not an MLflow store (tables {sorted(tables)[:5]})")
    if revision:
        check_schema(uri, path, revision[0])
    try:
        with closing(sqlite3.connect(path, timeout=30, isolation_level=None)) as db:
            db.execute("begin immediate")
            db.execute("create table pipeline_write_probe (x integer)")  # a page written: SQLite needs its journal beside the file
            db.execute("rollback")
    except sqlite3.OperationalError as exc:
        name = getattr(exc, "sqlite_errorname", "")
        if name in ("SQLITE_READONLY_DIRECTORY", "SQLITE_CANTOPEN"):
            raise PipelineError(
                f"tracking store {uri}: the folder {path.parent} is read-only ({exc}): SQLite cannot write its journal beside {path.name},"
                " so MLflow cannot log runs"
            ) from None
        if name.startswith("SQLITE_READONLY"):
            raise PipelineError(f"tracking store {uri}: {path} is read-only ({exc}); MLflow cannot log runs to it") from None
        if name == "SQLITE_BUSY":
            raise PipelineError(f"tracking store {uri}: {path} stayed locked by another process for 30 s ({exc})") from None
        raise PipelineError(f"tracking store {uri}: {path} cannot be written ({exc})") from None


def check_schema(uri: str, path: Path, revision: str) -> None:
    """An MLflow store at another schema revision than this MLflow's: MLflow itself fails on it when the
    first run starts, with a traceback. Its migrations (alembic) say whether the store is older, to be
    upgraded, or unknown to this MLflow, made by a newer one."""
    import importlib.metadata
    import importlib.util

    from alembic.script import ScriptDirectory
    from alembic.util import CommandError

    migrations = Path(importlib.util.find_spec("mlflow").origin).parent / "store" / "db_migrations"
    script = ScriptDirectory(str(migrations))
    head, version = script.get_current_head(), importlib.metadata.version("mlflow")
    if revision == head:
        return
    try:
        known = script.get_revision(revision) is not None
    except CommandError:  # alembic's "No such revision"
        known = False
    if known:
        raise PipelineError(
            f"tracking store {uri}: {path} is at MLflow schema revision {revision}, older than MLflow {version}'s {head};"
            f" back it up, then run `mlflow db upgrade {uri}`"
        )
    raise PipelineError(
        f"tracking store {uri}: {path} is at MLflow schema revision {revision}, which MLflow {version} does not know (a newer MLflow"
        " made it); upgrade MLflow, or point tracking.uri at another store"
    )


# MLflow's error codes for a store that stopped answering: SQLite's OperationalError (read-only, locked,
# disk full or I/O), a server that does not answer or answers 5xx. Other codes are requests the store
# refused (a bug of ours): those keep their traceback.
STORE_DOWN = ("TEMPORARILY_UNAVAILABLE", "INTERNAL_ERROR")


@contextmanager
def store_guard(
    what: str,
    uri: str | None,
    out: Path,
    planned: Callable[[], list[str]],
    finished: Callable[[], list[dict]],
    label: Callable[[dict], str],
    relpath: Callable[[dict], str],
) -> Iterator[None]:
    """Around a grid whose results are written to `out` once all are logged: if the tracking store fails
    mid-grid, the results `finished()` holds (those with a `run_id`: logged) are written to
    `<out>.incomplete/` (`relpath(record)` as in `out`, and `incomplete.json` naming the store, the error
    and the runs not logged), and the error names the runs of `planned()` not logged. A grid that
    completes removes an earlier one's `.incomplete` folder."""
    import shutil

    from mlflow.exceptions import MlflowException

    from pipeline.io import atomic_dir, write_json

    incomplete = out.with_name(out.name + ".incomplete")
    try:
        yield
    except MlflowException as exc:
        if exc.error_code not in STORE_DOWN:
            raise
        done = [r for r in finished() if r.get("run_id")]
        logged = [label(r) for r in done]
        missing = [p for p in planned() if p not in logged]
        inner = exc  # the store's own words: SQLite's error, the HTTP connection's
        while inner.__cause__ or inner.__context__:
            inner = inner.__cause__ or inner.__context__
        reason = (str(inner).strip().splitlines() or [exc.error_code])[0][:300]
        shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
        if not done:  # nothing to keep: no folder
            raise PipelineError(
                f"{what}: the tracking store {tracking_uri(uri)} failed ({reason}); none of the {len(missing)} results was logged"
            ) from exc
        with atomic_dir(incomplete) as tmp:
            for r in done:
                write_json(tmp / relpath(r), r)
            summary = {"stage": what, "tracking_uri": tracking_uri(uri), "error": str(exc.message)[:5000], "logged": logged, "not_logged": missing}
            write_json(tmp / "incomplete.json", summary)
        raise PipelineError(
            f"{what}: the tracking store {tracking_uri(uri)} failed mid-grid ({reason}); {len(done)} of {len(done) + len(missing)} results"
            f" were logged and are saved in {incomplete}; not logged: {shown or 'none'} (listed in {incomplete / 'incomplete.json'});"
            " rerun the stage once the store is back"
        ) from exc
    shutil.rmtree(incomplete, ignore_errors=True)  # an earlier grid's partial results: superseded


def pipeline_outputs(root: Path) -> list[str]:
    """Paths (files, or folders ending in `/`) that `dvc repro` writes, relative to the repo root:
    `dvc.lock`, `params.yaml` (DVC composes it from conf/) and the outs, metrics and plots of dvc.yaml
    (a templated path such as `reports/${key}.md` counts as its folder, `reports/`)."""
    import yaml

    found = set(PIPELINE_FILES)

    def walk(node: Any) -> None:
        if isinstance(node, Mapping):
            for key, value in node.items():
                if key in ("outs", "metrics", "plots") and isinstance(value, list):
                    for item in value:
                        for path in item if isinstance(item, Mapping) else [item]:
                            if isinstance(path, str):
                                add(path)
                else:
                    walk(value)

    def add(path: str) -> None:
        if "${" in path:
            folder = path[: path.index("${")].rpartition("/")[0]
            if folder:
                found.add(folder + "/")
        else:
            found.add(path)

    try:
        walk(yaml.safe_load((root / "dvc.yaml").read_text()) or {})
    except (OSError, yaml.YAMLError):
        pass
    return sorted(found)


def is_output(path: str, outputs: list[str]) -> bool:
    return any(path == o.rstrip("/") or path.startswith(o.rstrip("/") + "/") for o in outputs)


@functools.lru_cache(maxsize=1)
def git_commit() -> str:
    """HEAD, with `-dirty` when tracked files differ from it: code or config, not the files the pipeline
    writes itself (`dvc repro` rewrites dvc.lock and reports/ while its runs are logged)."""
    try:
        git = ["git", "-c", "core.quotepath=off"]
        sha = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        root = Path(subprocess.run([*git, "rev-parse", "--show-toplevel"], capture_output=True, text=True, check=True).stdout.strip())
        # Tracked files that differ from HEAD, staged or not (both sides of a rename).
        changed = subprocess.run([*git, "diff", "HEAD", "--name-only", "--no-renames", "-z"], capture_output=True, text=True, cwd=root).stdout
        outputs = pipeline_outputs(root)
        dirty = any(not is_output(p, outputs) for p in changed.split("\0") if p)
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def launcher() -> dict[str, str]:
    """How this process was started, as tags: `dvc` (a `dvc repro` stage), `multirun` (a job of a Hydra
    `-m` sweep, with its job number), `cli` (one Hydra run) or `python` (a stage called directly)."""
    if os.environ.get("DVC_STAGE"):
        # `dvc exp run` names its experiment (`DVC_EXP_NAME`): the tag ties the run to `dvc exp show`'s row.
        exp = {"dvc_exp": os.environ["DVC_EXP_NAME"]} if os.environ.get("DVC_EXP_NAME") else {}
        return {"launcher": "dvc", "dvc_stage": os.environ["DVC_STAGE"], **exp}
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return {"launcher": "python"}
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode == RunMode.MULTIRUN:
        return {"launcher": "multirun", "hydra_job": str(hydra_cfg.job.num), "hydra_overrides": " ".join(hydra_cfg.overrides.task)[:5000]}
    return {"launcher": "cli"}


def machine_tags(accelerator: str = "cpu", devices: int = 1) -> dict[str, str]:
    """Where a run trained and with what, as tags: `device` (cpu, or the GPU's name), `accelerator` (auto
    resolved as Lightning resolves it), `devices` (processes or devices it trained on) and `version.<x>`
    of python, torch, lightning, mlflow and this package. The same config trains on a GPU with
    `accelerator: auto` and its numbers differ slightly from a CPU run's (dropout draws from the GPU's
    random stream): these tags tell the two apart."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    import torch

    if accelerator == "auto":
        from lightning.fabric.utilities.device_parser import _select_auto_accelerator

        accelerator = _select_auto_accelerator()
    elif accelerator == "gpu":  # Lightning's alias: Apple's GPU where there is one, else CUDA
        accelerator = "mps" if torch.backends.mps.is_available() else "cuda"
    device = torch.cuda.get_device_name(0) if accelerator == "cuda" else accelerator
    tags = {"device": device, "accelerator": accelerator, "devices": str(devices), "version.python": platform.python_version()}
    for package in ("torch", "lightning", "mlflow", "pipeline"):
        try:
            tags[f"version.{package}"] = version(package)
        except PackageNotFoundError:
            tags[f"version.{package}"] = "not installed"
    return tags


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


def run_name(stage: str, variant: str | None, seed: int | None, budget: int | None = None, suffix: str | None = None) -> str:
    """`<variant or stage>[ k<budget>][ s<seed>][ <suffix>]`: short enough for the UI's name column."""
    parts = [variant or stage] + ([f"k{budget}"] if budget is not None else []) + ([f"s{seed}"] if seed is not None else [])
    return " ".join(parts + ([suffix] if suffix else []))


def dataset_input(name: str, data_hash: str, provenance: Mapping[str, Any], context: str):
    """An MLflow dataset input: `name`, our content hash as its digest, and where the data came from (a
    file: its local source; a package's loader: a code source tagged with the package and adapter)."""
    import warnings

    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    if provenance.get("file"):
        with warnings.catch_warnings():  # MLflow registers its local-file source twice and says so on every call
            warnings.simplefilter("ignore", UserWarning)
            source = resolve_dataset_source(str(Path(provenance["file"]).resolve()))
    else:
        keys = ("adapter", "package", "version", "dataset", "representation")
        source = CodeDatasetSource({k: str(provenance[k]) for k in keys if k in provenance})
    meta = MetaDataset(source, name=name, digest=data_hash).to_dict()
    dataset = Dataset(meta["name"], meta["digest"], meta["source_type"], meta["source"])
    return DatasetInput(dataset, [InputTag(MLFLOW_DATASET_CONTEXT, context)])


def experiment_id(client, name: str, uri: str, artifact_root: str = "mlartifacts") -> str:
    """The id of the MLflow experiment `name`, created if the store has none. Jobs of a parallel sweep
    may all find it missing and race to create it: the losers (RESOURCE_ALREADY_EXISTS) take the winner's."""
    from mlflow.exceptions import MlflowException

    exp = client.get_experiment_by_name(name)
    if exp is None:
        location = None
        if uri.startswith("sqlite:"):
            # Keep artifacts beside the embedded store, not in whatever directory a stage ran from.
            location = (store_root() / artifact_root).resolve().joinpath(name).as_uri()
        try:
            return client.create_experiment(name, artifact_location=location, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS" or (exp := client.get_experiment_by_name(name)) is None:
                raise
    if not exp.tags.get(EXPERIMENT_KIND_TAG):  # made before the kind was set: the UI would open on traces
        client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return exp.experiment_id


def log_inputs(client, run_id: str, datasets, models) -> None:
    """`client.log_inputs`, once more if it lost a race: the store creates a dataset on its first use, and
    jobs of a parallel sweep that log the same new dataset at once collide on its unique key (SQLite:
    "UNIQUE constraint failed", PostgreSQL: "duplicate key"). The loser's transaction is rolled back
    whole, so the second call finds the winner's dataset and links it."""
    from mlflow.exceptions import MlflowException

    try:
        client.log_inputs(run_id, datasets=datasets, models=models)
    except MlflowException as exc:
        text = str(exc.message).lower()
        if exc.error_code != "BAD_REQUEST" or ("unique constraint" not in text and "duplicate key" not in text):
            raise
        client.log_inputs(run_id, datasets=datasets, models=models)


@contextmanager
def global_tracking_uri(uri: str) -> Iterator[None]:
    """MLflow's global tracking URI set to `uri` for the block. MLflow's SQL model registry resolves a
    version's `models:/<model_id>` source with a new `MlflowClient()`, on the global URI, not the calling
    client's (its own TODO in `SqlAlchemyStore.create_model_version`): a store other than the default
    would be searched in the wrong database. `mlflow.set_tracking_uri` mirrors itself into the
    environment, so the environment as it was is what is restored."""
    import mlflow

    if mlflow.get_tracking_uri() == uri:
        yield
        return
    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(before)  # None: unset, as it was


class Tracker:
    """Thin layer over `MlflowClient` for one scenario (= one MLflow experiment)."""

    def __init__(self, scenario: str, uri: str | None = None, artifact_root: str = "mlartifacts", trainer=None) -> None:
        """trainer: the stage's trainer settings (conf/trainer/), for its runs' machine tags
        (`machine_tags`); None: a stage that computes on the CPU."""
        from mlflow.tracking import MlflowClient

        self.uri = tracking_uri(uri)
        self.scenario = scenario
        self.client = MlflowClient(tracking_uri=self.uri)
        self.launcher = launcher()
        self.machine = machine_tags(trainer.accelerator, trainer.devices) if trainer is not None else machine_tags()
        self.failed: set[str] = set()  # runs marked failed (`fail`)
        self.experiment_id = experiment_id(self.client, scenario, self.uri, artifact_root)

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
        source_model_id: str | None = None,
        dataset: tuple | None = None,
        tags: Mapping[str, str] | None = None,
        suffix: str | None = None,
    ) -> str:
        """A new run named `<variant or stage>[ k<budget>][ s<seed>][ <suffix>]`; its id.

        variant: what distinguishes the run within its stage (a strategy, a method); its tag is the
        caller's business (`tags={"strategy": ...}`), since a strategy and a method are not the same thing.
        dataset: (role, provenance[, context]) of the task set the run used (`("target", ts.provenance)`):
        logged as the dataset input `<scenario>/<role>` with digest `data_hash`, context `train` unless given.
        source_model_id: the source model (a LoggedModel of the pretrain run) the run used: a model input.
        """
        from mlflow.entities import LoggedModelInput, Param

        all_tags = {
            "stage": stage,
            "scenario": self.scenario,
            "seed": "" if seed is None else str(seed),
            "git_commit": git_commit(),
            "data_hash": data_hash,
            **self.launcher,
            **self.machine,
            # Who runs it: a rerun marks a run FAILED whose process is gone (pipeline.resume.reap).
            "pid": str(os.getpid()),
            "host": socket.gethostname(),
        }
        if budget is not None:
            all_tags["budget"] = str(budget)
        if source_run_id:
            all_tags["source_run_id"] = source_run_id
            all_tags["mlflow.note.content"] = self.lineage_note(source_run_id, source_model_id)
        all_tags.update(tags or {})
        job = self.launcher.get("hydra_job")
        name = run_name(stage, variant, seed, budget, " ".join(filter(None, [suffix, job and f"job{job}"])))
        run = self.client.create_run(self.experiment_id, run_name=name, tags=all_tags)
        run_id = run.info.run_id
        flat = flatten(params or {}) | {k: all_tags[k] for k in PARAM_TAGS if all_tags.get(k)}
        items = list(flat.items())
        for i in range(0, len(items), 100):  # MLflow's per-call limit
            self.client.log_batch(run_id, params=[Param(k, v) for k, v in items[i : i + 100]])
        if dataset or source_model_id:
            datasets = None
            if dataset:
                role, provenance, context = (*dataset, "train")[:3]
                datasets = [dataset_input(f"{self.scenario}/{role}", data_hash, provenance, context)]
            models = [LoggedModelInput(source_model_id)] if source_model_id else None
            log_inputs(self.client, run_id, datasets, models)
        return run_id

    def lineage_note(self, source_run_id: str, source_model_id: str | None) -> str:
        """The run's description (markdown, shown on its page): links to the source run and model."""
        base = f"#/experiments/{self.experiment_id}"
        note = f"Source model from the pretrain run [{source_run_id[:8]}]({base}/runs/{source_run_id})"
        if source_model_id:
            note += f", logged model [{source_model_id}]({base}/models/{source_model_id})"
        return note + "."

    def create_model(self, run_id: str, name: str, *, params: Mapping[str, Any] | None = None, tags: Mapping[str, str] | None = None) -> str:
        """A new MLflow LoggedModel produced by `run_id` (its id goes into the checkpoint before the file
        is written); `model_ready` then uploads the file and marks it READY."""
        model = self.client.create_logged_model(
            self.experiment_id, name=name, source_run_id=run_id, params=flatten(params or {}), tags=dict(tags or {}), model_type="pytorch-checkpoint"
        )
        return model.model_id

    def model_ready(self, run_id: str, model_id: str, path: str | Path) -> None:
        """The model's file uploaded as its artifact, its status READY, and it an output of `run_id`."""
        from mlflow.entities import LoggedModelOutput

        self.client.log_model_artifact(model_id, str(path))
        self.client.finalize_logged_model(model_id, "READY")
        self.client.log_outputs(run_id, [LoggedModelOutput(model_id, step=0)])

    def model_file(self, spec: str, dst: str | Path, key: str = "source_model") -> Path:
        """The checkpoint file of the registered model version `spec` (`models:/<name>/<version>`),
        downloaded under `dst` (a `.pt` checkpoint or TorchScript file); a name or version the registry
        does not hold is an error naming `key` (the config key that gave it), the URI and the store."""
        import mlflow
        from mlflow.exceptions import MlflowException

        parts = spec.removeprefix("models:/").split("/")
        if len(parts) != 2 or not all(parts):
            raise PipelineError(f"{key} {spec}: expected models:/<name>/<version>")
        try:
            uri = self.client.get_model_version_download_uri(*parts)
            local = Path(mlflow.artifacts.download_artifacts(uri, tracking_uri=self.uri, dst_path=str(dst)))
        except MlflowException as exc:
            raise PipelineError(f"{key} {spec}: not found in the model registry at {self.uri} ({exc.message.splitlines()[0]})") from None
        files = [local] if local.is_file() else sorted(local.rglob("*.pt"))
        if not files:
            raise PipelineError(f"{key} {spec}: the registered model has no .pt checkpoint file")
        return files[0]

    def register(self, name: str, model_id: str, run_id: str, tags: Mapping[str, str] | None = None) -> str:
        """A new version of the registered model `name` (created on first use) from the LoggedModel
        `model_id` of `run_id`, so a later experiment or a colleague on the same server can start from it
        as `models:/<name>/<version>`. Returns the version."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.create_registered_model(name, description="Source models pretrained by the pipeline (stage pretrain).")
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":  # registered before, or by a concurrent run: fine
                raise
        with global_tracking_uri(self.uri):
            version = self.client.create_model_version(name, f"models:/{model_id}", run_id=run_id, tags=dict(tags or {}), model_id=model_id)
        self.link_version(model_id, name, int(version.version))
        return str(version.version)

    def link_version(self, model_id: str, name: str, version: int) -> None:
        """The `mlflow.modelVersions` tag by which the UI's logged-model page links to its registered
        versions: a tracking server sets it when a version is created, the embedded store does not."""
        import json

        from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS

        links = json.loads(self.client.get_logged_model(model_id).tags.get(MLFLOW_MODEL_VERSIONS) or "[]")
        if not any(link.get("name") == name and str(link.get("version")) == str(version) for link in links):
            self.client.set_logged_model_tags(model_id, {MLFLOW_MODEL_VERSIONS: json.dumps([*links, {"name": name, "version": version}])})

    @contextmanager
    def run(self, stage: str, **kwargs: Any) -> Iterator[str]:
        """`start` a run, yield its id, and end it FINISHED, or FAILED if the block raises (then re-raise)
        or marked it failed (`fail`)."""
        run_id = self.start(stage, **kwargs)
        try:
            yield run_id
        except BaseException:
            self.finish(run_id, "FAILED")
            raise
        self.finish(run_id, "FAILED" if run_id in self.failed else "FINISHED")

    def fail(self, run_id: str, message: str) -> None:
        """Mark a run failed (it ends FAILED when its `run` block ends) and say why in its `failure` tag
        and description: a run of a grid that failed while the grid goes on."""
        self.failed.add(run_id)
        self.client.set_tag(run_id, "failure", message[:5000])
        note = self.client.get_run(run_id).data.tags.get("mlflow.note.content")
        self.client.set_tag(run_id, "mlflow.note.content", f"**Failed:** {message}" + (f"\n\n{note}" if note else ""))

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:
        import time

        now = int(time.time() * 1000)
        self.log_recorded(run_id, [(k, float(v), step, now) for k, v in metrics.items()])

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        for k, v in tags.items():
            self.client.set_tag(run_id, k, v)

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
