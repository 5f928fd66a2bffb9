# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""Scan-cone geometry for channel-first 2D ultrasound images ``(C, H, W)``.

An ultrasound frame exported from a scanner holds the imaging sector (the "scan cone": a rectangle
for a linear probe, a sector or annular sector for phased and curvilinear probes) on a black
background, plus burned-in text, scales and logos around it. :func:`estimate_scan_cone` finds the
sector as the large connected region of non-black speckle; :class:`ScanConeMask` removes everything
outside it and :class:`CropToScanCone` crops to it. Annotations drawn inside the sector (calipers on a
lesion) cannot be told apart from tissue this way and are kept.
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any

import numpy as np
import torch
from monai.config import NdarrayOrTensor
from monai.data import MetaTensor
from monai.data.meta_obj import get_track_meta
from monai.transforms import BorderPad, SpatialCrop
from monai.transforms.inverse import InvertibleTransform
from monai.transforms.transform import Transform
from monai.utils import TraceKeys, TransformBackends, convert_to_dst_type, convert_to_tensor
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

__all__ = ["estimate_scan_cone", "ScanConeMask", "CropToScanCone", "SCAN_CONE_BOX_KEY"]

SCAN_CONE_BOX_KEY = "scan_cone_box"
"""MetaTensor ``meta`` key where :class:`CropToScanCone` records ``[row_start, col_start, row_end, col_end]``."""


def _check_channel_first_2d(img: NdarrayOrTensor, transform_name: str) -> tuple[int, int]:
    """Return ``(H, W)`` of a ``(C, H, W)`` image; raise ``ValueError`` with the shape otherwise."""
    shape = tuple(img.shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"{transform_name} expects a channel-first 2D image (C, H, W), got shape {shape}.")
    return int(shape[1]), int(shape[2])


def _validate_cone_args(
    threshold: Any, morphology_radius: Any, convex_hull: Any, min_area_fraction: Any
) -> tuple[float, int | None, bool, float]:
    """Validate the scan-cone estimation arguments shared by every transform of this module."""
    if not isinstance(threshold, Real) or isinstance(threshold, bool) or not 0.0 <= threshold < 1.0:
        raise ValueError(f"threshold must be a number in [0, 1), got {threshold!r}.")
    if morphology_radius is not None and (
        isinstance(morphology_radius, bool) or not isinstance(morphology_radius, Integral) or morphology_radius < 0
    ):
        raise ValueError(f"morphology_radius must be None or an integer >= 0, got {morphology_radius!r}.")
    if not isinstance(convex_hull, bool):
        raise TypeError(f"convex_hull must be a bool, got {convex_hull!r}.")
    if (
        not isinstance(min_area_fraction, Real)
        or isinstance(min_area_fraction, bool)
        or not 0.0 <= min_area_fraction <= 1.0
    ):
        raise ValueError(f"min_area_fraction must be a number in [0, 1], got {min_area_fraction!r}.")
    radius = None if morphology_radius is None else int(morphology_radius)
    return float(threshold), radius, convex_hull, float(min_area_fraction)


def _disk(radius: int) -> np.ndarray:
    """Boolean disk structuring element of the given radius, ``(2r + 1, 2r + 1)``."""
    offsets = np.arange(-radius, radius + 1)
    return offsets[:, None] ** 2 + offsets[None, :] ** 2 <= radius**2


def _morphology(mask: np.ndarray, radius: int, operation: str) -> np.ndarray:
    """Binary opening or closing with a disk, on a mask padded by edge replication.

    scipy treats the outside of the array as background, so a plain closing or opening would erode a
    cone that touches the image border (a linear probe fills the width); replicating the edge avoids that.
    """
    if radius == 0:
        return mask
    pad = radius + 1
    padded = np.pad(mask, pad, mode="edge")
    operator = ndimage.binary_opening if operation == "opening" else ndimage.binary_closing
    return operator(padded, structure=_disk(radius))[pad:-pad, pad:-pad]


