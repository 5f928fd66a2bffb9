# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""DICOM Segmentation (SEG) objects that reference the ultrasound image they were computed from, via highdicom.

highdicom is an optional dependency (``pip install usseg[dicom]``) and is imported only when a SEG is written.

Single-frame sources (Ultrasound Image Storage and the like) get one SEG referencing the source instance.

Multi-frame cines: ultrasound cines have no Frame of Reference, and highdicom 0.28 refuses a multi-frame source
without one ("Only a single frame is supported when the source image has no Frame of Reference UID"); it also
expects functional groups, which the legacy Ultrasound Multi-frame IOD does not have. usseg therefore writes
**one SEG per frame** (:func:`write_dicom_seg` with ``frame_index``). Each is built by highdicom from a copy of the
cine's header presented as a single-frame image (``NumberOfFrames`` removed, SOP class set to Ultrasound Image
Storage), then every reference to the source is corrected: ``ReferencedSOPClassUID`` is set back to the cine's
real SOP class, and the source-image references (``SourceImageSequence``, top level and per frame) get
``ReferencedFrameNumber`` = frame index + 1. The SEGs of one cine share one series, with ``InstanceNumber`` =
frame index + 1, so a viewer lists them in frame order. No spatial information is invented: the SEG has no Frame
of Reference, exactly like its source.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pydicom

from usseg.data.io import atomic_write
from usseg.errors import InputError

__all__ = ["ULTRASOUND_IMAGE_STORAGE", "new_uid", "write_dicom_seg", "source_reference"]

ULTRASOUND_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.6.1"
"""SOP class UID of the single-frame Ultrasound Image Storage IOD."""
_MANUFACTURER = "usseg contributors"
_MODEL_NAME = "usseg"
_SERIES_NUMBER = 9001  # a high number keeps derived series after the acquired ones in viewers
_LESION_WORDS = ("lesion", "tumor", "tumour", "mass", "nodule")


def _import_highdicom() -> Any:
    try:
        import highdicom
    except ImportError as err:
        raise ImportError("writing DICOM SEG needs highdicom; install it with `pip install usseg[dicom]`.") from err
    return highdicom


def new_uid() -> str:
    """A fresh DICOM UID (highdicom's generator), e.g. for the series shared by the SEGs of one cine."""
    return str(_import_highdicom().UID())


def _segment_descriptions(hd: Any, class_names: Sequence[str], algorithm_name: str, algorithm_version: str) -> list:
    from pydicom.sr.codedict import codes

    algorithm = hd.AlgorithmIdentificationSequence(
        name=algorithm_name, version=algorithm_version, family=codes.cid7162.ArtificialIntelligence
    )
    descriptions = []
    for number, name in enumerate(class_names[1:], start=1):  # class 0 is background: not a segment
        is_lesion = any(word in name.lower() for word in _LESION_WORDS)
        category = codes.SCT.MorphologicallyAbnormalStructure if is_lesion else codes.SCT.Tissue
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=name,
                segmented_property_category=category,
                segmented_property_type=codes.SCT.Lesion if is_lesion else codes.SCT.Tissue,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm,
            )
        )
    return descriptions


def _single_frame_view(source: pydicom.Dataset) -> pydicom.Dataset:
    """The header of a cine presented to highdicom as a single-frame ultrasound image (see the module docstring)."""
    view = copy.deepcopy(source)
    for keyword in ("NumberOfFrames", "FrameIncrementPointer", "FrameTime", "FrameTimeVector", "PixelData"):
        if keyword in view:
            delattr(view, keyword)
    view.SOPClassUID = ULTRASOUND_IMAGE_STORAGE
    return view


def _fix_references(dataset: pydicom.Dataset, source: pydicom.Dataset, frame_number: int) -> None:
    """Point every reference to ``source`` at its real SOP class and, for source images, at ``frame_number``."""

    def visit(item: pydicom.Dataset, in_source_sequence: bool) -> None:
        if item.get("ReferencedSOPInstanceUID") == source.SOPInstanceUID:
            item.ReferencedSOPClassUID = source.SOPClassUID
            if in_source_sequence:
                item.ReferencedFrameNumber = frame_number
        for element in item:
            if element.VR == "SQ":
                for child in element.value:
                    visit(child, element.keyword == "SourceImageSequence")

    visit(dataset, False)


