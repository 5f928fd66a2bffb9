# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""Step 7 of the data flow: write predictions as NIfTI and PNG masks plus PNG overlays, atomically.

MONAI's ``SaveImaged`` writes straight to the destination, so an interrupted run can leave a truncated file that a
downstream pipeline then reads. These writers go through :mod:`usseg.data.io` (temporary file, then rename).
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from usseg.data.io import atomic_save_image, atomic_write, ensure_writable_dir
from usseg.transforms.checks import source_file

__all__ = ["write_mask_png", "write_mask_nifti", "source_stem", "SaveSegmentationd", "FORMATS"]

FORMATS = ("png", "nii.gz", "overlay")


def _label_map(pred: Any) -> np.ndarray:
    """A (H, W) uint8 label map from a (1, H, W) label map, a (C, H, W) one-hot map, or a (H, W) array."""
    array = pred.detach().cpu().numpy() if isinstance(pred, torch.Tensor) else np.asarray(pred)
    if array.ndim == 3:
        array = array[0] if array.shape[0] == 1 else array.argmax(axis=0)
    if array.ndim != 2:
        raise ValueError(f"expected a 2D prediction ((1, H, W), (C, H, W) or (H, W)), got shape {array.shape}.")
    return np.rint(array).astype(np.uint8)


def write_mask_png(path: str | os.PathLike, label_map: np.ndarray, binary: bool = True) -> Path:
    """Save a label map as PNG: with ``binary`` as {0, 255} so it is visible, else the label values themselves.

    Raises:
        ValueError: ``binary`` with labels other than 0 and 1.
    """
    label_map = np.asarray(label_map, dtype=np.uint8)
    if binary and label_map.max(initial=0) > 1:
        raise ValueError(f"{path}: binary mask with label {label_map.max()}; pass binary=False for label maps.")
    return atomic_save_image(path, label_map * 255 if binary else label_map)


def write_mask_nifti(path: str | os.PathLike, label_map: np.ndarray, spacing: Sequence[float] = (1.0, 1.0)) -> Path:
    """Save a (H, W) label map as NIfTI with the pixel spacing (mm) in the affine.

    The array is stored as (W, H, 1): NIfTI's first axis is x (image columns), as in MONAI's ITK and PIL readers.
    """
    import nibabel as nib

    sx, sy = float(spacing[1]), float(spacing[0])  # spacing is (row, column) = (y, x)
    image = nib.Nifti1Image(np.asarray(label_map, dtype=np.uint8).T[:, :, None], np.diag([sx, sy, 1.0, 1.0]))
    image.header.set_xyzt_units("mm")
    payload = image.to_bytes()
    if str(path).endswith(".gz"):
        payload = gzip.compress(payload, mtime=0)  # mtime 0: identical masks give identical files
    with atomic_write(path, "wb") as handle:
        handle.write(payload)
    return Path(path)


def source_stem(source: str | os.PathLike) -> str:
    """A file's name without its suffix, ``.nii.gz`` counted as one suffix (``scan.1.png`` -> ``scan.1``)."""
    name = Path(source).name
    return name[: -len(".nii.gz")] if name.lower().endswith(".nii.gz") else Path(name).stem


def _spacing(meta: Mapping[str, Any]) -> tuple[float, float]:
    spacing = meta.get("spacing")
    if spacing is None:
        return (1.0, 1.0)
    values = [float(v) for v in np.asarray(spacing).ravel()]
    return (values[0], values[1]) if len(values) >= 2 else (1.0, 1.0)


class SaveSegmentationd(MapTransform):
    """Write each prediction as ``<stem>_seg.png``, ``<stem>_seg.nii.gz`` and ``<stem>_overlay.png``.

    ``<stem>`` is the name of the file the image was loaded from (``meta["filename_or_obj"]``), so outputs line up
    with inputs; an image without a source file raises ``ValueError`` (its outputs could not be named uniquely).
    The overlay is drawn on the ORIGINAL image, read again from disk, at the prediction's size (put ``Invertd``
    before this transform to bring the prediction back to the input size).

    Args:
        keys: prediction keys ((1, H, W) label maps or (C, H, W) one-hot).
        output_dir: destination folder (created; an unwritable folder raises ``PermissionError``).
        image_key: key of the input image, whose metadata names the source file.
        formats: any of ``"png"``, ``"nii.gz"``, ``"overlay"``.
        postfix: appended to the stem of the mask files.
        num_classes: label count; 2 writes PNG masks as {0, 255}, more writes the label values.
    """

    def __init__(
        self,
        keys: KeysCollection = "pred",
        output_dir: str | os.PathLike = "./predictions",
        image_key: str = "image",
        formats: Sequence[str] = FORMATS,
        postfix: str = "seg",
        num_classes: int = 2,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        unknown = sorted(set(formats) - set(FORMATS))
        if unknown:
            raise ValueError(f"unknown formats {unknown}; choose from {FORMATS}.")
        self.output_dir = Path(output_dir)
        self.image_key, self.formats, self.postfix = image_key, tuple(formats), postfix
        self.binary = num_classes <= 2

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        ensure_writable_dir(self.output_dir)
        image = d.get(self.image_key)
        meta = getattr(image, "meta", None) or {}
        source = source_file(image, "")
        if not source:
            raise ValueError(f"'{self.image_key}' has no meta['filename_or_obj']: load it with LoadImaged.")
        stem = source_stem(source)
        # read and compute everything first: a bad source must not leave some of the files written
        writes: list[tuple[Callable[..., Path], tuple]] = []
        for key in self.key_iterator(d):
            label_map = _label_map(d[key])
            if self.binary and label_map.max(initial=0) > 1:
                raise ValueError(f"{source}: prediction holds label {label_map.max()} but num_classes is 2.")
            suffix = "" if len(self.keys) == 1 else f"_{key}"
            mask_stem = self.output_dir / f"{stem}_{self.postfix}{suffix}"
            if "png" in self.formats:
                writes.append((write_mask_png, (mask_stem.with_name(mask_stem.name + ".png"), label_map, self.binary)))
            if "nii.gz" in self.formats:
                nifti = mask_stem.with_name(mask_stem.name + ".nii.gz")
                writes.append((write_mask_nifti, (nifti, label_map, _spacing(meta))))
            if "overlay" in self.formats:
                overlay = self._overlay(source, label_map)
                writes.append((atomic_save_image, (self.output_dir / f"{stem}_overlay{suffix}.png", overlay)))
        for write, args in writes:
            write(*args)
        return d

    @staticmethod
    def _overlay(source: str, label_map: np.ndarray) -> np.ndarray:
        from PIL import Image

        from usseg.data.readers import read_image_array
        from usseg.metrics.report import overlay_rgb

        original = read_image_array(source, color="gray")
        if original.shape != label_map.shape:  # the prediction was not inverted to the input size
            original = np.asarray(Image.fromarray(original).resize(label_map.shape[::-1], Image.BILINEAR))
        return overlay_rgb(original, label_map)
