"""The fine-tune stage with a tuning budget: every trial is an MLflow run, cross-validation on the
budget's labelled rows picks one per strategy x budget x seed, and the report shows the trials, the
choices and the oracle apart; bad tuning settings stop the stage before it trains."""

from __future__ import annotations

import json

import pytest
import yaml

from pipeline.errors import PipelineError
from support import ROOT, mlflow_runs, run_stages

CONFIGURED = yaml.safe_load((ROOT / "params.yaml").read_text())["transfer"]["strategies"]
KEPT = ("scratch", "l2sp")  # the baseline and one strategy with a knob of its own
DROP = [f"~transfer.strategies.{s}" for s in CONFIGURED if s not in KEPT]
TUNED = [*DROP, "transfer.tuning.trials=3", "transfer.tuning.folds=2", "experiments.mnist_to_digits.budgets=[1,3]"]


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    from pipeline.stages import extract, finetune, prepare, pretrain, report

    tmp = tmp_path_factory.mktemp("tuned")
    cfg, out = run_stages(tmp, (prepare, pretrain, extract, finetune, report), TUNED)
    return {"cfg": cfg, "tmp": tmp, **out}


def test_every_trial_is_a_run_and_cross_validation_picks_the_result(tuned):
    cfg = tuned["cfg"]
    client, runs = mlflow_runs(cfg, "mnist_to_digits")
    trials = [r for r in runs if r.data.tags.get("stage") == "finetune" and r.data.tags.get("classic") != "true"]
    assert len(trials) == len(KEPT) * 2 * 2 * 3  # strategies x budgets x seeds x trials
    groups: dict = {}
    for r in trials:
        t = r.data.tags
        groups.setdefault((t["strategy"], t["budget"], t["seed"]), []).append(r)
        assert r.info.run_name.endswith(f" t{t['trial']}") and r.data.params["trial"] == t["trial"]
        assert "cv/acc" in r.data.metrics and r.data.metrics["cv/folds"] == 2
    for key, group in groups.items():
        assert sorted(r.data.tags["trial"] for r in group) == ["0", "1", "2"]
        assert [r.data.tags["selected"] for r in group].count("true") == 1, key
        best = max(group, key=lambda r: (r.data.metrics["cv/acc"], -int(r.data.tags["trial"])))
        assert best.data.tags["selected"] == "true", key  # the best CV score, ties to the earlier trial
    # The record of each strategy x budget x seed is its selected trial's, with every trial kept for the report.
    records = {(r["strategy"], r["budget"], r["seed"]): r for r in tuned["finetune"] if r["strategy"] in KEPT}
    for (s, k, seed), rec in records.items():
        chosen = next(r for r in groups[s, str(k), str(seed)] if r.data.tags["selected"] == "true")
        assert rec["run_id"] == chosen.info.run_id and rec["trial"] == int(chosen.data.tags["trial"])
        assert [t["trial"] for t in rec["trials"]] == [0, 1, 2] and rec["trials"][0]["setting"]["lr"] == cfg.transfer.lr
        # 2 folds over the budget's own split and its mirror: the result's fit is the first fold, 2 fits per trial.
        assert [t["fits"] for t in rec["trials"]] == [2, 2, 2]
        assert rec["test"]["test/acc"] == pytest.approx(chosen.data.metrics["test/acc"])
    # Trial 0 is the configured setting; the others differ in lr and alpha, the same at every budget and seed.
    settings = {json.dumps(rec["trials"][1]["setting"], sort_keys=True) for (s, _, _), rec in records.items() if s == "l2sp"}
    assert len(settings) == 1 and set(json.loads(settings.pop())) == {"lr", "alpha"}


def test_report_shows_trials_choices_and_a_labelled_oracle(tuned):
    md = (tuned["tmp"] / "reports" / "mnist_to_digits.md").read_text()
    assert "## Hyperparameters" in md and "Every strategy had 3 trials per budget and seed" in md
    assert "2-fold stratified cross-validation" in md and "The test split chose nothing." in md
    trials_table = md[md.index("Trials (`t<i>`") : md.index("Chosen trial per seed")]
    assert "| l2sp | lr 0.001, alpha 0.01 |" in trials_table  # trial 0: transfer.lr and the config's alpha
    chosen = md[md.index("Chosen trial per seed") : md.index("## Oracle")]
    assert "| scratch |" in chosen and "| l2sp |" in chosen
    oracle = md[md.index("## Oracle") :]
    assert "(not a result)" in oracle and "not possible for a user" in oracle
    # The oracle can only match or beat the selected trial: every difference in parentheses is <= 0.
    diffs = [
        float(cell.rsplit("(", 1)[1].split(")")[0])
        for line in oracle.splitlines()
        if line.startswith("| ")
        for cell in line.split(" | ")[1:]
        if "(" in cell
    ]
    assert diffs and all(d <= 1e-9 for d in diffs)


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["transfer.tuning.trials=0"], r"transfer\.tuning\.trials must be (at least 1|>= 1, got 0)"),
        (
            ["transfer.tuning.trials=2", "transfer.tuning.folds=3"],
            r"transfer\.tuning\.folds=3 is larger than the smallest class at k=1, seed 0 \(2 labelled rows\)",
        ),
        (
            ["transfer.tuning.trials=2", "~transfer.strategies.l2sp.search"],
            r"transfer\.strategies\.l2sp\.search is empty: with transfer\.tuning\.trials=2",
        ),
        (["+transfer.strategies.l2sp.search.gamma=[1.0]"], r"transfer\.strategies\.l2sp\.search\.gamma: l2sp has no knob 'gamma'"),
    ],
)
def test_bad_tuning_settings_stop_the_stage_before_training(tuned, overrides, message):
    from pipeline.stages import finetune

    with pytest.raises(PipelineError, match=message):
        run_stages(tuned["tmp"], (finetune,), [*DROP, *overrides])
