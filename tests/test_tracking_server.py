"""A shared MLflow tracking server, SQLite or PostgreSQL behind it, reached through MLFLOW_TRACKING_URI:
a transfer chain and a multitask stage land there exactly as in the embedded SQLite store (runs, tags,
lineage, metrics, artifacts sent over HTTP, the registered source model)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import yaml

from pipeline.errors import PipelineError
from servers import mlflow_server, postgres, postgres_bin
from support import ROOT, compose_cfg

pytestmark = pytest.mark.slow  # a real server, queue, cluster launcher or several processes: `make test-quick` skips it

CONFIGURED = yaml.safe_load((ROOT / "params.yaml").read_text())
KEPT = ("scratch", "param_transfer")  # the baseline and one strategy that uses the source (lineage)
SCORES = ("logme", "leep")
# One budget, one seed, two strategies, two scores: every kind of run the chain makes, in seconds.
TRANSFER = [
    *(f"~transfer.strategies.{s}" for s in CONFIGURED["transfer"]["strategies"] if s not in KEPT),
    *(f"~knowledge.scores.{s}" for s in CONFIGURED["knowledge"]["scores"] if s not in SCORES),
    "knowledge.layers=false",  # the own source only (inner blocks and candidates: tests/test_sources.py)
    "transfer.seeds=[0]",
    "experiments.mnist_to_digits.budgets=[3]",
    "pretrain.max_epochs=2",
    "transfer.max_epochs=2",
    "trainer.workers=1",
]
MULTITASK = [
    "exp=synthetic_related",
    "multitask.seeds=[0]",
    "multitask.max_epochs=2",
    "multitask.patience=1",
    "+multitask_experiments.synthetic_related.schemes=[single_task,hard]",
    "+multitask_experiments.synthetic_related.weightings=[equal]",
    "trainer.workers=1",
]
EXPERIMENTS = ("mnist_to_digits", "synthetic_related")
TIMING = ("fit/seconds",)  # wall clock: the only metric that differs between two runs of the same config


def run_chain(tmp: Path, uri: str | None) -> dict:
    """prepare -> pretrain -> extract -> finetune -> report on mnist_to_digits and prepare -> multitask on
    synthetic_related in `tmp`, tracked where MLFLOW_TRACKING_URI=`uri` says (None: the embedded store the
    config names); then what landed in the store."""
    from pipeline.stages import extract, finetune, multitask, prepare, pretrain, report

    old_cwd, old_uri = os.getcwd(), os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.chdir(tmp)
    if uri:
        os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        cfg = compose_cfg(tmp, TRANSFER)
        for stage in (prepare, pretrain, extract, finetune, report):
            stage.run(cfg)
        mt = compose_cfg(tmp, MULTITASK)
        prepare.run(mt)
        multitask.run(mt)
        return snapshot(uri or cfg.tracking.uri, tmp)
    finally:
        os.chdir(old_cwd)
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        if old_uri:
            os.environ["MLFLOW_TRACKING_URI"] = old_uri


def snapshot(uri: str, tmp: Path) -> dict:
    """The store's content with what must differ between two stores made neutral: run, model and
    experiment ids become the names of what they point at, the tmp folder `<tmp>`, wall-clock metrics dropped."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    runs, names, experiments = {}, {}, {}
    for name in EXPERIMENTS:
        exp = client.get_experiment_by_name(name)
        experiments[exp.experiment_id] = name
        for r in client.search_runs([exp.experiment_id], max_results=1000):
            names[r.info.run_id] = f"run:{name}/{r.info.run_name}"
            runs[f"{name}/{r.info.run_name}"] = r
        for m in client.search_logged_models([exp.experiment_id]):
            names[m.model_id] = f"model:{m.name}"

    names |= {raw[:8]: name for raw, name in names.items() if name.startswith("run:")}  # the short ids in run descriptions

    def neutral(value: str) -> str:
        for raw in sorted(names, key=len, reverse=True):  # full ids before their prefixes
            value = value.replace(raw, names[raw])
        value = re.sub(r"#/experiments/(\d+)", lambda m: f"#/experiments/{experiments[m[1]]}", value)
        return value.replace(str(tmp), "<tmp>")

    def artifacts(run_id: str, path: str | None = None) -> list[str]:
        out = []
        for f in client.list_artifacts(run_id, path):
            out += artifacts(run_id, f.path) if f.is_dir else [f.path]
        return out

    out = {"runs": {}, "models": {}, "logged_models": {}}
    for key, r in runs.items():
        out["runs"][key] = {
            "status": r.info.status,
            "tags": {k: neutral(v) for k, v in r.data.tags.items() if k not in ("mlflow.user",)},
            "params": {k: neutral(v) for k, v in r.data.params.items()},
            "metrics": {k: v for k, v in r.data.metrics.items() if k not in TIMING},
            "artifacts": sorted(artifacts(r.info.run_id)),
            "datasets": sorted((d.dataset.name, d.dataset.digest) for d in r.inputs.dataset_inputs),
            # A run's model inputs come with the run itself, not with the search.
            "model_inputs": sorted(neutral(m.model_id) for m in client.get_run(r.info.run_id).inputs.model_inputs or []),
        }
    for m in client.search_logged_models(list(experiments)):
        out["logged_models"][neutral(m.model_id)] = {
            "run": neutral(m.source_run_id),
            "status": str(m.status),
            "tags": {k: neutral(v) for k, v in m.tags.items() if k != "mlflow.user"},
            "params": m.params,
            "files": sorted(f.path for f in client.list_logged_model_artifacts(m.model_id)),
        }
    for v in client.search_model_versions(f"name='{EXPERIMENTS[0]}.source'"):
        out["models"][f"{v.name}/{v.version}"] = {"run": neutral(v.run_id), "source": neutral(v.source), "tags": v.tags}
    return out


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("embedded")
    return {"tmp": tmp, "store": run_chain(tmp, None)}


