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


def test_unknown_names_suggest_the_one_meant():
    """Stage, experiment and selector names each get one line with the closest valid name, exit 2."""
    cases = [
        (["finetun"], "unknown stage 'finetun' (did you mean finetune?)"),
        (["finetune", "exp=mnist_to_digit"], "unknown experiment exp='mnist_to_digit' (did you mean mnist_to_digits?)"),
        (["finetune", "strategy=param_trasfer"], "unknown strategy ['param_trasfer'] (did you mean param_transfer?)"),
        (["multitask", "exp=star", "weighting=mgda_u"], "unknown weighting ['mgda_u'] (did you mean mgda_ub?)"),
    ]
    for args, message in cases:
        res = _pipeline(*args)
        assert res.returncode == 2, (args, res.stderr)
        assert res.stderr.strip().splitlines() == [f"error: {message}" + res.stderr.strip().split(message, 1)[1]], args


def test_hydra_composition_errors_are_user_errors_and_mode_flags_one_line():
    """A config group option that does not exist is Hydra's message with exit 2 (a user error, not a
    crash); two of Hydra's mode flags together are one line, not its ValueError traceback."""
    res = _pipeline("finetune", "model=nope")
    assert res.returncode == 2 and "Could not find 'model/nope'" in res.stderr
    res = _pipeline("finetune", "exp=mnist_to_digits", "--cfg", "job", "-m")
    assert res.returncode == 2
    assert res.stderr.strip() == (
        "error: Hydra takes one of --run, --multirun, --cfg, --info at a time, got --cfg, --multirun "
        "(to see a sweep's config, run --cfg job on one of its runs)"
    )


def test_a_bug_inside_a_stage_keeps_its_traceback_and_exit_1():
    """Only Hydra's own composition failures become exit 2: an exception raised while a stage runs is
    a crash and keeps exit 1 and its traceback."""
    code = "from pipeline.stages import launch\ndef run(cfg):\n    return 1 / 0\nlaunch(run, ['exp=mnist_to_digits'])"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 1, res.stderr
    assert "ZeroDivisionError" in res.stderr
