"""LEEP, the comparison table, and the atomic writes every stage relies on."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from pipeline.errors import PipelineError
from pipeline.io import atomic_dir, atomic_file, read_json, write_json
from pipeline.knowledge.leep import expected_empirical_predictor as leep
from pipeline.report import baseline_first
from pipeline.report.transfer import load_results, summarise

# --------------------------------------------------------------------------------------------------
# LEEP


def _balanced_labels(n_classes: int, per_class: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).permutation(np.repeat(np.arange(n_classes), per_class))


def test_leep_perfect_one_to_one_source_is_zero():
    y = _balanced_labels(5, 20)
    z = (y * 3 + 1) % 5  # a bijection of target labels onto source classes
    probs = np.eye(5)[z]
    assert leep(probs, y, 5) == pytest.approx(0.0, abs=1e-9)
    # confident (0.99 on the matching class) is still close to 0, and below the one-hot value
    confident = np.full((len(y), 5), 0.01 / 4)
    confident[np.arange(len(y)), z] = 0.99
    score = leep(confident, y, 5)
    assert -0.05 < score < 0.0


def test_leep_uniform_predictions_give_log_one_over_c():
    y = _balanced_labels(4, 25)
    uniform = np.full((len(y), 10), 0.1)  # 10 source classes, 4 target classes
    assert leep(uniform, y, 4) == pytest.approx(math.log(1 / 4), abs=1e-12)


def test_leep_invariant_to_source_class_permutation():
    rng = np.random.default_rng(1)
    y = _balanced_labels(3, 30)
    probs = rng.dirichlet(np.ones(7), size=len(y))
    perm = rng.permutation(7)
    assert leep(probs[:, perm], y, 3) == pytest.approx(leep(probs, y, 3), abs=1e-12)


def test_leep_hand_computed_example():
    # P(y, z) is proportional to [[1.4, 0.6], [0.3, 0.7]], so P(y | z=0) = [14/17, 3/17], P(y | z=1) = [6/13, 7/13]
    probs = np.array([[0.8, 0.2], [0.6, 0.4], [0.3, 0.7]])
    y = np.array([0, 0, 1])
    likelihoods = [0.8 * 14 / 17 + 0.2 * 6 / 13, 0.6 * 14 / 17 + 0.4 * 6 / 13, 0.3 * 3 / 17 + 0.7 * 7 / 13]
    assert leep(probs, y, 2) == pytest.approx(sum(math.log(v) for v in likelihoods) / 3, abs=1e-12)


def test_leep_orders_informative_above_uninformative():
    rng = np.random.default_rng(2)
    y = _balanced_labels(5, 40)
    noisy = 0.6 * np.eye(5)[y] + 0.4 * rng.dirichlet(np.ones(5), size=len(y))
    score = leep(noisy, y, 5)
    assert math.log(1 / 5) < score < 0.0


# --------------------------------------------------------------------------------------------------
# report.summarise

# strategy, budget, seed, accuracy
ROWS = [
    ("scratch", 1, 0, 0.50), ("scratch", 1, 1, 0.60), ("scratch", 1, 2, 0.40),
    ("A", 1, 0, 0.70), ("A", 1, 1, 0.65), ("A", 1, 2, 0.35),
    ("scratch", 5, 0, 0.80), ("scratch", 5, 1, 0.82), ("scratch", 5, 2, 0.78),
    ("A", 5, 0, 0.75), ("A", 5, 1, 0.80), ("A", 5, 2, 0.79),
]  # fmt: skip


@pytest.fixture()
def results() -> pd.DataFrame:
    df = pd.DataFrame(ROWS, columns=["strategy", "budget", "seed", "acc"])
    return df.sample(frac=1.0, random_state=0)  # row order must not matter


def _row(table: pd.DataFrame, strategy: str, budget: int) -> pd.Series:
    hit = table[(table.strategy == strategy) & (table.budget == budget)]
    assert len(hit) == 1
    return hit.iloc[0]


def test_summarise_mean_std_and_paired_gain(results):
    t = summarise(results, "acc", "scratch")
    assert len(t) == 4
    a1, a5, s1 = _row(t, "A", 1), _row(t, "A", 5), _row(t, "scratch", 1)
    assert a1["mean"] == pytest.approx((0.70 + 0.65 + 0.35) / 3)
    assert a1["std"] == pytest.approx(statistics.stdev([0.70, 0.65, 0.35]))  # sample std, ddof=1
    assert a1["n"] == 3
    # paired by seed: gains 0.20, 0.05, -0.05 at k=1; -0.05, -0.02, 0.01 at k=5
    assert a1["gain"] == pytest.approx(0.20 / 3)
    assert a1["gain_std"] == pytest.approx(statistics.stdev([0.20, 0.05, -0.05]))
    # 95 % paired t-interval: mean ± t(0.975, 2) sd / sqrt(3)
    half = scipy_stats.t.ppf(0.975, 2) * statistics.stdev([0.20, 0.05, -0.05]) / math.sqrt(3)
    assert (a1["gain_lo"], a1["gain_hi"]) == (pytest.approx(0.20 / 3 - half), pytest.approx(0.20 / 3 + half))
    assert a1["wins"] == 2 and not a1["negative"] and not a1["better"]
    # below scratch on average (and on 2 of 3 seeds), but the interval contains 0: no verdict either way
    assert a5["gain"] == pytest.approx(-0.02)
    assert a5["gain_lo"] < 0 < a5["gain_hi"]
    assert a5["wins"] == 1 and not a5["negative"] and not a5["better"]
    assert s1["gain"] == 0 and s1["wins"] == 0 and not s1["negative"]


def test_summarise_verdicts_follow_the_paired_interval():
    """Negative transfer only where the paired interval lies below 0, better only where above; one seed
    has no interval and no verdict."""
    rows = [("scratch", 1, i, v) for i, v in enumerate([0.50, 0.60, 0.40])]
    rows += [("worse", 1, i, v) for i, v in enumerate([0.40, 0.49, 0.31])]  # -0.10, -0.11, -0.09
    rows += [("better", 1, i, v) for i, v in enumerate([0.60, 0.72, 0.51])]  # +0.10, +0.12, +0.11
    rows += [("scratch", 2, 0, 0.5), ("one_seed", 2, 0, 0.1)]
    t = summarise(pd.DataFrame(rows, columns=["strategy", "budget", "seed", "acc"]), "acc", "scratch")
    worse, better, one = _row(t, "worse", 1), _row(t, "better", 1), _row(t, "one_seed", 2)
    assert worse["negative"] and not worse["better"] and worse["gain_hi"] < 0
    assert better["better"] and not better["negative"] and better["gain_lo"] > 0
    assert np.isnan(one["gain_lo"]) and not one["negative"] and not one["better"]
    assert np.isnan(one["lo"]) and one["mean"] == pytest.approx(0.1)


def test_summarise_lower_is_better_flips_gain(results):
    t = summarise(results.rename(columns={"acc": "rmse"}), "rmse", "scratch", higher_is_better=False)
    a1, a5 = _row(t, "A", 1), _row(t, "A", 5)
    assert a1["mean"] == pytest.approx((0.70 + 0.65 + 0.35) / 3)  # the statistics themselves do not flip
    assert a1["gain"] == pytest.approx(-0.20 / 3)
    assert a1["wins"] == 1 and not a1["negative"]  # its interval contains 0
    assert a1["gain_lo"] == pytest.approx(-_row(summarise(results, "acc", "scratch"), "A", 1)["gain_hi"])  # the interval flips too
    assert a5["gain"] == pytest.approx(0.02)
    assert a5["wins"] == 2 and not a5["negative"]


def test_summarise_without_baseline_has_no_gain(results):
    t = summarise(results[results.strategy != "scratch"], "acc", "scratch")
    assert "gain" not in t.columns and len(t) == 2


def test_baseline_first_orders_by_the_configured_baseline():
    assert baseline_first(["b", "scratch", "a", "b"], "scratch") == ["scratch", "a", "b"]
    assert baseline_first(["b", "scratch", "a"], "b") == ["b", "a", "scratch"]
    assert baseline_first(["b", "a"], "scratch") == ["a", "b"]


def test_load_results_reads_exactly_the_expected_runs(tmp_path):
    """Defect 6: files of other strategies, budgets, seeds or config digests are ignored and named;
    an expected run without a current result is an error naming it."""
    expected = {(s, k, seed): f"d-{s}" for s, k, seed, _ in ROWS[:4]}
    for strategy, k, seed, acc in ROWS[:4]:
        write_json(
            tmp_path / strategy / f"k{k}_seed{seed}.json",
            {
                "config_digest": f"d-{strategy}",
                "strategy": strategy,
                "budget": k,
                "seed": seed,
                "run_id": f"r{seed}",
                "test": {"test/acc": acc, "test/loss": 1.0},
            },
        )
    # Left by earlier runs: an old digest at an expected key's neighbour, a budget and a strategy no longer configured.
    write_json(
        tmp_path / "A" / "k1_seed7.json", {"config_digest": "d-A", "strategy": "A", "budget": 1, "seed": 7, "run_id": "x", "test": {"test/acc": 0.0}}
    )
    write_json(
        tmp_path / "scratch" / "k9_seed0.json",
        {"config_digest": "d-scratch", "strategy": "scratch", "budget": 9, "seed": 0, "run_id": "x", "test": {"test/acc": 0.0}},
    )
    write_json(tmp_path / "old" / "k1_seed0.json", {"strategy": "old", "budget": 1, "seed": 0, "run_id": "x", "test": {"test/acc": 0.0}})
    df, stale, _ = load_results(tmp_path, expected)
    assert len(df) == 4 and "loss" not in df.columns
    assert sorted(df["acc"]) == sorted(r[3] for r in ROWS[:4])
    assert sorted(stale) == ["A/k1_seed7.json", "old/k1_seed0.json", "scratch/k9_seed0.json"]
    # The current result of one run replaced by a stale one (config changed, finetune not rerun): an error naming it.
    write_json(
        tmp_path / "A" / "k1_seed0.json",
        {"config_digest": "d-old", "strategy": "A", "budget": 1, "seed": 0, "run_id": "x", "test": {"test/acc": 0.0}},
    )
    with pytest.raises(PipelineError, match=r"A/k1_seed0\.json.*4 stale"):
        load_results(tmp_path, expected)
    with pytest.raises(PipelineError, match=str(tmp_path / "empty")):
        load_results(tmp_path / "empty", expected)


# --------------------------------------------------------------------------------------------------
# io


def _leftovers(parent, name):
    return [p.name for p in parent.iterdir() if p.name.startswith(f".{name}.")]


def test_atomic_dir_failure_keeps_previous_output(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("previous")
    with pytest.raises(RuntimeError, match="stage failed"):
        with atomic_dir(target) as tmp:
            assert tmp != target and tmp.parent == target.parent
            (tmp / "new.txt").write_text("half")
            raise RuntimeError("stage failed")
    assert sorted(p.name for p in target.iterdir()) == ["old.txt"]
    assert (target / "old.txt").read_text() == "previous"
    assert _leftovers(tmp_path, "out") == []


def test_atomic_dir_failure_without_previous_output_leaves_nothing(tmp_path):
    target = tmp_path / "sub" / "out"
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(target) as tmp:
            (tmp / "x").write_text("x")
            raise KeyboardInterrupt
    assert not target.exists()
    assert list((tmp_path / "sub").iterdir()) == []


def test_atomic_dir_success_replaces(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("previous")
    with atomic_dir(target) as tmp:
        (tmp / "new.txt").write_text("fresh")
        assert (target / "old.txt").exists()  # untouched until the block ends
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert (target / "new.txt").read_text() == "fresh"
    assert _leftovers(tmp_path, "out") == []


def test_atomic_file_and_json(tmp_path):
    path = tmp_path / "r.json"
    write_json(path, {"b": 1, "a": [1, 2]})
    assert read_json(path, "result") == {"a": [1, 2], "b": 1}
    with pytest.raises(ValueError):
        with atomic_file(path) as fh:
            fh.write("{broken")
            raise ValueError
    assert read_json(path, "result") == {"a": [1, 2], "b": 1}
    assert _leftovers(tmp_path, "r.json") == []
    missing = tmp_path / "knowledge" / "summary.json"
    with pytest.raises(PipelineError, match=r"summary\.json \(extract summary\)"):
        read_json(missing, "extract summary")


def test_atomic_outputs_get_umask_permissions(tmp_path):
    import os

    umask = os.umask(0o022)
    try:
        with atomic_dir(tmp_path / "out") as tmp:
            (tmp / "a.txt").write_text("a")
        write_json(tmp_path / "r.json", {})
    finally:
        os.umask(umask)
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == 0o644
