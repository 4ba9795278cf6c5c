"""Bad input: a message naming the file, column, key or value at fault, a non-zero exit, and no
half-written outputs."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_wine

from pipeline.errors import PipelineError
from pipeline.stages import finetune, prepare
from support import ROOT, TINY, run_cli


def wine_tables(tmp_path, mutate=None):
    df = load_wine(as_frame=True).frame.rename(columns={"target": "cultivar"})
    src, tgt = df.iloc[::2].copy(), df.iloc[1::2].copy()
    if mutate:
        mutate(tgt)
    tgt.to_csv(tmp_path / "target.csv", index=False)
    src.to_csv(tmp_path / "source.csv", index=False)
    return tmp_path / "source.csv", tmp_path / "target.csv"


def table_cfg(make_cfg, src, tgt, budgets="[1,3]", label="cultivar"):
    return make_cfg(
        "+experiment@experiments.mine=my_tables",
        "exp=mine",
        f"experiments.mine.source.path={src}",
        f"experiments.mine.target.path={tgt}",
        f"experiments.mine.source.target={label}",
        f"experiments.mine.target.target={label}",
        "experiments.mine.source.classes=null",
        "experiments.mine.target.classes=null",
        f"experiments.mine.budgets={budgets}",
    )


def assert_prepare_fails(cfg, *fragments):
    with pytest.raises(PipelineError) as err:
        prepare.run(cfg)
    for f in fragments:
        assert f in str(err.value), str(err.value)
    out = prepare.layout(cfg, "mine").data
    assert not out.exists(), "a failed prepare must not leave outputs"
    assert not any(p.name.startswith(".data.") for p in out.parent.glob(".*")) if out.parent.exists() else True


def test_user_tables_run_through_prepare(make_cfg, tmp_path):
    src, tgt = wine_tables(tmp_path)
    cfg = table_cfg(make_cfg, src, tgt)
    prepare.run(cfg)
    meta = (prepare.layout(cfg, "mine").data / "target" / "meta.json").read_text()
    assert '"cultivar"' in meta and '"classification"' in meta and "file_sha256" in meta


def test_table_without_label_column(make_cfg, tmp_path):
    src, tgt = wine_tables(tmp_path, lambda d: d.__delitem__("cultivar"))
    assert_prepare_fails(table_cfg(make_cfg, src, tgt), str(tgt), "label column 'cultivar' not found", "alcohol")


def test_table_with_non_numeric_feature(make_cfg, tmp_path):
    def spoil(d):
        d["alcohol"] = d["alcohol"].astype(object)
        d.iloc[3, d.columns.get_loc("alcohol")] = "twelve"

    src, tgt = wine_tables(tmp_path, spoil)
    assert_prepare_fails(table_cfg(make_cfg, src, tgt), str(tgt), "feature column 'alcohol' is not numeric", "'twelve'")


def test_table_with_nan(make_cfg, tmp_path):
    src, tgt = wine_tables(tmp_path, lambda d: d.iloc.__setitem__((5, 2), np.nan))
    assert_prepare_fails(table_cfg(make_cfg, src, tgt), str(tgt), "'ash'", "NaN", "rows [5]")


def test_class_with_fewer_examples_than_budget(make_cfg, tmp_path):
    src, tgt = wine_tables(tmp_path)
    # 89 target rows; class 2 has 24 of them, about 11 in the train split: k=20 cannot be met.
    assert_prepare_fails(table_cfg(make_cfg, src, tgt, budgets="[1,20]"), "class", "k=20", str(tgt))


def broken_adapter(**kwargs):
    """An adapter with a bug: what it raises is ours to fix, not the user's input."""
    return len(kwargs) / 0


def _with_target(cfg, **node):
    from omegaconf import OmegaConf, open_dict

    with open_dict(cfg):
        cfg.experiments.mine.target = OmegaConf.create(node)
    return cfg


def test_bug_inside_an_adapter_keeps_its_type_and_traceback(make_cfg, tmp_path, monkeypatch):
    monkeypatch.setenv("PIPELINE_ALLOWED_TARGETS", __name__)  # a config may name this test module's functions
    src, tgt = wine_tables(tmp_path)
    cfg = _with_target(table_cfg(make_cfg, src, tgt), _target_=f"{__name__}.broken_adapter", path=str(tgt))
    with pytest.raises(ZeroDivisionError) as err:
        prepare.run(cfg)
    assert "broken_adapter" in "".join(__import__("traceback").format_exception(err.value))
    assert not prepare.layout(cfg, "mine").data.exists()


