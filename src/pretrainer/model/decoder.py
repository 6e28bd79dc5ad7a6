"""Decoder-only language model: GPT-2 and Llama are two configs of this one class.

GPT-2: learned positions, LayerNorm, GELU(tanh) MLP, biases, tied embeddings.
Llama: RoPE, RMSNorm, SwiGLU, grouped-query attention, no biases, untied head.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import ModelConfig
from .blocks import Block, KVCache, Rotary, check_positions, init_weights, norm, router_loss
from .heads import TaskHead, last_real_token
from .ops import linear_cross_entropy


class Decoder(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config = config.resolved()  # every size spelled out
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.pos_emb = nn.Embedding(config.max_seq_len, config.d_model) if config.positions == "learned" else None
        self.rotary = Rotary(config) if config.positions == "rope" else None
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config, causal=True, layer=i) for i in range(config.n_layer))
        self.norm_f = norm(config)
        if config.head == "lm":
            self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        else:
            self.head = TaskHead(config)
        init_weights(self, config)
        if config.head == "lm" and config.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight

    def forward(
        self,
        input_ids: torch.Tensor,
        targets: torch.Tensor | None = None,
        cache: list[KVCache] | None = None,
        padding_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        logits_to_keep: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(logits, None): logits (batch, time, vocab) for `input_ids`; with `cache`, they continue the
        cached positions; with `logits_to_keep` = n > 0, for the last n positions only (decoding needs one: the
        head over a long prompt's every position is a fifth of a small model's work). With `targets`: (None,
        mean cross-entropy), targets of -100 ignored; the logits are then never materialised whole (see
        `linear_cross_entropy`). With a sequence head: (logits, loss or None) from the last real token
        (`padding_mask` True on real tokens; padding on the right, which causal attention keeps out of every real
        position). A loss includes, in training, the Switch layers' `router_loss`."""
        start = cache[0].length if cache else 0
        t = input_ids.shape[1]
        check_positions(self.config, start + t)
        x = self.tok_emb(input_ids)
        if self.pos_emb is not None:
            x = x + self.pos_emb(torch.arange(start, start + t, device=input_ids.device))
        x = self.drop(x)
        for i, block in enumerate(self.blocks):
            x = block(x, self.rotary, cache[i] if cache else None)
        x = self.norm_f(x)
        if self.config.head == "sequence":
            logits, loss = self.head(last_real_token(x, padding_mask), labels=labels)
            return logits, None if loss is None else loss + router_loss(self)
        if targets is not None:
            loss = linear_cross_entropy(x.flatten(0, 1), self.lm_head.weight, targets.flatten())
            return None, loss + router_loss(self)
        return self.lm_head(x[:, -logits_to_keep:] if logits_to_keep else x), None

    def new_cache(self, batch: int, length: int) -> list[KVCache]:
        return KVCache.for_layers(self.config, self.config.n_layer, batch, length, self.tok_emb.weight)

    @torch.no_grad()
    def eval_sums(self, **batch) -> dict:
        """Validation numbers as (sum, count) pairs the trainer adds up over batches: the batch's mean loss (and
        with a sequence head, how many it classifies right)."""
        logits, loss = self(**batch)
        if self.config.head == "sequence":
            return self.head.eval_sums(logits, loss, labels=batch["labels"])
        return {"loss": (loss, 1)}

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, **sampling) -> torch.Tensor:
        """Continue `idx` (batch, time) by `max_new_tokens`; see `pretrainer.model.generate.generate`."""
        from .generate import generate

        return generate(self, idx, max_new_tokens, **sampling)
