"""Task heads: what fine-tuning puts on a pretrained encoder or decoder in place of its language-model head.

One linear layer, fresh, on the body's hidden states (`model.head`):
- `sequence`: on one vector per text — BERT's pooled `<cls>`, or a decoder's last real token (the only position
  that has seen the whole text) — giving `model.n_labels` class logits, or one number when n_labels is 1
  (regression);
- `token`: on every token, one class per token (tagging);
- `span`: on every token, a start and an end logit (extractive question answering).
An encoder-decoder needs none: its LM head answers every task as text.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig


class TaskHead(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.kind, self.n_labels = config.head, config.n_labels
        self.drop = nn.Dropout(config.dropout)
        self.linear = nn.Linear(config.d_model, 2 if self.kind == "span" else config.n_labels)

    def forward(self, features, padding_mask=None, labels=None, start_positions=None, end_positions=None):
        """(logits, loss or None). `features`: (batch, d_model) for `sequence`, (batch, time, d_model) otherwise.
        Logits: (batch, n_labels), or (batch,) for regression; (batch, time, n_labels) for `token`; (batch, time,
        2) start and end for `span`, padding set to -inf so that no answer starts or ends there."""
        logits = self.linear(self.drop(features)).float()
        if self.kind == "sequence" and self.n_labels == 1:
            logits = logits.squeeze(-1)
        if self.kind == "span" and padding_mask is not None:
            logits = logits.masked_fill(~padding_mask[..., None], float("-inf"))
        if self.kind == "span":
            if start_positions is None:
                return logits, None
            loss = F.cross_entropy(logits[..., 0], start_positions) + F.cross_entropy(logits[..., 1], end_positions)
            return logits, loss / 2
        if labels is None:
            return logits, None
        if self.kind == "sequence" and self.n_labels == 1:
            return logits, F.mse_loss(logits, labels.float())
        return logits, F.cross_entropy(logits.flatten(0, -2), labels.flatten(), ignore_index=-100)

    def eval_sums(self, logits, loss, labels=None, start_positions=None, end_positions=None) -> dict:
        """Validation numbers as (sum, count) pairs: the loss weighted by the batch's rows (batches may differ in
        size), and how many predictions are right (classes, tags of labelled tokens, or answer spans whose start and
        end are both right); a regression has its loss only."""
        rows = len(logits)
        sums = {"loss": (loss * rows, rows)}
        if self.kind == "span":
            right = (logits[..., 0].argmax(-1) == start_positions) & (logits[..., 1].argmax(-1) == end_positions)
            sums["accuracy"] = (right.sum(), len(right))
        elif self.n_labels > 1:
            labelled = labels != -100
            sums["accuracy"] = ((logits.argmax(-1) == labels)[labelled].sum(), labelled.sum())
        return sums


def last_real_token(hidden: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
    """(batch, d_model): each row's hidden state at its last real token (inputs are padded on the right)."""
    if padding_mask is None:
        return hidden[:, -1]
    last = padding_mask.long().sum(1) - 1
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
