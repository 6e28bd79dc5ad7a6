"""Decoder-only language model: GPT-2 and Llama are two configs of this one class.

GPT-2: learned positions, LayerNorm, GELU(tanh) MLP, biases, tied embeddings.
Llama: RoPE, RMSNorm, SwiGLU, grouped-query attention, no biases, untied head.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from .blocks import Block, KVCache, Rotary, init_weights, norm


class Decoder(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.vocab_size is None:
            raise ValueError("model.vocab_size must be set before building a model (the trainer sets it)")
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.pos_emb = nn.Embedding(config.max_seq_len, config.d_model) if config.positions == "learned" else None
        head_dim = config.d_model // config.n_head
        self.rotary = Rotary(head_dim, config.max_seq_len, config.rope_theta) if config.positions == "rope" else None
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config, causal=True) for _ in range(config.n_layer))
        self.norm_f = norm(config)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        init_weights(self, config)
        if config.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        cache: list[KVCache] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (batch, time, vocab) for token ids `idx`; with `targets`, also the mean cross-entropy
        (targets of -100 are ignored). With `cache`, `idx` continues the cached positions."""
        start = cache[0].length if cache else 0
        t = idx.shape[1]
        if start + t > self.config.max_seq_len:
            raise ValueError(
                f"sequence of {start + t} tokens is longer than the model's positions "
                f"(model.max_seq_len={self.config.max_seq_len}); shorten the input"
            )
        x = self.tok_emb(idx)
        if self.pos_emb is not None:
            x = x + self.pos_emb(torch.arange(start, start + t, device=idx.device))
        x = self.drop(x)
        for i, block in enumerate(self.blocks):
            x = block(x, self.rotary, cache[i] if cache else None)
        logits = self.lm_head(self.norm_f(x))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100)
        return logits, loss

    def new_cache(self, batch: int, device=None, dtype=None) -> list[KVCache]:
        c = self.config
        p = self.tok_emb.weight
        return [
            KVCache(
                batch,
                c.n_kv_head or c.n_head,
                c.max_seq_len,
                c.d_model // c.n_head,
                device or p.device,
                dtype or p.dtype,
            )
            for _ in range(c.n_layer)
        ]

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, **sampling) -> torch.Tensor:
        """Continue `idx` (batch, time) by `max_new_tokens`; see `pretrainer.model.generate.generate`."""
        from .generate import generate

        return generate(self, idx, max_new_tokens, **sampling)
