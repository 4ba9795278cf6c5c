"""A user's own model as a candidate source (`sources.<name>.source_model`: a checkpoint file, a TorchScript
file or `models:/<name>/<version>`), adopted by pretrain and scored by extract; bad ones stop pretrain
naming the key and file, exit 2, nothing written. The store is a SQLite file away from the working
directory (a registry defect resolved `models:/` through MLflow's global URI); and the LeNet backbone."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from omegaconf import open_dict

from pipeline.errors import PipelineError
from support import ROOT, compose_cfg, run_cli

EXP = "mnist_to_digits"
MINE = {
    "mine_file": f"data/{EXP}/mine.pt",
    "mine_registry": f"models:/{EXP}.source/1",
    "mine_script": f"data/{EXP}/mine_script.pt",  # TorchScript, no arch: extraction only
    "mine_script_arch": f"data/{EXP}/mine_script_arch.pt",  # TorchScript with arch.json: rebuilt
}


def _cfg(tmp: Path, sources: dict):
    cfg = compose_cfg(tmp, [f"exp={EXP}"])
    with open_dict(cfg):
        cfg.tracking.uri = f"sqlite:///{tmp / 'store' / 'x.db'}"  # not ./mlflow.db, not next to the working directory
        cfg.sources = {name: {"exp": EXP, "note": f"the user's {name}", "source_model": spec} for name, spec in sources.items()}
    return cfg


def _in(work: Path, fn):
    old = os.getcwd()
    os.chdir(work)
    try:
        return fn()
    finally:
        os.chdir(old)


@pytest.fixture(scope="module")
def user_zoo(tmp_path_factory):
    """prepare + pretrain of mnist_to_digits run from tmp/work with the store in tmp/store; the trained
    source saved as the user's files; every MINE candidate adopted; extract."""
    import mlflow

    from pipeline.stages import extract, prepare, pretrain

    os.environ.pop("MLFLOW_TRACKING_URI", None)
    mlflow.set_tracking_uri(None)  # MLflow's global URI unset, as in a fresh `pipeline pretrain` process
    tmp = tmp_path_factory.mktemp("user")
    # Outputs outside the working directory, as a user allows them (pipeline.config.check_paths).
    os.environ["PIPELINE_ALLOWED_OUTPUTS"] = os.pathsep.join([str(tmp / "artifacts"), str(tmp / "reports")])
    work, _ = tmp / "work", (tmp / "store").mkdir()
    work.mkdir()
    cfg = _cfg(tmp, MINE)
    _in(work, lambda: (prepare.run(cfg), pretrain.run(cfg)))
    ckpt = torch.load(tmp / "artifacts" / EXP / "sources" / "source" / "model.pt", weights_only=False)
    own = json.loads((tmp / "artifacts" / EXP / "sources" / "source" / "summary.json").read_text())
    from pipeline.models import build

    net = build(ckpt["arch"])
    net.load_state_dict(ckpt["state_dict"])
    (work / "data" / EXP).mkdir(parents=True)
    torch.save({"arch": ckpt["arch"], "state_dict": ckpt["state_dict"]}, work / MINE["mine_file"])  # no task, no run
    torch.jit.save(torch.jit.script(net.eval()), str(work / MINE["mine_script"]))
    torch.jit.save(torch.jit.script(net), str(work / MINE["mine_script_arch"]), _extra_files={"arch.json": json.dumps(ckpt["arch"])})
    summaries = {}
    for name in MINE:
        one = cfg.copy()
        with open_dict(one):
            one.candidate = name
        summaries[name] = _in(work, lambda one=one: pretrain.run(one))
    knowledge = _in(work, lambda: extract.run(cfg))
    yield {"cfg": cfg, "tmp": tmp, "work": work, "ckpt": ckpt, "own": own, "pretrain": summaries, "extract": knowledge}
    os.environ.pop("PIPELINE_ALLOWED_OUTPUTS", None)


def test_pretrain_registers_in_a_store_away_from_the_working_directory(user_zoo):
    from mlflow import MlflowClient

    client = MlflowClient(user_zoo["cfg"].tracking.uri)
    assert client.get_model_version(f"{EXP}.source", "1").run_id == user_zoo["ckpt"]["run_id"]
    # MLflow's own client on its global (default) URI was never used: no store beside the working directory.
    assert not (user_zoo["work"] / "mlflow.db").exists()
    assert "MLFLOW_TRACKING_URI" not in os.environ


