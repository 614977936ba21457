"""`registry.load("models:/NAME@ALIAS")`: a preserved version back as a ready bridge.

The version's archive is downloaded and every file checked against its sha256 manifest (and
the manifest against the version's `manifest_sha256` tag) before anything is loaded; a
changed file is refused with `TamperedArchiveError`. The bridge is rebuilt from the archived
translator, the frozen models and the few-shot exemplars its config names.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from mlflow.exceptions import MlflowException

from latentbridge.metric_names import BRIDGED, EvalRecord
from registry.errors import LoadError
from registry.facts import EVAL_FILE, read_eval_jsonl
from registry.preserve import ARCHIVE, verify_manifest
from registry.store import client

log = logging.getLogger(__name__)

URI = re.compile(r"^models:/(?P<name>[^@/]+)(?:@(?P<alias>[^/@]+)|/(?P<version>\d+))$")
Which = Literal["final", "best"]


@dataclass
class Archive:
    """What a preserved version holds, read into memory (the files themselves are verified)."""

    model: str
    version: str
    run_id: str
    tags: dict[str, str]
    aliases: list[str]
    config: dict
    summary: dict  # metrics.json
    evals: dict[int, list[EvalRecord]] = field(default_factory=dict)  # step -> records
    note: str = ""

    def step(self, which: Which = "final") -> int:
        part = self.summary["final" if which == "final" else "peak"]
        if part.get("step") is None:
            raise LoadError(f"{self.model} version {self.version} records no {which} evaluation step")
        return int(part["step"])

    def records(self, which: Which = "final") -> list[EvalRecord]:
        step = self.step(which)
        if step not in self.evals:
            raise LoadError(f"{self.model} version {self.version} has no eval JSONL for step {step}")
        return self.evals[step]

    def examples(self, which: Which = "final") -> list:
        from latentbridge.data import Example

        return [Example(question=r["question"], answer=r["gold_solution"]) for r in self.records(which)]

    def translator_folder(self, which: Which) -> str:
        if which == "final":
            return "translator"
        folder = self.summary["peak"].get("translator")
        if not folder:
            raise LoadError(f"{self.model} version {self.version} archived no best translator")
        return folder


def resolve(uri: str):
    """The ModelVersion a `models:/NAME@ALIAS` or `models:/NAME/VERSION` URI names."""
    match = URI.match(uri.strip())
    if not match:
        raise LoadError(f"{uri!r} is not a model URI: use models:/NAME@ALIAS or models:/NAME/VERSION")
    mlflow_client = client()
    name = match["name"]
    try:
        registered = mlflow_client.get_registered_model(name)
    except MlflowException:
        names = sorted(m.name for m in mlflow_client.search_registered_models())
        raise LoadError(f"no registered model {name!r}; registered models: {names or 'none'}") from None
    if match["alias"]:
        aliases = dict(registered.aliases or {})
        if match["alias"] not in aliases:
            raise LoadError(f"model {name!r} has no alias {match['alias']!r}; its aliases: {aliases or 'none'}")
        return mlflow_client.get_model_version_by_alias(name, match["alias"])
    try:
        return mlflow_client.get_model_version(name, match["version"])
    except MlflowException:
        raise LoadError(f"model {name!r} has no version {match['version']}") from None


def fetch(uri: str, dst: Path) -> tuple[Archive, Path]:
    """Download a version's archive into `dst`, verify it, and read its records."""
    version = resolve(uri)
    mlflow_client = client()
    try:
        folder = Path(mlflow_client.download_artifacts(version.run_id, ARCHIVE, str(dst)))
    except (MlflowException, OSError) as error:
        raise LoadError(f"cannot download the archive of {version.name} version {version.version}: {error}") from None
    verify_manifest(folder, version.tags.get("manifest_sha256"))
    evals = {}
    for path in sorted((folder / "evals").glob("*.jsonl")):
        if m := EVAL_FILE.search(path.name):
            evals[int(m.group(1))] = read_eval_jsonl(path)
    aliases = sorted(a for a, v in (mlflow_client.get_registered_model(version.name).aliases or {}).items() if str(v) == str(version.version))
    archive = Archive(
        model=version.name,
        version=str(version.version),
        run_id=version.run_id,
        tags=dict(version.tags),
        aliases=aliases,
        config=json.loads((folder / "config.json").read_text()),
        summary=json.loads((folder / "metrics.json").read_text()),
        evals=evals,
        note=(folder / "NOTE.md").read_text() if (folder / "NOTE.md").is_file() else "",
    )
    return archive, folder


def load_with_archive(uri: str, *, which: Which = "final", device: str = "cpu"):
    """(Bridge, Archive): the bridge with the archived `which` translator, ready to evaluate."""
    from latentbridge.bridge import Bridge
    from latentbridge.checkpoint import load_translator
    from latentbridge.data import load_splits
    from latentbridge.models import DTYPES, load_frozen_lms
    from latentbridge.prompts import select_exemplars

    with tempfile.TemporaryDirectory() as tmp:
        archive, folder = fetch(uri, Path(tmp))
        translator, meta = load_translator(folder / archive.translator_folder(which), device=device)
    config = meta.config
    dtype = DTYPES[config.dtype]
    source, target = load_frozen_lms([config.source_model, config.target_model], dtype=dtype, device=device)
    exemplars = select_exemplars(load_splits(config.data).train, config.data.num_shots, config.data.fewshot_seed)
    bridge = Bridge(config, source, target, exemplars)
    bridge.translator = translator.float().to(device).eval()
    return bridge, archive


def load(uri: str, *, which: Which = "final", device: str = "cpu"):
    """A ready `latentbridge.bridge.Bridge` from a preserved version (`models:/NAME@ALIAS`)."""
    return load_with_archive(uri, which=which, device=device)[0]


@dataclass(frozen=True)
class Reproduction:
    uri: str
    which: str
    total: int
    matching: int
    mismatches: list[int]  # question indexes whose bridged output differs

    @property
    def ok(self) -> bool:
        return self.matching == self.total


def reproduce(uri: str, *, which: Which = "final", device: str = "cpu", questions: int | None = None) -> Reproduction:
    """Re-answer the archived questions (the first `questions` of them, when given) with the
    loaded bridge; compare with the archived answers."""
    from latentbridge.evaluate import bridged_answers

    bridge, archive = load_with_archive(uri, which=which, device=device)
    records = archive.records(which)[:questions]
    outputs = bridged_answers(bridge, archive.examples(which)[:questions], bridge.config.eval)
    mismatches = [r["index"] for r, out in zip(records, outputs) if r[BRIDGED]["output"] != out]
    return Reproduction(uri, which, len(records), len(records) - len(mismatches), mismatches)
