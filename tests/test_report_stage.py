"""The report stage end to end: transfer on a fake finished chain (result records as the stages write
them), multitask after the real stage at tiny budgets."""

from __future__ import annotations

import json

import pytest
import yaml

from pipeline.errors import PipelineError
from pipeline.io import write_json
from support import ROOT, read_metrics

STRATEGIES = ["scratch", "feature_retrain", "param_transfer", "structure_transfer"]
CONFIGURED = yaml.safe_load((ROOT / "params.yaml").read_text())["transfer"]["strategies"]


@pytest.fixture
def make_cfg(make_cfg):
    """The study with the survey's four strategies only: the fake chain below writes their results."""
    drop = [f"~transfer.strategies.{s}" for s in CONFIGURED if s not in STRATEGIES]
    return lambda *overrides: make_cfg(*drop, *overrides)


LINEAR = {1: {"test/acc": 0.2, "test/f1": 0.2}, 3: {"test/acc": 0.7, "test/f1": 0.6}}  # beats every network at k=3 only


def _fake_transfer_chain(cfg, root, linear=LINEAR) -> None:
    """What prepare, pretrain, extract and finetune leave for mnist_to_digits (budgets [1, 3], seeds [0, 1])."""
    from pipeline.stages.finetune import linear_params, run_params
    from pipeline.tracking import digest

    exp = root / "artifacts" / "mnist_to_digits"
    write_json(
        exp / "data" / "target" / "meta.json",
        {"tasks": [{"name": "digit", "kind": "classification", "classes": [str(i) for i in range(10)]}], "provenance": {"content_hash": "hash-t"}},
    )
    write_json(exp / "sources" / "source" / "summary.json", {"run_id": "src-run", "test": {"test/acc": 0.9}})
    write_json(exp / "knowledge" / "summary.json", {"zero_shot_acc": 0.3, "leep": -1.5})
    write_json(exp / "knowledge" / "scores.json", [])
    for i, s in enumerate(STRATEGIES):
        d = digest({**run_params(cfg, s), "data_hash": "hash-t", "source_run_id": "src-run"})
        for k in (1, 3):
            for seed in (0, 1):
                write_json(
                    exp / "finetune" / s / f"k{k}_seed{seed}.json",
                    {
                        "config_digest": d,
                        "strategy": s,
                        "budget": k,
                        "seed": seed,
                        "run_id": f"{s}-{k}-{seed}",
                        "test": {"test/acc": 0.3 + 0.1 * k + 0.02 * i + 0.01 * seed, "test/f1": 0.5, "test/loss": 1.0},
                    },
                )
    features = {1: {"test/acc": 0.1, "test/f1": 0.1}, 3: {"test/acc": 0.2, "test/f1": 0.2}}  # below every network
    for name, values in (("linear", linear), ("linear_features", features)):
        d = digest({**linear_params(cfg, name, "src-run"), "data_hash": "hash-t"})
        for k in (1, 3):
            for seed in (0, 1):
                write_json(
                    exp / "finetune" / name / f"k{k}_seed{seed}.json",
                    {
                        "config_digest": d,
                        "strategy": name,
                        "classic": True,
                        "budget": k,
                        "seed": seed,
                        "run_id": f"{name}-{k}-{seed}",
                        "test": values[k],
                    },
                )


def _files(path) -> list[str]:
    return sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())


