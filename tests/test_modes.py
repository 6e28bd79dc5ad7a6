"""Encoder (BERT, MLM) and encoder-decoder (T5, span corruption), and the sparse decoders (Switch experts,
GPT-Neo's banded attention): masks, training, resume, generation."""

import numpy as np
import pytest
import torch

import pretrainer
from pretrainer.config import ConfigError, ModelConfig
from pretrainer.data.objectives import sentence_pairs
from pretrainer.model import build_model
from pretrainer.train.metrics import read_metrics
from tests.conftest import assert_resume_is_exact

BERT = {
    "model.arch": "encoder", "model.norm_position": "post", "model.activation": "gelu", "model.type_vocab_size": 2,
    "data.tokenizer": "wordpiece", "objective.name": "mlm", "train.lr": 2e-3,
}  # fmt: skip
T5 = {
    "model.arch": "encoder_decoder", "model.positions": "relative", "model.norm": "rmsnorm", "model.bias": False,
    "model.activation": "relu", "model.scale_attention": False, "model.head_scale": True, "model.n_decoder_layer": 2,
    "data.tokenizer": "unigram", "data.sentinels": 20, "objective.name": "span_corruption", "train.lr": 3e-3,
}  # fmt: skip
ROBERTA = {**BERT, "data.tokenizer": "roberta", "model.position_offset": 2, "model.type_vocab_size": 1}
ALBERT = {**BERT, "model.embedding_dim": 16, "model.share_layers": True, "model.nsp_head": True, "objective.sop": True}
SPANBERT = {**BERT, "model.sbo_head": True, "objective.spans": True, "objective.sbo": True}
ELECTRA = {**BERT, "model.head": "rtd", "model.generator_fraction": 0.5}
BART = {
    "model.arch": "encoder_decoder", "model.positions": "learned", "model.position_offset": 2,
    "model.norm_position": "post", "model.activation": "gelu", "model.decoder_start_id": 2,
    "data.tokenizer": "roberta", "objective.name": "denoising", "train.lr": 2e-3,
}  # fmt: skip
MOE = {"model.moe_experts": 4, "model.moe_every": 1}
GPT_NEO = {"model.attention_bias": False, "model.attention_pattern": "alternating", "model.attention_window": 8}
MODES = {"bert": BERT, "roberta": ROBERTA, "albert": ALBERT, "spanbert": SPANBERT, "electra": ELECTRA, "t5": T5,
         "bart": BART, "moe": MOE, "gpt-neo": GPT_NEO, "switch": {**T5, **MOE, "model.moe_every": 2}}  # fmt: skip


@pytest.mark.parametrize("mode", MODES)
def test_pretraining_learns(mode, tiny_config, tmp_path):
    # evaluate all of the small validation split: 2 batches hold ~30 masked tokens, too few to judge accuracy
    config = tiny_config(**MODES[mode], **{"train.max_steps": 40, "eval.batches": 8})
    result = pretrainer.train(config, tmp_path / "run")
    losses = [r["loss"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "loss" in r]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.5
    if MODES[mode].get("objective.name") == "mlm":
        assert 0.05 < result.scores["val_mlm_accuracy"] <= 1.0
    if "model.moe_experts" in MODES[mode]:  # every log row says how the experts were used
        rows = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "loss" in r]
        assert all(0 <= r["moe_dropped"] < 1 and len(r["moe_load"]) == 4 for r in rows)
    if mode == "electra":  # in 40 steps the discriminator learns at least how often tokens are replaced
        assert 0 < result.scores["val_replaced"] < 0.15
        assert result.scores["val_rtd_accuracy"] >= 1 - result.scores["val_replaced"] - 0.01
    if mode == "spanbert":  # both of its losses fall: the boundary head learns too
        assert 0.05 < result.scores["val_sbo_accuracy"] <= 1.0
        assert result.scores["val_mlm_loss"] < result.scores["val_loss"] - 1


def test_bert_with_next_sentence_prediction_learns(tiny_config, tmp_path):
    """Trained with NSP, the loss falls and NSP accuracy is reported; and the NSP head learns from its labels:
    on 32 fixed pairs (half IsNext) it goes from chance to fitting every pair."""
    config = tiny_config(**BERT, **{"objective.nsp": True, "model.nsp_head": True, "train.max_steps": 30})
    result = pretrainer.train(config, tmp_path / "run")
    losses = [r["loss"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "loss" in r]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.5 and 0 <= result.scores["val_nsp_accuracy"] <= 1

    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="encoder", type_vocab_size=2, nsp_head=True, **SMALL))
    stream = np.random.default_rng(0).integers(5, 97, 2000)
    pairs = sentence_pairs(stream, 32, 24, cls_id=2, sep_id=3, pad_id=0, rng=np.random.default_rng(1))
    inputs = {
        "input_ids": torch.from_numpy(pairs.input_ids),
        "token_type_ids": torch.from_numpy(pairs.token_type_ids),
        "padding_mask": torch.from_numpy(pairs.attention_mask),
    }
    labels = torch.from_numpy(pairs.nsp_labels)
    assert 8 <= int(labels.sum()) <= 24
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)

    def accuracy():
        with torch.no_grad():
            return (model.nsp(model.pooled(model.encode(**inputs))).argmax(-1) == labels).float().mean().item()

    before = accuracy()
    for _ in range(60):
        model.nsp_loss(model.encode(**inputs), labels).backward()
        optimizer.step()
        optimizer.zero_grad()
    assert before < 0.8 and accuracy() == 1.0


