"""In-context learning speed on SmolLM2-135M-Instruct: ours against the peers users would reach for, same process.

1. Multiple-choice scoring: tweets-sentiment prompts with k = 4 demonstrations (seed 0, as `pretrainer prompt`
   draws them: the same four for every query), each scored on its three labels. Ours: `continuation_logprobs`;
   theirs: lm-evaluation-harness's own `HFLM` (`loglikelihood`) over `transformers`' model of the same weights,
   the same requests and batch size. prompts/s and the ratio; the two must agree on every log-probability.
2. Greedy generation: an addition prompt with 4 worked (chain-of-thought) demonstrations continued by 64 tokens
   at batch 1, ours (`generate`: KV cache, prompt-lookup drafts) against `transformers`' `generate`
   (`do_sample=False`, `min_new_tokens` = `max_new_tokens`); new tokens/s and the ratio, and for the record ours
   without drafts and theirs with its own prompt lookup (`prompt_lookup_num_tokens=8`); how many tokens each
   writes as transformers' greedy generate does. Then a batch of 16 addition queries sharing those
   demonstrations (as `pretrainer prompt` batches them; equal token lengths, so neither side pads), 64 tokens each:
   ours computes the shared prefix once, `generate` computes every row whole; ours also without drafts.

Both read the weights from the same GGUF file (dequantised once by `transformers`, copied into ours). Contenders
alternate in rounds, who goes first alternating too; a ratio is the median of the rounds' ratios.
Run: `python benchmarks/icl_throughput.py --precision fp32 bf16` (needs the [eval] extra).
"""

from __future__ import annotations

import argparse
import platform
import statistics

import torch
import transformers
from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM
from timing import rounds, summary

from pretrainer.convert import resolve_source
from pretrainer.data.tokenizer import unpadded
from pretrainer.eval.icl import build_prompt, continuation_logprobs, demonstrations, load_prompt_task
from pretrainer.model.generate import generate
from pretrainer.model.hf import model_from_hf

TARGETS = {"scoring": 1.5, "generation": 2.0}


def load_both():
    gguf = resolve_source("smollm2")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    ours, _ = model_from_hf(theirs.config.to_dict(), {k: v.clone() for k, v in theirs.state_dict().items()})
    return theirs, hf_tok, ours.eval(), unpadded(hf_tok.backend_tokenizer)


def tweet_prompts(n: int, k: int = 4) -> tuple[list[str], list[str]]:
    data = load_prompt_task("tweets-sentiment", limit=n)
    prompts = [build_prompt(data.task, demonstrations(data.task, data.pool, k, 0, q), q) for q in data.queries]
    return prompts, [data.task.continuation(data.queries[0], c) for c in data.task.choices]


def scoring(theirs, hf_tok, ours, tok, precision: str, n: int, batch: int, n_rounds: int) -> str:
    prompts, choices = tweet_prompts(n)
    requests = [(p, c) for p in prompts for c in choices]
    lm = HFLM(pretrained=theirs, tokenizer=hf_tok, batch_size=batch, device="cpu", dtype=theirs.dtype)
    instances = [Instance("loglikelihood", {}, r, i) for i, r in enumerate(requests)]
    mine = continuation_logprobs(ours, tok, requests, batch)
    peer = lm.loglikelihood(instances, disable_tqdm=True)
    gap = max(abs(a[0] - b[0]) for a, b in zip(mine, peer, strict=True))
    agree = sum(a[1] == b[1] for a, b in zip(mine, peer, strict=True))
    picks = [max(range(3), key=lambda c, i=i: mine[3 * i + c][0]) for i in range(n)]
    peer_picks = [max(range(3), key=lambda c, i=i: peer[3 * i + c][0]) for i in range(n)]
    same_picks = sum(a == b for a, b in zip(picks, peer_picks, strict=True))
    print(f"scoring, {precision}: {n} prompts × 3 choices; max |log p ours - log p lm-eval| = {gap:.2e}; "
          f"greedy flags agree {agree}/{len(requests)}; picks agree {same_picks}/{n}")  # fmt: skip
    tokens = [len(tok.encode(p).ids) for p in prompts]
    print(f"  prompt tokens: mean {statistics.fmean(tokens):.0f}, max {max(tokens)}")
    times = rounds({"ours": lambda: continuation_logprobs(ours, tok, requests, batch),
                    "theirs": lambda: lm.loglikelihood(instances, disable_tqdm=True)}, n_rounds)  # fmt: skip
    return summary(f"MC scoring, tweets k=4, batch {batch} ({precision})", "prompts/s", n, times, TARGETS["scoring"])


