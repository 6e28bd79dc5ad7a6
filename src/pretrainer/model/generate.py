"""Decoding loops: greedy, temperature, top-k and top-p sampling, with or without a KV cache."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from ..errors import ConfigError, DataError
from .ops import inference_linears

END_OF_TEXT = ("<|endoftext|>", "</s>")  # GPT-style and T5-style end-of-text tokens


def next_token(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Pick one token per row of `logits` (batch, vocab). temperature 0 is greedy."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # drop a token when the tokens ranked above it already cover top_p; the best is always kept
        drop_sorted = cumulative - sorted_logits.softmax(dim=-1) >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator)


def check_sampling(max_new_tokens: int, temperature: float, top_k: int | None, top_p: float | None) -> None:
    """Refuse decoding settings that cannot work, naming the setting."""
    if max_new_tokens < 0:
        raise ConfigError(f"max_new_tokens must be 0 or more (got {max_new_tokens})")
    if not (temperature >= 0 and math.isfinite(temperature)):
        raise ConfigError(f"temperature must be 0 (greedy) or a positive number (got {temperature})")
    if top_k is not None and top_k < 1:
        raise ConfigError(f"top_k must be at least 1 (got {top_k}); leave it unset to sample from every token")
    if top_p is not None and not 0 < top_p <= 1:
        raise ConfigError(f"top_p must be in (0, 1] (got {top_p}); 0.9 is usual, 1 keeps every token")


def check_language_model(model) -> None:
    """Generation and prompting take a model that writes text: a decoder with its LM head, or an encoder-decoder."""
    config = model.config
    if config.arch == "encoder":
        raise ConfigError(
            "an encoder-only model (BERT) fills in masked tokens; it cannot continue a prompt. Give a decoder "
            "(GPT, Llama, SmolLM2) or an encoder-decoder (T5)"
        )
    if config.head != "lm":
        raise ConfigError(f"this {config.arch} has a {config.head} head, not a language-model head; give a "
                          "pretrained model, or one fine-tuned text to text")  # fmt: skip


def check_prompt(model, idx: torch.Tensor) -> None:
    """Refuse what is not a batch of this model's token ids, before any of it reaches an embedding."""
    if idx.dim() != 2 or idx.dtype not in (torch.int64, torch.int32) or idx.shape[1] == 0:
        raise ConfigError(
            f"generate takes token ids, integers of shape (batch, time) with a token or more (got shape "
            f"{tuple(idx.shape)}, {idx.dtype}); encode the prompt with the model's tokenizer"
        )
    low, high, vocab = int(idx.min()), int(idx.max()), model.config.vocab_size
    if low < 0 or high >= vocab:
        raise DataError(
            f"token ids run from {low} to {high}, outside this model's vocabulary of {vocab}; encode the "
            "prompt with the model's own tokenizer"
        )


def prefill(model, tokens: torch.Tensor, length: int, logits_to_keep: int = 0, shared_limit: int | None = None):
    """A decoder's logits for `tokens` (batch, time) and the cache (of `length` positions) that holds them. The
    rows' longest common prefix (up to `shared_limit` tokens; never the last token) is computed once and shared:
    the demonstrations of few-shot prompts, or one prompt sampled many times. The logits are those of the
    positions after the shared prefix (the last `logits_to_keep` of them when that is above 0)."""
    rows, time = tokens.shape
    shared = int((tokens == tokens[:1]).all(0).int().cumprod(0).sum()) if rows > 1 else 0
    shared = min(shared, time - 1, time if shared_limit is None else shared_limit)
    if shared == 0:
        cache = model.new_cache(rows, length)
        return model(tokens, cache=cache, logits_to_keep=logits_to_keep)[0], cache
    prefix = model.new_cache(1, length)
    model(tokens[:1, :shared], cache=prefix, logits_to_keep=1)
    cache = [layer.expand(rows, length) for layer in prefix]
    return model(tokens[:, shared:], cache=cache, logits_to_keep=logits_to_keep)[0], cache


