"""Configuration: dataclasses are the schema, YAML files are recipes, `section.key=value` overrides.

Everything a run needs is in one `Config`; families (GPT-2, Llama, ...) are config data, not classes.
Unknown keys are errors that name the nearest valid key. Sizes left unset (None) are derived once, when a config
is loaded or a model is built (`ModelConfig.resolved`), and the rules between fields are checked there too.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import warnings
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from .errors import ConfigError


@dataclass
class ModelConfig:
    arch: str = "decoder"  # decoder (GPT/Llama) | encoder (BERT) | encoder_decoder (T5)
    vocab_size: int | None = None  # None: the tokenizer's size, rounded up to a multiple of 64
    n_layer: int = 4  # the encoder's layers for encoder_decoder
    n_decoder_layer: int | None = None  # encoder_decoder only; None: n_layer
    n_head: int = 4
    n_kv_head: int | None = None  # None: n_head (multi-head); fewer: grouped-query attention
    head_dim: int | None = None  # None: d_model / n_head
    d_model: int = 128
    d_ff: int | None = None  # None: 4 * d_model
    max_seq_len: int = 256
    positions: str = "learned"  # learned | rope | relative (T5's bucketed bias, shared by all layers)
    rope_theta: float = 10000.0
    rope_scaling: str | None = None  # None | llama3: Llama 3.1's long-context RoPE frequencies, set by the four below
    rope_scaling_factor: float = 8.0  # wavelengths longer than original / low_freq_factor are this many times longer
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0  # wavelengths shorter than original / high_freq_factor are kept
    rope_original_max_seq_len: int = 8192  # the context the model was pretrained with before scaling
    relative_buckets: int = 32
    relative_max_distance: int = 128
    norm: str = "layernorm"  # layernorm | rmsnorm
    norm_eps: float = 1e-5
    norm_position: str = "pre"  # pre (GPT-2, T5, Llama) | post (original BERT)
    activation: str = "gelu_tanh"  # gelu | gelu_tanh | relu | silu
    gated_mlp: bool = False  # True with silu: SwiGLU (Llama); with gelu_tanh: GeGLU (T5 v1.1)
    bias: bool = True
    attention_bias: bool | None = None  # the query, key and value projections' biases; None: as `bias` (GPT-Neo: off)
    attention_only: bool = False  # blocks without their MLP (the attention-only models of induction-head studies)
    scale_attention: bool = True  # False: no 1/sqrt(head_dim) in attention (T5 folds it into its init; GPT-Neo)
    attention_pattern: str = "dense"  # dense | alternating: decoder blocks 1, 3, 5, ... see only the last
    attention_window: int | None = None  # ... this many keys (GPT-3's locally banded layers; GPT-Neo uses 256)
    moe_experts: int = 0  # > 1: Switch Transformer: the MLP of every moe_every-th block is this many experts, top-1
    moe_every: int = 2  # blocks 1, 1 + k, 1 + 2k, ... of each stack are sparse (every block when k = 1)
    moe_capacity_factor: float = 1.25  # an expert takes at most ceil(factor × sequence length / experts) per sequence
    moe_aux_loss: float = 0.01  # α of the load-balancing loss α·E·Σ f_i·P_i, per sparse block (training only)
    moe_z_loss: float = 0.0  # the router z-loss's weight (mean of logsumexp(router logits)²); 0.001 in ST-MoE
    tie_embeddings: bool = True
    head_scale: bool = False  # encoder_decoder: decoder output times d_model^-0.5 before the head (T5 v1.0)
    type_vocab_size: int = 0  # encoder: segment (token type) embeddings; BERT uses 2
    position_offset: int = 0  # learned positions: the first position's row in the table (RoBERTa, BART: 2)
    embedding_dim: int | None = None  # encoder: ALBERT's factorised embedding: tables of this width, projected
    share_layers: bool = False  # encoder: ALBERT's one set of block weights, applied n_layer times
    pooler: bool = True  # encoder: BERT's tanh dense layer on <cls> (DistilBERT has none)
    nsp_head: bool = False  # encoder: next-sentence (or sentence-order) prediction head on the pooled <cls>
    sbo_head: bool = False  # encoder: SpanBERT's span-boundary head (an MLP over a span's two boundaries)
    generator_fraction: float | None = None  # head=rtd: ELECTRA's MLM generator, this fraction of the width (1/4)
    rtd_weight: float = 50.0  # head=rtd with a generator: loss = generator MLM + rtd_weight × replaced-token BCE
    decoder_start_id: int = 0  # encoder_decoder: first decoder input (T5 uses <pad> = 0)
    head: str = "lm"  # lm (pretraining) | rtd (ELECTRA's discriminator) | sequence | token | span (model/heads.py)
    n_labels: int = 0  # sequence and token heads: the number of classes (1: a regression); 0: the task's
    dropout: float = 0.0
    init_std: float = 0.02

    def resolved(self) -> ModelConfig:
        """A copy with every derived size spelled out (head_dim, n_kv_head, d_ff, n_decoder_layer) and the rules
        between fields checked. Models and converters read only resolved configs, so each rule lives here once.
        The derived sizes are fixed from then on: to change d_model of a resolved config, reset them to None."""
        for key, allowed in _MODEL_CHOICES.items():
            if getattr(self, key) not in allowed:
                raise ConfigError(f"model.{key}={getattr(self, key)!r} is not one of {', '.join(allowed)}")
        for key in ("n_layer", "n_head", "d_model", "max_seq_len", "relative_buckets", "relative_max_distance"):
            _check_positive(f"model.{key}", getattr(self, key))
        for key in ("vocab_size", "n_decoder_layer", "n_kv_head", "head_dim", "d_ff"):
            if getattr(self, key) is not None:
                _check_positive(f"model.{key}", getattr(self, key))
        for key in ("rope_theta", "norm_eps", "init_std"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"model.{key} must be positive (got {getattr(self, key)})")
        if self.rope_scaling not in (None, "llama3"):
            raise ConfigError(f"model.rope_scaling={self.rope_scaling!r} is not one of null, llama3")
        if self.rope_scaling is not None:
            if self.positions != "rope":
                raise ConfigError(f"model.rope_scaling is for model.positions=rope, not {self.positions}")
            for key in ("rope_scaling_factor", "rope_low_freq_factor", "rope_high_freq_factor"):
                if not getattr(self, key) > 0:
                    raise ConfigError(f"model.{key} must be positive (got {getattr(self, key)})")
            if not self.rope_high_freq_factor > self.rope_low_freq_factor:
                raise ConfigError(
                    f"model.rope_high_freq_factor={self.rope_high_freq_factor} must be larger than "
                    f"model.rope_low_freq_factor={self.rope_low_freq_factor} (Llama 3.1 uses 4 and 1)"
                )
            _check_positive("model.rope_original_max_seq_len", self.rope_original_max_seq_len)
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1) (got {self.dropout}); 0.1 is usual, 0 turns it off")
        if self.type_vocab_size < 0:
            raise ConfigError(f"model.type_vocab_size must be 0 (no segments) or more (got {self.type_vocab_size})")
        if self.position_offset < 0:
            raise ConfigError(f"model.position_offset must be 0 or more (got {self.position_offset})")
        if self.embedding_dim is not None:
            _check_positive("model.embedding_dim", self.embedding_dim)
        encoder_only = {"embedding_dim": None, "share_layers": False, "pooler": True, "sbo_head": False}
        for key, default in encoder_only.items():
            if self.arch != "encoder" and getattr(self, key) != default:
                raise ConfigError(f"model.{key} is for model.arch=encoder, not {self.arch}")
        if self.position_offset and (self.arch == "decoder" or self.positions != "learned"):
            raise ConfigError(
                "model.position_offset is for learned positions in an encoder or encoder-decoder (RoBERTa's, BART's)"
            )
        if self.generator_fraction is not None:
            if self.head != "rtd":
                raise ConfigError(
                    f"model.generator_fraction is ELECTRA's generator, for model.head=rtd, not {self.head}"
                )
            if not self.generator_fraction > 0:
                raise ConfigError(
                    f"model.generator_fraction must be positive (got {self.generator_fraction}); ELECTRA uses 0.25"
                )
        self._check_sparsity()
        if self.nsp_head and not self.pooler:
            raise ConfigError("model.nsp_head reads the pooled <cls>: set model.pooler=true, or drop the head")
        positions = {
            "decoder": ("learned", "rope"),
            "encoder": ("learned",),
            "encoder_decoder": ("relative", "learned"),
        }
        if self.positions not in positions[self.arch]:
            raise ConfigError(
                f"model.arch={self.arch} takes model.positions={' or '.join(positions[self.arch])}, not "
                f"{self.positions} (it would train without that position signal)"
            )
        heads = {"decoder": ("lm", "sequence"), "encoder": _MODEL_CHOICES["head"], "encoder_decoder": ("lm",)}
        if self.head not in heads[self.arch]:
            raise ConfigError(
                f"model.arch={self.arch} takes model.head={' or '.join(heads[self.arch])}, not {self.head}"
                + (" (a T5 answers every task as text, with its LM head)" if self.arch == "encoder_decoder" else "")
            )
        if self.head in ("lm", "span") and self.n_labels:
            raise ConfigError(f"model.n_labels is for model.head=sequence or token, not {self.head}")
        if self.n_decoder_layer is not None and self.arch != "encoder_decoder":
            raise ConfigError(f"model.n_decoder_layer is for model.arch=encoder_decoder; a {self.arch} has n_layer")
        if self.head_dim is None and self.d_model % self.n_head:
            raise ConfigError(
                f"model.d_model={self.d_model} is not divisible by model.n_head={self.n_head}; change one, or set "
                "model.head_dim"
            )
        c = dataclasses.replace(
            self,
            head_dim=self.head_dim or self.d_model // self.n_head,
            n_kv_head=self.n_kv_head or self.n_head,
            d_ff=self.d_ff or 4 * self.d_model,
            n_decoder_layer=(self.n_decoder_layer or self.n_layer) if self.arch == "encoder_decoder" else None,
            attention_bias=self.bias if self.attention_bias is None else self.attention_bias,
        )
        if c.n_head % c.n_kv_head:
            raise ConfigError(f"model.n_head={c.n_head} is not divisible by model.n_kv_head={c.n_kv_head}")
        if c.positions == "rope" and c.head_dim % 2:
            raise ConfigError(f"rope needs an even head size; model.head_dim is {c.head_dim}")
        return c

    def _check_sparsity(self) -> None:
        """The rules of the two sparse ideas: banded attention layers and mixture-of-experts MLPs."""
        if self.attention_pattern == "alternating":
            if self.arch != "decoder":
                raise ConfigError(f"model.attention_pattern=alternating is for model.arch=decoder, not {self.arch}")
            if self.attention_window is None:
                raise ConfigError("model.attention_pattern=alternating needs model.attention_window (GPT-Neo: 256)")
        elif self.attention_window is not None:
            raise ConfigError("model.attention_window is for model.attention_pattern=alternating; set both or neither")
        if self.attention_window is not None:
            _check_positive("model.attention_window", self.attention_window)
            if self.attention_window >= self.max_seq_len:
                raise ConfigError(
                    f"model.attention_window={self.attention_window} is not smaller than model.max_seq_len="
                    f"{self.max_seq_len}: every layer would be dense; use model.attention_pattern=dense or a smaller "
                    "window"
                )
        if self.moe_experts:
            if self.moe_experts < 2:
                raise ConfigError(
                    f"model.moe_experts={self.moe_experts}: a mixture needs at least 2 experts (0: a dense MLP)"
                )
            if self.attention_only:
                raise ConfigError("model.moe_experts replaces MLPs, and model.attention_only has none")
            _check_positive("model.moe_every", self.moe_every)
            if not self.moe_capacity_factor > 0:
                raise ConfigError(
                    f"model.moe_capacity_factor must be positive (got {self.moe_capacity_factor}); Switch uses 1.0-1.25"
                )
            if self.moe_aux_loss < 0 or self.moe_z_loss < 0:
                raise ConfigError("model.moe_aux_loss and model.moe_z_loss must be 0 or more")

    def attention_window_of(self, layer: int) -> int | None:
        """The keys a query of block `layer` sees: the last attention_window of them, or all (None)."""
        return self.attention_window if self.attention_pattern == "alternating" and layer % 2 == 1 else None

    def is_sparse(self, layer: int) -> bool:
        """Whether block `layer` of its stack has experts for an MLP (Switch Transformers' rule in transformers)."""
        return self.moe_experts > 1 and layer % self.moe_every == 1 % self.moe_every


def _check_positive(key: str, value: int) -> None:
    if value < 1:
        raise ConfigError(f"{key} must be at least 1 (got {value})")


@dataclass
class DataConfig:
    source: str = "shakespeare"  # a built-in name, or a .txt/.jsonl file, folder or glob
    tokenizer: str = "bpe"  # bpe | roberta | wordpiece | unigram (trained here) | gpt2 | path/to/tokenizer.json
    vocab_size: int = 4096  # size of a tokenizer trained here
    sentinels: int = 100  # unigram: <extra_id_0> ... sentinels for span corruption
    val_fraction: float = 0.1  # share of documents (plays, files, lines of jsonl) held out
    data_dir: str | None = None  # None: $PRETRAINER_CACHE/data
    name: str | None = None  # shard folder name; None: derived from source and tokenizer


@dataclass
class ObjectiveConfig:
    name: str = "causal_lm"  # causal_lm (decoder) | mlm (encoder) | span_corruption or denoising (encoder_decoder)
    seq_len: int = 128  # tokens per example; the encoder's input length for span_corruption
    mask_prob: float = 0.15  # mlm: share of tokens chosen (80% [MASK], 10% random, 10% kept)
    whole_word: bool = False  # mlm: choose whole words
    nsp: bool = False  # mlm: also next-sentence prediction on sentence pairs
    sop: bool = False  # mlm: also sentence-order prediction (ALBERT): consecutive segments, swapped half the time
    spans: bool = False  # mlm: SpanBERT's masking: spans of whole words (Geometric(0.2) lengths, at most 10)
    sbo: bool = False  # mlm with spans: also SpanBERT's span-boundary objective (needs model.sbo_head)
    teacher: str | None = None  # mlm: distil from this run or checkpoint (DistilBERT); `train --from`
    distill_temperature: float = 2.0  # with a teacher: the softmax temperature of the soft targets
    distill_ce: float = 5.0  # with a teacher: the weights of the soft cross-entropy (× T²), ...
    distill_mlm: float = 2.0  # ... of the student's own MLM loss ...
    distill_cos: float = 1.0  # ... and of 1 − cosine of the last hidden states (DistilBERT's 5, 2, 1)
    noise_density: float = 0.15  # span_corruption: share of tokens masked
    mean_span_length: float = 3.0  # span_corruption
    # denoising (BART): the document rebuilt from a noised copy, noised in this order:
    permute_sentences: float = 1.0  # share of its sentences shuffled among themselves (1: all)
    delete_ratio: float = 0.0  # share of tokens deleted
    mask_ratio: float = 0.3  # share of tokens masked: in spans, each one <mask> (text infilling), or one by one
    poisson_lambda: float = 3.0  # span lengths ~ Poisson(λ), zeros included (an inserted <mask>); 0: token masking
    rotate: float = 0.0  # probability that the document is rotated to start at a random token


@dataclass
class TrainConfig:
    batch_size: int = 16
    grad_accum: int = 1
    max_steps: int = 1000
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # 0 disables clipping
    precision: str = "fp32"  # fp32 | bf16 (autocast) | fp16 (autocast with a gradient scaler; CUDA only)
    tf32: bool = True  # CUDA: fp32 matmuls on TF32 tensor cores (and MFU against the TF32 peak)
    activation_checkpointing: bool = False  # recompute each block's activations in backward: less memory
    parallel: str = "none"  # none | ddp | fsdp (FSDP2): under torchrun, over the processes (train/distributed.py)
    dist_timeout: int = 300  # seconds a process waits on the others before giving up
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    seed: int = 1337
    log_every: int = 10
    eval_every: int = 200
    save_every: int = 500
    keep_last: int = 2  # checkpoints kept on disk
    compile: bool = False
    progress: bool = True


@dataclass
class EvalConfig:
    batches: int = 20  # validation batches per evaluation


@dataclass
class TaskConfig:
    """A fine-tuning task (objective.name=task): a built-in one by name, or CSV/JSONL files with a column map."""

    name: str | None = None  # built-in: tweets-sentiment | code-docstrings; None: the files below
    kind: str = "classification"  # classification | pair | regression | tagging | qa | text2text
    train: str | None = None  # a .csv or .jsonl file per split
    validation: str | None = None
    test: str | None = None
    columns: dict[str, str] = field(default_factory=dict)  # our field (text, text_b, label, ...) -> the file's
    prefix: str = ""  # text2text: put before every input ("summarize: "); a built-in task brings its own
    max_len: int = 128  # tokens of input; longer inputs are truncated, counted and reported
    max_target_len: int = 64  # text2text: tokens of target
    labels: list[str] = field(default_factory=list)  # class (or tag) names in head order; empty: from training data
    # A mixture (encoder-decoder only): text-to-text tasks trained together, each a built-in name or files with
    # its kind (text2text, or classification/pair answered as label names), columns and prefix; max_len and
    # max_target_len above apply to all. Each example is drawn from task i at rate_i, so a minibatch mixes tasks.
    mixture: list[TaskConfig] = field(default_factory=list)
    mixing: str = "proportional"  # rate_i proportional to n_i (training examples), to n_i^(1/T), or to weight_i
    mixing_temperature: float = 2.0  # T of mixing=temperature
    weight: float = 1.0  # a mixture member's weight under mixing=fixed


@dataclass
class FinetuneConfig:
    source: str | None = None  # the pretrained model (`--from`): a run or checkpoint folder, a transformers folder,
    # a .gguf file, or a built-in (minilm, smollm2); None: from scratch, with the tokenizer of the data section
    freeze_body: bool = False  # train the task head only
    body_lr: float | None = None  # None: train.lr everywhere; else the body's (the head keeps train.lr)
    metric: str = "val_loss"  # the validation number that picks checkpoints/best: val_loss, or val_accuracy, ...
    patience: int = 0  # > 0: stop after this many evaluations without a better metric
    eval_examples: int = 0  # > 0: evaluate on this many validation examples, spread over the split; 0: on all
    lora_rank: int = 0  # > 0: train LoRA adapters of this rank (peft) and the head, the body frozen; merged on save
    lora_alpha: float = 16.0  # the adapters' update is scaled by lora_alpha / lora_rank
    lora_dropout: float = 0.0
    lora_targets: list[str] = field(default_factory=lambda: ["qkv", "q", "kv", "attn.proj", "cross_attn.proj"])
    # ^ the linear layers adapted, by name or dotted tail: all attention projections; add mlp.fc, mlp.proj for all


@dataclass
class SweepConfig:
    """A scaling sweep (`pretrainer scaling sweep`): model shapes, each trained on every token budget (`tokens`)
    and on each compute budget's share, D = C / 6N (`compute`, IsoFLOP). Shapes are `depths` at d_model =
    aspect_ratio x n_layer, or explicit "LAYERSxD_MODEL" strings; n_head = d_model / head_dim, d_ff = 4 d_model."""

    depths: list[int] = field(default_factory=list)
    aspect_ratio: int = 32  # d_model / n_layer for depths (Kaplan et al. find loss flat over a wide range)
    shapes: list[str] = field(default_factory=list)  # or explicit shapes: ["1x32", "2x64", ...]
    head_dim: int = 16
    tokens: list[float] = field(default_factory=list)  # training tokens per run
    compute: list[float] = field(default_factory=list)  # or IsoFLOP budgets, FLOPs as 6·N_nonemb·D
    min_steps: int = 10  # an IsoFLOP size whose share is fewer steps is left out (and said so)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)


# A task's fields by kind (the names task.columns maps from), the built-in tasks and their kinds, and the model kinds
# each task kind can be encoded for (data/tasks.py).
TASK_FIELDS = {
    "classification": ("text", "label"),
    "pair": ("text_a", "text_b", "label"),
    "regression": ("text", "text_a", "text_b", "label"),  # text, or text_a and text_b
    "tagging": ("words", "tags"),
    "qa": ("context", "question", "answer", "answer_start"),
    "text2text": ("input", "target", "task"),  # task: optional, a per-row prefix
}
TASK_BUILTINS = {"tweets-sentiment": "classification", "code-docstrings": "text2text"}
TASK_ARCHS = {  # an encoder-decoder answers a classification as text: the label's name is its target
    "classification": ("encoder", "decoder", "encoder_decoder"),
    "pair": ("encoder", "decoder", "encoder_decoder"),
    "regression": ("encoder", "decoder"),
    "tagging": ("encoder",),
    "qa": ("encoder",),
    "text2text": ("encoder_decoder",),
}
# the shortest task.max_len that holds one token of each text with the special tokens around them
_TASK_MIN_LEN = {("encoder", "pair"): 5, ("encoder", "qa"): 5, ("decoder", "pair"): 3, ("decoder", None): 1}
_TASK_MIN_LEN.update({("encoder", None): 3, ("encoder_decoder", None): 2})

_MODEL_CHOICES = {
    "arch": ("decoder", "encoder", "encoder_decoder"),
    "positions": ("learned", "rope", "relative"),
    "norm": ("layernorm", "rmsnorm"),
    "norm_position": ("pre", "post"),
    "activation": ("gelu", "gelu_tanh", "relu", "silu"),
    "head": ("lm", "rtd", "sequence", "token", "span"),
    "attention_pattern": ("dense", "alternating"),
}
_CHOICES = {
    ("objective", "name"): ("causal_lm", "mlm", "span_corruption", "denoising", "task"),
    ("train", "precision"): ("fp32", "bf16", "fp16"),
    ("train", "parallel"): ("none", "ddp", "fsdp"),
}
MIXING = ("proportional", "temperature", "fixed")
# the head each task kind needs on an encoder or decoder; an encoder-decoder answers every kind as text (its LM head)
HEAD_OF_TASK = {
    "classification": "sequence",
    "pair": "sequence",
    "regression": "sequence",
    "tagging": "token",
    "qa": "span",
    "text2text": "lm",
}
DEVICES = re.compile(r"auto|cpu|cuda(:\d+)?")
# the objectives each kind pretrains with, its default first
OBJECTIVES_OF_ARCH = {
    "decoder": ("causal_lm",),
    "encoder": ("mlm",),
    "encoder_decoder": ("span_corruption", "denoising"),
}


def _all_keys(cls=Config, prefix="") -> list[str]:
    keys = []
    for f in fields(cls):
        name = prefix + f.name
        default = f.default_factory() if callable(f.default_factory) else f.default  # type: ignore[misc]
        keys.extend(_all_keys(type(default), name + ".") if is_dataclass(default) else [name])
    return keys


def _unknown_key_error(key: str) -> ConfigError:
    near = difflib.get_close_matches(key, _all_keys(), n=1, cutoff=0.5)
    hint = f"; did you mean '{near[0]}'?" if near else "; see configs/ for valid keys"
    return ConfigError(f"unknown config key '{key}'{hint}")


def _check_keys(data, cls=Config, prefix="") -> None:
    """Every key in `data` must be in the schema, and every section a mapping (OmegaConf's own messages lose
    the dotted path)."""
    known = {f.name: f for f in fields(cls)}
    for key, value in data.items():
        if key not in known:
            raise _unknown_key_error(prefix + str(key))
        f = known[key]
        default = f.default_factory() if callable(f.default_factory) else f.default  # type: ignore[misc]
        if is_dataclass(default) and value is not None:
            if not isinstance(value, dict):
                first = fields(default)[0].name
                raise ConfigError(
                    f"'{prefix}{key}' is a section, not a value: set its keys, e.g. {prefix}{key}.{first}=..."
                )
            _check_keys(value, type(default), prefix + key + ".")


def _read_recipe(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file '{path}' not found; pass a YAML recipe such as configs/gpt-tiny.yaml")
    try:
        data = OmegaConf.to_container(OmegaConf.load(path))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark else ""
        raise ConfigError(f"'{path}' is not valid YAML ({where}{getattr(e, 'problem', None) or e})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"'{path}' is not UTF-8 text; a recipe is a YAML file") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"'{path}' holds a {type(data).__name__}, not sections: write model:, data:, objective:, train:, eval: "
            "at its top level"
        )
    return data


def _parse_override(item: str) -> tuple[str, str]:
    if "=" not in item:
        raise ConfigError(f"override '{item}' is not of the form section.key=value")
    key, value = item.split("=", 1)
    return key.strip(), value


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | dict | None = None) -> Config:
    """Build a Config from a YAML recipe (or the defaults) and `section.key=value` overrides."""
    layers = [OmegaConf.structured(Config)]
    if path is not None:
        data = _read_recipe(Path(path))
        _check_keys(data)
        layers.append(OmegaConf.create(data))
    if isinstance(overrides, dict):
        overrides = [f"{k}={v}" for k, v in overrides.items()]
    dotlist = []
    for item in overrides or []:
        key, value = _parse_override(item)
        _check_keys(OmegaConf.to_container(OmegaConf.from_dotlist([f"{key}={value}"])))
        dotlist.append(f"{key}={value}")
    if dotlist:
        layers.append(OmegaConf.from_dotlist(dotlist))
    try:
        merged = OmegaConf.merge(*layers)
    except ConfigKeyError as e:  # nested key under a leaf, e.g. model.d_model.x
        raise _unknown_key_error(str(e.full_key)) from None
    except OmegaConfBaseException as e:
        reason = (e.msg or str(e)).splitlines()[0]
        raise ConfigError(f"bad value for '{e.full_key}': {reason}") from None
    config: Config = OmegaConf.to_object(merged)  # type: ignore[assignment]
    validate(config)
    return config


def validate(config: Config) -> None:
    """Check the rules within and between sections, and spell out the model's derived sizes (in place)."""
    config.model = config.model.resolved()
    for (section, key), allowed in _CHOICES.items():
        value = getattr(getattr(config, section), key)
        if value not in allowed:
            raise ConfigError(f"{section}.{key}='{value}' is not one of {', '.join(allowed)}")
    m, o, t = config.model, config.objective, config.train
    if m.generator_fraction and m.generator_fraction > 1:
        warnings.warn(
            f"model.generator_fraction={m.generator_fraction}: a generator wider than its discriminator makes "
            "replacements it cannot tell apart (ELECTRA found 1/4 to 1/2 of the width best)",
            stacklevel=2,
        )
    if m.embedding_dim and m.embedding_dim > m.d_model:
        warnings.warn(
            f"model.embedding_dim={m.embedding_dim} is wider than model.d_model={m.d_model}: the factorised embedding "
            "saves parameters only when it is narrower (ALBERT-base: 128 against 768)",
            stacklevel=2,
        )
    if o.name == "task":
        _check_task(config)
        m = config.model
    elif config.task.name is not None or config.task.train is not None:
        raise ConfigError(f"a task is set (task.name or task.train) but objective.name={o.name}: set it to task")
    elif o.name not in OBJECTIVES_OF_ARCH[m.arch]:
        wanted = " or ".join(OBJECTIVES_OF_ARCH[m.arch])
        raise ConfigError(
            f"model.arch={m.arch} trains with objective.name={wanted}, not {o.name}; "
            f"set objective.name={OBJECTIVES_OF_ARCH[m.arch][0]} or pick the model that goes with {o.name}"
        )
    _check_positive("objective.seq_len", o.seq_len)
    if o.seq_len > m.max_seq_len:
        raise ConfigError(
            f"objective.seq_len={o.seq_len} is larger than the model's positions (model.max_seq_len="
            f"{m.max_seq_len}); raise model.max_seq_len or lower objective.seq_len"
        )
    for key in ("mask_prob", "noise_density"):
        if not 0.0 < getattr(o, key) < 1.0:
            raise ConfigError(f"objective.{key} must be between 0 and 1 (got {getattr(o, key)}); 0.15 is usual")
    if o.mean_span_length < 1:
        raise ConfigError(f"objective.mean_span_length must be at least 1 token (got {o.mean_span_length})")
    for key in ("permute_sentences", "delete_ratio", "mask_ratio", "rotate"):
        if not 0.0 <= getattr(o, key) <= 1.0:
            raise ConfigError(f"objective.{key} must be between 0 and 1 (got {getattr(o, key)})")
    if o.poisson_lambda < 0:
        raise ConfigError(f"objective.poisson_lambda must be 0 (token masking) or more (got {o.poisson_lambda})")
    if o.mask_ratio + o.delete_ratio >= 1:
        raise ConfigError(
            f"objective.mask_ratio={o.mask_ratio} and objective.delete_ratio={o.delete_ratio} leave no token of the "
            "document to read; keep their sum under 1 (BART masks 0.3)"
        )
    if o.teacher is not None:
        if o.name != "mlm" or m.head != "lm":
            raise ConfigError(
                "objective.teacher distils a masked-LM encoder: it needs objective.name=mlm, model.head=lm"
            )
        if not o.distill_temperature > 0:
            raise ConfigError(
                f"objective.distill_temperature must be positive (got {o.distill_temperature}); 2 is usual"
            )
    if o.nsp and o.sop:
        raise ConfigError("objective.nsp and objective.sop are two tasks for one head: choose one")
    for task in ("nsp", "sop"):
        if getattr(o, task) and not m.nsp_head:
            raise ConfigError(f"objective.{task}=true needs a head to predict with: set model.nsp_head=true")
    if o.sbo and not (o.spans and m.sbo_head):
        raise ConfigError(
            "objective.sbo=true predicts masked spans from their boundaries: it needs objective.spans=true and "
            "model.sbo_head=true"
        )
    _check_positive("data.vocab_size", config.data.vocab_size)
    if not 0.0 < config.data.val_fraction < 1.0:
        raise ConfigError(f"data.val_fraction must be between 0 and 1 (got {config.data.val_fraction})")
    for key in ("batch_size", "grad_accum", "max_steps", "log_every", "eval_every", "save_every", "keep_last"):
        _check_positive(f"train.{key}", getattr(t, key))
    _check_positive("eval.batches", config.eval.batches)
    if not t.lr > 0:
        raise ConfigError(f"train.lr must be positive (got {t.lr})")
    if not 0 <= t.min_lr <= t.lr:
        raise ConfigError(f"train.min_lr={t.min_lr} must be between 0 and train.lr={t.lr}")
    for key in ("warmup_steps", "weight_decay", "grad_clip"):
        if not getattr(t, key) >= 0:
            raise ConfigError(f"train.{key} must be 0 or more (got {getattr(t, key)})")
    for key in ("beta1", "beta2"):
        if not 0 <= getattr(t, key) < 1:
            raise ConfigError(f"train.{key} must be in [0, 1) (got {getattr(t, key)}); 0.9 and 0.95 are usual")
    if not DEVICES.fullmatch(t.device):
        raise ConfigError(f"train.device='{t.device}' is not one of auto, cpu, cuda, cuda:N")


def _check_mixture(config: Config) -> None:
    """task.mixture's rules: an encoder-decoder, members that are text-to-text tasks (or classifications answered
    as text), told apart by name, and rates that can be drawn from."""
    k = config.task
    if config.model.arch != "encoder_decoder":
        raise ConfigError(f"task.mixture is for an encoder-decoder (T5), not model.arch={config.model.arch}")
    given = [f"task.{key}" for key in ("name", "train", "validation", "test", "columns", "labels") if getattr(k, key)]
    if given:
        raise ConfigError(f"with task.mixture the tasks are its members: move {', '.join(given)} into one of them")
    if k.mixing not in MIXING:
        raise ConfigError(f"task.mixing='{k.mixing}' is not one of {', '.join(MIXING)}")
    if not k.mixing_temperature > 0:
        raise ConfigError(f"task.mixing_temperature must be positive (got {k.mixing_temperature}); T5 used 2")
    names = []
    for i, member in enumerate(k.mixture):
        where = f"task.mixture[{i}]"
        if member.mixture:
            raise ConfigError(f"{where} is a mixture itself; list its tasks in task.mixture instead")
        if not member.weight > 0:
            raise ConfigError(f"{where}.weight must be positive (got {member.weight})")
        try:
            kind = _check_task_source(member)
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
        if kind not in ("text2text", "classification", "pair"):
            raise ConfigError(f"{where} is a {kind} task; a mixture takes text2text, classification and pair tasks")
        names.append(mixture_name(member))
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(f"task.mixture has two tasks named {repeated[0]}; tell them apart with task.prefix")


def mixture_name(member: TaskConfig) -> str:
    """What a mixture member is called in scores and logs: its built-in name, its prefix, or its file's name."""
    return member.name or member.prefix.strip().rstrip(":") or os.path.splitext(os.path.basename(member.train))[0]


def _check_task_source(k: TaskConfig) -> str:
    """The rules of where a task's examples come from (a built-in or files, columns, labels); returns its kind."""
    default_kind = TaskConfig.kind
    if k.kind not in TASK_FIELDS:
        raise ConfigError(f"task.kind='{k.kind}' is not one of {', '.join(TASK_FIELDS)}")
    kind = k.kind
    if k.name is not None:
        if k.name not in TASK_BUILTINS:
            near = difflib.get_close_matches(k.name, TASK_BUILTINS, n=1, cutoff=0.5)
            hint = f"did you mean '{near[0]}'? If not, for" if near else "for"
            raise ConfigError(
                f"task.name='{k.name}' is not a built-in task ({', '.join(TASK_BUILTINS)}); {hint} your own files "
                "set task.train instead"
            )
        given = [f"task.{key}" for key in ("train", "validation", "test", "columns") if getattr(k, key)]
        if given:
            raise ConfigError(
                f"task.name={k.name} is a built-in task with its own files; drop {', '.join(given)} or task.name"
            )
        kind = TASK_BUILTINS[k.name]
        if k.kind not in (default_kind, kind):
            raise ConfigError(f"task.name={k.name} is a {kind} task, not {k.kind}; drop task.kind")
        k.kind = kind
    elif k.train is None and (k.validation or k.test):
        raise ConfigError("task.validation and task.test need task.train, the file to fine-tune on; set it")
    for f in k.columns:
        if f not in TASK_FIELDS[kind]:
            raise ConfigError(
                f"task.columns.{f}: a {kind} task has no field '{f}'; its fields are {', '.join(TASK_FIELDS[kind])}"
            )
    if k.labels:
        if kind not in ("classification", "pair", "tagging"):
            raise ConfigError(f"task.labels is for classification, pair and tagging tasks, not {kind}; drop it")
        repeated = sorted({str(x) for x in k.labels if k.labels.count(x) > 1})
        if repeated:
            raise ConfigError(f"task.labels names {', '.join(repeated)} more than once; each class once")
    if k.name is None and k.train is None:
        raise ConfigError("objective.name=task needs task.name (tweets-sentiment, code-docstrings) or task.train")
    return kind


def _check_task(config: Config) -> None:
    """A fine-tuning run (objective.name=task): the task section's rules, and the head the task puts on the model
    (model.head follows the task, as a built-in task's kind is its own)."""
    k = config.task
    _check_positive("task.max_len", k.max_len)
    _check_positive("task.max_target_len", k.max_target_len)
    if k.mixture:
        _check_mixture(config)
        kind = k.kind = "text2text"
    else:
        kind = _check_task_source(k)
    arch = config.model.arch
    if arch not in TASK_ARCHS[kind]:
        raise ConfigError(
            f"a {kind} task is for model.arch={' or '.join(TASK_ARCHS[kind])}, not {arch}; pick a model of that kind"
        )
    shortest = _TASK_MIN_LEN.get((arch, kind), _TASK_MIN_LEN[arch, None])
    if k.max_len < shortest:
        raise ConfigError(
            f"task.max_len={k.max_len} is too short for a {kind} task on a {arch}; use at least {shortest}"
        )
    if arch == "encoder_decoder" and k.max_target_len < 2:
        raise ConfigError(f"task.max_target_len={k.max_target_len} leaves no room for a target before </s>; use 2+")
    if k.max_len > config.model.max_seq_len:
        raise ConfigError(
            f"task.max_len={k.max_len} is larger than the model's positions (model.max_seq_len="
            f"{config.model.max_seq_len}); lower task.max_len or raise model.max_seq_len"
        )
    head = "lm" if arch == "encoder_decoder" else HEAD_OF_TASK[kind]
    if config.model.head != head:
        n_labels = config.model.n_labels if head in ("sequence", "token") else 0
        config.model = dataclasses.replace(config.model, head=head, n_labels=n_labels)
    f = config.finetune
    if f.body_lr is not None and not f.body_lr >= 0:
        raise ConfigError(f"finetune.body_lr must be 0 or more (got {f.body_lr})")
    if f.patience < 0:
        raise ConfigError(f"finetune.patience must be 0 (never stop early) or more (got {f.patience})")
    if f.eval_examples < 0:
        raise ConfigError(
            f"finetune.eval_examples must be 0 (the whole validation split) or more (got {f.eval_examples})"
        )
    if f.lora_rank < 0:
        raise ConfigError(f"finetune.lora_rank must be 0 (no adapters) or more (got {f.lora_rank}); 8 is usual")
    if f.lora_rank:
        if not f.lora_alpha > 0:
            raise ConfigError(f"finetune.lora_alpha must be positive (got {f.lora_alpha}); 2 x lora_rank is usual")
        if not 0 <= f.lora_dropout < 1:
            raise ConfigError(f"finetune.lora_dropout must be in [0, 1) (got {f.lora_dropout})")
        if not f.lora_targets:
            raise ConfigError("finetune.lora_targets is empty; name the linear layers to adapt (qkv, attn.proj, ...)")
        if "lm_head" in f.lora_targets:
            raise ConfigError(
                "finetune.lora_targets names lm_head, which an adapter cannot change here: the loss and the logits "
                "read its weight directly (often the embeddings' too); adapt layers of the blocks (qkv, attn.proj, ...)"
            )
    if not f.metric.startswith("val_"):
        raise ConfigError(f"finetune.metric={f.metric!r} is not a validation number (val_loss, val_accuracy, ...)")


def to_yaml(config: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(config))


def from_yaml_text(text: str) -> Config:
    """Read a config saved by `to_yaml` (a run's or a checkpoint's config.yaml)."""
    merged = OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.create(text))
    config: Config = OmegaConf.to_object(merged)  # type: ignore[assignment]
    validate(config)
    return config
