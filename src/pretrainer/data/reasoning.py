"""Generated reasoning tasks with known answers, the tasks of the chain-of-thought papers (Wei et al., 2022; Kojima
et al., 2022): multi-digit addition, last-letter concatenation, list reversal and coin-flip state tracking. Each
example carries its question's fields, its answer and a rationale (the worked steps, ending in the answer) for
chain-of-thought demonstrations. Examples are drawn from (task, seed, index), so any split is reproducible and
there are as many as asked for."""

from __future__ import annotations

import random
from collections.abc import Callable

# short, common first names for the tasks that need names
NAMES = (
    "Ada Alan Anna Ben Carl Clara Dana David Elena Emma Felix Grace Hugo Ines Ivan Jack James Julia Karl Laura "
    "Leo Lucy Maria Mark Nina Noah Olga Oscar Paul Rosa Ruth Sam Sara Simon Tara Tom Uma Vera Victor Zoe"
).split()


def addition(rng: random.Random, digits: int = 3) -> dict:
    """Two numbers of `digits` digits; the rationale adds them column by column, right to left, with carries."""
    a, b = (rng.randrange(10 ** (digits - 1), 10**digits) for _ in range(2))
    steps, carry = [], 0
    for place, (x, y) in enumerate(zip(reversed(str(a)), reversed(str(b)), strict=True)):
        total = int(x) + int(y) + carry
        with_carry = f" + {carry}" if carry else ""
        steps.append(f"{_PLACES[place]}: {x} + {y}{with_carry} = {total}, write {total % 10}, carry {total // 10}.")
        carry = total // 10
    answer = str(a + b)
    steps.append(f"So {a} + {b} = {answer}.")
    return {"a": a, "b": b, "answer": answer, "rationale": " ".join(steps)}


_PLACES = ("Ones", "Tens", "Hundreds", "Thousands", "Ten thousands", "Hundred thousands")


def last_letters(rng: random.Random, words: int = 2) -> dict:
    """A name of `words` first names; the answer is their last letters, concatenated."""
    names = rng.sample(NAMES, words)
    answer = "".join(n[-1] for n in names)
    steps = [f'The last letter of "{n}" is "{n[-1]}".' for n in names]
    steps.append(f'Concatenating them gives "{answer}".')
    return {"name": " ".join(names), "answer": answer, "rationale": " ".join(steps)}


def reversal(rng: random.Random, length: int = 5) -> dict:
    """A list of `length` small numbers; the answer is the list reversed."""
    items = [rng.randrange(10) for _ in range(length)]
    answer = _list(items[::-1])
    taken = ", ".join(f"{x}" for x in items[::-1])
    rationale = f"Reading the list {_list(items)} from its end gives {taken}. So the reversed list is {answer}."
    return {"list": _list(items), "answer": answer, "rationale": rationale}


def _list(items: list[int]) -> str:
    return "[" + ", ".join(map(str, items)) + "]"


def coin_flip(rng: random.Random, people: int = 4) -> dict:
    """A coin starts heads up; each of `people` flips it or not. The answer: is it still heads up (yes or no)?"""
    names = rng.sample(NAMES, people)
    flips = [rng.random() < 0.5 for _ in names]
    story = " ".join(f"{n} {'flips' if f else 'does not flip'} the coin." for n, f in zip(names, flips, strict=True))
    answer = "yes" if sum(flips) % 2 == 0 else "no"
    rationale = (
        f"The coin was flipped {sum(flips)} time{'s' * (sum(flips) != 1)}, an {'even' if answer == 'yes' else 'odd'}"
        f" number, so it is {'still' if answer == 'yes' else 'no longer'} heads up. The answer is {answer}."
    )
    return {"story": story, "answer": answer, "rationale": rationale}


GENERATORS: dict[str, Callable[[random.Random], dict]] = {
    "addition": addition,
    "last-letters": last_letters,
    "reversal": reversal,
    "coin-flip": coin_flip,
}


def generate_examples(task: str, n: int, seed: int) -> list[dict]:
    """Examples 0 .. n-1 of a generated task; example i depends on (task, seed, i) only."""
    generator = GENERATORS[task]
    return [generator(random.Random(f"{task}/{seed}/{i}")) for i in range(n)]
