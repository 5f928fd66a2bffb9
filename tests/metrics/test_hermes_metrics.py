# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""The Hermes evaluation figures: pooled IoU and the per-batch accuracy, against hand-computed cases, and their
presence in the report the Hermes ``evaluate.yaml`` writes and in the BUSI benchmark's report rows."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from ignite.engine import Engine

from usseg.handlers.report import SegmentationReportHandler
from usseg.metrics import per_batch_accuracy, pooled_iou
from usseg.metrics.classification import classification_metrics
from usseg.metrics.segmentation import METRIC_DEFINITIONS, segmentation_metrics

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"

# three 1x4 images; per pixel: prediction vs target
PRED = np.array([[[1, 1, 0, 0]], [[0, 0, 0, 0]], [[1, 1, 1, 1]]])
TARGET = np.array([[[1, 0, 0, 0]], [[0, 1, 1, 0]], [[1, 1, 1, 1]]])
# lesion counts: image 0 tp 1 fp 1 fn 0; image 1 tp 0 fp 0 fn 2; image 2 tp 4 -> pooled tp 5, fp 1, fn 2
LESION_POOLED_IOU = 5 / 8
# background counts: image 0 tp 2 fp 0 fn 1; image 1 tp 2 fp 2 fn 0; image 2 none -> pooled tp 4, fp 2, fn 1
BACKGROUND_POOLED_IOU = 4 / 7


def test_pooled_iou_sums_counts_over_the_set_before_dividing() -> None:
    assert pooled_iou(PRED, TARGET) == pytest.approx(LESION_POOLED_IOU)
    both = pooled_iou(PRED, TARGET, include_background=True)
    assert both == pytest.approx((LESION_POOLED_IOU + BACKGROUND_POOLED_IOU) / 2)
    summary = segmentation_metrics(PRED, TARGET)
    assert summary["iou_pooled"] == pytest.approx(LESION_POOLED_IOU)
    assert summary["iou_mean_per_image"] == pytest.approx((1 / 2 + 0 + 1) / 3)  # differs: a distinct definition
    assert summary["dice_pooled"] == pytest.approx(10 / 13)
    per_class = segmentation_metrics(PRED, TARGET, include_background=True, class_names=["bg", "lesion"])
    assert per_class["iou_pooled/bg"] == pytest.approx(BACKGROUND_POOLED_IOU)
    assert per_class["iou_pooled/lesion"] == pytest.approx(LESION_POOLED_IOU)
    assert "iou_pooled" in METRIC_DEFINITIONS


def test_pooled_iou_empty_policy() -> None:
    empty = np.zeros((2, 3, 3), dtype=np.int64)
    assert pooled_iou(empty, empty) == 1.0
    assert math.isnan(pooled_iou(empty, empty, empty="nan"))
    assert math.isnan(segmentation_metrics(empty, empty, empty="nan")["iou_pooled"])


# correctness of 10 samples in evaluation order: 1 = the arg-max equals the label
CORRECT = np.array([1, 1, 1, 0, 1, 1, 1, 0, 0, 0], dtype=bool)
LABELS = np.array([0, 1, 0, 1, 1, 0, 0, 1, 0, 1])


def _probs(correct: np.ndarray, labels: np.ndarray) -> np.ndarray:
    predicted = np.where(correct, labels, 1 - labels)
    probs = np.full((len(labels), 2), 0.2)
    probs[np.arange(len(labels)), predicted] = 0.8
    return probs


@pytest.mark.parametrize(
    "batch_size, expected",
    [
        (8, (6 / 8 + 0 / 2) / 2),  # the short last batch (2 samples, both wrong) weighs as much as the full one
        (4, (3 / 4 + 3 / 4 + 0 / 2) / 3),
        (3, (1 + 2 / 3 + 1 / 3 + 0) / 4),  # last batch: one sample
        (10, 6 / 10),
        (64, 6 / 10),  # one batch holding everything: the per-sample accuracy
    ],
)
def test_per_batch_accuracy_weighs_every_batch_equally(batch_size: int, expected: float) -> None:
    probs = _probs(CORRECT, LABELS)
    assert per_batch_accuracy(probs, LABELS, batch_size=batch_size) == pytest.approx(expected)
    metrics = classification_metrics(probs, LABELS, batch_size=batch_size)
    assert metrics[f"accuracy_per_batch{batch_size}"] == pytest.approx(expected)
    assert metrics["accuracy"] == pytest.approx(0.6)


