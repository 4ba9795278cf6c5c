"""A loss that turns NaN or infinite, provoked for real with learning rates (or task weights) far too
large: the run stops with a message naming it, the epoch and the loss; its MLflow run ends FAILED;
the grid goes on; the results and the report list it as failed instead of averaging it in."""

from __future__ import annotations

import json
import re
import shutil

from support import ROOT, compose_cfg, mlflow_runs, run_cli, run_stages

DIVERGED = r"the training loss diverged at epoch \d+ \(step \d+[^)]*\): loss (nan|inf|-inf)"


def _statuses(runs) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for r in runs:
        out.setdefault(r.data.tags.get("strategy") or r.data.tags.get("method") or r.data.tags["stage"], []).append(r.info.status)
    return out


def test_divergent_finetune_runs_fail_and_the_grid_goes_on(pipeline_run, tmp_path, capsys):
    from pipeline.stages import finetune, report

    tmp = tmp_path / "p"
    shutil.copytree(pipeline_run["tmp"], tmp)  # prepared data, source model, extract and their store
    huge = "{log: [1.0e33, 1.0e34]}"
    cfg, out = run_stages(
        tmp,
        (finetune, report),
        [
            "strategy=[scratch,param_transfer,lp_ft]",
            "budget=1",
            "transfer.tuning.trials=2",
            # param_transfer: its drawn trial diverges, its configured one does not (a failed trial is not chosen);
            # lp_ft: the second phase of both trials diverges (every run of it fails).
            f"transfer.strategies.param_transfer.search.source_lr_scale={huge}",
            "transfer.strategies.lp_ft.source_lr_scale=1.0e33",
            f"transfer.strategies.lp_ft.search.source_lr_scale={huge}",
        ],
    )
    printed = capsys.readouterr()
    records = {(r["strategy"], r["seed"]): r for r in out["finetune"]}
    assert set(records) == {(s, seed) for s in ("scratch", "param_transfer", "lp_ft") for seed in (0, 1)}
    for seed in (0, 1):
        assert "failed" not in records["scratch", seed] and records["scratch", seed]["test"]["test/acc"] > 0
        pt = records["param_transfer", seed]
        assert pt["trial"] == 0 and "failed" not in pt  # the finished trial, chosen
        assert re.search(rf"finetune mnist_to_digits param_transfer k=1 seed={seed} trial 1: {DIVERGED}", pt["trials"][1]["failed"])
        lp = records["lp_ft", seed]
        assert "test" not in lp and lp["failed"] == "all 2 trials failed"
        message = lp["trials"][0]["failed"]
        assert re.search(rf"finetune mnist_to_digits lp_ft k=1 seed={seed} trial 0: {DIVERGED}", message), message
        assert "phase 2 of 2" in message and "source_lr_scale 1e+33" in message
        on_disk = json.loads((tmp / "artifacts" / "mnist_to_digits" / "finetune" / "lp_ft" / f"k1_seed{seed}.json").read_text())
        assert on_disk["failed"] == "all 2 trials failed"
    assert len(re.findall(r"lp_ft .* FAILED: the training loss diverged", printed.out)) == 4
    assert "warning: finetune mnist_to_digits: 6 of 12 runs failed" in printed.err

    client, runs = mlflow_runs(cfg, "mnist_to_digits")
    ours = [r for r in runs if r.info.run_id in {t["run_id"] for r in out["finetune"] for t in r["trials"]}]
    status = {(r.data.tags["strategy"], r.data.tags["seed"], r.data.tags["trial"]): r for r in ours}
    assert len(status) == 12 and not any(r.info.status == "RUNNING" for r in runs)
    for seed in "01":
        assert status["scratch", seed, "0"].info.status == status["scratch", seed, "1"].info.status == "FINISHED"
        assert status["param_transfer", seed, "0"].info.status == "FINISHED"
        for run in (status["param_transfer", seed, "1"], status["lp_ft", seed, "0"], status["lp_ft", seed, "1"]):
            assert run.info.status == "FAILED" and re.search(DIVERGED, run.data.tags["failure"])
        # the failed run keeps its history up to the divergence: LP-FT's first phase
        assert client.get_metric_history(status["lp_ft", seed, "0"].info.run_id, "val/acc")

    md = (tmp / "reports" / "mnist_to_digits.md").read_text()
    assert "⚠ 6 runs failed and are left out of every mean and gain" in md and "## Failed runs" in md
    assert re.search(r"\| lp_ft \| 1 \| 0 \| t1 \| no result at this seed \| the training loss diverged at epoch", md)
    assert re.search(r"\| param_transfer \| 1 \| 1 \| t1 \| trial t0 chosen instead \| the training loss diverged", md)
    assert "| lp_ft | failed (seeds [0, 1]) |" in md  # the mean table: a row that says so, not a number
    assert "| lp_ft | no pair: seeds [0, 1] failed |" in md  # the gain table
    assert re.search(r"\| param_transfer \| [+-]\d\.\d{3} \[[^]]+\] \(\d/2\)", md)  # both seeds paired


