"""Training tokens/s of the sparse decoders against the dense one they are built from, in one process: the models
of configs/gpt-tiny.yaml, moe-tiny.yaml (8 Switch experts in blocks 1 and 3) and gptneo-tiny.yaml (blocks 1 and 3
see the last 32 tokens), the same random batches, fp32, AdamW steps interleaved (benchmarks/timing.py).

    python benchmarks/sparse_throughput.py [--rounds 10] [--steps-per-round 3] [--dry-run]

--dry-run: two rounds of one step on 16-token batches, for a test."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import timing
import torch

from pretrainer.config import load_config
from pretrainer.model import build_model
from pretrainer.scaling.flops import model_flops

CONFIGS = Path(__file__).parent.parent / "configs"
RECIPES = {"dense": "gpt-tiny", "moe": "moe-tiny", "alternating": "gptneo-tiny"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--steps-per-round", type=int, default=3)
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args()
    rounds, steps = (2, 1) if args.dry_run else (args.rounds, args.steps_per_round)
    batch, seq_len, vocab = (2, 16, 256) if args.dry_run else (32, 128, 4096)
    torch.manual_seed(0)
    data = torch.randint(0, vocab, (rounds * steps, batch, seq_len + 1))
    contenders, configs = {}, {}
    for name, recipe in RECIPES.items():
        config = load_config(CONFIGS / f"{recipe}.yaml", [f"model.vocab_size={vocab}"]).model
        if args.dry_run:
            config = dataclasses.replace(config, attention_window=8 if config.attention_window else None)
        configs[name] = config
        model = build_model(config).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
        position = {"i": 0}

        def train(model=model, optimizer=optimizer, position=position):
            for _ in range(steps):
                tokens = data[position["i"] % len(data)]
                position["i"] += 1
                model(tokens[:, :-1], targets=tokens[:, 1:])[1].backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)

        train()  # warm-up: first calls set up kernels
        contenders[name] = train
    times = timing.rounds(contenders, rounds)
    work = steps * batch * seq_len
    print(f"{batch} x {seq_len} tokens a step, {steps} steps a round, {rounds} rounds, fp32, {torch.get_num_threads()}"
          " threads")  # fmt: skip
    print("| model | its tokens/s | dense tokens/s | ratio (quartiles of rounds) | target | unit |")
    print("|---|---|---|---|---|---|")
    for name in ("moe", "alternating"):
        print(timing.summary(RECIPES[name], "training tokens/s", work, times, None, ours=name, theirs="dense"))
    for name, config in configs.items():
        print(f"{RECIPES[name]}: {model_flops(config, seq_len) / seq_len / 1e6:.2f} MFLOPs per token (training)")


if __name__ == "__main__":
    main()
