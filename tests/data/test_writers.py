# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""Prediction writers: PNG and NIfTI masks read back with PIL and nibabel, overlays on real PNG inputs."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from PIL import Image

from usseg.data.writers import FORMATS, SaveSegmentationd, write_mask_nifti, write_mask_png

H, W = 12, 16


def _mask() -> np.ndarray:
    mask = np.zeros((H, W), dtype=np.uint8)
    mask[3:8, 4:11] = 1
    return mask


def _read_png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


def _source_image(path: Path, shape: tuple[int, int] = (H, W)) -> MetaTensor:
    """Write a gray gradient PNG and return a (1, H, W) MetaTensor that says it was loaded from it."""
    gray = (np.arange(shape[0] * shape[1]).reshape(shape) % 200 + 20).astype(np.uint8)
    Image.fromarray(gray).save(path)
    return MetaTensor(torch.from_numpy(gray[None].astype(np.float32)), meta={"filename_or_obj": str(path)})


def _no_temporaries(folder: Path) -> bool:
    return not [p.name for p in folder.iterdir() if p.name.startswith(".") or p.name.endswith(".tmp")]


@pytest.mark.parametrize(
    "mask",
    [
        pytest.param(_mask(), id="uint8"),
        pytest.param(_mask().astype(bool), id="bool"),
        pytest.param(_mask().astype(np.int64), id="int64"),
    ],
)
def test_binary_png_is_stored_as_0_and_255(tmp_path: Path, mask: np.ndarray) -> None:
    path = write_mask_png(tmp_path / "m.png", mask)
    stored = _read_png(path)
    assert stored.dtype == np.uint8 and stored.shape == (H, W)
    np.testing.assert_array_equal(stored, _mask() * 255)


def test_empty_png_mask_stays_zero(tmp_path: Path) -> None:
    stored = _read_png(write_mask_png(tmp_path / "empty.png", np.zeros((H, W), np.uint8)))
    assert stored.shape == (H, W) and not stored.any()


def test_multi_label_png_keeps_label_values(tmp_path: Path) -> None:
    labels = _mask()
    labels[9:11, 1:5] = 2
    labels[0, 0] = 3
    stored = _read_png(write_mask_png(tmp_path / "labels.png", labels, binary=False))
    np.testing.assert_array_equal(stored, labels)
    with pytest.raises(ValueError, match="binary=False"):  # never silently mix encodings
        write_mask_png(tmp_path / "labels2.png", labels)
    assert _no_temporaries(tmp_path)


@pytest.mark.parametrize(
    ("spacing", "expected_diagonal"),
    [
        pytest.param((1.0, 1.0), [1.0, 1.0, 1.0, 1.0], id="default"),
        pytest.param((0.5, 0.25), [0.25, 0.5, 1.0, 1.0], id="row-col-to-x-y"),
    ],
)
def test_nifti_stores_w_h_1_with_spacing_in_affine(
    tmp_path: Path, spacing: tuple[float, float], expected_diagonal: list[float]
) -> None:
    labels = _mask()
    labels[0, 1] = 2  # an asymmetric pixel catches a flipped or transposed axis
    path = write_mask_nifti(tmp_path / "m.nii.gz", labels, spacing=spacing)
    assert path == tmp_path / "m.nii.gz"
    image = nib.load(str(path))
    assert image.shape == (W, H, 1)
    np.testing.assert_allclose(np.diag(image.affine), expected_diagonal)
    np.testing.assert_allclose(image.affine[:3, 3], 0.0)
    data = np.asarray(image.dataobj)
    assert data.dtype == np.uint8
    np.testing.assert_array_equal(data[:, :, 0].T, labels)
    np.testing.assert_array_equal(data.T[0], labels)
    np.testing.assert_allclose(image.header.get_zooms(), [expected_diagonal[0], expected_diagonal[1], 1.0])
    assert image.header.get_xyzt_units()[0] == "mm"
    assert path.read_bytes()[:2] == b"\x1f\x8b"  # really gzip-compressed, as the suffix promises
    assert _no_temporaries(tmp_path)


def test_nifti_bytes_are_reproducible(tmp_path: Path) -> None:
    first = write_mask_nifti(tmp_path / "a.nii.gz", _mask()).read_bytes()
    second = write_mask_nifti(tmp_path / "b.nii.gz", _mask()).read_bytes()
    assert first == second


def _one_hot(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.from_numpy(labels).long(), num_classes).permute(2, 0, 1).float()


def test_save_segmentation_writes_three_files_named_after_the_source(tmp_path: Path) -> None:
    image = _source_image(tmp_path / "case_007.png")
    out = tmp_path / "predictions"
    data = {"image": image, "pred": _one_hot(_mask(), 2)}
    result = SaveSegmentationd(keys="pred", output_dir=out)(data)
    assert result["pred"] is data["pred"]  # passes the data through
    assert sorted(p.name for p in out.iterdir()) == ["case_007_overlay.png", "case_007_seg.nii.gz", "case_007_seg.png"]
    np.testing.assert_array_equal(_read_png(out / "case_007_seg.png"), _mask() * 255)
    nifti = np.asarray(nib.load(str(out / "case_007_seg.nii.gz")).dataobj)
    np.testing.assert_array_equal(nifti[:, :, 0].T, _mask())


def test_overlay_is_drawn_on_the_original_image(tmp_path: Path) -> None:
    image = _source_image(tmp_path / "scan.png")
    out = tmp_path / "out"
    SaveSegmentationd(output_dir=out, formats=("overlay",))({"image": image, "pred": _one_hot(_mask(), 2)})
    overlay = _read_png(out / "scan_overlay.png")
    assert overlay.shape == (H, W, 3) and overlay.dtype == np.uint8
    gray = _read_png(tmp_path / "scan.png")
    far_from_mask = np.ones((H, W), dtype=bool)
    far_from_mask[2:9, 3:12] = False  # the mask plus a one-pixel margin for the outline
    for channel in range(3):
        np.testing.assert_array_equal(overlay[..., channel][far_from_mask], gray[far_from_mask])
    inside = _mask().astype(bool)
    assert (overlay[inside] != np.repeat(gray[inside][:, None], 3, axis=1)).any(axis=1).all()