def write_dicom_seg(
    path: str | os.PathLike,
    source_file: str | os.PathLike,
    label_map: np.ndarray,
    class_names: Sequence[str],
    frame_index: int | None = None,
    series_uid: str | None = None,
    algorithm_name: str = "usseg",
    algorithm_version: str = "0",
    source: pydicom.Dataset | None = None,
) -> Path:
    """Write a binary DICOM SEG of ``label_map`` referencing the DICOM file it was computed from.

    Args:
        path: where to write (``.dcm``); written atomically.
        source_file: the source DICOM file (only its header is read).
        label_map: integer ``(H, W)`` label map at the source's size (``Rows`` x ``Columns``); label ``k`` becomes
            segment ``k`` named ``class_names[k]``; 0 is background.
        class_names: one name per class, background first (``["background", "lesion"]``).
        frame_index: for a multi-frame source, the 0-based frame segmented; must be None for a single frame.
        series_uid: SeriesInstanceUID of the SEG (share one across the per-frame SEGs of a cine); default a new one.
        algorithm_name: recorded in each segment's algorithm identification (the bundle name).
        algorithm_version: recorded with it (the bundle version).
        source: the already-read header of ``source_file``, to avoid reading it again.

    Returns:
        ``path``.

    Raises:
        ImportError: highdicom is not installed.
        ValueError: fewer than 2 ``class_names``, a label outside them, or a ``frame_index`` that does not fit.
        InputError: the source is not a readable DICOM image, or its size differs from ``label_map``.
    """
    hd = _import_highdicom()
    if len(class_names) < 2:
        raise ValueError(f"class_names needs background and at least one class, got {list(class_names)!r}.")
    label_map = np.asarray(label_map)
    if label_map.ndim != 2:
        raise ValueError(f"label_map must be (H, W), got shape {label_map.shape}.")
    if label_map.size and (int(label_map.min()) < 0 or int(label_map.max()) >= len(class_names)):
        raise ValueError(
            f"label_map holds labels {int(label_map.min())}..{int(label_map.max())}, outside 0..{len(class_names) - 1}."
        )
    if source is None:
        try:
            source = pydicom.dcmread(source_file, stop_before_pixels=True)
        except Exception as err:  # pydicom raises many exception types on a damaged file
            raise InputError(source_file, f"cannot read the DICOM header for the SEG ({err}).") from err
    frames = int(source.get("NumberOfFrames", 1) or 1)
    if (int(source.Rows), int(source.Columns)) != label_map.shape:
        raise InputError(
            source_file,
            f"is {int(source.Rows)}x{int(source.Columns)} pixels but the label map is "
            f"{label_map.shape[0]}x{label_map.shape[1]}; a SEG must match its source.",
        )
    if frames > 1 and frame_index is None:
        raise ValueError(f"{source_file}: a {frames}-frame source needs frame_index (one SEG per frame).")
    if frame_index is not None and not 0 <= frame_index < frames:
        raise ValueError(f"frame_index must lie in [0, {frames - 1}] for {source_file}, got {frame_index!r}.")

    multi_frame = frames > 1 or "NumberOfFrames" in source
    source_view = _single_frame_view(source) if multi_frame else source
    instance_number = 1 if frame_index is None else frame_index + 1
    seg = hd.seg.Segmentation(
        source_images=[source_view],
        pixel_array=label_map.astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=_segment_descriptions(hd, class_names, algorithm_name, algorithm_version),
        series_instance_uid=series_uid or str(hd.UID()),
        series_number=_SERIES_NUMBER,
        sop_instance_uid=str(hd.UID()),
        instance_number=instance_number,
        manufacturer=_MANUFACTURER,
        manufacturer_model_name=_MODEL_NAME,
        software_versions=algorithm_version,
        device_serial_number="0",
        omit_empty_frames=False,  # an empty prediction is a result too: keep one frame per segment
        content_description="automatic segmentation (research use only)",
    )
    if multi_frame:
        _fix_references(seg, source, (frame_index or 0) + 1)
    with atomic_write(path, "wb") as handle:
        seg.save_as(handle, enforce_file_format=True)
    return Path(path)


def source_reference(seg_file: str | os.PathLike) -> Mapping[str, Any]:
    """The source instance a SEG written by :func:`write_dicom_seg` points to (for checks and reports).

    Returns:
        ``{"sop_instance_uid", "sop_class_uid", "frame_number"}`` of the first source-image reference
        (``frame_number`` is None for a single-frame source).
    """
    seg = pydicom.dcmread(seg_file, stop_before_pixels=True)
    item = seg.SourceImageSequence[0]
    frame = item.get("ReferencedFrameNumber")
    return {
        "sop_instance_uid": str(item.ReferencedSOPInstanceUID),
        "sop_class_uid": str(item.ReferencedSOPClassUID),
        "frame_number": None if frame is None else int(frame),
    }
