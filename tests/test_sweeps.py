"""Hydra multiruns whose jobs run at once land every run in the tracking store exactly once: joblib
with 2 workers and submitit's local executor against a SQLite file that does not exist yet (created
once by `pipeline.sweeps.TrackingStore` before the jobs start), and an Optuna search whose trials are
MLflow runs and whose objective is the validation score."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from support import CONF, ROOT, TINY, run_cli

pytestmark = pytest.mark.slow  # a real server, queue, cluster launcher or several processes: `make test-quick` skips it

EXP = "mnist_to_digits"


@pytest.fixture
def sweep_dir(pipeline_run, tmp_path):
    """A working folder with the chain's prepared data, source and extracted features (what a sweep of
    finetune starts from), and no tracking store yet."""
    for part in ("data", "sources", "knowledge"):
        shutil.copytree(pipeline_run["tmp"] / "artifacts" / EXP / part, tmp_path / "artifacts" / EXP / part)
    return tmp_path


def sweep(cwd: Path, *args: str):
    """`pipeline finetune -m ...` on the tiny config, against cwd/mlflow.db (new): (result, client, runs)."""
    db = cwd / "mlflow.db"
    assert not db.exists()
    res = run_cli(
        "finetune",
        "-m",
        *args,
        f"exp={EXP}",
        "trainer.workers=1",
        *TINY,
        f"paths.artifacts={cwd / 'artifacts'}",
        f"tracking.uri=sqlite:///{db}",
        cwd=cwd,
        env={"PIPELINE_CONF_DIR": str(CONF)},
    )
    assert res.returncode == 0, res.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{db}")
    exp = client.get_experiment_by_name(EXP)
    return res, client, client.search_runs([exp.experiment_id], max_results=1000)


def test_joblib_with_two_workers_lands_every_run_once_in_a_new_sqlite_store(sweep_dir):
    res, _, runs = sweep(sweep_dir, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "strategy=scratch,param_transfer", "seed=0,1", "budget=1")
    assert "Joblib.Parallel(n_jobs=2" in res.stderr + res.stdout
    pairs = sorted((r.data.tags["strategy"], int(r.data.tags["seed"])) for r in runs)
    assert pairs == [("param_transfer", 0), ("param_transfer", 1), ("scratch", 0), ("scratch", 1)]  # none lost, none twice
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert sorted(int(r.data.tags["hydra_job"]) for r in runs) == [0, 1, 2, 3]
    assert {r.data.tags["launcher"] for r in runs} == {"multirun"}
    for s, seed in pairs:  # each job wrote its own result record
        assert (sweep_dir / "artifacts" / EXP / "finetune" / s / f"k1_seed{seed}.json").is_file()


def test_submitit_local_runs_each_job_in_its_own_process_into_the_store(sweep_dir):
    _, _, runs = sweep(sweep_dir, "hydra/launcher=submitit_local", "strategy=scratch", "seed=0,1", "budget=1")
    assert sorted((r.data.tags["strategy"], int(r.data.tags["seed"]), r.info.status) for r in runs) == [
        ("scratch", 0, "FINISHED"),
        ("scratch", 1, "FINISHED"),
    ]
    logs = sorted(p.name for p in (sweep_dir / ".submitit").rglob("*_result.pkl"))
    assert len(logs) == 2  # submitit ran two jobs


def test_optuna_trials_are_mlflow_runs_and_it_optimises_the_validation_score(sweep_dir):
    _, client, runs = sweep(sweep_dir, "hydra/sweeper=finetune_lr", "hydra.sweeper.n_trials=3", "strategy=param_transfer", "budget=3", "seed=0")
    assert len(runs) == 3 and {r.info.status for r in runs} == {"FINISHED"}
    lrs = [float(r.data.params["transfer.lr"]) for r in runs]
    assert len(set(lrs)) == 3 and all(1e-4 <= lr <= 1e-1 for lr in lrs)
    assert {r.data.params["transfer.tuning.trials"] for r in runs} == {"1"}
    # Each trial's value is its run's validation accuracy at the kept epoch (the best of its history), not a test score.
    best_val = {float(r.data.params["transfer.lr"]): max(m.value for m in client.get_metric_history(r.info.run_id, "val/acc")) for r in runs}
    result = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert result["best_value"] == pytest.approx(max(best_val.values()))
    assert best_val[result["best_params"]["transfer.lr"]] == pytest.approx(result["best_value"])


def test_a_sweep_direction_against_the_metric_is_an_error_naming_both(tmp_path, monkeypatch):
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    from pipeline.errors import PipelineError
    from pipeline.stages import check_direction
    from pipeline.stages.finetune import objective

    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose("config", overrides=["hydra/sweeper=finetune_lr"], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    try:
        check_direction("val/acc", higher_is_better=True)
        with pytest.raises(
            PipelineError,
            match=r"hydra.sweeper.direction=maximize, but the objective, validation val/rmse, is better lower: set hydra.sweeper.direction=minimize",
        ):
            check_direction("val/rmse", higher_is_better=False)
    finally:
        HydraConfig.instance().cfg = None
    check_direction("val/rmse", higher_is_better=False)  # no sweeper: nothing to check
    records = [{"cv": None, "best_val": 0.5}, {"cv": 0.75, "best_val": 0.0}, {"classic": True, "test": {"test/acc": 1.0}}]
    assert objective(records) == 0.625  # the selection score of each network run; test never enters
    with pytest.raises(PipelineError, match="select one with strategy="):
        objective([{"classic": True}])


def test_the_sweep_creates_the_experiments_it_will_use_and_a_lost_create_race_takes_the_winners(tmp_path):
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict, read_write

    from pipeline.sweeps import swept_experiments
    from pipeline.tracking import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, experiment_id

    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        for overrides, task, expected in [
            ([], [], ["mnist_to_digits"]),
            ([], ["exp=mnist_new_classes,star,nonesuch"], ["mnist_new_classes", "star"]),  # unknown: the stage names it
            (["hydra/sweeper=finetune_lr", "+hydra.sweeper.params.exp='choice(exam_schools,multimnist)'"], [], ["exam_schools", "multimnist"]),
        ]:
            cfg = compose("config", overrides=overrides, return_hydra_config=True)
            with read_write(cfg), open_dict(cfg):  # Hydra records a multirun's command line, sweeps unexpanded
                cfg.hydra.overrides.task = task
            assert swept_experiments(cfg) == expected, (overrides, task)

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"

    class LateClient(MlflowClient):
        """Looks before another job creates the experiment, creates after it did."""

        looked = False

        def get_experiment_by_name(self, name):
            if not self.looked:
                self.looked = True
                winner.append(MlflowClient(uri).create_experiment(name))
                return None
            return super().get_experiment_by_name(name)

    winner: list[str] = []
    client = LateClient(uri)
    assert experiment_id(client, "raced", uri) == winner[0]
    assert client.get_experiment(winner[0]).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND


@pytest.mark.parametrize("launcher", ["slurm", "ray_cluster"])
def test_cluster_launcher_configs_compose(launcher):
    """conf/hydra/launcher/slurm.yaml and ray_cluster.yaml extend their plugins' configs (run only on a cluster)."""
    from hydra import compose, initialize_config_dir

    plugin = {"slurm": "hydra_submitit_launcher", "ray_cluster": "hydra_ray_launcher"}[launcher]
    pytest.importorskip(
        f"hydra_plugins.{plugin}", reason=f"{plugin} is not installed (pip install -e '.[{'sweeps' if launcher == 'slurm' else 'ray'}]')"
    )
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose("config", overrides=[f"hydra/launcher={launcher}"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_.startswith(f"hydra_plugins.{plugin}.")
    assert ROOT.joinpath("conf", "hydra", "launcher", f"{launcher}.yaml").is_file()
