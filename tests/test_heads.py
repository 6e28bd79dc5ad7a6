"""Task heads on the encoder and the decoder: shapes, losses against a hand computation, padding."""

import pytest
import torch
import torch.nn.functional as F

from pretrainer.config import ModelConfig
from pretrainer.errors import ConfigError
from pretrainer.model import build_model

SMALL = dict(vocab_size=97, n_layer=2, n_head=4, d_model=32, max_seq_len=48)


def encoder(head, n_labels=0):
    torch.manual_seed(0)
    return build_model(ModelConfig(arch="encoder", type_vocab_size=2, head=head, n_labels=n_labels, **SMALL)).eval()


def batch(seed=0):
    """Two rows, the second padded after 7 tokens."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 97, (2, 12), generator=g)
    pad = torch.ones(2, 12, dtype=torch.bool)
    pad[1, 7:] = False
    return ids, pad


def test_sequence_classification_on_the_pooled_cls():
    model = encoder("sequence", 3)
    ids, pad = batch()
    labels = torch.tensor([2, 0])
    logits, loss = model(ids, padding_mask=pad, labels=labels)
    assert logits.shape == (2, 3)
    with torch.no_grad():
        by_hand = model.head.linear(torch.tanh(model.pooler(model.encode(ids, padding_mask=pad)[:, 0])))
    assert torch.allclose(logits, by_hand, atol=1e-6)
    assert torch.allclose(loss, -by_hand.log_softmax(-1)[[0, 1], [2, 0]].mean(), atol=1e-6)
    sums = model.eval_sums(ids, padding_mask=pad, labels=labels)
    assert sums["accuracy"][1] == 2 and int(sums["accuracy"][0]) == int((by_hand.argmax(-1) == labels).sum())


def test_regression_is_one_number_and_mean_squared_error():
    model = encoder("sequence", 1)
    ids, pad = batch()
    labels = torch.tensor([0.5, -1.25])
    logits, loss = model(ids, padding_mask=pad, labels=labels)
    assert logits.shape == (2,) and torch.allclose(loss, ((logits - labels) ** 2).mean())
    assert set(model.eval_sums(ids, padding_mask=pad, labels=labels)) == {"loss"}


def test_token_head_ignores_unlabelled_tokens():
    model = encoder("token", 5)
    ids, pad = batch()
    labels = torch.randint(0, 5, (2, 12))
    labels[:, 0] = -100  # [CLS]
    labels[1, 7:] = -100  # padding
    logits, loss = model(ids, padding_mask=pad, labels=labels)
    assert logits.shape == (2, 12, 5)
    kept = labels != -100
    assert torch.allclose(loss, F.cross_entropy(logits[kept], labels[kept]), atol=1e-6)


def test_span_head_never_starts_or_ends_in_padding():
    model = encoder("span")
    ids, pad = batch()
    start, end = torch.tensor([3, 2]), torch.tensor([5, 6])
    logits, loss = model(ids, padding_mask=pad, start_positions=start, end_positions=end)
    assert logits.shape == (2, 12, 2) and torch.isinf(logits[1, 7:]).all() and torch.isfinite(logits[0]).all()
    by_hand = (F.cross_entropy(logits[..., 0], start) + F.cross_entropy(logits[..., 1], end)) / 2
    assert torch.allclose(loss, by_hand)


@pytest.mark.parametrize("head, n_labels", [("sequence", 3), ("token", 5), ("span", 0)])
def test_the_encoder_skips_padding_without_changing_outputs_or_gradients(head, n_labels):
    """A padded batch runs its layers on the real tokens alone (and a sequence head's last layer on <cls> alone):
    each row must still give the logits, and the weights the gradients, it gives alone, unpadded."""
    ids, pad = batch()
    ids[1, 7:] = 0  # what padding carries must not matter either
    model = encoder(head, n_labels).train()  # dropout is 0; train mode checks nothing depends on eval
    padded, _ = model(ids, padding_mask=pad)
    real = padded if head == "sequence" else padded[pad]
    grads = torch.autograd.grad(real.sum(), list(model.parameters()), allow_unused=True)
    alone = [model(ids[:1])[0], model(ids[1:2, :7])[0]]
    by_row = torch.cat(alone) if head == "sequence" else torch.cat([a[0] for a in alone])
    assert torch.allclose(real, by_row, atol=1e-5)
    by_row_grads = torch.autograd.grad(by_row.sum(), list(model.parameters()), allow_unused=True)
    for name, got, expected in zip([n for n, _ in model.named_parameters()], grads, by_row_grads, strict=True):
        assert (got is None) == (expected is None), name
        assert got is None or torch.allclose(got, expected, atol=1e-5), name


def test_decoder_classifies_from_the_last_real_token():
    """Padding on the right changes nothing: each row gives the logits it gives alone, unpadded."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(head="sequence", n_labels=4, **SMALL)).eval()
    ids, pad = batch()
    logits, _ = model(ids, padding_mask=pad)
    alone = torch.cat([model(ids[:1])[0], model(ids[1:2, :7])[0]])
    assert logits.shape == (2, 4) and torch.allclose(logits, alone, atol=1e-5)
    assert not torch.allclose(logits[1], model(ids[1:2])[0][0], atol=1e-3)  # not the last position, padding


def test_pretrained_weights_load_into_a_headed_model():
    """The body's tensors keep their names, so a pretrained checkpoint loads under a task head (the LM head's
    tensors are left over, the task head's are fresh)."""
    torch.manual_seed(0)
    pretrained = build_model(ModelConfig(arch="encoder", type_vocab_size=2, **SMALL))
    tuned = encoder("sequence", 3)
    missing, unexpected = tuned.load_state_dict(pretrained.state_dict(), strict=False)
    assert set(missing) == {"head.linear.weight", "head.linear.bias"}
    assert all(k.startswith(("mlm_", "nsp")) for k in unexpected) and unexpected


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(arch="encoder_decoder", positions="relative", head="sequence", n_labels=2), "answers every task as text"),
        (dict(head="token", n_labels=3), "model.arch=decoder takes model.head=lm or sequence, not token"),
        (dict(arch="encoder", head="sequence"), "model.head=sequence needs model.n_labels"),
        (dict(n_labels=3), "model.n_labels is for model.head=sequence or token, not lm"),
    ],
)
def test_heads_that_do_not_fit_are_refused(fields, message):
    with pytest.raises(ConfigError, match=message):
        build_model(ModelConfig(**{**SMALL, **fields}))
