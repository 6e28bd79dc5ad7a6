"""Bad input, as a user gives it: one line on stderr starting with "error:", exit status 2, no traceback, and a
run folder left as it was. The table is also the README's reliability section (the last test keeps them equal):
`python -m tests.test_errors` prints it as markdown."""

from __future__ import annotations

import errno
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import pretrainer
from pretrainer import cli, files
from pretrainer.config import ModelConfig
from pretrainer.convert import export_hf
from pretrainer.model import build_model
from pretrainer.train import checkpoint
from tests.conftest import files_of, make_corpus, tiny_overrides

RECIPE = "configs/gpt-tiny.yaml"
README = Path(__file__).parent.parent / "README.md"


@dataclass
class Case:
    what: str  # what the user did, as the README lists it
    argv: str  # the command line after `pretrainer`: {tmp} is the case's folder, {run} a copy of a trained run in
    # it, TINY the overrides of a tiny model on a small corpus
    says: str  # a part of the one-line message
    setup: str | None = None  # the name of a function below that makes or damages files
    files: dict[str, str] = field(default_factory=dict)  # files to write under {tmp} first


BERT = ("model.arch=encoder", "objective.name=mlm", "data.tokenizer=wordpiece")
BART = ("model.arch=encoder_decoder", "model.positions=learned", "model.position_offset=2", "objective.name=denoising",
        "data.tokenizer=roberta")  # fmt: skip
T5 = ("model.arch=encoder_decoder", "model.positions=relative", "objective.name=span_corruption",
      "data.tokenizer=unigram", "data.sentinels=20")  # fmt: skip


TASK = "question: 'Q: {question}'\ndata: data.jsonl\n"  # a prompt task file over ODD's or LONG's data
ODD = {"data.jsonl": '{"question": "is 1 odd?", "answer": "yes"}\n{"question": "is 2 odd?", "answer": "no"}\n'
       '{"question": "is 3 odd?", "answer": "yes"}\n'}  # fmt: skip
LONG = {"data.jsonl": '{"question": "%s", "answer": "yes"}\n' % ("word " * 200)}
SENTIMENT = {"train.csv": "text,label\nfine words,pos\nbad words,neg\n", "validation.csv": "text,label\nso,pos\n"}


def train(*overrides):
    return f"train {RECIPE} --run-dir {{tmp}}/new TINY " + " ".join(overrides)


def resume(*overrides):
    return f"train {RECIPE} --run-dir {{run}} --resume TINY " + " ".join(overrides)


def finetune(*flags, validation=True):
    """A fine-tuning command line; `validation=None`: no task files (the flags name the task)."""
    files = "task.train={tmp}/train.csv" + (" task.validation={tmp}/validation.csv" if validation else "")
    files = "" if validation is None else files
    return (
        f"finetune {RECIPE} --run-dir {{tmp}}/new "
        + " ".join(flags)
        + f" TINY objective.name=task task.max_len=32 {files}"
    )


def generate(*flags, ckpt="{run}"):
    return f"generate {ckpt} --prompt Hello " + " ".join(flags)


