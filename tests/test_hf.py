"""Hugging Face `transformers` checkpoints: logits parity with random weights, and round trips both ways."""

import dataclasses
import json
import re
from pathlib import Path

import pytest
import safetensors.torch
import torch

from pretrainer import cli
from pretrainer.config import ModelConfig
from pretrainer.convert import convert, export_hf, import_hf
from pretrainer.errors import ConversionError
from pretrainer.model import build_model
from pretrainer.model.generate import generate_text
from pretrainer.model.hf import config_from_hf, config_to_hf, family_of, state_dict_from_hf

transformers = pytest.importorskip("transformers")

V = 101


def hf_configs():
    common = dict(vocab_size=V, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    V_ = dict(vocab_size=V)
    return {
        "gpt2": transformers.GPT2Config(
            n_positions=48, n_embd=32, n_layer=2, n_head=4, resid_pdrop=0, embd_pdrop=0, attn_pdrop=0,
            initializer_range=0.2, **common,
        ),
        # global, local, global: the window of 8 bites on the 24-token inputs
        "gpt_neo": transformers.GPTNeoConfig(
            max_position_embeddings=48, hidden_size=32, num_layers=3, num_heads=4, window_size=8,
            attention_types=[[["global", "local"], 1], [["global"], 1]], embed_dropout=0, resid_dropout=0,
            attention_dropout=0, initializer_range=0.2, **common,
        ),
        "llama": transformers.LlamaConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=48, rope_theta=500.0, initializer_range=0.2, **common,
        ),
        "bert": transformers.BertConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=48, hidden_dropout_prob=0, attention_probs_dropout_prob=0, initializer_range=0.2,
            **common,
        ),
        # roberta-base's shape rules: positions from pad_token_id + 1, one segment, eps 1e-5
        "roberta": transformers.RobertaConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, type_vocab_size=1,
            max_position_embeddings=50, layer_norm_eps=1e-5, hidden_dropout_prob=0, attention_probs_dropout_prob=0,
            initializer_range=0.2, **{**common, "pad_token_id": 1, "bos_token_id": 0},
        ),
        "albert": transformers.AlbertConfig(
            embedding_size=16, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=48, hidden_dropout_prob=0, attention_probs_dropout_prob=0,
            classifier_dropout_prob=0, initializer_range=0.2, **common,
        ),
        "electra": transformers.ElectraConfig(
            embedding_size=16, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=48, hidden_dropout_prob=0, attention_probs_dropout_prob=0, initializer_range=0.2,
            **common,
        ),
        "electra-generator": transformers.ElectraConfig(
            embedding_size=32, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=48, hidden_dropout_prob=0, attention_probs_dropout_prob=0, initializer_range=0.2,
            architectures=["ElectraForMaskedLM"], **common,
        ),
        "distilbert": transformers.DistilBertConfig(
            dim=32, n_layers=2, n_heads=4, hidden_dim=64, max_position_embeddings=48, dropout=0, attention_dropout=0,
            initializer_range=0.2, pad_token_id=0, **V_,
        ),
        "t5-v1.0": transformers.T5Config(
            d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=3, num_heads=4, dropout_rate=0,
            feed_forward_proj="relu", relative_attention_num_buckets=8, relative_attention_max_distance=20,
            decoder_start_token_id=0, **common,
        ),
        "t5-v1.1": transformers.T5Config(
            d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, dropout_rate=0, feed_forward_proj="gated-gelu",
            tie_word_embeddings=False, relative_attention_num_buckets=8, relative_attention_max_distance=20,
            decoder_start_token_id=0, **common,
        ),
        # Switch Transformers is T5 v1.0 with experts in every other block; a capacity of 512 tokens a sequence
        # is a capacity factor of 4 experts × 512 / 512 = 4 here: no token is dropped (the capacity rule's own
        # parity is test_switch_layer_equals_transformers)
        "t5-switch": transformers.SwitchTransformersConfig(
            d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=3, num_heads=4, num_experts=4,
            expert_capacity=512, num_sparse_encoder_layers=1, num_sparse_decoder_layers=1, dropout_rate=0,
            router_jitter_noise=0, relative_attention_num_buckets=8, relative_attention_max_distance=20,
            decoder_start_token_id=0, **common,
        ),
        "bart": transformers.BartConfig(
            d_model=32, encoder_layers=2, decoder_layers=3, encoder_attention_heads=4, decoder_attention_heads=4,
            encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=48, dropout=0, attention_dropout=0,
            activation_dropout=0, init_std=0.2, vocab_size=V, pad_token_id=1, bos_token_id=0, eos_token_id=2,
            decoder_start_token_id=2,
        ),
        # "gated-gelu" alone means the tanh GELU (T5 v1.1's); any other "[gated-]ACT" means ACT itself
        "t5-gated-silu": transformers.T5Config(
            d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, dropout_rate=0, feed_forward_proj="gated-silu",
            relative_attention_num_buckets=8, relative_attention_max_distance=20, decoder_start_token_id=0, **common,
        ),
        "t5-gelu": transformers.T5Config(
            d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, dropout_rate=0, feed_forward_proj="gelu",
            relative_attention_num_buckets=8, relative_attention_max_distance=20, decoder_start_token_id=0, **common,
        ),
    }  # fmt: skip


