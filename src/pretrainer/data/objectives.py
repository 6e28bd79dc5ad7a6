"""Pretraining objectives built on the fly from token windows: BERT's masked LM (optionally whole-word, optionally
with next-sentence or, as ALBERT, sentence-order pairs; or as SpanBERT, spans of words with a span-boundary
objective), T5's span corruption and BART's denoising.

All but BART's denoising (whose noise gives each row its own length: a loop over rows) are vectorised over the
batch, and all draw only from the generator they are given, so a batch is a pure function of its tokens and the
generator's state: seed the generator from (seed, example index) and a resumed run rebuilds exactly the batches the
uninterrupted one saw.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import NamedTuple

import numpy as np
import torch
from tokenizers import Tokenizer

from ..errors import ConfigError, DataError
from .tokenizer import eos_id, sentinel_ids
from .tokenizer import special_ids as tokenizer_special_ids

IGNORE = -100  # the label of positions without a loss (cross_entropy's default ignore_index)


def mask_tokens(
    input_ids: torch.Tensor,
    *,
    mask_id: int,
    tokenizer_vocab_size: int,
    special_ids: Collection[int],
    generator: torch.Generator,
    mask_prob: float = 0.15,
    word_starts: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking: (corrupted inputs, labels), both shaped and typed like the (int64) `input_ids`.

    Every non-special token is chosen independently with probability `mask_prob` (a Bernoulli draw, so the count
    per row varies). With `word_starts` (True where a token begins a word) whole words are chosen instead, each
    with probability `mask_prob`, and all tokens of a chosen word with them. Of the chosen tokens 80% become
    `mask_id`, 10% a token drawn uniformly from the tokenizer's non-special ids (by chance, now and then, the
    original one) and 10% stay as they are, decided per token. The labels are the original ids at the chosen
    positions and -100 elsewhere. Special ids (and `mask_id`) are never chosen nor drawn; nor are the ids from
    `tokenizer_vocab_size` up, which pad the model's vocabulary and never occur in real input. `generator` lives
    on the ids' device.
    """
    device, shape = input_ids.device, input_ids.shape
    special = torch.tensor(sorted({*special_ids, mask_id}), dtype=torch.long, device=device)
    if word_starts is None:
        chosen = torch.rand(shape, generator=generator, device=device) < mask_prob
    else:
        word = word_starts.long().cumsum(-1)  # each token's word number; tokens before the first start are word 0
        words = torch.rand((*shape[:-1], shape[-1] + 1), generator=generator, device=device) < mask_prob
        chosen = words.gather(-1, word)
    chosen &= ~torch.isin(input_ids, special)
    action = torch.rand(shape, generator=generator, device=device)
    pool = torch.ones(tokenizer_vocab_size, dtype=torch.bool, device=device)
    pool[special[special < tokenizer_vocab_size]] = False
    pool = pool.nonzero().squeeze(1)
    random_ids = pool[torch.randint(len(pool), shape, generator=generator, device=device)]
    inputs = torch.where(chosen & (action < 0.8), mask_id, input_ids)
    inputs = torch.where(chosen & (action >= 0.8) & (action < 0.9), random_ids, inputs)
    return inputs, torch.where(chosen, input_ids, IGNORE)


class SpanMasks(NamedTuple):
    inputs: torch.Tensor  # (B, T) int64: the corrupted ids
    targets: torch.Tensor  # (B, T) int64: the original ids where masked, -100 elsewhere
    span_left: torch.Tensor  # (B, T) int64: at a masked position, the position just before its span (else 0)
    span_right: torch.Tensor  # (B, T) int64: ... the position just after its span
    span_position: torch.Tensor  # (B, T) int64: ... and its place in the span, 0 for the first token
    span_words: np.ndarray  # (spans, 2): each span's length in words as drawn, and as masked (cut short or not)


