"""One training step of `single_task` and `soft` (forward, masked losses, backward: what
`pipeline.training.backward_step` does with equal weights), the per-task loop they replaced against
the batched, task-routed networks, side by side on the same batch and the same weights:

  exam_schools  the real data (conf/data/exam_schools.yaml): 63 schools, each pupil labelled for one
  long200       a generated long-format table: 200 tasks x 45 rows, 17 features, one label per row

Both with hidden [256, 128] (conf/multitask/arch/*.yaml) and the multitask stage's batch of 256 rows.
The last three columns time the whole training step, update included: the loop with AdamW's default
CPU update (what ran before), the batched nets with the configured one (`optimizer.fused`).
The old implementation lives only here, as the reference. Timed in interleaved blocks on this
process's CPU time; the median block gives ms/step.

    python benchmarks/branches.py
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

CONF = Path(__file__).resolve().parents[1] / "conf"


def loop_nets():
    """The per-task loop as it was: one MLP trunk + head per task in ModuleLists, every row through
    every branch."""
    import torch
    from torch import nn

    from pipeline.models import MLP
    from pipeline.multitask.architectures import MultitaskNet, heads

    class LoopSingleTask(MultitaskNet):
        def __init__(self, input_dim, tasks, hidden=(256, 128), head_hidden=(), dropout=0.0, activation="relu", coupling=0.0) -> None:
            super().__init__(input_dim, tasks)
            self.trunks = nn.ModuleList(MLP(input_dim, hidden, dropout, activation) for _ in tasks)
            self.heads = nn.ModuleList(heads(t.out_dim, [task], head_hidden, dropout)[0] for t, task in zip(self.trunks, tasks))
            self.coupling = float(coupling)

        def forward(self, x):
            return [h(t(x)) for t, h in zip(self.trunks, self.heads)], None

        def task_parameters(self, t):
            return [*self.trunks[t].parameters(), *self.heads[t].parameters()]

        def penalty(self):
            if self.coupling == 0.0:
                return None
            per_layer = zip(*(t.parameters() for t in self.trunks))
            return self.coupling * sum(((torch.stack(ws) - torch.stack(ws).mean(0)) ** 2).sum() for ws in per_layer)

    return LoopSingleTask


def scenarios(seed: int = 0):
    """name -> (x, y [N, T] with NaN where unlabelled, tasks)."""
    import numpy as np
    import torch
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from pipeline.data import TaskSpec

    src = instantiate(OmegaConf.load(CONF / "data" / "exam_schools.yaml"))
    out = {"exam_schools": (torch.as_tensor(src.x, dtype=torch.float32), torch.as_tensor(src.y, dtype=torch.float32), src.tasks)}
    rng = np.random.default_rng(seed)
    n_tasks, per_task, d = 200, 45, 17
    x = rng.normal(size=(n_tasks * per_task, d)).astype(np.float32)
    group = np.repeat(np.arange(n_tasks), per_task)
    y = np.full((len(x), n_tasks), np.nan, dtype=np.float32)
    y[np.arange(len(x)), group] = x @ rng.normal(size=d).astype(np.float32) + rng.normal(size=len(x)).astype(np.float32)
    out["long200"] = (torch.as_tensor(x), torch.as_tensor(y), [TaskSpec(f"g{i}", "regression") for i in range(n_tasks)])
    return out


def make_step(net, tasks, x, y, optimizer: dict | None = None):
    """One step as backward_step takes it; with `optimizer` (AdamW keyword arguments) its update too."""
    import torch

    from pipeline.multitask.weighting.equal import Equal
    from pipeline.training import backward_step

    weighting = Equal(len(tasks))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-4, **optimizer) if optimizer is not None else None

    def step() -> None:
        net.zero_grad(set_to_none=True)
        backward_step(net, tasks, weighting, x, y)
        if opt is not None:
            opt.step()

    return step


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=7, help="interleaved timing blocks per variant")
    parser.add_argument("--steps", type=int, default=3, help="steps per timing block")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steadier on a shared box)")
    args = parser.parse_args(argv)

    import numpy as np
    import torch
    from omegaconf import OmegaConf

    from pipeline.multitask.architectures.single_task import SingleTask
    from pipeline.multitask.architectures.soft import SoftSharing

    torch.set_num_threads(args.threads)
    Loop = loop_nets()
    hidden = list(OmegaConf.load(CONF / "multitask" / "arch" / "soft.yaml").hidden)
    print(f"torch {torch.__version__}, CPU, {args.threads} thread(s), CPU time; hidden {hidden}, batch {args.batch}; median of {args.repeats} blocks")
    print(
        f"{'data':<13} {'tasks':>5} {'scheme':<12} {'loop ms/step':>13} {'batched ms/step':>16} {'speed-up':>9}"
        f" {'+AdamW loop':>13} {'+fused batched':>16} {'speed-up':>9}"
    )
    for name, (x_all, y_all, tasks) in scenarios().items():
        rows = np.random.default_rng(0).choice(len(x_all), size=min(args.batch, len(x_all)), replace=False)
        x, y = x_all[rows], y_all[rows]
        for scheme, coupling in [("single_task", 0.0), ("soft", 1e-3)]:
            torch.manual_seed(0)
            new = SingleTask(x.shape[1], tasks, hidden) if scheme == "single_task" else SoftSharing(x.shape[1], tasks, hidden, coupling=coupling)
            loop_net = Loop(x.shape[1], tasks, hidden, coupling=coupling)
            steps = {"loop": make_step(loop_net, tasks, x, y), "batched": make_step(new, tasks, x, y)}
            # A whole training step: the loop with AdamW's default CPU update (as before), the batched
            # net with the configured one (conf/config.yaml `optimizer`, fused).
            fused = {k: v for k, v in OmegaConf.to_container(OmegaConf.load(CONF / "config.yaml").optimizer).items() if not k.startswith("_")}
            fused.pop("weight_decay", None)
            steps |= {"loop+update": make_step(loop_net, tasks, x, y, {}), "batched+update": make_step(new, tasks, x, y, fused)}
            for step in steps.values():
                step()  # warm-up
            times = {k: [] for k in steps}
            for _ in range(args.repeats):
                for k, step in steps.items():
                    start = time.process_time()
                    for _ in range(args.steps):
                        step()
                    times[k].append((time.process_time() - start) / args.steps * 1e3)
            ms = {k: statistics.median(v) for k, v in times.items()}
            loop, batched, lu, bu = ms["loop"], ms["batched"], ms["loop+update"], ms["batched+update"]
            print(
                f"{name:<13} {len(tasks):>5} {scheme:<12} {loop:>13.1f} {batched:>16.2f} {loop / batched:>8.1f}x"
                f" {lu:>13.1f} {bu:>16.2f} {lu / bu:>8.1f}x",
                flush=True,
            )


if __name__ == "__main__":
    main()