ENCODERS = ("bert", "roberta", "albert", "distilbert", "electra", "electra-generator")
HF_CLASSES = {
    "gpt2": "GPT2LMHeadModel",
    "gpt_neo": "GPTNeoForCausalLM",
    "llama": "LlamaForCausalLM",
    "llama3-rope": "LlamaForCausalLM",
    "bert": "BertForMaskedLM",
    "roberta": "RobertaForMaskedLM",
    "albert": "AlbertForPreTraining",
    "distilbert": "DistilBertForMaskedLM",
    "electra": "ElectraForPreTraining",
    "electra-generator": "ElectraForMaskedLM",
    "t5-v1.0": "T5ForConditionalGeneration",
    "t5-v1.1": "T5ForConditionalGeneration",
    "t5-gated-silu": "T5ForConditionalGeneration",
    "t5-gelu": "T5ForConditionalGeneration",
    "t5-gated-exact-gelu": "T5ForConditionalGeneration",
    "t5-switch": "SwitchTransformersForConditionalGeneration",
    "bart": "BartForConditionalGeneration",
}
SEQ2SEQ = ("t5", "bart")


def inputs(name, seed=0):
    """Token ids with padding in the second row (where the model takes a padding mask)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(3, V, (2, 24), generator=g)
    pad = torch.ones(2, 24, dtype=torch.bool)
    if name.startswith(ENCODERS + SEQ2SEQ):
        pad[1, 17:] = False
    dec = torch.randint(3, V, (2, 9), generator=g)
    dec[:, 0] = 0
    return x, pad, dec


def hf_logits(hf_model, name):
    """Their logits; for ALBERT the MLM logits with the sentence-order logits appended to each row's first."""
    x, pad, dec = inputs(name)
    with torch.no_grad():
        if name.startswith(SEQ2SEQ):
            return hf_model(input_ids=x, attention_mask=pad.long(), decoder_input_ids=dec).logits, pad
        if name == "albert":
            out = hf_model(input_ids=x, attention_mask=pad.long())
            return torch.cat([out.prediction_logits, sop_slot(out.sop_logits, x.shape[1])], -1), pad
        if name in ENCODERS:
            return hf_model(input_ids=x, attention_mask=pad.long()).logits, pad
        return hf_model(input_ids=x).logits, pad


def sop_slot(sop_logits, time):
    """(batch, 2) sentence-order logits laid out as (batch, time, 2), zero but at the first position."""
    return torch.cat([sop_logits[:, None], sop_logits.new_zeros(len(sop_logits), time - 1, 2)], 1)


def our_logits(model, name):
    x, pad, dec = inputs(name)
    with torch.no_grad():
        if name.startswith(SEQ2SEQ):
            return model(x, dec, padding_mask=pad)[0]
        if name == "albert":
            hidden = model.encode(x, padding_mask=pad)
            sop = model.nsp(model.pooled(hidden))
            return torch.cat([model.mlm_logits(hidden), sop_slot(sop, x.shape[1])], -1)
        if name in ENCODERS:
            return model(x, padding_mask=pad)[0]
        return model(x)[0]


def assert_same(expected, got, pad, name):
    if name in ENCODERS:  # logits at padding positions are meaningless
        expected, got = expected[pad], got[pad]
    assert expected.abs().max() > 0.1  # the logits say something
    assert (expected - got).abs().max() <= 1e-4