def span_masks(
    ids: np.ndarray,
    maskable: np.ndarray,
    word_starts: np.ndarray,
    *,
    mask_id: int,
    random_pool: np.ndarray,
    rng: np.random.Generator,
    budget: float = 0.15,
    p: float = 0.2,
    max_words: int = 10,
) -> SpanMasks:
    """SpanBERT's masking (Joshi et al., 2020): spans of whole words instead of single tokens, until
    round(`budget` × the row's maskable tokens) tokens are masked.

    Each span's length in words is drawn from Geometric(`p`) cut off at `max_words` and renormalised, as SpanBERT's
    code draws it (mean 3.8 words for p = 0.2, the paper's ℓ̄). It
    starts at the first token of the word of a uniformly drawn maskable token not yet masked and takes that many
    words, cut short at the budget (the row's last span may end mid-word), at a token that cannot be masked
    ([CLS], [SEP], padding) or at another span. Spans are replaced whole, as SpanBERT does: 80% of them by
    `mask_id`, 10% by tokens drawn from `random_pool`, 10% kept. Also returns, per masked token, what the
    span-boundary objective reads: the positions that frame its span and its place in it."""
    b, t = ids.shape
    inputs, targets = ids.copy(), np.full_like(ids, IGNORE)
    left, right, place = (np.zeros_like(ids) for _ in range(3))
    follows_unmaskable = np.concatenate([np.ones((b, 1), bool), ~maskable[:, :-1]], axis=1)
    words = np.cumsum(word_starts | ~maskable | follows_unmaskable, axis=1)  # a word number per token
    lengths = np.arange(1, max_words + 1)
    chances = p * (1 - p) ** (lengths - 1)
    spans = []
    for row in range(b):
        ok, word = maskable[row], words[row]
        left_to_mask = int(round(budget * ok.sum()))
        masked = np.zeros(t, dtype=bool)
        while left_to_mask > 0:
            drawn = int(rng.choice(lengths, p=chances / chances.sum()))
            free = np.flatnonzero(ok & ~masked)
            first = int(free[rng.integers(len(free))])
            while first > 0 and word[first - 1] == word[first] and not masked[first - 1]:
                first -= 1
            last = first
            while last < t and ok[last] and not masked[last] and word[last] < word[first] + drawn:
                last += 1
            last = min(last, first + left_to_mask)
            span = np.arange(first, last)
            masked[span] = True
            left_to_mask -= len(span)
            spans.append((drawn, int(word[last - 1] - word[first] + 1)))
            targets[row, span] = ids[row, span]
            action = rng.random()
            if action < 0.8:
                inputs[row, span] = mask_id
            elif action < 0.9:
                inputs[row, span] = random_pool[rng.integers(len(random_pool), size=len(span))]
            left[row, span], right[row, span], place[row, span] = first - 1, last, span - first
    as_tensor = torch.from_numpy
    return SpanMasks(
        as_tensor(inputs), as_tensor(targets), as_tensor(left), as_tensor(right), as_tensor(place), np.array(spans)
    )


def word_start_table(tok: Tokenizer) -> torch.Tensor:
    """(vocab size,) bool, True for every token but WordPiece's "##" continuations: index it with token ids."""
    starts = torch.ones(tok.get_vocab_size(), dtype=torch.bool)
    starts[[i for t, i in tok.get_vocab().items() if t.startswith("##")]] = False
    return starts


def word_starts_from_tokens(ids: torch.Tensor, tok: Tokenizer) -> torch.Tensor:
    """True where a WordPiece token begins a word, for whole-word masking. It builds the vocabulary-size table
    each call: for many batches build `word_start_table` once and index it."""
    return word_start_table(tok).to(ids.device)[ids]


class PairBatch(NamedTuple):
    input_ids: np.ndarray  # (n, seq_len) int64: [CLS] A [SEP] B [SEP], then padding
    token_type_ids: np.ndarray  # (n, seq_len) int64: 0 on [CLS] A [SEP], 1 on B [SEP], 0 on padding
    attention_mask: np.ndarray  # (n, seq_len) bool: True on real tokens
    # (n,) int64, as transformers' heads read them: NSP 0 when B follows A (IsNext), 1 when random; SOP 0 in the
    # stream's order, 1 swapped
    nsp_labels: np.ndarray


