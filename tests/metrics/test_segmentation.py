# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""Segmentation metrics against hand-computed values and an independent brute-force HD95."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from usseg.metrics.segmentation import (
    dice_per_image,
    evaluate_segmentation,
    hd95_per_image,
    iou_per_image,
    mean_dice_per_image,
    mean_hd95,
    per_batch_dice,
    pooled_dice,
    segmentation_metrics,
    to_label_maps,
)


def _three_binary_images() -> tuple[np.ndarray, np.ndarray]:
    """Image 0: pred 16 px, target 8 px inside it; image 1: missed 1-px target; image 2: both empty."""
    pred = np.zeros((3, 8, 8), dtype=np.int64)
    target = np.zeros((3, 8, 8), dtype=np.int64)
    pred[0, :4, :4] = 1
    target[0, :4, :2] = 1
    target[1, 5, 5] = 1
    return pred, target


# image 0: tp 8, fp 8, fn 0 -> Dice 16 / 24, IoU 8 / 16; image 1: tp 0, fn 1 -> 0; image 2: 0 / 0
EMPTY_CASES = {
    "empty_scores_one": ("one", [2 / 3, 0.0, 1.0], [0.5, 0.0, 1.0], (2 / 3 + 0 + 1) / 3),
    "empty_excluded": ("nan", [2 / 3, 0.0, math.nan], [0.5, 0.0, math.nan], (2 / 3 + 0) / 2),
}


@pytest.mark.parametrize(("empty", "dice", "iou", "mean"), EMPTY_CASES.values(), ids=EMPTY_CASES.keys())
def test_per_image_dice_and_iou_follow_the_empty_policy(empty, dice, iou, mean):
    pred, target = _three_binary_images()
    np.testing.assert_allclose(dice_per_image(pred, target, empty=empty)[:, 0], dice, rtol=1e-12)
    np.testing.assert_allclose(iou_per_image(pred, target, empty=empty)[:, 0], iou, rtol=1e-12)
    assert mean_dice_per_image(pred, target, empty=empty) == pytest.approx(mean, rel=1e-12)
    # pooled: tp 8, fp 8, fn 1 over the set -> 16 / 25, whatever the policy (the class is present somewhere)
    assert pooled_dice(pred, target, empty=empty) == pytest.approx(16 / 25, rel=1e-12)


def test_a_prediction_on_an_empty_target_scores_zero_under_both_policies():
    pred = np.zeros((1, 6, 6), dtype=np.int64)
    pred[0, 2, 2] = 1
    target = np.zeros_like(pred)
    for empty in ("one", "nan"):
        assert dice_per_image(pred, target, empty=empty)[0, 0] == 0.0
        assert iou_per_image(pred, target, empty=empty)[0, 0] == 0.0


@pytest.mark.parametrize(("empty", "expected"), [("one", 1.0), ("nan", math.nan)], ids=["one", "nan"])
def test_class_absent_from_the_whole_set_follows_the_policy_when_pooled(empty, expected):
    pred = np.zeros((3, 5, 5), dtype=np.int64)
    target = np.zeros_like(pred)
    np.testing.assert_equal(pooled_dice(pred, target, empty=empty), expected)
    np.testing.assert_equal(per_batch_dice(pred, target, empty=empty, batch_size=2), expected)
    np.testing.assert_equal(mean_dice_per_image(pred, target, empty=empty), expected)


def _ten_images_for_batches() -> tuple[np.ndarray, np.ndarray]:
    """Images 0-7 exact (10-px targets); images 8-9 miss their 10-px targets entirely."""
    target = np.zeros((10, 6, 6), dtype=np.int64)
    target[:, 1, :5] = 1
    target[:, 3, :5] = 1
    pred = target.copy()
    pred[8:] = 0
    return pred, target


