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
