"""A deterministic synthetic arithmetic word-problem task in GSM8K's format.

Each problem takes two or three steps of +, - or x over small numbers, with a worked
solution that ends in '#### <number>'. The same seed always gives the same problems.
"""

from __future__ import annotations

import random

from latentbridge.data.examples import Example

_NAMES = ["Ava", "Ben", "Cleo", "Dev", "Emma", "Finn", "Gia", "Hugo", "Iris", "Jon"]
_ITEMS = ["apples", "books", "coins", "marbles", "pencils", "stamps", "shells", "cards"]


def _problem(rng: random.Random) -> Example:
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    start = rng.randint(2, 30)
    sentences = [f"{name} has {start} {item}."]
    steps = []
    total = start
    for _ in range(rng.randint(2, 3)):
        op = rng.choice(["buy", "give", "double"] if total < 60 else ["give"])
        if op == "buy":
            n = rng.randint(2, 20)
            sentences.append(f"Then {name} buys {n} more.")
            steps.append(f"{total} + {n} = {total + n}.")
            total += n
        elif op == "give" and total > 1:
            n = rng.randint(1, total - 1)
            sentences.append(f"Then {name} gives away {n}.")
            steps.append(f"{total} - {n} = {total - n}.")
            total -= n
        else:
            sentences.append(f"Then the number of {item} doubles.")
            steps.append(f"{total} x 2 = {total * 2}.")
            total *= 2
    question = " ".join(sentences) + f" How many {item} does {name} have now?"
    answer = " ".join(steps) + f"\n#### {total}"
    return Example(question=question, answer=answer)


def synthetic_examples(count: int, seed: int) -> list[Example]:
    rng = random.Random(seed)
    return [_problem(rng) for _ in range(count)]
