"""Parameter and FLOP accounting, and the peak FLOP/s that MFU is measured against."""

from __future__ import annotations

import functools
import time

import torch
from torch import nn

from ..config import ModelConfig


def count_params(model: nn.Module, embeddings: bool = True) -> int:
    """Parameters (shared tensors counted once); without token/position embeddings if asked."""
    seen, total = set(), 0
    skip = set()
    if not embeddings:
        skip = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    for p in model.parameters():
        if id(p) not in seen and id(p) not in skip:
            seen.add(id(p))
            total += p.numel()
    return total


def flops_per_token(config: ModelConfig, non_embedding_params: int, seq_len: int) -> float:
    """Training FLOPs per token: 6N for the weights' matmuls (forward and backward) plus 12·L·d·T for
    attention scores and values (PaLM, appendix B). N excludes embeddings, as in Kaplan et al., so a
    tied output head's matmul is not counted (an untied head is a Linear and is)."""
    return 6 * non_embedding_params + 12 * config.n_layer * config.d_model * seq_len


# dense bf16 tensor-core peaks (FLOP/s); fp32 on these runs through TF32 at half that rate
_GPU_PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12, "4090": 165e12}


@functools.cache
def measured_matmul_flops(dtype: torch.dtype = torch.float32, max_n: int = 1024, reps: int = 10) -> float:
    """The best rate of a large square matmul on this CPU (best of `reps`, so that a busy moment does not
    lower it): the practical ceiling that CPU MFU divides by. The size doubles up to `max_n` only while one
    product takes under 20 ms: a CPU without bf16 units does a 1024^3 bf16 product in seconds, not ms."""
    generator = torch.Generator().manual_seed(0)  # never touch the global RNG a resumed run depends on
    n = 128
    while True:
        a, b = (torch.randn(n, n, generator=generator).to(dtype) for _ in range(2))
        a @ b  # the first product of a size also pays for setting it up, which would stop the doubling early
        start = time.perf_counter()
        a @ b
        if n >= max_n or time.perf_counter() - start > 0.02:
            break
        n *= 2
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def peak_flops(device: torch.device, dtype: torch.dtype = torch.float32) -> float | None:
    """Peak FLOP/s of `device` for `dtype`: a table for known GPUs, a measurement on CPU, else None."""
    if device.type == "cpu":
        return measured_matmul_flops(dtype)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, bf16 in _GPU_PEAK_BF16.items():
            if key in name:
                return bf16 if dtype == torch.bfloat16 else bf16 / 2
    return None
