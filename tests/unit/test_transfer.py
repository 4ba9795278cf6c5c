"""Transfer strategies built from the real conf/transfer/*.yaml files, against a source checkpoint
whose weights are known values."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from pipeline.data import TaskSpec
from pipeline.errors import PipelineError
from pipeline.models import Net, architecture, build, load_checkpoint, load_matching, save_checkpoint, under
from pipeline.transfer import TransferContext, TransferPlan
from pipeline.transfer.llrd import LLRD

REPO = Path(__file__).resolve().parents[2]
TRANSFER_CONFS = sorted((REPO / "conf" / "transfer").glob("*.yaml"))


def strategy_cfg(path):
    """A strategy's config file as the fine-tune stage instantiates it: without its `search:` space."""
    from pipeline.transfer.tuning import split_search

    return split_search(OmegaConf.load(path))[0]


MODEL_CFG = REPO / "conf" / "model" / "mlp.yaml"
LR = 1e-3
INPUT_DIM = 64
TARGET = TaskSpec("digit", "classification", ["5", "6", "7", "8", "9"])


def strategy(name: str, **overrides):
    """The strategy exactly as the pipeline makes it: the config file, instantiated by Hydra."""
    cfg = strategy_cfg(REPO / "conf" / "transfer" / f"{name}.yaml")
    return instantiate(OmegaConf.merge(cfg, overrides))


def model_cfg(**overrides):
    return OmegaConf.merge(OmegaConf.load(MODEL_CFG), overrides)


def fill_known(net: torch.nn.Module) -> None:
    """Parameter i gets values i + 1 + 1e-4 * position: no two parameters share a value."""
    with torch.no_grad():
        for i, p in enumerate(net.parameters()):
            p.copy_(torch.arange(p.numel(), dtype=p.dtype).reshape(p.shape) * 1e-4 + (i + 1))


def make_checkpoint(tmp_dir: Path, hidden=None, n_outputs: int = 10) -> dict:
    cfg = model_cfg() if hidden is None else model_cfg(hidden=hidden)
    arch = architecture(cfg, INPUT_DIM, n_outputs)
    net = build(arch)
    fill_known(net)
    path = tmp_dir / "model.pt"
    save_checkpoint(path, net, arch, {"run_id": "source-run"})
    return load_checkpoint(path)


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> dict:
    return make_checkpoint(tmp_path_factory.mktemp("source"))


def context(source: dict, **kw) -> TransferContext:
    kw.setdefault("model_cfg", model_cfg())
    kw.setdefault("feature_dim", source["arch"]["backbone"]["hidden"][-1])
    return TransferContext(source=source, target=TARGET, input_dim=INPUT_DIM, **kw)


def assert_plan_consistent(plan: TransferPlan, source_state: dict, ctx: TransferContext) -> None:
    """Properties every strategy's plan must have, whatever it copies or freezes."""
    named = dict(plan.net.named_parameters())
    owner = {id(p): n for n, p in named.items()}
    # groups: named uniquely, positive lr, only this net's parameters, none in two groups
    names = [g["name"] for g in plan.param_groups]
    assert len(names) == len(set(names)), names
    seen: Counter[str] = Counter()
    group_lr: dict[str, float] = {}
    for g in plan.param_groups:
        assert g["lr"] > 0 and g["params"], g["name"]
        for p in g["params"]:
            assert id(p) in owner, f"group {g['name']} holds a parameter that is not in the net"
            seen[owner[id(p)]] += 1
            group_lr[owner[id(p)]] = g["lr"]
    assert max(seen.values()) == 1, [n for n, c in seen.items() if c > 1]
    # every parameter trains in exactly one group, or is frozen; lr_of agrees with the groups
    frozen = {n for n, p in named.items() if not p.requires_grad}
    assert set(plan.frozen) == frozen and len(plan.frozen) == len(frozen)
    for n, p in named.items():
        if p.requires_grad:
            assert seen[n] == 1, f"{n} trains but is in no param group"
            assert plan.lr_of(n) == group_lr[n]
        else:
            assert plan.lr_of(n) is None
    # copied parameters equal the source; every other parameter is fresh
    assert len(plan.copied) == len(set(plan.copied)) and set(plan.copied) <= set(named)
    assert plan.reinitialised == [n for n in named if n not in plan.copied]
    for n in plan.copied:
        assert torch.equal(named[n].detach(), source_state[n]), n
    for n in plan.reinitialised:
        if n in source_state and source_state[n].shape == named[n].shape:
            assert not torch.equal(named[n].detach(), source_state[n]), f"{n} is not copied but equals the source"
    # the net accepts what the plan says it reads and predicts the target's outputs
    assert plan.inputs in ("raw", "features")
    width = ctx.feature_dim if plan.inputs == "features" else ctx.input_dim
    plan.net.eval()
    with torch.no_grad():
        out = plan.net(torch.randn(3, width))
    assert out.shape == (3, TARGET.n_outputs)


