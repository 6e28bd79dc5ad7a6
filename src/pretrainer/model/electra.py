"""ELECTRA's pretraining (Clark et al., 2020): replaced-token detection. Two encoders of this library in one
module, so that the one trainer runs them: a small MLM generator fills the masked positions by sampling from its
predictions, and the discriminator (`model.head=rtd`) labels every token of the result original or replaced. The
loss is the generator's MLM loss plus `model.rtd_weight` (50) times the discriminator's; the two share their token,
position and segment embeddings. Every real token carries a loss, not only the 15% masked, which is why ELECTRA
learns more per FLOP than BERT. The discriminator is the model kept (`Electra.discriminator`)."""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from .blocks import router_loss
from .encoder import Encoder

IGNORE = -100


def generator_config(config: ModelConfig) -> ModelConfig:
    """The generator of an ELECTRA config: `generator_fraction` of the discriminator's width and MLP, heads of the
    same size (fewer of them), the same embedding tables (projected to its width) and an MLM head."""
    c = config.resolved()
    d_model = max(c.head_dim, round(c.d_model * c.generator_fraction))
    return dataclasses.replace(
        c, d_model=d_model, n_head=max(1, d_model // c.head_dim), n_kv_head=None, head_dim=None,
        d_ff=max(1, round(c.d_ff * c.generator_fraction)), embedding_dim=c.embedding_dim or c.d_model, head="lm",
        generator_fraction=None, pooler=False, nsp_head=False,
    ).resolved()  # fmt: skip


class Electra(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config = config.resolved()
        self.generator = Encoder(generator_config(config))
        self.discriminator = Encoder(dataclasses.replace(config, generator_fraction=None))  # the model kept
        for name in ("tok_emb", "pos_emb", "type_emb"):
            if getattr(self.discriminator, name) is not None:
                getattr(self.generator, name).weight = getattr(self.discriminator, name).weight
        if config.tie_embeddings:  # the generator's output layer stays the (now shared) word embeddings
            self.generator.mlm_decoder.weight = self.generator.tok_emb.weight

    def replace(self, input_ids, targets, token_type_ids=None, padding_mask=None):
        """(generator logits at the masked positions, discriminator input, which of its tokens are replaced): the
        masked positions are filled with tokens sampled from the generator (not back-propagated through) and the
        rest restored to the original text."""
        chosen = targets != IGNORE
        hidden = self.generator.encode(input_ids, token_type_ids, padding_mask)
        logits = self.generator.mlm_logits(hidden[chosen]).float()
        sampled = torch.multinomial(logits.detach().softmax(-1), 1).squeeze(1)
        original = torch.where(chosen, targets, input_ids)
        corrupted = original.masked_scatter(chosen, sampled)
        return logits, corrupted, corrupted != original

    def forward(self, input_ids, targets, token_type_ids=None, padding_mask=None, **_):
        """(None, generator MLM loss + rtd_weight × replaced-token loss over the real tokens)."""
        logits, corrupted, replaced = self.replace(input_ids, targets, token_type_ids, padding_mask)
        mlm = F.cross_entropy(logits, targets[targets != IGNORE])
        rtd = self._rtd_loss(corrupted, replaced, token_type_ids, padding_mask)[0]
        return None, mlm + self.config.rtd_weight * rtd + router_loss(self)

    def _rtd_loss(self, corrupted, replaced, token_type_ids, padding_mask):
        real = torch.ones_like(replaced) if padding_mask is None else padding_mask.bool()
        scores = self.discriminator(corrupted, token_type_ids=token_type_ids, padding_mask=padding_mask)[0].float()
        return F.binary_cross_entropy_with_logits(scores[real], replaced[real].float()), scores, real

    @torch.no_grad()
    def eval_sums(self, input_ids, targets, token_type_ids=None, padding_mask=None, **_) -> dict:
        """The loss as training counts it, the generator's MLM loss and accuracy, the discriminator's accuracy
        over real tokens and the share of them the generator replaced (as (sum, count) pairs)."""
        logits, corrupted, replaced = self.replace(input_ids, targets, token_type_ids, padding_mask)
        masked_targets = targets[targets != IGNORE]
        mlm = F.cross_entropy(logits, masked_targets, reduction="sum")
        rtd, scores, real = self._rtd_loss(corrupted, replaced, token_type_ids, padding_mask)
        n = len(masked_targets)
        return {
            "loss": (mlm / max(n, 1) + self.config.rtd_weight * rtd, 1),
            "mlm_loss": (mlm, n),
            "mlm_accuracy": ((logits.argmax(-1) == masked_targets).sum(), n),
            "rtd_accuracy": (((scores > 0) == replaced)[real].sum(), real.sum()),
            "replaced": (replaced[real].sum(), real.sum()),
        }


def kept_model(model: nn.Module) -> nn.Module:
    """What a pretraining run leaves to use: an ELECTRA run its discriminator (the generator was for pretraining),
    any other its model."""
    return model.discriminator if isinstance(model, Electra) else model
