"""Parameter and FLOP accounting from a config alone, and the peak FLOP/s that MFU is measured against.

Two parameter counts matter and are kept apart by name:
- `ParamCounts.non_embedding` is Kaplan et al.'s N: every parameter but the vocabulary and position ones
  (embedding tables, relative-position biases, the output head over the vocabulary). The scaling laws use it,
  and compute C = 6·N·D (`kaplan_flops_per_token`).
- `matmul_params` is every weight that multiplies a token's activations, the output head included (tied or
  not), each counted for the tokens it sees. MFU uses it (`model_flops`, PaLM's 6N + 12·L·d·T, appendix B).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
import warnings
from dataclasses import dataclass

import torch

from ..config import Config, ModelConfig
from ..model.electra import generator_config


@dataclass(frozen=True)
class ParamCounts:
    total: int  # every parameter once (a tied head is the token embedding)
    embedding: int  # vocabulary and position parameters: tables, relative biases, the output head and its bias
    parts: dict[str, int]  # the total by part, in model order: the rows of `pretrainer scaling count`

    @property
    def non_embedding(self) -> int:
        """Kaplan's N."""
        return self.total - self.embedding


def _linear(d_in: int, d_out: int, bias: bool) -> int:
    return d_in * d_out + (d_out if bias else 0)


def _norm(c: ModelConfig, size: int | None = None) -> int:
    return (size or c.d_model) * (2 if c.norm == "layernorm" and c.bias else 1)


def _attention_widths(c: ModelConfig) -> tuple[int, int]:
    return c.n_head * c.head_dim, c.n_kv_head * c.head_dim


def _mlp(c: ModelConfig) -> int:
    return _linear(c.d_model, (2 if c.gated_mlp else 1) * c.d_ff, c.bias) + _linear(c.d_ff, c.d_model, c.bias)


def _blocks(c: ModelConfig, n_layer: int, cross: bool) -> int:
    """The parameters of a stack's blocks: a sparse block holds every expert and its router."""
    sparse = sum(c.is_sparse(i) for i in range(n_layer))
    experts = sparse * ((c.moe_experts - 1) * _mlp(c) + c.d_model * c.moe_experts)
    return n_layer * _block(c, cross) + experts


def _block(c: ModelConfig, cross: bool) -> int:
    q, kv = _attention_widths(c)
    n = _norm(c) + _linear(c.d_model, q + 2 * kv, c.attention_bias) + _linear(q, c.d_model, c.bias)
    if cross:
        n += (
            _norm(c)
            + _linear(c.d_model, q, c.attention_bias)
            + _linear(c.d_model, 2 * kv, c.attention_bias)
            + _linear(q, c.d_model, c.bias)
        )
    if not c.attention_only:
        n += _norm(c) + _mlp(c)
    return n


def _task_head(c: ModelConfig) -> int:
    return _linear(c.d_model, 2 if c.head == "span" else c.n_labels, True)


