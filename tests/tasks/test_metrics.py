"""Metrics against values worked out by hand (all percentages)."""
from __future__ import annotations

import math

import pytest

from diffprune.tasks import metrics


def test_accuracy_counts_matches():
    assert metrics.accuracy([1, 0, 1, 1], [1, 1, 1, 0]) == pytest.approx(50.0)


def test_f1_binary_of_the_positive_class():
    # labels 1 0 0 1 1 vs predictions 1 1 0 0 1: TP=2, FP=1, FN=1 -> P = R = 2/3 -> F1 = 2/3.
    assert metrics.f1_binary([1, 1, 0, 0, 1], [1, 0, 0, 1, 1]) == pytest.approx(100 * 2 / 3)


def test_f1_binary_without_positive_predictions_is_zero():
    assert metrics.f1_binary([0, 0, 0], [1, 0, 1]) == 0.0


def test_matthews_from_a_two_by_two_confusion_matrix():
    # TP=3, TN=2, FP=1, FN=1: MCC = (3*2 - 1*1) / sqrt((3+1)(3+1)(2+1)(2+1)) = 5/12.
    labels = [1, 1, 1, 1, 0, 0, 0]
    predictions = [1, 1, 1, 0, 0, 0, 1]
    assert metrics.matthews(predictions, labels) == pytest.approx(100 * 5 / 12)


def test_matthews_of_a_constant_predictor_is_zero():
    assert metrics.matthews([1, 1, 1, 1], [1, 0, 1, 0]) == 0.0


def test_pearson_by_hand():
    # x = 1 2 3, y = 2 4 7: sum dx*dy = 5, sum dx^2 = 2, sum dy^2 = 114/9.
    expected = 5 / math.sqrt(2 * 114 / 9)
    assert metrics.pearson([1, 2, 3], [2, 4, 7]) == pytest.approx(100 * expected)


