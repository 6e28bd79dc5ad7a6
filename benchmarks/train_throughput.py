"""Training throughput of our models against their Hugging Face `transformers` peers, same config, same process.

Three families, each against its peer: GPT (`Decoder` vs `GPT2LMHeadModel`, causal LM), BERT (`Encoder` vs
`BertForMaskedLM`, masked LM) and T5 (`EncoderDecoder` vs `T5ForConditionalGeneration` v1.0, span corruption).
In each, both models start from the same weights (HF's init copied into ours) and train on the same Shakespeare
batches with AdamW; their steps are interleaved in rounds, alternating who goes first, so that machine noise
hits both alike. Prints tokens/s, the ratio ours/HF, MFU against this machine's measured matmul ceiling and
both loss curves' agreement, then a summary table.
Run: `make bench` or `python benchmarks/train_throughput.py --models gpt bert t5 --precision fp32 bf16`.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pretrainer.config import DataConfig, ModelConfig
from pretrainer.data.objectives import IGNORE, CausalLM, MaskedLM, SpanCorruption
from pretrainer.data.shards import PretrainingBatches, TokenWindows, prepare
from pretrainer.model import Decoder
from pretrainer.model.encoder import Encoder
from pretrainer.model.encoder_decoder import EncoderDecoder
from pretrainer.model.hf import config_from_hf, state_dict_from_hf
from pretrainer.scaling.flops import count_params, flops_per_token, measured_matmul_flops, peak_flops

LAYERS, D_MODEL, HEADS, D_FF, VOCAB, SEQ, BATCH = 4, 256, 4, 1024, 8192, 128, 16
D_KV, T5_TARGET = 64, 32  # T5: head size; decoder length (inputs are SEQ tokens)
TARGETS = {"fp32": 1.15, "bf16": 1.3}  # ratio ours/HF we aim for (printed, not asserted)
Batch = dict[str, torch.Tensor]


@dataclass
class Contest:
    """One family's match: fresh models with the same weights, the loss each computes from a batch, the batches."""

    title: str  # the shapes, printed
    about: list[str]  # what else to know (data, choices), printed
    new_models: Callable[[], tuple[nn.Module, nn.Module, ModelConfig]]  # (theirs, ours, our config)
    ours_loss: Callable[[nn.Module, Batch], torch.Tensor]
    theirs_loss: Callable[[nn.Module, Batch], torch.Tensor]
    batches: Callable[[int, int], Batch]  # examples first .. first+size-1
    tokens_per_example: int  # what tokens/s counts
    flops_per_example: Callable[[nn.Module, ModelConfig], float]  # training FLOPs, from our model


def training_batches(objective, shards):
    """make(first, size) over the training split, as the trainer builds them."""
    windows = TokenWindows(shards.tokens("train"), objective.window, objective.stride, 0)
    return PretrainingBatches(objective, windows, 0).make


def twins(family: str, theirs_class, hf_config, build: Callable[[ModelConfig], nn.Module], absent=()):
    """(theirs, ours, our config): `theirs_class(hf_config)` with HF's init from seed 0, and our model of the
    same config holding its weights. Only tied head weights and the parts `absent` (key prefixes of heads
    that theirs has not got) may stay uncopied."""
    torch.manual_seed(0)
    theirs = theirs_class(hf_config)
    config = config_from_hf(theirs.config.to_dict())
    ours = build(config)
    state, notes = state_dict_from_hf(family, theirs.state_dict(), config)
    result = ours.load_state_dict(state, strict=False)
    tied = {"lm_head.weight", "mlm_decoder.weight"} if config.tie_embeddings else set()
    bad = [k for k in result.missing_keys if k not in tied and not k.startswith(tuple(absent))]
    if bad or result.unexpected_keys or (notes and not absent):
        raise SystemExit(f"{family}: weights do not carry over: missing {bad}, unexpected {result.unexpected_keys}")
    return theirs, ours, config


