# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""Property tests over every intensity and scan-cone transform: any 2D channel-first input gives a finite
float32 output of the documented shape, and any other layout a ``ValueError`` naming the shape."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from monai.data import MetaTensor

from usseg.transforms.intensity import (
    RandAcousticShadow,
    RandAcousticShadowd,
    RandDepthAttenuation,
    RandDepthAttenuationd,
    RandSpeckleNoise,
    RandSpeckleNoised,
)
from usseg.transforms.spatial import CropToScanCone, CropToScanConed, ScanConeMask, ScanConeMaskd

PROPERTY_SETTINGS = settings(max_examples=25, deadline=None)

VALUE_RANGES = [(0.0, 1.0), (0.0, 255.0), (-1000.0, 1000.0)]


@dataclass
class Sample:
    """One drawn input: the image in its array type, its numpy values, the declared range and a seed."""

    image: Any
    values: np.ndarray
    value_range: tuple[float, float]
    seed: int
    label: np.ndarray


@st.composite
def channel_first_images(draw: st.DrawFn) -> Sample:
    channels = draw(st.integers(1, 3))
    height, width = draw(st.integers(1, 64)), draw(st.integers(1, 64))
    dtype = draw(st.sampled_from(["uint8", "float32", "float64"]))
    data_range = (0.0, 255.0) if dtype == "uint8" else draw(st.sampled_from(VALUE_RANGES))
    # the declared range usually matches the data; a mismatch (values outside it) must stay finite too
    value_range = data_range if draw(st.booleans()) else draw(st.sampled_from(VALUE_RANGES))
    pattern = draw(st.sampled_from(["uniform", "constant", "sector", "black"]))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    low, high = data_range
    if pattern == "uniform":
        values = rng.uniform(low, high, size=(channels, height, width))
    elif pattern == "constant":
        values = np.full((channels, height, width), rng.uniform(low, high))
    elif pattern == "black":
        values = np.full((channels, height, width), low)
    else:  # a bright disk of speckle on a dark background, with a white corner block
        rows, cols = np.mgrid[0:height, 0:width]
        inside = np.hypot(rows - height / 2, cols - width / 2) < max(height, width) / 2.5
        values = np.where(inside, rng.uniform(low + 0.3 * (high - low), high, size=(channels, height, width)), low)
        values[:, : max(height // 8, 1), : max(width // 8, 1)] = high
    values = values.astype(dtype)
    to_type = draw(st.sampled_from(["numpy", "torch", "metatensor"]))
    image = {"numpy": values, "torch": torch.as_tensor(values), "metatensor": MetaTensor(values)}[to_type]
    label = (rng.uniform(size=(1, height, width)) < draw(st.sampled_from([0.0, 0.05, 1.0]))).astype(np.uint8)
    return Sample(image=image, values=values, value_range=value_range, seed=seed, label=label)


# Each factory returns a callable image -> output, seeded from the sample.
ARRAY_CASES: dict[str, Callable[[Sample], Callable[[Any], Any]]] = {
    "speckle_rayleigh": lambda s: RandSpeckleNoise(prob=1.0, grain_sigma=(0.0, 3.0), value_range=s.value_range),
    "speckle_gamma": lambda s: RandSpeckleNoise(
        prob=1.0, distribution="gamma", looks=(0.5, 20.0), grain_sigma=(0.0, 3.0), value_range=s.value_range
    ),
    "depth_attenuation_rows": lambda s: RandDepthAttenuation(
        prob=1.0, gain_db=(-10.0, 10.0), value_range=s.value_range
    ),
    "depth_attenuation_columns": lambda s: RandDepthAttenuation(prob=1.0, depth_axis=2, value_range=s.value_range),
    "shadow_linear": lambda s: RandAcousticShadow(prob=1.0, value_range=s.value_range),
    "shadow_sector": lambda s: RandAcousticShadow(prob=1.0, apex=(-5.0, 3.0), value_range=s.value_range),
    "shadow_lesion": lambda s: (
        lambda img: RandAcousticShadow(prob=1.0, origin="lesion", edge_softness=0.0)(img, s.label)
    ),
    "scan_cone_apply": lambda s: ScanConeMask(),
    "scan_cone_no_hull": lambda s: ScanConeMask(convex_hull=False, morphology_radius=0),
}


def seeded(transform: Any, seed: int) -> Any:
    return transform.set_random_state(seed) if hasattr(transform, "set_random_state") else transform


def check_image_output(out: Any, shape: tuple[int, ...]) -> None:
    assert isinstance(out, torch.Tensor)
    assert tuple(out.shape) == shape
    assert out.dtype == torch.float32
    assert bool(torch.isfinite(out).all())


@pytest.mark.parametrize("make", ARRAY_CASES.values(), ids=ARRAY_CASES.keys())
@PROPERTY_SETTINGS
@given(sample=channel_first_images())
def test_array_transforms_keep_the_shape_as_finite_float32(make, sample):
    out = seeded(make(sample), sample.seed)(sample.image)
    check_image_output(out, sample.values.shape)


@PROPERTY_SETTINGS
@given(sample=channel_first_images())
def test_intensity_outputs_stay_in_the_declared_range(sample):
    low, high = sample.value_range
    for transform in (
        RandSpeckleNoise(prob=1.0, value_range=sample.value_range),
        RandDepthAttenuation(prob=1.0, value_range=sample.value_range),
        RandAcousticShadow(prob=1.0, value_range=sample.value_range),
    ):
        out = transform.set_random_state(sample.seed)(sample.image)
        assert float(out.min()) >= low and float(out.max()) <= high


@PROPERTY_SETTINGS
@given(sample=channel_first_images())
def test_scan_cone_mask_mode_is_a_binary_single_channel_map(sample):
    mask = ScanConeMask(mode="mask")(sample.image)
    check_image_output(mask, (1, *sample.values.shape[1:]))
    assert set(torch.unique(mask).tolist()) <= {0.0, 1.0}


@PROPERTY_SETTINGS
@given(sample=channel_first_images(), margin=st.integers(0, 5))
def test_crop_to_scan_cone_gives_a_non_empty_sub_image(sample, margin):
    channels, height, width = sample.values.shape
    out = CropToScanCone(margin=margin)(sample.image)
    check_image_output(out, tuple(out.shape))
    assert out.shape[0] == channels and 1 <= out.shape[1] <= height and 1 <= out.shape[2] <= width
    row_start, col_start, row_end, col_end = out.meta["scan_cone_box"]
    expected = torch.as_tensor(sample.values[:, row_start:row_end, col_start:col_end], dtype=torch.float32)
    assert torch.equal(out.as_tensor(), expected)


DICT_CASES: dict[str, Callable[[Sample], Any]] = {
    "speckle": lambda s: RandSpeckleNoised(keys=["image", "copy"], prob=1.0, value_range=s.value_range),
    "depth_attenuation": lambda s: RandDepthAttenuationd(keys=["image", "copy"], prob=1.0, value_range=s.value_range),
    "shadow": lambda s: RandAcousticShadowd(
        keys=["image", "copy"], label_key="label", origin="lesion", prob=1.0, value_range=s.value_range
    ),
    "scan_cone_mask": lambda s: ScanConeMaskd(keys=["image", "copy"], mask_key="cone"),
}


@pytest.mark.parametrize("make", DICT_CASES.values(), ids=DICT_CASES.keys())
@PROPERTY_SETTINGS
@given(sample=channel_first_images())
def test_dictionary_transforms_keep_shapes_and_share_the_draw(make, sample):
    data = {"image": sample.image, "copy": sample.values.copy(), "label": sample.label}
    out = seeded(make(sample), sample.seed)(data)
    for key in ("image", "copy"):
        check_image_output(out[key], sample.values.shape)
    assert torch.equal(out["image"].as_tensor(), out["copy"].as_tensor())  # same input, one shared draw
    assert out["label"] is sample.label
    if "cone" in out:
        check_image_output(out["cone"], (1, *sample.values.shape[1:]))


@PROPERTY_SETTINGS
@given(sample=channel_first_images())
def test_crop_dictionary_crops_image_and_label_alike(sample):
    out = CropToScanConed(keys=["image", "label"])({"image": sample.image, "label": sample.label})
    assert out["image"].shape[1:] == out["label"].shape[1:]
    assert out["image"].meta["scan_cone_box"] == out["label"].meta["scan_cone_box"]
    check_image_output(out["label"], tuple(out["label"].shape))
    restored = CropToScanConed(keys=["image", "label"]).inverse(out)
    assert restored["label"].shape == sample.label.shape


ALL_TRANSFORMS: dict[str, Callable[[np.ndarray], Any]] = {
    "speckle": lambda x: RandSpeckleNoise(prob=1.0)(x),
    "depth_attenuation": lambda x: RandDepthAttenuation(prob=1.0)(x),
    "shadow": lambda x: RandAcousticShadow(prob=1.0)(x),
    "scan_cone_mask": lambda x: ScanConeMask()(x),
    "crop_to_scan_cone": lambda x: CropToScanCone()(x),
    "speckled": lambda x: RandSpeckleNoised(keys="image", prob=1.0)({"image": x}),
    "depth_attenuationd": lambda x: RandDepthAttenuationd(keys="image", prob=1.0)({"image": x}),
    "shadowd": lambda x: RandAcousticShadowd(keys="image", prob=1.0)({"image": x}),
    "scan_cone_maskd": lambda x: ScanConeMaskd(keys="image")({"image": x}),
    "crop_to_scan_coned": lambda x: CropToScanConed(keys="image")({"image": x}),
}


@pytest.mark.parametrize("apply", ALL_TRANSFORMS.values(), ids=ALL_TRANSFORMS.keys())
@PROPERTY_SETTINGS
@given(
    shape=st.one_of(
        st.lists(st.integers(1, 8), min_size=1, max_size=2), st.lists(st.integers(1, 4), min_size=4, max_size=5)
    )
)
def test_inputs_that_are_not_channel_first_2d_raise_a_value_error_naming_the_shape(apply, shape):
    with pytest.raises(ValueError, match=re.escape(str(tuple(shape)))):
        apply(np.zeros(shape, dtype=np.float32))
