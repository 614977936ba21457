"""A bad launch config or --wait-timeout fails with a UserConfigError naming file and key (issue 13)."""

from __future__ import annotations

from pathlib import Path

import pytest

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
