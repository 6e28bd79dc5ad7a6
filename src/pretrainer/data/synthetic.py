"""Synthetic corpora (`data.source: synthetic:NAME`), drawn on the fly instead of read from shards: every example
is a fresh sequence drawn from (seed, its index), so there is no epoch and nothing to prepare or cache.

`synthetic:induction` (Olsson et al., 2022, "In-context learning and induction heads"): 32 uniform random tokens
of a 64-token vocabulary, then the same 32 again. Nothing predicts the first half (ln 64 = 4.16 nats at best);
the second half is in the context, for a model that has learnt to look up the token after the previous occurrence
of the current one and copy it: an induction head, which needs two layers (a previous-token head whose output
the second layer's keys read). With the repeat always 32 back, though, one layer can copy by position alone;
`synthetic:induction-varied` repeats a stretch of 16 to 32 tokens, drawn per sequence, which leaves content as the
only guide. Validation reports the loss before and after the first repeat apart.
"""

from __future__ import annotations

import numpy as np
import torch
from tokenizers import Tokenizer, models, pre_tokenizers

from ..errors import ConfigError, DataError
from .objectives import IGNORE
from .shards import PretrainingBatches

PREFIX = "synthetic:"
_SEQUENCE_STREAM = 3  # beside shards.py's epoch and batch streams: draws of one seed never coincide


class Induction:
    """A random stretch of tokens repeated to fill 64; example i of a stream is a pure function of (seed, i).
    `synthetic:induction` repeats 32 tokens once: a fixed period, which a single layer can also exploit by
    position alone (attend 31 back). `synthetic:induction-varied` draws each sequence's period from 16..32, so
    only a lookup by content finds the token to copy."""

    length, vocab_size = 64, 64
    window = length
    periods = (32, 32)  # the repeated stretch's length, drawn per sequence from this range (both ends included)
    per_epoch = 2**62  # examples never repeat: an epoch means nothing here
    tokens = None  # no token stream to draw replacement tokens from: only the causal LM objective fits

    def __init__(self, seed: int):
        self.seed = seed

    def _draw(self, i: int) -> tuple[int, np.ndarray]:
        rng = np.random.default_rng([self.seed, _SEQUENCE_STREAM, i])
        period = int(rng.integers(self.periods[0], self.periods[1] + 1))
        return period, np.resize(rng.integers(self.vocab_size, size=period), self.length)  # resize repeats it

    def rows(self, first: int, size: int) -> np.ndarray:
        return np.stack([self._draw(i)[1] for i in range(first, first + size)])

    def period_of(self, first: int, size: int) -> np.ndarray:
        return np.array([self._draw(i)[0] for i in range(first, first + size)])

    @classmethod
    def tokenizer(cls) -> Tokenizer:
        """Token i is written `t{i}`, so that a checkpoint's tokenizer.json encodes and decodes the corpus."""
        tok = Tokenizer(models.WordLevel({f"t{i}": i for i in range(cls.vocab_size)}, unk_token="t0"))
        tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        return tok

    @classmethod
    def val_splits(cls, batches: PretrainingBatches) -> dict[str, PeriodScored]:
        """Validation groups: `first_half` scores the first period's positions 1..p-1 (nothing to copy; 1..31 for
        synthetic:induction), `second_half` positions p+1..63 (each token is in the context, p back; 33..63).
        Position p opens the repeat, which nothing announces: neither counts it."""
        return {
            "first_half": PeriodScored(batches, copyable=False),
            "second_half": PeriodScored(batches, copyable=True),
        }

    @staticmethod
    def derived_scores(scores: dict[str, float]) -> dict[str, float]:
        """`icl_score`: the loss after the first repeat minus the loss before it, what the context is worth."""
        return {"icl_score": scores["val_loss_second_half"] - scores["val_loss_first_half"]}


class InductionVaried(Induction):
    periods = (16, 32)


class PeriodScored:
    """A split of an Induction corpus whose loss counts only the targets before the first repeat (`copyable`
    False) or after it (True). Target j predicts sequence position j + 1."""

    def __init__(self, batches: PretrainingBatches, copyable: bool):
        self.batches, self.copyable = batches, copyable
        self.per_epoch, self.tokens_per_example = batches.per_epoch, batches.tokens_per_example

    def make(self, first: int, size: int) -> dict:
        batch = self.batches.make(first, size)
        period = torch.from_numpy(self.batches.windows.period_of(first, size))[:, None]
        j = torch.arange(batch["targets"].shape[1])[None]
        scored = j >= period if self.copyable else j < period - 1
        return {**batch, "targets": batch["targets"].where(scored, IGNORE)}


SYNTHETIC = {"induction": Induction, "induction-varied": InductionVaried}


def synthetic_corpus(config) -> type[Induction]:
    """The corpus `data.source` names, checked against the objective it needs."""
    name = config.data.source.removeprefix(PREFIX)
    corpus = SYNTHETIC.get(name)
    if corpus is None:
        raise DataError(f"no synthetic corpus '{name}'; built in: {', '.join(PREFIX + n for n in SYNTHETIC)}")
    o = config.objective
    if o.name != "causal_lm" or o.seq_len != corpus.window - 1:
        raise ConfigError(
            f"{config.data.source} is for objective.name=causal_lm with objective.seq_len={corpus.window - 1} "
            f"(sequences of {corpus.window} tokens, shifted by one), not {o.name} with seq_len={o.seq_len}"
        )
    return corpus