BATCH_CASES = {
    # batch 0 = images 0-7 (Dice 1); short batch 1 = images 8-9 (Dice 0) weighs as much: (1 + 0) / 2
    "hermes_8_short_last_batch": (8, 0.5),
    "batches_of_4": (4, (1 + 1 + 0) / 3),
    "one_batch_is_pooled": (10, 160 / 180),
    "batches_of_1_are_per_image": (1, 8 / 10),
}


@pytest.mark.parametrize(("batch_size", "expected"), BATCH_CASES.values(), ids=BATCH_CASES.keys())
def test_per_batch_dice_weighs_every_batch_equally(batch_size, expected):
    pred, target = _ten_images_for_batches()
    assert per_batch_dice(pred, target, batch_size=batch_size) == pytest.approx(expected, rel=1e-12)


def test_the_three_dice_definitions_differ_and_are_named():
    pred, target = _ten_images_for_batches()
    metrics = segmentation_metrics(pred, target)
    assert metrics["dice_mean_per_image"] == pytest.approx(0.8)
    assert metrics["dice_pooled"] == pytest.approx(2 * 80 / (2 * 80 + 20))
    assert metrics["dice_per_batch8"] == pytest.approx(0.5)
    assert metrics["n_images"] == 10
    assert "dice_per_batch4" in segmentation_metrics(pred, target, batch_size=4)


def _multi_class_pair() -> tuple[np.ndarray, np.ndarray]:
    target = np.zeros((2, 4, 4), dtype=np.int64)
    pred = np.zeros_like(target)
    target[0, 0, :] = 1  # class 1: 4 px
    target[0, 1, :] = 2  # class 2: 4 px
    pred[0, 0, :] = 1
    pred[0, 1, :2] = 1  # 2 px of class 2 called class 1
    pred[0, 1, 2:] = 2
    target[1, 3, :2] = 1  # image 1 has no class 2 anywhere
    pred[1, 3, :1] = 1
    return pred, target


def test_multi_class_per_class_and_mean_values():
    pred, target = _multi_class_pair()
    # image 0: class 1 tp 4 fp 2 fn 0 -> 8 / 10; class 2 tp 2 fp 0 fn 2 -> 4 / 6
    # image 1: class 1 tp 1 fp 0 fn 1 -> 2 / 3; class 2 empty in both
    expected_dice = np.array([[0.8, 4 / 6], [2 / 3, math.nan]])
    np.testing.assert_allclose(dice_per_image(pred, target, num_classes=3, empty="nan"), expected_dice, rtol=1e-12)
    metrics = segmentation_metrics(pred, target, num_classes=3, class_names=["bg", "a", "b"], empty="nan")
    assert metrics["dice_mean_per_image"] == pytest.approx(((0.8 + 4 / 6) / 2 + 2 / 3) / 2)
    assert metrics["dice_mean_per_image/a"] == pytest.approx((0.8 + 2 / 3) / 2)
    assert metrics["dice_mean_per_image/b"] == pytest.approx(4 / 6)
    # pooled class 1: tp 5 fp 2 fn 1 -> 10 / 13; class 2: tp 2 fp 0 fn 2 -> 4 / 6
    assert metrics["dice_pooled/a"] == pytest.approx(10 / 13)
    assert metrics["dice_pooled/b"] == pytest.approx(4 / 6)
    assert metrics["dice_pooled"] == pytest.approx((10 / 13 + 4 / 6) / 2)
    assert metrics["hd95_n_empty/b"] == 1 and metrics["hd95_n_empty"] == 1


def test_include_background_scores_class_zero():
    pred, target = _three_binary_images()
    dice = dice_per_image(pred, target, include_background=True)
    # image 0 background: target 56 px, pred 48 px, all pred background is target background -> 96 / 104
    assert dice.shape == (3, 2)
    assert dice[0, 0] == pytest.approx(96 / 104)


