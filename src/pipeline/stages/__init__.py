"""Stages: each is `run(cfg) -> dict` plus a Hydra entry point, so DVC, Hydra multirun and tests
call the same code. Helpers here resolve the experiment and its file layout from the config."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from pipeline.config import EXPERIMENT_KINDS  # where each kind of experiment is declared
from pipeline.errors import PipelineError, did_you_mean

CONF_DIR = os.environ.get("PIPELINE_CONF_DIR", str(Path.cwd() / "conf"))


def _output(stage: str) -> property:
    return property(lambda self: self.root / stage, doc=f"the {stage} outputs")


@dataclass(frozen=True)
class Layout:
    """Where an experiment's stage outputs live (the `outs` of dvc.yaml follow the same scheme)."""

    root: Path
    data = _output("data")
    sources = _output("sources")  # one folder per candidate source: the experiment's own is `source`
    knowledge = _output("knowledge")
    finetune = _output("finetune")
    rank = _output("rank")  # fine-tuning from every candidate source (stages/rank.py)
    multitask = _output("multitask")

    @property
    def source(self) -> Path:
        """The experiment's own source model (pretrain@<experiment>)."""
        return self.sources / "source"

    def candidate(self, name: str) -> Path:
        return self.sources / name


def experiment_kind(cfg: DictConfig) -> str:
    """`transfer` or `multitask`: which of the config's experiment dicts holds `exp`."""
    name = cfg.get("exp")
    found = [kind for kind, key in EXPERIMENT_KINDS.items() if name in (cfg.get(key) or {})]
    if len(found) > 1:
        raise PipelineError(f"experiment exp={name!r} is declared in both experiments and multitask_experiments; rename one")
    if not found:
        known = "; ".join(f"{key}: {sorted((cfg.get(key) or {}).keys())}" for key in EXPERIMENT_KINDS.values())
        names = [n for key in EXPERIMENT_KINDS.values() for n in (cfg.get(key) or {})]
        hint = did_you_mean(name, names)
        raise PipelineError(f"unknown experiment exp={name!r}{hint}; valid {known} (add one in conf/experiment/ and conf/config.yaml)")
    return found[0]


def experiment(cfg: DictConfig, kind: str | None = None) -> tuple[str, DictConfig]:
    """The selected experiment's name and config node; an unknown name lists the valid ones.

    kind: the kind the calling stage handles (`transfer` or `multitask`), None for either.
    """
    from pipeline.config import check_experiment, check_untrusted

    check_untrusted(cfg)  # also where a stage is called without the CLI (tests, benchmarks)
    name, found = cfg.get("exp"), experiment_kind(cfg)
    node = cfg[EXPERIMENT_KINDS[found]][name]
    check_experiment(node, name, found)  # first: a node declared under the wrong kind is named as such
    if kind is not None and found != kind:
        raise PipelineError(f"experiment exp={name!r} is a {found} experiment; this stage runs {kind} experiments only")
    return name, node


def layout(cfg: DictConfig, name: str) -> Layout:
    from pipeline.config import name_refusal

    why = name_refusal(name)  # checked with the config too (check_names); here for any caller
    if why:
        raise PipelineError(f"experiment name {str(name)!r} {why}")
    return Layout(Path(cfg.paths.artifacts) / name)


def pick(selected: Any, available: Iterable[Any], what: str) -> list:
    """`selected` (one value, a list, or null for all) checked against `available`."""
    available = list(available)
    if selected is None:
        return available
    chosen = list(selected) if OmegaConf.is_list(selected) or isinstance(selected, (list, tuple)) else [selected]
    unknown = [c for c in chosen if c not in available]
    if unknown:
        hint = did_you_mean(unknown[0], available) if len(unknown) == 1 else ""
        raise PipelineError(f"unknown {what} {unknown}{hint}; valid: {available}")
    return chosen


# Trainer settings that cannot change a run's results: left out of the config digests, so that
# toggling them does not make earlier results look stale.
NO_EFFECT = ("progress_bar", "workers")


def config_dict(cfg: DictConfig, *keys: str) -> dict:
    return {k: OmegaConf.to_container(cfg[k], resolve=True) if OmegaConf.is_config(cfg[k]) else cfg[k] for k in keys}


def hydra_entry(run: Callable[[DictConfig], Any], started: list | None = None, objective: Callable[[Any], float] | None = None) -> Callable[[], Any]:
    """Wrap `run` as a Hydra app reading `conf/` (or `--config-dir . --config-name params` under DVC).

    A PipelineError becomes one clear line on stderr and exit status 2, with no traceback.
    `started` (a list) gets an entry when `run` is called: Hydra exits 1 both for a config it cannot
    compose and for an exception inside `run`, and only the first is the user's mistake.
    `objective` turns what `run` returned into the number a Hydra sweeper (Optuna) optimises: the app
    returns it.
    """
    import hydra

    @hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
    def main(cfg: DictConfig) -> Any:
        if started is not None:
            started.append(True)
        try:
            from pipeline.config import check_untrusted

            check_untrusted(cfg)  # before the stage imports or runs anything a shared config names
            out = run(cfg)
            return objective(out) if objective is not None and sweeping() else None
        except PipelineError as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(2)

    return main


