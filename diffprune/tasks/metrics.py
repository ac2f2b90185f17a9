"""Task metrics, all returned as percentages (x100, correlations too).

Pure functions of predictions and references: no model, no tokenizer, no network
(``evaluate.load`` needs the Hub). The formulas are written out in NumPy rather than imported
from scikit-learn / scipy: importing those two costs every job seconds of start-up, and the
formulas are short. tests/tasks/test_metrics.py checks each against scikit-learn / scipy.
SQuAD follows the official v1.1 normalisation.
"""
from __future__ import annotations

import collections
import re
import string
from typing import Mapping, Sequence

import numpy as np


def accuracy(predictions: Sequence, labels: Sequence) -> float:
    predictions, labels = _paired(predictions, labels)
    return 100.0 * float(np.mean(predictions == labels)) if labels.size else 0.0


def f1_binary(predictions: Sequence, labels: Sequence) -> float:
    """F1 of the positive class (label 1), as GLUE reports it for MRPC and QQP; 0.0 when no
    example is predicted or labelled positive (scikit-learn's ``zero_division=0``)."""
    predictions, labels = _paired(predictions, labels)
    true_positives = int(np.sum((predictions == 1) & (labels == 1)))
    false_positives = int(np.sum((predictions == 1) & (labels != 1)))
    false_negatives = int(np.sum((predictions != 1) & (labels == 1)))
    denominator = 2 * true_positives + false_positives + false_negatives
    return 100.0 * 2 * true_positives / denominator if denominator else 0.0


def matthews(predictions: Sequence, labels: Sequence) -> float:
    """Matthews correlation (the multiclass form, Gorodkin's R_K); 0.0 when undefined (a
    constant predictor), as scikit-learn does."""
    predictions, labels = _paired(predictions, labels)
    classes, codes = np.unique(np.concatenate([labels, predictions]), return_inverse=True)
    true_codes, predicted_codes = codes[: labels.size], codes[labels.size:]
    true_counts = np.bincount(true_codes, minlength=classes.size).astype(np.float64)
    predicted_counts = np.bincount(predicted_codes, minlength=classes.size).astype(np.float64)
    correct, total = float(np.sum(true_codes == predicted_codes)), float(labels.size)
    covariance = correct * total - float(true_counts @ predicted_counts)
    spread = (total ** 2 - float(predicted_counts @ predicted_counts)) * (total ** 2 - float(true_counts @ true_counts))
    return 100.0 * covariance / np.sqrt(spread) if spread > 0 else 0.0


def _paired(predictions: Sequence, labels: Sequence) -> tuple[np.ndarray, np.ndarray]:
    predictions, labels = np.asarray(predictions).ravel(), np.asarray(labels).ravel()
    if predictions.shape != labels.shape:
        raise ValueError(f"{predictions.size} predictions for {labels.size} labels")
    return predictions, labels


def _is_constant(values: np.ndarray) -> bool:
    return values.size == 0 or bool(np.all(values == values.flat[0]))


def _correlation(x: np.ndarray, y: np.ndarray) -> float:
    x, y = x - x.mean(), y - y.mean()
    x, y = x / np.linalg.norm(x), y / np.linalg.norm(y)  # normalised first, as scipy does: no overflow
    return float(np.clip(x @ y, -1.0, 1.0))


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties given the mean of the ranks they span (scipy's ``rankdata`` default)."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    starts = np.concatenate([[True], sorted_values[1:] != sorted_values[:-1]])
    group = np.cumsum(starts) - 1
    first = np.flatnonzero(starts)
    last = np.concatenate([first[1:], [values.size]]) - 1
    ranks = np.empty(values.size, dtype=np.float64)
    ranks[order] = (first[group] + last[group]) / 2.0 + 1.0
    return ranks


def pearson(predictions: Sequence, labels: Sequence) -> float:
    """Pearson r; 0.0 when undefined (either side constant) instead of scipy's NaN + warning.

    A constant predictor (the STS-B majority baseline) carries no correlation information,
    and a NaN in a results table would poison every aggregate computed from it.
    """
    x, y = _paired(np.asarray(predictions, dtype=float), np.asarray(labels, dtype=float))
    if _is_constant(x) or _is_constant(y):
        return 0.0
    return 100.0 * _correlation(x, y)


def spearman(predictions: Sequence, labels: Sequence) -> float:
    """Spearman rho (Pearson r of the average ranks); 0.0 when undefined, see ``pearson``."""
    x, y = _paired(np.asarray(predictions, dtype=float), np.asarray(labels, dtype=float))
    if _is_constant(x) or _is_constant(y):
        return 0.0
    return 100.0 * _correlation(average_ranks(x), average_ranks(y))


# --- SQuAD v1.1, following the official evaluate-v1.1.py -------------------------------

_PUNCTUATION = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def squad_normalize_answer(text: str) -> str:
    """Lower case, drop punctuation, drop articles a/an/the, collapse whitespace (official order)."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _exact_match_one(prediction: str, gold: str) -> float:
    return float(squad_normalize_answer(prediction) == squad_normalize_answer(gold))


def _f1_one(prediction: str, gold: str) -> float:
    prediction_tokens = squad_normalize_answer(prediction).split()
    gold_tokens = squad_normalize_answer(gold).split()
    common = collections.Counter(prediction_tokens) & collections.Counter(gold_tokens)
    overlap = sum(common.values())
    if overlap == 0:
        return 0.0
    precision = overlap / len(prediction_tokens)
    recall = overlap / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def squad_exact_match(prediction: str, gold_answers: Sequence[str]) -> float:
    """1.0 if the normalised prediction equals any normalised gold answer (max over golds)."""
    return max(_exact_match_one(prediction, gold) for gold in gold_answers)


def squad_f1(prediction: str, gold_answers: Sequence[str]) -> float:
    """Token-overlap F1 in [0, 1], max over gold answers."""
    return max(_f1_one(prediction, gold) for gold in gold_answers)


def squad_scores(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]]) -> dict:
    """``{"exact_match", "f1"}`` in percent over every question in ``references``.

    A question without a prediction scores 0, as in the official script, so that dropping
    questions can never raise the score.
    """
    if not references:
        raise ValueError("squad_scores needs at least one reference question")
    exact_match = f1 = 0.0
    for question_id, gold_answers in references.items():
        if question_id not in predictions:
            continue
        exact_match += squad_exact_match(predictions[question_id], gold_answers)
        f1 += squad_f1(predictions[question_id], gold_answers)
    return {"exact_match": 100.0 * exact_match / len(references), "f1": 100.0 * f1 / len(references)}