def generation(theirs, hf_tok, ours, tok, precision: str, new_tokens: int, n_rounds: int) -> list[str]:
    data = load_prompt_task("addition", limit=1)
    query = data.queries[0]
    prompt = build_prompt(data.task, demonstrations(data.task, data.pool, 4, 0, query), query, cot=True)
    ids = torch.tensor([tok.encode(prompt).ids])
    plain = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    lookup = dict(plain, prompt_lookup_num_tokens=8)
    contenders = {
        "ours": lambda: generate(ours, ids, new_tokens, temperature=0),
        "ours, one token per pass": lambda: generate(ours, ids, new_tokens, temperature=0, draft_tokens=0),
        "theirs": lambda: theirs.generate(ids, attention_mask=torch.ones_like(ids), **plain),
        "theirs, prompt lookup": lambda: theirs.generate(ids, attention_mask=torch.ones_like(ids), **lookup),
    }
    with torch.no_grad():
        outputs = {name: run()[0, ids.shape[1] :] for name, run in contenders.items()}
        times = rounds(contenders, n_rounds)
    for name, out in outputs.items():
        same = int((out[:new_tokens] == outputs["theirs"][: len(out)]).cumprod(0).sum())
        print(f"generation, {precision}, {name}: {same} of {new_tokens} tokens as transformers' greedy generate")
    text = tok.decode(outputs["ours"].tolist())
    print(f"  prompt: addition, 4 worked demonstrations, {ids.shape[1]} tokens; ours writes {text!r}")
    what = f"greedy generation, addition k=4 CoT, batch 1 ({precision})"
    return [
        summary(what, "new tokens/s", new_tokens, times, TARGETS["generation"]),
        summary(f"{what}, one token per pass (no drafts)", "new tokens/s", new_tokens, times, None,
                ours="ours, one token per pass"),
        summary(f"{what}, against transformers' own prompt lookup", "new tokens/s", new_tokens, times, None,
                theirs="theirs, prompt lookup"),
    ]  # fmt: skip


def batch_generation(theirs, ours, tok, precision: str, new_tokens: int, batch: int, n_rounds: int) -> list[str]:
    """Greedy generation for a batch of queries that share their demonstrations, as `pretrainer prompt` runs them:
    addition queries (all of one token length), 4 worked demonstrations, seed 0."""
    data = load_prompt_task("addition", limit=4 * batch)
    pool = data.pool
    prompts = [build_prompt(data.task, demonstrations(data.task, pool, 4, 0, q), q, cot=True) for q in data.queries]
    encoded = [tok.encode(p).ids for p in prompts]
    length = statistics.mode(map(len, encoded))
    ids = torch.tensor([e for e in encoded if len(e) == length][:batch])
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    contenders = {
        "ours": lambda: generate(ours, ids, new_tokens, temperature=0),
        "ours, one token per pass": lambda: generate(ours, ids, new_tokens, temperature=0, draft_tokens=0),
        "theirs": lambda: theirs.generate(ids, attention_mask=torch.ones_like(ids), **kwargs),
    }
    with torch.no_grad():
        outputs = {name: run()[:, ids.shape[1] :] for name, run in contenders.items()}
        times = rounds(contenders, n_rounds)
    same = min((out == outputs["theirs"]).all(1).sum() for out in outputs.values())
    print(f"batch generation, {precision}: {ids.shape[0]} prompts of {length} tokens sharing 4 demonstrations; "
          f"{same} of {ids.shape[0]} rows write what transformers writes, with drafts and without")  # fmt: skip
    what = f"greedy generation, {ids.shape[0]} addition queries sharing k=4 CoT demos ({precision})"
    work = new_tokens * ids.shape[0]
    return [
        summary(what, "new tokens/s", work, times, TARGETS["generation"]),
        summary(f"{what}, no drafts", "new tokens/s", work, times, None, ours="ours, one token per pass"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--precision", nargs="+", default=["fp32"], choices=["fp32", "bf16"])
    parser.add_argument("--prompts", type=int, default=48, help="scored prompts per round (fp32; bf16 a quarter)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {platform.processor() or 'cpu'}, "
          f"{torch.get_num_threads()} threads")  # fmt: skip
    theirs32, hf_tok, ours32, tok = load_both()
    rows = []
    for precision in args.precision:
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
        theirs, ours = theirs32.to(dtype), ours32.to(dtype)
        n = args.prompts if precision == "fp32" else max(4, args.prompts // 4)
        rows.append(scoring(theirs, hf_tok, ours, tok, precision, n, args.batch_size, args.rounds))
        rows += generation(theirs, hf_tok, ours, tok, precision, args.new_tokens, args.rounds)
        rows += batch_generation(theirs, ours, tok, precision, args.new_tokens, args.batch_size, args.rounds)
    print("\n| what | pretrainer | peer | ratio (quartiles of rounds) | target | unit |\n|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