def _convex_hull_mask(mask: np.ndarray) -> np.ndarray:
    """Fill the convex hull of the pixel centres of ``mask`` (``(H, W)`` bool); return it with ``mask`` included.

    Each hull facet is a half-plane ``a * row + b * col + c <= 0``; for a convex region every row holds one
    interval of columns, found from the half-planes without testing every pixel against every facet.
    """
    boundary = mask & ~ndimage.binary_erosion(mask)
    points = np.argwhere(boundary).astype(np.float64)
    try:
        hull = ConvexHull(points)
    except (QhullError, ValueError):
        return mask  # fewer than 3 points or all on one line: the region is its own hull
    height, width = mask.shape
    rows = np.arange(height, dtype=np.float64)[:, None]
    a, b, c = hull.equations[:, 0], hull.equations[:, 1], hull.equations[:, 2]
    tolerance = 1e-7  # pixel centres lying on a facet count as inside
    rhs = -(a[None, :] * rows + c[None, :]) + tolerance  # b * col <= rhs, shape (H, F)
    with np.errstate(divide="ignore", invalid="ignore"):
        bound = rhs / b[None, :]
    col_max = np.min(np.where(b[None, :] > 0, bound, np.inf), axis=1)
    col_min = np.max(np.where(b[None, :] < 0, bound, -np.inf), axis=1)
    row_ok = np.all(np.where(b[None, :] == 0, rhs >= 0, True), axis=1)
    cols = np.arange(width, dtype=np.float64)[None, :]
    filled = (cols >= col_min[:, None]) & (cols <= col_max[:, None]) & row_ok[:, None]
    return filled | mask


def estimate_scan_cone(
    img: NdarrayOrTensor,
    threshold: float = 0.05,
    morphology_radius: int | None = None,
    convex_hull: bool = True,
    min_area_fraction: float = 0.05,
) -> np.ndarray:
    """Estimate the imaging sector of a B-mode frame.

    Steps: average the channels; keep pixels above ``min + threshold * (max - min)``; a morphological
    opening cuts thin bright structures (text strokes, calipers, scale ticks) from the speckle; the
    largest connected component is the cone; a closing and a hole filling make it solid (dark speckle,
    cysts, vessels); the convex hull restores dark regions on its border, such as a shadow reaching the
    bottom edge. The threshold is relative to the image's own range, so ``uint8`` and ``[0, 1]`` images
    need no setting.

    Args:
        img: channel-first image ``(C, H, W)``, numpy or torch, any real dtype.
        threshold: fraction of the intensity range separating signal from the black background, in
            ``[0, 1)``. Defaults to 0.05.
        morphology_radius: disk radius in pixels for the opening and closing; None (default) uses
            ``max(1, round(min(H, W) / 100))``; 0 switches both off.
        convex_hull: replace the region by its convex hull. Defaults to True (sector, linear and
            curvilinear fields of view are convex or nearly so).
        min_area_fraction: a largest component smaller than this fraction of the image is not a cone
            (for example a blank frame with text only). Defaults to 0.05.

    Returns:
        bool array ``(H, W)``, all False when no cone is found (constant image, nothing large enough).

    Raises:
        ValueError: ``img`` is not ``(C, H, W)``, or an argument is out of its domain.
    """
    threshold, morphology_radius, convex_hull, min_area_fraction = _validate_cone_args(
        threshold, morphology_radius, convex_hull, min_area_fraction
    )
    height, width = _check_channel_first_2d(img, "estimate_scan_cone")
    gray = np.asarray(convert_to_tensor(img, track_meta=False, dtype=torch.float64).detach().cpu()).mean(axis=0)
    low, high = float(gray.min()), float(gray.max())
    empty = np.zeros((height, width), dtype=bool)
    if not (math.isfinite(low) and math.isfinite(high)) or high <= low:
        return empty
    radius = max(1, round(min(height, width) / 100)) if morphology_radius is None else morphology_radius
    signal = _morphology(gray > low + threshold * (high - low), radius, "opening")
    components, count = ndimage.label(signal)
    if count == 0:
        return empty
    sizes = np.bincount(components.ravel())[1:]
    largest = int(np.argmax(sizes))
    if sizes[largest] < min_area_fraction * height * width:
        return empty
    cone = ndimage.binary_fill_holes(_morphology(components == largest + 1, radius, "closing"))
    return _convex_hull_mask(cone) if convex_hull else cone


