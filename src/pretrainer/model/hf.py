"""Hugging Face `transformers` checkpoints, both ways: GPT-2, GPT-Neo, Llama, BERT, RoBERTa, ALBERT, DistilBERT,
ELECTRA (discriminator and generator), T5, Switch Transformers and BART.

Each family is one record (`Family`, in `FAMILIES`), read one way to import and the other to export: the config
fields it fixes, its config.json key names and defaults, its tokenizer's special tokens and one table of tensor
keys. Dicts and tensors in, dicts and tensors out: reading and writing files is `pretrainer.convert`'s part.
"""

from __future__ import annotations

import math
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from ..config import ModelConfig
from ..errors import ConfigError, ConversionError

# One row per tensor of ours: (our key, their key(s) concatenated along dim 0, transpose?).
Row = tuple[str, tuple[str, ...], bool]


def _row(ours: str, *theirs: str, transpose: bool = False) -> Row:
    return ours, theirs, transpose


@dataclass(frozen=True)
class Family:
    """One `transformers` family in our terms."""

    name: str  # transformers' model_type
    architecture: str  # the class its checkpoints are for (config.json's "architectures")
    fixes: dict  # our ModelConfig fields the family fixes: set on import, required on export
    keys: dict  # our ModelConfig field -> their config.json key, for the fields that are plain renames
    activation_key: str | None  # their key naming the MLP's activation (None: `from_hf`/`to_hf` spell it)
    defaults: dict  # transformers' values for the keys above that a config.json may leave out
    rows: Callable[[ModelConfig], Iterator[Row]]  # every tensor of ours and where theirs is
    special_tokens: dict  # tokenizer_config.json entries, written when the tokenizer has that token
    from_hf: Callable[[dict], dict] = lambda hf: {}  # our fields that are not plain renames, from their config
    to_hf: Callable[[ModelConfig], dict] = lambda c: {}  # their keys that are not plain renames, from ours
    needs: Callable[[ModelConfig], list[str]] = lambda c: []  # what an exported model needs beyond `fixes`
    optional: dict = field(default_factory=dict)  # our modules a real checkpoint may lack -> what to call them
    bare_prefix: str | None = None  # the prefix a bare base model (no heads) leaves off its tensor keys
    key: str = ""  # its key in FAMILIES when two records share a model_type (ELECTRA's two models); else the name
    holds: frozenset = frozenset()  # the sparse ideas it has: "banded attention" (GPT-Neo), "experts" (Switch)

    @property
    def id(self) -> str:
        return self.key or self.name


# their activation name -> ours, and ours -> the one we write
_HF_ACT = {
    "gelu": "gelu",
    "gelu_python": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "relu": "relu",
    "silu": "silu",
}
_ACT_TO_HF = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu", "silu": "silu"}
_COMMON_KEYS = {"vocab_size": "vocab_size", "tie_embeddings": "tie_word_embeddings"}


def _untied_head(c: ModelConfig) -> Iterator[Row]:
    if not c.tie_embeddings:
        yield _row("lm_head.weight", "lm_head.weight")


def _gpt2_rows(c: ModelConfig) -> Iterator[Row]:
    # GPT-2 keeps its linear layers as Conv1D, whose weight is the transpose of nn.Linear's
    yield _row("tok_emb.weight", "transformer.wte.weight")
    yield _row("pos_emb.weight", "transformer.wpe.weight")
    for p in ("weight", "bias"):
        yield _row(f"norm_f.{p}", f"transformer.ln_f.{p}")
    for i in range(c.n_layer):
        h = f"transformer.h.{i}."
        for ours, theirs in (("norm1", "ln_1"), ("norm2", "ln_2")):
            for p in ("weight", "bias"):
                yield _row(f"blocks.{i}.{ours}.{p}", f"{h}{theirs}.{p}")
        for ours, theirs in (
            ("attn.qkv", "attn.c_attn"),
            ("attn.proj", "attn.c_proj"),
            ("mlp.fc", "mlp.c_fc"),
            ("mlp.proj", "mlp.c_proj"),
        ):
            yield _row(f"blocks.{i}.{ours}.weight", f"{h}{theirs}.weight", transpose=True)
            yield _row(f"blocks.{i}.{ours}.bias", f"{h}{theirs}.bias")
    yield from _untied_head(c)


def _plain_heads(c: ModelConfig) -> list[str]:
    """What a family without grouped-query attention or a head size of its own needs."""
    if c.n_kv_head != c.n_head or c.head_dim * c.n_head != c.d_model:
        return ["n_kv_head == n_head and head_dim == d_model / n_head"]
    return []


def _gpt2_needs(c: ModelConfig) -> list[str]:
    needs = [] if c.activation in ("gelu", "gelu_tanh", "relu") else ["a GELU or ReLU activation"]
    return needs + _plain_heads(c)


GPT2 = Family(
    name="gpt2",
    architecture="GPT2LMHeadModel",
    fixes=dict(
        arch="decoder",
        positions="learned",
        norm="layernorm",
        norm_position="pre",
        gated_mlp=False,
        bias=True,
        attention_bias=True,
        scale_attention=True,
    ),
    keys={
        **_COMMON_KEYS,
        "n_layer": "n_layer",
        "n_head": "n_head",
        "d_model": "n_embd",
        "d_ff": "n_inner",
        "max_seq_len": "n_positions",
        "norm_eps": "layer_norm_epsilon",
    },
    activation_key="activation_function",
    defaults={
        "n_inner": None,
        "layer_norm_epsilon": 1e-5,
        "activation_function": "gelu_new",
        "tie_word_embeddings": True,
    },
    rows=_gpt2_rows,
    special_tokens={"eos_token": "<|endoftext|>", "bos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"},
    to_hf=lambda c: {"resid_pdrop": c.dropout, "embd_pdrop": c.dropout, "attn_pdrop": c.dropout},
    needs=_gpt2_needs,
)


def _gpt_neo_rows(c: ModelConfig) -> Iterator[Row]:
    yield _row("tok_emb.weight", "transformer.wte.weight")
    yield _row("pos_emb.weight", "transformer.wpe.weight")
    for p in ("weight", "bias"):
        yield _row(f"norm_f.{p}", f"transformer.ln_f.{p}")
    for i in range(c.n_layer):
        ours, h = f"blocks.{i}.", f"transformer.h.{i}."
        yield _row(ours + "attn.qkv.weight", *(h + f"attn.attention.{x}_proj.weight" for x in "qkv"))
        for p in ("weight", "bias"):
            yield _row(f"{ours}norm1.{p}", f"{h}ln_1.{p}")
            yield _row(f"{ours}attn.proj.{p}", f"{h}attn.attention.out_proj.{p}")
            yield _row(f"{ours}norm2.{p}", f"{h}ln_2.{p}")
            yield _row(f"{ours}mlp.fc.{p}", f"{h}mlp.c_fc.{p}")
            yield _row(f"{ours}mlp.proj.{p}", f"{h}mlp.c_proj.{p}")
    yield from _untied_head(c)


