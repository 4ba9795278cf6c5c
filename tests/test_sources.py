"""Candidate sources (`sources:`, conf/candidates/): each pretrained by its own run, scored by extract
at every depth, fine-tuned from by the rank stage (linear probe, parameter transfer), ranked in
reports/<experiment>_sources.md."""

from __future__ import annotations

import json
import re
import shutil
from collections import Counter

import numpy as np
import pandas as pd
import pytest
from omegaconf import open_dict

from pipeline.errors import PipelineError
from pipeline.report.sources import SourcesReport, agreement
from support import compose_cfg, mlflow_runs


@pytest.fixture(autouse=True)
def outputs_in_tmp(tmp_path, monkeypatch):
    """Stages below run on copies in tmp_path from the repository's directory: outputs allowed there."""
    monkeypatch.setenv("PIPELINE_ALLOWED_OUTPUTS", str(tmp_path))


EXP = "mnist_to_digits"


def _report(score_of, probe_of, seeds=(0, 1, 2, 3, 4)) -> SourcesReport:
    """Candidates a..e; a score and a probe value per candidate and seed (seed noise that keeps the order)."""
    cands = ["a", "b", "c", "d", "e"]
    scores = [{"candidate": c, "score": "s", "budget": 1, "seed": s, "value": score_of(i) + 0.01 * s} for i, c in enumerate(cands) for s in seeds]
    probe = [{"candidate": c, "budget": 1, "seed": s, "value": probe_of(i) - 0.01 * s} for i, c in enumerate(cands) for s in seeds]
    return SourcesReport(EXP, "acc", True, [1], pd.DataFrame(scores), pd.DataFrame(probe), {c: c for c in cands}, [])


def test_agreement_is_kendall_tau_with_an_interval_over_seeds():
    same = agreement(_report(lambda i: i, lambda i: 0.1 * i), "s", 1)
    assert same["tau"] == pytest.approx(1.0) and same["low"] == pytest.approx(1.0) and same["high"] == pytest.approx(1.0)
    assert same["top"] == same["best"] == "e" and same["n"] == 5
    reversed_ = agreement(_report(lambda i: -i, lambda i: 0.1 * i), "s", 1)
    assert reversed_["tau"] == pytest.approx(-1.0) and reversed_["top"] == "a" and reversed_["best"] == "e"
    # One swap among five candidates: tau = (9 - 1) / 10.
    swap = agreement(_report(lambda i: [0, 2, 1, 3, 4][i], lambda i: 0.1 * i), "s", 1)
    assert swap["tau"] == pytest.approx(0.8)
    # Two seeds: no interval; fewer than 3 candidates with both: no ranking.
    assert pd.isna(agreement(_report(lambda i: i, lambda i: i, seeds=(0, 1)), "s", 1)["low"])
    t = _report(lambda i: i, lambda i: i)
    t.probe = t.probe[t.probe.candidate.isin(["a", "b"])]
    assert agreement(t, "s", 1) is None


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("sources.bad.pretrianed", False, "sources.bad.pretrianed"),
        ("sources.source", None, "not 'source'"),
        ("sources.up/../x", None, "letters, digits and _"),
    ],
)
def test_a_wrong_candidate_is_an_error_naming_it(tmp_path, key, value, message):
    from pipeline.config import candidates

    cfg = compose_cfg(tmp_path)
    with open_dict(cfg):
        node = {"exp": EXP, "note": "x"}
        if value is not None:
            node[key.rsplit(".", 1)[1]] = value
        cfg.sources[key.split(".")[1]] = node
    with pytest.raises(PipelineError, match=message.replace("(", r"\(").replace(")", r"\)")):
        candidates(cfg, EXP)


def test_pretrain_of_an_unknown_candidate_names_the_valid_ones(tmp_path):
    from pipeline.stages import pretrain

    cfg = compose_cfg(tmp_path, ["candidate=uci_randm"], zoo=True)
    with pytest.raises(PipelineError, match=r"unknown candidate source of experiment mnist_to_digits \['uci_randm'\].*uci_random"):
        pretrain.run(cfg)


