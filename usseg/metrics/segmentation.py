# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""Segmentation metrics under explicit, named definitions (methods.md, section 5.2).

Papers disagree on what "Dice" means, so every aggregate here carries its definition in its name:

- ``dice_mean_per_image``: Dice of each image (averaged over the evaluated classes), then averaged over images.
  The usseg default, and the Cervical definition (per-image Dice of classes 1-2, averaged).
- ``dice_pooled``: TP / FP / FN summed over the whole set, one Dice per class (Meta-USCL UDIAT-B style).
- ``dice_per_batch8``: pooled within consecutive evaluation batches of 8 images and averaged over batches, a short
  last batch weighing as much as a full one (the Hermes evaluation loop).
- ``iou_mean_per_image``: as ``dice_mean_per_image`` for the Jaccard index.
- ``iou_pooled``: TP / (TP + FP + FN) with the counts summed over the whole set, one IoU per class, averaged over
  classes (the Hermes ``evaluate_iou``).
- ``hd95_mean``: the 95th-percentile symmetric Hausdorff distance, averaged over the (image, class) pairs where both
  masks are non-empty; ``hd95_n_empty`` counts the pairs left out.

Inputs are predictions and targets given as integer label maps ``(N, H, W)`` or ``(N, 1, H, W)``, or one-hot
``(N, C, H, W)`` with ``C == num_classes``; numpy arrays or torch tensors. A list or tuple of per-image arrays
(``(H, W)``, ``(1, H, W)`` or ``(C, H, W)``) is accepted too, so images of different sizes can be scored together.
Float arrays are accepted when their values are integers (``AsDiscrete`` outputs floats).

**Empty masks.** When neither the prediction nor the target contains a class, Dice and IoU are 0 / 0. The ``empty``
argument decides: ``"one"`` (default) scores a correct "nothing here" as 1; ``"nan"`` excludes the case from every
mean. A non-empty prediction on an empty target (or the reverse) always scores 0. The same rule applies to the pooled
and per-batch variants, at the level of the whole set or the batch.

The per-image Dice, IoU and Hausdorff values come from MONAI (``compute_dice``, ``compute_iou``,
``compute_hausdorff_distance``); the pooled counts come from ``get_confusion_matrix``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.metrics import compute_dice, compute_hausdorff_distance, compute_iou, get_confusion_matrix

__all__ = [
    "EMPTY_POLICIES",
    "METRIC_DEFINITIONS",
    "SegmentationEvaluation",
    "dice_per_image",
    "evaluate_segmentation",
    "hd95_per_image",
    "iou_per_image",
    "mean_dice_per_image",
    "mean_hd95",
    "nan_mean",
    "per_batch_dice",
    "pooled_dice",
    "pooled_iou",
    "segmentation_metrics",
    "to_label_maps",
]

EMPTY_POLICIES = ("one", "nan")

METRIC_DEFINITIONS: dict[str, str] = {
    "dice_mean_per_image": "Dice per image (mean over evaluated classes), averaged over images.",
    "dice_pooled": "Dice from TP/FP/FN pooled over all images, per class, averaged over classes.",
    "dice_per_batch{batch_size}": (
        "Dice pooled within consecutive batches of {batch_size} images (mean over classes), averaged over batches; "
        "a short last batch weighs as much as a full one (Hermes)."
    ),
    "iou_mean_per_image": "IoU per image (mean over evaluated classes), averaged over images.",
    "iou_pooled": "IoU TP/(TP+FP+FN) from counts pooled over all images, per class, averaged over classes (Hermes).",
    "hd95_mean": (
        "Symmetric 95th-percentile Hausdorff distance of mask boundaries, averaged over (image, class) pairs where "
        "both masks are non-empty; in pixels, or in spacing units when a spacing is given."
    ),
    "hd95_n_empty": "Number of (image, class) pairs left out of hd95_mean because a mask was empty.",
    "n_images": "Number of images scored.",
}