def test_misspelt_adapter_key_named(make_cfg, tmp_path):
    src, tgt = wine_tables(tmp_path)
    cfg = _with_target(table_cfg(make_cfg, src, tgt), _target_="pipeline.data.tables.table", path=str(tgt), target="cultivar", clases=["0", "1", "2"])
    assert_prepare_fails(cfg, "experiment mine target", "unknown key(s) ['clases']", "classes")


def test_unknown_adapter_target_named(make_cfg, tmp_path):
    src, tgt = wine_tables(tmp_path)
    cfg = _with_target(table_cfg(make_cfg, src, tgt), _target_="pipeline.data.sources.table", path=str(tgt), target="cultivar")
    assert_prepare_fails(cfg, "experiment mine target", "'pipeline.data.sources.table' cannot be found")


def test_transfer_target_with_two_tasks(make_cfg, tmp_path):
    src, tgt = wine_tables(tmp_path)
    cfg = _with_target(table_cfg(make_cfg, src, tgt), _target_="pipeline.data.tables.multi_table", path=str(tgt), targets=["cultivar", "alcohol"])
    assert_prepare_fails(cfg, "experiment mine target", "a transfer target has one task", "['cultivar', 'alcohol']", "multitask experiment")


def test_unknown_strategy_lists_valid_ones(tmp_path):
    res = run_cli("finetune", "strategy=nope", cwd=tmp_path, env={"PIPELINE_CONF_DIR": str(ROOT / "conf")})
    assert res.returncode == 2
    assert "unknown strategy ['nope']" in res.stderr and "param_transfer" in res.stderr
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "artifacts").exists()


def test_unknown_experiment_lists_valid_ones(tmp_path):
    res = run_cli("prepare", "exp=nope", cwd=tmp_path, env={"PIPELINE_CONF_DIR": str(ROOT / "conf")})
    assert res.returncode == 2
    assert "unknown experiment exp='nope'" in res.stderr and "mnist_to_digits" in res.stderr
    assert not (tmp_path / "artifacts").exists()


def test_missing_upstream_output(make_cfg):
    cfg = make_cfg()
    with pytest.raises(PipelineError, match=r"missing upstream output .*mnist_to_digits/data/target"):
        finetune.run(cfg)


def test_checkpoint_that_does_not_match_the_target_names_the_layers(pipeline_run):
    """Carrying the source head over to a target whose head has another shape must name the layer."""
    cfg = pipeline_run["cfg"].copy()
    cfg.strategy, cfg.budget, cfg.seed = "param_transfer", 1, 0
    cfg.transfer.strategies.param_transfer.transfer = ["backbone", "head", "backbone.blocks.7"]
    import os

    old = os.getcwd()
    os.chdir(pipeline_run["tmp"])
    try:
        with pytest.raises(PipelineError, match=r"layers \['backbone.blocks.7'\] do not exist in the target model"):
            finetune.run(cfg)
    finally:
        os.chdir(old)


def test_checkpoint_shape_mismatch_names_the_layers(pipeline_run, tmp_path):
    import torch

    from pipeline.models import architecture, build, save_checkpoint

    cfg = pipeline_run["cfg"].copy()
    art = tmp_path / "artifacts" / "mnist_to_digits"
    import shutil

    shutil.copytree(pipeline_run["tmp"] / "artifacts" / "mnist_to_digits", art)
    ckpt = torch.load(art / "sources" / "source" / "model.pt", weights_only=False)
    other = architecture({"_target_": "pipeline.models.MLP", "hidden": [32, 16]}, 64, 10)
    save_checkpoint(art / "sources" / "source" / "model.pt", build(other), other, {k: v for k, v in ckpt.items() if k not in ("arch", "state_dict")})
    # param_transfer builds from the checkpoint's own architecture, so it always fits; a target model
    # configured differently and asked to load those weights does not.
    from pipeline.models import load_matching

    target = build(architecture(cfg.model, 64, 10))
    with pytest.raises(PipelineError) as err:
        load_matching(target, torch.load(art / "sources" / "source" / "model.pt", weights_only=False)["state_dict"], ["backbone"], "param_transfer")
    assert "backbone.blocks.0.linear.weight: checkpoint (32, 64) vs target (256, 64)" in str(err.value)


