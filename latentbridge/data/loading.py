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
                record = json.loads(line)
                if not isinstance(record, dict):
                    raise ValueError(f"a record is a JSON object, got {type(record).__name__}")
                for key in ("question", "answer"):
                    if not isinstance(record[key], str):
                        raise ValueError(f'"{key}" must be a string, got {record[key]!r}')
                examples.append(Example(question=record["question"], answer=record["answer"]))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
                raise DataError(f"{path}:{number}: malformed GSM8K record ({error})") from None
    if not examples:
        raise DataError(f"data file has no records: {path}")
    return examples


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

    loaded = datasets.load_dataset(config.hub_id, config.hub_config)
    return tuple(  # type: ignore[return-value]
        [Example(question=r["question"], answer=r["answer"]) for r in loaded[split]]
        for split in ("train", "test")
    )


def load_splits(config: DataConfig) -> Splits:
    """Train and test from the configured source; validation carved from train."""
    if config.source == "synthetic":
        train = synthetic_examples(config.synthetic_train_size, config.synthetic_seed)
        test = synthetic_examples(config.synthetic_test_size, config.synthetic_seed + 1)
    elif config.source == "jsonl":
        train, test = read_jsonl(config.train_file), read_jsonl(config.test_file)
    else:
        train, test = _from_hub(config)
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
