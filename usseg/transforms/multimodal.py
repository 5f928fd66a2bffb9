# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""Loading co-registered multi-modal pairs (B-mode + elastography, T2 + T1ce, ...) as two single-channel images.

A multi-modal datalist item comes in one of three forms, all read by :class:`LoadMultiModald`:

1. ``{"image": m1, "image_m2": m2, "label": mask}``: the usseg datalist of a folder with ``images/`` and
   ``images_m2/`` (the phantom with ``modalities=("bmode", "elastography")``); ``image`` is modality 1;
2. ``{"image_m1": m1, "image_m2": m2, "label": mask}``: the same, with explicit names;
3. ``{"image": multi, "label": mask}``: ONE multi-channel file holding both modalities (a NIfTI whose last axis is
   the modality, e.g. ``(H, W, 2)`` or ``(H, W, 1, 2)``); channel 0 is modality 1 and channel 1 modality 2 unless
   ``channels`` says otherwise.

Files may be PNG/JPEG/BMP/TIFF (8-bit grey), NIfTI (``.nii``, ``.nii.gz``; the array is taken as stored, axis 0 =
rows, which is how ``usseg.data.writers`` writes it) or single-frame DICOM (calibrated spacing). Every image becomes a
``(1, H, W)`` float32 ``MetaTensor`` whose affine carries the spacing (and, for NIfTI, the orientation).

The pair must share one pixel grid: spatial shape, pixel spacing, and orientation where the files record one
(NIfTI). Otherwise :class:`usseg.errors.InputError` names both files. The label must have the image's shape. After
loading, MONAI's dictionary transforms give both modalities and the label the same geometry when they are listed
together (``RandAffined(keys=["image_m1", "image_m2", "label"])`` draws once for all keys); intensity transforms are
listed per modality.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import MapTransform

from usseg.data.datalist import load_datalist
from usseg.data.readers import DICOM_SUFFIXES, read_dicom, read_image_array, read_mask
from usseg.errors import DatalistError, InputError
from usseg.transforms.geometry_checks import CheckSameGeometryd

__all__ = [
    "LoadMultiModald",
    "LoadMultiModalD",
    "LoadMultiModalDict",
    "read_modality_file",
    "load_multimodal_datalist",
    "modality_inputs",
    "NIFTI_SUFFIXES",
    "MODALITY_PATH_KEYS",
]

NIFTI_SUFFIXES = (".nii", ".nii.gz")
MODALITY_PATH_KEYS = ("image", "image_m1", "image_m2", "label")
"""Item keys of a multi-modal datalist that hold paths (relative to the datalist file's folder)."""
_MASK_MODES = ("binary", "labels")
_ORIENTATION_ATOL = 1e-3