def test_transfer_report_reads_only_current_runs_and_says_which_it_ignored(make_cfg, tmp_path):
    from pipeline.stages import report

    cfg = make_cfg()
    _fake_transfer_chain(cfg, tmp_path)
    ft = tmp_path / "artifacts" / "mnist_to_digits" / "finetune"
    # Left by earlier runs outside DVC: a seed and a strategy no longer configured, an old digest.
    write_json(
        ft / "scratch" / "k1_seed5.json", {**json.loads((ft / "scratch" / "k1_seed0.json").read_text()), "seed": 5, "test": {"test/acc": 0.99}}
    )
    write_json(
        ft / "old_strategy" / "k1_seed0.json",
        {"config_digest": "x", "strategy": "old_strategy", "budget": 1, "seed": 0, "run_id": "o", "test": {"test/acc": 0.99}},
    )
    metrics = report.run(cfg)
    assert set(metrics) == {*STRATEGIES, "linear", "linear_features", "source_no_labels"}
    assert metrics["scratch"] == {"k01": pytest.approx(0.405), "k03": pytest.approx(0.605)}  # seeds 0 and 1 only, not the stale 0.99
    md = (tmp_path / "reports" / "mnist_to_digits.md").read_text()
    assert "24 fine-tune runs of the current configuration; 2 result files of other configurations or runs ignored (stale):" in md
    assert "`old_strategy/k1_seed0.json`" in md and "`scratch/k1_seed5.json`" in md
    assert "Gain over `scratch`" in md and "target labels per class" not in md  # the unit is in the text, the axis is in the figure
    plot = (tmp_path / "reports" / "plots" / "mnist_to_digits.csv").read_text().splitlines()
    columns = [*STRATEGIES, "linear", "linear_features", "source_no_labels"]
    assert plot[0] == "labels_per_class," + ",".join(columns) and len(plot) == 3  # as dvc.yaml reads it
    # The report run in MLflow holds the summary it reports: means and paired gains per strategy and budget.
    from support import mlflow_runs

    _, runs = mlflow_runs(cfg, "mnist_to_digits")
    logged = next(r for r in runs if r.data.tags.get("stage") == "report").data.metrics
    assert logged["acc/scratch/k03"] == pytest.approx(0.605) and "gain/param_transfer/k01" in logged and "gain/scratch/k01" not in logged


def test_transfer_report_has_sanity_rows_and_says_when_a_linear_model_beats_every_network(make_cfg, tmp_path):
    """Item 10: the linear model on the k target rows and the zero-label source model are rows of the
    table (not of the gains), and Findings say where the linear model beats every network strategy."""
    from pipeline.stages import report

    cfg = make_cfg()
    _fake_transfer_chain(cfg, tmp_path)
    report.run(cfg)
    md = (tmp_path / "reports" / "mnist_to_digits.md").read_text()
    assert "| linear | 0.200 [0.200, 0.200] | 0.700 [0.700, 0.700] |" in md
    assert "| source_no_labels | 0.300 [0.300, 0.300] | 0.300 [0.300, 0.300] |" in md
    gains = md.split("## Gain over")[1].split("## Findings")[0]
    assert "| linear |" not in gains and "| source_no_labels |" not in gains
    findings = md.split("## Findings")[1].split("##")[0]
    assert "- k=3: `linear` (a linear model on the same k rows, 0.700 [0.700, 0.700]) is above every network strategy on the mean" in findings
    assert "k=1: `linear`" not in findings and "`source_no_labels` (" not in findings
    assert "scores acc 0.300 on the target test split (row `source_no_labels`)" in md
    # The linear runs belong to the configuration: a stale one is named like a stale strategy run.
    lin = tmp_path / "artifacts" / "mnist_to_digits" / "finetune" / "linear" / "k1_seed0.json"
    lin.write_text(lin.read_text().replace('"config_digest": "', '"config_digest": "old'))
    with pytest.raises(PipelineError, match=r"linear/k1_seed0\.json"):
        report.run(cfg)


def test_transfer_report_warns_of_an_under_trained_source(make_cfg, tmp_path):
    """Item 8: the pretrain summary says the best epoch was the cap; the report says to raise it."""
    from pipeline.stages import report

    cfg = make_cfg()
    _fake_transfer_chain(cfg, tmp_path)
    summary = tmp_path / "artifacts" / "mnist_to_digits" / "sources" / "source" / "summary.json"
    report.run(cfg)
    assert "Under-trained source" not in (tmp_path / "reports" / "mnist_to_digits.md").read_text()
    write_json(summary, json.loads(summary.read_text()) | {"best_epoch": 39, "max_epochs": 40, "best_epoch_at_cap": True})
    report.run(cfg)
    assert (
        "- ⚠ Under-trained source: the source model's best epoch (39) was the last allowed (max_epochs=40): raise pretrain.max_epochs."
        in (tmp_path / "reports" / "mnist_to_digits.md").read_text()
    )