@pytest.mark.parametrize("mode", MODES)
def test_resume_is_exact(mode, tiny_config, tmp_path):
    config = lambda: tiny_config(**MODES[mode], **{"train.max_steps": 12, "train.save_every": 6, "train.keep_last": 5})
    pretrainer.train(config(), tmp_path / "full")
    run = lambda r: pretrainer.train(config(), r, resume=True)
    assert_resume_is_exact(run, tmp_path / "full", tmp_path / "resumed", 6, 12)


def test_objective_must_fit_the_model():
    with pytest.raises(ConfigError, match="model.arch=encoder trains with objective.name=mlm"):
        pretrainer.load_config(None, ["model.arch=encoder"])


def test_mlm_needs_a_tokenizer_with_mask(tiny_config, tmp_path):
    from pretrainer.data.sources import DataError

    with pytest.raises(DataError, match=r"needs the tokens \[CLS\], \[SEP\], \[MASK\], \[PAD\]"):
        pretrainer.train(tiny_config(**{**BERT, "data.tokenizer": "bpe"}), tmp_path / "run")


SMALL = dict(vocab_size=97, n_layer=2, n_head=4, d_model=32, max_seq_len=48)


def test_encoder_sees_the_future_and_decoders_do_not():
    torch.manual_seed(0)
    encoder = build_model(ModelConfig(arch="encoder", type_vocab_size=2, **SMALL)).eval()
    t5 = build_model(ModelConfig(arch="encoder_decoder", positions="relative", norm="rmsnorm", **SMALL)).eval()
    x = torch.randint(5, 97, (1, 20))
    y = x.clone()
    y[0, 15] = (x[0, 15] + 1) % 97
    with torch.no_grad():
        hx, hy = encoder.encode(x), encoder.encode(y)
        assert not torch.allclose(hx[:, :15], hy[:, :15])  # position t < 15 sees the change at 15
        memory = t5.encode(x)
        dx, dy = t5.decode(x, memory), t5.decode(y, memory)
        assert torch.equal(dx[:, :15], dy[:, :15]) and not torch.allclose(dx[:, 15:], dy[:, 15:])
        # T5's encoder is bidirectional too
        assert not torch.allclose(t5.encode(x)[:, :15], t5.encode(y)[:, :15])


BART_MODEL = dict(arch="encoder_decoder", positions="learned", position_offset=2, norm_position="post",
                  decoder_start_id=2)  # fmt: skip


@pytest.mark.parametrize("sampling", [dict(temperature=0), dict(temperature=1.0, top_k=20, seed=3)])
@pytest.mark.parametrize("kind", ["t5", "bart"])
def test_encoder_decoder_cached_equals_uncached(sampling, kind):
    torch.manual_seed(0)
    model = dict(arch="encoder_decoder", positions="relative", norm="rmsnorm") if kind == "t5" else BART_MODEL
    t5 = build_model(ModelConfig(**model, **SMALL)).eval()
    x = torch.randint(5, 97, (2, 12))
    pad = torch.ones(2, 12, dtype=torch.bool)
    pad[1, 8:] = False
    cached = t5.generate(x, 30, padding_mask=pad, **sampling)
    plain = t5.generate(x, 30, padding_mask=pad, use_cache=False, **sampling)
    start = t5.config.decoder_start_id
    assert cached.shape == (2, 31) and torch.equal(cached, plain) and (cached[:, 0] == start).all()


def test_t5_cache_projects_the_encoder_output_once():
    """While decoding with a cache, each layer's cross-attention keys and values of the encoder output are
    computed at the first step and reused: one projection per layer, not one per layer and step."""
    torch.manual_seed(0)
    t5 = build_model(ModelConfig(arch="encoder_decoder", positions="relative", norm="rmsnorm", **SMALL)).eval()
    calls = []
    for block in t5.decoder.blocks:
        block.cross_attn.kv.register_forward_hook(lambda *_: calls.append(1))
    out = t5.generate(torch.randint(5, 97, (2, 12)), 10, temperature=0)
    assert out.shape == (2, 11) and len(calls) == len(t5.decoder.blocks)
