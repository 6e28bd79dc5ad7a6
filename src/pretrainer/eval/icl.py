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

import random
import re
import string
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from ..data.reasoning import generate_examples
from ..data.sources import read_jsonl, read_text
from ..data.tasks import builtin_task
from ..data.tokenizer import eos_id
from ..errors import CheckpointError, ConfigError, DataError
from ..model.generate import check_language_model, generate_texts, prefill
from ..model.ops import inference_linears


@dataclass
class PromptTask:
    """How to ask a task's examples (dicts of fields: the gold answer under `target`, optionally a "rationale")
    as text."""

    name: str
    description: str  # the prompt's first line: what to do
    question: str  # template over an example's fields: "Q: What is {a} + {b}?"
    answer: str = "A: {answer}"  # a demonstration's answer; the query's prompt ends with its text before the field
    rationale: str = "A: {rationale}"  # a chain-of-thought demonstration's answer: the steps, ending in the answer
    extract: str = r"(.+)"  # regex; the answer is group 1 of its last match in a generated text
    choices: tuple[str, ...] = ()  # multiple choice: the answers to score; empty: free-form
    target: str = "answer"  # the field that holds an example's gold answer

    def __post_init__(self):
        self.choices = tuple(map(str, self.choices))
        if len(self.choices) == 1:
            raise ConfigError(f"task {self.name} has one choice ({self.choices[0]!r}); give two or more, or none")
        if len(set(self.choices)) < len(self.choices):
            raise ConfigError(f"task {self.name} lists a choice twice ({', '.join(self.choices)})")
        try:
            groups = re.compile(self.extract).groups
        except re.error as e:
            raise ConfigError(f"task {self.name}: extract={self.extract!r} is not a regular expression ({e})") from None
        if groups < 1:
            raise ConfigError(f"task {self.name}: extract={self.extract!r} needs a group, (...), around the answer")
        if self.target not in template_fields(self.answer):
            raise ConfigError(
                f"task {self.name}: the answer template {self.answer!r} does not show the answer; put "
                f"{{{self.target}}} in it"
            )

    def opening(self, cot: bool = False) -> str:
        """What the query's prompt ends with: its answer template's text before the first field ("A:")."""
        template = self.rationale if cot else self.answer
        return template[: template.index("{")].rstrip() if "{" in template else template

    def continuation(self, query: dict, choice: str) -> str:
        """The text that follows the opening when `choice` is the answer (" negative" after "Sentiment:")."""
        return fill(self.answer, {**query, self.target: choice})[len(self.opening()) :]

    def gold(self, example: dict) -> str:
        return str(example[self.target])


def template_fields(template: str) -> list[str]:
    """The names of the {fields} a template fills in; a malformed or unnamed one is an error."""
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as e:  # "{question" and the like
        raise ConfigError(f"the template {template!r} is malformed ({e}); write a field as {{name}}, a brace as "
                          "{{ or }}") from None  # fmt: skip
    if any(name == "" or name.isdigit() for name in names):
        raise ConfigError(f"the template {template!r} has a field without a name; name it after the examples' "
                          "fields, as {question}")  # fmt: skip
    return names


def fill(template: str, example: dict) -> str:
    """The template with the example's fields; a field the example lacks is an error naming those it has."""
    missing = [name for name in template_fields(template) if name not in example]
    if missing:
        raise DataError(
            f"the template {template!r} asks for {', '.join(missing)}, which the examples lack; their fields are "
            f"{', '.join(sorted(example))}"
        )
    return template.format_map(example)


def demonstrations(task: PromptTask, pool: list[dict], k: int, seed: int, query: dict) -> list[dict]:
    """k examples of `pool` for `query`, drawn from `seed` alone, so that every query of a seed shares them (and the
    prompts their prefix); an example that asks the query's own question is never one of them: the next draw
    stands in."""
    asked = fill(task.question, query)
    drawn: list[dict] = []
    for size in (min(len(pool), 2 * k + 8), len(pool)):  # a few spare draws suffice unless the query fills the pool
        order = random.Random(f"demonstrations/{seed}").sample(range(len(pool)), size)
        drawn = [pool[i] for i in order if fill(task.question, pool[i]) != asked][:k]
        if len(drawn) == k:
            return drawn
    raise DataError(
        f"{k} demonstrations asked for, but the pool has {len(drawn)} (the query is never one of its own); lower k "
        "or give a larger pool"
    )