def test_transfer_baseline_comes_from_the_config(make_cfg, tmp_path):
    # transfer.baseline is part of the finetune config digest (finetune.run_params), so the chain is faked with it.
    from pipeline.stages import report

    cfg = make_cfg("transfer.baseline=structure_transfer")
    _fake_transfer_chain(cfg, tmp_path)
    report.run(cfg)
    md = (tmp_path / "reports" / "mnist_to_digits.md").read_text()
    assert "Gain over `structure_transfer`" in md and "| scratch | -0.060 [-0.060, -0.060] (0/2) ⚠ negative transfer |" in md
    assert list(read_metrics(tmp_path / "reports", "mnist_to_digits")) == [
        "feature_retrain",
        "linear",
        "linear_features",
        "param_transfer",
        "scratch",
        "source_no_labels",
        "structure_transfer",
    ]  # a file per row, the baseline among them
    with pytest.raises(PipelineError, match=r"transfer\.baseline='nope'"):
        report.run(make_cfg("transfer.baseline=nope"))
    with pytest.raises(PipelineError, match=r"transfer\.baseline='structure_transfer': no runs"):
        report.run(make_cfg("transfer.baseline=structure_transfer", "strategy=scratch"))


def test_transfer_report_after_a_config_change_names_the_missing_runs(make_cfg, tmp_path):
    from pipeline.stages import report

    _fake_transfer_chain(make_cfg(), tmp_path)
    with pytest.raises(PipelineError, match=r"no result of the current configuration for .*scratch/k1_seed0\.json.*16 stale"):
        report.run(make_cfg("transfer.lr=0.5"))
    assert not (tmp_path / "reports").exists()


def test_transfer_report_failure_leaves_no_stray_file(make_cfg, tmp_path):
    """Defect 4: a step failing after the figure was drawn left a temporary PNG in reports/figures/
    (and a new report next to old metrics)."""
    from pipeline.stages import report

    cfg = make_cfg()
    _fake_transfer_chain(cfg, tmp_path)
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "metrics").write_text("not a directory")  # the metrics file cannot be written
    with pytest.raises(OSError):
        report.run(cfg)
    assert _files(tmp_path / "reports") == ["metrics"]


# --------------------------------------------------------------------------------------------------
# multitask, after the real stage

TINY_MT = [
    "exp=synthetic_related",
    "multitask.seeds=[1,2]",
    "multitask.max_epochs=3",
    "multitask.min_steps_per_epoch=2",
    "multitask_experiments.synthetic_related.data.n_tasks=3",
    "multitask_experiments.synthetic_related.data.n_per_task=40",
    "+multitask_experiments.synthetic_related.schemes=[single_task,mmoe]",
    "+multitask_experiments.synthetic_related.weightings=[equal,upgrad]",
    "multitask.weightings_on=[mmoe]",
    "multitask.archs.mmoe.expert_hidden=[16]",
]


@pytest.fixture(scope="module")
def mt_chain(tmp_path_factory):
    """prepare + multitask on synthetic_related without `hard`, at seeds 1 and 2."""
    from pipeline.stages import multitask, prepare
    from support import run_stages

    tmp = tmp_path_factory.mktemp("mt")
    _, out = run_stages(tmp, (prepare, multitask), TINY_MT)
    return tmp, out["multitask"]


@pytest.fixture
def mt_cfg(mt_chain, monkeypatch, tmp_path):
    """A fresh copy of the multitask chain's outputs for each test, and its config with extra overrides."""
    import shutil

    from support import compose_cfg

    src, _ = mt_chain
    shutil.copytree(src / "artifacts", tmp_path / "artifacts")
    shutil.copy(src / "mlflow.db", tmp_path / "mlflow.db")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return lambda *extra: compose_cfg(tmp_path, [*TINY_MT, *extra])