def gpt() -> Contest:
    import transformers

    shards = prepare(DataConfig(source="shakespeare", tokenizer="bpe", vocab_size=VOCAB))
    objective = CausalLM(SEQ)
    make = PretrainingBatches(
        objective, TokenWindows(shards.tokens("train"), objective.window, objective.stride, 0), 0
    ).make

    def batches(first: int, size: int) -> Batch:
        batch = make(first, size)
        # HF predicts token t+1 for t < seq-1 only (labels=input_ids, shifted inside): give ours the same targets
        batch["targets"] = batch["targets"].clone()
        batch["targets"][:, -1] = IGNORE
        return batch

    def new_models():
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
        return twins("gpt2", transformers.GPT2LMHeadModel, hf_config, Decoder)

    return Contest(
        title=f"GPT vs GPT2LMHeadModel: {LAYERS} layers, d_model {D_MODEL}, {HEADS} heads, d_ff {D_FF}, "
        f"vocab {VOCAB}, seq {SEQ}, batch {BATCH}",
        about=["causal LM on Shakespeare, BPE 8192; tok/s counts input tokens"],
        new_models=new_models,
        ours_loss=lambda m, b: m(b["input_ids"], b["targets"])[1],
        theirs_loss=lambda m, b: m(input_ids=b["input_ids"], labels=b["input_ids"]).loss,
        batches=batches,
        tokens_per_example=SEQ,
        flops_per_example=lambda ours, config: SEQ * flops_per_token(config, count_params(ours, False), SEQ),
    )


def bert() -> Contest:
    import transformers

    shards = prepare(DataConfig(source="shakespeare", tokenizer="wordpiece", vocab_size=VOCAB))
    objective = MaskedLM(SEQ, shards.tokenizer, mask_prob=0.15, whole_word=False, nsp=False)
    make = PretrainingBatches(
        objective, TokenWindows(shards.tokens("train"), objective.window, objective.stride, 0), 0
    ).make

    def new_models():
        hf_config = transformers.BertConfig(
            vocab_size=VOCAB,
            hidden_size=D_MODEL,
            num_hidden_layers=LAYERS,
            num_attention_heads=HEADS,
            intermediate_size=D_FF,
            hidden_act="gelu",
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
            max_position_embeddings=SEQ,
            type_vocab_size=2,
            pad_token_id=objective.pad,
        )
        # BertForMaskedLM has no pooler: ours keeps a fresh one, which no loss here reaches
        return twins("bert", transformers.BertForMaskedLM, hf_config, Encoder, absent=("pooler.",))

    def flops(ours, config):  # the pooler takes no part
        return flops_per_token(config, count_params(ours, embeddings=False) - count_params(ours.pooler), SEQ) * SEQ

    return Contest(
        title=f"BERT vs BertForMaskedLM: {LAYERS} layers, d_model {D_MODEL}, {HEADS} heads, d_ff {D_FF}, "
        f"vocab {VOCAB}, post-LN, GELU, seq {SEQ}, batch {BATCH}",
        about=["masked LM (15%, 80/10/10) on Shakespeare, WordPiece 8192; tok/s counts input tokens"],
        new_models=new_models,
        ours_loss=lambda m, b: m(input_ids=b["input_ids"], targets=b["targets"])[1],
        theirs_loss=lambda m, b: m(input_ids=b["input_ids"], labels=b["targets"]).loss,
        batches=make,
        tokens_per_example=SEQ,
        flops_per_example=flops,
    )