def build_prompt(task: PromptTask, demos: list[dict], query: dict, cot: bool = False, trigger: str = "") -> str:
    """Description, demonstrations (with rationales if `cot`), then the query's question and the answer's opening
    (followed by `trigger`, such as "Let's think step by step.", when given)."""
    answer = task.rationale if cot else task.answer
    blocks = [task.description] if task.description else []
    blocks += [f"{fill(task.question, d)}\n{fill(answer, d)}" for d in demos]
    opening = task.opening(cot) + (" " + trigger if trigger else "")
    blocks.append(f"{fill(task.question, query)}\n{opening}")
    return "\n\n".join(blocks)


def fit_prompt(task: PromptTask, demos: list[dict], query: dict, count, limit: int, cot: bool = False,
               trigger: str = "") -> tuple[str, int]:  # fmt: skip
    """The prompt with as many of `demos` as fit in `limit` tokens (`count` counts a text's tokens), dropping the
    last first, and how many were dropped. The query is never cut: a prompt too long without any demonstration
    is an error."""
    for dropped in range(len(demos) + 1):
        prompt = build_prompt(task, demos[: len(demos) - dropped], query, cot, trigger)
        if count(prompt) <= limit:
            return prompt, dropped
    raise DataError(
        f"a prompt of task {task.name} is {count(prompt)} tokens without any demonstration, more than the {limit} "
        "the model leaves for it; shorten the description or the question template, or use a model with longer "
        "context (the query is never cut)"
    )


def extract_answer(task: PromptTask, text: str) -> str | None:
    """Group 1 of the last match of task.extract in `text`, stripped; None when nothing matches."""
    matches = list(re.finditer(task.extract, text))
    return matches[-1].group(1).strip() if matches else None


def same_answer(answer: str | None, gold: str) -> bool:
    """An extracted answer is right when it equals the gold one up to case and runs of white space."""
    return answer is not None and " ".join(answer.split()).casefold() == " ".join(gold.split()).casefold()


def majority_vote(answers: list[str | None]) -> tuple[str | None, dict[str, int]]:
    """Self-consistency's answer: the commonest of the sampled paths' answers (None, where nothing was extracted,
    never wins); a tie goes to the answer reached first. Returns it and the counts."""
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return None, {}
    best = max(counts.values())
    return next(a for a in answers if a is not None and counts[a] == best), dict(counts)


# ---------------------------------------------------------------------------------------------------------------
# Tasks: built in, or a YAML file over JSONL data

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
TWEETS = PromptTask(
    "tweets-sentiment",
    "Say whether each tweet is negative, neutral or positive.",
    "Tweet: {text}",
    answer="Sentiment: {label}",
    extract=r"\b(negative|neutral|positive)\b",
    choices=("negative", "neutral", "positive"),
    target="label",
)
BUILTIN_TASKS = (*REASONING, TWEETS.name)
GENERATED_POOL = 1000  # demonstrations of a generated task come from this many examples of their own seed


@dataclass
class PromptData:
    """A prompt task with its queries (what is asked and scored) and its pool (what demonstrations come from)."""

    task: PromptTask
    queries: list[dict]
    pool: list[dict]
    source: str  # where they come from, for the results


TASK_KEYS = ("name", "description", "question", "answer", "rationale", "extract", "choices", "target", "data", "pool")


def load_prompt_task(spec: str, limit: int | None = None, seed: int = 0) -> PromptData:
    """A built-in task by name (the generated reasoning tasks; tweets-sentiment: test-split queries,
    training-split pool) or a task YAML file. With `limit`, a seeded random sample of that many queries (never the
    first ones in file order: a file may be grouped by label)."""
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be at least 1 (got {limit}); leave it out to ask every query")
    if spec in REASONING:
        n = limit or 200
        queries = generate_examples(spec, n, seed=0)
        pool = generate_examples(spec, GENERATED_POOL, seed=1)
        return PromptData(REASONING[spec], queries, pool, f"generated: {n} queries (seed 0), pool of {len(pool)}")
    if spec == TWEETS.name:
        folder = builtin_task(spec)
        data = PromptData(TWEETS, read_jsonl_file(folder / "test.jsonl"), read_jsonl_file(folder / "train.jsonl"),
                          f"{folder}: test split queries, training split pool")  # fmt: skip
    else:
        data = _task_file(spec)
    if limit is not None and limit < len(data.queries):
        data.queries = random.Random(f"queries/{seed}").sample(data.queries, limit)
        data.source += f"; {limit} queries sampled (seed {seed})"
    for example in data.queries[:1] + data.pool[:1]:  # a template field the data lacks: said before any model runs
        fill(data.task.question, example), fill(data.task.answer, example), data.task.gold(example)
    return data


