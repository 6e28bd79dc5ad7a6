"""Encoder-decoder model (T5, BART): an encoder whose tokens see each other, and a decoder whose tokens see
their past and, through cross-attention, every encoder token. Trained by span corruption (T5) or by denoising
(BART: learned positions from an offset, a norm over the embeddings, post-LN blocks, GELU, biases).

T5 v1.0 and v1.1 are configs: RMSNorm without bias, relative position bias (bucketed, bidirectional in
the encoder, causal in the decoder, computed once per stack), no 1/sqrt(d) in attention, ReLU (v1.0) or
gated-GELU (v1.1) feed-forward, a head tied to the embeddings with a d_model^-0.5 rescale (v1.0) or without
it (v1.1 as `transformers` 5 builds it; the original v1.1 head is untied).
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import ModelConfig
from .blocks import (
    MLP,
    Attention,
    Block,
    KVCache,
    RelativePositionBias,
    SwitchMLP,
    check_positions,
    init_weights,
    norm,
    router_loss,
)
from .ops import linear_cross_entropy


@torch.no_grad()
def t5_init(model: nn.Module, config: ModelConfig) -> None:
    """T5's initialisation (Mesh TensorFlow): each matrix N(0, fan_in^-0.5), queries by an extra head_dim^-0.5,
    which is where the 1/sqrt(head_dim) that T5's attention leaves out went; embeddings N(0, 1)."""
    d, head_dim = config.d_model, config.head_dim
    q_size = config.n_head * head_dim
    for module in model.modules():
        if isinstance(module, Attention):
            q = module.q.weight if module.cross else module.qkv.weight[:q_size]
            kv = module.kv.weight if module.cross else module.qkv.weight[q_size:]
            q.normal_(0.0, (d * head_dim) ** -0.5)
            kv.normal_(0.0, d**-0.5)
            module.proj.weight.normal_(0.0, q_size**-0.5)
        elif isinstance(module, MLP):
            module.fc.weight.normal_(0.0, d**-0.5)
            module.proj.weight.normal_(0.0, module.proj.weight.shape[1] ** -0.5)
        elif isinstance(module, SwitchMLP):
            module.router.weight.normal_(0.0, d**-0.5)
        elif isinstance(module, RelativePositionBias):
            module.embedding.weight.normal_(0.0, d**-0.5)
    model.tok_emb.weight.normal_(0.0, 1.0)
    model.lm_head.weight.normal_(0.0, 1.0 if config.head_scale else d**-0.5)


class Stack(nn.Module):
    """The encoder (causal=False) or the decoder (causal=True, with cross-attention) of an EncoderDecoder. Positions
    are T5's relative bias, or (BART) a learned table per stack, `position_offset` rows in as BART's checkpoints
    have them, followed by a norm of the embeddings."""

    def __init__(self, config: ModelConfig, n_layer: int, causal: bool):
        super().__init__()
        self.config = config
        if config.positions == "relative":
            self.rel_bias = RelativePositionBias(config, bidirectional=not causal)
        else:
            self.pos_emb = nn.Embedding(config.position_offset + config.max_seq_len, config.d_model)
            self.emb_norm = norm(config)
        self.blocks = nn.ModuleList(Block(config, causal=causal, cross=causal, layer=i) for i in range(n_layer))
        # pre-LN leaves the residual stream un-normalised; post-LN's last block already ends in a norm
        self.norm_f = norm(config) if config.norm_position == "pre" else nn.Identity()
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x, padding_mask=None, memory=None, memory_mask=None, cache=None):
        start = cache[0].length if cache else 0
        t = x.shape[1]
        bias = None
        if self.config.positions == "relative":
            bias = self.rel_bias(t, start + t, device=x.device)
        else:
            check_positions(self.config, start + t)
            offset = self.config.position_offset + start
            x = self.emb_norm(x + self.pos_emb(torch.arange(offset, offset + t, device=x.device)))
        x = self.drop(x)
        for i, block in enumerate(self.blocks):
            x = block(
                x,
                cache=cache[i] if cache else None,
                key_padding_mask=padding_mask,
                position_bias=bias,
                memory=memory,
                memory_mask=memory_mask,
            )
        return self.drop(self.norm_f(x))


class EncoderDecoder(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config = config.resolved()  # every size spelled out
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)  # shared by encoder and decoder
        self.encoder = Stack(config, config.n_layer, causal=False)
        self.decoder = Stack(config, config.n_decoder_layer, causal=True)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.positions == "relative":
            t5_init(self, config)
        else:
            init_weights(self, config)  # BART's: N(0, 0.02)
        if config.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight

    def encode(self, input_ids, padding_mask=None) -> torch.Tensor:
        return self.encoder(self.tok_emb(input_ids), padding_mask=padding_mask)

    def decode(self, decoder_input_ids, memory, memory_mask=None, decoder_padding_mask=None, cache=None):
        hidden = self.decoder(
            self.tok_emb(decoder_input_ids),
            padding_mask=decoder_padding_mask,
            memory=memory,
            memory_mask=memory_mask,
            cache=cache,
        )
        if self.config.head_scale:  # T5 v1.0's tied head sees d_model^-0.5-scaled states (Mesh TensorFlow)
            hidden = hidden * self.config.d_model**-0.5
        return hidden

    def forward(
        self,
        input_ids,
        decoder_input_ids,
        targets=None,
        padding_mask=None,
        decoder_padding_mask=None,
        cache=None,
        memory=None,
    ):
        """(logits, None) over the decoder positions, or with `targets`: (None, mean cross-entropy and in training
        the Switch layers' `router_loss`), targets of -100 ignored. `padding_mask` (batch, input time) is True for
        real input tokens; pass `memory` (the encoder output) to skip re-encoding while decoding step by step."""
        if memory is None:
            memory = self.encode(input_ids, padding_mask)
        hidden = self.decode(decoder_input_ids, memory, padding_mask, decoder_padding_mask, cache)
        if targets is not None:
            loss = linear_cross_entropy(hidden.flatten(0, 1), self.lm_head.weight, targets.flatten())
            return None, loss + router_loss(self)
        return self.lm_head(hidden), None

    def new_cache(self, batch: int, length: int) -> list[KVCache]:
        """Caches for the decoder's layers: self-attention keys and values, and cross-attention's of `memory`."""
        return KVCache.for_layers(self.config, self.config.n_decoder_layer, batch, length, self.tok_emb.weight)

    @torch.no_grad()
    def eval_sums(self, **batch) -> dict:
        """Validation numbers as (sum, count) pairs the trainer adds up over batches: the loss summed over the
        batch's target tokens (batches of text-to-text tasks differ in size)."""
        tokens = (batch["targets"] != -100).sum()
        return {"loss": (self(**batch)[1] * tokens, tokens)}

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, **sampling) -> torch.Tensor:
        """Decoder tokens for encoder input `input_ids`; see `pretrainer.model.generate.generate`."""
        from .generate import generate

        return generate(self, input_ids, max_new_tokens, **sampling)
