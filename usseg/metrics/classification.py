# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""Classification metrics from class probabilities, in numpy (ROC AUC through MONAI's ``compute_roc_auc``).

The predicted class is the arg-max of the probabilities (the lowest index wins a tie). Undefined values are NaN,
never a silent 0:

- the **recall** of a class absent from the labels is 0 / 0, so NaN; balanced accuracy averages the recalls that
  are defined (the classes present in the labels);
- the **precision** of a class never predicted is NaN;
- **F1** ``= 2 TP / (2 TP + FP + FN)`` is NaN only for a class neither present nor predicted; macro F1 averages the
  defined values;
- the one-vs-rest **AUC** of a class is NaN when the labels hold only that class or none of it (no positive or no
  negative example); the macro AUC averages the defined values and is NaN when none is.

Ties in the scores count one half in the AUC (the Mann-Whitney statistic), as in MONAI and scikit-learn.

Accuracy comes under two definitions:

- ``accuracy``: correct samples / all samples (per-sample);
- ``accuracy_per_batch8``: the top-1 accuracy of each consecutive evaluation batch of 8 samples, averaged over the
  batches, a short last batch weighing as much as a full one (the released Hermes evaluation loop). Samples are
  taken in the order given, which must be the evaluation order; the number in the key follows ``batch_size``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.metrics import compute_roc_auc

from usseg.metrics.segmentation import nan_mean

__all__ = ["classification_metrics", "confusion_matrix", "one_vs_rest_auc", "per_batch_accuracy"]


