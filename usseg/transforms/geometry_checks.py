# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""A check that co-registered images (a multi-modal pair, an image and its mask) share one pixel grid.

Two modalities of one case (B-mode and strain, B-mode and Doppler) are fused pixel by pixel, so they must have the
same spatial shape and the same pixel spacing. A pair exported at different depths or zoom levels has a different
spacing even when the shapes agree, and resizing both to the network size would then silently misalign them. Place
the check right after loading, before any resizing or cropping changes the grids.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from numbers import Real
from typing import Any

import numpy as np
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.data.utils import affine_to_spacing
from monai.transforms import MapTransform

from usseg.errors import InputError
from usseg.transforms.checks import source_file

__all__ = ["CheckSameGeometryd", "CheckSameGeometryD", "CheckSameGeometryDict"]


def _spatial_shape(value: Any, key: Hashable) -> tuple[int, ...]:
    """Spatial shape of a channel-first ``(C, *spatial)`` array or tensor.

    Raises:
        TypeError: ``value`` has no ``shape`` (e.g. a path: the image was not loaded yet) or no spatial axis.
    """
    shape = getattr(value, "shape", None)
    if shape is None or len(shape) < 2:
        described = type(value).__name__ if shape is None else f"shape {tuple(shape)}"
        raise TypeError(
            f"CheckSameGeometryd: key {key!r} must hold a loaded channel-first image (C, *spatial), got {described}; "
            "place the check after LoadImaged and EnsureChannelFirstd."
        )
    return tuple(int(size) for size in shape[1:])


def _spacing(value: Any, spatial_ndim: int) -> tuple[float, ...] | None:
    """Pixel spacing from a MetaTensor's affine (kept current by MONAI's spatial transforms), else None."""
    if not isinstance(value, MetaTensor):
        return None
    affine = np.asarray(value.affine.detach().cpu(), dtype=np.float64)
    if affine.ndim != 2 or affine.shape[0] < spatial_ndim + 1:
        return None
    return tuple(float(s) for s in affine_to_spacing(affine, r=spatial_ndim))


def _format_spacing(spacing: tuple[float, ...] | None) -> str:
    return "unknown" if spacing is None else "(" + ", ".join(f"{s:g}" for s in spacing) + ")"


class CheckSameGeometryd(MapTransform):
    """Raise ``InputError`` when the keyed images differ in spatial shape or pixel spacing.

    Every key is compared with the first key present. The spatial shape is ``shape[1:]`` of the channel-first
    ``(C, *spatial)`` image. The spacing is read from the affine of a ``MetaTensor`` (the usseg readers put the
    DICOM calibration there), and compared only when both images are MetaTensors; plain arrays and tensors carry
    no spacing, so only their shapes are compared. The message names both files (``meta["filename_or_obj"]``, or
    the key when unknown) and both shapes and spacings.

    Args:
        keys: the images that must share one grid, at least two (for example ``["image", "image_m2"]``).
        spacing_rtol: relative tolerance of the spacing comparison, a finite number >= 0. Defaults to 1e-4, which
            absorbs the rounding of DICOM decimal strings but not a different depth setting.
        allow_missing_keys: skip absent keys instead of raising ``KeyError``; fewer than two present keys pass.

    Raises:
        ValueError: fewer than two keys, or a negative or non-finite ``spacing_rtol``.
        TypeError: ``spacing_rtol`` is not a number.

    Example::

        Compose([
            LoadImaged(keys=["image", "image_m2"], reader=UltrasoundImageReader()),
            EnsureChannelFirstd(keys=["image", "image_m2"]),
            CheckSameGeometryd(keys=["image", "image_m2"]),
        ])
    """

    def __init__(self, keys: KeysCollection, spacing_rtol: float = 1e-4, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        if len(self.keys) < 2:
            raise ValueError(f"CheckSameGeometryd needs at least two keys to compare, got keys={keys!r}.")
        if isinstance(spacing_rtol, bool) or not isinstance(spacing_rtol, Real):
            raise TypeError(f"spacing_rtol must be a number, got {spacing_rtol!r}.")
        if not (math.isfinite(spacing_rtol) and spacing_rtol >= 0):
            raise ValueError(f"spacing_rtol must be a finite number >= 0, got {spacing_rtol!r}.")
        self.spacing_rtol = float(spacing_rtol)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Check the keyed images of ``data`` and return it (as a new dict) unchanged.

        Args:
            data: a dictionary holding channel-first images ``(C, *spatial)`` under ``keys``.

        Returns:
            A shallow copy of ``data``.

        Raises:
            InputError: a spatial shape or spacing differs from the first key's (both files named).
            TypeError: a keyed value is not a loaded image.
            KeyError: a key is missing and ``allow_missing_keys`` is False.
        """
        d = dict(data)
        present = list(self.key_iterator(d))
        if len(present) < 2:
            return d
        reference_key = present[0]
        reference = d[reference_key]
        reference_shape = _spatial_shape(reference, reference_key)
        reference_spacing = _spacing(reference, len(reference_shape))
        reference_file = source_file(reference, str(reference_key))
        for key in present[1:]:
            shape = _spatial_shape(d[key], key)
            spacing = _spacing(d[key], len(shape))
            same_shape = shape == reference_shape
            same_spacing = (
                reference_spacing is None
                or spacing is None
                or (
                    len(spacing) == len(reference_spacing)
                    and np.allclose(spacing, reference_spacing, rtol=self.spacing_rtol, atol=0.0)
                )
            )
            if not (same_shape and same_spacing):
                if same_shape:
                    what = "pixel spacing differs"
                elif same_spacing:
                    what = "spatial shape differs"
                else:
                    what = "spatial shape and pixel spacing differ"
                raise InputError(
                    source_file(d[key], str(key)),
                    f"{what} from its pair: {key!r} has spatial shape {shape} and spacing "
                    f"{_format_spacing(spacing)}, but {reference_key!r} ({reference_file}) has spatial shape "
                    f"{reference_shape} and spacing {_format_spacing(reference_spacing)}. Co-registered images must "
                    "share one pixel grid; re-export them together instead of resizing one.",
                )
        return d


CheckSameGeometryD = CheckSameGeometryDict = CheckSameGeometryd