CASES = [
    # config: sizes, ranges, choices, rules between fields
    Case("a zero layer count", train("model.n_layer=0"), "model.n_layer must be at least 1 (got 0)"),
    Case("a negative width", train("model.d_model=-8"), "model.d_model must be at least 1 (got -8)"),
    Case("zero heads", train("model.n_head=0"), "model.n_head must be at least 1 (got 0)"),
    Case("zero key/value heads", train("model.n_kv_head=0"), "model.n_kv_head must be at least 1 (got 0)"),
    Case("heads that kv heads do not divide", train("model.n_kv_head=3"), "not divisible by model.n_kv_head=3"),
    Case("a width that heads do not divide", train("model.d_model=31"), "model.d_model=31 is not divisible by"),
    Case("zero positions", train("model.max_seq_len=0"), "model.max_seq_len must be at least 1"),
    Case("a zero feed-forward size", train("model.d_ff=0"), "model.d_ff must be at least 1 (got 0)"),
    Case("a zero sequence length", train("objective.seq_len=0"), "objective.seq_len must be at least 1 (got 0)"),
    Case("a sequence longer than the positions", train("objective.seq_len=1024"), "larger than the model's positions"),
    Case("a zero tokenizer vocabulary", train("data.vocab_size=0"), "data.vocab_size must be at least 1 (got 0)"),
    Case("an unknown tokenizer", train("data.tokenizer=sentencepiece"), "data.tokenizer='sentencepiece' is neither a "
         "tokenizer trained here (bpe, roberta, wordpiece, unigram), gpt2, nor a tokenizer.json file"),
    Case("dropout of 1", train("model.dropout=1.0"), "model.dropout must be in [0, 1) (got 1.0)"),
    Case("negative dropout", train("model.dropout=-0.1"), "model.dropout must be in [0, 1) (got -0.1)"),
    Case("an unknown device", train("train.device=tpu"), "train.device='tpu' is not one of auto, cpu, cuda, cuda:N"),
    Case("an unknown architecture", train("model.arch=gpt"), "model.arch='gpt' is not one of"),
    Case("an unknown activation", train("model.activation=swish"), "model.activation='swish' is not one of"),
    Case("an unknown precision", train("train.precision=fp8"), "train.precision='fp8' is not one of fp32, bf16, fp16"),
    Case("fp16 on a CPU", train("train.precision=fp16 train.device=cpu"),
         "train.precision=fp16 needs CUDA (float16 autocast with a gradient scaler); on cpu use train.precision=bf16"),
    Case("a decoder with T5's relative positions", train("model.positions=relative"),
         "model.arch=decoder takes model.positions=learned or rope, not relative"),
    Case("RoPE with an odd head size", train("model.positions=rope", "model.head_dim=7"),
         "rope needs an even head size"),
    Case("decoder layers for a decoder-only model", train("model.n_decoder_layer=2"),
         "model.n_decoder_layer is for model.arch=encoder_decoder"),
    Case("an objective of another kind of model", train("objective.name=mlm"),
         "model.arch=decoder trains with objective.name=causal_lm, not mlm"),
    Case("next-sentence pairs without an NSP head",
         train("model.arch=encoder", "objective.name=mlm", "data.tokenizer=wordpiece", "objective.nsp=true"),
         "objective.nsp=true needs a head to predict with: set model.nsp_head=true"),
    Case("sentence-order pairs and next-sentence pairs at once",
         train("model.arch=encoder", "objective.name=mlm", "model.nsp_head=true", "objective.nsp=true",
               "objective.sop=true"), "objective.nsp and objective.sop are two tasks for one head: choose one"),
    Case("a span-boundary objective without spans",
         train("model.arch=encoder", "objective.name=mlm", "model.sbo_head=true", "objective.sbo=true"),
         "objective.sbo=true predicts masked spans from their boundaries: it needs objective.spans=true"),
    Case("a teacher for a decoder", train("--from {tmp}/teacher"),
         "objective.teacher distils a masked-LM encoder: it needs objective.name=mlm, model.head=lm"),
    Case("an ELECTRA discriminator without a generator", train("model.arch=encoder", "objective.name=mlm",
         "model.head=rtd"), "model.head=rtd pretrains on a generator's replacements: set model.generator_fraction"),
    Case("an ELECTRA generator of width 0", train("model.arch=encoder", "objective.name=mlm", "model.head=rtd",
         "model.generator_fraction=0"), "model.generator_fraction must be positive (got 0.0)"),
    Case("an ALBERT embedding of width 0", train("model.arch=encoder", "objective.name=mlm", "model.embedding_dim=0"),
         "model.embedding_dim must be at least 1 (got 0)"),
    Case("denoising noise that leaves no token", train(*BART, "objective.mask_ratio=0.5", "objective.delete_ratio=0.5"),
         "objective.mask_ratio=0.5 and objective.delete_ratio=0.5 leave no token of the document to read"),
    Case("denoising with a tokenizer that has no <mask>", train(*BART[:-1], "data.tokenizer=unigram"),
         "objective denoising needs the tokens <s>, <mask>, which the tokenizer lacks; use "
         "data.tokenizer=roberta"),
    Case("a BART whose embeddings are scaled (mBART's)", "convert {tmp}/hf {tmp}/out",
         "scale_embedding=true in config.json: pretrainer's BART does not scale its embeddings", "bart_scaled"),
    Case("one expert", train("model.moe_experts=1"), "model.moe_experts=1: a mixture needs at least 2 experts"),
    Case("an expert capacity of 0", train("model.moe_experts=4", "model.moe_capacity_factor=0"),
         "model.moe_capacity_factor must be positive (got 0.0)"),
    Case("an attention window of 0", train("model.attention_pattern=alternating", "model.attention_window=0"),
         "model.attention_window must be at least 1 (got 0)"),
    Case("an attention window as long as the context",
         train("model.attention_pattern=alternating", "model.attention_window=4096"),
         "is not smaller than model.max_seq_len=64: every layer would be dense; use model.attention_pattern=dense"),
    Case("a banded pattern without a window", train("model.attention_pattern=alternating"),
         "model.attention_pattern=alternating needs model.attention_window"),
    Case("shared layers in a decoder", train("model.share_layers=true"),
         "model.share_layers is for model.arch=encoder, not decoder"),
    Case("an NSP head without a pooler",
         train("model.arch=encoder", "objective.name=mlm", "model.nsp_head=true", "model.pooler=false"),
         "model.nsp_head reads the pooled <cls>: set model.pooler=true, or drop the head"),
    Case("masked LM with a tokenizer that has no [MASK]", train("model.arch=encoder", "objective.name=mlm"),
         "objective mlm needs the tokens [CLS], [SEP], [MASK], [PAD], which the tokenizer lacks; use "
         "data.tokenizer=wordpiece (BERT's) or data.tokenizer=roberta"),
    Case("a masking rate of 0", train("model.arch=encoder", "objective.name=mlm", "objective.mask_prob=0"),
         "objective.mask_prob must be between 0 and 1 (got 0.0)"),
    Case("spans shorter than a token", train("objective.mean_span_length=0.5"),
         "objective.mean_span_length must be at least 1 token"),
    Case("a learning rate of 0", train("train.lr=0"), "train.lr must be positive (got 0.0)"),
    Case("a floor above the learning rate", train("train.min_lr=1"), "train.min_lr=1.0 must be between 0 and train.lr"),
    Case("negative warmup", train("train.warmup_steps=-1"), "train.warmup_steps must be 0 or more (got -1)"),
    Case("negative clipping", train("train.grad_clip=-1"), "train.grad_clip must be 0 or more"),
    Case("beta2 of 1", train("train.beta2=1.0"), "train.beta2 must be in [0, 1) (got 1.0)"),
    Case("a zero batch", train("train.batch_size=0"), "train.batch_size must be at least 1 (got 0)"),
    Case("zero accumulation steps", train("train.grad_accum=0"), "train.grad_accum must be at least 1 (got 0)"),
    Case("zero validation batches", train("eval.batches=0"), "eval.batches must be at least 1 (got 0)"),
    Case("a validation share of 1.5", train("data.val_fraction=1.5"), "data.val_fraction must be between 0 and 1"),
    Case("a model vocabulary below the tokenizer's", train("model.vocab_size=100"),
         "model.vocab_size=100 is smaller than the tokenizer's"),
    # config: how it is written
    Case("a misspelt key", train("model.d_modle=64"), "did you mean 'model.d_model'"),
    Case("a value of the wrong type", train("model.d_model=abc"), "bad value for 'model.d_model'"),
    Case("an override without =", train("model.n_layer"), "'model.n_layer' is not of the form section.key=value"),
    Case("a section given a value", train("model=5"), "'model' is a section, not a value"),
    Case("a recipe that does not exist", "train configs/nope.yaml", "config file 'configs/nope.yaml' not found"),
    Case("a recipe that is not YAML", "train {tmp}/bad.yaml", "is not valid YAML (line 3",
         files={"bad.yaml": "model:\n  n_layer: [2\n"}),
    Case("a recipe that is a list", "train {tmp}/list.yaml", "holds a list, not sections",
         files={"list.yaml": "- model\n- train\n"}),
    Case("an unknown key in a recipe", "train {tmp}/typo.yaml", "'train.max_step'; did you mean 'train.max_steps'",
         files={"typo.yaml": "train:\n  max_step: 10\n"}),
    Case("no recipe at all", "train", "the following arguments are required: config (see pretrainer train --help)"),
    Case("an unknown command", "pretrain x", "invalid choice: 'pretrain'"),
    Case("an unknown option", f"train {RECIPE} --resum", "unrecognized arguments: --resum"),
    # data
    Case("a corpus path that does not exist", train("data.source={tmp}/none.txt"), "no such file, folder or glob"),
    Case("a corpus folder without text files", train("data.source={tmp}/empty"), "is a folder with no .txt or .jsonl",
         files={"empty/notes.md": "not a corpus"}),
    Case("a corpus of blank files", train("data.source={tmp}/blank"), "has no text (every document is empty)",
         files={"blank/a.txt": "  \n\n"}),
    Case("a jsonl line that is not JSON", train("data.source={tmp}/bad.jsonl"), "bad.jsonl:2: not valid JSON",
         files={"bad.jsonl": '{"text": "fine"}\n{"text": \n'}),
    Case("a jsonl line without text", train("data.source={tmp}/notext.jsonl"), "notext.jsonl:1: no string field 'text'",
         files={"notext.jsonl": '{"body": "no text"}\n'}),
    Case("a corpus too small for one example", train("data.source={tmp}/tiny.txt"), "too few for examples",
         files={"tiny.txt": "Too short.\n"}),
    Case("a tokenizer file that does not exist", train("data.tokenizer={tmp}/tok.json"), "tokenizer file"),
    Case("a tokenizer file that is not one", train("data.tokenizer={tmp}/garbage.json"),
         "is not a valid tokenizer.json", files={"garbage.json": '{"not": "a tokenizer"}'}),
    Case("a BPE vocabulary below its 257 fixed tokens", train("data.vocab_size=100"),
         "data.vocab_size=100 is too small for a byte-level BPE tokenizer"),
    Case("a WordPiece vocabulary too small", train(*BERT, "data.vocab_size=20"),
         "data.vocab_size=20 is too small for a WordPiece tokenizer"),
    Case("a Unigram vocabulary too small", train(*T5, "data.vocab_size=30"),
         "data.vocab_size=30 is too small for a Unigram tokenizer"),
    Case("BERT examples too short for a masked token", train(*BERT, "objective.seq_len=2"),
         "objective.seq_len=2 is too short for [CLS] x [SEP]"),
    Case("T5 examples too short for a span", train(*T5, "objective.seq_len=2"),
         "objective.seq_len=2 is too short for span corruption; use at least 3"),
    Case("too few sentinels for the spans", train(*T5, "data.sentinels=1"),
         "makes 2 noise spans per example, which need 3 sentinels"),
    Case("noise too dense to leave gaps", train(*T5, "objective.noise_density=0.9"),
         "objective.noise_density=0.9 with objective.mean_span_length=3.0 leaves no room"),
    Case("BERT with a tokenizer that has no [MASK]",
         train("model.arch=encoder", "objective.name=mlm", "data.tokenizer=bpe"),
         r"needs the tokens [CLS], [SEP], [MASK], [PAD]"),
    # run folders and resuming
    Case("a run folder that is a file", f"train {RECIPE} --run-dir {{tmp}}/file TINY", "is a file",
         files={"file": "a file"}),
    Case("a run folder inside a file", f"train {RECIPE} --run-dir {{tmp}}/file/run TINY",
         "cannot be made: '{tmp}/file' is a file", files={"file": "a file"}),
    Case("a run folder that cannot be written", f"train {RECIPE} --run-dir {{tmp}}/locked/run TINY",
         "cannot write to '{tmp}/locked' (permission denied)", "locked"),
    Case("a new run in a folder with checkpoints", f"train {RECIPE} --run-dir {{run}} TINY",
         "already holds a run with checkpoints (newest: step-2)"),
    Case("--resume without a checkpoint", f"train {RECIPE} --run-dir {{tmp}}/new --resume TINY",
         "--resume: no checkpoint in"),
    Case("--resume with another model size", resume("model.d_model=64"),
         "model.d_model is 32 in the checkpoint but 64 now"),
    Case("--resume below the checkpoint's step", resume("train.max_steps=1"),
         "step-2 is past train.max_steps=1; set train.max_steps to 2 or more"),
    Case("--resume with a missing trainer state", resume(), "trainer_state.pt' is missing", "no_state"),
    Case("--resume with a garbled trainer state", resume(), "trainer_state.pt' cannot be read", "garbled_state"),
    # checkpoints given to generate
    Case("a checkpoint path that does not exist", generate(ckpt="{tmp}/nowhere"), "does not exist"),
    Case("a folder that is no checkpoint", generate(ckpt="{tmp}"), "is neither a checkpoint"),
    Case("a transformers folder given to eval", "eval {tmp}/hf", "convert it first: pretrainer convert", "hf_folder"),
    Case("an encoder checkpoint given to generate", generate(ckpt="{tmp}/bert"),
         "an encoder-only model (BERT) fills in masked tokens; it cannot continue a prompt", "encoder"),
    Case("weights with a flipped byte", generate(), "model.safetensors' is damaged", "flipped_weights"),
    Case("truncated weights (no checksums)", generate(), "cannot be read as safetensors", "truncated_weights"),
    Case("weights that are not finite", generate(), "holds weights that are not finite", "nan_weights"),
    Case("weights of another model", generate(), "does not fit its config.yaml", "other_weights"),
    Case("a missing weights file", generate(), "step-2/model.safetensors' is missing", "no_weights"),
    Case("a checkpoint folder without its weights", generate(ckpt="{run}/checkpoints/step-2"),
         "step-2/model.safetensors' is missing", "no_weights"),
    Case("a run with no checkpoint yet", generate(), "is a run with no checkpoint yet", "no_checkpoints"),
    Case("a missing config.yaml", generate(), "config.yaml' is missing", "no_config"),
    Case("a garbled config.yaml (no checksums)", generate(), "config.yaml' cannot be read as a config",
         "garbled_config"),
    Case("a checkpoint config that breaks a rule", generate(), "does not hold a valid config", "invalid_config"),
    Case("a garbled tokenizer.json (no checksums)", generate(), "tokenizer.json' cannot be read as a tokenizer",
         "garbled_tokenizer"),
    Case("a checkpoint without a tokenizer", generate(), "has no tokenizer.json", "no_tokenizer"),
    Case("comparing a run whose metrics are not JSON lines", "compare {tmp}/run --out {tmp}/c.png",
         "run/metrics.jsonl:2: not a JSON row",
         files={"run/metrics.jsonl": '{"step": 1, "val_loss": 5.0}\nnot json\n'}),
    Case("a comparison written over a folder", "compare {run} --out {tmp}", "should name the PNG file to write"),
    Case("comparing a folder that is no run", "compare {tmp} --out {tmp}/c.png",
         "has no metrics.jsonl: give the folders"),
    # conversion to and from transformers
    Case("a conversion source that does not exist", "convert {tmp}/nowhere {tmp}/out", "does not exist"),
    Case("a destination that exists", "convert {tmp}/hf {tmp}/run", "already exists", "gpt2_folder"),
    Case("a destination inside a file", "convert {tmp}/hf {tmp}/file/out", "is a file, not a folder", "gpt2_folder"),
    Case("a config.json that is not JSON", "convert {tmp}/hf {tmp}/out", "config.json' is not valid JSON",
         "hf_config_not_json"),
    Case("a config.json without a size", "convert {tmp}/hf {tmp}/out", "a gpt2 config.json needs 'n_embd'",
         "hf_config_no_width"),
    Case("an architecture pretrainer does not hold", "convert {tmp}/hf {tmp}/out",
         "unsupported architecture 'mamba'", "hf_config_mamba"),
    Case("a GPT-Neo attention type pretrainer lacks", "convert {tmp}/hf {tmp}/out",
         "attention type 'sparse' in config.json's attention_types", "gpt_neo_sparse_layers"),
    Case("pickled weights", "convert {tmp}/hf {tmp}/out", "pickled .bin weights are not loaded", "hf_pickled"),
    Case("a destination that cannot be written", "convert {tmp}/hf {tmp}/out", "cannot write '{tmp}/out': "
         "Permission denied", "read_only_destination"),
    Case("a .gguf that is not GGUF", "convert {tmp}/fake.gguf {tmp}/out", "fake.gguf' is not a GGUF file",
         "fake_gguf"),
    # fine-tuning and evaluating on a task
    Case("fine-tuning with a pretraining recipe", f"finetune {RECIPE} --run-dir {{tmp}}/new TINY",
         "finetune needs a task recipe"),
    Case("a T5 for a regression task", finetune("--from {tmp}/t5 task.kind=regression"),
         "a regression task is for model.arch=encoder or decoder, not encoder_decoder", "t5_checkpoint"),
    Case("a best-checkpoint metric the run does not log", finetune("finetune.metric=val_f1"),
         "finetune.metric=val_f1 is not one of this run's validation numbers: val_loss, val_accuracy",
         files=SENTIMENT),
    Case("a task without a validation split", finetune(validation=False), "the task has no validation split",
         files={"train.csv": "text,label\nfine words,pos\nbad words,neg\n"}),
    Case("a task file that does not exist", f"finetune {RECIPE} --run-dir {{tmp}}/new TINY objective.name=task "
         "task.max_len=32 task.train={tmp}/none.csv task.validation={tmp}/none.csv",
         "task.train file '{tmp}/none.csv' not found"),
    Case("a task file without the label column", finetune(), "no column 'label'; the file has 'text', 'sentiment'",
         files={"train.csv": "text,sentiment\nfine words,pos\n", "validation.csv": "text,sentiment\nmore,neg\n"}),
    Case("a validation label never seen in training", finetune(), "label 'meh' in the validation split is not in",
         files={"train.csv": "text,label\nfine words,pos\nbad words,neg\n", "validation.csv": "text,label\nso,meh\n"}),
    Case("a task mixture on a decoder", finetune('task.mixture=[{"name":"code-docstrings"}]', validation=None),
         "task.mixture is for an encoder-decoder (T5), not model.arch=decoder"),
    Case("a tagging task in a mixture",
         finetune(*T5, 'task.mixture=[{"kind":"tagging","train":"x.jsonl"}]', validation=None),
         "task.mixture[0] is a tagging task; a mixture takes text2text, classification and pair tasks"),
    Case("two mixture tasks of one name",
         finetune(*T5, 'task.mixture=[{"name":"code-docstrings"},{"name":"code-docstrings"}]', validation=None),
         "task.mixture has two tasks named code-docstrings; tell them apart with task.prefix"),
    Case("LoRA without a pretrained model", finetune("finetune.lora_rank=4"),
         "finetune.lora_rank adapts a pretrained model; give one with --from", files=SENTIMENT),
    Case("LoRA on layers the model does not have",
         finetune("--from {run} finetune.lora_rank=4 finetune.lora_targets=[query]"),
         "names no layer of this model; its linear layers are named", files=SENTIMENT),
    Case("a negative LoRA rank", finetune("finetune.lora_rank=-1"),
         "finetune.lora_rank must be 0 (no adapters) or more"),
    Case("LoRA on the LM head", finetune(*T5, "finetune.lora_rank=4", "finetune.lora_targets=[lm_head]"),
         "finetune.lora_targets names lm_head, which an adapter cannot change here"),
    Case("an unknown synthetic corpus", "train configs/icl-induction.yaml --run-dir {tmp}/new data.source=synthetic:x",
         "no synthetic corpus 'x'; built in: synthetic:induction, synthetic:induction-varied"),
    Case("a synthetic corpus at another length",
         "train configs/icl-induction.yaml --run-dir {tmp}/new objective.seq_len=32",
         "synthetic:induction-varied is for objective.name=causal_lm with objective.seq_len=63"),
    Case("evaluating a pretraining run", "eval {run}", "is a pretraining run (causal_lm); evaluate a fine-tuned one"),
    # prompting (in-context learning)
    Case("a prompt template with an unknown field", "prompt {run} {tmp}/task.yaml", "asks for qestion, which the "
         "examples lack; their fields are answer, question", files={**ODD, "task.yaml": TASK.replace("{question}",
                                                                                                    "{qestion}")}),
    Case("more demonstrations than the pool holds", "prompt {run} {tmp}/task.yaml --shots 5",
         "5 demonstrations asked for, but the pool has 2", files={**ODD, "task.yaml": TASK}),
    Case("a task with one choice", "prompt {run} {tmp}/task.yaml", "has one choice ('yes'); give two or more",
         files={**ODD, "task.yaml": TASK + "choices: ['yes']\n"}),
    Case("choices YAML reads as true and false", "prompt {run} {tmp}/task.yaml", "quote the choices, as in choices: "
         "['yes', 'no']", files={**ODD, "task.yaml": TASK + "choices: [yes, no]\n"}),
    Case("an unknown prompt task", "prompt {run} sums", "no prompt task 'sums': give a task YAML file or a built-in"),
    Case("chain of thought without rationales", "prompt {run} {tmp}/task.yaml --cot",
         "examples have no rationale field for its rationale template", files={**ODD, "task.yaml": TASK}),
    Case("self-consistency at temperature 0", "prompt {run} addition --self-consistency 5 --temperature 0",
         "give a --temperature above 0 (got 0.0)"),
    Case("shots that are not numbers", "prompt {run} addition --shots 0,four", "--shots takes whole numbers"),
    Case("the same k twice in --shots", "prompt {run} addition --shots 0,4,4", "--shots names a k more than once"),
    Case("a limit of no queries", "prompt {run} addition --limit 0", "--limit must be at least 1 (got 0)"),
    Case("answers of no tokens", "prompt {run} addition --max-new-tokens 0", "--max-new-tokens must be at least 1"),
    Case("an encoder checkpoint given to prompt", "prompt {tmp}/bert addition",
         "an encoder-only model (BERT) fills in masked tokens; it cannot continue a prompt", "encoder"),
    Case("a prompt longer than the context with no demonstrations", "prompt {run} {tmp}/task.yaml",
         "tokens without any demonstration, more than the", files={**LONG, "task.yaml": TASK}),
    # generation settings
    Case("top-p of 0", generate("--top-p 0"), "top_p must be in (0, 1] (got 0.0)"),
    Case("top-p above 1", generate("--top-p 1.5"), "top_p must be in (0, 1] (got 1.5)"),
    Case("top-k of 0", generate("--top-k 0"), "top_k must be at least 1 (got 0)"),
    Case("a negative temperature", generate("--temperature -1"), "temperature must be 0 (greedy) or a positive"),
    Case("a NaN temperature", generate("--temperature nan"), "temperature must be 0 (greedy) or a positive"),
    Case("a negative token count", generate("--max-new-tokens -5"), "max_new_tokens must be 0 or more (got -5)"),
    Case("zero samples", generate("--num-samples 0"), "--num-samples must be at least 1 (got 0)"),
    Case("an empty stop string", generate("--stop="), "a stop string is empty"),
    Case("an empty prompt", "generate {run} --prompt=", "the prompt is empty"),
    Case("a number that is not one", generate("--top-k abc"), "argument --top-k: invalid int value: 'abc'"),
    Case("an unknown device", generate("--device tpu"), "device 'tpu' is not one of auto, cpu, cuda, cuda:N"),
    Case("CUDA where there is none", generate("--device cuda"), "--device=cuda but CUDA is not available; use "
         "--device=cpu or auto", setup="no_cuda"),
    # scaling: counts, sweeps, fits, predictions
    Case("a sweep on CUDA devices where there are none", f"scaling sweep {RECIPE} --out {{tmp}}/out --devices "
         "cuda:0,cuda:1", "--devices=cuda:0 but CUDA is not available", setup="no_cuda"),
    Case("a sweep recipe without shapes", f"scaling sweep {RECIPE} --out {{tmp}}/out sweep.tokens=[1e6]",
         "a sweep needs sweep.depths (with sweep.aspect_ratio) or sweep.shapes, one of the two"),
    Case("a sweep shape that is not LAYERSxD_MODEL", f"scaling sweep {RECIPE} --out {{tmp}}/out sweep.shapes=[2-64] "
         "sweep.tokens=[1e6]", "sweep.shapes entry '2-64' is not LAYERSxD_MODEL, e.g. 2x64"),
    Case("a sweep without token or compute budgets", f"scaling sweep {RECIPE} --out {{tmp}}/out sweep.depths=[1,2]",
         "a sweep needs sweep.tokens (a grid of token budgets), sweep.compute (IsoFLOP budgets) or both"),
    Case("fewer points than the law has parameters", "scaling fit {tmp}/few.csv --law chinchilla",
         "chinchilla fits five parameters (E, A, B, alpha, beta) and needs at least 6 points; these are 3",
         files={"few.csv": "N_nonemb,D,val_loss\n1e6,1e8,3.1\n2e6,1e8,3.0\n4e6,1e8,2.9\n"}),
    Case("a loss that is not positive", "scaling fit {tmp}/zero.csv --law kaplan",
         "zero.csv line 3: column val_loss is 0.0; loss must be finite and positive",
         files={"zero.csv": "N_nonemb,D,val_loss\n1e6,1e8,3.1\n2e6,1e8,0\n4e6,1e8,2.9\n"}),
    Case("a size that is not a number", "scaling fit {tmp}/nan.csv --law kaplan",
         "nan.csv line 2: column N_nonemb is nan; N must be finite and positive",
         files={"nan.csv": "N_nonemb,D,val_loss\nnan,1e8,3.1\n2e6,1e8,3.0\n4e6,1e8,2.9\n"}),
    Case("one compute budget for approach 2", "scaling fit {tmp}/one.csv --law isoflop --column C=C",
         "isoflop needs at least two compute budgets whose sizes bracket their optimum; these points have 1;",
         files={"one.csv": "N_nonemb,C,val_loss\n1e6,1e18,3.1\n2e6,1e18,3.0\n4e6,1e18,3.05\n"}),
    Case("a missing column", "scaling fit {tmp}/theirs.csv --law kaplan",
         "has no column 'val_loss' for loss (it has params, tokens, loss); name it with --column loss=NAME",
         files={"theirs.csv": "params,tokens,loss\n1e6,1e8,3.1\n2e6,1e8,3.0\n"}),
    Case("a CSV that is not a CSV (binary)", "scaling fit {tmp}/results.csv --law kaplan",
         "results.csv is not a CSV file (not text)", setup="binary_csv"),
    Case("a CSV that is not a CSV (ragged rows)", "scaling fit {tmp}/ragged.csv --law kaplan",
         "ragged.csv is not a CSV of points: line 3 has 1 fields, the header 3",
         files={"ragged.csv": "N_nonemb,D,val_loss\n1e6,1e8,3.1\njust some prose\n"}),
    Case("an unknown --column key", "scaling fit {tmp}/theirs.csv --law kaplan --column tokens=D",
         "--column tokens=... is not one of N, D, C, loss", files={"theirs.csv": "N,D,loss\n1,2,3\n"}),
    Case("an unknown law", "scaling fit {tmp}/theirs.csv --law hoffmann --column N=N --column loss=loss",
         "--law hoffmann is not one of kaplan, chinchilla, isoflop, envelope",
         files={"theirs.csv": "N,D,loss\n1,2,3\n"}),
    Case("a fit file that is not JSON", "scaling predict {tmp}/fit.json --compute 1e21",
         "fit.json is not a FIT.json of pretrainer scaling fit (not JSON)", files={"fit.json": "law: chinchilla"}),
    Case("a fit file without the law's parameters", "scaling predict {tmp}/fit.json --compute 1e21",
         "the chinchilla fit lacks B, beta: is it a FIT.json of pretrainer scaling fit?",
         files={"fit.json": '{"law": "chinchilla", "E": 1.7, "A": 400, "alpha": 0.3}'}),
    Case("a compute budget that is not positive", "scaling predict {tmp}/fit.json --compute -1",
         "--compute -1.0 must be a positive number of FLOPs, e.g. 1e21",
         files={"fit.json": '{"law": "chinchilla", "E": 1.7, "A": 400, "B": 400, "alpha": 0.3, "beta": 0.3}'}),
]  # fmt: skip


