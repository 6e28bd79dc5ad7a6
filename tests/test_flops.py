"""Parameter and FLOP accounting from a config (scaling/flops.py): counts against the built models, FLOPs against
hand counts and torch's FLOP counter, the trainer's MFU numerator, and GPU peaks by exact name."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from pretrainer.config import ModelConfig, load_config
from pretrainer.data.objectives import t5_lengths
from pretrainer.model import build_model
from pretrainer.scaling.flops import count_params, gpu_peak, kaplan_flops_per_token, matmul_params, model_flops
from pretrainer.train.trainer import Trainer
from tests.conftest import tiny_overrides

SMALL = dict(vocab_size=128, n_layer=2, d_model=32, n_head=4, max_seq_len=16)
KINDS = {
    "gpt": ModelConfig(arch="decoder", **SMALL),
    "llama": ModelConfig(
        arch="decoder",
        n_kv_head=2,
        positions="rope",
        norm="rmsnorm",
        gated_mlp=True,
        activation="silu",
        bias=False,
        tie_embeddings=False,
        **SMALL,
    ),  # fmt: skip
    "attention-only": ModelConfig(arch="decoder", attention_only=True, **SMALL),
    # experts with room for every token (capacity factor = experts), so every token meets one expert
    "gpt-moe": ModelConfig(arch="decoder", moe_experts=4, moe_capacity_factor=4.0, **SMALL),
    "gpt-neo": ModelConfig(
        arch="decoder", attention_bias=False, attention_pattern="alternating", attention_window=4, **SMALL
    ),
    "decoder-classifier": ModelConfig(arch="decoder", head="sequence", n_labels=3, **SMALL),
    "bert": ModelConfig(arch="encoder", type_vocab_size=2, nsp_head=True, norm_position="post", **SMALL),
    "bert-untied": ModelConfig(arch="encoder", tie_embeddings=False, **SMALL),
    "bert-tagger": ModelConfig(arch="encoder", head="token", n_labels=5, **SMALL),
    "bert-qa": ModelConfig(arch="encoder", head="span", **SMALL),
    "roberta": ModelConfig(arch="encoder", type_vocab_size=1, position_offset=2, norm_position="post", **SMALL),
    "albert": ModelConfig(
        arch="encoder",
        type_vocab_size=2,
        embedding_dim=8,
        share_layers=True,
        nsp_head=True,
        norm_position="post",
        **SMALL,
    ),  # fmt: skip
    "albert-untied": ModelConfig(arch="encoder", embedding_dim=48, tie_embeddings=False, **SMALL),
    "distilbert": ModelConfig(arch="encoder", pooler=False, norm_position="post", **SMALL),
    "spanbert": ModelConfig(arch="encoder", sbo_head=True, embedding_dim=16, **SMALL),
    "electra": ModelConfig(arch="encoder", head="rtd", generator_fraction=0.25, type_vocab_size=2, **SMALL),
    "electra-discriminator": ModelConfig(arch="encoder", head="rtd", embedding_dim=16, **SMALL),
    "t5": ModelConfig(
        arch="encoder_decoder",
        positions="relative",
        norm="rmsnorm",
        bias=False,
        n_decoder_layer=1,
        **{k: v for k, v in SMALL.items() if k != "max_seq_len"},
    ),  # fmt: skip
    "t5-v1.1": ModelConfig(
        arch="encoder_decoder",
        positions="relative",
        norm="rmsnorm",
        bias=False,
        gated_mlp=True,
        activation="gelu_tanh",
        tie_embeddings=False,
        **SMALL,
    ),  # fmt: skip
}
KINDS["bart"] = ModelConfig(
    arch="encoder_decoder", positions="learned", position_offset=2, norm_position="post", n_decoder_layer=1, **SMALL
)
KINDS["switch"] = ModelConfig(**{**KINDS["t5"].__dict__, "moe_experts": 4, "moe_every": 1, "moe_capacity_factor": 4.0})


def _vocabulary_and_positions(model: nn.Module) -> int:
    """What Kaplan leaves out of N, read off the module: lookup tables, the output head's vocabulary matrix (once,
    when tied) and its bias."""
    tensors = {id(m.weight): m.weight for m in model.modules() if isinstance(m, nn.Embedding)}
    for part in model.modules():  # an ELECTRA's generator has its own MLM head
        for name in ("lm_head", "mlm_decoder"):
            if hasattr(part, name):
                tensors[id(getattr(part, name).weight)] = getattr(part, name).weight
        if hasattr(part, "mlm_bias"):
            tensors[id(part.mlm_bias)] = part.mlm_bias
    return sum(t.numel() for t in tensors.values())


@pytest.mark.parametrize("kind", KINDS)
def test_parameter_counts_equal_the_built_models(kind):
    config = KINDS[kind]
    model = build_model(config)
    counts = count_params(config)
    assert counts.total == sum(p.numel() for p in model.parameters())
    assert counts.embedding == _vocabulary_and_positions(model)
    assert counts.non_embedding == counts.total - counts.embedding
    assert sum(counts.parts.values()) == counts.total


def test_flops_of_hand_computed_cases():
    # GPT-2 style, d_ff = 4d, biases: each block 12d² weights + 13d biases and norms; the tied head is V·d
    L, d, V, T = 3, 48, 256, 40
    gpt = ModelConfig(arch="decoder", n_layer=L, d_model=d, n_head=3, vocab_size=V, max_seq_len=T)
    assert count_params(gpt).non_embedding == L * (12 * d * d + 13 * d) + 2 * d
    assert kaplan_flops_per_token(gpt) == 6 * (L * (12 * d * d + 13 * d) + 2 * d)
    assert matmul_params(gpt) == L * 12 * d * d + V * d
    assert model_flops(gpt, T) / T == 6 * (L * 12 * d * d + V * d) + 12 * L * d * T
    # the yardstick: the benchmark's tiny GPT is ~33 MFLOP per token once the head counts (20.5 without)
    bench = ModelConfig(arch="decoder", n_layer=4, d_model=256, n_head=4, vocab_size=8192, max_seq_len=128)
    assert model_flops(bench, 128) / 128 == 33_030_144
    # BERT's MLM: the head (transform d² and decoder V·d) only where a token is masked
    bert = ModelConfig(arch="encoder", n_layer=L, d_model=d, n_head=3, vocab_size=V, max_seq_len=T)
    head = d * d + V * d
    assert model_flops(bert, T, head_share=0.15) == 6 * (L * 12 * d * d + 0.15 * head) * T + 12 * L * d * T * T
    # T5: each stack's weights over the tokens it reads, cross-attention keys and values over the input's
    t5 = KINDS["t5"].resolved()
    S, Tt = 40, 12
    enc_block, dec_self = 4 * d_sq(t5) + 8 * d_sq(t5), 4 * d_sq(t5) + 8 * d_sq(t5)
    cross_q_out, cross_kv = 2 * d_sq(t5), 2 * d_sq(t5)
    weights = 2 * enc_block * S + 1 * ((dec_self + cross_q_out) * Tt + cross_kv * S) + 128 * 32 * Tt
    pairs = 2 * S * S + 1 * (Tt * Tt + Tt * S)
    assert model_flops(t5, S, Tt) == 6 * weights + 12 * 32 * pairs


def d_sq(c: ModelConfig) -> int:
    return c.d_model * c.d_model


def _model_flops_counter() -> FlopCounterMode:
    """torch's counter, taught the CPU flash-attention kernels it does not know. Their backward counts 2× the
    forward, as model FLOPs do: torch's own count for a flash backward adds the recomputed scores (hardware work)."""
    aten = torch.ops.aten

    def forward(query, key, value, *args, out_shape=None, **kwargs):
        return sdpa_flop_count(query, key, value)

    def backward(grad_out, query, key, value, *args, out_shape=None, **kwargs):
        return 2 * sdpa_flop_count(query, key, value)

    mapping = {
        aten._scaled_dot_product_flash_attention_for_cpu: forward,
        aten._scaled_dot_product_flash_attention_for_cpu_backward: backward,
    }
    return FlopCounterMode(display=False, custom_mapping=mapping)


