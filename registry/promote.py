"""Promote a preserved version: point an alias (publishable, champion, ...) at it.

Aliases replace MLflow's deprecated stages. The alias policy in `verdict_defaults.json` says
which verdicts may carry each alias; promoting against it needs `force=True` and a reason,
which is kept on the version as tag `promotion.<alias>` (JSON: forced, reason, verdict, when).
Promoting a version that already carries the alias changes nothing.

The verdict is read from the version's archive (`metrics.json`), after every archived file
has been checked against its sha256 manifest, never from the `verdict` tag: tags can be
edited by anyone with UI or REST access. A tag that disagrees with the archive is named in the
refusal. A forced promotion is made visible three ways: the tag `promotion_forced`
(`<alias>: <reason>`, one entry per forced alias), a marker in `python -m registry list`, and
a line at the top of the version's description.
"""

from __future__ import annotations

import getpass
import json
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from mlflow.exceptions import MlflowException

from registry.errors import LoadError, PromoteError, TamperedArchiveError
from registry.store import client, with_retries
from registry.verdict import VERDICTS, AliasPolicy

log = logging.getLogger(__name__)

PROMOTION_TAG = "promotion.{alias}"
FORCED_TAG = "promotion_forced"  # "<alias>: <reason>" entries joined by FORCED_SEPARATOR
FORCED_SEPARATOR = " | "
FORCED_NOTE = "**FORCED PROMOTION**"
DESCRIPTION_LIMIT = 5000  # MLflow's limit on a model version description (as registry.preserve)
MAX_TAG_VALUE = 5000


@dataclass(frozen=True)
class Promotion:
    model: str
    version: str
    alias: str
    changed: bool
    forced: bool
    previous: str | None  # the version the alias pointed at before, if another
    message: str


def _version(mlflow_client, model: str, version: str):
    try:
        mlflow_client.get_registered_model(model)
    except MlflowException:
        names = sorted(m.name for m in mlflow_client.search_registered_models())
        raise PromoteError(f"no registered model {model!r}; registered models: {names or 'none'}") from None
    try:
        return mlflow_client.get_model_version(model, str(version))
    except MlflowException:
        versions = sorted(int(v.version) for v in mlflow_client.search_model_versions(f"name='{model}'"))
        raise PromoteError(f"model {model!r} has no version {version!r}; versions: {versions}") from None


def archived_verdict(model: str, version: str) -> str:
    """The verdict recorded in the version's archive, after its sha256 manifest is checked."""
    from registry.loading import fetch

    where = f"{model} version {version}"
    with tempfile.TemporaryDirectory() as tmp:
        try:
            archive, _ = fetch(f"models:/{model}/{version}", Path(tmp))
        except TamperedArchiveError as error:
            raise PromoteError(f"refused: the archive of {where} fails its check, so its verdict cannot be trusted: {error}") from None
        except LoadError as error:
            raise PromoteError(
                f"refused: cannot read the archive of {where} ({error}); only versions made by "
                "`python -m registry preserve` can be promoted"
            ) from None
    verdict = (archive.summary.get("verdict") or {}).get("verdict")
    if verdict not in VERDICTS:
        raise PromoteError(
            f"refused: the archive of {where} records no known verdict (metrics.json says {verdict!r}); "
            "preserve the run again with `python -m registry preserve`"
        )
    return verdict


def forced_aliases(tags: dict[str, str] | None) -> dict[str, str]:
    """alias -> reason for each alias forced onto the version (from its `promotion_forced` tag)."""
    entries = {}
    for part in ((tags or {}).get(FORCED_TAG) or "").split(FORCED_SEPARATOR):
        alias, _, reason = part.partition(": ")
        if alias.strip():
            entries[alias.strip()] = reason.strip()
    return entries


def _set_forced_tag(mlflow_client, model: str, version: str, entries: dict[str, str]) -> None:
    if entries:
        text = FORCED_SEPARATOR.join(f"{a}: {r}" for a, r in entries.items())[:MAX_TAG_VALUE]
        with_retries(lambda: mlflow_client.set_model_version_tag(model, version, FORCED_TAG, text), "tag forced promotion")
    else:
        with_retries(lambda: mlflow_client.delete_model_version_tag(model, version, FORCED_TAG), "untag forced promotion")