def test_divergent_pretrain_stops_the_chain(tmp_path):
    from pipeline.stages import prepare

    run_stages(tmp_path, (prepare,))
    res = run_cli(
        "pretrain",
        "pretrain.lr=1e30",
        "pretrain.max_epochs=3",
        "trainer.progress_bar=false",
        cwd=tmp_path,
        env={"PIPELINE_CONF_DIR": str(ROOT / "conf")},
    )
    assert res.returncode == 2, res.stderr
    last = res.stderr.splitlines()[-1]  # after MLflow's notes on creating the store
    assert re.fullmatch(rf"error: pretrain mnist_to_digits seed=0: {DIVERGED}; lower pretrain.lr \(it trained with lr 1e\+30\)", last), res.stderr
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "artifacts" / "mnist_to_digits" / "sources" / "source").exists()
    _, runs = mlflow_runs(compose_cfg(tmp_path), "mnist_to_digits")
    (run,) = runs
    assert run.info.status == "FAILED" and re.search(DIVERGED, run.data.tags["failure"])


def test_divergent_multitask_runs_fail_and_the_grid_goes_on(tmp_path):
    from pipeline.stages import multitask, prepare, report

    cfg, out = run_stages(
        tmp_path,
        (prepare, multitask, report),
        [
            "exp=synthetic_related",
            "multitask.seeds=[0]",
            "multitask.max_epochs=3",
            "multitask.min_steps_per_epoch=2",
            "multitask_experiments.synthetic_related.data.n_tasks=3",
            "+multitask_experiments.synthetic_related.schemes=[single_task,hard,soft]",
            "+multitask_experiments.synthetic_related.weightings=[equal,uncertainty]",
            # task weights exp(100): the loss overflows; a coupling of 3e38 overflows its gradient
            "multitask.weightings.uncertainty.init_log_var=-100",
            "multitask.archs.soft.auto_grid.coupling=[0.0,3.0e38]",
        ],
    )
    records = {f"{r['scheme']}+{r['weighting']}": r for r in out["multitask"] if not r.get("classic")}
    assert re.search(rf"multitask synthetic_related hard\+uncertainty seed=0: {DIVERGED}", records["hard+uncertainty"]["failed"])
    assert "test" not in records["hard+uncertainty"] and "failed" not in records["hard+equal"]
    soft = records["soft+equal"]
    assert soft["arch"]["coupling"] == 0.0 and re.search(rf"soft\+equal seed=0 candidate 1: {DIVERGED}", soft["failed_candidates"][0]["failed"])

    client, runs = mlflow_runs(cfg, "synthetic_related")
    by_id = {r.info.run_id: r for r in runs}
    assert by_id[records["hard+uncertainty"]["run_id"]].info.status == "FAILED"
    assert by_id[soft["failed_candidates"][0]["run_id"]].info.status == "FAILED"
    assert by_id[soft["run_id"]].info.status == by_id[records["hard+equal"]["run_id"]].info.status == "FINISHED"
    assert not any(r.info.status == "RUNNING" for r in runs)

    md = (tmp_path / "reports" / "synthetic_related.md").read_text()
    assert "⚠ 2 runs failed and are left out of Δm and every table" in md and "## Failed runs" in md
    assert re.search(r"\| hard\+uncertainty \| 0 \| no result at this seed \| the training loss diverged", md)
    assert re.search(r"\| soft\+equal \| 0 \| another candidate chosen \| the training loss diverged", md)
    assert "| hard+uncertainty | failed (seeds [0]) |" in md


def test_a_stage_run_alone_needs_no_sweep_objective(tmp_path):
    """`pipeline finetune strategy=linear` (no network strategy, so nothing for a sweeper to optimise)
    succeeds outside a sweep."""
    from pipeline.stages import extract, prepare, pretrain

    run_stages(tmp_path, (prepare, pretrain, extract))
    res = run_cli("finetune", "strategy=linear", "budget=1", "seed=0", cwd=tmp_path, env={"PIPELINE_CONF_DIR": str(ROOT / "conf")})
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "artifacts" / "mnist_to_digits" / "finetune" / "linear" / "k1_seed0.json").is_file()
