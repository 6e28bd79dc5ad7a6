"""Decoding loops: greedy, temperature, top-k and top-p sampling, with or without a KV cache."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


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
) -> torch.Tensor:
    """Append up to `max_new_tokens` tokens to `idx` (batch, time) and return the whole sequence.

    Generation stops early once every row has produced one of `stop_ids`, or when `should_stop`
    (given the tokens so far) says so. When the sequence outgrows the model's positions, the context
    is cropped to the last `max_seq_len` tokens and recomputed (no cache can hold it).
    """
    was_training = model.training
    model.eval()
    max_len = model.config.max_seq_len
    generator = None
    if seed is not None:
        generator = torch.Generator(device=idx.device).manual_seed(seed)
    cache = None
    finished = torch.zeros(idx.shape[0], dtype=torch.bool, device=idx.device)
    stop = torch.tensor(list(stop_ids), dtype=idx.dtype, device=idx.device)
    for _ in range(max_new_tokens):
        if use_cache and idx.shape[1] < max_len:
            if cache is None:
                cache = model.new_cache(idx.shape[0])
                logits, _ = model(idx, cache=cache)
            else:
                logits, _ = model(idx[:, -1:], cache=cache)
        else:
            cache = None  # the window slides from here on: recompute over the last max_len tokens
            logits, _ = model(idx[:, -max_len:])
        token = next_token(logits[:, -1, :], temperature, top_k, top_p, generator)
        idx = torch.cat([idx, token], dim=1)
        if len(stop):
            finished |= torch.isin(token[:, 0], stop)
            if bool(finished.all()):
                break
        if should_stop is not None and should_stop(idx):
            break
    model.train(was_training)
    return idx


def generate_text(
    model,
    tokenizer,
    prompt: str,
    max_new_tokens: int = 200,
    stop: Sequence[str] = (),
    **sampling,
) -> str:
    """Text in, text out: the continuation of `prompt`, cut before the first stop string."""
    device = next(model.parameters()).device
    ids = tokenizer.encode(prompt).ids
    if not ids:
        raise ValueError("the prompt encodes to no tokens; give a non-empty --prompt")
    idx = torch.tensor([ids], dtype=torch.long, device=device)
    n_prompt = len(ids)

    def continuation(tokens: torch.Tensor) -> str:
        return tokenizer.decode(tokens[0, n_prompt:].tolist())

    def hit_stop(tokens: torch.Tensor) -> bool:
        text = continuation(tokens)
        return any(s in text for s in stop)

    eos = tokenizer.token_to_id("<|endoftext|>")
    out = generate(
        model,
        idx,
        max_new_tokens,
        stop_ids=[eos] if eos is not None else [],
        should_stop=hit_stop if stop else None,
        **sampling,
    )
    text = continuation(out)
    for s in stop:
        text = text.split(s, 1)[0]
    return text
