import copy

import pytest
import torch
import torch.nn.functional as F

from pretrainer.config import ModelConfig
from pretrainer.errors import ConfigError, DataError
from pretrainer.model import Decoder, build_model, ops
from pretrainer.model.blocks import RMSNorm, attention_mask
from pretrainer.model.generate import generate_text, generate_texts
from pretrainer.model.ops import linear_cross_entropy

GPT2 = dict(vocab_size=97, n_layer=2, n_head=4, d_model=32, max_seq_len=48)
LLAMA = dict(
    GPT2,
    positions="rope",
    norm="rmsnorm",
    activation="silu",
    gated_mlp=True,
    bias=False,
    tie_embeddings=False,
    n_kv_head=2,
    d_ff=64,
)


def model(kind, seed=0):
    torch.manual_seed(seed)
    return Decoder(ModelConfig(**kind)).eval()


def test_mask_rule():
    causal = attention_mask(3, 5, causal=True)  # 3 queries at positions 2, 3, 4 of 5
    assert causal.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]
    assert attention_mask(4, 4, causal=False) is None
    pad = torch.tensor([[1, 1, 0, 0]])
    both = attention_mask(4, 4, causal=True, key_padding_mask=pad)
    assert both.shape == (1, 1, 4, 4) and both[0, 0, 3].tolist() == [True, True, False, False]
    assert attention_mask(2, 4, causal=False, key_padding_mask=pad).tolist() == [[[[True, True, False, False]]]]


@pytest.mark.parametrize("kind", [GPT2, LLAMA], ids=["gpt2", "llama"])
def test_causal_logits_ignore_the_future(kind):
    m = model(kind)
    x = torch.randint(0, 97, (2, 20))
    y = x.clone()
    y[:, 12:] = torch.randint(0, 97, (2, 8))
    lx, ly = m(x)[0], m(y)[0]
    assert torch.equal(lx[:, :12], ly[:, :12])
    assert not torch.allclose(lx[:, 12:], ly[:, 12:])


def test_sequence_longer_than_positions_is_an_error():
    with pytest.raises(DataError, match="longer than the model's positions"):
        model(GPT2)(torch.zeros(1, 49, dtype=torch.long))


@pytest.mark.parametrize("kind", [GPT2, LLAMA], ids=["gpt2", "llama"])
@pytest.mark.parametrize("sampling", [dict(temperature=0), dict(temperature=1.0, top_k=20, top_p=0.9, seed=5)])
def test_cached_equals_uncached(kind, sampling):
    m = model(kind)
    prompt = torch.randint(0, 97, (2, 7))
    # 60 new tokens run past max_seq_len=48, so the sliding-window path is covered too
    cached = m.generate(prompt, 60, use_cache=True, **sampling)
    plain = m.generate(prompt, 60, use_cache=False, **sampling)
    assert cached.shape == (2, 67) and torch.equal(cached, plain)


def test_top_k_one_is_greedy():
    m = model(GPT2)
    prompt = torch.randint(0, 97, (1, 5))
    assert torch.equal(m.generate(prompt, 10, top_k=1, seed=0), m.generate(prompt, 10, temperature=0))


class CharTokenizer:
    """Single characters as tokens: enough to test text-level generation."""

    class _Enc:
        def __init__(self, ids):
            self.ids = ids

    def encode(self, text):
        return self._Enc([ord(c) % 97 for c in text])

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(65 + i % 26) for i in ids)

    def token_to_id(self, token):
        return None


def test_generate_text_cuts_at_stop_string():
    m = model(GPT2)
    full = generate_text(m, CharTokenizer(), "hello", 30, temperature=0)
    stop = full[5:7]
    cut = generate_text(m, CharTokenizer(), "hello", 30, stop=[stop], temperature=0)
    assert cut == full[: full.index(stop)] and len(cut) < len(full)


