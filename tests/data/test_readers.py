# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""Tests for usseg.data.readers: images, masks, DICOM, video, MONAI round trips and the frame cache.

All data are made in ``tmp_path`` or come from pydicom's bundled test files; expected values are computed
here from first principles (luma formula, LUT data, YCbCr equations), not by calling the reader twice.
"""

from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path

import av
import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import DataLoader, Dataset, MetaTensor
from monai.transforms import EnsureChannelFirst, EnsureChannelFirstd, LoadImage, LoadImaged, SaveImage, SaveImaged
from PIL import Image, ImageFile
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset as DicomDataset
from pydicom.dataset import FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import get_decoder
from pydicom.uid import ExplicitVRLittleEndian, JPEGLossless, generate_uid

from usseg.data import readers
from usseg.data.readers import (
    UltrasoundDicomReader,
    UltrasoundImageReader,
    VideoFrameCache,
    VideoReader,
    downscale_frames,
    read_dicom,
    read_image_array,
    read_mask,
    read_video,
)
from usseg.errors import InputError

US_MULTIFRAME_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.3.1"
VIDEO_SIZE = (48, 64)  # (H, W): not square, so a transpose cannot pass unnoticed
VIDEO_FRAMES = 12
SQUARE = 16


# ---------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------


def asymmetric_gray(height: int = 30, width: int = 50) -> np.ndarray:
    """A (H, W) uint8 image whose every row and column differs, so flips and transposes are caught."""
    return ((np.arange(height * width).reshape(height, width) * 7 + np.arange(height)[:, None] ** 2) % 256).astype(
        np.uint8
    )


def asymmetric_rgb(height: int = 30, width: int = 50) -> np.ndarray:
    gray = asymmetric_gray(height, width)
    return np.stack([gray, np.flipud(gray), (gray.astype(np.uint16) * 3 % 256).astype(np.uint8)], axis=-1)


def luma(rgb: np.ndarray) -> np.ndarray:
    """BT.601 luma, rounded half up: the definition the readers document."""
    red, green, blue = (rgb[..., i].astype(np.int64) for i in range(3))
    weighted = red * 299 + green * 587 + blue * 114
    return np.floor(weighted / 1000 + 0.5).astype(np.uint8)


def save_pil(path: Path, array: np.ndarray, mode: str | None = None, **kwargs) -> Path:
    image = Image.fromarray(array) if mode is None else Image.fromarray(array, mode=mode)
    image.save(path, **kwargs)
    return path


def write_file(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def frame_folder(folder: Path, frames: list[np.ndarray]) -> Path:
    folder.mkdir()
    for number, frame in enumerate(frames, start=1):
        save_pil(folder / f"{number}.png", frame)
    return folder


def square_frames(num_frames: int = VIDEO_FRAMES) -> np.ndarray:
    """RGB frames (F, H, W, 3): a bright square moving right and down on a dark background."""
    frames = np.full((num_frames, *VIDEO_SIZE, 3), 20, dtype=np.uint8)
    for index in range(num_frames):
        top, left = square_origin(index)
        frames[index, top : top + SQUARE, left : left + SQUARE] = 230
    return frames


def square_origin(index: int) -> tuple[int, int]:
    return 8 + index, 4 + 3 * index


def write_video(path: Path, codec: str = "mpeg4", pix_fmt: str = "yuv420p", num_frames: int = VIDEO_FRAMES) -> Path:
    with av.open(os.fspath(path), "w") as container:
        stream = container.add_stream(codec, rate=10)
        stream.height, stream.width = VIDEO_SIZE
        stream.pix_fmt = pix_fmt
        for frame in square_frames(num_frames):
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_dicom(
    path: Path,
    frames: np.ndarray | None,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 8,
    **elements,
) -> Path:
    """Write an uncompressed US DICOM from (F, H, W) samples; ``frames=None`` leaves PixelData out."""
    ds = DicomDataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = US_MULTIFRAME_SOP_CLASS
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = US_MULTIFRAME_SOP_CLASS
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "US"
    ds.PatientID = "P001"
    shape = (1, 8, 12) if frames is None else frames.shape
    if shape[0] > 1:
        ds.NumberOfFrames = shape[0]
    ds.Rows, ds.Columns = shape[1], shape[2]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 8 if bits_stored <= 8 else 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    if frames is not None:
        ds.PixelData = frames.astype("<u1" if bits_stored <= 8 else "<u2").tobytes()
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    ds.save_as(path, enforce_file_format=True)
    return path


def us_region(spatial_format: int, width: int, height: int, delta_x_cm: float, delta_y_cm: float, units: int = 3):
    region = DicomDataset()
    region.RegionSpatialFormat = spatial_format
    region.RegionLocationMinX0, region.RegionLocationMinY0 = 0, 0
    region.RegionLocationMaxX1, region.RegionLocationMaxY1 = width - 1, height - 1
    region.PhysicalUnitsXDirection = units
    region.PhysicalUnitsYDirection = units
    region.PhysicalDeltaX = delta_x_cm
    region.PhysicalDeltaY = delta_y_cm
    return region


# ---------------------------------------------------------------------------------------------------------------
# read_image_array
# ---------------------------------------------------------------------------------------------------------------

RGB = asymmetric_rgb()
GRAY = asymmetric_gray()
PALETTE = np.array([[0, 0, 0], [255, 0, 0], [0, 200, 10], [30, 60, 90]], dtype=np.uint8)
PALETTE_INDICES = (GRAY % 4).astype(np.uint8)
SIXTEEN_BIT = np.array([[0, 128, 129, 257], [385, 386, 65535, 40000]], dtype=np.uint16)


def _palette_png(path: Path) -> Path:
    image = Image.fromarray(PALETTE_INDICES, mode="P")
    image.putpalette(PALETTE.ravel().tolist())
    image.save(path)
    return path


IMAGE_CASES = {
    "gray_png": (lambda p: save_pil(p / "a.png", GRAY), "gray", GRAY),
    "gray_bmp": (lambda p: save_pil(p / "a.bmp", GRAY), "gray", GRAY),
    "gray_tiff": (lambda p: save_pil(p / "a.tif", GRAY), "gray", GRAY),
    "rgb_png_to_gray": (lambda p: save_pil(p / "a.png", RGB), "gray", luma(RGB)),
    "rgb_png_kept": (lambda p: save_pil(p / "a.png", RGB), "rgb", RGB),
    "rgb_auto_keeps_colour": (lambda p: save_pil(p / "a.png", RGB), "auto", RGB),
    "equal_channels_auto_to_gray": (lambda p: save_pil(p / "a.png", np.stack([GRAY] * 3, -1)), "auto", GRAY),
    "gray_to_rgb": (lambda p: save_pil(p / "a.png", GRAY), "rgb", np.stack([GRAY] * 3, -1)),
    "bilevel_mode_1": (
        lambda p: save_pil(p / "a.png", GRAY > 100),  # a bool array becomes PIL mode "1"
        "gray",
        np.where(GRAY > 100, 255, 0).astype(np.uint8),
    ),
    "palette_looked_up": (lambda p: _palette_png(p / "a.png"), "rgb", PALETTE[PALETTE_INDICES]),
    "rgba_opaque_alpha_dropped": (
        lambda p: save_pil(p / "a.png", np.concatenate([RGB, np.full((*GRAY.shape, 1), 255, np.uint8)], -1)),
        "rgb",
        RGB,
    ),
    "la_opaque_alpha_dropped": (
        lambda p: save_pil(p / "a.png", np.stack([GRAY, np.full_like(GRAY, 255)], -1), mode="LA"),
        "gray",
        GRAY,
    ),
    "sixteen_bit_divided_by_257": (
        lambda p: save_pil(p / "a.png", SIXTEEN_BIT),
        "gray",
        np.floor(SIXTEEN_BIT / 257 + 0.5).astype(np.uint8),
    ),
    "float_tiff_unit_range": (
        lambda p: save_pil(p / "a.tif", (GRAY / 255.0).astype(np.float32), mode="F"),
        "gray",
        GRAY,
    ),
    "float_tiff_255_range": (lambda p: save_pil(p / "a.tif", GRAY.astype(np.float32), mode="F"), "gray", GRAY),
}


@pytest.mark.parametrize("case", IMAGE_CASES.values(), ids=IMAGE_CASES.keys())
def test_read_image_array_decodes_every_supported_mode(tmp_path, case):
    make, color, expected = case
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # none of these files deserves a warning
        out = read_image_array(make(tmp_path), color=color)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, expected)


def test_read_image_array_jpeg_is_row_major_and_close(tmp_path):
    smooth = np.add.outer(np.arange(30) * 4, np.arange(50) * 2).astype(np.uint8)  # JPEG-friendly gradient
    out = read_image_array(save_pil(tmp_path / "a.JPG", smooth, quality=95), color="gray")
    assert out.shape == (30, 50)
    assert np.abs(out.astype(int) - smooth).mean() < 2.0


def test_sixteen_bit_file_with_8_bit_values_warns(tmp_path):
    path = save_pil(tmp_path / "a.png", np.array([[0, 200], [255, 10]], dtype=np.uint16))
    with pytest.warns(UserWarning, match="fit in 8 bits"):
        out = read_image_array(path)
    np.testing.assert_array_equal(out, [[0, 1], [1, 0]])


def _truncated(path: Path, keep: float) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def _multipage_tiff(path: Path) -> Path:
    Image.fromarray(GRAY).save(path, save_all=True, append_images=[Image.fromarray(GRAY)])
    return path


IMAGE_ERROR_CASES = {
    "missing_file": (lambda p: p / "missing.png", "file not found"),
    "zero_bytes": (lambda p: write_file(p / "a.png", b""), "empty"),
    "truncated_png": (lambda p: _truncated(save_pil(p / "a.png", asymmetric_gray(200, 200)), 0.5), "truncated"),
    "truncated_jpeg": (lambda p: _truncated(save_pil(p / "a.jpg", asymmetric_gray(200, 200)), 0.6), "truncated"),
    "text_with_png_suffix": (
        lambda p: write_file(p / "a.png", b"not an image"),
        "not a readable image",
    ),
    "rgba_transparency": (
        lambda p: save_pil(p / "a.png", np.concatenate([RGB, (GRAY[..., None] > 20).astype(np.uint8) * 255], -1)),
        "transparency",
    ),
    "cmyk_unsupported_mode": (
        lambda p: save_pil(p / "a.jpg", np.zeros((8, 8, 4), np.uint8), mode="CMYK"),
        "unsupported image mode 'CMYK'",
    ),
    "float_nan": (
        lambda p: save_pil(p / "a.tif", np.where(GRAY > 50, np.nan, 1.0).astype(np.float32), mode="F"),
        "NaN or infinite",
    ),
    "float_inf": (
        lambda p: save_pil(p / "a.tif", np.where(GRAY > 50, np.inf, 1.0).astype(np.float32), mode="F"),
        "NaN or infinite",
    ),
    "float_out_of_range": (
        lambda p: save_pil(p / "a.tif", GRAY.astype(np.float32) * 10, mode="F"),
        r"\[0, 1\] or \[0, 255\]",
    ),
    "multipage_tiff": (lambda p: _multipage_tiff(p / "a.tif"), "2 frames"),
}


@pytest.mark.parametrize("case", IMAGE_ERROR_CASES.values(), ids=IMAGE_ERROR_CASES.keys())
def test_read_image_array_rejects_bad_files_with_input_error(tmp_path, case):
    make, problem = case
    path = make(tmp_path)
    with pytest.raises(InputError, match=problem) as info:
        read_image_array(path)
    assert str(info.value).startswith(str(path))
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


@pytest.mark.parametrize("color", ["grey", "RGB", None], ids=["typo", "upper_case", "none"])
def test_read_image_array_rejects_unknown_color(tmp_path, color):
    with pytest.raises(ValueError, match="color"):
        read_image_array(save_pil(tmp_path / "a.png", GRAY), color=color)


# ---------------------------------------------------------------------------------------------------------------
# read_mask
# ---------------------------------------------------------------------------------------------------------------

LESION = np.zeros((20, 24), dtype=np.uint8)
LESION[5:12, 3:15] = 1


def _gray_palette_mask(path: Path) -> Path:
    image = Image.fromarray(1 - LESION, mode="P")  # index 0 = lesion, shown white through the palette
    image.putpalette([255, 255, 255, 0, 0, 0] + [0, 0, 0] * 254)
    image.save(path)
    return path


BINARY_MASK_CASES = {
    "zero_one": (lambda p: save_pil(p / "m.png", LESION), LESION),
    "zero_255": (lambda p: save_pil(p / "m.png", LESION * 255), LESION),
    "only_255": (lambda p: save_pil(p / "m.png", np.full_like(LESION, 255)), np.ones_like(LESION)),
    "busi_mode_1": (lambda p: save_pil(p / "m.png", LESION.astype(bool)), LESION),
    "busi_rgb_all_zero": (lambda p: save_pil(p / "m.png", np.zeros((*LESION.shape, 3), np.uint8)), 0 * LESION),
    "busi_rgba_opaque": (
        lambda p: save_pil(p / "m.png", np.stack([LESION * 255] * 3 + [np.full_like(LESION, 255)], -1)),
        LESION,
    ),
    "gray_palette_looked_up": (lambda p: _gray_palette_mask(p / "m.png"), LESION),
    "bmp": (lambda p: save_pil(p / "m.bmp", LESION * 255), LESION),
}


@pytest.mark.parametrize("case", BINARY_MASK_CASES.values(), ids=BINARY_MASK_CASES.keys())
def test_read_mask_binary_accepts_busi_encodings(tmp_path, case):
    make, expected = case
    out = read_mask(make(tmp_path), mode="binary", expected_shape=LESION.shape)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, expected)


def _with_values(values: list[int]) -> np.ndarray:
    mask = np.zeros(LESION.size, dtype=np.uint8)
    mask[: len(values)] = values
    return mask.reshape(LESION.shape)


BINARY_MASK_ERRORS = {
    "anti_aliased_edge": (lambda p: save_pil(p / "m.png", _with_values([255, 128, 64])), r"values 64, 128;"),
    "twelve_bad_values_listed_up_to_ten": (
        lambda p: save_pil(p / "m.png", _with_values(list(range(2, 14)))),
        r"values 2, 3, 4, 5, 6, 7, 8, 9, 10, 11 \(and 2 more\)",
    ),
    "mixes_1_and_255": (lambda p: save_pil(p / "m.png", _with_values([1, 255])), "mixes the values 1 and 255"),
    "colour_channels_differ": (
        lambda p: save_pil(p / "m.png", np.stack([LESION * 255, LESION * 0, LESION * 255], -1)),
        "channels differ",
    ),
    "rgba_transparent": (
        lambda p: save_pil(p / "m.png", np.stack([LESION * 255] * 3 + [LESION * 255], -1)),
        "transparency",
    ),
    "lossy_jpeg_mask": (
        lambda p: save_pil(p / "m.jpg", np.kron(np.eye(4, dtype=np.uint8), np.ones((5, 6), np.uint8)) * 255),
        "0/1 or only 0/255",
    ),
}


@pytest.mark.parametrize("case", BINARY_MASK_ERRORS.values(), ids=BINARY_MASK_ERRORS.keys())
def test_read_mask_binary_rejects_non_binary_values(tmp_path, case):
    make, problem = case
    path = make(tmp_path)
    with pytest.raises(InputError, match=problem) as info:
        read_mask(path)
    assert str(path) in str(info.value)


def test_read_mask_binary_error_says_what_is_accepted(tmp_path):
    with pytest.raises(InputError, match="must hold only 0/1 or only 0/255"):
        read_mask(save_pil(tmp_path / "m.png", _with_values([7])))


def test_read_mask_labels_keeps_values_and_checks_range(tmp_path):
    labels = (asymmetric_gray(20, 24) % 3).astype(np.uint8)
    np.testing.assert_array_equal(read_mask(save_pil(tmp_path / "m.png", labels), "labels", num_classes=3), labels)
    with pytest.raises(InputError, match=r"values 3 outside the accepted labels 0\.\.2"):
        read_mask(save_pil(tmp_path / "bad.png", labels + (labels == 2)), "labels", num_classes=3)


def test_read_mask_labels_from_coloured_palette_uses_indices(tmp_path):
    labels = (asymmetric_gray(20, 24) % 4).astype(np.uint8)
    image = Image.fromarray(labels, mode="P")
    image.putpalette(PALETTE.ravel().tolist())  # VOC-style: colours for display, indices are the labels
    image.save(tmp_path / "m.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png", "labels", num_classes=4), labels)


def test_read_mask_shape_mismatch_names_both_shapes(tmp_path):
    path = save_pil(tmp_path / "m.png", LESION)
    with pytest.raises(InputError, match=r"mask shape \(20, 24\).*image shape \(24, 20\)"):
        read_mask(path, expected_shape=(24, 20))


MASK_ARG_ERRORS = {
    "unknown_mode": ({"mode": "multi"}, ValueError, "mask mode"),
    "labels_without_num_classes": ({"mode": "labels"}, ValueError, "needs num_classes"),
    "binary_with_three_classes": ({"mode": "binary", "num_classes": 3}, ValueError, "Use mode 'labels'"),
    "one_class": ({"mode": "labels", "num_classes": 1}, ValueError, r"\[2, 256\]"),
    "too_many_classes": ({"mode": "labels", "num_classes": 300}, ValueError, r"\[2, 256\]"),
    "bool_num_classes": ({"mode": "labels", "num_classes": True}, TypeError, "num_classes must be an int"),
}


@pytest.mark.parametrize("case", MASK_ARG_ERRORS.values(), ids=MASK_ARG_ERRORS.keys())
def test_read_mask_validates_arguments(tmp_path, case):
    kwargs, error, message = case
    with pytest.raises(error, match=message):
        read_mask(save_pil(tmp_path / "m.png", LESION), **kwargs)


# ---------------------------------------------------------------------------------------------------------------
# UltrasoundImageReader with MONAI
# ---------------------------------------------------------------------------------------------------------------


def _png_saver(tmp_path: Path, reverse_indexing: bool | None) -> SaveImage:
    saver = SaveImage(
        output_dir=tmp_path / "out",
        output_postfix="saved",
        output_ext=".png",
        output_dtype=np.uint8,
        scale=None,
        resample=False,
        separate_folder=False,
        print_log=False,
    )
    return saver if reverse_indexing is None else saver.set_options(write_kwargs={"reverse_indexing": False})


@pytest.mark.parametrize(
    ("color", "source"), [("gray", GRAY), ("rgb", RGB)], ids=["gray_png_round_trip", "rgb_png_round_trip"]
)
def test_png_round_trip_keeps_orientation_with_reverse_indexing_off(tmp_path, color, source):
    path = save_pil(tmp_path / "scan.png", source)
    image = EnsureChannelFirst()(LoadImage(reader=UltrasoundImageReader(color=color), image_only=True)(path))
    assert isinstance(image, MetaTensor)
    expected_channel_first = source[None] if source.ndim == 2 else np.moveaxis(source, -1, 0)
    np.testing.assert_array_equal(image.numpy(), expected_channel_first)
    assert image.meta["original_channel_dim"] == ("no_channel" if color == "gray" else -1)
    np.testing.assert_array_equal(image.meta["spatial_shape"], source.shape[:2])
    np.testing.assert_array_equal(image.affine.numpy(), np.eye(3))

    _png_saver(tmp_path, reverse_indexing=False)(image)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out" / "scan_saved.png")), source)


def test_png_writer_default_transposes_our_row_major_arrays(tmp_path):
    """The trap documented in the module docstring: MONAI's PILWriter default (reverse_indexing=True)."""
    path = save_pil(tmp_path / "scan.png", GRAY)
    image = LoadImage(reader=UltrasoundImageReader(), image_only=True, ensure_channel_first=True)(path)
    _png_saver(tmp_path, reverse_indexing=None)(image)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out" / "scan_saved.png")), GRAY.T)


