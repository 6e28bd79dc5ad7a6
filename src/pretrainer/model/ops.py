"""Hand-written autograd kernels that measured faster than autograd through torch's own ops on CPU (see
benchmarks/RESULTS.md): RMSNorm with its backward written out, and linear + cross-entropy in row chunks."""

from __future__ import annotations

import torch
import torch.nn.functional as F


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


def lm_logits(hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """An LM head's logits, hidden (..., d) @ weight (vocab, d).T. For a few rows in fp32 on CPU (a decoding step,
    a draft's check) they are computed as (weight @ hidden.T).T: MKL multiplies a wide matrix by few rows 1.5-3x
    faster that way round (T5-small's 32128 x 512 head, 8 rows: 9.3 against 18.6 ms; benchmarks/RESULTS.md). The
    result is then a transposed view, which is cheap to read at this size."""
    rows = hidden.numel() // hidden.shape[-1]
    if rows <= 16 and hidden.device.type == "cpu" and hidden.dtype == weight.dtype == torch.float32:
        return (weight @ hidden.reshape(rows, -1).T).T.reshape(*hidden.shape[:-1], weight.shape[0])
    return F.linear(hidden, weight)
