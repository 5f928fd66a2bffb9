# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""Classification metrics against a hand-computed confusion matrix and a pairwise-count AUC."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from usseg.metrics.classification import classification_metrics, confusion_matrix, one_vs_rest_auc

# P(class 1) with ties: 0.5 appears for a negative and a positive
BINARY_P1 = np.array([0.1, 0.5, 0.5, 0.8, 0.3])
BINARY_LABELS = np.array([0, 0, 1, 1, 1])


def _pairwise_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Mann-Whitney: the share of (positive, negative) pairs ranked right, ties counting one half."""
    pairs = list(itertools.product(scores[positive], scores[~positive]))
    return sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in pairs) / len(pairs)


def test_binary_metrics_by_hand():
    probs = np.stack([1 - BINARY_P1, BINARY_P1], axis=1)
    metrics = classification_metrics(probs, BINARY_LABELS, class_names=["benign", "malignant"])
    # arg-max with the tie at 0.5 going to class 0: predictions [0, 0, 0, 1, 0]
    assert metrics["confusion_matrix"] == [[2, 0], [2, 1]]
    assert metrics["accuracy"] == pytest.approx(3 / 5)
    assert metrics["balanced_accuracy"] == pytest.approx((1.0 + 1 / 3) / 2)
    assert metrics["precision/benign"] == pytest.approx(2 / 4)
    assert metrics["precision/malignant"] == pytest.approx(1.0)
    assert metrics["recall/malignant"] == pytest.approx(1 / 3)
    assert metrics["f1"] == pytest.approx(2 * 1 / (2 * 1 + 0 + 2))
    assert metrics["f1_macro"] == pytest.approx((0.5 + 4 / 6) / 2)
    # pairs: (0.5, 0.1) 1, (0.5, 0.5) 1/2, (0.8, .) 2, (0.3, 0.1) 1, (0.3, 0.5) 0 -> 4.5 / 6
    assert metrics["auc"] == pytest.approx(0.75)
    assert metrics["auc"] == pytest.approx(_pairwise_auc(BINARY_P1, BINARY_LABELS == 1))
    assert metrics["n_samples"] == 5


def test_auc_matches_pairwise_counts_on_many_ties():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 4, size=40) / 4.0  # four distinct values: many ties
    labels = rng.integers(0, 2, size=40)
    assert one_vs_rest_auc(scores, labels)[1] == pytest.approx(_pairwise_auc(scores, labels == 1), rel=1e-12)


def test_multi_class_with_a_class_absent_from_the_labels():
    probs = np.array(
        [
            [0.7, 0.2, 0.1],  # truth 0, pred 0
            [0.2, 0.3, 0.5],  # truth 0, pred 2 (a class never in the labels)
            [0.1, 0.8, 0.1],  # truth 1, pred 1
            [0.6, 0.3, 0.1],  # truth 1, pred 0
        ]
    )
    labels = np.array([0, 0, 1, 1])
    metrics = classification_metrics(probs, labels, class_names=["a", "b", "c"])
    assert metrics["confusion_matrix"] == [[1, 0, 1], [1, 1, 0], [0, 0, 0]]
    assert math.isnan(metrics["recall/c"]) and metrics["precision/c"] == 0.0
    assert metrics["f1/c"] == 0.0  # predicted once, never true: 2*0 / (0 + 1 + 0)
    assert math.isnan(metrics["auc/c"])
    assert metrics["balanced_accuracy"] == pytest.approx((0.5 + 0.5) / 2)
    auc_a = _pairwise_auc(probs[:, 0], labels == 0)
    auc_b = _pairwise_auc(probs[:, 1], labels == 1)
    assert metrics["auc/a"] == pytest.approx(auc_a) and metrics["auc/b"] == pytest.approx(auc_b)
    assert metrics["auc"] == pytest.approx((auc_a + auc_b) / 2)
    assert metrics["f1_macro"] == pytest.approx((0.5 + 2 / 3 + 0.0) / 3)
    assert "f1" not in metrics  # the positive-class F1 exists for binary tasks only


def test_class_neither_present_nor_predicted_has_undefined_precision_and_f1():
    probs = np.array([[0.9, 0.05, 0.05], [0.1, 0.8, 0.1]])
    metrics = classification_metrics(probs, [0, 1])
    assert math.isnan(metrics["precision/class2"]) and math.isnan(metrics["f1/class2"])
    assert metrics["f1_macro"] == 1.0 and metrics["accuracy"] == 1.0


INPUT_FORMS = {
    "positive_probability_vector": (BINARY_P1, BINARY_LABELS),
    "positive_probability_column": (torch.as_tensor(BINARY_P1)[:, None], torch.as_tensor(BINARY_LABELS)),
    "one_hot_labels": (np.stack([1 - BINARY_P1, BINARY_P1], 1), np.eye(2, dtype=int)[BINARY_LABELS]),
    "float_labels": (np.stack([1 - BINARY_P1, BINARY_P1], 1), BINARY_LABELS.astype(np.float32)),
}


@pytest.mark.parametrize(("probs", "labels"), INPUT_FORMS.values(), ids=INPUT_FORMS.keys())
def test_input_forms_agree(probs, labels):
    reference = classification_metrics(np.stack([1 - BINARY_P1, BINARY_P1], 1), BINARY_LABELS)
    assert classification_metrics(probs, labels) == reference


def test_confusion_matrix_rows_are_truth():
    np.testing.assert_array_equal(confusion_matrix([0, 1, 1, 2], [1, 1, 0, 2], 3), [[0, 1, 0], [1, 1, 0], [0, 0, 1]])


BAD = {
    "length_mismatch": (np.zeros((3, 2)), [0, 1], "shape \\(3,\\)"),
    "label_out_of_range": (np.zeros((2, 2)), [0, 2], r"outside \[0, 1\]"),
    "non_integer_label": (np.zeros((2, 2)), [0, 0.5], "integer"),
    "one_column_of_three_dims": (np.zeros((2, 2, 2)), [0, 1], "shape"),
    "non_finite": (np.array([[np.nan, 1.0], [0.0, 1.0]]), [0, 1], "non-finite"),
    "empty": (np.zeros((0, 2)), [], "no sample"),
}


@pytest.mark.parametrize(("probs", "labels", "match"), BAD.values(), ids=BAD.keys())
def test_bad_inputs_raise(probs, labels, match):
    with pytest.raises(ValueError, match=match):
        classification_metrics(probs, labels)


def test_wrong_number_of_class_names_raises():
    with pytest.raises(ValueError, match="2 distinct names"):
        classification_metrics(np.zeros((2, 2)), [0, 1], class_names=["only"])
