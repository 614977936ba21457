"""The train loop's `Reporter`, writing to one MLflow run.

A requeued job resumes from its last checkpoint, which can be older than the last step it
logged before it was killed: it then trains and logs those steps again. To keep the run's
history exact (every step once), the reporter reads, once at start, which (metric, step)
points the run already holds and skips them; everything new is logged. So re-running
already-logged steps is harmless, and the run ends with no step twice and none missing.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Mapping

from mlflow.entities import Metric, Param, RunTag

from latentbridge.metric_names import ACCURACY, BITS, FRACTION, RETRIEVAL, SYSTEMS, EvalRecord
from registry.artifacts import upload
from registry.store import client, with_retries

log = logging.getLogger(__name__)

MAX_PARAM_LENGTH = 6000
BATCH = 1000  # MLflow's log_batch limit on metrics per call
EVAL_FOLDERS = ("evals", "test")  # eval JSONLs logged here also become MLflow tables
CURVES_FIGURE = "accuracy_and_content_by_step.png"
NLL_FIELDS = ("nll_bits_text", "nll_bits_own", "nll_bits_mismatched", "nll_bits_no_question", "bits_transmitted")


def eval_table(records: list[EvalRecord]) -> dict[str, list]:
    """An eval JSONL as columns for the MLflow UI's table view: the question, the gold answer,
    each system's answer and whether it is right, and the content NLLs (bits) when measured."""
    systems = [s for s in SYSTEMS if records and s in records[0]]
    table: dict[str, list] = {"step": [], "index": [], "question": [], "gold": []}
    for system in systems:
        table[f"{system}_answer"], table[f"{system}_correct"] = [], []
    content = bool(records) and isinstance(records[0].get("content"), dict)
    for name in NLL_FIELDS if content else ():
        table[name] = []
    for record in records:
        for key in ("step", "index", "question", "gold"):
            table[key].append(record[key])
        for system in systems:
            table[f"{system}_answer"].append(record[system]["answer"])
            table[f"{system}_correct"].append(bool(record[system]["correct"]))
        for name in NLL_FIELDS if content else ():
            table[name].append(record["content"].get(name))
    return table


class MlflowReporter:
    """Logs params, metrics, tags and artifacts to `run_id`, retrying transient store errors.

    Metric points whose (key, step) the run already has are skipped (see the module doc).
    """

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.client = client()
        self.logged: dict[str, set[int]] = self._logged_steps()
        self.skipped = 0  # points not logged because the run had them already

    def _logged_steps(self) -> dict[str, set[int]]:
        """{metric key: steps already logged} for this run (empty for a new run)."""
        run = with_retries(lambda: self.client.get_run(self.run_id), "read run")
        logged: dict[str, set[int]] = {}
        for key in run.data.metrics:
            history = with_retries(lambda k=key: self.client.get_metric_history(self.run_id, k), "read metric history")
            logged[key] = {point.step for point in history}
        if logged:
            last = max(max(steps) for steps in logged.values())
            log.info("run %s already has %d metrics up to step %d; those points will not be logged again",
                     self.run_id, len(logged), last)
        return logged

    def log_params(self, params: Mapping[str, Any]) -> None:
        items = [Param(k, str(v)[:MAX_PARAM_LENGTH]) for k, v in params.items()]
        for start in range(0, len(items), 100):
            batch = items[start : start + 100]
            with_retries(lambda: self.client.log_batch(self.run_id, params=batch), "log params")

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        fresh = {k: float(v) for k, v in metrics.items() if step not in self.logged.get(k, ())}
        self.skipped += len(metrics) - len(fresh)
        if not fresh:
            return
        batch = [Metric(k, v, now, step) for k, v in fresh.items()]
        for start in range(0, len(batch), BATCH):
            part = batch[start : start + BATCH]
            with_retries(lambda: self.client.log_batch(self.run_id, metrics=part), "log metrics")
        for key in fresh:
            self.logged.setdefault(key, set()).add(step)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        batch = [RunTag(k, str(v)) for k, v in tags.items()]
        with_retries(lambda: self.client.log_batch(self.run_id, tags=batch), "set tags")

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        """A file or a folder (a translator checkpoint): see `registry.artifacts.upload`."""
        path = Path(path)
        upload(self.client, self.run_id, path, artifact_path)
        if path.is_file() and artifact_path in EVAL_FOLDERS and path.suffix == ".jsonl":
            self._log_eval_views(path, artifact_path)

    def _log_eval_views(self, path: Path, artifact_path: str) -> None:
        """Beside an eval JSONL: the same answers as an MLflow table, and the run's curves."""
        self.log_eval_table(path, artifact_path)
        self.log_curves()

    def log_eval_table(self, path: Path, artifact_path: str) -> None:
        """An eval JSONL as an MLflow table `<artifact_path>/<stem>.table.json`. A table that
        cannot be made (no pandas, a damaged file) is logged as a warning: the JSONL is the record."""
        try:
            records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            with_retries(
                lambda: self.client.log_table(self.run_id, data=eval_table(records), artifact_file=f"{artifact_path}/{path.stem}.table.json"),
                "log eval table",
            )
        except (ImportError, ValueError, KeyError, TypeError, OSError) as error:
            log.warning("run %s: no table for %s: %s", self.run_id, path.name, error)

    def log_curves(self) -> None:
        """The figure of the run's accuracies and content metrics against steps so far."""
        try:
            figure = self._curves_figure()
            if figure is not None:
                with_retries(lambda: self.client.log_figure(self.run_id, figure, CURVES_FIGURE), "log figure")
        except (ImportError, ValueError, OSError) as error:
            log.warning("run %s: no curves figure: %s", self.run_id, error)

    def _curves_figure(self):
        """Source, target, bridged and mismatched accuracy, and bits transmitted, fraction
        recovered and retrieval, against steps: one look answers "did the bridge carry anything"."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        def history(key: str) -> list[tuple[int, float]]:
            points = with_retries(lambda: self.client.get_metric_history(self.run_id, key), "read metric history")
            return sorted((p.step, p.value) for p in points)

        curves = {system: history(key) for system, key in ACCURACY.items()}
        content = {key: history(key) for key in (BITS, FRACTION, RETRIEVAL)}
        if not any(curves.values()):
            return None
        figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
        for system, points in curves.items():
            if points:
                left.plot(*zip(*points), marker="o", label=system)
        left.set(xlabel="step", ylabel="accuracy (fraction)", ylim=(0, 1), title="accuracy")
        left.legend(fontsize=8)
        if content[BITS]:
            right.plot(*zip(*content[BITS]), marker="o", color="black", label="bits transmitted")
            right.set(xlabel="step", ylabel="bits a question", title="what crosses the bridge")
            share = right.twinx()
            for key, style in ((FRACTION, "--"), (RETRIEVAL, ":")):
                if content[key]:
                    share.plot(*zip(*content[key]), style, marker=".", label=key.split("/")[-1])
            share.set(ylabel="fraction")
            if share.get_lines():
                share.legend(fontsize=8, loc="lower right")
            right.legend(fontsize=8, loc="upper left")
        else:
            right.set_axis_off()
            right.text(0.5, 0.5, "no content metrics\n(eval.content_metrics off)", ha="center", va="center")
        figure.tight_layout()
        plt.close(figure)
        return figure
