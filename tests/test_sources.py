"""Candidate sources (`sources:`, conf/candidates/): each pretrained by its own run, scored by extract
at every depth, probed by finetune, ranked in reports/<experiment>_sources.md."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from omegaconf import open_dict

from pipeline.errors import PipelineError
from pipeline.report.sources import SourcesReport, agreement
from support import compose_cfg, mlflow_runs

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
    # The linear probe on each other view's features: one record per budget x seed, tagged with its source.
    for v in views - {"source"}:
        files = sorted((art / "finetune" / "sources" / v).glob("k*_seed*.json"))
        assert len(files) == len(cfg.experiments[EXP].budgets) * len(cfg.transfer.seeds)
        assert all(json.loads(f.read_text())["candidate"] == v for f in files)
    probes = {r.data.tags.get("source") for r in runs if r.data.tags.get("strategy") == "linear_features" and r.data.tags.get("source")}
    assert probes == views - {"source"}
    text = (tmp / "reports" / f"{EXP}_sources.md").read_text()
    assert all(f"`{v}`" in text for v in views)
    assert text.count("| score | Kendall τ") == len(cfg.experiments[EXP].budgets)
