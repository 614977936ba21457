"""Shared fixtures: a tiny heterogeneous model pair, a tiny run config, a private MLflow store."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from tiny_models import make_tiny_lm  # noqa: E402

from latentbridge.config import RunConfig  # noqa: E402


@pytest.fixture(scope="session")
def tiny_pair(tmp_path_factory) -> tuple[str, str]:
    """A char-level 32-wide source and a BPE 48-wide target: different tokenizers and widths."""
    root = tmp_path_factory.mktemp("tiny_models")
    source = make_tiny_lm(root / "source", arch="llama", tokenizer="char", hidden=32, layers=2, seed=0)
    target = make_tiny_lm(root / "target", arch="llama", tokenizer="bpe", hidden=48, layers=2, seed=1)
    return str(source), str(target)


TINY_RUN = (
    "translator.num_tokens=4",
    "translator.width=32",
    "translator.depth=1",
    "translator.heads=4",
    "translator.dropout=0.0",
    "train.steps=6",
    "train.eval_every=3",
    "train.checkpoint_every=3",
    "train.batch_size=2",
    "data.val_size=10",
    "data.synthetic_train_size=60",
    "data.synthetic_test_size=10",
    "data.num_shots=2",
    "eval.num_questions=6",
    "eval.batch_size=4",
    "eval.max_new_tokens=8",
    "optim.warmup_steps=2",
)


@pytest.fixture
def tiny_config(tiny_pair) -> RunConfig:
    source, target = tiny_pair
    return RunConfig().override(f"source_model={source}", f"target_model={target}", *TINY_RUN)


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch) -> str:
    """A private SQLite MLflow store for one test."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("LATENTBRIDGE_ARTIFACT_ROOT", (tmp_path / "artifacts").as_uri())
    return uri


@contextlib.contextmanager
def private_store(root: Path):
    """MLFLOW_TRACKING_URI and the artifact root pointed at `root` while the block runs."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        patch.setenv("LATENTBRIDGE_ARTIFACT_ROOT", (root / "artifacts").as_uri())
        patch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        yield patch


def train_tiny_run(
    root: Path, tiny_pair: tuple[str, str], suite: str, tags: dict[str, str] | None = None, overrides: tuple[str, ...] = ()
) -> tuple[str, RunConfig]:
    """A FINISHED tiny training run named 'tiny' of `suite` in the current store: (run id, config)."""
    from latentbridge.train import train
    from registry.reporter import MlflowReporter
    from registry.runs import close_run, open_run

    source, target = tiny_pair
    config = RunConfig().override(f"source_model={source}", f"target_model={target}", *TINY_RUN, "name=tiny", f"suite={suite}", *overrides)
    run_id = open_run(root / "run", "tiny", suite, tags={"suite": suite, **(tags or {})})
    train(config, root / "run", MlflowReporter(run_id))
    close_run(run_id, "FINISHED")
    return run_id, config


@pytest.fixture
def no_user_config(tmp_path, monkeypatch):
    """An empty launch config and no NUM_GPUS: the launcher's built-in defaults."""
    (tmp_path / "launch.toml").write_text("")
    monkeypatch.setenv("LATENTBRIDGE_LAUNCH_CONFIG", str(tmp_path / "launch.toml"))
    monkeypatch.delenv("NUM_GPUS", raising=False)


def run_cli(argv: list[str]) -> tuple[int, str]:
    """`python launch ARGV` in this process: (exit code, stdout and stderr together)."""
    import io

    from launch import cli

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
        rc = cli.main(argv)
    return rc, buffer.getvalue()
