"""In-context learning without weight updates: prompt tasks, prompts of k demonstrations, answer extraction and
the majority vote of self-consistency. (Scoring prompts with a model comes next; this is what it builds on.)

A prompt is the task's description, k demonstrations (question and answer; with chain of thought, question and
rationale, which ends in the answer), then the query's question and the opening of its answer:

    Add the two numbers.

    Q: What is 12 + 30?
    A: 42

    Q: What is 7 + 5?
    A:
"""

from __future__ import annotations

import random
import re
import string
from collections import Counter
from dataclasses import dataclass

from ..data.reasoning import generate_examples
from ..errors import ConfigError, DataError


@dataclass
class PromptTask:
    """How to ask a task's examples (dicts of fields, with "answer" and optionally "rationale") as text."""

    name: str
    description: str  # the prompt's first line: what to do
    question: str  # template over an example's fields: "Q: What is {a} + {b}?"
    answer: str = "A: {answer}"  # a demonstration's answer; the query's prompt ends with its text before the field
    rationale: str = "A: {rationale}"  # a chain-of-thought demonstration's answer: the steps, ending in the answer
    extract: str = r"(.+)"  # regex; the answer is group 1 of its last match in a generated text
    choices: tuple[str, ...] = ()  # multiple choice: the answers to score; empty: free-form

    def __post_init__(self):
        if len(self.choices) == 1:
            raise ConfigError(f"task {self.name} has one choice ({self.choices[0]!r}); give two or more, or none")
        if re.compile(self.extract).groups < 1:
            raise ConfigError(f"task {self.name}: extract={self.extract!r} needs a group, (...), around the answer")


def fill(template: str, example: dict) -> str:
    """The template with the example's fields; a field the example lacks is an error naming those it has."""
    wanted = [name for _, name, _, _ in string.Formatter().parse(template) if name]
    missing = [name for name in wanted if name not in example]
    if missing:
        raise DataError(
            f"the template {template!r} asks for {', '.join(missing)}, which the examples lack; their fields are "
            f"{', '.join(sorted(example))}"
        )
    return template.format_map(example)


def demonstrations(pool: int, k: int, seed: int, query: int | None = None) -> list[int]:
    """k indices of a pool of `pool` examples, drawn from (seed, query); `query` (an index of the same pool, when
    the query comes from it) is never among them."""
    candidates = [i for i in range(pool) if i != query]
    if k > len(candidates):
        raise DataError(
            f"{k} demonstrations asked for, but the pool has {len(candidates)} (the query is never one of its own);"
            " lower k or give a larger pool"
        )
    return random.Random(f"{seed}/{query}").sample(candidates, k)


def build_prompt(task: PromptTask, demos: list[dict], query: dict, cot: bool = False) -> str:
    """Description, demonstrations (with rationales if `cot`), then the query's question and answer opening."""
    answer = task.rationale if cot else task.answer
    blocks = [task.description] if task.description else []
    blocks += [f"{fill(task.question, d)}\n{fill(answer, d)}" for d in demos]
    opening = answer[: answer.index("{")].rstrip() if "{" in answer else answer
    blocks.append(f"{fill(task.question, query)}\n{opening}")
    return "\n\n".join(blocks)


def extract_answer(task: PromptTask, text: str) -> str | None:
    """Group 1 of the last match of task.extract in `text`, stripped; None when nothing matches."""
    matches = list(re.finditer(task.extract, text))
    return matches[-1].group(1).strip() if matches else None


def majority_vote(answers: list[str | None]) -> tuple[str | None, dict[str, int]]:
    """Self-consistency's answer: the commonest of the sampled paths' answers (None, where nothing was extracted,
    never wins); a tie goes to the answer reached first. Returns it and the counts."""
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return None, {}
    best = max(counts.values())
    return next(a for a in answers if a is not None and counts[a] == best), dict(counts)


REASONING = {
    "addition": PromptTask(
        "addition", "Add the two numbers.", "Q: What is {a} + {b}?", extract=r"(\d+)"
    ),
    "last-letters": PromptTask(
        "last-letters",
        "Take the last letter of each word and concatenate them.",
        'Q: Take the last letters of the words in "{name}" and concatenate them.',
        extract=r'"?\b([a-z]+)\b"?',
    ),
    "reversal": PromptTask(
        "reversal", "Reverse the list.", "Q: Reverse the list {list}.", extract=r"(\[[\d, ]*\])"
    ),
    "coin-flip": PromptTask(
        "coin-flip",
        "Say whether the coin is still heads up.",
        "Q: A coin is heads up. {story} Is the coin still heads up?",
        extract=r"\b(yes|no)\b",
        choices=("yes", "no"),
    ),
}  # fmt: skip


def reasoning_task(name: str, n: int, seed: int = 0) -> tuple[PromptTask, list[dict]]:
    """A built-in generated task and n of its examples."""
    if name not in REASONING:
        raise DataError(f"no generated task {name!r}; built in: {', '.join(REASONING)}")
    return REASONING[name], generate_examples(name, n, seed)