def _mark_forced(mlflow_client, model: str, version, alias: str, reason: str, verdict: str, record: dict) -> None:
    """Tag the version and put a line at the top of its description."""
    entries = forced_aliases(version.tags)
    entries[alias] = " ".join(reason.replace(FORCED_SEPARATOR, " / ").split())[:500]
    _set_forced_tag(mlflow_client, model, version.version, entries)
    line = (
        f"{FORCED_NOTE} to @{alias} over the archived verdict {verdict!r}, by {record['by']} at {record['at']}: {reason}"
    )
    current = mlflow_client.get_model_version(model, version.version).description or ""
    body = f"{line}\n\n{current}" if current else line
    if len(body) > DESCRIPTION_LIMIT:
        tail = "\n\n(truncated: the full note is NOTE.md in this version's files)"
        body = body[: DESCRIPTION_LIMIT - len(tail)] + tail
    with_retries(
        lambda: mlflow_client.update_model_version(model, version.version, description=body), "note forced promotion"
    )


def _unmark_forced(mlflow_client, model: str, version, alias: str) -> None:
    entries = forced_aliases(version.tags)
    entries.pop(alias, None)
    _set_forced_tag(mlflow_client, model, version.version, entries)


def promote(
    model: str,
    version: str | int,
    alias: str,
    *,
    force: bool = False,
    reason: str | None = None,
    policy: AliasPolicy | None = None,
    policy_file: Path | None = None,
) -> Promotion:
    """Set `alias` on `model` version `version`, if its verdict allows (or forced, with a reason)."""
    alias = alias.strip()
    if not alias:
        raise PromoteError("the alias is empty")
    if reason is not None and not force:
        raise PromoteError("--reason goes with --force: it records why a verdict is overridden")
    mlflow_client = client()
    found = _version(mlflow_client, model, str(version))
    version = str(found.version)
    current = dict(mlflow_client.get_registered_model(model).aliases or {})
    if str(current.get(alias, "")) == version:
        return Promotion(model, version, alias, False, False, None, f"{model}@{alias} already points to version {version}: nothing changed")
    policy = policy or AliasPolicy.load(policy_file)
    verdict = archived_verdict(model, version)
    tagged = found.tags.get("verdict")
    edited = (
        f" (its `verdict` tag says {tagged!r}, which does not match its verified archive: the tag was edited)"
        if tagged != verdict else ""
    )
    if tagged != verdict:
        log.warning("%s version %s: verdict tag %r differs from the archived verdict %r", model, version, tagged, verdict)
    allowed = policy.allows(alias, verdict)
    forced = False
    if not allowed:
        if not force:
            raise PromoteError(
                f"refused: {model} version {version} has verdict {verdict!r}{edited}, and alias {alias!r} needs one of "
                f"{list(policy.verdicts_for(alias))}. Pass --force --reason \"...\" to promote it anyway."
            )
        if not reason or not reason.strip():
            raise PromoteError(f"refused: forcing alias {alias!r} onto a {verdict!r} version needs --reason \"...\"")
        forced = True
    previous = current.get(alias)
    record = {
        "forced": forced,
        "reason": reason.strip() if reason else None,
        "verdict": verdict,
        "by": getpass.getuser(),
        "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if forced:  # marked before the alias moves: a forced alias is never left unmarked
        _mark_forced(mlflow_client, model, found, alias, reason.strip(), verdict, record)
    elif alias in forced_aliases(found.tags):  # allowed now: no longer forced
        _unmark_forced(mlflow_client, model, found, alias)
    try:
        with_retries(lambda: mlflow_client.set_registered_model_alias(model, alias, version), "set alias")
    except MlflowException as error:
        raise PromoteError(f"MLflow refused alias {alias!r}: {error.message if hasattr(error, 'message') else error}") from None
    with_retries(
        lambda: mlflow_client.set_model_version_tag(model, version, PROMOTION_TAG.format(alias=alias), json.dumps(record)),
        "tag promotion",
    )
    moved = f" (moved from version {previous})" if previous else ""
    how = f"forced over verdict {verdict!r}: {reason.strip()}" if forced else f"verdict {verdict!r} allows it"
    log.info("%s@%s -> version %s%s", model, alias, version, moved)
    return Promotion(model, version, alias, True, forced, str(previous) if previous else None, f"{model}@{alias} -> version {version}{moved}; {how}")
