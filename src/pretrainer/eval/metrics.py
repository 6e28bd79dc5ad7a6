"""Evaluation numbers: perplexity and the baselines a language model must beat."""

from __future__ import annotations

import math

import numpy as np


def perplexity(loss: float) -> float:
    return math.exp(min(loss, 50.0))


def unigram_loss(train_tokens: np.ndarray, val_tokens: np.ndarray, vocab_size: int) -> float:
    """Cross-entropy (nats/token) on `val_tokens` of a model that predicts train-set token frequencies
    (add-one smoothed) and ignores context: the loss a language model must beat to have learned order."""
    counts = np.bincount(np.asarray(train_tokens), minlength=vocab_size).astype(np.float64) + 1.0
    log_p = np.log(counts / counts.sum())
    return float(-log_p[np.asarray(val_tokens)].mean())
