"""Each rank's own GPU readings, named per rank; nothing made up on a CPU."""

from __future__ import annotations

import torch

from latentbridge.device_metrics import per_rank_metrics, read_own_device


def test_readings_are_named_per_rank_in_rank_order():
    readings = [{"memory_peak_gb": 3.5, "power_watts": 410.0}, {"memory_peak_gb": 4.25}]
    assert per_rank_metrics(readings) == {
        "system/rank0/memory_peak_gb": 3.5, "system/rank0/power_watts": 410.0, "system/rank1/memory_peak_gb": 4.25,
    }
    assert per_rank_metrics([{}, {}]) == {}


def test_a_cpu_rank_reports_nothing_rather_than_zeros():
    assert read_own_device(torch.device("cpu")) == {}


def test_the_trainer_logs_each_ranks_device_at_every_evaluation(tiny_config, tmp_path, monkeypatch):
    from latentbridge import train as train_module
    from latentbridge.reporting import MemoryReporter

    fake = {"memory_peak_gb": 1.5, "utilization_percent": 87.0}
    monkeypatch.setattr(train_module, "read_own_device", lambda device: fake)
    reporter = MemoryReporter()
    train_module.train(tiny_config.override("train.steps=3", "train.eval_every=3"), tmp_path / "run", reporter)
    assert reporter.metrics["system/rank0/memory_peak_gb"] == [(0, 1.5), (3, 1.5)]  # step 0 and the last evaluation
    assert reporter.metrics["system/rank0/utilization_percent"][-1] == (3, 87.0)
