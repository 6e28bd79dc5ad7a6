"""In-context learning from scratch: the synthetic:induction corpus, attention-only models, and attention read-outs."""

import json
import math

import numpy as np
import pytest
import torch

import pretrainer
from pretrainer.config import ModelConfig, load_config
from pretrainer.data.objectives import IGNORE, CausalLM
from pretrainer.data.shards import PretrainingBatches
from pretrainer.data.synthetic import Induction, synthetic_corpus
from pretrainer.errors import CheckpointError, ConfigError, ConversionError, DataError
from pretrainer.eval.attention import attention_probs, head_scores
from pretrainer.model import build_model
from pretrainer.model.hf import config_to_hf
from tests.conftest import assert_resume_is_exact


def test_each_sequence_is_a_random_half_repeated_and_a_function_of_seed_and_index():
    rows = Induction(seed=7).rows(10, 5)
    assert rows.shape == (5, 64) and rows.min() >= 0 and rows.max() < 64
    assert (rows[:, :32] == rows[:, 32:]).all()
    assert len({tuple(r) for r in rows}) == 5  # fresh sequences, not one repeated
    assert (Induction(seed=7).rows(12, 1) == rows[2:3]).all()  # example 12 alone is example 12 of the batch
    assert not (Induction(seed=8).rows(10, 5) == rows).all()
    # uniform over the vocabulary: every token drawn, none much more often than 1/64
    counts = np.bincount(Induction(seed=0).rows(0, 200)[:, :32].ravel(), minlength=64) / (200 * 32)
    assert counts.min() > 0 and abs(counts - 1 / 64).max() < 0.01


def test_validation_halves_score_only_their_positions():
    batches = PretrainingBatches(CausalLM(63), Induction(seed=1), seed=1)
    halves = Induction.val_splits(batches)
    full = batches.make(0, 3)
    first, second = halves["first_half"].make(0, 3), halves["second_half"].make(0, 3)
    assert (first["input_ids"] == full["input_ids"]).all()
    # target j predicts position j + 1: positions 1..31 and 33..63
    assert ((first["targets"] != IGNORE).nonzero()[:, 1].unique() == torch.arange(0, 31)).all()
    assert ((second["targets"] != IGNORE).nonzero()[:, 1].unique() == torch.arange(32, 63)).all()
    assert (second["targets"][:, 32:] == full["targets"][:, 32:]).all()
    # every second-half target is the input 31 positions back: copyable from the context
    assert (second["targets"][:, 32:] == full["input_ids"][:, 1:32]).all()


@pytest.mark.parametrize(
    "overrides, error, message",
    [
        (
            ["data.source=synthetic:nothing"],
            DataError,
            "no synthetic corpus 'nothing'; built in: synthetic:induction, synthetic:induction-varied",
        ),
        (["objective.seq_len=32"], ConfigError, "with objective.seq_len=63 .sequences of 64 tokens"),
        (
            ["objective.name=mlm", "model.arch=encoder", "model.positions=learned"],
            ConfigError,
            "is for objective.name=causal_lm",
        ),
    ],
)
def test_a_synthetic_corpus_refuses_what_it_cannot_feed(overrides, error, message):
    with pytest.raises(error, match=message):
        synthetic_corpus(load_config("configs/icl-induction.yaml", overrides))


def test_an_attention_only_model_has_no_mlp_and_no_transformers_family():
    config = ModelConfig(vocab_size=64, n_layer=2, n_head=4, d_model=32, max_seq_len=64, attention_only=True)
    model = build_model(config)
    assert not any("mlp" in name or "norm2" in name for name, _ in model.named_parameters())
    logits, _ = model(torch.randint(0, 64, (2, 10)))
    assert logits.shape == (2, 10, 64)
    with pytest.raises(ConversionError, match="attention_only"):
        config_to_hf(config)


def test_attention_probs_equal_a_hand_computation():
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=64, n_layer=1, n_head=2, d_model=16, max_seq_len=16, attention_only=True)
    model = build_model(config).eval()
    ids = torch.randint(0, 64, (1, 9))
    (probs,) = attention_probs(model, ids)
    with torch.no_grad():
        x = model.tok_emb(ids) + model.pos_emb(torch.arange(9))
        q, k, _ = model.blocks[0].attn.qkv(model.blocks[0].norm1(x)).split(16, -1)
        q, k = (a.view(9, 2, 8).transpose(0, 1) for a in (q, k))
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(8)
        expected = scores.masked_fill(~torch.ones(9, 9, dtype=torch.bool).tril(), float("-inf")).softmax(-1)
    assert probs.shape == (2, 9, 9) and torch.allclose(probs, expected, atol=1e-6)
    assert "_attend" not in vars(model.blocks[0].attn)  # the recording is taken off again


def test_head_scores_read_the_diagonal_at_an_offset():
    probs = torch.zeros(2, 6, 6)
    probs[0, torch.arange(1, 6), torch.arange(0, 5)] = 1.0  # head 0 looks one back
    probs[1, :, 0] = 1.0  # head 1 looks at the start
    assert torch.allclose(head_scores(probs, 1, range(1, 6)), torch.tensor([1.0, 0.2]))


def test_two_attention_layers_learn_to_copy_from_the_context_and_one_layer_does_not(tmp_path):
    """The recipe, shortened: two layers pass the phase change (a previous-token head, then an induction head),
    one layer cannot compose the two and stays far above (about 3 nats after the first repeat, against ~0)."""
    shorter = ["train.max_steps=450", "train.eval_every=450", "train.save_every=450", "train.progress=false",
               "eval.batches=2"]  # fmt: skip
    two = pretrainer.train(load_config("configs/icl-induction.yaml", shorter), tmp_path / "two")
    one = pretrainer.train(load_config("configs/icl-induction.yaml", [*shorter, "model.n_layer=1"]), tmp_path / "one")
    chance = math.log(64)
    for run in (two, one):  # nothing predicts a token before the repeat
        assert run.scores["val_loss_first_half"] > chance - 0.05
    assert two.scores["val_loss_second_half"] < 1.0 and two.scores["icl_score"] < -3.0
    assert one.scores["val_loss_second_half"] > 2.5
    heads = {name: json.loads((tmp_path / name / "attention.json").read_text()) for name in ("two", "one")}
    assert heads["two"]["previous_token_score"] > 0.5 and heads["two"]["induction_score"] > 0.5
    assert heads["one"]["induction_score"] < 0.3
    assert (tmp_path / "two" / "attention.png").stat().st_size > 1000


def test_a_synthetic_run_resumes_exactly_and_refuses_another_corpus(tmp_path):
    config = load_config(
        "configs/icl-induction.yaml",
        ["train.max_steps=12", "train.save_every=6", "train.eval_every=6", "train.log_every=4", "eval.batches=1",
         "train.batch_size=8", "train.progress=false"],
    )  # fmt: skip
    pretrainer.train(config, tmp_path / "full")
    assert_resume_is_exact(
        lambda run: pretrainer.train(config, run, resume=True), tmp_path / "full", tmp_path / "resumed", 6, 12
    )
    config.data.source = "synthetic:induction"
    with pytest.raises(CheckpointError, match="data.source is 'synthetic:induction-varied' in the checkpoint"):
        pretrainer.train(config, tmp_path / "full", resume=True)
