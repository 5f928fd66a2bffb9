# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""Turn a dataset folder into a usseg datalist JSON: deduplicated, split once from a seed, masks checked.

A datalist is the file every later stage reads (nnU-Net's "create the split once, save it, reuse
it"). :func:`build_datalist` writes it; :func:`load_datalist` reads one split back with absolute paths.

Format (paths relative to the datalist file's folder)::

    {"labeled": [items], "unlabeled": [items], "validation": [items], "test": [items],
     "class_names": ["benign", "malignant"], "metadata": {settings, seed, counts, dropped duplicates, ...}}
    item = {"image": "rel/path.png", "label": "rel/mask.png", "class": 0, "class_name": "benign",
            "case_id": "benign (12)", "source": "busi", optional "patient_id", "image_m2", "video", "num_frames"}

``label`` is written for labeled, validation and test items that have a mask, never for unlabeled ones.
Folder layouts understood by :func:`build_datalist`:

- ``"busi"``: ``<root>/<class>/<name> (N).png`` with ``<name> (N)_mask.png`` and optional extra
  ``_mask_1``, ``_mask_2`` files, merged by union into ``<output folder>/merged_masks/``.
- ``"generic"``: the usseg layout ``images/``, ``masks/``, optional ``images_m2/``, ``videos/``,
  ``classes.csv`` (``image,class[,patient_id]``) and ``dataset.json``.
- ``"dicom"``: DICOM files anywhere below ``<root>`` (``.dcm`` or a ``DICM`` preamble), one item per
  file; multi-frame files (cines) are ``"video"`` items. Optional masks in ``<root>/masks/<stem>.png``.
- ``"video"``: video files anywhere below ``<root>`` (and multi-frame DICOM); no masks.

Classes come from, in this order: ``class_from`` (``{class_name: file-name regex}``), ``classes.csv``,
the first-level sub-folder, else the single class ``"unknown"``.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from usseg import __version__
from usseg.data.io import atomic_save_image, atomic_write_json, file_digest
from usseg.data.splits import SPLIT_NAMES, check_split_request, deduplicate, pixel_hash, split_items
from usseg.errors import DatalistError, InputError

__all__ = [
    "PATH_KEYS",
    "LAYOUTS",
    "VIDEO_SUFFIXES",
    "IMAGE_SUFFIXES",
    "VIDEO_PRETRAINING_SPLITS",
    "build_datalist",
    "load_datalist",
    "build_video_pretraining_datalist",
    "resolve_video_pretraining_datalist",
    "assign_video_folds",
]

PATH_KEYS: tuple[str, ...] = ("image", "label", "image_m2", "video")
"""Item keys that hold file paths: relative in the JSON file, absolute after :func:`load_datalist`."""

LAYOUTS: tuple[str, ...] = ("busi", "generic", "dicom", "video")
"""Folder layouts :func:`build_datalist` understands."""

VIDEO_SUFFIXES: frozenset[str] = frozenset({".mp4", ".avi", ".mov", ".mpeg", ".mpg", ".gif", ".m4v", ".webm"})
"""Lower-case suffixes of the video files picked up by the ``"video"`` layout and ``videos/`` folders."""

IMAGE_SUFFIXES: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})
"""Lower-case suffixes of the still images picked up by the ``"busi"`` and ``"generic"`` layouts."""

_MASK_MODES = ("binary", "labels")
_BUSI_MASK = re.compile(r"^(?P<stem>.+)_mask(?:_(?P<index>\d+))?$")
_UNKNOWN_CLASS = "unknown"


@dataclass
class _Candidate:
    """One file on its way to becoming an item; paths are absolute until the JSON is written."""

    item: dict[str, Any]
    masks: list[Path] = field(default_factory=list)
    shape: tuple[int, int] | None = None  # (H, W) of the image, for the mask check
    in_pool: bool = True  # False: may only be unlabeled (no mask while masks are required, or a generic video)
    pixels_hash: str | None = None

    @property
    def case_id(self) -> str:
        return self.item["case_id"]

    @property
    def path(self) -> Path:
        return Path(self.item.get("image") or self.item["video"])


@dataclass
class _Collection:
    """What a layout reader found: candidates plus the facts the builder needs to finish the job."""

    candidates: list[_Candidate]
    class_order: list[str] | None = None  # from dataset.json, else None (sorted names are used)
    skipped: list[dict[str, str]] = field(default_factory=list)
    mask_mode: str | None = None  # from dataset.json
    num_classes: int | None = None  # number of labels in dataset.json
    masks_expected: bool = True  # False for the video layout: require_masks does not apply


