"""Hydra multiruns whose jobs run at once (joblib, submitit, Ray launchers; Optuna sweeper).

The jobs of a parallel sweep all open the tracking store and get-or-create their experiment at the
same moment. On a new SQLite file that corrupts it (each process runs MLflow's schema migration:
"table ... already exists", "duplicate column name", alembic "expected to match one row"), and two
jobs that both find the experiment missing race to create it. `TrackingStore`, a Hydra callback in
conf/config.yaml, creates the store and the sweep's experiments once, in the launching process,
before the launcher starts any job; `pipeline.tracking.experiment_id` also takes the loser's side of
the create race, for stages started in parallel some other way.
"""

from __future__ import annotations

import sys
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from pipeline.config import EXPERIMENT_KINDS
from pipeline.errors import PipelineError


def swept_experiments(cfg: DictConfig) -> list[str]:
    """The known experiments (`exp`) a multirun's jobs will use: from the command line's `exp=a,b`
    and an Optuna sweeper's `params.exp`, else the composed `exp`. Unknown names are left to the
    stage, which names the valid ones."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    given = list(cfg.hydra.overrides.task)
    params = OmegaConf.select(cfg, "hydra.sweeper.params") or {}
    given += [f"{k}={v}" for k, v in params.items() if k == "exp"]
    names = []
    for override in OverridesParser.create().parse_overrides(given):
        if override.key_or_group != "exp":
            continue
        if override.is_choice_sweep() or override.is_range_sweep():
            names += list(override.sweep_string_iterator())
        elif not override.is_sweep_override():
            names.append(str(override.value()))
    known = {n for key in EXPERIMENT_KINDS.values() for n in (cfg.get(key) or {})}
    return [n for n in dict.fromkeys(names or [str(cfg.get("exp"))]) if n in known]


class TrackingStore(Callback):
    """Before a multirun's first job: the tracking store (a new SQLite file gets MLflow's schema) and
    the experiments of the sweep, created once in this process."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from mlflow.tracking import MlflowClient

        from pipeline.stages import COMPOSED
        from pipeline.tracking import check_store, experiment_id

        COMPOSED.append(True)  # a job that fails from here on is not a config Hydra could not compose
        try:
            uri = check_store(config.tracking.uri)
        except PipelineError as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(2)
        client = MlflowClient(tracking_uri=uri)
        client.search_experiments(max_results=1)  # the first call creates and migrates a new store
        for name in swept_experiments(config):
            experiment_id(client, name, uri)
