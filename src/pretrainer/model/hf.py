"""Hugging Face `transformers` checkpoints, both ways: GPT-2, Llama, BERT and T5.

Each family is data, read one way to import and the other to export: the config fields it fixes, its
config.json key names, and one table of tensor keys. Dicts and tensors in, dicts and tensors out: reading and
writing files is `pretrainer.convert`'s part.
"""

from __future__ import annotations

import torch

from ..config import ModelConfig
from ..errors import ConversionError

FAMILIES = ("gpt2", "llama", "bert", "t5")
ARCHITECTURES = {
    "gpt2": "GPT2LMHeadModel",
    "llama": "LlamaForCausalLM",
    "bert": "BertForMaskedLM",
    "t5": "T5ForConditionalGeneration",
}
_HF_ACT = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu", "silu": "silu"}


def _unsupported(kind) -> ConversionError:
    return ConversionError(
        f"unsupported architecture '{kind}' in config.json; pretrainer converts {', '.join(FAMILIES)}"
    )


def _rope_theta(hf: dict) -> float:
    # transformers 5 moved rope_theta into rope_parameters
    return float(hf.get("rope_theta") or (hf.get("rope_parameters") or {}).get("rope_theta", 10000.0))


# What each family fixes in our ModelConfig: set on import, required on export.
_FAMILY_FIELDS = {
    "gpt2": dict(
        arch="decoder", positions="learned", norm="layernorm", norm_position="pre", gated_mlp=False, bias=True
    ),
    "llama": dict(arch="decoder", positions="rope", norm="rmsnorm", norm_position="pre", gated_mlp=True, bias=False),
    "bert": dict(
        arch="encoder", positions="learned", norm="layernorm", norm_position="post", gated_mlp=False, bias=True
    ),
    "t5": dict(
        arch="encoder_decoder",
        positions="relative",
        norm="rmsnorm",
        norm_position="pre",
        bias=False,
        scale_attention=False,
        tie_embeddings=True,  # transformers 5 always ties T5's head
    ),
}
# Config fields that are plain renames: our ModelConfig field -> their config.json key, common to all families,
# then per family. Read one way to import, the other to export; conversions are written out in the functions.
_COMMON_KEYS = {"vocab_size": "vocab_size", "tie_embeddings": "tie_word_embeddings"}
_CONFIG_KEYS = {
    "gpt2": {
        "n_layer": "n_layer",
        "n_head": "n_head",
        "d_model": "n_embd",
        "d_ff": "n_inner",
        "max_seq_len": "n_positions",
        "norm_eps": "layer_norm_epsilon",
    },
    "llama": {
        "n_layer": "num_hidden_layers",
        "n_head": "num_attention_heads",
        "n_kv_head": "num_key_value_heads",
        "head_dim": "head_dim",
        "d_model": "hidden_size",
        "d_ff": "intermediate_size",
        "max_seq_len": "max_position_embeddings",
        "norm_eps": "rms_norm_eps",
    },
    "bert": {
        "n_layer": "num_hidden_layers",
        "n_head": "num_attention_heads",
        "d_model": "hidden_size",
        "d_ff": "intermediate_size",
        "max_seq_len": "max_position_embeddings",
        "norm_eps": "layer_norm_eps",
    },
    "t5": {
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
}
_ACTIVATION_KEY = {
    "gpt2": "activation_function",
    "llama": "hidden_act",
    "bert": "hidden_act",
    "t5": "feed_forward_proj",  # "relu", "gelu" or "gated-gelu" (T5 v1.1), ...
}
# transformers' defaults for the keys above that a config.json may leave out
_CONFIG_DEFAULTS = {
    "gpt2": {
        "n_inner": None,
        "layer_norm_epsilon": 1e-5,
        "activation_function": "gelu_new",
        "tie_word_embeddings": True,
    },
    "llama": {
        "num_key_value_heads": None,
        "head_dim": None,
        "rms_norm_eps": 1e-6,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
    },
    "bert": {"layer_norm_eps": 1e-12, "tie_word_embeddings": True, "type_vocab_size": 2},
    "t5": {
        "tie_word_embeddings": True,
        "num_decoder_layers": None,
        "relative_attention_num_buckets": 32,
        "relative_attention_max_distance": 128,
        "layer_norm_epsilon": 1e-6,
        "feed_forward_proj": "relu",
    },
}


def config_from_hf(hf: dict) -> ModelConfig:
    """Our ModelConfig for a `transformers` config.json (as a dict)."""
    kind = hf.get("model_type")
    if kind not in _CONFIG_KEYS:
        raise _unsupported(kind)
    hf = _CONFIG_DEFAULTS[kind] | hf
    fields = _FAMILY_FIELDS[kind] | {ours: hf[theirs] for ours, theirs in (_COMMON_KEYS | _CONFIG_KEYS[kind]).items()}
    activation = hf[_ACTIVATION_KEY[kind]]
    if kind == "llama":
        fields["rope_theta"] = _rope_theta(hf)
    elif kind == "bert":
        fields["type_vocab_size"] = hf["type_vocab_size"]
    elif kind == "t5":
        activation = activation.removeprefix("gated-")
        activation = "gelu_new" if activation == "gelu" else activation  # T5's GELU is the tanh one
        fields |= dict(
            gated_mlp=hf["feed_forward_proj"].startswith("gated-"),
            max_seq_len=hf.get("n_positions") or 512,
            # transformers 5 always ties T5's head and says with scale_decoder_outputs whether it rescales
            head_scale=hf.get("scale_decoder_outputs", hf["tie_word_embeddings"]),
            decoder_start_id=hf.get("decoder_start_token_id") or 0,
        )
    return ModelConfig(**fields, activation=_HF_ACT[activation]).resolved()


def family_of(config: ModelConfig) -> str:
    """The `transformers` family that can hold a model of this config, or a ConversionError saying why none."""
    c = config.resolved()
    families = {("decoder", "learned"): "gpt2", ("decoder", "rope"): "llama"}
    family = {"encoder": "bert", "encoder_decoder": "t5"}.get(c.arch) or families.get((c.arch, c.positions))
    if family is None:
        raise ConversionError(f"no transformers family holds a {c.arch} model with {c.positions} positions")
    needs = [f"{k}={v!r}" for k, v in _FAMILY_FIELDS[family].items() if getattr(c, k) != v]
    if family == "gpt2":
        if c.activation not in ("gelu", "gelu_tanh", "relu"):
            needs.append("a GELU or ReLU activation")
        if c.n_kv_head != c.n_head or c.head_dim * c.n_head != c.d_model:
            needs.append("n_kv_head == n_head and head_dim == d_model / n_head")
    if needs:
        raise ConversionError(f"this {c.arch} model cannot be exported as {family}: it needs {', '.join(needs)}")
    return family


def config_to_hf(config: ModelConfig) -> dict:
    """A `transformers` config.json (as a dict) for our ModelConfig."""
    family = family_of(config)
    c = config.resolved()
    act = {v: k for k, v in _HF_ACT.items() if k != "gelu_pytorch_tanh"}[c.activation]
    hf = {"model_type": family, "architectures": [ARCHITECTURES[family]]}
    hf |= {theirs: getattr(c, ours) for ours, theirs in (_COMMON_KEYS | _CONFIG_KEYS[family]).items()}
    hf[_ACTIVATION_KEY[family]] = act
    if family == "gpt2":
        return hf | {"resid_pdrop": c.dropout, "embd_pdrop": c.dropout, "attn_pdrop": c.dropout}
    if family == "llama":
        return hf | {"rope_theta": c.rope_theta}
    if family == "bert":
        return hf | {
            "type_vocab_size": max(c.type_vocab_size, 1),
            "hidden_dropout_prob": c.dropout,
            "attention_probs_dropout_prob": c.dropout,
        }
    return hf | {
        "feed_forward_proj": ("gated-gelu" if c.gated_mlp else act),
        "scale_decoder_outputs": c.head_scale,
        "decoder_start_token_id": c.decoder_start_id,
        "pad_token_id": c.decoder_start_id,
        "eos_token_id": 1,
        "dropout_rate": c.dropout,
        "is_encoder_decoder": True,
        "n_positions": c.max_seq_len,
    }


# One row per tensor of ours: (our key, their key(s) concatenated along dim 0, transpose?). GPT-2 keeps its
# linear layers as Conv1D, whose weight is the transpose of nn.Linear's.
Row = tuple[str, tuple[str, ...], bool]


def _rows(family: str, c: ModelConfig) -> list[Row]:
    rows: list[Row] = []

    def add(ours, *theirs, transpose=False):
        rows.append((ours, theirs, transpose))

    if family == "gpt2":
        add("tok_emb.weight", "transformer.wte.weight")
        add("pos_emb.weight", "transformer.wpe.weight")
        for p in ("weight", "bias"):
            add(f"norm_f.{p}", f"transformer.ln_f.{p}")
        for i in range(c.n_layer):
            h = f"transformer.h.{i}."
            for ours, theirs in (("norm1", "ln_1"), ("norm2", "ln_2")):
                for p in ("weight", "bias"):
                    add(f"blocks.{i}.{ours}.{p}", f"{h}{theirs}.{p}")
            for ours, theirs in (
                ("attn.qkv", "attn.c_attn"),
                ("attn.proj", "attn.c_proj"),
                ("mlp.fc", "mlp.c_fc"),
                ("mlp.proj", "mlp.c_proj"),
            ):
                add(f"blocks.{i}.{ours}.weight", f"{h}{theirs}.weight", transpose=True)
                add(f"blocks.{i}.{ours}.bias", f"{h}{theirs}.bias")
    elif family == "llama":
        add("tok_emb.weight", "model.embed_tokens.weight")
        add("norm_f.weight", "model.norm.weight")
        for i in range(c.n_layer):
            h = f"model.layers.{i}."
            add(f"blocks.{i}.norm1.weight", h + "input_layernorm.weight")
            add(f"blocks.{i}.norm2.weight", h + "post_attention_layernorm.weight")
            add(f"blocks.{i}.attn.qkv.weight", *(h + f"self_attn.{x}_proj.weight" for x in "qkv"))
            add(f"blocks.{i}.attn.proj.weight", h + "self_attn.o_proj.weight")
            add(f"blocks.{i}.mlp.fc.weight", h + "mlp.gate_proj.weight", h + "mlp.up_proj.weight")
            add(f"blocks.{i}.mlp.proj.weight", h + "mlp.down_proj.weight")
    elif family == "bert":
        e = "bert.embeddings."
        add("tok_emb.weight", e + "word_embeddings.weight")
        add("pos_emb.weight", e + "position_embeddings.weight")
        if c.type_vocab_size:
            add("type_emb.weight", e + "token_type_embeddings.weight")
        for p in ("weight", "bias"):
            add(f"emb_norm.{p}", e + f"LayerNorm.{p}")
        for i in range(c.n_layer):
            h = f"bert.encoder.layer.{i}."
            for p in ("weight", "bias"):
                add(f"blocks.{i}.attn.qkv.{p}", *(h + f"attention.self.{x}.{p}" for x in ("query", "key", "value")))
                add(f"blocks.{i}.attn.proj.{p}", h + f"attention.output.dense.{p}")
                add(f"blocks.{i}.norm1.{p}", h + f"attention.output.LayerNorm.{p}")
                add(f"blocks.{i}.mlp.fc.{p}", h + f"intermediate.dense.{p}")
                add(f"blocks.{i}.mlp.proj.{p}", h + f"output.dense.{p}")
                add(f"blocks.{i}.norm2.{p}", h + f"output.LayerNorm.{p}")
        for p in ("weight", "bias"):
            add(f"mlm_dense.{p}", f"cls.predictions.transform.dense.{p}")
            add(f"mlm_norm.{p}", f"cls.predictions.transform.LayerNorm.{p}")
            add(f"pooler.{p}", f"bert.pooler.dense.{p}")
            if c.nsp_head:
                add(f"nsp.{p}", f"cls.seq_relationship.{p}")
        add("mlm_bias", "cls.predictions.bias")
    elif family == "t5":
        add("tok_emb.weight", "shared.weight")
        for stack, n_layer in (("encoder", c.n_layer), ("decoder", c.n_decoder_layer)):
            add(
                f"{stack}.rel_bias.embedding.weight",
                f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
            )
            add(f"{stack}.norm_f.weight", f"{stack}.final_layer_norm.weight")
            for i in range(n_layer):
                ours, h = f"{stack}.blocks.{i}.", f"{stack}.block.{i}.layer."
                ff = 2 if stack == "decoder" else 1
                add(ours + "norm1.weight", h + "0.layer_norm.weight")
                add(ours + "attn.qkv.weight", *(h + f"0.SelfAttention.{x}.weight" for x in "qkv"))
                add(ours + "attn.proj.weight", h + "0.SelfAttention.o.weight")
                if stack == "decoder":
                    add(ours + "norm_cross.weight", h + "1.layer_norm.weight")
                    add(ours + "cross_attn.q.weight", h + "1.EncDecAttention.q.weight")
                    add(
                        ours + "cross_attn.kv.weight",
                        h + "1.EncDecAttention.k.weight",
                        h + "1.EncDecAttention.v.weight",
                    )
                    add(ours + "cross_attn.proj.weight", h + "1.EncDecAttention.o.weight")
                add(ours + "norm2.weight", h + f"{ff}.layer_norm.weight")
                wi = ("wi_0", "wi_1") if c.gated_mlp else ("wi",)
                add(ours + "mlp.fc.weight", *(h + f"{ff}.DenseReluDense.{w}.weight" for w in wi))
                add(ours + "mlp.proj.weight", h + f"{ff}.DenseReluDense.wo.weight")
    else:
        raise _unsupported(family)
    if not c.tie_embeddings and family != "bert":
        add("lm_head.weight", "lm_head.weight")
    return rows


# Tensors a real checkpoint may lack: ours keep their fresh init and the import says so.
_MLM_HEAD = "MLM head (its decoder is tied to the word embeddings, as in BERT)"
_OPTIONAL = {
    "bert": {
        "mlm_dense": _MLM_HEAD,
        "mlm_norm": _MLM_HEAD,
        "mlm_bias": _MLM_HEAD,
        "pooler": "pooler",
        "nsp": "NSP head",
    }
}


def state_dict_from_hf(family: str, hf: dict[str, torch.Tensor], config: ModelConfig) -> tuple[dict, list[str]]:
    """(our state dict, notes on what the checkpoint lacked) from a `transformers` state dict."""
    if family == "bert" and not any(k.startswith("bert.") for k in hf):
        hf = {"bert." + k: v for k, v in hf.items()}  # a bare BertModel (no heads), as sentence encoders ship
    config = config.resolved()
    out, missing = {}, []
    for ours, theirs, transpose in _rows(family, config):
        if not all(t in hf for t in theirs):
            optional = _OPTIONAL.get(family, {}).get(ours.split(".")[0])
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
    for key, theirs, transpose in _rows(family, config):
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
    pick = {
        "gpt2": {"eos_token": "<|endoftext|>", "bos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"},
        "llama": {"eos_token": "<|endoftext|>"},
        "bert": {
            "cls_token": "[CLS]",
            "sep_token": "[SEP]",
            "mask_token": "[MASK]",
            "pad_token": "[PAD]",
            "unk_token": "[UNK]",
        },
        "t5": {"eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"},
    }[family]
    return {"tokenizer_class": "PreTrainedTokenizerFast"} | {k: v for k, v in pick.items() if v in special}


def model_from_hf(hf_config: dict, tensors: dict[str, torch.Tensor]) -> tuple[torch.nn.Module, list[str]]:
    """(our model in eval mode, notes on what the checkpoint lacked) from a `transformers` config and state dict."""
    from . import build_model

    config = config_from_hf(hf_config)
    family = hf_config["model_type"]
    state, notes = state_dict_from_hf(family, tensors, config)
    embedding = state["tok_emb.weight"]
    if embedding.shape[0] != config.vocab_size:
        raise ConversionError(
            f"mismatched vocab sizes: config.json says {config.vocab_size} but the embeddings have "
            f"{embedding.shape[0]} rows"
        )
    model = build_model(config)
    result = model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    unexpected_missing = [k for k in result.missing_keys if not _is_optional(family, k, config)]
    if unexpected_missing or result.unexpected_keys:
        raise ConversionError(f"weights do not fit: missing {unexpected_missing}, unexpected {result.unexpected_keys}")
    return model.eval(), notes


def _is_optional(family: str, key: str, config: ModelConfig) -> bool:
    tied = {"lm_head.weight", "mlm_decoder.weight"} if config.tie_embeddings else set()
    return key in tied or key.split(".")[0] in _OPTIONAL.get(family, {})