def _layouts() -> dict:
    pred, target = _multi_class_pair()

    def one_hot(x):
        return np.moveaxis(np.eye(3, dtype=np.float32)[x], -1, 1)

    return {
        "label_map_numpy": (pred, target),
        "channel_first_torch_float": (torch.as_tensor(pred[:, None]).float(), torch.as_tensor(target[:, None])),
        "one_hot": (one_hot(pred), one_hot(target)),
        "list_of_images": (list(pred), [t[None] for t in target]),
    }


@pytest.mark.parametrize("layout", _layouts().keys())
def test_every_input_layout_gives_the_same_metrics(layout):
    pred, target = _layouts()[layout]
    reference = segmentation_metrics(*_multi_class_pair(), num_classes=3)
    result = segmentation_metrics(pred, target, num_classes=3)
    assert result.keys() == reference.keys()
    for key, value in reference.items():
        np.testing.assert_allclose(result[key], value, rtol=1e-12, err_msg=key)


def test_images_of_different_sizes_are_scored_one_by_one():
    small_p, small_t = np.zeros((4, 4), int), np.zeros((4, 4), int)
    small_p[:2, :2], small_t[:2, :1] = 1, 1  # Dice 2 * 2 / (4 + 2)
    large_p, large_t = np.zeros((6, 9), int), np.zeros((6, 9), int)
    large_p[1:3, 1:5], large_t[1:3, 1:5] = 1, 1  # Dice 1
    evaluation = evaluate_segmentation([small_p, large_p], [small_t, large_t])
    np.testing.assert_allclose(evaluation.dice[:, 0], [4 / 6, 1.0])
    assert evaluation.summary["dice_pooled"] == pytest.approx(2 * 10 / (2 * 10 + 2))


def _squares(shift_rows: int, shift_cols: int, size: int = 10) -> tuple[np.ndarray, np.ndarray]:
    a = np.zeros((1, 40, 40), dtype=np.int64)
    b = np.zeros_like(a)
    a[0, 10 : 10 + size, 10 : 10 + size] = 1
    b[0, 10 + shift_rows : 10 + shift_rows + size, 10 + shift_cols : 10 + shift_cols + size] = 1
    return a, b


# Two equal squares offset by k along one axis: every boundary pixel is within k of the other boundary, and the
# whole leading edge (size pixels, more than 5 % of the boundary) is exactly k away, so HD95 = HD = k * spacing.
HD_CASES = {
    "shift_1_col_pixels": (0, 1, None, 1.0),
    "shift_3_col_pixels": (0, 3, None, 3.0),
    "shift_5_row_pixels": (5, 0, None, 5.0),
    "shift_3_col_spacing": (0, 3, (0.5, 0.2), 0.6),
    "shift_3_row_spacing": (3, 0, (0.5, 0.2), 1.5),
    "identical": (0, 0, None, 0.0),
}


@pytest.mark.parametrize(("rows", "cols", "spacing", "expected"), HD_CASES.values(), ids=HD_CASES.keys())
def test_hd95_of_two_offset_squares(rows, cols, spacing, expected):
    a, b = _squares(rows, cols)
    assert hd95_per_image(a, b, spacing=spacing)[0, 0] == pytest.approx(expected, rel=1e-6)


def _boundary(mask: np.ndarray) -> np.ndarray:
    inner = mask.copy()
    inner[1:-1, 1:-1] &= mask[:-2, 1:-1] & mask[2:, 1:-1] & mask[1:-1, :-2] & mask[1:-1, 2:]
    inner[[0, -1], :] = False
    inner[:, [0, -1]] = False
    return np.argwhere(mask & ~inner).astype(np.float64)


def _brute_force_hd95(a: np.ndarray, b: np.ndarray, spacing: tuple[float, float]) -> float:
    pa, pb = _boundary(a) * spacing, _boundary(b) * spacing
    distances = np.sqrt(((pa[:, None, :] - pb[None, :, :]) ** 2).sum(-1))
    return max(np.percentile(distances.min(axis=1), 95), np.percentile(distances.min(axis=0), 95))