ArrayLike = Any  # numpy array, torch tensor (MetaTensor included), or a sequence of per-image arrays
SpacingLike = float | Sequence[float] | Sequence[Sequence[float]] | np.ndarray | None


@dataclass
class SegmentationEvaluation:
    """Everything :func:`evaluate_segmentation` computes, per image and aggregated.

    Attributes:
        summary: the aggregated figures returned by :func:`segmentation_metrics`.
        class_indices: label values of the evaluated classes (background dropped unless included), length ``C'``.
        class_names: names of the evaluated classes, length ``C'``.
        dice: per-image Dice, shape ``(N, C')``, NaN where the ``empty`` policy excludes a case.
        iou: per-image IoU, shape ``(N, C')``.
        hd95: per-image HD95, shape ``(N, C')``, NaN where either mask is empty.
        counts: per-image ``[tp, fp, fn]`` pixel counts, shape ``(N, C', 3)``, int64.
    """

    summary: dict[str, float | int]
    class_indices: list[int]
    class_names: list[str]
    dice: np.ndarray
    iou: np.ndarray
    hd95: np.ndarray
    counts: np.ndarray = field(repr=False)


def nan_mean(values: ArrayLike) -> float:
    """Mean of the finite entries of ``values``; NaN (without a warning) when there are none."""
    arr = np.asarray(values, dtype=np.float64).ravel()
    finite = arr[np.isfinite(arr)]
    return float(finite.mean()) if finite.size else math.nan


def _check_common(num_classes: int, empty: str | None = None, batch_size: int | None = None) -> None:
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2 (background included), got {num_classes!r}.")
    if empty is not None and empty not in EMPTY_POLICIES:
        raise ValueError(f"empty must be one of {EMPTY_POLICIES}, got {empty!r}.")
    if batch_size is not None and (
        isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1
    ):
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")


