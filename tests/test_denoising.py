"""BART's denoising objective: each noising function's statistics and invariants, measured over >= 10k tokens, and
the batches the trainer reads."""

import math

import numpy as np
import pytest
import torch

from pretrainer.config import load_config
from pretrainer.data.objectives import (
    delete_tokens,
    infill,
    make_objective,
    permute_sentences,
    rotate,
    sentence_end_table,
)
from pretrainer.data.tokenizer import ROBERTA_SPECIALS, train_bpe

MASK = 4
N = 20_000  # tokens per statistics test


def documents(n_rows=200, length=100, seed=0):
    """Rows of distinct ordinary ids (>= 5), so that every token can be traced through the noise."""
    rng = np.random.default_rng(seed)
    return [5 + rng.permutation(10 * length)[:length] for _ in range(n_rows)]


def test_infilling_masks_the_ratio_in_poisson_spans_zeros_included():
    """Long documents, so that the one span per document cut to the budget (and left out here) does not bias the
    lengths: those spans are long more often, as the one that crosses the budget is."""
    rng = np.random.default_rng(0)
    lengths, masked, total = [], 0, 0
    for row in documents(n_rows=4, length=5000):
        out, spans = infill(row, 0.3, 3.0, MASK, rng)
        assert spans.sum() == math.ceil(0.3 * len(row))  # the budget, exactly
        assert (out == MASK).sum() == len(spans)  # one <mask> per span, a length-0 one too
        # the rest is the unmasked tokens, in order
        place = {token: i for i, token in enumerate(row)}
        kept = [place[token] for token in out[out != MASK]]
        assert len(kept) == len(row) - spans.sum() and (np.diff(kept) > 0).all()
        lengths.extend(spans[:-1])  # the last span is cut to the budget
        masked, total = masked + spans.sum(), total + len(row)
    assert total >= N and abs(masked / total - 0.3) < 0.01
    lengths = np.array(lengths)
    assert abs(lengths.mean() - 3.0) < 0.1  # Poisson(3): mean 3, variance 3, P(0) = e^-3
    assert abs(lengths.var() - 3.0) < 0.3
    assert abs((lengths == 0).mean() - math.exp(-3)) < 0.015 and (lengths == 0).sum() > 0


def test_token_masking_masks_single_tokens_in_place():
    rng = np.random.default_rng(1)
    masked = total = 0
    for row in documents():
        out, _ = infill(row, 0.3, 0.0, MASK, rng)
        assert len(out) == len(row) and (out[out != MASK] == row[out != MASK]).all()
        masked, total = masked + (out == MASK).sum(), total + len(row)
    assert total >= N and masked == math.ceil(0.3 * 100) * 200


def test_sentence_permutation_permutes_whole_sentences():
    """Documents of 10 sentences of 1-19 distinct tokens, each ending in an end token (two of them in a row for some):
    the output is the same sentences, each whole, in a new order."""
    rng = np.random.default_rng(2)
    moved = total = 0
    for row in documents():
        cuts = np.sort(rng.choice(np.arange(1, len(row)), 9, replace=False))
        sentences = np.split(row, cuts)
        ends = np.zeros(len(row), dtype=bool)
        ends[np.append(cuts, len(row)) - 1] = True
        ends[cuts[:3] - 2] = True  # "?!": a run of ends closes one sentence
        out = permute_sentences(row, ends, 1.0, rng)
        starts = {int(s[0]): tuple(s) for s in sentences}
        pieces, at = [], 0
        while at < len(out):  # read the output back as sentences, each found by its first token
            piece = starts[int(out[at])]
            assert tuple(out[at : at + len(piece)]) == piece
            pieces.append(piece)
            at += len(piece)
        assert sorted(pieces) == sorted(map(tuple, sentences))
        moved += pieces != list(map(tuple, sentences))
        total += len(row)
    assert total >= N and moved > 190  # nearly every document's order changed
    untouched = permute_sentences(documents()[0], np.ones(100, dtype=bool), 0.0, rng)
    assert np.array_equal(untouched, documents()[0])


def test_rotation_starts_at_a_token_boundary():
    rng = np.random.default_rng(3)
    starts = []
    for row in documents():
        out = rotate(row, rng)
        start = int(np.flatnonzero(row == out[0])[0])
        assert start > 0 and np.array_equal(out, np.concatenate([row[start:], row[:start]]))
        starts.append(start)
    assert len(set(starts)) > 50  # uniform over the positions


def test_deletion_removes_exactly_the_chosen_tokens():
    rng = np.random.default_rng(4)
    deleted = total = 0
    for row in documents():
        out, kept = delete_tokens(row, 0.1, rng)
        assert np.array_equal(out, row[kept]) and (np.diff(kept) > 0).all()
        gone = np.setdiff1d(np.arange(len(row)), kept)
        assert not np.isin(row[gone], out).any()
        deleted, total = deleted + len(gone), total + len(row)
    assert total >= N and deleted == round(0.1 * 100) * 200


@pytest.fixture(scope="module")
def roberta_tokenizer():
    text = ["To be, or not to be? That is the question. Whether 'tis nobler in the mind to suffer!"] * 50
    return train_bpe(text, vocab_size=300, specials=ROBERTA_SPECIALS)


def test_sentence_ends_are_the_tokens_that_end_in_stops(roberta_tokenizer):
    ends = sentence_end_table(roberta_tokenizer)
    ids = roberta_tokenizer.encode("That is the question. Whether").ids
    tokens = [roberta_tokenizer.id_to_token(i) for i in ids]
    assert [t for t, i in zip(tokens, ids, strict=True) if ends[i]] == [t for t in tokens if t.endswith(".")]
    assert any(ends[i] for i in ids)


def test_denoising_batches_hold_noised_inputs_and_the_whole_passage_as_target(roberta_tokenizer):
    config = load_config(
        None, ["model.arch=encoder_decoder", "model.positions=learned", "model.decoder_start_id=2",
               "objective.name=denoising", "objective.seq_len=40", "data.tokenizer=roberta"]
    )  # fmt: skip
    objective = make_objective(config, roberta_tokenizer)
    rows = np.stack([roberta_tokenizer.encode(" To be, or not to be? That is the question. " * 4).ids[:38]] * 6)
    batch = objective.batch(rows, rows.ravel(), np.random.default_rng(0))
    bos, pad, eos = 0, 1, 2
    assert batch["targets"].shape == (6, 40) and (batch["targets"][:, 0] == bos).all()
    assert (batch["targets"][:, 1:-1] == torch.from_numpy(rows)).all() and (batch["targets"][:, -1] == eos).all()
    assert (batch["decoder_input_ids"][:, 0] == 2).all()
    assert (batch["decoder_input_ids"][:, 1:] == batch["targets"][:, :-1]).all()
    inputs, real = batch["input_ids"], batch["padding_mask"]
    assert (inputs[~real] == pad).all() and (inputs[:, 0] == bos).all()
    lengths = real.sum(1)
    assert (inputs[torch.arange(6), lengths - 1] == eos).all()
    assert ((inputs == MASK) & real).sum(1).min() > 0 and (lengths < 40).all()  # infilling shortens
    assert not all(torch.equal(inputs[0], inputs[i]) for i in range(1, 6))  # each row its own noise
