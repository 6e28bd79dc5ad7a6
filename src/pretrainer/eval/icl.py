"""In-context learning without weight updates: prompt tasks, prompts of k demonstrations, answer extraction, the
majority vote of self-consistency, and a decoder's log-likelihood of each choice after a prompt.

A prompt is the task's description, k demonstrations (question and answer; with chain of thought, question and
rationale, which ends in the answer), then the query's question and the opening of its answer:

    Add the two numbers.

    Q: What is 12 + 30?
    A: 42

    Q: What is 7 + 5?
    A:
"""

from __future__ import annotations

import dataclasses
import random
import re
import string
from collections import Counter
from dataclasses import dataclass

import torch

from ..data.reasoning import generate_examples
from ..errors import ConfigError, DataError
from ..model.generate import generate_text


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


def split_tokens(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """The token ids of `context` and of `continuation` after it, as the tokenizer cuts the two joined (a word's
    pieces can differ at the seam); a space that ends the context goes with the continuation, as lm-eval does."""
    spaces = len(context) - len(context.rstrip(" "))
    context, continuation = context[: len(context) - spaces], " " * spaces + continuation
    whole = tokenizer.encode(context + continuation, add_special_tokens=False).ids
    n = len(tokenizer.encode(context, add_special_tokens=False).ids)
    return whole[:n], whole[n:]


@torch.no_grad()
def continuation_logprobs(model, tokenizer, requests: list[tuple[str, str]], batch_size: int = 16) -> list[tuple]:
    """For each (context, continuation): the decoder's log-probability of the continuation's tokens after the
    context's, and whether every one of them is also its most likely next token (lm-eval's `loglikelihood`).
    Batched with padding on the right, which a causal model's real positions never see."""
    if model.config.arch != "decoder" or model.config.head != "lm":
        raise ConfigError(f"scoring continuations takes a decoder-only language model, not a {model.config.arch}")
    device = next(model.parameters()).device
    pairs = [split_tokens(tokenizer, c, x) for c, x in requests]
    limit = model.config.max_seq_len
    for (_, continuation), (ctx, cont) in zip(requests, pairs, strict=True):
        if not ctx or not cont:
            empty = "context" if not ctx else f"continuation {continuation!r}"
            raise DataError(f"the {empty} has no tokens; a continuation is scored after a non-empty context")
        if len(ctx) + len(cont) > limit + 1:  # the last token is only predicted, never fed
            raise DataError(
                f"a prompt and its continuation are {len(ctx) + len(cont)} tokens, more than the model's "
                f"{limit} positions; shorten the prompt (fewer demonstrations)"
            )
    out = []
    for first in range(0, len(pairs), batch_size):
        chunk = [ctx + cont for ctx, cont in pairs[first : first + batch_size]]
        inputs = torch.zeros(len(chunk), max(map(len, chunk)) - 1, dtype=torch.long)
        for row, ids in enumerate(chunk):
            inputs[row, : len(ids) - 1] = torch.tensor(ids[:-1])
        logprobs = model(inputs.to(device))[0].float().log_softmax(-1).cpu()
        for row, (ctx, cont) in enumerate(pairs[first : first + batch_size]):
            at = torch.arange(len(ctx) - 1, len(ctx) + len(cont) - 1)  # the positions that predict cont
            scores = logprobs[row, at]
            target = torch.tensor(cont)
            out.append(
                (float(scores[torch.arange(len(cont)), target].sum()), bool((scores.argmax(-1) == target).all()))
            )
    return out


def choose(logprobs: list[float], choices: list[str]) -> tuple[int, int]:
    """The index of the likeliest choice (`acc`), and of the likeliest per character of the choice, so that long
    choices are not penalised for their length (`acc_norm`, as lm-eval normalises)."""
    best = max(range(len(choices)), key=lambda i: logprobs[i])
    best_per_char = max(range(len(choices)), key=lambda i: logprobs[i] / max(1, len(choices[i])))
    return best, best_per_char


STEP_BY_STEP = "Let's think step by step."
THEREFORE = "Therefore, the answer is"


def answer_by_generation(model, tokenizer, task: PromptTask, prompt: str, max_new_tokens: int = 64,
                         stop: tuple[str, ...] = ("\n\n",), **sampling) -> dict:  # fmt: skip
    """The model's text after `prompt` (up to a stop string) and the answer extracted from it."""
    text = generate_text(model, tokenizer, prompt, max_new_tokens, stop, **sampling)
    return {"text": text, "answer": extract_answer(task, text)}


def zero_shot_cot(model, tokenizer, task: PromptTask, query: dict, max_new_tokens: int = 128, **sampling) -> dict:
    """Kojima et al. (2022), in two stages: the question with "A: Let's think step by step." and the model's
    reasoning after it; then all of that, "Therefore, the answer is" and a short answer, which is extracted."""
    ask = dataclasses.replace(task, answer="A: " + STEP_BY_STEP + " {answer}")
    reasoning_prompt = build_prompt(ask, [], query)
    reasoning = generate_text(model, tokenizer, reasoning_prompt, max_new_tokens, ("\n\n",), **sampling)
    answer_prompt = f"{reasoning_prompt}{reasoning}\n{THEREFORE}"
    short = answer_by_generation(model, tokenizer, task, answer_prompt, 16, ("\n",), **sampling)
    return {"reasoning_prompt": reasoning_prompt, "reasoning": reasoning, "answer_prompt": answer_prompt, **short}


def self_consistency(model, tokenizer, task: PromptTask, prompt: str, paths: int, temperature: float = 0.7,
                     seed: int = 0, max_new_tokens: int = 128, **sampling) -> dict:  # fmt: skip
    """Wang et al. (2023): `paths` reasoning paths sampled at `temperature` (path i with seed + i), each one's
    answer extracted, and their majority vote (`majority_vote`)."""
    if paths < 1:
        raise ConfigError(f"self-consistency needs at least one sampled path (got {paths})")
    if not temperature > 0:
        raise ConfigError(f"self-consistency samples: give a temperature above 0 (got {temperature}); 0 is greedy")
    sampled = [
        answer_by_generation(model, tokenizer, task, prompt, max_new_tokens, temperature=temperature, seed=seed + i,
                             **sampling)
        for i in range(paths)
    ]  # fmt: skip
    answer, counts = majority_vote([p["answer"] for p in sampled])
    return {"answer": answer, "counts": counts, "paths": sampled}