def test_nifti_round_trip_keeps_rows_and_columns(tmp_path):
    path = save_pil(tmp_path / "scan.png", GRAY)
    image = LoadImage(reader=UltrasoundImageReader(), image_only=True, ensure_channel_first=True)(path)
    SaveImage(
        output_dir=tmp_path / "out",
        output_postfix="saved",
        output_ext=".nii.gz",
        output_dtype=np.uint8,
        resample=False,
        separate_folder=False,
        print_log=False,
    )(image)
    saved = tmp_path / "out" / "scan_saved.nii.gz"
    np.testing.assert_array_equal(np.asarray(nib.load(saved).dataobj), GRAY)
    reloaded = LoadImage(reader="NibabelReader", image_only=True)(saved)
    np.testing.assert_array_equal(reloaded.numpy(), GRAY)


def test_loadimaged_image_and_mask_to_channel_first_then_saveimaged(tmp_path):
    image_path = save_pil(tmp_path / "case.png", GRAY)
    mask = (GRAY > 128).astype(np.uint8)
    mask_path = save_pil(tmp_path / "case_mask.png", mask * 255)
    transforms = [
        LoadImaged(keys="image", reader=UltrasoundImageReader()),
        LoadImaged(keys="label", reader=UltrasoundImageReader(mask_mode="binary"), dtype=np.uint8),
        EnsureChannelFirstd(keys=["image", "label"]),
    ]
    data = {"image": str(image_path), "label": str(mask_path)}
    for transform in transforms:
        data = transform(data)
    assert isinstance(data["image"], MetaTensor) and tuple(data["image"].shape) == (1, *GRAY.shape)
    np.testing.assert_array_equal(data["label"].numpy(), mask[None])
    saver = SaveImaged(
        keys="label",
        output_dir=tmp_path / "out",
        output_postfix="seg",
        output_ext=".png",
        output_dtype=np.uint8,
        scale=None,
        resample=False,
        separate_folder=False,
        print_log=False,
    ).set_options(write_kwargs={"reverse_indexing": False})
    saver(data)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out" / "case_mask_seg.png")), mask)