def test_per_batch_accuracy_follows_the_given_order() -> None:
    probs = _probs(CORRECT, LABELS)
    reversed_order = np.arange(len(LABELS))[::-1]  # correctness 0001 | 1101 | 11
    reordered = per_batch_accuracy(probs[reversed_order], LABELS[reversed_order], batch_size=4)
    assert reordered == pytest.approx((1 / 4 + 3 / 4 + 2 / 2) / 3)
    assert per_batch_accuracy(probs, LABELS, batch_size=4) == pytest.approx(0.5)  # same samples, another order


@pytest.mark.parametrize("batch_size", [0, -8, 2.5, True, "8"])
def test_per_batch_accuracy_refuses_a_bad_batch_size(batch_size: object) -> None:
    probs = _probs(CORRECT, LABELS)
    with pytest.raises(ValueError, match="batch_size"):
        per_batch_accuracy(probs, LABELS, batch_size=batch_size)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="batch_size"):
        classification_metrics(probs, LABELS, batch_size=batch_size)  # type: ignore[arg-type]


def _busi_hermes() -> ModuleType:
    sys.path.insert(0, str(BENCHMARKS))  # the script imports its sibling `results` module
    try:
        spec = importlib.util.spec_from_file_location("busi_hermes_under_test", BENCHMARKS / "busi_hermes.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCHMARKS))
    return module


def test_the_evaluate_report_and_the_benchmark_row_carry_both_figures(tmp_path: Path) -> None:
    # the report handler as the Hermes evaluate.yaml configures it, fed 10 decollated items in batches of 8 + 2
    probs = _probs(CORRECT, LABELS)
    items = []
    for i in range(10):
        pred = torch.zeros(1, 1, 4, dtype=torch.long)
        label = torch.zeros(1, 1, 4, dtype=torch.long)
        label[0, 0, :2] = 1
        pred[0, 0, : 1 + i % 3] = 1  # lesion tp/fp per image: (1, 0), (2, 0), (2, 1) repeating
        items.append({"pred": pred, "label": label, "class_prob": torch.tensor(probs[i]), "class": LABELS[i]})
    handler = SegmentationReportHandler(
        tmp_path / "eval",
        batch_size=8,
        cls_pred_key="class_prob",
        cls_label_key="class",
        montage=False,
        prefix="final_",
    )
    engine = Engine(lambda engine, batch: batch)
    handler.attach(engine)
    engine.run([items[:8], items[8:]], max_epochs=1)
    report = json.loads((tmp_path / "eval" / "final_metrics.json").read_text())
    tp = sum(min(1 + i % 3, 2) for i in range(10))
    fp = sum(i % 3 == 2 for i in range(10))
    fn = sum(2 - min(1 + i % 3, 2) for i in range(10))
    assert report["metrics"]["iou_pooled"] == pytest.approx(tp / (tp + fp + fn))
    assert report["classification"]["accuracy_per_batch8"] == pytest.approx(0.375)
    assert report["classification"]["accuracy"] == pytest.approx(0.6)
    assert "iou_pooled" in report["definitions"]

    row = _busi_hermes().report_row(tmp_path, "final")
    assert row["iou_pooled"] == pytest.approx(tp / (tp + fp + fn))
    assert row["accuracy_per_batch8_hermes"] == pytest.approx(0.375)
    assert (
        row["accuracy"] == pytest.approx(0.6) and row["dice_per_batch8_hermes"] == report["metrics"]["dice_per_batch8"]
    )