def build_datalist(
    root: str | os.PathLike,
    layout: str,
    output: str | os.PathLike,
    *,
    seed: int = 0,
    test_fraction: float = 0.2,
    val_fraction: float = 0.1,
    num_labeled: int | float | None = None,
    include_classes: Sequence[str] | None = None,
    exclude_classes: Sequence[str] | None = None,
    dedup: bool = True,
    mask_mode: str | None = None,
    num_classes: int | None = None,
    require_masks: bool = True,
    class_from: Mapping[str, str] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Scan a dataset folder, deduplicate, split, check masks, and write the datalist JSON and its summary.

    Steps: collect files by ``layout``; keep the requested classes; drop exact pixel duplicates
    (:func:`usseg.data.splits.deduplicate`); split with :func:`usseg.data.splits.split_items`, grouped by
    ``patient_id``; read every mask with ``read_mask(..., expected_shape=image shape)`` so a bad mask fails
    now, naming the file; merge multi-mask BUSI cases; write ``output`` and ``<output stem>_summary.json``
    atomically; print a short count table.

    With ``require_masks=True`` an image without a mask never enters labeled, validation or test: in the
    ``"generic"`` and ``"dicom"`` layouts it goes to ``unlabeled`` (or is left out, and recorded, when its
    patient is in validation or test); in the ``"busi"`` layout, where every image has a mask, a missing
    mask is an error. ``videos/`` of the generic layout are likewise unlabeled only.

    Args:
        root: the dataset folder.
        layout: one of :data:`LAYOUTS`.
        output: the datalist JSON to write; its folder receives ``merged_masks/`` and the summary.
        seed: seed of the split.
        test_fraction: share of all items in ``test``, in [0, 1).
        val_fraction: share of the remaining items in ``validation``, in [0, 1).
        num_labeled: label budget from the training pool: an ``int`` count, a ``float`` fraction in (0, 1],
            or ``None`` for all.
        include_classes: keep only these classes (their order becomes the class order).
        exclude_classes: drop these classes, e.g. ``["normal"]`` for BUSI lesion segmentation.
        dedup: drop exact pixel duplicates before splitting (videos: byte-identical files).
        mask_mode: ``"binary"`` or ``"labels"`` for ``read_mask``; ``None`` takes it from ``dataset.json``,
            else ``"binary"``.
        num_classes: number of labels for ``mask_mode="labels"``; ``None`` takes the size of
            ``dataset.json``'s ``labels``.
        require_masks: labeled, validation and test items must have a mask (ignored by the ``"video"`` layout).
        class_from: ``{class_name: regex}`` searched in each file name; a file no pattern matches is skipped
            and recorded, a file two patterns match is an error.
        progress: show tqdm bars while hashing and checking masks.

    Returns:
        The datalist dictionary exactly as written (relative paths).

    Raises:
        ValueError: a bad argument (the message quotes it).
        InputError: a bad file (unreadable, wrong mask values, mask and image sizes differ), named.
        DatalistError: a folder that does not follow ``layout``, a missing mask, an impossible split request.
    """
    root = Path(root)
    output = Path(output)
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}.")
    if mask_mode is not None and mask_mode not in _MASK_MODES:
        raise ValueError(f"mask_mode must be one of {_MASK_MODES} or None, got {mask_mode!r}.")
    if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)):
        raise TypeError(f"num_classes must be an int or None, got {num_classes!r}.")
    if num_classes is not None and num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes!r}.")
    include = _class_list("include_classes", include_classes)
    exclude = _class_list("exclude_classes", exclude_classes)
    if include is not None and exclude is not None and set(include) & set(exclude):
        raise ValueError(f"include_classes and exclude_classes overlap: {sorted(set(include) & set(exclude))}.")
    patterns = _compile_class_from(class_from)
    check_split_request(test_fraction, val_fraction, num_labeled)
    if not root.is_dir():
        raise InputError(root, "is not a folder; pass the dataset root.")

    collectors = {"busi": _collect_busi, "generic": _collect_generic, "dicom": _collect_dicom, "video": _collect_video}
    collection = collectors[layout](root, patterns=patterns, require_masks=require_masks, progress=progress)
    mask_mode = mask_mode or collection.mask_mode or "binary"
    if num_classes is None and mask_mode == "labels":
        num_classes = collection.num_classes
    require_masks = require_masks and collection.masks_expected
    if not collection.candidates:
        raise DatalistError(root, f"no {layout!r} files found; check the folder and the layout name.")
    _check_unique_case_ids(collection.candidates)

    candidates, excluded_counts = _filter_classes(collection.candidates, include, exclude, root)
    class_names = _class_names(candidates, collection.class_order, include, root)
    for candidate in candidates:
        name = candidate.item.get("class_name")
        if name is not None:
            candidate.item["class"] = class_names.index(name)
    if require_masks and not any(candidate.masks for candidate in candidates):
        raise DatalistError(
            root,
            f"no masks found for any of the {len(candidates)} files; pass require_masks=False for a "
            "classification-only datalist.",
        )

    duplicate_records: list[dict[str, Any]] = []
    if dedup:
        hashes = [candidate.pixels_hash or _content_hash(candidate) for candidate in _bar(candidates, progress, "hash")]
        by_id = {candidate.case_id: candidate for candidate in candidates}
        kept_items, duplicate_records = deduplicate([c.item for c in candidates], hashes, class_key="class_name")
        candidates = [by_id[item["case_id"]] for item in kept_items]

    pool = [candidate for candidate in candidates if candidate.in_pool]
    extras = [candidate for candidate in candidates if not candidate.in_pool]
    if not pool:
        raise DatalistError(root, "no file can enter the labeled, validation or test splits.")
    drawn = split_items(
        [candidate.item for candidate in pool],
        seed=seed,
        test_fraction=test_fraction,
        val_fraction=val_fraction,
        num_labeled=num_labeled,
        stratify_key="class_name",
        group_key="patient_id",
    )
    split_of: dict[str, str] = {item["case_id"]: name for name in SPLIT_NAMES for item in drawn[name]}
    skipped = list(collection.skipped) + _place_extras(extras, drawn, split_of)
    label_of = _check_masks(candidates, split_of, mask_mode, num_classes, output.parent / "merged_masks", progress)
    splits = _assemble_splits(candidates, split_of, label_of, require_masks, output.parent)

    settings = {
        "layout": layout,
        "root": _relative_path(root, output.parent),
        "seed": seed,
        "test_fraction": test_fraction,
        "val_fraction": val_fraction,
        "num_labeled": num_labeled,
        "include_classes": include,
        "exclude_classes": exclude,
        "dedup": dedup,
        "mask_mode": mask_mode,
        "num_classes": num_classes,
        "require_masks": require_masks,
        "class_from": dict(class_from) if class_from is not None else None,
    }
    counts = _count_table(splits, class_names)
    skipped = [
        {"path": _relative_path(Path(record["path"]), output.parent), "reason": record["reason"]} for record in skipped
    ]
    metadata = {
        "builder": "usseg.data.datalist.build_datalist",
        "usseg_version": __version__,
        "settings": settings,
        "counts": counts,
        "dropped_duplicates": duplicate_records,
        "excluded_classes": excluded_counts,
        "skipped": skipped,
        "merged_masks": sum(1 for candidate in candidates if len(candidate.masks) > 1),
    }
    datalist: dict[str, Any] = {**splits, "class_names": class_names, "metadata": metadata}
    atomic_write_json(output, datalist)
    summary = {
        "datalist": output.name,
        "class_names": class_names,
        "counts": counts,
        "dropped_duplicates": duplicate_records,
        "excluded_classes": excluded_counts,
        "skipped": skipped,
        "settings": settings,
    }
    atomic_write_json(output.with_name(f"{output.stem}_summary.json"), summary)
    print(_format_summary(output, summary))
    return datalist


def load_datalist(path: str | os.PathLike, split: str, allow_empty: bool = False) -> list[dict[str, Any]]:
    """Read one split of a datalist, with the path keys (:data:`PATH_KEYS`) made absolute.

    Args:
        path: the datalist JSON written by :func:`build_datalist` (or by hand, same format).
        split: ``"labeled"``, ``"unlabeled"``, ``"validation"``, ``"test"`` or another list-valued key.
        allow_empty: return ``[]`` for an empty split instead of raising.

    Returns:
        New item dictionaries; relative paths are resolved against the datalist file's folder.

    Raises:
        DatalistError: the file is missing or not a datalist, ``split`` is not in it (the message lists
            the splits it has), or the split is empty and ``allow_empty`` is False.
    """
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        raise DatalistError(path, "no such datalist file.") from None
    except json.JSONDecodeError as err:
        raise DatalistError(path, f"is not valid JSON ({err}).") from None
    if not isinstance(data, dict):
        raise DatalistError(path, f"must hold a JSON object with the splits, found {type(data).__name__}.")
    available = [key for key, value in data.items() if isinstance(value, list) and key != "class_names"]
    if split not in available:
        raise DatalistError(path, f"has no split {split!r}; available splits: {available}.")
    items = data[split]
    if not items and not allow_empty:
        raise DatalistError(path, f"split {split!r} is empty.")
    base = path.parent
    resolved = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise DatalistError(path, f"item {index} of split {split!r} is not an object: {item!r}.")
        item = dict(item)
        for key in PATH_KEYS:
            if key in item and item[key] is not None:
                item[key] = os.path.normpath(base / item[key])  # an absolute value survives the join unchanged
        resolved.append(item)
    return resolved


# ---------------------------------------------------------------------------------------- arguments


def _class_list(name: str, value: Sequence[str] | None) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str) or not all(isinstance(entry, str) for entry in value):
        raise TypeError(f"{name} must be a list of class names, got {value!r}.")
    if not value:
        if name == "include_classes":
            raise ValueError(f"include_classes must not be empty; pass None to keep every class, got {value!r}.")
        return None  # excluding nothing
    return list(value)


def _compile_class_from(class_from: Mapping[str, str] | None) -> dict[str, re.Pattern[str]] | None:
    if class_from is None:
        return None
    if not isinstance(class_from, Mapping) or not class_from:
        raise TypeError(f"class_from must be a non-empty {{class_name: regex}} mapping, got {class_from!r}.")
    patterns = {}
    for name, pattern in class_from.items():
        if not isinstance(name, str) or not isinstance(pattern, str):
            raise TypeError(f"class_from must map class names to regex strings, got {name!r}: {pattern!r}.")
        try:
            patterns[name] = re.compile(pattern)
        except re.error as err:
            raise ValueError(f"class_from[{name!r}] is not a valid regex: {pattern!r} ({err}).") from None
    return patterns


# ---------------------------------------------------------------------------------------- layouts


def _collect_busi(
    root: Path, *, patterns: dict[str, re.Pattern[str]] | None, require_masks: bool, progress: bool
) -> _Collection:
    """``<root>/<class>/<name> (N).png`` next to ``<name> (N)_mask.png`` and optional ``_mask_K.png``."""
    candidates: list[_Candidate] = []
    skipped: list[dict[str, str]] = []
    class_dirs = sorted(path for path in root.iterdir() if path.is_dir() and not path.name.startswith("."))
    if not class_dirs:
        raise DatalistError(root, "a 'busi' layout needs one sub-folder per class (benign/, malignant/, ...).")
    for class_dir in class_dirs:
        images: dict[str, Path] = {}
        masks: dict[str, list[tuple[int, Path]]] = {}
        for path in sorted(class_dir.iterdir()):
            if path.name.startswith(".") or not path.is_file():
                continue
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                skipped.append({"path": str(path), "reason": "not an image file"})
                continue
            match = _BUSI_MASK.match(path.stem)
            if match:
                masks.setdefault(match["stem"], []).append((int(match["index"] or 0), path))
            else:
                images[path.stem] = path
        orphans = sorted(set(masks) - set(images))
        if orphans:
            raise DatalistError(
                masks[orphans[0]][0][1], f"is a mask without an image ({len(orphans)} such in {class_dir})."
            )
        for stem, image in images.items():
            mask_files = [path for _, path in sorted(masks.get(stem, []))]
            if not mask_files and require_masks:
                raise DatalistError(image, "has no '<name>_mask.png' next to it (require_masks=True).")
            item = {"image": str(image), "class_name": _class_of(image, root, patterns, None), "case_id": stem}
            item["source"] = "busi"
            if item["class_name"] is None:
                skipped.append({"path": str(image), "reason": "no class_from pattern matches the file name"})
                continue
            candidates.append(_Candidate(item, masks=mask_files, shape=_image_shape(image)))
    return _Collection(candidates, skipped=skipped)


def _collect_generic(
    root: Path, *, patterns: dict[str, re.Pattern[str]] | None, require_masks: bool, progress: bool
) -> _Collection:
    """The usseg generic layout (module docstring of :mod:`usseg.data.datalist`)."""
    image_dir, mask_dir, m2_dir, video_dir = root / "images", root / "masks", root / "images_m2", root / "videos"
    if not image_dir.is_dir() and not video_dir.is_dir():
        raise DatalistError(root, "a 'generic' layout needs an images/ folder (and optionally masks/, videos/).")
    dataset = _read_dataset_json(root / "dataset.json")
    source = str(dataset.get("name") or root.name)
    table = _read_classes_csv(root / "classes.csv")
    # Without classes.csv every image is "unknown", so dataset.json's class order has nothing to order.
    class_order = dataset.get("class_names") if table is not None else None
    if class_order is not None and (
        not isinstance(class_order, list) or not all(isinstance(name, str) for name in class_order)
    ):
        raise DatalistError(root / "dataset.json", f"'class_names' must be a list of strings, got {class_order!r}.")
    labels = dataset.get("labels")
    num_labels = len(labels) if isinstance(labels, dict) and labels else None
    mask_mode = dataset.get("mask_mode")
    if mask_mode is not None and mask_mode not in _MASK_MODES:
        raise DatalistError(root / "dataset.json", f"'mask_mode' must be one of {_MASK_MODES}, got {mask_mode!r}.")

    candidates: list[_Candidate] = []
    skipped: list[dict[str, str]] = []
    images = _list_files(image_dir, IMAGE_SUFFIXES, skipped) if image_dir.is_dir() else []
    for image in images:
        item: dict[str, Any] = {"image": str(image)}
        mask = _first_existing(mask_dir / image.name, mask_dir / f"{image.stem}.png")
        shape = _image_shape(image)
        if m2_dir.is_dir():
            second = m2_dir / image.name
            if not second.is_file():
                raise DatalistError(image, f"has no co-registered {second} although images_m2/ exists.")
            second_shape = _image_shape(second)
            if second_shape != shape:
                raise InputError(second, f"is {second_shape} (H, W) but its image {image} is {shape}.")
            item["image_m2"] = str(second)
        class_name, patient = _class_from_table_or_default(image, root, patterns, table, root / "classes.csv")
        if class_name is None:
            skipped.append({"path": str(image), "reason": "no class_from pattern matches the file name"})
            continue
        item.update(class_name=class_name, case_id=image.stem, source=source)
        if patient:
            item["patient_id"] = patient
        candidates.append(
            _Candidate(item, masks=[mask] if mask else [], shape=shape, in_pool=bool(mask) or not require_masks)
        )
    videos = _list_files(video_dir, VIDEO_SUFFIXES, skipped) if video_dir.is_dir() else []
    for video in videos:
        item = {"video": str(video)}
        row = table.get(video.name) if table is not None else None
        class_name = _match_class(video, patterns) if patterns else (row or {}).get("class")
        if class_name:
            item["class_name"] = class_name
        item.update(case_id=f"videos/{video.stem}", source=source, num_frames=_video_frame_count(video))
        if row and row.get("patient_id"):
            item["patient_id"] = row["patient_id"]
        candidates.append(_Candidate(item, in_pool=False))
    if table is not None:
        known = {image.name for image in images} | {video.name for video in videos}
        unknown = sorted(set(table) - known)
        if unknown:
            raise DatalistError(root / "classes.csv", f"lists files that do not exist: {unknown[:5]}.")
    return _Collection(
        candidates, class_order=class_order, skipped=skipped, mask_mode=mask_mode, num_classes=num_labels
    )


def _collect_dicom(
    root: Path, *, patterns: dict[str, re.Pattern[str]] | None, require_masks: bool, progress: bool
) -> _Collection:
    """DICOM files below ``root`` (``masks/`` excluded); masks in ``<root>/masks/<stem>.png``."""
    from usseg.data.readers import read_dicom

    mask_dir = root / "masks"
    masks = _index_by_stem(mask_dir) if mask_dir.is_dir() else {}
    table = _read_classes_csv(root / "classes.csv")
    candidates: list[_Candidate] = []
    skipped: list[dict[str, str]] = []
    files = [path for path in _walk(root, exclude=mask_dir) if _is_dicom(path)]
    for path in _bar(files, progress, "read DICOM"):
        frames, meta = read_dicom(path)
        class_name, patient = _class_from_table_or_default(path, root, patterns, table, root / "classes.csv")
        if class_name is None:
            skipped.append({"path": str(path), "reason": "no class_from pattern matches the file name"})
            continue
        num_frames = int(meta.get("num_frames") or frames.shape[0])
        key = "video" if num_frames > 1 else "image"  # a cine is one item, read by the video transforms
        item: dict[str, Any] = {key: str(path), "class_name": class_name, "case_id": _relative_stem(path, root)}
        item["source"] = root.name
        patient = patient or str(meta.get("patient_id") or "")
        if patient:
            item["patient_id"] = patient
        item["num_frames"] = num_frames
        mask = masks.get(path.stem)
        candidates.append(
            _Candidate(
                item,
                masks=[mask] if mask else [],
                shape=(int(frames.shape[1]), int(frames.shape[2])),
                in_pool=bool(mask) or not require_masks,
                pixels_hash=pixel_hash(frames),
            )
        )
    return _Collection(candidates, skipped=skipped)


def _collect_video(
    root: Path, *, patterns: dict[str, re.Pattern[str]] | None, require_masks: bool, progress: bool
) -> _Collection:
    """Videos (and multi-frame DICOM) below ``root``; split by video, or by patient when one is known."""
    table = _read_classes_csv(root / "classes.csv")
    candidates: list[_Candidate] = []
    skipped: list[dict[str, str]] = []
    for path in _bar(list(_walk(root)), progress, "scan videos"):
        if path.suffix.lower() in VIDEO_SUFFIXES:
            num_frames, dicom_patient = _video_frame_count(path), ""
        elif _is_dicom(path):
            num_frames, dicom_patient = _dicom_header(path)
            if num_frames < 2:
                skipped.append({"path": str(path), "reason": "single-frame DICOM, not a video"})
                continue
        else:
            if path.name not in ("classes.csv", "dataset.json"):
                skipped.append({"path": str(path), "reason": "not a video file"})
            continue
        class_name, patient = _class_from_table_or_default(path, root, patterns, table, root / "classes.csv")
        if class_name is None:
            skipped.append({"path": str(path), "reason": "no class_from pattern matches the file name"})
            continue
        item: dict[str, Any] = {"video": str(path), "class_name": class_name, "case_id": _relative_stem(path, root)}
        item["source"] = root.name
        patient = patient or dicom_patient
        if patient:
            item["patient_id"] = patient
        item["num_frames"] = num_frames
        candidates.append(_Candidate(item))
    return _Collection(candidates, skipped=skipped, masks_expected=False)


# ---------------------------------------------------------------------------------------- classes


def _class_of(
    path: Path, root: Path, patterns: dict[str, re.Pattern[str]] | None, table_class: str | None
) -> str | None:
    """``class_from`` first, then the table's class, then the first-level sub-folder, else ``"unknown"``."""
    if patterns:
        return _match_class(path, patterns)
    if table_class:
        return table_class
    relative = path.relative_to(root)
    return relative.parts[0] if len(relative.parts) > 1 else _UNKNOWN_CLASS


def _match_class(path: Path, patterns: dict[str, re.Pattern[str]]) -> str | None:
    matches = [name for name, pattern in patterns.items() if pattern.search(path.name)]
    if len(matches) > 1:
        raise DatalistError(path, f"matches several class_from patterns: {matches}; make them exclusive.")
    return matches[0] if matches else None


def _class_from_table_or_default(
    path: Path,
    root: Path,
    patterns: dict[str, re.Pattern[str]] | None,
    table: dict[str, dict[str, str]] | None,
    table_path: Path,
) -> tuple[str | None, str]:
    """Return ``(class_name or None when class_from matches nothing, patient_id or "")``."""
    row = None
    if table is not None:
        row = table.get(path.relative_to(root).as_posix()) or table.get(path.name)
        if row is None and not patterns:
            raise DatalistError(table_path, f"has no row for {path.name!r}; list every file or remove the file.")
    if row is None and table is None and path.parent == root / "images":
        # Generic layout without classes.csv: one class for everything, not the folder name "images".
        return (_match_class(path, patterns) if patterns else _UNKNOWN_CLASS), ""
    class_name = _class_of(path, root, patterns, (row or {}).get("class"))
    return class_name, (row or {}).get("patient_id", "") or ""


def _filter_classes(
    candidates: list[_Candidate], include: list[str] | None, exclude: list[str] | None, root: Path
) -> tuple[list[_Candidate], dict[str, int]]:
    present = Counter(c.item["class_name"] for c in candidates if c.item.get("class_name") is not None)
    if include is not None:
        missing = [name for name in include if name not in present]
        if missing:
            raise DatalistError(
                root, f"include_classes names classes with no files: {missing}; found {sorted(present)}."
            )
    keep = []
    excluded: Counter[str] = Counter()
    for candidate in candidates:
        name = candidate.item.get("class_name")
        dropped = (include is not None and name is not None and name not in include) or (
            exclude is not None and name in exclude
        )
        if dropped:
            excluded[name] += 1
        else:
            keep.append(candidate)
    if not keep:
        raise DatalistError(root, f"no files left after the class filters; classes found: {sorted(present)}.")
    return keep, dict(sorted(excluded.items()))


def _class_names(
    candidates: list[_Candidate], class_order: list[str] | None, include: list[str] | None, root: Path
) -> list[str]:
    present = {c.item["class_name"] for c in candidates if c.item.get("class_name") is not None}
    if class_order is not None:
        unknown = sorted(present - set(class_order))
        if unknown:
            raise DatalistError(root / "dataset.json", f"'class_names' lacks classes used in classes.csv: {unknown}.")
        return [name for name in class_order if name in present]
    if include is not None:
        return [name for name in include if name in present]
    return sorted(present)


# ---------------------------------------------------------------------------------------- files


def _read_dataset_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except json.JSONDecodeError as err:
        raise DatalistError(path, f"is not valid JSON ({err}).") from None
    if not isinstance(data, dict):
        raise DatalistError(path, f"must hold a JSON object, found {type(data).__name__}.")
    return data


def _read_classes_csv(path: Path) -> dict[str, dict[str, str]] | None:
    """``{file name: {"class": ..., "patient_id": ...}}``, or None when there is no classes.csv."""
    if not path.is_file():
        return None
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        header = [name.strip() for name in reader.fieldnames or []]
        if "image" not in header or "class" not in header:
            raise DatalistError(path, f"needs the header 'image,class[,patient_id]', found {header}.")
        table: dict[str, dict[str, str]] = {}
        for line, row in enumerate(reader, start=2):
            row = {(key or "").strip(): (value or "").strip() for key, value in row.items()}
            name = row["image"]
            if not name or not row["class"]:
                raise DatalistError(path, f"line {line} has an empty image or class: {row}.")
            if name in table:
                raise DatalistError(path, f"line {line} repeats {name!r}.")
            table[name] = {"class": row["class"], "patient_id": row.get("patient_id", "")}
    return table


def _list_files(folder: Path, suffixes: Iterable[str], skipped: list[dict[str, str]]) -> list[Path]:
    files = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        if path.suffix.lower() in suffixes:
            files.append(path)
        else:
            skipped.append({"path": str(path), "reason": f"suffix not one of {sorted(suffixes)}"})
    return files


def _walk(root: Path, exclude: Path | None = None) -> Iterable[Path]:
    """Every non-hidden file below ``root`` in sorted order, skipping ``exclude``."""
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and Path(folder, d) != exclude)
        for name in sorted(files):
            if not name.startswith("."):
                yield Path(folder, name)


