"""Submission settings from a user config file (TOML), under the command line.

Looked up at `--config FILE`, else `$LATENTBRIDGE_LAUNCH_CONFIG`, else
`~/.config/latentbridge/launch.toml` (a missing default file is fine). Precedence:
command line > config file > built-in defaults. Example:

    [submit]
    cluster = "slurm"
    partition = "gpu"
    account = "my-project"
    qos = "normal"
    time = "24:00:00"          # Slurm time: minutes, HH:MM:SS or D-HH:MM:SS
    mem = "64G"
    constraint = "a100"
    gpus_per_node = 4
    array_parallelism = 8      # at most this many runs of a suite at once
    max_timeouts = 3           # requeues after hitting the time limit
    wait_timeout = 7200        # seconds that --wait waits at most
    runs_dir = "/scratch/me/latentbridge-runs"
    tracking_uri = "http://mlflow-host:5000"
    artifact_root = "s3://lab-bucket/latentbridge"   # optional: see below

    [submit.slurm_args]        # any other sbatch option: --mail-type=END ...
    mail-type = "END"
    mail-user = "me@example.org"

`tracking_uri` and `artifact_root` reach the store through the environment: `submit` (and the
other commands) export them as `MLFLOW_TRACKING_URI` and `LATENTBRIDGE_ARTIFACT_ROOT` where those
are not set already (the environment wins), and `submit` hands both to every job. `artifact_root`
is where NEW experiments keep their artifacts, instead of the store's default (a tracking
server's own artifact store, else `mlartifacts/` at the repo root): a URI every node can write
(`s3://...`, `gs://...`, `file:///shared/...`) or an absolute path (made a `file://` URI).
"""

from __future__ import annotations

import math
import os
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

CONFIG_ENV = "LATENTBRIDGE_LAUNCH_CONFIG"
DEFAULT_PATH = Path("~/.config/latentbridge/launch.toml")

# setting -> (type, default). None = not set (left to Slurm / derived).
SETTINGS: dict[str, tuple[type, Any]] = {
    "cluster": (str, "auto"),
    "nodes": (int, 1),
    "gpus_per_node": (int, 4),
    "partition": (str, None),
    "account": (str, None),
    "qos": (str, None),
    "time": (str, "60"),
    "mem": (str, None),
    "constraint": (str, None),
    "cpus_per_task": (int, None),
    "array_parallelism": (int, 64),
    "max_timeouts": (int, 3),
    "wait_timeout": (float, 3600.0),
    "runs_dir": (str, None),
    "tracking_uri": (str, None),
    "artifact_root": (str, None),
    "slurm_args": (dict, None),
}

# settings handed to the store as environment variables (see the module doc); the environment wins
ENVIRONMENT = {"tracking_uri": "MLFLOW_TRACKING_URI", "artifact_root": "LATENTBRIDGE_ARTIFACT_ROOT"}


class UserConfigError(ValueError):
    """The launch config file is unreadable or holds an unknown or mistyped setting."""