class ScanConeMask(Transform):
    """Remove everything outside the scan cone (burned-in text, scales, logos), or return the cone mask.

    The cone is found by :func:`estimate_scan_cone`. When no cone is found, the whole image counts as the
    cone, so nothing is removed from a frame the estimator cannot read.

    Args:
        mode: ``"apply"`` (default): return the image with the outside set to 0; ``"mask"``: return the
            cone mask ``(1, H, W)`` (1 inside, 0 outside).
        threshold: see :func:`estimate_scan_cone`. Defaults to 0.05.
        morphology_radius: see :func:`estimate_scan_cone`. Defaults to None (automatic).
        convex_hull: see :func:`estimate_scan_cone`. Defaults to True.
        min_area_fraction: see :func:`estimate_scan_cone`. Defaults to 0.05.

    Raises:
        ValueError: an argument is out of its domain (the message quotes it).
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self,
        mode: str = "apply",
        threshold: float = 0.05,
        morphology_radius: int | None = None,
        convex_hull: bool = True,
        min_area_fraction: float = 0.05,
    ) -> None:
        if mode not in ("apply", "mask"):
            raise ValueError(f"mode must be 'apply' or 'mask', got {mode!r}.")
        self.mode = mode
        self.threshold, self.morphology_radius, self.convex_hull, self.min_area_fraction = _validate_cone_args(
            threshold, morphology_radius, convex_hull, min_area_fraction
        )

    def estimate(self, img: NdarrayOrTensor) -> np.ndarray:
        """The cone of ``img`` ``(C, H, W)`` as a bool array ``(H, W)``; all True when none is found."""
        cone = estimate_scan_cone(img, self.threshold, self.morphology_radius, self.convex_hull, self.min_area_fraction)
        return cone if cone.any() else np.ones_like(cone)

    @staticmethod
    def apply_mask(img: NdarrayOrTensor, cone: np.ndarray) -> NdarrayOrTensor:
        """Set the pixels of ``img`` ``(C, H, W)`` outside ``cone`` ``(H, W)`` to 0.

        Returns:
            float32 image ``(C, H, W)``, a MetaTensor (metadata kept) when meta tracking is on.

        Raises:
            ValueError: ``img`` is not ``(C, H, W)`` or its spatial shape differs from ``cone``'s.
        """
        img = convert_to_tensor(img, track_meta=get_track_meta(), dtype=torch.float32)
        shape = _check_channel_first_2d(img, "ScanConeMask")
        if shape != cone.shape:
            raise ValueError(f"ScanConeMask: image shape {tuple(img.shape)} does not match cone shape {cone.shape}.")
        inside = convert_to_dst_type(cone[None], img, dtype=torch.bool)[0]
        return torch.where(inside, img, torch.zeros((), dtype=img.dtype, device=img.device))

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        """Mask ``img`` or return its cone.

        Args:
            img: channel-first image ``(C, H, W)``: numpy, torch or MetaTensor, any real dtype.

        Returns:
            float32 ``(C, H, W)`` image (``"apply"``) or ``(1, H, W)`` mask (``"mask"``), carrying the
            input's metadata.

        Raises:
            ValueError: ``img`` is not ``(C, H, W)``.
        """
        img = convert_to_tensor(img, track_meta=get_track_meta(), dtype=torch.float32)
        cone = self.estimate(img)
        if self.mode == "mask":
            return convert_to_dst_type(cone[None].astype(np.float32), img, dtype=torch.float32)[0]
        return self.apply_mask(img, cone)


def _box_from_cone(cone: np.ndarray, margin: int) -> tuple[int, int, int, int]:
    """``(row_start, col_start, row_end, col_end)`` (ends exclusive) of ``cone`` grown by ``margin``, clipped."""
    height, width = cone.shape
    rows, cols = np.nonzero(cone)
    return (
        max(int(rows.min()) - margin, 0),
        max(int(cols.min()) - margin, 0),
        min(int(rows.max()) + 1 + margin, height),
        min(int(cols.max()) + 1 + margin, width),
    )


def _crop_to_box(img: torch.Tensor, box: tuple[int, int, int, int]) -> torch.Tensor:
    """Crop ``img`` ``(C, H, W)`` to ``box`` with MONAI's ``SpatialCrop`` (traced, so invertible) and record the box."""
    row_start, col_start, row_end, col_end = box
    cropped = SpatialCrop(roi_start=(row_start, col_start), roi_end=(row_end, col_end))(img)
    if isinstance(cropped, MetaTensor):
        cropped.meta[SCAN_CONE_BOX_KEY] = list(box)
    return cropped


