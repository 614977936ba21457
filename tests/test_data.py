import json

import pytest

from latentbridge.config import DataConfig
from latentbridge.data import load_splits
from latentbridge.data.loading import DataError, read_jsonl
from latentbridge.data.synthetic import synthetic_examples
from latentbridge.scoring import INVALID


def test_synthetic_task_is_deterministic_and_well_formed():
    first, again = synthetic_examples(50, seed=3), synthetic_examples(50, seed=3)
    assert first == again
    assert first != synthetic_examples(50, seed=4)
    for ex in first:
        assert ex.gold != INVALID
        # the worked steps really compute the answer: the last step's result is the gold
        last_step = ex.answer.split("\n")[0].rstrip(".").split("= ")[-1]
        assert last_step == ex.gold


def test_validation_is_carved_from_train_never_test():
    splits = load_splits(DataConfig(val_size=40, synthetic_train_size=300, synthetic_test_size=50))
    assert len(splits.validation) == 40 and len(splits.train) == 260 and len(splits.test) == 50
    train_questions = {ex.question for ex in splits.train}
    assert not any(ex.question in train_questions for ex in splits.validation)
    original = synthetic_examples(300, DataConfig().synthetic_seed)
    assert set(splits.validation) | set(splits.train) == set(original)


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


def test_jsonl_files_load(tmp_path):
    rows = [json.dumps({"question": f"q{i}?", "answer": f"step\n#### {i}"}) for i in range(30)]
    train = _write(tmp_path / "train.jsonl", rows)
    test = _write(tmp_path / "test.jsonl", rows[:5])
    splits = load_splits(DataConfig(source="jsonl", train_file=str(train), test_file=str(test), val_size=10))
    assert len(splits.test) == 5 and splits.test[3].gold == "3"


def test_missing_file_and_malformed_line_are_named(tmp_path):
    with pytest.raises(DataError, match="data file not found: .*nope.jsonl"):
        read_jsonl(tmp_path / "nope.jsonl")
    bad = _write(tmp_path / "bad.jsonl", [json.dumps({"question": "q?", "answer": "#### 1"}), "{not json"])
    with pytest.raises(DataError, match=r"bad.jsonl:2: malformed"):
        read_jsonl(bad)
    no_answer = _write(tmp_path / "noanswer.jsonl", [json.dumps({"question": "q?", "answer": "no number line"})])
    with pytest.raises(DataError, match=r"noanswer.jsonl:1: malformed"):
        read_jsonl(no_answer)


def test_too_small_train_split_is_refused():
    with pytest.raises(DataError, match="too few"):
        load_splits(DataConfig(val_size=20, synthetic_train_size=25))


def test_a_hub_dataset_reads_its_mirror_when_one_is_set_and_names_what_is_missing(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "datasets", None)  # the hub is out of reach: importing it fails
    folder = tmp_path / "openai" / "gsm8k" / "main"
    folder.mkdir(parents=True)
    rows = [json.dumps({"question": f"q{i}?", "answer": f"step\n#### {i}"}) for i in range(30)]
    _write(folder / "train.jsonl", rows)
    monkeypatch.setenv("LATENTBRIDGE_DATASET_MIRROR", str(tmp_path))
    with pytest.raises(DataError, match=r"no .*openai/gsm8k/main/test.jsonl.*or unset LATENTBRIDGE_DATASET_MIRROR"):
        load_splits(DataConfig(source="gsm8k", val_size=10))
    _write(folder / "test.jsonl", [json.dumps({"question": f"t{i}?", "answer": f"step\n#### {i}"}) for i in range(4)])
    splits = load_splits(DataConfig(source="gsm8k", val_size=10))
    assert len(splits.test) == 4 and splits.test[2].gold == "2" and len(splits.train) + len(splits.validation) == 30


def test_no_question_is_in_two_splits_even_when_the_sources_repeat_it(tmp_path):
    """Train questions repeated in train or found in test are dropped before validation is carved:
    model selection and the test score never see a question the translator trained on."""
    rows = [{"question": f"q{i}?", "answer": f"step\n#### {i}"} for i in range(40)]
    test_rows = rows[:3] + [{"question": "fresh?", "answer": "#### 7"}]
    repeated = rows + rows[10:30]  # twenty questions twice: by chance some copies would land in both parts
    train = _write(tmp_path / "train.jsonl", [json.dumps(r) for r in repeated])
    test = _write(tmp_path / "test.jsonl", [json.dumps(r) for r in test_rows])
    splits = load_splits(DataConfig(source="jsonl", train_file=str(train), test_file=str(test), val_size=15, num_shots=2))
    train_q, val_q, test_q = ([ex.question for ex in part] for part in (splits.train, splits.validation, splits.test))
    assert len(train_q) == len(set(train_q)) and not set(val_q) & set(train_q)
    assert not set(test_q) & (set(train_q) | set(val_q)) and len(test_q) == 4
    assert len(val_q) == 15 and len(train_q) + len(val_q) == 37  # 40 distinct, less the 3 of test


def test_the_synthetic_splits_share_no_question():
    """The synthetic test draws from the generator the train split draws from: the default sizes
    repeat two train questions and one test question in train."""
    splits = load_splits(DataConfig())
    train_q, val_q, test_q = ({ex.question for ex in part} for part in (splits.train, splits.validation, splits.test))
    assert len(train_q) == len(splits.train) and not val_q & train_q and not test_q & (train_q | val_q)
    assert len(splits.test) == 500 and len(splits.validation) == 200


def test_splits_without_repeats_are_unchanged_by_the_filtering(tmp_path):
    """Sources that repeat nothing (GSM8K) keep the splits they had: same order, same validation."""
    import random

    rows = [json.dumps({"question": f"q{i}?", "answer": f"step\n#### {i}"}) for i in range(30)]
    train = _write(tmp_path / "train.jsonl", rows)
    test = _write(tmp_path / "test.jsonl", [json.dumps({"question": "t?", "answer": "#### 1"})])
    splits = load_splits(DataConfig(source="jsonl", train_file=str(train), test_file=str(test), val_size=10, split_seed=3))
    order = list(range(30))
    random.Random(3).shuffle(order)
    assert [ex.question for ex in splits.validation] == [f"q{i}?" for i in order[:10]]
    assert [ex.question for ex in splits.train] == [f"q{i}?" for i in order[10:]]


def test_drop_repeats_false_keeps_the_splits_of_earlier_runs():
    """data.drop_repeats=false reproduces the splits runs before the filtering trained on (the
    repeats kept); the default drops exactly the repeated and test-shared questions."""
    kept = load_splits(DataConfig(drop_repeats=False))
    dropped = load_splits(DataConfig())
    everything = kept.train + kept.validation
    assert len(everything) == DataConfig().synthetic_train_size  # the generator's draws, every one
    test_q = {ex.question for ex in kept.test}
    assert any(ex.question in test_q for ex in everything)  # the overlap the default removes
    repeats = len(everything) - len({ex.question for ex in everything} - test_q)
    assert len(dropped.train) + len(dropped.validation) == len(everything) - repeats
    assert [ex.question for ex in dropped.test] == [ex.question for ex in kept.test]  # test untouched