def _is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def _read_nifti(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(C, H, W)`` array as stored (modalities on the last axis) and the in-plane 3x3 affine."""
    import nibabel as nib

    try:
        image = nib.load(str(path))
        array = np.asanyarray(image.dataobj)
    except Exception as err:  # nibabel raises many types for damaged files
        raise InputError(path, f"cannot be read as NIfTI ({err}).") from None
    squeezed = array.reshape(array.shape[:2] + tuple(s for s in array.shape[2:] if s != 1))
    if squeezed.ndim == 2:
        channels = squeezed[None]
    elif squeezed.ndim == 3:
        channels = np.moveaxis(squeezed, -1, 0)
    else:
        raise InputError(path, f"has shape {array.shape}; expected a 2D slice (H, W) or a multi-channel (H, W, C).")
    affine = np.eye(3)
    affine[:2, :2] = image.affine[:2, :2]
    affine[:2, 2] = image.affine[:2, 3]
    return channels, affine


def read_modality_file(
    path: str | Path, mask_mode: str | None = None, num_classes: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Read one image (or mask) file of a multi-modal pair.

    Args:
        path: a PNG/JPEG/BMP/TIFF, NIfTI or single-frame DICOM file.
        mask_mode: None for an image; ``"binary"`` or ``"labels"`` for a mask (PNG masks go through
            ``usseg.data.readers.read_mask``; NIfTI/DICOM masks keep their integer values, ``"binary"`` maps
            every non-zero value to 1).
        num_classes: number of labels for ``mask_mode="labels"`` PNG masks.

    Returns:
        ``(array, affine)``: float32 ``(C, H, W)`` (C = 1 except multi-channel NIfTI) and the 3x3 in-plane affine
        (spacing on the diagonal; the NIfTI direction cosines when known).

    Raises:
        InputError: the file is missing, unreadable, a multi-frame DICOM, or not 2D.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "does not exist (listed in the datalist).")
    name = path.name.lower()
    if _is_nifti(path):
        array, affine = _read_nifti(path)
        if mask_mode is not None:
            array = np.rint(array)
            if mask_mode == "binary":
                array = (array > 0).astype(np.float32)
    elif name.endswith(DICOM_SUFFIXES):
        frames, meta = read_dicom(path, color="gray")
        if frames.shape[0] != 1:
            raise InputError(path, f"holds {frames.shape[0]} frames; a multi-modal pair needs single-frame images.")
        array = frames[:1]
        spacing = meta.get("pixel_spacing_mm") or (1.0, 1.0)
        affine = np.diag([float(spacing[0]), float(spacing[1]), 1.0])
        if mask_mode == "binary":
            array = (array > 0).astype(np.float32)
    else:
        array = (read_image_array(path, "gray") if mask_mode is None else read_mask(path, mask_mode, num_classes))[None]
        affine = np.eye(3)
    return np.ascontiguousarray(array, dtype=np.float32), affine


def _as_image(array: np.ndarray, affine: np.ndarray, source: str) -> MetaTensor:
    meta = {"filename_or_obj": source, "original_channel_dim": 0, "spatial_shape": np.asarray(array.shape[1:])}
    return MetaTensor(torch.from_numpy(array), affine=torch.as_tensor(affine, dtype=torch.float64), meta=meta)


def _direction(affine: torch.Tensor) -> np.ndarray:
    matrix = np.asarray(affine, dtype=np.float64)[:2, :2]
    norms = np.linalg.norm(matrix, axis=0)
    return matrix / np.where(norms > 0, norms, 1.0)


class LoadMultiModald(MapTransform):
    """Load a co-registered pair (and its mask) into ``keys[0]``, ``keys[1]`` and ``label_key``; check the geometry.

    See the module docstring for the item forms and file formats. Outputs are ``(1, H, W)`` float32 MetaTensors
    (raw intensities: scale each modality with its own intensity transform afterwards) and the mask as ``(1, H, W)``
    float32 labels. Unlabeled items (no ``label_key``) are loaded without a mask.

    Args:
        keys: output keys of modality 1 and modality 2; ``keys[0]`` may also hold the modality-1 path.
        label_key: key of the mask path (absent for unlabeled items).
        source_key: key of the modality-1 path when ``keys[0]`` is absent (``"image"``, the usseg datalist key),
            or of a multi-channel file when ``keys[1]`` is absent too.
        channels: the channels of a multi-channel file that hold modality 1 and modality 2.
        mask_mode: ``"binary"`` (every non-zero value is foreground) or ``"labels"``.
        num_classes: number of labels for ``mask_mode="labels"``.
        spacing_rtol: relative tolerance of the spacing comparison (``CheckSameGeometryd``).

    Raises:
        ValueError: two keys are not given, channels are not two distinct indices, or an unknown ``mask_mode``.
    """

    def __init__(
        self,
        keys: Sequence[str] = ("image_m1", "image_m2"),
        label_key: str = "label",
        source_key: str = "image",
        channels: Sequence[int] = (0, 1),
        mask_mode: str = "binary",
        num_classes: int | None = None,
        spacing_rtol: float = 1e-4,
    ) -> None:
        keys = tuple(keys)
        if len(keys) != 2 or keys[0] == keys[1]:
            raise ValueError(f"keys must be two distinct output keys (modality 1, modality 2), got {keys!r}.")
        super().__init__(keys, allow_missing_keys=True)
        channels = tuple(channels)
        if len(channels) != 2 or channels[0] == channels[1] or min(channels) < 0:
            raise ValueError(f"channels must be two distinct indices >= 0, got {channels!r}.")
        if mask_mode not in _MASK_MODES:
            raise ValueError(f"mask_mode must be one of {_MASK_MODES}, got {mask_mode!r}.")
        self.m1_key, self.m2_key = keys
        self.label_key, self.source_key = label_key, source_key
        self.channels = channels
        self.mask_mode, self.num_classes = mask_mode, num_classes
        self.geometry = CheckSameGeometryd(keys=list(keys), spacing_rtol=spacing_rtol)

    def _first_path(self, d: Mapping[Hashable, Any]) -> Any:
        first = d.get(self.m1_key)
        first = d.get(self.source_key) if first is None else first
        if first is None:
            raise DatalistError(
                d.get("case_id", str(dict(d))),
                f"a multi-modal item needs {self.m1_key!r} (or {self.source_key!r}) and {self.m2_key!r}.",
            )
        return first

    def _load_first(self, first: Any, has_second: bool) -> list[MetaTensor]:
        """Modality 1 (one image), or both modalities of a multi-channel file when the item has no second file."""
        array, affine = read_modality_file(first)
        if has_second:
            if array.shape[0] != 1:
                raise InputError(first, f"has {array.shape[0]} channels; each file of a pair must hold one modality.")
            return [_as_image(array, affine, str(first))]
        if array.shape[0] <= max(self.channels):
            return [_as_image(array[:1], affine, str(first))]  # the missing pair is reported after the mask checks
        return [_as_image(array[c : c + 1], affine, f"{first}#channel{c}") for c in self.channels]

    def _load_second(self, second: Any) -> MetaTensor:
        array, affine = read_modality_file(second)
        if array.shape[0] != 1:
            raise InputError(second, f"has {array.shape[0]} channels; each file of a pair must hold one modality.")
        return _as_image(array, affine, str(second))

    def _load_label(self, path: Any, m1: MetaTensor) -> MetaTensor:
        array, affine = read_modality_file(path, mask_mode=self.mask_mode, num_classes=self.num_classes)
        label = _as_image(array, affine, str(path))
        if tuple(label.shape[1:]) != tuple(m1.shape[1:]):
            raise InputError(
                str(path),
                f"mask shape {tuple(label.shape[1:])} differs from image shape {tuple(m1.shape[1:])} "
                f"({m1.meta['filename_or_obj']}).",
            )
        return label

    def _check_orientation(self, m1: MetaTensor, m2: MetaTensor) -> None:
        if not np.allclose(_direction(m1.affine), _direction(m2.affine), atol=_ORIENTATION_ATOL):
            raise InputError(
                m2.meta["filename_or_obj"],
                f"orientation {np.round(_direction(m2.affine), 3).tolist()} differs from its pair "
                f"{m1.meta['filename_or_obj']} with orientation {np.round(_direction(m1.affine), 3).tolist()}; "
                "co-registered images must share one pixel grid.",
            )

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Load ``data``'s pair and mask; return a new dict with the loaded images.

        Raises:
            DatalistError: the item names no modality-1 file.
            InputError: a file cannot be read, or the pair (or the mask) does not share one grid (both files named).
        """
        d = dict(data)
        first, second = self._first_path(d), d.get(self.m2_key)
        if isinstance(first, torch.Tensor) and isinstance(second, torch.Tensor):
            return d  # already loaded (a cached dataset applied the transform before)
        # each file is checked as soon as it is read: modality 1, then its mask, then modality 2 against both
        images = self._load_first(first, has_second=second is not None)
        if isinstance(d.get(self.label_key), (str, Path)):
            d[self.label_key] = self._load_label(d[self.label_key], images[0])
        if second is not None:
            images.append(self._load_second(second))
        elif len(images) == 1:
            raise InputError(
                first,
                f"lacks channels {list(self.channels)} and the item has no {self.m2_key!r}; a multi-modal item "
                "needs a second file or a multi-channel file.",
            )
        m1, m2 = images
        self.geometry({self.m1_key: m1, self.m2_key: m2})
        self._check_orientation(m1, m2)
        d[self.m1_key], d[self.m2_key] = m1, m2
        return d


LoadMultiModalD = LoadMultiModalDict = LoadMultiModald


def load_multimodal_datalist(path: str | os.PathLike, split: str, allow_empty: bool = False) -> list[dict[str, Any]]:
    """One split of a multi-modal datalist, with every path key (:data:`MODALITY_PATH_KEYS`) made absolute.

    ``usseg.data.datalist.load_datalist`` resolves ``image``, ``image_m2`` and ``label``; hand-written datalists may
    name modality 1 ``image_m1`` instead, which is resolved here against the datalist file's folder too.

    Args:
        path: the datalist JSON.
        split: ``"labeled"``, ``"unlabeled"``, ``"validation"``, ``"test"``...
        allow_empty: return ``[]`` for an empty split instead of raising.

    Returns:
        The split's items, paths absolute.

    Raises:
        DatalistError: as ``load_datalist``; or an item names neither ``image`` nor ``image_m1``.
    """
    base = Path(path).parent
    items = load_datalist(path, split, allow_empty=allow_empty)
    for index, item in enumerate(items):
        if item.get("image_m1") is not None:
            item["image_m1"] = os.path.normpath(base / item["image_m1"])
        if item.get("image") is None and item.get("image_m1") is None:
            raise DatalistError(path, f"item {index} of split {split!r} has neither 'image' nor 'image_m1': {item!r}.")
    return items


def modality_inputs(
    input_dir: str | os.PathLike | None = None,
    datalist: str | os.PathLike | None = None,
    split: str = "test",
    modality: int = 1,
) -> list[dict[str, str]]:
    """Items ``{"image": path}`` to segment with the network of ``modality``: every image under ``input_dir``, else
    that modality's files in a datalist split (``image_m1`` or ``image`` for 1, ``image_m2`` for 2).

    Raises:
        ValueError: ``modality`` is not 1 or 2.
        DatalistError: nothing to segment, or a datalist item lacks the modality.
    """
    from usseg.data.prepare import inference_inputs

    if modality not in (1, 2):
        raise ValueError(f"modality must be 1 or 2, got {modality!r}.")
    if input_dir or not datalist:
        return inference_inputs(input_dir=input_dir, datalist=datalist, split=split)
    items = load_multimodal_datalist(datalist, split)
    keys = ("image_m1", "image") if modality == 1 else ("image_m2",)
    inputs = []
    for item in items:
        path = next((item[k] for k in keys if item.get(k) is not None), None)
        if path is None:
            raise DatalistError(datalist, f"an item of split {split!r} has no modality-{modality} file: {item!r}.")
        inputs.append({"image": path})
    return inputs
