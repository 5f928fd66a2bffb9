# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""The bad-input suite: every way a user's files, datalists, configs and folders can be wrong (issue 8).

Each case goes through the entry point where a user meets it: the readers (as functions and through
``LoadImaged``), the datalist builder and loader, the input-check and intensity transforms, the prediction writer,
the shipped bundles' configs, and the ``usseg`` command. A case asserts either a clear error (its type, and a
message that names the file or key and the problem) or a documented recovery (the recovered values, computed
here independently). Builders, writers and the command must leave no partial output: no ``*.tmp`` file, and the
target absent after a failure, or unchanged when it existed before.

All data are made in ``tmp_path``; nothing here reads ``/work/shared/data``.
"""

from __future__ import annotations

import errno
import inspect
import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import av
import monai.bundle
import monai.bundle.scripts
import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow, create_workflow
from monai.data import DataLoader, Dataset, MetaTensor
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged
from PIL import Image
from pydicom.dataset import Dataset as DicomDataset
from pydicom.dataset import FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import get_decoder
from pydicom.uid import UID, ExplicitVRLittleEndian, JPEGLossless, generate_uid

import usseg.bundles
from usseg.cli.main import RUNNER_OPTIONS, bundle_config_files, check_override_keys, main
from usseg.data.datalist import build_datalist, load_datalist
from usseg.data.readers import (
    UltrasoundDicomReader,
    UltrasoundImageReader,
    VideoReader,
    read_dicom,
    read_image_array,
    read_mask,
    read_video,
)
from usseg.data.splits import split_items
from usseg.data.writers import SaveSegmentationd
from usseg.engines import SemiSupervisedTrainer
from usseg.errors import DatalistError, InputError
from usseg.transforms import (
    CheckFinited,
    CheckMaskMatchesImaged,
    RandAcousticShadow,
    RandDepthAttenuation,
    RandSpeckleNoise,
    RandSpeckleNoised,
)
from usseg.transforms.geometry_checks import CheckSameGeometryd

SHIPPED = "breast_us_supervised_segmentation"
SHIPPED_ROOT = Path(usseg.bundles.__file__).resolve().parent.parent / "bundles" / SHIPPED
IMAGE_SHAPE = (24, 32)  # (H, W), not square: a transposed read cannot pass unnoticed
NUM_IMAGES = 8  # generic data set: 2 test, 1 validation, a training pool of 5 with the default fractions
POOL_SIZE = 5
US_MULTIFRAME_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.3.1"
MPEG2_MAIN_PROFILE = UID("1.2.840.10008.1.2.4.100")  # DICOM cines are stored this way; pydicom has no decoder
UNICODE_DIR = "données écho 1"  # a space and non-ASCII letters in every path component we create


@pytest.fixture(autouse=True)
def _no_bundles_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("USSEG_BUNDLES", raising=False)


# ---------------------------------------------------------------------------------------------------------------
# helpers: files made from first principles
# ---------------------------------------------------------------------------------------------------------------


def random_gray(seed: int, shape: tuple[int, int] = IMAGE_SHAPE) -> np.ndarray:
    """A distinct uint8 image per seed, so deduplication never merges two test images."""
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def box_mask(shape: tuple[int, int] = IMAGE_SHAPE, top: int = 4, left: int = 6, size: int = 8) -> np.ndarray:
    mask = np.zeros(shape, dtype=np.uint8)
    mask[top : top + size, left : left + size] = 255
    return mask


def save_image(path: Path, array: np.ndarray, **save_kwargs: Any) -> Path:
    """Save with PIL; the format follows the suffix and the mode the dtype (uint16 -> I;16, float32 -> F)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **save_kwargs)
    return path


