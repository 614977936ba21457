"""`python -m registry list`: the archive as a table (model, version, aliases, verdict, metrics,
and what crossed the bridge: bits transmitted with its interval, fraction recovered, retrieval).

An alias forced onto a version against its verdict (`promote --force`) shows as
`alias(forced)`, and the table is followed by one line per forced alias with its reason.
"""

from __future__ import annotations

from collections.abc import Sequence

from registry.errors import RegistryError
from registry.promote import FORCED_TAG, forced_aliases
from registry.store import client

FORCED_MARK = "(forced)"

COLUMNS = (
    ("model", "model"),
    ("version", "v"),
    ("aliases", "aliases"),
    ("verdict", "verdict"),
    ("suite", "suite"),
    ("run_name", "run"),
    ("K", "K"),
    ("compression_ratio", "ratio"),
    ("source_alone", "val source"),
    ("target_alone", "val target"),
    ("bridged_peak", "val peak"),
    ("bridged_final", "val final"),
    ("test_target_alone", "test target"),
    ("test_bridged", "test bridged"),
    ("invalid_rate", "invalid"),
    ("bits_transmitted", "bits"),
    ("bits_transmitted_interval", "bits 95% CI"),
    ("fraction_recovered", "recovered"),
    ("retrieval_top1", "retrieval"),
)


def archive_rows(model: str | None = None) -> list[dict[str, str]]:
    """One row per preserved version, newest model versions last; aliases read from the model.

    A `model` the archive does not hold is a `RegistryError` naming the models it does hold.
    """
    mlflow_client = client()
    registered_models = sorted(mlflow_client.search_registered_models(), key=lambda m: m.name)
    if model and model not in {registered.name for registered in registered_models}:
        known = ", ".join(registered.name for registered in registered_models)
        raise RegistryError(
            f"the archive has no model named {model!r}; "
            + (f"it holds: {known}" if known else "it is empty: preserve a finished run with `python -m registry preserve RUN_ID`")
        )
    rows = []
    for registered in registered_models:
        if model and registered.name != model:
            continue
        by_version: dict[str, list[str]] = {}
        for alias, version in (mlflow_client.get_registered_model(registered.name).aliases or {}).items():
            by_version.setdefault(str(version), []).append(alias)
        versions = mlflow_client.search_model_versions(f"name='{registered.name}'")
        for version in sorted(versions, key=lambda v: int(v.version)):
            tags = version.tags
            row = {"model": registered.name, "version": str(version.version)}
            current = sorted(by_version.get(str(version.version), []))
            forced = forced_aliases(tags)
            row["aliases"] = ",".join(a + (FORCED_MARK if a in forced else "") for a in current)
            row[FORCED_TAG] = "; ".join(f"@{a}: {forced[a]}" for a in current if a in forced)
            for key, _ in COLUMNS[3:]:
                row[key] = tags.get(key, "")
            row["run_id"] = version.run_id or ""
            rows.append(row)
    return rows


def _short(key: str, value: str) -> str:
    try:
        if key in {"source_alone", "target_alone", "bridged_peak", "bridged_final", "invalid_rate",
                   "bits_transmitted", "fraction_recovered", "retrieval_top1", "test_target_alone", "test_bridged"}:
            return f"{float(value):.3f}"
        if key == "compression_ratio":
            return f"{value}x"  # as stored (2 decimals): re-rounding could disagree with the analysis
    except ValueError:
        pass
    return value


def format_table(rows: Sequence[dict[str, str]]) -> str:
    if not rows:
        return "the archive is empty: preserve a finished run with `python -m registry preserve RUN_ID`"
    header = [title for _, title in COLUMNS]
    body = [[_short(key, row.get(key, "")) or "-" for key, _ in COLUMNS] for row in rows]
    widths = [max(len(x) for x in column) for column in zip(header, *body)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()
    table = [line(header), line(["-" * w for w in widths]), *(line(r) for r in body)]
    forced = [row for row in rows if row.get(FORCED_TAG)]
    if forced:
        table += ["", "forced promotions (against the archived verdict):"]
        table += [f"  {row['model']} v{row['version']} {row[FORCED_TAG]}" for row in forced]
    return "\n".join(table)
