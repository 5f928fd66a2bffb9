# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""USCL / Meta-USCL view augmentations: crop geometry, colour jitter maths, preset normalisation, seeding."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from usseg.transforms.video.augment import (
    AUGMENT_PRESETS,
    RandColorJitter,
    RandResizedCrop,
    _hsv_to_rgb,
    _rgb_to_hsv,
    contrastive_augmentation,
)


@pytest.mark.parametrize("scale", [(0.7, 1.0), (0.8, 1.0), (0.2, 0.3)], ids=["meta_uscl", "uscl", "small"])
def test_crop_boxes_respect_scale_and_ratio_and_fit_the_image(scale: tuple[float, float]) -> None:
    crop = RandResizedCrop(24, scale=scale, ratio=(0.8, 1.25)).set_random_state(0)
    height, width = 60, 80
    for _ in range(200):
        crop.randomize(height, width)
        top, left, crop_h, crop_w = crop._box
        assert top >= 0 and top + crop_h <= height and left >= 0 and left + crop_w <= width
        area = crop_h * crop_w / (height * width)
        # integer rounding of the sides allows a little slack around the drawn area and ratio
        assert scale[0] * 0.9 <= area <= scale[1] * 1.05
        assert 0.8 * 0.9 <= crop_w / crop_h <= 1.25 * 1.1
    out = crop(torch.rand(3, height, width))
    assert tuple(out.shape) == (3, 24, 24) and out.dtype == torch.float32


def test_crop_of_a_constant_image_is_constant_and_seeding_repeats_the_draw() -> None:
    crop = RandResizedCrop((8, 12))
    assert torch.allclose(crop(torch.full((1, 30, 30), 7.0)), torch.full((1, 8, 12), 7.0))
    image = torch.rand(1, 30, 30)
    first = RandResizedCrop(10, scale=(0.3, 0.5)).set_random_state(4)(image)
    second = RandResizedCrop(10, scale=(0.3, 0.5)).set_random_state(4)(image)
    assert torch.equal(first, second)


def test_jitter_applies_the_drawn_brightness_and_contrast_factors() -> None:
    image = torch.rand(1, 6, 6) * 0.5
    jitter = RandColorJitter(brightness=0.5).set_random_state(1)
    out = jitter(image)
    brightness = jitter._factors[0]
    assert 0.5 <= brightness <= 1.5 and torch.allclose(out, (image * brightness).clamp(0, 1))
    jitter = RandColorJitter(contrast=0.5).set_random_state(2)
    out = jitter(image)
    contrast = jitter._factors[1]
    assert torch.allclose(out, (contrast * image + (1 - contrast) * image.mean()).clamp(0, 1), atol=1e-6)


def test_saturation_and_hue_leave_gray_frames_alone_and_hsv_round_trips() -> None:
    gray = torch.rand(1, 5, 5)
    jitter = RandColorJitter(saturation=0.9, hue=0.4).set_random_state(0)
    assert torch.allclose(jitter(gray), gray)
    rgb = torch.rand(3, 7, 7)
    assert torch.allclose(_hsv_to_rgb(_rgb_to_hsv(rgb)), rgb, atol=1e-5)
    assert not torch.allclose(RandColorJitter(hue=0.5).set_random_state(3)(rgb), rgb)


@pytest.mark.parametrize("preset", sorted(AUGMENT_PRESETS))
def test_preset_normalises_with_its_released_mean_and_std(preset: str) -> None:
    settings = AUGMENT_PRESETS[preset]
    pipeline = contrastive_augmentation(preset, 16, jitter=(0.0, 0.0, 0.0, 0.0)).set_random_state(0)
    value = 100.0
    out = pipeline(torch.full((1, 40, 50), value))
    expected = (value / 255.0 - settings["mean"]) / settings["std"]
    assert tuple(out.shape) == (1, 16, 16) and torch.allclose(torch.as_tensor(out), torch.full((1, 16, 16), expected))


def test_presets_hold_the_released_values() -> None:
    assert AUGMENT_PRESETS["uscl"] == {"scale": (0.8, 1.0), "jitter": (0.8, 0.8, 0.8, 0.2), "mean": 0.5, "std": 0.25}
    assert AUGMENT_PRESETS["meta_uscl"]["jitter"] == (0.64, 0.64, 0.64, 0.16)
    assert math.isclose(AUGMENT_PRESETS["meta_uscl"]["mean"], 0.18)


def test_pipeline_is_reproducible_once_seeded() -> None:
    image = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (1, 40, 40)).astype(np.float32))
    first = contrastive_augmentation("meta_uscl", 16).set_random_state(5)(image)
    second = contrastive_augmentation("meta_uscl", 16).set_random_state(5)(image)
    third = contrastive_augmentation("meta_uscl", 16).set_random_state(6)(image)
    assert torch.equal(torch.as_tensor(first), torch.as_tensor(second))
    assert not torch.equal(torch.as_tensor(first), torch.as_tensor(third))


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: RandResizedCrop(0), "size must be a positive int"),
        (lambda: RandResizedCrop(8, scale=(0.9, 0.5)), "scale must be an increasing pair"),
        (lambda: RandColorJitter(brightness=-1), "brightness must be >= 0, got -1"),
        (lambda: RandColorJitter(hue=0.7), "hue must be in \\[0, 0.5\\], got 0.7"),
        (lambda: contrastive_augmentation("simclr"), "preset must be one of"),
        (lambda: contrastive_augmentation("uscl", speckle_prob=2), "speckle_prob must be in"),
    ],
    ids=["zero_size", "decreasing_scale", "negative_brightness", "hue_too_big", "unknown_preset", "bad_prob"],
)
def test_bad_arguments_raise(build, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build()