def sentence_pairs(
    tokens: np.ndarray,
    n: int,
    seq_len: int,
    *,
    cls_id: int,
    sep_id: int,
    pad_id: int,
    rng: np.random.Generator,
    short_seq_prob: float = 0.1,
    order: bool = False,
) -> PairBatch:
    """BERT's next-sentence pairs cut from a flat token stream, or with `order` ALBERT's sentence-order pairs.

    A is a random span. NSP: B is what follows it (probability 0.5) or a span from elsewhere that overlaps neither
    A nor A's continuation. SOP: B always follows A, and half the pairs are written B first; the segments are
    then always consecutive and on one topic, so only their order tells the label (NSP's random B can be told by
    its topic alone, which is why ALBERT replaced it). A and B share seq_len - 3 tokens, split at a uniformly random
    point; as in BERT, a fraction `short_seq_prob` of the examples get a uniformly random shorter total and are
    padded. The stream has no sentence boundaries, so spans start and end anywhere, across documents too.
    """
    budget = seq_len - 3  # A and B together
    if budget < 2:
        raise ValueError(f"seq_len={seq_len} is too short for [CLS] A [SEP] B [SEP]")
    if len(tokens) < 3 * seq_len:
        raise DataError(f"next-sentence pairs need at least 3 * seq_len = {3 * seq_len} tokens; got {len(tokens)}")
    short = rng.random(n) < short_seq_prob
    total = np.where(short, rng.integers(2, budget + 1, n), budget)
    len_a = rng.integers(1, total)
    len_b = total - len_a
    a_start = rng.integers(0, len(tokens) - total + 1)
    follow = a_start + len_a
    # A random B starts on the ring of B's valid starts at least `budget` past A's continuation: forward it lands
    # after the continuation, wrapped around it ends before A begins.
    starts = len(tokens) - len_b + 1
    elsewhere = (follow + rng.integers(budget, starts - budget + 1)) % starts
    if order:
        swapped = rng.random(n) < 0.5
        a_start, len_a, b_start, len_b = (
            np.where(swapped, follow, a_start),
            np.where(swapped, len_b, len_a),
            np.where(swapped, a_start, follow),
            np.where(swapped, len_a, len_b),
        )
        labels = swapped.astype(np.int64)
    else:
        is_next = rng.random(n) < 0.5
        b_start = np.where(is_next, follow, elsewhere)
        labels = (~is_next).astype(np.int64)

    j = np.arange(seq_len)
    la, b0, lb = len_a[:, None], len_a[:, None] + 2, len_b[:, None]  # b0: where B begins
    in_a, in_b = (j >= 1) & (j <= la), (j >= b0) & (j < b0 + lb)
    ids = np.full((n, seq_len), pad_id, dtype=np.int64)
    ids[:, 0] = cls_id
    ids[(j == la + 1) | (j == b0 + lb)] = sep_id
    ids[in_a] = tokens[(a_start[:, None] + j - 1)[in_a]]
    ids[in_b] = tokens[(b_start[:, None] + j - b0)[in_b]]
    token_types = ((j >= b0) & (j <= b0 + lb)).astype(np.int64)
    return PairBatch(ids, token_types, j < (total + 3)[:, None], labels)


def _noise_counts(length: int, noise_density: float, mean_noise_span_length: float) -> tuple[int, int]:
    """T5's numbers of noise tokens and noise spans in `length` (>= 2) tokens; round() halves to even, as tf.round."""
    num_noise = min(max(round(length * noise_density), 1), length - 1)
    return num_noise, max(round(num_noise / mean_noise_span_length), 1)


def _random_segmentation(num_items: int, num_segments: int, batch: int, rng: np.random.Generator) -> np.ndarray:
    """(batch, num_segments) positive lengths summing to num_items, each row a uniformly random composition."""
    first_in_segment = np.tile(np.arange(num_items - 1) < num_segments - 1, (batch, 1))  # of items 1..num_items-1
    cuts = np.nonzero(rng.permuted(first_in_segment, axis=1))[1].reshape(batch, num_segments - 1) + 1
    bounds = np.concatenate([np.zeros((batch, 1), int), cuts, np.full((batch, 1), num_items)], axis=1)
    return np.diff(bounds, axis=1)