def t5() -> Contest:
    import transformers

    shards = prepare(DataConfig(source="shakespeare", tokenizer="unigram", vocab_size=VOCAB))
    pad = shards.tokenizer.token_to_id("<pad>")  # also T5's decoder start
    objective = SpanCorruption(SEQ, shards.tokenizer, noise_density=0.15, mean_span_length=3.0, start_id=pad)
    if objective.target_len > T5_TARGET:
        raise SystemExit(f"span corruption of {SEQ} inputs gives {objective.target_len} > {T5_TARGET} targets")
    make = PretrainingBatches(
        objective, TokenWindows(shards.tokens("train"), objective.window, objective.stride, 0), 0
    ).make

    def batches(first: int, size: int) -> Batch:
        # no input length gives exactly T5_TARGET targets (t5_lengths: 130..136 -> 31, 137 -> 33), so the
        # targets are padded at the end: labels -100 there, decoder inputs <start> + targets[:-1] with <pad>
        batch = make(first, size)
        targets = F.pad(batch["targets"], (0, T5_TARGET - objective.target_len), value=IGNORE)
        decoder_inputs = torch.cat([batch["decoder_input_ids"][:, :1], targets[:, :-1]], dim=1)
        return {
            "input_ids": batch["input_ids"],
            "decoder_input_ids": decoder_inputs.masked_fill(decoder_inputs == IGNORE, pad),
            "targets": targets,
        }

    def new_models():
        hf_config = transformers.T5Config(
            vocab_size=VOCAB,
            d_model=D_MODEL,
            d_kv=D_KV,
            d_ff=D_FF,
            num_layers=LAYERS,
            num_decoder_layers=LAYERS,
            num_heads=HEADS,
            relative_attention_num_buckets=32,
            relative_attention_max_distance=128,
            dropout_rate=0.0,
            feed_forward_proj="relu",
            tie_word_embeddings=True,
            decoder_start_token_id=pad,
            pad_token_id=pad,
            eos_token_id=shards.tokenizer.token_to_id("</s>"),
        )
        return twins("t5", transformers.T5ForConditionalGeneration, hf_config, EncoderDecoder)

    def flops(ours, config):
        # 6N per token for each stack's weights over the tokens they see (the cross-attention key/value
        # projections see the encoder's), plus attention's 12·d per (query, key) pair and layer (PaLM's count,
        # as flops_per_token): encoder self, decoder self and cross
        attn = 12 * HEADS * D_KV
        cross_kv = sum(block.cross_attn.kv.weight.numel() for block in ours.decoder.blocks)
        return 6 * (
            count_params(ours.encoder, embeddings=False) * SEQ
            + (count_params(ours.decoder, embeddings=False) - cross_kv) * T5_TARGET
            + cross_kv * SEQ
        ) + attn * LAYERS * (SEQ * SEQ + T5_TARGET * T5_TARGET + T5_TARGET * SEQ)

    return Contest(
        title=f"T5 v1.0 vs T5ForConditionalGeneration: {LAYERS}+{LAYERS} layers, d_model {D_MODEL}, {HEADS} heads "
        f"x d_kv {D_KV}, d_ff {D_FF} ReLU, vocab {VOCAB}, tied, buckets 32/128, input {SEQ}, target {T5_TARGET}, "
        f"batch {BATCH}",
        about=[
            "span corruption (density 0.15, mean span 3) on Shakespeare, Unigram 8192; tok/s counts input + target",
            f"target length: {objective.window} raw tokens give {SEQ} inputs and {objective.target_len} targets; "
            f"targets padded to {T5_TARGET} (labels -100 on the padding, decoder inputs <start> + targets[:-1])",
        ],
        new_models=new_models,
        ours_loss=lambda m, b: m(
            input_ids=b["input_ids"], decoder_input_ids=b["decoder_input_ids"], targets=b["targets"]
        )[1],
        theirs_loss=lambda m, b: (
            m(input_ids=b["input_ids"], decoder_input_ids=b["decoder_input_ids"], labels=b["targets"]).loss
        ),
        batches=batches,
        tokens_per_example=SEQ + T5_TARGET,
        flops_per_example=flops,
    )


CONTESTS = {"gpt": gpt, "bert": bert, "t5": t5}


