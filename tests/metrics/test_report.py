# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""Report files: strict JSON, overlay pixels by hand, montage and curve PNGs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from usseg.metrics.report import (
    GROUND_TRUTH_COLOR,
    PREDICTION_COLOR,
    overlay_rgb,
    plot_training_curves,
    save_overlay_montage,
    write_metrics_json,
)


def _strict_json(path):
    def reject(constant):
        raise AssertionError(f"non-standard JSON constant {constant}")

    return json.loads(path.read_text(), parse_constant=reject)


def test_write_metrics_json_is_strict_json_with_null_for_nan(tmp_path):
    metrics = {"dice": np.float32(0.5), "hd95_mean": math.nan, "n": np.int64(3), "per_class": torch.tensor([1.0, 2.0])}
    path = write_metrics_json(tmp_path / "sub" / "metrics.json", metrics, extra={"run": "a", "worst": [math.inf, 1]})
    assert _strict_json(path) == {
        "metrics": {"dice": 0.5, "hd95_mean": None, "n": 3, "per_class": [1.0, 2.0]},
        "run": "a",
        "worst": [None, 1],
    }
    assert [p.name for p in path.parent.iterdir()] == ["metrics.json"]  # no temporary file left behind


def test_write_metrics_json_rejects_a_metrics_entry_in_extra(tmp_path):
    with pytest.raises(ValueError, match="'metrics'"):
        write_metrics_json(tmp_path / "m.json", {"a": 1.0}, extra={"metrics": {}})


def test_write_metrics_json_rejects_objects_without_json_form(tmp_path):
    with pytest.raises(TypeError, match=r"metrics\['bad'\]"):
        write_metrics_json(tmp_path / "m.json", {"bad": object()})


def test_overlay_pixels_by_hand():
    image = np.linspace(-1.0, 1.0, 36).reshape(6, 6)  # min -> 0, max -> 255 after min-max scaling
    mask = np.zeros((6, 6), dtype=np.int64)
    mask[1:5, 1:5] = 1
    out = overlay_rgb(image, mask, color=(200, 100, 0), alpha=0.5)
    assert out.dtype == np.uint8 and out.shape == (6, 6, 3)
    np.testing.assert_array_equal(out[0, 0], [0, 0, 0])
    np.testing.assert_array_equal(out[5, 5], [255, 255, 255])
    np.testing.assert_array_equal(out[1, 1], [200, 100, 0])  # outline: opaque colour
    gray = np.rint((image[2, 2] + 1.0) / 2.0 * 255.0)
    np.testing.assert_array_equal(out[2, 2], np.rint(0.5 * gray + 0.5 * np.array([200, 100, 0])))  # fill


def test_overlay_without_fill_or_outline_is_the_plain_image():
    image = np.arange(16.0).reshape(1, 4, 4)
    mask = np.ones((4, 4), dtype=np.int64)
    out = overlay_rgb(image, mask, alpha=0.0, contour=False)
    np.testing.assert_array_equal(out[..., 0], np.rint(np.arange(16.0).reshape(4, 4) / 15 * 255))


def test_uint8_images_keep_their_contrast():
    image = np.full((4, 4), 100, dtype=np.uint8)
    image[0, 0] = 120
    out = overlay_rgb(image, np.zeros((4, 4), dtype=np.int64))
    np.testing.assert_array_equal(out[..., 1], image)  # no min-max stretch of an already displayable image


def test_overlay_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"\(4, 5\).*\(4, 4\)"):
        overlay_rgb(np.zeros((4, 4)), np.zeros((4, 5)))


def test_montage_is_a_png_with_both_colours(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.normal(size=(5, 1, 20, 30)) * 100.0
    labels = np.zeros((5, 20, 30), dtype=np.int64)
    labels[:, 4:10, 4:12] = 1
    preds = np.roll(labels, 6, axis=2)
    path = save_overlay_montage(images, labels, preds, tmp_path / "montage.png", max_items=4, titles=list("abcd"))
    with Image.open(path) as img:
        assert img.format == "PNG"
        pixels = np.asarray(img.convert("RGB")).reshape(-1, 3)
    assert (pixels == GROUND_TRUTH_COLOR).all(axis=1).any()
    assert (pixels == PREDICTION_COLOR).all(axis=1).any()


def test_montage_rejects_mismatched_counts(tmp_path):
    with pytest.raises(ValueError, match="as many items"):
        save_overlay_montage(np.zeros((2, 4, 4)), np.zeros((2, 4, 4)), np.zeros((1, 4, 4)), tmp_path / "m.png")


def _history() -> dict:
    n = 12
    return {
        "iteration": {
            "iteration": list(range(1, n + 1)),
            "epoch": [1 + i // 4 for i in range(n)],
            "values": {"loss": [1.0 / (i + 1) for i in range(n)], "accept_rate": [None] * 2 + [0.5] * (n - 2)},
        },
        "epoch": {"epoch": [1, 2, 3], "iteration": [4, 8, 12], "wall_time_s": [0.1] * 3, "values": {"loss": [1, 2, 3]}},
        "validation": {
            "epoch": [1, 2, 3],
            "iteration": [4, 8, 12],
            "wall_time_s": [0.1] * 3,
            "values": {"dice": [0.2, None, 0.6], "hd95_mean": [9.0, 7.0, 5.0], "hd95_n_empty": [1, 0, 0]},
        },
    }


@pytest.mark.parametrize("history", [_history(), {}], ids=["full", "empty"])
def test_training_curves_png(tmp_path, history):
    path = plot_training_curves(history, tmp_path / "curves.png")
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size[0] > 100


def test_training_curves_need_a_mapping(tmp_path):
    with pytest.raises(TypeError, match="mapping"):
        plot_training_curves([1, 2], tmp_path / "c.png")