def generate(
    model,
    idx: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    use_cache: bool = True,
    stop_ids: Sequence[int] = (),
    should_stop: Callable[[torch.Tensor], bool] | None = None,
    padding_mask: torch.Tensor | None = None,
    draft_tokens: int = 8,
) -> torch.Tensor:
    """Generate up to `max_new_tokens` tokens with a KV cache (or without, `use_cache=False`).

    Decoder-only: continue `idx` (batch, time) and return prompt + continuation. Encoder-decoder: encode
    `idx` (with `padding_mask`, True for real tokens) once and return the decoder's tokens, starting with
    `model.config.decoder_start_id`. Stops early once every row has produced one of `stop_ids`, or when
    `should_stop` (given the tokens so far) says so. When the sequence outgrows the model's positions, the
    context is cropped to the last `max_seq_len` tokens and recomputed (no cache can hold it).

    Greedy decoding drafts up to `draft_tokens` tokens per row by prompt lookup (`lookup_drafts`: what followed the
    latest earlier occurrence of the last tokens, as in few-shot prompts and their copied formats; an
    encoder-decoder looks in its input too, which summaries and answers copy from) and checks them all in one pass,
    keeping those the model would have chosen itself: a pass reads the weights once, which is what a step costs
    when few rows are decoded, so every accepted token is a step saved. A batch drafts as many tokens for every
    row and advances as far as the row that accepts fewest; how long the drafts are follows how the last ones
    fared (`DraftSchedule`). The tokens are greedy decoding's, bar a near-tie that the wider pass's rounding could
    tip; a row's tokens after its stop token are unspecified. `draft_tokens=0` decodes one token per pass.
    On a CPU, linear layers take the faster routes of `ops.inference_linears` (packed fp32 weights for few rows;
    fp32 products for bf16 weights over many rows where the CPU has no bf16 kernels).
    """
    check_sampling(max_new_tokens, temperature, top_k, top_p)
    check_language_model(model)
    check_prompt(model, idx)
    was_training = model.training
    model.eval()
    try:
        with inference_linears(model):
            out = _decode(model, idx, max_new_tokens, temperature, top_k, top_p, seed, use_cache, stop_ids,
                          should_stop, padding_mask, draft_tokens)  # fmt: skip
    finally:
        model.train(was_training)
    return out.clone()  # an ordinary tensor, which a training step may take as input


@torch.inference_mode()
def _decode(model, idx, max_new_tokens, temperature, top_k, top_p, seed, use_cache, stop_ids, should_stop, padding_mask,
            draft_tokens):  # fmt: skip
    """`generate`'s loop, in inference mode: no autograd bookkeeping (version counters, views) on any tensor it
    makes, which is a tenth of a small model's decoding step."""
    max_len = model.config.max_seq_len
    memory = None
    if model.config.arch == "encoder_decoder":
        memory = model.encode(idx, padding_mask)
        out = torch.full((idx.shape[0], 1), model.config.decoder_start_id, dtype=idx.dtype, device=idx.device)

        def logits_for(tokens, cache, keep=1):  # keep is moot: the decoder is fed one token, or one and a draft
            return model(None, tokens, memory=memory, padding_mask=padding_mask, cache=cache)[0]
    else:
        out = idx

        def logits_for(tokens, cache, keep=1):
            return model(tokens, cache=cache, logits_to_keep=keep)[0]

    generator = torch.Generator(device=idx.device).manual_seed(seed) if seed is not None else None
    schedule = DraftSchedule(draft_tokens) if draft_tokens > 0 and temperature == 0 else None
    source = None  # an encoder's input, drafted from too: its padding moved to the left and marked -1
    if memory is not None and schedule is not None:
        real = padding_mask if padding_mask is not None else torch.ones_like(idx, dtype=torch.bool)
        source = torch.where(real, idx, -1).gather(1, real.int().argsort(dim=1, stable=True))
    cache = None
    finished = torch.zeros(out.shape[0], dtype=torch.bool, device=out.device)
    stop = torch.tensor(list(stop_ids), dtype=out.dtype, device=out.device)
    produced = 0
    while produced < max_new_tokens:
        draft = None
        if use_cache and out.shape[1] < max_len:
            if cache is None:
                length = min(max_len, out.shape[1] + max_new_tokens)
                if memory is None:
                    logits, cache = prefill(model, out, length, logits_to_keep=1)
                else:
                    cache = model.new_cache(out.shape[0], length)
                    logits = logits_for(out, cache)
            else:
                room = min(max_new_tokens - produced, cache[0].k.shape[2] - cache[0].length) - 1
                if schedule is not None and room > 0 and schedule.wanted():
                    seen = out if source is None else torch.cat([source, out], 1)
                    draft = lookup_drafts(seen, ~finished, min(schedule.length, room))
                fed = out[:, -1:] if draft is None else torch.cat([out[:, -1:], draft], 1)
                logits = logits_for(fed, cache, keep=fed.shape[1])
        else:
            cache = None  # the window slides from here on: recompute over the last max_len tokens
            logits = logits_for(out[:, -max_len:], None)
        if draft is not None:
            best = logits.argmax(-1)
            agreed = (best[:, :-1] == draft).int().cumprod(1).sum(1)
            accepted = int(agreed[~finished].min())  # rows advance together, as far as the least lucky live row
            tokens = best[:, : accepted + 1]  # the draft's tokens the model agrees with, then its own next one
            for layer in cache:
                layer.length -= draft.shape[1] - accepted  # forget the keys and values of rejected draft tokens
            schedule.update(accepted)
        else:
            tokens = next_token(logits[:, -1, :], temperature, top_k, top_p, generator)
        if len(stop):
            hit = torch.isin(tokens, stop) & ~finished[:, None]
            ended = hit.any(1)
            if tokens.shape[1] > 1 and bool((finished | ended).all()):  # as one token per pass would have stopped
                tokens = tokens[:, : int(torch.where(ended, hit.int().argmax(1) + 1, 0).max())]
            finished |= ended
        out = torch.cat([out, tokens], dim=1)
        produced += tokens.shape[1]
        if len(stop) and bool(finished.all()):
            break
        if should_stop is not None and should_stop(out):
            break
    return out