@pytest.mark.parametrize("conf", TRANSFER_CONFS, ids=[p.stem for p in TRANSFER_CONFS])
def test_every_configured_strategy_gives_a_consistent_plan(conf, source):
    strat = instantiate(strategy_cfg(conf))
    assert strat.name == conf.stem  # the file name is the strategy's name in results and MLflow
    ctx = context(source)
    torch.manual_seed(0)
    plan = strat.build(ctx, LR)
    assert_plan_consistent(plan, source["state_dict"], ctx)
    assert plan.net is not None and isinstance(plan.net, Net)


def varied(cfg) -> dict:
    """Non-default values for the knobs `cfg` has: the layer lists name the second block, the scale 0.25."""
    knobs = {"transfer": ["backbone.blocks.1"], "copy": ["backbone.blocks.1"], "freeze": ["backbone.blocks.1"], "source_lr_scale": 0.25}
    return {k: v for k, v in knobs.items() if k in cfg}


@pytest.mark.parametrize("variant", ["default", "varied"])
@pytest.mark.parametrize("conf", TRANSFER_CONFS, ids=[p.stem for p in TRANSFER_CONFS])
def test_every_configured_strategy_does_what_its_config_promises(conf, variant, source):
    """The layers listed in `transfer` (param_transfer) or `copy` (structure_transfer) start from the
    source and no other does; `freeze` layers are fixed; transferred layers train at lr x
    `source_lr_scale`, every other trainable one at lr. Without those keys: nothing copied or frozen."""
    cfg = strategy_cfg(conf)
    cfg = OmegaConf.merge(cfg, varied(cfg)) if variant == "varied" else cfg
    ctx = context(source)
    torch.manual_seed(0)
    plan = instantiate(cfg).build(ctx, LR)
    assert_plan_consistent(plan, source["state_dict"], ctx)
    names = [n for n, _ in plan.net.named_parameters()]
    assert sorted(plan.copied) == sorted(n for n in names if under(n, list(cfg.get("transfer", cfg.get("copy", [])))))
    assert sorted(plan.frozen) == sorted(n for n in names if under(n, list(cfg.get("freeze", []))))
    scale = cfg.get("source_lr_scale", 1.0)
    depth = LLRD.depths(names)  # with `decay`, a layer n below the head trains at LR x decay^n
    for n in names:
        if n in plan.frozen:
            assert plan.lr_of(n) is None, n
        elif "decay" in cfg:
            assert plan.lr_of(n) == pytest.approx(LR * cfg.decay ** depth[n]), n
        else:
            assert plan.lr_of(n) == pytest.approx(LR * scale if n in plan.copied else LR), n


def test_the_baseline_strategy_is_configured_and_uses_nothing_from_the_source(source):
    baseline = OmegaConf.load(REPO / "conf" / "config.yaml").transfer.baseline
    assert baseline in {p.stem for p in TRANSFER_CONFS}
    plan = strategy(baseline).build(context(source), LR)
    assert plan.copied == [] and plan.frozen == [] and plan.inputs == "raw"


# --------------------------------------------------------------------------------------------------
# scratch


def test_scratch_copies_nothing_and_trains_everything_at_lr(source):
    ctx = context(source)
    plan = strategy("scratch").build(ctx, LR)
    assert_plan_consistent(plan, source["state_dict"], ctx)
    assert plan.copied == [] and plan.frozen == [] and plan.inputs == "raw"
    names = [n for n, _ in plan.net.named_parameters()]
    assert plan.reinitialised == names
    assert all(plan.lr_of(n) == LR for n in names)
    state = source["state_dict"]
    for n, p in plan.net.named_parameters():
        rows = min(p.shape[0], state[n].shape[0])  # the head has 5 rows here, 10 in the source
        assert p.shape[1:] == state[n].shape[1:]
        assert not torch.equal(p.detach()[:rows], state[n][:rows]), n