@pytest.mark.parametrize("name", list(hf_configs()))
def test_parity_with_transformers(name):
    torch.manual_seed(0)
    hf_config = hf_configs()[name]
    theirs = getattr(transformers, HF_CLASSES[name])(hf_config).eval()
    config = config_from_hf(hf_config.to_dict())
    ours = build_model(config).eval()
    family = family_of(config)
    state, notes = state_dict_from_hf(family, theirs.state_dict(), config)
    missing = ours.load_state_dict(state, strict=False).missing_keys
    assert set(missing) <= {"lm_head.weight", "mlm_decoder.weight", "pooler.weight", "pooler.bias"}
    expected, pad = hf_logits(theirs, name)
    assert_same(expected, our_logits(ours, name), pad, name)


def test_sequence_classification_logits_and_gradients_equal_bert_for_sequence_classification():
    """A padded batch through our encoder (which skips the padding, and runs its last layer on [CLS] alone) and
    through BertForSequenceClassification, same weights: the same logits, loss and gradients."""
    torch.manual_seed(0)
    hf_config = hf_configs()["bert"]
    hf_config.num_labels = 3
    theirs = transformers.BertForSequenceClassification(hf_config)
    config = dataclasses.replace(config_from_hf(theirs.config.to_dict()), head="sequence", n_labels=3)
    ours = build_model(config)
    state, _ = state_dict_from_hf("bert", theirs.state_dict(), config)
    state |= {"head.linear.weight": theirs.classifier.weight, "head.linear.bias": theirs.classifier.bias}
    ours.load_state_dict(state, strict=False)
    x, pad, _ = inputs("bert")
    labels = torch.tensor([2, 0])
    logits, loss = ours(x, padding_mask=pad, labels=labels)
    out = theirs(input_ids=x, attention_mask=pad.long(), labels=labels)
    assert (logits - out.logits).abs().max() < 1e-5 and (loss - out.loss).abs() < 1e-5
    loss.backward()
    out.loss.backward()
    d = config.d_model
    layers = theirs.bert.encoder.layer
    pairs = [
        (ours.tok_emb.weight.grad, theirs.bert.embeddings.word_embeddings.weight.grad),
        (ours.blocks[0].attn.qkv.weight.grad[:d], layers[0].attention.self.query.weight.grad),
        (ours.blocks[-1].mlp.fc.weight.grad, layers[-1].intermediate.dense.weight.grad),
        (ours.head.linear.weight.grad, theirs.classifier.weight.grad),
    ]
    for mine, hf in pairs:
        assert hf.abs().max() > 0 and (mine - hf).abs().max() <= 1e-5 * (1 + hf.abs().max())


