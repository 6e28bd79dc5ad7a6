"""Generation speed: greedy decoding with a KV cache, ours (`pretrainer.model.generate.generate`) against
`transformers`' `generate` on the same weights, in the same process.

- the tiny GPT (`configs/gpt-tiny.yaml`'s shape: 4 layers, d_model 128, 4 heads, vocab 4096; 512 positions so that
  prompt and continuation fit) continuing a 16-token prompt;
- T5-small (`configs/t5-small.yaml`'s shape: 6+6 layers, d_model 512, 8 heads of 64, ReLU, vocab 32128) writing
  for a 64-token input;

each at batch 1 and 8, 256 new tokens per row (`min_new_tokens` keeps `generate` from stopping early; ours has no
stop tokens). The weights are random (seeded), and both sides must write the same tokens (counted). Per-token
speed does not depend on the weights, but ours' prompt-lookup drafts (on by default for greedy decoding; T5 drafts
from its input too) do: a random model's greedy text falls into short cycles, which drafts predict perfectly, so
every case is also timed without them.
`--gpt-run RUN` adds the demo's trained GPT (`pretrainer train configs/gpt-tiny.yaml --run-dir RUN`) continuing a
line of Shakespeare, as a new user would try it (its 128 positions hold a 16-token prompt and 112 new tokens), and
continuing eight such lines at once: text that copies little, where a batch's drafts rarely fit every row.
`--t5-run RUN` adds a trained code-docstrings T5 (`pretrainer finetune configs/docstrings-t5-tiny.yaml ...`)
summarising the task's first 20 test functions one at a time, as `pretrainer generate` would: up to 32 tokens
each, both sides stopping at `</s>`.
Contenders alternate in rounds (`timing.py`); new tokens/s counts every row's tokens.
Run: `python benchmarks/generate_throughput.py [--rounds 3] [--new-tokens 256] [--gpt-run RUN] [--t5-run RUN]`.
"""

from __future__ import annotations

import argparse
import json
import platform

import torch
import transformers
from timing import rounds, summary

import pretrainer
from pretrainer.config import load_config
from pretrainer.data.tasks import builtin_task
from pretrainer.model.generate import generate
from pretrainer.model.hf import config_to_hf, family_of, model_from_hf, state_dict_to_hf

TARGETS = {("gpt", 1): 3.0, ("gpt", 8): 2.0, ("t5", 1): 2.0, ("t5", 8): 2.0}
PROMPT = {"gpt": 16, "t5": 64}
NO_GPT2_IDS = {"bos_token_id": 0, "eos_token_id": 0}  # GPT-2's 50256 is outside these vocabularies


def twins(name: str):
    """(theirs, ours) with the same random weights, both in eval mode."""
    torch.manual_seed(0)
    if name == "gpt":
        config = transformers.GPT2Config(
            vocab_size=4096, n_positions=512, n_embd=128, n_layer=4, n_head=4, **NO_GPT2_IDS
        )
        theirs = transformers.GPT2LMHeadModel(config)
    else:
        config = transformers.T5Config(vocab_size=32128, d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_heads=8,
                                       feed_forward_proj="relu", tie_word_embeddings=True, decoder_start_token_id=0,
                                       pad_token_id=0, eos_token_id=1)  # fmt: skip
        theirs = transformers.T5ForConditionalGeneration(config)
    ours, _ = model_from_hf(theirs.config.to_dict(), {k: v.clone() for k, v in theirs.state_dict().items()})
    return theirs.eval(), ours.eval()


OPENINGS = [
    "ROMEO.\nBut soft, what light through yonder window breaks?",
    "JULIET.\nO Romeo, Romeo, wherefore art thou Romeo?",
    "HAMLET.\nTo be, or not to be, that is the question:",
    "KING.\nNow is the winter of our discontent made glorious",
    "MACBETH.\nTomorrow, and tomorrow, and tomorrow, creeps in",
    "PORTIA.\nThe quality of mercy is not strained; it droppeth",
    "ANTONY.\nFriends, Romans, countrymen, lend me your ears; I come",
    "PROSPERO.\nWe are such stuff as dreams are made on, and our little",
]


def trained_gpt(run: str, batch: int):
    """(theirs, ours, prompt ids) for a trained run of ours: GPT2LMHeadModel gets its exported weights; the prompts
    are the first 16 tokens of `batch` famous lines."""
    ours, tokenizer = pretrainer.load(run)
    hf = config_to_hf(ours.config)
    theirs = transformers.GPT2LMHeadModel(
        transformers.GPT2Config(**{k: v for k, v in hf.items() if k != "model_type"}, **NO_GPT2_IDS)
    )
    theirs.load_state_dict(state_dict_to_hf(family_of(ours.config), ours.state_dict(), ours.config), strict=False)
    ids = torch.tensor([tokenizer.encode(line).ids[:16] for line in OPENINGS[:batch]])
    return theirs.eval(), ours.eval(), ids


