"""Training-loop overhead: our Lightning path (fit()) vs a plain PyTorch loop vs a bare Lightning Trainer.

Workload: the default experiment's pretrain run -- the MLP from conf/model (64-256-128-10) built with
pipeline.models.build, batch size and lr from conf `pretrain`, the optimizer from conf `optimizer`,
trained on the train split that `prepare` makes of the source data (MNIST sample, UCI 8x8) and
validated each epoch on its val split.

  ours   pipeline.training.fit(): TaskModule (one task, equal weights), trainer(), TensorLoader,
         ModelCheckpoint and EarlyStopping (patience > epochs, so every run trains all epochs); the
         timing callback goes in through fit's `callbacks` argument.
  plain  the same model, optimizer and randperm batches in a hand-written loop; per epoch the same
         validation pass as ours (loss, accuracy and macro-F1 over the val split, pipeline.training.
         task_metrics) and an in-memory copy of the best weights.
  bare   for context: an L.Trainer (no logger, checkpointing or progress bar) with a torch DataLoader
         over a TensorDataset, self.log every step, validation each epoch.

Steps/s count the training loop only (train + validation epochs, from Lightning's on_train_start to
on_train_end, or the plain loop's epochs); fit()'s setup, reload of the best checkpoint and test pass
are reported separately. Runs are interleaved (the order rotates each repeat) and medians are printed,
by wall time and by process CPU time (steadier when other work shares the machine).

    PYTHONPATH=src python benchmarks/training_loop.py [--epochs 20] [--repeats 7] [--threads 1]
    PYTHONPATH=src python benchmarks/training_loop.py --quick   # 3 epochs, 1 repeat, no warm-up: does it run

To compare two revisions, run the script in a checkout of each (the plain loop is the common yardstick).
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_config():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="config")


def load_data(cfg):
    """{split: (x, y)} of the default experiment's source task set, split exactly as prepare does."""
    from pipeline.data.build import build_taskset
    from pipeline.stages import experiment
    from pipeline.stages.pretrain import split_tensors

    _, exp = experiment(cfg)
    ts = build_taskset(exp.source, exp.split, "source")
    return ts, split_tensors(ts)


def make_timer():
    """A Lightning callback timing the training loop (all train and validation epochs)."""
    import lightning as L

    class Timer(L.Callback):
        def on_train_start(self, trainer, pl_module):
            self.t0, self.c0 = time.perf_counter(), time.process_time()

        def on_train_end(self, trainer, pl_module):
            self.seconds, self.cpu = time.perf_counter() - self.t0, time.process_time() - self.c0

    return Timer()


def run_ours(cfg, ts, data, arch, epochs):
    import dataclasses

    import torch
    from hydra.utils import instantiate

    from pipeline.config import settings
    from pipeline.models import build
    from pipeline.training import TaskModule, fit

    trainer_cfg, pre = settings(cfg, "trainer", "pretrain")
    trainer_cfg = dataclasses.replace(trainer_cfg, progress_bar=False)
    pre = dataclasses.replace(pre, max_epochs=epochs, patience=epochs + 1)
    torch.manual_seed(pre.seed)
    net = build(arch)
    module = TaskModule.single(net, ts.tasks[0], [{"params": list(net.parameters()), "lr": pre.lr}], instantiate(cfg.optimizer))
    timer = make_timer()
    t0 = time.perf_counter()
    result = fit(module, data, pre, trainer_cfg, pre.seed, callbacks=[timer])
    total = time.perf_counter() - t0
    return timed(result.steps, result.epochs, timer, total, result.best_val, result.test["test/acc"])


def timed(steps: int, epochs: int, timer, total: float, val_acc: float, test_acc: float) -> dict:
    """One Lightning-driven run's figures, as every runner reports them."""
    return {"steps": steps, "epochs": epochs, "loop_s": timer.seconds, "cpu_s": timer.cpu, "total_s": total, "val_acc": val_acc, "test_acc": test_acc}


def run_plain(cfg, ts, data, arch, epochs):
    import torch
    from hydra.utils import instantiate
    from torch.nn import functional as F

    from pipeline.models import build
    from pipeline.training import task_metrics

    seed = int(cfg.pretrain.seed)
    task = ts.tasks[0]
    torch.manual_seed(seed)
    net = build(arch)
    opt = instantiate(cfg.optimizer)([{"params": list(net.parameters()), "lr": float(cfg.pretrain.lr)}])
    x, y = data["train"]
    xv, yv = data["val"]
    y, yv = y[:, 0].long(), yv[:, 0].long()  # labels are [n, 1] (one task)
    bs, n = int(cfg.pretrain.batch_size), len(x)
    gen = torch.Generator().manual_seed(seed)
    best, best_state, steps = -1.0, None, 0
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(epochs):
        net.train()
        order = torch.randperm(n, generator=gen)
        for start in range(0, n, bs):
            idx = order[start : start + bs]
            loss = F.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            steps += 1
        net.eval()
        with torch.inference_mode():
            out = net(xv)
            metrics = {"loss": F.cross_entropy(out, yv), **task_metrics(task, out, yv)}
        acc = float(metrics["acc"])
        if acc > best:
            best, best_state = acc, copy.deepcopy(net.state_dict())
    loop, cpu = time.perf_counter() - t0, time.process_time() - c0
    net.load_state_dict(best_state)
    xt, yt = data["test"]
    with torch.no_grad():
        test = float((net(xt).argmax(-1) == yt[:, 0].long()).float().mean())
    return {"steps": steps, "epochs": epochs, "loop_s": loop, "cpu_s": cpu, "total_s": time.perf_counter() - t0, "val_acc": best, "test_acc": test}