class DraftSchedule:
    """How long the next draft is, from how the last ones fared. A pass over a draft costs more than a pass over
    one token (on the 2-core CPU, SmolLM2: 1.2x with 1 draft token, 1.4x with 7; 2.9x at batch 8 with 7),
    so an unlucky draft costs time: after a draft with some tokens accepted the next is twice as long plus two
    (up to `most`); after one with none, the next 1, 2, 4 ... 16 passes go without, then a draft of two tries again.
    Simulated over recorded greedy outputs with measured pass costs, this kept every gain of always drafting `most`
    tokens where text copies and turned its losses on text that does not (SmolLM2 at batch 16: 0.4x of plain
    decoding) into at most a tenth (`benchmarks/RESULTS.md`)."""

    def __init__(self, most: int):
        self.most, self.length, self.pause, self.backoff = most, most, 0, 0

    def wanted(self) -> bool:
        """Whether this pass drafts (a pass skipped after a failed draft counts down the pause)."""
        if self.pause:
            self.pause -= 1
            return False
        return True

    def update(self, accepted: int) -> None:
        if accepted:
            self.backoff, self.length = 0, min(self.most, 2 * accepted + 2)
        else:
            self.backoff = min(16, 2 * self.backoff or 1)
            self.pause, self.length = self.backoff, min(self.most, 2)


def lookup_drafts(
    tokens: torch.Tensor, live: torch.Tensor, k: int, longest: int = 3, shortest: int = 2
) -> torch.Tensor | None:
    """Prompt lookup decoding's drafts (Saxena, 2023) for the rows of `tokens` (batch, time): up to `k` tokens that
    followed an earlier occurrence of the row's last n tokens, for the largest n in [`shortest`, `longest`] that
    occurs: the latest occurrence followed by k tokens, or else the one followed by the most (a run that repeats
    near the end leaves little after its latest occurrence). -1 marks padding, which matches nothing. The drafts
    are cut to the shortest of the `live` rows' (a batch advances together; other rows draft 0s), and are None when
    a live row has none. What followed one earlier token predicts too little to pay for the wider pass: replayed on
    recorded outputs, dropping it gained 5-20% on SmolLM2's chain-of-thought tasks."""
    seen = tokens.cpu().numpy()
    drafts = [_lookup(row, k, longest, shortest) if alive else None
              for row, alive in zip(seen, live.tolist(), strict=True)]  # fmt: skip
    k = min(len(draft) for draft in drafts if draft is not None)
    if k == 0:
        return None
    rows = [draft[:k] if draft is not None else np.zeros(k, seen.dtype) for draft in drafts]
    return torch.from_numpy(np.stack(rows)).to(tokens.device)


