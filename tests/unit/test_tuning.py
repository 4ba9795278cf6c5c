"""One tuning budget for every strategy: search spaces read from the strategies' configs, trials
drawn the same way for all, stratified folds over the budget's labelled rows, and the selection rule."""

from __future__ import annotations

import numpy as np
import pytest
from omegaconf import OmegaConf

from pipeline.data import labelled_rows as cv_rows
from pipeline.errors import PipelineError
from pipeline.transfer.tuning import best_trial, configured, draw, folds, mirrored, mirrors, parse_space, split_search
from support import ROOT

L2SP = "pipeline.transfer.l2sp.L2SP"


def _strategy(name: str):
    return split_search(OmegaConf.load(ROOT / "conf" / "transfer" / f"{name}.yaml"))


@pytest.mark.parametrize(
    "name", ["scratch", "feature_retrain", "param_transfer", "structure_transfer", "l2sp", "llrd", "lp_ft", "wise_ft", "gradual_unfreezing", "bss"]
)
def test_every_shipped_strategy_searches_the_learning_rate_and_draws_trials_in_its_space(name):
    node, search = _strategy(name)
    assert "search" not in node and "lr" in search
    space = parse_space(name, search, node._target_)
    trials = draw(space, configured(node, space, lr=0.001), 6, seed=0)
    assert len(trials) == 6 and trials[0]["lr"] == 0.001  # trial 0: the configured setting
    for t in trials[1:]:
        assert set(t) == set(search)
        for key, spec in search.items():
            ((kind, (low, high)),) = spec.items()
            assert low <= t[key] <= high, (key, t[key])
    assert trials == draw(space, configured(node, space, lr=0.001), 6, seed=0)  # the same draws every time
    assert trials[1:] != draw(space, configured(node, space, lr=0.001), 6, seed=1)[1:]


def test_log_ranges_spread_over_decades():
    space = parse_space("l2sp", {"alpha": {"log": [1e-4, 1.0]}}, L2SP)
    draws = [t["alpha"] for t in draw(space, {"alpha": 0.01}, 200, seed=0)[1:]]
    assert min(draws) < 1e-3 and max(draws) > 1e-1  # uniform in log10: each decade about a quarter
    assert 0.15 < np.mean(np.log10(draws) < -3) < 0.35


def test_configured_values_come_from_transfer_lr_the_config_and_the_class_default():
    node = OmegaConf.create({"_target_": L2SP, "alpha": 0.3})
    space = parse_space("l2sp", {"lr": [1e-3], "alpha": [1.0], "beta": [1.0]}, L2SP)
    assert configured(node, space, lr=0.002) == {"lr": 0.002, "alpha": 0.3, "beta": 0.01}  # beta: L2SP's default


@pytest.mark.parametrize(
    "search,message",
    [
        ({"alpah": {"log": [1e-3, 1.0]}}, r"transfer\.strategies\.l2sp\.search\.alpah: l2sp has no knob 'alpah' \(did you mean alpha\?\)"),
        ({"lr": {"log": [0.0, 1e-2]}}, r"search\.lr\.log: \[0\.0, 0\.01\] must have 0 < low <= high"),
        ({"lr": {"uniform": [-1e-3, 1e-2]}}, r"search\.lr\.uniform: .* must have 0 < low <= high"),
        ({"lr": [1e-3, -1e-3]}, r"search\.lr: learning rates must be positive"),
        ({"alpha": []}, r"search\.alpha: a list of choices must not be empty"),
        ({"alpha": {"normal": [0, 1]}}, r"search\.alpha: a range is \{log: \[low, high\]\} or \{uniform: \[low, high\]\}"),
        ({"alpha": {"log": [1.0, 0.1]}}, r"search\.alpha\.log: \[1\.0, 0\.1\] must have 0 < low <= high"),
        ({"alpha": {"uniform": [1.0]}}, r"search\.alpha\.uniform: expected \[low, high\]"),
    ],
)
def test_a_bad_search_space_is_an_error_naming_the_strategy_and_key(search, message):
    with pytest.raises(PipelineError, match=message):
        parse_space("l2sp", search, L2SP)