def test_unknown_target_is_one_line_through_the_cli(tmp_path):
    """Hydra logs its own multi-line error when a `_target_` does not resolve; the user sees ours only."""
    proc = run_cli(
        "prepare",
        "experiments.mnist_to_digits.target._target_=pipeline.data.digits.nope",
        cwd=tmp_path,
        env={"PIPELINE_CONF_DIR": str(ROOT / "conf")},
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: experiment mnist_to_digits target: _target_ 'pipeline.data.digits.nope' cannot be found (ImportError)"
    ], proc.stderr
    assert proc.stdout.strip() == "", proc.stdout


# The catalogue: one row per way a user's table or experiment file goes wrong. Each row writes the
# target table (or sets the budgets), runs prepare, and expects one message naming the file or key and
# the fault, and no outputs at all.
def _rows(t):
    return t.to_csv(index=False).encode()


def _latin1(t):
    return t.rename(columns={"alcohol": "alcool_é"}).to_csv(index=False).encode("latin-1")


def _repeated(t):
    return _rows(t).decode().replace("malic_acid", "alcohol", 1).encode()


def _every_7th(value):
    return lambda t: _rows(t.assign(alcohol=t.alcohol.astype(object).where(t.index % 7 != 0, value)))


def _infinite(t):
    return _rows(t.assign(alcohol=t.alcohol.where(t.index != 3, np.inf)))


def _unlabelled(t):
    return _rows(t.assign(cultivar=t.cultivar.astype(float).where(t.index != 5, np.nan)))


TABLE_FAULTS = [
    ("empty file", lambda t: b"", "csv", "[1,3]", ["{target}", "cannot be read as csv: No columns to parse"]),
    ("header only", lambda t: (",".join(t.columns) + "\n").encode(), "csv", "[1,3]", ["{target}", "but no rows"]),
    ("truncated mid-row", lambda t: _rows(t)[:-37], "csv", "[1,3]", ["{target}", "missing (NaN) values"]),
    ("binary garbage", lambda t: bytes(range(256)) * 20, "csv", "[1,3]", ["{target}", "cannot be read as csv"]),
    ("latin-1 header", _latin1, "csv", "[1,3]", ["{target}", "'utf-8' codec can't decode"]),
    ("CSV named .parquet", _rows, "parquet", "[1,3]", ["{target}", "cannot be read as parquet"]),
    ("unsupported suffix", _rows, "xlsx", "[1,3]", ["{target}", "unsupported file type '.xlsx'"]),
    ("duplicate columns", _repeated, "csv", "[1,3]", ["{target}", "column names ['alcohol'] appear more than once"]),
    ("text in a feature", _every_7th("high"), "csv", "[1,3]", ["{target}", "feature column 'alcohol' is not numeric", "'high'"]),
    ("'n/a' in a feature", _every_7th("n/a"), "csv", "[1,3]", ["{target}", "column 'alcohol' has 13 missing (NaN) values"]),
    ("infinite feature", _infinite, "csv", "[1,3]", ["{target}", "column 'alcohol' has 1 infinite values"]),
    ("missing label", _unlabelled, "csv", "[1,3]", ["{target}", "column 'cultivar' has 1 missing (NaN) values"]),
    ("a single row", lambda t: _rows(t.iloc[:1]), "csv", "[1,3]", ["{target}", "no labelled example in the val split"]),
    ("negative budget", _rows, "csv", "[-1,3]", ["experiments.mine.budgets must be a list of whole numbers >= 1", "[-1, 3]"]),
    ("zero budget", _rows, "csv", "[0,3]", ["experiments.mine.budgets", "[0, 3]"]),
    ("fractional budget", _rows, "csv", "[1.5,3]", ["experiments.mine.budgets", "[1.5, 3]"]),
    ("budget as text", _rows, "csv", "[one]", ["experiments.mine.budgets", "['one']"]),
    ("budget above a class", _rows, "csv", "[1000]", ["{target}", "fewer than the label budget k=1000"]),
]


