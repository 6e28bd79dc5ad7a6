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
from ..errors import DataError
from .ops import RMSNormFunction


def attention_mask(
    q_len: int,
    kv_len: int,
    *,
    causal: bool,
    window: int | None = None,
    key_padding_mask: torch.Tensor | None = None,
    device: torch.device | None = None,
) -> torch.Tensor | None:
    """Which keys each query may see, as SDPA's boolean mask (True = attend); None when it sees all.

    The one rule of the field: in an encoder (and in cross-attention) every query sees every key; in a
    decoder the query at absolute position p sees only keys at positions <= p, and with a `window` only the last
    `window` of them, p - window < key <= p (GPT-3's locally banded layers, GPT-Neo's "local" ones). Queries are the
    last `q_len` of `kv_len` positions, so the rule holds during cached decoding too. `key_padding_mask`
    (batch, kv_len), True for real tokens, hides padding in either case.
    """
    mask = None
    banded = window is not None and kv_len > window
    if causal and (q_len > 1 or banded):
        q_pos = torch.arange(kv_len - q_len, kv_len, device=device)
        distance = q_pos[:, None] - torch.arange(kv_len, device=device)[None, :]
        mask = (distance >= 0) & (distance < window) if banded else distance >= 0
    if key_padding_mask is not None:
        keys = key_padding_mask[:, None, None, :].bool()
        mask = keys if mask is None else mask & keys
    return mask


def norm(config: ModelConfig, size: int | None = None) -> nn.Module:
    """The config's norm over `size` features (d_model unless given)."""
    size = size or config.d_model
    if config.norm == "rmsnorm":
        return RMSNorm(size, eps=config.norm_eps)
    return nn.LayerNorm(size, eps=config.norm_eps, bias=config.bias)


def check_positions(config: ModelConfig, length: int) -> None:
    """Refuse a sequence (cached positions included) longer than the model's positions."""
    if length > config.max_seq_len:
        raise DataError(
            f"sequence of {length} tokens is longer than the model's positions "
            f"(model.max_seq_len={config.max_seq_len}); shorten the input"
        )


class RMSNorm(nn.RMSNorm):
    """nn.RMSNorm (same parameter, same numbers) that trains through `ops.RMSNormFunction`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad):
            eps = torch.finfo(x.dtype).eps if self.eps is None else self.eps
            return RMSNormFunction.apply(x, self.weight, eps)
        return super().forward(x)


class Rotary(nn.Module):
    """Rotary position embedding (RoPE) in the rotate-half layout that Llama checkpoints use."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        d = config.head_dim
        inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d))
        if config.rope_scaling == "llama3":
            inv_freq = llama3_frequencies(inv_freq, config)
        angles = torch.outer(torch.arange(config.max_seq_len, dtype=torch.float32), inv_freq)
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


def llama3_frequencies(inv_freq: torch.Tensor, config: ModelConfig) -> torch.Tensor:
    """Llama 3.1's RoPE for contexts longer than the pretraining one: rotations whose wavelength is short next to
    that context (under original / high_freq_factor positions) are kept, slow ones (over original /
    low_freq_factor) are slowed by `factor`, and those between are interpolated smoothly."""
    wavelength = 2 * math.pi / inv_freq
    low, high = config.rope_low_freq_factor, config.rope_high_freq_factor
    smooth = ((config.rope_original_max_seq_len / wavelength - low) / (high - low)).clamp(0.0, 1.0)
    return (1 - smooth) * inv_freq / config.rope_scaling_factor + smooth * inv_freq