def _index_by_stem(folder: Path) -> dict[str, Path]:
    index: dict[str, Path] = {}
    for path in _walk(folder):
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if path.stem in index:
            raise DatalistError(path, f"has the same stem as {index[path.stem]}; mask names must be unique.")
        index[path.stem] = path
    return index


def _first_existing(*paths: Path) -> Path | None:
    return next((path for path in paths if path.is_file()), None)


def _relative_stem(path: Path, root: Path) -> str:
    return path.relative_to(root).with_suffix("").as_posix()


def _is_dicom(path: Path) -> bool:
    if path.suffix.lower() == ".dcm":
        return True
    if path.suffix.lower() in VIDEO_SUFFIXES | IMAGE_SUFFIXES or path.suffix.lower() in (".csv", ".json", ".txt"):
        return False
    try:
        with open(path, "rb") as handle:
            return handle.read(132)[128:] == b"DICM"
    except OSError:
        return False


def _dicom_header(path: Path) -> tuple[int, str]:
    """``(number of frames, PatientID)`` from the header alone, without decoding pixels."""
    import pydicom

    try:
        dataset = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as err:  # pydicom raises several unrelated types for a damaged file
        raise InputError(path, f"cannot be read as DICOM ({err}).") from err
    return int(getattr(dataset, "NumberOfFrames", 1) or 1), str(getattr(dataset, "PatientID", "") or "")