def run_bare(cfg, ts, data, arch, epochs):
    import lightning as L
    import torch
    from hydra.utils import instantiate
    from torch.nn import functional as F
    from torch.utils.data import DataLoader, TensorDataset

    from pipeline.models import build

    class Bare(L.LightningModule):
        def __init__(self, net, opt):
            super().__init__()
            self.net, self.opt = net, opt
            self.best = -1.0

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = F.cross_entropy(self.net(x), y[:, 0].long())
            self.log("train/loss", loss)
            return loss

        def validation_step(self, batch, batch_idx):
            x, y = batch
            acc = (self.net(x).argmax(-1) == y[:, 0].long()).float().mean()
            self.log("val/acc", acc)
            self.best = max(self.best, float(acc))

        def configure_optimizers(self):
            return self.opt([{"params": list(self.net.parameters()), "lr": float(cfg.pretrain.lr)}])

    seed = int(cfg.pretrain.seed)
    L.seed_everything(seed, verbose=False)
    torch.manual_seed(seed)
    module = Bare(build(arch), instantiate(cfg.optimizer))
    train = DataLoader(TensorDataset(*data["train"]), batch_size=int(cfg.pretrain.batch_size), shuffle=True)
    val = DataLoader(TensorDataset(*data["val"]), batch_size=len(data["val"][0]))
    timer = make_timer()
    with tempfile.TemporaryDirectory() as tmp:
        tr = L.Trainer(
            max_epochs=epochs,
            accelerator="cpu",
            devices=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=tmp,
            callbacks=[timer],
        )
        t0 = time.perf_counter()
        tr.fit(module, train, val)
        total = time.perf_counter() - t0
    return timed(tr.global_step, tr.current_epoch, timer, total, module.best, float("nan"))


RUNNERS = {"ours": run_ours, "plain": run_plain, "bare": run_bare}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=20, help="epochs per run (default 20)")
    p.add_argument("--repeats", type=int, default=7, help="interleaved runs of each variant (default 7)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs of each variant first (default 1)")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads for every variant (default 1)")
    p.add_argument("--variants", default="ours,plain,bare", help="comma-separated subset of ours,plain,bare")
    p.add_argument("--quick", action="store_true", help="3 epochs, 1 repeat, no warm-up: a check that the benchmark runs")
    args = p.parse_args(argv)
    if args.quick:
        args.epochs, args.repeats, args.warmup = 3, 1, 0

    import warnings

    import lightning
    import torch

    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
    torch.set_num_threads(args.threads)
    from pipeline.models import architecture
    from pipeline.training import quiet

    quiet()
    cfg = load_config()
    ts, data = load_data(cfg)
    arch = architecture(cfg.model, ts.x.shape[1], ts.tasks[0].n_outputs)
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    print(
        f"torch {torch.__version__}  lightning {lightning.__version__}  python {sys.version.split()[0]}  "
        f"cpus {os.cpu_count()}  torch threads {torch.get_num_threads()}"
    )
    print(
        f"data: {ts.provenance['adapter']} ({ts.provenance['representation']}), train split {len(data['train'][0])} rows "
        f"/ val {len(data['val'][0])} / test {len(data['test'][0])}; model {arch['backbone']['input_dim']}-"
        f"{'-'.join(map(str, arch['backbone']['hidden']))}-{arch['n_outputs']} dropout {arch['backbone']['dropout']}; "
        f"batch {cfg.pretrain.batch_size}, lr {cfg.pretrain.lr}, {args.epochs} epochs, {args.repeats} repeats"
    )

    for _ in range(args.warmup):
        for name in names:
            RUNNERS[name](cfg, ts, data, arch, args.epochs)
    results = {name: [] for name in names}
    for r in range(args.repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:  # rotate the order each repeat
            results[name].append(RUNNERS[name](cfg, ts, data, arch, args.epochs))

    med = lambda name, key: statistics.median(x[key] for x in results[name])  # noqa: E731
    wall = {name: [x["steps"] / x["loop_s"] for x in results[name]] for name in names}
    # Process CPU time as well: with one torch thread it is less disturbed by other load on the machine.
    cpu = {name: [x["steps"] / x["cpu_s"] for x in results[name]] for name in names}
    w = max(6, *map(len, names))
    print(
        f"{'variant':<{w}} {'steps':>6} {'steps/s':>8} {'min..max':>15} {'cpu steps/s':>11} {'loop s':>7} {'run s':>7} {'val acc':>8} {'test acc':>8}"
    )
    for name in names:
        print(
            f"{name:<{w}} {int(med(name, 'steps')):>6} {statistics.median(wall[name]):>8.1f} {min(wall[name]):>7.1f}..{max(wall[name]):<7.1f} "
            f"{statistics.median(cpu[name]):>11.1f} {med(name, 'loop_s'):>7.3f} {med(name, 'total_s'):>7.3f} "
            f"{med(name, 'val_acc'):>8.4f} {med(name, 'test_acc'):>8.4f}"
        )
    if "plain" in names:
        for name in names:
            if name != "plain":
                pair = [a / b for a, b in zip(wall[name], wall["plain"])]  # same repeat, adjacent runs
                print(
                    f"{name}/plain steps/s: {statistics.median(wall[name]) / statistics.median(wall['plain']):.3f}  "
                    f"per-repeat median {statistics.median(pair):.3f} (range {min(pair):.3f}..{max(pair):.3f}); "
                    f"cpu-time {statistics.median(cpu[name]) / statistics.median(cpu['plain']):.3f}"
                )
    print(
        "loop = train + per-epoch validation (what steps/s count); run = the whole call "
        "(ours: fit() incl. trainer setup, best-checkpoint reload, test pass)"
    )


if __name__ == "__main__":
    main()
