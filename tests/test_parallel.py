"""Runs trained side by side in worker processes are the runs a single process makes, logged the same way."""

from __future__ import annotations

import json
import os

import pytest

from support import mlflow_runs

TINY_MT = ["exp=synthetic_related", "multitask.seeds=[0,1]", "multitask.max_epochs=3", "multitask.patience=2"]
GRID = [
    "+multitask_experiments.synthetic_related.schemes=[single_task,hard,soft]",
    "+multitask_experiments.synthetic_related.weightings=[equal,mgda]",
    "multitask.archs.soft.auto_grid.coupling=[0.0,0.01]",
]


def _fail_on_seed_one(context, job):
    if job == 1:
        raise ValueError("job 1 failed")
    return (os.getpid(), context * job)


def test_worker_count_follows_the_setting_the_jobs_and_the_cores():
    from pipeline.errors import PipelineError
    from pipeline.training.parallel import worker_count

    assert worker_count(3, 10) == 3
    assert worker_count(3, 2) == 2  # never more than the jobs
    assert worker_count(0, 1) == worker_count(5, 1) == 1
    assert worker_count(0, 1000) == len(os.sched_getaffinity(0))
    with pytest.raises(PipelineError, match="trainer.workers"):
        worker_count(-1, 4)


@pytest.mark.parametrize("workers", [1, 2])
def test_jobs_keep_their_order_and_a_failure_keeps_its_type_and_traceback(workers):
    from pipeline.training.parallel import jobs

    with jobs(_fail_on_seed_one, 10, [0, 2, 3], workers) as outs:
        got = list(outs)
    assert [v for _, v in got] == [0, 20, 30]
    pids = {pid for pid, _ in got}
    assert pids == {os.getpid()} if workers == 1 else os.getpid() not in pids
    with pytest.raises(ValueError, match="job 1 failed") as err, jobs(_fail_on_seed_one, 10, [0, 1, 2], workers) as outs:
        list(outs)
    if workers > 1:
        assert "_fail_on_seed_one" in str(err.value.__cause__)  # the worker's traceback comes along


def test_multitask_runs_on_two_workers_equal_the_runs_in_one_process(make_cfg, tmp_path):
    """Same records (test metrics, epochs, steps, task-weight history) and the same MLflow runs,
    whichever process trained them."""
    from pipeline.stages import multitask, prepare

    out = {}
    for workers in (1, 2):
        cfg = make_cfg(*TINY_MT, *GRID, f"trainer.workers={workers}")
        prepare.run(cfg)
        out[workers] = multitask.run(cfg)
    keep = ("scheme", "weighting", "seed", "arch", "test", "best_val", "best_epoch", "steps", "history", "config_digest")
    one, two = ([{k: r.get(k) for k in keep} for r in out[w]] for w in (1, 2))
    assert len(one) == 4 * 2 + 2  # single_task, hard+equal, hard+mgda, soft per seed; two ridge baselines
    assert json.dumps(one, sort_keys=True) == json.dumps(two, sort_keys=True)

    client, runs = mlflow_runs(cfg, "synthetic_related")
    by_id = {r.info.run_id: r for r in runs}
    for a, b in zip(out[1], out[2]):
        ra, rb = by_id[a["run_id"]], by_id[b["run_id"]]
        assert ra.data.metrics == rb.data.metrics and ra.data.params == rb.data.params
        assert rb.info.status == "FINISHED"
        for key in ("val/score", "train/loss"):
            if key in ra.data.metrics:
                history = [[(m.step, m.value) for m in client.get_metric_history(r.info.run_id, key)] for r in (ra, rb)]
                assert history[0] == history[1] and len(history[1]) >= 2  # per-epoch history, not just the last value


def test_finetune_runs_on_two_workers_equal_the_runs_in_one_process(tmp_path):
    from pipeline.stages import extract, finetune, prepare, pretrain
    from support import run_stages

    (tmp_path / "w").mkdir()
    cfg, out1 = run_stages(tmp_path, (prepare, pretrain, extract, finetune), ["trainer.workers=1"])
    cfg2, out2 = run_stages(tmp_path / "w", (prepare, pretrain, extract, finetune), ["trainer.workers=2"])
    keep = ("strategy", "budget", "seed", "test", "best_epoch", "steps", "n_train")
    assert [{k: r.get(k) for k in keep} for r in out1["finetune"]] == [{k: r.get(k) for k in keep} for r in out2["finetune"]]
    _, runs = mlflow_runs(cfg2, "mnist_to_digits")
    ft = [r for r in runs if r.data.tags["stage"] == "finetune" and r.data.tags.get("classic") != "true"]
    assert len(ft) == len([r for r in out2["finetune"] if not r.get("classic")]) > 0
    assert all("fit/seconds" in r.data.metrics and "val/acc" in r.data.metrics for r in ft)


def _draws_a_bar(settings, job):
    from pipeline.training import trainer

    return trainer(settings, max_epochs=1).progress_bar_callback is not None


@pytest.mark.parametrize("workers", [1, 2])
def test_workers_train_without_progress_bars_and_each_run_says_how_it_ended(workers, monkeypatch, make_cfg, capsys):
    """In a terminal a run in the stage's process shows Lightning's bar; runs side by side do not (their
    bars would overwrite each other), and the stage prints one line per run: epochs of the cap, whether
    early stopping ended it, the kept epoch."""
    import sys

    from pipeline.config import TrainerConfig
    from pipeline.stages import multitask, prepare
    from pipeline.training.parallel import jobs

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    settings = TrainerConfig(
        accelerator="cpu",
        devices=1,
        strategy=None,
        num_threads=1,
        workers=workers,
        progress_bar=True,
        deterministic=False,
        val_every_n_epochs=1,
        steps_per_batch=0,
    )
    with jobs(_draws_a_bar, settings, [0, 1], workers) as outs:
        assert list(outs) == [workers == 1] * 2

    cfg = make_cfg(*TINY_MT, "+multitask_experiments.synthetic_related.schemes=[hard]", "+multitask_experiments.synthetic_related.weightings=[equal]")
    prepare.run(cfg)
    capsys.readouterr()
    results = multitask.run(cfg)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("multitask synthetic_related hard")]
    assert len(lines) == 2  # one per seed
    for r, line in zip(results, lines):
        end = "early stop" if r["epochs"] < 3 else "cap"
        assert f"epochs {r['epochs']}/3 ({end}), best {r['best_epoch'] + 1}" in line
