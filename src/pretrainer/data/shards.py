"""Token shards: the corpus tokenized once into flat uint16/uint32 files, and a deterministic sampler.

DATA_DIR/NAME/ holds train.bin, val.bin, tokenizer.json and manifest.json. The manifest records what
the shards were made from; asked again for the same inputs, `prepare` does no work.
"""

from __future__ import annotations

import hashlib
import json
import queue
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from ..config import DataConfig
from ..files import atomic_file, write_atomic
from .sources import Corpus, DataError, cache_dir, load_corpus
from .tokenizer import ROBERTA_SPECIALS, eos_id, gpt2, load_tokenizer, train_bpe, train_unigram, train_wordpiece

MANIFEST_VERSION = 1


@dataclass
class Shards:
    dir: Path
    tokenizer: Tokenizer
    manifest: dict
    reused: bool  # True when nothing had to be done

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.manifest["dtype"])

    def tokens(self, split: str) -> np.memmap:
        return np.memmap(self.dir / f"{split}.bin", dtype=self.dtype, mode="r")


def shard_dir(cfg: DataConfig) -> Path:
    if cfg.name:
        return Path(cfg.data_dir or cache_dir() / "data") / cfg.name
    source = Path(cfg.source).name if cfg.source not in ("shakespeare",) else cfg.source
    if cfg.tokenizer in TRAINED:
        tok = f"{cfg.tokenizer}{cfg.vocab_size}"
    else:
        tok = "gpt2" if cfg.tokenizer == "gpt2" else Path(cfg.tokenizer).stem
    return Path(cfg.data_dir or cache_dir() / "data") / f"{source}-{tok}".replace("*", "_")


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# Where a pre-tokenizer always ends one pre-token and begins the next, as zero-width patterns: every model (BPE,
# WordPiece, Unigram, ...) encodes pre-tokens one by one, so pieces of a text cut there encode as the whole.
_CUTS = {
    # GPT-2's pattern takes a lone "\n" between two non-spaces as a pre-token of its own (in a longer run of
    # whitespace, where a pre-token ends depends on what follows the run)
    "ByteLevel": re.compile(r"(?<=\S\n)(?=\S)"),
    # Metaspace makes every space a "▁" that begins a pre-token, and prepends none to a piece already beginning
    # with one (a cut at a line break would glue two words into one pre-token, or add a "▁")
    "Metaspace": re.compile(r"(?= )"),
    # these drop whitespace between pre-tokens
    "BertPreTokenizer": re.compile(r"(?<=\n)"),
    "Whitespace": re.compile(r"(?<=\n)"),
    "WhitespaceSplit": re.compile(r"(?<=\n)"),
}
# Normalizers that act on each character alone (Unicode composition never joins across a line break) and keep a
# line break whitespace: a text cut after one normalizes piece by piece as it does whole, and the break still
# separates pre-tokens where whitespace is dropped.
_PER_CHARACTER = {"BertNormalizer", "Lowercase", "NFC", "NFD", "NFKC", "NFKD", "StripAccents"}


def _per_character(normalizer: dict) -> bool:
    if normalizer["type"] == "Sequence":
        return all(map(_per_character, normalizer["normalizers"]))
    return normalizer["type"] in _PER_CHARACTER


def _piece_cuts(tok: Tokenizer) -> re.Pattern | None:
    """Where a text may be cut so that its pieces tokenize exactly as the whole, or None where that is not known
    for this tokenizer (its texts are then tokenized whole). Read from the tokenizer's own settings."""
    spec = json.loads(tok.to_str())
    pre, normalizer = spec["pre_tokenizer"] or {}, spec["normalizer"]
    kind = pre.get("type")
    if kind == "ByteLevel" and not (pre.get("add_prefix_space") is False and pre.get("use_regex") is True):
        return None  # a space prepended to every piece, or no split at all
    if kind == "Metaspace" and pre.get("split") is not True:
        return None
    # ByteLevel's and Metaspace's cuts depend on the exact whitespace, which a normalizer may change
    if normalizer is not None and (kind in ("ByteLevel", "Metaspace") or not _per_character(normalizer)):
        return None
    # added tokens are matched in the raw text first: none may span a cut or reach across one for whitespace
    if any(t["lstrip"] or t["rstrip"] or any(c.isspace() for c in t["content"]) for t in spec["added_tokens"]):
        return None
    return _CUTS.get(kind)


def _pieces(text: str, cuts: re.Pattern | None, size: int = 1 << 20) -> list[str]:
    """`text` cut into pieces of at least `size` characters (the last may be shorter) at the first place `cuts`
    allows, or whole if `cuts` is None."""
    pieces, start = [], 0
    while cuts is not None and len(text) - start > size and (cut := cuts.search(text, start + size)):
        pieces.append(text[start : cut.start()])
        start = cut.start()
    pieces.append(text[start:])
    return pieces


