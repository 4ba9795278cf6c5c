import subprocess
import sys


def test_help_lists_stages():
    out = subprocess.run([sys.executable, "-m", "pipeline.cli", "--help"], capture_output=True, text=True, check=True).stdout
    for stage in ("prepare", "pretrain", "extract", "finetune", "report"):
        assert stage in out


def test_unknown_stage_fails_with_valid_list():
    res = subprocess.run([sys.executable, "-m", "pipeline.cli", "train"], capture_output=True, text=True)
    assert res.returncode == 2
    assert "unknown stage 'train'" in res.stderr and "finetune" in res.stderr


def _pipeline(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], capture_output=True, text=True, cwd=cwd)


def test_misspelt_override_key_is_one_line_with_the_key_it_meant():
    res = _pipeline("finetune", "transfer.lrr=0.1")
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [res.stderr.strip()]  # one line, no Hydra advice to add it with +
    assert "unknown config key transfer.lrr (did you mean transfer.lr?)" in res.stderr


def test_hydra_flags_are_taken_anywhere_among_the_overrides():
    res = _pipeline("finetune", "exp=mnist_new_classes", "--cfg", "job", "transfer.lr=0.25")
    assert res.returncode == 0, res.stderr
    assert "lr: 0.25" in res.stdout and "exp: mnist_new_classes" in res.stdout


def test_split_args_keeps_flag_values_with_their_flags():
    from pipeline.stages import split_args

    assert split_args(["a=1", "--cfg", "job", "b=2", "-m", "--info", "config", "c=3"]) == (
        ["a=1", "b=2", "c=3"],
        ["--cfg", "job", "-m", "--info", "config"],
    )
    assert split_args(["--info", "x=1"]) == (["x=1"], ["--info"])  # --info without a topic