def docstrings(run: str, n_rounds: int, n: int = 20, new_tokens: int = 32) -> list[str]:
    """A trained code-docstrings T5 (ours, and T5ForConditionalGeneration with its exported weights) writing the
    docstrings of the task's first `n` test functions, one at a time, each stopping at `</s>`."""
    ours, tokenizer = pretrainer.load(run)
    hf = config_to_hf(ours.config)
    theirs = transformers.T5ForConditionalGeneration(
        transformers.T5Config(**{k: v for k, v in hf.items() if k != "model_type"})
    ).eval()
    theirs.load_state_dict(state_dict_to_hf(family_of(ours.config), ours.state_dict(), ours.config), strict=False)
    prefix = load_config(f"{run}/config.yaml").task.prefix or ""
    eos = tokenizer.token_to_id("</s>")
    rows = [json.loads(line) for line in (builtin_task("code-docstrings") / "test.jsonl").open()][:n]
    inputs = [torch.tensor([tokenizer.encode(prefix + r["input"]).ids[: ours.config.max_seq_len - 1] + [eos]])
              for r in rows]  # fmt: skip
    settings = dict(max_new_tokens=new_tokens, do_sample=False, eos_token_id=eos, pad_token_id=0,
                    decoder_start_token_id=ours.config.decoder_start_id)  # fmt: skip

    def ours_all(draft_tokens=8):
        return [generate(ours, ids, new_tokens, temperature=0, stop_ids=[eos], draft_tokens=draft_tokens)
                for ids in inputs]  # fmt: skip

    def theirs_all():
        return [theirs.generate(ids, attention_mask=torch.ones_like(ids), **settings) for ids in inputs]

    contenders = {"ours": ours_all, "ours, one token per pass": lambda: ours_all(0), "theirs": theirs_all}
    with torch.no_grad():
        outputs = {who: [row[0].tolist() for row in run()] for who, run in contenders.items()}
        times = rounds(contenders, n_rounds)
    same = sum(a == b for a, b in zip(outputs["ours"], outputs["theirs"], strict=True))
    written = sum(len(row) - 1 for row in outputs["theirs"])  # the start token is not written
    print(f"trained T5 ({run}): {n} docstrings, {written} tokens; ours writes the same tokens as transformers in "
          f"{same} of {n}; e.g. {tokenizer.decode(outputs['ours'][0][1:])!r}")  # fmt: skip
    what = f"trained T5 ({run}), {n} docstrings one at a time, up to {new_tokens} tokens"
    return [
        summary(what, "new tokens/s", written, times, TARGETS[("t5", 1)]),
        summary(f"{what}, no drafts", "new tokens/s", written, times, None, ours="ours, one token per pass"),
    ]


def contest(name: str, batch: int, new_tokens: int, n_rounds: int, run: str | None = None) -> list[str]:
    if run is None:
        theirs, ours = twins(name)
        ids = torch.randint(3, 4096, (batch, PROMPT[name]), generator=torch.Generator().manual_seed(batch))
    else:
        theirs, ours, ids = trained_gpt(run, batch)
        new_tokens = min(new_tokens, ours.config.max_seq_len - ids.shape[1])
    settings = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    skip = 0 if name == "t5" else ids.shape[1]  # a decoder returns its prompt too; T5's start token is cut below
    contenders = {
        "ours": lambda: generate(ours, ids, new_tokens, temperature=0),
        "theirs": lambda: theirs.generate(ids, attention_mask=torch.ones_like(ids), **settings),
    }
    contenders["ours, one token per pass"] = lambda: generate(ours, ids, new_tokens, temperature=0, draft_tokens=0)
    with torch.no_grad():
        outputs = {who: run()[:, skip:][:, -new_tokens:] for who, run in contenders.items()}
        times = rounds(contenders, n_rounds)
    same = int((outputs["ours"] == outputs["theirs"]).all(0).cumprod(0).sum())
    model = f"trained tiny GPT ({run})" if run else "tiny GPT, random" if name == "gpt" else "T5-small, random"
    what = f"{model}, batch {batch}, {new_tokens} new tokens"
    print(f"{what}: ours writes the same first {same} of {new_tokens} tokens as transformers (every row)")
    rows = [summary(what, "new tokens/s", batch * new_tokens, times, TARGETS[(name, batch)])]
    rows.append(summary(f"{what}, no drafts", "new tokens/s", batch * new_tokens, times, None,
                        ours="ours, one token per pass"))  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--gpt-run", help="also time this trained run of configs/gpt-tiny.yaml, at batch 1 and 8")
    parser.add_argument("--t5-run", help="also time this trained code-docstrings run of T5, at batch 1")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {platform.processor() or 'cpu'}, "
          f"{torch.get_num_threads()} threads")  # fmt: skip
    rows = []
    for name in ("gpt", "t5"):
        for batch in (1, 8):
            rows += contest(name, batch, args.new_tokens, args.rounds)
    if args.gpt_run:
        for batch in (1, 8):
            rows += contest("gpt", batch, args.new_tokens, args.rounds, args.gpt_run)
    if args.t5_run:
        rows += docstrings(args.t5_run, args.rounds)
    print("\n| what | pretrainer | transformers | ratio (quartiles of rounds) | target | unit |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