def test_scratch_builds_the_configured_architecture(source):
    plan = strategy("scratch").build(context(source, model_cfg=model_cfg(hidden=[32])), LR)
    assert [b.linear.out_features for b in plan.net.backbone.blocks] == [32]
    assert plan.net.backbone.blocks[0].linear.in_features == INPUT_DIM


# --------------------------------------------------------------------------------------------------
# param_transfer


def test_param_transfer_copies_backbone_and_renews_head(source):
    scale = OmegaConf.load(REPO / "conf" / "transfer" / "param_transfer.yaml").source_lr_scale
    ctx = context(source)
    plan = strategy("param_transfer").build(ctx, LR)
    assert_plan_consistent(plan, source["state_dict"], ctx)
    backbone = [n for n in source["state_dict"] if n.startswith("backbone.")]
    assert sorted(plan.copied) == sorted(backbone) and len(backbone) == 4
    assert plan.reinitialised == ["head.weight", "head.bias"]
    assert plan.net.head.out_features == 5 and plan.net.head.in_features == 128
    for n in backbone:
        assert plan.lr_of(n) == pytest.approx(LR * scale)
    assert plan.lr_of("head.weight") == plan.lr_of("head.bias") == LR
    assert plan.frozen == []


def test_param_transfer_freeze_first_block(source):
    ctx = context(source)
    plan = strategy("param_transfer", freeze=["backbone.blocks.0"], source_lr_scale=0.5).build(ctx, LR)
    assert_plan_consistent(plan, source["state_dict"], ctx)
    assert sorted(plan.frozen) == ["backbone.blocks.0.linear.bias", "backbone.blocks.0.linear.weight"]
    named = dict(plan.net.named_parameters())
    for n in plan.frozen:
        assert named[n].requires_grad is False and plan.lr_of(n) is None
    assert plan.lr_of("backbone.blocks.1.linear.weight") == pytest.approx(LR * 0.5)
    assert plan.lr_of("head.weight") == LR


def test_param_transfer_freeze_unknown_layer_is_an_error(source):
    with pytest.raises(PipelineError, match=r"backbone\.block\.0"):
        strategy("param_transfer", freeze=["backbone.block.0"]).build(context(source), LR)


# --------------------------------------------------------------------------------------------------
# structure_transfer


def test_structure_transfer_uses_checkpoint_architecture(source):
    # the configured model has other hidden sizes; the checkpoint's [256, 128] must win
    ctx = context(source, model_cfg=model_cfg(hidden=[32, 16]))
    plan = strategy("structure_transfer").build(ctx, LR)
    assert_plan_consistent(plan, source["state_dict"], ctx)
    assert [b.linear.out_features for b in plan.net.backbone.blocks] == [256, 128]
    assert plan.net.head.out_features == 5
    assert sorted(plan.copied) == ["backbone.blocks.0.linear.bias", "backbone.blocks.0.linear.weight"]
    assert len(plan.param_groups) == 1
    assert {plan.lr_of(n) for n, _ in plan.net.named_parameters()} == {LR}
    assert sorted(plan.reinitialised) == ["backbone.blocks.1.linear.bias", "backbone.blocks.1.linear.weight", "head.bias", "head.weight"]


def test_structure_transfer_copy_list_selects_layers(source):
    ctx = context(source)
    none = strategy("structure_transfer", copy=[]).build(ctx, LR)
    assert_plan_consistent(none, source["state_dict"], ctx)
    assert none.copied == []
    both = strategy("structure_transfer", copy=["backbone.blocks.0", "backbone.blocks.1.linear.weight"]).build(ctx, LR)
    assert_plan_consistent(both, source["state_dict"], ctx)
    assert sorted(both.copied) == ["backbone.blocks.0.linear.bias", "backbone.blocks.0.linear.weight", "backbone.blocks.1.linear.weight"]


# --------------------------------------------------------------------------------------------------
# feature_retrain


def test_feature_retrain_reads_features(source):
    ctx = context(source, feature_dim=128)
    plan = strategy("feature_retrain").build(ctx, LR)
    assert_plan_consistent(plan, source["state_dict"], ctx)
    assert plan.inputs == "features" and plan.copied == [] and plan.frozen == []
    assert len(plan.net.backbone.blocks) == 0  # hidden: [] -> a linear model on the features
    assert plan.net.head.in_features == 128 and plan.net.head.out_features == 5
    deeper = strategy("feature_retrain", hidden=[16]).build(context(source, feature_dim=40), LR)
    assert deeper.net.backbone.blocks[0].linear.in_features == 40