@pytest.fixture(scope="module")
def sqlite_server(tmp_path_factory):
    """A server on a SQLite file that allows the host name 127.0.0.1 only (so `localhost` is a name it refuses)."""
    tmp = tmp_path_factory.mktemp("sqlite-server")
    with mlflow_server(f"sqlite:///{tmp / 'server.db'}", tmp, "--allowed-hosts", "127.0.0.1:*") as url:
        yield url, tmp


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def served(request, tmp_path_factory):
    """The chain run against a server with the backend store `request.param`, started once for this module."""
    tmp = tmp_path_factory.mktemp(f"client-{request.param}")
    if request.param == "sqlite":
        url, folder = request.getfixturevalue("sqlite_server")
        yield {"url": url, "tmp": tmp, "server": folder, "store": run_chain(tmp, url)}
        return
    if postgres_bin() is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed: not on PATH nor under /usr/lib/postgresql/*/bin")
    folder = tmp_path_factory.mktemp("postgresql-server")
    with postgres() as db, mlflow_server(db, folder) as url:
        yield {"url": url, "tmp": tmp, "server": folder, "store": run_chain(tmp, url)}


def test_runs_land_on_the_server_as_in_the_embedded_store(served, embedded):
    got, want = served["store"]["runs"], embedded["store"]["runs"]
    assert sorted(got) == sorted(want)
    for key in want:
        for field in ("status", "tags", "params", "datasets", "model_inputs", "artifacts"):
            assert got[key][field] == want[key][field], (key, field)
        assert got[key]["metrics"] == pytest.approx(want[key]["metrics"], abs=1e-6), key
    stages = sorted(r["tags"]["stage"] for r in got.values())
    assert stages == [
        "extract",
        "finetune",
        "finetune",
        "finetune",
        "finetune",
        "multitask",
        "multitask",
        "multitask",
        "multitask",
        "pretrain",
        "report",
    ]
    # Lineage: a fine-tune run that starts from the source points at the pretrain run and its model in the same store.
    ft = got["mnist_to_digits/param_transfer k3 s0"]
    assert ft["tags"]["source_run_id"] == "run:mnist_to_digits/pretrain s0" and ft["model_inputs"] == ["model:source_model"]
    assert got["mnist_to_digits/scratch k3 s0"]["model_inputs"] == [] and "source_run_id" not in got["mnist_to_digits/scratch k3 s0"]["tags"]
    assert {"mnist_to_digits.md", "figures/mnist_to_digits_label_efficiency.png"} <= set(got["mnist_to_digits/report"]["artifacts"])
    assert got["mnist_to_digits/pretrain s0"]["metrics"]["test/acc"] > 0.3


def test_the_source_model_is_registered_and_its_files_travel_over_http(served, embedded):
    import torch

    from pipeline.tracking import Tracker

    assert served["store"]["models"] == embedded["store"]["models"]
    assert served["store"]["logged_models"] == embedded["store"]["logged_models"]
    source = served["store"]["logged_models"]["model:source_model"]
    assert source["files"] == ["model.pt"] and source["status"] == "READY"
    # The UI's logged-model page links to its registered version: a server tags it so itself, the embedded store only through us.
    assert json.loads(source["tags"]["mlflow.modelVersions"]) == [{"name": "mnist_to_digits.source", "version": 1}]
    assert served["store"]["models"]["mnist_to_digits.source/1"]["run"] == "run:mnist_to_digits/pretrain s0"
    ckpt = served["tmp"] / "artifacts" / "mnist_to_digits" / "sources" / "source" / "model.pt"
    path = Tracker("mnist_to_digits", served["url"]).model_file("models:/mnist_to_digits.source/1", served["tmp"] / "download")
    got, want = torch.load(path, weights_only=False)["state_dict"], torch.load(ckpt, weights_only=False)["state_dict"]
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    # The files went to the server's --artifacts-destination, none beside the client.
    assert list((served["server"] / "artifacts").rglob("model.pt")) and list((served["server"] / "artifacts").rglob("mnist_to_digits.md"))
    assert not (served["tmp"] / "mlartifacts").exists()


def test_a_report_names_the_server_not_a_local_ui_command(served, embedded):
    assert f"(the tracking server {served['url']})" in (served["tmp"] / "reports" / "mnist_to_digits.md").read_text()
    assert "(`mlflow ui --backend-store-uri sqlite:///" in (embedded["tmp"] / "reports" / "mnist_to_digits.md").read_text()


def test_a_server_reached_by_a_name_it_does_not_allow_is_an_error_naming_the_uri(sqlite_server):
    from pipeline.tracking import check_store

    url, _ = sqlite_server
    assert check_store(url) == url
    uri = url.replace("127.0.0.1", "localhost")  # the same server by a name it was not told to allow
    host = uri.removeprefix("http://")
    with pytest.raises(
        PipelineError, match=rf"tracking store {uri} refuses the host name {host} \(Invalid Host header.*\): start .* --allowed-hosts {host}$"
    ):
        check_store(uri)
