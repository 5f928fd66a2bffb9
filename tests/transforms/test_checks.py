# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""Input checks on files loaded by ``LoadImaged`` with the usseg reader, so error messages name real files."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged
from PIL import Image

from usseg.data.readers import UltrasoundImageReader
from usseg.errors import InputError
from usseg.transforms.checks import CheckFinited, CheckMaskMatchesImaged, source_file


def _png(path: Path, shape: tuple[int, int], value: int = 0) -> str:
    array = np.full(shape, value, dtype=np.uint8)
    array[: shape[0] // 2] = 255 - value  # not constant, so nothing special-cases an empty image
    Image.fromarray(array).save(path)
    return str(path)


def _load(image: str, label: str | None = None) -> dict:
    keys = ["image"] if label is None else ["image", "label"]
    loaders = [LoadImaged("image", reader=UltrasoundImageReader())]
    if label is not None:
        loaders.append(LoadImaged("label", reader=UltrasoundImageReader(mask_mode="binary")))
    data = {"image": image} if label is None else {"image": image, "label": label}
    return Compose([*loaders, EnsureChannelFirstd(keys)])(data)


@pytest.mark.parametrize(
    ("image_shape", "mask_shape"),
    [
        pytest.param((10, 12), (10, 14), id="wider-mask"),
        pytest.param((10, 12), (9, 12), id="shorter-mask"),
        pytest.param((10, 12), (12, 10), id="transposed-mask"),
    ],
)
def test_mask_shape_mismatch_names_the_mask_file_and_both_shapes(
    tmp_path: Path, image_shape: tuple[int, int], mask_shape: tuple[int, int]
) -> None:
    image = _png(tmp_path / "case_01.png", image_shape)
    mask = _png(tmp_path / "case_01_mask.png", mask_shape)
    data = _load(image, mask)
    with pytest.raises(InputError) as info:
        CheckMaskMatchesImaged()(data)
    error = info.value
    assert error.path == mask
    assert str(error).startswith(f"{mask}: ")
    assert str(mask_shape) in error.problem and str(image_shape) in error.problem
    assert image in error.problem


def test_matching_shapes_pass_unchanged(tmp_path: Path) -> None:
    data = _load(_png(tmp_path / "a.png", (8, 6)), _png(tmp_path / "a_mask.png", (8, 6)))
    out = CheckMaskMatchesImaged()(data)
    assert out is not data  # a new dict, as MONAI dictionary transforms return
    assert out.keys() == data.keys()
    assert out["image"] is data["image"] and out["label"] is data["label"]


def test_channel_count_may_differ(tmp_path: Path) -> None:
    # only the spatial shape is compared: an RGB-like (3, H, W) image with a (1, H, W) mask is fine
    data = {"image": torch.zeros(3, 5, 7), "label": torch.zeros(1, 5, 7)}
    assert CheckMaskMatchesImaged()(data)["label"] is data["label"]


def test_custom_keys(tmp_path: Path) -> None:
    data = {"img": MetaTensor(torch.zeros(1, 4, 4)), "seg": MetaTensor(torch.zeros(1, 4, 5))}
    with pytest.raises(InputError, match=r"seg: mask shape \(4, 5\) differs from image shape \(4, 4\) \(img\)"):
        CheckMaskMatchesImaged(image_key="img", label_key="seg")(data)


def test_missing_mask_is_skipped_only_when_allowed(tmp_path: Path) -> None:
    data = _load(_png(tmp_path / "unlabeled.png", (6, 6)))
    assert CheckMaskMatchesImaged(allow_missing_keys=True)(data).keys() == {"image"}
    with pytest.raises(KeyError, match="label"):
        CheckMaskMatchesImaged()(data)


def test_present_mask_is_still_checked_when_missing_keys_are_allowed(tmp_path: Path) -> None:
    data = _load(_png(tmp_path / "b.png", (6, 6)), _png(tmp_path / "b_mask.png", (6, 7)))
    with pytest.raises(InputError):
        CheckMaskMatchesImaged(allow_missing_keys=True)(data)


@pytest.mark.parametrize(
    ("bad_values", "expected_count"),
    [
        pytest.param([math.nan], 1, id="one-nan"),
        pytest.param([math.inf, -math.inf], 2, id="two-inf"),
        pytest.param([math.nan, math.inf, math.nan], 3, id="mixed"),
    ],
)
def test_non_finite_values_name_the_file_and_count(
    tmp_path: Path, bad_values: list[float], expected_count: int
) -> None:
    path = _png(tmp_path / "scan.png", (6, 8))
    data = _load(path)
    image = data["image"].float()
    for index, value in enumerate(bad_values):
        image[0, index, index] = value
    data["image"] = image
    with pytest.raises(InputError) as info:
        CheckFinited("image")(data)
    assert info.value.path == path
    assert f"contains {expected_count} NaN or Inf values" in str(info.value)


def test_finite_float_and_integer_images_pass(tmp_path: Path) -> None:
    data = {"a": torch.rand(1, 4, 4), "b": torch.arange(16, dtype=torch.uint8).reshape(1, 4, 4)}
    out = CheckFinited(["a", "b"])(data)
    assert out["a"] is data["a"] and out["b"] is data["b"]


def test_plain_array_without_metadata_is_named_by_its_key() -> None:
    array = np.zeros((1, 3, 3), dtype=np.float32)
    array[0, 1, 1] = np.nan
    with pytest.raises(InputError, match=r"^strain: contains 1 NaN or Inf values"):
        CheckFinited("strain")({"strain": array})


def test_checks_every_key_and_honours_missing_keys() -> None:
    bad = torch.zeros(1, 2, 2)
    bad[0, 0, 0] = math.inf
    with pytest.raises(InputError, match=r"^image_m2: "):
        CheckFinited(["image", "image_m2"])({"image": torch.zeros(1, 2, 2), "image_m2": bad})
    assert CheckFinited(["image", "image_m2"], allow_missing_keys=True)({"image": torch.zeros(1, 2, 2)})
    with pytest.raises(KeyError):
        CheckFinited(["image", "image_m2"])({"image": torch.zeros(1, 2, 2)})


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(MetaTensor(torch.zeros(1), meta={"filename_or_obj": "/data/x.png"}), "/data/x.png", id="meta"),
        pytest.param(MetaTensor(torch.zeros(1)), "fallback", id="meta-without-name"),
        pytest.param(torch.zeros(1), "fallback", id="plain-tensor"),
        pytest.param(np.zeros(1), "fallback", id="numpy"),
    ],
)
def test_source_file(value: object, expected: str) -> None:
    assert source_file(value, "fallback") == expected