def _gpt_neo_from_hf(hf: dict) -> dict:
    """GPT-Neo's per-layer attention kinds ("global": dense; "local": the last window_size keys) as our pattern."""
    try:
        layers = [kind for kinds, repeats in hf["attention_types"] for _ in range(repeats) for kind in kinds]
    except (TypeError, ValueError):
        raise ConversionError(
            f"attention_types={hf['attention_types']!r} in config.json is not [[[KIND, ...], REPEATS], ...]"
        ) from None
    unknown = sorted(set(layers) - {"global", "local"})
    if unknown:
        raise ConversionError(
            f"attention type {', '.join(map(repr, unknown))} in config.json's attention_types: pretrainer has "
            "'global' (dense) and 'local' (banded) attention"
        )
    if len(layers) != hf["num_layers"]:
        raise ConversionError(
            f"attention_types in config.json name {len(layers)} layers, num_layers is {hf['num_layers']}; fix one"
        )
    if "local" not in layers:
        return {"attention_pattern": "dense"}
    if layers != ["local" if i % 2 else "global" for i in range(len(layers))]:
        raise ConversionError(
            f"attention_types in config.json give the layers {layers}: pretrainer alternates them global, local, "
            "global, ... (GPT-Neo's pattern) and has no other"
        )
    return {"attention_pattern": "alternating", "attention_window": hf["window_size"]}


