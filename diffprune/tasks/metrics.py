"""Task metrics, all returned as percentages (x100, correlations too).

Pure functions of predictions and references: no model, no tokenizer, no network
(``evaluate.load`` needs the Hub, so the formulas are computed here with scikit-learn /
scipy, and SQuAD with the official v1.1 normalisation).
"""
from __future__ import annotations

import collections
import re
import string
from typing import Mapping, Sequence

import numpy as np
from scipy import stats
from sklearn import metrics as skm


def accuracy(predictions: Sequence, labels: Sequence) -> float:
    return 100.0 * float(skm.accuracy_score(np.asarray(labels), np.asarray(predictions)))


def f1_binary(predictions: Sequence, labels: Sequence) -> float:
    """F1 of the positive class (label 1), as GLUE reports it for MRPC and QQP."""
    return 100.0 * float(skm.f1_score(np.asarray(labels), np.asarray(predictions), pos_label=1,
                                      average="binary", zero_division=0))


def matthews(predictions: Sequence, labels: Sequence) -> float:
    """Matthews correlation; 0.0 when undefined (a constant predictor), as scikit-learn does."""
    return 100.0 * float(skm.matthews_corrcoef(np.asarray(labels), np.asarray(predictions)))


def _is_constant(values: np.ndarray) -> bool:
    return values.size == 0 or bool(np.all(values == values.flat[0]))


def pearson(predictions: Sequence, labels: Sequence) -> float:
    """Pearson r; 0.0 when undefined (either side constant) instead of scipy's NaN + warning.

    A constant predictor (the STS-B majority baseline) carries no correlation information,
    and a NaN in a results table would poison every aggregate computed from it.
    """
    x, y = np.asarray(predictions, dtype=float), np.asarray(labels, dtype=float)
    if _is_constant(x) or _is_constant(y):
        return 0.0
    return 100.0 * float(stats.pearsonr(x, y)[0])


def spearman(predictions: Sequence, labels: Sequence) -> float:
    """Spearman rho; 0.0 when undefined (either side constant), see ``pearson``."""
    x, y = np.asarray(predictions, dtype=float), np.asarray(labels, dtype=float)
    if _is_constant(x) or _is_constant(y):
        return 0.0
    return 100.0 * float(stats.spearmanr(x, y)[0])


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