def test_a_users_checkpoint_registry_version_and_torchscript_are_scored_candidates(user_zoo):
    from mlflow import MlflowClient

    tmp, cfg = user_zoo["tmp"], user_zoo["cfg"]
    client = MlflowClient(cfg.tracking.uri)
    art = tmp / "artifacts" / EXP
    for name, spec in MINE.items():
        summary = user_zoo["pretrain"][name]
        assert summary["loaded_from"] == spec and summary["candidate"]["name"] == name
        assert json.loads((art / "sources" / name / "summary.json").read_text())["run_id"] == summary["run_id"]
        version = client.get_model_version(f"{EXP}.{name}", "1")
        assert version.run_id == summary["run_id"] and version.tags["loaded_from"] == spec
        assert client.get_run(summary["run_id"]).data.tags["source"] == name
        # The same weights as the own source: the same source test accuracy.
        assert summary["test"]["test/acc"] == pytest.approx(user_zoo["own"]["test"]["test/acc"], abs=1e-6)
    assert (art / "sources" / "mine_script" / "scripted.pt").is_file() and user_zoo["pretrain"]["mine_script"]["torchscript"] == "scripted.pt"
    assert not (art / "sources" / "mine_script_arch" / "scripted.pt").exists()  # rebuilt from its arch: an ordinary checkpoint
    # Scored like the own source, from the same weights: every score equal, in summary.json and scores.json.
    knowledge = json.loads((art / "knowledge" / "summary.json").read_text())
    own = knowledge["candidates"]["source"]["scores"]
    assert own and set(knowledge["candidates"]) == {"source", "source:block1", *MINE, *(f"{m}:block1" for m in MINE if m != "mine_script")}
    for name in MINE:
        mine = knowledge["candidates"][name]["scores"]
        assert mine.keys() == own.keys()
        for score, per in own.items():
            assert mine[score] == pytest.approx(per, rel=1e-4, abs=1e-6), (name, score)
    records = json.loads((art / "knowledge" / "scores.json").read_text())
    assert {r["candidate"] for r in records if r["value"] is not None} >= set(MINE)
    features = {v: torch.from_numpy(__import__("numpy").load(art / "knowledge" / "candidates" / v / "features.npy")) for v in MINE}
    assert all(torch.allclose(features[v], features["mine_file"], atol=1e-5) for v in MINE)


def _bad_file(work: Path, ckpt: dict, case: str) -> str:
    from pipeline.models import build

    path = work / "data" / EXP / f"bad_{case}.pt"
    small = {**ckpt["arch"], "backbone": {**ckpt["arch"]["backbone"], "input_dim": 30}}
    if case == "input_size":
        torch.save({"arch": small, "state_dict": build(small).state_dict()}, path)
    elif case == "tensor":
        torch.save(torch.zeros(3), path)
    elif case == "no_arch":
        torch.save({"state_dict": ckpt["state_dict"]}, path)
    elif case == "script_input_size":
        torch.jit.save(torch.jit.script(build(small).eval()), str(path))
    elif case == "script_no_head":
        torch.jit.save(torch.jit.script(torch.nn.Linear(64, 3)), str(path))
    else:
        return {"registry": f"models:/{EXP}.nope/1"}[case]
    return str(path.relative_to(work))


BAD = "sources.bad.source_model"


@pytest.mark.parametrize(
    "case, message",
    [
        ("input_size", rf"{BAD} data/{EXP}/bad_input_size\.pt: the model takes inputs of size 30, the target's rows have 64 features"),
        ("tensor", rf"{BAD} data/{EXP}/bad_tensor\.pt: a source checkpoint is a dict with `arch` .* got Tensor"),
        ("no_arch", rf"{BAD} data/{EXP}/bad_no_arch\.pt: a source checkpoint is a dict with `arch` .* got \['state_dict'\]"),
        ("registry", rf"{BAD} models:/{EXP}\.nope/1: not found in the model registry at sqlite:///.*/store/x\.db"),
        ("script_input_size", rf"{BAD} data/{EXP}/bad_script_input_size\.pt: the TorchScript model does not take the target's rows of 64 features"),
        (
            "script_no_head",
            rf"{BAD} data/{EXP}/bad_script_no_head\.pt: a TorchScript source model has submodules `backbone` .* lacks \['backbone', 'head'\]",
        ),
        ("unknown", rf"unknown candidate source of experiment {EXP} \['bda'\] \(did you mean bad\?\); valid: \['bad'\]"),
    ],
)
def test_a_bad_user_candidate_stops_pretrain_naming_it_and_writes_nothing(user_zoo, case, message):
    from mlflow import MlflowClient

    from pipeline.stages import pretrain

    work = user_zoo["work"]
    cfg = _cfg(user_zoo["tmp"], {"bad": _bad_file(work, user_zoo["ckpt"], case) if case != "unknown" else MINE["mine_file"]})
    with open_dict(cfg):
        cfg.candidate = "bda" if case == "unknown" else "bad"
    client = MlflowClient(cfg.tracking.uri)
    runs_before = len(client.search_runs([client.get_experiment_by_name(EXP).experiment_id], max_results=1000))
    with pytest.raises(PipelineError, match=message) as err:
        _in(work, lambda: pretrain.run(cfg))
    assert "\n" not in str(err.value)
    assert not (user_zoo["tmp"] / "artifacts" / EXP / "sources" / "bad").exists()
    assert not client.search_registered_models(f"name='{EXP}.bad'")
    assert len(client.search_runs([client.get_experiment_by_name(EXP).experiment_id], max_results=1000)) == runs_before


