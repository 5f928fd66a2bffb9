# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""Dictionary versions of the scan-cone transforms in :mod:`usseg.transforms.spatial.array`.

Naming follows MONAI: a trailing ``d`` marks the dictionary version, with ``D`` and ``Dict`` aliases.
The cone is estimated once per call, on ``source_key`` (by default the first of ``keys``), and the same
mask or box is applied to every key, so an image and its label stay aligned.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.data.meta_obj import get_track_meta
from monai.transforms.inverse import InvertibleTransform
from monai.transforms.transform import MapTransform
from monai.utils import convert_to_dst_type, convert_to_tensor

from usseg.transforms.spatial.array import CropToScanCone, ScanConeMask, _crop_to_box, _uncrop

__all__ = [
    "ScanConeMaskd",
    "ScanConeMaskD",
    "ScanConeMaskDict",
    "CropToScanConed",
    "CropToScanConeD",
    "CropToScanConeDict",
]


def _source(transform: MapTransform, data: dict[Hashable, NdarrayOrTensor], source_key: Hashable | None) -> Hashable:
    """The key to estimate the cone on: ``source_key``, else the first present key; ``()`` if none is present."""
    if source_key is None:
        return transform.first_key(data)
    if source_key not in data:
        if transform.allow_missing_keys:
            return ()
        raise KeyError(
            f"Key `{source_key}` (source_key) of transform `{type(transform).__name__}` was missing in the data "
            "and allow_missing_keys==False."
        )
    return source_key


class ScanConeMaskd(MapTransform):
    """Dictionary version of :py:class:`usseg.transforms.ScanConeMask`: one cone, applied to every image key.

    The cone is estimated on ``data[source_key]`` (default: the first of ``keys``) and every key is set
    to 0 outside it. With ``mask_key`` the cone is also stored as a float32 ``(1, H, W)`` mask carrying the
    source's metadata. When no cone is found nothing is removed (the mask is all ones).

    Args:
        keys: keys of the images to mask. See also :py:class:`monai.transforms.MapTransform`.
        source_key: key of the image to estimate the cone on; None (default) uses the first of ``keys``.
        mask_key: key to write the cone mask under, or None (default) for no mask.
        threshold: see :func:`usseg.transforms.spatial.array.estimate_scan_cone`. Defaults to 0.05.
        morphology_radius: see :func:`usseg.transforms.spatial.array.estimate_scan_cone`. Defaults to None.
        convex_hull: see :func:`usseg.transforms.spatial.array.estimate_scan_cone`. Defaults to True.
        min_area_fraction: see :func:`usseg.transforms.spatial.array.estimate_scan_cone`. Defaults to 0.05.
        allow_missing_keys: skip missing keys instead of raising ``KeyError``. Defaults to False.

    Raises:
        ValueError: an argument is out of its domain (the message quotes it).
    """

    backend = ScanConeMask.backend

    def __init__(
        self,
        keys: KeysCollection,
        source_key: Hashable | None = None,
        mask_key: Hashable | None = None,
        threshold: float = 0.05,
        morphology_radius: int | None = None,
        convex_hull: bool = True,
        min_area_fraction: float = 0.05,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.source_key = source_key
        self.mask_key = mask_key
        self.masker = ScanConeMask(
            mode="apply",
            threshold=threshold,
            morphology_radius=morphology_radius,
            convex_hull=convex_hull,
            min_area_fraction=min_area_fraction,
        )

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        source = _source(self, d, self.source_key)
        if source == ():
            return d
        reference = convert_to_tensor(d[source], track_meta=get_track_meta(), dtype=torch.float32)
        cone = self.masker.estimate(reference)
        for key in self.key_iterator(d):
            d[key] = self.masker.apply_mask(d[key], cone)
        if self.mask_key is not None:
            d[self.mask_key] = convert_to_dst_type(cone[None].astype("float32"), reference, dtype=torch.float32)[0]
        return d


class CropToScanConed(MapTransform, InvertibleTransform):
    """Dictionary version of :py:class:`usseg.transforms.CropToScanCone`: one box, applied to images and labels.

    The box is computed on ``data[source_key]`` (default: the first of ``keys``) and every key, labels
    included, is cropped to it with MONAI's ``SpatialCrop``, so each MetaTensor traces the crop and
    records the box under ``meta["scan_cone_box"]``. :meth:`inverse` pads back, which makes the crop
    work with ``monai.transforms.Invertd``. All outputs are float32.

    Args:
        keys: keys of the images and labels to crop. See also :py:class:`monai.transforms.MapTransform`.
        source_key: key of the image to estimate the cone on; None (default) uses the first of ``keys``.
        margin: pixels added on every side of the box (clipped to the image), ``>= 0``. Defaults to 0.
        threshold: see :func:`usseg.transforms.spatial.array.estimate_scan_cone`. Defaults to 0.05.
        morphology_radius: see :func:`usseg.transforms.spatial.array.estimate_scan_cone`. Defaults to None.
        convex_hull: see :func:`usseg.transforms.spatial.array.estimate_scan_cone`. Defaults to True.
        min_area_fraction: see :func:`usseg.transforms.spatial.array.estimate_scan_cone`. Defaults to 0.05.
        allow_missing_keys: skip missing keys instead of raising ``KeyError``. Defaults to False.

    Raises:
        ValueError: an argument is out of its domain (the message quotes it), or a key's spatial shape
            differs from the source's at call time.
    """

    backend = CropToScanCone.backend

    def __init__(
        self,
        keys: KeysCollection,
        source_key: Hashable | None = None,
        margin: int = 0,
        threshold: float = 0.05,
        morphology_radius: int | None = None,
        convex_hull: bool = True,
        min_area_fraction: float = 0.05,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.source_key = source_key
        self.cropper = CropToScanCone(
            margin=margin,
            threshold=threshold,
            morphology_radius=morphology_radius,
            convex_hull=convex_hull,
            min_area_fraction=min_area_fraction,
        )

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        source = _source(self, d, self.source_key)
        if source == ():
            return d
        box = self.cropper.compute_box(d[source])
        spatial_shape = tuple(d[source].shape[1:])
        for key in self.key_iterator(d):
            if tuple(d[key].shape[1:]) != spatial_shape:
                raise ValueError(
                    f"CropToScanConed: key {key!r} has shape {tuple(d[key].shape)}, but the cone was found on "
                    f"{source!r} with spatial shape {spatial_shape}."
                )
            img = convert_to_tensor(d[key], track_meta=get_track_meta(), dtype=torch.float32)
            d[key] = _crop_to_box(img, box)
        return d

    def inverse(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        """Pad every cropped key back to its size before the crop (zeros outside the box).

        Raises:
            TypeError: an item is not a MetaTensor.
            RuntimeError: an item's most recent traced transform is not this crop.
        """
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = _uncrop(d[key], type(self).__name__)
        return d


ScanConeMaskD = ScanConeMaskDict = ScanConeMaskd
CropToScanConeD = CropToScanConeDict = CropToScanConed
