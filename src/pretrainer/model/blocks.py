"""The parts every transformer here is built from: one attention, one MLP, norms, positions, one block.

The three kinds of model differ only in which keys a query may see (`attention_mask`) and in the head
put on top; nothing below knows which kind it is part of.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig


def attention_mask(
    q_len: int,
    kv_len: int,
    *,
    causal: bool,
    key_padding_mask: torch.Tensor | None = None,
    device: torch.device | None = None,
) -> torch.Tensor | None:
    """Which keys each query may see, as SDPA's boolean mask (True = attend); None when it sees all.

    The one rule of the field: in an encoder (and in cross-attention) every query sees every key; in a
    decoder the query at absolute position p sees only keys at positions <= p. Queries are the last
    `q_len` of `kv_len` positions, so the rule holds during cached decoding too. `key_padding_mask`
    (batch, kv_len), True for real tokens, hides padding in either case.
    """
    mask = None
    if causal and q_len > 1:
        q_pos = torch.arange(kv_len - q_len, kv_len, device=device)
        mask = q_pos[:, None] >= torch.arange(kv_len, device=device)[None, :]
    if key_padding_mask is not None:
        keys = key_padding_mask[:, None, None, :].bool()
        mask = keys if mask is None else mask & keys
    return mask


def norm(config: ModelConfig) -> nn.Module:
    if config.norm == "rmsnorm":
        return nn.RMSNorm(config.d_model, eps=config.norm_eps)
    return nn.LayerNorm(config.d_model, eps=config.norm_eps, bias=config.bias)


class Rotary(nn.Module):
    """Rotary position embedding (RoPE) in the rotate-half layout that Llama checkpoints use."""

    def __init__(self, head_dim: int, max_seq_len: int, theta: float):
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float32), inv_freq)
        angles = torch.cat([angles, angles], dim=-1)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x: torch.Tensor, start: int) -> torch.Tensor:
        """Rotate x (batch, heads, time, head_dim) for positions start .. start+time-1."""
        t = x.shape[-2]
        cos, sin = self.cos[start : start + t].to(x.dtype), self.sin[start : start + t].to(x.dtype)
        half = x.shape[-1] // 2
        rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return x * cos + rotated * sin


class KVCache:
    """Keys and values of past positions for one attention layer, preallocated to the model's length."""

    def __init__(self, batch: int, n_kv_head: int, max_len: int, head_dim: int, device, dtype):
        self.k = torch.empty(batch, n_kv_head, max_len, head_dim, device=device, dtype=dtype)
        self.v = torch.empty_like(self.k)
        self.length = 0

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        end = self.length + k.shape[-2]
        self.k[:, :, self.length : end] = k
        self.v[:, :, self.length : end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]