def _uncrop(img: torch.Tensor, transform_name: str) -> torch.Tensor:
    """Undo the most recent ``SpatialCrop`` traced on ``img`` by padding back with zeros.

    The crop is traced by a ``SpatialCrop`` built for that call, so its instance id cannot be matched;
    the class name is checked instead, which catches an inverse applied out of order.
    """
    if not isinstance(img, MetaTensor):
        raise TypeError(f"{transform_name}.inverse needs a MetaTensor with its applied_operations, got {type(img)}.")
    if not img.applied_operations:
        raise RuntimeError(f"{transform_name}.inverse: the image has no traced transform to invert.")
    last = img.applied_operations[-1]
    if last.get(TraceKeys.CLASS_NAME) != "SpatialCrop":
        raise RuntimeError(
            f"{transform_name}.inverse: the most recent traced transform is {last.get(TraceKeys.CLASS_NAME)!r}, "
            "not the SpatialCrop of the scan-cone crop; invert the later transforms first."
        )
    transform = img.applied_operations.pop()
    pad = BorderPad(transform[TraceKeys.EXTRA_INFO]["cropped"])
    with pad.trace_transform(False):
        return pad(img)


class CropToScanCone(InvertibleTransform):
    """Crop an image to the bounding box of its scan cone, plus ``margin`` pixels.

    The crop is MONAI's ``SpatialCrop``, so it is traced in ``applied_operations`` and undone by
    :meth:`inverse` (padding with zeros); the box ``[row_start, col_start, row_end, col_end]`` (ends
    exclusive) is also written to ``meta["scan_cone_box"]``. When no cone is found the image is returned
    whole (a box covering the full image). The output is float32.

    Args:
        margin: pixels added on every side of the box (clipped to the image), an integer ``>= 0``. Defaults to 0.
        threshold: see :func:`estimate_scan_cone`. Defaults to 0.05.
        morphology_radius: see :func:`estimate_scan_cone`. Defaults to None (automatic).
        convex_hull: see :func:`estimate_scan_cone`. Defaults to True.
        min_area_fraction: see :func:`estimate_scan_cone`. Defaults to 0.05.

    Raises:
        ValueError: an argument is out of its domain (the message quotes it).
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self,
        margin: int = 0,
        threshold: float = 0.05,
        morphology_radius: int | None = None,
        convex_hull: bool = True,
        min_area_fraction: float = 0.05,
    ) -> None:
        if isinstance(margin, bool) or not isinstance(margin, Integral) or margin < 0:
            raise ValueError(f"margin must be an integer >= 0, got {margin!r}.")
        self.margin = int(margin)
        self.threshold, self.morphology_radius, self.convex_hull, self.min_area_fraction = _validate_cone_args(
            threshold, morphology_radius, convex_hull, min_area_fraction
        )

    def compute_box(self, img: NdarrayOrTensor) -> tuple[int, int, int, int]:
        """The crop box of ``img`` ``(C, H, W)``: ``(row_start, col_start, row_end, col_end)``, ends exclusive.

        Raises:
            ValueError: ``img`` is not ``(C, H, W)``.
        """
        cone = estimate_scan_cone(img, self.threshold, self.morphology_radius, self.convex_hull, self.min_area_fraction)
        if not cone.any():
            return (0, 0, cone.shape[0], cone.shape[1])
        return _box_from_cone(cone, self.margin)

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        """Crop ``img`` to its scan cone.

        Args:
            img: channel-first image ``(C, H, W)``: numpy, torch or MetaTensor, any real dtype.

        Returns:
            float32 image ``(C, h, w)`` with ``h <= H``, ``w <= W``; a MetaTensor with the crop traced when meta
            tracking is on.

        Raises:
            ValueError: ``img`` is not ``(C, H, W)``.
        """
        img = convert_to_tensor(img, track_meta=get_track_meta(), dtype=torch.float32)
        return _crop_to_box(img, self.compute_box(img))

    def inverse(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        """Pad a cropped MetaTensor back to its size before the crop (zeros outside the box).

        Raises:
            TypeError: ``img`` is not a MetaTensor.
            RuntimeError: the most recent traced transform of ``img`` is not this crop.
        """
        return _uncrop(img, type(self).__name__)
