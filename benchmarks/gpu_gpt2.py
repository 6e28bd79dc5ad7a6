"""GPT-2 124M training throughput and MFU on one GPU: ours against `transformers`' `GPT2LMHeadModel`, same card,
same process, synthetic tokens (data loading is not what this measures).

12 layers, d_model 768, 12 heads, context 1024, vocabulary 50304 (GPT-2's 50257 padded to a multiple of 64, as
nanoGPT does), tied head, no dropout; bf16 autocast, `torch.compile`, fused AdamW; `--warmup` untimed steps (they
include compilation), then `--steps` timed ones, the contenders one after the other. MFU = tokens/s × model FLOPs
per token (`scaling/flops.py: model_flops`, the head included) ÷ the card's dense bf16 peak (`GPU_PEAKS`, by its
exact name). Run by `benchmarks/gpu.sh` on a lent H100/H200; `--dry-run` shrinks everything to run on a CPU in
seconds (no compile), which is how the tests keep it working where no GPU is.
"""

from __future__ import annotations

import argparse
import time

import torch
import transformers

from pretrainer.config import ModelConfig
from pretrainer.model import build_model
from pretrainer.scaling.flops import model_flops, peak_flops


def shapes(dry_run: bool) -> dict:
    if dry_run:
        return dict(n_layer=2, n_head=2, d_model=64, seq=64, vocab=512, batch=2)
    return dict(n_layer=12, n_head=12, d_model=768, seq=1024, vocab=50304, batch=16)


def models(s: dict):
    """(ours, theirs) with the same shape; each keeps its own initialisation (speed does not depend on it)."""
    ours = build_model(ModelConfig(arch="decoder", n_layer=s["n_layer"], n_head=s["n_head"], d_model=s["d_model"],
                                   vocab_size=s["vocab"], max_seq_len=s["seq"], tie_embeddings=True))  # fmt: skip
    theirs = transformers.GPT2LMHeadModel(  # transformers picks SDPA attention where torch has it
        transformers.GPT2Config(
            vocab_size=s["vocab"],
            n_positions=s["seq"],
            n_embd=s["d_model"],
            n_layer=s["n_layer"],
            n_head=s["n_head"],
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            bos_token_id=0,
            eos_token_id=0,
        )  # fmt: skip
    )
    return ours, theirs


def timed(model, loss_of, s: dict, device, steps: int, warmup: int, compile_: bool) -> float:
    """Tokens/s of `steps` training steps after `warmup` untimed ones (the loss of synthetic tokens means nothing)."""
    model = model.to(device).train()
    fused = device.type == "cuda"
    optimizer = torch.optim.AdamW(model.parameters(), lr=6e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=fused)
    forward = torch.compile(model) if compile_ else model
    generator = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, s["vocab"], (s["batch"], s["seq"]), generator=generator) for _ in range(4)]
    batches = [b.to(device) for b in batches]

    def step(ids):
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = loss_of(forward, ids)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    for i in range(warmup):
        step(batches[i % 4])
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(steps):
        loss = step(batches[i % 4])
    loss.item()  # waits for the device
    elapsed = time.perf_counter() - start
    model.to("cpu")
    return steps * s["batch"] * s["seq"] / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="tiny shapes on whatever device, no compile")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=15)
    args = parser.parse_args()
    s = shapes(args.dry_run)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    steps, warmup = (3, 1) if args.dry_run else (args.steps, args.warmup)
    compile_ = not args.dry_run
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {card}")
    ours, theirs = models(s)
    config = ours.config
    flops = model_flops(config, s["seq"]) / s["seq"]
    peak = peak_flops(device, torch.bfloat16)
    rates = {
        "pretrainer": timed(ours, lambda m, ids: m(ids, targets=ids)[1], s, device, steps, warmup, compile_),
        "transformers": timed(theirs, lambda m, ids: m(input_ids=ids, labels=ids).loss, s, device, steps, warmup,
                              compile_),
    }  # fmt: skip
    shape = f"{s['n_layer']} layers, d_model {s['d_model']}, context {s['seq']}, vocab {s['vocab']}, batch {s['batch']}"
    print(f"GPT-2 ({shape}), bf16 autocast{', compiled' if compile_ else ''}, {steps} timed steps after {warmup}")
    print(
        f"model FLOPs per token {flops / 1e6:.1f} M; bf16 peak {peak / 1e12:.3f} TFLOP/s" if peak else "no peak known"
    )
    if args.dry_run:
        print("dry run: tiny shapes, so MFU means nothing")
    for who, rate in rates.items():
        mfu = f"MFU {rate * flops / peak:6.1%}" if peak else "MFU unknown"
        print(f"  {who:13s} {rate:12,.0f} tokens/s   {mfu}")
    print(f"  ratio pretrainer/transformers: {rates['pretrainer'] / rates['transformers']:.2f}x")


if __name__ == "__main__":
    main()