def test_folds_are_stratified_over_the_budgets_labelled_rows_and_too_many_is_an_error():
    y = np.repeat(np.arange(5), 40).astype(np.float32)
    index = {"train": np.arange(0, 200, 40), "val": np.arange(5, 200, 40)}  # k = 1: one train and one validation row per class
    rows = cv_rows(index)
    split = folds(y, rows, "classification", 2, seed=0, where="k=1, seed 0")
    assert len(split) == 2
    for fit_rows, held in split:
        assert sorted(np.concatenate([fit_rows, held])) == sorted(rows)  # a partition of the labelled rows
        assert set(y[held]) == set(y[fit_rows]) == set(range(5))  # every class on both sides
    with pytest.raises(PipelineError, match=r"transfer\.tuning\.folds=3 is larger than the smallest class at k=1, seed 0 \(2 labelled rows\)"):
        folds(y, rows, "classification", 3, seed=0, where="k=1, seed 0")
    with pytest.raises(PipelineError, match=r"transfer\.tuning\.folds must be at least 2"):
        folds(y, rows, "classification", 1, seed=0, where="k=1")
    reg = folds(np.linspace(0, 1, 200), np.arange(10), "regression", 5, seed=0, where="k=10")
    assert [len(h) for _, h in reg] == [2] * 5


def test_two_folds_over_a_budgets_own_validation_labels_are_its_split_and_the_mirror():
    from pipeline.data import label_budget

    y = np.repeat(np.arange(5), 40).astype(np.float32)
    train_pool, val_pool = np.arange(0, 200, 2), np.arange(1, 200, 2)
    index = {"train": label_budget(y, train_pool, "classification", 3, 0), "val": label_budget(y, val_pool, "classification", 3, 0)}
    (a_fit, a_held), (b_fit, b_held) = mirrored(index)
    assert list(a_fit) == list(b_held) == list(index["train"]) and list(a_held) == list(b_fit) == list(index["val"])
    for side in (a_fit, a_held):  # a stratified 2-fold partition: k rows of every class on each side
        assert sorted(np.unique(y[side], return_counts=True)[1]) == [3] * 5
    tuning = OmegaConf.create({"folds": 2})
    assert mirrors(OmegaConf.create({"tuning": tuning, "val_labels": "budget"}))
    assert not mirrors(OmegaConf.create({"tuning": tuning, "val_labels": "all"}))  # the whole val split is not the budget's
    assert not mirrors(OmegaConf.create({"tuning": {"folds": 3}, "val_labels": "budget"}))


def test_the_best_cross_validated_trial_wins_ties_go_to_the_earlier_and_nan_loses():
    assert best_trial([0.5, 0.7, 0.6], higher_is_better=True) == 1
    assert best_trial([0.5, 0.7, 0.6], higher_is_better=False) == 0
    assert best_trial([0.7, 0.7], higher_is_better=True) == 0  # trial 0 is the configured setting
    assert best_trial([float("nan"), 0.1], higher_is_better=True) == 1
    assert best_trial([float("nan"), 3.0], higher_is_better=False) == 1


def test_a_grid_smaller_than_the_trials_is_an_error_not_fewer_trials():
    space = parse_space("l2sp", {"lr": [1e-3, 3e-3], "alpha": [0.1]}, L2SP)
    assert len(draw(space, {"lr": 1e-3, "alpha": 0.01}, 3, seed=0)) == 3
    with pytest.raises(
        PipelineError, match=r"transfer\.strategies\.l2sp\.search has 2 settings, fewer than the 3 draws of transfer\.tuning\.trials=4"
    ):
        draw(space, {"lr": 1e-3, "alpha": 0.01}, 4, seed=0)
