"""Load the train/validation/test splits a `DataConfig` names.

A hub dataset (`data.source=gsm8k`) comes through `datasets`; on machines that cannot reach the
hub (cluster nodes, a GPU box without internet), `LATENTBRIDGE_DATASET_MIRROR` names a folder
holding `<hub_id>/<hub_config>/<split>.jsonl` (e.g. `openai/gsm8k/main/train.jsonl`, the hub's
own records): the
same run then reads those files, and its config is unchanged (where the bytes come from is not
part of the experiment).
"""

from __future__ import annotations

import json
import logging
import os
import random
from pathlib import Path

from latentbridge.config import DataConfig
from latentbridge.data.examples import Example, Splits
from latentbridge.data.synthetic import synthetic_examples

log = logging.getLogger(__name__)
DATASET_MIRROR_ENV = "LATENTBRIDGE_DATASET_MIRROR"


class DataError(ValueError):
    """A data file is missing or malformed."""


def read_jsonl(path: str | Path) -> list[Example]:
    """Read GSM8K-style JSONL: one {"question": ..., "answer": "... #### n"} a line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    examples = []
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise DataError(
                    f"{path}:{number}: not UTF-8 text (byte {raw[error.start]:#04x} at column {error.start + 1});"
                    " save the file as UTF-8"
                ) from None
            if not line.strip():
                continue
            try:
                examples.append(_example(json.loads(line)))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
                raise DataError(f"{path}:{number}: malformed GSM8K record ({error})") from None
    if not examples:
        raise DataError(f"data file has no records: {path}")
    return examples


def _example(record: object) -> Example:
    """One {"question": ..., "answer": "... #### n"} record; a ValueError says what is wrong with it."""
    if not isinstance(record, dict):
        raise ValueError(f"a record is a JSON object, got {type(record).__name__}")
    for key in ("question", "answer"):
        if key not in record:
            raise ValueError(f'no "{key}" field (it has {", ".join(map(repr, record)) or "none"})')
        if not isinstance(record[key], str):
            raise ValueError(f'"{key}" must be a string, got {record[key]!r}')
    return Example(question=record["question"], answer=record["answer"])


def _from_hub(config: DataConfig) -> tuple[list[Example], list[Example]]:
    mirror = os.environ.get(DATASET_MIRROR_ENV)
    if mirror:
        folder = Path(mirror) / config.hub_id / config.hub_config
        missing = [str(folder / f"{split}.jsonl") for split in ("train", "test") if not (folder / f"{split}.jsonl").is_file()]
        if missing:
            raise DataError(
                f"{DATASET_MIRROR_ENV}={mirror} has no {' or '.join(missing)}: put the hub's {config.hub_id!r}"
                f" ({config.hub_config!r}) splits there as JSON lines, or unset {DATASET_MIRROR_ENV} to download them"
            )
        log.info("data: %s from the mirror %s", config.hub_id, folder)
        return read_jsonl(folder / "train.jsonl"), read_jsonl(folder / "test.jsonl")
    import datasets

    name = f"the hub dataset {config.hub_id!r} ({config.hub_config!r})"
    try:
        loaded = datasets.load_dataset(config.hub_id, config.hub_config)
    except (OSError, ValueError) as error:  # unreachable hub (ConnectionError), unknown id or config
        raise DataError(
            f"cannot load {name}: {type(error).__name__}: {error}. Where the hub is out of reach, put its train and test"
            f" splits as JSON lines in <folder>/{config.hub_id}/{config.hub_config}/{{train,test}}.jsonl and set"
            f" {DATASET_MIRROR_ENV}=<folder>"
        ) from error
    splits = []
    for split in ("train", "test"):
        if split not in loaded:
            raise DataError(f"{name} has no {split!r} split (it has {', '.join(loaded)}); data.source=gsm8k needs train and test")
        examples = []
        for row, record in enumerate(loaded[split]):
            try:
                examples.append(_example(record))
            except (KeyError, TypeError, ValueError) as error:
                raise DataError(f"{name}, {split} row {row}: not a GSM8K record ({error})") from None
        splits.append(examples)
    return splits[0], splits[1]


def _unseen(train: list[Example], test: list[Example]) -> list[Example]:
    """Train without its repeated questions (a repeat could land in validation and train both) and
    without test's questions (the synthetic generator draws both splits from one space, so a few
    coincide); the order is kept, so a source that repeats nothing keeps its splits."""
    seen = {ex.question for ex in test}
    kept = []
    for ex in train:
        if ex.question not in seen:
            seen.add(ex.question)
            kept.append(ex)
    if len(kept) < len(train):
        log.warning("data: dropped %d train examples whose question repeats one in train or test", len(train) - len(kept))
    return kept


def planned_split_sizes(config: DataConfig) -> dict[str, int]:
    """How many questions a split will hold, where the config alone says so (before any data is
    read): validation data.val_size (carved from train); test the synthetic generator's size."""
    sizes = {"validation": config.val_size}
    if config.source == "synthetic":
        sizes["test"] = config.synthetic_test_size
    return sizes


def load_splits(config: DataConfig) -> Splits:
    """Train and test from the configured source; validation carved from train; no question in two splits."""
    if config.source == "synthetic":
        train = synthetic_examples(config.synthetic_train_size, config.synthetic_seed)
        test = synthetic_examples(config.synthetic_test_size, config.synthetic_seed + 1)
    elif config.source == "jsonl":
        train, test = read_jsonl(config.train_file), read_jsonl(config.test_file)
    else:
        train, test = _from_hub(config)
    if config.drop_repeats:
        train = _unseen(train, test)
    if config.val_size + config.num_shots >= len(train):
        raise DataError(
            f"train split has {len(train)} examples: too few for data.val_size={config.val_size}"
            f" plus {config.num_shots} exemplars"
        )
    order = list(range(len(train)))
    random.Random(config.split_seed).shuffle(order)
    validation = [train[i] for i in order[: config.val_size]]
    remaining = [train[i] for i in order[config.val_size :]]
    log.info("data: %d train, %d validation, %d test", len(remaining), len(validation), len(test))
    return Splits(train=remaining, validation=validation, test=test)