@pytest.mark.parametrize(
    "idx, error, message",
    [
        (
            torch.zeros(1, 3),
            ConfigError,
            r"token ids, integers of shape \(batch, time\).*got shape \(1, 3\), torch.float32",
        ),
        (torch.zeros(3, dtype=torch.long), ConfigError, r"got shape \(3,\), torch.int64"),
        (torch.zeros(2, 0, dtype=torch.long), ConfigError, "with a token or more"),
        (torch.tensor([[1, 97]]), DataError, "token ids run from 1 to 97, outside this model's vocabulary of 97"),
        (torch.tensor([[-1, 5]]), DataError, "token ids run from -1 to 5"),
    ],
)
def test_generate_refuses_what_is_not_token_ids(idx, error, message):
    with pytest.raises(error, match=message):
        model(GPT2).generate(idx, 3)


def test_generate_texts_refuses_batches_of_no_prompts():
    with pytest.raises(ConfigError, match=r"batch_size must be at least 1 \(got 0\)"):
        generate_texts(model(GPT2), CharTokenizer(), ["hello"], 3, batch_size=0)


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16"])
@pytest.mark.parametrize("vocab", [1000, 20000])  # one chunk of rows; five (64 rows each, the last short)
def test_linear_cross_entropy_equals_cross_entropy(autocast, vocab):
    """fp32: the numbers of cross_entropy(linear(...)). bf16 autocast: as close to the float64 truth as that
    plain computation under autocast (judged against the truth, so that a change of rounding points is free)."""
    torch.manual_seed(0)
    hidden = torch.randn(300, 32, requires_grad=True)
    weight = torch.randn(vocab, 32, requires_grad=True)
    targets = torch.randint(0, vocab, (300,))
    targets[::7] = -100
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        plain = F.cross_entropy((hidden @ weight.t()).float(), targets, ignore_index=-100)
        got = linear_cross_entropy(hidden, weight, targets)
        with torch.no_grad():
            got_eval = linear_cross_entropy(hidden, weight, targets)
    truth = F.cross_entropy(hidden.double() @ weight.double().t(), targets, ignore_index=-100)
    grads_plain = torch.autograd.grad(plain, (hidden, weight))
    grads_got = [g / 2.0 for g in torch.autograd.grad(2.0 * got, (hidden, weight))]  # upstream gradient applied
    grads_truth = torch.autograd.grad(truth, (hidden, weight))
    assert abs(got.item() - got_eval.item()) < 1e-5
    if not autocast:
        assert abs(plain.item() - got.item()) < 1e-6 * plain.item()
        assert all((p - g).abs().max() < 1e-6 for p, g in zip(grads_plain, grads_got, strict=True))
        return
    assert abs(got.item() - truth.item()) <= 1.25 * abs(plain.item() - truth.item()) + 1e-6
    for p, g, t in zip(grads_plain, grads_got, grads_truth, strict=True):
        assert (g - t).abs().max() <= 1.25 * (p - t).abs().max()


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_rms_norm_gradients_equal_torch_rms_norm(dtype):
    torch.manual_seed(0)
    ours = RMSNorm(64, eps=1e-6).to(dtype)
    with torch.no_grad():
        ours.weight.normal_(1.0, 0.5)
    x = (3 * torch.randn(4, 8, 64)).to(dtype).requires_grad_()
    upstream = torch.randn(4, 8, 64).to(dtype)
    got = ours(x)
    grads_got = torch.autograd.grad(got, (x, ours.weight), upstream)
    expected = torch.nn.functional.rms_norm(x, (64,), ours.weight, 1e-6)
    grads_expected = torch.autograd.grad(expected, (x, ours.weight), upstream)
    # bf16: both compute in fp32 and round at the end, so they differ by at most a rounding step
    rtol, atol = (1e-10, 1e-10) if dtype == torch.float64 else (2**-7, 1e-3)
    assert got.dtype == dtype and torch.allclose(got, expected, rtol=rtol, atol=atol)
    for e, g in zip(grads_expected, grads_got, strict=True):
        assert g.dtype == dtype and torch.allclose(e, g, rtol=rtol, atol=atol)
    with torch.no_grad():  # inference takes torch's path
        assert torch.allclose(ours(x), expected, rtol=rtol, atol=atol)


