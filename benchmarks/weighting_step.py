"""Cost of one multitask training step per weighting method, against equal weighting.

A step is what the multitask loop does per batch: forward, `weighting.backward`, optimizer step.
Each method trains its own copy of the same hard-sharing MLP (same initialisation) with AdamW;
methods are timed in interleaved blocks, so a slow spell of a shared machine hits them all alike,
and the median block gives ms/step. The clock is this process's CPU time by default (`--clock cpu`):
with one thread it is the step's compute, untouched by other jobs on the machine; `--clock wall`
for wall-clock time. Inputs are synthetic tensors of the real shapes (only the cost
is measured, not what is learnt):

  mnist2   2 tasks, MultiMNIST-like: 784 inputs -> trunk 256-256 -> 2 heads of 10 classes
  reg65    65 regression tasks: 20 inputs -> trunk 128-128 -> 65 heads of 1 output

`--losses` says how the per-task losses reach `backward`: `stacked` (one [T] tensor) or `list` (T
scalars, the tasks' graphs kept apart).

    python benchmarks/weighting_step.py                     # all of conf/multitask/weighting/
    python benchmarks/weighting_step.py --methods equal,upgrad --scenarios mnist2 --repeats 30
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

CONF = Path(__file__).resolve().parents[1] / "conf" / "multitask" / "weighting"
SCENARIOS = {  # inputs, trunk widths, tasks, head outputs (1 = regression)
    "mnist2": (784, [256, 256], 2, 10),
    "reg65": (20, [128, 128], 65, 1),
}


def make_model(d_in: int, widths: list[int], n_tasks: int, n_out: int, seed: int = 0):
    import torch
    from torch import nn

    torch.manual_seed(seed)
    layers, d = [], d_in
    for w in widths:
        layers += [nn.Linear(d, w), nn.ReLU()]
        d = w
    return nn.ModuleDict({"trunk": nn.Sequential(*layers), "heads": nn.ModuleList(nn.Linear(d, n_out) for _ in range(n_tasks))})


def make_step(model, weighting, batch, n_out: int, as_list: bool):
    import torch
    from torch.nn import functional as F

    x, y = batch
    shared = list(model["trunk"].parameters())
    heads = [list(h.parameters()) for h in model["heads"]]
    opt = torch.optim.AdamW([*model.parameters(), *weighting.extra_parameters()], lr=1e-3)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        features = model["trunk"](x)
        if n_out == 1:
            losses = [F.mse_loss(h(features).squeeze(1), y[:, t]) for t, h in enumerate(model["heads"])]
        else:
            losses = [F.cross_entropy(h(features), y[:, t].long()) for t, h in enumerate(model["heads"])]
        weighting.backward(losses if as_list else torch.stack(losses), shared, [features], heads)
        opt.step()

    return step


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", default=",".join(sorted(p.stem for p in CONF.glob("*.yaml"))),
                        help="comma-separated config names in conf/multitask/weighting/ (default: all)")
    parser.add_argument("--scenarios", default="mnist2,reg65", help=f"comma-separated, of {sorted(SCENARIOS)}")
    parser.add_argument("--losses", default="stacked,list", help="stacked, list, or both")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=15, help="interleaved timing blocks per method")
    parser.add_argument("--steps", type=int, default=4, help="steps per timing block")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per method first")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steadier on a shared box)")
    parser.add_argument("--clock", choices=["cpu", "wall"], default="cpu", help="process CPU time or wall-clock time")
    args = parser.parse_args(argv)

    import torch
    from omegaconf import OmegaConf

    from pipeline.multitask.weighting import build

    torch.set_num_threads(args.threads)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    methods = args.methods.split(",")
    if "equal" not in methods:
        methods = ["equal", *methods]
    print(f"torch {torch.__version__}, CPU, {args.threads} thread(s), {args.clock} time; synthetic inputs of the "
          f"real shapes, batch {args.batch}; median of {args.repeats} interleaved blocks of {args.steps} steps")
    print(f"{'scenario':<8} {'losses':<8} {'method':<12} {'ms/step':>8} {'x equal':>8}")
    for scenario in args.scenarios.split(","):
        d_in, widths, n_tasks, n_out = SCENARIOS[scenario]
        g = torch.Generator().manual_seed(0)
        x = torch.randn(args.batch, d_in, generator=g)
        y = (torch.randint(0, n_out, (args.batch, n_tasks), generator=g).float() if n_out > 1
             else torch.randn(args.batch, n_tasks, generator=g))
        for form in args.losses.split(","):
            steps = {}
            for m in methods:
                weighting = build(OmegaConf.load(CONF / f"{m}.yaml"), n_tasks)
                steps[m] = make_step(make_model(d_in, widths, n_tasks, n_out), weighting, (x, y), n_out, form == "list")
                for _ in range(args.warmup):
                    steps[m]()
            times: dict[str, list[float]] = {m: [] for m in methods}
            for _ in range(args.repeats):
                for m in methods:
                    t0 = clock()
                    for _ in range(args.steps):
                        steps[m]()
                    times[m].append((clock() - t0) / args.steps * 1e3)
            base = statistics.median(times["equal"])
            for m in methods:
                ms = statistics.median(times[m])
                print(f"{scenario:<8} {form:<8} {m:<12} {ms:8.2f} {ms / base:8.2f}", flush=True)


if __name__ == "__main__":
    main()