def count_params(config: ModelConfig) -> ParamCounts:
    """The parameters of the model `build_model(config)` makes, by part; config.vocab_size must be set."""
    c = config.resolved()
    if c.vocab_size is None:
        raise ValueError("count_params needs model.vocab_size; vocab_size_for_counting(config) supplies it")
    V, d = c.vocab_size, c.d_model
    vocab_head = 0 if c.tie_embeddings else V * d  # a tied head is the token embedding, counted once
    head = "output head (tied)" if c.tie_embeddings else "output head"
    if c.arch == "decoder":
        parts = {"token embedding": V * d, "position embedding": d * c.max_seq_len if c.positions == "learned" else 0}
        parts |= {"blocks": _blocks(c, c.n_layer, cross=False), "final norm": _norm(c)}
        parts |= {head: vocab_head} if c.head == "lm" else {"task head": _task_head(c)}
        embedding = parts["token embedding"] + parts["position embedding"] + parts.get(head, 0)
    elif c.arch == "encoder":
        width = c.embedding_dim or d
        vocab_head = 0 if c.tie_embeddings else V * width
        parts = {
            "token embedding": V * width,
            "position embedding": (c.position_offset + c.max_seq_len) * width,
            "segment embedding": c.type_vocab_size * width,
            "embedding norm": _norm(c, width),
            "embedding projection": _linear(width, d, True) if c.embedding_dim else 0,
            "blocks": _blocks(c, 1 if c.share_layers else c.n_layer, cross=False),
            "final norm": _norm(c) if c.norm_position == "pre" else 0,
            "pooler": _linear(d, d, True) if c.pooler and c.head in ("lm", "sequence") else 0,
        }
        if c.head == "lm":
            parts |= {
                "MLM transform": _linear(d, width, True) + _norm(c, width),
                head + " and its bias": vocab_head + V,
            }
            parts |= {"NSP head": _linear(d, 2, True) if c.nsp_head else 0}
            sbo = _linear(3 * d, d, True) + _norm(c) + _linear(d, width, True) + _norm(c, width)
            parts |= {"span-boundary head": c.max_seq_len * d + sbo if c.sbo_head else 0}
        elif c.head == "rtd":
            parts |= {"replaced-token head": _linear(d, d, True) + _linear(d, 1, True)}
        else:
            parts |= {"task head": _task_head(c)}
        if c.generator_fraction:  # ELECTRA's generator: all but the embedding tables it shares
            generator = count_params(generator_config(c))
            shared = sum(parts[k] for k in ("token embedding", "position embedding", "segment embedding"))
            parts |= {"generator (embeddings shared)": generator.total - shared}
        embedding = sum(parts[k] for k in ("token embedding", "position embedding", "segment embedding"))
        embedding += parts.get(head + " and its bias", 0) + (c.max_seq_len * d if c.sbo_head else 0)
        if c.generator_fraction:
            embedding += generator.embedding - shared
    else:
        learned = c.positions == "learned"  # BART: a table and an embedding norm per stack; else T5's biases
        positions = (c.position_offset + c.max_seq_len) * d if learned else c.relative_buckets * c.n_head
        parts = {
            "token embedding": V * d,
            "position embeddings" if learned else "relative position biases": 2 * positions,
            "embedding norms": 2 * _norm(c) if learned else 0,
            "encoder blocks": _blocks(c, c.n_layer, cross=False),
            "decoder blocks": _blocks(c, c.n_decoder_layer, cross=True),
            "final norms": 2 * _norm(c) if c.norm_position == "pre" else 0,
            head: vocab_head,
        }
        embedding = parts["token embedding"] + 2 * positions + parts[head]
    return ParamCounts(total=sum(parts.values()), embedding=embedding, parts=parts)


def vocab_size_for_counting(config: Config) -> tuple[int, str | None]:
    """model.vocab_size, or when unset the size the trainer will give it (the tokenizer's, rounded up to 64),
    without building shards; and a note when that size is an upper bound rather than known."""
    if config.model.vocab_size is not None:
        return config.model.vocab_size, None
    tokenizer = config.data.tokenizer
    if tokenizer == "gpt2":
        size, note = 50257, None
    elif tokenizer in ("bpe", "roberta", "wordpiece", "unigram"):
        size = config.data.vocab_size
        note = f"model.vocab_size unset: counted as data.vocab_size={size} (a small corpus can train fewer tokens)"
    else:
        from tokenizers import Tokenizer

        size, note = Tokenizer.from_file(tokenizer).get_vocab_size(), None
    return 64 * math.ceil(size / 64), note


def kaplan_flops_per_token(config: ModelConfig) -> float:
    """Training compute per token as the scaling laws count it: C = 6·N·D with N non-embedding (Kaplan et al.)."""
    return 6 * count_params(config).non_embedding


def _stack_matmuls(c: ModelConfig, n_layer: int, cross: bool) -> tuple[int, int]:
    """`_block_matmuls` summed over a stack, where a token meets one expert of a sparse block, and its router."""
    own, memory = _block_matmuls(c, cross)
    routers = sum(c.is_sparse(i) for i in range(n_layer)) * c.d_model * c.moe_experts
    return n_layer * own + routers, n_layer * memory


def _attention_pairs(c: ModelConfig, length: float) -> float:
    """(query, key) pairs a decoder's layers score over `length` tokens, counted over the whole context as PaLM
    does (causal or not); a banded layer's queries each over at most its window."""
    return sum(length * min(length, c.attention_window_of(i) or length) for i in range(c.n_layer))