BERT = dict(GPT2, arch="encoder", norm_position="post", activation="gelu", type_vocab_size=2, d_ff=64, norm_eps=1e-12)
T5 = dict(
    GPT2, arch="encoder_decoder", n_decoder_layer=3, positions="relative", norm="rmsnorm", activation="gelu_tanh",
    gated_mlp=True, bias=False, scale_attention=False, relative_buckets=8, relative_max_distance=20,
)  # fmt: skip


x86_only = pytest.mark.skipif(
    not torch.backends.cpu.get_cpu_capability().startswith("AVX"), reason="inference_linears' routes are x86's"
)


def packed_forwards(m) -> int:
    """How many of the model's linear layers take a route of `inference_linears` now."""
    return sum("forward" in layer.__dict__ for layer in m.modules() if isinstance(layer, torch.nn.Linear))


@x86_only
@pytest.mark.parametrize("kind", [GPT2, T5], ids=["gpt2", "t5"])
def test_packed_weights_give_the_plain_logits_and_tokens(kind, monkeypatch):
    """Packed weights for few rows, F.linear beyond FEW_ROWS (200 rows here): the same logits, biases
    included (GPT-2's), and the same greedy tokens, drafts and all; the layers are plain again afterwards."""
    monkeypatch.setattr(ops, "PACKED_FROM_ELEMENTS", 0)  # a tiny model's weights would stay in the cache
    monkeypatch.setattr(ops, "FEW_ROWS", 16)
    torch.manual_seed(0)
    m = build_model(ModelConfig(**kind)).eval()
    with torch.no_grad():
        for layer in m.modules():
            if isinstance(layer, torch.nn.Linear) and layer.bias is not None:
                layer.bias.normal_()  # not the init's zeros
    with torch.inference_mode():
        for x in (torch.randint(0, 97, (1, 1)), torch.randint(0, 97, (2, 5)), torch.randint(0, 97, (5, 40))):
            args = (x, x[:, :3]) if kind is T5 else (x,)
            plain = m(*args)[0]
            with ops.inference_linears(m):
                assert packed_forwards(m) == sum(isinstance(layer, torch.nn.Linear) for layer in m.modules())
                packed = m(*args)[0]
            torch.testing.assert_close(packed, plain, rtol=1e-5, atol=1e-5)
    assert packed_forwards(m) == 0
    prompt = torch.randint(0, 97, (3, 6))
    tokens = m.generate(prompt, 20, temperature=0)
    monkeypatch.setattr(ops, "PACKED_FROM_ELEMENTS", 1 << 40)
    assert torch.equal(m.generate(prompt, 20, temperature=0), tokens)


@x86_only
def test_packed_weights_follow_the_weights(monkeypatch):
    """A weight changed in place (an optimizer step, a load) is packed again; bf16 weights and small models are
    not packed at all (nor do bf16 ones change route where the CPU has bf16 kernels); an error inside leaves the
    layers plain, and so does the end of an enclosing call, not of an inner one."""
    m = model(LLAMA)  # its head is its own, not the embeddings
    x = torch.randint(0, 97, (1, 4))
    monkeypatch.setattr(ops, "PACKED_FROM_ELEMENTS", 0)
    with torch.inference_mode(), ops.inference_linears(m):
        before = m(x)[0]
    with torch.no_grad():
        m.lm_head.weight.mul_(2.0)
    with torch.inference_mode(), ops.inference_linears(m):
        after = m(x)[0]
    torch.testing.assert_close(after, 2 * before, rtol=1e-5, atol=1e-5)
    with pytest.raises(RuntimeError, match="inside"), ops.inference_linears(m):
        raise RuntimeError("inside")
    assert packed_forwards(m) == 0
    with ops.inference_linears(m):  # scoring inside generation, say: the inner call leaves the routes to the outer
        with ops.inference_linears(m):
            pass
        assert packed_forwards(m) == 9  # 4 in each block and the head
    assert packed_forwards(m) == 0
    monkeypatch.setattr(ops, "BF16_EMULATED", False)
    bf16 = copy.deepcopy(m).to(torch.bfloat16)
    with ops.inference_linears(bf16):
        assert packed_forwards(bf16) == 0
    monkeypatch.setattr(ops, "PACKED_FROM_ELEMENTS", 1 << 40)
    with ops.inference_linears(m):
        assert packed_forwards(m) == 0