class KVCache:
    """Keys and values of past positions for one layer's self-attention, preallocated to the model's length;
    in an encoder-decoder's decoder also the cross-attention's keys and values of the encoder output, which
    stay the same at every step (so a cache serves one encoder output)."""

    def __init__(self, batch: int, n_kv_head: int, max_len: int, head_dim: int, device, dtype):
        self.k = torch.empty(batch, n_kv_head, max_len, head_dim, device=device, dtype=dtype)
        self.v = torch.empty_like(self.k)
        self.length = 0
        self.memory: tuple[torch.Tensor, torch.Tensor] | None = None

    @classmethod
    def for_layers(
        cls, config: ModelConfig, n_layer: int, batch: int, length: int, like: torch.Tensor
    ) -> list[KVCache]:
        """One cache of `length` positions per layer, on the device and in the dtype of `like`."""
        return [cls(batch, config.n_kv_head, length, config.head_dim, like.device, like.dtype) for _ in range(n_layer)]

    def expand(self, batch: int, length: int) -> KVCache:
        """A cache of `batch` rows and `length` positions that starts with this one-row cache's positions: a
        shared prefix, computed once, continued by every row."""
        if self.k.shape[0] != 1 or self.memory is not None:
            raise ValueError("only a one-row self-attention cache is expanded")
        out = KVCache(batch, self.k.shape[1], length, self.k.shape[3], self.k.device, self.k.dtype)
        out.k[:, :, : self.length] = self.k[:, :, : self.length]
        out.v[:, :, : self.length] = self.v[:, :, : self.length]
        out.length = self.length
        return out

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        end = self.length + k.shape[-2]
        self.k[:, :, self.length : end] = k
        self.v[:, :, self.length : end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]


def relative_position_bucket(relative: torch.Tensor, bidirectional: bool, buckets: int, max_distance: int):
    """T5's bucketing of key-minus-query offsets: exact buckets for small offsets, logarithmic ones up to
    max_distance, one bucket beyond; an encoder gives half the buckets to each direction."""
    bucket = torch.zeros_like(relative)
    if bidirectional:
        buckets //= 2
        bucket += (relative > 0).long() * buckets
        relative = relative.abs()
    else:
        relative = -relative.clamp(max=0)
    exact = buckets // 2
    log_bucket = (
        exact
        + (torch.log(relative.float().clamp(min=1) / exact) / math.log(max_distance / exact) * (buckets - exact)).long()
    )
    log_bucket = log_bucket.clamp(max=buckets - 1)
    return bucket + torch.where(relative < exact, relative, log_bucket)


class RelativePositionBias(nn.Module):
    """T5's learned per-head bias on attention scores, a function of the bucketed offset key - query.
    One instance per stack: computed once and added in every layer."""

    def __init__(self, config: ModelConfig, bidirectional: bool):
        super().__init__()
        self.bidirectional = bidirectional
        self.buckets, self.max_distance = config.relative_buckets, config.relative_max_distance
        self.embedding = nn.Embedding(config.relative_buckets, config.n_head)

    def forward(self, q_len: int, kv_len: int, device=None) -> torch.Tensor:
        """Bias (1, heads, q_len, kv_len) for the last q_len of kv_len positions."""
        q_pos = torch.arange(kv_len - q_len, kv_len, device=device)
        relative = torch.arange(kv_len, device=device)[None, :] - q_pos[:, None]
        buckets = relative_position_bucket(relative, self.bidirectional, self.buckets, self.max_distance)
        return self.embedding(buckets).permute(2, 0, 1).unsqueeze(0)