def sweeping() -> bool:
    """Whether this job belongs to a sweep whose sweeper reads the app's return value (Optuna); a single
    run, or Hydra's basic sweeper, has no objective, so a stage that has none to give still succeeds."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get()
    return hc.mode == RunMode.MULTIRUN and not str(hc.sweeper.get("_target_", "")).endswith("BasicSweeper")


# Hydra's own run/sweep directories would scatter outputs the pipeline never reads: results go to
# DVC outs and MLflow. Users may still override any of these on the command line.
HYDRA_DEFAULTS = ["hydra.output_subdir=null", "hydra.run.dir=.", "hydra.sweep.dir=.", "hydra.sweep.subdir=.", "hydra/job_logging=stdout"]


# Hydra's flags that take the next argument as their value (`--info` only when it is one of its topics).
_VALUED_FLAGS = {"--cfg", "-c", "--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd", "--package", "-p", "--experimental-rerun"}
_INFO_TOPICS = {"all", "config", "defaults", "defaults-tree", "plugins", "searchpath"}


def split_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """(overrides, flags with their values): Hydra takes its overrides as one run of positional
    arguments, so `exp=x --cfg job y=z` must reach it as `exp=x y=z --cfg job`."""
    overrides, flags, i = [], [], 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("-"):
            overrides.append(arg)
        else:
            flags.append(arg)
            takes = arg in _VALUED_FLAGS or (arg in ("--info", "-i") and i + 1 < len(argv) and argv[i + 1] in _INFO_TOPICS)
            if takes and i + 1 < len(argv):
                i += 1
                flags.append(argv[i])
        i += 1
    return overrides, flags


def check_override_keys(overrides: list[str]) -> None:
    """`node.key=value` for a node with a schema (pipeline.config.SCHEMAS) names one of its keys: a
    misspelt key is a one-line error with the closest valid key, not Hydra's advice to add it with `+`."""
    from dataclasses import fields

    from pipeline.config import SCHEMAS, unknown_key

    for arg in overrides:
        key = arg.split("=", 1)[0]
        node, _, leaf = key.partition(".")
        if "=" not in arg or key.startswith(("+", "~")) or node not in SCHEMAS or not leaf or "." in leaf:
            continue
        valid = [f.name for f in fields(SCHEMAS[node])]
        if leaf not in valid:
            raise unknown_key(node, leaf, valid)


# Hydra's mode flags, long and short: it takes one at a time.
_MODES = {"-r": "--run", "-m": "--multirun", "-c": "--cfg", "-i": "--info", "-sc": "--shell-completion"}


def check_flags(flags: list[str]) -> None:
    modes = sorted({_MODES.get(f, f) for f in flags if f in _MODES or f in _MODES.values()})
    if len(modes) > 1:
        hint = " (to see a sweep's config, run --cfg job on one of its runs)" if "--multirun" in modes and "--cfg" in modes else ""
        raise PipelineError(f"Hydra takes one of --run, --multirun, --cfg, --info at a time, got {', '.join(modes)}{hint}")


# Set by pipeline.sweeps.TrackingStore once a multirun's config is composed: its jobs may run in other
# processes (joblib, submitit), where `launch` cannot see them start.
COMPOSED: list[bool] = []


def launch(run: Callable[[DictConfig], Any], argv: list[str], objective: Callable[[Any], float] | None = None) -> None:
    overrides, flags = split_args(argv)
    try:
        check_flags(flags)
        check_override_keys(overrides)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    given = {a.split("=", 1)[0].lstrip("+~") for a in overrides if "=" in a}
    extra = [d for d in HYDRA_DEFAULTS if d.split("=", 1)[0] not in given]
    sys.argv = [sys.argv[0], *overrides, *extra, *flags]
    started: list = []
    COMPOSED.clear()
    try:
        hydra_entry(run, started, objective)()
    except SystemExit as exc:
        if exc.code == 1 and not started and not COMPOSED:  # Hydra printed why it could not compose the config: the user's input
            sys.exit(2)
        raise


def check_direction(metric: str, higher_is_better: bool) -> None:
    """Under a sweeper with one `direction` (Optuna), that direction must match the metric's, or it would
    search for the worst setting: an error naming both, before anything trains."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return
    direction = OmegaConf.select(HydraConfig.get(), "sweeper.direction")
    if direction is None or OmegaConf.is_list(direction) or isinstance(direction, (list, tuple)):
        return
    direction = str(getattr(direction, "name", direction))
    wanted = "maximize" if higher_is_better else "minimize"
    if direction != wanted:
        better = "higher" if higher_is_better else "lower"
        raise PipelineError(
            f"hydra.sweeper.direction={direction}, but the objective, validation {metric}, is better {better}: set hydra.sweeper.direction={wanted}"
        )


def ended(epochs: int, best_epoch: int, max_epochs: int) -> str:
    """How a run ended, for its one line in the logs: epochs trained of the cap, whether early
    stopping ended it, and the kept (best) epoch, counted from 1."""
    return f"epochs {epochs}/{max_epochs} ({'early stop' if epochs < max_epochs else 'cap'}), best {best_epoch + 1}"


def warn_failed(label: str, failures: list[str], runs: int, where, reader: str = "the report", what: str = "runs") -> None:
    """One warning for a grid's failed (diverged) runs: how many of `runs` (`what` they are), where their
    records are, and the first message; their MLflow runs are FAILED and `reader` lists them."""
    if failures:
        more = f"; and {len(failures) - 1} more" if len(failures) > 1 else ""
        print(
            f"warning: {label}: {len(failures)} of {runs} {what} failed and are recorded as failed in {where}"
            f" (their MLflow runs are FAILED; {reader} lists them): {failures[0]}{more}",
            file=sys.stderr,
        )
