import json

import torch

from latentbridge.checkpoint import load_translator
from latentbridge.reporting import MemoryReporter
from latentbridge.train import Trainer, train


def test_tiny_run_trains_evaluates_and_saves(tiny_config, tmp_path):
    reporter = MemoryReporter()
    result = train(tiny_config, tmp_path / "run", reporter)
    assert result.status == "FINISHED" and result.step == 6
    # evaluations at step 0, every 3 steps and at the end, each with its JSONL
    assert [s for s, _ in reporter.metrics["bridged_accuracy"]] == [0, 3, 6]
    evals = sorted((tmp_path / "run" / "evals").glob("*.jsonl"))
    assert [p.name for p in evals] == ["eval_step_000000.jsonl", "eval_step_000003.jsonl", "eval_step_000006.jsonl"]
    records = [json.loads(line) for line in evals[-1].read_text().splitlines()]
    assert [r["index"] for r in records] == list(range(6))
    for r in records:
        for system in ("source", "target", "bridged"):
            assert set(r[system]) == {"output", "answer", "correct"}
    # baselines are computed once and reused: identical outputs at every evaluation
    first = [json.loads(line) for line in evals[0].read_text().splitlines()]
    assert [r["target"]["output"] for r in first] == [r["target"]["output"] for r in records]
    assert len(reporter.metrics["loss"]) == 6
    assert reporter.params["translator.num_tokens"] == 4
    # where the time went, with each evaluation: the steps since the last one (none before step 0),
    # the baselines once, each evaluation's answers and content metrics
    assert [(s, v > 0) for s, v in reporter.metrics["time/train_s"]] == [(0, False), (3, True), (6, True)]
    assert [s for s, _ in reporter.metrics["time/baselines_s"]] == [0]
    for phase in ("bridged", "mismatched", "content"):
        assert [s for s, v in reporter.metrics[f"time/{phase}_s"] if v > 0] == [0, 3, 6], phase
    # the saved translator reloads to the same weights
    translator, meta = load_translator(tmp_path / "run" / "translator")
    assert meta.config == tiny_config
    assert meta.target_dim == 48 and meta.source_dim == 32


def test_only_the_translator_trains(tiny_config, tmp_path):
    trainer = Trainer(tiny_config, tmp_path / "run")
    before = {k: v.clone() for k, v in trainer.bridge.target.model.state_dict().items()}
    params_before = [p.detach().clone() for p in trainer.translator.parameters()]
    for _ in range(3):
        trainer.train_step()
    after = trainer.bridge.target.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert any(not torch.equal(a, b) for a, b in zip(params_before, trainer.translator.parameters()))
    groups = trainer.optimizer.param_groups
    assert groups[2]["lr"] == groups[0]["lr"] * tiny_config.optim.gate_lr_multiplier
    assert all(p.dtype == torch.float32 for p in trainer.translator.parameters())


def test_best_translator_is_tested_on_held_out_questions(tiny_config, tmp_path):
    from latentbridge.reporting import FileReporter

    config = tiny_config.override("eval.test_questions=5")
    folder = tmp_path / "record"
    result = train(config, tmp_path / "run", FileReporter(folder))
    records = [json.loads(line) for line in (tmp_path / "run" / "test" / "test_eval.jsonl").read_text().splitlines()]
    test_questions = [r["question"] for r in records]
    assert len(records) == 5
    # the test questions are never the validation questions used for model selection
    validation = [json.loads(line)["question"] for line in (tmp_path / "run" / "evals" / "eval_step_000000.jsonl").read_text().splitlines()]
    assert not set(test_questions) & set(validation)
    # the file record holds params, every metric point and the artifacts
    params = json.loads((folder / "params.json").read_text())
    assert params["eval.test_questions"] == 5
    points = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    test_points = [p for p in points if p["key"] == "test_bridged_accuracy"]
    assert len(test_points) == 1 and test_points[0]["step"] == result.step
    assert test_points[0]["value"] == sum(r["bridged"]["correct"] for r in records) / 5
    # the test's own phase times, no training time among them
    test_times = {p["key"] for p in points if p["key"].startswith("test_time/")}
    assert test_times == {f"test_time/{phase}_s" for phase in ("baselines", "bridged", "mismatched", "content")}
    assert (folder / "artifacts" / "test" / "test_eval.jsonl").is_file()
    assert (folder / "artifacts" / "translator" / "translator.safetensors").is_file()


def test_a_run_asking_more_questions_than_its_split_holds_is_refused_before_training(tiny_config, tmp_path):
    import pytest

    from latentbridge.config import ConfigError

    reporter = MemoryReporter()
    with pytest.raises(ConfigError, match=r"eval.num_questions=12 asks for more questions than the validation split holds \(10\)"):
        Trainer(tiny_config.override("eval.num_questions=12"), tmp_path / "run", reporter).run()
    assert reporter.params == {} and not reporter.metrics  # nothing logged under the claimed number
    with pytest.raises(ConfigError, match=r"eval.test_questions=11 .* test split holds \(10\)"):
        Trainer(tiny_config.override("eval.test_questions=11"), tmp_path / "run2").run()


def test_selecting_on_the_test_split_and_then_testing_on_it_is_refused(tiny_config):
    import pytest

    from latentbridge.config import ConfigError

    with pytest.raises(ConfigError, match="eval.split=test picks the best translator on test questions.*eval.split=validation"):
        tiny_config.override("eval.split=test", "eval.test_questions=5")
    assert tiny_config.override("eval.split=test").eval.split == "test"  # without a test after it: allowed