def _video_frame_count(path: Path) -> int:
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise InputError(path, "has no video stream.")
            stream = container.streams.video[0]
            if stream.frames:
                return int(stream.frames)
            # Containers such as GIF do not store a frame count; counting packets needs no decoding.
            return sum(1 for packet in container.demux(stream) if packet.size)
    except InputError:
        raise
    except Exception as err:  # PyAV raises its own error tree (av.error.*) for unreadable files
        raise InputError(path, f"cannot be opened as a video ({err}).") from err


def _image_shape(path: Path) -> tuple[int, int]:
    """(H, W) from the image header; no pixel decoding."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            width, height = image.size
    except (UnidentifiedImageError, OSError) as err:
        raise InputError(path, f"cannot be read as an image ({err}).") from err
    return height, width


def _content_hash(candidate: _Candidate) -> str:
    """Pixel hash of a still image; byte hash of a video file (decoding every frame is too slow to do here)."""
    if "image" in candidate.item:
        from usseg.data.readers import read_image_array

        return pixel_hash(read_image_array(candidate.item["image"], color="rgb"))
    return "file:" + file_digest(candidate.item["video"], "sha1")


def _check_masks(
    candidates: list[_Candidate],
    split_of: Mapping[str, str],
    mask_mode: str,
    num_classes: int | None,
    merged_dir: Path,
    progress: bool,
) -> dict[str, Path]:
    """Read every mask of the kept files against its image size; merge multi-mask cases by union.

    Every mask is read, not only those of labeled, validation and test items, so whether a build fails
    never depends on the seed. Returns ``{case_id: mask path}`` (the merged file for multi-mask cases).
    """
    from usseg.data.readers import read_mask

    label_of: dict[str, Path] = {}
    to_check = [candidate for candidate in candidates if candidate.masks and candidate.case_id in split_of]
    for candidate in _bar(to_check, progress, "check masks"):
        arrays = [
            read_mask(mask, mode=mask_mode, num_classes=num_classes, expected_shape=candidate.shape)
            for mask in candidate.masks
        ]
        if len(arrays) == 1:
            label_of[candidate.case_id] = candidate.masks[0]
            continue
        if mask_mode != "binary":
            raise DatalistError(candidate.path, f"has {len(arrays)} masks; only binary masks can be merged.")
        union = np.zeros(arrays[0].shape, dtype=bool)
        for array in arrays:
            union |= array > 0
        merged = merged_dir / f"{Path(candidate.case_id).name}_mask.png"
        atomic_save_image(merged, union.astype(np.uint8) * 255)
        label_of[candidate.case_id] = merged
    return label_of


# ---------------------------------------------------------------------------------------- output
def _place_extras(
    extras: list[_Candidate], drawn: Mapping[str, list[Mapping[str, Any]]], split_of: dict[str, str]
) -> list[dict[str, str]]:
    """Put unlabeled-only files in ``unlabeled`` (``split_of`` is updated); return the ones left out."""
    held_out_patients = {
        str(item["patient_id"])
        for name in ("validation", "test")
        for item in drawn[name]
        if item.get("patient_id") not in (None, "")
    }
    skipped = []
    for candidate in extras:
        patient = candidate.item.get("patient_id")
        if patient not in (None, "") and str(patient) in held_out_patients:
            # Training on another file of a validation/test patient would leak that patient.
            skipped.append({"path": str(candidate.path), "reason": f"patient {patient!r} is in validation or test"})
        else:
            split_of[candidate.case_id] = "unlabeled"
    return skipped


def _assemble_splits(
    candidates: list[_Candidate],
    split_of: Mapping[str, str],
    label_of: Mapping[str, Path],
    require_masks: bool,
    out_dir: Path,
) -> dict[str, list[dict[str, Any]]]:
    """Items with relative paths, sorted by case_id; ``label`` only outside ``unlabeled``."""
    by_id = {candidate.case_id: candidate for candidate in candidates}
    splits: dict[str, list[dict[str, Any]]] = {name: [] for name in SPLIT_NAMES}
    for case_id in sorted(split_of):
        name = split_of[case_id]
        item = dict(by_id[case_id].item)
        if name != "unlabeled":
            if case_id in label_of:
                item["label"] = str(label_of[case_id])
            elif require_masks:
                raise DatalistError(by_id[case_id].path, f"is in split {name!r} but has no mask (require_masks=True).")
        splits[name].append(_relative_item(item, out_dir))
    return splits


def _check_unique_case_ids(candidates: list[_Candidate]) -> None:
    counts = Counter(candidate.case_id for candidate in candidates)
    repeated = sorted(case_id for case_id, count in counts.items() if count > 1)
    if repeated:
        first = next(candidate for candidate in candidates if candidate.case_id == repeated[0])
        raise DatalistError(first.path, f"case ids must be unique; repeated: {repeated[:5]}.")


def _relative_path(path: Path, base: Path) -> str:
    try:
        return Path(os.path.relpath(os.path.abspath(path), os.path.abspath(base))).as_posix()
    except ValueError:  # Windows: different drives have no relative path
        return Path(os.path.abspath(path)).as_posix()


def _relative_item(item: dict[str, Any], base: Path) -> dict[str, Any]:
    order = ("image", "video", "label", "image_m2", "class", "class_name", "case_id", "source", "patient_id")
    item = {key: item[key] for key in order if key in item} | item
    for key in PATH_KEYS:
        if key in item:
            item[key] = _relative_path(Path(item[key]), base)
    return item


def _count_table(splits: Mapping[str, list[dict[str, Any]]], class_names: list[str]) -> dict[str, dict[str, int]]:
    counts = {}
    for name in SPLIT_NAMES:
        per_class = Counter(item.get("class_name", "(no class)") for item in splits[name])
        row = {class_name: per_class.get(class_name, 0) for class_name in class_names}
        if per_class.get("(no class)"):
            row["(no class)"] = per_class["(no class)"]
        row["total"] = len(splits[name])
        counts[name] = row
    return counts


def _format_summary(output: Path, summary: Mapping[str, Any]) -> str:
    counts = summary["counts"]
    columns = list(dict.fromkeys(key for row in counts.values() for key in row))
    width = max(len("validation"), *(len(column) for column in columns)) + 2
    settings = summary["settings"]
    lines = [f"usseg datalist {output} (layout {settings['layout']!r}, seed {settings['seed']})"]
    lines.append("split".ljust(12) + "".join(column.rjust(width) for column in columns))
    for name, row in counts.items():
        lines.append(name.ljust(12) + "".join(str(row.get(column, 0)).rjust(width) for column in columns))
    records = summary["dropped_duplicates"]
    if records:
        dropped = [case_id for record in records for case_id in record["dropped"]]
        lines.append(f"dropped {len(dropped)} duplicate(s) in {len(records)} group(s): {', '.join(dropped[:6])}")
    if summary["excluded_classes"]:
        lines.append(f"excluded classes: {summary['excluded_classes']}")
    if summary["skipped"]:
        lines.append(f"skipped {len(summary['skipped'])} file(s); see the summary JSON")
    return "\n".join(lines)


def _bar(items: Sequence[Any], progress: bool, description: str) -> Iterable[Any]:
    if not progress:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=description, unit="file")


# ---------------------------------------------------------------------------------------- video pre-training

VIDEO_PRETRAINING_SPLITS: tuple[str, ...] = ("train", "validation", "meta")
"""Splits of a video pre-training datalist (:func:`build_video_pretraining_datalist`)."""


def _frame_folders(root: Path) -> list[Path]:
    """Folders below ``root`` (or ``root`` itself) holding at least two frame images and no sub-folder.

    The ``images/``, ``masks/`` and ``images_m2/`` folders of a generic-layout data set (next to its
    ``dataset.json``) hold independent images, not frames, and are skipped.
    """
    found = []
    for folder, dirs, files in os.walk(root):
        if "dataset.json" in files:
            dirs[:] = [d for d in dirs if d not in ("images", "masks", "images_m2")]
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        images = [name for name in files if Path(name).suffix.lower() in IMAGE_SUFFIXES and not name.startswith(".")]
        if not dirs and len(images) >= 2:
            found.append(Path(folder))
    return sorted(found)


def _video_sources(
    source: Path, patterns: dict[str, re.Pattern[str]] | None, skipped: list[dict[str, str]]
) -> list[dict[str, Any]]:
    """Items ``{"video", "class_name", "case_id", "source", "num_frames"[, "patient_id"]}`` found at ``source``."""
    if source.is_file():
        if source.suffix.lower() in VIDEO_SUFFIXES:
            num_frames, patient = _video_frame_count(source), ""
        elif _is_dicom(source):
            num_frames, patient = _dicom_header(source)
        else:
            raise InputError(source, "is neither a video file nor a DICOM cine.")
        name = _match_class(source, patterns) if patterns else _UNKNOWN_CLASS
        if name is None:
            skipped.append({"path": str(source), "reason": "no class_from pattern matches the file name"})
            return []
        item = {"video": str(source), "class_name": name, "case_id": source.stem, "source": source.parent.name}
        return [item | {"num_frames": num_frames} | ({"patient_id": patient} if patient else {})]
    if not source.is_dir():
        raise InputError(source, "not found; pass a video, a DICOM cine, or a folder of them.")
    collection = _collect_video(source, patterns=patterns, require_masks=False, progress=False)
    items = [candidate.item for candidate in collection.candidates]
    skipped.extend(record for record in collection.skipped if Path(record["path"]).suffix.lower() not in IMAGE_SUFFIXES)
    table = _read_classes_csv(source / "classes.csv")
    for folder in _frame_folders(source):
        base = source if folder != source else source.parent
        name, patient = _class_from_table_or_default(folder, base, patterns, table, source / "classes.csv")
        if name is None:
            skipped.append({"path": str(folder), "reason": "no class_from pattern matches the folder name"})
            continue
        frames = [p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")]
        case_id = folder.relative_to(source).as_posix() if folder != source else folder.name
        item = {"video": str(folder), "class_name": name, "case_id": case_id, "source": source.name}
        items.append(item | {"num_frames": len(frames)} | ({"patient_id": patient} if patient else {}))
    return items


def build_video_pretraining_datalist(
    sources: Sequence[str | os.PathLike],
    output: str | os.PathLike,
    *,
    seed: int = 0,
    val_fraction: float = 0.2,
    meta_fraction: float = 0.1,
    label_rate: float = 0.0,
    include_classes: Sequence[str] | None = None,
    class_from: Mapping[str, str] | None = None,
    min_frames: int = 1,
    patient_of: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Write a contrastive pre-training datalist: ``train``, ``validation`` and a held-out ``meta`` list of videos.

    Sources are video files (any PyAV format of :data:`VIDEO_SUFFIXES`), multi-frame DICOM cines, folders of frame
    images (one folder per video, frames sorted naturally by file name), or folders holding any of these. Videos are
    split by patient when ``patient_id`` is known (``classes.csv`` or the DICOM header), else by video, so no video
    (or patient) is in two lists; in particular the meta list, from which Meta-USCL's meta batches are drawn, never
    shares a video with the training list (``methods.md`` section 2.4, item 9).

    Each item has ``video``, ``case_id``, ``source``, ``num_frames``, ``class_name`` (``"unknown"`` without class
    information), ``class`` and ``labeled``. ``class`` is the index into ``class_names`` for the ``label_rate`` share
    of training videos drawn as labeled (USCL's semi-supervised cross-entropy), and ``-1`` for every other video;
    validation and meta videos are never labeled.

    Args:
        sources: files and folders to collect videos from.
        output: the datalist JSON to write (paths stored relative to its folder).
        seed: seed of the split and of the labeled draw.
        val_fraction: share of videos (patients) in ``validation``, in [0, 1).
        meta_fraction: share of videos (patients) in ``meta``, in [0, 1).
        label_rate: share of training videos whose class is used, in [0, 1].
        include_classes: keep only these classes.
        class_from: ``{class_name: regex}`` searched in file names (e.g. ``{"covid": "^Cov"}``); a file no pattern
            matches is skipped and recorded.
        min_frames: drop (and record) videos with fewer frames.
        patient_of: ``{file or folder name: patient id}`` for sources whose patients are listed elsewhere (e.g. a
            data set's manifest); it takes precedence over ``classes.csv`` and DICOM headers.

    Returns:
        the datalist as written.

    Raises:
        ValueError: fractions out of range or summing to 1 or more.
        InputError: a source that does not exist or is not a video.
        DatalistError: no videos found, or too few groups to fill every non-empty split.
    """
    for name, value in (("val_fraction", val_fraction), ("meta_fraction", meta_fraction)):
        if not 0.0 <= float(value) < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {value!r}.")
    if float(val_fraction) + float(meta_fraction) >= 1.0:
        raise ValueError(f"val_fraction + meta_fraction must be < 1, got {val_fraction!r} + {meta_fraction!r}.")
    if not 0.0 <= float(label_rate) <= 1.0:
        raise ValueError(f"label_rate must be in [0, 1], got {label_rate!r}.")
    output = Path(output)
    patterns = _compile_class_from(class_from)
    include = _class_list("include_classes", include_classes)
    skipped: list[dict[str, str]] = []
    items: list[dict[str, Any]] = []
    for source in sources:
        items.extend(_video_sources(Path(source), patterns, skipped))
    kept = []
    for item in items:
        patient = (patient_of or {}).get(Path(item["video"]).name)
        if patient:
            item["patient_id"] = str(patient)
        if include is not None and item["class_name"] not in include:
            skipped.append({"path": item["video"], "reason": f"class {item['class_name']!r} not included"})
        elif item["num_frames"] < min_frames:
            skipped.append({"path": item["video"], "reason": f"{item['num_frames']} frames < min_frames={min_frames}"})
        else:
            kept.append(item)
    if not kept:
        raise DatalistError(", ".join(map(str, sources)), "no videos found (video files, DICOM cines, frame folders).")
    seen: dict[str, str] = {}
    for item in kept:
        if item["case_id"] in seen:
            item["case_id"] = f"{item['source']}/{item['case_id']}"  # same name in two sources
        if item["case_id"] in seen:
            raise DatalistError(item["video"], f"has the same case id as {seen[item['case_id']]}.")
        seen[item["case_id"]] = item["video"]
    class_names = include if include is not None else sorted({item["class_name"] for item in kept})

    groups: dict[str, list[dict[str, Any]]] = {}
    for item in sorted(kept, key=lambda entry: entry["case_id"]):
        groups.setdefault(item.get("patient_id") or f"video:{item['case_id']}", []).append(item)
    keys = sorted(groups)
    rng = np.random.default_rng(seed)
    order = [keys[i] for i in rng.permutation(len(keys))]
    wanted = {"meta": meta_fraction, "validation": val_fraction}
    counts = {name: (max(1, int(round(share * len(order)))) if share > 0 else 0) for name, share in wanted.items()}
    if counts["meta"] + counts["validation"] >= len(order):
        raise DatalistError(
            ", ".join(map(str, sources)),
            f"{len(order)} videos/patients cannot fill meta ({counts['meta']}), validation ({counts['validation']}) "
            "and a non-empty train list; add videos or lower the fractions.",
        )
    split_of = dict.fromkeys(order[: counts["meta"]], "meta")
    split_of |= dict.fromkeys(order[counts["meta"] : counts["meta"] + counts["validation"]], "validation")
    splits: dict[str, list[dict[str, Any]]] = {name: [] for name in VIDEO_PRETRAINING_SPLITS}
    for key in order:
        splits[split_of.get(key, "train")].extend(groups[key])
    train = sorted(splits["train"], key=lambda entry: entry["case_id"])
    num_labeled = int(round(float(label_rate) * len(train)))
    labeled = {int(i) for i in rng.permutation(len(train))[:num_labeled]}
    for name in VIDEO_PRETRAINING_SPLITS:
        ordered = sorted(splits[name], key=lambda entry: entry["case_id"])
        for index, item in enumerate(ordered):
            is_labeled = name == "train" and index in labeled and item["class_name"] in class_names
            item["labeled"] = bool(is_labeled)
            item["class"] = class_names.index(item["class_name"]) if is_labeled else -1
        splits[name] = [_relative_item(item, output.parent) for item in ordered]
    metadata = {
        "builder": "usseg.data.datalist.build_video_pretraining_datalist",
        "usseg_version": __version__,
        "settings": {
            "sources": [_relative_path(Path(s), output.parent) for s in sources],
            "seed": seed,
            "val_fraction": val_fraction,
            "meta_fraction": meta_fraction,
            "label_rate": label_rate,
            "include_classes": include,
            "class_from": dict(class_from) if class_from is not None else None,
            "min_frames": min_frames,
        },
        "counts": {name: len(splits[name]) for name in VIDEO_PRETRAINING_SPLITS},
        "frames": {name: int(sum(item["num_frames"] for item in splits[name])) for name in VIDEO_PRETRAINING_SPLITS},
        "labeled_train_videos": num_labeled,
        "skipped": [{"path": _relative_path(Path(r["path"]), output.parent), "reason": r["reason"]} for r in skipped],
    }
    datalist: dict[str, Any] = {**splits, "class_names": class_names, "metadata": metadata}
    atomic_write_json(output, datalist)
    return datalist


