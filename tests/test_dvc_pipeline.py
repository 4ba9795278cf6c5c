"""The DVC DAG end to end on a tiny study, in a fresh copy of the project, the way a user runs it."""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from support import BIN, ROOT, TINY, copy_project, sh

pytestmark = [pytest.mark.timeout(900), pytest.mark.slow]


def test_committed_params_yaml_matches_conf(tmp_path):
    """`dvc repro` reads params.yaml; it must be exactly what DVC's Hydra composition makes of conf/."""
    from pipeline.params import compose_params

    fresh = compose_params(tmp_path / "params.yaml", conf_dir=ROOT / "conf")
    assert fresh.read_text() == (ROOT / "params.yaml").read_text(), "params.yaml is stale: run `make params`"


def ran(log: str) -> set[str]:
    return {line.split("'")[1] for line in log.splitlines() if line.startswith("Running stage")}


def test_dvc_repro_reruns_exactly_what_changed(tmp_path):
    repo = copy_project(tmp_path / "repo")
    (repo / "dvc.lock").unlink(missing_ok=True)
    sh("git", "init", "-q", cwd=repo)
    # One transfer chain and one multitask chain (3 synthetic tasks, two schemes, two weightings).
    mt = "multitask_experiments.synthetic_related"
    tiny = [
        *TINY,
        "~experiment@experiments.mnist_new_classes",
        *(f"~candidates@sources.{c}" for c in ("raw_shallow", "raw_random", "raw_lenet", "mnist_uci_0to4", "mnist_uci_narrow")),  # one candidate left
        "transfer.seeds=[0]",
        "multitask.seeds=[0]",
        *(f"~experiment@multitask_experiments.{e}" for e in ("multimnist", "exam_schools", "star")),
        f"+experiment@{mt}=synthetic_related",
        f"{mt}.data.n_tasks=3",
        f"+{mt}.schemes=[single_task,hard]",
        f"+{mt}.weightings=[equal,mgda_ub]",
        "multitask.max_epochs=3",
        "multitask.min_steps_per_epoch=2",
    ]
    sh(str(BIN / "pipeline-params"), *tiny, cwd=repo)

    first = sh(str(BIN / "dvc"), "repro", cwd=repo)
    assert ran(first) == {
        *(f"{s}@mnist_to_digits" for s in ("prepare", "pretrain", "extract", "finetune", "rank", "report")),
        "candidate@uci_random",
        *(f"{s}@synthetic_related" for s in ("mt_prepare", "multitask", "mt_report")),
    }
    assert "finetune mnist_to_digits param_transfer     k=3   seed=0 test/acc=" in first  # one line per run
    # A phased plan's epochs count every phase, each capped at transfer.max_epochs (3 here).
    assert re.search(r"finetune mnist_to_digits lp_ft +k=1 +seed=0 test/acc=\S+ epochs \d+ in 2 phases \(at most 6\), best \d+", first)
    assert "multitask synthetic_related hard        mgda_ub      seed=0 test/score=" in first
    for f in (
        "mnist_to_digits.md",
        "mnist_to_digits_sources.md",
        "figures/mnist_to_digits_label_efficiency.png",
        "figures/mnist_to_digits_sources/k1.png",
        "synthetic_related.md",
        "figures/synthetic_related_per_task.png",
        "figures/synthetic_related_task_weights.png",
    ):
        assert (repo / "reports" / f).exists(), f
    assert "| hard+mgda_ub |" in (repo / "reports" / "synthetic_related.md").read_text()

    again = sh(str(BIN / "dvc"), "repro", cwd=repo)
    assert ran(again) == set() and "up to date" in again

    sh(str(BIN / "pipeline-params"), *tiny, "transfer.lr=0.003", "multitask.lr=0.003", cwd=repo)
    changed = sh(str(BIN / "dvc"), "repro", cwd=repo)
    # rank@ fine-tunes from the candidates with the same rate.
    assert ran(changed) == {
        *(f"{s}@mnist_to_digits" for s in ("finetune", "rank", "report")),
        "multitask@synthetic_related",
        "mt_report@synthetic_related",
    }

    metrics = sh(str(BIN / "dvc"), "metrics", "show", cwd=repo)
    # A row per strategy or method, a handful of columns: it fits a terminal.
    rows = {line.split()[0]: line.split()[1:] for line in metrics.splitlines()[1:] if line.strip()}
    header = metrics.splitlines()[0].split()
    assert header[0] == "Path" and {"k01", "k03", "delta_m"} <= set(header), header
    assert "reports/metrics/mnist_to_digits/param_transfer.json" in rows and "reports/metrics/synthetic_related/hard+mgda_ub.json" in rows
    assert max(map(len, metrics.splitlines())) <= 120, metrics
    plots = sh(str(BIN / "dvc"), "plots", "show", "--json", cwd=repo)
    assert "reports/plots/synthetic_related.csv" in plots and "hard+mgda_ub" in plots

    # A shell without the project's environment: the report stage cannot start, and DVC must not
    # have deleted the reports (git-tracked, not in DVC's cache) before finding that out.
    report = (repo / "reports" / "mnist_to_digits.md").read_bytes()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"} | {"PATH": "/usr/bin:/bin"}
    res = subprocess.run([str(BIN / "dvc"), "repro", "-f", "-s", "report@mnist_to_digits"], cwd=repo, capture_output=True, text=True, env=env)
    assert res.returncode != 0 and "pipeline" in res.stdout + res.stderr
    assert (repo / "reports" / "mnist_to_digits.md").read_bytes() == report
    assert (repo / "reports" / "figures" / "mnist_to_digits_label_efficiency.png").exists()
    assert (repo / "reports" / "metrics" / "mnist_to_digits" / "param_transfer.json").exists()
