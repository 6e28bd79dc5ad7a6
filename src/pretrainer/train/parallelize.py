"""What is applied to a built model from outside, so that the model code stays single-device PyTorch (as in
torchtitan): activation checkpointing per block. (Compile is applied by the trainer, `train.compile`.)"""

from __future__ import annotations

import functools

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..model.blocks import Block


def apply_activation_checkpointing(model: nn.Module) -> int:
    """Make every transformer block keep only its inputs while gradients are on and recompute its activations in
    the backward pass: memory for one block's activations instead of all of them, for about a third more compute.
    Parameters and state-dict keys are unchanged (only each block's `forward` is wrapped); without gradients
    (evaluation, generation) the blocks run as before. Returns the number of blocks wrapped."""
    blocks = [m for m in model.modules() if isinstance(m, Block)]
    for block in blocks:
        block.forward = functools.partial(_checkpointed, block.forward)
    return len(blocks)


def _checkpointed(forward, *args, **kwargs):
    if not torch.is_grad_enabled():
        return forward(*args, **kwargs)
    # non-reentrant: takes keyword arguments, and restores the RNG so that dropout draws the same mask twice
    return checkpoint(forward, *args, use_reentrant=False, **kwargs)