def _task_file(spec: str) -> PromptData:
    path = Path(spec)
    if path.suffix not in (".yaml", ".yml"):
        raise ConfigError(
            f"no prompt task {spec!r}: give a task YAML file or a built-in task ({', '.join(BUILTIN_TASKS)})"
        )
    if not path.is_file():
        raise ConfigError(f"task file '{path}' not found")
    try:
        spec_dict = yaml.safe_load(read_text(path))
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(spec_dict, dict):
        raise ConfigError(f"{path}: a task file is a mapping of {', '.join(TASK_KEYS)}")
    unknown = sorted(set(spec_dict) - set(TASK_KEYS))
    if unknown:
        raise ConfigError(f"{path}: unknown key {', '.join(unknown)}; a task file has {', '.join(TASK_KEYS)}")
    for key in ("question", "data"):
        if key not in spec_dict:
            raise ConfigError(f"{path}: {key} is missing; a task file needs question (a template) and data (JSONL)")
    if any(isinstance(c, bool) for c in spec_dict.get("choices", [])):
        raise ConfigError(f"{path}: YAML reads unquoted yes, no, on and off as true and false: quote the choices, "
                          "as in choices: ['yes', 'no']")  # fmt: skip
    fields = {k: v for k, v in spec_dict.items() if k not in ("data", "pool")}
    fields.setdefault("name", path.stem)
    fields.setdefault("description", "")
    try:
        task = PromptTask(**{k: tuple(v) if k == "choices" else v for k, v in fields.items()})
    except TypeError as e:
        raise ConfigError(f"{path}: {e}") from None
    queries = _examples(path.parent / spec_dict["data"], task, "data")
    pool = _examples(path.parent / spec_dict["pool"], task, "pool") if "pool" in spec_dict else queries
    where = f"{path}: queries from {spec_dict['data']}, pool from {spec_dict.get('pool', spec_dict['data'])}"
    return PromptData(task, queries, pool, where)


def _examples(path: Path, task: PromptTask, key: str) -> list[dict]:
    """The examples of a task file's `key` (data or pool), a .jsonl beside it."""
    if path.suffix != ".jsonl":
        raise DataError(f"task {task.name}: {key} '{path}' is not a .jsonl file; give one JSON object per line")
    if not path.is_file():
        raise DataError(f"task {task.name}: {key} file '{path}' not found")
    rows = read_jsonl_file(path)
    if not rows:
        raise DataError(f"task {task.name}: '{path}' holds no examples")
    if task.choices:
        stray = sorted({task.gold(r) for r in rows if task.target in r} - set(task.choices))
        if stray:
            raise DataError(
                f"task {task.name}: {path} has answers that are not among the choices ({', '.join(stray[:5])}); "
                f"the choices are {', '.join(task.choices)}"
            )
    return rows


def read_jsonl_file(path: Path) -> list[dict]:
    return [record for _, record in read_jsonl(path)]


# ---------------------------------------------------------------------------------------------------------------
# Scoring by log-likelihood


