"""Is scoring a source cheaper than fine-tuning from it? Every transferability score of
`knowledge.scores` at every budget x seed (what `extract` computes) timed against fine-tuning from the
same source with the strategies a zoo of sources fine-tunes from every candidate (parameter transfer
and feature re-training, tuned as the default study tunes), side by side in one process.

    PYTHONPATH=src python benchmarks/scoring.py [--exp mnist_to_digits] [--strategies param_transfer feature_retrain]

Reads the experiment's prepared data, source and features from artifacts/ (`dvc repro
extract@mnist_to_digits` first); writes nothing into the repository (outputs and the MLflow store go to
a temporary directory). Scoring runs on one BLAS thread, as in the stage.
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
    parser.add_argument("--strategies", nargs="+", default=["param_transfer", "feature_retrain"])
    parser.add_argument("--repeats", type=int, default=3, help="scoring passes; the median is printed")
    args = parser.parse_args()

    import numpy as np
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict
    from threadpoolctl import threadpool_limits

    from pipeline.data import TaskSet
    from pipeline.errors import instantiate
    from pipeline.stages import extract, finetune

    with tempfile.TemporaryDirectory(prefix="scoring-") as tmp:
        tmp = Path(tmp)
        for part in ("data", "sources", "knowledge"):
            shutil.copytree(ROOT / "artifacts" / args.exp / part, tmp / "artifacts" / args.exp / part)
        with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
            cfg = compose("config", overrides=[f"exp={args.exp}", "trainer.progress_bar=false", f"strategy=[{','.join(args.strategies)}]"])
        with open_dict(cfg):
            cfg.paths.artifacts, cfg.paths.reports = str(tmp / "artifacts"), str(tmp / "reports")
            cfg.tracking.uri = f"sqlite:///{tmp / 'mlflow.db'}"
        exp = cfg.experiments[args.exp]
        where = tmp / "artifacts" / args.exp
        tgt = TaskSet.load(where / "data" / "target")
        inputs = {"features": np.load(where / "knowledge" / "features.npy"), "probs": np.load(where / "knowledge" / "probs.npy")}
        scores = {s: instantiate(node, s) for s, node in cfg.knowledge.scores.items()}
        y, kind = tgt.y[:, 0], tgt.tasks[0].kind

        def score(chosen: dict) -> float:
            start = time.perf_counter()
            with threadpool_limits(1):
                extract.transferability(chosen, inputs, y, kind, tgt.splits, exp.budgets, cfg.transfer.seeds, cfg.transfer.val_labels, "source")
            return time.perf_counter() - start

        score(scores)  # imports and caches warm
        each = {s: statistics.median(score({s: sc}) for _ in range(args.repeats)) for s, sc in scores.items()}
        total = statistics.median(score(scores) for _ in range(args.repeats))
        start = time.perf_counter()
        records = finetune.run(cfg)
        tuning = time.perf_counter() - start
        runs = len(records)
        print(
            f"\n{args.exp}: {len(scores)} scores x {len(exp.budgets)} budgets x {len(cfg.transfer.seeds)} seeds; "
            f"fine-tuning {', '.join(args.strategies)} ({runs} results, {cfg.transfer.tuning.trials} trials each)"
        )
        for s, seconds in sorted(each.items(), key=lambda kv: -kv[1]):
            print(f"  score {s:<18} {seconds:8.3f} s")
        print(f"  scoring, all        {total:8.3f} s (median of {args.repeats})")
        print(f"  fine-tuning         {tuning:8.1f} s (the stage's wall time, {cfg.trainer.workers or 'all'} workers)")
        print(f"  ratio               {total / tuning:8.4f}  (target: at most 0.05)")


if __name__ == "__main__":
    main()