def test_dataloader_collates_reader_metadata(tmp_path):
    items = [{"image": str(save_pil(tmp_path / f"{i}.png", np.roll(GRAY, i, axis=1)))} for i in range(2)]
    items = [dict(item, cine=get_testdata_file("examples_ybr_color.dcm")) for item in items]
    transform = [
        LoadImaged(keys="image", reader=UltrasoundImageReader()),
        LoadImaged(keys="cine", reader=UltrasoundDicomReader(color="gray")),
        EnsureChannelFirstd(keys=["image", "cine"]),
    ]
    from monai.transforms import Compose

    batch = next(iter(DataLoader(Dataset(items, Compose(transform)), batch_size=2)))
    assert tuple(batch["image"].shape) == (2, 1, *GRAY.shape)
    assert tuple(batch["cine"].shape) == (2, 1, 30, 240, 320)
    np.testing.assert_array_equal(batch["image"][1, 0].numpy(), np.roll(GRAY, 1, axis=1))


def test_loadimage_reports_input_error_instead_of_falling_back_to_pilreader(tmp_path):
    # MONAI retries failed readers with its defaults; PILReader would happily return this RGBA file transposed
    rgba = np.concatenate([RGB, (GRAY[..., None] > 20).astype(np.uint8) * 255], -1)
    path = save_pil(tmp_path / "scan.png", rgba)
    with pytest.raises(InputError, match="transparency"):
        LoadImage(reader=UltrasoundImageReader(), image_only=True)(path)


