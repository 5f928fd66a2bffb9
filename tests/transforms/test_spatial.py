# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""Tests of the scan-cone transforms on synthetic frames: a speckle sector plus burned-in text outside it."""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from monai.transforms import Compose, Invertd
from scipy import ndimage

from usseg.transforms.spatial import (
    SCAN_CONE_BOX_KEY,
    CropToScanCone,
    CropToScanConeD,
    CropToScanConed,
    CropToScanConeDict,
    ScanConeMask,
    ScanConeMaskD,
    ScanConeMaskd,
    ScanConeMaskDict,
    estimate_scan_cone,
)

HEIGHT, WIDTH = 128, 160


def sector_cone(apex: tuple[float, float], half_angle: float, radii: tuple[float, float]) -> np.ndarray:
    """True cone of a sector probe: the pixels between two radii and within +-half_angle of the downward axis."""
    rows, cols = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float64)
    radius = np.hypot(rows - apex[0], cols - apex[1])
    angle = np.arctan2(cols - apex[1], rows - apex[0])
    return (np.abs(angle) <= half_angle) & (radius >= radii[0]) & (radius <= radii[1])


def linear_cone() -> np.ndarray:
    cone = np.zeros((HEIGHT, WIDTH), dtype=bool)
    cone[0:118, 30:130] = True  # a linear probe image starts at the top edge
    return cone


CONES: dict[str, Callable[[], np.ndarray]] = {
    "curvilinear": lambda: sector_cone(apex=(-10.0, 80.0), half_angle=0.55, radii=(20.0, 120.0)),
    "phased": lambda: sector_cone(apex=(0.0, 80.0), half_angle=0.6, radii=(0.0, 115.0)),
    "linear": linear_cone,
}


def speckle_frame(cone: np.ndarray, seed: int = 0, level: float = 0.6) -> np.ndarray:
    """Log-compressed (60 dB) Rayleigh speckle inside ``cone``, black outside; values in [0, 1]."""
    rng = np.random.default_rng(seed)
    envelope = np.hypot(rng.standard_normal(cone.shape), rng.standard_normal(cone.shape)) / np.sqrt(np.pi / 2)
    display = np.clip(level + 20.0 * np.log10(np.maximum(envelope, 1e-12)) / 60.0, 0.0, 1.0)
    return np.where(cone, display, 0.0)


def burned_in_text(cone: np.ndarray) -> np.ndarray:
    """White text blocks in three corners and a ruler of 1-px ticks 3 px from the cone's right edge."""
    text = np.zeros_like(cone)
    text[3:12, 3:28] = True
    text[3:9, 135:157] = True
    text[115:125, 3:25] = True
    for row in range(30, 90, 6):
        edge = np.nonzero(cone[row])[0].max()
        text[row, edge + 3 : edge + 8] = True
    return text & ~cone