# setups: each makes files under tmp, or damages the copy of the trained run at `run`


def no_cuda(tmp, run, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def binary_csv(tmp, run, monkeypatch):
    (tmp / "results.csv").write_bytes(bytes(range(256)) * 4)


def locked(tmp, run, monkeypatch):  # as root every folder is writable: make one look locked
    (tmp / "locked").mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != tmp / "locked" and real_access(path, mode))


def gpt2_folder(tmp, run, monkeypatch):
    config = ModelConfig(vocab_size=64, n_layer=1, n_head=2, d_model=32, max_seq_len=32)
    export_hf(build_model(config), None, tmp / "hf")
    (tmp / "file").write_text("a file")


def bart_scaled(tmp, run, monkeypatch):
    config = ModelConfig(arch="encoder_decoder", positions="learned", position_offset=2, norm_position="post",
                         vocab_size=64, n_layer=1, n_head=2, d_model=32, max_seq_len=32)  # fmt: skip
    export_hf(build_model(config), None, tmp / "hf")
    hf = json.loads((tmp / "hf" / "config.json").read_text())
    (tmp / "hf" / "config.json").write_text(json.dumps(hf | {"scale_embedding": True}))


def gpt_neo_sparse_layers(tmp, run, monkeypatch):
    config = ModelConfig(vocab_size=64, n_layer=2, n_head=2, d_model=32, max_seq_len=32, attention_bias=False,
                         scale_attention=False, attention_pattern="alternating", attention_window=8)  # fmt: skip
    export_hf(build_model(config), None, tmp / "hf")
    hf = json.loads((tmp / "hf" / "config.json").read_text())
    (tmp / "hf" / "config.json").write_text(json.dumps(hf | {"attention_types": [[["global", "sparse"], 1]]}))