@pytest.mark.parametrize(
    "kind",
    ["gpt", "llama", "gpt-moe", "bert-untied", "albert", "albert-untied", "electra", "t5", "t5-v1.1", "switch", "bart"],
)
def test_model_flops_equal_torchs_flop_counter(kind):
    config = KINDS[kind]
    torch.manual_seed(0)
    model = build_model(config)
    T, S = 16, 8
    x = torch.randint(0, config.vocab_size, (2, T))
    share = 1.0
    with _model_flops_counter() as counter:
        if config.generator_fraction:  # ELECTRA: the generator's head on the masked quarter, the rest on all
            targets = torch.full_like(x, -100)
            targets[:, ::4] = x[:, ::4]
            loss, share = model(x, targets)[1], 0.25
        elif config.arch == "encoder_decoder":
            loss = model(input_ids=x, decoder_input_ids=x[:, :S], targets=x[:, :S])[1]
        elif config.arch == "encoder":
            loss = model(input_ids=x)[0].logsumexp(-1).mean()  # the MLM head at every position
        else:
            loss = model(x, targets=x)[1]
        loss.backward()
    expected = 2 * model_flops(config, T, S if config.arch == "encoder_decoder" else 0, share)
    assert counter.get_total_flops() == expected


def test_trainer_counts_a_t5_by_the_tokens_each_stack_reads(corpus, tmp_path):
    overrides = tiny_overrides(
        corpus,
        tmp_path / "data",
        **{
            "model.arch": "encoder_decoder",
            "model.positions": "relative",
            "objective.name": "span_corruption",
            "data.tokenizer": "unigram",
            "data.sentinels": 20,
        },  # fmt: skip
    )
    config = load_config(None, overrides)
    trainer = Trainer(config, tmp_path / "run")
    targets = t5_lengths(32, 0.15, 3.0)[1]
    assert trainer.flops_per_step == model_flops(trainer.config.model, 32, targets) * config.train.batch_size