def test_every_candidate_is_trained_registered_scored_probed_and_ranked(zoo_run):
    cfg, tmp = zoo_run["cfg"], zoo_run["tmp"]
    art = tmp / "artifacts" / EXP
    zoo = [c for c, node in cfg.sources.items() if node.exp == EXP]
    assert set(zoo_run["candidates"]) == set(zoo) and len(zoo) >= 3
    client, runs = mlflow_runs(cfg, EXP)
    for cand in zoo:
        summary = json.loads((art / "sources" / cand / "summary.json").read_text())
        assert summary["candidate"]["name"] == cand and (art / "sources" / cand / "model.pt").is_file()
        assert client.get_model_version(f"{EXP}.{cand}", "1").run_id == summary["run_id"]
    random = json.loads((art / "sources" / "uci_random" / "summary.json").read_text())
    assert random["epochs"] == 0 and random["candidate"]["pretrained"] is False
    # Every view (each model's last features and its inner blocks) scored at every budget x seed, in its own extract run.
    knowledge = json.loads((art / "knowledge" / "summary.json").read_text())
    views = set(knowledge["candidates"])
    assert {"source", "source:block1", *zoo} <= views
    records = json.loads((art / "knowledge" / "scores.json").read_text())
    n_scores = len(cfg.knowledge.scores)
    per_view = len(cfg.experiments[EXP].budgets) * len(cfg.transfer.seeds) * n_scores
    assert all(sum(r["candidate"] == v for r in records) == per_view for v in views)
    # An inner block has no class probabilities: LEEP says so instead of failing.
    assert "leep" in knowledge["candidates"]["source:block1"]["not_applicable"]
    extract_runs = {r.data.tags.get("source") for r in runs if r.data.tags.get("stage") == "extract"}
    assert extract_runs == views
    # The rank stage: the linear probe and parameter transfer from every other view at every budget x seed,
    # one MLflow run each, tagged with its source; the own source's last features are finetune's.
    n = len(cfg.experiments[EXP].budgets) * len(cfg.transfer.seeds)
    others = views - {"source"}
    for strategy in ("linear_features", "param_transfer"):
        for v in others:
            files = sorted((art / "rank" / strategy / v).glob("k*_seed*.json"))
            assert len(files) == n and all(json.loads(f.read_text())["candidate"] == v for f in files)
        ranked = [r for r in runs if r.data.tags.get("stage") == "rank" and r.data.tags.get("strategy") == strategy]
        assert Counter(r.data.tags["source"] for r in ranked) == {v: n for v in others}
        assert {r.info.status for r in ranked} == {"FINISHED"}
    assert not (art / "rank" / "param_transfer" / "source").exists()
    # The own source's runs carry its name too, so the MLflow UI groups every candidate's runs by `source`.
    own = [r for r in runs if r.data.tags.get("stage") == "finetune"]
    assert {r.data.tags["strategy"]: r.data.tags.get("source") for r in own} == {
        "param_transfer": "source",
        "linear_features": "source",
        "scratch": None,
    }
    # Untuned (trial 0, the configured setting); a whole candidate transfers its backbone, a layer view its first blocks.
    whole = json.loads((art / "rank" / "param_transfer" / "uci_random" / "k1_seed0.json").read_text())
    block = json.loads((art / "rank" / "param_transfer" / "uci_random:block1" / "k1_seed0.json").read_text())
    assert whole["transfer"] == ["backbone"] and block["transfer"] == ["backbone.blocks.0"]
    assert whole["setting"] == {"lr": cfg.transfer.lr, "source_lr_scale": cfg.transfer.strategies.param_transfer.source_lr_scale}
    copied = {r.data.tags["source"]: r.data.metrics["fit/n_copied"] for r in ranked if r.data.tags["budget"] == "1" and r.data.tags["seed"] == "0"}
    assert 0 < copied["uci_random:block1"] < copied["uci_random"]

    text = (tmp / "reports" / f"{EXP}_sources.md").read_text()
    assert all(f"`{v}`" in text for v in views)
    budgets = cfg.experiments[EXP].budgets
    # Per budget: a τ table against each reference, the rankings side by side, the figure.
    assert text.count("| score | Kendall τ") == 2 * len(budgets)
    assert text.count("### Against parameter transfer") == text.count("### Against the linear probe") == len(budgets)
    assert text.count("| rank | linear probe | parameter transfer | logme |") == len(budgets)
    assert "**untuned**" in text and "| k | against the linear probe | against parameter transfer |" in text
    for k in budgets:
        assert f"](figures/{EXP}_sources/k{k}.png)" in text
        assert (tmp / "reports" / "figures" / f"{EXP}_sources" / f"k{k}.png").stat().st_size > 10_000
    # The own source's parameter transfer is the finetune stage's result, not refitted.
    own = [json.loads(f.read_text())["test"]["test/acc"] for f in (art / "finetune" / "param_transfer").glob("k1_seed*.json")]
    row = next(line for line in text.split("## k = 1 ")[1].splitlines() if line.startswith("| `source` |"))
    assert row.split("|")[3].strip().startswith(f"{sum(own) / len(own):.3f} ±")