class SelfAttention(nn.Module):
    def __init__(self, config: ModelConfig, causal: bool):
        super().__init__()
        self.n_head = config.n_head
        self.n_kv_head = config.n_kv_head or config.n_head
        self.head_dim = config.d_model // config.n_head
        self.causal = causal
        self.dropout = config.dropout
        self.qkv = nn.Linear(config.d_model, (self.n_head + 2 * self.n_kv_head) * self.head_dim, config.bias)
        self.proj = nn.Linear(self.n_head * self.head_dim, config.d_model, config.bias)

    def forward(
        self,
        x: torch.Tensor,
        rotary: Rotary | None = None,
        cache: KVCache | None = None,
        key_padding_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = self.qkv(x).split(
            [self.n_head * self.head_dim, self.n_kv_head * self.head_dim, self.n_kv_head * self.head_dim], -1
        )
        q = q.view(b, t, self.n_head, self.head_dim).transpose(1, 2)
        k = k.view(b, t, self.n_kv_head, self.head_dim).transpose(1, 2)
        v = v.view(b, t, self.n_kv_head, self.head_dim).transpose(1, 2)
        start = cache.length if cache is not None else 0
        if rotary is not None:
            q, k = rotary(q, start), rotary(k, start)
        if cache is not None:
            k, v = cache.append(k, v)
        if self.n_kv_head != self.n_head:  # grouped-query attention: each kv head serves a group of q heads
            k = k.repeat_interleave(self.n_head // self.n_kv_head, dim=1)
            v = v.repeat_interleave(self.n_head // self.n_kv_head, dim=1)
        kv_len = k.shape[-2]
        dropout = self.dropout if self.training else 0.0
        if x.device.type == "cpu" and q.dtype == torch.bfloat16:
            # torch's fused CPU attention is twice as fast in fp32 as in bf16 (fwd+bwd; see
            # benchmarks/RESULTS.md) and fp32 scores are more accurate: upcast, out of autocast's reach
            with torch.autocast("cpu", enabled=False):
                y = self._attend(q.float(), k.float(), v.float(), t, kv_len, key_padding_mask, dropout)
        else:
            y = self._attend(q, k, v, t, kv_len, key_padding_mask, dropout)
        return self.proj(y.transpose(1, 2).reshape(b, t, self.n_head * self.head_dim))

    def _attend(self, q, k, v, t, kv_len, key_padding_mask, dropout):
        if self.causal and key_padding_mask is None and t == kv_len:
            # the same rule as attention_mask, on SDPA's fused causal path
            return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)
        mask = attention_mask(t, kv_len, causal=self.causal, key_padding_mask=key_padding_mask, device=q.device)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)


class MLP(nn.Module):
    """Position-wise feed-forward: act(x W1) W2, or gated act(x Wg) * (x Wu) W2 (SwiGLU, GeGLU)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        d_ff = config.d_ff or 4 * config.d_model
        self.gated = config.gated_mlp
        self.activation = config.activation
        self.fc = nn.Linear(config.d_model, (2 if self.gated else 1) * d_ff, config.bias)
        self.proj = nn.Linear(d_ff, config.d_model, config.bias)

    def act(self, x: torch.Tensor) -> torch.Tensor:
        if self.activation == "gelu_tanh":
            return F.gelu(x, approximate="tanh")
        return getattr(F, self.activation)(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        if self.gated:
            gate, up = h.chunk(2, dim=-1)
            return self.proj(self.act(gate) * up)
        return self.proj(self.act(h))


class Block(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: ModelConfig, causal: bool):
        super().__init__()
        self.norm1 = norm(config)
        self.attn = SelfAttention(config, causal=causal)
        self.norm2 = norm(config)
        self.mlp = MLP(config)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x, rotary=None, cache=None, key_padding_mask=None):
        x = x + self.drop(self.attn(self.norm1(x), rotary, cache, key_padding_mask))
        return x + self.drop(self.mlp(self.norm2(x)))


def init_weights(model: nn.Module, config: ModelConfig) -> None:
    """GPT-2 init: N(0, std) everywhere, residual output projections scaled by 1/sqrt(2 * n_layer)."""
    residual_std = config.init_std / math.sqrt(2 * config.n_layer)
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            std = residual_std if name.endswith(".proj") else config.init_std
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=config.init_std)


class _LinearCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of (hidden @ weight.T) against targets with its gradient formed in the same pass:
    row chunk by row chunk, each chunk's softmax becomes d(loss)/d(logits) while it is still in cache, so
    the fp32 logits are never stored whole (only the gradient, in the compute dtype). Exact: the same
    numbers as cross_entropy(linear(h, w), t)."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, compute_dtype, chunk):
        n_valid = (targets != -100).sum().clamp(min=1)
        h_all, w = hidden.to(compute_dtype), weight.to(compute_dtype)
        grad_logits = torch.empty(hidden.shape[0], weight.shape[0], dtype=compute_dtype, device=hidden.device)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk):
            t = targets[start : start + chunk]
            valid = t != -100
            t = t.clamp(min=0)
            logits = (h_all[start : start + chunk] @ w.t()).float()
            lse = logits.logsumexp(dim=-1)
            total += ((lse - logits.gather(1, t[:, None]).squeeze(1)) * valid).sum()
            grad = logits.sub_(lse[:, None]).exp_()  # softmax, in place
            grad[torch.arange(len(t), device=t.device), t] -= 1.0
            grad *= (valid / n_valid)[:, None]
            grad_logits[start : start + chunk] = grad
        grad_hidden = (grad_logits @ w).to(hidden.dtype)
        grad_weight = (grad_logits.t() @ h_all).to(weight.dtype)
        ctx.save_for_backward(grad_hidden, grad_weight)
        return total / n_valid

    @staticmethod
    def backward(ctx, grad_output):
        grad_hidden, grad_weight = ctx.saved_tensors
        return grad_hidden * grad_output, grad_weight * grad_output, None, None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """cross_entropy(hidden @ weight.T, targets) (targets of -100 ignored) for hidden (N, d), weight (V, d),
    without storing the fp32 N x V logits. Under autocast the matmuls run in the autocast dtype."""
    device = hidden.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
    chunk = max(16, (1 << 20) // weight.shape[0])  # ~4 MB of fp32 logits per chunk
    with torch.autocast(device, enabled=False):
        if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
            return _LinearCrossEntropy.apply(hidden, weight, targets, dtype, chunk)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        w = weight.to(dtype)
        for start in range(0, hidden.shape[0], chunk):
            logits = (hidden[start : start + chunk].to(dtype) @ w.t()).float()
            total += F.cross_entropy(logits, targets[start : start + chunk], ignore_index=-100, reduction="sum")
        return total / (targets != -100).sum().clamp(min=1)