def test_gpu_peaks_match_exact_names():
    assert gpu_peak("NVIDIA L4", torch.bfloat16, tf32=True) == 121e12
    assert gpu_peak("NVIDIA L40S", torch.bfloat16, tf32=True) == 362e12  # not L4's
    assert gpu_peak("NVIDIA H100 PCIe", torch.bfloat16, tf32=True) < gpu_peak(
        "NVIDIA H100 80GB HBM3", torch.bfloat16, True
    )
    assert gpu_peak("NVIDIA H200", torch.float32, tf32=True) == gpu_peak("NVIDIA H200", torch.bfloat16, True) / 2
    assert gpu_peak("NVIDIA H200", torch.float32, tf32=False) == 66.9e12
    assert gpu_peak("NVIDIA A100-SXM4-80GB", torch.float16, tf32=True) == 312e12
    assert gpu_peak("NVIDIA L4 (something else)", torch.bfloat16, tf32=True) is None


def test_a_banded_layer_scores_only_its_window():
    """GPT-Neo's pattern over 16 tokens, window 4: the local layer (the second of two) scores 16 × 4 pairs, not
    16 × 16, at 12·(heads·head_dim) FLOPs each; nothing else changes."""
    banded = KINDS["gpt-neo"]
    dense = ModelConfig(**{**banded.__dict__, "attention_pattern": "dense", "attention_window": None})
    assert model_flops(dense, 16) - model_flops(banded, 16) == 12 * 32 * 16 * (16 - 4)
    assert model_flops(dense, 4) == model_flops(banded, 4)  # no longer than the window: dense