def batch_noise_masks(
    batch: int, length: int, noise_density: float, mean_noise_span_length: float, rng: np.random.Generator
) -> np.ndarray:
    """(batch, length) bool noise masks by T5's random_spans_noise_mask (without its random roll).

    Every row has the same numbers of noise tokens and spans, in random lengths; the noise and non-noise spans
    alternate, starting with non-noise and (as in T5) ending with noise.
    """
    orig_length, length = length, max(length, 2)
    num_noise, num_spans = _noise_counts(length, noise_density, mean_noise_span_length)
    if num_spans > min(num_noise, length - num_noise):
        raise ValueError(
            f"{num_spans} noise spans cannot fit in {length} tokens with noise_density={noise_density} and "
            f"mean_noise_span_length={mean_noise_span_length}"
        )
    noise = _random_segmentation(num_noise, num_spans, batch, rng)
    nonnoise = _random_segmentation(length - num_noise, num_spans, batch, rng)
    span_lengths = np.stack([nonnoise, noise], axis=2).reshape(-1)  # non-noise, noise, non-noise, ... row by row
    mask = np.repeat(np.tile([False, True], batch * num_spans), span_lengths).reshape(batch, length)
    return mask[:, :orig_length]


def random_spans_noise_mask(
    length: int, noise_density: float, mean_noise_span_length: float, rng: np.random.Generator
) -> np.ndarray:
    """One (length,) bool noise mask: see `batch_noise_masks`."""
    return batch_noise_masks(1, length, noise_density, mean_noise_span_length, rng)[0]


def t5_lengths(inputs_length: int, noise_density: float = 0.15, mean_noise_span_length: float = 3.0) -> tuple[int, int]:
    """(raw tokens, targets length): span corruption of that many raw tokens, with EOS, gives inputs of exactly
    `inputs_length` tokens and targets of that length (T5's random_spans_helper).

    Inputs hold the non-noise tokens, a sentinel per span and EOS; targets a sentinel and the tokens of every
    span, the final sentinel and EOS. T5's own targets have no final sentinel (its masks end in noise), so
    ours are one longer: for 512, 568 raw tokens and 115 targets (T5: 114). T5's special case for density 0.5
    (trimming the targets to the inputs length) is left out.
    """

    def lengths(raw: int) -> tuple[int, int]:
        num_noise, num_spans = _noise_counts(raw, noise_density, mean_noise_span_length)
        return raw - num_noise + num_spans + 1, num_noise + num_spans + 2

    raw = inputs_length - 1
    while lengths(raw + 1)[0] <= inputs_length:
        raw += 1
    return raw, lengths(raw)[1]


