# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""One entry point from "what the user gave" to "a datalist JSON a bundle can train on".

A bundle run gets a datalist (use it), a dataset folder (build a datalist for it once), or nothing (generate the
phantom, then build its datalist). The built datalist is kept in the output folder and reused while its settings
are unchanged, so a second run (or a resumed one) trains on exactly the same split.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from usseg.data.io import atomic_write_json
from usseg.errors import DatalistError

__all__ = ["resolve_datalist", "inference_inputs", "inference_sources", "IMAGE_SUFFIXES"]

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def _records(path: Path, settings: dict[str, Any], *keys: str) -> bool:
    """Whether the JSON file ``path`` (at ``keys`` inside it) holds ``settings``, compared as JSON values."""
    try:
        recorded: Any = json.loads(path.read_text())
        for key in keys:
            recorded = recorded.get(key, {})
    except (OSError, json.JSONDecodeError, AttributeError):
        return False
    return recorded == json.loads(json.dumps(settings))


def resolve_datalist(
    output_dir: str | os.PathLike,
    datalist: str | os.PathLike | None = None,
    dataset_dir: str | os.PathLike | None = None,
    layout: str = "generic",
    seed: int = 0,
    test_fraction: float = 0.2,
    val_fraction: float = 0.1,
    num_labeled: int | float | None = None,
    exclude_classes: Sequence[str] | None = None,
    phantom: dict[str, Any] | None = None,
) -> str:
    """Return the path of the datalist a run should use, building it (and the phantom) when needed.

    Args:
        output_dir: the run's output folder; built datalists and the phantom go here.
        datalist: an existing datalist JSON (from ``usseg prepare``); used as is.
        dataset_dir: a dataset folder in ``layout`` (``generic``, ``busi``, ``dicom``, ``video``).
        layout: the folder layout of ``dataset_dir``.
        seed, test_fraction, val_fraction, num_labeled, exclude_classes: split settings (``usseg.data.splits``).
        phantom: keyword arguments of ``usseg.data.phantom.write_phantom_dataset`` used when neither ``datalist``
            nor ``dataset_dir`` is given.

    Raises:
        FileNotFoundError: ``datalist`` or ``dataset_dir`` does not exist.
    """
    if datalist:
        path = Path(datalist).expanduser().resolve()
        if not path.is_file():
            raise FileNotFoundError(f"{path}: datalist not found.")
        return str(path)
    output_dir = Path(output_dir).expanduser().resolve()
    if dataset_dir:
        root = Path(dataset_dir).expanduser().resolve()
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: dataset folder not found.")
    else:
        from usseg.data.phantom import write_phantom_dataset

        root = output_dir / "phantom"
        phantom_settings = dict(phantom or {})
        if not _records(root / ".usseg_phantom.json", phantom_settings):
            logger.info("generating the phantom data set in %s", root)
            write_phantom_dataset(root, **phantom_settings)
            atomic_write_json(root / ".usseg_phantom.json", phantom_settings)
        layout = "generic"
    settings = {
        "root": str(root),
        "layout": layout,
        "seed": seed,
        "test_fraction": test_fraction,
        "val_fraction": val_fraction,
        "num_labeled": num_labeled,
        "exclude_classes": list(exclude_classes) if exclude_classes else None,
        # a regenerated phantom has other files: its settings are part of what the datalist answers
        "phantom": None if dataset_dir else dict(phantom or {}),
    }
    path = output_dir / "datalist.json"
    if not _records(path, settings, "metadata", "request"):
        from usseg.data.datalist import build_datalist

        build_datalist(
            root,
            layout,
            path,
            seed=seed,
            test_fraction=test_fraction,
            val_fraction=val_fraction,
            num_labeled=num_labeled,
            exclude_classes=exclude_classes,
        )
        # record what was asked for, so the next run can tell whether this datalist still answers it
        built = json.loads(path.read_text())
        built.setdefault("metadata", {})["request"] = settings
        atomic_write_json(path, built)
    return str(path)


def inference_inputs(
    input_dir: str | os.PathLike | None = None,
    datalist: str | os.PathLike | None = None,
    split: str = "test",
) -> list[dict[str, str]]:
    """Items ``{"image": path}`` for inference: every image file under ``input_dir``, else a datalist split.

    Raises:
        DatalistError: when nothing to infer on is found (the folder or datalist is named).
    """
    if input_dir:
        folder = Path(input_dir).expanduser().resolve()
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: input folder not found.")
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            raise DatalistError(folder, f"no image files ({', '.join(IMAGE_SUFFIXES)}) found.")
        return [{"image": str(p)} for p in files]
    if datalist:
        from usseg.data.datalist import load_datalist

        return [{"image": item["image"]} for item in load_datalist(datalist, split)]
    raise DatalistError(None, "inference needs an input_dir or a datalist.")


def inference_sources(
    input_dir: str | os.PathLike | None = None,
    datalist: str | os.PathLike | None = None,
    split: str = "test",
) -> list[str]:
    """What a bundle's ``inference.yaml`` hands to :func:`usseg.inference.infer`, the code path of ``usseg infer``.

    ``input_dir`` is passed on as it is, so ``infer`` walks a folder itself: every image, NIfTI, DICOM (single frame
    or cine, with or without a suffix) and video file, outputs in the same subfolders, unsupported files listed as
    skipped. Without it, the images of a datalist split.

    Args:
        input_dir: a file or a folder to segment; takes precedence over ``datalist``.
        datalist: a datalist JSON (used when ``input_dir`` is None).
        split: the datalist split.

    Returns:
        Absolute paths: ``[input_dir]`` or the split's images.

    Raises:
        FileNotFoundError: ``input_dir`` does not exist.
        DatalistError: neither is given, or the split is missing or empty.
    """
    if input_dir:
        path = Path(input_dir).expanduser().resolve()
        if not path.exists():
            raise FileNotFoundError(f"{path}: input file or folder not found.")
        return [str(path)]
    return [item["image"] for item in inference_inputs(datalist=datalist, split=split)]