def hf_config_not_json(tmp, run, monkeypatch):
    gpt2_folder(tmp, run, monkeypatch)
    (tmp / "hf" / "config.json").write_text('{"model_type": "gpt2", ')


def hf_config_no_width(tmp, run, monkeypatch):
    gpt2_folder(tmp, run, monkeypatch)
    config = json.loads((tmp / "hf" / "config.json").read_text())
    (tmp / "hf" / "config.json").write_text(json.dumps({k: v for k, v in config.items() if k != "n_embd"}))


def hf_config_mamba(tmp, run, monkeypatch):
    (tmp / "hf").mkdir()
    (tmp / "hf" / "config.json").write_text(json.dumps({"model_type": "mamba"}))


def hf_pickled(tmp, run, monkeypatch):
    gpt2_folder(tmp, run, monkeypatch)
    (tmp / "hf" / "model.safetensors").rename(tmp / "hf" / "pytorch_model.bin")


def fake_gguf(tmp, run, monkeypatch):
    (tmp / "fake.gguf").write_bytes(bytes(range(256)) * 4)


def read_only_destination(tmp, run, monkeypatch):  # as root every folder is writable: refuse as the OS would
    gpt2_folder(tmp, run, monkeypatch)

    def refuse(dir, prefix):
        raise PermissionError(errno.EACCES, "Permission denied", dir)

    monkeypatch.setattr(files.tempfile, "mkdtemp", refuse)