OURS = {
    "gpt2": ModelConfig(vocab_size=V, n_layer=2, n_head=4, d_model=32, max_seq_len=48),
    "llama": ModelConfig(
        vocab_size=V, n_layer=2, n_head=4, n_kv_head=2, d_model=32, d_ff=64, max_seq_len=48, positions="rope",
        norm="rmsnorm", norm_eps=1e-6, activation="silu", gated_mlp=True, bias=False, tie_embeddings=False,
    ),
    "bert": ModelConfig(
        arch="encoder", vocab_size=V, n_layer=2, n_head=4, d_model=32, d_ff=64, max_seq_len=48, norm_eps=1e-12,
        norm_position="post", activation="gelu", type_vocab_size=2,
    ),
    "roberta": ModelConfig(
        arch="encoder", vocab_size=V, n_layer=2, n_head=4, d_model=32, d_ff=64, max_seq_len=48, position_offset=2,
        norm_position="post", activation="gelu", type_vocab_size=1,
    ),
    "albert": ModelConfig(
        arch="encoder", vocab_size=V, n_layer=3, n_head=4, d_model=32, d_ff=64, max_seq_len=48, norm_eps=1e-12,
        norm_position="post", activation="gelu_tanh", type_vocab_size=2, embedding_dim=16, share_layers=True,
        nsp_head=True,
    ),
    "distilbert": ModelConfig(
        arch="encoder", vocab_size=V, n_layer=2, n_head=4, d_model=32, d_ff=64, max_seq_len=48, norm_eps=1e-12,
        norm_position="post", activation="gelu", pooler=False,
    ),
    "electra": ModelConfig(
        arch="encoder", vocab_size=V, n_layer=2, n_head=4, d_model=32, d_ff=64, max_seq_len=48, norm_eps=1e-12,
        norm_position="post", activation="gelu", type_vocab_size=2, pooler=False, head="rtd", embedding_dim=16,
    ),
    "electra-generator": ModelConfig(
        arch="encoder", vocab_size=V, n_layer=2, n_head=4, d_model=32, d_ff=64, max_seq_len=48, norm_eps=1e-12,
        norm_position="post", activation="gelu", type_vocab_size=2, pooler=False,
    ),
    "t5-v1.0": ModelConfig(
        arch="encoder_decoder", vocab_size=V, n_layer=2, n_decoder_layer=3, n_head=4, d_model=32, d_ff=64,
        positions="relative", relative_buckets=8, relative_max_distance=20, norm="rmsnorm", norm_eps=1e-6,
        activation="relu", bias=False, scale_attention=False, head_scale=True,
    ),
}  # fmt: skip
T5_MLPS = {
    "t5-v1.1": dict(gated_mlp=True, activation="gelu_tanh", head_scale=False),
    "t5-gated-silu": dict(gated_mlp=True, activation="silu"),
    "t5-gelu": dict(activation="gelu"),
    "t5-gated-exact-gelu": dict(gated_mlp=True, activation="gelu"),  # written as "gated-gelu_python"
}
OURS |= {name: dataclasses.replace(OURS["t5-v1.0"], **mlp) for name, mlp in T5_MLPS.items()}
OURS["bart"] = ModelConfig(
    arch="encoder_decoder", vocab_size=V, n_layer=2, n_decoder_layer=3, n_head=4, d_model=32, d_ff=64, max_seq_len=48,
    positions="learned", position_offset=2, norm_position="post", activation="gelu", decoder_start_id=2,
)  # fmt: skip
OURS["t5-switch"] = dataclasses.replace(OURS["t5-v1.0"], moe_experts=4, moe_capacity_factor=4.0)
OURS["gpt_neo"] = dataclasses.replace(
    OURS["gpt2"], attention_bias=False, scale_attention=False, attention_pattern="alternating", attention_window=8,
    n_layer=3,
)  # fmt: skip
OURS["llama3-rope"] = dataclasses.replace(
    OURS["llama"], max_seq_len=128, rope_theta=500.0, rope_scaling="llama3", rope_scaling_factor=4.0,
    rope_high_freq_factor=4.0, rope_original_max_seq_len=32,
)  # fmt: skip


@pytest.mark.parametrize("name", list(OURS))
def test_export_then_from_pretrained_and_back(name, tmp_path):
    torch.manual_seed(1)
    ours = build_model(OURS[name]).eval()
    # logits of a few units: exact GELU against its tanh approximation shows (>= 6e-4 here), fp32 rounding does not
    for p in ours.parameters():
        torch.nn.init.normal_(p, std=0.5)
    out = export_hf(ours, None, tmp_path / "hf")
    assert json.loads((out / "config.json").read_text())["architectures"] == [HF_CLASSES[name]]
    theirs = getattr(transformers, HF_CLASSES[name]).from_pretrained(out).eval()
    expected, pad = hf_logits(theirs, name)
    assert_same(expected, our_logits(ours, name), pad, name)
    back, _, notes = import_hf(out)
    assert back.config == ours.config
    assert_same(our_logits(ours, name), our_logits(back, name), pad, name)


def test_export_writes_the_tokenizers_ids_of_its_special_tokens(tmp_path):
    """GPT-2's config.json says nothing of our tokenizer's end-of-text id: export writes it from the tokenizer (left
    out, transformers would assume GPT-2's 50256)."""
    from pretrainer.data.tokenizer import train_bpe

    tokenizer = train_bpe(["some words to learn from " * 50], vocab_size=260)
    config = dataclasses.replace(OURS["gpt2"], vocab_size=320)
    hf = json.loads((export_hf(build_model(config), tokenizer, tmp_path / "hf") / "config.json").read_text())
    eos = tokenizer.token_to_id("<|endoftext|>")
    assert hf["eos_token_id"] == hf["bos_token_id"] == eos and eos < 320


