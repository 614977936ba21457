"""An eval JSONL logged through the MLflow reporter also shows in the UI as a table and a figure."""

from __future__ import annotations

import json

from registry import store
from registry.reporter import CURVES_FIGURE, MlflowReporter
from registry.runs import open_run


def _record(index: int, bridged_right: bool) -> dict:
    answer = lambda text, right: {"output": f" ... #### {text}", "answer": text, "correct": right}  # noqa: E731
    return {
        "step": 10, "index": index, "question": f"question {index}?", "gold_solution": "#### 4", "gold": "4",
        "source": answer("4", True), "target": answer("5", False), "bridged": answer("4" if bridged_right else "9", bridged_right),
        "mismatched": {**answer("7", False), "soft_from": 1 - index, "matches_soft_source": False},
        "content": {"nll_bits_text": 3.0, "nll_bits_own": 5.0 + index, "nll_bits_mismatched": 9.0, "nll_bits_no_question": 12.0,
                    "bits_transmitted": 4.0 - index, "mismatched_with": 1 - index, "own_ranked_first": True, "negatives": 1},
    }


def test_eval_jsonl_becomes_a_table_and_the_run_gets_its_curves(mlflow_store, tmp_path):
    run_id = open_run(tmp_path / "run", "r", "views")
    reporter = MlflowReporter(run_id)
    for step, bridged in ((0, 0.0), (10, 0.5)):
        reporter.log_metrics({"source_accuracy": 1.0, "target_accuracy": 0.0, "bridged_accuracy": bridged,
                              "content/bits_transmitted": 3.5 * step / 10}, step)
    path = tmp_path / "eval_step_000010.jsonl"
    path.write_text("".join(json.dumps(_record(i, i == 0)) + "\n" for i in range(2)))
    reporter.log_artifact(path, "evals")

    client = store.client()
    names = {a.path for a in client.list_artifacts(run_id)} | {a.path for a in client.list_artifacts(run_id, "evals")}
    assert {"evals/eval_step_000010.jsonl", "evals/eval_step_000010.table.json", CURVES_FIGURE} <= names, names
    table_file = client.download_artifacts(run_id, "evals/eval_step_000010.table.json", str(tmp_path))
    with open(table_file) as handle:
        table = json.load(handle)
    rows = [dict(zip(table["columns"], row)) for row in table["data"]]
    assert [r["question"] for r in rows] == ["question 0?", "question 1?"]
    assert [r["bridged_correct"] for r in rows] == [True, False] and [r["bridged_answer"] for r in rows] == ["4", "9"]
    assert [r["nll_bits_own"] for r in rows] == [5.0, 6.0] and rows[1]["mismatched_answer"] == "7"


def test_a_damaged_eval_file_is_still_logged_without_views(mlflow_store, tmp_path):
    run_id = open_run(tmp_path / "run", "r", "views")
    path = tmp_path / "eval_step_000000.jsonl"
    path.write_text("{not json\n")
    MlflowReporter(run_id).log_artifact(path, "evals")  # no exception: the JSONL is the record
    names = {a.path for a in store.client().list_artifacts(run_id, "evals")}
    assert names == {"evals/eval_step_000000.jsonl"}