def frame_with_text(cone_name: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A ``(1, H, W)`` float32 frame, its true cone and its text mask."""
    cone = CONES[cone_name]()
    text = burned_in_text(cone)
    assert not ndimage.binary_dilation(cone, iterations=2)[text].any()  # the text really is outside
    frame = np.where(text, 1.0, speckle_frame(cone, seed))[None].astype(np.float32)
    return frame, cone, text


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def bounding_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.nonzero(mask)
    return int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1


INPUT_FORMS: dict[str, Callable[[np.ndarray], object]] = {
    "float32_numpy": lambda x: x,
    "uint8_numpy": lambda x: np.round(x * 255).astype(np.uint8),
    "float64_torch": lambda x: torch.as_tensor(x, dtype=torch.float64),
    "rgb_metatensor": lambda x: MetaTensor(np.repeat(x, 3, axis=0)),
}


# ----------------------------------------------------------------------------------------------------------------
# Estimation
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("to_input", INPUT_FORMS.values(), ids=INPUT_FORMS.keys())
@pytest.mark.parametrize("cone_name", CONES.keys())
def test_estimated_cone_matches_the_true_cone_without_the_text(cone_name, to_input):
    frame, cone, text = frame_with_text(cone_name)
    estimate = estimate_scan_cone(to_input(frame))
    assert estimate.shape == cone.shape and estimate.dtype == bool
    assert iou(estimate, cone) > 0.95
    assert not (estimate & text).any()


def test_convex_hull_restores_a_dark_region_on_the_cone_border():
    cone = CONES["curvilinear"]()
    frame = speckle_frame(cone)
    rows, cols = np.mgrid[0:HEIGHT, 0:WIDTH]
    cyst = np.hypot(rows - 112, cols - 80) < 14  # anechoic, cut by the bottom arc of the cone
    frame = np.where(cyst, 0.0, frame)[None]
    with_hull = estimate_scan_cone(frame, convex_hull=True)
    without_hull = estimate_scan_cone(frame, convex_hull=False)
    lost = cyst & cone
    assert not without_hull[lost].all()  # without the hull the border cyst is cut out
    assert with_hull[lost].mean() > 0.95
    assert iou(with_hull, cone) > iou(without_hull, cone)


def test_holes_inside_the_cone_are_filled():
    cone = CONES["phased"]()
    frame = speckle_frame(cone)
    rows, cols = np.mgrid[0:HEIGHT, 0:WIDTH]
    frame[np.hypot(rows - 60, cols - 80) < 10] = 0.0  # an anechoic cyst in the middle
    estimate = estimate_scan_cone(frame[None], convex_hull=False)
    assert iou(estimate, cone) > 0.98


@pytest.mark.parametrize(
    "frame",
    [
        np.zeros((1, 40, 40), dtype=np.float32),
        np.full((3, 40, 40), 0.7, dtype=np.float32),
        np.pad(np.ones((1, 3, 3), dtype=np.float32), ((0, 0), (0, 37), (0, 37))),
    ],
    ids=["black", "constant", "text_only"],
)
def test_no_cone_is_found_in_a_frame_without_one(frame):
    assert not estimate_scan_cone(frame).any()


# ----------------------------------------------------------------------------------------------------------------
# ScanConeMask
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cone_name", CONES.keys())
def test_mask_apply_removes_the_text_and_keeps_the_cone(cone_name):
    frame, cone, text = frame_with_text(cone_name)
    out = ScanConeMask()(frame)
    assert isinstance(out, MetaTensor) and out.dtype == torch.float32 and out.shape == frame.shape
    values = np.asarray(out)[0]
    np.testing.assert_array_equal(values[text], 0.0)
    estimate = estimate_scan_cone(frame)
    np.testing.assert_array_equal(values[estimate], frame[0][estimate])  # inside: untouched


def test_mask_mode_returns_the_cone_as_one_channel_float32():
    frame, cone, _ = frame_with_text("curvilinear")
    rgb = MetaTensor(np.repeat(frame, 3, axis=0), meta={"spacing": (0.1, 0.1)})
    mask = ScanConeMask(mode="mask")(rgb)
    assert isinstance(mask, MetaTensor) and mask.shape == (1, HEIGHT, WIDTH) and mask.dtype == torch.float32
    assert set(np.unique(np.asarray(mask))) <= {0.0, 1.0}
    np.testing.assert_array_equal(np.asarray(mask)[0].astype(bool), estimate_scan_cone(frame))
    assert mask.meta["spacing"] == (0.1, 0.1)


def test_mask_keeps_metatensor_meta_and_affine():
    frame, _, _ = frame_with_text("phased")
    affine = torch.diag(torch.tensor([0.2, 0.3, 1.0, 1.0], dtype=torch.float64))
    out = ScanConeMask()(MetaTensor(frame, affine=affine, meta={"filename_or_obj": "frame.png"}))
    assert out.meta["filename_or_obj"] == "frame.png"
    torch.testing.assert_close(out.affine, affine)


def test_mask_leaves_a_frame_without_cone_untouched():
    frame = np.pad(np.ones((1, 3, 3), dtype=np.float32), ((0, 0), (0, 37), (0, 37))) * 0.5
    np.testing.assert_array_equal(np.asarray(ScanConeMask()(frame)), frame)
    np.testing.assert_array_equal(np.asarray(ScanConeMask(mode="mask")(frame)), np.ones_like(frame))


# ----------------------------------------------------------------------------------------------------------------
# CropToScanCone
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("margin", [0, 3, 500], ids=["no_margin", "margin_3", "margin_past_the_border"])
@pytest.mark.parametrize("cone_name", CONES.keys())
def test_crop_box_is_the_cone_bounding_box_plus_margin(cone_name, margin):
    frame, cone, _ = frame_with_text(cone_name)
    true_box = bounding_box(cone)
    expected = (
        max(true_box[0] - margin, 0),
        max(true_box[1] - margin, 0),
        min(true_box[2] + margin, HEIGHT),
        min(true_box[3] + margin, WIDTH),
    )
    box = CropToScanCone(margin=margin).compute_box(frame)
    assert np.abs(np.subtract(box, expected)).max() <= 2  # the estimate may differ from the truth by a pixel or two
    out = CropToScanCone(margin=margin)(frame)
    assert out.shape == (1, box[2] - box[0], box[3] - box[1])
    np.testing.assert_array_equal(np.asarray(out)[0], frame[0, box[0] : box[2], box[1] : box[3]])


def test_crop_records_the_box_translates_the_affine_and_inverts():
    frame, _, _ = frame_with_text("curvilinear")
    affine = torch.diag(torch.tensor([0.2, 0.3, 1.0, 1.0], dtype=torch.float64))
    img = MetaTensor(frame, affine=affine, meta={"spacing": (0.2, 0.3)})
    crop = CropToScanCone()
    out = crop(img)
    row_start, col_start, row_end, col_end = out.meta[SCAN_CONE_BOX_KEY]
    assert out.shape == (1, row_end - row_start, col_end - col_start)
    assert out.meta["spacing"] == (0.2, 0.3)
    # the crop moves the origin of the world coordinates to the box corner
    torch.testing.assert_close(out.affine[:2, 3], torch.tensor([0.2 * row_start, 0.3 * col_start], dtype=torch.float64))
    restored = crop.inverse(out)
    assert restored.shape == frame.shape and not restored.applied_operations
    inside = np.zeros(frame.shape, dtype=bool)
    inside[:, row_start:row_end, col_start:col_end] = True
    np.testing.assert_array_equal(np.asarray(restored)[inside], frame[inside])
    np.testing.assert_array_equal(np.asarray(restored)[~inside], 0.0)
    torch.testing.assert_close(restored.affine, affine)


def test_crop_of_a_frame_without_cone_keeps_the_whole_frame():
    frame = np.zeros((2, 30, 20), dtype=np.uint8)
    out = CropToScanCone(margin=2)(frame)
    assert out.shape == (2, 30, 20) and out.dtype == torch.float32
    assert out.meta[SCAN_CONE_BOX_KEY] == [0, 0, 30, 20]


def test_crop_inverse_refuses_a_different_last_transform():
    frame, _, _ = frame_with_text("linear")
    with pytest.raises(TypeError, match="MetaTensor"):
        CropToScanCone().inverse(torch.as_tensor(frame))
    with pytest.raises(RuntimeError, match="no traced transform"):
        CropToScanCone().inverse(MetaTensor(frame))


# ----------------------------------------------------------------------------------------------------------------
# Argument and input checks
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, quoted",
    [
        (lambda: ScanConeMask(mode="crop"), "'crop'"),
        (lambda: ScanConeMask(threshold=1.5), "1.5"),
        (lambda: ScanConeMask(morphology_radius=-1), "-1"),
        (lambda: ScanConeMask(min_area_fraction=2.0), "2.0"),
        (lambda: CropToScanCone(margin=-3), "-3"),
        (lambda: CropToScanCone(margin=1.5), "1.5"),
        (lambda: CropToScanConed(keys="image", threshold=-0.1), "-0.1"),
        (lambda: ScanConeMaskd(keys="image", morphology_radius=2.5), "2.5"),
    ],
    ids=[
        "mask_mode",
        "mask_threshold",
        "mask_radius",
        "mask_min_area",
        "crop_negative_margin",
        "crop_fractional_margin",
        "cropd_threshold",
        "maskd_radius",
    ],
)
def test_invalid_arguments_raise_value_error_quoting_the_value(make, quoted):
    with pytest.raises(ValueError) as info:
        make()
    assert quoted in str(info.value)


def test_convex_hull_must_be_a_bool():
    with pytest.raises(TypeError, match="convex_hull"):
        ScanConeMask(convex_hull="yes")


@pytest.mark.parametrize("shape", [(40, 40), (1, 1, 40, 40)], ids=["no_channel", "3d"])
@pytest.mark.parametrize(
    "transform",
    [ScanConeMask(), ScanConeMask(mode="mask"), CropToScanCone(), estimate_scan_cone],
    ids=["mask_apply", "mask_mask", "crop", "estimate"],
)
def test_non_2d_channel_first_input_raises_with_shape(transform, shape):
    with pytest.raises(ValueError, match=re.escape(str(shape))):
        transform(np.zeros(shape, dtype=np.float32))


# ----------------------------------------------------------------------------------------------------------------
# Dictionary versions
# ----------------------------------------------------------------------------------------------------------------


def test_maskd_estimates_on_the_source_and_masks_every_key():
    frame, cone, text = frame_with_text("curvilinear")
    second = np.full_like(frame, 0.5)  # no cone of its own: must receive the source's mask
    data = {"image": frame, "second": second}
    out = ScanConeMaskd(keys=["image", "second"], source_key="image", mask_key="cone")(data)
    estimate = estimate_scan_cone(frame)
    np.testing.assert_array_equal(np.asarray(out["image"])[0][text], 0.0)
    np.testing.assert_array_equal(np.asarray(out["second"])[0], np.where(estimate, 0.5, 0.0))
    assert out["cone"].shape == (1, HEIGHT, WIDTH) and out["cone"].dtype == torch.float32
    np.testing.assert_array_equal(np.asarray(out["cone"])[0].astype(bool), estimate)


def test_maskd_defaults_to_the_first_key_and_writes_no_mask():
    frame, _, text = frame_with_text("phased")
    out = ScanConeMaskd(keys="image")({"image": MetaTensor(frame, meta={"spacing": (0.1, 0.1)})})
    assert set(out) == {"image"}
    np.testing.assert_array_equal(np.asarray(out["image"])[0][text], 0.0)
    assert out["image"].meta["spacing"] == (0.1, 0.1)


@pytest.mark.parametrize(
    "make",
    [lambda **kw: ScanConeMaskd(**kw), lambda **kw: CropToScanConed(**kw)],
    ids=["maskd", "cropd"],
)
def test_dictionary_missing_keys_raise_unless_allowed(make):
    frame, _, _ = frame_with_text("linear")
    with pytest.raises(KeyError, match="label"):
        make(keys=["image", "label"])({"image": frame})
    with pytest.raises(KeyError, match="other"):
        make(keys=["image"], source_key="other")({"image": frame})
    out = make(keys=["image", "label"], allow_missing_keys=True)({"image": frame})
    assert set(out) == {"image"}


def test_cropd_crops_image_and_label_with_one_box_and_inverts_with_invertd():
    frame, cone, _ = frame_with_text("curvilinear")
    label = np.zeros_like(frame, dtype=np.uint8)
    label[0, 50:70, 60:90] = 1
    affine = torch.diag(torch.tensor([0.2, 0.3, 1.0, 1.0], dtype=torch.float64))
    data = {"image": MetaTensor(frame, affine=affine), "label": MetaTensor(label, affine=affine)}
    preprocessing = Compose([CropToScanConed(keys=["image", "label"], source_key="image", margin=1)])
    out = preprocessing(data)
    box = out["image"].meta[SCAN_CONE_BOX_KEY]
    assert out["label"].meta[SCAN_CONE_BOX_KEY] == box
    assert out["image"].shape == out["label"].shape == (1, box[2] - box[0], box[3] - box[1])
    assert out["label"].dtype == torch.float32
    np.testing.assert_array_equal(np.asarray(out["label"])[0], label[0, box[0] : box[2], box[1] : box[3]])
    # a prediction made on the cropped image goes back to the original frame
    out["pred"] = out["label"].clone()
    inverted = Invertd(keys="pred", transform=preprocessing, orig_keys="label", nearest_interp=True)(out)
    assert inverted["pred"].shape == label.shape
    np.testing.assert_array_equal(np.asarray(inverted["pred"]), label)
    torch.testing.assert_close(inverted["pred"].affine, affine)


def test_cropd_rejects_keys_of_another_shape():
    frame, _, _ = frame_with_text("linear")
    with pytest.raises(ValueError, match=r"\(1, 64, 64\)"):
        CropToScanConed(keys=["image", "label"])({"image": frame, "label": np.zeros((1, 64, 64))})


def test_cropd_inverse_pads_every_key_back():
    frame, _, _ = frame_with_text("phased")
    transform = CropToScanConed(keys=["image", "copy"])
    out = transform({"image": frame, "copy": frame.copy()})
    restored = transform.inverse(out)
    for key in ("image", "copy"):
        assert restored[key].shape == frame.shape


def test_yaml_style_config_and_aliases():
    parser = ConfigParser(
        {"crop": {"_target_": "usseg.transforms.spatial.CropToScanConed", "keys": ["image", "label"], "margin": 4}}
    )
    assert parser.get_parsed_content("crop").cropper.margin == 4
    assert ScanConeMaskD is ScanConeMaskDict is ScanConeMaskd
    assert CropToScanConeD is CropToScanConeDict is CropToScanConed