def step_fn(model: nn.Module, loss_of, precision: str):
    # fused AdamW, each library's default: our make_optimizer's, and transformers' Trainer's (adamw_torch_fused)
    optimizer = torch.optim.AdamW(model.parameters(), lr=6e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True)

    def step(batch: Batch) -> float:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = loss_of(model, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    return step


def run(name: str, contest: Contest, precision: str, rounds: int, steps_per_round: int) -> tuple[float, float, float]:
    """Print one family's match at one precision; return the median tokens/s (ours, theirs) and ratio."""
    theirs, ours, config = contest.new_models()
    contenders = {
        "pretrainer": step_fn(ours.train(), contest.ours_loss, precision),
        "transformers": step_fn(theirs.train(), contest.theirs_loss, precision),
    }
    rates = {name: [] for name in contenders}
    losses = {name: [] for name in contenders}
    warm = contest.batches(0, BATCH)
    for step in contenders.values():  # warm-up: allocator, oneDNN primitives, optimizer state
        step(warm)
    sample = BATCH
    for r in range(rounds):
        batches = [contest.batches(sample + i * BATCH, BATCH) for i in range(steps_per_round)]
        sample += steps_per_round * BATCH
        for who, step in sorted(contenders.items(), reverse=r % 2 == 1):  # alternate who goes first
            start = time.perf_counter()
            losses[who] += [step(b) for b in batches]
            rates[who].append(steps_per_round * BATCH * contest.tokens_per_example / (time.perf_counter() - start))
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    fpt = contest.flops_per_example(ours, config) / contest.tokens_per_example
    peak = peak_flops(torch.device("cpu"), dtype)
    print(f"\n[{name} {precision}] {contest.title}; {rounds} rounds x {steps_per_round} steps")
    for line in contest.about:
        print(f"  {line}")
    print(f"  ceiling: measured {precision} matmul {peak / 1e9:.0f} GFLOP/s; {fpt / 1e6:.1f} MFLOP/token")
    median = {who: statistics.median(r) for who, r in rates.items()}
    for who in ("pretrainer", "transformers"):
        print(
            f"  {who:13s} {median[who]:9,.0f} tok/s   MFU {median[who] * fpt / peak:6.1%}   "
            f"loss first {losses[who][0]:.3f} last-10 mean {statistics.mean(losses[who][-10:]):.4f}"
        )
    gap = max(abs(a - b) for a, b in zip(losses["pretrainer"], losses["transformers"], strict=True))
    # each round's ratio compares steps run back to back, so the machine's drift over the run cancels out
    ratios = sorted(a / b for a, b in zip(rates["pretrainer"], rates["transformers"], strict=True))
    ratio = statistics.median(ratios)
    print(
        f"  ratio pretrainer/transformers: {ratio:.2f}x (median of rounds; quartiles {ratios[len(ratios) // 4]:.2f}-"
        f"{ratios[3 * len(ratios) // 4]:.2f})   max |loss difference| over {len(losses['pretrainer'])} steps: {gap:.4f}"
    )
    return median["pretrainer"], median["transformers"], ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", nargs="+", default=list(CONTESTS), choices=list(CONTESTS))
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--steps-per-round", type=int, default=5)
    args = parser.parse_args()
    import transformers

    cpu = platform.processor() or platform.machine()
    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {cpu}, {threads} threads")
    for precision in args.precision:
        measured_matmul_flops(torch.bfloat16 if precision == "bf16" else torch.float32)
    results = []
    for name in args.models:
        contest = CONTESTS[name]()
        for precision in args.precision:
            results.append((name, precision, *run(name, contest, precision, args.rounds, args.steps_per_round)))
    print(f"\n{'model':5s}  {'precision':9s}  {'ours tok/s':>10s}  {'HF tok/s':>10s}  {'ratio':>6s}  target")
    for name, precision, ours, theirs, ratio in results:
        target = TARGETS[precision]
        met = "met" if ratio >= target else "missed"
        print(f"{name:5s}  {precision:9s}  {ours:10,.0f}  {theirs:10,.0f}  {ratio:5.2f}x  >= {target:.2f}x {met}")


if __name__ == "__main__":
    main()