@x86_only
def test_bf16_layers_multiply_many_rows_in_fp32_where_the_cpu_emulates_bf16(monkeypatch):
    """Beyond FEW_ROWS rows a bf16 layer's product is the fp32 one of its weights, rounded to bf16 once; up to it,
    torch's bf16 product."""
    monkeypatch.setattr(ops, "BF16_EMULATED", True)
    monkeypatch.setattr(ops, "FEW_ROWS", 4)
    torch.manual_seed(0)
    layer = torch.nn.Linear(64, 48).to(torch.bfloat16)
    few, many = torch.randn(2, 2, 64).bfloat16(), torch.randn(2, 6, 64).bfloat16()
    with torch.inference_mode(), ops.inference_linears(torch.nn.Sequential(layer)):
        assert packed_forwards(layer) == 1
        got_few, got_many = layer(few), layer(many)
    in_fp32 = F.linear(many.float(), layer.weight.float(), layer.bias.float()).bfloat16()
    assert got_many.dtype == torch.bfloat16 and torch.equal(got_many, in_fp32)
    assert torch.equal(got_few, F.linear(few, layer.weight, layer.bias))
    assert packed_forwards(layer) == 0


@pytest.mark.parametrize("kind", [GPT2, LLAMA, BERT, T5], ids=["gpt2", "llama", "bert", "t5"])
def test_bf16_model_runs_on_cpu(kind):
    """A model cast with .to(bfloat16) computes in bf16 end to end (CPU attention upcasts inside only) and gives
    the fp32 model's logits up to bf16 rounding; the generating kinds generate, cache and all."""
    torch.manual_seed(0)
    fp32 = build_model(ModelConfig(**kind)).eval()
    with torch.no_grad():
        for p in fp32.parameters():  # larger than the init's 0.02, so that the logits spread
            p.normal_(0.0, 0.3)
    bf16 = copy.deepcopy(fp32).to(torch.bfloat16)
    x = torch.randint(0, 97, (2, 12))
    args = (x, x[:, :7]) if kind is T5 else (x,)
    with torch.no_grad():
        expected, got = fp32(*args)[0], bf16(*args)[0]
    assert got.dtype == torch.bfloat16
    assert expected.abs().max() > 1.0
    assert (got.float() - expected).abs().max() <= 0.05 * expected.abs().max()
    if kind is not BERT:
        out = bf16.generate(x[:, :5], 8, temperature=0)
        assert out.shape == (2, 9 if kind is T5 else 13)


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(LLAMA, rope_scaling="yarn"), "model.rope_scaling='yarn' is not one of null, llama3"),
        (dict(GPT2, rope_scaling="llama3"), "model.rope_scaling is for model.positions=rope, not learned"),
        (dict(LLAMA, rope_scaling="llama3", rope_high_freq_factor=1.0), "must be larger than model.rope_low_freq"),
        (dict(LLAMA, rope_scaling="llama3", rope_scaling_factor=0.0), "model.rope_scaling_factor must be positive"),
    ],
)
def test_rope_scaling_rules(fields, message):
    with pytest.raises(ConfigError, match=message):
        ModelConfig(**fields).resolved()
