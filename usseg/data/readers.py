# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""Readers for ultrasound images, masks, DICOM cines and videos, all in one documented axis order.

Every reader returns ``uint8`` arrays in row-major order: ``(H, W)`` or ``(H, W, 3)`` for a still image,
``(F, H, W)`` or ``(F, H, W, 3)`` (frames first) for a DICOM file or a video. MONAI's own readers disagree
on this (``PILReader`` transposes to ``(W, H)``; ``PydicomReader`` puts the frame axis between the two spatial
axes; ``LoadImage()`` picks ITK or pydicom depending on what is installed: monai-notes.md, section 8), so
usseg always names its reader::

    LoadImaged(keys="image", reader=UltrasoundImageReader())
    LoadImaged(keys="label", reader=UltrasoundImageReader(mask_mode="binary"))
    LoadImaged(keys="cine", reader=UltrasoundDicomReader())

To save a loaded 2D image back to PNG in the orientation of the input, switch off the transpose that MONAI's
``PILWriter`` applies by default (``reverse_indexing=True``)::

    SaveImage(output_ext=".png", output_dtype=np.uint8, scale=None, resample=False).set_options(
        write_kwargs={"reverse_indexing": False}
    )

``SaveImaged`` has the same ``set_options``. NIfTI needs no option: the ``(H, W)`` array is written as is with
the identity affine, so nibabel (and MONAI's ``NibabelReader``) read back the input rows and columns.

Bad files raise :class:`usseg.errors.InputError`, whose message names the file and the problem.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import av
import numpy as np
import pydicom
from monai.data.image_reader import ImageReader
from PIL import Image
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_color_lut, convert_color_space, get_decoder

from usseg.errors import InputError

__all__ = [
    "IMAGE_SUFFIXES",
    "DICOM_SUFFIXES",
    "VIDEO_SUFFIXES",
    "read_image_array",
    "read_mask",
    "read_dicom",
    "read_video",
    "UltrasoundImageReader",
    "UltrasoundDicomReader",
    "VideoReader",
    "VideoFrameCache",
    "downscale_frames",
]

IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
DICOM_SUFFIXES: tuple[str, ...] = (".dcm", ".dicom")
VIDEO_SUFFIXES: tuple[str, ...] = (".mp4", ".avi", ".mov", ".mpeg", ".mpg", ".gif", ".m4v", ".webm")

_COLOR_MODES = ("gray", "rgb", "auto")
_MASK_MODES = ("binary", "labels")
# ITU-R BT.601 luma weights in thousandths: integer maths keeps gray frames (R == G == B) exactly unchanged.
_LUMA_WEIGHTS = np.array([299, 587, 114], dtype=np.uint32)
_MAX_LISTED_VALUES = 10
# valid .mov files often declare a few more frames than decode (edit lists); far fewer means a damaged file
_TRUNCATION_WARNING_RATIO = 0.9
_ULTRASOUND_UNIT_CM = 3
_REGION_SPATIAL_FORMAT_2D = 1
PathLike = str | os.PathLike


# ----------------------------------------------------------------------------------------------------------------
# shared helpers
# ----------------------------------------------------------------------------------------------------------------


def _check_color(color: Any, allow_none: bool = False) -> None:
    """Raise ``ValueError`` unless ``color`` is one of ``"gray"``, ``"rgb"``, ``"auto"`` (or ``None`` if allowed)."""
    if color is None and allow_none:
        return
    if color not in _COLOR_MODES:
        allowed = ", ".join(repr(c) for c in _COLOR_MODES) + (" or None" if allow_none else "")
        raise ValueError(f"color must be one of {allowed}, got {color!r}.")


def _check_readable_file(path: PathLike) -> Path:
    """Return ``path`` as a ``Path`` after checking that it is an existing, non-empty file.

    Raises:
        InputError: the file is missing, is a folder, or has zero bytes.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, "file not found.")
    if path.is_dir():
        raise InputError(path, "is a folder, not a file.")
    if path.stat().st_size == 0:
        raise InputError(path, "the file is empty (0 bytes).")
    return path


def _rgb_to_gray(rgb: np.ndarray) -> np.ndarray:
    """BT.601 luma of a ``(..., 3)`` uint8 array, rounded, as uint8 ``(...)``; one frame at a time to bound memory."""
    if rgb.ndim == 4:
        return np.stack([_rgb_to_gray(frame) for frame in rgb]) if len(rgb) else rgb[..., 0].copy()
    weighted = rgb.astype(np.uint32) @ _LUMA_WEIGHTS
    return ((weighted + 500) // 1000).astype(np.uint8)


def _channels_equal(rgb: np.ndarray) -> bool:
    """Whether the three colour channels of a ``(..., 3)`` array are identical everywhere."""
    return bool(np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]))


def _apply_color(array: np.ndarray, color: str, spatial_ndim: int) -> np.ndarray:
    """Convert a gray ``(*S)`` or colour ``(*S, 3)`` uint8 array to the requested colour mode.

    Args:
        array: uint8 array with ``spatial_ndim`` leading axes, plus a trailing axis of 3 for colour.
        color: ``"gray"`` (luma), ``"rgb"`` (gray repeated on 3 channels) or ``"auto"`` (colour kept only
            when the channels differ somewhere).
        spatial_ndim: number of axes before the optional channel axis (2 for images, 3 for frame stacks).
    """
    is_color = array.ndim == spatial_ndim + 1
    if color == "gray":
        return _rgb_to_gray(array) if is_color else array
    if color == "rgb":
        return array if is_color else np.repeat(array[..., None], 3, axis=-1)
    return array[..., 0].copy() if is_color and _channels_equal(array) else array


def _has_suffix(filename: Sequence[PathLike] | PathLike, suffixes: Sequence[str]) -> bool:
    """Whether every file name in ``filename`` ends with one of ``suffixes`` (case-insensitive)."""
    names = [filename] if isinstance(filename, (str, os.PathLike)) else list(filename)
    return bool(names) and all(str(name).lower().endswith(tuple(suffixes)) for name in names)


def _looks_like_dicom(path: PathLike) -> bool:
    """Whether ``path`` carries the ``DICM`` marker that follows the 128-byte preamble of a DICOM file."""
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def _format_values(values: np.ndarray) -> str:
    """At most ``_MAX_LISTED_VALUES`` values as text, with a count of the rest."""
    shown = ", ".join(str(v) for v in values[:_MAX_LISTED_VALUES].tolist())
    more = len(values) - _MAX_LISTED_VALUES
    return f"{shown} (and {more} more)" if more > 0 else shown


# ----------------------------------------------------------------------------------------------------------------
# still images and masks
# ----------------------------------------------------------------------------------------------------------------


def _decode_image(path: Path, to_array: Callable[[Image.Image, Path], np.ndarray]) -> np.ndarray:
    """Open ``path`` with PIL, decode every byte, and convert it with ``to_array(image, path)``.

    ``img.load()`` forces the full decode, so a truncated file fails here instead of yielding a partly grey
    image (PIL's ``LOAD_TRUNCATED_IMAGES`` is left at its default, False).

    Raises:
        InputError: not an image, truncated or damaged, several frames, or rejected by ``to_array``.
    """
    path = _check_readable_file(path)
    try:
        with Image.open(path) as image:
            image.load()
            frames = getattr(image, "n_frames", 1)
            if frames > 1:
                raise InputError(
                    path, f"holds {frames} frames; read multi-frame files with read_video or VideoFrameCache."
                )
            return to_array(image, path)
    except Image.UnidentifiedImageError as err:
        raise InputError(path, "not a readable image: PIL does not recognise its content.") from err
    except Image.DecompressionBombError as err:
        raise InputError(path, f"refused as a decompression bomb ({err}).") from err
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        if isinstance(err, InputError):
            raise
        raise InputError(path, f"truncated or damaged image file ({err}).") from err


def _drop_opaque_alpha(array: np.ndarray, path: Path) -> np.ndarray:
    """Remove the last (alpha) channel when it is fully opaque.

    Raises:
        InputError: some pixels are transparent: dropping alpha would change what the file shows.
    """
    alpha = array[..., -1]
    transparent = int(np.count_nonzero(alpha != 255))
    if transparent:
        raise InputError(
            path,
            f"has real transparency ({transparent} of {alpha.size} pixels have alpha < 255); "
            "flatten it onto a background and save it without alpha.",
        )
    return array[..., :-1]


def _sixteen_bit_to_uint8(values: np.ndarray, path: Path) -> np.ndarray:
    """Map 16-bit intensities 0..65535 to 0..255 by dividing by 257, rounded.

    A fixed map keeps relative intensities identical across images; stretching each image by its own min..max
    would make the same tissue look different from file to file.
    """
    values = values.astype(np.uint32)
    if values.size and int(values.max()) <= 255:
        warnings.warn(
            f"{path}: 16-bit image whose values all fit in 8 bits (max {int(values.max())}); it is divided by 257 "
            "like any 16-bit file and will look almost black. Re-save it as an 8-bit image if that is wrong.",
            stacklevel=4,
        )
    return ((values + 128) // 257).astype(np.uint8)


def _float_to_uint8(values: np.ndarray, path: Path) -> np.ndarray:
    """Map a float image in [0, 1] (scaled by 255) or [0, 255] (kept) to uint8, rounded.

    Raises:
        InputError: NaN or infinite values, or values outside [0, 255].
    """
    finite = np.isfinite(values)
    if not finite.all():
        raise InputError(path, f"float image holds {int(values.size - finite.sum())} NaN or infinite values.")
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if low < 0.0 or high > 255.0:
        raise InputError(
            path, f"float image values span [{low:g}, {high:g}]; only [0, 1] or [0, 255] can be mapped to 8 bits."
        )
    scale = 255.0 if high <= 1.0 else 1.0
    return np.rint(values.astype(np.float64) * scale).astype(np.uint8)


def _image_to_array(image: Image.Image, path: Path) -> np.ndarray:
    """Pixels of a decoded PIL image as uint8 ``(H, W)`` or ``(H, W, 3)``; see :func:`read_image_array`."""
    mode = image.mode
    if mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in image.info
        image = image.convert("RGBA" if has_alpha else "RGB")
        mode = image.mode
    if mode == "1":
        return np.array(image.convert("L"))
    if mode == "L":
        return np.array(image)
    if mode in ("LA", "La"):
        return _drop_opaque_alpha(np.array(image.convert("LA")), path)[..., 0].copy()
    if mode in ("RGBA", "RGBa"):
        return np.ascontiguousarray(_drop_opaque_alpha(np.array(image.convert("RGBA")), path))
    if mode in ("RGB", "RGBX"):
        return np.array(image.convert("RGB"))
    if mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        return _sixteen_bit_to_uint8(np.array(image), path)
    if mode == "I":
        values = np.array(image)
        if values.size and (int(values.min()) < 0 or int(values.max()) > 65535):
            raise InputError(
                path,
                f"32-bit integer image with values in [{int(values.min())}, {int(values.max())}]; "
                "only 0..65535 (16-bit data) can be mapped to 8 bits.",
            )
        return _sixteen_bit_to_uint8(values, path)
    if mode == "F":
        return _float_to_uint8(np.array(image), path)
    raise InputError(
        path,
        f"unsupported image mode {mode!r}; expected grayscale, RGB(A), palette, 16-bit or float data. "
        "Convert the file to 8-bit grayscale or RGB.",
    )


def read_image_array(path: PathLike, color: str = "gray") -> np.ndarray:
    """Read a PNG, JPEG, BMP or TIFF ultrasound image as a uint8 array in row-major order.

    Conversions, chosen so that no intensity is silently invented or lost:

    - ``1`` (bilevel) becomes 0/255; palette images are looked up to RGB(A);
    - an alpha channel is dropped when fully opaque; real transparency raises ``InputError``;
    - 16-bit grayscale is divided by 257 (0..65535 onto 0..255, rounded). The map is fixed, not a per-image
      min..max stretch, so relative intensities stay comparable across images (a warning flags a 16-bit file
      whose values all fit in 8 bits, which this map turns nearly black);
    - float TIFFs in [0, 1] are scaled by 255, in [0, 255] rounded; NaN/Inf or other ranges raise ``InputError``.

    Args:
        path: the image file.
        color: ``"gray"`` returns ``(H, W)`` (BT.601 luma for colour files), ``"rgb"`` returns ``(H, W, 3)``
            (gray repeated), ``"auto"`` returns ``(H, W, 3)`` only when the colour channels differ somewhere.

    Returns:
        uint8 array of shape ``(H, W)`` or ``(H, W, 3)``.

    Raises:
        ValueError: ``color`` is not one of the three modes.
        InputError: missing, empty, truncated or non-image file, several frames, unsupported mode,
            transparency, or invalid float values.
    """
    _check_color(color)
    return _apply_color(_decode_image(Path(path), _image_to_array), color, spatial_ndim=2)


def _reduce_equal_channels(array: np.ndarray, path: Path) -> np.ndarray:
    """One channel of a colour mask whose channels are identical.

    Raises:
        InputError: the colour channels differ: the file is a colour drawing, not a mask.
    """
    if not _channels_equal(array):
        raise InputError(
            path, "colour mask whose R, G and B channels differ; save masks as grayscale or as a label-index image."
        )
    return array[..., 0].copy()


def _mask_to_array(image: Image.Image, path: Path) -> np.ndarray:
    """Label values of a decoded PIL mask as an integer ``(H, W)`` array (not yet validated)."""
    mode = image.mode
    if mode == "1":
        return np.array(image, dtype=np.uint8)
    if mode == "L":
        return np.array(image)
    if mode == "P":
        indices = np.array(image)
        palette = np.array(image.getpalette() or [], dtype=np.uint8).reshape(-1, 3)
        used = np.unique(indices)
        if used.size and int(used.max()) < len(palette) and _channels_equal(palette[used]):
            # a gray palette is a compressed grayscale mask: the file shows the looked-up values
            return palette[indices, 0]
        return indices  # a coloured palette is a label map: its indices are the labels (VOC convention)
    if mode in ("RGB", "RGBX"):
        return _reduce_equal_channels(np.array(image.convert("RGB")), path)
    if mode in ("RGBA", "RGBa"):
        return _reduce_equal_channels(_drop_opaque_alpha(np.array(image.convert("RGBA")), path), path)
    if mode in ("LA", "La"):
        return _drop_opaque_alpha(np.array(image.convert("LA")), path)[..., 0].copy()
    if mode in ("I", "I;16", "I;16L", "I;16B", "I;16N"):
        return np.array(image).astype(np.int64)
    if mode == "F":
        values = np.array(image)
        if not np.isfinite(values).all():
            raise InputError(path, "float mask holds NaN or infinite values.")
        if not np.array_equal(values, np.round(values)):
            raise InputError(path, "float mask holds non-integer values; masks must hold integer labels.")
        return values.astype(np.int64)
    raise InputError(
        path, f"unsupported mask image mode {mode!r}; save masks as 8-bit grayscale ('L'), bilevel ('1') or palette."
    )


def _check_mask_args(mode: Any, num_classes: Any) -> None:
    """Validate the ``mode`` / ``num_classes`` pair shared by :func:`read_mask` and the image reader."""
    if mode not in _MASK_MODES:
        raise ValueError(f"mask mode must be 'binary' or 'labels', got {mode!r}.")
    if num_classes is None:
        if mode == "labels":
            raise ValueError("mask mode 'labels' needs num_classes (an int in [2, 256]), got None.")
        return
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)):
        raise TypeError(f"num_classes must be an int or None, got {type(num_classes).__name__} {num_classes!r}.")
    if not 2 <= num_classes <= 256:
        raise ValueError(f"num_classes must lie in [2, 256] (labels are stored as uint8), got {num_classes}.")
    if mode == "binary" and num_classes != 2:
        raise ValueError(f"mask mode 'binary' has 2 classes; got num_classes={num_classes}. Use mode 'labels'.")


def read_mask(
    path: PathLike,
    mode: str = "binary",
    num_classes: int | None = None,
    expected_shape: tuple[int, int] | None = None,
) -> np.ndarray:
    """Read a segmentation mask as a uint8 ``(H, W)`` label array, rejecting values that are not labels.

    BUSI masks come as PNG modes ``1``, ``RGB`` (all zero) and ``RGBA`` (opaque): a colour mask whose channels
    are equal is reduced to one channel first. A palette mask with a gray palette is looked up (what the file
    shows); one with a coloured palette is a label map whose indices are the labels.

    Args:
        path: the mask file (PNG, BMP or TIFF; JPEG masks are lossy and usually fail the value check).
        mode: ``"binary"``: values must all lie in {0, 1} or all in {0, 255}; returned as {0, 1}.
            ``"labels"``: integer values in ``[0, num_classes)``, returned unchanged.
        num_classes: number of classes for ``"labels"`` (2..256); must be None or 2 for ``"binary"``.
        expected_shape: ``(H, W)`` of the matching image; a different mask shape raises ``InputError``.

    Returns:
        uint8 array of shape ``(H, W)``.

    Raises:
        ValueError: invalid ``mode`` / ``num_classes``.
        InputError: unreadable file, colour mask, transparency, wrong shape, or values that are not labels
            (the message lists up to 10 offending values and what is accepted).
    """
    _check_mask_args(mode, num_classes)
    path = Path(path)
    labels = _decode_image(path, _mask_to_array)
    if expected_shape is not None and tuple(labels.shape) != tuple(expected_shape):
        raise InputError(
            path, f"mask shape {tuple(labels.shape)} (H, W) does not match the image shape {tuple(expected_shape)}."
        )
    values = np.unique(labels)
    if mode == "binary":
        if np.isin(values, (0, 1)).all():
            return labels.astype(np.uint8)
        if np.isin(values, (0, 255)).all():
            return (labels == 255).astype(np.uint8)
        offending = values[~np.isin(values, (0, 1, 255))]
        if offending.size:
            problem = f"binary mask holds values {_format_values(offending)}"
        else:
            problem = "binary mask mixes the values 1 and 255"
        raise InputError(
            path,
            f"{problem}; a binary mask must hold only 0/1 or only 0/255 (a lossy JPEG mask or an anti-aliased "
            "drawing produces other values: save masks as PNG without smoothing).",
        )
    offending = values[(values < 0) | (values >= num_classes)]
    if offending.size:
        raise InputError(
            path,
            f"label mask holds values {_format_values(offending)} outside the accepted labels 0..{num_classes - 1} "
            f"(num_classes={num_classes}).",
        )
    return labels.astype(np.uint8)


# ----------------------------------------------------------------------------------------------------------------
# DICOM
# ----------------------------------------------------------------------------------------------------------------


def _read_dicom_dataset(path: Path) -> pydicom.Dataset:
    """Parse a DICOM file, turning every parse failure into ``InputError``."""
    try:
        return pydicom.dcmread(path)
    except InvalidDicomError as err:
        raise InputError(
            path, "not a DICOM file (no 'DICM' marker after the 128-byte preamble); re-save raw datasets as Part 10."
        ) from err
    except Exception as err:  # pydicom raises many exception types on a damaged file; the cause stays chained
        raise InputError(path, f"cannot parse the DICOM file ({type(err).__name__}: {err}).") from err


def _stored_to_uint8(values: np.ndarray, bits_stored: int, signed: bool) -> np.ndarray:
    """Map integer samples from their stored-bit range onto 0..255, rounded (fixed map, no per-file stretch)."""
    if values.dtype == np.uint8 and bits_stored == 8 and not signed:
        return values
    low = -(2 ** (bits_stored - 1)) if signed else 0
    high = 2 ** (bits_stored - 1) - 1 if signed else 2**bits_stored - 1
    shifted = np.clip(values.astype(np.float64), low, high) - low
    return np.rint(shifted * (255.0 / (high - low))).astype(np.uint8)


def _palette_to_rgb(indices: np.ndarray, dataset: pydicom.Dataset, path: Path) -> np.ndarray:
    """Look up PALETTE COLOR indices to uint8 RGB.

    16-bit palette entries are shifted right by 8 bits: exact for both ways of widening an 8-bit palette
    (x * 256 and x * 257), which is what 16-bit ultrasound palettes hold.
    """
    try:
        rgb = apply_color_lut(indices, dataset)
    except Exception as err:  # a missing or malformed LUT surfaces as several pydicom exception types
        raise InputError(path, f"PALETTE COLOR image with an unusable colour lookup table ({err}).") from err
    return rgb.astype(np.uint8) if rgb.dtype == np.uint8 else (rgb >> 8).astype(np.uint8)


def _decode_dicom_pixels(dataset: pydicom.Dataset, path: Path) -> np.ndarray:
    """Pixel data as uint8 frames-first ``(F, H, W)`` (monochrome) or ``(F, H, W, 3)`` (RGB).

    Raises:
        InputError: no pixel data, no usable decoder for the transfer syntax, damaged pixel data, or an
            unsupported photometric interpretation.
    """
    if "PixelData" not in dataset:
        kind = "float" if ("FloatPixelData" in dataset or "DoubleFloatPixelData" in dataset) else "no"
        raise InputError(path, f"no pixel data (the file has {kind} pixel data; PixelData is missing).")
    syntax = dataset.file_meta.get("TransferSyntaxUID") if hasattr(dataset, "file_meta") else None
    if syntax is None:
        raise InputError(path, "no TransferSyntaxUID in the file meta information; the pixel data cannot be decoded.")
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError as err:
        raise InputError(
            path,
            f"pixel data use the transfer syntax {syntax.name} ({syntax}), which pydicom cannot decode; "
            "convert the file to an uncompressed transfer syntax first.",
        ) from err
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies) or "a pydicom pixel-data plugin"
        raise InputError(
            path,
            f"pixel data are compressed with {syntax.name} ({syntax}) and no installed decoder handles it; "
            f"install one of: {missing}.",
        )
    try:
        pixels, info = decoder.as_array(dataset, as_rgb=False)
    except Exception as err:  # the decoder plugins raise their own exception types
        raise InputError(path, f"cannot decode the {syntax.name} pixel data ({type(err).__name__}: {err}).") from err

    frames = int(info.get("number_of_frames") or 1)
    samples = int(info["samples_per_pixel"])
    if frames == 1 and pixels.ndim == (2 if samples == 1 else 3):
        pixels = pixels[None]
    photometric = str(info["photometric_interpretation"])
    bits_stored = int(info.get("bits_stored") or info["bits_allocated"])
    signed = int(info.get("pixel_representation") or 0) == 1

    if photometric == "PALETTE COLOR":
        return _palette_to_rgb(pixels, dataset, path)
    if photometric == "MONOCHROME1":
        # MONOCHROME1 shows the lowest value as white; invert within the stored range so white stays white
        low = -(2 ** (bits_stored - 1)) if signed else 0
        high = 2 ** (bits_stored - 1) - 1 if signed else 2**bits_stored - 1
        pixels = (low + high) - pixels.astype(np.int64)
    elif photometric in ("YBR_FULL", "YBR_FULL_422", "YBR_ICT"):
        # YBR_ICT uses the same YCbCr equations as YBR_FULL; decoders usually convert it already
        pixels = convert_color_space(pixels, "YBR_FULL", "RGB", per_frame=True)
    elif photometric not in ("MONOCHROME2", "RGB"):
        raise InputError(
            path,
            f"unsupported photometric interpretation {photometric!r}; expected MONOCHROME1/2, RGB, YBR_FULL(_422) "
            "or PALETTE COLOR.",
        )
    return _stored_to_uint8(pixels, bits_stored, signed)


def _region_spacing_mm(dataset: pydicom.Dataset) -> tuple[float, float] | None:
    """Row and column pixel spacing in mm from ``SequenceOfUltrasoundRegions``, or None.

    Only regions calibrated in cm on both axes count. A 2D tissue region (RegionSpatialFormat 1) wins over
    M-mode or Doppler strips, and among equals the largest region wins, since it is the B-mode image.
    """
    candidates = []
    for region in dataset.get("SequenceOfUltrasoundRegions", None) or []:
        units = (region.get("PhysicalUnitsXDirection"), region.get("PhysicalUnitsYDirection"))
        delta_x, delta_y = region.get("PhysicalDeltaX"), region.get("PhysicalDeltaY")
        if units != (_ULTRASOUND_UNIT_CM, _ULTRASOUND_UNIT_CM) or not delta_x or not delta_y:
            continue
        width = int(region.get("RegionLocationMaxX1", 0)) - int(region.get("RegionLocationMinX0", 0)) + 1
        height = int(region.get("RegionLocationMaxY1", 0)) - int(region.get("RegionLocationMinY0", 0)) + 1
        is_2d = region.get("RegionSpatialFormat") == _REGION_SPATIAL_FORMAT_2D
        candidates.append((is_2d, width * height, abs(float(delta_y)) * 10.0, abs(float(delta_x)) * 10.0))
    if not candidates:
        return None
    _, _, row_mm, col_mm = max(candidates, key=lambda candidate: candidate[:2])
    return row_mm, col_mm


def _pixel_spacing_mm(dataset: pydicom.Dataset) -> tuple[tuple[float, float] | None, str]:
    """Pixel spacing ``(row, column)`` in mm and where it came from: ultrasound regions, PixelSpacing, or none."""
    region = _region_spacing_mm(dataset)
    if region is not None:
        return region, "ultrasound_regions"
    spacing = dataset.get("PixelSpacing")
    if spacing is not None and len(spacing) == 2 and all(float(value) > 0 for value in spacing):
        return (float(spacing[0]), float(spacing[1])), "pixel_spacing"
    return None, "none"


def _frame_time_ms(dataset: pydicom.Dataset) -> float | None:
    """Time between frames in ms from FrameTime, else from CineRate (frames per second), else None."""
    frame_time = dataset.get("FrameTime")
    if frame_time is not None and float(frame_time) > 0:
        return float(frame_time)
    cine_rate = dataset.get("CineRate")
    if cine_rate is not None and float(cine_rate) > 0:
        return 1000.0 / float(cine_rate)
    return None


def read_dicom(path: PathLike, color: str | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Read an ultrasound DICOM file (single frame or cine) as uint8 frames, frames first.

    Colour handling: YBR_FULL / YBR_FULL_422 (JPEG baseline cines) are converted to RGB with pydicom's
    ``convert_color_space``; PALETTE COLOR is looked up with ``apply_color_lut``; MONOCHROME1 is inverted so
    that white means echo as in MONOCHROME2; RGB is kept. Samples above 8 bits are mapped linearly from their
    stored-bit range onto 0..255 (a fixed map, never a per-file stretch). Modality and VOI LUTs are not applied.

    Args:
        path: the DICOM file.
        color: None keeps the file's colours (gray for MONOCHROME, RGB otherwise); ``"gray"``, ``"rgb"`` and
            ``"auto"`` convert as in :func:`read_image_array`.

    Returns:
        ``(frames, meta)``: uint8 frames ``(F, H, W)`` or ``(F, H, W, 3)`` (F = 1 for a single frame) and a dict
        with ``num_frames``; ``frame_time_ms`` (FrameTime, else 1000 / CineRate, else None);
        ``pixel_spacing_mm`` ``(row, column)`` or None; ``spacing_source`` (``"ultrasound_regions"``,
        ``"pixel_spacing"`` or ``"none"``); ``patient_id``, ``sop_instance_uid`` (None when absent);
        ``photometric_interpretation`` (as stored in the file); ``transfer_syntax_uid``;
        ``original_channel_dim`` (-1 for RGB output, ``"no_channel"`` otherwise).

    Raises:
        ValueError: invalid ``color``.
        InputError: missing, empty or non-DICOM file, no pixel data, an undecodable transfer syntax (the
            message names it and what to install), damaged pixel data, or an unsupported photometric.
    """
    _check_color(color, allow_none=True)
    path = _check_readable_file(path)
    dataset = _read_dicom_dataset(path)
    frames = _decode_dicom_pixels(dataset, path)
    if color is not None:
        frames = _apply_color(frames, color, spatial_ndim=3)
    spacing, source = _pixel_spacing_mm(dataset)
    patient_id = dataset.get("PatientID")
    sop_uid = dataset.get("SOPInstanceUID")
    meta = {
        "num_frames": int(frames.shape[0]),
        "frame_time_ms": _frame_time_ms(dataset),
        "pixel_spacing_mm": spacing,
        "spacing_source": source,
        "patient_id": str(patient_id) if patient_id not in (None, "") else None,
        "sop_instance_uid": str(sop_uid) if sop_uid not in (None, "") else None,
        "photometric_interpretation": str(dataset.get("PhotometricInterpretation", "")),
        "transfer_syntax_uid": str(dataset.file_meta.TransferSyntaxUID),
        "original_channel_dim": -1 if frames.ndim == 4 else "no_channel",
    }
    return frames, meta


# ----------------------------------------------------------------------------------------------------------------
# video
# ----------------------------------------------------------------------------------------------------------------


def _iter_video_frames(path: Path, stream_info: dict[str, float]) -> Iterator[np.ndarray]:
    """Yield every decodable frame of ``path`` as uint8 RGB ``(H, W, 3)``.

    Before the first frame, ``stream_info`` receives ``fps`` (NaN when unknown) and ``declared_frames``
    (the container's frame count, 0 when absent; informative only).

    Raises:
        InputError: the container cannot be opened, has no video stream, or decoding fails.
    """
    try:
        container = av.open(os.fspath(path))
    except (av.FFmpegError, OSError, ValueError) as err:
        raise InputError(path, f"cannot open the video ({err}).") from err
    with container:
        if not container.streams.video:
            raise InputError(path, "holds no video stream.")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        stream_info["fps"] = float(rate) if rate else float("nan")
        stream_info["declared_frames"] = int(stream.frames or 0)
        decoded = 0
        try:
            for frame in container.decode(stream):
                decoded += 1
                yield frame.to_ndarray(format="rgb24")
        except (av.FFmpegError, OSError, ValueError) as err:
            raise InputError(path, f"video decoding failed after {decoded} frames ({err}).") from err


def _read_video_frames(
    path: PathLike, color: str, indices: Sequence[int] | np.ndarray | None = None
) -> tuple[np.ndarray, float]:
    """Decode a video to uint8 frames (all, or ``indices`` in the order given) and return them with the fps.

    With ``indices`` decoding stops after the largest index, so reading the first frames of a long clip is cheap.
    """
    path = _check_readable_file(path)
    wanted = None if indices is None else _index_array(indices)
    if wanted is not None and wanted.size and int(wanted.min()) < 0:
        raise IndexError(f"{path}: frame index {int(wanted.min())} is negative; frame indices start at 0.")
    # an empty request still decodes one frame, so the result has the right (0, H, W[, 3]) shape
    stop = None if wanted is None else (int(wanted.max()) + 1 if wanted.size else 1)
    wanted_set = None if wanted is None else set(wanted.tolist())
    keep_rgb = color != "gray"  # "auto" decides after seeing every frame
    kept: dict[int, np.ndarray] = {}
    count, first_frame = 0, None
    stream_info: dict[str, float] = {"fps": float("nan"), "declared_frames": 0}
    with contextlib.closing(_iter_video_frames(path, stream_info)) as frames_iter:
        for index, rgb in enumerate(frames_iter):
            frame = rgb if keep_rgb else _rgb_to_gray(rgb)
            first_frame = frame if first_frame is None else first_frame
            count = index + 1
            if wanted_set is None or index in wanted_set:
                kept[index] = frame
            if stop is not None and count >= stop:
                break
    if first_frame is None:
        raise InputError(path, "holds no decodable video frame.")
    if stop is not None and count < stop:
        raise IndexError(f"{path}: frame index {stop - 1} is out of range: the video has {count} frames.")
    fps, declared = stream_info["fps"], int(stream_info["declared_frames"])
    if wanted is None and count < _TRUNCATION_WARNING_RATIO * declared:
        warnings.warn(
            f"{path}: the container declares {declared} frames but only {count} decode; the file may be truncated.",
            stacklevel=3,
        )
    order = list(range(count)) if wanted is None else wanted.tolist()
    if not order:
        return np.zeros((0, *first_frame.shape), dtype=np.uint8), fps
    frames = np.stack([kept[i] for i in order])
    if color == "auto" and _channels_equal(frames):
        frames = frames[..., 0].copy()
    return frames, fps


def read_video(path: PathLike, color: str = "gray", indices: Sequence[int] | None = None) -> np.ndarray:
    """Decode a video (mp4, avi, mov, mpeg, mpg, gif, m4v, webm) with PyAV into uint8 frames, frames first.

    The frame count is the number of frames that actually decode; container metadata is not trusted (a warning
    names a file that declares over 10% more frames than decode, a sign of truncation).

    Args:
        path: the video file.
        color: ``"gray"`` (BT.601 luma), ``"rgb"``, or ``"auto"`` (RGB only when some frame has colour).
        indices: frame indices to return, in the given order (repeats allowed); None returns every frame.

    Returns:
        uint8 array ``(F, H, W)`` or ``(F, H, W, 3)``; with ``indices``, ``F = len(indices)``.

    Raises:
        ValueError: invalid ``color``.
        TypeError: non-integer ``indices``.
        IndexError: an index is negative or not below the frame count (the message names the file and count).
        InputError: missing, empty, undecodable video or one without any frame.
    """
    _check_color(color)
    return _read_video_frames(path, color, indices)[0]


def _index_array(indices: Sequence[int] | np.ndarray) -> np.ndarray:
    """Frame indices as a 1D int64 array.

    Raises:
        TypeError: the indices are not integers or not one-dimensional.
    """
    array = np.asarray(indices)
    if array.size == 0:
        return np.zeros(0, dtype=np.int64)
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"frame indices must be a 1D sequence of ints, got {array.dtype} array of shape {array.shape}.")
    return array.astype(np.int64)


# ----------------------------------------------------------------------------------------------------------------
# MONAI readers
# ----------------------------------------------------------------------------------------------------------------


class _DeferredDecodeReader(ImageReader):
    """Base for usseg readers: ``read`` only claims the files, ``get_data`` decodes them.

    With ``LoadImage(reader=...)`` MONAI catches any exception raised by ``read`` and silently retries the file
    with its default readers, so an ``InputError`` from ``read`` would turn into a transposed ``PILReader`` result
    or a vague ``RuntimeError``. Decoding in ``get_data`` lets usseg's error reach the caller. A file this reader
    does not handle still makes ``read`` raise, so MONAI can fall back to another reader (a NIfTI label, say).
    """

    suffixes: tuple[str, ...] = ()

    def _claims(self, path: Path) -> bool:
        return path.name.lower().endswith(self.suffixes)

    def verify_suffix(self, filename: Sequence[PathLike] | PathLike) -> bool:
        """Whether every file in ``filename`` has a suffix this reader handles (case-insensitive)."""
        names = [filename] if isinstance(filename, (str, os.PathLike)) else list(filename)
        return bool(names) and all(self._claims(Path(name)) for name in names)

    def read(self, data: Sequence[PathLike] | PathLike, **kwargs: Any) -> tuple[Path, ...]:
        """Claim the files in ``data`` without decoding them.

        Returns:
            The paths, decoded later by :meth:`get_data`.

        Raises:
            ValueError: a file does not have a suffix this reader handles.
        """
        paths = tuple(Path(p) for p in ([data] if isinstance(data, (str, os.PathLike)) else data))
        for path in paths:
            if not self._claims(path):
                raise ValueError(f"{path}: {type(self).__name__} reads {', '.join(self.suffixes)} files only.")
        return paths

    def _single(self, paths: tuple[Path, ...]) -> Path:
        if len(paths) != 1:
            raise ValueError(f"{type(self).__name__} reads one file at a time, got {len(paths)}: {list(paths)}.")
        return paths[0]


def _spatial_meta(path: Path, array: np.ndarray, spatial_ndim: int, spacing: Sequence[float]) -> dict[str, Any]:
    """MONAI meta keys shared by the readers: file name, shapes, channel position, affine and spacing."""
    spacing_array = np.asarray(spacing, dtype=np.float64)
    affine = np.diag([*spacing_array.tolist(), 1.0])
    return {
        "filename_or_obj": str(path),
        "spatial_shape": np.asarray(array.shape[:spatial_ndim], dtype=np.int64),
        "original_channel_dim": -1 if array.ndim == spatial_ndim + 1 else "no_channel",
        "affine": affine,
        "original_affine": affine.copy(),
        "spacing": spacing_array,
    }


class UltrasoundImageReader(_DeferredDecodeReader):
    """MONAI reader for PNG/JPEG/BMP/TIFF ultrasound images and masks, in row-major ``(H, W)`` order.

    Unlike MONAI's ``PILReader`` it does not transpose: arrays are ``(H, W)`` or ``(H, W, 3)``, and after
    ``EnsureChannelFirstd`` ``(1, H, W)`` or ``(3, H, W)``. Metadata: ``filename_or_obj``, ``spatial_shape``,
    ``original_channel_dim`` (``"no_channel"`` for gray and masks, -1 for RGB), ``affine`` and
    ``original_affine`` (3x3 identity) and ``spacing`` (1, 1). Several files are stacked as channels: gray images
    on a new first axis (``original_channel_dim`` 0), colour images along the colour axis.

    Saving such an image with ``SaveImage`` to PNG keeps its orientation only with
    ``.set_options(write_kwargs={"reverse_indexing": False})`` (see the module docstring).

    Args:
        color: ``"gray"``, ``"rgb"`` or ``"auto"``, as in :func:`read_image_array`; ignored for masks.
        mask_mode: None reads images; ``"binary"`` or ``"labels"`` reads masks through :func:`read_mask`.
        num_classes: number of classes for ``mask_mode="labels"``.

    Raises:
        ValueError: invalid ``color``, ``mask_mode`` or ``num_classes``.

    Example::

        LoadImaged(keys=["image", "label"], reader=UltrasoundImageReader())  # gray image and gray mask values
        LoadImaged(keys="label", reader=UltrasoundImageReader(mask_mode="binary"))  # {0, 1}
    """

    suffixes = IMAGE_SUFFIXES

    def __init__(self, color: str = "gray", mask_mode: str | None = None, num_classes: int | None = None) -> None:
        super().__init__()
        _check_color(color)
        if mask_mode is not None:
            _check_mask_args(mask_mode, num_classes)
        elif num_classes is not None:
            raise ValueError(f"num_classes={num_classes!r} is only used with mask_mode; got mask_mode=None.")
        self.color = color
        self.mask_mode = mask_mode
        self.num_classes = num_classes

    def _read_one(self, path: Path) -> np.ndarray:
        if self.mask_mode is None:
            return read_image_array(path, self.color)
        return read_mask(path, self.mask_mode, self.num_classes)

    def get_data(self, img: tuple[Path, ...]) -> tuple[np.ndarray, dict[str, Any]]:
        """Decode the claimed file(s).

        Args:
            img: the paths returned by :meth:`read`.

        Returns:
            ``(array, meta)``: uint8 ``(H, W)`` / ``(H, W, 3)``, or stacked channels for several files.

        Raises:
            InputError: a file cannot be read, or the files differ in shape (both shapes are named).
        """
        arrays = [self._read_one(path) for path in img]
        first = arrays[0]
        for path, array in zip(img[1:], arrays[1:]):
            if array.shape != first.shape:
                raise InputError(path, f"shape {array.shape} differs from {first.shape} of {img[0]}.")
        meta = _spatial_meta(img[0], first, 2, (1.0, 1.0))
        if len(arrays) == 1:
            return first, meta
        if first.ndim == 2:
            meta["original_channel_dim"] = 0
            return np.stack(arrays), meta
        return np.concatenate(arrays, axis=-1), meta


class UltrasoundDicomReader(_DeferredDecodeReader):
    """MONAI reader for ultrasound DICOM files (single frame or cine), frames first, calibrated in mm.

    Arrays are ``(F, H, W)`` or ``(F, H, W, 3)`` as from :func:`read_dicom`, so ``EnsureChannelFirstd`` gives
    ``(1, F, H, W)`` or ``(3, F, H, W)``. The affine is ``diag(1, row_mm, col_mm, 1)`` with the spacing from
    the ultrasound regions or PixelSpacing; without calibration the spacing is 1 and ``spacing_source`` is
    ``"none"``. The meta also holds ``num_frames``, ``frame_time_ms`` (NaN when unknown), ``patient_id`` and
    ``sop_instance_uid`` (``""`` when absent: MONAI cannot collate None), ``photometric_interpretation`` and
    ``transfer_syntax_uid``. pydicom is used directly, so MONAI's ``PydicomReader`` noise is not printed.

    ``verify_suffix`` accepts ``.dcm`` / ``.dicom`` and suffix-less files carrying the DICOM marker.

    Args:
        color: None keeps the file's colours; ``"gray"``, ``"rgb"`` or ``"auto"`` convert.
        squeeze_single_frame: return a single-frame file as ``(H, W)`` / ``(H, W, 3)`` with a 2D affine, for
            2D pipelines; cines keep their frame axis.

    Raises:
        ValueError: invalid ``color``.
        TypeError: ``squeeze_single_frame`` is not a bool.
    """

    suffixes = DICOM_SUFFIXES

    def __init__(self, color: str | None = None, squeeze_single_frame: bool = False) -> None:
        super().__init__()
        _check_color(color, allow_none=True)
        if not isinstance(squeeze_single_frame, bool):
            raise TypeError(f"squeeze_single_frame must be a bool, got {squeeze_single_frame!r}.")
        self.color = color
        self.squeeze_single_frame = squeeze_single_frame

    def _claims(self, path: Path) -> bool:
        # DICOM exports often have no suffix at all (IM0001); recognise those by their marker
        return super()._claims(path) or (path.suffix == "" and path.is_file() and _looks_like_dicom(path))

    def get_data(self, img: tuple[Path, ...]) -> tuple[np.ndarray, dict[str, Any]]:
        """Decode the claimed DICOM file.

        Args:
            img: the one path returned by :meth:`read`.

        Returns:
            ``(frames, meta)`` as described in the class docstring.

        Raises:
            ValueError: several files were given.
            InputError: as :func:`read_dicom`.
        """
        path = self._single(img)
        frames, info = read_dicom(path, self.color)
        spatial_ndim = 3
        if self.squeeze_single_frame and frames.shape[0] == 1:
            frames, spatial_ndim = frames[0], 2
        row_mm, col_mm = info["pixel_spacing_mm"] or (1.0, 1.0)
        meta = _spatial_meta(path, frames, spatial_ndim, (1.0, row_mm, col_mm)[-spatial_ndim:])
        frame_time = info["frame_time_ms"]
        meta.update(
            spacing_source=info["spacing_source"],
            num_frames=info["num_frames"],
            frame_time_ms=float("nan") if frame_time is None else frame_time,
            patient_id=info["patient_id"] or "",
            sop_instance_uid=info["sop_instance_uid"] or "",
            photometric_interpretation=info["photometric_interpretation"],
            transfer_syntax_uid=info["transfer_syntax_uid"],
        )
        return frames, meta


class VideoReader(_DeferredDecodeReader):
    """MONAI reader for whole videos (mp4, avi, mov, mpeg, mpg, gif, m4v, webm), frames first.

    Arrays are ``(F, H, W)`` or ``(F, H, W, 3)`` as from :func:`read_video`; ``EnsureChannelFirstd`` gives
    ``(1, F, H, W)`` or ``(3, F, H, W)``. Meta: ``num_frames`` (decoded, exact), ``fps`` (NaN when unknown),
    a 4x4 identity affine and spacing 1. For random frame access over an epoch use :class:`VideoFrameCache`.

    Args:
        color: ``"gray"``, ``"rgb"`` or ``"auto"``.

    Raises:
        ValueError: invalid ``color``.
    """

    suffixes = VIDEO_SUFFIXES

    def __init__(self, color: str = "gray") -> None:
        super().__init__()
        _check_color(color)
        self.color = color

    def get_data(self, img: tuple[Path, ...]) -> tuple[np.ndarray, dict[str, Any]]:
        """Decode the claimed video.

        Args:
            img: the one path returned by :meth:`read`.

        Returns:
            ``(frames, meta)`` as described in the class docstring.

        Raises:
            ValueError: several files were given.
            InputError: as :func:`read_video`.
        """
        path = self._single(img)
        frames, fps = _read_video_frames(path, self.color)
        meta = _spatial_meta(path, frames, 3, (1.0, 1.0, 1.0))
        meta.update(num_frames=int(frames.shape[0]), fps=fps)
        return frames, meta


# ----------------------------------------------------------------------------------------------------------------
# frame cache
# ----------------------------------------------------------------------------------------------------------------


def _natural_key(name: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key that orders ``frame2`` before ``frame10``."""
    return tuple((0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", name.lower()))


def _read_frame_folder(folder: Path, color: str) -> np.ndarray:
    """Read a folder of frame images, sorted naturally by name, as uint8 ``(F, H, W[, 3])``.

    Raises:
        InputError: no frame image in the folder, an unreadable frame, or frames of different shapes.
    """
    files = sorted(
        (p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and _has_suffix(p, IMAGE_SUFFIXES)),
        key=lambda p: _natural_key(p.name),
    )
    if not files:
        raise InputError(folder, f"folder holds no frame images ({', '.join(IMAGE_SUFFIXES)}).")
    frames = [read_image_array(p, "rgb" if color == "auto" else color) for p in files]
    for path, frame in zip(files[1:], frames[1:]):
        if frame.shape != frames[0].shape:
            raise InputError(path, f"frame shape {frame.shape} differs from {frames[0].shape} of {files[0].name}.")
    stacked = np.stack(frames)
    return _apply_color(stacked, color, spatial_ndim=3) if color == "auto" else stacked


def _load_frame_source(path: Path, color: str) -> np.ndarray:
    """All frames of a video file, a DICOM file or a folder of frame images, as uint8, frames first."""
    if path.is_dir():
        return _read_frame_folder(path, color)
    if _has_suffix(path, DICOM_SUFFIXES) or (path.suffix == "" and _looks_like_dicom(path)):
        return read_dicom(path, color)[0]
    if _has_suffix(path, VIDEO_SUFFIXES):
        return read_video(path, color)
    raise InputError(
        path,
        f"not a frame source: expected a video ({', '.join(VIDEO_SUFFIXES)}), a DICOM file or a folder of frames.",
    )


def downscale_frames(frames: np.ndarray, max_side: int) -> np.ndarray:
    """Frames whose longer side exceeds ``max_side``, shrunk by area averaging with the aspect ratio kept.

    Args:
        frames: uint8 frames, ``(T, H, W)`` or ``(T, H, W, 3)``.
        max_side: the longest side of the result, in pixels.

    Returns:
        ``frames`` itself when ``max(H, W) <= max_side``; otherwise a new uint8 array
        ``(T, round(H * s), round(W * s)[, 3])`` with ``s = max_side / max(H, W)`` (each side at least 1).

    Raises:
        TypeError: ``frames`` is not uint8 (every frame reader returns uint8).
    """
    if frames.dtype != np.uint8:
        raise TypeError(f"frames must be uint8, got {frames.dtype}.")
    height, width = frames.shape[1:3]
    if max(height, width) <= max_side:
        return frames
    scale = max_side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))  # PIL takes (width, height)
    out = np.empty((frames.shape[0], size[1], size[0], *frames.shape[3:]), dtype=np.uint8)
    for index, frame in enumerate(frames):  # frame by frame: a float copy of a whole 1080p video would be gigabytes
        out[index] = np.asarray(Image.fromarray(np.ascontiguousarray(frame)).resize(size, Image.Resampling.BOX))
    return out


class VideoFrameCache:
    """LRU cache of fully decoded videos, DICOM cines and frame folders under a byte budget.

    Sampling a few frames per clip per epoch would otherwise decode each video again at every access. Entries
    are keyed by resolved path, modification time, size and colour mode, so an edited file is decoded again (for
    a folder only the folder's own time stamp is checked: edit a frame in place and call :meth:`clear`). The
    least recently used videos are evicted first; a video larger than the whole budget is returned but not kept
    (with a warning, since it will be decoded at every access). Cached arrays are read-only and
    :meth:`get_frames` returns copies.

    The budget applies per process: each DataLoader worker holds its own cache, and pickling a cache (spawned
    workers) ships it empty.

    With ``max_side``, frames are downscaled on decode (area averaging, aspect ratio kept) so that their longer side
    is at most ``max_side``. Training inputs are far smaller than clinical video (64-224 px against 1080p), and a
    full-resolution video fills the budget alone: 150 grey 1080p frames take 311 MB, the same frames at 256 px 6 MB.

    Args:
        max_bytes: memory budget for decoded frames, in bytes (default 2 GiB).
        color: ``"gray"``, ``"rgb"`` or ``"auto"``, applied to every source.
        max_side: longest frame side kept in the cache, in pixels; ``None`` keeps the decoded size. Smaller frames
            are never enlarged.

    Attributes:
        nbytes: bytes of decoded frames held now.
        hits: lookups served from the cache since creation or :meth:`clear`.
        misses: lookups that decoded their source.

    Raises:
        TypeError: ``max_bytes`` or ``max_side`` is not an int.
        ValueError: ``max_bytes`` or ``max_side`` is not positive, or invalid ``color``.

    Example::

        cache = VideoFrameCache(max_bytes=512 * 1024**2, max_side=256)
        pair = cache.get_frames("clip.mp4", [3, 17])  # (2, H, W) uint8
    """

    def __init__(self, max_bytes: int = 2 * 1024**3, color: str = "gray", max_side: int | None = None) -> None:
        for name, value in (("max_bytes", max_bytes), ("max_side", max_side)):
            if value is None and name == "max_side":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}.")
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {value}.")
        _check_color(color)
        self.max_bytes = int(max_bytes)
        self.color = color
        self.max_side = None if max_side is None else int(max_side)
        self._reset()

    def _reset(self) -> None:
        self._entries: OrderedDict[tuple[str, int, int, str], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.nbytes = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __getstate__(self) -> dict[str, Any]:
        # ship the settings only: decoded frames can be gigabytes and a lock cannot be pickled
        return {"max_bytes": self.max_bytes, "color": self.color, "max_side": self.max_side}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.max_bytes = state["max_bytes"]
        self.color = state["color"]
        self.max_side = state.get("max_side")
        self._reset()

    def num_frames(self, path: PathLike) -> int:
        """Exact number of frames of ``path`` (decodes and caches it on first use).

        Raises:
            InputError: missing, undecodable or empty source.
        """
        return int(self._frames(Path(path)).shape[0])

    def get_frames(self, path: PathLike, indices: Sequence[int]) -> np.ndarray:
        """Frames ``indices`` of ``path`` in the given order, as a new uint8 ``(n, H, W[, 3])`` array.

        Raises:
            TypeError: non-integer indices.
            IndexError: an index is negative or not below the frame count (the message names the file and count).
            InputError: missing, undecodable or empty source.
        """
        frames = self._frames(Path(path))
        wanted = _index_array(indices)
        out_of_range = wanted[(wanted < 0) | (wanted >= len(frames))]
        if out_of_range.size:
            raise IndexError(
                f"{path}: frame index {int(out_of_range[0])} is out of range: the source has {len(frames)} frames "
                f"(valid indices 0..{len(frames) - 1})."
            )
        return frames[wanted]

    def clear(self) -> None:
        """Drop every cached video and reset the hit and miss counters."""
        with self._lock:
            self._entries.clear()
            self.nbytes = 0
            self.hits = 0
            self.misses = 0

    def _key(self, path: Path) -> tuple[str, int, int, str]:
        try:
            stat = path.stat()
        except FileNotFoundError as err:
            raise InputError(path, "file not found.") from err
        return str(path.resolve()), stat.st_mtime_ns, stat.st_size, self.color

    def _frames(self, path: Path) -> np.ndarray:
        key = self._key(path)
        with self._lock:
            frames = self._entries.get(key)
            if frames is not None:
                self._entries.move_to_end(key)
                self.hits += 1
                return frames
            self.misses += 1
        # decode outside the lock so other threads keep reading cached videos meanwhile
        frames = _load_frame_source(path, self.color)
        if self.max_side is not None:
            frames = downscale_frames(frames, self.max_side)
        frames.setflags(write=False)
        with self._lock:
            self._store(key, frames, path)
        return frames

    def _store(self, key: tuple[str, int, int, str], frames: np.ndarray, path: Path) -> None:
        for stale in [k for k in self._entries if k[0] == key[0] and k[3] == key[3] and k != key]:
            self.nbytes -= self._entries.pop(stale).nbytes  # the file changed: its old frames are dead weight
        if key in self._entries:  # another thread decoded it meanwhile
            return
        if frames.nbytes > self.max_bytes:
            warnings.warn(
                f"{path}: its decoded frames take {frames.nbytes} bytes, more than the cache budget "
                f"max_bytes={self.max_bytes}; it is not cached and will be decoded at every access.",
                stacklevel=4,
            )
            return
        while self._entries and self.nbytes + frames.nbytes > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self.nbytes -= evicted.nbytes
        self._entries[key] = frames
        self.nbytes += frames.nbytes
