"""Evaluation numbers: perplexity and the baselines a language model must beat, and the task metrics of
fine-tuning.

Units, as each field reports them: accuracy and F1 of classes or tags are fractions in [0, 1] (as scikit-learn
and seqeval give them); correlations lie in [-1, 1]; SQuAD exact match and F1, and ROUGE, are ×100 (0..100), as
SQuAD and summarisation papers report them. The arguments are always (references, predictions), one of each per
example; no examples, or a different number of each, is a `DataError`. `task_scores` picks a task kind's set.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError
from ..files import atomic_file


def perplexity(loss: float) -> float:
    return math.exp(min(loss, 50.0))


def unigram_loss(train_tokens: np.ndarray, val_tokens: np.ndarray, vocab_size: int) -> float:
    """Cross-entropy (nats/token) on `val_tokens` of a model that predicts train-set token frequencies
    (add-one smoothed) and ignores context: the loss a language model must beat to have learned order."""
    counts = np.bincount(np.asarray(train_tokens), minlength=vocab_size).astype(np.float64) + 1.0
    log_p = np.log(counts / counts.sum())
    return float(-log_p[np.asarray(val_tokens)].mean())


def _check_pair(refs: Sequence, preds: Sequence) -> None:
    if len(refs) != len(preds):
        raise DataError(f"{len(refs)} references but {len(preds)} predictions; give one prediction per example")
    if len(refs) == 0:
        raise DataError("no examples to score")


# ---------------------------------------------------------------------------------------------- classification


NO_CLASS = -1  # a prediction that names no class (a T5's generated text that is no label's name)


def _labels(values: Sequence[int], n_labels: int, what: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise DataError(
            f"{what} must be class ids (integers), one per example (got {array.dtype} of shape {array.shape})"
        )
    lowest = NO_CLASS if what == "predictions" else 0
    bad = array[(array < lowest) | (array >= n_labels)]
    if bad.size:
        raise DataError(f"{what} hold class id {bad[0]}, outside {lowest}..{n_labels - 1} for {n_labels} labels")
    return array


def confusion_matrix(refs: Sequence[int], preds: Sequence[int], n_labels: int) -> np.ndarray:
    """Counts of examples of true class i (row) predicted as class j (column): an (n_labels, n_labels) int64
    array. Predictions of NO_CLASS have no column: their row sums fall short of the class's examples."""
    if n_labels < 1:
        raise ConfigError(f"n_labels must be at least 1 (got {n_labels})")
    _check_pair(refs, preds)
    true, pred = _labels(refs, n_labels, "references"), _labels(preds, n_labels, "predictions")
    named = pred != NO_CLASS
    cells = true[named] * n_labels + pred[named]
    return np.bincount(cells, minlength=n_labels * n_labels).reshape(n_labels, n_labels)


def accuracy(refs: Sequence[int], preds: Sequence[int]) -> float:
    """The fraction of examples whose prediction equals the reference."""
    _check_pair(refs, preds)
    return float(np.mean(np.asarray(refs) == np.asarray(preds)))


def macro_f1(refs: Sequence[int], preds: Sequence[int], n_labels: int) -> float:
    """Per-class F1 = 2·TP / (2·TP + FP + FN), averaged with equal weight over the classes that occur in `refs`
    or `preds` (a fraction). A class that never occurs has no F1 and is left out, as in scikit-learn's
    `f1_score(average="macro")`; a class only predicted, or only true, counts as 0. A NO_CLASS prediction is a
    miss of its true class and a false alarm of none."""
    matrix = confusion_matrix(refs, preds, n_labels)
    tp = np.diag(matrix)
    true, predicted = np.bincount(np.asarray(refs), minlength=n_labels), matrix.sum(axis=0)  # NO_CLASS: a miss
    present = (true + predicted) > 0
    return float(np.mean(2 * tp[present] / (true + predicted)[present]))