def _to_numpy(x: Any, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        plain = x.as_tensor() if isinstance(x, MetaTensor) else x
        return plain.detach().cpu().numpy()
    try:
        return np.asarray(x)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be a numpy array or a torch tensor, got {type(x).__name__}.") from err


def _prepare(probs: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """Return probabilities ``(N, C)`` float64 and labels ``(N,)`` int64, validated."""
    p = _to_numpy(probs, "probs").astype(np.float64)
    if p.ndim == 2 and p.shape[1] == 1:
        p = p[:, 0]
    if p.ndim == 1:  # a binary classifier that reports only P(class 1)
        p = np.stack([1.0 - p, p], axis=1)
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(f"probs must have shape (N, C) with C >= 2, or (N,) for binary, got {tuple(p.shape)}.")
    if p.shape[0] == 0:
        raise ValueError("probs holds no sample; at least one is needed.")
    if not np.isfinite(p).all():
        raise ValueError("probs holds non-finite values.")
    y = _to_numpy(labels, "labels")
    if y.ndim == 2 and y.shape[1] == p.shape[1] and y.shape[1] > 1:  # one-hot labels
        if not np.isin(y, (0, 1)).all() or (y.sum(axis=1) != 1).any():
            raise ValueError("labels of shape (N, C) must be one-hot (exactly one 1 per row).")
        y = y.argmax(axis=1)
    elif y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or y.shape[0] != p.shape[0]:
        raise ValueError(f"labels must have shape ({p.shape[0]},) to match probs {tuple(p.shape)}, got {y.shape}.")
    if y.dtype == np.bool_:
        y = y.astype(np.int64)
    elif not np.issubdtype(y.dtype, np.integer):
        as_float = y.astype(np.float64)
        if not np.isfinite(as_float).all() or (np.round(as_float) != as_float).any():
            raise ValueError("labels must hold integer class indices, got non-integer values.")
    y = y.astype(np.int64)
    if y.min() < 0 or y.max() >= p.shape[1]:
        raise ValueError(f"labels hold values in [{y.min()}, {y.max()}], outside [0, {p.shape[1] - 1}].")
    return p, y


def confusion_matrix(labels: Any, predictions: Any, num_classes: int) -> np.ndarray:
    """Counts ``(num_classes, num_classes)``: rows are the true class, columns the predicted class.

    Args:
        labels: true class indices ``(N,)``.
        predictions: predicted class indices ``(N,)``.
        num_classes: size of the matrix.

    Returns:
        int64 array ``(num_classes, num_classes)``.
    """
    y = np.asarray(labels, dtype=np.int64).ravel()
    p = np.asarray(predictions, dtype=np.int64).ravel()
    return np.bincount(y * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def _check_batch_size(batch_size: int) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    return int(batch_size)


def _per_batch_accuracy(correct: np.ndarray, batch_size: int) -> float:
    batch_means = [float(correct[i : i + batch_size].mean()) for i in range(0, len(correct), batch_size)]
    return float(np.mean(batch_means))


def per_batch_accuracy(probs: Any, labels: Any, batch_size: int = 8) -> float:
    """Hermes' accuracy: top-1 accuracy of consecutive batches of ``batch_size`` samples, averaged over batches.

    The samples are taken in the given order, as an unshuffled evaluation loader yields them; a short last batch
    weighs as much as a full one, as in the released Hermes evaluation loop (its test loader keeps the last batch).

    Args:
        probs: class probabilities (or scores) ``(N, C)``, or ``(N,)`` for P(class 1) of a binary task.
        labels: true class indices ``(N,)``, or one-hot ``(N, C)``.
        batch_size: samples per evaluation batch (Hermes: 8).

    Returns:
        The mean over batches of the batch accuracy.

    Raises:
        ValueError: inputs as :func:`classification_metrics` refuses them, or a ``batch_size`` below 1.
    """
    size = _check_batch_size(batch_size)
    p, y = _prepare(probs, labels)
    return _per_batch_accuracy(p.argmax(axis=1) == y, size)


def one_vs_rest_auc(probs: Any, labels: Any) -> np.ndarray:
    """ROC AUC of every class against the rest; NaN for a class without positive or without negative examples.

    Args:
        probs: class probabilities ``(N, C)`` (or ``(N,)`` for binary).
        labels: true class indices ``(N,)``.

    Returns:
        float64 array ``(C,)``.
    """
    p, y = _prepare(probs, labels)
    aucs = np.full(p.shape[1], math.nan)
    for c in range(p.shape[1]):
        positives = y == c
        if positives.all() or not positives.any():
            continue  # undefined; MONAI would also return NaN, but with a warning for every call
        aucs[c] = float(compute_roc_auc(torch.from_numpy(p[:, c]), torch.from_numpy(positives.astype(np.int64))))
    return aucs


def classification_metrics(
    probs: Any, labels: Any, class_names: Sequence[str] | None = None, batch_size: int = 8
) -> dict[str, Any]:
    """Accuracy (per sample and per batch), balanced accuracy, AUC, F1, per-class precision / recall, confusion matrix.

    Args:
        probs: class probabilities (or any scores whose arg-max is the prediction) ``(N, C)``; ``(N,)`` or
            ``(N, 1)`` is read as P(class 1) of a binary task. Rows in evaluation order (the per-batch accuracy
            follows it).
        labels: true class indices ``(N,)``, or one-hot ``(N, C)``.
        class_names: one name per class; defaults to ``class0, class1, ...``.
        batch_size: the evaluation batch of ``accuracy_per_batch<batch_size>`` (8: Hermes).

    Returns:
        A dictionary with scalar entries ``accuracy`` (per sample), ``accuracy_per_batch8`` (mean of the per-batch
        accuracies; the number follows ``batch_size``), ``balanced_accuracy``, ``auc`` (binary: ROC AUC of class 1;
        multi-class: macro one-vs-rest), ``f1`` (binary only: F1 of class 1), ``f1_macro``, ``n_samples``, and per
        class ``precision/<name>``, ``recall/<name>``, ``f1/<name>``, ``auc/<name>``; plus ``confusion_matrix``
        (nested lists, rows = truth) and ``class_names``. Undefined values are NaN (module doc).

    Raises:
        ValueError: shapes that do not match, non-finite probabilities, labels outside ``[0, C)``,
            ``class_names`` of the wrong length, or a ``batch_size`` below 1.
    """
    size = _check_batch_size(batch_size)
    p, y = _prepare(probs, labels)
    num_classes = p.shape[1]
    if class_names is None:
        names = [f"class{c}" for c in range(num_classes)]
    else:
        names = [str(n) for n in class_names]
        if isinstance(class_names, str) or len(names) != num_classes or len(set(names)) != num_classes:
            raise ValueError(f"class_names must hold {num_classes} distinct names, got {class_names!r}.")
    predictions = p.argmax(axis=1)
    cm = confusion_matrix(y, predictions, num_classes)
    tp = np.diag(cm).astype(np.float64)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), math.nan)
        recall = np.where(tp + fn > 0, tp / (tp + fn), math.nan)
        f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), math.nan)
    aucs = one_vs_rest_auc(p, y)

    metrics: dict[str, Any] = {
        "accuracy": float(tp.sum() / len(y)),
        f"accuracy_per_batch{size}": _per_batch_accuracy(predictions == y, size),
        "balanced_accuracy": nan_mean(recall),
        "auc": float(aucs[1]) if num_classes == 2 else nan_mean(aucs),
    }
    if num_classes == 2:
        metrics["f1"] = float(f1[1])
    metrics["f1_macro"] = nan_mean(f1)
    metrics["n_samples"] = len(y)
    for c, name in enumerate(names):
        metrics[f"precision/{name}"] = float(precision[c])
        metrics[f"recall/{name}"] = float(recall[c])
        metrics[f"f1/{name}"] = float(f1[c])
        metrics[f"auc/{name}"] = float(aucs[c])
    metrics["confusion_matrix"] = cm.tolist()
    metrics["class_names"] = names
    return metrics
