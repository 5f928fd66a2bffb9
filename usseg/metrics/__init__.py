# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""Step 5 of the data flow: metrics under named definitions, metrics JSON, training curves and overlay montages."""

from __future__ import annotations

from usseg.metrics.classification import (
    classification_metrics,
    confusion_matrix,
    one_vs_rest_auc,
    per_batch_accuracy,
)
from usseg.metrics.report import (
    GROUND_TRUTH_COLOR,
    PREDICTION_COLOR,
    overlay_rgb,
    plot_training_curves,
    save_overlay_montage,
    to_json_compatible,
    write_metrics_json,
)
from usseg.metrics.segmentation import (
    EMPTY_POLICIES,
    METRIC_DEFINITIONS,
    SegmentationEvaluation,
    dice_per_image,
    evaluate_segmentation,
    hd95_per_image,
    iou_per_image,
    mean_dice_per_image,
    mean_hd95,
    nan_mean,
    per_batch_dice,
    pooled_dice,
    pooled_iou,
    segmentation_metrics,
    to_label_maps,
)

__all__ = [
    "EMPTY_POLICIES",
    "GROUND_TRUTH_COLOR",
    "METRIC_DEFINITIONS",
    "PREDICTION_COLOR",
    "SegmentationEvaluation",
    "classification_metrics",
    "confusion_matrix",
    "dice_per_image",
    "evaluate_segmentation",
    "hd95_per_image",
    "iou_per_image",
    "mean_dice_per_image",
    "mean_hd95",
    "nan_mean",
    "one_vs_rest_auc",
    "overlay_rgb",
    "per_batch_accuracy",
    "per_batch_dice",
    "plot_training_curves",
    "pooled_dice",
    "pooled_iou",
    "save_overlay_montage",
    "segmentation_metrics",
    "to_json_compatible",
    "to_label_maps",
    "write_metrics_json",
]