def assign_video_folds(
    items: Sequence[Mapping[str, Any]], num_folds: int = 5, seed: int = 0, stratify_key: str = "class_name"
) -> list[dict[str, Any]]:
    """Give every video a cross-validation ``fold``: stratified by class, grouped by ``patient_id`` when known.

    Groups (a patient's videos, or one video) are shuffled with ``seed`` within each class and dealt to the fold
    that currently holds the fewest videos of that class, so folds are balanced per class and no patient spans two
    folds.

    Args:
        items: video items (with ``case_id`` and ``stratify_key``; optional ``patient_id``).
        num_folds: number of folds, >= 2.
        seed: seed of the shuffle.
        stratify_key: item key of the class.

    Returns:
        new items with ``"fold"`` in ``0 .. num_folds - 1``, in the input order.

    Raises:
        ValueError: ``num_folds < 2`` or fewer groups than folds.
    """
    if isinstance(num_folds, bool) or not isinstance(num_folds, int) or num_folds < 2:
        raise ValueError(f"num_folds must be an integer >= 2, got {num_folds!r}.")
    groups: dict[str, list[int]] = {}
    for index, item in enumerate(items):
        groups.setdefault(str(item.get("patient_id") or f"video:{item['case_id']}"), []).append(index)
    if len(groups) < num_folds:
        raise ValueError(f"{len(groups)} videos/patients cannot fill num_folds={num_folds} folds.")
    rng = np.random.default_rng(seed)
    by_class: dict[str, list[str]] = {}
    for key in sorted(groups):
        by_class.setdefault(str(items[groups[key][0]].get(stratify_key)), []).append(key)
    fold_of: dict[int, int] = {}
    totals = [0] * num_folds
    for class_name in sorted(by_class):
        keys = by_class[class_name]
        per_fold = [0] * num_folds
        for position in rng.permutation(len(keys)):
            members = groups[keys[int(position)]]
            fold = min(range(num_folds), key=lambda f: (per_fold[f], totals[f], f))
            per_fold[fold] += len(members)
            totals[fold] += len(members)
            for index in members:
                fold_of[index] = fold
    return [dict(item) | {"fold": fold_of[index]} for index, item in enumerate(items)]


