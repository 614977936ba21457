"""A bad launch config or --wait-timeout fails with a UserConfigError naming file and key (issue 13);
a command-line value that would do something surprising (`--only ,`, `--wait-timeout 0`,
`--poll -1`, `--tail -1`, `list -n -1`) is refused naming the value; an answer of Slurm's that
is no failure ("Job 277_0 not found") is not taken for one, and a failure never has an empty message."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import run_cli

from launch import cli, slurm_queue
from launch.user_config import UserConfigError, load_user_config, resolve


@pytest.fixture(autouse=True)
def no_user_config(tmp_path, monkeypatch):
    empty = tmp_path / "empty_launch.toml"
    empty.write_text("")
    monkeypatch.setenv("LATENTBRIDGE_LAUNCH_CONFIG", str(empty))


def _config(tmp_path: Path, content: bytes | str) -> Path:
    path = tmp_path / "launch.toml"
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def test_non_utf8_file_names_the_file(tmp_path: Path) -> None:
    path = _config(tmp_path, '[submit]\naccount = "caf\u00e9"\n'.encode("latin-1"))
    with pytest.raises(UserConfigError, match=rf"{path}.*not UTF-8"):
        load_user_config(str(path))


@pytest.mark.parametrize("value", ["3", '"gpu"', "[1, 2]"])
def test_submit_that_is_not_a_table_names_file_and_key(tmp_path: Path, value: str) -> None:
    path = _config(tmp_path, f"submit = {value}\n")
    with pytest.raises(UserConfigError, match=rf"{path}: submit = .* should be a table"):
        load_user_config(str(path))


@pytest.mark.parametrize("value", ["-5", "0", "nan", "inf", "-inf"])
def test_wait_timeout_in_file_must_be_positive_and_finite(tmp_path: Path, value: str) -> None:
    path = _config(tmp_path, f"[submit]\nwait_timeout = {value}\n")
    with pytest.raises(UserConfigError, match=rf"{path}: submit.wait_timeout = .* > 0"):
        load_user_config(str(path))


@pytest.mark.parametrize("value", ["[1, 2]", "{ a = 1 }"])
def test_slurm_arg_that_is_a_list_or_table_names_file_and_option(tmp_path: Path, value: str) -> None:
    path = _config(tmp_path, f'[submit.slurm_args]\nmail-type = "END"\nx = {value}\n')
    with pytest.raises(UserConfigError, match=rf"{path}: submit.slurm_args.x = "):
        load_user_config(str(path))


def test_good_values_still_load(tmp_path: Path) -> None:
    path = _config(tmp_path, '[submit]\nwait_timeout = 90\n[submit.slurm_args]\nmail-type = "END"\nexclusive = true\nnice = 5\n')
    settings, _ = load_user_config(str(path))
    assert settings["wait_timeout"] == 90.0
    assert settings["slurm_args"] == {"mail-type": "END", "exclusive": True, "nice": 5}
    assert resolve({"wait_timeout": 30.0}, settings)["wait_timeout"] == 30.0


@pytest.mark.parametrize("value", [-5.0, 0.0, float("nan"), float("inf")])
def test_command_line_wait_timeout_must_be_positive_and_finite(value: float) -> None:
    with pytest.raises(UserConfigError, match="--wait-timeout"):
        resolve({"wait_timeout": value}, {})


def test_command_line_wait_timeout_minus_five_is_refused_by_the_launcher(tmp_path: Path, capsys) -> None:
    """`python -m launch submit ... --wait-timeout -5` ends in an error, not a run that never waits."""
    from launch import cli

    code = cli.main(["submit", "--suite", "demo", "--cluster", "local", "--dry-run", "--wait", "--wait-timeout", "-5", "--runs-dir", str(tmp_path)])
    assert code != 0
    assert "--wait-timeout" in capsys.readouterr().err


def test_command_line_wait_timeout_zero_is_refused_not_the_default(tmp_path: Path, capsys) -> None:
    """`--wait-timeout 0` reaches the > 0 check; it used to become the default 3600 s silently."""
    code = cli.main(["submit", "--suite", "demo", "--cluster", "local", "--dry-run", "--wait-timeout", "0",
                     "--runs-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == cli.EXIT_USAGE and "--wait-timeout" in err and "0.0 must be a number of seconds > 0" in err, err


@pytest.mark.parametrize("only", [",", "", " , ", ",,"])
def test_an_only_that_names_no_run_is_refused_listing_the_runs(tmp_path: Path, only: str) -> None:
    """`--only ,` selected no run: an empty submission became LATEST and crashed (IndexError)."""
    runs_dir, records = tmp_path / "runs", tmp_path / "records"
    rc, out = run_cli(["submit", "--suite", "positive-control", "--only", only, "--cluster", "local",
                       "--records", str(records), "--runs-dir", str(runs_dir)])
    assert rc == cli.EXIT_USAGE, out
    assert "names no run" in out and "leave --only out" in out and "'smollm2-self'" in out, out
    assert not runs_dir.exists() and not records.exists()  # nothing made


@pytest.mark.parametrize("override, wanted", [
    ("eval.num_questions=300", "eval.num_questions=300 asks for more questions than the validation split holds (200)"),
    ("eval.test_questions=900", "eval.test_questions=900 asks for more questions than the test split holds (500)"),
])
def test_more_questions_than_the_split_holds_are_refused_before_anything_is_made(tmp_path: Path, override, wanted) -> None:
    """The trainer used to evaluate what the split held and log the larger number as its param."""
    runs_dir, records = tmp_path / "runs", tmp_path / "records"
    rc, out = run_cli(["submit", "--suite", "positive-control", "--only", "smollm2-self", "--cluster", "local",
                       "--records", str(records), "--runs-dir", str(runs_dir), override])
    assert rc == cli.EXIT_USAGE, out
    assert f"positive-control/smollm2-self: {wanted}" in out and "or fewer" in out, out
    assert not runs_dir.exists() and not records.exists()  # nothing made


@pytest.mark.parametrize("argv, value, wanted", [
    (["wait", "--poll", "-1"], "'-1'", "a number > 0"),
    (["wait", "--poll", "0"], "'0'", "a number > 0"),
    (["wait", "--poll", "nan"], "'nan'", "a number > 0"),
    (["logs", "--tail", "-1"], "'-1'", "a whole number >= 0"),
    (["logs", "--task", "-2"], "'-2'", "a whole number >= 0"),
    (["list", "-n", "-1"], "'-1'", "a whole number >= 0"),
    (["list", "-n", "two"], "'two'", "a whole number >= 0"),
])
def test_a_count_or_pause_out_of_range_is_refused_naming_the_value(tmp_path: Path, capsys, argv, value, wanted) -> None:
    with pytest.raises(SystemExit) as stopped:
        cli.main([*argv, "--runs-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and f"argument {argv[1]}: {value} is not {wanted}" in err, err


def test_the_pause_between_looks_must_be_positive_for_library_callers_too() -> None:
    from launch.monitor import wait

    with pytest.raises(ValueError, match="poll_s = -1.0: the pause between looks must be > 0 seconds"):
        wait(None, 10.0, poll_s=-1.0)  # refused before the monitor is asked anything


def _answer(monkeypatch, returncode: int, stdout: str = "", stderr: str = "") -> None:
    """Every Slurm command answers so (no Slurm needed)."""
    answer = lambda cmd, timeout=None: subprocess.CompletedProcess(cmd, returncode, stdout, stderr)  # noqa: E731
    monkeypatch.setattr(slurm_queue, "_run", answer)


def test_an_array_element_slurm_no_longer_knows_is_forgotten_not_a_failure(monkeypatch) -> None:
    """After `launch cancel --run` of a pending element of a queued array, scontrol says "Job
    277_0 not found" on stdout (exit 1): the job is gone, as for "Invalid job id specified"."""
    _answer(monkeypatch, 1, stdout="Job 277_0 not found\n")
    assert slurm_queue.scontrol_job("277_0") is None
    _answer(monkeypatch, 1, stderr="slurm_load_jobs error: Invalid job id specified\n")
    assert slurm_queue.scontrol_job("277") is None and slurm_queue.squeue(["277_1"]) == {}


@pytest.mark.parametrize("call", [lambda: slurm_queue.scontrol_job("277_0"), lambda: slurm_queue.squeue(["277_0"]),
                                  lambda: slurm_queue.requeue("277_0"), lambda: slurm_queue.scancel(["277_0"])])
def test_a_failed_slurm_command_says_its_exit_code_and_what_it_printed(monkeypatch, call) -> None:
    _answer(monkeypatch, 1)  # it printed nothing
    with pytest.raises(slurm_queue.SlurmCommandError, match=r"failed with exit code 1: \(it printed nothing\); check"):
        call()
    _answer(monkeypatch, 1, stdout="Unable to contact slurm controller (connect failure)\n")
    with pytest.raises(slurm_queue.SlurmCommandError, match=r"exit code 1: Unable to contact slurm controller"):
        call()