def test_generate_reads_a_transformers_folder(tmp_path, capsys):
    """`pretrainer generate` takes what `prompt` takes: a transformers folder (here exported from a model of ours)
    writes what the model itself does."""
    from pretrainer.data.tokenizer import train_bpe

    tokenizer = train_bpe(["some words to learn from " * 50], vocab_size=260)
    model = build_model(dataclasses.replace(OURS["gpt2"], vocab_size=320))
    export_hf(model, tokenizer, tmp_path / "hf")
    text = generate_text(model, tokenizer, "some words", 8, temperature=0)
    assert (
        cli.main(["generate", str(tmp_path / "hf"), "--prompt", "some words", "--greedy", "--max-new-tokens", "8"]) == 0
    )
    assert capsys.readouterr().out == "some words" + text + "\n"


def test_export_refuses_to_overwrite(tmp_path):
    (tmp_path / "hf").mkdir()
    with pytest.raises(ConversionError, match="already exists"):
        export_hf(build_model(OURS["gpt2"]), None, tmp_path / "hf")


def test_unsupported_architecture(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mamba"}))
    with pytest.raises(ConversionError, match="unsupported architecture 'mamba'"):
        import_hf(tmp_path)


def test_pickled_weights_are_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(hf_configs()["gpt2"].to_dict()))
    (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ConversionError, match="pickled .bin weights are not loaded"):
        import_hf(tmp_path)