def write_bytes(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def truncate(path: Path, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def write_dicom(
    path: Path,
    frames: np.ndarray | None,
    transfer_syntax: UID = ExplicitVRLittleEndian,
    pixel_data: bytes | None = None,
    region_spacing_cm: tuple[float, float] | None = None,
) -> Path:
    """An ultrasound DICOM from uint8 ``(F, H, W)`` frames; ``frames=None`` and no ``pixel_data`` omit PixelData.

    ``pixel_data`` replaces the encoded frames (for damaged or compressed payloads); ``region_spacing_cm`` adds a
    calibrated 2D ultrasound region ``(row, column)`` in cm, as scanners write it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    ds = DicomDataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    ds.file_meta.MediaStorageSOPClassUID = US_MULTIFRAME_SOP_CLASS
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = US_MULTIFRAME_SOP_CLASS
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "US"
    ds.PatientID = "P001"
    shape = (1, *IMAGE_SHAPE) if frames is None else frames.shape
    if shape[0] > 1:
        ds.NumberOfFrames = shape[0]
    ds.Rows, ds.Columns = shape[1], shape[2]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    if region_spacing_cm is not None:
        region = DicomDataset()
        region.RegionSpatialFormat = 1
        region.RegionLocationMinX0, region.RegionLocationMinY0 = 0, 0
        region.RegionLocationMaxX1, region.RegionLocationMaxY1 = shape[2] - 1, shape[1] - 1
        region.PhysicalUnitsXDirection = region.PhysicalUnitsYDirection = 3  # cm
        region.PhysicalDeltaY, region.PhysicalDeltaX = region_spacing_cm
        ds.SequenceOfUltrasoundRegions = [region]
    if pixel_data is not None:
        ds.PixelData = pixel_data
        if transfer_syntax.is_compressed:
            ds["PixelData"].VR = "OB"
            ds["PixelData"].is_undefined_length = True
    elif frames is not None:
        ds.PixelData = frames.astype(np.uint8).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def video_frames(num_frames: int = 6, shape: tuple[int, int] = IMAGE_SHAPE) -> np.ndarray:
    """Gray ``(F, H, W)`` frames of a bright square moving right, on a dark background."""
    frames = np.full((num_frames, *shape), 30, dtype=np.uint8)
    for index in range(num_frames):
        frames[index, 6:14, 2 + 3 * index : 10 + 3 * index] = 220
    return frames


def write_video(path: Path, frames: np.ndarray | None = None) -> Path:
    frames = video_frames() if frames is None else frames
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(os.fspath(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            rgb = np.repeat(frame[..., None], 3, axis=-1)
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def make_generic(root: Path, num_images: int = NUM_IMAGES, second_modality: bool = False) -> Path:
    """A usseg generic data set: ``images/case_K.png`` with {0, 255} masks, optionally ``images_m2/``."""
    for index in range(num_images):
        name = f"case_{index}.png"
        save_image(root / "images" / name, random_gray(index))
        save_image(root / "masks" / name, box_mask(top=index % 10, left=index % 20))
        if second_modality:
            save_image(root / "images_m2" / name, random_gray(1000 + index))
    return root


def temporary_files(folder: Path) -> list[Path]:
    """Left-over temporary files of an interrupted atomic write (``.<name>.XXXX.tmp``)."""
    if not folder.exists():
        return []
    return [Path(top, name) for top, _, names in os.walk(folder) for name in names if name.endswith(".tmp")]


def error_chain(error: BaseException) -> Iterator[BaseException]:
    """The error and its causes: MONAI's Compose and config parser wrap usseg's errors in RuntimeError."""
    seen: BaseException | None = error
    while seen is not None:
        yield seen
        seen = seen.__cause__ or seen.__context__


def find_in_chain(error: BaseException, kind: type[BaseException]) -> BaseException:
    found = [link for link in error_chain(error) if isinstance(link, kind)]
    assert found, f"no {kind.__name__} in the chain of {error!r}"
    return found[0]


def make_readonly(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """Make ``os.access`` report ``folder`` as unwritable, as it is for a non-root user on a read-only mount.

    CI runs as root, which ignores permission bits, so ``chmod`` alone would test nothing there.
    """
    real_access = os.access
    target = os.path.abspath(folder)

    def access(path: Any, mode: int, *args: Any, **kwargs: Any) -> bool:
        if os.path.abspath(os.fspath(path)) == target and mode & os.W_OK:
            return False
        return real_access(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", access)


def fill_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every fsync fail with ENOSPC, as on a full disk: the atomic writer must clean up and re-raise."""

    def fsync(_: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", fsync)


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int | str | None, str]:
    """``usseg ARGV`` in process: ``(exit code, the error message after "usseg COMMAND: error: ")``.

    Progress bars share stderr with the error, so the message is cut from the error prefix on.
    """
    try:
        code: int | str | None = main(argv)
    except SystemExit as exit_info:
        code = exit_info.code
    stderr = capsys.readouterr().err
    prefix = f"usseg {argv[0]}: error: "
    return code, stderr[stderr.index(prefix) + len(prefix) :] if prefix in stderr else stderr


# ---------------------------------------------------------------------------------------------------------------
# 1. readers: the functions and LoadImaged with the usseg readers
# ---------------------------------------------------------------------------------------------------------------

READ_FUNCTIONS: dict[str, Callable[[Path], Any]] = {
    "image": read_image_array,
    "mask": read_mask,
    "dicom": read_dicom,
    "video": read_video,
}
MONAI_READERS: dict[str, Callable[[], Any]] = {
    "image": UltrasoundImageReader,
    "mask": lambda: UltrasoundImageReader(mask_mode="binary"),
    "dicom": UltrasoundDicomReader,
    "video": VideoReader,
}


def _load(kind: str, path: Path) -> Any:
    # dtype=None keeps what the reader returns (uint8), so recovered values are compared exactly
    return LoadImaged(keys="x", reader=MONAI_READERS[kind](), image_only=True, dtype=None)({"x": str(path)})["x"]


def _read(kind: str, path: Path, via: str) -> Any:
    return READ_FUNCTIONS[kind](path) if via == "function" else _load(kind, path)


def _undecodable_jpeg_lossless(path: Path) -> Path:
    if get_decoder(JPEGLossless).is_available:
        pytest.skip("a JPEG Lossless decoder plugin is installed here, so the file would decode")
    return write_dicom(path, None, JPEGLossless, encapsulate([b"\xff\xd8" + bytes(30)]))


def _rgba(alpha: np.ndarray) -> np.ndarray:
    gray = random_gray(1)
    return np.stack([gray, np.flipud(gray), gray // 2, alpha], axis=-1)


def _lossy_jpeg_mask(path: Path) -> Path:
    return save_image(path, box_mask(), quality=75)


class ReadCase(NamedTuple):
    kind: str  # which reader: image, mask, dicom or video
    make: Callable[[Path], Path]  # tmp folder -> the bad file
    problem: str  # regex the message must contain after the file name


READ_ERRORS: dict[str, ReadCase] = {
    "truncated_png": ReadCase(
        "image", lambda d: truncate(save_image(d / "scan.png", random_gray(0, (96, 96)))), "truncated or damaged"
    ),
    "truncated_png_mask": ReadCase(
        "mask", lambda d: truncate(save_image(d / "scan_mask.png", random_gray(0, (96, 96)) // 128 * 255)), "truncated"
    ),
    "zero_byte_png": ReadCase("image", lambda d: write_bytes(d / "scan.png", b""), r"empty \(0 bytes\)"),
    "zero_byte_mask": ReadCase("mask", lambda d: write_bytes(d / "scan_mask.png", b""), r"empty \(0 bytes\)"),
    "zero_byte_dicom": ReadCase("dicom", lambda d: write_bytes(d / "cine.dcm", b""), r"empty \(0 bytes\)"),
    "zero_byte_video": ReadCase("video", lambda d: write_bytes(d / "cine.mp4", b""), r"empty \(0 bytes\)"),
    "text_with_png_suffix": ReadCase(
        "image", lambda d: write_bytes(d / "scan.png", b"<html>not found</html>"), "not a readable image"
    ),
    "text_with_jpg_suffix": ReadCase("image", lambda d: write_bytes(d / "scan.jpg", b"hello"), "not a readable image"),
    "text_with_mask_suffix": ReadCase("mask", lambda d: write_bytes(d / "m.png", b"hello"), "not a readable image"),
    "text_with_dcm_suffix": ReadCase("dicom", lambda d: write_bytes(d / "cine.dcm", b"hello" * 40), "not a DICOM"),
    "text_with_mp4_suffix": ReadCase(
        "video", lambda d: write_bytes(d / "cine.mp4", b"hello" * 40), "cannot open the video"
    ),
    "rgba_with_transparency": ReadCase(
        "image",
        lambda d: save_image(d / "scan.png", _rgba(np.where(random_gray(2) > 30, 255, 0).astype(np.uint8))),
        "real transparency",
    ),
    "float_tiff_with_nan": ReadCase(
        "image",
        lambda d: save_image(d / "scan.tif", np.where(random_gray(3) > 200, np.nan, 0.5).astype(np.float32)),
        "NaN or infinite",
    ),
    "float_tiff_with_inf": ReadCase(
        "image",
        lambda d: save_image(d / "scan.tif", np.where(random_gray(3) > 200, np.inf, 0.5).astype(np.float32)),
        "NaN or infinite",
    ),
    "mask_with_gray_values": ReadCase(
        "mask",
        lambda d: save_image(d / "m.png", np.where(random_gray(4) > 250, 128, box_mask()).astype(np.uint8)),
        "binary mask holds values 128",
    ),
    "mask_mixing_1_and_255": ReadCase(
        "mask",
        lambda d: save_image(d / "m.png", np.minimum(box_mask(), 1) + box_mask(top=16)),
        "mixes the values 1 and 255",
    ),
    "sixteen_bit_mask_0_65535": ReadCase(
        "mask",
        lambda d: save_image(d / "m.png", (box_mask() > 0).astype(np.uint16) * 65535),
        "binary mask holds values 65535",
    ),
    "lossy_jpeg_mask": ReadCase("mask", lambda d: _lossy_jpeg_mask(d / "m.jpg"), "binary mask holds values"),
    "coloured_mask": ReadCase(
        "mask",
        lambda d: save_image(d / "m.png", np.stack([box_mask(), box_mask(top=10), box_mask()], -1)),
        "colour mask",
    ),
    "dicom_without_pixel_data": ReadCase("dicom", lambda d: write_dicom(d / "cine.dcm", None), "no pixel data"),
    "dicom_mpeg2_transfer_syntax": ReadCase(
        "dicom",
        lambda d: write_dicom(d / "cine.dcm", None, MPEG2_MAIN_PROFILE, encapsulate([bytes(64)])),
        r"MPEG2 Main Profile / Main Level \(1\.2\.840\.10008\.1\.2\.4\.100\), which pydicom cannot decode",
    ),
    "dicom_jpeg_lossless_without_decoder": ReadCase(
        "dicom", lambda d: _undecodable_jpeg_lossless(d / "cine.dcm"), "no installed decoder handles it"
    ),
    "dicom_short_pixel_data": ReadCase(
        "dicom",
        lambda d: write_dicom(d / "cine.dcm", None, pixel_data=bytes(50)),
        r"cannot decode the Explicit VR Little Endian pixel data .*less than expected \(50 vs 768 bytes\)",
    ),
    "truncated_video": ReadCase(
        "video",
        lambda d: truncate(write_video(d / "cine.mp4"), 0.5),
        "cannot open the video|holds no video stream|video decoding failed|no decodable video frame",
    ),
    "video_header_then_garbage": ReadCase(
        "video",
        lambda d: write_bytes(d / "cine.mp4", write_video(d / "ok.mp4").read_bytes()[:48] + bytes(range(256)) * 8),
        "cannot open the video|holds no video stream|video decoding failed|no decodable video frame",
    ),
}


@pytest.mark.parametrize("via", ["function", "LoadImaged"])
@pytest.mark.parametrize("case", READ_ERRORS.values(), ids=READ_ERRORS.keys())
def test_bad_file_raises_input_error_naming_it(case: ReadCase, via: str, tmp_path: Path) -> None:
    path = case.make(tmp_path)
    with pytest.raises(InputError) as info:
        _read(case.kind, path, via)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    assert re.search(case.problem, message), message
    assert info.value.path == str(path)


def test_mask_of_another_size_names_both_shapes(tmp_path: Path) -> None:
    path = save_image(tmp_path / "m.png", box_mask(shape=(20, 32)))
    with pytest.raises(InputError) as info:
        read_mask(path, expected_shape=IMAGE_SHAPE)
    assert str(info.value) == (f"{path}: mask shape (20, 32) (H, W) does not match the image shape {IMAGE_SHAPE}.")


def test_label_mask_with_a_value_beyond_num_classes(tmp_path: Path) -> None:
    labels = (box_mask() > 0).astype(np.uint8) * 2
    labels[0, 0] = 3
    path = save_image(tmp_path / "labels.png", labels)
    with pytest.raises(InputError, match=r"values 3 outside the accepted labels 0\.\.2 \(num_classes=3\)"):
        read_mask(path, mode="labels", num_classes=3)
    with pytest.raises(InputError, match="values 3 outside"):
        LoadImaged("label", reader=UltrasoundImageReader(mask_mode="labels", num_classes=3))({"label": str(path)})


# documented recoveries: 16-bit intensities are divided by 257; an opaque alpha channel is dropped

SIXTEEN_BIT = np.array([[0, 128, 129, 257], [385, 386, 40000, 65535]], dtype=np.uint16)


def _luma(rgb: np.ndarray) -> np.ndarray:
    """BT.601 luma rounded half up, the conversion the readers document."""
    red, green, blue = (rgb[..., channel].astype(np.int64) for channel in range(3))
    weighted = red * 299 + green * 587 + blue * 114
    return np.floor(weighted / 1000 + 0.5).astype(np.uint8)


class Recovery(NamedTuple):
    make: Callable[[Path], Path]
    read: Callable[[Path], np.ndarray]
    expected: Callable[[], np.ndarray]


OPAQUE_RGBA = _rgba(np.full(IMAGE_SHAPE, 255, dtype=np.uint8))
RECOVERIES: dict[str, Recovery] = {
    "sixteen_bit_png_divided_by_257": Recovery(
        lambda d: save_image(d / "scan.png", SIXTEEN_BIT),
        read_image_array,
        lambda: np.rint(SIXTEEN_BIT / 257.0).astype(np.uint8),  # 128 / 257 < 0.5 < 129 / 257
    ),
    "sixteen_bit_png_through_loadimaged": Recovery(
        lambda d: save_image(d / "scan.png", SIXTEEN_BIT),
        lambda p: np.asarray(_load("image", p)),
        lambda: np.rint(SIXTEEN_BIT / 257.0).astype(np.uint8),
    ),
    "opaque_rgba_keeps_rgb": Recovery(
        lambda d: save_image(d / "scan.png", OPAQUE_RGBA),
        lambda p: read_image_array(p, "rgb"),
        lambda: OPAQUE_RGBA[..., :3],
    ),
    "opaque_rgba_to_gray": Recovery(
        lambda d: save_image(d / "scan.png", OPAQUE_RGBA), read_image_array, lambda: _luma(OPAQUE_RGBA[..., :3])
    ),
    "opaque_gray_alpha": Recovery(
        lambda d: save_image(d / "scan.png", np.stack([random_gray(5), np.full(IMAGE_SHAPE, 255, np.uint8)], -1)),
        read_image_array,
        lambda: random_gray(5),
    ),
    "opaque_rgba_busi_mask": Recovery(
        lambda d: save_image(d / "m.png", np.stack([box_mask()] * 3 + [np.full(IMAGE_SHAPE, 255, np.uint8)], -1)),
        read_mask,
        lambda: (box_mask() > 0).astype(np.uint8),
    ),
    "sixteen_bit_mask_0_1": Recovery(
        lambda d: save_image(d / "m.png", (box_mask() > 0).astype(np.uint16)),
        read_mask,
        lambda: (box_mask() > 0).astype(np.uint8),
    ),
}


@pytest.mark.parametrize("case", RECOVERIES.values(), ids=RECOVERIES.keys())
def test_documented_recovery_gives_the_expected_values(case: Recovery, tmp_path: Path) -> None:
    out = case.read(case.make(tmp_path))
    expected = case.expected()
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, expected)


def test_sixteen_bit_file_with_8_bit_values_recovers_with_a_warning(tmp_path: Path) -> None:
    path = save_image(tmp_path / "scan.png", np.array([[0, 200], [255, 10]], dtype=np.uint16))
    with pytest.warns(UserWarning, match=re.escape(f"{path}: 16-bit image whose values all fit in 8 bits")):
        out = read_image_array(path)
    np.testing.assert_array_equal(out, [[0, 1], [1, 0]])


# ---------------------------------------------------------------------------------------------------------------
# 2. transforms: NaN / Inf, mask size, multi-modal geometry
# ---------------------------------------------------------------------------------------------------------------

NON_FINITE = {"nan": float("nan"), "inf": float("inf"), "minus_inf": float("-inf")}


def _image_with(value: float, count: int, source: str | None) -> torch.Tensor:
    values = torch.full((1, *IMAGE_SHAPE), 0.5)
    values.view(-1)[torch.arange(count) * 7] = value
    return values if source is None else MetaTensor(values, meta={"filename_or_obj": source})


@pytest.mark.parametrize("value", NON_FINITE.values(), ids=NON_FINITE.keys())
def test_check_finite_names_the_file_and_counts_the_bad_pixels(value: float) -> None:
    image = _image_with(value, 5, "/data/case 1.nii.gz")
    with pytest.raises(InputError) as info:
        CheckFinited(keys="image")({"image": image})
    assert str(info.value) == "/data/case 1.nii.gz: contains 5 NaN or Inf values."


def test_check_finite_without_a_source_file_names_the_key() -> None:
    with pytest.raises(InputError, match=r"^image_m2: contains 3 NaN or Inf values\.$"):
        CheckFinited(keys=["image", "image_m2"])(
            {"image": _image_with(0.5, 1, None), "image_m2": _image_with(np.nan, 3, None)}
        )


def test_check_finite_lets_finite_and_integer_images_through() -> None:
    data = {"image": _image_with(0.25, 4, "a.png"), "label": torch.ones((1, *IMAGE_SHAPE), dtype=torch.uint8)}
    out = CheckFinited(keys=["image", "label"])(data)
    assert out["image"] is data["image"] and out["label"] is data["label"]


def test_nan_in_a_loaded_nifti_is_reported_with_its_file(tmp_path: Path) -> None:
    values = np.full((16, 12), 100.0, dtype=np.float32)
    values[3, 4] = np.nan
    values[8, 2] = np.inf
    path = tmp_path / UNICODE_DIR / "scan 1.nii.gz"
    path.parent.mkdir()
    nib.save(nib.Nifti1Image(values, np.eye(4)), path)
    load = Compose([LoadImaged("image", reader="NibabelReader", image_only=True), EnsureChannelFirstd("image")])
    with pytest.raises(InputError) as info:
        CheckFinited(keys="image")(load({"image": str(path)}))
    assert str(info.value) == f"{path}: contains 2 NaN or Inf values."


INTENSITY_TRANSFORMS = {
    "speckle": lambda: RandSpeckleNoise(prob=1.0),
    "depth_attenuation": lambda: RandDepthAttenuation(prob=1.0),
    "acoustic_shadow": lambda: RandAcousticShadow(prob=1.0),
}


@pytest.mark.parametrize("make", INTENSITY_TRANSFORMS.values(), ids=INTENSITY_TRANSFORMS.keys())
@pytest.mark.parametrize("value", NON_FINITE.values(), ids=NON_FINITE.keys())
def test_intensity_transform_given_non_finite_values_names_the_file(make: Callable[[], Any], value: float) -> None:
    transform = make()
    transform.set_random_state(0)
    with pytest.raises(ValueError, match=re.escape("/data/scan.nii.gz")):
        transform(_image_with(value, 3, "/data/scan.nii.gz"))


def test_check_finite_before_an_intensity_transform_stops_nan_with_the_file_named() -> None:
    pipeline = Compose([CheckFinited(keys="image"), RandSpeckleNoised(keys="image", prob=1.0)]).set_random_state(0)
    with pytest.raises(RuntimeError) as info:
        pipeline({"image": _image_with(np.nan, 2, "/data/scan.nii.gz")})
    assert str(find_in_chain(info.value, InputError)) == "/data/scan.nii.gz: contains 2 NaN or Inf values."


def _load_pair(image: Path, label: Path) -> dict[str, Any]:
    load = Compose(
        [
            LoadImaged("image", reader=UltrasoundImageReader(), image_only=True),
            LoadImaged("label", reader=UltrasoundImageReader(mask_mode="binary"), image_only=True),
            EnsureChannelFirstd(["image", "label"]),
        ]
    )
    return load({"image": str(image), "label": str(label)})


def test_mask_of_another_size_after_loading_names_both_files_and_shapes(tmp_path: Path) -> None:
    image = save_image(tmp_path / "scan 1.png", random_gray(0))
    label = save_image(tmp_path / "scan 1_mask.png", box_mask(shape=(24, 30)))
    with pytest.raises(InputError) as info:
        CheckMaskMatchesImaged()(_load_pair(image, label))
    assert str(info.value) == f"{label}: mask shape (24, 30) differs from image shape (24, 32) ({image})."


# CheckSameGeometryd: a multi-modal pair must share the pixel grid


def _meta_image(shape: tuple[int, ...], spacing: tuple[float, ...], source: str) -> MetaTensor:
    affine = torch.diag(torch.tensor([*spacing, 1.0], dtype=torch.float64))
    return MetaTensor(torch.zeros((1, *shape)), affine=affine, meta={"filename_or_obj": source})


class GeometryCase(NamedTuple):
    first: Any
    second: Any
    problem: str | None  # None: the pair is accepted


GEOMETRY_CASES: dict[str, GeometryCase] = {
    "same_grid": GeometryCase(
        _meta_image((24, 32), (0.1, 0.1), "/d/b.png"), _meta_image((24, 32), (0.1, 0.1), "/d/e.png"), None
    ),
    "spacing_within_tolerance": GeometryCase(
        _meta_image((24, 32), (0.1, 0.1), "/d/b.png"), _meta_image((24, 32), (0.100001, 0.1), "/d/e.png"), None
    ),
    "plain_arrays_same_shape": GeometryCase(np.zeros((1, 24, 32)), torch.zeros((3, 24, 32)), None),
    "other_shape": GeometryCase(
        _meta_image((24, 32), (0.1, 0.1), "/d/b.png"),
        _meta_image((24, 30), (0.1, 0.1), "/d/e.png"),
        "/d/e.png: spatial shape differs from its pair: 'image_m2' has spatial shape (24, 30) and spacing "
        "(0.1, 0.1), but 'image' (/d/b.png) has spatial shape (24, 32) and spacing (0.1, 0.1).",
    ),
    "other_spacing": GeometryCase(
        _meta_image((24, 32), (0.1, 0.1), "/d/b.png"),
        _meta_image((24, 32), (0.1, 0.12), "/d/e.png"),
        "/d/e.png: pixel spacing differs from its pair: 'image_m2' has spatial shape (24, 32) and spacing "
        "(0.1, 0.12), but 'image' (/d/b.png) has spatial shape (24, 32) and spacing (0.1, 0.1).",
    ),
    "other_shape_and_spacing": GeometryCase(
        _meta_image((24, 32), (0.1, 0.1), "/d/b.png"),
        _meta_image((12, 16), (0.2, 0.2), "/d/e.png"),
        "/d/e.png: spatial shape and pixel spacing differ",
    ),
    "frame_stack_against_still": GeometryCase(
        _meta_image((24, 32), (0.1, 0.1), "/d/b.png"),
        _meta_image((5, 24, 32), (1.0, 0.1, 0.1), "/d/cine.dcm"),
        "/d/cine.dcm: spatial shape and pixel spacing differ from its pair: 'image_m2' has spatial shape (5, 24, 32)",
    ),
    "plain_array_other_shape_named_by_key": GeometryCase(
        np.zeros((1, 24, 32)),
        np.zeros((1, 32, 24)),
        "image_m2: spatial shape differs from its pair: 'image_m2' has spatial shape (32, 24) and spacing unknown, "
        "but 'image' (image) has spatial shape (24, 32)",
    ),
}


@pytest.mark.parametrize("case", GEOMETRY_CASES.values(), ids=GEOMETRY_CASES.keys())
def test_check_same_geometry(case: GeometryCase) -> None:
    data = {"image": case.first, "image_m2": case.second, "label": "untouched"}
    check = CheckSameGeometryd(keys=["image", "image_m2"])
    if case.problem is None:
        out = check(data)
        assert out is not data and out.keys() == data.keys() and all(out[key] is data[key] for key in data)
        return
    with pytest.raises(InputError) as info:
        check(data)
    message = str(info.value)
    assert message.startswith(case.problem), message
    assert message.endswith("re-export them together instead of resizing one.")


def test_check_same_geometry_compares_every_key_with_the_first() -> None:
    first = _meta_image((24, 32), (0.1, 0.1), "/d/b.png")
    data = {"a": first, "b": first.clone(), "c": _meta_image((24, 31), (0.1, 0.1), "/d/c.png")}
    with pytest.raises(InputError, match=r"^/d/c\.png: spatial shape differs from its pair: 'c' .* 'a' \(/d/b\.png\)"):
        CheckSameGeometryd(keys=["a", "b", "c"])(data)


def test_check_same_geometry_missing_keys() -> None:
    image = _meta_image((24, 32), (0.1, 0.1), "/d/b.png")
    with pytest.raises(KeyError, match="image_m2"):
        CheckSameGeometryd(keys=["image", "image_m2"])({"image": image})
    out = CheckSameGeometryd(keys=["image", "image_m2"], allow_missing_keys=True)({"image": image})
    assert out["image"] is image


def test_check_same_geometry_rejects_an_unloaded_path() -> None:
    with pytest.raises(TypeError, match=r"key 'image_m2' must hold a loaded channel-first image .* got str"):
        CheckSameGeometryd(keys=["image", "image_m2"])({"image": np.zeros((1, 4, 4)), "image_m2": "b.png"})


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        pytest.param(
            {"keys": "image"}, ValueError, "needs at least two keys to compare, got keys='image'", id="one_key"
        ),
        pytest.param({"keys": ["a", "b"], "spacing_rtol": -0.1}, ValueError, "got -0.1", id="negative_rtol"),
        pytest.param({"keys": ["a", "b"], "spacing_rtol": float("nan")}, ValueError, "got nan", id="nan_rtol"),
        pytest.param({"keys": ["a", "b"], "spacing_rtol": "0.1"}, TypeError, "got '0.1'", id="string_rtol"),
    ],
)
def test_check_same_geometry_validates_its_arguments(kwargs: dict, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=re.escape(message)):
        CheckSameGeometryd(**kwargs)


def test_multimodal_png_pair_of_different_sizes_after_loading(tmp_path: Path) -> None:
    bmode = save_image(tmp_path / UNICODE_DIR / "case 1.png", random_gray(0))
    strain = save_image(tmp_path / UNICODE_DIR / "case 1 élasto.png", random_gray(1, (24, 30)))
    load = Compose(
        [
            LoadImaged(["image", "image_m2"], reader=UltrasoundImageReader(), image_only=True),
            EnsureChannelFirstd(["image", "image_m2"]),
        ]
    )
    with pytest.raises(InputError) as info:
        CheckSameGeometryd(keys=["image", "image_m2"])(load({"image": str(bmode), "image_m2": str(strain)}))
    message = str(info.value)
    assert message.startswith(f"{strain}: spatial shape differs from its pair")
    assert f"({bmode}) has spatial shape (24, 32)" in message and "spatial shape (24, 30)" in message


def test_multimodal_dicom_pair_with_different_calibration(tmp_path: Path) -> None:
    frames = random_gray(0)[None]
    bmode = write_dicom(tmp_path / "bmode.dcm", frames, region_spacing_cm=(0.01, 0.01))
    doppler = write_dicom(tmp_path / "doppler.dcm", frames, region_spacing_cm=(0.015, 0.01))
    load = Compose(
        [
            LoadImaged(["image", "image_m2"], reader=UltrasoundDicomReader(squeeze_single_frame=True), image_only=True),
            EnsureChannelFirstd(["image", "image_m2"]),
        ]
    )
    with pytest.raises(InputError) as info:
        CheckSameGeometryd(keys=["image", "image_m2"])(load({"image": str(bmode), "image_m2": str(doppler)}))
    # 0.015 cm = 0.15 mm per row; both files and both spacings are named
    assert str(info.value).startswith(
        f"{doppler}: pixel spacing differs from its pair: 'image_m2' has spatial shape (24, 32) and spacing "
        f"(0.15, 0.1), but 'image' ({bmode}) has spatial shape (24, 32) and spacing (0.1, 0.1)."
    )


# ---------------------------------------------------------------------------------------------------------------
# 3. datalist builder and loader, splits, the semi-supervised trainer
# ---------------------------------------------------------------------------------------------------------------


class Breakage(NamedTuple):
    damage: Callable[[Path], Path]  # dataset root -> the file at fault
    error: type[Exception]
    problem: str


def _replace(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


GENERIC_BREAKAGES: dict[str, Breakage] = {
    "truncated_image": Breakage(lambda r: truncate(r / "images" / "case_3.png"), InputError, "truncated"),
    "zero_byte_image": Breakage(lambda r: _replace(r / "images" / "case_3.png", b""), InputError, "cannot be read"),
    "text_as_image": Breakage(
        lambda r: _replace(r / "images" / "case_3.png", b"hello"), InputError, "cannot be read as an image"
    ),
    "zero_byte_mask": Breakage(lambda r: _replace(r / "masks" / "case_3.png", b""), InputError, "empty"),
    "mask_with_gray_values": Breakage(
        lambda r: save_image(r / "masks" / "case_3.png", box_mask() // 2), InputError, "binary mask holds values 127"
    ),
    "mask_of_another_size": Breakage(
        lambda r: save_image(r / "masks" / "case_3.png", box_mask(shape=(24, 30))),
        InputError,
        r"mask shape \(24, 30\) \(H, W\) does not match the image shape \(24, 32\)",
    ),
    "second_modality_of_another_size": Breakage(
        lambda r: save_image(r / "images_m2" / "case_3.png", random_gray(3, (20, 32))),
        InputError,
        r"is \(20, 32\) \(H, W\) but its image .*case_3\.png is \(24, 32\)",
    ),
    "second_modality_missing": Breakage(
        lambda r: (r / "images_m2" / "case_3.png").unlink() or r / "images" / "case_3.png",
        DatalistError,
        "has no co-registered",
    ),
}
PREVIOUS_DATALIST = '{"labeled": [], "note": "an earlier datalist that a failed build must not touch"}\n'


@pytest.mark.parametrize("via", ["api", "cli"])
@pytest.mark.parametrize("case", GENERIC_BREAKAGES.values(), ids=GENERIC_BREAKAGES.keys())
def test_build_datalist_names_the_bad_file_and_writes_nothing(
    case: Breakage, via: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_generic(tmp_path / "data", second_modality=True)
    bad = case.damage(root)
    out_dir = tmp_path / "lists"
    output = out_dir / "datalist.json"
    if via == "api":
        write_bytes(output, PREVIOUS_DATALIST.encode())  # an earlier build must survive a failed one
        with pytest.raises(case.error) as info:
            build_datalist(root, "generic", output)
        message = str(info.value)
        assert message.startswith(f"{bad}: "), message
        assert output.read_text() == PREVIOUS_DATALIST
    else:
        code, message = run_cli(["prepare", "generic", str(root), "-o", str(output)], capsys)
        assert code == 2
        assert message.startswith(f"{bad}: "), message
        assert not output.exists()
    assert re.search(case.problem, message), message
    assert not (out_dir / "datalist_summary.json").exists()
    assert temporary_files(tmp_path) == []


def test_dicom_layout_with_a_file_without_pixels(tmp_path: Path) -> None:
    root = tmp_path / "dicoms"
    write_dicom(root / "p1" / "a.dcm", random_gray(0)[None])
    bad = write_dicom(root / "p2" / "b.dcm", None)
    with pytest.raises(InputError, match=re.escape(f"{bad}: no pixel data")):
        build_datalist(root, "dicom", tmp_path / "datalist.json", require_masks=False)
    assert not (tmp_path / "datalist.json").exists() and temporary_files(tmp_path) == []


def test_video_layout_with_an_undecodable_video(tmp_path: Path) -> None:
    root = tmp_path / "videos"
    write_video(root / "a.mp4")
    bad = write_bytes(root / "b.mp4", b"not a video" * 30)
    with pytest.raises(InputError, match=re.escape(f"{bad}: cannot be opened as a video")):
        build_datalist(root, "video", tmp_path / "datalist.json")
    assert not (tmp_path / "datalist.json").exists() and temporary_files(tmp_path) == []


EMPTY_FOLDERS: dict[str, tuple[str, Callable[[Path], None], str]] = {
    "generic_without_images_folder": ("generic", lambda r: None, "a 'generic' layout needs an images/ folder"),
    "generic_with_empty_images_folder": (
        "generic",
        lambda r: (r / "images").mkdir(),
        "no 'generic' files found; check the folder and the layout name",
    ),
    "busi_without_class_folders": ("busi", lambda r: None, "a 'busi' layout needs one sub-folder per class"),
    "dicom_without_dicom_files": ("dicom", lambda r: write_bytes(r / "notes.txt", b"x") and None, "no 'dicom' files"),
    "video_without_videos": ("video", lambda r: None, "no 'video' files found"),
}


@pytest.mark.parametrize("case", EMPTY_FOLDERS.values(), ids=EMPTY_FOLDERS.keys())
def test_build_datalist_on_an_empty_folder_names_the_folder(case: tuple, tmp_path: Path) -> None:
    layout, prepare, problem = case
    root = tmp_path / "empty data"
    root.mkdir()
    prepare(root)
    output = tmp_path / "datalist.json"
    with pytest.raises(DatalistError) as info:
        build_datalist(root, layout, output)
    assert str(info.value).startswith(f"{root}: {problem}"), str(info.value)
    assert not output.exists() and temporary_files(tmp_path) == []


@pytest.mark.parametrize(
    ("num_labeled", "problem"),
    [
        pytest.param(
            50,
            f"num_labeled: asked for 50 labeled items but only {POOL_SIZE} training items exist "
            "(after 2 test and 1 validation items).",
            id="count_above_pool",
        ),
        pytest.param(
            POOL_SIZE + 1,
            f"num_labeled: asked for {POOL_SIZE + 1} labeled items but only {POOL_SIZE} training items exist",
            id="one_more_than_pool",
        ),
        pytest.param(0, "num_labeled: must be at least 1 when given as a count, got 0.", id="zero"),
        pytest.param(1.5, "num_labeled: a fraction must lie in (0, 1], got 1.5.", id="fraction_above_1"),
    ],
)
def test_asking_for_more_labeled_items_than_exist(num_labeled: float, problem: str, tmp_path: Path) -> None:
    root = make_generic(tmp_path / "data")
    output = tmp_path / "datalist.json"
    with pytest.raises(DatalistError) as info:
        build_datalist(root, "generic", output, num_labeled=num_labeled)
    assert str(info.value).startswith(problem), str(info.value)
    assert not output.exists() and temporary_files(tmp_path) == []


def test_asking_for_exactly_the_training_pool_works(tmp_path: Path) -> None:
    root = make_generic(tmp_path / "data")
    datalist = build_datalist(root, "generic", tmp_path / "datalist.json", num_labeled=POOL_SIZE)
    assert len(datalist["labeled"]) == POOL_SIZE and datalist["unlabeled"] == []


def test_split_items_alone_rejects_a_budget_above_the_pool() -> None:
    items = [{"case_id": f"c{i}", "class": i % 2} for i in range(10)]  # 2 test, 1 validation (0.8 -> 1), pool 7
    with pytest.raises(DatalistError, match=r"^num_labeled: asked for 8 labeled items but only 7 training items"):
        split_items(items, seed=0, test_fraction=0.2, val_fraction=0.1, num_labeled=8)


def test_cli_prepare_with_too_many_labeled_items(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_generic(tmp_path / "data")
    output = tmp_path / "datalist.json"
    code, message = run_cli(["prepare", "generic", str(root), "-o", str(output), "--num-labeled", "50"], capsys)
    assert code == 2
    assert f"asked for 50 labeled items but only {POOL_SIZE} training items exist" in message
    assert not output.exists() and temporary_files(tmp_path) == []


@pytest.fixture
def fully_labeled_datalist(tmp_path: Path) -> Path:
    """A real datalist whose unlabeled split is empty: no label budget was given."""
    output = tmp_path / "lists" / "datalist.json"
    build_datalist(make_generic(tmp_path / "data"), "generic", output)
    assert json.loads(output.read_text())["unlabeled"] == []
    return output


def test_load_datalist_on_an_empty_split_names_the_split_and_the_file(fully_labeled_datalist: Path) -> None:
    with pytest.raises(DatalistError) as info:
        load_datalist(fully_labeled_datalist, "unlabeled")
    assert str(info.value) == f"{fully_labeled_datalist}: split 'unlabeled' is empty."
    assert load_datalist(fully_labeled_datalist, "unlabeled", allow_empty=True) == []


LOAD_ERRORS: dict[str, tuple[Callable[[Path], Path], str, str]] = {
    "misspelt_split": (
        lambda p: p,
        "unlabelled",
        "has no split 'unlabelled'; available splits: ['labeled', 'unlabeled'",
    ),
    "missing_file": (lambda p: p.with_name("other.json"), "labeled", "no such datalist file."),
    "zero_byte_file": (lambda p: write_bytes(p.with_name("empty.json"), b""), "labeled", "is not valid JSON"),
    "json_list": (lambda p: write_bytes(p.with_name("list.json"), b"[]"), "labeled", "must hold a JSON object"),
    "item_not_an_object": (
        lambda p: write_bytes(p.with_name("bad.json"), b'{"labeled": ["case_1.png"]}'),
        "labeled",
        "item 0 of split 'labeled' is not an object: 'case_1.png'.",
    ),
}


@pytest.mark.parametrize("case", LOAD_ERRORS.values(), ids=LOAD_ERRORS.keys())
def test_load_datalist_errors_name_the_file(case: tuple, fully_labeled_datalist: Path) -> None:
    make, split, problem = case
    path = make(fully_labeled_datalist)
    with pytest.raises(DatalistError) as info:
        load_datalist(path, split)
    assert str(info.value).startswith(f"{path}: {problem}"), str(info.value)


def _trainer(labeled: list[dict], unlabeled: list[dict]) -> SemiSupervisedTrainer:
    network = torch.nn.Conv2d(1, 2, 1)
    return SemiSupervisedTrainer(
        device="cpu",
        max_epochs=1,
        train_data_loader=DataLoader(Dataset(labeled), batch_size=1),
        unlabeled_data_loader=DataLoader(Dataset(unlabeled), batch_size=1),
        network=network,
        optimizer=torch.optim.SGD(network.parameters(), lr=0.1),
        loss_function=torch.nn.CrossEntropyLoss(),
    )


@pytest.mark.parametrize("empty", ["unlabeled", "labeled"])
def test_semi_supervised_trainer_with_an_empty_split(empty: str, fully_labeled_datalist: Path) -> None:
    items = load_datalist(fully_labeled_datalist, "labeled")
    unlabeled = load_datalist(fully_labeled_datalist, "unlabeled", allow_empty=True)  # [] here
    labeled = [] if empty == "labeled" else items
    unlabeled = unlabeled if empty == "unlabeled" else items
    with pytest.raises(DatalistError, match=rf"^{empty} data loader: the {empty} set is empty"):
        _trainer(labeled, unlabeled)


# paths with spaces and non-ASCII characters must work, not merely fail clearly


def test_unicode_paths_work_from_folder_to_written_prediction(tmp_path: Path) -> None:
    root = tmp_path / UNICODE_DIR / "Patientin Zoë"
    image = random_gray(7)
    save_image(root / "images" / "coupe 1 é.png", image)
    save_image(root / "masks" / "coupe 1 é.png", box_mask())
    for index in range(4):
        save_image(root / "images" / f"coupe {index + 2} ü.png", random_gray(index))
        save_image(root / "masks" / f"coupe {index + 2} ü.png", box_mask(top=index))
    output = tmp_path / "listes de données" / "liste ü.json"
    build_datalist(root, "generic", output, test_fraction=0.0, val_fraction=0.0)
    items = {Path(item["image"]).name: item for item in load_datalist(output, "labeled")}
    assert sorted(items) == sorted(p.name for p in (root / "images").iterdir())
    item = items["coupe 1 é.png"]
    assert item["image"] == str(root / "images" / "coupe 1 é.png")
    loaded = CheckMaskMatchesImaged()(_load_pair(Path(item["image"]), Path(item["label"])))
    np.testing.assert_array_equal(loaded["image"][0].numpy(), image)
    np.testing.assert_array_equal(loaded["label"][0].numpy(), box_mask() // 255)

    predictions = tmp_path / "prédictions 1"
    SaveSegmentationd(keys="label", output_dir=predictions, formats=("png", "nii.gz", "overlay"))(loaded)
    assert sorted(p.name for p in predictions.iterdir()) == [
        "coupe 1 é_overlay.png",
        "coupe 1 é_seg.nii.gz",
        "coupe 1 é_seg.png",
    ]
    np.testing.assert_array_equal(np.asarray(Image.open(predictions / "coupe 1 é_seg.png")), box_mask())


def test_unicode_paths_work_for_dicom_and_video(tmp_path: Path) -> None:
    frames = video_frames()
    dicom = write_dicom(tmp_path / UNICODE_DIR / "ciné ü 1.dcm", frames)
    decoded, meta = read_dicom(dicom)
    np.testing.assert_array_equal(decoded, frames)
    assert meta["num_frames"] == len(frames)
    video = write_video(tmp_path / UNICODE_DIR / "ciné ü 1.mp4", frames)
    clip = read_video(video)
    assert clip.shape == frames.shape
    # MPEG-4 is lossy: the bright square is still where it was drawn in every frame
    for index, frame in enumerate(clip):
        assert frame[6:14, 3 + 3 * index : 9 + 3 * index].mean() > 180 and frame[18:, :].mean() < 60


def test_unicode_paths_work_through_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_generic(tmp_path / UNICODE_DIR / "jeu ü")
    output = tmp_path / UNICODE_DIR / "sortie é" / "liste.json"
    assert main(["prepare", "generic", str(root), "-o", str(output), "--num-labeled", "2"]) == 0
    assert len(load_datalist(output, "labeled")) == 2
    assert f"datalist written to {output}" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------------------------
# 4. unwritable or full output folders, and the prediction writer
# ---------------------------------------------------------------------------------------------------------------


def _prediction(tmp_path: Path, label: int = 1) -> dict[str, Any]:
    source = save_image(tmp_path / "inputs" / "scan 1.png", random_gray(0))
    pred = torch.from_numpy((box_mask() > 0).astype(np.float32) * label)[None]
    return {"image": MetaTensor(torch.zeros((1, *IMAGE_SHAPE)), meta={"filename_or_obj": str(source)}), "pred": pred}


def _save_predictions(output: Path, tmp_path: Path) -> None:
    SaveSegmentationd(keys="pred", output_dir=output)(_prediction(tmp_path))


def _build_into(output: Path, tmp_path: Path) -> None:
    build_datalist(make_generic(tmp_path / "data"), "generic", output / "datalist.json")


WRITERS: dict[str, Callable[[Path, Path], None]] = {
    "SaveSegmentationd": _save_predictions,
    "build_datalist": _build_into,
}


@pytest.mark.parametrize("write", WRITERS.values(), ids=WRITERS.keys())
def test_read_only_output_folder_is_named(
    write: Callable[[Path, Path], None], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    output = tmp_path / "read only ü"
    output.mkdir()
    make_readonly(monkeypatch, output)
    with pytest.raises(PermissionError, match=rf"^{re.escape(str(output))}: the output folder is not writable\.$"):
        write(output, tmp_path)
    assert list(output.iterdir()) == []


@pytest.fixture
def chmod_readonly_dir(tmp_path: Path) -> Iterator[Path]:
    """A folder made read-only with chmod; skipped where permission bits are ignored (root with CAP_DAC_OVERRIDE)."""
    folder = tmp_path / "chmod read only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        (folder / "probe").touch()
    except PermissionError:
        yield folder
    else:
        (folder / "probe").unlink()
        pytest.skip("running as root: permission bits are ignored, the monkeypatched variant covers this")
    finally:
        folder.chmod(0o755)


@pytest.mark.parametrize("write", WRITERS.values(), ids=WRITERS.keys())
def test_chmod_read_only_output_folder_is_named(
    write: Callable[[Path, Path], None], chmod_readonly_dir: Path, tmp_path: Path
) -> None:
    with pytest.raises(PermissionError, match=re.escape(str(chmod_readonly_dir))):
        write(chmod_readonly_dir, tmp_path)
    assert list(chmod_readonly_dir.iterdir()) == []


def test_chmod_read_only_output_folder_through_the_cli(
    chmod_readonly_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_generic(tmp_path / "data")
    code, message = run_cli(["prepare", "generic", str(root), "-o", str(chmod_readonly_dir / "d.json")], capsys)
    assert code == 2 and str(chmod_readonly_dir) in message
    assert list(chmod_readonly_dir.iterdir()) == []


def test_cli_prepare_into_a_read_only_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_generic(tmp_path / "data")
    output = tmp_path / "lists"
    output.mkdir()
    make_readonly(monkeypatch, output)
    code, message = run_cli(["prepare", "generic", str(root), "-o", str(output / "datalist.json")], capsys)
    assert code == 2
    assert message == f"{output}: the output folder is not writable.\n"
    assert list(output.iterdir()) == []


def test_cli_phantom_into_a_read_only_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "phantom"
    output.mkdir()
    make_readonly(monkeypatch, output)
    code, message = run_cli(["phantom", str(output), "--num-images", "2", "--size", "32"], capsys)
    assert code == 2
    assert message == f"{output}: the output folder is not writable.\n"
    assert list(output.iterdir()) == []


def test_cli_phantom_with_no_images_creates_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "phantom"
    code, message = run_cli(["phantom", str(output), "--num-images", "0"], capsys)
    assert code == 2 and "num_images must be >= 1, got 0." in message
    assert not output.exists()


# a full disk: the atomic writer removes its temporary file and leaves the previous output in place


def test_full_disk_keeps_earlier_predictions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    output = tmp_path / "predictions"
    _save_predictions(output, tmp_path)
    before = {path.name: path.read_bytes() for path in output.iterdir()}
    assert sorted(before) == ["scan 1_overlay.png", "scan 1_seg.nii.gz", "scan 1_seg.png"]
    fill_disk(monkeypatch)
    with pytest.raises(OSError, match="No space left on device"):
        SaveSegmentationd(keys="pred", output_dir=output)(_prediction(tmp_path, label=0))
    assert {path.name: path.read_bytes() for path in output.iterdir()} == before
    assert temporary_files(tmp_path) == []


def test_full_disk_keeps_an_earlier_datalist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    output = write_bytes(tmp_path / "lists" / "datalist.json", PREVIOUS_DATALIST.encode())
    root = make_generic(tmp_path / "data")
    fill_disk(monkeypatch)
    with pytest.raises(OSError, match="No space left on device"):
        build_datalist(root, "generic", output)
    assert output.read_text() == PREVIOUS_DATALIST
    assert sorted(p.name for p in output.parent.iterdir()) == ["datalist.json"]


def test_full_disk_through_the_cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_generic(tmp_path / "data")
    output = tmp_path / "lists" / "datalist.json"
    fill_disk(monkeypatch)
    code, message = run_cli(["prepare", "generic", str(root), "-o", str(output)], capsys)
    assert code == 2 and "No space left on device" in message
    assert not output.exists() and temporary_files(tmp_path) == []


def test_writer_rejects_a_non_binary_prediction_before_writing(tmp_path: Path) -> None:
    output = tmp_path / "predictions"
    with pytest.raises(ValueError, match="prediction holds label 2 but num_classes is 2"):
        SaveSegmentationd(keys="pred", output_dir=output)(_prediction(tmp_path, label=2))
    assert list(output.iterdir()) == []


def test_writer_rejects_an_image_without_a_source_file(tmp_path: Path) -> None:
    output = tmp_path / "predictions"
    data = {"image": torch.zeros((1, *IMAGE_SHAPE)), "pred": torch.zeros((1, *IMAGE_SHAPE))}
    with pytest.raises(ValueError, match=r"'image' has no meta\['filename_or_obj'\]: load it with LoadImaged"):
        SaveSegmentationd(keys="pred", output_dir=output)(data)
    assert list(output.iterdir()) == []


def test_writer_with_an_unreadable_source_leaves_no_partial_output(tmp_path: Path) -> None:
    data = _prediction(tmp_path)
    truncate(Path(data["image"].meta["filename_or_obj"]), 0.3)
    output = tmp_path / "predictions"
    with pytest.raises(InputError, match="scan 1.png: truncated or damaged"):
        SaveSegmentationd(keys="pred", output_dir=output)(data)
    assert list(output.iterdir()) == []


# ---------------------------------------------------------------------------------------------------------------
# 5. bundles: bad files through each shipped bundle's own preprocessing and datalist loading
# ---------------------------------------------------------------------------------------------------------------


def _bundle_parser(name: str) -> ConfigParser:
    """The bundle's train.yaml, read but not resolved."""
    parser = ConfigParser()
    parser.read_config(os.path.join(usseg.bundles.bundle_root(name), "configs", "train.yaml"))
    return parser


def _bundles_with(config_id: str) -> list[Any]:
    """Every shipped bundle as a test parameter; those whose train.yaml lacks ``config_id`` are skipped."""
    params = []
    for name in sorted(usseg.bundles.list_bundles()):
        marks = [] if config_id in _bundle_parser(name) else [pytest.mark.skip(reason=f"{name} has no {config_id}")]
        params.append(pytest.param(name, id=name, marks=marks))
    return params


BUNDLE_BREAKAGES: dict[str, tuple[Callable[[Path], tuple[Path, Path]], str, str]] = {
    "mask_of_another_size": (
        lambda d: (save_image(d / "scan.png", random_gray(0)), save_image(d / "m.png", box_mask(shape=(24, 30)))),
        "label",
        r"mask shape \(24, 30\) differs from image shape \(24, 32\)",
    ),
    "mask_with_gray_values": (
        lambda d: (save_image(d / "scan.png", random_gray(0)), save_image(d / "m.png", box_mask() // 2)),
        "label",
        "binary mask holds values 127",
    ),
    "truncated_image": (
        lambda d: (truncate(save_image(d / "scan.png", random_gray(0, (96, 96)))), save_image(d / "m.png", box_mask())),
        "image",
        "truncated or damaged",
    ),
    "text_as_image": (
        lambda d: (write_bytes(d / "scan.png", b"hello"), save_image(d / "m.png", box_mask())),
        "image",
        "not a readable image",
    ),
}


@pytest.mark.parametrize("case", BUNDLE_BREAKAGES.values(), ids=BUNDLE_BREAKAGES.keys())
@pytest.mark.parametrize("bundle", _bundles_with("train#deterministic_transforms"))
def test_bundle_preprocessing_names_the_bad_file(bundle: str, case: tuple, tmp_path: Path) -> None:
    make, culprit, problem = case
    image, label = make(tmp_path)
    preprocessing = Compose(_bundle_parser(bundle).get_parsed_content("train#deterministic_transforms"))
    with pytest.raises(RuntimeError) as info:  # MONAI's Compose wraps the transform's error
        preprocessing({"image": str(image), "label": str(label)})
    error = find_in_chain(info.value, InputError)
    assert str(error).startswith(f"{image if culprit == 'image' else label}: "), str(error)
    assert re.search(problem, str(error)), str(error)


# label budgets and the "labeled" split belong to the bundles that train on labeled images (not video pretraining)
@pytest.mark.parametrize("bundle", _bundles_with("num_labeled"))
def test_bundle_dataset_on_an_empty_labeled_split(bundle: str, tmp_path: Path) -> None:
    path = write_bytes(tmp_path / "datalist.json", b'{"labeled": [], "unlabeled": [], "validation": [], "test": []}')
    parser = _bundle_parser(bundle)
    parser.update({"datalist": str(path), "output_dir": str(tmp_path / "run")})
    with pytest.raises(RuntimeError) as info:  # MONAI's config parser wraps the expression's error
        parser.get_parsed_content("train#dataset")
    error = find_in_chain(info.value, DatalistError)
    assert str(error) == f"{path}: split 'labeled' is empty."


@pytest.mark.parametrize("bundle", _bundles_with("num_labeled"))
def test_bundle_with_a_label_budget_above_the_pool(bundle: str, tmp_path: Path) -> None:
    parser = _bundle_parser(bundle)
    run_dir = tmp_path / "run"
    parser.update({"dataset_dir": str(make_generic(tmp_path / "data")), "output_dir": str(run_dir), "num_labeled": 50})
    with pytest.raises(RuntimeError) as info:
        parser.get_parsed_content("datalist_file")
    error = find_in_chain(info.value, DatalistError)
    assert str(error).startswith(f"num_labeled: asked for 50 labeled items but only {POOL_SIZE} training items")
    assert not (run_dir / "datalist.json").exists() and temporary_files(tmp_path) == []


# ---------------------------------------------------------------------------------------------------------------
# 6. usseg run: override keys are checked against the merged configs
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture
def monai_runner(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Replace MONAI's bundle runner; the dict receives what ``usseg run`` would have run."""
    received: dict[str, Any] = {}
    monkeypatch.setattr(monai.bundle, "run", lambda **kwargs: received.update(kwargs))
    return received


RUN_TYPOS: dict[str, tuple[list[str], str, str]] = {
    "top_level": (["--max_epoch", "2"], "max_epoch", "did you mean max_epochs, train#trainer#max_epochs?"),
    "nested_last_part": (
        ["--train#dataloader#num_worker", "0"],
        "train#dataloader#num_worker",
        "did you mean train#dataloader#num_workers,",
    ),
    "nested_parent": (
        ["--trian#dataloader#num_workers=0"],
        "trian#dataloader#num_workers",
        "train#dataloader#num_workers",
    ),
    "missing_parent": (["--dataloader#num_workers", "0"], "dataloader#num_workers", "train#dataloader#num_workers"),
    "after_a_valid_key": (
        ["--max_epochs", "2", "--lerning_rate", "0.01"],
        "lerning_rate",
        "did you mean learning_rate?",
    ),
}


@pytest.mark.parametrize("case", RUN_TYPOS.values(), ids=RUN_TYPOS.keys())
def test_run_with_a_misspelt_override_key_stops_before_monai(
    case: tuple, monai_runner: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    argv, key, suggestion = case
    code, message = run_cli(["run", SHIPPED, *argv], capsys)
    assert code == 2
    assert message.startswith(f"{key}: no such key in train.yaml; "), message
    assert suggestion in message
    assert f"Write --+{key} to add it on purpose." in message
    assert monai_runner == {}


def test_run_passes_valid_and_added_keys_to_monai(monai_runner: dict) -> None:
    argv = [
        "run",
        SHIPPED,
        "evaluate",
        "--max_epochs",
        "2",
        "--train#dataloader#num_workers=0",
        "--validate::dataloader::batch_size",
        "4",
        "--+my_new_key",
        "[1, 2]",
        "--+imports",
        "['$import numpy']",
        "--run_id",
        "run",
    ]
    assert main(argv) == 0
    overrides = {k: v for k, v in monai_runner.items() if k not in ("config_file", "meta_file", "logging_file")}
    assert overrides == {
        "max_epochs": 2,
        "train#dataloader#num_workers": 0,
        "validate::dataloader::batch_size": 4,
        "my_new_key": [1, 2],
        "imports": [
            *ConfigParser.load_config_files(str(SHIPPED_ROOT / "configs" / "train.yaml"))["imports"],
            "$import numpy",
        ],
        "run_id": "run",
    }
    assert monai_runner["config_file"] == [str(SHIPPED_ROOT / "configs" / n) for n in ("train.yaml", "evaluate.yaml")]


@pytest.fixture
def shipped_files() -> tuple[list[str], Path]:
    root, files = bundle_config_files(SHIPPED, ["evaluate"])
    return files, root / "configs" / "metadata.json"


ACCEPTED_OVERRIDES: dict[str, dict[str, Any]] = {
    "top_level": {"seed": 3},
    "nested": {"train#dataloader#num_workers": 0},
    "nested_with_colons": {"train::dataloader::num_workers": 0},
    "list_position": {"train#handlers#0#epoch_level": True},
    "key_from_the_override_config": {"checkpoints#final": "x.pt"},
    "metadata": {"_meta_#version": "9.9.9"},
    "component_key_of_an_existing_component": {"train#handlers#1#_disabled_": True},
    "runner_option": {"final_id": "finalize"},
}


@pytest.mark.parametrize("overrides", ACCEPTED_OVERRIDES.values(), ids=ACCEPTED_OVERRIDES.keys())
def test_check_override_keys_passes_existing_keys_unchanged(overrides: dict, shipped_files: tuple) -> None:
    files, meta = shipped_files
    assert check_override_keys(files, overrides, meta_file=meta) == overrides


def test_runner_options_are_monai_run_arguments() -> None:
    accepted = set(inspect.signature(monai.bundle.scripts.run).parameters)
    accepted |= set(inspect.signature(create_workflow).parameters) | set(inspect.signature(ConfigWorkflow).parameters)
    assert accepted >= RUNNER_OPTIONS


REJECTED_OVERRIDES: dict[str, tuple[dict[str, Any], str, str]] = {
    "typo": ({"max_epoch": 2}, "max_epoch", "no such key in train.yaml, evaluate.yaml; did you mean max_epochs"),
    "no_similar_key": ({"zzqqxx": 1}, "zzqqxx", "no such key in train.yaml, evaluate.yaml; no similar key exists."),
    "metadata_typo": (
        {"_meta_#verison": "1"},
        "_meta_#verison",
        "no such key in train.yaml, evaluate.yaml; did you mean _meta_#version",
    ),
    "list_position_out_of_range": ({"train#handlers#40#interval": 1}, "train#handlers#40#interval", "no such key"),
    "component_key_without_a_component": ({"seed#_disabled_": True}, "seed#_disabled_", "no such key"),
    "set_by_usseg": ({"config_file": "x.yaml"}, "config_file", "is set by usseg run from the bundle"),
    "empty_key": ({"": 1}, "''", "empty override key"),
    "add_under_a_missing_parent": (
        {"+train#sampler#shuffle": False},
        "+train#sampler#shuffle",
        "cannot add 'train#sampler#shuffle': its parent 'train#sampler' does not exist",
    ),
    "add_into_a_list": (
        {"+train#handlers#9": {}},
        "+train#handlers#9",
        "cannot add 'train#handlers#9': its parent 'train#handlers' is a list; new keys go into a dict.",
    ),
    "merge_into_a_number": (
        {"+max_epochs": [1]},
        "+max_epochs",
        "'max_epochs' already exists with a value of type int; + merges a dict into a dict",
    ),
}


@pytest.mark.parametrize("case", REJECTED_OVERRIDES.values(), ids=REJECTED_OVERRIDES.keys())
def test_check_override_keys_rejects_with_the_key_named(case: tuple, shipped_files: tuple) -> None:
    overrides, key, problem = case
    files, meta = shipped_files
    with pytest.raises(InputError) as info:
        check_override_keys(files, overrides, meta_file=meta)
    assert info.value.path == key
    assert str(info.value).startswith(f"{key}: {problem}"), str(info.value)


def test_check_override_keys_lists_every_unknown_key_at_once(shipped_files: tuple) -> None:
    files, meta = shipped_files
    with pytest.raises(InputError) as info:
        check_override_keys(files, {"max_epoch": 1, "seed": 1, "spatial_sise": [64, 64]}, meta_file=meta)
    lines = str(info.value).splitlines()
    assert lines[0].startswith("max_epoch: no such key")
    assert lines[1].startswith("spatial_sise: no such key") and "did you mean spatial_size" in lines[1]
    assert lines[2] == "(MONAI would add an unknown key silently, and the run would keep the default value.)"


def test_check_override_keys_merges_plus_keys_like_monai_config_files(shipped_files: tuple) -> None:
    files, meta = shipped_files
    merged = ConfigParser.load_config_files(files)
    out = check_override_keys(
        files, {"+validate#handlers": [{"_target_": "X"}], "+checkpoints": {"extra": "e.pt"}}, meta_file=meta
    )
    assert out["validate#handlers"] == [*merged["validate"]["handlers"], {"_target_": "X"}]
    assert out["checkpoints"] == {**merged["checkpoints"], "extra": "e.pt"}
    assert merged["checkpoints"] and "extra" not in merged["checkpoints"]


def test_run_help_documents_the_plus_prefix(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "Each key must already exist in the merged configs" in help_text
    assert "Prefix a key with + to add it on purpose (--+my_key 1)" in help_text
