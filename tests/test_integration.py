"""The whole loop on the real embedded pair (the demo's Gemma-3-270M -> SmolLM2-135M), a few steps."""

import json

import pytest

from latentbridge.models import ModelPackageMissingError, load_frozen_lm

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def embedded_pair():
    from launch.suites import EMBEDDED_PAIR

    try:
        return load_frozen_lm(EMBEDDED_PAIR["source_model"]), load_frozen_lm(EMBEDDED_PAIR["target_model"])
    except ModelPackageMissingError as error:
        pytest.skip(f"embedded model package not installed: {error}")


def test_embedded_pair_trains_logs_and_is_preserved(embedded_pair, tmp_path, mlflow_store):
    from launch.suites import get_suite
    from registry.preserve import preserve
    from registry.reporter import MlflowReporter
    from registry.runs import close_run, open_run
    from registry.store import client
    from latentbridge.train import train

    config = get_suite("demo").configs(
        {"train.steps": "3", "train.eval_every": "3", "eval.num_questions": "4", "eval.batch_size": "4", "eval.max_new_tokens": "24"}
    )["main"]
    run_dir = tmp_path / "run"
    run_id = open_run(run_dir, "integration", "demo")
    result = train(config, run_dir, MlflowReporter(run_id), models=embedded_pair)
    close_run(run_id, "FINISHED")
    assert result.status == "FINISHED"

    run = client().get_run(run_id)
    assert run.data.params["source_model"] == "gemma3-270m" and run.data.params["translator.num_tokens"] == "16"
    history = client().get_metric_history(run_id, "bridged_accuracy")
    assert sorted(m.step for m in history) == [0, 3]
    assert len(client().get_metric_history(run_id, "loss")) == 3
    records = [json.loads(line) for line in (run_dir / "evals" / "eval_step_000003.jsonl").read_text().splitlines()]
    assert len(records) == 4
    # the target reads real text: its full-prompt answers are non-empty strings
    assert all(r["target"]["output"].strip() for r in records)
    artifacts = {a.path for a in client().list_artifacts(run_id)}
    assert {"evals", "translator"} <= artifacts

    # the five content metrics of issue 12, and the note that says what crossed
    for name in ("content/bits_transmitted", "content/bits_transmitted_low", "content/bits_transmitted_high",
                 "content/fraction_recovered", "content/retrieval_top1", "mismatched_accuracy"):
        assert name in run.data.metrics, name

    preserved = preserve(run_id)
    assert preserved.created and preserved.model == "gemma3-270m__to__smollm2-135m__cross_attention"
    version = client().get_model_version(preserved.model, preserved.version)
    assert "## What crosses the bridge" in version.description and "bits transmitted:" in version.description
    again = preserve(run_id)
    assert not again.created and again.version == preserved.version