def _gpt_neo_to_hf(c: ModelConfig) -> dict:
    n = c.n_layer
    if c.attention_pattern == "dense":
        kinds = [[["global"], n]]
    else:
        kinds = [[["global", "local"], n // 2]] + ([[["global"], 1]] if n % 2 else [])
    dropouts = {"embed_dropout": c.dropout, "resid_dropout": c.dropout, "attention_dropout": c.dropout}
    return {"attention_types": kinds, "window_size": c.attention_window or 256} | dropouts


GPT_NEO = Family(
    name="gpt_neo",
    architecture="GPTNeoForCausalLM",
    # GPT-2's layout, with bias-free query, key and value projections and no 1/sqrt(head_dim) in attention
    fixes=GPT2.fixes | {"attention_bias": False, "scale_attention": False},
    keys={
        **_COMMON_KEYS,
        "n_layer": "num_layers",
        "n_head": "num_heads",
        "d_model": "hidden_size",
        "d_ff": "intermediate_size",
        "max_seq_len": "max_position_embeddings",
        "norm_eps": "layer_norm_epsilon",
    },
    activation_key="activation_function",
    defaults={
        "intermediate_size": None,
        "layer_norm_epsilon": 1e-5,
        "activation_function": "gelu_new",
        "tie_word_embeddings": True,
        "window_size": 256,
        "attention_types": [[["global", "local"], 12]],
    },
    rows=_gpt_neo_rows,
    special_tokens=GPT2.special_tokens,
    from_hf=_gpt_neo_from_hf,
    to_hf=_gpt_neo_to_hf,
    needs=_gpt2_needs,
    holds=frozenset({"banded attention"}),
)


def _llama_rows(c: ModelConfig) -> Iterator[Row]:
    yield _row("tok_emb.weight", "model.embed_tokens.weight")
    yield _row("norm_f.weight", "model.norm.weight")
    for i in range(c.n_layer):
        h = f"model.layers.{i}."
        yield _row(f"blocks.{i}.norm1.weight", h + "input_layernorm.weight")
        yield _row(f"blocks.{i}.norm2.weight", h + "post_attention_layernorm.weight")
        yield _row(f"blocks.{i}.attn.qkv.weight", *(h + f"self_attn.{x}_proj.weight" for x in "qkv"))
        yield _row(f"blocks.{i}.attn.proj.weight", h + "self_attn.o_proj.weight")
        yield _row(f"blocks.{i}.mlp.fc.weight", h + "mlp.gate_proj.weight", h + "mlp.up_proj.weight")
        yield _row(f"blocks.{i}.mlp.proj.weight", h + "mlp.down_proj.weight")
    yield from _untied_head(c)


def _llama_from_hf(hf: dict) -> dict:
    # transformers 5 moved rope_theta and the scaling into rope_parameters; before, rope_scaling, whose rope_type
    # was once called type
    rope = (hf.get("rope_parameters") or {}) | (hf.get("rope_scaling") or {})
    fields = {"rope_theta": hf.get("rope_theta") or rope.get("rope_theta", 10000.0)}
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind == "default":
        return fields
    if kind != "llama3":
        raise ConversionError(
            f"unsupported rope scaling '{kind}' in config.json; pretrainer implements only 'llama3' (Llama 3.1's) "
            "and plain RoPE"
        )
    return fields | {
        "rope_scaling": "llama3",
        "rope_scaling_factor": rope["factor"],
        "rope_low_freq_factor": rope["low_freq_factor"],
        "rope_high_freq_factor": rope["high_freq_factor"],
        "rope_original_max_seq_len": rope.get("original_max_position_embeddings", hf["max_position_embeddings"]),
    }


def _llama_to_hf(c: ModelConfig) -> dict:
    # rope_theta and rope_scaling: the spelling every transformers version reads
    if c.rope_scaling is None:
        return {"rope_theta": c.rope_theta}
    scaling = {
        "rope_type": c.rope_scaling,
        "factor": c.rope_scaling_factor,
        "low_freq_factor": c.rope_low_freq_factor,
        "high_freq_factor": c.rope_high_freq_factor,
        "original_max_position_embeddings": c.rope_original_max_seq_len,
    }
    return {"rope_theta": c.rope_theta, "rope_scaling": scaling}


LLAMA = Family(
    name="llama",
    architecture="LlamaForCausalLM",
    fixes=dict(
        arch="decoder",
        positions="rope",
        norm="rmsnorm",
        norm_position="pre",
        gated_mlp=True,
        bias=False,
        attention_bias=False,
        scale_attention=True,
    ),
    keys={
        **_COMMON_KEYS,
        "n_layer": "num_hidden_layers",
        "n_head": "num_attention_heads",
        "n_kv_head": "num_key_value_heads",
        "head_dim": "head_dim",
        "d_model": "hidden_size",
        "d_ff": "intermediate_size",
        "max_seq_len": "max_position_embeddings",
        "norm_eps": "rms_norm_eps",
    },
    activation_key="hidden_act",
    defaults={
        "num_key_value_heads": None,
        "head_dim": None,
        "rms_norm_eps": 1e-6,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
    },
    rows=_llama_rows,
    special_tokens={"eos_token": "<|endoftext|>"},
    from_hf=_llama_from_hf,
    to_hf=_llama_to_hf,
)


def _bert_embedding_rows(c: ModelConfig, e: str) -> Iterator[Row]:
    yield _row("tok_emb.weight", e + "word_embeddings.weight")
    yield _row("pos_emb.weight", e + "position_embeddings.weight")
    if c.type_vocab_size:
        yield _row("type_emb.weight", e + "token_type_embeddings.weight")
    for p in ("weight", "bias"):
        yield _row(f"emb_norm.{p}", e + f"LayerNorm.{p}")


def _bert_layer_rows(ours: str, h: str) -> Iterator[Row]:
    """One BERT layer of ours (`ours`: "blocks.i.") and theirs (`h`), as BERT and RoBERTa name it."""
    for p in ("weight", "bias"):
        yield _row(f"{ours}attn.qkv.{p}", *(h + f"attention.self.{x}.{p}" for x in ("query", "key", "value")))
        yield _row(f"{ours}attn.proj.{p}", h + f"attention.output.dense.{p}")
        yield _row(f"{ours}norm1.{p}", h + f"attention.output.LayerNorm.{p}")
        yield _row(f"{ours}mlp.fc.{p}", h + f"intermediate.dense.{p}")
        yield _row(f"{ours}mlp.proj.{p}", h + f"output.dense.{p}")
        yield _row(f"{ours}norm2.{p}", h + f"output.LayerNorm.{p}")


def _mlm_rows(c: ModelConfig, dense: str, layer_norm: str, bias: str, pooler: str | None) -> Iterator[Row]:
    """The MLM head (its decoder tied to the word embeddings) and the pooler."""
    for p in ("weight", "bias"):
        yield _row(f"mlm_dense.{p}", f"{dense}.{p}")
        yield _row(f"mlm_norm.{p}", f"{layer_norm}.{p}")
        if c.pooler and pooler:
            yield _row(f"pooler.{p}", f"{pooler}.{p}")
    yield _row("mlm_bias", bias)


def _bert_rows(c: ModelConfig) -> Iterator[Row]:
    yield from _bert_embedding_rows(c, "bert.embeddings.")
    for i in range(c.n_layer):
        yield from _bert_layer_rows(f"blocks.{i}.", f"bert.encoder.layer.{i}.")
    yield from _mlm_rows(c, "cls.predictions.transform.dense", "cls.predictions.transform.LayerNorm",
                         "cls.predictions.bias", "bert.pooler.dense")  # fmt: skip
    if c.nsp_head:
        for p in ("weight", "bias"):
            yield _row(f"nsp.{p}", f"cls.seq_relationship.{p}")


_MLM_HEAD = "MLM head (its decoder is tied to the word embeddings, as in BERT)"
_BERT_OPTIONAL = {"mlm_dense": _MLM_HEAD, "mlm_norm": _MLM_HEAD, "mlm_bias": _MLM_HEAD, "pooler": "pooler"}
_BERT_KEYS = {
    **_COMMON_KEYS,
    "n_layer": "num_hidden_layers",
    "n_head": "num_attention_heads",
    "d_model": "hidden_size",
    "d_ff": "intermediate_size",
    "norm_eps": "layer_norm_eps",
}
# what a plain BERT-like encoder is: the fields the family variants below change, at BERT's values
_PLAIN_ENCODER = dict(arch="encoder", positions="learned", norm="layernorm", norm_position="post", gated_mlp=False,
                      bias=True, attention_bias=True, scale_attention=True, position_offset=0, embedding_dim=None,
                      share_layers=False, head="lm")  # fmt: skip
_FACTORISABLE_ENCODER = {k: v for k, v in _PLAIN_ENCODER.items() if k != "embedding_dim"}  # ALBERT's, ELECTRA's
BERT = Family(
    name="bert",
    architecture="BertForMaskedLM",
    fixes={**_PLAIN_ENCODER, "pooler": True},
    keys={**_BERT_KEYS, "max_seq_len": "max_position_embeddings"},
    activation_key="hidden_act",
    defaults={"layer_norm_eps": 1e-12, "tie_word_embeddings": True, "type_vocab_size": 2},
    rows=_bert_rows,
    special_tokens={
        "cls_token": "[CLS]",
        "sep_token": "[SEP]",
        "mask_token": "[MASK]",
        "pad_token": "[PAD]",
        "unk_token": "[UNK]",
    },
    from_hf=lambda hf: {"type_vocab_size": hf["type_vocab_size"]},
    to_hf=lambda c: {
        "type_vocab_size": max(c.type_vocab_size, 1),
        "hidden_dropout_prob": c.dropout,
        "attention_probs_dropout_prob": c.dropout,
    },
    optional={**_BERT_OPTIONAL, "nsp": "NSP head"},
    needs=_plain_heads,
    bare_prefix="bert.",  # a bare BertModel, as sentence encoders ship
)


def _roberta_rows(c: ModelConfig) -> Iterator[Row]:
    yield from _bert_embedding_rows(c, "roberta.embeddings.")
    for i in range(c.n_layer):
        yield from _bert_layer_rows(f"blocks.{i}.", f"roberta.encoder.layer.{i}.")
    yield from _mlm_rows(c, "lm_head.dense", "lm_head.layer_norm", "lm_head.bias", "roberta.pooler.dense")


def _roberta_from_hf(hf: dict) -> dict:
    # positions count from the padding id + 1 (the padding's own row is the padding id's), so the table holds
    # max_seq_len + padding id + 1 rows: roberta-base's 514 are 512 positions
    offset = hf["pad_token_id"] + 1
    if hf["max_position_embeddings"] <= offset:
        raise ConversionError(
            f"max_position_embeddings={hf['max_position_embeddings']} in config.json leaves no positions: RoBERTa's "
            f"start at pad_token_id + 1 = {offset}; use the config.json the weights came with"
        )
    return {
        "type_vocab_size": hf["type_vocab_size"],
        "position_offset": offset,
        "max_seq_len": hf["max_position_embeddings"] - offset,
    }


ROBERTA = Family(
    name="roberta",
    architecture="RobertaForMaskedLM",
    fixes={k: v for k, v in _PLAIN_ENCODER.items() if k != "position_offset"},
    keys=_BERT_KEYS,
    activation_key="hidden_act",
    defaults={"layer_norm_eps": 1e-12, "tie_word_embeddings": True, "type_vocab_size": 2, "pad_token_id": 1},
    rows=_roberta_rows,
    special_tokens={
        "bos_token": "<s>",
        "cls_token": "<s>",
        "eos_token": "</s>",
        "sep_token": "</s>",
        "mask_token": "<mask>",
        "pad_token": "<pad>",
        "unk_token": "<unk>",
    },
    from_hf=_roberta_from_hf,
    to_hf=lambda c: {
        "type_vocab_size": max(c.type_vocab_size, 1),
        "pad_token_id": c.position_offset - 1,
        "bos_token_id": 0,
        "eos_token_id": 2,
        "max_position_embeddings": c.max_seq_len + c.position_offset,
        "hidden_dropout_prob": c.dropout,
        "attention_probs_dropout_prob": c.dropout,
    },
    optional=_BERT_OPTIONAL,
    needs=lambda c: ([] if c.position_offset else ["position_offset >= 1 (the padding id + 1)"]) + _plain_heads(c),
    bare_prefix="roberta.",
)


def _albert_rows(c: ModelConfig) -> Iterator[Row]:
    yield from _bert_embedding_rows(c, "albert.embeddings.")
    for p in ("weight", "bias"):
        yield _row(f"emb_proj.{p}", f"albert.encoder.embedding_hidden_mapping_in.{p}")
        h = "albert.encoder.albert_layer_groups.0.albert_layers.0."
        yield _row(f"blocks.0.attn.qkv.{p}", *(h + f"attention.{x}.{p}" for x in ("query", "key", "value")))
        yield _row(f"blocks.0.attn.proj.{p}", h + f"attention.dense.{p}")
        yield _row(f"blocks.0.norm1.{p}", h + f"attention.LayerNorm.{p}")
        yield _row(f"blocks.0.mlp.fc.{p}", h + f"ffn.{p}")
        yield _row(f"blocks.0.mlp.proj.{p}", h + f"ffn_output.{p}")
        yield _row(f"blocks.0.norm2.{p}", h + f"full_layer_layer_norm.{p}")
    yield from _mlm_rows(c, "predictions.dense", "predictions.LayerNorm", "predictions.bias", "albert.pooler")
    if c.nsp_head:
        for p in ("weight", "bias"):
            yield _row(f"nsp.{p}", f"sop_classifier.classifier.{p}")


def _albert_from_hf(hf: dict) -> dict:
    groups = (hf.get("num_hidden_groups", 1), hf.get("inner_group_num", 1))
    if groups != (1, 1):
        raise ConversionError(
            f"num_hidden_groups={groups[0]} and inner_group_num={groups[1]} in config.json: pretrainer shares one "
            "layer's weights across all layers (ALBERT's published models: both 1)"
        )
    return {"type_vocab_size": hf["type_vocab_size"], "embedding_dim": hf["embedding_size"]}


ALBERT = Family(
    name="albert",
    architecture="AlbertForPreTraining",
    fixes={
        **_FACTORISABLE_ENCODER,
        "share_layers": True,
        "nsp_head": True,
        "pooler": True,
    },
    keys={**_BERT_KEYS, "max_seq_len": "max_position_embeddings"},
    activation_key="hidden_act",
    defaults={
        "layer_norm_eps": 1e-12,
        "tie_word_embeddings": True,
        "type_vocab_size": 2,
        "hidden_act": "gelu_new",
        "embedding_size": 128,
    },
    rows=_albert_rows,
    special_tokens=BERT.special_tokens | {"pad_token": "<pad>", "unk_token": "<unk>"},
    from_hf=_albert_from_hf,
    to_hf=lambda c: {
        "type_vocab_size": max(c.type_vocab_size, 1),
        "embedding_size": c.embedding_dim,
        "num_hidden_groups": 1,
        "inner_group_num": 1,
        "hidden_dropout_prob": c.dropout,
        "attention_probs_dropout_prob": c.dropout,
    },
    optional={**_BERT_OPTIONAL, "nsp": "sentence-order head"},
    needs=lambda c: ([] if c.embedding_dim else ["embedding_dim (ALBERT's factorised embedding)"]) + _plain_heads(c),
    bare_prefix="albert.",
)


def _distilbert_rows(c: ModelConfig) -> Iterator[Row]:
    yield from _bert_embedding_rows(c, "distilbert.embeddings.")
    for i in range(c.n_layer):
        ours, h = f"blocks.{i}.", f"distilbert.transformer.layer.{i}."
        for p in ("weight", "bias"):
            yield _row(f"{ours}attn.qkv.{p}", *(h + f"attention.{x}_lin.{p}" for x in "qkv"))
            yield _row(f"{ours}attn.proj.{p}", h + f"attention.out_lin.{p}")
            yield _row(f"{ours}norm1.{p}", h + f"sa_layer_norm.{p}")
            yield _row(f"{ours}mlp.fc.{p}", h + f"ffn.lin1.{p}")
            yield _row(f"{ours}mlp.proj.{p}", h + f"ffn.lin2.{p}")
            yield _row(f"{ours}norm2.{p}", h + f"output_layer_norm.{p}")
    yield from _mlm_rows(c, "vocab_transform", "vocab_layer_norm", "vocab_projector.bias", None)


DISTILBERT = Family(
    name="distilbert",
    architecture="DistilBertForMaskedLM",
    # no segments, no pooler, and LayerNorm eps fixed in transformers' code
    fixes={**_PLAIN_ENCODER, "type_vocab_size": 0, "pooler": False, "nsp_head": False, "norm_eps": 1e-12},
    keys={
        **_COMMON_KEYS,
        "n_layer": "n_layers",
        "n_head": "n_heads",
        "d_model": "dim",
        "d_ff": "hidden_dim",
        "max_seq_len": "max_position_embeddings",
    },
    activation_key="activation",
    defaults={"tie_word_embeddings": True, "activation": "gelu", "sinusoidal_pos_embds": False},
    rows=_distilbert_rows,
    special_tokens=BERT.special_tokens,
    from_hf=lambda hf: _refuse_sinusoidal(hf),
    to_hf=lambda c: {"dropout": c.dropout, "attention_dropout": c.dropout, "sinusoidal_pos_embds": False},
    optional=_BERT_OPTIONAL,
    needs=_plain_heads,
    bare_prefix="distilbert.",
)


def _refuse_sinusoidal(hf: dict) -> dict:
    if hf["sinusoidal_pos_embds"]:
        raise ConversionError("sinusoidal_pos_embds=true in config.json: pretrainer's encoders learn their positions")
    return {}


def _t5_mlp_rows(c: ModelConfig, layer: int, ours: str, theirs: str) -> Iterator[Row]:
    wi = ("wi_0", "wi_1") if c.gated_mlp else ("wi",)
    yield _row(ours + "mlp.fc.weight", *(f"{theirs}DenseReluDense.{w}.weight" for w in wi))
    yield _row(ours + "mlp.proj.weight", theirs + "DenseReluDense.wo.weight")


def _t5_rows(c: ModelConfig, mlp_rows=_t5_mlp_rows) -> Iterator[Row]:
    """T5's tensors; `mlp_rows(c, layer, ours, theirs)` gives each block's MLP (Switch Transformers' differ)."""
    yield _row("tok_emb.weight", "shared.weight")
    for stack, n_layer in (("encoder", c.n_layer), ("decoder", c.n_decoder_layer)):
        yield _row(
            f"{stack}.rel_bias.embedding.weight",
            f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
        )
        yield _row(f"{stack}.norm_f.weight", f"{stack}.final_layer_norm.weight")
        for i in range(n_layer):
            ours, h = f"{stack}.blocks.{i}.", f"{stack}.block.{i}.layer."
            ff = 2 if stack == "decoder" else 1
            yield _row(ours + "norm1.weight", h + "0.layer_norm.weight")
            yield _row(ours + "attn.qkv.weight", *(h + f"0.SelfAttention.{x}.weight" for x in "qkv"))
            yield _row(ours + "attn.proj.weight", h + "0.SelfAttention.o.weight")
            if stack == "decoder":
                yield _row(ours + "norm_cross.weight", h + "1.layer_norm.weight")
                yield _row(ours + "cross_attn.q.weight", h + "1.EncDecAttention.q.weight")
                yield _row(
                    ours + "cross_attn.kv.weight", h + "1.EncDecAttention.k.weight", h + "1.EncDecAttention.v.weight"
                )
                yield _row(ours + "cross_attn.proj.weight", h + "1.EncDecAttention.o.weight")
            yield _row(ours + "norm2.weight", h + f"{ff}.layer_norm.weight")
            yield from mlp_rows(c, i, ours, f"{h}{ff}.")
    yield from _untied_head(c)


def _t5_from_hf(hf: dict) -> dict:
    # as T5Config reads feed_forward_proj: "[gated-]ACT", ACT a transformers activation, except that "gated-gelu"
    # alone means gelu_new (the tanh GELU of T5 v1.1) for backward compatibility
    proj = hf["feed_forward_proj"]
    gated, _, activation = str(proj).rpartition("-")
    if gated not in ("", "gated"):
        raise ConversionError(f"feed_forward_proj={proj!r} in config.json is not 'ACT' or 'gated-ACT'; fix config.json")
    return dict(
        activation=_activation("gelu_new" if proj == "gated-gelu" else activation),
        gated_mlp=gated == "gated",
        max_seq_len=hf.get("n_positions") or 512,
        # transformers 5 always ties T5's head and says with scale_decoder_outputs whether it rescales
        head_scale=hf.get("scale_decoder_outputs", hf["tie_word_embeddings"]),
        decoder_start_id=hf.get("decoder_start_token_id") or 0,
    )


def _t5_feed_forward_proj(c: ModelConfig) -> str:
    """The inverse of T5Config's reading (see _t5_from_hf): "gated-gelu" is taken by the tanh GELU, so a gated exact
    GELU is written with transformers' other name for it, gelu_python."""
    activation = _ACT_TO_HF[c.activation]
    if not c.gated_mlp:
        return activation
    return {"gelu_tanh": "gated-gelu", "gelu": "gated-gelu_python"}.get(c.activation, f"gated-{activation}")


def _t5_to_hf(c: ModelConfig) -> dict:
    return {
        "feed_forward_proj": _t5_feed_forward_proj(c),
        "scale_decoder_outputs": c.head_scale,
        "decoder_start_token_id": c.decoder_start_id,
        "pad_token_id": c.decoder_start_id,
        "eos_token_id": 1,
        "dropout_rate": c.dropout,
        "is_encoder_decoder": True,
        "n_positions": c.max_seq_len,
    }


T5 = Family(
    name="t5",
    architecture="T5ForConditionalGeneration",
    fixes=dict(
        arch="encoder_decoder",
        positions="relative",
        norm="rmsnorm",
        norm_position="pre",
        bias=False,
        attention_bias=False,
        scale_attention=False,
        tie_embeddings=True,  # transformers 5 always ties T5's head
    ),
    keys={
        **_COMMON_KEYS,
        "n_layer": "num_layers",
        "n_decoder_layer": "num_decoder_layers",
        "n_head": "num_heads",
        "head_dim": "d_kv",
        "d_model": "d_model",
        "d_ff": "d_ff",
        "relative_buckets": "relative_attention_num_buckets",
        "relative_max_distance": "relative_attention_max_distance",
        "norm_eps": "layer_norm_epsilon",
    },
    activation_key=None,  # feed_forward_proj: "relu", "gated-gelu" (T5 v1.1), ...; it says gated or not too
    defaults={
        "tie_word_embeddings": True,
        "num_decoder_layers": None,
        "relative_attention_num_buckets": 32,
        "relative_attention_max_distance": 128,
        "layer_norm_epsilon": 1e-6,
        "feed_forward_proj": "relu",
    },
    rows=_t5_rows,
    special_tokens={"eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"},
    from_hf=_t5_from_hf,
    to_hf=_t5_to_hf,
    needs=lambda c: [] if c.n_kv_head == c.n_head else ["n_kv_head == n_head"],  # d_kv is T5's head size
)


def _bart_rows(c: ModelConfig) -> Iterator[Row]:
    yield _row("tok_emb.weight", "model.shared.weight")
    for stack, n_layer in (("encoder", c.n_layer), ("decoder", c.n_decoder_layer)):
        yield _row(f"{stack}.pos_emb.weight", f"model.{stack}.embed_positions.weight")
        for p in ("weight", "bias"):
            yield _row(f"{stack}.emb_norm.{p}", f"model.{stack}.layernorm_embedding.{p}")
        for i in range(n_layer):
            ours, h = f"{stack}.blocks.{i}.", f"model.{stack}.layers.{i}."
            for p in ("weight", "bias"):
                yield _row(f"{ours}attn.qkv.{p}", *(f"{h}self_attn.{x}_proj.{p}" for x in "qkv"))
                yield _row(f"{ours}attn.proj.{p}", f"{h}self_attn.out_proj.{p}")
                yield _row(f"{ours}norm1.{p}", f"{h}self_attn_layer_norm.{p}")
                if stack == "decoder":
                    yield _row(f"{ours}cross_attn.q.{p}", f"{h}encoder_attn.q_proj.{p}")
                    yield _row(f"{ours}cross_attn.kv.{p}", f"{h}encoder_attn.k_proj.{p}", f"{h}encoder_attn.v_proj.{p}")
                    yield _row(f"{ours}cross_attn.proj.{p}", f"{h}encoder_attn.out_proj.{p}")
                    yield _row(f"{ours}norm_cross.{p}", f"{h}encoder_attn_layer_norm.{p}")
                yield _row(f"{ours}mlp.fc.{p}", f"{h}fc1.{p}")
                yield _row(f"{ours}mlp.proj.{p}", f"{h}fc2.{p}")
                yield _row(f"{ours}norm2.{p}", f"{h}final_layer_norm.{p}")
    yield from _untied_head(c)


def _bart_from_hf(hf: dict) -> dict:
    """One head count and MLP width for both stacks, embeddings unscaled (BART's, not mBART's)."""
    for ours, theirs in (
        ("encoder_attention_heads", "decoder_attention_heads"),
        ("encoder_ffn_dim", "decoder_ffn_dim"),
    ):
        if hf[ours] != hf[theirs]:
            raise ConversionError(
                f"{ours}={hf[ours]} and {theirs}={hf[theirs]} in config.json: pretrainer's two stacks share one size"
            )
    if hf["scale_embedding"]:
        raise ConversionError("scale_embedding=true in config.json: pretrainer's BART does not scale its embeddings")
    return {}


BART = Family(
    name="bart",
    architecture="BartForConditionalGeneration",
    # post-LN with a norm over the embeddings; positions from row 2; LayerNorm eps fixed in transformers' code
    fixes=dict(
        arch="encoder_decoder",
        positions="learned",
        position_offset=2,
        norm="layernorm",
        norm_position="post",
        gated_mlp=False,
        bias=True,
        attention_bias=True,
        scale_attention=True,
        head_scale=False,
        norm_eps=1e-5,
    ),
    keys={
        **_COMMON_KEYS,
        "n_layer": "encoder_layers",
        "n_decoder_layer": "decoder_layers",
        "n_head": "encoder_attention_heads",
        "d_model": "d_model",
        "d_ff": "encoder_ffn_dim",
        "max_seq_len": "max_position_embeddings",
        "decoder_start_id": "decoder_start_token_id",
    },
    activation_key="activation_function",
    defaults={
        "activation_function": "gelu",
        "tie_word_embeddings": True,
        "scale_embedding": False,
        "decoder_start_token_id": 2,
    },
    rows=_bart_rows,
    special_tokens=ROBERTA.special_tokens,
    from_hf=_bart_from_hf,
    to_hf=lambda c: {
        "decoder_attention_heads": c.n_head,
        "decoder_ffn_dim": c.d_ff,
        "scale_embedding": False,
        "pad_token_id": 1,
        "bos_token_id": 0,
        "eos_token_id": 2,
        "forced_eos_token_id": 2,
        "dropout": c.dropout,
        "attention_dropout": c.dropout,
        "activation_dropout": 0.0,
        "is_encoder_decoder": True,
    },
    needs=_plain_heads,
)


def _switch_mlp_rows(c: ModelConfig, layer: int, ours: str, theirs: str) -> Iterator[Row]:
    if not c.is_sparse(layer):
        yield _row(ours + "mlp.fc.weight", theirs + "mlp.wi.weight")
        yield _row(ours + "mlp.proj.weight", theirs + "mlp.wo.weight")
        return
    yield _row(ours + "mlp.router.weight", theirs + "mlp.router.classifier.weight")
    for e in range(c.moe_experts):
        yield _row(f"{ours}mlp.experts.{e}.fc.weight", f"{theirs}mlp.experts.expert_{e}.wi.weight")
        yield _row(f"{ours}mlp.experts.{e}.proj.weight", f"{theirs}mlp.experts.expert_{e}.wo.weight")


def _sparse_layers(c: ModelConfig, n_layer: int) -> int:
    return sum(c.is_sparse(i) for i in range(n_layer))


def _switch_from_hf(hf: dict) -> dict:
    """Switch Transformers' sparse blocks (`_hf_sparse_blocks`) as our one moe_every for both stacks. Its capacity
    is a number of tokens per sequence, ours a factor of the sequence length: converted at 512 tokens, the length
    transformers' T5 models are made for (one length has to be chosen)."""
    if hf["router_bias"]:
        raise ConversionError("router_bias=true in config.json: pretrainer's routers have no bias")
    stacks = {"num_layers": "num_sparse_encoder_layers", "num_decoder_layers": "num_sparse_decoder_layers"}
    theirs = [_hf_sparse_blocks(hf[layers] or hf["num_layers"], hf[sparse]) for layers, sparse in stacks.items()]

    def ours(every: int) -> list[list[bool]]:  # ModelConfig.is_sparse's rule
        return [[i % every == 1 % every for i in range(len(blocks))] for blocks in theirs]

    every = next((k for k in range(1, 1 + hf["num_layers"]) if ours(k) == theirs), None)
    if every is None:
        raise ConversionError(
            f"config.json makes encoder blocks {_indices(theirs[0])} and decoder blocks {_indices(theirs[1])} "
            "sparse: pretrainer makes blocks 1, 1 + k, 1 + 2k, ... of both stacks sparse (model.moe_every=k)"
        )
    return {
        "max_seq_len": hf.get("n_positions") or 512,
        "decoder_start_id": hf.get("decoder_start_token_id") or 0,
        "moe_every": every,
        "moe_capacity_factor": hf["expert_capacity"] * hf["num_experts"] / 512,
        "head_scale": hf["tie_word_embeddings"],
    }


def _hf_sparse_blocks(n_layer: int, sparse: int) -> list[bool]:
    """Which of a stack's blocks transformers makes sparse: i % step == 1 (all when step is 1), step = layers //
    sparse layers, or layers itself when there are none (which still makes block 1 sparse: their code's quirk)."""
    step = n_layer // sparse if sparse else n_layer
    return [i % step == 1 or step == 1 for i in range(n_layer)]


def _indices(flags: list[bool]) -> str:
    return ", ".join(str(i) for i, flag in enumerate(flags) if flag) or "none"


def _switch_to_hf(c: ModelConfig) -> dict:
    t5 = {k: v for k, v in _t5_to_hf(c).items() if k not in ("feed_forward_proj", "scale_decoder_outputs")}
    return t5 | {
        "num_sparse_encoder_layers": _sparse_layers(c, c.n_layer),
        "num_sparse_decoder_layers": _sparse_layers(c, c.n_decoder_layer),
        "expert_capacity": math.ceil(c.moe_capacity_factor * 512 / c.moe_experts),
        "router_bias": False,
        "router_dtype": "float32",
        "router_jitter_noise": 0.0,
        "dense_act_fn": _ACT_TO_HF[c.activation],
    }


def _switch_needs(c: ModelConfig) -> list[str]:
    needs = ["model.moe_experts > 1"] if not c.moe_experts else []
    for name, n_layer in (("encoder", c.n_layer), ("decoder", c.n_decoder_layer)):
        ours = [c.is_sparse(i) for i in range(n_layer)]
        if ours != _hf_sparse_blocks(n_layer, sum(ours)):
            needs.append(f"sparse {name} blocks where transformers' rule puts them (not {_indices(ours)})")
    return needs + (["n_kv_head == n_head"] if c.n_kv_head != c.n_head else [])


SWITCH = Family(
    name="switch_transformers",
    architecture="SwitchTransformersForConditionalGeneration",
    fixes=T5.fixes | {"gated_mlp": False, "head_scale": True},  # transformers rescales its (tied) head, as T5 v1.0
    keys={
        **T5.keys,
        "moe_experts": "num_experts",
        "moe_aux_loss": "router_aux_loss_coef",
        "moe_z_loss": "router_z_loss_coef",
    },
    activation_key="dense_act_fn",
    defaults=T5.defaults
    | {
        "dense_act_fn": "relu",
        "router_bias": False,
        "expert_capacity": 64,
        "num_sparse_encoder_layers": 3,
        "num_sparse_decoder_layers": 3,
        "router_aux_loss_coef": 0.001,
        "router_z_loss_coef": 0.001,
    },
    rows=lambda c: _t5_rows(c, _switch_mlp_rows),
    special_tokens=T5.special_tokens,
    from_hf=_switch_from_hf,
    to_hf=_switch_to_hf,
    needs=_switch_needs,
    holds=frozenset({"experts"}),
)


def _electra_rows(c: ModelConfig) -> Iterator[Row]:
    yield from _bert_embedding_rows(c, "electra.embeddings.")
    if c.embedding_dim:
        for p in ("weight", "bias"):
            yield _row(f"emb_proj.{p}", f"electra.embeddings_project.{p}")
    for i in range(c.n_layer):
        yield from _bert_layer_rows(f"blocks.{i}.", f"electra.encoder.layer.{i}.")
    if c.head == "rtd":
        for p in ("weight", "bias"):
            yield _row(f"rtd_dense.{p}", f"discriminator_predictions.dense.{p}")
            yield _row(f"rtd_out.{p}", f"discriminator_predictions.dense_prediction.{p}")
    else:
        yield from _mlm_rows(c, "generator_predictions.dense", "generator_predictions.LayerNorm",
                             "generator_lm_head.bias", None)  # fmt: skip


def _electra_from_hf(hf: dict) -> dict:
    # transformers projects the embeddings only when they are narrower or wider than the layers
    width = hf["embedding_size"]
    return {"type_vocab_size": hf["type_vocab_size"], "embedding_dim": None if width == hf["hidden_size"] else width}


def _electra_needs(c: ModelConfig) -> list[str]:
    same = ["embedding_dim unset or other than d_model (transformers projects only then)"]
    return (same if c.embedding_dim == c.d_model else []) + _plain_heads(c)


def _electra(head: str, architecture: str, key: str) -> Family:
    return Family(
        name="electra",
        key=key,
        architecture=architecture,
        fixes={
            **_FACTORISABLE_ENCODER,
            "head": head,
            "pooler": False,
            "nsp_head": False,
        },
        keys={**_BERT_KEYS, "max_seq_len": "max_position_embeddings"},
        activation_key="hidden_act",
        defaults={"layer_norm_eps": 1e-12, "tie_word_embeddings": True, "type_vocab_size": 2, "embedding_size": 128},
        rows=_electra_rows,
        special_tokens=BERT.special_tokens,
        from_hf=_electra_from_hf,
        to_hf=lambda c: {
            "type_vocab_size": max(c.type_vocab_size, 1),
            "embedding_size": c.embedding_dim or c.d_model,
            "hidden_dropout_prob": c.dropout,
            "attention_probs_dropout_prob": c.dropout,
        },
        optional=_BERT_OPTIONAL,
        needs=_electra_needs,
        bare_prefix="electra.",
    )


# ELECTRA's discriminator (`model.head=rtd`, the model its pretraining keeps) and its generator (an MLM)
ELECTRA = _electra("rtd", "ElectraForPreTraining", "electra")
ELECTRA_GENERATOR = _electra("lm", "ElectraForMaskedLM", "electra-generator")
FAMILIES = {
    f.id: f
    for f in (GPT2, GPT_NEO, LLAMA, BERT, ROBERTA, ALBERT, DISTILBERT, ELECTRA, ELECTRA_GENERATOR, T5, SWITCH, BART)
}


def _family_of_hf(hf: dict) -> Family:
    """The record for a config.json: by its model_type, and by its architecture where a model_type has two."""
    kinds = [f for f in FAMILIES.values() if f.name == hf.get("model_type")]
    if not kinds:
        names = ", ".join(dict.fromkeys(f.name for f in FAMILIES.values()))
        raise ConversionError(
            f"unsupported architecture '{hf.get('model_type')}' in config.json; pretrainer converts {names}"
        )
    architectures = hf.get("architectures") or []
    return next((f for f in kinds if f.architecture in architectures), kinds[0])


def config_from_hf(hf: dict) -> ModelConfig:
    """Our ModelConfig for a `transformers` config.json (as a dict)."""
    family = _family_of_hf(hf)
    hf = family.defaults | hf
    try:
        fields = family.fixes | {ours: hf[theirs] for ours, theirs in family.keys.items()}
        if family.activation_key is not None:
            fields["activation"] = _activation(hf[family.activation_key])
        fields |= family.from_hf(hf)
    except KeyError as e:
        raise ConversionError(
            f"a {family.name} config.json needs '{e.args[0]}'; use the config.json the weights came with"
        ) from None
    for name, value in fields.items():
        where = f"'{family.keys[name]}' in config.json" if name in family.keys else f"config.json's model.{name}"
        fields[name] = _typed(name, value, where)
    try:
        return ModelConfig(**fields).resolved()
    except ConfigError as e:
        raise ConversionError(f"config.json describes a model pretrainer cannot build: {e}") from None


_FIELD_TYPES = typing.get_type_hints(ModelConfig)
_TYPE_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string", type(None): "null"}


def _typed(name: str, value, where: str):
    """`value` for our field `name` if JSON gave it the field's type; an integer stands for a float too."""
    types = typing.get_args(_FIELD_TYPES[name]) or (_FIELD_TYPES[name],)
    if type(value) in types:  # not isinstance: true is no integer here
        return value
    if type(value) is int and float in types:
        return float(value)
    raise ConversionError(f"{where} is {value!r}, not {' or '.join(_TYPE_NAMES[t] for t in types)}; fix config.json")


def _activation(theirs) -> str:
    if not isinstance(theirs, str) or theirs not in _HF_ACT:
        raise ConversionError(
            f"unsupported activation {theirs!r} in config.json; pretrainer reads {', '.join(_HF_ACT)}"
        )
    return _HF_ACT[theirs]


def family_of(config: ModelConfig) -> str:
    """The `transformers` family that can hold a model of this config, or a ConversionError saying why none."""
    c = config.resolved()
    if c.attention_only:
        raise ConversionError("model.attention_only has no transformers family to export to: all of them have MLPs")
    if c.head not in ("lm", "rtd"):
        raise ConversionError(
            f"model.head={c.head} has no transformers family here: pretrained models (model.head=lm or rtd) "
            "convert, fine-tuned heads do not yet"
        )
    candidates = [f for f in FAMILIES.values() if (f.fixes["arch"], f.fixes["positions"]) == (c.arch, c.positions)]
    if not candidates:
        raise ConversionError(f"no transformers family holds a {c.arch} model with {c.positions} positions")
    needs = {
        f.id: [f"{k}={v!r}" for k, v in f.fixes.items() if getattr(c, k) != v] + _sparse_needs(f, c) + f.needs(c)
        for f in candidates
    }
    name = min(needs, key=lambda name: len(needs[name]))  # the first that fits, or the nearest
    if needs[name]:
        raise ConversionError(f"this {c.arch} model cannot be exported as {name}: it needs {', '.join(needs[name])}")
    return name


def _sparse_needs(family: Family, c: ModelConfig) -> list[str]:
    needs = [] if "experts" in family.holds or not c.moe_experts else ["moe_experts=0 (no mixture of experts)"]
    banded = "banded attention" in family.holds or c.attention_pattern == "dense"
    return needs + ([] if banded else ["attention_pattern='dense'"])


def config_to_hf(config: ModelConfig) -> dict:
    """A `transformers` config.json (as a dict) for our ModelConfig."""
    family = FAMILIES[family_of(config)]
    c = config.resolved()
    hf = {"model_type": family.name, "architectures": [family.architecture]}
    hf |= {theirs: getattr(c, ours) for ours, theirs in family.keys.items()}
    if family.activation_key is not None:
        hf[family.activation_key] = _ACT_TO_HF[c.activation]
    return hf | family.to_hf(c)


def state_dict_from_hf(family: str, hf: dict[str, torch.Tensor], config: ModelConfig) -> tuple[dict, list[str]]:
    """(our state dict, notes on what the checkpoint lacked) from a `transformers` state dict."""
    fam = FAMILIES[family]
    if fam.bare_prefix and not any(k.startswith(fam.bare_prefix) for k in hf):
        hf = {fam.bare_prefix + k: v for k, v in hf.items()}
    out, missing = {}, []
    for ours, theirs, transpose in fam.rows(config.resolved()):
        if not all(t in hf for t in theirs):
            optional = fam.optional.get(ours.split(".")[0])
            if optional is None:
                raise ConversionError(f"the checkpoint lacks '{theirs[0]}', which a {family} model needs")
            missing.append(optional)
            continue
        tensor = torch.cat([hf[t] for t in theirs], dim=0) if len(theirs) > 1 else hf[theirs[0]]
        out[ours] = tensor.t() if transpose else tensor
    notes = [f"the checkpoint has no {part}: initialised one fresh" for part in dict.fromkeys(missing)]
    return out, notes


def state_dict_to_hf(family: str, ours: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    config = config.resolved()
    out = {}
    for key, theirs, transpose in FAMILIES[family].rows(config):
        tensor = ours[key].t() if transpose else ours[key]
        sizes = None
        if len(theirs) > 1:
            q, kv = config.n_head * config.head_dim, config.n_kv_head * config.head_dim
            sizes = {3: [q, kv, kv]}.get(len(theirs), [tensor.shape[0] // 2] * 2)
        for name, part in zip(theirs, tensor.split(sizes) if sizes else (tensor,), strict=True):
            out[name] = part.contiguous().clone()
    return out


def tokenizer_config(family: str, tokenizer) -> dict:
    """tokenizer_config.json for a `tokenizers` Tokenizer exported with a model of this family."""
    special = {t.content for t in tokenizer.get_added_tokens_decoder().values()}
    tokens = FAMILIES[family].special_tokens
    return {"tokenizer_class": "PreTrainedTokenizerFast"} | {k: v for k, v in tokens.items() if v in special}


def model_from_hf(hf_config: dict, tensors: dict[str, torch.Tensor]) -> tuple[torch.nn.Module, list[str]]:
    """(our model in eval mode, notes on what the checkpoint lacked) from a `transformers` config and state dict."""
    from . import build_model

    config = config_from_hf(hf_config)
    family = _family_of_hf(hf_config)
    state, notes = state_dict_from_hf(family.id, tensors, config)
    embedding = state["tok_emb.weight"]
    if embedding.shape[0] != config.vocab_size:
        raise ConversionError(
            f"mismatched vocab sizes: config.json says {config.vocab_size} but the embeddings have "
            f"{embedding.shape[0]} rows"
        )
    model = build_model(config)
    expected = model.state_dict()
    for key, tensor in state.items():
        if key in expected and tensor.shape != expected[key].shape:
            raise ConversionError(
                f"the weights do not fit config.json: {key} is {tuple(tensor.shape)} where config.json makes it "
                f"{tuple(expected[key].shape)}; use the config.json the weights came with"
            )
    result = model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    tied = {"lm_head.weight", "mlm_decoder.weight"} if config.tie_embeddings else set()
    missing = [k for k in result.missing_keys if k not in tied and k.split(".")[0] not in family.optional]
    if missing or result.unexpected_keys:
        raise ConversionError(f"weights do not fit: missing {missing}, unexpected {result.unexpected_keys}")
    return model.eval(), notes