class Attention(nn.Module):
    """Multi-head attention, the only one in the library. Self-attention projects queries, keys and values
    from x; cross-attention (cross=True) takes keys and values from `memory`, the encoder's output. A causal one
    with a `window` sees only that many most recent keys (see `attention_mask`)."""

    def __init__(self, config: ModelConfig, causal: bool, cross: bool = False, window: int | None = None):
        super().__init__()
        self.n_head = config.n_head
        self.n_kv_head = config.n_kv_head
        self.head_dim = config.head_dim
        self.causal = causal
        self.cross = cross
        self.window = window
        self.scale = None if config.scale_attention else 1.0
        self.dropout = config.dropout
        q_size, kv_size = self.n_head * self.head_dim, self.n_kv_head * self.head_dim
        if cross:
            self.q = nn.Linear(config.d_model, q_size, config.attention_bias)
            self.kv = nn.Linear(config.d_model, 2 * kv_size, config.attention_bias)
        else:
            self.qkv = nn.Linear(config.d_model, q_size + 2 * kv_size, config.attention_bias)
        self.proj = nn.Linear(q_size, config.d_model, config.bias)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, time, heads * head_dim) -> (batch, heads, time, head_dim), a view."""
        return x.view(x.shape[0], x.shape[1], -1, self.head_dim).transpose(1, 2)

    def forward(
        self,
        x: torch.Tensor,
        memory: torch.Tensor | None = None,
        rotary: Rotary | None = None,
        cache: KVCache | None = None,
        key_padding_mask: torch.Tensor | None = None,
        position_bias: torch.Tensor | None = None,
        real: torch.Tensor | None = None,
        keep: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """With `real` (self-attention only), x is (tokens, d_model): the real tokens alone, at these positions of
        the flattened (batch, time) of `key_padding_mask`; they are laid out padded for the attention only. With
        `keep` too, only the outputs of those rows of x are computed (all are still keys and values)."""
        b, t = x.shape[:2] if real is None else key_padding_mask.shape
        if self.cross:
            q = self._heads(self.q(x))
            k, v = self._memory_keys_values(memory, cache)
        else:
            qkv = self.qkv(x)
            if real is not None:
                qkv = qkv.new_zeros(b * t, qkv.shape[-1]).index_copy(0, real, qkv).view(b, t, -1)
            # one view and one split for all three: a decoding step pays per op, not per byte
            q, k, v = self._heads(qkv).split([self.n_head, self.n_kv_head, self.n_kv_head], 1)
            if rotary is not None:
                start = cache.length if cache is not None else 0
                q, k = rotary(q, start), rotary(k, start)
            if cache is not None:
                k, v = cache.append(k, v)
        dropout = self.dropout if self.training else 0.0
        if x.device.type == "cpu" and q.dtype == torch.bfloat16 and position_bias is None:
            # torch's fused CPU attention is twice as fast in fp32 as in bf16 (fwd+bwd; see
            # benchmarks/RESULTS.md) and fp32 scores are more accurate: upcast, out of autocast's reach, and
            # back, for the projection's bf16 weights when the model itself was cast to bf16
            with torch.autocast("cpu", enabled=False):
                y = self._attend(q.float(), k.float(), v.float(), key_padding_mask, None, dropout).to(q.dtype)
        else:
            y = self._attend(q, k, v, key_padding_mask, position_bias, dropout)
        y = y.transpose(1, 2).reshape(b, t, -1)
        if real is None:
            return self.proj(y)
        # indexing, not index_select: the latter's backward (index_add_) is ~4x slower on CPU
        return self.proj(y.flatten(0, 1)[real if keep is None else real[keep]])

    def _memory_keys_values(self, memory: torch.Tensor, cache: KVCache | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-attention's keys and values of `memory`; while decoding, projected at the first step only
        (they are most of a step's work otherwise: every encoder position, in every layer)."""
        if cache is not None and cache.memory is not None:
            return cache.memory
        keys_values = self._heads(self.kv(memory)).split(self.n_kv_head, 1)
        if cache is not None:
            cache.memory = keys_values
        return keys_values

    def _attend(self, q, k, v, key_padding_mask, position_bias, dropout):
        t, kv_len = q.shape[-2], k.shape[-2]
        # grouped-query attention: each kv head serves a group of q heads; SDPA reads them in place (copying them
        # per group would copy the whole KV cache at every decoding step)
        gqa = self.n_kv_head != self.n_head
        dense = self.window is None or kv_len <= self.window
        if self.causal and key_padding_mask is None and position_bias is None and t == kv_len and dense:
            # the same rule as attention_mask, on SDPA's fused causal path
            return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True, scale=self.scale,
                                                  enable_gqa=gqa)  # fmt: skip
        mask = attention_mask(t, kv_len, causal=self.causal, window=self.window, key_padding_mask=key_padding_mask,
                              device=q.device)  # fmt: skip
        if position_bias is None:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, scale=self.scale,
                                                  enable_gqa=gqa)  # fmt: skip
        if gqa:
            k = k.repeat_interleave(self.n_head // self.n_kv_head, dim=1)
            v = v.repeat_interleave(self.n_head // self.n_kv_head, dim=1)
        # T5's learned bias needs a gradient, so SDPA would take its unfused path with extra passes for fully
        # masked rows; written out, the products stay in the compute dtype and only the softmax is fp32
        scores = q @ k.transpose(-1, -2)
        if self.scale != 1.0:
            scores = scores * (self.scale or q.shape[-1] ** -0.5)
        scores = scores.float().add_(position_bias)  # in place: no backward here needs the raw products
        if mask is not None:
            scores.masked_fill_(~mask, float("-inf"))
        weights = scores.softmax(dim=-1)
        if dropout:
            weights = F.dropout(weights, dropout)
        weights = weights.to(v.dtype)
        return weights @ v


def activate(x: torch.Tensor, name: str) -> torch.Tensor:
    """gelu | gelu_tanh (GPT-2's and T5 v1.1's approximation) | relu | silu."""
    if name == "gelu_tanh":
        return F.gelu(x, approximate="tanh")
    return getattr(F, name)(x)


class MLP(nn.Module):
    """Position-wise feed-forward: act(x W1) W2, or gated act(x Wg) * (x Wu) W2 (SwiGLU, GeGLU)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        d_ff = config.d_ff
        self.gated = config.gated_mlp
        self.activation = config.activation
        self.fc = nn.Linear(config.d_model, (2 if self.gated else 1) * d_ff, config.bias)
        self.proj = nn.Linear(d_ff, config.d_model, config.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        if self.gated:
            gate, up = h.chunk(2, dim=-1)
            return self.proj(activate(gate, self.activation) * up)
        if self.activation == "relu":  # in place: fc's backward does not need its output, relu's needs only it
            return self.proj(h.relu_())
        return self.proj(activate(h, self.activation))


class SwitchMLP(nn.Module):
    """Switch Transformer's mixture of experts in place of a block's MLP. A router (in fp32: Switch's "selective
    precision") sends each token to its most probable expert (top-1). Per sequence an expert takes at most
    ceil(capacity_factor × length / experts) tokens, first come first served; the overflow gets no output here and
    passes through the block on the residual alone. An expert's output is scaled by the router's probability for it,
    which is how the router learns. Tokens are grouped by expert with one sort, not a loop over tokens.

    In training each forward leaves its auxiliary losses in `losses` (see `router_loss`) and adds to `totals`, the
    counts `moe_metrics` reports: the load-balancing loss, dropped tokens and each expert's share."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.n_experts = config.moe_experts
        self.capacity_factor = config.moe_capacity_factor
        self.weights = (config.moe_aux_loss, config.moe_z_loss)
        self.router = nn.Linear(config.d_model, config.moe_experts, bias=False)
        self.experts = nn.ModuleList(MLP(config) for _ in range(config.moe_experts))
        self.losses: tuple[torch.Tensor, torch.Tensor] | None = None
        # forwards, tokens, dropped tokens, summed balance loss, tokens per expert
        self.register_buffer("totals", torch.zeros(4 + config.moe_experts), persistent=False)

    def capacity(self, length: int) -> int:
        return math.ceil(self.capacity_factor * length / self.n_experts)

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(router logits, probabilities, chosen expert, kept) for x (batch, time, d_model): kept is False for the
        tokens beyond their expert's capacity in their sequence."""
        with torch.autocast(x.device.type, enabled=False):
            logits = F.linear(x.float(), self.router.weight.float())
        probs = logits.softmax(-1)
        expert = probs.argmax(-1)
        place = F.one_hot(expert, self.n_experts).cumsum(1).gather(-1, expert[..., None]).squeeze(-1)
        return logits, probs, expert, place <= self.capacity(x.shape[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        logits, probs, expert, kept = self.route(x)
        tokens, experts = x.reshape(b * t, d), expert.flatten()
        routed = kept.flatten().nonzero().squeeze(1)
        order = routed[experts[routed].argsort(stable=True)]  # the kept tokens, grouped by expert
        counts = torch.bincount(experts[routed], minlength=self.n_experts).tolist()
        # every expert runs, an empty one on no rows: all get a gradient, as DDP expects of every parameter
        outputs = torch.cat([mlp(tokens[rows]) for mlp, rows in zip(self.experts, order.split(counts), strict=True)])
        y = tokens.new_zeros(b * t, d).index_copy(0, order, outputs.to(tokens.dtype))
        y = y * probs.gather(-1, expert[..., None]).flatten(0, 1).to(y.dtype)
        if self.training:
            self.losses = (load_balancing_loss(probs, expert), logits.logsumexp(-1).square().mean())
            with torch.no_grad():
                load = torch.bincount(experts, minlength=self.n_experts)
                self.totals += torch.cat([torch.tensor([1.0, b * t, b * t - len(routed)], device=x.device),
                                          self.losses[0].detach()[None], load.float()])  # fmt: skip
        return y.view(b, t, d)


def load_balancing_loss(probs: torch.Tensor, expert: torch.Tensor) -> torch.Tensor:
    """Switch's auxiliary loss E·Σ_i f_i·P_i per sequence, averaged over sequences: f_i the share of its tokens whose
    first choice is expert i (dropped or not), P_i the mean router probability of i. 1 when perfectly balanced."""
    n_experts = probs.shape[-1]
    share = F.one_hot(expert, n_experts).float().mean(1)
    return n_experts * (share * probs.mean(1)).sum(-1).mean()


def router_loss(model: nn.Module) -> torch.Tensor | float:
    """What training adds to the task's loss for the Switch layers' last forward: α·balance + β·z per sparse layer
    (the paper's sum over layers); 0 outside training and in a dense model."""
    if not (model.training and model.config.moe_experts):
        return 0.0
    layers = [m for m in model.modules() if isinstance(m, SwitchMLP)]
    return sum(m.weights[0] * m.losses[0] + m.weights[1] * m.losses[1] for m in layers)


def moe_metrics(model: nn.Module) -> dict:
    """The Switch layers' training numbers since the last call (which it clears), over all sparse layers: the mean
    load-balancing loss, the share of tokens dropped for capacity and each expert's share of the tokens."""
    layers = [m for m in model.modules() if isinstance(m, SwitchMLP)]
    totals = sum(m.totals for m in layers)
    if not layers or not totals[0]:
        return {}
    for m in layers:
        m.totals.zero_()
    forwards, tokens, dropped, balance, load = totals[0], totals[1], totals[2], totals[3], totals[4:]
    return {
        "moe_balance": round(float(balance / forwards), 4),
        "moe_dropped": round(float(dropped / tokens), 4),
        "moe_load": [round(float(share), 4) for share in load / load.sum()],
    }


class Block(nn.Module):
    """One transformer layer: self-attention, cross-attention (encoder-decoder's decoder only), MLP, each a
    residual sublayer with its norm before (pre-LN: x + f(norm(x))) or after (post-LN: norm(x + f(x))). Its
    index in its stack, `layer`, says whether its attention is banded and whether its MLP is experts."""

    def __init__(self, config: ModelConfig, causal: bool, cross: bool = False, layer: int = 0):
        super().__init__()
        self.post_norm = config.norm_position == "post"
        self.norm1 = norm(config)
        self.attn = Attention(config, causal=causal, window=config.attention_window_of(layer))
        if cross:
            self.norm_cross = norm(config)
            self.cross_attn = Attention(config, causal=False, cross=True)
        self.norm2 = None if config.attention_only else norm(config)
        self.mlp = None if config.attention_only else SwitchMLP(config) if config.is_sparse(layer) else MLP(config)
        self.drop = nn.Dropout(config.dropout)

    def _residual(self, x, norm_layer, f, keep=None):
        kept = x if keep is None else x[keep]
        y = f(x) if self.post_norm else f(norm_layer(x))
        if self.training:  # dropout is the identity otherwise, and its calls are ~5% of a small model's decoding step
            y = self.drop(y)
        return norm_layer(kept + y) if self.post_norm else kept + y

    def forward(
        self,
        x,
        rotary=None,
        cache=None,
        key_padding_mask=None,
        position_bias=None,
        memory=None,
        memory_mask=None,
        real=None,
        keep=None,
    ):
        """`real`: x holds the real tokens alone; `keep`: only these rows of it come out (Attention.forward)."""

        def attend(h):
            return self.attn(h, None, rotary, cache, key_padding_mask, position_bias, real, keep)

        x = self._residual(x, self.norm1, attend, keep)
        if memory is not None:
            x = self._residual(
                x, self.norm_cross, lambda h: self.cross_attn(h, memory, cache=cache, key_padding_mask=memory_mask)
            )
        return x if self.mlp is None else self._residual(x, self.norm2, self.mlp)


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
