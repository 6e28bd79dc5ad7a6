"""Kernels that measured faster than torch's own ops on CPU (see benchmarks/RESULTS.md): RMSNorm with its backward
written out, linear + cross-entropy in row chunks, and the routes linear layers take in inference."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.weak import WeakIdKeyDictionary


class RMSNormFunction(torch.autograd.Function):
    """x / rms(x) * weight over the last dim, with its gradient written out. On CPU torch's rms_norm is a
    composite of small ops whose autograd graph makes ~3x more passes over memory than this (2.4 vs 1.2 ms
    forward+backward for 2048 x 256 fp32; fused layer_norm takes 0.5). Like torch's, it computes in fp32 at
    least, whatever the inputs' dtype."""

    @staticmethod
    def forward(ctx, x, weight, eps):
        compute = torch.promote_types(x.dtype, torch.float32)
        x_ = x.to(compute)
        rstd = torch.linalg.vector_norm(x_, dim=-1, keepdim=True).square_().div_(x.shape[-1]).add_(eps).rsqrt_()
        normed = x_ * rstd
        ctx.save_for_backward(normed, weight, rstd)
        ctx.x_dtype = x.dtype
        return (normed * weight).to(torch.promote_types(x.dtype, weight.dtype))

    @staticmethod
    def backward(ctx, grad):
        normed, weight, rstd = ctx.saved_tensors
        grad, w = grad.to(normed.dtype), weight.to(normed.dtype)
        grad_times_normed = grad * normed
        grad_weight = grad_times_normed.flatten(0, -2).sum(0)
        # d/dx of x * rstd(x): rstd * (g w - normed * mean(g w normed)), the mean as one matrix-vector product
        mean = (grad_times_normed @ w).unsqueeze_(-1).div_(normed.shape[-1])
        grad_x = (grad * w).addcmul_(normed, mean, value=-1).mul_(rstd)
        return grad_x.to(ctx.x_dtype), grad_weight.to(weight.dtype), None


class _LinearCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of (hidden @ weight.T) against targets with its gradient formed in the same pass:
    row chunk by row chunk, each chunk's softmax becomes d(loss)/d(logits) while it is still in cache, so
    the fp32 logits are never stored whole (only the gradient, in the compute dtype). Exact: the same
    numbers as cross_entropy(linear(h, w), t)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, compute_dtype, chunk):
        n_valid = (targets != -100).sum().clamp(min=1)
        h_all, w = hidden.to(compute_dtype), weight.to(compute_dtype)
        grad_logits = torch.empty(hidden.shape[0], weight.shape[0], dtype=compute_dtype, device=hidden.device)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk):
            t = targets[start : start + chunk]
            valid = t != -100
            t = t.clamp(min=0)
            logits = h_all[start : start + chunk] @ w.t()
            if bias is not None:
                logits = logits + bias
            log_probs = logits.log_softmax(dim=-1, dtype=torch.float32)
            total -= (log_probs.gather(1, t[:, None]).squeeze(1) * valid).sum()
            grad = log_probs.exp_()  # softmax, in place
            grad[torch.arange(len(t), device=t.device), t] -= 1.0
            torch.mul(grad, (valid / n_valid)[:, None], out=grad_logits[start : start + chunk])
        grad_hidden = (grad_logits @ w).to(hidden.dtype)
        grad_weight = (grad_logits.t() @ h_all).to(weight.dtype)
        grad_bias = grad_logits.float().sum(0).to(bias.dtype) if bias is not None else None
        ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
        return total / n_valid

    @staticmethod
    def backward(ctx, grad_output):
        grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
        grad_bias = grad_bias * grad_output if grad_bias is not None else None
        return grad_hidden * grad_output, grad_weight * grad_output, grad_bias, None, None, None