def no_checkpoints(tmp, run, monkeypatch):
    shutil.rmtree(run / "checkpoints")


def no_weights(tmp, run, monkeypatch):
    (step_2(run) / "model.safetensors").unlink()


def step_2(run):
    return run / "checkpoints" / "step-2"


def no_state(tmp, run, monkeypatch):
    (step_2(run) / "trainer_state.pt").unlink()


def garbled_state(tmp, run, monkeypatch):
    (step_2(run) / "trainer_state.pt").write_bytes(b"garbage" * 10)
    checkpoint.seal(step_2(run))


def hf_folder(tmp, run, monkeypatch):
    (tmp / "hf").mkdir()
    (tmp / "hf" / "config.json").write_text(json.dumps({"model_type": "gpt2"}))


def t5_checkpoint(tmp, run, monkeypatch):
    (tmp / "train.csv").write_text("text,label\nfine words,0.9\nbad words,0.1\n")
    (tmp / "validation.csv").write_text("text,label\nfair words,0.7\n")
    config = pretrainer.load_config(None, ["model.arch=encoder_decoder", "model.positions=relative",
                                           "objective.name=span_corruption", "model.vocab_size=64", "model.n_layer=1",
                                           "model.d_model=32", "model.n_head=2"])  # fmt: skip
    (tmp / "t5").mkdir()
    checkpoint.write_model(tmp / "t5", build_model(config.model), config, None)


