"""Training throughput of our models against their Hugging Face `transformers` peers, same config, same process.

Three families pretrain, each against its peer: GPT (`Decoder` vs `GPT2LMHeadModel`, causal LM), BERT (`Encoder`
vs `BertForMaskedLM`, masked LM) and T5 (`EncoderDecoder` vs `T5ForConditionalGeneration` v1.0, span corruption),
from the same weights (HF's init copied into ours) on the same Shakespeare batches. One fine-tunes: the pretrained
MiniLM (our `Encoder` with a sequence head vs `BertForSequenceClassification`) classifies tweets-sentiment.
Both contenders train with AdamW; their steps are interleaved in rounds, alternating who goes first, so that
machine noise hits both alike. Prints tokens/s, the ratio ours/HF, MFU against this machine's measured matmul
ceiling and both loss curves' agreement, then a summary table.
Run: `make bench` or `python benchmarks/train_throughput.py --models gpt bert t5 minilm-cls --precision fp32 bf16`.
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from pretrainer.config import DataConfig, ModelConfig, TaskConfig
from pretrainer.convert import load_any, resolve_source
from pretrainer.data.objectives import IGNORE, CausalLM, MaskedLM, SpanCorruption
from pretrainer.data.shards import PretrainingBatches, TokenWindows, prepare
from pretrainer.data.tasks import encode_task, load_task
from pretrainer.model import Decoder, build_model
from pretrainer.model.encoder import Encoder
from pretrainer.model.encoder_decoder import EncoderDecoder
from pretrainer.model.hf import config_from_hf, state_dict_from_hf
from pretrainer.scaling.flops import measured_matmul_flops, model_flops, peak_flops

LAYERS, D_MODEL, HEADS, D_FF, VOCAB, SEQ, BATCH = 4, 256, 4, 1024, 8192, 128, 16
D_KV, T5_TARGET = 64, 32  # T5: head size; decoder length (inputs are SEQ tokens)
TARGETS = {"fp32": 1.15, "bf16": 1.3}  # ratio ours/HF we aim for (printed, not asserted), unless a contest says
CLS_BATCH, CLS_MAX_LEN, CLS_LABELS = 32, 64, 3  # MiniLM on tweets-sentiment
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
    tokens: Callable[[Batch], int]  # what tokens/s counts in a batch
    flops_per_token: Callable[[ModelConfig], float]  # training FLOPs per counted token (scaling/flops.py)
    batch_size: int = BATCH
    targets: dict[str, float] = field(default_factory=lambda: TARGETS)  # per precision


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
        tokens=lambda b: b["input_ids"].numel(),
        flops_per_token=lambda config: model_flops(config, SEQ) / SEQ,
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

    return Contest(
        title=f"BERT vs BertForMaskedLM: {LAYERS} layers, d_model {D_MODEL}, {HEADS} heads, d_ff {D_FF}, "
        f"vocab {VOCAB}, post-LN, GELU, seq {SEQ}, batch {BATCH}",
        about=["masked LM (15%, 80/10/10) on Shakespeare, WordPiece 8192; tok/s counts input tokens"],
        new_models=new_models,
        ours_loss=lambda m, b: m(input_ids=b["input_ids"], targets=b["targets"])[1],
        theirs_loss=lambda m, b: m(input_ids=b["input_ids"], labels=b["targets"]).loss,
        batches=make,
        tokens=lambda b: b["input_ids"].numel(),
        flops_per_token=lambda config: (
            model_flops(config, SEQ, head_share=objective.mask_prob) / SEQ
        ),  # head: masked only
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
        tokens=lambda b: b["input_ids"].numel() + b["decoder_input_ids"].numel(),
        flops_per_token=lambda config: model_flops(config, SEQ, T5_TARGET) / (SEQ + T5_TARGET),
    )


def minilm_cls() -> Contest:
    """Fine-tuning: the pretrained MiniLM (6 layers, d_model 384) classifies tweets-sentiment, ours with a sequence
    head on the pooled <cls>, theirs BertForSequenceClassification, from the same checkpoint and classifier."""
    import transformers

    # from here on, no loading progress bars nor "classifier newly initialized" (it is, and ours gets it below)
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    pretrained, tokenizer, _ = load_any("minilm")  # notes: only the MLM head it lacks, which is not used here
    folder = resolve_source("minilm")  # the transformers folder load_any read
    splits = encode_task(load_task(TaskConfig(name="tweets-sentiment")), tokenizer, "encoder", CLS_MAX_LEN, seed=0)
    make = splits["train"].make
    sample = [make(i * CLS_BATCH, CLS_BATCH)["padding_mask"] for i in range(100)]
    lengths = torch.cat([mask.sum(1) for mask in sample]).double()
    padded = statistics.mean(mask.shape[1] for mask in sample)
    # a token attends to the real tokens of its own text: over all tokens, the mean length is E[len²] / E[len]
    attended = float((lengths**2).sum() / lengths.sum())

    def ours_forward(model: nn.Module, b: Batch):
        return model(
            input_ids=b["input_ids"],
            token_type_ids=b["token_type_ids"],
            padding_mask=b["padding_mask"],
            labels=b["labels"],
        )

    def theirs_forward(model: nn.Module, b: Batch):
        return model(
            input_ids=b["input_ids"],
            token_type_ids=b["token_type_ids"],
            attention_mask=b["padding_mask"].long(),
            labels=b["labels"],
        )

    def new_models():
        config = dataclasses.replace(pretrained.config, head="sequence", n_labels=CLS_LABELS, dropout=0.0)
        ours = build_model(config)
        # as the trainer's _load_body: all but the task head, which stays fresh; the MLM head's weights are left over
        missing, unexpected = ours.load_state_dict(pretrained.state_dict(), strict=False)
        lacking = [key for key in missing if not key.startswith("head.")]
        if lacking or any(not key.startswith("mlm_") for key in unexpected):
            raise SystemExit(f"minilm-cls: the body does not carry over: missing {lacking}, unexpected {unexpected}")
        theirs = transformers.BertForSequenceClassification.from_pretrained(
            folder, num_labels=CLS_LABELS, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0
        )
        with torch.no_grad():
            ours.head.linear.weight.copy_(theirs.classifier.weight)
            ours.head.linear.bias.copy_(theirs.classifier.bias)
            batch = make(0, CLS_BATCH)
            gap = (ours_forward(ours.eval(), batch)[0] - theirs_forward(theirs.eval(), batch).logits).abs().max()
        if not gap < 1e-4:
            raise SystemExit(f"minilm-cls: ours and theirs disagree on the same batch: max |logit difference| {gap}")
        return theirs, ours, ours.config

    def flops(config):
        # model FLOPs of the encoder body per real token, attending over its own text. Not counted: padding (HF
        # computes it, ours skips it, neither needs it). Ours also skips the last layer's work past keys and values
        # for all but <cls>, so this is more than ours executes: the same yardstick for both, not ours' hardware use
        return model_flops(config, attended) / attended

    c = pretrained.config
    return Contest(
        title=f"MiniLM vs BertForSequenceClassification: {c.n_layer} layers, d_model {c.d_model}, {c.n_head} heads, "
        f"d_ff {c.d_ff}, vocab {c.vocab_size}, post-LN, GELU, {CLS_LABELS} classes, max len {CLS_MAX_LEN}, "
        f"batch {CLS_BATCH}",
        about=[
            "fine-tuning the pretrained MiniLM (all-MiniLM-L6-v2's body; HF's fresh classifier copied into ours) on "
            "tweets-sentiment, shuffled training split; tok/s counts real (non-pad) tokens",
            f"batches padded to their longest: mean padded length {padded:.1f}, real length {lengths.mean():.1f} "
            f"(first 100 batches); attention FLOPs use the mean length a token attends to, {attended:.1f}",
        ],
        new_models=new_models,
        ours_loss=lambda m, b: ours_forward(m, b)[1],
        theirs_loss=lambda m, b: theirs_forward(m, b).loss,
        batches=make,
        tokens=lambda b: int(b["padding_mask"].sum()),
        flops_per_token=flops,
        batch_size=CLS_BATCH,
        targets={"fp32": 1.3, "bf16": 1.3},
    )


CONTESTS = {"gpt": gpt, "bert": bert, "t5": t5, "minilm-cls": minilm_cls}


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
    """Print one contest's match at one precision; return the median tokens/s (ours, theirs) and ratio."""
    theirs, ours, config = contest.new_models()
    contenders = {
        "pretrainer": step_fn(ours.train(), contest.ours_loss, precision),
        "transformers": step_fn(theirs.train(), contest.theirs_loss, precision),
    }
    rates = {name: [] for name in contenders}
    losses = {name: [] for name in contenders}
    size = contest.batch_size
    warm = contest.batches(0, size)
    for step in contenders.values():  # warm-up: allocator, oneDNN primitives, optimizer state
        step(warm)
    sample = size
    for r in range(rounds):
        batches = [contest.batches(sample + i * size, size) for i in range(steps_per_round)]
        sample += steps_per_round * size
        tokens = sum(contest.tokens(b) for b in batches)
        for who, step in sorted(contenders.items(), reverse=r % 2 == 1):  # alternate who goes first
            start = time.perf_counter()
            losses[who] += [step(b) for b in batches]
            rates[who].append(tokens / (time.perf_counter() - start))
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    fpt = contest.flops_per_token(config)
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
            target = contest.targets[precision]
            results.append((name, precision, *run(name, contest, precision, args.rounds, args.steps_per_round), target))
    print(f"\n{'model':10s}  {'precision':9s}  {'ours tok/s':>10s}  {'HF tok/s':>10s}  {'ratio':>6s}  target")
    for name, precision, ours, theirs, ratio, target in results:
        met = "met" if ratio >= target else "missed"
        print(f"{name:10s}  {precision:9s}  {ours:10,.0f}  {theirs:10,.0f}  {ratio:5.2f}x  >= {target:.2f}x {met}")


if __name__ == "__main__":
    main()
