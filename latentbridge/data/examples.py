"""One question with its GSM8K-format solution, and the three splits of a task."""

from __future__ import annotations

from dataclasses import dataclass

from latentbridge.scoring import extract_answer, INVALID


@dataclass(frozen=True)
class Example:
    question: str
    answer: str  # worked solution ending in '#### <number>'

    @property
    def gold(self) -> str:
        return extract_answer(self.answer)

    def __post_init__(self) -> None:
        if not self.question.strip():
            raise ValueError("an example has an empty question")
        if extract_answer(self.answer) == INVALID:
            raise ValueError(f"answer has no '#### <number>' line: {self.answer[-80:]!r}")


@dataclass(frozen=True)
class Splits:
    train: list[Example]
    validation: list[Example]  # carved from train, for model selection
    test: list[Example]

    def get(self, name: str) -> list[Example]:
        if name not in ("train", "validation", "test"):
            raise ValueError(f"unknown split {name!r}; choose train, validation or test")
        return getattr(self, name)