def _tokenize(tok: Tokenizer, docs, eos: int, dtype: np.dtype, path: Path) -> int:
    """Write every document's tokens followed by EOS to `path` (atomically); returns the token count."""
    n, cuts = 0, _piece_cuts(tok)
    with atomic_file(path, "wb") as f:
        for doc in docs:
            # encode_batch runs in parallel (Rust threads) over the pieces of each document
            ids = [i for enc in tok.encode_batch(_pieces(doc.text, cuts), add_special_tokens=False) for i in enc.ids]
            ids.append(eos)
            np.asarray(ids, dtype=dtype).tofile(f)
            n += len(ids)
    return n


TRAINED = {
    "bpe": lambda texts, cfg: train_bpe(texts, cfg.vocab_size),
    "roberta": lambda texts, cfg: train_bpe(texts, cfg.vocab_size, ROBERTA_SPECIALS),
    "wordpiece": lambda texts, cfg: train_wordpiece(texts, cfg.vocab_size),
    "unigram": lambda texts, cfg: train_unigram(texts, cfg.vocab_size, cfg.sentinels),
}


def _tokenizer_spec(cfg: DataConfig) -> dict:
    if cfg.tokenizer in TRAINED:
        return {"kind": cfg.tokenizer, "vocab_size": cfg.vocab_size} | (
            {"sentinels": cfg.sentinels} if cfg.tokenizer == "unigram" else {}
        )
    if cfg.tokenizer == "gpt2":
        return {"kind": "gpt2"}
    path = Path(cfg.tokenizer).expanduser()
    if not path.is_file() and path.suffix != ".json" and len(path.parts) == 1:  # a name, not a path
        raise DataError(f"data.tokenizer={cfg.tokenizer!r} is neither a tokenizer trained here "
                        f"({', '.join(TRAINED)}), gpt2, nor a tokenizer.json file")  # fmt: skip
    load_tokenizer(path)  # a clear error for a missing or malformed file
    return {"kind": "file", "sha256": file_sha256(path)}


def data_record(inputs: dict) -> dict:
    """What a checkpoint keeps of the data it was trained on: a digest of each part of the shards' inputs."""

    def digest(part) -> str:
        return hashlib.sha256(json.dumps(part, sort_keys=True).encode()).hexdigest()

    return {"documents": len(inputs["sources"]), **{key: digest(inputs[key]) for key in sorted(inputs)}}


def prepare(cfg: DataConfig, check: Callable[[dict], None] | None = None) -> Shards:
    """Make (or find) the shards that `cfg` describes. `check(data_record(inputs))`, when given, sees what they
    are made from before anything is written, and may refuse it by raising."""
    corpus: Corpus = load_corpus(cfg.source, cfg.val_fraction)
    inputs = {"sources": corpus.fingerprint(), "tokenizer": _tokenizer_spec(cfg), "val_fraction": cfg.val_fraction}
    if check is not None:
        check(data_record(inputs))
    out = shard_dir(cfg)
    manifest_path = out / "manifest.json"
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        if (
            manifest.get("version") == MANIFEST_VERSION
            and manifest.get("inputs") == inputs
            and file_sha256(out / "tokenizer.json") == manifest["tokenizer_sha256"]
        ):
            return Shards(out, load_tokenizer(out / "tokenizer.json"), manifest, reused=True)
    out.mkdir(parents=True, exist_ok=True)
    manifest_path.unlink(missing_ok=True)  # the shards below are about to change
    if cfg.tokenizer in TRAINED:
        tok = TRAINED[cfg.tokenizer]((d.text for d in corpus.train), cfg)
    elif cfg.tokenizer == "gpt2":
        tok = gpt2()
    else:
        tok = load_tokenizer(cfg.tokenizer)
    eos = eos_id(tok)
    dtype = np.dtype(np.uint16 if tok.get_vocab_size() <= 1 << 16 else np.uint32)
    write_atomic(out / "tokenizer.json", tok.to_str().encode())
    # from here on the tokenizer as saved: a trained Unigram's scores change in their last bits when
    # written and read back, and every later run reads the saved one
    tok = load_tokenizer(out / "tokenizer.json")
    splits = {}
    for split, docs in (("train", corpus.train), ("val", corpus.val)):
        n = _tokenize(tok, docs, eos, dtype, out / f"{split}.bin")
        splits[split] = {"tokens": n, "documents": len(docs)}
    manifest = {
        "version": MANIFEST_VERSION,
        "inputs": inputs,
        "tokenizer_sha256": file_sha256(out / "tokenizer.json"),
        "vocab_size": tok.get_vocab_size(),
        "eos_id": eos,
        "dtype": dtype.name,
        "splits": splits,
    }
    write_atomic(manifest_path, json.dumps(manifest, indent=1).encode())
    return Shards(out, tok, manifest, reused=False)


