"""Cost of one multitask training step per weighting method, against equal weighting, on real data.

A step is exactly what the multitask stage does per batch (`pipeline.training.backward_step`
then the optimizer's step): forward of the hard-sharing network from `conf/multitask/arch/hard.yaml`,
masked per-task losses, `weighting.backward`, AdamW. Each method trains its own copy of the network
(same initialisation) on the same batch of real rows:

  multimnist  2 classification tasks: MultiMNIST images (conf/data/multimnist.yaml), 784 inputs
  schools     65 regression tasks: every school of mlmRev Exam (min_pupils=1), 18 inputs, each pupil
              labelled for its own school only, so a batch holds a few labels per task

Gradient aggregators run with their configured `jacobian` (`params`: the exact Jacobian of the
shared parameters) and, with `--jacobian both` (default), also with `jacobian=features` (weights
from the Jacobian w.r.t. the shared features, one trunk pass: Sener & Koltun's MGDA-UB bound).

Methods are timed in interleaved blocks, so a slow spell of a shared machine hits them all alike;
the median block gives ms/step. The clock is this process's CPU time by default: with one thread it
is the step's compute, untouched by other jobs on the machine (`--clock wall` for wall-clock time).

    python benchmarks/weighting_step.py                       # all of conf/multitask/weighting/
    python benchmarks/weighting_step.py --methods upgrad --scenarios multimnist --repeats 30
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

CONF = Path(__file__).resolve().parents[1] / "conf"


def load_data(scenario: str):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(CONF / "data" / ("multimnist.yaml" if scenario == "multimnist" else "exam_schools.yaml"))
    if scenario == "schools":
        cfg.min_pupils = 1  # all 65 schools
    return instantiate(cfg)


def make_step(src, arch_cfg, weighting, batch: int, seed: int = 0):
    import numpy as np
    import torch
    from hydra.utils import instantiate

    from pipeline.training import backward_step

    rows = np.random.default_rng(seed).choice(len(src.x), size=batch, replace=False)
    x, y = torch.as_tensor(src.x[rows]), torch.as_tensor(src.y[rows])
    torch.manual_seed(seed)
    net = instantiate(arch_cfg, _partial_=True)(input_dim=x.shape[1], tasks=src.tasks)
    opt = torch.optim.AdamW([*net.parameters(), *weighting.extra_parameters()], lr=1e-3)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        backward_step(net, src.tasks, weighting, x, y)
        opt.step()

    return step


def variants(names: list[str], n_tasks: int, jacobian: str) -> dict:
    """label -> weighting: each config as it is, plus its jacobian=features variant where it applies."""
    from omegaconf import OmegaConf

    from pipeline.multitask.weighting import build

    out = {}
    for name in names:
        cfg = OmegaConf.load(CONF / "multitask" / "weighting" / f"{name}.yaml")
        out[name] = build(cfg, n_tasks)
        if jacobian == "both" and "jacobian" in cfg and cfg.jacobian != "features":
            out[f"{name}/features"] = build(OmegaConf.merge(cfg, {"jacobian": "features"}), n_tasks)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--methods",
        default=",".join(sorted(p.stem for p in (CONF / "multitask" / "weighting").glob("*.yaml"))),
        help="comma-separated config names in conf/multitask/weighting/ (default: all)",
    )
    parser.add_argument("--scenarios", default="multimnist,schools", help="comma-separated, of multimnist, schools")
    parser.add_argument(
        "--jacobian", choices=["as-configured", "both"], default="both", help="both: also time the aggregators with jacobian=features"
    )
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=15, help="interleaved timing blocks per method")
    parser.add_argument("--steps", type=int, default=4, help="steps per timing block")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per method first")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steadier on a shared box)")
    parser.add_argument("--clock", choices=["cpu", "wall"], default="cpu", help="process CPU time or wall-clock time")
    args = parser.parse_args(argv)

    import warnings

    import torch
    from omegaconf import OmegaConf

    warnings.filterwarnings("ignore", message="You are solving a parameterized problem that is not DPP")  # Nash-MTL, once
    torch.set_num_threads(args.threads)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    names = args.methods.split(",")
    if "equal" not in names:
        names = ["equal", *names]
    arch = OmegaConf.load(CONF / "multitask" / "arch" / "hard.yaml")
    print(
        f"torch {torch.__version__}, CPU, {args.threads} thread(s), {args.clock} time; hard sharing {list(arch.hidden)}, "
        f"real rows, batch {args.batch}; median of {args.repeats} interleaved blocks of {args.steps} steps"
    )
    print(f"{'scenario':<10} {'tasks':>5} {'method':<22} {'ms/step':>8} {'x equal':>8}")
    for scenario in args.scenarios.split(","):
        src = load_data(scenario)
        methods = variants(names, len(src.tasks), args.jacobian)
        steps = {m: make_step(src, arch, w, args.batch) for m, w in methods.items()}
        for step in steps.values():
            for _ in range(args.warmup):
                step()
        times: dict[str, list[float]] = {m: [] for m in steps}
        for _ in range(args.repeats):
            for m, step in steps.items():
                t0 = clock()
                for _ in range(args.steps):
                    step()
                times[m].append((clock() - t0) / args.steps * 1e3)
        base = statistics.median(times["equal"])
        for m in steps:
            ms = statistics.median(times[m])
            print(f"{scenario:<10} {len(src.tasks):>5} {m:<22} {ms:8.2f} {ms / base:8.2f}", flush=True)


if __name__ == "__main__":
    main()