def _copy(zoo_run, tmp_path, overrides=()):
    """A copy of the zoo chain's outputs and store: a stage can be rerun on it without touching the fixture's."""
    tmp = tmp_path / "zoo"
    shutil.copytree(zoo_run["tmp"], tmp)
    return tmp, compose_cfg(tmp, ["strategy=[scratch,param_transfer,linear_features]", *overrides], zoo=True)


def test_divergent_rank_fits_fail_and_are_listed(zoo_run, tmp_path, capsys, monkeypatch):
    from pipeline.report import sources
    from pipeline.stages import rank

    monkeypatch.chdir(tmp_path)
    tmp, cfg = _copy(zoo_run, tmp_path, ["experiments.mnist_to_digits.budgets=[1]", "transfer.seeds=[0]"])
    with open_dict(cfg):
        cfg.transfer.strategies.param_transfer.source_lr_scale = 1.0e33
    out = rank.run(cfg)
    failed = [r for r in out if r.get("failed")]
    assert failed and all(r["strategy"] == "param_transfer" and "test" not in r for r in failed)
    assert re.search(r"rank mnist_to_digits param_transfer@\S+ k=1 seed=0: the training loss diverged", failed[0]["failed"])
    assert f"warning: rank {EXP}: {len(failed)} of 6 param_transfer runs failed" in capsys.readouterr().err
    _, runs = mlflow_runs(cfg, EXP)
    statuses = {r.info.run_id: r.info.status for r in runs}
    assert all(statuses[r["run_id"]] == "FAILED" for r in failed)
    # The report (the sources part alone: finetune's param_transfer results are stale under this setting).
    art = tmp / "artifacts" / EXP
    t = sources.load(art / "knowledge", art / "finetune", art / "rank", art / "sources", EXP, "acc", True, [1])
    text = sources.render(t)
    assert "## Failed runs" in text and all(r["run_id"] in text for r in failed)
    assert {f["candidate"] for f in t.failed} == {r["candidate"] for r in failed}
    assert not set(t.transfer.candidate) & {f["candidate"] for f in t.failed}  # a failed fit is not averaged in


