"""Task metrics, each checked against an independent computation: the reference library on the same inputs
(scikit-learn, scipy, seqeval, rouge-score) where we wrap it, or values worked out by hand in the comments."""

import warnings

import numpy as np
import pytest
import sklearn.metrics

from pretrainer.errors import ConfigError, DataError
from pretrainer.eval import metrics

# ---------------------------------------------------------------------------------------------- classification


def test_accuracy_and_confusion_matrix_by_hand():
    refs, preds = [0, 0, 1, 1, 2, 2], [0, 1, 1, 1, 0, 2]
    assert metrics.accuracy(refs, preds) == pytest.approx(4 / 6)
    expected = [[1, 1, 0], [0, 2, 0], [1, 0, 1]]  # rows true, columns predicted
    assert metrics.confusion_matrix(refs, preds, 3).tolist() == expected


def test_macro_f1_by_hand():
    # class 0: TP 1, FP 1, FN 1 -> 2/4; class 1: TP 2, FP 1, FN 0 -> 4/5; class 2: TP 1, FP 0, FN 1 -> 2/3
    refs, preds = [0, 0, 1, 1, 2, 2], [0, 1, 1, 1, 0, 2]
    assert metrics.macro_f1(refs, preds, 3) == pytest.approx((1 / 2 + 4 / 5 + 2 / 3) / 3)
    # class 3 never occurs and is left out; class 2 is only predicted and counts as 0
    assert metrics.macro_f1([0, 1, 1], [0, 1, 2], 4) == pytest.approx((1 + 2 / 3 + 0) / 3)


def test_classification_matches_sklearn():
    rng = np.random.default_rng(0)
    for n_labels in (2, 3, 5):
        refs = rng.integers(0, n_labels - 1, size=200)  # the last class never true: only predicted
        preds = np.where(rng.random(200) < 0.6, refs, rng.integers(0, n_labels, size=200))
        assert metrics.accuracy(refs, preds) == pytest.approx(sklearn.metrics.accuracy_score(refs, preds))
        assert metrics.macro_f1(refs, preds, n_labels) == pytest.approx(
            sklearn.metrics.f1_score(refs, preds, average="macro", zero_division=0)
        )
        np.testing.assert_array_equal(
            metrics.confusion_matrix(refs, preds, n_labels),
            sklearn.metrics.confusion_matrix(refs, preds, labels=list(range(n_labels))),
        )


@pytest.mark.parametrize(
    "refs, preds, n_labels, error, says",
    [
        ([], [], 2, DataError, "no examples"),
        ([0, 1], [0], 2, DataError, "2 references but 1 predictions"),
        ([0, 2], [0, 1], 2, DataError, "class id 2, outside 0..1"),
        ([0, -1], [0, 1], 2, DataError, "class id -1, outside 0..1"),  # NO_CLASS is for predictions only
        ([0, 1], [0, -2], 2, DataError, "class id -2, outside -1..1"),
        ([0.0, 1.0], [0, 1], 2, DataError, "must be class ids"),
        ([0], [0], 0, ConfigError, "n_labels must be at least 1"),
    ],
)
def test_classification_errors(refs, preds, n_labels, error, says):
    with pytest.raises(error, match=says):
        metrics.macro_f1(refs, preds, n_labels)


def _dark_pixels(path):
    import matplotlib.image

    image = matplotlib.image.imread(path)[..., :3]
    return int((image.sum(axis=-1) < 0.6).sum())  # the darkest blues (and black text)


def test_plot_confusion_colours_by_row_share(tmp_path):
    # Coloured by each row's share, a 1000-example class and a 1-example class, both always right, are equally
    # dark; coloured by count, the small one would be near white.
    even = metrics.plot_confusion(np.array([[1, 0], [0, 1]]), ["neg", "pos"], tmp_path / "even.png")
    skewed = metrics.plot_confusion(np.array([[1000, 0], [0, 1]]), ["neg", "pos"], tmp_path / "skewed.png")
    assert even.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert _dark_pixels(even) > 1000
    assert _dark_pixels(skewed) == pytest.approx(_dark_pixels(even), rel=0.05)
    with pytest.raises(DataError, match="does not fit 3 label names"):
        metrics.plot_confusion(np.eye(2, dtype=int), ["a", "b", "c"], tmp_path / "bad.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["even.png", "skewed.png"]


# -------------------------------------------------------------------------------------------------- regression


def test_correlations_by_hand():
    # x = 1..5, y = 2 4 5 4 5: deviations -2 -1 0 1 2 and -2 0 1 0 1; sum of products 6, of squares 10 and 6
    x, y = [1, 2, 3, 4, 5], [2, 4, 5, 4, 5]
    assert metrics.pearson(x, y) == pytest.approx(6 / np.sqrt(10 * 6))
    # ranks of y with ties averaged: 1 2.5 4.5 2.5 4.5, deviations -2 -0.5 1.5 -0.5 1.5: 7 / sqrt(10 * 9)
    assert metrics.spearman(x, y) == pytest.approx(7 / np.sqrt(10 * 9))
    # a monotone curve has rank correlation 1 but a linear one below 1; reversed order gives -1
    cube = [v**3 for v in x]
    assert metrics.spearman(x, cube) == pytest.approx(1.0)
    assert metrics.pearson(x, cube) < 0.99
    assert metrics.spearman(x, cube[::-1]) == pytest.approx(-1.0)


def test_pearson_matches_numpy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=100)
    y = 0.5 * x + rng.normal(size=100)
    assert metrics.pearson(x, y) == pytest.approx(np.corrcoef(x, y)[0, 1])


