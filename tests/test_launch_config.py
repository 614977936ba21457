"""The launcher's settings: user config file, resources, GPU detection, dry-run (no cluster needed)."""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

import pytest

from launch import cli
from launch.cluster import (
    ResourceError,
    detect_local_gpus,
    parse_slurm_args,
    parse_slurm_time,
    resources_for,
)
from launch.suites import SUITES, Suite, config_diff
from launch.user_config import UserConfigError, load_user_config, resolve


@pytest.fixture(autouse=True)
def no_user_config(tmp_path, monkeypatch):
    empty = tmp_path / "empty_launch.toml"
    empty.write_text("")
    monkeypatch.setenv("LATENTBRIDGE_LAUNCH_CONFIG", str(empty))


def test_user_config_sits_between_defaults_and_command_line(tmp_path):
    path = tmp_path / "launch.toml"
    path.write_text(
        '[submit]\npartition = "gpu"\naccount = "proj"\ntime = 90\ngpus_per_node = 8\n'
        '[submit.slurm_args]\nmail-type = "END"\nexclusive = true\n'
    )
    file_settings, found = load_user_config(str(path))
    assert found == path
    settings = resolve({"partition": "urgent", "time": None, "slurm_args": {"mail-type": "FAIL"}}, file_settings)
    assert settings["partition"] == "urgent"  # command line wins
    assert settings["account"] == "proj" and settings["time"] == "90" and settings["gpus_per_node"] == 8  # file
    assert settings["max_timeouts"] == 3 and settings["cluster"] == "auto"  # defaults
    assert settings["slurm_args"] == {"mail-type": "FAIL", "exclusive": True}


def test_user_config_errors_name_the_file_and_key(tmp_path):
    path = tmp_path / "launch.toml"
    path.write_text('[submit]\npartitoin = "gpu"\n')
    with pytest.raises(UserConfigError, match="partitoin"):
        load_user_config(str(path))
    path.write_text("[submit]\nnodes = \"two\"\n")
    with pytest.raises(UserConfigError, match="nodes"):
        load_user_config(str(path))
    with pytest.raises(UserConfigError, match="does not exist"):
        load_user_config(str(tmp_path / "missing.toml"))


@pytest.mark.parametrize(
    "text,minutes",
    [("90", 90), ("1:30", 2), ("02:00:00", 120), ("1-00", 1440), ("1-02:30", 1590), ("0-00:00:30", 1)],
)
def test_slurm_time_formats(text, minutes):
    assert parse_slurm_time(text) == minutes


def test_bad_time_and_slurm_args():
    with pytest.raises(ResourceError):
        parse_slurm_time("soon")
    assert parse_slurm_args(["mail-type=END", "--exclusive", "gres_flags=enforce-binding"]) == {
        "mail-type": "END",
        "exclusive": True,
        "gres-flags": "enforce-binding",
    }


def _fake_nvidia_smi(folder: Path, gpus: int) -> None:
    script = folder / "nvidia-smi"
    lines = "".join(f'echo "GPU {i}: Fake (UUID: GPU-{i})"\n' for i in range(gpus))
    script.write_text("#!/bin/sh\n" + lines)
    script.chmod(script.stat().st_mode | stat.S_IEXEC)


