import random

import numpy as np
import pytest
import torch

from pretrainer.config import load_config
from pretrainer.data.objectives import (
    IGNORE,
    batch_noise_masks,
    make_objective,
    mask_tokens,
    random_spans_noise_mask,
    sentence_pairs,
    span_corrupt,
    span_masks,
    t5_lengths,
    word_starts_from_tokens,
)
from pretrainer.data.sources import DataError
from pretrainer.data.tokenizer import (
    eos_id,
    sentinel_ids,
    special_ids,
    train_bpe,
    train_unigram,
    train_wordpiece,
)

PAD, UNK, CLS, SEP, MASK = range(5)  # the WordPiece ids
V = 1000  # vocabulary of the synthetic MLM batches; ids 0..4 are special


@pytest.fixture(scope="module")
def texts():
    """A few hundred lowercase sentences over 400 made-up words: enough pieces for the vocabularies below."""
    rng = random.Random(0)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 8))) for _ in range(400)]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(5, 15))) for _ in range(400)]


def mlm_batch(rows=128, cols=512):
    """Random non-special ids framed by [CLS], a [SEP] in the middle and at the end, and [PAD] after it."""
    ids = torch.randint(5, V, (rows, cols), generator=torch.Generator().manual_seed(0))
    ids[:, 0], ids[:, cols // 2], ids[:, -41], ids[:, -40:] = CLS, SEP, SEP, PAD
    return ids


def mask(ids, seed=1, **kw):
    g = torch.Generator().manual_seed(seed)
    return mask_tokens(
        ids, mask_id=MASK, tokenizer_vocab_size=V, special_ids={PAD, UNK, CLS, SEP, MASK}, generator=g, **kw
    )


def test_wordpiece_specials_and_round_trip(texts):
    tok = train_wordpiece(texts, vocab_size=300)
    assert [tok.token_to_id(t) for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")] == [0, 1, 2, 3, 4]
    assert special_ids(tok) == {0, 1, 2, 3, 4} and tok.get_vocab_size() == 300
    for text in texts[:20]:
        assert tok.decode(tok.encode(text).ids) == text
    assert tok.decode(tok.encode(texts[0].upper()).ids) == texts[0]  # lowercased
    with pytest.raises(DataError, match="no sentinel tokens"):
        sentinel_ids(tok)


def test_unigram_specials_sentinels_and_round_trip(texts):
    tok = train_unigram(texts, vocab_size=300, n_sentinels=100)
    assert [tok.token_to_id(t) for t in ("<pad>", "</s>", "<unk>")] == [0, 1, 2] and eos_id(tok) == 1
    assert tok.get_vocab_size() == 300
    sentinels = sentinel_ids(tok)
    assert sentinels == list(range(299, 199, -1))  # <extra_id_0> is the highest id, as in T5
    assert [tok.id_to_token(i) for i in sentinels[:2]] == ["<extra_id_0>", "<extra_id_1>"]
    assert special_ids(tok) == {0, 1, 2, *sentinels}
    for text in texts[:20]:
        assert tok.decode(tok.encode(text).ids) == text


def test_byte_level_bpe_needs_room_for_every_byte_and_eos(texts):
    with pytest.raises(DataError, match=r"data.vocab_size=256 is too small .* at least 257"):
        train_bpe(texts, vocab_size=256)
    assert train_bpe(texts, vocab_size=257).get_vocab_size() == 257


def test_wordpiece_needs_room_for_its_specials_and_the_corpus_characters(texts):
    words = [w for t in texts for w in t.split()]
    starts, continuations = {w[0] for w in words}, {c for w in words for c in w[1:]}  # "c" and "##c" pieces
    minimum = 5 + len(starts) + len(continuations)
    for too_small in (3, minimum - 1):
        with pytest.raises(DataError, match=rf"data.vocab_size={too_small} is too small .* at least {minimum}"):
            train_wordpiece(texts, vocab_size=too_small)
    assert train_wordpiece(texts, vocab_size=minimum).get_vocab_size() == minimum


def test_unigram_needs_room_for_its_specials_sentinels_and_the_corpus_characters(texts):
    characters = {c for t in texts for c in t.replace(" ", "▁")} | {"▁"}  # Metaspace's word marker
    minimum = 3 + 20 + len(characters) + 1  # and one piece longer than a character
    for too_small in (20, 23, minimum - 1):
        with pytest.raises(DataError, match=rf"data.vocab_size={too_small} is too small .* at least {minimum}"):
            train_unigram(texts, vocab_size=too_small, n_sentinels=20)
    assert train_unigram(texts, vocab_size=minimum, n_sentinels=20).get_vocab_size() == minimum


def test_mlm_statistics():
    ids = mlm_batch()
    inputs, labels = mask(ids)
    chosen, special = labels != IGNORE, ids < 5
    assert not (chosen & special).any()  # [CLS], [SEP], [PAD] are never chosen
    assert torch.equal(labels[chosen], ids[chosen]) and torch.equal(inputs[~chosen], ids[~chosen])
    assert (~special).sum() > 50_000
    assert abs(chosen.sum() / (~special).sum() - 0.15) < 0.01
    # A random replacement is uniform over the 995 non-special ids, so it equals the original with probability
    # 1/995: "replaced" counts the visible changes, "unchanged" the 10% kept plus those coincidences.
    was, now = ids[chosen], inputs[chosen]
    masked, unchanged = now == MASK, now == was
    replaced = ~masked & ~unchanged
    coincidence = 0.1 / 995
    for part, expected in ((masked, 0.8), (replaced, 0.1 - coincidence), (unchanged, 0.1 + coincidence)):
        assert abs(part.float().mean() - expected) < 0.02
    assert (now[~masked] >= 5).all()  # no random replacement is special
    assert len(now[replaced].unique()) > 500  # drawn across the vocabulary: ~930 uniform draws hit ~600 ids


def test_random_replacements_are_never_special():
    # with 3 ordinary ids in a vocabulary of 8, draws over the whole vocabulary would be special 5 times in 8
    # (and [MASK] counts as special even when special_ids leave it out)
    ids = torch.randint(5, 8, (64, 256), generator=torch.Generator().manual_seed(0))
    ids[:, :8] = MASK
    g = torch.Generator().manual_seed(0)
    inputs, labels = mask_tokens(
        ids, mask_id=MASK, tokenizer_vocab_size=8, special_ids={PAD, UNK, CLS, SEP}, generator=g
    )
    kept_or_random = (labels != IGNORE) & (inputs != MASK)
    assert kept_or_random.sum() > 300 and (inputs[kept_or_random] >= 5).all()
    assert (labels[:, :8] == IGNORE).all()


def test_mlm_replacements_are_the_tokenizers_own_ordinary_ids(texts):
    # the model's vocabulary is padded well beyond the tokenizer's: an id drawn from all of it would be one the
    # tokenizer never produces, whose embedding no input ever trains
    tok = train_wordpiece(texts, vocab_size=200)
    config = load_config(
        None, ["model.arch=encoder", "objective.name=mlm", "model.vocab_size=1024", "objective.seq_len=130"]
    )
    ordinary = sorted(set(range(tok.get_vocab_size())) - special_ids(tok))
    rows = np.random.default_rng(0).choice(ordinary, (2400, 128))
    batch = make_objective(config, tok).batch(rows, rows.ravel(), np.random.default_rng(1))
    inputs, targets = batch["input_ids"], batch["targets"]
    chosen = targets != IGNORE
    assert chosen.sum() > 40_000
    replaced = chosen & (inputs != MASK) & (inputs != targets)
    assert sorted(inputs[replaced].unique().tolist()) == ordinary  # every ordinary id drawn, and nothing else


def test_mlm_is_deterministic_per_seed():
    ids = mlm_batch(8, 64)
    assert all(torch.equal(a, b) for a, b in zip(mask(ids, seed=5), mask(ids, seed=5), strict=True))
    assert not torch.equal(mask(ids, seed=5)[1], mask(ids, seed=6)[1])


def test_whole_word_masking_takes_whole_words():
    ids = mlm_batch()
    starts = torch.rand(ids.shape, generator=torch.Generator().manual_seed(2)) < 0.6  # words of 1.7 tokens on average
    starts[:, 0] = starts[:, 1] = True  # [CLS] is a word of its own
    _, labels = mask(ids, word_starts=starts)
    chosen, special = labels != IGNORE, ids < 5
    assert not (chosen & special).any()
    # words are numbered within each row, so (row, word) keys run in order along the flattened batch
    key = (torch.arange(len(ids))[:, None] * (ids.shape[1] + 1) + starts.long().cumsum(1))[~special].numpy()
    flags = chosen[~special].numpy()
    firsts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    whole = np.minimum.reduceat(flags, firsts) == np.maximum.reduceat(flags, firsts)
    assert whole.all()
    multi = np.diff(np.r_[firsts, len(key)]) > 1
    assert np.maximum.reduceat(flags, firsts)[multi].sum() > 1000  # many chosen words have several tokens
    assert abs(flags.mean() - 0.15) < 0.01


def test_word_starts_from_wordpiece_tokens(texts):
    tok = train_wordpiece(texts, vocab_size=200)
    enc = tok.encode(texts[0])
    assert any(t.startswith("##") for t in enc.tokens)
    starts = word_starts_from_tokens(torch.tensor([enc.ids]), tok)
    assert starts.tolist() == [[not t.startswith("##") for t in enc.tokens]]


def test_sentence_pairs_layout_and_labels():
    n, seq_len, cls, sep, pad = 4000, 32, 70_000, 70_001, 70_002
    tokens = np.arange(20_000, dtype=np.uint16)  # every token is its own position: spans are easy to check
    batch = sentence_pairs(tokens, n, seq_len, cls_id=cls, sep_id=sep, pad_id=pad, rng=np.random.default_rng(0))
    ids, types, attn, labels = batch
    assert ids.shape == types.shape == attn.shape == (n, seq_len) and labels.shape == (n,)
    assert (ids[:, 0] == cls).all() and ((ids == sep).sum(1) == 2).all()
    for row, t, a, label in zip(ids, types, attn, labels, strict=True):
        s1, s2 = np.flatnonzero(row == sep)
        j = np.arange(seq_len)
        assert (t == ((j > s1) & (j <= s2))).all() and (a == (j <= s2)).all() and (row[s2 + 1 :] == pad).all()
        a_span, b_span = row[1:s1], row[s1 + 1 : s2]
        assert len(a_span) and len(b_span)
        assert (np.diff(a_span) == 1).all() and (np.diff(b_span) == 1).all()  # contiguous spans of the stream
        if label == 0:
            assert b_span[0] == a_span[-1] + 1
        else:  # clear of A and of what really follows A
            assert b_span[-1] < a_span[0] or b_span[0] > a_span[-1] + len(b_span)
    assert abs(labels.mean() - 0.5) < 0.03
    assert abs((~attn[:, -1]).mean() - 0.1) < 0.02  # the short examples, padded
    again = sentence_pairs(tokens, n, seq_len, cls_id=cls, sep_id=sep, pad_id=pad, rng=np.random.default_rng(0))
    assert all((x == y).all() for x, y in zip(batch, again, strict=True))
    with pytest.raises(DataError, match="at least 3 \\* seq_len"):
        sentence_pairs(tokens[:90], 2, seq_len, cls_id=cls, sep_id=sep, pad_id=pad, rng=np.random.default_rng(0))


def test_noise_mask_statistics():
    rng = np.random.default_rng(0)
    masks = [batch_noise_masks(64, 512, 0.15, 3.0, rng)] + [
        random_spans_noise_mask(length, 0.15, 3.0, rng)[None] for length in range(100, 400, 7)
    ]
    noise = sum(int(m.sum()) for m in masks)
    positions = sum(m.size for m in masks)
    spans = sum(int((m[:, 1:] & ~m[:, :-1]).sum() + m[:, 0].sum()) for m in masks)
    assert positions > 10_000
    assert abs(noise / positions - 0.15) < 0.01 and abs(noise / spans - 3.0) < 0.2
    batch = masks[0]
    assert len({r.tobytes() for r in batch}) == len(batch)  # rows drawn independently
    assert not batch[:, 0].any() and batch[:, -1].all()  # T5's masks begin with non-noise and end with noise
    assert abs(batch[:, :256].mean() - batch[:, 256:].mean()) < 0.02  # spans spread over the sequence


def test_span_corruption_seed_example():
    words = "I love this red car <X> <Y> <Z>".split()
    ids = {w: i for i, w in enumerate(words)}
    tokens = np.array([ids[w] for w in "I love this red car".split()])
    inputs, targets = span_corrupt(tokens, np.array([0, 1, 0, 1, 1], bool), [ids["<X>"], ids["<Y>"], ids["<Z>"]], None)
    assert [words[i] for i in inputs] == "I <X> this <Y>".split()
    assert [words[i] for i in targets] == "<X> love <Y> red car <Z>".split()
    with pytest.raises(ValueError, match="2 noise spans need 3 sentinels"):
        span_corrupt(tokens, np.array([0, 1, 0, 1, 1], bool), [ids["<X>"], ids["<Y>"]], None)


def reconstruct(inputs, targets, sentinels):
    """The original tokens: every sentinel of the inputs replaced by the tokens that follow it in the targets."""
    spans, current = {}, None
    for t in targets:
        if t in sentinels:
            current = spans.setdefault(t, [])
        else:
            current.append(t)
    return [u for t in inputs for u in (spans[t] if t in sentinels else [t])]


@pytest.mark.parametrize("length,density,span", [(64, 0.15, 3.0), (100, 0.3, 2.0), (37, 0.5, 1.0), (512, 0.15, 8.0)])
def test_span_corruption_round_trip(length, density, span):
    rng = np.random.default_rng(length)
    sentinels = list(range(1099, 999, -1))  # T5's order: <extra_id_0> highest
    tokens = rng.integers(3, 1000, (16, length))
    masks = batch_noise_masks(16, length, density, span, rng)
    inputs, targets = span_corrupt(tokens, masks, sentinels, eos_id=1)
    assert (inputs[:, -1] == 1).all() and (targets[:, -1] == 1).all()
    k = int((masks[0, 1:] & ~masks[0, :-1]).sum() + masks[0, 0])
    for row, x, y in zip(tokens, inputs[:, :-1], targets[:, :-1], strict=True):
        assert [t for t in x if t >= 1000] == sentinels[:k]  # one sentinel per span, in order
        assert [t for t in y if t >= 1000] == sentinels[: k + 1]  # and the final one
        assert reconstruct(x.tolist(), y.tolist(), set(sentinels)) == row.tolist()
    one_in, one_tg = span_corrupt(tokens[3], masks[3], sentinels, eos_id=1)  # 1-D rows as the batch's
    assert (one_in == inputs[3]).all() and (one_tg == targets[3]).all()


@pytest.mark.parametrize(
    "inputs_length,density,span", [(16, 0.15, 3.0), (128, 0.15, 3.0), (512, 0.15, 3.0), (256, 0.3, 5.0)]
)
def test_t5_lengths_match_span_corruption(inputs_length, density, span):
    raw, targets_length = t5_lengths(inputs_length, density, span)
    rng = np.random.default_rng(0)
    masks = batch_noise_masks(4, raw, density, span, rng)
    inputs, targets = span_corrupt(rng.integers(3, 1000, (4, raw)), masks, list(range(1000, 1100)), eos_id=1)
    assert inputs.shape == (4, inputs_length) and targets.shape == (4, targets_length)
    longer = batch_noise_masks(4, raw + 1, density, span, rng)  # one more raw token overflows the inputs
    assert (
        span_corrupt(np.zeros((4, raw + 1), int), longer, list(range(1000, 1100)), eos_id=1)[0].shape[1] > inputs_length
    )


def test_t5_lengths_for_512_follow_t5():
    # T5 draws 568 tokens: 85 noise in 28 spans -> 483 + 28 + EOS = 512 inputs, 85 + 28 + EOS = 114 targets;
    # ours add the final sentinel to the targets.
    assert t5_lengths(512) == (568, 115)


def test_sentence_order_pairs_are_consecutive_segments_swapped_half_the_time():
    """ALBERT's SOP: both segments come from one stretch of the stream, A then B; label 1 writes B first."""
    n, seq_len, cls, sep, pad = 4000, 32, 70_000, 70_001, 70_002
    tokens = np.arange(20_000, dtype=np.uint16)  # every token is its own position
    ids, types, attn, labels = sentence_pairs(
        tokens, n, seq_len, cls_id=cls, sep_id=sep, pad_id=pad, rng=np.random.default_rng(0), order=True
    )
    for row, label in zip(ids, labels, strict=True):
        s1, s2 = np.flatnonzero(row == sep)
        first, second = row[1:s1].astype(int), row[s1 + 1 : s2].astype(int)
        assert len(first) and len(second) and (np.diff(first) == 1).all() and (np.diff(second) == 1).all()
        if label == 0:  # in the stream's order: the second segment continues the first
            assert second[0] == first[-1] + 1
        else:  # swapped: the first segment continues the second
            assert first[0] == second[-1] + 1
    assert abs(labels.mean() - 0.5) < 0.03 and set(np.unique(labels)) == {0, 1}


def test_span_masking_statistics():
    """SpanBERT's masking over 125k positions: 15% of the maskable tokens, in spans of whole words whose drawn
    lengths follow the truncated Geometric(0.2) (mean 3.8 words), replaced span by span 80/10/10, with the
    boundaries the span-boundary objective reads."""
    rng = np.random.default_rng(0)
    b, t, mask_id = 1000, 128, 4
    ids = rng.integers(10, 1000, (b, t))
    maskable = np.ones((b, t), bool)
    maskable[:, 0] = maskable[:, -1] = maskable[:5, 60:] = False  # [CLS], [SEP], and padding in five rows
    word_starts = rng.random((b, t)) < 0.7  # words of 1.4 tokens on average
    m = span_masks(ids, maskable, word_starts, mask_id=mask_id, random_pool=np.arange(10, 1000), rng=rng)
    targets, inputs = m.targets.numpy(), m.inputs.numpy()
    chosen = targets != -100
    assert maskable.sum() > 10_000 and not (chosen & ~maskable).any()
    assert (chosen.sum(1) == np.round(0.15 * maskable.sum(1))).all()  # the budget, row by row
    assert (targets[chosen] == ids[chosen]).all()

    drawn, masked = m.span_words[:, 0], m.span_words[:, 1]
    lengths = np.arange(1, 11)
    expected = 0.2 * 0.8 ** (lengths - 1) / (0.2 * 0.8 ** (lengths - 1)).sum()
    assert abs(drawn.mean() - 3.8) < 0.15 and abs((expected * lengths).sum() - 3.8) < 0.05
    assert np.abs(np.bincount(drawn, minlength=11)[1:] / len(drawn) - expected).max() < 0.025
    assert (masked <= drawn).all() and (masked == drawn).mean() > 0.6  # cut short only at budget, edge or span

    left, right, place = m.span_left.numpy(), m.span_right.numpy(), m.span_position.numpy()
    kinds = {"mask": 0, "random": 0, "kept": 0}
    for row in range(b):
        for first in np.flatnonzero(chosen[row] & (place[row] == 0)):
            last = right[row, first]
            span = np.arange(first, last)
            assert left[row, first] == first - 1 and chosen[row, span].all()
            assert (place[row, span] == span - first).all()
            assert word_starts[row, first] or not maskable[row, first - 1]  # a span starts with a word
            got = inputs[row, span]
            kind = "mask" if (got == mask_id).all() else "kept" if (got == ids[row, span]).all() else "random"
            kinds[kind] += 1  # whole spans, never a mixture of masked and kept tokens
            assert kind != "random" or not (got == mask_id).any()
    spans = sum(kinds.values())
    assert spans == len(drawn) > 1000
    assert abs(kinds["mask"] / spans - 0.8) < 0.04 and abs(kinds["kept"] / spans - 0.1) < 0.03


def test_electra_replaces_masked_tokens_as_often_as_its_generator_disagrees():
    """ELECTRA's discriminator input: the original text with the masked positions filled by the generator's
    samples. Over 12k masked positions the share replaced (sample != original) equals the generator's expected
    disagreement, 1 - p(original), and nothing outside the masked positions changes."""
    from pretrainer.config import ModelConfig
    from pretrainer.model import build_model

    torch.manual_seed(0)
    config = ModelConfig(arch="encoder", head="rtd", generator_fraction=0.5, vocab_size=64, n_layer=1, d_model=32,
                         n_head=2, max_seq_len=64, init_std=0.5)  # fmt: skip  # wide weights: a peaked generator
    model = build_model(config).eval()
    ids = torch.randint(5, 64, (400, 64))
    targets = torch.where(torch.rand(ids.shape) < 0.5, ids, -100)
    inputs = torch.where(targets != -100, 4, ids)
    with torch.no_grad():
        logits, corrupted, replaced = model.replace(inputs, targets)
    chosen = targets != -100
    assert chosen.sum() > 12_000
    assert (corrupted[~chosen] == ids[~chosen]).all() and not replaced[~chosen].any()
    assert (replaced[chosen] == (corrupted[chosen] != ids[chosen])).all()
    disagreement = 1 - logits.softmax(-1).gather(1, ids[chosen][:, None]).mean()
    assert 0.3 < disagreement < 0.99  # neither always right nor uniform: the test can tell them apart
    assert abs(replaced[chosen].float().mean() - disagreement) < 0.01