def test_loadimage_falls_back_to_monai_for_files_the_reader_does_not_claim(tmp_path):
    path = tmp_path / "label.nii.gz"
    nib.save(nib.Nifti1Image(GRAY, np.eye(4)), path)
    image = LoadImage(reader=UltrasoundImageReader(), image_only=True)(path)
    np.testing.assert_array_equal(image.numpy(), GRAY)


def test_several_gray_files_stack_as_channels(tmp_path):
    paths = [save_pil(tmp_path / "a.png", GRAY), save_pil(tmp_path / "b.png", 255 - GRAY)]
    image = LoadImage(reader=UltrasoundImageReader(), image_only=True, ensure_channel_first=True)(paths)
    np.testing.assert_array_equal(image.numpy(), np.stack([GRAY, 255 - GRAY]))
    save_pil(tmp_path / "c.png", GRAY[:, :10])
    with pytest.raises(InputError, match=r"shape \(30, 10\) differs from \(30, 50\)"):
        UltrasoundImageReader().get_data(UltrasoundImageReader().read([paths[0], tmp_path / "c.png"]))


READER_CONFIGS = {
    "image_reader": ({"_target_": "usseg.data.readers.UltrasoundImageReader", "color": "rgb"}, UltrasoundImageReader),
    "mask_reader": (
        {"_target_": "usseg.data.readers.UltrasoundImageReader", "mask_mode": "labels", "num_classes": 3},
        UltrasoundImageReader,
    ),
    "dicom_reader": ({"_target_": "usseg.data.readers.UltrasoundDicomReader", "color": "gray"}, UltrasoundDicomReader),
    "video_reader": ({"_target_": "usseg.data.readers.VideoReader", "color": "auto"}, VideoReader),
}


@pytest.mark.parametrize("case", READER_CONFIGS.values(), ids=READER_CONFIGS.keys())
def test_readers_instantiate_from_config_target(case):
    config, cls = case
    parser = ConfigParser({"reader": config, "loader": {"_target_": "LoadImaged", "keys": "x", "reader": "@reader"}})
    reader = parser.get_parsed_content("reader")
    assert type(reader) is cls
    assert all(getattr(reader, key) == value for key, value in config.items() if key != "_target_")
    assert parser.get_parsed_content("loader") is not None


