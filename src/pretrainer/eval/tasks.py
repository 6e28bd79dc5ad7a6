"""A fine-tuned model on a task split: its predictions, the task's scores, and predictions for new inputs.

`evaluate` is `pretrainer eval RUN --split test`: it loads the run's best checkpoint (else its latest), predicts
every example of the split in order, scores them as the field does for the task's kind (eval/metrics.py), and
writes RUN/eval-SPLIT.json (and a confusion-matrix PNG for classification).
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from pathlib import Path

import torch
from tqdm import tqdm

from ..config import TASK_BUILTINS, Config, TaskConfig
from ..data.tasks import (
    Example,
    TaggingExample,
    Task,
    Text2TextExample,
    encode_task,
    load_mixture,
    load_splits,
    load_task,
)
from ..data.tokenizer import eos_id
from ..errors import CheckpointError, ConfigError, DataError
from ..files import write_atomic
from ..model.generate import generate
from ..train import checkpoint
from .metrics import NO_CLASS, confusion_matrix, plot_confusion, task_scores

_LABELS = ("labels", "start_positions", "end_positions", "targets", "decoder_input_ids", "decoder_padding_mask")
MAX_ANSWER_TOKENS = 30  # the longest answer span considered, as in SQuAD's reference implementation


def load_finetuned(run: str | Path, device: str | torch.device = "cpu"):
    """(model, tokenizer, config, checkpoint folder) of a fine-tuned run: its best checkpoint, else its latest (or
    the checkpoint folder given)."""
    path = Path(run)
    best = path / "checkpoints" / "best"
    ckpt = best if (best / "model.safetensors").is_file() else checkpoint.resolve(path)
    model, tokenizer, config = checkpoint.load(ckpt, device)
    if config.objective.name != "task":
        raise CheckpointError(f"'{run}' is a pretraining run ({config.objective.name}); evaluate a fine-tuned one")
    if tokenizer is None:
        raise CheckpointError(f"'{ckpt}' has no tokenizer.json; predicting needs the model's tokenizer")
    return model, tokenizer, config, ckpt


@torch.no_grad()
def predict_split(
    model, tokenizer, split, task: Task, config: Config, batch_size: int = 32, progress: str = ""
) -> list:
    """The model's prediction for every example of `split` (a TaskSplit), in order: a label id (classification;
    a T5's generated text names one, or is NO_CLASS), a number (regression), a tag name per word (tagging), an
    answer text (qa), or a text (text2text). With `progress`, a progress bar of that title."""
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1 (got {batch_size})")
    device = next(model.parameters()).device
    eos = eos_id(tokenizer)
    predictions = []
    firsts = range(0, split.per_epoch, batch_size)
    for first in tqdm(firsts, desc=progress, unit="batch", leave=False, disable=not progress):
        rows = min(batch_size, split.per_epoch - first)
        batch = {k: v.to(device) for k, v in split.make(first, rows).items() if k not in _LABELS}
        if config.model.arch == "encoder_decoder":
            out = generate(model, batch["input_ids"], config.task.max_target_len, temperature=0,
                           padding_mask=batch["padding_mask"], stop_ids=[eos])  # fmt: skip
            texts = [_text(tokenizer, row[1:], eos) for row in out.tolist()]
            if task.kind != "text2text":  # a class as text: the label it names, or none
                texts = [task.labels.index(t.strip()) if t.strip() in task.labels else NO_CLASS for t in texts]
            predictions += texts
            continue
        logits, _ = model(**batch)
        for row, index in enumerate(split.indices(first, rows)):
            predictions.append(_prediction(task, split, index, logits[row]))
    return predictions


def _prediction(task: Task, split, index: int, logits: torch.Tensor):
    if task.kind == "regression":
        return float(logits)
    if task.kind in ("classification", "pair"):
        return int(logits.argmax())
    if task.kind == "tagging":  # each word's tag is its first piece's, as in training; words cut off get "O"
        firsts = (split.encoded[index]["labels"] != -100).nonzero()[0]
        tags = [task.labels[int(i)] for i in logits[firsts].argmax(-1)]
        return tags + ["O"] * (len(split.examples[index].words) - len(tags))
    start, end = _best_span(logits, split.offsets[index])
    return split.answer_text(index, start, end)


def _best_span(logits: torch.Tensor, offsets) -> tuple[int, int]:
    """The (start, end) of highest start + end logit with start <= end < start + MAX_ANSWER_TOKENS, both in the
    context."""
    in_context = torch.as_tensor(offsets[:, 0] >= 0, device=logits.device)
    start = logits[: len(offsets), 0].masked_fill(~in_context, float("-inf"))
    end = logits[: len(offsets), 1].masked_fill(~in_context, float("-inf"))
    scores = start[:, None] + end[None, :]
    n = len(offsets)
    allowed = torch.ones(n, n, dtype=torch.bool, device=logits.device).triu().tril(MAX_ANSWER_TOKENS - 1)
    best = int(scores.masked_fill(~allowed, float("-inf")).argmax())
    return best // n, best % n


def _text(tokenizer, ids: list[int], eos_id: int) -> str:
    return tokenizer.decode(ids[: ids.index(eos_id)] if eos_id in ids else ids, skip_special_tokens=True)


def references(task: Task, split) -> list:
    """What each example of `split` should be predicted as, in the form `predict_split` gives."""
    kind = task.kind
    if kind in ("classification", "pair"):
        return [task.labels.index(ex.label) for ex in split.examples]
    if kind == "regression":
        return [float(ex.label) for ex in split.examples]
    if kind == "tagging":
        return [list(ex.tags) for ex in split.examples]
    if kind == "qa":
        return [ex.answer for ex in split.examples]
    return [ex.target for ex in split.examples]


def evaluate(run: str | Path, split: str = "test", task_name: str | None = None, device="cpu", batch_size=32) -> dict:
    """Score a fine-tuned run on a split of its task (or of the built-in task `task_name`; for a mixture, of each
    of its tasks, or the one named); writes RUN/eval-SPLIT.json (RUN/eval-SPLIT-TASK.json for a task named, so
    that the run's own scores stay), and RUN/confusion-SPLIT[-TASK].png for classification. Returns the JSON's
    content: for a mixture, each task's under "tasks"."""
    model, tokenizer, config, ckpt = load_finetuned(run, device)
    out = Path(run) if (Path(run) / "checkpoints").is_dir() else ckpt
    if config.task.mixture:
        tasks = load_mixture(config, tokenizer)
        if task_name is not None:
            if task_name not in tasks:
                raise DataError(f"the mixture has no task {task_name}; its tasks are {', '.join(tasks)}")
            tasks = {task_name: tasks[task_name]}
        scored = {name: _score(model, tokenizer, config, task, splits, split, out, batch_size, f"-{name}")
                  for name, (task, splits) in tasks.items()}  # fmt: skip
        result = {"task": "mixture", "split": split, "checkpoint": str(ckpt), "tasks": scored}
    else:
        trained = config.task
        if task_name is not None:  # the built-in task as it is defined: its own kind, labels and prefix
            if task_name not in TASK_BUILTINS:
                raise ConfigError(f"--task {task_name!r} is not a built-in task ({', '.join(TASK_BUILTINS)})")
            config.task = dataclasses.replace(trained, name=task_name, train=None, validation=None, test=None,
                                              columns={}, prefix="", labels=[])  # fmt: skip
        task = load_task(config.task)
        if config.model.arch != "encoder_decoder" and (task.kind, task.labels) != (trained.kind, trained.labels):
            # a head answers in the classes it was fine-tuned for; a text-to-text model writes any answer
            kind = lambda t: f"{t.kind} ({', '.join(t.labels)})" if t.labels else t.kind  # noqa: E731
            raise ConfigError(f"'{run}' has a head for {kind(trained)}, and {task.name} is {kind(task)}; score it with "
                              "a run fine-tuned on it")  # fmt: skip
        task, splits = load_splits(config, tokenizer, task)
        named = f"-{task_name}" if task_name is not None else ""  # the confusion PNG's, as the scores' file
        result = {"checkpoint": str(ckpt), **_score(model, tokenizer, config, task, splits, split, out, batch_size,
                                                     named)}  # fmt: skip
    write_atomic(scores_file(out, split, task_name), json.dumps(result, indent=1) + "\n")
    return result


def scores_file(run: str | Path, split: str, task_name: str | None = None) -> Path:
    """Where `evaluate` writes a run's scores: RUN/eval-SPLIT.json, RUN/eval-SPLIT-TASK.json for a task named."""
    return Path(run) / f"eval-{split}{f'-{task_name}' if task_name is not None else ''}.json"


def _score(model, tokenizer, config: Config, task: Task, splits: dict, split: str, out: Path, batch_size: int,
           suffix: str = "") -> dict:  # fmt: skip
    """One task's scores on one split, and its confusion-matrix PNG (classification) in `out`."""
    if split not in splits:
        raise DataError(f"the task {task.name} has no {split} split (it has {', '.join(splits)}); pick one of those")
    data = splits[split]
    predictions = predict_split(model, tokenizer, data, task, config, batch_size, progress=f"{task.name} {split}")
    refs = references(task, data)
    result = {
        "task": task.name,
        "kind": task.kind,
        "split": split,
        "examples": data.per_epoch,
        "truncated": data.truncated,
        "scores": task_scores(task.kind, refs, predictions, n_labels=len(task.labels) or None),
    }
    if task.kind in ("classification", "pair"):
        if config.model.arch == "encoder_decoder":
            result["no_class"] = predictions.count(NO_CLASS)  # generated texts that name no label: wrong
        matrix = confusion_matrix(refs, predictions, len(task.labels))
        plot_confusion(matrix, task.labels, out / f"confusion-{split}{suffix}.png")
        result["confusion"] = matrix.tolist()
    return result


BASELINES = {"majority": ("classification", "pair"), "first-line": ("text2text",)}


def baseline(name: str, task_name: str, split: str = "test") -> dict:
    """The score of a model-free answer on a split of a built-in task, the floor a fine-tuned model must clear:
    `majority` answers every example with the training split's most common class; `first-line` answers a
    text-to-text task with the first line of its input (for code-docstrings, the function's `def` line)."""
    if name not in BASELINES:
        raise ConfigError(f"--baseline {name} is not one of {', '.join(BASELINES)}")
    task = load_task(TaskConfig(name=task_name))
    if task.kind not in BASELINES[name]:
        raise ConfigError(
            f"the {name} baseline is for {' and '.join(BASELINES[name])} tasks; {task_name} is {task.kind}"
        )
    if split not in task.splits:
        raise DataError(
            f"the task {task.name} has no {split} split (it has {', '.join(task.splits)}); pick one of those"
        )
    examples = task.splits[split]
    if name == "majority":
        common = Counter(ex.label for ex in task.splits["train"]).most_common(1)[0][0]
        refs = [task.labels.index(ex.label) for ex in examples]
        predictions, answer = [task.labels.index(common)] * len(examples), common
    else:
        refs = [ex.target for ex in examples]
        predictions, answer = [ex.input.strip().splitlines()[0] for ex in examples], "the input's first line"
    scores = task_scores(task.kind, refs, predictions, n_labels=len(task.labels) or None)
    return {"task": task.name, "kind": task.kind, "split": split, "examples": len(examples), "baseline": name,
            "answer": answer, "scores": scores}  # fmt: skip


def predict(run: str | Path, inputs: list, device="cpu", batch_size: int = 32) -> list:
    """Predictions of a fine-tuned run for new inputs: texts (classification, regression, text2text), (text_a,
    text_b) pairs, or word lists (tagging); label names, numbers, texts or tag lists back (a text alone is a list of
    one). A mixture's inputs start with their task's prefix ("code-docstrings: def f(x): ...")."""
    model, tokenizer, config, _ = load_finetuned(run, device)
    if isinstance(inputs, str):
        inputs = [inputs]
    if not inputs:
        return []
    kind, labels = config.task.kind, config.task.labels
    placeholder = labels[0] if labels else 0.0  # new inputs have no label; encoding wants one, prediction not
    if kind == "qa":
        raise DataError("predict takes texts, pairs or word lists; for extractive QA, evaluate a split")
    if kind == "text2text":
        examples = [Text2TextExample(text, "") for text in inputs]
    elif kind == "tagging":
        examples = [TaggingExample(list(words), [placeholder] * len(words)) for words in inputs]
    else:
        examples = [Example(x, placeholder) if isinstance(x, str) else Example(x[0], placeholder, x[1]) for x in inputs]
    task = Task("new", kind, {"test": examples}, labels, prefix=config.task.prefix)
    split = encode_task(task, tokenizer, config.model.arch, config.task.max_len, config.task.max_target_len,
                        config.model.decoder_start_id, seed=None)["test"]  # fmt: skip
    predictions = predict_split(model, tokenizer, split, task, config, batch_size)
    if kind in ("classification", "pair"):  # a T5's text that names no label is None
        return [None if p == NO_CLASS else labels[p] for p in predictions]
    return predictions