# Every use of randomness seeds its generator with (seed, its own tag, n): with (seed, n) alone, the order of
# epoch n and the masks of the batch that begins at example n would be one and the same stream.
_EPOCH_STREAM, _BATCH_STREAM = 1, 2


class TokenWindows:
    """Training examples: windows of `window` tokens cut every `stride` tokens (a causal LM's windows overlap
    by one token, the shifted target).

    Each epoch cuts the token stream at a random offset and visits the windows in a random order, both drawn
    from (seed, epoch). Example i is a pure function of i, so the data cursor is one integer and a resumed
    run sees exactly the examples the uninterrupted one would.
    """

    def __init__(self, tokens: np.ndarray, window: int, stride: int, seed: int, split: str = "train"):
        self.tokens, self.window, self.stride, self.seed = tokens, window, stride, seed
        self.per_epoch = (len(tokens) - window - stride + 1) // stride + 1 if len(tokens) >= window + stride else 0
        if self.per_epoch < 1:
            raise DataError(
                f"the {split} split has {len(tokens)} tokens, too few for examples of {window} tokens; lower "
                "objective.seq_len or add text"
            )
        self._epoch, self._order, self._offset = -1, None, 0

    def _start(self, i: int) -> int:
        epoch, k = divmod(i, self.per_epoch)
        if epoch != self._epoch:
            rng = np.random.default_rng([self.seed, _EPOCH_STREAM, epoch])
            self._offset = int(rng.integers(self.stride))
            self._order = rng.permutation(self.per_epoch)
            self._epoch = epoch
        return self._offset + int(self._order[k]) * self.stride

    def rows(self, first: int, size: int) -> np.ndarray:
        """Examples first .. first+size-1 as a (size, window) array."""
        return np.stack([self.tokens[s : s + self.window] for s in map(self._start, range(first, first + size))])


class PretrainingBatches:
    """A split as the trainer reads it: `make(first, size)` builds the batch of examples first .. first+size-1
    (the objective applied to token windows), its randomness (masks, spans) drawn from (seed, the batch stream's
    tag, first), so that any batch can be rebuilt exactly; `per_epoch` examples make an epoch, each of
    `tokens_per_example` tokens, `target_tokens_per_example` of them the decoder's. Fine-tuning tasks offer the
    same (data/tasks.py)."""

    def __init__(self, objective, windows: TokenWindows, seed: int):
        self.objective, self.windows, self.seed = objective, windows, seed
        self.per_epoch, self.tokens_per_example = windows.per_epoch, objective.tokens_per_example
        self.target_tokens_per_example = objective.target_tokens_per_example

    def make(self, first: int, size: int) -> dict:
        rng = np.random.default_rng([self.seed, _BATCH_STREAM, first])
        return self.objective.batch(self.windows.rows(first, size), self.windows.tokens, rng)


class Prefetcher:
    """Builds the next batches in a background thread while the model trains on the current one.
    `make(first, size)` builds the batch of examples first .. first+size-1.

    A failure in `make` is raised by `next()` (again at every later call) and ends the thread. Use it as a context
    manager, `with Prefetcher(...) as batches:`, so that the thread also ends when the consumer fails.

    With `pin`, each batch's tensors are copied to page-locked memory in the thread, so that a copy to the GPU
    with `non_blocking=True` overlaps the step instead of waiting (from pageable memory it cannot). `waited` sums
    the seconds `next()` has spent waiting for a batch that was not ready: the trainer's data_wait."""

    def __init__(self, make, first: int, batch_size: int, depth: int = 4, pin: bool = False):
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._error: Exception | None = None
        self.waited = 0.0

        def work():
            i = first
            while not self._stop.is_set():
                try:
                    item = make(i, batch_size)
                    if pin:
                        item = {k: v.pin_memory() for k, v in item.items()}
                except Exception as e:  # handed to the consumer, which raises it
                    item = e
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if isinstance(item, Exception):
                    return  # no batch after a failure is ever used
                i += batch_size

        self._thread = threading.Thread(target=work, daemon=True)
        self._thread.start()

    def next(self):
        if self._error is None:
            start = time.perf_counter()
            item = self._queue.get()
            self.waited += time.perf_counter() - start
            if not isinstance(item, Exception):
                return item
            self._error = item
        raise self._error

    def close(self) -> None:
        self._stop.set()
        self._thread.join()

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
