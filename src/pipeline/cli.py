"""`pipeline <stage> [hydra overrides]`: one entry point for every stage.

Stage modules are imported only when chosen, so `pipeline --help` answers at once.
"""

from __future__ import annotations

import importlib
import os
import sys

STAGES = ("prepare", "pretrain", "extract", "finetune", "rank", "multitask", "report")
USAGE = f"""usage: pipeline <stage> [hydra overrides...]

stages: {", ".join(STAGES)}
examples:
  pipeline finetune exp=mnist_to_digits strategy=param_transfer budget=10 seed=0
  pipeline finetune -m strategy=scratch,param_transfer seed=0,1,2
  pipeline multitask exp=multimnist scheme=hard weighting=upgrad seed=0
  pipeline prepare --cfg job          # print the composed config
"""


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return
    stage, rest = argv[0], argv[1:]
    if stage not in STAGES and os.environ.get("LOCAL_RANK") and os.environ.get("PIPELINE_STAGE") in STAGES:
        # Lightning's ddp launcher starting another rank (pipeline.training.distributed): it reruns the
        # command line Hydra saw, overrides only; the stage comes from the environment it inherits.
        stage, rest = os.environ["PIPELINE_STAGE"], argv
    if stage not in STAGES:
        from pipeline.errors import did_you_mean

        print(f"error: unknown stage {stage!r}{did_you_mean(stage, STAGES)}; valid stages: {', '.join(STAGES)}", file=sys.stderr)
        sys.exit(2)
    from pipeline.stages import launch

    os.environ["PIPELINE_STAGE"] = stage

    module = importlib.import_module(f"pipeline.stages.{stage}")
    launch(module.run, rest, getattr(module, "objective", None))


if __name__ == "__main__":
    main()
