"""Both command lines end quietly when the reader of their output goes away (`... | head`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("command", [["-m", "registry", "list"], ["launch", "submit", "--suite", "demo", "--dry-run"]])
def test_a_closed_pipe_is_not_a_traceback(mlflow_store, tmp_path, command):
    argv = [sys.executable, *command]
    process = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(os.environ))
    process.stdout.close()  # the reader is gone before the command writes anything
    err = process.stderr.read().decode()
    rc = process.wait(timeout=120)
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
    assert rc == 141, (rc, err)  # as a command killed by SIGPIPE
