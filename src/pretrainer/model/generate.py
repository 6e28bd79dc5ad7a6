"""Decoding loops: greedy, temperature, top-k and top-p sampling, with or without a KV cache."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from ..errors import ConfigError

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


@torch.no_grad()
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
) -> torch.Tensor:
    """Generate up to `max_new_tokens` tokens with a KV cache (or without, `use_cache=False`).

    Decoder-only: continue `idx` (batch, time) and return prompt + continuation. Encoder-decoder: encode
    `idx` (with `padding_mask`, True for real tokens) once and return the decoder's tokens, starting with
    `model.config.decoder_start_id`. Stops early once every row has produced one of `stop_ids`, or when
    `should_stop` (given the tokens so far) says so. When the sequence outgrows the model's positions, the
    context is cropped to the last `max_seq_len` tokens and recomputed (no cache can hold it).
    """
    check_sampling(max_new_tokens, temperature, top_k, top_p)
    was_training = model.training
    model.eval()
    max_len = model.config.max_seq_len
    if model.config.arch == "encoder_decoder":
        memory = model.encode(idx, padding_mask)
        out = torch.full((idx.shape[0], 1), model.config.decoder_start_id, dtype=idx.dtype, device=idx.device)

        def logits_for(tokens, cache):
            return model(None, tokens, memory=memory, padding_mask=padding_mask, cache=cache)[0]
    else:
        out = idx

        def logits_for(tokens, cache):
            return model(tokens, cache=cache)[0]

    generator = torch.Generator(device=idx.device).manual_seed(seed) if seed is not None else None
    cache = None
    finished = torch.zeros(out.shape[0], dtype=torch.bool, device=out.device)
    stop = torch.tensor(list(stop_ids), dtype=out.dtype, device=out.device)
    for _ in range(max_new_tokens):
        if use_cache and out.shape[1] < max_len:
            if cache is None:
                cache = model.new_cache(out.shape[0], min(max_len, out.shape[1] + max_new_tokens))
                logits = logits_for(out, cache)
            else:
                logits = logits_for(out[:, -1:], cache)
        else:
            cache = None  # the window slides from here on: recompute over the last max_len tokens
            logits = logits_for(out[:, -max_len:], None)
        token = next_token(logits[:, -1, :], temperature, top_k, top_p, generator)
        out = torch.cat([out, token], dim=1)
        if len(stop):
            finished |= torch.isin(token[:, 0], stop)
            if bool(finished.all()):
                break
        if should_stop is not None and should_stop(out):
            break
    model.train(was_training)
    return out


def generate_text(
    model,
    tokenizer,
    prompt: str,
    max_new_tokens: int = 200,
    stop: Sequence[str] = (),
    **sampling,
) -> str:
    """Text in, text out: the continuation of `prompt` (decoder-only) or the output for input `prompt`
    (encoder-decoder), cut before the first stop string or end-of-text token."""
    if any(s == "" for s in stop):
        raise ConfigError("a stop string is empty (it would stop before the first token); give it some text")
    device = next(model.parameters()).device
    ids = tokenizer.encode(prompt).ids
    if not ids:
        raise ConfigError("the prompt is empty (it encodes to no tokens); give it some text")
    idx = torch.tensor([ids], dtype=torch.long, device=device)
    seq2seq = model.config.arch == "encoder_decoder"
    skip = 1 if seq2seq else len(ids)  # the start token, or the prompt
    eos = [i for i in map(tokenizer.token_to_id, END_OF_TEXT) if i is not None]

    def continuation(tokens: torch.Tensor) -> str:
        out = [i for i in tokens[0, skip:].tolist() if i not in eos]
        # a span-corruption model answers in sentinels (<extra_id_0> ...): show them
        return tokenizer.decode(out, skip_special_tokens=not seq2seq)

    def hit_stop(tokens: torch.Tensor) -> bool:
        text = continuation(tokens)
        return any(s in text for s in stop)

    out = generate(model, idx, max_new_tokens, stop_ids=eos, should_stop=hit_stop if stop else None, **sampling)
    text = continuation(out)
    for s in stop:
        text = text.split(s, 1)[0]
    return text
