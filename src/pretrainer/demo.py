"""`make demo`: pretrain configs/gpt-tiny.yaml on built-in Shakespeare, then report and sample."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from . import load, load_config, train
from .eval.metrics import perplexity, unigram_loss
from .model.generate import generate_text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("config", nargs="?", default="configs/gpt-tiny.yaml")
    parser.add_argument("--run-dir", default="runs/demo")
    args = parser.parse_args()
    run_dir = Path(args.run_dir)
    shutil.rmtree(run_dir, ignore_errors=True)  # the demo always starts from scratch

    config = load_config(args.config)
    result = train(config, run_dir)
    shards = result.shards
    baseline = unigram_loss(shards.tokens("train"), shards.tokens("val"), shards.manifest["vocab_size"])
    model, tokenizer = load(run_dir)
    sample = generate_text(model, tokenizer, "ROMEO.\n", 120, temperature=0.8, top_k=50, seed=0)
    print()
    print(f"validation loss     {result.val_loss:.3f} nats/token (perplexity {perplexity(result.val_loss):.1f})")
    print(f"unigram baseline    {baseline:.3f} nats/token (perplexity {perplexity(baseline):.1f})")
    print(f"loss curve          {run_dir / 'loss.png'}")
    print("sample:\n")
    print("ROMEO.\n" + sample)


if __name__ == "__main__":
    main()
