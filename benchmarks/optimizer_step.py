"""AdamW's three CPU implementations on the study's networks: one training step each, side by side.

torch.optim.AdamW updates parameters with a Python loop of tensor operations per parameter
(`foreach=False`, the CPU default), with one multi-tensor operation per step of the update
(`foreach=True`), or with one fused kernel per parameter that reads and writes each element once
(`fused=True`, conf/config.yaml). The update is memory-bound, so its cost follows the parameter
count: it dominates the step of the 63 per-school networks of exam_schools (2.2 M parameters,
few rows each) and matters less for the shared MLPs.

Printed: milliseconds per step (forward, masked losses, backward, update), the median of interleaved
repeats, and each variant's time relative to the default loop; plus how far the fused weights are
from the default's after the same steps (float rounding only).

    PYTHONPATH=src python benchmarks/optimizer_step.py [--steps 100] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

VARIANTS = {"loop (default)": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def cases():
    """(name, net, tasks, x, y): the study's shapes with generated values."""
    import torch

    from pipeline.data import TaskSpec
    from pipeline.models import architecture, build
    from pipeline.multitask.architectures.hard import HardSharing
    from pipeline.multitask.architectures.single_task import SingleTask
    from pipeline.training import OneTaskNet

    g = torch.Generator().manual_seed(0)
    # exam_schools: 63 schools, one regression task each, every pupil labelled for one school.
    schools = [TaskSpec(name=f"school{t}", kind="regression") for t in range(63)]
    x = torch.randn(256, 9, generator=g)
    y = torch.full((256, 63), float("nan"))
    y[torch.arange(256), torch.randint(0, 63, (256,), generator=g)] = torch.randn(256, generator=g)
    yield "single_task, 63 schools", SingleTask(9, schools), schools, x, y
    yield "hard, 63 schools", HardSharing(9, schools), schools, x, y
    # multimnist: two 10-class digits from one 28x56 image.
    digits = [TaskSpec(name=n, kind="classification", classes=[str(c) for c in range(10)]) for n in ("left", "right")]
    x = torch.randn(256, 1568, generator=g)
    y = torch.randint(0, 10, (256, 2), generator=g).float()
    yield "hard, multimnist", HardSharing(1568, digits), digits, x, y
    # The transfer MLP (conf/model/mlp.yaml) on 8x8 digits.
    from omegaconf import OmegaConf

    model = OmegaConf.load("conf/model/mlp.yaml")
    one = [digits[0]]
    yield "transfer mlp, 64 inputs", OneTaskNet(build(architecture(model, 64, 10))), one, torch.randn(128, 64, generator=g), y[:128, :1]


def train(net, tasks, x, y, options: dict, steps: int) -> float:
    import torch

    from pipeline.training.metrics import masked_losses
    from pipeline.training.module import outputs

    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-4, **options)
    for i in range(steps + 5):
        if i == 5:
            start = time.perf_counter()
        out, _ = outputs(net, x, y)
        loss = torch.stack(masked_losses(tasks, out, y)).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return (time.perf_counter() - start) / steps


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)

    import copy

    import torch

    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread; ms per step, median of {args.repeats} interleaved repeats of {args.steps} steps")
    print(f"{'network':<26} {'params':>9} " + " ".join(f"{v:>16}" for v in VARIANTS) + f" {'fused/loop':>10} {'max |dw|':>9}")
    for name, net, tasks, x, y in cases():
        times = {v: [] for v in VARIANTS}
        for _ in range(args.repeats):
            for v, options in VARIANTS.items():
                times[v].append(train(copy.deepcopy(net), tasks, x, y, options, args.steps))
        ms = {v: statistics.median(t) * 1e3 for v, t in times.items()}
        # The same steps from the same weights: how far apart rounding takes the fused and the default update.
        a, b = copy.deepcopy(net), copy.deepcopy(net)
        for copy_, variant in ((a, "loop (default)"), (b, "fused")):
            torch.manual_seed(0)  # the same dropout masks
            train(copy_, tasks, x, y, VARIANTS[variant], 20)
        gap = max(float((p - q).detach().abs().max()) for p, q in zip(a.parameters(), b.parameters()))
        n = sum(p.numel() for p in net.parameters())
        print(f"{name:<26} {n:>9} " + " ".join(f"{ms[v]:>16.2f}" for v in VARIANTS) + f" {ms['fused'] / ms['loop (default)']:>10.2f} {gap:>9.1e}")


if __name__ == "__main__":
    main()