READER_ARG_ERRORS = {
    "image_bad_color": (lambda: UltrasoundImageReader(color="grey"), ValueError),
    "image_bad_mask_mode": (lambda: UltrasoundImageReader(mask_mode="soft"), ValueError),
    "image_num_classes_without_mask": (lambda: UltrasoundImageReader(num_classes=3), ValueError),
    "dicom_bad_color": (lambda: UltrasoundDicomReader(color="bgr"), ValueError),
    "dicom_squeeze_not_bool": (lambda: UltrasoundDicomReader(squeeze_single_frame="yes"), TypeError),
    "video_bad_color": (lambda: VideoReader(color=None), ValueError),
}


@pytest.mark.parametrize("case", READER_ARG_ERRORS.values(), ids=READER_ARG_ERRORS.keys())
def test_reader_constructors_validate_arguments(case):
    build, error = case
    with pytest.raises(error):
        build()


SUFFIX_CASES = {
    "image_png": (UltrasoundImageReader(), "a.png", True),
    "image_upper_case_jpg": (UltrasoundImageReader(), "a.JPG", True),
    "image_tiff_list": (UltrasoundImageReader(), ["a.tif", "b.tiff"], True),
    "image_rejects_dcm": (UltrasoundImageReader(), "a.dcm", False),
    "image_rejects_mixed_list": (UltrasoundImageReader(), ["a.png", "b.nii.gz"], False),
    "dicom_dcm": (UltrasoundDicomReader(), "a.dcm", True),
    "dicom_dicom_suffix": (UltrasoundDicomReader(), "a.DICOM", True),
    "dicom_rejects_png": (UltrasoundDicomReader(), "a.png", False),
    "video_mp4": (VideoReader(), "a.MP4", True),
    "video_gif": (VideoReader(), "a.gif", True),
    "video_rejects_png": (VideoReader(), "a.png", False),
}


@pytest.mark.parametrize("case", SUFFIX_CASES.values(), ids=SUFFIX_CASES.keys())
def test_verify_suffix(case):
    reader, filename, expected = case
    assert reader.verify_suffix(filename) is expected


# ---------------------------------------------------------------------------------------------------------------
# DICOM
# ---------------------------------------------------------------------------------------------------------------

PYDICOM_FILES = {
    # name: (shape, photometric as stored, spacing source, spacing (row, col) in mm or None, frame time)
    "examples_ybr_color.dcm": ((30, 240, 320, 3), "YBR_FULL_422", "ultrasound_regions", 0.5104970559477806, 33.333),
    "examples_palette.dcm": ((1, 350, 800, 3), "PALETTE COLOR", "ultrasound_regions", 0.26228787661969977, None),
    "examples_rgb_color.dcm": ((1, 240, 320, 3), "RGB", "none", None, None),
    "examples_jpeg2k.dcm": ((1, 480, 640, 3), "YBR_RCT", "none", None, None),
    "ExplVR_BigEnd.dcm": ((1, 60, 80, 3), "RGB", "none", None, None),
}


@pytest.mark.parametrize("name", PYDICOM_FILES, ids=[n.removesuffix(".dcm") for n in PYDICOM_FILES])
def test_read_dicom_pydicom_test_files(name):
    shape, photometric, source, spacing, frame_time = PYDICOM_FILES[name]
    frames, meta = read_dicom(get_testdata_file(name))
    assert frames.dtype == np.uint8 and frames.shape == shape
    assert meta["num_frames"] == shape[0]
    assert meta["photometric_interpretation"] == photometric
    assert meta["spacing_source"] == source
    assert meta["pixel_spacing_mm"] == (None if spacing is None else pytest.approx((spacing, spacing)))
    assert meta["frame_time_ms"] == (None if frame_time is None else pytest.approx(frame_time))
    assert meta["original_channel_dim"] == -1
    assert meta["sop_instance_uid"] == pydicom.dcmread(get_testdata_file(name)).SOPInstanceUID


def _raw_pixels(name: str) -> tuple[pydicom.Dataset, np.ndarray]:
    dataset = pydicom.dcmread(get_testdata_file(name))
    return dataset, get_decoder(dataset.file_meta.TransferSyntaxUID).as_array(dataset, as_rgb=False)[0]


def test_ybr_full_422_cine_is_converted_to_rgb():
    _, ybr = _raw_pixels("examples_ybr_color.dcm")
    y, cb, cr = (ybr[..., i].astype(np.float64) for i in range(3))
    expected = np.stack(
        [y + 1.402 * (cr - 128), y - 0.344136 * (cb - 128) - 0.714136 * (cr - 128), y + 1.772 * (cb - 128)], axis=-1
    )
    frames, _ = read_dicom(get_testdata_file("examples_ybr_color.dcm"))
    assert np.abs(frames.astype(np.float64) - np.clip(expected, 0, 255)).max() <= 1.0
    gray, _ = read_dicom(get_testdata_file("examples_ybr_color.dcm"), color="gray")
    np.testing.assert_array_equal(gray, luma(frames))


def test_palette_color_is_looked_up_through_its_lut():
    dataset, indices = _raw_pixels("examples_palette.dcm")
    first_mapped = int(dataset.RedPaletteColorLookupTableDescriptor[1])
    channels = []
    for colour in ("Red", "Green", "Blue"):
        lut = np.frombuffer(dataset[f"{colour}PaletteColorLookupTableData"].value, dtype="<u2")
        channels.append(lut[np.clip(indices.astype(np.int64) - first_mapped, 0, len(lut) - 1)] >> 8)
    frames, _ = read_dicom(get_testdata_file("examples_palette.dcm"))
    np.testing.assert_array_equal(frames[0], np.stack(channels, -1).astype(np.uint8))


def test_rgb_files_are_kept_and_can_be_made_gray():
    _, rgb = _raw_pixels("examples_rgb_color.dcm")
    frames, _ = read_dicom(get_testdata_file("examples_rgb_color.dcm"))
    np.testing.assert_array_equal(frames[0], rgb)
    gray, meta = read_dicom(get_testdata_file("examples_rgb_color.dcm"), color="gray")
    np.testing.assert_array_equal(gray[0], luma(rgb))
    assert meta["original_channel_dim"] == "no_channel"