def test_feature_retrain_without_features_is_an_error(source):
    with pytest.raises(PipelineError, match=r"feature_retrain.*extract"):
        strategy("feature_retrain").build(context(source, feature_dim=None), LR)


# --------------------------------------------------------------------------------------------------
# checkpoints that do not fit


@pytest.fixture(scope="module")
def narrow_state(tmp_path_factory) -> dict:
    return make_checkpoint(tmp_path_factory.mktemp("narrow"), hidden=[32, 128])["state_dict"]


@pytest.mark.parametrize("name", ["param_transfer", "structure_transfer"])
def test_shape_mismatch_names_layers(source, narrow_state, name):
    # arch says [256, 128] but the weights come from a [32, 128] network
    bad = {**source, "state_dict": narrow_state}
    with pytest.raises(PipelineError) as err:
        strategy(name).build(context(bad), LR)
    msg = str(err.value)
    assert msg.startswith(name) and "does not match" in msg
    assert "backbone.blocks.0.linear.weight: checkpoint (32, 64) vs target (256, 64)" in msg
    assert "backbone.blocks.0.linear.bias: checkpoint (32,) vs target (256,)" in msg
    if name == "param_transfer":
        assert "backbone.blocks.1.linear.weight: checkpoint (128, 32) vs target (128, 256)" in msg
    else:  # only the copied block is checked
        assert "blocks.1" not in msg


def test_missing_layers_named(source, tmp_path):
    shallow = make_checkpoint(tmp_path, hidden=[256])["state_dict"]
    bad = {**source, "state_dict": shallow}
    with pytest.raises(PipelineError) as err:
        strategy("param_transfer").build(context(bad), LR)
    assert "missing in checkpoint: ['backbone.blocks.1.linear.weight', 'backbone.blocks.1.linear.bias']" in str(err.value)


def test_head_transfer_to_other_class_count_named(source):
    with pytest.raises(PipelineError, match=r"head\.weight: checkpoint \(10, 128\) vs target \(5, 128\)"):
        strategy("param_transfer", transfer=["backbone", "head"]).build(context(source), LR)


def test_copy_of_unknown_layer_named(source):
    with pytest.raises(PipelineError) as err:
        strategy("structure_transfer", copy=["backbone.blocks.0", "backbone.blocks.3"]).build(context(source), LR)
    msg = str(err.value)
    assert "structure_transfer: layers ['backbone.blocks.3'] do not exist" in msg
    assert "'backbone.blocks.0.linear'" in msg and "'head'" in msg  # the layers it does have


def test_load_matching_prefix_is_a_layer_boundary(source):
    # "backbone.blocks.1" must not match "backbone.blocks.10..." nor does "backbone.block" match anything
    net = build(source["arch"])
    with pytest.raises(PipelineError, match=r"\['backbone.block'\] do not exist"):
        load_matching(net, source["state_dict"], ["backbone.block"], "t")
    assert load_matching(net, source["state_dict"], ["head"], "t") == ["head.weight", "head.bias"]


# --------------------------------------------------------------------------------------------------
# models: architecture / build / checkpoints


def test_architecture_and_build():
    arch = architecture(model_cfg(), 64, 10)
    assert arch == {"backbone": {"_target_": "pipeline.models.MLP", "hidden": [256, 128], "dropout": 0.1, "input_dim": 64}, "n_outputs": 10}
    net = build(arch)
    assert [tuple(p.shape) for p in net.parameters()] == [(256, 64), (256,), (128, 256), (128,), (10, 128), (10,)]
    assert net.backbone.out_dim == 128
    assert net(torch.zeros(2, 8, 8)).shape == (2, 10)  # images are flattened


def test_checkpoint_round_trip(source, tmp_path):
    assert source["run_id"] == "source-run"
    assert source["arch"]["backbone"]["hidden"] == [256, 128]
    net = build(source["arch"])
    net.load_state_dict(source["state_dict"])
    save_checkpoint(tmp_path / "again.pt", net, source["arch"], {"run_id": "x"})
    again = load_checkpoint(tmp_path / "again.pt")
    assert again["arch"] == source["arch"]
    for k, v in source["state_dict"].items():
        assert torch.equal(again["state_dict"][k], v)
    assert [p.name for p in tmp_path.iterdir()] == ["again.pt"]  # no temp file left


