"""A malformed JSONL data file fails with a DataError naming the file and line (issue 13)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from latentbridge.data.loading import DataError, read_jsonl

GOOD = json.dumps({"question": "How many?", "answer": "Two. #### 2"})


def _write(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


@pytest.mark.parametrize(
    "record,what",
    [
        ({"question": 5, "answer": "#### 5"}, '"question" must be a string'),
        ({"question": "q?", "answer": 5}, '"answer" must be a string'),
        ({"question": None, "answer": "#### 5"}, '"question" must be a string'),
    ],
)
def test_non_string_field_names_file_and_line(tmp_path: Path, record: dict, what: str) -> None:
    path = _write(tmp_path / "bad.jsonl", [GOOD.encode(), json.dumps(record).encode()])
    with pytest.raises(DataError, match=rf"bad\.jsonl:2: .*{what}"):
        read_jsonl(path)


def test_record_that_is_not_an_object_names_file_and_line(tmp_path: Path) -> None:
    path = _write(tmp_path / "list.jsonl", [b"[1, 2]"])
    with pytest.raises(DataError, match=r"list\.jsonl:1: .*JSON object"):
        read_jsonl(path)


def test_non_utf8_byte_names_file_and_line(tmp_path: Path) -> None:
    latin1 = json.dumps({"question": "Caf\u00e9?", "answer": "#### 1"}, ensure_ascii=False).encode("latin-1")
    path = _write(tmp_path / "latin1.jsonl", [GOOD.encode(), GOOD.encode(), latin1])
    with pytest.raises(DataError, match=r"latin1\.jsonl:3: not UTF-8 .*0xe9"):
        read_jsonl(path)


def test_utf8_text_still_loads(tmp_path: Path) -> None:
    text = json.dumps({"question": "Caf\u00e9 costs 3 \u20ac?", "answer": "#### 3"}, ensure_ascii=False)
    path = _write(tmp_path / "ok.jsonl", [text.encode("utf-8"), b"", GOOD.encode()])
    examples = read_jsonl(path)
    assert [e.gold for e in examples] == ["3", "2"] and "\u20ac" in examples[0].question


def _fake_datasets(monkeypatch: pytest.MonkeyPatch, load_dataset) -> None:
    """`datasets` replaced by a module whose load_dataset is `load_dataset` (no network)."""
    import sys
    import types

    module = types.ModuleType("datasets")
    module.load_dataset = load_dataset
    monkeypatch.setitem(sys.modules, "datasets", module)
    monkeypatch.delenv("LATENTBRIDGE_DATASET_MIRROR", raising=False)


def test_an_unreachable_hub_dataset_names_it_and_the_mirror(monkeypatch: pytest.MonkeyPatch) -> None:
    from latentbridge.config import DataConfig
    from latentbridge.data import load_splits

    def offline(hub_id, hub_config):
        raise ConnectionError(f"Couldn't reach {hub_id!r} on the Hub (OfflineModeIsEnabled)")

    _fake_datasets(monkeypatch, offline)
    with pytest.raises(DataError, match=r"'openai/gsm8k' \('main'\).*Couldn't reach.*LATENTBRIDGE_DATASET_MIRROR"):
        load_splits(DataConfig(source="gsm8k"))


@pytest.mark.parametrize(
    "splits,what",
    [
        ({"train": [{"problem": "q?", "solution": "#### 1"}], "test": []}, r"train row 0: .*no \"question\""),
        ({"train": [{"question": "q?", "answer": "no number"}], "test": []}, r"train row 0: .*####"),
        ({"train": [{"question": None, "answer": "#### 1"}], "test": []}, r"train row 0: .*\"question\" must be a string"),
        ({"train": [{"question": "q?", "answer": "#### 1"}], "validation": []}, r"no 'test' split.*train, validation"),
    ],
)
def test_a_hub_dataset_of_another_shape_names_the_split_and_row(monkeypatch: pytest.MonkeyPatch, splits: dict, what: str) -> None:
    from latentbridge.config import DataConfig
    from latentbridge.data import load_splits

    _fake_datasets(monkeypatch, lambda hub_id, hub_config: splits)
    with pytest.raises(DataError, match=rf"someone/math.*{what}"):
        load_splits(DataConfig(source="gsm8k", hub_id="someone/math"))


def test_a_missing_field_is_named(tmp_path: Path) -> None:
    path = _write(tmp_path / "nofield.jsonl", [GOOD.encode(), json.dumps({"question": "q?", "solution": "#### 1"}).encode()])
    with pytest.raises(DataError, match=r'nofield\.jsonl:2: .*no "answer" field'):
        read_jsonl(path)