def encoder(tmp, run, monkeypatch):
    config = pretrainer.load_config(None, ["model.arch=encoder", "objective.name=mlm", "model.vocab_size=64",
                                           "model.n_layer=1", "model.d_model=32", "model.n_head=2"])  # fmt: skip
    (tmp / "bert").mkdir()
    checkpoint.write_model(tmp / "bert", build_model(config.model), config, None)


def flipped_weights(tmp, run, monkeypatch):
    weights = step_2(run) / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))


def truncated_weights(tmp, run, monkeypatch):
    weights = step_2(run) / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    (step_2(run) / checkpoint.CHECKSUMS).unlink()


def nan_weights(tmp, run, monkeypatch):
    tensors = load_file(step_2(run) / "model.safetensors")
    tensors["norm_f.weight"][0] = float("inf")
    save_file(tensors, step_2(run) / "model.safetensors")
    checkpoint.seal(step_2(run))


def other_weights(tmp, run, monkeypatch):
    save_file({"something.else": torch.zeros(3)}, step_2(run) / "model.safetensors")
    checkpoint.seal(step_2(run))


def no_config(tmp, run, monkeypatch):
    (step_2(run) / "config.yaml").unlink()


def garbled_config(tmp, run, monkeypatch):
    (step_2(run) / "config.yaml").write_text("model: [unclosed\n")
    (step_2(run) / checkpoint.CHECKSUMS).unlink()