def test_correlation_of_a_constant_is_nan_without_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.isnan(metrics.pearson([1.0, 2.0, 3.0], [0.5, 0.5, 0.5]))
        assert np.isnan(metrics.spearman([2, 2, 2], [1, 2, 3]))


@pytest.mark.parametrize(
    "x, y, says",
    [
        ([1.0], [2.0], "at least 2 examples"),
        ([1.0, 2.0], [1.0, float("nan")], "NaN or infinity"),
        ([1, 2], [1], "2 references but 1"),
    ],
)
def test_correlation_errors(x, y, says):
    for fn in (metrics.pearson, metrics.spearman):
        with pytest.raises(DataError, match=says):
            fn(x, y)


# ----------------------------------------------------------------------------------------------------- tagging


def test_tag_f1_seqeval_documented_example():
    # seqeval's README: the MISC span is predicted one token early, PER is right: 1 of 2 either way
    refs = [["O", "O", "O", "B-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]
    preds = [["O", "O", "B-MISC", "I-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]
    assert metrics.tag_f1(refs, preds) == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5})


def test_tag_f1_by_hand():
    # true entities: PER(0-1), LOC(3), ORG(5-6), PER(0)      -> 4
    # predicted:     PER(0-1) right, LOC(3) typed ORG wrong, ORG(5) cut short wrong, PER(0) right,
    #                LOC(2) spurious; "O I-LOC" reads as an entity starting at the I- (conlleval)  -> 5
    refs = [["B-PER", "I-PER", "O", "B-LOC", "O", "B-ORG", "I-ORG"], ["B-PER", "O", "O"]]
    preds = [["B-PER", "I-PER", "O", "B-ORG", "O", "B-ORG", "O"], ["B-PER", "O", "I-LOC"]]
    p, r = 2 / 5, 2 / 4
    assert metrics.tag_f1(refs, preds) == pytest.approx({"precision": p, "recall": r, "f1": 2 * p * r / (p + r)})
    assert metrics.tag_f1([["O", "O"]], [["O", "O"]]) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}


def test_tag_f1_errors():
    with pytest.raises(DataError, match="example 1 has 2 reference tags but 1 predicted"):
        metrics.tag_f1([["O"], ["B-PER", "O"]], [["O"], ["B-PER"]])
    with pytest.raises(DataError, match="1 references but 2 predictions"):
        metrics.tag_f1([["O"]], [["O"], ["O"]])


# --------------------------------------------------------------------------------------------- extractive QA


@pytest.mark.parametrize(
    "text, normal",
    [
        ("The  Cat's   hat!", "cats hat"),  # lower, punctuation out (the apostrophe too), article out, spaces
        ("An apple, a day.", "apple day"),
        ("theatre and anthem", "theatre and anthem"),  # articles only as whole words
        ("  Denver\tBroncos\n", "denver broncos"),
        ("the", ""),
    ],
)
def test_normalize_answer_as_squad(text, normal):
    assert metrics.normalize_answer(text) == normal


def test_exact_match_and_f1_by_hand():
    refs = [
        ["Denver Broncos", "The Denver Broncos!"],  # pred "Broncos": EM 0; F1 P 1, R 1/2 -> 2/3
        "a red car parked",  # pred [big red car] vs [red car parked]: 2 common, P = R = 2/3 -> 2/3
        ["Saint Bernadette", "the Virgin Mary"],  # pred matches the second after normalising: EM 1, F1 1
        "cat",  # pred [cat cat cat]: common 1 (counts clip), P 1/3, R 1 -> 1/2
        "the",  # pred "a": both normalise to nothing: EM 1, F1 0 (SQuAD v1.1)
    ]
    preds = ["Broncos", "the big red car", "Virgin Mary.", "the cat, cat, cat", "a"]
    assert metrics.exact_match(refs, preds) == pytest.approx(100 * 2 / 5)
    assert metrics.token_f1(refs, preds) == pytest.approx(100 * (2 / 3 + 2 / 3 + 1 + 1 / 2 + 0) / 5)


def test_qa_errors():
    with pytest.raises(DataError, match="example 1 has no reference"):
        metrics.exact_match(["x", []], ["x", "y"])
    with pytest.raises(DataError, match="no examples"):
        metrics.token_f1([], [])


# ------------------------------------------------------------------------------------------------ text-to-text


def test_rouge_by_hand():
    # [the cat sat on the mat] vs [the cat lay on the mat]: unigrams in common 5 of 6 each way; bigrams 3 of 5
    # (the cat, on the, the mat); longest common subsequence "the cat on the mat", 5 of 6
    scores = metrics.rouge(["The cat sat on the mat."], ["the cat lay on the mat"])
    assert scores == pytest.approx({"rouge1": 100 * 5 / 6, "rouge2": 100 * 3 / 5, "rougeL": 100 * 5 / 6})
    # stemming: "running dogs" and "runs dog" stem alike; averaged with an example that shares nothing
    scores = metrics.rouge(["running dogs", "alpha beta"], ["runs dog", "gamma"])
    assert scores == pytest.approx({"rouge1": 50.0, "rouge2": 50.0, "rougeL": 50.0})


def test_rouge_matches_rouge_score():
    from rouge_score.rouge_scorer import RougeScorer

    refs = ["return the first line of the docstring", "open a file and read it", "the quick brown fox jumps"]
    preds = ["return first docstring line", "read the file that is opened", "a quick brown dog jumped over"]
    scorer = RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    expected = {
        key: 100 * np.mean([scorer.score(r, p)[key].fmeasure for r, p in zip(refs, preds, strict=True)])
        for key in ("rouge1", "rouge2", "rougeL")
    }
    assert metrics.rouge(refs, preds) == pytest.approx(expected)
    # several references: the best one per measure
    best = metrics.rouge([["gamma delta", "the cat sat"]], ["the cat sat"])
    assert best == pytest.approx({"rouge1": 100.0, "rouge2": 100.0, "rougeL": 100.0})
    with pytest.raises(DataError, match="example 0 has no reference"):
        metrics.rouge([[]], ["the cat"])


# ------------------------------------------------------------------------------------------------ by task kind


def test_task_scores_by_kind():
    # each kind gives its functions' numbers under its names (those are checked against references above)
    cls_refs, cls_preds = [0, 0, 1, 1, 2, 2], [0, 1, 1, 1, 0, 2]
    expected = {"accuracy": 4 / 6, "macro_f1": (1 / 2 + 4 / 5 + 2 / 3) / 3}
    for kind in ("classification", "pair"):
        assert metrics.task_scores(kind, cls_refs, cls_preds, n_labels=3) == pytest.approx(expected)
    x, y = [1, 2, 3, 4, 5], [2, 4, 5, 4, 5]
    assert metrics.task_scores("regression", x, y) == pytest.approx(
        {"pearson": 6 / np.sqrt(60), "spearman": 7 / np.sqrt(90)}
    )
    tags = metrics.task_scores("tagging", [["B-PER", "I-PER", "B-LOC"]], [["B-PER", "I-PER", "O"]])
    assert tags == pytest.approx({"precision": 1.0, "recall": 0.5, "f1": 2 / 3})
    qa = metrics.task_scores("qa", [["Denver Broncos", "Broncos"], "red car"], ["the Broncos", "big red car"])
    assert qa == pytest.approx({"exact_match": 50.0, "f1": 100 * (1 + 0.8) / 2})  # P 2/3, R 1 -> 0.8
    t2t = metrics.task_scores("text2text", ["The cat sat on the mat."], ["the cat lay on the mat"])
    assert t2t == pytest.approx({"rouge1": 100 * 5 / 6, "rouge2": 60.0, "rougeL": 100 * 5 / 6})


@pytest.mark.parametrize(
    "kind, refs, preds, error, says",
    [
        ("summarization", ["a"], ["a"], ConfigError, "unknown task kind 'summarization'; expected one of"),
        ("classification", [0, 1], [0, 1], ConfigError, "classification scores need n_labels"),
        ("qa", [], [], DataError, "no examples to score"),
        ("text2text", ["a", "b"], ["a"], DataError, "2 references but 1 predictions"),
        ("regression", [1.0, 2.0], [1.0, 2.0, 3.0], DataError, "2 references but 3 predictions"),
        ("tagging", [], [], DataError, "no examples to score"),
    ],
)
def test_task_scores_errors(kind, refs, preds, error, says):
    with pytest.raises(error, match=says) as info:
        metrics.task_scores(kind, refs, preds)
    assert "\n" not in str(info.value)


def test_a_prediction_of_no_class_is_a_miss_of_its_true_class():
    import sklearn.metrics

    refs, preds = [0, 0, 1, 1, 2, 2, 2], [0, metrics.NO_CLASS, 1, 2, 2, metrics.NO_CLASS, 0]
    assert metrics.accuracy(refs, preds) == pytest.approx(3 / 7)
    expected = sklearn.metrics.f1_score(refs, preds, labels=[0, 1, 2], average="macro")
    assert metrics.macro_f1(refs, preds, 3) == pytest.approx(expected)
    matrix = metrics.confusion_matrix(refs, preds, 3)
    assert matrix.sum() == 5 and matrix.sum(axis=1).tolist() == [1, 2, 2]
