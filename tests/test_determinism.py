"""The same config and seed give the same metrics in two fresh processes, to the last digit: the whole
transfer chain (prepare, pretrain, extract, tuned fine-tuning on 2 worker processes) run twice."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from support import ROOT

CHAIN = """
import json, sys
from pathlib import Path
from support import run_stages
from pipeline.stages import extract, finetune, prepare, pretrain
tmp = Path(sys.argv[1])
overrides = ["strategy=[scratch,l2sp,lp_ft,feature_retrain]", "transfer.tuning.trials=2", "trainer.workers=2"]
cfg, out = run_stages(tmp, (prepare, pretrain, extract, finetune), overrides)
keep = lambda r: {k: r[k] for k in ("strategy", "budget", "seed", "trial", "test", "best_epoch", "steps", "cv", "trials") if k in r}
for r in out["finetune"]:
    for t in r.get("trials") or []:
        t.pop("run_id", None), t.pop("seconds", None)
json.dump({"pretrain": out["pretrain"]["test"], "extract": out["extract"]["scores"],
           "finetune": sorted((keep(r) for r in out["finetune"]), key=lambda r: (r["strategy"], r["budget"], r["seed"]))},
          open(tmp / "metrics.json", "w"), sort_keys=True)
"""


def chain(tmp: Path) -> dict:
    tmp.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    env.pop("MLFLOW_TRACKING_URI", None)
    res = subprocess.run([sys.executable, "-c", CHAIN, str(tmp)], cwd=tmp, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads((tmp / "metrics.json").read_text())


def test_two_processes_give_identical_metrics(tmp_path):
    first, second = chain(tmp_path / "a"), chain(tmp_path / "b")
    assert first["finetune"] and len(first["finetune"]) == len(second["finetune"])
    assert first == second  # floats compared exactly: every test metric, epoch, step count and CV score