def invalid_config(tmp, run, monkeypatch):
    path = step_2(run) / "config.yaml"
    path.write_text(path.read_text().replace("  n_head: 2\n", "  n_head: 3\n"))
    checkpoint.seal(step_2(run))


def garbled_tokenizer(tmp, run, monkeypatch):
    (step_2(run) / "tokenizer.json").write_text("{ not json")
    (step_2(run) / checkpoint.CHECKSUMS).unlink()


def no_tokenizer(tmp, run, monkeypatch):
    (step_2(run) / "tokenizer.json").unlink()
    checkpoint.seal(step_2(run))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished two-step run of the tiny GPT, and the overrides that made it."""
    tmp = tmp_path_factory.mktemp("trained")
    overrides = tiny_overrides(make_corpus(tmp / "corpus"), tmp / "data", **{"train.max_steps": 2})
    pretrainer.train(pretrainer.load_config(RECIPE, overrides), tmp / "run")
    return tmp / "run", overrides


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.what)
def test_bad_input_gets_one_line(case, trained, tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(trained[0], run)
    for name, text in case.files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    if case.setup:
        globals()[case.setup](tmp_path, run, monkeypatch)
    before = files_of(run)
    filled = {"{tmp}": str(tmp_path), "{run}": str(run)}
    argv = []
    for word in case.argv.split():
        if word == "TINY":
            argv += trained[1]
            continue
        for key, value in filled.items():
            word = word.replace(key, value)
        argv.append(word)
    assert cli.main(argv) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("warning: ")]
    expected = case.says.replace("{tmp}", str(tmp_path))
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], lines
    assert files_of(run) == before and not (tmp_path / "out").exists()  # nothing written, nothing lost


def test_the_version_is_one_line_and_exit_status_0(capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out == f"pretrainer {pretrainer.__version__}\n"


def markdown_table() -> str:
    rows = ["| bad input | the one line says (exit status 2) |", "|---|---|"]
    for case in CASES:
        says = case.says.replace("|", "\\|")
        rows.append(f"| {case.what} | `{says}` |")
    return "\n".join(rows) + "\n"


def test_readme_lists_every_case():
    assert markdown_table() in README.read_text(), "run `python -m tests.test_errors` and paste its table in README"


if __name__ == "__main__":
    print(markdown_table(), end="")