def test_a_bad_user_candidate_exits_2_from_the_command_line(user_zoo):
    work, tmp = user_zoo["work"], user_zoo["tmp"]
    spec = _bad_file(work, user_zoo["ckpt"], "input_size")
    res = run_cli(
        "pretrain",
        f"exp={EXP}",
        "candidate=bad",
        f"+sources.bad={{exp: {EXP}, source_model: {spec}}}",
        f"paths.artifacts={tmp / 'artifacts'}",
        f"tracking.uri=sqlite:///{tmp / 'store' / 'x.db'}",
        cwd=work,
        env={"PIPELINE_CONF_DIR": str(ROOT / "conf"), "PIPELINE_ALLOWED_OUTPUTS": str(tmp / "artifacts")},
    )
    assert res.returncode == 2, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert lines[-1].startswith(f"error: {BAD} {spec}: the model takes inputs of size 30, the target's rows have 64 features"), res.stderr
    assert "Traceback" not in res.stderr and not (tmp / "artifacts" / EXP / "sources" / "bad").exists()


def test_a_candidate_with_source_model_and_training_keys_is_an_error(tmp_path):
    from pipeline.config import candidates

    cfg = compose_cfg(tmp_path)
    with open_dict(cfg):
        cfg.sources = {"mine": {"exp": EXP, "source_model": "data/x.pt", "model": {"hidden": [8]}}}
    with pytest.raises(
        PipelineError, match=r"sources\.mine: source_model data/x\.pt is a model already trained; sources\.mine\.model does not apply"
    ):
        candidates(cfg, EXP)


def test_lenet_reshapes_rows_and_exposes_its_blocks_to_extract(tmp_path):
    from pipeline.config import candidates
    from pipeline.errors import instantiate
    from pipeline.models import LeNet, Net, architecture, build
    from pipeline.stages.extract import outputs, views
    from pipeline.stages.pretrain import overlay

    cfg = compose_cfg(tmp_path, zoo=True)
    lenet = candidates(cfg, "mnist_new_classes")["raw_lenet"]
    model = overlay(cfg.model, lenet.model)
    assert model._target_ == "pipeline.models.LeNet" and list(model.image) == [1, 28, 28]
    net = build(architecture(model, 784, 5)).eval()
    assert isinstance(net.backbone, LeNet) and net.backbone.out_dim == 84
    x = torch.rand(7, 784)
    sizes = [net.backbone.features(x, d).shape[1] for d in range(1, 5)]
    assert sizes == [6 * 14 * 14, 16 * 5 * 5, 120, 84]
    assert torch.equal(net.backbone.features(x), net.backbone(x))
    assert views(net, "raw_lenet", True) == [("raw_lenet", None), ("raw_lenet:block1", 1), ("raw_lenet:block2", 2), ("raw_lenet:block3", 3)]
    feats, probs = outputs(net, x.numpy(), None, True)
    assert feats.shape == (7, 84) and probs.shape == (7, 5)
    inner, none = outputs(net, x.numpy(), 2, True)
    assert inner.shape == (7, 400) and none is None
    # A row whose pixels are not the configured image: both shapes named.
    with pytest.raises(PipelineError, match=r"model backbone: LeNet: inputs of size 64 are not images of shape \[1, 28, 28\]"):
        instantiate({**dict(model), "input_dim": 64}, "model backbone")
    assert isinstance(Net(LeNet(3 * 32 * 32, image=[3, 32, 32]), torch.nn.Identity())(torch.rand(2, 3072)), torch.Tensor)


def test_a_torchscript_model_without_arch_cannot_be_the_own_source(user_zoo):
    from pipeline.stages import pretrain

    cfg = _cfg(user_zoo["tmp"], {})
    with open_dict(cfg):
        cfg.experiments[EXP].source_model = MINE["mine_script"]
    before = (user_zoo["tmp"] / "artifacts" / EXP / "sources" / "source" / "model.pt").read_bytes()
    with pytest.raises(PipelineError, match=rf"source_model {MINE['mine_script']}: a TorchScript model without its architecture .* candidate source"):
        _in(user_zoo["work"], lambda: pretrain.run(cfg))
    assert (user_zoo["tmp"] / "artifacts" / EXP / "sources" / "source" / "model.pt").read_bytes() == before
