"""Defect 10: the fit settings have a schema; a misspelt or unknown key, or a wrong type, is an
error naming it instead of a silently used default."""

from __future__ import annotations

import dataclasses

import pytest
from omegaconf import MISSING

from pipeline.config import SCHEMAS, settings, validate
from pipeline.errors import PipelineError
from support import ROOT, compose_cfg, run_cli


def test_schema_has_no_defaults_and_conf_provides_every_key(tmp_path):
    """One place for defaults: conf/. The schema's fields are all mandatory, and the composed conf/
    fills every one (so a default can never differ from conf/ again)."""
    for schema in SCHEMAS.values():
        assert all(f.default is MISSING for f in dataclasses.fields(schema)), schema
    cfg = compose_cfg(tmp_path)
    trainer, pre, transfer, mt = settings(cfg, "trainer", "pretrain", "transfer", "multitask")
    assert trainer.steps_per_batch == cfg.trainer.steps_per_batch and mt.patience == cfg.multitask.patience
    assert transfer.patience == 2  # tests/support's TINY override reaches the validated settings


# A misspelt key in each node a training stage validates: (stage, override, the key the error names).
MISSPELT = [
    ("pretrain", "+trainer.step_per_batch=4", "trainer.step_per_batch"),
    ("pretrain", "+trainer.num_thread=2", "trainer.num_thread"),
    ("finetune", "+transfer.paitence=3", "transfer.paitence"),
    ("multitask", "+multitask.min_step_per_epoch=3", "multitask.min_step_per_epoch"),
    ("multitask", "+multitask.patiense=3", "multitask.patiense"),
]


@pytest.mark.parametrize("stage, override, key", MISSPELT)
def test_misspelt_key_is_an_error_naming_it(make_cfg, stage, override, key):
    import importlib

    run = importlib.import_module(f"pipeline.stages.{stage}").run
    cfg = make_cfg(override)  # checked before the experiment or its data are looked at
    with pytest.raises(PipelineError, match=rf"unknown config key {key}\b.*did you mean"):
        run(cfg)


def test_wrong_type_is_an_error_naming_the_key(tmp_path):
    cfg = compose_cfg(tmp_path, ["transfer.patience=ten"])
    with pytest.raises(PipelineError, match=r"transfer\.patience"):
        settings(cfg, "transfer")
    with pytest.raises(PipelineError, match=r"trainer\.progress_bar"):
        validate({**compose_cfg(tmp_path).trainer, "progress_bar": "sometimes"}, "trainer")


@pytest.mark.parametrize("stage, override, key", MISSPELT)
def test_cli_misspelt_key_exits_2_naming_it(tmp_path, stage, override, key):
    proc = run_cli(stage, override, cwd=tmp_path, env={"PIPELINE_CONF_DIR": str(ROOT / "conf")})
    assert proc.returncode == 2, proc.stderr
    assert key in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "stage, override, message",
    [
        ("multitask", "+multitask_experiments.star.weighting=[equal]", r"multitask_experiments\.star\.weighting.*did you mean weightings"),
        ("prepare", "+experiments.mnist_to_digits.budget=[1]", r"experiments\.mnist_to_digits\.budget.*did you mean budgets"),
        ("prepare", "+experiments.mnist_to_digits.split.tset=0.2", r"experiments\.mnist_to_digits\.split\.tset"),
        ("prepare", "experiments.mnist_to_digits.split.val=a_quarter", r"experiments\.mnist_to_digits\.split\.val"),
    ],
)
def test_experiment_keys_are_checked(make_cfg, stage, override, message):
    """An experiment's own keys: a misspelt `weightings` would silently run the whole grid."""
    import importlib

    run = importlib.import_module(f"pipeline.stages.{stage}").run
    exp = "star" if "star" in override else "mnist_to_digits"
    with pytest.raises(PipelineError, match=message):
        run(make_cfg(f"exp={exp}", override))