def resolve_video_pretraining_datalist(
    output_dir: str | os.PathLike,
    datalist: str | os.PathLike | None = None,
    sources: Sequence[str | os.PathLike] | None = None,
    seed: int = 0,
    val_fraction: float = 0.2,
    meta_fraction: float = 0.1,
    label_rate: float = 0.0,
    class_from: Mapping[str, str] | None = None,
    phantom: Mapping[str, Any] | None = None,
    include_pydicom_cine: bool = True,
) -> str:
    """The pre-training datalist a bundle run should use, built (with its default data) when needed.

    ``datalist`` is used as is. Otherwise the videos of ``sources`` are split into
    ``<output_dir>/pretraining_datalist.json``; without ``sources``, the usseg phantom's cine loops are generated
    into ``<output_dir>/phantom`` (``phantom`` holds ``write_phantom_dataset`` arguments) and pydicom's bundled
    ultrasound cine ``examples_ybr_color.dcm`` is added, so a fresh machine has data. A datalist built for the same
    request is reused, so a resumed run trains on the same split.

    Args:
        output_dir: the run's output folder.
        datalist: an existing pre-training datalist JSON.
        sources: video files, DICOM cines, frame folders or folders of them.
        seed, val_fraction, meta_fraction, label_rate, class_from: see :func:`build_video_pretraining_datalist`.
        phantom: arguments of ``usseg.data.phantom.write_phantom_dataset`` for the default data.
        include_pydicom_cine: add pydicom's example cine to the default data.

    Returns:
        the datalist path.

    Raises:
        FileNotFoundError: ``datalist`` does not exist.
    """
    if datalist:
        path = Path(datalist).expanduser().resolve()
        if not path.is_file():
            raise FileNotFoundError(f"{path}: datalist not found.")
        return str(path)
    output_dir = Path(output_dir).expanduser().resolve()
    request: dict[str, Any] = {
        "sources": [str(Path(s).expanduser().resolve()) for s in sources] if sources else None,
        "seed": seed,
        "val_fraction": val_fraction,
        "meta_fraction": meta_fraction,
        "label_rate": label_rate,
        "class_from": dict(class_from) if class_from else None,
        "phantom": None if sources else dict(phantom or {}),
        "include_pydicom_cine": bool(include_pydicom_cine) and not sources,
    }
    path = output_dir / "pretraining_datalist.json"
    try:
        if json.loads(path.read_text()).get("metadata", {}).get("request") == json.loads(json.dumps(request)):
            return str(path)
    except (OSError, json.JSONDecodeError, AttributeError):
        pass
    if sources:
        chosen = [Path(s) for s in request["sources"]]
    else:
        from usseg.data.phantom import write_phantom_dataset

        settings = {"num_images": 2, "num_videos": 12, "frames_per_video": 16, "size": 128, **dict(phantom or {})}
        root = write_phantom_dataset(output_dir / "phantom", seed=seed, **settings)
        chosen = [root]
        if include_pydicom_cine:
            from pydicom.data import get_testdata_file

            cine = get_testdata_file("examples_ybr_color.dcm")
            if cine is None:
                raise InputError("examples_ybr_color.dcm", "pydicom's test data file is not installed.")
            chosen.append(Path(cine))
    built = build_video_pretraining_datalist(
        chosen,
        path,
        seed=seed,
        val_fraction=val_fraction,
        meta_fraction=meta_fraction,
        label_rate=label_rate,
        class_from=class_from,
    )
    built["metadata"]["request"] = request
    atomic_write_json(path, built)
    return str(path)