def _block_matmuls(c: ModelConfig, cross: bool) -> tuple[int, int]:
    """Weights that multiply each token of the block's own stream, and each token of the memory (the encoder's
    output, which the cross-attention's key and value projections read once per decoder layer)."""
    q, kv = _attention_widths(c)
    own = c.d_model * (q + 2 * kv) + q * c.d_model
    if not c.attention_only:
        own += c.d_model * (2 if c.gated_mlp else 1) * c.d_ff + c.d_ff * c.d_model
    if cross:
        return own + c.d_model * q + q * c.d_model, c.d_model * 2 * kv
    return own, 0


def matmul_params(config: ModelConfig) -> int:
    """Weights that multiply every token's activations (blocks and the output head, tied or not; not the pooler
    or a sequence head, which see one vector per text). For an encoder-decoder, the sum over both stacks; use
    `model_flops` for its FLOPs, which weighs each stack by the tokens it reads."""
    c = config.resolved()
    if c.arch == "encoder_decoder":
        own_enc, _ = _stack_matmuls(c, c.n_layer, cross=False)
        own_dec, memory = _stack_matmuls(c, c.n_decoder_layer, cross=True)
        return own_enc + own_dec + memory + c.vocab_size * c.d_model
    return _stack_matmuls(c, c.n_layer, cross=False)[0] + _head_matmuls(c) + _projection_matmuls(c)


def _projection_matmuls(c: ModelConfig) -> int:
    """A factorised embedding's projection to d_model (ALBERT's)."""
    return c.embedding_dim * c.d_model if c.embedding_dim else 0


def _head_matmuls(c: ModelConfig) -> int:
    if c.head == "lm":
        width = c.embedding_dim or c.d_model
        transform = c.d_model * width if c.arch == "encoder" else 0
        # SpanBERT's boundary head: its two layers and the tied decoder again, on the same masked tokens
        boundary = 3 * c.d_model * c.d_model + c.d_model * width + c.vocab_size * width if c.sbo_head else 0
        return transform + c.vocab_size * width + boundary
    if c.head == "rtd":
        return c.d_model * c.d_model + c.d_model
    return c.d_model * 2 if c.head == "span" else c.d_model * c.n_labels if c.head == "token" else 0


def model_flops(config: ModelConfig, input_len: float, target_len: float = 0, head_share: float = 1.0) -> float:
    """Training FLOPs of one example (forward and backward: 3× the forward's 2 per multiply-add), as PaLM's
    appendix B counts them: 6 per matmul weight and token it sees, plus 12·(heads·head_dim) per (query, key) pair
    and layer for attention's scores and values (over the whole context, causal or not).

    `input_len`: the tokens of a decoder's or encoder's example, an encoder-decoder's input; `target_len`: an
    encoder-decoder's decoder tokens; `head_share`: the share of positions the output head needs (an MLM's
    masked share: the loss needs no prediction elsewhere). Divide by the tokens counted in throughput for FLOPs
    per token."""
    c = config.resolved()
    width = c.n_head * c.head_dim
    if c.arch != "encoder_decoder":
        if target_len:
            raise ValueError(f"a {c.arch} reads no target tokens")
        blocks = _stack_matmuls(c, c.n_layer, cross=False)[0] + _projection_matmuls(c)
        attention = 12 * width * _attention_pairs(c, input_len)
        if c.head == "rtd":  # ELECTRA: the discriminator's head reads every token; the generator's, the masked
            generator = model_flops(generator_config(c), input_len, 0, head_share) if c.generator_fraction else 0
            return 6 * (blocks + _head_matmuls(c)) * input_len + attention + generator
        weights = (blocks + head_share * _head_matmuls(c)) * input_len
        return 6 * weights + attention
    own_enc, _ = _stack_matmuls(c, c.n_layer, cross=False)
    own_dec, memory = _stack_matmuls(c, c.n_decoder_layer, cross=True)
    weights = own_enc * input_len + own_dec * target_len + memory * input_len
    weights += head_share * c.vocab_size * c.d_model * target_len
    pairs = c.n_layer * input_len**2 + c.n_decoder_layer * (target_len**2 + target_len * input_len)
    return 6 * weights + 12 * width * pairs