def test_rank_tunes_parameter_transfer_as_finetune_does(zoo_run, tmp_path, monkeypatch):
    """With transfer.tuning.trials > 1 every candidate's parameter transfer tries the finetune stage's trial
    settings and keeps the one with the best cross-validated score; the report says so and reads the own
    source's tuned result from finetune."""
    from pipeline.report import sources
    from pipeline.stages import finetune, rank

    monkeypatch.chdir(tmp_path)
    tmp, cfg = _copy(zoo_run, tmp_path, ["experiments.mnist_to_digits.budgets=[3]", "transfer.seeds=[0,1,2]", "transfer.tuning.trials=2"])
    with open_dict(cfg):
        cfg.strategy = ["param_transfer", "linear_features"]
    own = {r["seed"]: r for r in finetune.run(cfg) if r["strategy"] == "param_transfer"}
    out = [r for r in rank.run(cfg) if r["strategy"] == "param_transfer"]
    assert out and all(len(r["trials"]) == 2 for r in out)
    # The same trial settings as finetune's, trial 0 the configured one; the kept trial is the best by cross-validation.
    assert all([t["setting"] for t in r["trials"]] == [t["setting"] for t in own[0]["trials"]] for r in out)
    for r in out:
        cv = [t["cv"] for t in r["trials"]]
        assert r["trial"] == int(np.argmax(cv)) and r["cv"] == max(cv)
    _, runs = mlflow_runs(cfg, EXP)
    ranked = {r.info.run_id: r for r in runs}
    tried = [ranked[t["run_id"]] for r in out for t in r["trials"]]
    assert len({r.info.run_id for r in tried}) == 2 * len(out) and all("cv/acc" in r.data.metrics for r in tried)
    assert {r.data.tags["trial"] for r in tried} == {"0", "1"} and {r.data.tags["stage"] for r in tried} == {"rank"}
    assert all(ranked[t["run_id"]].data.tags["selected"] == str(t["trial"] == r["trial"]).lower() for r in out for t in r["trials"])
    art = tmp / "artifacts" / EXP
    t = sources.load(art / "knowledge", art / "finetune", art / "rank", art / "sources", EXP, "acc", True, [3])
    assert t.trials == 2 and "**tuned** as the finetune stage tunes it: 2 trial settings" in sources.render(t)
    mine = t.transfer[t.transfer.candidate == "source"].set_index("seed").value.to_dict()
    assert mine == {seed: r["test"]["test/acc"] for seed, r in own.items()}


def test_rank_refuses_features_that_are_not_finite(zoo_run, tmp_path):
    from pipeline.stages import rank

    tmp, cfg = _copy(zoo_run, tmp_path)
    path = tmp / "artifacts" / EXP / "knowledge" / "candidates" / "uci_random:block1" / "features.npy"
    x = np.load(path)
    x[3, 1] = np.inf
    np.save(path, x)
    before = sorted(p.name for p in (tmp / "artifacts" / EXP / "rank").rglob("*"))
    with pytest.raises(
        PipelineError, match=r"features of candidate uci_random:block1 \(.*features.npy\) hold NaN or infinite values in 1 rows, first at rows \[3\]"
    ):
        rank.run(cfg)
    assert sorted(p.name for p in (tmp / "artifacts" / EXP / "rank").rglob("*")) == before  # nothing half-written


def test_rank_refuses_a_labelled_subset_of_a_single_class(zoo_run, tmp_path):
    from pipeline.data import TaskSet
    from pipeline.stages import rank

    tmp, cfg = _copy(zoo_run, tmp_path)
    where = tmp / "artifacts" / EXP / "data" / "target"
    ts = TaskSet.load(where)
    ts.y[ts.splits["train"], 0] = 4.0
    ts.save(where)
    with pytest.raises(PipelineError, match=r"labelled rows at k=1, seed 0 hold a single class \(\[4\.0\]\)"):
        rank.run(cfg)


def test_a_score_on_features_that_are_not_finite_names_the_candidate_and_the_score(tmp_path):
    from pipeline.errors import instantiate
    from pipeline.stages.extract import transferability

    cfg = compose_cfg(tmp_path)
    scores = {s: instantiate(node, s) for s, node in cfg.knowledge.scores.items() if s in ("logme", "knn")}
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 20).astype(np.float32)
    splits = {"train": np.arange(0, 60, 2), "val": np.arange(1, 60, 2), "test": np.arange(1, 60, 2)}
    x = rng.normal(size=(60, 4))
    x[splits["train"], 2] = np.nan
    with pytest.raises(PipelineError, match=r"^logme \(candidate mlp:block1, k=2, seed 0\): the source features hold NaN or infinite values"):
        transferability(scores, {"features": x, "probs": None}, y, "classification", splits, [2], [0], "budget", "mlp:block1")
    one = np.zeros(60, dtype=np.float32)
    with pytest.raises(PipelineError, match=r"^logme \(candidate mlp, k=2, seed 0\): the labelled rows hold a single class"):
        transferability(scores, {"features": rng.normal(size=(60, 4)), "probs": None}, one, "classification", splits, [2], [0], "budget", "mlp")