def test_hd95_matches_a_brute_force_reference_on_irregular_shapes():
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:48, :48]
    a = ((yy - 22) ** 2 / 90 + (xx - 24) ** 2 / 40) < 1
    b = ((yy - 26) ** 2 / 60 + (xx - 20) ** 2 / 110) < 1
    a &= rng.random(a.shape) > 0.05  # holes make inner boundaries too
    spacing = (0.3, 0.7)
    expected = _brute_force_hd95(a, b, spacing)
    got = hd95_per_image(a[None].astype(int), b[None].astype(int), spacing=spacing)[0, 0]
    assert got == pytest.approx(expected, rel=1e-5)


def test_hd95_is_nan_for_an_empty_mask_and_the_mean_reports_skips():
    a, b = _squares(0, 2)
    empty = np.zeros_like(a)
    pred = np.concatenate([a, empty, a, empty])
    target = np.concatenate([b, b, empty, empty])
    values = hd95_per_image(pred, target)[:, 0]
    assert values[0] == pytest.approx(2.0) and np.isnan(values[1:]).all()
    assert mean_hd95(pred, target) == (pytest.approx(2.0), 3)
    metrics = segmentation_metrics(pred, target)
    assert metrics["hd95_mean"] == pytest.approx(2.0) and metrics["hd95_n_empty"] == 3


def test_per_image_spacing_array():
    a, b = _squares(0, 2)
    pred, target = np.concatenate([a, a]), np.concatenate([b, b])
    values = hd95_per_image(pred, target, spacing=np.array([[1.0, 1.0], [1.0, 0.5]]))
    np.testing.assert_allclose(values[:, 0], [2.0, 1.0], rtol=1e-6)


BAD_INPUTS = {
    "label_out_of_range": (np.full((1, 4, 4), 2), np.zeros((1, 4, 4), int), {}, r"outside \[0, 1\]"),
    "negative_label": (np.full((1, 4, 4), -1), np.zeros((1, 4, 4), int), {}, "outside"),
    "non_integer": (np.full((1, 4, 4), 0.5), np.zeros((1, 4, 4), int), {}, "integer class labels"),
    "shape_mismatch": (np.zeros((1, 4, 4), int), np.zeros((1, 4, 5), int), {}, r"\(4, 4\).*\(4, 5\)"),
    "count_mismatch": (np.zeros((2, 4, 4), int), np.zeros((1, 4, 4), int), {}, "2 images.*1"),
    "one_hot_channels": (np.zeros((1, 3, 4, 4)), np.zeros((1, 4, 4), int), {}, "num_classes=2 channels"),
    "one_hot_overlap": (np.ones((1, 2, 4, 4)), np.zeros((1, 4, 4), int), {}, "several channels"),
    "bad_policy": (np.zeros((1, 4, 4), int), np.zeros((1, 4, 4), int), {"empty": "zero"}, "'zero'"),
    "bad_batch": (np.zeros((1, 4, 4), int), np.zeros((1, 4, 4), int), {"batch_size": 0}, "batch_size"),
    "bad_spacing": (np.zeros((1, 4, 4), int), np.zeros((1, 4, 4), int), {"spacing": (1.0, -1.0)}, "spacing"),
    "bad_names": (np.zeros((1, 4, 4), int), np.zeros((1, 4, 4), int), {"class_names": ["x"]}, "class_names"),
    "no_image": (np.zeros((0, 4, 4), int), np.zeros((0, 4, 4), int), {}, "no image"),
}


@pytest.mark.parametrize(("pred", "target", "kwargs", "match"), BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_inputs_raise_value_error_naming_the_problem(pred, target, kwargs, match):
    with pytest.raises(ValueError, match=match):
        segmentation_metrics(pred, target, **kwargs)


def test_num_classes_below_two_is_rejected():
    with pytest.raises(ValueError, match="num_classes"):
        to_label_maps(np.zeros((1, 4, 4), int), num_classes=1)
