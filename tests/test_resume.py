"""A run stopped mid-way resumes from its checkpoint to the same weights as an unbroken run."""

import os
import signal

import pytest
import torch

from latentbridge.checkpoint import load_translator
from latentbridge.reporting import MemoryReporter
from latentbridge.train import Trainer


def _final_weights(run_dir):
    translator, _ = load_translator(run_dir / "translator")
    return translator.state_dict()


def test_sigterm_checkpoints_and_resume_is_exact(tiny_config, tmp_path, monkeypatch):
    config = tiny_config.override("translator.dropout=0.1", "train.steps=6", "train.eval_every=2", "train.checkpoint_every=100")
    unbroken = Trainer(config, tmp_path / "unbroken").run()
    assert unbroken.status == "FINISHED"

    original = Trainer.train_step

    def step_then_signal(self):
        out = original(self)
        if self.step == 2:  # the signal arrives during step 3 (0-based step counter 2)
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    monkeypatch.setattr(Trainer, "train_step", step_then_signal)
    first = MemoryReporter()
    stopped = Trainer(config, tmp_path / "broken", first).run()
    assert stopped.status == "INTERRUPTED" and stopped.step == 3
    assert (tmp_path / "broken" / "checkpoint" / "state.pt").is_file()
    assert not (tmp_path / "broken" / "translator").exists()  # not finished: nothing final saved
    monkeypatch.setattr(Trainer, "train_step", original)

    second = MemoryReporter()
    resumed = Trainer(config, tmp_path / "broken", second).run()
    assert resumed.status == "FINISHED" and resumed.step == 6
    assert [s for s, _ in second.metrics["loss"]] == [4, 5, 6]  # continues, no step repeated
    assert second.params == {}  # params were logged by the first attempt
    a, b = _final_weights(tmp_path / "unbroken"), _final_weights(tmp_path / "broken")
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # losses logged across the two attempts equal the unbroken run's
    assert [v for _, v in first.metrics["loss"]] + [v for _, v in second.metrics["loss"]] == [
        v for _, v in _losses(config, tmp_path / "again")
    ]


def _losses(config, run_dir):
    reporter = MemoryReporter()
    Trainer(config, run_dir, reporter).run()
    return reporter.metrics["loss"]


def test_resume_refuses_a_checkpoint_from_another_config(tiny_config, tmp_path):
    Trainer(tiny_config, tmp_path / "run").run()
    changed = tiny_config.override("optim.lr=0.5")
    with pytest.raises(ValueError, match="different config"):
        Trainer(changed, tmp_path / "run").run()


def test_nan_loss_stops_the_run_with_a_clear_status(tiny_config, tmp_path, monkeypatch):
    import latentbridge.train as train_module

    real = train_module.compute_losses

    def poisoned(*args, **kwargs):
        terms = real(*args, **kwargs)
        terms["total"] = terms["total"] * float("nan")
        return terms

    monkeypatch.setattr(train_module, "compute_losses", poisoned)
    reporter = MemoryReporter()
    result = Trainer(tiny_config, tmp_path / "run", reporter).run()
    assert result.status == "NAN_LOSS" and result.step == 0
    assert "loss is nan" in reporter.tags["stop_reason"]