def test_monochrome1_is_inverted(tmp_path):
    samples = asymmetric_gray(8, 12)[None]
    frames, meta = read_dicom(write_dicom(tmp_path / "m1.dcm", samples, photometric="MONOCHROME1"))
    np.testing.assert_array_equal(frames, 255 - samples)
    assert meta["original_channel_dim"] == "no_channel"


def test_twelve_bit_samples_are_mapped_from_their_stored_range(tmp_path):
    samples = np.array([[[0, 1, 8, 2048, 4094, 4095]]], dtype=np.uint16)
    frames, _ = read_dicom(write_dicom(tmp_path / "deep.dcm", samples, bits_stored=12))
    np.testing.assert_array_equal(frames, np.floor(samples.astype(np.float64) * 255 / 4095 + 0.5).astype(np.uint8))


def test_multiframe_cine_takes_spacing_from_the_2d_region_and_time_from_cine_rate(tmp_path):
    cine = np.stack([asymmetric_gray(8, 12) + i for i in range(5)]).astype(np.uint8)
    doppler = us_region(spatial_format=3, width=12, height=40, delta_x_cm=0.5, delta_y_cm=0.5)
    tissue = us_region(spatial_format=1, width=12, height=8, delta_x_cm=0.02, delta_y_cm=0.03)
    path = write_dicom(
        tmp_path / "cine.dcm",
        cine,
        SequenceOfUltrasoundRegions=[doppler, tissue],
        PixelSpacing=[9.0, 9.0],  # regions win over PixelSpacing
        CineRate=25,
    )
    frames, meta = read_dicom(path)
    np.testing.assert_array_equal(frames, cine)
    assert meta["pixel_spacing_mm"] == pytest.approx((0.3, 0.2))
    assert meta["spacing_source"] == "ultrasound_regions"
    assert meta["frame_time_ms"] == pytest.approx(40.0)
    assert meta["patient_id"] == "P001" and meta["num_frames"] == 5


SPACING_FALLBACK_CASES = {
    "pixel_spacing": ({"PixelSpacing": [0.4, 0.25]}, (0.4, 0.25), "pixel_spacing"),
    "regions_not_in_cm_fall_back": (
        {"SequenceOfUltrasoundRegions": [us_region(1, 12, 8, 0.1, 0.1, units=4)], "PixelSpacing": [0.5, 0.5]},
        (0.5, 0.5),
        "pixel_spacing",
    ),
    "no_calibration": ({}, None, "none"),
}


@pytest.mark.parametrize("case", SPACING_FALLBACK_CASES.values(), ids=SPACING_FALLBACK_CASES.keys())
def test_spacing_falls_back_to_pixel_spacing_then_none(tmp_path, case):
    elements, spacing, source = case
    _, meta = read_dicom(write_dicom(tmp_path / "a.dcm", asymmetric_gray(8, 12)[None], **elements))
    assert meta["pixel_spacing_mm"] == (None if spacing is None else pytest.approx(spacing))
    assert meta["spacing_source"] == source
    assert meta["frame_time_ms"] is None


def _undecodable_dicom(path: Path) -> Path:
    if get_decoder(JPEGLossless).is_available:
        pytest.skip("a JPEG Lossless decoder is installed here")
    write_dicom(path, asymmetric_gray(8, 12)[None])
    dataset = pydicom.dcmread(path)
    dataset.file_meta.TransferSyntaxUID = JPEGLossless
    dataset.PixelData = encapsulate([b"\xff\xd8" + bytes(20)])
    dataset["PixelData"].VR = "OB"
    dataset["PixelData"].is_undefined_length = True
    dataset.save_as(path, enforce_file_format=True)
    return path


DICOM_ERROR_CASES = {
    "no_pixel_data": (lambda p: write_dicom(p / "a.dcm", None), "no pixel data"),
    "not_dicom": (lambda p: write_file(p / "a.dcm", b"hello"), "not a DICOM file"),
    "zero_bytes": (lambda p: write_file(p / "a.dcm", b""), "empty"),
    "undecodable_transfer_syntax": (
        lambda p: _undecodable_dicom(p / "a.dcm"),
        r"JPEG Lossless, Non-Hierarchical \(Process 14\).*install one of: .*pylibjpeg",
    ),
}


@pytest.mark.parametrize("case", DICOM_ERROR_CASES.values(), ids=DICOM_ERROR_CASES.keys())
def test_read_dicom_rejects_bad_files_with_input_error(tmp_path, case):
    make, problem = case
    path = make(tmp_path)
    with pytest.raises(InputError, match=problem) as info:
        read_dicom(path)
    assert str(info.value).startswith(str(path))


def test_dicom_reader_with_loadimage_is_frames_first_and_calibrated():
    image = LoadImage(reader=UltrasoundDicomReader(), image_only=True, ensure_channel_first=True)(
        get_testdata_file("examples_ybr_color.dcm")
    )
    assert tuple(image.shape) == (3, 30, 240, 320)
    spacing = 0.5104970559477806
    np.testing.assert_allclose(image.affine.numpy(), np.diag([1.0, spacing, spacing, 1.0]))
    np.testing.assert_allclose(image.meta["spacing"], [1.0, spacing, spacing])
    assert image.meta["spacing_source"] == "ultrasound_regions"
    assert image.meta["num_frames"] == 30 and image.meta["frame_time_ms"] == pytest.approx(33.333)


def test_dicom_reader_squeezes_single_frames_and_reads_suffixless_files(tmp_path):
    samples = asymmetric_gray(8, 12)
    path = write_dicom(tmp_path / "IM0001", samples[None])
    reader = UltrasoundDicomReader(squeeze_single_frame=True)
    assert reader.verify_suffix(path)
    image = LoadImage(reader=reader, image_only=True, ensure_channel_first=True)(path)
    np.testing.assert_array_equal(image.numpy(), samples[None])
    np.testing.assert_array_equal(image.affine.numpy(), np.eye(3))
    assert image.meta["spacing_source"] == "none" and np.isnan(image.meta["frame_time_ms"])


def test_loadimage_reports_non_dicom_dcm_as_input_error(tmp_path):
    (tmp_path / "a.dcm").write_text("hello")
    with pytest.raises(InputError, match="not a DICOM file"):
        LoadImage(reader=UltrasoundDicomReader(), image_only=True)(tmp_path / "a.dcm")


# ---------------------------------------------------------------------------------------------------------------
# video
# ---------------------------------------------------------------------------------------------------------------

