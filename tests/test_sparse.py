"""The two sparse ideas: Switch Transformer experts (routing, capacity, auxiliary losses, against transformers'
layer) and GPT-3's alternating banded attention (the mask rule, cached decoding)."""

import dataclasses
import math

import pytest
import torch

from pretrainer.config import ModelConfig
from pretrainer.model import build_model
from pretrainer.model.blocks import SwitchMLP, attention_mask, load_balancing_loss, moe_metrics

MOE = ModelConfig(vocab_size=64, n_layer=2, n_head=2, d_model=32, d_ff=64, max_seq_len=32, moe_experts=4,
                  activation="relu", bias=False)  # fmt: skip


def test_switch_layer_equals_transformers_with_tokens_dropped():
    """One Switch layer and transformers' SwitchTransformersSparseMLP, same weights and the same capacity (ours
    ceil(1.0 × 16 / 4) = 4 tokens per expert and sequence): the same outputs, tokens over capacity included."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = dataclasses.replace(MOE, moe_capacity_factor=1.0).resolved()
    ours = SwitchMLP(config).eval()
    theirs = transformers.models.switch_transformers.modeling_switch_transformers.SwitchTransformersSparseMLP(
        transformers.SwitchTransformersConfig(
            d_model=32, d_ff=64, num_experts=4, expert_capacity=ours.capacity(16), router_jitter_noise=0, dropout_rate=0
        )  # fmt: skip
    ).eval()
    with torch.no_grad():
        ours.router.weight.normal_(0, 1.0)  # confident routing: some experts overflow
        theirs.router.classifier.weight.copy_(ours.router.weight)
        for e, mlp in enumerate(ours.experts):
            theirs.experts[f"expert_{e}"].wi.weight.copy_(mlp.fc.weight)
            theirs.experts[f"expert_{e}"].wo.weight.copy_(mlp.proj.weight)
    x = torch.randn(3, 16, 32)
    kept = ours.route(x)[3]
    assert 0 < (~kept).sum() < kept.numel() // 2  # some tokens dropped, most not
    with torch.no_grad():
        assert (ours(x) - theirs(x)).abs().max() < 1e-5


def test_capacity_overflow_drops_exactly_the_later_tokens():
    """A router that sends tokens by their first feature: five tokens to expert 0 in a sequence of 8 with 2
    experts and capacity factor 1 (4 places): the fifth of them gets no output, every other token does."""
    config = dataclasses.replace(MOE, moe_experts=2, moe_capacity_factor=1.0).resolved()
    layer = SwitchMLP(config).eval()
    with torch.no_grad():
        layer.router.weight.zero_()
        layer.router.weight[0, 0], layer.router.weight[1, 1] = 5.0, 5.0
    x = torch.randn(1, 8, 32).abs()  # positive features: the expert is the larger of the first two
    to_zero = [0, 1, 2, 4, 6]
    x[0, :, :2] = 0.0
    x[0, to_zero, 0], x[0, [3, 5, 7], 1] = 1.0, 1.0
    _, _, expert, kept = layer.route(x)
    assert expert[0].tolist() == [0, 0, 0, 1, 0, 1, 0, 1] and layer.capacity(8) == 4
    dropped = (~kept[0]).nonzero().flatten().tolist()
    assert dropped == [6]  # the fifth token for expert 0
    y = layer(x)[0]
    assert y[6].abs().max() == 0 and (y.abs().amax(-1)[[0, 1, 2, 3, 4, 5, 7]] > 0).all()


def test_the_auxiliary_losses_equal_their_hand_computation_and_transformers():
    torch.manual_seed(1)
    probs = torch.randn(3, 10, 4).softmax(-1)
    expert = probs.argmax(-1)
    by_hand = 0.0
    for row in range(3):
        f = [(expert[row] == i).float().mean() for i in range(4)]
        p = [probs[row, :, i].mean() for i in range(4)]
        by_hand += 4 * sum(fi * pi for fi, pi in zip(f, p, strict=True)) / 3
    assert abs(load_balancing_loss(probs, expert) - by_hand) < 1e-6
    uniform = torch.full((2, 8, 4), 0.25)
    assert abs(load_balancing_loss(uniform, torch.arange(8).remainder(4).expand(2, 8)) - 1.0) < 1e-6
    transformers = pytest.importorskip("transformers")
    hf = transformers.models.switch_transformers.modeling_switch_transformers
    assert abs(load_balancing_loss(probs, expert) - hf.load_balancing_loss_func(probs, expert)) < 1e-6
    layer = SwitchMLP(MOE.resolved()).train()
    x = torch.randn(2, 12, 32)
    layer(x)
    logits = layer.route(x)[0]
    assert abs(layer.losses[1] - hf.router_z_loss_func(logits)) < 1e-5


def test_the_training_loss_adds_the_weighted_router_losses_and_the_metrics_count_them():
    torch.manual_seed(0)
    config = dataclasses.replace(MOE, moe_aux_loss=0.5, moe_z_loss=0.25)
    model = build_model(config).train()
    x = torch.randint(0, 64, (2, 16))
    _, loss = model(x, targets=x)
    layer = model.blocks[1].mlp
    assert isinstance(layer, SwitchMLP) and not isinstance(model.blocks[0].mlp, SwitchMLP)  # every other block
    plain = model.eval()(x, targets=x)[1]  # evaluation reports the language-model loss alone
    assert abs(loss - plain - 0.5 * layer.losses[0] - 0.25 * layer.losses[1]) < 1e-5
    model.train()(x, targets=x)
    metrics = moe_metrics(model)
    assert set(metrics) == {"moe_balance", "moe_dropped", "moe_load"}
    assert math.isclose(sum(metrics["moe_load"]), 1.0, abs_tol=1e-3) and len(metrics["moe_load"]) == 4
    assert 0 <= metrics["moe_dropped"] < 1 and metrics["moe_balance"] >= 1 - 1e-3  # the loss is at least 1
    assert moe_metrics(model) == {}  # read once, then cleared


def test_gradients_reach_every_expert_that_received_tokens():
    torch.manual_seed(0)
    layer = SwitchMLP(MOE.resolved()).train()
    with torch.no_grad():
        layer.router.weight.normal_(0, 3.0)
    x = torch.randn(2, 16, 32)
    _, _, expert, kept = layer.route(x)
    layer(x).square().sum().backward()
    served = set(expert[kept].tolist())
    for e, mlp in enumerate(layer.experts):
        grad = mlp.fc.weight.grad
        assert grad is not None  # every expert takes part, as DDP needs
        assert (grad.abs().max() > 0) == (e in served), e
    assert layer.router.weight.grad.abs().max() > 0  # through the probability that scales each output


def test_the_banded_mask_sees_the_last_window_keys():
    mask = attention_mask(6, 6, causal=True, window=3)
    for q in range(6):
        assert mask[q].nonzero().flatten().tolist() == [k for k in range(6) if q - 3 < k <= q]
    decoding = attention_mask(1, 6, causal=True, window=3)  # the last query of a cache of 6
    assert decoding[0].tolist() == [False, False, False, True, True, True]
    assert attention_mask(1, 3, causal=True, window=3) is None  # the window holds every key: dense


def test_alternating_attention_decodes_with_a_cache_as_it_computes_whole():
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=64, n_layer=2, n_head=2, d_model=32, max_seq_len=32,
                         attention_pattern="alternating", attention_window=4)  # fmt: skip
    model = build_model(config).eval()
    assert [b.attn.window for b in model.blocks] == [None, 4]
    x = torch.randint(0, 64, (2, 20))
    whole = model(x)[0]
    cache = model.new_cache(2, 32)
    steps = [model(x[:, :5], cache=cache)[0]] + [model(x[:, i : i + 1], cache=cache)[0] for i in range(5, 20)]
    assert (torch.cat(steps, 1) - whole).abs().max() < 1e-5
    dense = build_model(dataclasses.replace(config, attention_pattern="dense", attention_window=None)).eval()
    dense.load_state_dict(model.state_dict())
    assert (dense(x[:, :4])[0] - model(x[:, :4])[0]).abs().max() < 1e-6  # no longer than the window: the same
    assert (dense(x)[0] - whole).abs().max() > 1e-3  # longer: the band changes the local layer


def test_an_encoder_with_experts_gives_padded_and_unpadded_rows_the_same_outputs():
    """Experts route per sequence in the (batch, time) layout: a row's outputs do not depend on the rows beside it,
    and its real tokens come out as without padding (with room for all: padding sits after them in the queues)."""
    torch.manual_seed(0)
    config = dataclasses.replace(MOE, arch="encoder", moe_capacity_factor=4.0)
    model = build_model(config).eval()
    x = torch.randint(0, 64, (2, 12))
    pad = torch.ones(2, 12, dtype=torch.bool)
    pad[1, 8:] = False
    together = model.encode(x, padding_mask=pad)
    alone = model.encode(x[1:], padding_mask=pad[1:])
    unpadded = model.encode(x[1:, :8])
    assert (together[1, :8] - alone[0, :8]).abs().max() < 1e-5
    assert (together[1, :8] - unpadded[0]).abs().max() < 1e-5