def _to_numpy(x: ArrayLike, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        plain = x.as_tensor() if isinstance(x, MetaTensor) else x  # drop metadata, keep the values
        return plain.detach().cpu().numpy()
    try:
        return np.asarray(x)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be a numpy array or a torch tensor, got {type(x).__name__}.") from err


def _label_maps_from_batch(arr: np.ndarray, num_classes: int, name: str) -> np.ndarray:
    """Convert ``(N, H, W)``, ``(N, 1, H, W)`` or one-hot ``(N, C, H, W)`` to int64 label maps ``(N, H, W)``."""
    if arr.ndim == 3:
        maps = arr
    elif arr.ndim == 4 and arr.shape[1] == 1:
        maps = arr[:, 0]
    elif arr.ndim == 4:
        if arr.shape[1] != num_classes:
            raise ValueError(
                f"{name}: a one-hot input needs num_classes={num_classes} channels, got shape {tuple(arr.shape)}."
            )
        if not np.isin(arr, (0, 1)).all():
            raise ValueError(f"{name}: a one-hot input must hold only 0 and 1, got values {np.unique(arr)[:6]}.")
        per_pixel = arr.sum(axis=1)
        if (per_pixel > 1).any():
            raise ValueError(f"{name}: one-hot input has pixels set in several channels (multi-label is not scored).")
        return arr.argmax(axis=1).astype(np.int64)
    else:
        raise ValueError(
            f"{name} must have shape (N, H, W), (N, 1, H, W) or (N, {num_classes}, H, W), got {tuple(arr.shape)}."
        )
    if maps.dtype == np.bool_:
        maps = maps.astype(np.int64)
    if not np.issubdtype(maps.dtype, np.integer) and (not np.isfinite(maps).all() or (np.round(maps) != maps).any()):
        raise ValueError(f"{name} must hold integer class labels, got non-integer values.")
    maps = maps.astype(np.int64)
    if maps.size and (maps.min() < 0 or maps.max() >= num_classes):
        raise ValueError(
            f"{name} holds label values in [{maps.min()}, {maps.max()}], outside [0, {num_classes - 1}] "
            f"for num_classes={num_classes}."
        )
    return maps


def to_label_maps(x: ArrayLike, num_classes: int, name: str = "pred") -> list[np.ndarray]:
    """Validate predictions or targets in any accepted layout and return one int64 ``(H, W)`` label map per image.

    Args:
        x: ``(N, H, W)``, ``(N, 1, H, W)``, one-hot ``(N, num_classes, H, W)``, or a list of per-image
            ``(H, W)`` / ``(1, H, W)`` / ``(num_classes, H, W)`` arrays; numpy or torch.
        num_classes: number of label values including background.
        name: what ``x`` is, for error messages.

    Returns:
        A list of int64 arrays ``(H, W)``.

    Raises:
        ValueError: an unsupported shape, non-integer labels, values outside ``[0, num_classes)``, or a one-hot
            input that is not one-hot.
    """
    _check_common(num_classes)
    if isinstance(x, (list, tuple)):
        maps: list[np.ndarray] = []
        for i, item in enumerate(x):
            arr = _to_numpy(item, f"{name}[{i}]")
            if arr.ndim not in (2, 3):
                raise ValueError(f"{name}[{i}] must have shape (H, W), (1, H, W) or (C, H, W), got {tuple(arr.shape)}.")
            maps.append(_label_maps_from_batch(arr[None], num_classes, name)[0])
        return maps
    arr = _to_numpy(x, name)
    return list(_label_maps_from_batch(arr, num_classes, name))


def _prepare(pred: ArrayLike, target: ArrayLike, num_classes: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    preds = to_label_maps(pred, num_classes, "pred")
    targets = to_label_maps(target, num_classes, "target")
    if len(preds) != len(targets):
        raise ValueError(f"pred holds {len(preds)} images but target holds {len(targets)}.")
    if not preds:
        raise ValueError("pred and target hold no image; at least one is needed.")
    for i, (p, t) in enumerate(zip(preds, targets)):
        if p.shape != t.shape:
            raise ValueError(f"image {i}: pred has spatial shape {p.shape} but target has {t.shape}.")
    return preds, targets


def _chunks(maps: list[np.ndarray]) -> list[tuple[int, int]]:
    """Runs of consecutive images with one spatial shape, so MONAI is called once per run."""
    runs: list[tuple[int, int]] = []
    start = 0
    for i in range(1, len(maps) + 1):
        if i == len(maps) or maps[i].shape != maps[start].shape:
            runs.append((start, i))
            start = i
    return runs


def _one_hot(maps: list[np.ndarray], num_classes: int) -> torch.Tensor:
    labels = torch.from_numpy(np.stack(maps))
    return F.one_hot(labels, num_classes).permute(0, 3, 1, 2).to(torch.float64)  # exact sums and ratios


def _class_indices(num_classes: int, include_background: bool) -> list[int]:
    return list(range(0 if include_background else 1, num_classes))


def _per_image_overlap(
    preds: list[np.ndarray], targets: list[np.ndarray], num_classes: int, include_background: bool, empty: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-image Dice ``(N, C')``, IoU ``(N, C')`` and ``[tp, fp, fn]`` counts ``(N, C', 3)``."""
    dice_parts, iou_parts, count_parts = [], [], []
    for start, stop in _chunks(preds):
        p_hot = _one_hot(preds[start:stop], num_classes)
        t_hot = _one_hot(targets[start:stop], num_classes)
        # ignore_empty=False gives 1 for "both empty" and 0 for "prediction on an empty target"; the policy is
        # applied below from the counts, so MONAI's NaN-for-any-empty-target rule never leaks into usseg figures.
        dice_parts.append(
            compute_dice(p_hot, t_hot, include_background=include_background, ignore_empty=False).double().numpy()
        )
        iou_parts.append(
            compute_iou(p_hot, t_hot, include_background=include_background, ignore_empty=False).double().numpy()
        )
        confusion = get_confusion_matrix(p_hot, t_hot, include_background=include_background).numpy()
        count_parts.append(np.rint(confusion[..., [0, 1, 3]]).astype(np.int64))  # tp, fp, fn
    dice = np.concatenate(dice_parts)
    iou = np.concatenate(iou_parts)
    counts = np.concatenate(count_parts)
    if empty == "nan":
        both_empty = counts.sum(axis=-1) == 0
        dice[both_empty] = math.nan
        iou[both_empty] = math.nan
    return dice, iou, counts


def _dice_from_counts(counts: np.ndarray, empty: str) -> np.ndarray:
    """Dice per class from ``[..., C', 3]`` counts, with the empty policy for a 0 / 0 class."""
    tp, fp, fn = (counts[..., k].astype(np.float64) for k in range(3))
    denominator = 2 * tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        dice = np.where(denominator > 0, 2 * tp / denominator, 1.0 if empty == "one" else math.nan)
    return dice


def _iou_from_counts(counts: np.ndarray, empty: str) -> np.ndarray:
    """IoU per class from ``[..., C', 3]`` counts, with the empty policy for a 0 / 0 class."""
    tp, fp, fn = (counts[..., k].astype(np.float64) for k in range(3))
    denominator = tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(denominator > 0, tp / denominator, 1.0 if empty == "one" else math.nan)
    return iou


def _per_batch(counts: np.ndarray, batch_size: int, empty: str) -> tuple[float, np.ndarray]:
    """Hermes-style batch-pooled Dice: overall value and per-class values ``(C',)``."""
    batch_class = np.stack(
        [_dice_from_counts(counts[i : i + batch_size].sum(axis=0), empty) for i in range(0, len(counts), batch_size)]
    )  # (n_batches, C')
    batch_means = np.array([nan_mean(row) for row in batch_class])
    per_class = np.array([nan_mean(batch_class[:, c]) for c in range(batch_class.shape[1])])
    return nan_mean(batch_means), per_class


def _prepare_spacing(spacing: SpacingLike, n_images: int) -> list[tuple[float, float] | None]:
    """One ``(row, column)`` spacing per image, or ``None`` entries for pixel units."""
    if spacing is None:
        return [None] * n_images
    try:
        arr = np.asarray(spacing, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"spacing must be numeric, got {spacing!r}.") from err
    if arr.ndim == 0:
        arr = np.full((n_images, 2), float(arr))
    elif arr.shape == (2,):
        arr = np.broadcast_to(arr, (n_images, 2))
    elif arr.shape != (n_images, 2):
        raise ValueError(
            f"spacing must be a number, a (row, column) pair or an ({n_images}, 2) array of per-image pairs; "
            f"got shape {arr.shape}: {spacing!r}."
        )
    if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise ValueError(f"spacing values must be positive and finite, got {spacing!r}.")
    return [(float(row), float(col)) for row, col in arr]


def _per_image_hd95(
    preds: list[np.ndarray],
    targets: list[np.ndarray],
    class_indices: list[int],
    spacing: list[tuple[float, float] | None],
) -> np.ndarray:
    hd95 = np.full((len(preds), len(class_indices)), math.nan)
    for i, (p, t) in enumerate(zip(preds, targets)):
        for j, c in enumerate(class_indices):
            p_mask, t_mask = p == c, t == c
            if not p_mask.any() or not t_mask.any():
                continue  # undefined: an empty boundary has no distance; counted by hd95_n_empty
            with warnings.catch_warnings():
                # MONAI 1.6.1 passes its own deprecated argument internally; the warning is not actionable here
                warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*", category=FutureWarning)
                value = compute_hausdorff_distance(
                    torch.from_numpy(p_mask)[None, None],
                    torch.from_numpy(t_mask)[None, None],
                    include_background=True,  # the single channel is the class itself, not a background channel
                    percentile=95,
                    spacing=None if spacing[i] is None else list(spacing[i]),
                )
            hd95[i, j] = float(value.reshape(-1)[0])
    return hd95


def _class_names(num_classes: int, class_names: Sequence[str] | None) -> list[str]:
    if class_names is None:
        return ["background"] + [f"class{c}" for c in range(1, num_classes)]
    if isinstance(class_names, str) or len(class_names) != num_classes:
        raise ValueError(
            f"class_names must list one name per label value, background first ({num_classes} names); "
            f"got {class_names!r}."
        )
    names = [str(n) for n in class_names]
    if len(set(names)) != len(names):
        raise ValueError(f"class_names must be distinct, got {class_names!r}.")
    return names


def evaluate_segmentation(
    pred: ArrayLike,
    target: ArrayLike,
    num_classes: int = 2,
    class_names: Sequence[str] | None = None,
    spacing: SpacingLike = None,
    include_background: bool = False,
    empty: str = "one",
    batch_size: int = 8,
) -> SegmentationEvaluation:
    """Compute every per-image value and every aggregate in one pass.

    Args:
        pred: predicted label maps ``(N, H, W)`` / ``(N, 1, H, W)``, one-hot ``(N, C, H, W)``, or a list of
            per-image arrays.
        target: ground truth in any of the same layouts; spatial shapes must match ``pred`` image by image.
        num_classes: number of label values including background (>= 2).
        class_names: one name per label value, background first; defaults to ``background, class1, ...``.
        spacing: pixel size for HD95: ``None`` (pixels), a number, a ``(row, column)`` pair (the ``(H, W)`` axes),
            or an ``(N, 2)`` array of per-image pairs.
        include_background: score class 0 too (default ``False``).
        empty: ``"one"`` or ``"nan"``: the score of a class absent from both prediction and target (module doc).
        batch_size: the batch size of the per-batch Dice (8 reproduces Hermes).

    Returns:
        A :class:`SegmentationEvaluation`; its ``summary`` is the dictionary documented in
        :func:`segmentation_metrics`.

    Raises:
        ValueError: bad shapes, label values outside ``[0, num_classes)``, an unknown ``empty`` policy, a bad
            ``spacing`` or ``class_names``.
    """
    _check_common(num_classes, empty, batch_size)
    names_all = _class_names(num_classes, class_names)
    preds, targets = _prepare(pred, target, num_classes)
    spacings = _prepare_spacing(spacing, len(preds))
    classes = _class_indices(num_classes, include_background)
    names = [names_all[c] for c in classes]

    dice, iou, counts = _per_image_overlap(preds, targets, num_classes, include_background, empty)
    hd95 = _per_image_hd95(preds, targets, classes, spacings)
    pooled_per_class = _dice_from_counts(counts.sum(axis=0), empty)
    pooled_iou_per_class = _iou_from_counts(counts.sum(axis=0), empty)
    batch_value, batch_per_class = _per_batch(counts, batch_size, empty)
    batch_key = f"dice_per_batch{batch_size}"

    summary: dict[str, float | int] = {
        "dice_mean_per_image": nan_mean([nan_mean(row) for row in dice]),
        "dice_pooled": nan_mean(pooled_per_class),
        batch_key: batch_value,
        "iou_mean_per_image": nan_mean([nan_mean(row) for row in iou]),
        "iou_pooled": nan_mean(pooled_iou_per_class),
        "hd95_mean": nan_mean(hd95),
        "hd95_n_empty": int(np.isnan(hd95).sum()),
        "n_images": len(preds),
    }
    if len(classes) > 1:
        for j, name in enumerate(names):
            summary[f"dice_mean_per_image/{name}"] = nan_mean(dice[:, j])
            summary[f"dice_pooled/{name}"] = float(pooled_per_class[j])
            summary[f"{batch_key}/{name}"] = float(batch_per_class[j])
            summary[f"iou_mean_per_image/{name}"] = nan_mean(iou[:, j])
            summary[f"iou_pooled/{name}"] = float(pooled_iou_per_class[j])
            summary[f"hd95_mean/{name}"] = nan_mean(hd95[:, j])
            summary[f"hd95_n_empty/{name}"] = int(np.isnan(hd95[:, j]).sum())
    return SegmentationEvaluation(
        summary=summary, class_indices=classes, class_names=names, dice=dice, iou=iou, hd95=hd95, counts=counts
    )


def segmentation_metrics(
    pred: ArrayLike,
    target: ArrayLike,
    num_classes: int = 2,
    class_names: Sequence[str] | None = None,
    spacing: SpacingLike = None,
    include_background: bool = False,
    empty: str = "one",
    batch_size: int = 8,
) -> dict[str, float | int]:
    """All segmentation figures under explicit names.

    Keys: ``dice_mean_per_image``, ``dice_pooled``, ``dice_per_batch8`` (the number follows ``batch_size``),
    ``iou_mean_per_image``, ``iou_pooled``, ``hd95_mean``, ``hd95_n_empty`` and ``n_images``. When more than one
    class is scored (``num_classes > 2`` or ``include_background``) each of the first seven also appears per class as
    ``"<key>/<class name>"``. :data:`METRIC_DEFINITIONS` describes every key.

    Args: as :func:`evaluate_segmentation`.

    Returns:
        A flat dictionary of Python floats and ints; undefined values are NaN.

    Raises:
        ValueError: as :func:`evaluate_segmentation`.
    """
    return evaluate_segmentation(
        pred, target, num_classes, class_names, spacing, include_background, empty, batch_size
    ).summary


def dice_per_image(
    pred: ArrayLike, target: ArrayLike, num_classes: int = 2, include_background: bool = False, empty: str = "one"
) -> np.ndarray:
    """Dice of every image and evaluated class.

    Args:
        pred: predictions, any layout of the module doc.
        target: ground truth, same layout rules.
        num_classes: number of label values including background.
        include_background: score class 0 too.
        empty: ``"one"`` (a class absent from both masks scores 1) or ``"nan"`` (it is excluded, NaN).

    Returns:
        float64 array ``(N, C')`` with ``C' = num_classes - 1`` (or ``num_classes`` with background).

    Raises:
        ValueError: bad shapes or label values, or an unknown ``empty`` policy.
    """
    _check_common(num_classes, empty)
    preds, targets = _prepare(pred, target, num_classes)
    return _per_image_overlap(preds, targets, num_classes, include_background, empty)[0]


def mean_dice_per_image(
    pred: ArrayLike, target: ArrayLike, num_classes: int = 2, include_background: bool = False, empty: str = "one"
) -> float:
    """Mean over images of the per-image Dice (itself the mean over evaluated classes); the usseg default "dice".

    Args: as :func:`dice_per_image`.

    Returns:
        The mean, NaN when every value is excluded.
    """
    return nan_mean([nan_mean(row) for row in dice_per_image(pred, target, num_classes, include_background, empty)])


def pooled_dice(
    pred: ArrayLike, target: ArrayLike, num_classes: int = 2, include_background: bool = False, empty: str = "one"
) -> float:
    """Dice from TP / FP / FN pooled over the whole set, per class, averaged over classes (Meta-USCL UDIAT-B).

    Args: as :func:`dice_per_image`; ``empty`` applies to a class absent from every image.

    Returns:
        The pooled Dice.
    """
    _check_common(num_classes, empty)
    preds, targets = _prepare(pred, target, num_classes)
    counts = _per_image_overlap(preds, targets, num_classes, include_background, empty)[2]
    return nan_mean(_dice_from_counts(counts.sum(axis=0), empty))


def per_batch_dice(
    pred: ArrayLike,
    target: ArrayLike,
    num_classes: int = 2,
    include_background: bool = False,
    empty: str = "one",
    batch_size: int = 8,
) -> float:
    """Hermes' Dice: pooled within consecutive batches of ``batch_size`` images, averaged over batches.

    Images are taken in the given order, as an unshuffled evaluation loader yields them. A short last batch weighs as
    much as a full one, as in the released Hermes evaluation loop.

    Args:
        pred: predictions, any layout of the module doc.
        target: ground truth.
        num_classes: number of label values including background.
        include_background: score class 0 too.
        empty: policy for a class absent from a whole batch.
        batch_size: images per evaluation batch (Hermes: 8).

    Returns:
        The mean over batches of the batch Dice (mean over classes).

    Raises:
        ValueError: bad inputs or a ``batch_size`` below 1.
    """
    _check_common(num_classes, empty, batch_size)
    preds, targets = _prepare(pred, target, num_classes)
    counts = _per_image_overlap(preds, targets, num_classes, include_background, empty)[2]
    return _per_batch(counts, batch_size, empty)[0]


def pooled_iou(
    pred: ArrayLike, target: ArrayLike, num_classes: int = 2, include_background: bool = False, empty: str = "one"
) -> float:
    """IoU from TP / FP / FN pooled over the whole set, per class, averaged over classes (Hermes ``evaluate_iou``).

    Args: as :func:`dice_per_image`; ``empty`` applies to a class absent from every image.

    Returns:
        The pooled IoU ``TP / (TP + FP + FN)`` (mean over evaluated classes).
    """
    _check_common(num_classes, empty)
    preds, targets = _prepare(pred, target, num_classes)
    counts = _per_image_overlap(preds, targets, num_classes, include_background, empty)[2]
    return nan_mean(_iou_from_counts(counts.sum(axis=0), empty))


def iou_per_image(
    pred: ArrayLike, target: ArrayLike, num_classes: int = 2, include_background: bool = False, empty: str = "one"
) -> np.ndarray:
    """IoU (Jaccard index) of every image and evaluated class, with the same ``empty`` policy as Dice.

    Args: as :func:`dice_per_image`.

    Returns:
        float64 array ``(N, C')``.
    """
    _check_common(num_classes, empty)
    preds, targets = _prepare(pred, target, num_classes)
    return _per_image_overlap(preds, targets, num_classes, include_background, empty)[1]


def hd95_per_image(
    pred: ArrayLike,
    target: ArrayLike,
    num_classes: int = 2,
    include_background: bool = False,
    spacing: SpacingLike = None,
) -> np.ndarray:
    """Symmetric 95th-percentile Hausdorff distance between the mask boundaries of every image and class.

    Args:
        pred: predictions, any layout of the module doc.
        target: ground truth.
        num_classes: number of label values including background.
        include_background: score class 0 too.
        spacing: ``None`` for pixels; a number, a ``(row, column)`` pair, or an ``(N, 2)`` array of per-image pairs
            for physical units (mm when the spacing is in mm).

    Returns:
        float64 array ``(N, C')``; NaN where the prediction or the target of the class is empty.

    Raises:
        ValueError: bad inputs or spacing.
    """
    _check_common(num_classes)
    preds, targets = _prepare(pred, target, num_classes)
    spacings = _prepare_spacing(spacing, len(preds))
    return _per_image_hd95(preds, targets, _class_indices(num_classes, include_background), spacings)


def mean_hd95(
    pred: ArrayLike,
    target: ArrayLike,
    num_classes: int = 2,
    include_background: bool = False,
    spacing: SpacingLike = None,
) -> tuple[float, int]:
    """Mean HD95 over the (image, class) pairs where it is defined, and how many pairs were skipped.

    Args: as :func:`hd95_per_image`.

    Returns:
        ``(mean, n_skipped)``; the mean is NaN when every pair is skipped.
    """
    values = hd95_per_image(pred, target, num_classes, include_background, spacing)
    return nan_mean(values), int(np.isnan(values).sum())
