"""`python -m registry summarize PATH...`: valid, invalid and correct answers per eval JSONL.

Reads this project's records (`{"bridged": {"answer", "correct"}, "gold", ...}`) and the
reference study's (`bridged_extracted`, `gold_extracted`, ...). An answer is invalid when it
is missing, empty or `[invalid]`; correct when valid and equal to the gold answer. Malformed
lines are skipped with a warning naming the file and line.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from latentbridge.metric_names import BRIDGED, SOURCE, TARGET
from latentbridge.scoring import INVALID, normalize_number

log = logging.getLogger(__name__)

SYSTEMS = (BRIDGED, TARGET, SOURCE)


@dataclass
class Counts:
    total: int = 0
    valid: int = 0
    invalid: int = 0
    correct: int = 0

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0


@dataclass
class FileSummary:
    path: str
    records: int = 0
    skipped: int = 0
    systems: dict[str, Counts] = field(default_factory=dict)

    def to_dict(self) -> dict:
        out = asdict(self)
        for name, counts in self.systems.items():
            out["systems"][name]["accuracy"] = counts.accuracy
        return out


def _answer(record: dict, system: str) -> tuple[bool, str | None, bool | None]:
    """(present, answer, correct-if-recorded) of `system` in either record format."""
    value = record.get(system)
    if isinstance(value, dict):
        return True, value.get("answer"), value.get("correct")
    if f"{system}_extracted" in record or f"{system}_full" in record:
        return True, record.get(f"{system}_extracted"), None
    return False, None, None


def _gold(record: dict) -> str | None:
    gold = record.get("gold", record.get("gold_extracted"))
    return None if gold is None else str(gold)


def _is_valid(answer) -> bool:
    return answer is not None and str(answer).strip() not in ("", INVALID)


def _same(answer, gold) -> bool:
    try:
        return normalize_number(str(answer).strip()) == normalize_number(str(gold).strip())
    except (TypeError, ValueError):
        return str(answer).strip() == str(gold).strip()


def summarize_file(path: Path) -> FileSummary:
    summary = FileSummary(str(path))
    with Path(path).open(encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as error:
                summary.skipped += 1
                log.warning("%s:%d: skipped malformed line (%s)", path, number, error)
                continue
            if not isinstance(record, dict):
                summary.skipped += 1
                log.warning("%s:%d: skipped malformed line (not a JSON object)", path, number)
                continue
            present = {s: _answer(record, s) for s in SYSTEMS}
            if not any(p for p, _, _ in present.values()):
                summary.skipped += 1
                log.warning("%s:%d: skipped line with no answers (no bridged/target/source field)", path, number)
                continue
            summary.records += 1
            gold = _gold(record)
            for system, (found, answer, correct) in present.items():
                if not found:
                    continue
                counts = summary.systems.setdefault(system, Counts())
                counts.total += 1
                valid = _is_valid(answer)
                counts.valid += valid
                counts.invalid += not valid
                if valid:
                    counts.correct += bool(correct) if correct is not None else (gold is not None and _same(answer, gold))
    return summary


def expand(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given, and the *.jsonl files under each folder (sorted)."""
    out = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            out.extend(sorted(p for p in path.rglob("*.jsonl") if p.is_file()))
        elif path.is_file():
            out.append(path)
        else:
            raise FileNotFoundError(f"no such file or folder: {path}")
    return out


def summarize(paths: Sequence[str | Path]) -> list[FileSummary]:
    files = expand(paths)
    if not files:
        raise FileNotFoundError(f"no .jsonl files under {', '.join(map(str, paths))}")
    return [summarize_file(p) for p in files]


def format_summaries(summaries: Sequence[FileSummary]) -> str:
    header = ["file", "system", "total", "valid", "invalid", "correct", "accuracy", "skipped"]
    rows = []
    for s in summaries:
        if not s.systems:
            rows.append([s.path, "-", "0", "0", "0", "0", "-", str(s.skipped)])
        for system, c in s.systems.items():
            rows.append([s.path, system, str(c.total), str(c.valid), str(c.invalid), str(c.correct), f"{c.accuracy:.3f}", str(s.skipped)])
    widths = [max(len(x) for x in column) for column in zip(header, *rows)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()
    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])
