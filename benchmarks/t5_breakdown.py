"""Where T5's training step goes: each part's forward+backward, ours against `transformers`', alone.

The T5 match of `train_throughput.py`, taken apart: the encoder stack, the decoder stack (self- and
cross-attention over the encoder's 128 outputs) and the head with its loss, each timed on the same inputs
and weights, alternating ours and theirs, at the throughput benchmark's shapes. Prints milliseconds per
part and the median of the per-pair ratios.
Run: `python benchmarks/t5_breakdown.py --precision fp32 bf16`.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from train_throughput import BATCH, D_MODEL, SEQ, T5_TARGET, t5

from pretrainer.model.ops import linear_cross_entropy


def parts(ours, theirs, targets: torch.Tensor) -> dict[str, tuple]:
    """name -> (ours, theirs): callables returning a scalar to differentiate."""
    torch.manual_seed(0)
    inputs = torch.randn(BATCH, SEQ, D_MODEL, requires_grad=True)  # stands for embeddings, and for memory
    decoder_inputs = torch.randn(BATCH, T5_TARGET, D_MODEL, requires_grad=True)
    hidden = torch.randn(BATCH * T5_TARGET, D_MODEL, requires_grad=True)
    scale = D_MODEL**-0.5  # T5 v1.0's tied head
    return {
        "encoder": (
            lambda: ours.encoder(inputs).float().sum(),
            lambda: theirs.encoder(inputs_embeds=inputs).last_hidden_state.float().sum(),
        ),
        "decoder": (
            lambda: ours.decoder(decoder_inputs, memory=inputs).float().sum(),
            lambda: (
                theirs.decoder(inputs_embeds=decoder_inputs, encoder_hidden_states=inputs)
                .last_hidden_state.float()
                .sum()
            ),
        ),
        "head+loss": (
            lambda: linear_cross_entropy(hidden * scale, ours.lm_head.weight, targets),
            lambda: F.cross_entropy(theirs.lm_head(hidden * scale).float(), targets),
        ),
    }


def timed(loss_of, precision: str) -> float:
    """Seconds for one forward+backward."""
    start = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        loss = loss_of()
    loss.backward()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--pairs", type=int, default=15)
    args = parser.parse_args()
    contest = t5()
    theirs, ours, _ = contest.new_models()
    targets = contest.batches(0, BATCH)["targets"].flatten()
    for precision in args.precision:
        for name, (mine, peer) in parts(ours.train(), theirs.train(), targets).items():
            for loss_of in (mine, peer, mine, peer):  # warm-up
                timed(loss_of, precision)
            pairs = [(timed(mine, precision), timed(peer, precision)) for _ in range(args.pairs)]
            ratio = statistics.median(b / a for a, b in pairs)
            ours_ms, theirs_ms = (statistics.median(t) * 1e3 for t in zip(*pairs, strict=True))
            print(f"{precision} {name:10s} ours {ours_ms:6.1f} ms   transformers {theirs_ms:6.1f} ms   {ratio:.2f}x")


if __name__ == "__main__":
    main()