def _check_wait_timeout(value: Any, where: str) -> None:
    """`wait_timeout` is a number of seconds: finite and > 0 (a negative one never waits)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise UserConfigError(f"{where} = {value!r} must be a number of seconds > 0")


def _check_slurm_args(value: dict[str, Any], where: str) -> None:
    """Each extra sbatch option is a string, a number or true (a bare flag): never a list or table."""
    for option, setting in value.items():
        if not isinstance(setting, (str, int, float)):
            raise UserConfigError(
                f"{where}.{option} = {setting!r} should be a string, a number or true"
                f" (it becomes #SBATCH --{option}=VALUE)"
            )


def _check_artifact_root(value: str, where: str) -> str:
    """`artifact_root` as the URI the store gets: a URI with a scheme kept as it is, an absolute
    path (`~` expanded) made a `file://` URI; empty or relative values are refused (jobs run
    from another folder, on other hosts)."""
    if not value.strip():
        raise UserConfigError(f"{where} = {value!r} is empty: leave the setting out for the store's default "
                              "(a tracking server's own artifact store)")
    scheme = urlparse(value).scheme
    if len(scheme) > 1:  # not a Windows drive letter
        if scheme == "file" and not urlparse(value).path.startswith("/"):
            raise UserConfigError(f"{where} = {value!r} is not an absolute file URI: write file:///absolute/path")
        return value
    path = Path(value).expanduser()
    if not path.is_absolute():
        raise UserConfigError(
            f"{where} = {value!r} is a relative path, which each job would read from its own folder: "
            "give a URI every node can write (s3://bucket/prefix, file:///shared/mlartifacts) or an absolute path"
        )
    return path.as_uri()


def export_environment(settings: dict[str, Any]) -> None:
    """Hand `tracking_uri` and `artifact_root` to the store (and the jobs) as their environment
    variables, where the environment does not set them already."""
    for key, name in ENVIRONMENT.items():
        if settings.get(key) and not os.environ.get(name):
            os.environ[name] = settings[key]


def config_path(explicit: str | None = None) -> tuple[Path, bool]:
    """(path, whether it was asked for explicitly)."""
    if explicit:
        return Path(explicit).expanduser(), True
    if os.environ.get(CONFIG_ENV):
        return Path(os.environ[CONFIG_ENV]).expanduser(), True
    return DEFAULT_PATH.expanduser(), False


def load_user_config(explicit: str | None = None) -> tuple[dict[str, Any], Path | None]:
    """The [submit] settings of the user config file, validated; ({}, None) if there is none."""
    path, asked = config_path(explicit)
    if not path.is_file():
        if asked:
            raise UserConfigError(f"launch config file {path} does not exist")
        return {}, None
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise UserConfigError(
            f"cannot read launch config {path}: not UTF-8 text (byte {error.object[error.start]:#04x}"
            f" at offset {error.start}); save it as UTF-8"
        ) from None
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise UserConfigError(f"cannot read launch config {path}: {error}") from None
    unknown_tables = sorted(set(data) - {"submit"})
    if unknown_tables:
        raise UserConfigError(f"{path}: unknown table(s) {unknown_tables}; settings go under [submit]")
    section = data.get("submit", {})
    if not isinstance(section, dict):
        raise UserConfigError(
            f"{path}: submit = {section!r} should be a table: write [submit] and the settings under it"
        )
    settings: dict[str, Any] = {}
    for key, value in section.items():
        if key not in SETTINGS:
            raise UserConfigError(f"{path}: unknown setting submit.{key}; known: {sorted(SETTINGS)}")
        kind = SETTINGS[key][0]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if kind is str and isinstance(value, int) and not isinstance(value, bool):
            value = str(value)  # time = 90
        if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
            raise UserConfigError(f"{path}: submit.{key} = {value!r} should be a {kind.__name__}")
        if key == "wait_timeout":
            _check_wait_timeout(value, f"{path}: submit.{key}")
        if key == "slurm_args":
            _check_slurm_args(value, f"{path}: submit.{key}")
        if key == "artifact_root":
            value = _check_artifact_root(value, f"{path}: submit.{key}")
        settings[key] = value
    return settings, path


def resolve(cli: dict[str, Any], file_settings: dict[str, Any]) -> dict[str, Any]:
    """Defaults, then the file, then every command-line value that was given (not None).

    `slurm_args` merge key by key (command line wins).
    """
    out = {key: default for key, (_, default) in SETTINGS.items()}
    out.update(file_settings)
    for key, value in cli.items():
        if key == "slurm_args":
            continue
        if value is not None:
            if key == "wait_timeout":
                _check_wait_timeout(value, "command-line --wait-timeout (wait --timeout)")
            out[key] = value
    out["slurm_args"] = {**(file_settings.get("slurm_args") or {}), **(cli.get("slurm_args") or {})}
    return out