def test_mismatched_vocab(tmp_path):
    from pretrainer.data.tokenizer import train_bpe

    tokenizer = train_bpe(["some words to learn from " * 50], vocab_size=300)  # 300 > the model's 101
    with pytest.raises(ConversionError, match="mismatched vocab sizes"):
        export_hf(build_model(OURS["gpt2"]), tokenizer, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_not_every_model_fits_a_family():
    pre_ln_bert = ModelConfig(**{**OURS["bert"].__dict__, "norm_position": "pre"})
    with pytest.raises(ConversionError, match="cannot be exported as bert: it needs norm_position=.post."):
        export_hf(build_model(pre_ln_bert), None, "/nonexistent/never-written")


@pytest.mark.parametrize(
    "name",
    ["gpt2", "gpt_neo", "llama", *ENCODERS, "t5-v1.0", "t5-v1.1", "t5-gated-silu", "t5-gelu", "t5-switch", "bart"],
)
def test_config_round_trip(name):
    """transformers config -> ours -> transformers config -> ours: the same config, and their keys kept."""
    hf = hf_configs()[name].to_dict()
    ours = config_from_hf(hf)
    exported = config_to_hf(ours)
    assert config_from_hf(exported) == ours
    for key, value in exported.items():  # every shape key we write says what their config says
        if hf.get(key) is not None and not key.endswith("_token_id"):  # None: their default, which we spell out
            assert hf[key] == value, key


def test_malformed_feed_forward_proj():
    hf = hf_configs()["t5-v1.0"].to_dict() | {"feed_forward_proj": "geglu-gelu"}
    with pytest.raises(
        ConversionError, match="feed_forward_proj='geglu-gelu' in config.json is not 'ACT' or 'gated-ACT'"
    ):
        config_from_hf(hf)


LLAMA3_ROPE = dict(rope_type="llama3", factor=4.0, low_freq_factor=1.0, high_freq_factor=4.0)


def llama3_hf_config():
    """Llama with Llama 3.1's RoPE scaling, pretrained on 32 positions and stretched to 128: at head_dim 8 and
    theta 500 the four wavelengths (6, 30, 140, 664 positions) fall one kept, one smoothed and two stretched."""
    rope = LLAMA3_ROPE | {"rope_theta": 500.0, "original_max_position_embeddings": 32}
    return transformers.LlamaConfig(
        **hf_configs()["llama"].to_dict() | {"max_position_embeddings": 128, "rope_parameters": rope}
    )


def test_llama3_rope_scaling_parity():
    torch.manual_seed(0)
    hf_config = llama3_hf_config()
    theirs = transformers.LlamaForCausalLM(hf_config).eval()
    config = config_from_hf(hf_config.to_dict())
    assert (config.rope_scaling, config.rope_scaling_factor, config.rope_original_max_seq_len) == ("llama3", 4.0, 32)
    expected, pad = hf_logits(theirs, "llama")
    for scaling, same in ((config.rope_scaling, True), (None, False)):  # and without the scaling, other logits
        ours = build_model(dataclasses.replace(config, rope_scaling=scaling)).eval()
        ours.load_state_dict(state_dict_from_hf("llama", theirs.state_dict(), config)[0])
        got = our_logits(ours, "llama")
        if same:
            assert_same(expected, got, pad, "llama")
        else:
            assert (expected - got).abs().max() > 1e-2


def test_llama3_rope_scaling_in_either_spelling():
    """transformers 5 writes rope_parameters, rope_theta inside; earlier versions rope_theta and rope_scaling,
    whose rope_type was once called type."""
    new = llama3_hf_config().to_dict()
    rope = dict(new["rope_parameters"])
    theta = rope.pop("rope_theta")
    old = {k: v for k, v in new.items() if k != "rope_parameters"} | {"rope_theta": theta, "rope_scaling": rope}
    legacy = old | {"rope_scaling": {"type" if k == "rope_type" else k: v for k, v in rope.items()}}
    assert config_from_hf(new) == config_from_hf(old) == config_from_hf(legacy)
    assert (config_from_hf(new).rope_theta, config_from_hf(new).rope_scaling) == (500.0, "llama3")


@pytest.mark.parametrize("spelling", ["rope_scaling", "rope_parameters"])
@pytest.mark.parametrize("kind", ["linear", "dynamic", "yarn", "longrope"])
def test_other_rope_scaling_is_refused(kind, spelling):
    hf = hf_configs()["llama"].to_dict() | {spelling: {"rope_type": kind, "factor": 2.0, "rope_theta": 500.0}}
    with pytest.raises(ConversionError, match=f"rope scaling '{kind}'.*only 'llama3'"):
        config_from_hf(hf)


# `pretrainer convert` given bad input: one line on stderr, exit status 2, nothing written


@pytest.fixture
def hf_folder(tmp_path):
    """A small transformers folder (GPT-2) to spoil."""
    torch.manual_seed(0)
    return export_hf(build_model(OURS["gpt2"]), None, tmp_path / "hf")


def convert_fails(capsys, src, dst, message):
    """`pretrainer convert SRC DST` exits with 2 and one line naming the problem; nothing appears at DST or beside."""
    dst = Path(dst)
    around = set(dst.parent.iterdir()) if dst.parent.is_dir() else None
    assert cli.main(["convert", str(src), str(dst)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert re.search(message, err), err
    assert not dst.exists()
    assert around is None or set(dst.parent.iterdir()) == around


def edit_config(folder, edit):
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(edit(config) if callable(edit) else edit)


@pytest.mark.parametrize(
    "edit, message",
    [
        ('{"model_type": "gpt2", ', r"config\.json' is not valid JSON \(.*line 1"),
        ("[1, 2]", r"config\.json' holds a list, not a JSON object"),
        (lambda c: json.dumps({k: v for k, v in c.items() if k != "n_embd"}), "a gpt2 config.json needs 'n_embd'"),
        (lambda c: json.dumps(c | {"n_layer": "2"}), "'n_layer' in config.json is '2', not an integer"),
        (
            lambda c: json.dumps(c | {"layer_norm_epsilon": [1e-5]}),
            "'layer_norm_epsilon' .* is \\[1e-05\\], not a number",
        ),
        (lambda c: json.dumps(c | {"activation_function": "gelu_fast"}), "unsupported activation 'gelu_fast'"),
        (
            lambda c: json.dumps(c | {"n_head": 0}),
            "config.json describes a model pretrainer cannot build: model.n_head",
        ),
        (
            lambda c: json.dumps(c | {"n_inner": 256}),
            r"weights do not fit config.json: blocks.0.mlp.fc.weight is \(128, 32\)",
        ),
    ],
    ids=[
        "bad-json",
        "not-an-object",
        "missing-key",
        "str-for-int",
        "list-for-float",
        "activation",
        "zero-heads",
        "shape",
    ],
)
def test_convert_refuses_a_malformed_config_json(hf_folder, tmp_path, capsys, edit, message):
    edit_config(hf_folder, edit)
    convert_fails(capsys, hf_folder, tmp_path / "out", message)


def test_convert_refuses_a_llama_config_without_hidden_size(tmp_path, capsys):
    (tmp_path / "hf").mkdir()
    config = {k: v for k, v in config_to_hf(OURS["llama"]).items() if k != "hidden_size"}
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    convert_fails(capsys, tmp_path / "hf", tmp_path / "out", "a llama config.json needs 'hidden_size'")


@pytest.mark.parametrize(
    "spoil, message",
    [
        (lambda data: b"not a safetensors file at all", r"model\.safetensors' is not a readable safetensors file"),
        (lambda data: data[: len(data) // 2], r"model\.safetensors' is not a readable safetensors file"),
    ],
    ids=["garbage", "truncated"],
)
def test_convert_refuses_damaged_safetensors(hf_folder, tmp_path, capsys, spoil, message):
    weights = hf_folder / "model.safetensors"
    weights.write_bytes(spoil(weights.read_bytes()))
    convert_fails(capsys, hf_folder, tmp_path / "out", message)


def test_convert_refuses_a_damaged_tokenizer_json(hf_folder, tmp_path, capsys):
    (hf_folder / "tokenizer.json").write_text("{}")
    convert_fails(capsys, hf_folder, tmp_path / "out", r"tokenizer\.json' is not a tokenizer file")


def test_convert_refuses_a_gguf_transformers_cannot_read(tmp_path, capsys):
    pytest.importorskip("gguf")
    (tmp_path / "cut.gguf").write_bytes(b"GGUF" + (3).to_bytes(4, "little") + bytes(32))  # a header, cut short
    convert_fails(capsys, tmp_path / "cut.gguf", tmp_path / "out", r"transformers cannot read '.*cut\.gguf' \(")


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_convert_refuses_non_finite_weights(hf_folder, tmp_path, capsys, value):
    weights = safetensors.torch.load_file(hf_folder / "model.safetensors")
    weights["transformer.h.1.mlp.c_fc.weight"][3, 5] = value
    safetensors.torch.save_file(weights, hf_folder / "model.safetensors")
    message = r"model\.safetensors' holds non-finite values \(NaN or inf\) in 'transformer\.h\.1\.mlp\.c_fc\.weight'"
    convert_fails(capsys, hf_folder, tmp_path / "out", message)


def test_convert_refuses_what_is_no_checkpoint(tmp_path, capsys):
    convert_fails(capsys, tmp_path / "nowhere", tmp_path / "out", "'.*nowhere' does not exist")
    (tmp_path / "fake.gguf").write_bytes(bytes(range(256)) * 4)
    convert_fails(capsys, tmp_path / "fake.gguf", tmp_path / "out", r"fake\.gguf' is not a GGUF file")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "notes.txt").write_text("hello")
    convert_fails(
        capsys, tmp_path / "folder", tmp_path / "out", "is neither a checkpoint of ours .* nor a transformers"
    )


@pytest.fixture(params=["import", "export"])
def convertible(request, hf_folder, tmp_path):
    """A source of either direction: a transformers folder (imported), or a checkpoint of ours (exported)."""
    if request.param == "import":
        return hf_folder
    return convert(str(hf_folder), tmp_path / "ours")[0]


def test_convert_refuses_a_destination_inside_a_file(convertible, tmp_path, capsys):
    (tmp_path / "file").write_text("not a folder")
    convert_fails(capsys, convertible, tmp_path / "file" / "out", "cannot write .*'.*file' is a file, not a folder")


def test_convert_refuses_a_read_only_destination(convertible, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        try:  # root writes anyway
            (locked / "probe").touch()
            (locked / "probe").unlink()
            pytest.skip("this user can write to a read-only folder (root)")
        except PermissionError:
            pass
        convert_fails(capsys, convertible, locked / "out", "cannot write '.*locked/out': Permission denied")
    finally:
        locked.chmod(0o755)


@pytest.mark.parametrize(
    "name, change, message",
    [
        ("bert", dict(n_kv_head=2), "n_kv_head == n_head and head_dim == d_model / n_head"),
        ("bert", dict(head_dim=16), "n_kv_head == n_head and head_dim == d_model / n_head"),
        ("t5-v1.0", dict(n_kv_head=2), "n_kv_head == n_head"),
        ("gpt2", dict(n_kv_head=2), "n_kv_head == n_head and head_dim == d_model / n_head"),
    ],
)
def test_attention_shapes_their_family_lacks_are_refused(name, change, message, tmp_path):
    """BERT and GPT-2 have no grouped-query attention nor a head size of their own, T5 no grouped-query attention:
    such a model would export as a folder that from_pretrained refuses."""
    with pytest.raises(ConversionError, match=f"it needs {re.escape(message)}"):
        export_hf(build_model(dataclasses.replace(OURS[name], **change)), None, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


@pytest.mark.parametrize(
    "name, hf_config, millions",
    [
        ("albert", dict(embedding_size=128, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                        intermediate_size=3072, vocab_size=30000), 12),  # albert-base-v2
        ("distilbert", dict(), 66),  # distilbert-base-uncased: transformers' defaults
        ("electra", dict(embedding_size=128, hidden_size=256, num_hidden_layers=12, num_attention_heads=4,
                         intermediate_size=1024), 14),  # electra-small-discriminator
    ],
)  # fmt: skip
def test_published_base_configs_count_what_transformers_builds(name, hf_config, millions):
    """Our parameter count (from the config alone) of the published base models equals the parameters of
    transformers' model of the same config: ALBERT-base's ~12M against BERT-base's ~110M, DistilBERT's ~66M."""
    from pretrainer.scaling.flops import count_params

    kinds = {"albert": "AlbertConfig", "distilbert": "DistilBertConfig", "electra": "ElectraConfig"}
    config = getattr(transformers, kinds[name])(**hf_config)
    theirs = getattr(transformers, HF_CLASSES[name])(config)
    ours = count_params(config_from_hf(config.to_dict())).total
    assert ours == sum(p.numel() for p in theirs.parameters())
    assert abs(ours / 1e6 - millions) < 1.5  # as the papers give them, which round and leave out the MLM head


@pytest.mark.parametrize(
    "name, change, message",
    [
        ("roberta", dict(max_position_embeddings=2), "max_position_embeddings=2 in config.json leaves no positions"),
        ("albert", dict(num_hidden_groups=2), "num_hidden_groups=2 and inner_group_num=1 in config.json"),
        ("distilbert", dict(sinusoidal_pos_embds=True), "sinusoidal_pos_embds=true in config.json"),
    ],
)
def test_encoder_configs_pretrainer_cannot_hold_are_refused(name, change, message):
    with pytest.raises(ConversionError, match=re.escape(message)):
        config_from_hf(hf_configs()[name].to_dict() | change)


def test_a_wide_albert_embedding_is_allowed_with_a_warning():
    from pretrainer.config import load_config

    with pytest.warns(UserWarning, match="model.embedding_dim=64 is wider than model.d_model=32"):
        load_config(None, ["model.arch=encoder", "objective.name=mlm", "model.d_model=32", "model.embedding_dim=64"])


@pytest.mark.parametrize("head", ["token", "sequence"])
def test_heads_without_a_family_are_refused(head, tmp_path):
    config = dataclasses.replace(OURS["bert"], head=head, n_labels=3)
    with pytest.raises(ConversionError, match=f"model.head={head} has no transformers family here"):
        export_hf(build_model(config), None, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_a_generator_wider_than_its_discriminator_is_allowed_with_a_warning():
    from pretrainer.config import load_config

    with pytest.warns(UserWarning, match="model.generator_fraction=1.5: a generator wider than its discriminator"):
        load_config(
            None, ["model.arch=encoder", "objective.name=mlm", "model.head=rtd", "model.generator_fraction=1.5"]
        )


def test_an_electra_run_exports_its_discriminator(tmp_path):
    """An ELECTRA pretraining model (generator and discriminator in one module) converts to the model it keeps:
    ElectraForPreTraining gives the discriminator's logits."""
    torch.manual_seed(2)
    ours = build_model(dataclasses.replace(OURS["electra"], generator_fraction=0.5)).eval()
    for p in ours.parameters():
        torch.nn.init.normal_(p, std=0.5)  # logits of a few units
    out = export_hf(ours, None, tmp_path / "hf")
    theirs = transformers.ElectraForPreTraining.from_pretrained(out).eval()
    expected, pad = hf_logits(theirs, "electra")
    assert_same(expected, our_logits(ours.discriminator, "electra"), pad, "electra")


def test_switch_sparse_blocks_must_follow_one_step_in_both_stacks():
    hf = hf_configs()["t5-switch"].to_dict() | {"num_layers": 4, "num_decoder_layers": 4}
    assert config_from_hf(hf | {"num_sparse_encoder_layers": 2, "num_sparse_decoder_layers": 2}).moe_every == 2
    with pytest.raises(ConversionError, match="makes encoder blocks 1, 3 and decoder blocks 1 sparse"):
        config_from_hf(hf | {"num_sparse_encoder_layers": 2, "num_sparse_decoder_layers": 1})