@pytest.mark.parametrize("fault,content,suffix,budgets,fragments", TABLE_FAULTS, ids=[f[0] for f in TABLE_FAULTS])
def test_catalogue_of_table_and_budget_faults(tmp_path, fault, content, suffix, budgets, fragments):
    import pandas as pd

    data, project = tmp_path / "data", tmp_path / "project"
    data.mkdir()
    project.mkdir()
    src, csv_target = wine_tables(data)
    target = data / f"target_file.{suffix}"
    target.write_bytes(content(pd.read_csv(csv_target)))
    args = [a.format(data=data) for a in MINE] + [f"experiments.mine.target.path={target}", f"experiments.mine.budgets={budgets}"]
    code, _, err = run_inprocess("prepare", *args, cwd=project)
    assert code == 2, err[-3000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err[-3000:]
    for fragment in fragments:
        assert fragment.format(target=target) in lines[0], lines[0]
    assert sorted(p.name for p in project.iterdir()) == [], "prepare left outputs"


# The catalogue of untrusted configs: a shared experiment file whose `_target_` would run code, or whose
# names would put outputs outside artifacts/ and reports/. Each row writes the file into a copy of conf/,
# runs `pipeline <stage>` on it, and expects exit status 2, one line naming the key and the value, no
# marker file (what the code would have made) and nothing changed under artifacts/, reports/ or around
# the project.
def _experiment(f, **changes):
    node = {
        "source": {"_target_": "pipeline.data.tables.table", "path": str(f["src"]), "target": "cultivar"},
        "target": {"_target_": "pipeline.data.tables.table", "path": str(f["tgt"]), "target": "cultivar"},
        "split": {"val": 0.25, "test": 0.3, "seed": 0},
        "budgets": [1],
    }
    return {**node, **changes}


EVIL = ["+experiment@experiments.evil=evil", "exp=evil"]  # the file as an experiment of its own
GLOBAL = ["+experiment=evil"]  # a file with `# @package _global_`: it may set any key
TOUCH = "touch {marker}"
ALLOWED = "a config may only instantiate from pipeline.data.*, pipeline.models.*"

UNTRUSTED_CONFIGS = [
    (
        "os.system",
        lambda f: (_experiment(f, source={"_target_": "os.system", "_args_": [TOUCH.format(**f)]}), EVIL),
        ["error: config key experiments.evil.source._target_: _target_ 'os.system' lies outside the modules", ALLOWED],
    ),
    (
        "subprocess.run nested in an adapter's argument",
        lambda f: (
            _experiment(f, target={**_experiment(f)["target"], "classes": {"_target_": "subprocess.run", "args": ["touch", f["marker"]]}}),
            EVIL,
        ),
        ["config key experiments.evil.target.classes._target_: _target_ 'subprocess.run' lies outside"],
    ),
    (
        "pandas.read_pickle of a pickle that runs code",
        lambda f: (_experiment(f, source={"_target_": "pandas.read_pickle", "filepath_or_buffer": f["pickle"]}), EVIL),
        ["config key experiments.evil.source._target_: _target_ 'pandas.read_pickle' lies outside"],
    ),
    (
        "an allowed prefix reaching numpy.load through an import",
        lambda f: (_experiment(f, source={"_target_": "pipeline.data.tables.np.load", "file": f["pickle"], "allow_pickle": True}), EVIL),
        ["experiment evil source: config key _target_: _target_ 'pipeline.data.tables.np.load' resolves to an object of numpy"],
    ),
    (
        "'..' in a target",
        lambda f: (_experiment(f, source={"_target_": "pipeline.data..tables.table"}), EVIL),
        ["config key experiments.evil.source._target_: _target_ 'pipeline.data..tables.table' is not a dotted path of Python names"],
    ),
    (
        "builtins.eval as a partial, outside the experiment",
        lambda f: ({"optimizer": {"_target_": "builtins.eval", "_partial_": True, "source": f"open('{f['marker']}', 'w')"}}, GLOBAL),
        ["error: config key optimizer._target_: _target_ 'builtins.eval' lies outside"],
    ),
    (
        "experiment named ../../x",
        lambda f: ({"experiments": {"../../x": _experiment(f)}}, [*GLOBAL, "exp=../../x"]),
        ["error: config key experiments: the name '../../x' cannot name a file or folder of the outputs"],
    ),
    (
        "strategy named ../x",
        lambda f: ({"transfer": {"strategies": {"../x": {"_target_": "pipeline.transfer.scratch.Scratch"}}}}, GLOBAL),
        ["error: config key transfer.strategies: the name '../x' cannot name a file or folder of the outputs"],
    ),
    (
        "task (label column) named ../../x",
        lambda f: (_experiment(f, source={**_experiment(f)["source"], "path": f["slashed"], "target": "../../x"}), EVIL),
        ["error: experiment evil source ({slashed}): task name '../../x' (a label column or group value) cannot name a file or folder"],
    ),
]


def _tree(root) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else None for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("fault,make,fragments", UNTRUSTED_CONFIGS, ids=[c[0] for c in UNTRUSTED_CONFIGS])
def test_catalogue_of_untrusted_configs(tmp_path, fault, make, fragments):
    import shutil
    import subprocess
    import sys

    import yaml

    project, data = tmp_path / "project", tmp_path / "data"
    data.mkdir()
    src, tgt = wine_tables(data)
    slashed = data / "slashed.csv"
    slashed.write_text(src.read_text().replace("cultivar", "../../x", 1))
    marker, pickle = tmp_path / "MARKER", data / "evil.pkl"
    maker = (
        "import os, pickle, sys\nclass E:\n    def __reduce__(self): return (os.system, (sys.argv[2],))\npickle.dump(E(), open(sys.argv[1], 'wb'))"
    )
    subprocess.run([sys.executable, "-c", maker, str(pickle), f"touch {marker}"], check=True)
    shutil.copytree(ROOT / "conf", project / "conf")
    for out in ("artifacts", "reports"):
        (project / out / "earlier").mkdir(parents=True)
        (project / out / "earlier" / "result.json").write_text("{}")
    files = {k: str(v) for k, v in {"src": src, "tgt": tgt, "marker": marker, "pickle": pickle, "slashed": slashed}.items()}
    node, args = make(files)
    header = "# @package _global_\n" if args is GLOBAL or args[0] == GLOBAL[0] else ""
    (project / "conf" / "experiment" / "evil.yaml").write_text(header + yaml.safe_dump(node))
    before, around = _tree(project), sorted(p.name for p in tmp_path.iterdir())

    res = run_cli("prepare", *args, cwd=project, env={"PIPELINE_CONF_DIR": str(project / "conf")})
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    for fragment in fragments:
        assert fragment.format(**files) in lines[0], lines[0]
    assert not marker.exists(), "the config ran code"
    assert _tree(project) == before, "artifacts/ or reports/ changed"
    assert sorted(p.name for p in tmp_path.iterdir()) == around, "something was written next to the project"


# The catalogue across stages and adapters: each row runs `pipeline <stage> <overrides>` in this process
# (the CLI's own entry point: Hydra, the checks, the stage) in a project whose artifacts/ holds the
# chain's prepared data, source model and extract outputs, and whose reports/ holds an earlier report.
# Each expects exit status 2, one line on stderr naming the file, column, key or value at fault, and
# artifacts/ and reports/ byte for byte as they were. `{data}` is a folder outside the project with the
# wine tables; `{project}` the project.
def run_inprocess(stage: str, *args: str, cwd: Path, conf: Path = ROOT / "conf") -> tuple[int, str, str]:
    """`pipeline <stage> <args>` in this process: (exit status, stdout, stderr). Hydra's logging setup is
    left off (it would replace pytest's handlers); everything else is the CLI's path."""
    import contextlib
    import io
    import os
    import sys

    import pipeline.stages as stages
    from pipeline import cli

    saved = sys.argv, os.getcwd(), stages.CONF_DIR, os.environ.get("MLFLOW_TRACKING_URI")
    out, err = io.StringIO(), io.StringIO()
    stages.CONF_DIR, sys.argv = str(conf), ["pipeline"]
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                cli.main([stage, *TINY, *args, "hydra/job_logging=none", "hydra/hydra_logging=none"])
                code = 0
            except SystemExit as exc:
                code = exc.code
    finally:
        sys.argv, _, stages.CONF_DIR, uri = saved
        os.chdir(saved[1])
        if uri is not None:
            os.environ["MLFLOW_TRACKING_URI"] = uri
    return code, out.getvalue(), err.getvalue()


MINE = [
    "+experiment@experiments.mine=my_tables",
    "exp=mine",
    "experiments.mine.source.path={data}/source.csv",
    "experiments.mine.target.path={data}/target.csv",
    "experiments.mine.source.target=cultivar",
    "experiments.mine.target.target=cultivar",
    "experiments.mine.source.classes=null",
    "experiments.mine.target.classes=null",
    "experiments.mine.budgets=[1,3]",
]


def _edit_target(edit):
    """Setup: the target table rewritten by `edit(DataFrame) -> bytes` (written as {data}/target.csv)."""

    def setup(project, data):
        import pandas as pd

        (data / "target.csv").write_bytes(edit(pd.read_csv(data / "target.csv")))

    return setup


def _store(kind):
    """Setup: {project}/store/mlflow.db as `kind` (a real MLflow store, spoilt in one way)."""

    def setup(project, data):
        import shutil
        import sqlite3

        folder = project / "store"
        folder.mkdir()
        db = folder / "mlflow.db"
        if kind == "garbage":
            db.write_bytes(b"SQLite format 2\0" + bytes(range(256)) * 8)
            return
        if kind == "other app":
            with sqlite3.connect(db) as con:
                con.execute("create table invoices (id integer)")
            return
        shutil.copy(_mlflow_db(), db)
        if kind in ("old schema", "new schema"):
            with sqlite3.connect(db) as con:
                rev = con.execute("select version_num from alembic_version").fetchone()[0]
                older = _older_revision(rev)
                con.execute("update alembic_version set version_num = ?", (older if kind == "old schema" else "f0f0f0f0f0f0",))
        if kind in ("read-only file", "read-only folder"):
            _read_only(db if kind == "read-only file" else folder)

    return setup


@functools.lru_cache(maxsize=1)
def _mlflow_db() -> Path:
    """An empty MLflow SQLite store of the installed MLflow, made once."""
    import tempfile

    from mlflow.tracking import MlflowClient

    db = Path(tempfile.mkdtemp(prefix="template-store-")) / "mlflow.db"
    MlflowClient(f"sqlite:///{db}").search_experiments()
    return db


def _older_revision(rev: str) -> str:
    import importlib.util

    from alembic.script import ScriptDirectory

    script = ScriptDirectory(str(Path(importlib.util.find_spec("mlflow").origin).parent / "store" / "db_migrations"))
    return script.get_revision(rev).down_revision


READ_ONLY: list[Path] = []  # made immutable (as root): undone after each case


def _read_only(path: Path) -> None:
    """Read-only for this process: chmod; as root, which permissions do not stop, also chattr +i."""
    import os
    import subprocess

    path.chmod(0o555 if path.is_dir() else 0o444)
    if os.geteuid() == 0:
        if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode:
            pytest.skip("as root, a read-only store needs chattr +i")
        READ_ONLY.append(path)


def _other_architecture(project, data):
    """Setup: {data}/other.pt, a checkpoint of an MLP taking 10 inputs (the target's rows have 64)."""
    from pipeline.models import architecture, build, save_checkpoint

    arch = architecture({"_target_": "pipeline.models.MLP", "hidden": [8]}, 10, 3)
    save_checkpoint(data / "other.pt", build(arch), arch, {})


def _escaping_link(project, data):
    """Setup: artifacts/elsewhere, a symbolic link to a folder outside the project."""
    (project / "artifacts" / "elsewhere").symlink_to(data)


STORE = "tracking.uri=sqlite:///{project}/store/mlflow.db"
STORE_URI = "tracking store sqlite:///{project}/store/mlflow.db"

# (case, stage, overrides, setup or None, fragments of the error line)
STAGE_FAULTS = [
    # prepare, the table adapter
    ("missing file", "prepare", [*MINE, "experiments.mine.target.path={data}/nope.csv"], None, ["{data}/nope.csv: file not found"]),
    ("a folder as the file", "prepare", [*MINE, "experiments.mine.target.path={data}"], None, ["{data}", "unsupported file type"]),
    (
        "semicolon-separated",
        "prepare",
        MINE,
        _edit_target(lambda t: t.to_csv(index=False, sep=";").encode()),
        ["{data}/target.csv: label column 'cultivar' not found", "alcohol;malic_acid"],
    ),
    (
        "label outside the declared classes",
        "prepare",
        [*MINE, "experiments.mine.target.classes=[0,1]"],
        None,
        ["{data}/target.csv: label column 'cultivar' has values ['2'] outside the declared classes ['0', '1']"],
    ),
    (
        "feature missing from the target",
        "prepare",
        MINE,
        _edit_target(lambda t: t.drop(columns="proline").to_csv(index=False).encode()),
        ["{data}/target.csv", "proline"],
    ),
    # keys and values of the config
    ("misspelt key", "finetune", ["transfer.paitence=3"], None, ["unknown config key transfer.paitence (did you mean transfer.patience?)"]),
    ("wrong type for a key", "finetune", ["transfer.lr=fast"], None, ["config key transfer.lr: Value 'fast'"]),
    (
        "wrong type for a strategy's key",
        "finetune",
        ["transfer.strategies.l2sp.alpha=big"],
        None,
        ["transfer strategy l2sp: key alpha='big' must be a number"],
    ),
    ("wrong type for a model's key", "pretrain", ["model.hidden=wide"], None, ["model backbone: key hidden='wide' must be a list of whole numbers"]),
    ("a layer of width 0", "pretrain", ["model.hidden=[0]"], None, ["model backbone: hidden sizes must be whole numbers >= 1, got [0]"]),
    ("batch size 0", "finetune", ["transfer.batch_size=0"], None, ["config key transfer.batch_size must be >= 1, got 0"]),
    ("negative epochs", "multitask", ["exp=exam_schools", "multitask.max_epochs=-1"], None, ["config key multitask.max_epochs must be >= 1, got -1"]),
    ("no seeds", "finetune", ["transfer.seeds=[]"], None, ["config key transfer.seeds is empty"]),
    ("unknown baseline", "finetune", ["transfer.baseline=nope"], None, ["transfer.baseline='nope' is not one of transfer.strategies"]),
    (
        "misspelt experiment key",
        "prepare",
        ["+experiments.mnist_to_digits.budget=[1]"],
        None,
        ["experiments.mnist_to_digits.budget: did you mean budgets?"],
    ),
    ("experiment without a split", "prepare", ["~experiments.mnist_to_digits.split"], None, ["lacks `split:` (experiments.mnist_to_digits.split)"]),
    (
        "split fractions summing past 1",
        "prepare",
        [*MINE, "experiments.mine.split.val=0.8", "experiments.mine.split.test=0.3"],
        None,
        ["split: val=0.8 and test=0.3 must be positive and sum to less than 1"],
    ),
    ("seed not in transfer.seeds", "finetune", ["seed=9"], None, ["unknown seed [9]; valid: [0, 1]"]),
    ("budget not in the experiment", "finetune", ["budget=7"], None, ["unknown label budget [7]; valid: [1, 3]"]),
    # candidate sources and source models
    (
        "candidate source that does not exist",
        "pretrain",
        ["candidate=nope"],
        None,
        ["unknown candidate source of experiment mnist_to_digits ['nope']"],
    ),
    (
        "misspelt candidate key",
        "pretrain",
        ["+sources.mine.exp=mnist_to_digits", "+sources.mine.dat={{}}", "candidate=mine"],
        None,
        ["sources.mine.dat"],
    ),
    (
        "score that does not exist",
        "extract",
        ["knowledge.scores.logme._target_=pipeline.knowledge.logme.Nope"],
        None,
        ["knowledge.scores.logme", "Nope"],
    ),
    (
        "source model file missing",
        "pretrain",
        ["experiments.mnist_to_digits.source_model={data}/nope.pt"],
        None,
        ["source_model {data}/nope.pt: no such file"],
    ),
    (
        "checkpoint from another architecture",
        "pretrain",
        ["experiments.mnist_to_digits.source_model={data}/other.pt"],
        _other_architecture,
        ["source_model {data}/other.pt: the model takes inputs of size 10, the target's rows have 64 features"],
    ),
    # multitask and report
    ("unknown scheme", "multitask", ["exp=exam_schools", "scheme=nope"], None, ["unknown scheme ['nope']", "single_task"]),
    (
        "malformed multitask baseline",
        "multitask",
        ["exp=exam_schools", "multitask.baseline=nope"],
        None,
        ["multitask.baseline must be <scheme>+<weighting>"],
    ),
    ("report before finetune", "report", [], None, ["missing upstream output artifacts/mnist_to_digits/finetune"]),
    # the tracking store
    (
        "store folder that does not exist",
        "pretrain",
        ["tracking.uri=sqlite:///{project}/nowhere/mlflow.db"],
        None,
        ["the folder {project}/nowhere does not exist"],
    ),
    ("store that is not SQLite", "pretrain", [STORE], _store("garbage"), [STORE_URI, "is not a SQLite database"]),
    ("store of another application", "pretrain", [STORE], _store("other app"), [STORE_URI, "not an MLflow store (tables ['invoices'])"]),
    ("store at an older schema", "pretrain", [STORE], _store("old schema"), [STORE_URI, "older than MLflow", "mlflow db upgrade"]),
    ("store of a newer MLflow", "pretrain", [STORE], _store("new schema"), [STORE_URI, "f0f0f0f0f0f0, which MLflow", "does not know"]),
    ("read-only store", "pretrain", [STORE], _store("read-only file"), [STORE_URI, "mlflow.db is read-only"]),
    ("store in a read-only folder", "pretrain", [STORE], _store("read-only folder"), [STORE_URI, "the folder {project}/store is read-only"]),
    # where outputs go
    (
        "artifacts at /etc",
        "prepare",
        ["paths.artifacts=/etc"],
        None,
        ["config key paths.artifacts: '/etc' lies outside the project's output folders"],
    ),
    (
        "reports two folders up",
        "report",
        ["paths.reports=../.."],
        None,
        ["config key paths.reports: '../..' lies outside", "PIPELINE_ALLOWED_OUTPUTS"],
    ),
    ("artifacts in the sources", "pretrain", ["paths.artifacts=src"], None, ["config key paths.artifacts: 'src' lies outside"]),
    (
        "artifacts through a link out",
        "prepare",
        ["paths.artifacts=artifacts/elsewhere"],
        _escaping_link,
        ["paths.artifacts: 'artifacts/elsewhere' lies outside"],
    ),
]


def _outputs(project: Path) -> dict:
    return {k: v for k, v in _tree(project).items() if k.split("/")[0] in ("artifacts", "reports")}


@pytest.mark.parametrize("fault,stage,args,setup,fragments", STAGE_FAULTS, ids=[c[0] for c in STAGE_FAULTS])
def test_catalogue_of_stage_faults(pipeline_run, tmp_path, fault, stage, args, setup, fragments):
    import shutil
    import subprocess

    project, data = tmp_path / "project", tmp_path / "data"
    data.mkdir()
    wine_tables(data)
    for part in ("data", "sources", "knowledge"):
        shutil.copytree(pipeline_run["tmp"] / "artifacts" / "mnist_to_digits" / part, project / "artifacts" / "mnist_to_digits" / part)
    (project / "reports").mkdir()
    (project / "reports" / "earlier.md").write_text("an earlier report\n")
    shutil.copy(_mlflow_db(), project / "mlflow.db")  # tracking.uri's default: a new store would cost seconds of migrations
    if setup:
        setup(project, data)
    names = {"data": data, "project": project}
    before = _outputs(project)
    try:
        code, _, err = run_inprocess(stage, *(a.format(**names) for a in args), cwd=project)
    finally:
        while READ_ONLY:
            subprocess.run(["chattr", "-i", str(READ_ONLY.pop())], check=True)
    assert code == 2, err[-3000:]
    lines = [line for line in err.strip().splitlines() if " INFO mlflow." not in line]  # MLflow logs to stderr itself
    assert len(lines) == 1 and lines[0].startswith("error: "), err[-3000:]
    for fragment in fragments:
        assert fragment.format(**names) in lines[0], lines[0]
    assert _outputs(project) == before, "artifacts/ or reports/ changed"