def linear_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """cross_entropy(hidden @ weight.T + bias, targets) (targets of -100 ignored), hidden (N, d), weight (V, d),
    without storing the fp32 N x V logits. Under autocast the matmuls run in the autocast dtype."""
    device = hidden.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
    # ~4 MB of fp32 logits per chunk (it stays in cache), at least 64 rows (or the GEMMs slow down); measured
    # here, forward+backward: 8192 words, 512 x 256 hidden: 128 rows 16% faster than 512 in fp32, 36% in bf16;
    # 50k words: 64 rows 25% faster than 16 in fp32
    chunk = max(64, (1 << 20) // weight.shape[0])
    with torch.autocast(device, enabled=False):
        if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
            return _LinearCrossEntropy.apply(hidden, weight, bias, targets, dtype, chunk)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        w = weight.to(dtype)
        for start in range(0, hidden.shape[0], chunk):
            logits = (hidden[start : start + chunk].to(dtype) @ w.t()).float()
            if bias is not None:
                logits += bias
            total += F.cross_entropy(logits, targets[start : start + chunk], ignore_index=-100, reduction="sum")
        return total / (targets != -100).sum().clamp(min=1)


# Two routes for linear layers in inference on an x86 CPU, where torch's own choice measured slow (RESULTS.md):
# - fp32, a pass over few rows (a decoding step, a draft's check): MKL's GEMM (what F.linear runs) repacks each
#   weight for every thin product; oneDNN multiplies a copy packed once. That pays where the weights outgrow the
#   last-level cache and every pass streams them from memory (SmolLM2-135M: a 1-token pass 40 against 54 ms, a
#   2-token pass 47 against 79; T5-small: 12 against 16 ms), not where they stay in it (the tiny GPT's 5 MB:
#   oneDNN's per-call overhead makes it 5% slower). From 129 rows on, MKL is as fast again.
# - bf16 on a CPU without bf16 matmul kernels (oneDNN needs AVX-512 or AVX-NE-CONVERT): torch falls back to a
#   generic GEMM, ~17 GFLOP/s here against fp32's ~60, so many rows (a prompt's prefill) run faster in fp32, the
#   weight upcast on the fly (SmolLM2, 408 tokens: 0.7 against 4.6 s). Few rows stay in bf16: a thin product
#   streams the weights, and bf16's are half the bytes (SmolLM2's 1-token pass: 31 ms against fp32's 40).
PACKED_FROM_ELEMENTS = 1 << 23  # the model's fp32 linear weights: 32 MiB, this CPU's last-level cache
FEW_ROWS = 128
BF16_EMULATED = not torch.ops.mkldnn._is_mkldnn_bf16_supported()
_packed: WeakIdKeyDictionary = WeakIdKeyDictionary()  # weight -> ((version, address), packed copy)


def _packed_weight(weight: torch.Tensor) -> torch.Tensor:
    """oneDNN's packed copy of `weight`, made once per version of it (an optimizer step or a load makes another):
    packing SmolLM2 takes ~0.3 s, several decoding steps, so it is kept while the weight lives."""
    stamp = (weight._version, weight.data_ptr())
    entry = _packed.get(weight)
    if entry is None or entry[0] != stamp:
        entry = _packed[weight] = (stamp, torch.ops.mkldnn._reorder_linear_weight(weight.detach(), None))
    return entry[1]


def _few_rows_packed(layer: nn.Linear, packed: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    if x.numel() > FEW_ROWS * x.shape[-1]:
        return F.linear(x, layer.weight, layer.bias)
    return torch.ops.mkldnn._linear_pointwise(x.contiguous(), packed, layer.bias, "none", [], "")


def _many_rows_in_fp32(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    if x.numel() <= FEW_ROWS * x.shape[-1]:
        return F.linear(x, layer.weight, layer.bias)
    bias = layer.bias.float() if layer.bias is not None else None
    return F.linear(x.float(), layer.weight.float(), bias).to(x.dtype)


@contextlib.contextmanager
def inference_linears(model: nn.Module) -> Iterator[None]:
    """Within it (inference only: no gradients flow through), `model`'s nn.Linear layers on an x86 CPU take the
    routes above: fp32 ones, if they hold `PACKED_FROM_ELEMENTS` or more in all, multiply up to `FEW_ROWS` rows by
    packed copies of their weights (kept while the weights are unchanged: they double their memory); bf16 ones,
    where the CPU has no bf16 kernels, multiply more rows than that in fp32. Generation and scoring enter it."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear) and type(m.weight.data) is torch.Tensor]
    # a layer that an enclosing call routed already stays as that call left it
    linears = [m for m in linears if m.weight.device.type == "cpu" and "forward" not in m.__dict__]
    if not (torch.backends.mkldnn.is_available() and torch.backends.cpu.get_cpu_capability().startswith("AVX")):
        linears = []  # both routes were measured on x86 only
    fp32 = [m for m in linears if m.weight.dtype == torch.float32]
    if sum(m.weight.numel() for m in fp32) < PACKED_FROM_ELEMENTS:
        fp32 = []
    bf16 = [m for m in linears if m.weight.dtype == torch.bfloat16]
    if not BF16_EMULATED:
        bf16 = []
    for layer in fp32:
        layer.forward = functools.partial(_few_rows_packed, layer, _packed_weight(layer.weight))
    for layer in bf16:
        layer.forward = functools.partial(_many_rows_in_fp32, layer)
    try:
        yield
    finally:
        for layer in fp32 + bf16:
            del layer.forward