def test_load_checkpoint_missing_names_path(tmp_path):
    path = tmp_path / "source" / "model.pt"
    with pytest.raises(PipelineError, match=str(path).replace(".", r"\.")):
        load_checkpoint(path)


# --------------------------------------------------------------------------------------------------
# regularised fine-tuning


def test_l2sp_penalty_matches_a_hand_computation(source):
    """Omega = alpha/2 ||w_S - w_S^0||^2 + beta/2 ||w_new||^2: zero on the copied layers at the start;
    moving one copied weight by delta adds alpha/2 delta^2; the head contributes beta/2 ||head||^2."""
    torch.manual_seed(0)
    plan = strategy("l2sp", alpha=0.3, beta=0.05).build(context(source), LR)
    net = plan.net
    head = 0.5 * 0.05 * sum(float((p.detach() ** 2).sum()) for n, p in net.named_parameters() if n.startswith("head"))
    assert float(plan.extra_loss(net)) == pytest.approx(head, rel=1e-6)
    with torch.no_grad():
        net.backbone.blocks[0].linear.weight[0, 0] += 0.2
    assert float(plan.extra_loss(net)) == pytest.approx(head + 0.5 * 0.3 * 0.2**2, rel=1e-5)
    # its gradient on that weight is alpha * delta, and the optimizer adds no decay of its own
    net.zero_grad()
    plan.extra_loss(net).backward()
    assert float(net.backbone.blocks[0].linear.weight.grad[0, 0]) == pytest.approx(0.3 * 0.2, rel=1e-4)
    assert all(g["weight_decay"] == 0.0 for g in plan.param_groups)


def test_l2sp_anchors_only_trainable_copied_layers(source):
    plan = strategy("l2sp", freeze=["backbone.blocks.0"]).build(context(source), LR)
    penalty = plan.extra_loss
    assert set(penalty.anchors) == {n for n in plan.copied if n not in plan.frozen}
    assert set(penalty.new) == {n for n, _ in plan.net.named_parameters() if n.startswith("head")}


def test_llrd_rates_halve_per_layer_below_the_head(source):
    plan = strategy("llrd", decay=0.5).build(context(source), LR)
    rates = {n: plan.lr_of(n) for n, _ in plan.net.named_parameters()}
    blocks = len(source["arch"]["backbone"]["hidden"])
    assert rates["head.weight"] == rates["head.bias"] == pytest.approx(LR)
    for i in range(blocks):
        assert rates[f"backbone.blocks.{i}.linear.weight"] == pytest.approx(LR * 0.5 ** (blocks - i))
    assert sorted(plan.copied) == sorted(n for n in rates if n.startswith("backbone"))


def test_llrd_decay_outside_zero_one_is_an_error():
    from pipeline.errors import instantiate as checked

    cfg = OmegaConf.merge(strategy_cfg(REPO / "conf" / "transfer" / "llrd.yaml"), {"decay": 1.5})
    with pytest.raises(PipelineError, match=r"transfer.strategies.llrd: llrd: decay must be in \(0, 1\], got 1.5"):
        checked(cfg, "transfer.strategies.llrd")


def test_a_group_option_reaches_the_optimizer(source):
    """L2-SP's groups say weight_decay 0: the optimizer the module builds must not decay them anyway."""
    import functools

    from pipeline.training import TaskModule

    plan = strategy("l2sp").build(context(source), LR)
    module = TaskModule.single(plan.net, TARGET, plan.param_groups, functools.partial(torch.optim.AdamW, weight_decay=1e-4), plan.extra_loss)
    groups = module.configure_optimizers().param_groups
    assert [g["weight_decay"] for g in groups] == [0.0] * len(plan.param_groups)
    assert [g["lr"] for g in groups] == [g["lr"] for g in plan.param_groups]


def test_lp_ft_and_gradual_unfreezing_phases_go_top_down(source):
    lp = strategy("lp_ft").build(context(source), LR)
    assert lp.phases == [["head"], ["backbone", "head"]] and lp.interpolate is None
    gu = strategy("gradual_unfreezing").build(context(source), LR)
    blocks = [f"backbone.blocks.{i}.linear" for i in range(len(source["arch"]["backbone"]["hidden"]))]
    assert gu.phases == [["head"], *[[*blocks[i:], "head"] for i in range(len(blocks) - 1, -1, -1)]]
    wise = strategy("wise_ft", alphas=[0.0, 0.5, 1.0]).build(context(source), LR)
    assert wise.phases == lp.phases and wise.interpolate == [0.0, 0.5, 1.0]