def count_report(config: Config) -> dict:
    """What `pretrainer scaling count` shows: the counts by part, the two Ns, and training FLOPs per token as the
    scaling laws count them (6N) and as MFU does (`model_flops`) at the lengths the recipe trains on."""
    from ..data.objectives import t5_lengths

    vocab_size, note = vocab_size_for_counting(config)
    if config.finetune.source:
        note = f"the recipe's model section is counted, not its finetune.source ({config.finetune.source})"
    m, o = dataclasses.replace(config.model, vocab_size=vocab_size).resolved(), config.objective
    if o.name == "task":
        inputs, targets = config.task.max_len, config.task.max_target_len if m.arch == "encoder_decoder" else 0
    elif o.name == "denoising":  # BART rebuilds the whole passage
        inputs, targets = o.seq_len, o.seq_len
    elif m.arch == "encoder_decoder":
        inputs, targets = o.seq_len, t5_lengths(o.seq_len, o.noise_density, o.mean_span_length)[1]
    else:
        inputs, targets = o.seq_len, 0
    head_share = o.mask_prob if o.name == "mlm" else 1.0  # an MLM predicts its masked tokens only
    counts = count_params(m)
    return {
        "model": dataclasses.asdict(m),
        "note": note,
        "parts": counts.parts,
        "total": counts.total,
        "embedding": counts.embedding,
        "non_embedding": counts.non_embedding,
        "matmul": matmul_params(m),
        "kaplan_flops_per_token": kaplan_flops_per_token(m),
        "model_flops_per_token": model_flops(m, inputs, targets, head_share) / (inputs + targets),
        "input_len": inputs,
        "target_len": targets,
    }


# Dense peaks in FLOP/s (no 2:4 sparsity), per the vendor's data sheets: bf16 and TF32 on tensor cores, fp32 on
# the CUDA cores. Keyed by the exact name torch.cuda.get_device_name reports: a substring would let "L4" match
# an "L40S" or "H100" an "H100 PCIe", parts with very different peaks.
GPU_PEAKS = {
    "NVIDIA A100-SXM4-40GB": {"bf16": 312e12, "tf32": 156e12, "fp32": 19.5e12},
    "NVIDIA A100-SXM4-80GB": {"bf16": 312e12, "tf32": 156e12, "fp32": 19.5e12},
    "NVIDIA A100-PCIE-40GB": {"bf16": 312e12, "tf32": 156e12, "fp32": 19.5e12},
    "NVIDIA A100 80GB PCIe": {"bf16": 312e12, "tf32": 156e12, "fp32": 19.5e12},
    "NVIDIA H100 80GB HBM3": {"bf16": 989e12, "tf32": 494.5e12, "fp32": 66.9e12},  # SXM5
    "NVIDIA H100 PCIe": {"bf16": 756e12, "tf32": 378e12, "fp32": 51.2e12},
    "NVIDIA H100 NVL": {"bf16": 835e12, "tf32": 417.5e12, "fp32": 60e12},
    "NVIDIA H200": {"bf16": 989e12, "tf32": 494.5e12, "fp32": 66.9e12},  # SXM; the same die as H100 SXM5
    "NVIDIA H200 NVL": {"bf16": 835e12, "tf32": 417.5e12, "fp32": 60e12},
    "NVIDIA L4": {"bf16": 121e12, "tf32": 60e12, "fp32": 30.3e12},
    "NVIDIA L40S": {"bf16": 362e12, "tf32": 183e12, "fp32": 91.6e12},
}


def gpu_peak(name: str, dtype: torch.dtype, tf32: bool) -> float | None:
    """The peak of the GPU called exactly `name` for matmuls in `dtype` (fp32 through TF32 when `tf32`)."""
    peaks = GPU_PEAKS.get(name)
    if peaks is None:
        return None
    if dtype in (torch.bfloat16, torch.float16):
        return peaks["bf16"]  # fp16 and bf16 run at the same tensor-core rate on these parts
    return peaks["tf32" if tf32 else "fp32"]


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


@functools.cache
def _warn_unknown_gpu(name: str) -> None:
    known = ", ".join(GPU_PEAKS)
    warnings.warn(f"no peak FLOP/s known for the GPU '{name}', so no MFU is reported; known: {known}", stacklevel=3)


def peak_flops(device: torch.device, dtype: torch.dtype = torch.float32) -> float | None:
    """Peak FLOP/s of `device` for `dtype`: the table for known GPUs (fp32 at the TF32 rate when PyTorch's fp32
    matmuls use TF32), a measurement on CPU, else None."""
    if device.type == "cpu":
        return measured_matmul_flops(dtype)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = gpu_peak(name, dtype, tf32=torch.get_float32_matmul_precision() != "highest")
        if peak is None:
            _warn_unknown_gpu(name)
        return peak
    return None