def test_local_gpu_detection_order(tmp_path, monkeypatch):
    import torch

    monkeypatch.delenv("NUM_GPUS", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "nobin"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert detect_local_gpus()[0] == 1  # nothing found: one task on the CPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert detect_local_gpus() == (2, "torch")
    (tmp_path / "bin").mkdir()
    _fake_nvidia_smi(tmp_path / "bin", 3)
    monkeypatch.setenv("PATH", str(tmp_path / "bin") + os.pathsep + "/usr/bin:/bin")
    assert detect_local_gpus() == (3, "nvidia-smi")
    monkeypatch.setenv("NUM_GPUS", "5")
    assert detect_local_gpus() == (5, "NUM_GPUS")


def test_one_task_per_gpu_on_slurm():
    settings = resolve({"partition": "gpu", "slurm_args": {}}, {})
    res = resources_for(settings, suite_tasks=None, cluster="slurm")
    assert (res.tasks_per_node, res.gpus_per_node, res.nodes) == (4, 4, 1)
    assert resources_for(settings, suite_tasks=1, cluster="slurm").gpus_per_node == 1  # a suite fixing tasks
    two_nodes = resources_for(resolve({"nodes": 2, "gpus_per_node": 2, "slurm_args": {}}, {}), None, "slurm")
    assert two_nodes.num_tasks == 4
    with pytest.raises(ResourceError, match="needs Slurm"):
        resources_for(resolve({"nodes": 2, "slurm_args": {}}, {}), None, "local")


@pytest.fixture
def three_run_suite(monkeypatch):
    source, target = "tiny-source", "tiny-target"  # never loaded: dry runs only
    suite = Suite(
        name="unit_three",
        description="three tiny runs",
        base={"source_model": source, "target_model": target, "train.steps": 2},
        runs={"a": {"seed": 1}, "b": {"seed": 2}, "c": {"seed": 3}},
        tasks=None,
    )
    monkeypatch.setitem(SUITES, suite.name, suite)
    return suite


def test_dry_run_prints_the_sbatch_array_and_submits_nothing(three_run_suite, tmp_path, capsys):
    runs_dir = tmp_path / "runs"
    rc = cli.main(
        ["submit", "--suite", "unit_three", "--cluster", "slurm", "--runs-dir", str(runs_dir), "--dry-run",
         "--partition", "gpu", "--account", "proj", "--qos", "high", "--time", "02:00:00", "--mem", "64G",
         "--constraint", "a100", "--slurm-arg", "mail-type=END", "--array-parallelism", "2", "--gpus-per-node", "4"]
    )
    out = capsys.readouterr().out
    assert rc == 0
    for line in ("--partition=gpu", "--account=proj", "--qos=high", "--time=120", "--mem=64G",
                 "--constraint=a100", "--mail-type=END", "--array=0-2%2", "--gpus-per-node=4",
                 "--ntasks-per-node=4", "--signal=USR2@90", "--kill-on-bad-exit=1"):
        assert line in out, line
    assert "# waits for the results: no" in out  # an array on Slurm returns at once
    assert not runs_dir.exists()


def test_only_runs_the_members_named_in_the_order_named(three_run_suite, capsys):
    # the order decides which runs start first when there are fewer device slots than runs
    assert cli.main(["submit", "--suite", "unit_three", "--cluster", "local", "--dry-run", "--only", "c,a", "--only", "c"]) == 0
    named = re.findall(r"^# unit_three/(\w+):", capsys.readouterr().out, flags=re.M)
    assert named == ["c", "a"]


def test_bad_settings_fail_with_a_message(three_run_suite, tmp_path, capsys):
    rc = cli.main(["submit", "--suite", "unit_three", "--dry-run", "--time", "later"])
    assert rc == 2 and "--time 'later'" in capsys.readouterr().err
    rc = cli.main(["submit", "--suite", "nope", "--dry-run"])
    assert rc == 2 and "unknown suite" in capsys.readouterr().err
    rc = cli.main(["status", "--runs-dir", str(tmp_path / "none")])
    assert rc == 2 and "no submission yet" in capsys.readouterr().err


# --------------------------------------------------------------------------- what a run records of its submit
def test_config_diff_is_the_members_changes_and_the_overrides_against_the_base(three_run_suite):
    base = three_run_suite.base_config()
    configs = three_run_suite.configs({"train.steps": "2", "optim.lr": "0.001"})
    # train.steps=2 is the base's value: no difference; name and suite name the run
    assert config_diff(configs["b"], base) == {"seed": 2, "optim.lr": 0.001}


@pytest.mark.parametrize("name", sorted(SUITES))
def test_every_suite_base_is_a_config_of_its_own(name):
    suite = SUITES[name]
    base = suite.base_config()
    for member, config in suite.configs().items():
        assert config_diff(config, base).keys() <= set(config.flat()), member


@pytest.mark.parametrize(
    "argv,narrowed",
    [
        (["submit", "--suite", "s"], ["submit", "--only", "a", "--suite", "s"]),
        (["submit", "--suite", "s", "--only", "a,b", "x=1"], ["submit", "--only", "a", "--suite", "s", "x=1"]),
        (["submit", "--only=b", "--suite", "s", "--onl", "a", "--o", "c"], ["submit", "--only", "a", "--suite", "s"]),
        (["submit", "--suite", "s", "--", "--only=x"], ["submit", "--only", "a", "--suite", "s", "--", "--only=x"]),
    ],
)
def test_the_reproduce_command_runs_the_member_alone(argv, narrowed):
    assert cli.narrowed_to(argv, "a") == narrowed
    assert cli.build_parser().parse_args(narrowed).only == ["a"]


def test_provenance_tags_are_shell_quoted(three_run_suite):
    argv = ["submit", "--suite", "unit_three", "--only", "a,b", "data.note=two words"]
    tags = cli.provenance_tags(argv, "a", alone=False, diff={"seed": 1})
    assert tags["command"] == "python launch submit --suite unit_three --only a,b 'data.note=two words'"
    assert tags["reproduce_command"] == "python launch submit --only a --suite unit_three 'data.note=two words'"
    assert json.loads(tags["config_diff"]) == {"seed": 1}
    assert cli.provenance_tags(argv, "a", alone=True, diff={})["reproduce_command"] == tags["command"]


def test_dry_run_shows_each_members_changes_and_warns_of_big_models_on_a_cpu(monkeypatch):
    from conftest import run_cli

    monkeypatch.setenv("PATH", "/nonexistent")  # no nvidia-smi: this machine's GPUs are counted as none
    monkeypatch.delenv("NUM_GPUS", raising=False)
    rc, out = run_cli(["submit", "--suite", "ablations", "--cluster", "local", "--dry-run"])
    assert rc == 0, out
    assert "# ablations/2b: changes against the suite's base: translator.depth=6, translator.num_tokens=48" in out
    assert "# ablations/1a: changes against the suite's base: nothing (the base)" in out
    assert "# warning: no GPU here" in out and "meta-llama/Llama-3.1-8B-Instruct" in out
    rc, out = run_cli(["submit", "--suite", "demo", "--cluster", "local", "--dry-run"])
    assert rc == 0 and "warning" not in out, out  # the embedded pair is meant for a laptop


def test_grid_runs_are_submitted_recorded_and_reproduced_by_name(capsys):
    """`submit --grid`: the runs of every combination in the dry run, each one's changes against
    the suite's base including its labels' settings (recorded at submit as config_diff), and its
    reproduce command keeps the grids and narrows to it with --only."""
    argv = ["submit", "--suite", "ablations", "--grid", "direction", "--grid", "task", "--cluster", "local", "--dry-run",
            "--only", "g2s-gsm8k-2a,s2g-synthetic-1b"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert re.findall(r"^# ablations/([\w-]+):", out, flags=re.M) == ["g2s-gsm8k-2a", "s2g-synthetic-1b"]
    line = next(x for x in out.splitlines() if x.startswith("# ablations/g2s-gsm8k-2a:"))
    assert "source_model=gemma3-270m" in line and "translator.num_tokens=32" in line and "data.source" not in line  # gsm8k is the base's
    tags = cli.provenance_tags(argv[:-2], "g2s-gsm8k-2a", alone=False, diff={})
    assert tags["reproduce_command"].startswith("python launch submit --only g2s-gsm8k-2a --suite ablations --grid direction --grid task")
    assert cli.main(["submit", "--suite", "ablations", "--grid", "directions", "--dry-run"]) == 2
    assert "unknown grid 'directions'; known grids: ['direction', 'task']" in capsys.readouterr().err
