# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""Input checks placed in a transform chain, so bad files fail with their name instead of deep inside a network."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from usseg.errors import InputError

__all__ = ["CheckMaskMatchesImaged", "CheckFinited", "source_file"]


def source_file(value: Any, fallback: str) -> str:
    """The file a MetaTensor was loaded from (``meta["filename_or_obj"]``), or ``fallback`` when unknown."""
    meta = getattr(value, "meta", None) or {}
    return str(meta.get("filename_or_obj", fallback))


class CheckMaskMatchesImaged(MapTransform):
    """Raise ``InputError`` when a mask's spatial shape differs from its image's (both shapes and files named).

    Place it right after loading, before any resizing hides the mismatch.

    Args:
        image_key: key of the (C, H, W) image.
        label_key: key of the (C, H, W) mask.
        allow_missing_keys: skip silently when the mask is absent (unlabeled items).
    """

    def __init__(self, image_key: str = "image", label_key: str = "label", allow_missing_keys: bool = False) -> None:
        super().__init__([image_key, label_key], allow_missing_keys)
        self.image_key, self.label_key = image_key, label_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.label_key not in d and self.allow_missing_keys:
            return d
        image, label = d[self.image_key], d[self.label_key]
        if tuple(image.shape[1:]) != tuple(label.shape[1:]):
            raise InputError(
                source_file(label, self.label_key),
                f"mask shape {tuple(label.shape[1:])} differs from image shape {tuple(image.shape[1:])} "
                f"({source_file(image, self.image_key)}).",
            )
        return d


class CheckFinited(MapTransform):
    """Raise ``InputError`` naming the file when an image holds NaN or Inf (e.g. a float TIFF or NIfTI)."""

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            value = d[key]
            # numpy arrays are checked by numpy: flipped views and big-endian data need no conversion to torch
            finite = torch.isfinite(value) if isinstance(value, torch.Tensor) else np.isfinite(np.asarray(value))
            bad = int((~finite).sum())
            if bad:
                raise InputError(source_file(value, str(key)), f"contains {bad} NaN or Inf values.")
        return d