def plot_confusion(matrix: np.ndarray, label_names: Sequence[str], path: str | Path) -> Path:
    """A PNG of a confusion matrix (rows true, columns predicted): each cell shows its count and is coloured by
    its share of its row (the fraction of that true class predicted as each class), so small classes show too."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = np.asarray(matrix)
    n = len(label_names)
    if matrix.shape != (n, n):
        raise DataError(f"a confusion matrix of shape {matrix.shape} does not fit {n} label names")
    rows = matrix.sum(axis=1, keepdims=True)
    share = matrix / np.maximum(rows, 1)
    side = max(4.0, 1.5 + 0.6 * n)
    fig, ax = plt.subplots(figsize=(side + 0.5, side))
    ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center", color="white" if share[i, j] > 0.5 else "black")
    ax.set_xticks(range(n), label_names, rotation=45 if n > 3 else 0, ha="right" if n > 3 else "center")
    ax.set_yticks(range(n), label_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.tight_layout()
    path = Path(path)
    with atomic_file(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)
    return path


# -------------------------------------------------------------------------------------------------- regression


def _pair_of_values(x: Sequence[float], y: Sequence[float]) -> tuple[np.ndarray, np.ndarray] | None:
    """x and y as float arrays, checked; None when either is constant (no correlation is defined)."""
    _check_pair(x, y)
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) < 2:
        raise DataError("a correlation needs at least 2 examples")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise DataError("the values to correlate hold NaN or infinity")
    return None if np.ptp(x) == 0 or np.ptp(y) == 0 else (x, y)


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson's linear correlation, in [-1, 1]. NaN when x or y is constant (it has no correlation with
    anything): a model whose predictions collapsed to one value is reported, not an error."""
    from scipy.stats import pearsonr

    pair = _pair_of_values(x, y)
    return math.nan if pair is None else float(pearsonr(*pair).statistic)


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (ties get their mean rank), in [-1, 1]. NaN when x or y is constant."""
    from scipy.stats import spearmanr

    pair = _pair_of_values(x, y)
    return math.nan if pair is None else float(spearmanr(*pair).statistic)


# ----------------------------------------------------------------------------------------------------- tagging


def tag_f1(ref_tag_seqs: Sequence[Sequence[str]], pred_tag_seqs: Sequence[Sequence[str]]) -> dict[str, float]:
    """Entity-level precision, recall and F1 (fractions) over BIO tag sequences, counted over all entities of
    all examples (micro average), with seqeval's default, conlleval-compatible reading: an entity is right only
    when its type and both ends are; an I- tag that does not continue an entity of its type starts one. With no
    entity predicted (or none true) precision (recall) is 0."""
    from seqeval.metrics.sequence_labeling import precision_recall_fscore_support

    _check_pair(ref_tag_seqs, pred_tag_seqs)
    for i, (ref, pred) in enumerate(zip(ref_tag_seqs, pred_tag_seqs, strict=True)):
        if len(ref) != len(pred):
            raise DataError(f"example {i} has {len(ref)} reference tags but {len(pred)} predicted; give one per token")
    refs, preds = [list(tags) for tags in ref_tag_seqs], [list(tags) for tags in pred_tag_seqs]
    precision, recall, f1, _ = precision_recall_fscore_support(refs, preds, average="micro", zero_division=0)
    return {"precision": float(precision), "recall": float(recall), "f1": float(f1)}


# --------------------------------------------------------------------------------------------- extractive QA


_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD v1.1's normalisation: lower case, drop punctuation, the articles a/an/the and extra whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def _answer_f1(ref: str, pred: str) -> float:
    ref_tokens, pred_tokens = normalize_answer(ref).split(), normalize_answer(pred).split()
    same = sum((Counter(ref_tokens) & Counter(pred_tokens)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(ref_tokens)
    return 2 * precision * recall / (precision + recall)


def _answers(refs: Sequence[str | Sequence[str]], preds: Sequence[str]) -> list[tuple[list[str], str]]:
    _check_pair(refs, preds)
    pairs = [([ref] if isinstance(ref, str) else list(ref), pred) for ref, pred in zip(refs, preds, strict=True)]
    for i, (answers, _) in enumerate(pairs):
        if not answers:
            raise DataError(f"example {i} has no reference; give at least one")
    return pairs


def exact_match(refs: Sequence[str | Sequence[str]], preds: Sequence[str]) -> float:
    """SQuAD v1.1 exact match ×100 (0..100): the share of examples whose normalised prediction equals one of
    its reference answers (each reference a string or a list of acceptable answers)."""
    pairs = _answers(refs, preds)
    hits = [max(normalize_answer(a) == normalize_answer(pred) for a in answers) for answers, pred in pairs]
    return 100.0 * sum(hits) / len(hits)


def token_f1(refs: Sequence[str | Sequence[str]], preds: Sequence[str]) -> float:
    """SQuAD v1.1 token F1 ×100 (0..100): per example the best, over its reference answers, F1 of the bags of
    normalised words; averaged over examples. As in v1.1 (not v2.0), an answer that normalises to nothing
    ("the") scores F1 0 even against an empty reference, though exact match counts it."""
    pairs = _answers(refs, preds)
    return 100.0 * sum(max(_answer_f1(a, pred) for a in answers) for answers, pred in pairs) / len(pairs)


# ------------------------------------------------------------------------------------------------ text-to-text


def rouge(refs: Sequence[str | Sequence[str]], preds: Sequence[str]) -> dict[str, float]:
    """ROUGE-1, ROUGE-2 and ROUGE-L F-measures ×100 (0..100), averaged over examples, from rouge-score with
    Porter stemming (its tokenizer lower-cases and keeps only letters and digits). A reference may be a list of
    acceptable targets; the best-scoring one counts, per measure. ROUGE-L is over the whole text (not
    `rougeLsum`'s per-line summary form)."""
    from rouge_score.rouge_scorer import RougeScorer

    keys = ("rouge1", "rouge2", "rougeL")
    scorer = RougeScorer(list(keys), use_stemmer=True)
    totals = dict.fromkeys(keys, 0.0)
    for targets, pred in _answers(refs, preds):
        scores = scorer.score_multi(targets, pred)  # with one target, its score
        for key in keys:
            totals[key] += scores[key].fmeasure
    return {key: 100.0 * total / len(refs) for key, total in totals.items()}


# ------------------------------------------------------------------------------------------------ by task kind

TASK_KINDS = ("classification", "pair", "regression", "tagging", "qa", "text2text")


def task_scores(kind: str, refs: Sequence, preds: Sequence, *, n_labels: int | None = None) -> dict[str, float]:
    """The scores of one task kind (`task.kind`), by name:

    | kind                   | refs, preds                              | scores                                  |
    |------------------------|------------------------------------------|-----------------------------------------|
    | classification, pair   | class ids (n_labels: how many classes)   | accuracy, macro_f1 (fractions)          |
    | regression             | numbers                                  | pearson, spearman (-1..1; NaN: constant)|
    | tagging                | BIO tag sequences, one tag per token     | precision, recall, f1 (fractions)       |
    | qa                     | answer (or list of answers), answer      | exact_match, f1 (×100)                  |
    | text2text              | target (or list of targets), output      | rouge1, rouge2, rougeL (×100)           |
    """
    if kind not in TASK_KINDS:
        raise ConfigError(f"unknown task kind '{kind}'; expected one of {', '.join(TASK_KINDS)}")
    _check_pair(refs, preds)
    if kind in ("classification", "pair"):
        if n_labels is None:
            raise ConfigError(f"{kind} scores need n_labels, the number of classes")
        return {"accuracy": accuracy(refs, preds), "macro_f1": macro_f1(refs, preds, n_labels)}
    if kind == "regression":
        return {"pearson": pearson(refs, preds), "spearman": spearman(refs, preds)}
    if kind == "tagging":
        return tag_f1(refs, preds)
    if kind == "qa":
        return {"exact_match": exact_match(refs, preds), "f1": token_f1(refs, preds)}
    return rouge(refs, preds)
