"""Is scoring the zoo cheaper than fine-tuning from it? Every transferability score of
`knowledge.scores` for every candidate view `extract` scores (each candidate's last features and inner
blocks) at every budget x seed, timed against fine-tuning from all of them as the sources report needs
it: the linear probe and parameter transfer, tuned as configured (`transfer.tuning`), from every view
(the rank stage, plus the own source's two in the finetune stage), side by side in one process. The
issue's target: at most 0.05.

    PYTHONPATH=src python benchmarks/scoring.py [--exp mnist_to_digits] [--artifacts artifacts] [overrides]

`transfer.tuning.trials=1` as an override times untuned fine-tuning (one fit per result) instead.

Reads the experiment's prepared data, candidate sources and extract outputs from --artifacts (`dvc repro
extract@mnist_to_digits` first; read only: they are copied to a temporary directory, where the outputs
and the MLflow store go). Scoring runs on one thread (BLAS and torch), as in the stage, and includes
each view's forward pass over the target rows. Fine-tuning is timed twice: the stages' wall time (both
cores, MLflow logging included) and the sum of the fits' own times (one core each, no logging).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exp", default="mnist_to_digits")
    parser.add_argument("--artifacts", type=Path, default=ROOT / "artifacts", help="the DVC outputs to read (copied, never written)")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. transfer.tuning.trials=1 (untuned fine-tuning)")
    parser.add_argument("--repeats", type=int, default=3, help="scoring passes; the median is printed")
    args = parser.parse_args()

    import os

    import torch
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict
    from threadpoolctl import threadpool_limits

    from pipeline.data import TaskSet, TaskSpec
    from pipeline.errors import instantiate
    from pipeline.io import read_json
    from pipeline.models import build, load_checkpoint
    from pipeline.stages import extract, finetune, rank

    with tempfile.TemporaryDirectory(prefix="scoring-") as tmp:
        tmp = Path(tmp)
        os.environ["PIPELINE_ALLOWED_OUTPUTS"] = str(tmp)  # outputs outside the project, allowed by whoever runs it (pipeline.config.check_paths)
        for part in ("data", "sources", "knowledge"):
            shutil.copytree(args.artifacts / args.exp / part, tmp / "artifacts" / args.exp / part)
        with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
            # The own source's share of the reference: the probe and parameter transfer, as rank fits the others.
            overrides = [f"exp={args.exp}", "trainer.progress_bar=false", "strategy=[param_transfer,linear_features]", *args.overrides]
            cfg = compose("config", overrides=overrides)
        with open_dict(cfg):
            cfg.paths.artifacts, cfg.paths.reports = str(tmp / "artifacts"), str(tmp / "reports")
            cfg.tracking.uri = f"sqlite:///{tmp / 'mlflow.db'}"
        exp = cfg.experiments[args.exp]
        where = tmp / "artifacts" / args.exp
        tgt = TaskSet.load(where / "data" / "target")
        views = read_json(where / "knowledge" / "summary.json", "extract summary")["candidates"]
        nets = {}
        for part in views.values():
            if part["model"] not in nets:
                ckpt = load_checkpoint(where / "sources" / part["model"] / "model.pt")
                nets[part["model"]] = (build(ckpt["arch"]), TaskSpec(**ckpt["task"]).kind == "classification")
                nets[part["model"]][0].load_state_dict(ckpt["state_dict"])
                nets[part["model"]][0].eval()
        scores = {s: instantiate(node, s) for s, node in cfg.knowledge.scores.items()}
        y, kind = tgt.y[:, 0], tgt.tasks[0].kind
        torch.set_num_threads(1)

        def forward() -> dict:
            out = {}
            for view, part in views.items():
                net, classification = nets[part["model"]]
                feats, probs = extract.outputs(net, tgt.x, part["depth"], classification)
                out[view] = {"features": feats, "probs": probs if classification else None}
            return out

        def score(chosen: dict, inputs: dict) -> float:
            start = time.perf_counter()
            with threadpool_limits(1):
                for view, given in inputs.items():
                    extract.transferability(chosen, given, y, kind, tgt.splits, exp.budgets, cfg.transfer.seeds, cfg.transfer.val_labels, view)
            return time.perf_counter() - start

        inputs = forward()
        score(scores, inputs)  # imports and caches warm
        passes = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            inputs = forward()
            passes.append(time.perf_counter() - start)
        passing = statistics.median(passes)
        each = {s: statistics.median(score({s: sc}, inputs) for _ in range(args.repeats)) for s, sc in scores.items()}
        total = passing + statistics.median(score(scores, inputs) for _ in range(args.repeats))

        start = time.perf_counter()
        own = finetune.run(cfg)
        own_wall = time.perf_counter() - start
        start = time.perf_counter()
        others = rank.run(cfg)
        rank_wall = time.perf_counter() - start
        fits = [*own, *others]
        # Every trial's fits (a failed trial's seconds too); a linear probe has no trials.
        fit_seconds = sum(sum(t.get("seconds", 0.0) for t in r.get("trials") or [r]) for r in fits)
        n_trials = sum(len(r.get("trials") or [r]) for r in fits)
        wall = own_wall + rank_wall
        print(
            f"\n{args.exp}: {len(scores)} scores x {len(views)} candidate views x {len(exp.budgets)} budgets x {len(cfg.transfer.seeds)} seeds;"
            f" fine-tuning from every view: {len(fits)} results (linear probe; param_transfer, {cfg.transfer.tuning.trials} trials each),"
            f" {n_trials} fits or trials"
        )
        for s, seconds in sorted(each.items(), key=lambda kv: -kv[1]):
            print(f"  score {s:<18} {seconds:8.3f} s")
        print(f"  forward passes      {passing:8.3f} s")
        print(f"  scoring, all        {total:8.3f} s (median of {args.repeats}, forward passes included, one thread)")
        workers = cfg.trainer.workers or "all"
        print(f"  fine-tuning, wall   {wall:8.1f} s (finetune {own_wall:.1f} s + rank {rank_wall:.1f} s, {workers} workers, MLflow included)")
        print(f"  fine-tuning, fits   {fit_seconds:8.1f} s (sum of the fits' own times, one core each)")
        worst = total / min(wall, fit_seconds)
        print(f"  ratio               {worst:8.4f}  (scoring / the smaller fine-tuning time; target: at most 0.05)")


if __name__ == "__main__":
    main()
