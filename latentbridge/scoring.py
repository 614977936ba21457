"""GSM8K scoring: the answer is the number after the first `#### `, commas removed.

Anything without such a line is invalid; there is no last-number fallback.
"""

from __future__ import annotations

import re

INVALID = "[invalid]"
_ANSWER = re.compile(r"####\s*([-+]?[\d,]*\.?\d+)")


def normalize_number(text: str) -> str:
    """'1,200.50' -> '1200.5', '+7' -> '7', '18.00' -> '18'."""
    number = text.replace(",", "").lstrip("+")
    if "." in number:
        number = number.rstrip("0").rstrip(".")
    if number in ("", "-", "-0"):
        number = "0"
    return number


def extract_answer(text: str | None) -> str:
    """The normalised number of the first `#### <number>` in `text`, else INVALID."""
    if not text:
        return INVALID
    match = _ANSWER.search(text)
    return normalize_number(match.group(1)) if match else INVALID


def cut_generation(text: str) -> str:
    """Cut a generated answer where the model starts a new question."""
    for marker in ("\nQ:", "\n\nQuestion:"):
        index = text.find(marker)
        if index >= 0:
            text = text[:index]
    return text


def is_correct(predicted: str, gold: str) -> bool:
    return predicted != INVALID and predicted == gold