def split_tokens(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """The token ids of `context` and of `continuation` after it, as the tokenizer cuts the two joined (a word's
    pieces can differ at the seam); a space that ends the context goes with the continuation, as lm-eval does."""
    spaces = len(context) - len(context.rstrip(" "))
    context, continuation = context[: len(context) - spaces], " " * spaces + continuation
    whole = tokenizer.encode(context + continuation, add_special_tokens=False).ids
    n = len(tokenizer.encode(context, add_special_tokens=False).ids)
    return whole[:n], whole[n:]


def prompting_model(model, tokenizer, source: str, device: str = "auto", precision: str = "fp32"):
    """`model` ready to be prompted (checked to be a language model with a tokenizer), on `device` (auto: CUDA
    when there is one), in `precision` (fp32 | bf16), in eval mode."""
    from ..train.trainer import resolve_device

    check_language_model(model)
    if tokenizer is None:
        raise CheckpointError(f"'{source}' has no tokenizer.json; prompting needs the model's tokenizer")
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    if precision not in dtypes:
        raise ConfigError(f"precision {precision!r} is not one of {', '.join(dtypes)}")
    return model.to(device=resolve_device(device, "--device"), dtype=dtypes[precision]).eval()


@torch.no_grad()
def continuation_logprobs(model, tokenizer, requests: list[tuple[str, str]], batch_size: int = 16) -> list[tuple]:
    """For each (context, continuation): the log-probability of the continuation's tokens after the context,
    and whether every one of them is also the model's most likely next token (lm-eval's `loglikelihood`). An empty
    context is the end-of-text token, as lm-eval's own models read it. See `token_logprobs`."""
    check_language_model(model)
    if model.config.arch == "encoder_decoder":
        return _seq2seq_logprobs(model, tokenizer, requests, batch_size)
    pairs = []
    for context, continuation in requests:
        ctx, cont = split_tokens(tokenizer, context, continuation)
        if not cont:
            raise DataError(f"the continuation {continuation!r} has no tokens; give it some text to score")
        pairs.append((ctx or [eos_id(tokenizer)], cont))
    return token_logprobs(model, pairs, batch_size)


@torch.no_grad()
def token_logprobs(model, pairs: list[tuple[list[int], list[int]]], batch_size: int = 16) -> list[tuple]:
    """`continuation_logprobs` on token ids, for a decoder. It runs `batch_size` distinct token rows at a time
    (requests whose context plus continuation, bar its last token, are the same share a row: the choices of one
    prompt, when each is one token); the rows' common prefix, the demonstrations of few-shot prompts, is computed
    once (`prefill`), and the head runs only from the first position scored."""
    device = next(model.parameters()).device
    for ctx, cont in pairs:  # a row reads all but the last token
        _check_lengths(ctx, cont, len(ctx) + len(cont) - 1, model.config.max_seq_len)
    rows: dict[tuple[int, ...], list[int]] = {}  # a distinct input row -> the requests it serves
    for i, (ctx, cont) in enumerate(pairs):
        rows.setdefault(tuple(ctx + cont[:-1]), []).append(i)
    ordered = sorted(rows)  # neighbours share the longest prefixes
    out: list[tuple] = [()] * len(pairs)
    with inference_linears(model):
        for first in range(0, len(ordered), batch_size):
            chunk = ordered[first : first + batch_size]
            inputs = torch.zeros(len(chunk), max(map(len, chunk)), dtype=torch.long)
            for row, ids in enumerate(chunk):
                inputs[row, : len(ids)] = torch.tensor(ids)
            scored_from = min(len(pairs[i][0]) for ids in chunk for i in rows[ids]) - 1  # the first position scored
            time = inputs.shape[1]
            logits, _ = prefill(model, inputs.to(device), time, time - scored_from, shared_limit=scored_from)
            logprobs = logits.float().log_softmax(-1).cpu()
            for row, ids in enumerate(chunk):
                for i in rows[ids]:
                    ctx, cont = pairs[i]
                    at = torch.arange(len(ctx) - 1, len(ctx) + len(cont) - 1) - scored_from  # those that predict cont
                    out[i] = _summed(logprobs[row, at], cont)
    return out


def _check_lengths(ctx: list[int], cont: list[int], tokens: int, positions: int) -> None:
    """Refuse an empty context or continuation, and `tokens` (what the model reads) beyond its `positions`."""
    if not ctx or not cont:
        raise DataError(f"the {'context' if not ctx else 'continuation'} has no tokens; give it some text")
    if tokens > positions:
        raise DataError(
            f"a prompt and its continuation are {len(ctx) + len(cont)} tokens, more than the model's "
            f"{positions} positions; shorten the prompt (fewer demonstrations)"
        )


def _summed(logprobs: torch.Tensor, cont: list[int]) -> tuple[float, bool]:
    target = torch.tensor(cont)
    return float(logprobs[torch.arange(len(cont)), target].sum()), bool((logprobs.argmax(-1) == target).all())


def _seq2seq_logprobs(model, tokenizer, requests: list[tuple[str, str]], batch_size: int) -> list[tuple]:
    device = next(model.parameters()).device
    # each context's ids, with the tokenizer's </s>, as training saw inputs
    sources = {c: tokenizer.encode(c).ids for c in dict.fromkeys(c for c, _ in requests)}
    targets = [tokenizer.encode(x.lstrip(), add_special_tokens=False).ids for _, x in requests]
    for (context, _), target in zip(requests, targets, strict=True):
        source = sources[context]
        _check_lengths(source, target, max(len(source), len(target)), model.config.max_seq_len)
    out = []
    with inference_linears(model):
        for first in range(0, len(requests), batch_size):
            chunk = range(first, min(first + batch_size, len(requests)))
            chunk_contexts = list(dict.fromkeys(requests[i][0] for i in chunk))
            source = [sources[c] for c in chunk_contexts]
            input_ids, padding_mask = _padded(source, device)
            memory = model.encode(input_ids, padding_mask)  # once per context, whatever its number of choices
            rows = [chunk_contexts.index(requests[i][0]) for i in chunk]
            decoder_input_ids, _ = _padded([[model.config.decoder_start_id, *targets[i][:-1]] for i in chunk], device)
            logits, _ = model(None, decoder_input_ids, memory=memory[rows], padding_mask=padding_mask[rows])
            logprobs = logits.float().log_softmax(-1).cpu()
            for row, i in enumerate(chunk):
                out.append(_summed(logprobs[row, : len(targets[i])], targets[i]))
    return out


def _padded(rows: list[list[int]], device) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.zeros(len(rows), max(map(len, rows)), dtype=torch.long)
    for r, row in enumerate(rows):
        ids[r, : len(row)] = torch.tensor(row)
    return ids.to(device), (torch.arange(ids.shape[1]) < torch.tensor([len(r) for r in rows])[:, None]).to(device)


def choose(logprobs: list[float], choices: list[str]) -> tuple[int, int]:
    """The index of the likeliest choice (`acc`), and of the likeliest per character of the choice, so that long
    choices are not penalised for their length (`acc_norm`, as lm-eval normalises)."""
    best = max(range(len(choices)), key=lambda i: logprobs[i])
    best_per_char = max(range(len(choices)), key=lambda i: logprobs[i] / max(1, len(choices[i])))
    return best, best_per_char


# ---------------------------------------------------------------------------------------------------------------
# Answers by generation

STEP_BY_STEP = "Let's think step by step."
THEREFORE = "Therefore, the answer is"


def answers_by_generation(model, tokenizer, task: PromptTask, prompts: list[str], max_new_tokens: int = 64,
                          stop: tuple[str, ...] = ("\n\n",), batch_size: int = 16, **sampling):  # fmt: skip
    """Each prompt's continuation (up to a stop string) and the answer extracted from it."""
    texts = generate_texts(model, tokenizer, prompts, max_new_tokens, stop, batch_size, **sampling)
    return [{"text": text, "answer": extract_answer(task, text)} for text in texts]


def zero_shot_cot(model, tokenizer, task: PromptTask, prompts: list[str], max_new_tokens: int = 128,
                  batch_size: int = 16, **sampling) -> list[dict]:  # fmt: skip
    """Kojima et al. (2022), in two stages: each prompt (ending in "A: Let's think step by step.", see
    `build_prompt`'s trigger) and the model's reasoning after it; then all of that, "Therefore, the answer is" and
    a short greedy answer, which is extracted."""
    reasonings = generate_texts(model, tokenizer, prompts, max_new_tokens, ("\n\n",), batch_size, **sampling)
    answer_prompts = [f"{p}{r}\n{THEREFORE}" for p, r in zip(prompts, reasonings, strict=True)]
    short = answers_by_generation(model, tokenizer, task, answer_prompts, 16, ("\n",), batch_size, temperature=0)
    return [
        {"reasoning": r, "answer_prompt": p, **s} for r, p, s in zip(reasonings, answer_prompts, short, strict=True)
    ]


def self_consistency(answer, prompts: list[str], paths: int) -> list[dict]:
    """Wang et al. (2023): for each prompt, `paths` sampled reasoning paths (`answer`, a function from prompts to
    dicts with an "answer", called once on every prompt repeated `paths` times, so a prompt's paths share its
    prefix), and their majority vote (`majority_vote`) with its counts."""
    if paths < 1:
        raise ConfigError(f"self-consistency needs at least one sampled path (got {paths})")
    sampled = answer([p for p in prompts for _ in range(paths)])
    voted = []
    for i in range(len(prompts)):
        group = sampled[i * paths : (i + 1) * paths]
        vote, counts = majority_vote([g["answer"] for g in group])
        voted.append({"answer": vote, "counts": counts, "paths": group})
    return voted
