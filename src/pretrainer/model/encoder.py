"""Encoder-only model (BERT): every token sees every token; trained by masked-language modelling.

BERT, RoBERTa, ALBERT, SpanBERT and DistilBERT are configs of this class: post-LN (original BERT) or pre-LN,
learned positions (RoBERTa's start at an offset), segment embeddings, an MLM head tied to the word embeddings, a
pooler on <cls> (DistilBERT has none), an optional NSP (or SOP) head, SpanBERT's optional span-boundary head, and
ELECTRA's replaced-token head (`head=rtd`) in place of the MLM one.
ALBERT's factorised embedding (`embedding_dim`) keeps the tables and the MLM head's output narrow, projected to and
from d_model; `share_layers` applies one block n_layer times.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from ..errors import ConfigError
from .blocks import Block, activate, check_positions, init_weights, norm, router_loss
from .heads import TaskHead
from .ops import linear_cross_entropy


class Encoder(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config = config.resolved()  # every size spelled out
        width = config.embedding_dim or config.d_model
        self.tok_emb = nn.Embedding(config.vocab_size, width)
        self.pos_emb = nn.Embedding(config.position_offset + config.max_seq_len, width)
        self.type_emb = nn.Embedding(config.type_vocab_size, width) if config.type_vocab_size else None
        self.emb_norm = norm(config, width)
        self.emb_proj = nn.Linear(width, config.d_model) if config.embedding_dim else None
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(
            Block(config, causal=False, layer=i) for i in range(1 if config.share_layers else config.n_layer)
        )
        # pre-LN leaves the residual stream un-normalised; post-LN's last block already ends in a norm
        self.norm_f = norm(config) if config.norm_position == "pre" else nn.Identity()
        pooled = config.pooler and config.head in ("lm", "sequence")
        self.pooler = nn.Linear(config.d_model, config.d_model) if pooled else None
        if config.head == "lm":
            # MLM head: transform (dense, activation, norm), then the word embeddings transposed plus a bias
            self.mlm_dense = nn.Linear(config.d_model, width)
            self.mlm_norm = norm(config, width)
            self.mlm_bias = nn.Parameter(torch.zeros(config.vocab_size))
            self.mlm_decoder = nn.Linear(width, config.vocab_size, bias=False)
            self.nsp = nn.Linear(config.d_model, 2) if config.nsp_head else None
            if config.sbo_head:
                # SpanBERT: a masked token from its span's two boundary tokens and its place in the span, through
                # two layers (dense, GELU, LayerNorm), then the MLM head's tied decoder and bias
                self.sbo_position = nn.Embedding(config.max_seq_len, config.d_model)
                self.sbo = nn.Sequential(
                    nn.Linear(3 * config.d_model, config.d_model), nn.GELU(), norm(config),
                    nn.Linear(config.d_model, width), nn.GELU(), norm(config, width),
                )  # fmt: skip
        elif config.head == "rtd":  # ELECTRA's discriminator: per token, was it replaced? (dense, activation, dense)
            self.rtd_dense = nn.Linear(config.d_model, config.d_model)
            self.rtd_out = nn.Linear(config.d_model, 1)
        else:
            self.head = TaskHead(config)
        init_weights(self, config)
        if config.head == "lm" and config.tie_embeddings:
            self.mlm_decoder.weight = self.tok_emb.weight

    def encode(self, input_ids, token_type_ids=None, padding_mask=None, first_only=False) -> torch.Tensor:
        """Hidden states (batch, time, d_model); with `first_only`, those at <cls> (position 0) alone, (batch, 1,
        d_model), the last layer computing nothing else. `padding_mask` (batch, time) is True for real tokens."""
        b, t = input_ids.shape
        check_positions(self.config, t)
        offset = self.config.position_offset
        x = self.tok_emb(input_ids) + self.pos_emb(torch.arange(offset, offset + t, device=input_ids.device))
        if self.type_emb is not None:
            x = x + self.type_emb(torch.zeros_like(input_ids) if token_type_ids is None else token_type_ids)
        x = self.drop(self.emb_norm(x))
        if self.emb_proj is not None:
            x = self.emb_proj(x)
        real = keep = None
        packed = first_only or (padding_mask is not None and not padding_mask.all())
        if packed and not self.config.moe_experts:  # experts route per sequence: they need the (batch, time) layout
            # padding is dead weight outside attention: every other layer works on the real tokens alone, and
            # the padding's hidden states come out as zeros
            if padding_mask is None:
                padding_mask = torch.ones_like(input_ids, dtype=torch.bool)
            real = padding_mask.flatten().nonzero().squeeze(1)
            x = x.flatten(0, 1)[real]
            if first_only:  # the rows of x at position 0
                keep = torch.searchsorted(real, torch.arange(b, device=real.device) * t)
        n = self.config.n_layer
        for i in range(n):
            block = self.blocks[0 if self.config.share_layers else i]
            x = block(x, key_padding_mask=padding_mask, real=real, keep=keep if i == n - 1 else None)
        x = self.norm_f(x)
        if first_only:
            return x[:, None] if real is not None else x[:, :1]
        if real is None:
            return x
        return x.new_zeros(b * t, x.shape[-1]).index_copy(0, real, x).view(b, t, -1)

    def mlm_transform(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.mlm_norm(activate(self.mlm_dense(hidden), self.config.activation))

    def rtd_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(batch, time) logits that each token was replaced."""
        return self.rtd_out(activate(self.rtd_dense(hidden), self.config.activation)).squeeze(-1)

    def pooled(self, hidden: torch.Tensor) -> torch.Tensor:
        """BERT's sentence vector: tanh(dense(hidden at <cls>, position 0)); without a pooler, the hidden state at
        <cls> itself."""
        return hidden[:, 0] if self.pooler is None else torch.tanh(self.pooler(hidden[:, 0]))

    def mlm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.mlm_decoder(self.mlm_transform(hidden)) + self.mlm_bias

    def nsp_loss(self, hidden: torch.Tensor, nsp_labels: torch.Tensor) -> torch.Tensor:
        if self.nsp is None:
            raise ConfigError("nsp_labels given but the model has no NSP head; set model.nsp_head=true")
        return F.cross_entropy(self.nsp(self.pooled(hidden)).float(), nsp_labels)

    def sbo_hidden(self, hidden, chosen, span_left, span_right, span_position) -> torch.Tensor:
        """The span-boundary head's features (before the tied decoder) for the `chosen` (masked) positions."""
        rows = chosen.nonzero()[:, 0]
        boundaries = [hidden[rows, span_left[chosen]], hidden[rows, span_right[chosen]]]
        return self.sbo(torch.cat([*boundaries, self.sbo_position(span_position[chosen])], -1))

    def forward(
        self,
        input_ids,
        targets=None,
        token_type_ids=None,
        padding_mask=None,
        nsp_labels=None,
        span_left=None,
        span_right=None,
        span_position=None,
        **labels,
    ):
        """(MLM logits, None), or with `targets` (-100 where not masked): (None, MLM loss), where the head
        runs on the masked positions only; with `nsp_labels` too, the NSP loss is added; with the spans'
        boundaries (`span_left`, `span_right`, `span_position`), the span-boundary loss on the same targets. With
        a task head: (logits, loss or None), `labels` being `labels` or `start_positions` and `end_positions`."""
        hidden = self.encode(input_ids, token_type_ids, padding_mask, first_only=self.config.head == "sequence")
        if self.config.head == "rtd":
            return self.rtd_logits(hidden), None
        if self.config.head != "lm":
            features = self.pooled(hidden) if self.config.head == "sequence" else hidden
            logits, loss = self.head(features, padding_mask, **labels)
            return logits, None if loss is None else loss + router_loss(self)
        if targets is None:
            return self.mlm_logits(hidden), None
        chosen = targets != -100
        h = self.mlm_transform(hidden[chosen])
        loss = linear_cross_entropy(h, self.mlm_decoder.weight, targets[chosen], bias=self.mlm_bias)
        if span_left is not None:
            boundary = self.sbo_hidden(hidden, chosen, span_left, span_right, span_position)
            loss = loss + linear_cross_entropy(boundary, self.mlm_decoder.weight, targets[chosen], bias=self.mlm_bias)
        if nsp_labels is not None:
            loss = loss + self.nsp_loss(hidden, nsp_labels)
        return None, loss + router_loss(self)

    @torch.no_grad()
    def eval_sums(
        self,
        input_ids,
        targets=None,
        token_type_ids=None,
        padding_mask=None,
        nsp_labels=None,
        span_left=None,
        span_right=None,
        span_position=None,
        **labels,
    ):
        """Validation numbers as (sum, count) pairs the trainer adds up over batches: the batch's mean loss (as
        training counts it), how many masked tokens the MLM head predicts right, with span boundaries how many
        the span-boundary head does, and with `nsp_labels` how many pairs the NSP head does."""
        if self.config.head != "lm":
            logits, loss = self(input_ids, token_type_ids=token_type_ids, padding_mask=padding_mask, **labels)
            return self.head.eval_sums(logits, loss, **labels)
        hidden = self.encode(input_ids, token_type_ids, padding_mask)
        chosen = targets != -100
        logits = self.mlm_logits(hidden[chosen]).float()
        mlm_loss = F.cross_entropy(logits, targets[chosen], reduction="sum")
        loss = mlm_loss / chosen.sum().clamp(min=1)
        sums = {
            "mlm_loss": (mlm_loss, chosen.sum()),  # val_loss less the other objectives' losses
            "mlm_accuracy": ((logits.argmax(-1) == targets[chosen]).sum(), chosen.sum()),
        }
        if span_left is not None:
            boundary = self.sbo_hidden(hidden, chosen, span_left, span_right, span_position)
            sbo_logits = self.mlm_decoder(boundary).float() + self.mlm_bias
            loss = loss + F.cross_entropy(sbo_logits, targets[chosen], reduction="sum") / chosen.sum().clamp(min=1)
            sums["sbo_accuracy"] = ((sbo_logits.argmax(-1) == targets[chosen]).sum(), chosen.sum())
        if nsp_labels is not None:
            nsp_logits = self.nsp(self.pooled(hidden)).float()
            loss = loss + F.cross_entropy(nsp_logits, nsp_labels)
            sums["nsp_accuracy"] = ((nsp_logits.argmax(-1) == nsp_labels).sum(), len(nsp_labels))
        return {"loss": (loss, 1), **sums}