VIDEO_CASES = {
    "mp4_mpeg4": ("clip.mp4", "mpeg4", "yuv420p"),
    "avi_mpeg4": ("clip.avi", "mpeg4", "yuv420p"),
    "gif": ("clip.gif", "gif", "rgb8"),
}


@pytest.fixture(params=VIDEO_CASES.values(), ids=VIDEO_CASES.keys())
def video_path(request, tmp_path) -> Path:
    name, codec, pix_fmt = request.param
    return write_video(tmp_path / name, codec, pix_fmt)


def _bright_centre(frame: np.ndarray) -> tuple[float, float]:
    rows, cols = np.nonzero(frame > 128)
    return float(rows.mean()), float(cols.mean())


def test_read_video_decodes_every_frame_with_the_moving_square(video_path):
    frames = read_video(video_path)
    assert frames.dtype == np.uint8 and frames.shape == (VIDEO_FRAMES, *VIDEO_SIZE)
    for index, frame in enumerate(frames):
        top, left = square_origin(index)
        centre = (top + (SQUARE - 1) / 2, left + (SQUARE - 1) / 2)
        assert _bright_centre(frame) == pytest.approx(centre, abs=1.0)
    assert abs(float(frames[0, :8].mean()) - 20) < 25  # dark background above the square, even after quantisation


def test_read_video_rgb_and_indices(video_path):
    everything = read_video(video_path, color="rgb")
    assert everything.shape == (VIDEO_FRAMES, *VIDEO_SIZE, 3)
    np.testing.assert_array_equal(read_video(video_path, color="rgb", indices=[5, 0, 5]), everything[[5, 0, 5]])
    assert read_video(video_path, indices=[]).shape == (0, *VIDEO_SIZE)


@pytest.mark.parametrize("indices", [[0, VIDEO_FRAMES], [-1]], ids=["past_the_end", "negative"])
def test_read_video_out_of_range_index_names_file_and_count(tmp_path, indices):
    path = write_video(tmp_path / "clip.mp4")
    with pytest.raises(IndexError, match=str(path)):
        read_video(path, indices=indices)
    with pytest.raises(IndexError, match=f"has {VIDEO_FRAMES} frames"):
        read_video(path, indices=[VIDEO_FRAMES + 3])


def test_video_reader_with_loadimage(tmp_path):
    path = write_video(tmp_path / "clip.avi")
    image = LoadImage(reader=VideoReader(), image_only=True, ensure_channel_first=True)(path)
    assert tuple(image.shape) == (1, VIDEO_FRAMES, *VIDEO_SIZE)
    assert image.meta["num_frames"] == VIDEO_FRAMES and image.meta["fps"] == pytest.approx(10.0)
    np.testing.assert_array_equal(image[0].numpy(), read_video(path))


VIDEO_ERROR_CASES = {
    "truncated_mp4": (lambda p: _truncated(write_video(p / "clip.mp4"), 0.5), "clip.mp4"),
    "garbage_mp4": (lambda p: write_file(p / "clip.mp4", b"not a video" * 50), "cannot open"),
    "empty_avi": (lambda p: write_file(p / "clip.avi", b""), "empty"),
}


@pytest.mark.parametrize("case", VIDEO_ERROR_CASES.values(), ids=VIDEO_ERROR_CASES.keys())
def test_read_video_rejects_damaged_files(tmp_path, case):
    make, problem = case
    path = make(tmp_path)
    with pytest.raises(InputError, match=problem) as info:
        read_video(path)
    assert str(info.value).startswith(str(path))


def test_truncated_avi_warns_and_reports_the_decoded_count(tmp_path):
    path = _truncated(write_video(tmp_path / "clip.avi"), 0.9)
    with pytest.warns(UserWarning, match=f"declares {VIDEO_FRAMES} frames"):
        frames = read_video(path)
    assert 0 < len(frames) < VIDEO_FRAMES


# ---------------------------------------------------------------------------------------------------------------
# VideoFrameCache
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture
def count_decodes(monkeypatch) -> list[str]:
    """Record every full video decode the cache asks for."""
    calls: list[str] = []
    original = readers.read_video

    def counting(path, color="gray", indices=None):
        calls.append(Path(path).name)
        return original(path, color, indices)

    monkeypatch.setattr(readers, "read_video", counting)
    return calls


def test_cache_decodes_each_video_once(tmp_path, count_decodes):
    path = write_video(tmp_path / "clip.mp4")
    cache = VideoFrameCache()
    assert cache.num_frames(path) == VIDEO_FRAMES
    full = read_video(path)
    count_decodes.clear()
    for indices in ([0, 3], [11], [3, 3, 7]):
        np.testing.assert_array_equal(cache.get_frames(path, indices), full[indices])
    assert count_decodes == []
    assert (cache.hits, cache.misses, len(cache)) == (3, 1, 1)
    assert cache.nbytes == full.nbytes


def test_cache_returns_copies_of_read_only_frames(tmp_path):
    path = write_video(tmp_path / "clip.mp4")
    cache = VideoFrameCache()
    first = cache.get_frames(path, [0])
    first[:] = 0
    assert cache.get_frames(path, [0]).any()


def test_cache_evicts_least_recently_used_under_budget(tmp_path, count_decodes):
    paths = {name: write_video(tmp_path / f"{name}.mp4") for name in "abc"}
    one_video = VIDEO_FRAMES * VIDEO_SIZE[0] * VIDEO_SIZE[1]
    cache = VideoFrameCache(max_bytes=2 * one_video)
    for name in "abac":  # c evicts b, the least recently used, not a
        cache.get_frames(paths[name], [0])
    assert count_decodes == ["a.mp4", "b.mp4", "c.mp4"]
    cache.get_frames(paths["a"], [1])
    cache.get_frames(paths["b"], [1])
    assert count_decodes == ["a.mp4", "b.mp4", "c.mp4", "b.mp4"]
    assert len(cache) == 2 and cache.nbytes == 2 * one_video


def test_cache_skips_a_video_larger_than_the_budget(tmp_path, count_decodes):
    path = write_video(tmp_path / "clip.mp4")
    cache = VideoFrameCache(max_bytes=1000)
    with pytest.warns(UserWarning, match="not cached"):
        assert cache.num_frames(path) == VIDEO_FRAMES
    assert len(cache) == 0 and cache.nbytes == 0


def test_cache_decodes_again_when_the_file_changes(tmp_path, count_decodes):
    path = write_video(tmp_path / "clip.mp4")
    cache = VideoFrameCache()
    cache.num_frames(path)
    write_video(path, num_frames=5)
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    assert cache.num_frames(path) == 5
    assert len(cache) == 1 and count_decodes == ["clip.mp4", "clip.mp4"]