@pytest.mark.parametrize(
    ("pred", "expected_png"),
    [
        pytest.param(torch.from_numpy(_mask()[None]).float(), _mask() * 255, id="binary-1HW"),
        pytest.param(torch.from_numpy(_mask()[None] * 2).float(), _mask() * 2, id="labels-1HW"),
        pytest.param(
            _one_hot(np.where(np.arange(W)[None] < 5, 0, np.where(np.arange(W)[None] < 10, 1, 2)).repeat(H, 0), 3),
            np.where(np.arange(W)[None] < 5, 0, np.where(np.arange(W)[None] < 10, 1, 2)).repeat(H, 0),
            id="one-hot-3-classes",
        ),
        pytest.param(torch.from_numpy(_mask()[None] * 0.9).float(), _mask() * 255, id="probabilities-rounded"),
        pytest.param(_mask(), _mask() * 255, id="numpy-HW"),
    ],
)
def test_prediction_layouts(tmp_path: Path, pred: object, expected_png: np.ndarray) -> None:
    out = tmp_path / "out"
    num_classes = 3 if expected_png.max() == 2 else 2
    SaveSegmentationd(output_dir=out, formats=("png",), num_classes=num_classes)(
        {"image": _source_image(tmp_path / "c.png"), "pred": pred}
    )
    np.testing.assert_array_equal(_read_png(out / "c_seg.png"), expected_png)


def test_prediction_smaller_than_the_image_still_gets_an_overlay(tmp_path: Path) -> None:
    image = _source_image(tmp_path / "big.png", shape=(2 * H, 2 * W))
    out = tmp_path / "out"
    SaveSegmentationd(output_dir=out)({"image": image, "pred": _one_hot(_mask(), 2)})
    assert _read_png(out / "big_overlay.png").shape == (H, W, 3)
    assert _read_png(out / "big_seg.png").shape == (H, W)
    assert _no_temporaries(out)


def test_spacing_from_image_metadata_reaches_the_nifti(tmp_path: Path) -> None:
    image = _source_image(tmp_path / "calibrated.png")
    image.meta["spacing"] = np.array([0.2, 0.3])
    out = tmp_path / "out"
    SaveSegmentationd(output_dir=out, formats=("nii.gz",))({"image": image, "pred": _one_hot(_mask(), 2)})
    affine = nib.load(str(out / "calibrated_seg.nii.gz")).affine
    np.testing.assert_allclose(np.diag(affine), [0.3, 0.2, 1.0, 1.0])


def test_formats_postfix_and_several_keys(tmp_path: Path) -> None:
    image = _source_image(tmp_path / "img.png")
    out = tmp_path / "out"
    data = {"image": image, "pred": _one_hot(_mask(), 2), "teacher": torch.zeros(1, H, W)}
    SaveSegmentationd(keys=["pred", "teacher"], output_dir=out, formats=("png", "overlay"), postfix="mask")(data)
    assert sorted(p.name for p in out.iterdir()) == [
        "img_mask_pred.png",
        "img_mask_teacher.png",
        "img_overlay_pred.png",
        "img_overlay_teacher.png",
    ]
    assert not _read_png(out / "img_mask_teacher.png").any()


def test_image_without_source_file_is_refused(tmp_path: Path) -> None:
    # with no file name every output would share one name and overwrite the last
    data = {"image": torch.zeros(1, H, W), "pred": _one_hot(_mask(), 2)}
    with pytest.raises(ValueError, match="filename_or_obj"):
        SaveSegmentationd(output_dir=tmp_path / "out", formats=("png", "nii.gz"))(data)


def test_double_suffix_source_keeps_the_plain_stem(tmp_path: Path) -> None:
    image = MetaTensor(torch.zeros(1, H, W), meta={"filename_or_obj": "/data/volume_03.nii.gz"})
    out = tmp_path / "out"
    SaveSegmentationd(output_dir=out, formats=("png",))({"image": image, "pred": _one_hot(_mask(), 2)})
    assert [p.name for p in out.iterdir()] == ["volume_03_seg.png"]


def test_dotted_source_names_do_not_collide(tmp_path: Path) -> None:
    out = tmp_path / "out"
    save = SaveSegmentationd(output_dir=out, formats=("png",))
    for name in ("scan.1.png", "scan.2.png"):
        save({"image": _source_image(tmp_path / name), "pred": _one_hot(_mask(), 2)})
    assert sorted(p.name for p in out.iterdir()) == ["scan.1_seg.png", "scan.2_seg.png"]


@pytest.mark.parametrize("formats", [("png", "jpg"), ("nifti",), ("PNG",)])
def test_unknown_format_raises_value_error_naming_it(tmp_path: Path, formats: tuple[str, ...]) -> None:
    with pytest.raises(ValueError, match="unknown formats") as info:
        SaveSegmentationd(output_dir=tmp_path, formats=formats)
    unknown = sorted(set(formats) - set(FORMATS))
    assert str(unknown) in str(info.value)


def test_prediction_with_batch_axis_raises_value_error(tmp_path: Path) -> None:
    image = _source_image(tmp_path / "b.png")
    with pytest.raises(ValueError, match=r"\(2, 2, 12, 16\)"):
        SaveSegmentationd(output_dir=tmp_path, formats=("png",))({"image": image, "pred": torch.zeros(2, 2, H, W)})
