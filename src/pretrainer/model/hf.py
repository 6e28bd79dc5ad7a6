"""State-dict adapters between Hugging Face `transformers` checkpoints and this library's models.

Each family is a config translation plus a key map; `transformers` itself is never imported here, so
the training path does not depend on it.
"""

from __future__ import annotations

import torch

from ..config import ModelConfig

FAMILIES = ("gpt2", "llama")


def config_from_hf(hf: dict) -> ModelConfig:
    """Our ModelConfig for a `transformers` config.json (as a dict)."""
    kind = hf.get("model_type")
    if kind == "gpt2":
        return ModelConfig(
            vocab_size=hf["vocab_size"],
            n_layer=hf["n_layer"],
            n_head=hf["n_head"],
            d_model=hf["n_embd"],
            d_ff=hf.get("n_inner") or 4 * hf["n_embd"],
            max_seq_len=hf["n_positions"],
            positions="learned",
            norm="layernorm",
            norm_eps=hf.get("layer_norm_epsilon", 1e-5),
            activation="gelu_tanh",
            gated_mlp=False,
            bias=True,
            tie_embeddings=hf.get("tie_word_embeddings", True),
        )
    if kind == "llama":
        return ModelConfig(
            vocab_size=hf["vocab_size"],
            n_layer=hf["num_hidden_layers"],
            n_head=hf["num_attention_heads"],
            n_kv_head=hf.get("num_key_value_heads"),
            d_model=hf["hidden_size"],
            d_ff=hf["intermediate_size"],
            max_seq_len=hf["max_position_embeddings"],
            positions="rope",
            rope_theta=_rope_theta(hf),
            norm="rmsnorm",
            norm_eps=hf.get("rms_norm_eps", 1e-6),
            activation="silu",
            gated_mlp=True,
            bias=False,
            tie_embeddings=hf.get("tie_word_embeddings", False),
        )
    raise ValueError(f"unsupported architecture '{kind}' in config.json; pretrainer converts {', '.join(FAMILIES)}")


def _rope_theta(hf: dict) -> float:
    # transformers 5 moved rope_theta into rope_parameters
    return float(hf.get("rope_theta") or (hf.get("rope_parameters") or {}).get("rope_theta", 10000.0))


def state_dict_from_hf(kind: str, hf: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """Our state dict from a `transformers` one of family `kind`."""
    out: dict[str, torch.Tensor] = {}
    if kind == "gpt2":
        sd = {k.removeprefix("transformer."): v for k, v in hf.items()}
        out["tok_emb.weight"] = sd["wte.weight"]
        out["pos_emb.weight"] = sd["wpe.weight"]
        out["norm_f.weight"], out["norm_f.bias"] = sd["ln_f.weight"], sd["ln_f.bias"]
        # GPT-2 stores its linear layers as Conv1D: weight is (in, out), the transpose of nn.Linear's
        conv = {"attn.c_attn": "attn.qkv", "attn.c_proj": "attn.proj", "mlp.c_fc": "mlp.fc", "mlp.c_proj": "mlp.proj"}
        for i in range(config.n_layer):
            for ours, theirs in (("norm1", "ln_1"), ("norm2", "ln_2")):
                for p in ("weight", "bias"):
                    out[f"blocks.{i}.{ours}.{p}"] = sd[f"h.{i}.{theirs}.{p}"]
            for theirs, ours in conv.items():
                out[f"blocks.{i}.{ours}.weight"] = sd[f"h.{i}.{theirs}.weight"].t()
                out[f"blocks.{i}.{ours}.bias"] = sd[f"h.{i}.{theirs}.bias"]
        out["lm_head.weight"] = sd.get("lm_head.weight", sd["wte.weight"])
        return out
    if kind == "llama":
        sd = {k.removeprefix("model."): v for k, v in hf.items()}
        out["tok_emb.weight"] = sd["embed_tokens.weight"]
        out["norm_f.weight"] = sd["norm.weight"]
        for i in range(config.n_layer):
            p = f"layers.{i}."
            out[f"blocks.{i}.norm1.weight"] = sd[p + "input_layernorm.weight"]
            out[f"blocks.{i}.norm2.weight"] = sd[p + "post_attention_layernorm.weight"]
            out[f"blocks.{i}.attn.qkv.weight"] = torch.cat([sd[p + f"self_attn.{x}_proj.weight"] for x in "qkv"], dim=0)
            out[f"blocks.{i}.attn.proj.weight"] = sd[p + "self_attn.o_proj.weight"]
            out[f"blocks.{i}.mlp.fc.weight"] = torch.cat(
                [sd[p + "mlp.gate_proj.weight"], sd[p + "mlp.up_proj.weight"]], dim=0
            )
            out[f"blocks.{i}.mlp.proj.weight"] = sd[p + "mlp.down_proj.weight"]
        out["lm_head.weight"] = hf.get("lm_head.weight", sd["embed_tokens.weight"])
        return out
    raise ValueError(f"unsupported architecture '{kind}'; pretrainer converts {', '.join(FAMILIES)}")