@pytest.mark.parametrize(
    ("shape", "max_side", "expected"),
    [
        pytest.param((2, 48, 64), 16, (2, 12, 16), id="landscape-gray"),
        pytest.param((2, 64, 48, 3), 16, (2, 16, 12, 3), id="portrait-rgb"),
        pytest.param((1, 1080, 1920), 256, (1, 144, 256), id="1080p"),
        pytest.param((1, 3, 400), 20, (1, 1, 20), id="thin-side-kept-at-one"),
    ],
)
def test_downscale_keeps_the_aspect_ratio(shape, max_side, expected):
    assert downscale_frames(np.zeros(shape, np.uint8), max_side).shape == expected


def test_downscale_averages_areas_and_leaves_small_frames_alone():
    frames = np.zeros((1, 4, 8), np.uint8)
    frames[0, :, 4:] = 200  # left half dark, right half bright: a 2x shrink averages 2x2 blocks
    small = downscale_frames(frames, 4)
    np.testing.assert_array_equal(small[0], [[0, 0, 200, 200], [0, 0, 200, 200]])
    checker = np.indices((1, 4, 8)).sum(axis=0) % 2 * 200  # alternating 0/200: every 2x2 block averages to 100
    np.testing.assert_array_equal(downscale_frames(checker.astype(np.uint8), 4), np.full((1, 2, 4), 100))
    assert downscale_frames(frames, 8) is frames


def test_downscale_refuses_frames_that_are_not_uint8():
    with pytest.raises(TypeError, match="uint16"):
        downscale_frames(np.zeros((1, 64, 64), np.uint16), 16)


def test_cache_with_max_side_stores_downscaled_frames(tmp_path, count_decodes):
    path = write_video(tmp_path / "clip.mp4")
    cache = VideoFrameCache(max_side=32)
    frames = cache.get_frames(path, [0, 5])
    expected = downscale_frames(read_video(path), 32)[[0, 5]]
    assert frames.shape == (2, 24, 32)
    np.testing.assert_array_equal(frames, expected)
    assert cache.nbytes == VIDEO_FRAMES * 24 * 32 and count_decodes.count("clip.mp4") == 1
    clone = pickle.loads(pickle.dumps(cache))
    assert clone.max_side == 32 and len(clone) == 0


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        pytest.param({"max_side": 0}, ValueError, id="zero"),
        pytest.param({"max_side": 2.5}, TypeError, id="float"),
        pytest.param({"max_side": True}, TypeError, id="bool"),
    ],
)
def test_cache_rejects_a_bad_max_side(kwargs, error):
    with pytest.raises(error, match="max_side"):
        VideoFrameCache(**kwargs)


def test_cache_serves_dicom_cines():
    cache = VideoFrameCache(color="rgb")
    path = get_testdata_file("examples_ybr_color.dcm")
    assert cache.num_frames(path) == 30
    expected = read_dicom(path)[0][[29, 0]]
    np.testing.assert_array_equal(cache.get_frames(path, [29, 0]), expected)


def test_cache_serves_frame_folders_in_natural_order(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    for number in (10, 2, 1):
        save_pil(folder / f"frame{number}.png", np.full((6, 9), number, np.uint8))
    (folder / "notes.txt").write_text("ignored")
    cache = VideoFrameCache()
    assert cache.num_frames(folder) == 3
    np.testing.assert_array_equal(cache.get_frames(folder, [0, 1, 2])[:, 0, 0], [1, 2, 10])


FRAME_SOURCE_ERRORS = {
    "empty_folder": (lambda p: frame_folder(p / "frames", []), "no frame images"),
    "folder_with_mismatched_frames": (
        lambda p: frame_folder(p / "f", [GRAY, GRAY[:, :5]]),
        r"frame shape \(30, 5\) differs from \(30, 50\)",
    ),
    "unsupported_file": (lambda p: write_file(p / "a.txt", b"x"), "not a frame source"),
    "missing": (lambda p: p / "missing.mp4", "file not found"),
    "corrupt_video": (lambda p: _truncated(write_video(p / "clip.mp4"), 0.5), "clip.mp4"),
}


@pytest.mark.parametrize("case", FRAME_SOURCE_ERRORS.values(), ids=FRAME_SOURCE_ERRORS.keys())
def test_cache_rejects_bad_sources_with_input_error(tmp_path, case):
    make, problem = case
    with pytest.raises(InputError, match=problem):
        VideoFrameCache().num_frames(make(tmp_path))


def test_cache_index_errors_name_file_and_frame_count(tmp_path):
    path = write_video(tmp_path / "clip.mp4")
    cache = VideoFrameCache()
    with pytest.raises(IndexError, match=rf"clip\.mp4: frame index {VIDEO_FRAMES} .* has {VIDEO_FRAMES} frames"):
        cache.get_frames(path, [0, VIDEO_FRAMES])
    with pytest.raises(IndexError, match="frame index -1"):
        cache.get_frames(path, [-1])
    with pytest.raises(TypeError, match="ints"):
        cache.get_frames(path, [0.5])


def test_cache_pickles_empty_with_its_settings(tmp_path):
    cache = VideoFrameCache(max_bytes=10**7, color="rgb")
    cache.num_frames(write_video(tmp_path / "clip.mp4"))
    clone = pickle.loads(pickle.dumps(cache))
    assert len(cache) == 1
    assert (clone.max_bytes, clone.color, len(clone), clone.nbytes) == (10**7, "rgb", 0, 0)
    cache.clear()
    assert (len(cache), cache.nbytes, cache.hits, cache.misses) == (0, 0, 0, 0)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [({"max_bytes": 0}, ValueError), ({"max_bytes": 1.5}, TypeError), ({"color": "bgr"}, ValueError)],
    ids=["zero_budget", "float_budget", "bad_color"],
)
def test_cache_validates_arguments(kwargs, error):
    with pytest.raises(error):
        VideoFrameCache(**kwargs)


def test_module_exports_and_torch_conversion_are_consistent(tmp_path):
    assert set(readers.__all__) >= {"read_image_array", "read_mask", "read_dicom", "read_video", "VideoFrameCache"}
    image = LoadImage(reader=UltrasoundImageReader(), image_only=True)(save_pil(tmp_path / "a.png", GRAY))
    assert image.dtype == torch.float32 and tuple(image.shape) == GRAY.shape