def span_corrupt(
    tokens: np.ndarray, noise_mask: np.ndarray, sentinel_ids: Sequence[int], eos_id: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """T5's span corruption: (inputs, targets) int64, (B, ...) for (B, L) tokens and 1-D for (L,).

    Each maximal run of noise tokens becomes one sentinel in the inputs, sentinel_ids[0], [1], ... in order; the
    targets are every span's sentinel followed by its tokens, then the next unused sentinel. "I love this red
    car" with "love" and "red car" noise gives inputs "I <X> this <Y>" and targets "<X> love <Y> red car <Z>".
    With `eos_id`, both end in it. All rows need the same numbers of noise tokens and spans (the masks of
    `batch_noise_masks` have), which makes the outputs rectangular.
    """
    rows, mask = np.atleast_2d(tokens).astype(np.int64), np.atleast_2d(noise_mask).astype(bool)
    if rows.shape != mask.shape:
        raise ValueError(f"tokens {rows.shape} and noise mask {mask.shape} differ in shape")
    starts = mask & ~np.pad(mask[:, :-1], ((0, 0), (1, 0)))
    n_noise, n_spans = mask.sum(1), starts.sum(1)
    if len(set(n_noise)) > 1 or len(set(n_spans)) > 1:
        raise ValueError("every row needs the same numbers of noise tokens and noise spans")
    (b, length), noise, k = rows.shape, int(n_noise.max(initial=0)), int(n_spans.max(initial=0))
    if k + 1 > len(sentinel_ids):
        raise ValueError(
            f"{k} noise spans need {k + 1} sentinels (one per span and a final one); got {len(sentinel_ids)}"
        )
    sentinels = np.asarray(sentinel_ids, dtype=np.int64)
    opening = sentinels[np.maximum(starts.cumsum(1) - 1, 0)]  # the sentinel of the span that starts here
    # Every position offers two slots, (its span's sentinel, its token): the inputs keep sentinels and non-noise
    # tokens, the targets sentinels and noise tokens, in order.
    slots = np.stack([opening, rows], axis=2).reshape(b, 2 * length)
    inputs = slots[np.stack([starts, ~mask], axis=2).reshape(b, 2 * length)].reshape(b, length - noise + k)
    targets = slots[np.stack([starts, mask], axis=2).reshape(b, 2 * length)].reshape(b, noise + k)
    targets = np.concatenate([targets, np.full((b, 1), sentinels[k])], axis=1)
    if eos_id is not None:
        eos = np.full((b, 1), eos_id, dtype=np.int64)
        inputs, targets = np.concatenate([inputs, eos], axis=1), np.concatenate([targets, eos], axis=1)
    return (inputs, targets) if np.ndim(tokens) == 2 else (inputs[0], targets[0])


def sentence_end_table(tok: Tokenizer) -> np.ndarray:
    """For each token id, whether it ends a sentence: its last visible character is . ! or ? (byte-level BPE's
    marks for a space or newline before or after it aside)."""
    ends = np.zeros(tok.get_vocab_size(), dtype=bool)
    for token, i in tok.get_vocab().items():
        ends[i] = token.rstrip("ĠĊ \n").endswith((".", "!", "?"))
    return ends


def permute_sentences(tokens: np.ndarray, ends: np.ndarray, share: float, rng: np.random.Generator) -> np.ndarray:
    """BART's sentence permutation: the sentences of `tokens` (runs that end where `ends` does, a run of end tokens
    ending one sentence; the last may have no end), `share` of them (rounded up) shuffled among their places."""
    last_of_run = ends & ~np.append(ends[1:], False)
    sentences = np.split(tokens, np.flatnonzero(last_of_run[:-1]) + 1)
    n = len(sentences)
    chosen = rng.choice(n, int(np.ceil(share * n)), replace=False)
    order = np.arange(n)
    order[chosen] = chosen[rng.permutation(len(chosen))]
    return np.concatenate([sentences[i] for i in order])


def delete_tokens(tokens: np.ndarray, ratio: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """BART's token deletion: (the tokens left, which of the input they are) after deleting round(ratio × length)
    tokens chosen uniformly."""
    keep = np.ones(len(tokens), dtype=bool)
    keep[rng.choice(len(tokens), round(ratio * len(tokens)), replace=False)] = False
    return tokens[keep], np.flatnonzero(keep)


def infill(
    tokens: np.ndarray, ratio: float, poisson_lambda: float, mask_id: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """BART's text infilling: (noised tokens, span lengths). ceil(ratio × length) tokens are masked in spans whose
    lengths are Poisson(λ) draws (the last cut to the budget), each span, a length-0 one too, written as one
    <mask>; the spans sit at uniformly random places among the unmasked tokens, in order. With λ = 0: token
    masking, each chosen token a <mask> of its own."""
    n = len(tokens)
    budget = min(n, int(np.ceil(ratio * n)))
    if poisson_lambda == 0:
        out = tokens.copy()
        out[rng.choice(n, budget, replace=False)] = mask_id
        return out, np.ones(budget, dtype=np.int64)
    lengths = np.zeros(0, dtype=np.int64)
    while lengths.sum() < budget:
        lengths = np.concatenate([lengths, rng.poisson(poisson_lambda, size=max(1, budget))])
    k = int(np.searchsorted(np.cumsum(lengths), budget)) + 1 if budget else 0  # spans until the budget is reached
    lengths = lengths[:k]
    if k:
        lengths[-1] = budget - lengths[:-1].sum()
    # k span slots among the n - budget unmasked tokens: k distinct places in a row of n - budget + k
    places = n - budget + k
    is_span = np.zeros(places, dtype=bool)
    is_span[rng.choice(places, k, replace=False)] = True
    consumed = np.ones(places, dtype=np.int64)
    consumed[is_span] = lengths
    first = np.cumsum(consumed) - consumed  # the input token each place starts at
    return np.where(is_span, mask_id, tokens[np.minimum(first, n - 1)]), lengths


def rotate(tokens: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """BART's document rotation: the tokens from a uniformly chosen one (not the first) on, then those before it."""
    return np.roll(tokens, -int(rng.integers(1, len(tokens)))) if len(tokens) > 1 else tokens


# Objectives as the trainer sees them: each takes windows of `window` raw tokens (cut every `stride` tokens)
# and returns a model-ready batch, a dict of tensors named as the model's forward arguments.


def _special(tokenizer: Tokenizer, names: Sequence[str], objective: str, fix: str) -> list[int]:
    ids = [tokenizer.token_to_id(n) for n in names]
    if None in ids:
        missing = [n for n, i in zip(names, ids, strict=True) if i is None]
        raise DataError(
            f"objective {objective} needs the tokens {', '.join(missing)}, which the tokenizer lacks; {fix}"
        )
    return ids  # type: ignore[return-value]


class CausalLM:
    """Next-token prediction: targets are the inputs shifted by one (windows overlap by that one token)."""

    def __init__(self, seq_len: int):
        self.window, self.stride, self.tokens_per_example = seq_len + 1, seq_len, seq_len
        self.target_tokens_per_example = 0

    def batch(self, rows: np.ndarray, stream: np.ndarray, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        rows = torch.from_numpy(rows.astype(np.int64))
        return {"input_ids": rows[:, :-1], "targets": rows[:, 1:]}


# [CLS] [SEP] [MASK] [PAD] as BERT's WordPiece spells them, and as RoBERTa's byte-level BPE does
MLM_SPECIALS = (("[CLS]", "[SEP]", "[MASK]", "[PAD]"), ("<s>", "</s>", "<mask>", "<pad>"))


class MaskedLM:
    """BERT: `[CLS] tokens [SEP]` (or `[CLS] A [SEP] B [SEP]` pairs with NSP or SOP), masked anew in every batch:
    RoBERTa's dynamic masking. RoBERTa's tokenizer writes them `<s> tokens </s>`."""

    def __init__(
        self,
        seq_len: int,
        tokenizer: Tokenizer,
        mask_prob: float,
        whole_word: bool,
        nsp: bool,
        sop: bool = False,
        spans: bool = False,
        sbo: bool = False,
    ):
        names = next((n for n in MLM_SPECIALS if tokenizer.token_to_id(n[0]) is not None), MLM_SPECIALS[0])
        fix = "use data.tokenizer=wordpiece (BERT's) or data.tokenizer=roberta (RoBERTa's byte-level BPE)"
        self.cls, self.sep, self.mask, self.pad = _special(tokenizer, names, "mlm", fix)
        pairs = nsp or sop
        shortest = 5 if pairs else 3  # [CLS] A [SEP] B [SEP] needs a token in A and in B; [CLS] x [SEP] one
        if seq_len < shortest:
            raise ConfigError(
                f"objective.seq_len={seq_len} is too short for {'[CLS] A [SEP] B [SEP]' if pairs else '[CLS] x [SEP]'}"
                f" with a token to mask; use at least {shortest}"
            )
        self.seq_len, self.mask_prob, self.pairs, self.sop = seq_len, mask_prob, pairs, sop
        self.tokenizer_vocab_size = tokenizer.get_vocab_size()
        self.special = tokenizer_special_ids(tokenizer)
        self.word_starts = word_start_table(tokenizer) if whole_word or spans else None
        self.spans, self.sbo = spans, sbo
        if spans:  # what a randomly replaced span is drawn from
            pool = torch.ones(self.tokenizer_vocab_size, dtype=torch.bool)
            pool[[i for i in {*self.special, self.mask} if i < self.tokenizer_vocab_size]] = False
            self.random_pool = pool.nonzero().squeeze(1).numpy()
        self.window = self.stride = seq_len - 2
        self.tokens_per_example, self.target_tokens_per_example = seq_len, 0

    def batch(self, rows: np.ndarray, stream: np.ndarray, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        out = {}
        if self.pairs:
            pairs = sentence_pairs(
                stream, len(rows), self.seq_len, cls_id=self.cls, sep_id=self.sep, pad_id=self.pad, rng=rng,
                order=self.sop,
            )  # fmt: skip
            ids = torch.from_numpy(pairs.input_ids)
            out["token_type_ids"] = torch.from_numpy(pairs.token_type_ids)
            out["padding_mask"] = torch.from_numpy(pairs.attention_mask)
            out["nsp_labels"] = torch.from_numpy(pairs.nsp_labels)
        else:
            n = len(rows)
            ids = torch.from_numpy(
                np.concatenate([np.full((n, 1), self.cls), rows.astype(np.int64), np.full((n, 1), self.sep)], axis=1)
            )
        word_starts = self.word_starts[ids] if self.word_starts is not None else None
        if self.spans:
            maskable = ~torch.isin(ids, torch.tensor(sorted({*self.special, self.mask})))
            masks = span_masks(
                ids.numpy(), maskable.numpy(), word_starts.numpy(), mask_id=self.mask, random_pool=self.random_pool,
                rng=rng, budget=self.mask_prob,
            )  # fmt: skip
            out["input_ids"], out["targets"] = masks.inputs, masks.targets
            if self.sbo:
                out |= {"span_left": masks.span_left, "span_right": masks.span_right}
                out["span_position"] = masks.span_position
            return out
        generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
        out["input_ids"], out["targets"] = mask_tokens(
            ids, mask_id=self.mask, tokenizer_vocab_size=self.tokenizer_vocab_size, special_ids=self.special,
            generator=generator, mask_prob=self.mask_prob, word_starts=word_starts,
        )  # fmt: skip
        return out


class SpanCorruption:
    """T5: spans of the raw window replaced by sentinels; the decoder reads `<start> targets[:-1]`."""

    def __init__(
        self, seq_len: int, tokenizer: Tokenizer, noise_density: float, mean_span_length: float, start_id: int
    ):
        self.sentinels, self.eos, self.start = sentinel_ids(tokenizer), eos_id(tokenizer), start_id
        self.noise_density, self.mean_span_length = noise_density, mean_span_length
        self.window, self.target_len = t5_lengths(seq_len, noise_density, mean_span_length)
        if self.window < 2:
            raise ConfigError(f"objective.seq_len={seq_len} is too short for span corruption; use at least 3")
        num_noise, num_spans = _noise_counts(self.window, noise_density, mean_span_length)
        if num_spans > min(num_noise, self.window - num_noise):
            raise ConfigError(
                f"objective.noise_density={noise_density} with objective.mean_span_length={mean_span_length} "
                f"leaves no room between {num_spans} noise spans in {self.window} tokens; lower noise_density "
                "(T5 uses 0.15) or raise mean_span_length"
            )
        if num_spans + 1 > len(self.sentinels):
            raise DataError(
                f"objective.seq_len={seq_len} makes {num_spans} noise spans per example, which need {num_spans + 1}"
                f" sentinels (one per span and a final one); the tokenizer has {len(self.sentinels)}: raise "
                "data.sentinels"
            )
        self.stride = self.window
        self.tokens_per_example, self.target_tokens_per_example = seq_len + self.target_len, self.target_len

    def batch(self, rows: np.ndarray, stream: np.ndarray, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        masks = batch_noise_masks(len(rows), self.window, self.noise_density, self.mean_span_length, rng)
        inputs, targets = span_corrupt(rows, masks, self.sentinels, self.eos)
        targets = torch.from_numpy(targets)
        start = torch.full((len(rows), 1), self.start, dtype=torch.long)
        return {
            "input_ids": torch.from_numpy(inputs),
            "decoder_input_ids": torch.cat([start, targets[:, :-1]], dim=1),
            "targets": targets,
        }


class Denoising:
    """BART: the decoder rebuilds `<s> document </s>` from the encoder's noised copy of it; the noise (in order):
    sentence permutation, token deletion, text infilling or token masking, rotation (`noise`). Inputs are padded to
    seq_len (the noise shortens them; the rare longer one is cut before its </s>); the decoder reads
    `<start> targets[:-1]`."""

    def __init__(self, seq_len: int, tokenizer: Tokenizer, objective, start_id: int):
        fix = "use data.tokenizer=roberta (BART's byte-level BPE)"
        self.bos, self.eos, self.mask, self.pad = _special(tokenizer, ("<s>", "</s>", "<mask>", "<pad>"), "denoising",
                                                           fix)  # fmt: skip
        if seq_len < 4:
            raise ConfigError(f"objective.seq_len={seq_len} is too short for <s> document </s>; use at least 4")
        self.objective, self.start, self.seq_len = objective, start_id, seq_len
        self.ends = sentence_end_table(tokenizer)
        self.window = self.stride = seq_len - 2
        self.tokens_per_example, self.target_tokens_per_example = 2 * seq_len, seq_len

    def noise(self, tokens: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        o = self.objective
        if o.permute_sentences:
            tokens = permute_sentences(tokens, self.ends[tokens], o.permute_sentences, rng)
        if o.delete_ratio:
            tokens = delete_tokens(tokens, o.delete_ratio, rng)[0]
        if o.mask_ratio:
            tokens = infill(tokens, o.mask_ratio, o.poisson_lambda, self.mask, rng)[0]
        if o.rotate and rng.random() < o.rotate:
            tokens = rotate(tokens, rng)
        return tokens

    def batch(self, rows: np.ndarray, stream: np.ndarray, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        b, length = len(rows), self.seq_len
        inputs = np.full((b, length), self.pad, dtype=np.int64)
        padding_mask = np.zeros((b, length), dtype=bool)
        for i, row in enumerate(rows.astype(np.int64)):
            noised = self.noise(row, rng)[: length - 2]
            inputs[i, : len(noised) + 2] = [self.bos, *noised, self.eos]
            padding_mask[i, : len(noised) + 2] = True
        bos, eos = np.full((b, 1), self.bos), np.full((b, 1), self.eos)
        targets = torch.from_numpy(np.concatenate([bos, rows.astype(np.int64), eos], axis=1))
        start = torch.full((b, 1), self.start, dtype=torch.long)
        return {
            "input_ids": torch.from_numpy(inputs),
            "padding_mask": torch.from_numpy(padding_mask),
            "decoder_input_ids": torch.cat([start, targets[:, :-1]], dim=1),
            "targets": targets,
        }


def make_objective(config, tokenizer: Tokenizer):
    """The objective a Config asks for, bound to its tokenizer and model."""
    o, m = config.objective, config.model
    if m.head == "rtd" and not m.generator_fraction:  # a discriminator alone (imported, say) can be loaded, not trained
        raise ConfigError(
            "model.head=rtd pretrains on a generator's replacements: set model.generator_fraction (ELECTRA: 0.25)"
        )
    if o.name == "mlm":
        return MaskedLM(o.seq_len, tokenizer, o.mask_prob, o.whole_word, o.nsp, o.sop, o.spans, o.sbo)
    if o.name == "span_corruption":
        return SpanCorruption(o.seq_len, tokenizer, o.noise_density, o.mean_span_length, m.decoder_start_id)
    if o.name == "denoising":
        return Denoising(o.seq_len, tokenizer, o, m.decoder_start_id)
    return CausalLM(o.seq_len)