def test_spearman_with_a_tie_by_hand():
    # ranks of y = 5 6 7 8 7 are 1 2 3.5 5 3.5; Pearson of those with 1..5 is 8 / sqrt(10 * 9.5).
    expected = 8 / math.sqrt(95)
    assert metrics.spearman([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) == pytest.approx(100 * expected)


def test_spearman_is_rank_based():
    assert metrics.spearman([1, 2, 3, 4], [1, 10, 100, 1000]) == pytest.approx(100.0)


@pytest.mark.parametrize("correlation", [metrics.pearson, metrics.spearman])
def test_correlation_of_a_constant_predictor_is_zero_not_nan(correlation):
    assert correlation([2.5, 2.5, 2.5], [0.0, 1.0, 4.0]) == 0.0


@pytest.mark.parametrize("text, normalised", [
    ("The  Quick, brown fox!", "quick brown fox"),
    ("an apple a day", "apple day"),
    ("Theater of the Absurd", "theater of absurd"),   # articles only as whole words
    ("  U.S.  ", "us"),
    ("the", ""),
])
def test_squad_normalize_answer(text, normalised):
    assert metrics.squad_normalize_answer(text) == normalised


def test_squad_exact_match_ignores_case_punctuation_and_articles():
    assert metrics.squad_exact_match("the Eiffel Tower.", ["Eiffel Tower"]) == 1.0
    assert metrics.squad_exact_match("Eiffel", ["Eiffel Tower"]) == 0.0
    assert metrics.squad_exact_match("Paris", ["Lyon", "paris"]) == 1.0   # max over gold answers


def test_squad_f1_token_overlap_by_hand():
    # "big red dog" vs "red dog barked": 2 common tokens, P = R = 2/3.
    assert metrics.squad_f1("the big red dog", ["red dog barked"]) == pytest.approx(2 / 3)
    assert metrics.squad_f1("the big red dog", ["red dog barked", "a big red dog"]) == pytest.approx(1.0)
    assert metrics.squad_f1("cat", ["red dog"]) == 0.0
    # Repeated tokens count only as often as they occur in both.
    assert metrics.squad_f1("dog dog", ["dog"]) == pytest.approx(2 * 0.5 * 1 / 1.5)


def test_squad_scores_average_and_missing_predictions_score_zero():
    references = {"a": ["Denver Broncos"], "b": ["Santa Clara, California", "Levi's Stadium"], "c": ["gold"]}
    predictions = {"a": "Denver Broncos", "b": "Levi's Stadium in Santa Clara"}   # "c" missing
    # b: F1 vs "santa clara california" = 2*(2/5)(2/3)/(2/5+2/3) = 0.5; vs "levis stadium" = 2*(2/5)(1)/(7/5) = 4/7.
    scores = metrics.squad_scores(predictions, references)
    assert scores["exact_match"] == pytest.approx(100 * 1 / 3)
    assert scores["f1"] == pytest.approx(100 * (1 + 4 / 7 + 0) / 3)


def test_squad_scores_needs_references():
    with pytest.raises(ValueError):
        metrics.squad_scores({}, {})


# --- the NumPy formulas against scikit-learn / scipy (the references they replace at run time)

def _random_cases(kind: str):
    import numpy as np

    rng = np.random.default_rng(0)
    for size in (2, 7, 50, 1000):
        for _ in range(5):
            if kind == "labels":
                classes = int(rng.integers(2, 4))
                yield rng.integers(0, classes, size), rng.integers(0, classes, size)
            else:  # many ties among the rounded values: the rank averaging is exercised
                yield rng.normal(size=size).round(1), rng.normal(size=size).round(1)


def test_accuracy_f1_and_matthews_agree_with_scikit_learn():
    from sklearn import metrics as skm

    for predictions, labels in _random_cases("labels"):
        assert metrics.accuracy(predictions, labels) == pytest.approx(100 * skm.accuracy_score(labels, predictions))
        assert metrics.matthews(predictions, labels) == pytest.approx(
            100 * skm.matthews_corrcoef(labels, predictions), abs=1e-9)
        binary_predictions, binary_labels = predictions % 2, labels % 2
        assert metrics.f1_binary(binary_predictions, binary_labels) == pytest.approx(
            100 * skm.f1_score(binary_labels, binary_predictions, zero_division=0), abs=1e-9)


def test_pearson_and_spearman_agree_with_scipy():
    import numpy as np
    from scipy import stats

    for x, y in _random_cases("values"):
        if np.all(x == x[0]) or np.all(y == y[0]):
            continue
        assert metrics.pearson(x, y) == pytest.approx(100 * stats.pearsonr(x, y)[0], abs=1e-9)
        assert metrics.spearman(x, y) == pytest.approx(100 * stats.spearmanr(x, y)[0], abs=1e-9)


def test_average_ranks_agree_with_scipy_rankdata():
    import numpy as np
    from scipy import stats

    values = np.array([3.0, 1.0, 3.0, 2.0, 3.0, 1.0])
    assert metrics.average_ranks(values).tolist() == stats.rankdata(values).tolist()


def test_predictions_and_labels_of_different_lengths_are_refused():
    with pytest.raises(ValueError, match="3 predictions for 2 labels"):
        metrics.accuracy([1, 0, 1], [1, 0])


# --- against the `evaluate` library's own metric scripts (the GLUE and SQuAD references the
# paper's numbers were computed with). evaluate.load fetches those scripts from the Hugging
# Face Hub, so offline these tests skip, saying why; the scikit-learn / scipy checks above
# cover the same formulas without the network.

def _hub_metric(*name: str):
    evaluate = pytest.importorskip("evaluate")
    import os

    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_EVALUATE_OFFLINE") == "1":
        pytest.skip("offline (HF_HUB_OFFLINE / HF_EVALUATE_OFFLINE): evaluate.load needs the metric "
                    f"script {'/'.join(name)} from the Hugging Face Hub")
    try:
        return evaluate.load(*name)
    except (FileNotFoundError, ConnectionError, OSError) as error:
        pytest.skip(f"evaluate.load{name} could not fetch its metric script (no network?): {error}")


@pytest.mark.parametrize("config, ours", [
    ("mrpc", {"accuracy": metrics.accuracy, "f1": metrics.f1_binary}),
    ("cola", {"matthews_correlation": metrics.matthews}),
])
def test_classification_metrics_agree_with_evaluate(config, ours):
    import numpy as np

    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 200).tolist()
    predictions = [label if keep else 1 - label for label, keep in zip(labels, rng.random(200) < 0.7)]
    reference = _hub_metric("glue", config).compute(predictions=predictions, references=labels)
    for name, function in ours.items():
        assert function(predictions, labels) == pytest.approx(100 * reference[name], abs=1e-9)


def test_correlations_agree_with_evaluate():
    import numpy as np

    rng = np.random.default_rng(4)
    labels = rng.uniform(0, 5, 300)
    predictions = (labels + rng.normal(0, 1.5, 300)).tolist()
    reference = _hub_metric("glue", "stsb").compute(predictions=predictions, references=labels.tolist())
    assert metrics.pearson(predictions, labels) == pytest.approx(100 * reference["pearson"], abs=1e-9)
    assert metrics.spearman(predictions, labels) == pytest.approx(100 * reference["spearmanr"], abs=1e-9)


def test_squad_scores_agree_with_evaluate():
    golds = {"q1": ["the Eiffel Tower"], "q2": ["1889", "in 1889"], "q3": ["Gustave Eiffel"],
             "q4": ["Paris, France"]}
    predictions = {"q1": "Eiffel Tower", "q2": "in 1889", "q3": "Eiffel", "q4": "the city of Lyon"}
    reference = _hub_metric("squad").compute(
        predictions=[{"id": q, "prediction_text": text} for q, text in predictions.items()],
        references=[{"id": q, "answers": {"text": answers, "answer_start": [0] * len(answers)}}
                    for q, answers in golds.items()])
    ours = metrics.squad_scores(predictions, golds)
    assert ours["exact_match"] == pytest.approx(reference["exact_match"], abs=1e-9)
    assert ours["f1"] == pytest.approx(reference["f1"], abs=1e-9)