def _tiny_data(n=30, d=INPUT_DIM, classes=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = torch.randint(0, classes, (n, 1), generator=g).float()
    return {"train": (x, y), "val": (x[:10], y[:10]), "test": (x[10:20], y[10:20])}


def _train(plan, max_epochs=3):
    import functools

    from pipeline.config import FitConfig
    from pipeline.training import TaskModule
    from pipeline.transfer.schedule import train_plan
    from support import cpu_settings

    settings = cpu_settings()
    run = FitConfig(lr=LR, batch_size=10, max_epochs=max_epochs, patience=max_epochs, min_steps_per_epoch=1)
    module = TaskModule.single(plan.net, TARGET, plan.param_groups, functools.partial(torch.optim.SGD, lr=0.1), plan.extra_loss)
    return train_plan(plan, module, _tiny_data(), run, settings, 0)


def test_a_phase_trains_only_its_layers_and_phases_add_up(source):
    torch.manual_seed(0)
    plan = strategy("lp_ft").build(context(source), LR)
    plan.phases = [["head"]]  # the linear probe alone
    head0 = {n: p.detach().clone() for n, p in plan.net.named_parameters() if n.startswith("head")}
    result = _train(plan)
    for n, p in plan.net.named_parameters():
        if n.startswith("backbone"):
            assert torch.equal(p.detach(), source["state_dict"][n]), n  # frozen through the probe
        else:
            assert not torch.equal(p.detach(), head0[n]), n
        assert p.requires_grad, n  # every layer trainable again afterwards
    torch.manual_seed(0)
    two = strategy("lp_ft").build(context(source), LR)
    both = _train(two)
    assert both.epochs == 6 and both.steps == 2 * result.steps  # 3 epochs x 3 steps, twice
    steps = [step for key, _, step, _ in both.logged if key == "train/loss"]
    assert steps == sorted(steps) and steps[-1] == both.steps  # one history across the phases


def test_wise_ft_at_alpha_zero_and_one_keeps_the_endpoints(source):
    """a = 0 leaves the linear-probed weights, a = 1 the fine-tuned ones; 0.5 the midpoint."""
    from pipeline.transfer.schedule import mix

    start = {"w": torch.tensor([0.0, 2.0]), "b": torch.tensor([1.0])}
    end = {"w": torch.tensor([4.0, -2.0]), "b": torch.tensor([3.0])}
    assert all(torch.equal(mix(start, end, 0.0)[n], start[n]) for n in start)
    assert all(torch.equal(mix(start, end, 1.0)[n], end[n]) for n in end)
    assert torch.equal(mix(start, end, 0.5)["w"], torch.tensor([2.0, 0.0]))

    finals = {}
    for alpha in (0.0, 1.0):
        torch.manual_seed(0)
        plan = strategy("wise_ft", alphas=[alpha]).build(context(source), LR)
        result = _train(plan)
        finals[alpha] = {n: p.detach().clone() for n, p in plan.net.named_parameters()}
        assert ("fit/wise_alpha", alpha) in [(k, v) for k, v, _, _ in result.logged]
    # a = 0: the backbone is still the source's (the probe froze it); a = 1: it moved in phase 2.
    for n in finals[0.0]:
        if n.startswith("backbone"):
            assert torch.equal(finals[0.0][n], source["state_dict"][n]), n
            assert not torch.equal(finals[1.0][n], source["state_dict"][n]), n


def test_bss_penalty_is_eta_times_the_smallest_squared_singular_values(source):
    plan = strategy("bss", eta=0.01, k=2).build(context(source), LR)
    x = torch.randn(12, INPUT_DIM)
    plan.net(x)
    features = plan.net.backbone(x).detach()
    sigma = torch.linalg.svdvals(features)
    assert float(plan.extra_loss(plan.net)) == pytest.approx(0.01 * float((sigma[-2:] ** 2).sum()), rel=1e-5)
    # It trains: the penalty reads the step's own features, whose graph the losses use too.
    torch.manual_seed(0)
    result = _train(strategy("bss", eta=0.01).build(context(source), LR))
    assert result.steps == 9 and all(math.isfinite(v) for k, v, _, _ in result.logged if k == "train/loss")