def test_multitask_weight_figure_follows_the_runs_present(mt_cfg, tmp_path):
    """Defect 3: without `hard` the figure was empty and the caption said `hard sharing`; the seed was min(cfg.seeds)."""
    from pipeline.stages import report

    report.run(mt_cfg())
    # The DVC metrics file is the compact summary (Δm per method); the plot file what .dvc/plots/delta_m.json reads.
    metrics = read_metrics(tmp_path / "reports", "synthetic_related")
    assert all(list(v) == ["delta_m"] for v in metrics.values()) and "mmoe+upgrad" in metrics
    plot = (tmp_path / "reports" / "plots" / "synthetic_related.csv").read_text().splitlines()
    assert plot[0] == "method,delta_m,shown,note,kind" and len(plot) == 1 + len(metrics)
    md = (tmp_path / "reports" / "synthetic_related.md").read_text()
    assert (
        "Task weights per epoch (seed 1): `mmoe+upgrad`; mean cosine of the task gradients on the shared parameters: `mmoe+equal`, `mmoe+upgrad`."
        in md
    )
    assert "- Gradient conflict under `mmoe+" in md and "(seed 1)" in md
    assert (tmp_path / "reports" / "figures" / "synthetic_related_task_weights.png").read_bytes()[:4] == b"\x89PNG"
    report.run(mt_cfg("seed=2"))  # one seed selected: the figure and text follow it
    md = (tmp_path / "reports" / "synthetic_related.md").read_text()
    assert "Task weights per epoch (seed 2)" in md and "seeds [2]" in md


def test_multitask_report_ignores_stale_records_and_lists_skipped_baselines(mt_cfg, tmp_path):
    """Defects 6 and 7: records of earlier configurations are left out and named; skipped classic baselines are listed."""
    from pipeline.stages import report

    out = tmp_path / "artifacts" / "synthetic_related" / "multitask"
    stale = json.loads((out / "mmoe+upgrad" / "seed1.json").read_text())
    write_json(out / "hard+upgrad" / "seed1.json", stale | {"scheme": "hard", "test": {k: 0.0 for k in stale["test"]}})  # an earlier grid
    write_json(out / "mmoe+upgrad" / "seed7.json", stale | {"seed": 7})  # an earlier seed list
    pooled = json.loads((out / "ridge_pooled+sklearn" / "seed0.json").read_text())
    (out / "ridge_pooled+sklearn" / "seed0.json").unlink()
    write_json(out / "skipped.json", {"ridge_pooled": "tasks of different kinds"})
    metrics = report.run(mt_cfg())
    assert "hard+upgrad" not in metrics and "ridge_pooled+sklearn" not in metrics
    md = (tmp_path / "reports" / "synthetic_related.md").read_text()
    assert "2 result files of other configurations or runs ignored (stale): `hard+upgrad/seed1.json`, `mmoe+upgrad/seed7.json`." in md
    assert "- Classic baselines without a result: `ridge_pooled`: tasks of different kinds." in md
    assert "- Tasks in Δm: 3 of 3, the same for every method." in md
    # A classic baseline with neither a result nor a reason is said so too.
    (out / "skipped.json").unlink()
    report.run(mt_cfg())
    assert "`ridge_pooled`: no result written and no reason recorded" in (tmp_path / "reports" / "synthetic_related.md").read_text()
    write_json(out / "ridge_pooled+sklearn" / "seed0.json", pooled)
    # Another configuration: every neural record is stale, and the report names what is missing.
    with pytest.raises(PipelineError, match=r"no multitask result of the current configuration for .*single_task\+equal/seed1\.json"):
        report.run(mt_cfg("multitask.lr=0.5"))


def test_the_printed_mlflow_ui_command_runs_in_the_shell_it_is_printed_to(monkeypatch):
    """`mlflow` where the shell finds this environment's; its path where the environment is not active."""
    import sys
    from pathlib import Path

    from pipeline.stages.report import mlflow_ui

    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    cmd = mlflow_ui("sqlite:///m.db")
    exe = cmd.split(" ui ")[0]
    assert cmd.endswith(" ui --backend-store-uri sqlite:///m.db") and exe != "mlflow"
    assert (Path.cwd() / exe).resolve() == (Path(sys.executable).parent / "mlflow").resolve()
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}:/usr/bin:/bin")
    assert mlflow_ui("sqlite:///m.db") == "mlflow ui --backend-store-uri sqlite:///m.db"
