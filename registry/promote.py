"""Promote a preserved version: point an alias (publishable, champion, ...) at it.

Aliases replace MLflow's deprecated stages. The alias policy in `verdict_defaults.json` says
which verdicts may carry each alias; promoting against it needs `force=True` and a reason,
which is kept on the version as tag `promotion.<alias>` (JSON: forced, reason, verdict, when).
Promoting a version that already carries the alias changes nothing.
"""

from __future__ import annotations

import getpass
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from mlflow.exceptions import MlflowException

from registry.errors import PromoteError
from registry.store import client, with_retries
from registry.verdict import AliasPolicy

log = logging.getLogger(__name__)

PROMOTION_TAG = "promotion.{alias}"


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
    verdict = found.tags.get("verdict")
    if verdict is None:
        raise PromoteError(f"{model} version {version} has no verdict tag: it was not made by `registry preserve`")
    current = dict(mlflow_client.get_registered_model(model).aliases or {})
    if str(current.get(alias, "")) == version:
        return Promotion(model, version, alias, False, False, None, f"{model}@{alias} already points to version {version}: nothing changed")
    policy = policy or AliasPolicy.load(policy_file)
    allowed = policy.allows(alias, verdict)
    forced = False
    if not allowed:
        if not force:
            raise PromoteError(
                f"refused: {model} version {version} has verdict {verdict!r}, and alias {alias!r} needs one of "
                f"{list(policy.verdicts_for(alias))}. Pass --force --reason \"...\" to promote it anyway."
            )
        if not reason or not reason.strip():
            raise PromoteError(f"refused: forcing alias {alias!r} onto a {verdict!r} version needs --reason \"...\"")
        forced = True
    previous = current.get(alias)
    try:
        with_retries(lambda: mlflow_client.set_registered_model_alias(model, alias, version), "set alias")
    except MlflowException as error:
        raise PromoteError(f"MLflow refused alias {alias!r}: {error.message if hasattr(error, 'message') else error}") from None
    record = {
        "forced": forced,
        "reason": reason.strip() if reason else None,
        "verdict": verdict,
        "by": getpass.getuser(),
        "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    with_retries(
        lambda: mlflow_client.set_model_version_tag(model, version, PROMOTION_TAG.format(alias=alias), json.dumps(record)),
        "tag promotion",
    )
    moved = f" (moved from version {previous})" if previous else ""
    how = f"forced over verdict {verdict!r}: {reason.strip()}" if forced else f"verdict {verdict!r} allows it"
    log.info("%s@%s -> version %s%s", model, alias, version, moved)
    return Promotion(model, version, alias, True, forced, str(previous) if previous else None, f"{model}@{alias} -> version {version}{moved}; {how}")