def _lookup(row: np.ndarray, k: int, longest: int, shortest: int) -> np.ndarray:
    """One row's draft, its tokens searched as bytes by C's memory search (whole tokens only): ~20 us for 300
    tokens, where a loop over positions in Python takes up to ~130 us and torch's ops ~10 us each, against a small
    model's ~1 ms decoding step."""
    data, time, width = row.tobytes(), len(row), row.itemsize
    for n in range(min(longest, time - 1), shortest - 1, -1):
        tail = data[-n * width :]
        start = _latest(data, tail, max(0, time - k) * width, width)  # followed by k tokens
        if start is None:
            start = _earliest(data, tail, (time - 1) * width, width)  # followed by the most
        if start is not None:
            return row[start + n : start + n + k]
    return row[:0]


def _latest(data: bytes, tail: bytes, end: int, width: int) -> int | None:
    """The position of the last whole-token occurrence of `tail` inside data[:end]."""
    while (at := data.rfind(tail, 0, end)) >= 0:
        if at % width == 0:
            return at // width
        end = at + len(tail) - 1  # a match across token boundaries: look before it
    return None


def _earliest(data: bytes, tail: bytes, end: int, width: int) -> int | None:
    """The position of the first whole-token occurrence of `tail` inside data[:end]."""
    at = data.find(tail, 0, end)
    while at >= 0 and at % width:
        at = data.find(tail, at + 1, end)
    return at // width if at >= 0 else None


def generate_texts(
    model,
    tokenizer,
    prompts: Sequence[str],
    max_new_tokens: int = 200,
    stop: Sequence[str] = (),
    batch_size: int = 16,
    **sampling,
) -> list[str]:
    """Text in, text out: for each prompt, its continuation (decoder-only) or the output for it as input
    (encoder-decoder), cut before the first stop string or end-of-text token. Prompts of the same length in
    tokens are generated together, `batch_size` at a time, so no row is padded; a batch samples from one
    generator seeded with `seed`, so the same prompts give the same texts."""
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1 (got {batch_size})")
    if any(s == "" for s in stop):
        raise ConfigError("a stop string is empty (it would stop before the first token); give it some text")
    device = next(model.parameters()).device
    encoded = [tokenizer.encode(prompt).ids for prompt in prompts]
    if not all(encoded):
        raise ConfigError("the prompt is empty (it encodes to no tokens); give it some text")
    seq2seq = model.config.arch == "encoder_decoder"
    eos = [i for i in map(tokenizer.token_to_id, END_OF_TEXT) if i is not None]
    bos = tokenizer.token_to_id("<s>") if seq2seq else None
    if seq2seq:  # framed as in training: `text </s>` (T5's pretraining and tasks), `<s> text </s>` (BART's)
        encoded = [([bos] if bos is not None else []) + ids + eos[-1:] for ids in encoded]

    def continuation(row: list[int], skip: int) -> tuple[str, bool]:
        """The row's text after the prompt (or the start token) up to its first end-of-text, and whether it ended."""
        out = row[skip:]
        if out[:1] == [bos]:  # a BART's output begins as its targets did, with <s>
            out = out[1:]
        ends = [at for at, i in enumerate(out) if i in eos]
        # a span-corruption model answers in sentinels (<extra_id_0> ...): show them
        text = tokenizer.decode(out[: ends[0]] if ends else out, skip_special_tokens=not seq2seq)
        return text, bool(ends) or any(s in text for s in stop)

    by_length: dict[int, list[int]] = {}
    for i, ids in enumerate(encoded):
        by_length.setdefault(len(ids), []).append(i)
    texts = [""] * len(prompts)
    for length, indices in by_length.items():
        skip = 1 if seq2seq else length  # the start token, or the prompt
        for first in range(0, len(indices), batch_size):
            rows = indices[first : first + batch_size]
            idx = torch.tensor([encoded[i] for i in rows], dtype=torch.long, device=device)

            def all_stopped(tokens: torch.Tensor, skip: int = skip) -> bool:
                return all(continuation(row, skip)[1] for row in tokens.tolist())

            out = generate(model, idx, max_new_tokens, stop_ids=eos, should_stop=all_stopped if stop else None,
                           **sampling)  # fmt: skip
            for row, i in zip(out.tolist(), rows, strict=True):
                text = continuation(row, skip)[0]
                for s in stop:
                    text = text.split(s, 1)[0]
                texts[i] = text
    return texts


def generate_text(model, tokenizer, prompt: str, max_new_tokens: int = 200, stop: Sequence[str] = (), **sampling):
    """`generate_texts` for one prompt."""
    return generate_texts(model, tokenizer, [prompt], max_new_tokens, stop, **sampling)[0]
