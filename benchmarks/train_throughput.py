"""Training throughput of our GPT against Hugging Face `GPT2LMHeadModel`, same config, same process.

Both models start from the same weights (HF's init copied into ours) and train on the same Shakespeare
batches with AdamW; their steps are interleaved in rounds so that machine noise hits both alike.
Prints tokens/s, the ratio ours/HF, MFU against this machine's measured matmul ceiling, and both loss
curves. Run: `make bench` or `python benchmarks/train_throughput.py --precision fp32 bf16`.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from pretrainer.config import DataConfig
from pretrainer.data.shards import TokenWindows, prepare
from pretrainer.model import Decoder
from pretrainer.model.hf import config_from_hf, state_dict_from_hf
from pretrainer.scaling.flops import count_params, flops_per_token, measured_matmul_flops, peak_flops

LAYERS, D_MODEL, HEADS, D_FF, VOCAB, SEQ, BATCH = 4, 256, 4, 1024, 8192, 128, 16


def make_models():
    import transformers

    hf_config = transformers.GPT2Config(
        vocab_size=VOCAB,
        n_positions=SEQ,
        n_embd=D_MODEL,
        n_layer=LAYERS,
        n_head=HEADS,
        n_inner=D_FF,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=0,
    )
    torch.manual_seed(0)
    theirs = transformers.GPT2LMHeadModel(hf_config)
    config = config_from_hf(hf_config.to_dict())
    ours = Decoder(config)
    ours.load_state_dict(state_dict_from_hf("gpt2", theirs.state_dict(), config))
    return ours, theirs, config


def step_fn(model, hf: bool, precision: str):
    optimizer = torch.optim.AdamW(model.parameters(), lr=6e-4, betas=(0.9, 0.95), weight_decay=0.1)

    def step(x, y):
        if not hf:  # HF predicts token t+1 for t < seq-1 only; give ours exactly the same targets
            y = y.clone()
            y[:, -1] = -100
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = model(input_ids=x, labels=x).loss if hf else model(x, y)[1]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    return step


def run(precision: str, rounds: int, steps_per_round: int, windows: TokenWindows) -> None:
    ours, theirs, config = make_models()
    contenders = {
        "pretrainer": step_fn(ours.train(), False, precision),
        "transformers": step_fn(theirs.train(), True, precision),
    }
    rates = {name: [] for name in contenders}
    losses = {name: [] for name in contenders}
    warm = windows.batch(0, BATCH)
    for step in contenders.values():  # warm-up: allocator, oneDNN primitives, optimizer state
        step(*warm)
    sample = BATCH
    for r in range(rounds):
        batches = [windows.batch(sample + i * BATCH, BATCH) for i in range(steps_per_round)]
        sample += steps_per_round * BATCH
        for name, step in sorted(contenders.items(), reverse=r % 2 == 1):  # alternate who goes first
            start = time.perf_counter()
            losses[name] += [step(x, y) for x, y in batches]
            rates[name].append(steps_per_round * BATCH * SEQ / (time.perf_counter() - start))
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    fpt = flops_per_token(config, count_params(ours, embeddings=False), SEQ)
    peak = peak_flops(torch.device("cpu"), dtype)
    print(
        f"\n[{precision}] {LAYERS} layers, d_model {D_MODEL}, {HEADS} heads, d_ff {D_FF}, vocab {VOCAB}, "
        f"seq {SEQ}, batch {BATCH}; {rounds} rounds x {steps_per_round} steps"
    )
    print(f"  ceiling: measured {precision} matmul {peak / 1e9:.0f} GFLOP/s; {fpt / 1e6:.1f} MFLOP/token")
    median = {name: statistics.median(r) for name, r in rates.items()}
    for name in ("pretrainer", "transformers"):
        print(
            f"  {name:13s} {median[name]:9,.0f} tok/s   MFU {median[name] * fpt / peak:6.1%}   "
            f"loss first {losses[name][0]:.3f} last-10 mean {statistics.mean(losses[name][-10:]):.4f}"
        )
    gap = max(abs(a - b) for a, b in zip(losses["pretrainer"], losses["transformers"], strict=True))
    print(
        f"  ratio pretrainer/transformers: {median['pretrainer'] / median['transformers']:.2f}x   "
        f"max |loss difference| over {len(losses['pretrainer'])} steps: {gap:.4f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--steps-per-round", type=int, default=5)
    args = parser.parse_args()
    import transformers

    cpu = platform.processor() or platform.machine()
    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {cpu}, {threads} threads")
    shards = prepare(DataConfig(source="shakespeare", tokenizer="bpe", vocab_size=VOCAB))
    windows = TokenWindows(shards.tokens("train"), SEQ, seed=0)
    for precision in args.precision:
        measured_matmul_flops(torch.bfloat16 if precision == "bf16" else torch.float32)
        run(precision, args.rounds, args.steps_per_round, windows)


if __name__ == "__main__":
    main()
