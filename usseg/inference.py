# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""Segment ultrasound files for research pipelines: images, NIfTI, DICOM (single frame and cine), videos, folders.

:func:`infer` (``usseg infer``, and the ``run`` of a bundle's ``inference.yaml``, which passes a :class:`Segmenter`
built on the config's own ``network``) turns every input into gray frames ``(F, H, W)`` uint8, segments them with a
bundle's network, and writes per input (``<stem>`` is the file name without its suffix):

- ``<stem>_seg.nii.gz``: the label map(s), pixel spacing (mm) in the affine when the source has one (DICOM
  ultrasound regions or PixelSpacing, NIfTI zooms). A single frame is stored ``(W, H, 1)`` as
  :func:`usseg.data.writers.write_mask_nifti` does; a cine ``(W, H, F)``, frames along the last axis;
- ``<stem>_seg.png`` and ``<stem>_overlay.png`` for a single frame, ``<stem>_f0003_seg.png`` and
  ``<stem>_f0003_overlay.png`` per frame of a cine (0-based frame index). Two-class masks are saved as {0, 255}
  so they are visible, more classes as their label values;
- ``<stem>_inference.json``: the source metadata and, per frame, each class's mean and maximum probability and
  its area in pixels (and in mm² when the spacing is known);
- with ``dicom_seg=True`` and a DICOM source, DICOM SEG objects referencing the source instance
  (:mod:`usseg.data.dicom_seg`): ``<stem>_seg.dcm`` for a single frame, ``<stem>_f0003_seg.dcm`` per frame of a
  cine, since highdicom cannot build one SEG over a cine that has no Frame of Reference.

Inputs are dispatched by suffix: PNG/JPEG/BMP/TIFF (``usseg.data.readers.read_image_array``), DICOM (``.dcm``,
``.dicom``, or any file with the ``DICM`` marker: ``read_dicom``), videos (``read_video``), and NIfTI (``.nii``,
``.nii.gz``): a 2D volume is one frame, a 3D volume ``(X, Y, F)`` holds frames along its LAST axis (the layout
written above, so outputs can be fed back), a 4D ``(X, Y, 1, T)`` one frames along time. NIfTI intensities must
lie in [0, 255] (8-bit ultrasound) or [0, 1] (scaled by 255). Colour is reduced to BT.601 luma.

Preprocessing follows the bundle's ``inference.yaml``: intensities divided by 255, each frame resized to
``spatial_size`` with the bundle's ``Resized`` mode, softmax, probabilities resized back with the same mode (as
``Invertd`` does), argmax. A file that cannot be read or segmented is recorded with its error and the run
continues; ``inference_report.json`` in the output folder lists every success and failure.

The ``"onnx"`` backend exports the network once (:func:`usseg.zoo.export_onnx`) to a cache file next to the weights,
named after the weights' sha256, and runs it with ONNX Runtime on the CPU provider; its probabilities match the
torch backend within :data:`usseg.zoo.EXPORT_ATOL`, so the masks agree except at pixels whose two largest class
probabilities are that close.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from usseg.bundles import resolve_bundle
from usseg.data.io import atomic_save_image, atomic_write, atomic_write_json, ensure_writable_dir, file_digest
from usseg.data.readers import DICOM_SUFFIXES, IMAGE_SUFFIXES, VIDEO_SUFFIXES
from usseg.errors import InputError

__all__ = [
    "FORMATS",
    "BACKENDS",
    "NIFTI_SUFFIXES",
    "REPORT_NAME",
    "InferenceReport",
    "Segmenter",
    "collect_inputs",
    "load_frames",
    "infer",
]

FORMATS: tuple[str, ...] = ("nii.gz", "png", "overlay", "json")
BACKENDS: tuple[str, ...] = ("torch", "onnx")
NIFTI_SUFFIXES: tuple[str, ...] = (".nii", ".nii.gz")
REPORT_NAME = "inference_report.json"
DEFAULT_BUNDLE = "breast_us_supervised_segmentation"
_SUPPORTED_SUFFIXES = IMAGE_SUFFIXES + DICOM_SUFFIXES + VIDEO_SUFFIXES + NIFTI_SUFFIXES
_DICOM_MARKER_OFFSET = 128
_DEFAULT_RESIZE_MODE = "area"  # MONAI Resize's default
_MAX_UINT8 = 255

logger = logging.getLogger(__name__)
PathLike = str | os.PathLike


# ------------------------------------------------------------------------------------------------------- inputs


def _kind(path: Path) -> str | None:
    """``"nifti"``, ``"image"``, ``"dicom"``, ``"video"`` by suffix (or DICOM marker), None when unsupported."""
    name = path.name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if name.endswith(IMAGE_SUFFIXES):
        return "image"
    if name.endswith(VIDEO_SUFFIXES):
        return "video"
    if name.endswith(DICOM_SUFFIXES) or _has_dicom_marker(path):
        return "dicom"
    return None


def _has_dicom_marker(path: Path) -> bool:
    """Whether ``path`` is a DICOM Part 10 file (``DICM`` after the preamble): hospital exports often lack a suffix."""
    try:
        with open(path, "rb") as handle:
            handle.seek(_DICOM_MARKER_OFFSET)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def collect_inputs(
    inputs: Sequence[PathLike] | PathLike,
) -> tuple[list[tuple[Path, Path]], list[dict[str, str]], list[dict[str, str]]]:
    """Expand files and folders (recursively) into the files to segment.

    A file named explicitly is always attempted (an unsupported one fails when read, naming the file). In a folder,
    files of a supported kind are taken (by suffix, or by the DICOM marker for files without one); other files and
    hidden ones are listed as skipped.

    Args:
        inputs: one path or a sequence of paths, files or folders.

    Returns:
        ``(files, skipped, failed)``: ``files`` as ``(path, output subfolder)`` pairs, the subfolder being the path's
        parent relative to the folder it was found in (``.`` for a file named explicitly), sorted within a folder;
        ``skipped`` and ``failed`` as ``{"input", "reason"}`` / ``{"input", "error"}`` (a missing path, a folder with
        nothing to segment).
    """
    paths = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    files: list[tuple[Path, Path]] = []
    skipped: list[dict[str, str]] = []
    failed: list[dict[str, str]] = []
    for raw in paths:
        path = Path(raw)
        if path.is_file():
            files.append((path, Path(".")))
            continue
        if not path.is_dir():
            failed.append({"input": str(path), "error": str(InputError(path, "no such file or folder."))})
            continue
        found = 0
        for candidate in sorted(p for p in path.rglob("*") if p.is_file()):
            relative = candidate.relative_to(path)
            if any(part.startswith(".") for part in relative.parts):
                continue
            if _kind(candidate) is None:
                skipped.append({"input": str(candidate), "reason": "not an image, DICOM, NIfTI or video file."})
                continue
            files.append((candidate, relative.parent))
            found += 1
        if not found:
            problem = f"holds no file to segment ({', '.join(_SUPPORTED_SUFFIXES)} or DICOM without suffix)."
            failed.append({"input": str(path), "error": str(InputError(path, problem))})
    return files, skipped, failed


def _nifti_to_uint8(values: np.ndarray, path: Path) -> np.ndarray:
    """NIfTI intensities in [0, 255] (rounded) or [0, 1] (scaled by 255) as uint8; anything else is refused."""
    if values.dtype.kind == "f":
        finite = np.isfinite(values)
        if not finite.all():
            raise InputError(path, f"holds {int(values.size - finite.sum())} NaN or infinite values.")
    elif values.dtype.kind not in "uib":
        raise InputError(path, f"unsupported NIfTI data type {values.dtype}; expected integers or floats.")
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if low < 0 or high > _MAX_UINT8:
        raise InputError(
            path,
            f"intensities span [{low:g}, {high:g}]; usseg segments 8-bit ultrasound, so values must lie in [0, 255] "
            "(or [0, 1]). Rescale the volume first.",
        )
    scale = _MAX_UINT8 if values.dtype.kind == "f" and high <= 1.0 else 1.0
    return np.rint(values.astype(np.float64) * scale).astype(np.uint8)


def _read_nifti(path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    import nibabel as nib

    try:
        image = nib.load(os.fspath(path))
        data = np.asarray(image.dataobj)
    except Exception as err:  # nibabel raises several types (ImageFileError, EOFError, zlib errors) on bad files
        raise InputError(path, f"cannot read the NIfTI file ({type(err).__name__}: {err}).") from err
    if data.ndim == 4 and data.shape[2] == 1:
        data = data[:, :, 0, :]
    if data.ndim == 2:
        data = data[:, :, None]
    if data.ndim != 3 or 0 in data.shape:
        raise InputError(
            path, f"has shape {data.shape}; expected 2D (X, Y), 3D (X, Y, frames) or 4D (X, Y, 1, frames)."
        )
    frames = _nifti_to_uint8(data, path).transpose(2, 1, 0)  # (X, Y, F) -> (F, rows, columns)
    zooms = [float(z) for z in image.header.get_zooms()[:2]]
    has_spacing = len(zooms) == 2 and all(z > 0 for z in zooms)
    return np.ascontiguousarray(frames), {
        "num_frames": int(frames.shape[0]),
        "pixel_spacing_mm": (zooms[1], zooms[0]) if has_spacing else None,
        "spacing_source": "nifti_header" if has_spacing else "none",
    }


def load_frames(path: PathLike) -> tuple[np.ndarray, dict[str, Any]]:
    """Read any supported input as gray uint8 frames, frames first.

    Args:
        path: an image, DICOM, video or NIfTI file (see the module docstring for the NIfTI layout).

    Returns:
        ``(frames, meta)``: uint8 ``(F, H, W)`` with ``F = 1`` for a still image, and a JSON-ready dict with
        ``input_type``, ``num_frames``, ``pixel_spacing_mm`` (``(row, column)`` or None) and ``spacing_source``,
        plus the DICOM fields of :func:`usseg.data.readers.read_dicom` for DICOM input.

    Raises:
        InputError: an unsupported file type, or a file its reader rejects (the message names the file).
    """
    from usseg.data.readers import read_dicom, read_image_array, read_video

    path = Path(path)
    kind = _kind(path) if path.is_file() else None
    if path.is_file() and kind is None:
        raise InputError(
            path, f"unsupported file type; expected one of {', '.join(_SUPPORTED_SUFFIXES)} or a DICOM file."
        )
    if kind == "nifti":
        frames, meta = _read_nifti(path)
    elif kind == "dicom":
        frames, meta = read_dicom(path, color="gray")
        meta = {key: value for key, value in meta.items() if key != "original_channel_dim"}
    elif kind == "video":
        frames = read_video(path, color="gray")
        meta = {"num_frames": int(frames.shape[0]), "pixel_spacing_mm": None, "spacing_source": "none"}
    else:  # an image, or a missing path: read_image_array names the problem
        frames = read_image_array(path, color="gray")[None]
        meta = {"num_frames": 1, "pixel_spacing_mm": None, "spacing_source": "none"}
    if frames.shape[0] == 0:
        raise InputError(path, "holds no frame.")
    return frames, {"input_type": kind or "image", **meta}


# ------------------------------------------------------------------------------------------------------ network


def _load_weights_into(network: torch.nn.Module, weights: Path, bundle_name: str) -> torch.nn.Module:
    """Load a bare state dict (a bundle's ``model.pt``) into ``network``, naming the file on any mismatch."""
    from collections.abc import Mapping

    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises pickle, zip and runtime errors alike for a file that is not a checkpoint
        raise InputError(weights, f"cannot be loaded as a PyTorch checkpoint ({err}).") from err
    if not isinstance(state, Mapping):
        raise InputError(weights, f"must hold a state dict, got a {type(state).__name__}.")
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as err:  # the message lists missing and unexpected keys and mismatched shapes
        detail = " ".join(str(err).split())
        raise InputError(weights, f"does not fit the network of {bundle_name}: {detail[:500]}") from err
    return network


class Segmenter:
    """A bundle's segmentation network with its inference preprocessing, on the torch or the ONNX Runtime backend.

    Calling it maps gray uint8 frames ``(F, H, W)`` to class probabilities ``(F, C, H, W)`` at the input size.

    Args:
        bundle: a bundle name (see ``usseg bundles``) or a bundle folder.
        weights: a state dict for the bundle's ``network_def``; default :func:`usseg.zoo.find_weights`
            (``./outputs/<bundle>/models/model.pt``, else ``<bundle>/models/model.pt``).
        backend: ``"torch"`` or ``"onnx"`` (ONNX Runtime, CPU provider).
        device: torch device for the torch backend; ``"auto"`` picks CUDA when available.
        spatial_size: network input size ``(H, W)``; default the bundle's ``spatial_size`` (it must match training).
        batch_size: frames per forward pass.
        onnx_cache_dir: folder of the ONNX cache; default the weights' folder (the temporary folder when that one
            is not writable).
        network: the network to run (torch backend), e.g. a bundle config's ``@network``: the weights are loaded into
            it, so a config's overrides of ``network_def`` apply. Default: the bundle's ``network_def``. The onnx
            backend always exports the bundle's ``network_def``.
        num_classes: the number of output classes; default the bundle's ``num_classes``.

    Raises:
        ValueError: an unknown backend, a bad ``spatial_size``, ``batch_size`` or ``num_classes``.
        TypeError: ``network`` is not a ``torch.nn.Module``.
        FileNotFoundError: no weights found, or the bundle does not exist.
        InputError: the weights do not fit the network.
        ImportError: ``backend="onnx"`` without onnx, onnxscript or onnxruntime (``pip install usseg[export]``).
    """

    def __init__(
        self,
        bundle: PathLike = DEFAULT_BUNDLE,
        weights: PathLike | None = None,
        backend: str = "torch",
        device: str | torch.device = "auto",
        spatial_size: Sequence[int] | None = None,
        batch_size: int = 8,
        onnx_cache_dir: PathLike | None = None,
        network: torch.nn.Module | None = None,
        num_classes: int | None = None,
    ) -> None:
        from monai.bundle import ConfigParser

        from usseg.engines.utils import resolve_device
        from usseg.zoo import find_weights, inference_config, load_network

        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}.")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
        if network is not None and not isinstance(network, torch.nn.Module):
            raise TypeError(f"network must be a torch.nn.Module, got {type(network).__name__}.")
        if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)):
            raise ValueError(f"num_classes must be an integer >= 1, got {num_classes!r}.")
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"num_classes must be an integer >= 1, got {num_classes!r}.")
        self.bundle_dir = resolve_bundle(bundle)
        self.name = self.bundle_dir.name
        parser = ConfigParser()
        parser.read_config(os.fspath(inference_config(self.bundle_dir)))
        parser["bundle_root"] = os.fspath(self.bundle_dir)
        size = parser.get_parsed_content("spatial_size") if spatial_size is None else spatial_size
        if (
            isinstance(size, (str, bytes))
            or len(size) != 2
            or any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1 for s in size)
        ):
            raise ValueError(f"spatial_size must be two positive integers (H, W), got {size!r}.")
        self.spatial_size: tuple[int, int] = (int(size[0]), int(size[1]))
        self.num_classes = int(parser.get_parsed_content("num_classes") if num_classes is None else num_classes)
        self.resize_mode = self._resize_mode(parser)
        meta = json.loads((self.bundle_dir / "configs" / "metadata.json").read_text(encoding="utf-8"))
        self.version = str(meta.get("version", "0"))
        channel_def = next(iter(meta.get("network_data_format", {}).get("outputs", {}).values()), {}).get(
            "channel_def", {}
        )
        self.class_names = [str(channel_def.get(str(k), f"class_{k}")) for k in range(self.num_classes)]
        found = find_weights(self.name, self.bundle_dir, weights)
        if found is None:
            raise FileNotFoundError(
                f"no weights for bundle {self.name}: looked for {Path.cwd() / 'outputs' / self.name / 'models'}"
                f"/model.pt and {self.bundle_dir / 'models' / 'model.pt'}; train it or pass --weights PATH."
            )
        self.weights = found.resolve()
        self.backend, self.batch_size = backend, batch_size
        self.device = resolve_device(device) if backend == "torch" else torch.device("cpu")
        # loading also checks the weights fit the network, before any export or input is touched
        if network is not None and backend == "torch":
            self._network = _load_weights_into(network, self.weights, self.name).to(self.device).eval()
        else:
            self._network = load_network(self.bundle_dir, self.weights, self.device)
        self.onnx_file: Path | None = None
        self._session: Any = None
        if backend == "onnx":
            self.onnx_file = self._onnx_cache(onnx_cache_dir)
            self._session = self._onnx_session(self.onnx_file)
            self._network = None  # the ONNX session is the model now; free the eager copy

    @staticmethod
    def _resize_mode(parser: Any) -> str:
        """The ``mode`` of the ``Resized`` step of the bundle's ``preprocessing``, as ``Invertd`` reuses it."""
        transforms = parser.get("preprocessing#transforms", []) or []
        for index, step in enumerate(transforms):
            if isinstance(step, dict) and str(step.get("_target_", "")).split(".")[-1] in ("Resized", "Resize"):
                if "mode" in step:
                    return str(parser.get_parsed_content(f"preprocessing#transforms#{index}#mode"))
                return _DEFAULT_RESIZE_MODE
        return _DEFAULT_RESIZE_MODE

    def _onnx_cache(self, cache_dir: PathLike | None) -> Path:
        from usseg.zoo import export_onnx

        folder = Path(cache_dir) if cache_dir is not None else self.weights.parent
        try:
            ensure_writable_dir(folder)
        except PermissionError:
            folder = ensure_writable_dir(Path(tempfile.gettempdir()) / "usseg_onnx_cache")
        # named after the weights' content: new weights under the same file name never reuse a stale export
        onnx_file = folder / f"{self.weights.stem}.{file_digest(self.weights)[:16]}.onnx"
        if not onnx_file.is_file():
            logger.info("exporting %s to ONNX: %s", self.weights, onnx_file)
            export_onnx(self.bundle_dir, self.weights, onnx_file)
        return onnx_file

    @staticmethod
    def _onnx_session(onnx_file: Path) -> Any:
        try:
            import onnxruntime
        except ImportError as err:
            raise ImportError(
                "the onnx backend needs onnxruntime; install it with `pip install usseg[export]`."
            ) from err
        return onnxruntime.InferenceSession(os.fspath(onnx_file), providers=["CPUExecutionProvider"])

    def _logits(self, batch: torch.Tensor) -> torch.Tensor:
        if self._session is not None:
            name = self._session.get_inputs()[0].name
            return torch.from_numpy(self._session.run(None, {name: batch.numpy()})[0])
        with torch.inference_mode():
            return self._network(batch.to(self.device)).float().cpu()

    def _resize(self, tensor: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        if tuple(tensor.shape[-2:]) == tuple(size):
            return tensor
        return torch.nn.functional.interpolate(tensor, size=tuple(size), mode=self.resize_mode)

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """Class probabilities of gray frames.

        Args:
            frames: uint8 ``(F, H, W)`` (or a single ``(H, W)`` frame).

        Returns:
            float32 ``(F, C, H, W)``: softmax probabilities at the input size, ``C = num_classes``.

        Raises:
            ValueError: ``frames`` is not 2D or 3D.
        """
        frames = np.asarray(frames)
        frames = frames[None] if frames.ndim == 2 else frames
        if frames.ndim != 3:
            raise ValueError(f"frames must be (F, H, W) or (H, W), got shape {frames.shape}.")
        height, width = frames.shape[1:]
        outputs = []
        for start in range(0, len(frames), self.batch_size):
            chunk = torch.from_numpy(np.ascontiguousarray(frames[start : start + self.batch_size]))
            images = self._resize(chunk.float().div(_MAX_UINT8)[:, None], self.spatial_size)
            probabilities = torch.softmax(self._logits(images.contiguous()), dim=1)
            outputs.append(self._resize(probabilities, (height, width)).numpy())
        return np.concatenate(outputs).astype(np.float32, copy=False)

    def describe(self) -> dict[str, Any]:
        """The settings a result depends on, for reports."""
        return {
            "bundle": self.name,
            "bundle_version": self.version,
            "bundle_dir": str(self.bundle_dir),
            "weights": str(self.weights),
            "backend": self.backend,
            "onnx_file": None if self.onnx_file is None else str(self.onnx_file),
            "device": str(self.device),
            "spatial_size": list(self.spatial_size),
            "resize_mode": self.resize_mode,
            "classes": list(self.class_names),
        }


# ------------------------------------------------------------------------------------------------------ outputs


@dataclass
class InferenceReport:
    """What :func:`infer` did: one entry per input, plus the path of ``inference_report.json``.

    Attributes:
        output_dir: the output folder.
        report_path: ``<output_dir>/inference_report.json``.
        succeeded: ``{"input", "num_frames", "outputs"}`` per segmented file.
        failed: ``{"input", "error"}`` per file (or folder) that could not be segmented.
        skipped: ``{"input", "reason"}`` per folder entry that is not a supported file.
        settings: bundle, weights, backend and preprocessing used.
    """

    output_dir: Path
    report_path: Path
    succeeded: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when no input failed."""
        return not self.failed


def _unique_stem(path: Path, subfolder: Path, used: set[str]) -> str:
    """``<stem>``, or ``<stem>_<suffix>`` (then ``_2``, ``_3``...) when another input already took it."""
    from usseg.data.writers import source_stem

    stem = source_stem(path)
    suffix = path.name[len(stem) :].lstrip(".").replace(".", "_") or "file"
    candidates = [stem, f"{stem}_{suffix}"] + [f"{stem}_{suffix}_{n}" for n in range(2, len(used) + 3)]
    for candidate in candidates:
        key = (subfolder / candidate).as_posix().lower()  # case-insensitive: outputs may land on such file systems
        if key not in used:
            used.add(key)
            return candidate
    raise RuntimeError(f"no free output name for {path}")  # unreachable: len(used) + 2 candidates cannot all clash


def _write_cine_nifti(path: Path, labels: np.ndarray, spacing: Sequence[float]) -> Path:
    """Save ``(F, H, W)`` label maps as NIfTI ``(W, H, F)``: the layout of ``write_mask_nifti`` with frames last."""
    import gzip

    import nibabel as nib

    row_mm, col_mm = float(spacing[0]), float(spacing[1])
    image = nib.Nifti1Image(labels.astype(np.uint8).transpose(2, 1, 0), np.diag([col_mm, row_mm, 1.0, 1.0]))
    image.header.set_xyzt_units("mm")
    payload = image.to_bytes()
    if path.name.endswith(".gz"):
        payload = gzip.compress(payload, mtime=0)  # mtime 0: identical masks give identical files
    with atomic_write(path, "wb") as handle:
        handle.write(payload)
    return path


def _frame_stats(
    probabilities: np.ndarray, labels: np.ndarray, names: Sequence[str], pixel_mm2: float | None
) -> dict[str, Any]:
    """Per-class mean and max probability and area of one frame (``probabilities`` (C, H, W), ``labels`` (H, W))."""
    areas = np.bincount(labels.ravel(), minlength=len(names))
    return {
        "mean_probability": {name: float(probabilities[c].mean()) for c, name in enumerate(names)},
        "max_probability": {name: float(probabilities[c].max()) for c, name in enumerate(names)},
        "area_pixels": {name: int(areas[c]) for c, name in enumerate(names)},
        "area_mm2": None if pixel_mm2 is None else {name: float(areas[c] * pixel_mm2) for c, name in enumerate(names)},
    }


def _segment_file(
    segmenter: Segmenter,
    path: Path,
    folder: Path,
    stem: str,
    formats: Sequence[str],
    dicom_seg: bool,
) -> dict[str, Any]:
    """Segment one file and write its outputs; returns its report entry. Errors propagate to the caller."""
    from usseg.data.writers import write_mask_nifti, write_mask_png
    from usseg.metrics.report import overlay_rgb

    frames, meta = load_frames(path)
    spacing = meta.get("pixel_spacing_mm")
    pixel_mm2 = None if spacing is None else float(spacing[0]) * float(spacing[1])
    labels = np.empty(frames.shape, dtype=np.uint8)
    stats = []
    # one batch at a time: a long cine's probabilities never sit in memory all together
    for start in range(0, len(frames), segmenter.batch_size):
        probabilities = segmenter(frames[start : start + segmenter.batch_size])
        labels[start : start + len(probabilities)] = probabilities.argmax(axis=1)
        for offset, frame_probabilities in enumerate(probabilities):
            frame_stats = _frame_stats(frame_probabilities, labels[start + offset], segmenter.class_names, pixel_mm2)
            stats.append({"frame": start + offset, **frame_stats})

    ensure_writable_dir(folder)
    is_cine = len(frames) > 1
    binary = segmenter.num_classes <= 2
    written: list[Path] = []

    def frame_name(index: int, kind: str, suffix: str) -> Path:
        return folder / (f"{stem}_f{index:04d}_{kind}{suffix}" if is_cine else f"{stem}_{kind}{suffix}")

    if "nii.gz" in formats:
        nifti = folder / f"{stem}_seg.nii.gz"
        written.append(
            _write_cine_nifti(nifti, labels, spacing or (1.0, 1.0))
            if is_cine
            else write_mask_nifti(nifti, labels[0], spacing or (1.0, 1.0))
        )
    for index, (frame, label_map) in enumerate(zip(frames, labels)):
        if "png" in formats:
            written.append(write_mask_png(frame_name(index, "seg", ".png"), label_map, binary=binary))
        if "overlay" in formats:
            written.append(atomic_save_image(frame_name(index, "overlay", ".png"), overlay_rgb(frame, label_map)))

    seg_note: str | None = None
    if dicom_seg and meta["input_type"] == "dicom":
        import pydicom

        from usseg.data.dicom_seg import new_uid, write_dicom_seg

        source = pydicom.dcmread(path, stop_before_pixels=True)
        series_uid = new_uid()  # one series per source: a cine's per-frame SEGs sort together
        for index, label_map in enumerate(labels):
            written.append(
                write_dicom_seg(
                    frame_name(index, "seg", ".dcm"),
                    path,
                    label_map,
                    segmenter.class_names,
                    frame_index=index if "NumberOfFrames" in source else None,
                    series_uid=series_uid,
                    algorithm_name=segmenter.name,
                    algorithm_version=segmenter.version,
                    source=source,
                )
            )
        seg_note = "one SEG per frame" if is_cine else "one SEG"
    elif dicom_seg:
        seg_note = "not written: the source is not DICOM"

    if "json" in formats:
        record = {
            "source": str(path),
            **segmenter.describe(),
            "source_metadata": meta,
            "dicom_seg": seg_note,
            "frames": stats,
            "outputs": [str(p) for p in written],
        }
        written.append(atomic_write_json(folder / f"{stem}_inference.json", record))
    return {"input": str(path), "num_frames": len(frames), "outputs": [str(p) for p in written]}


def infer(
    inputs: Sequence[PathLike] | PathLike,
    bundle: PathLike = DEFAULT_BUNDLE,
    output_dir: PathLike = "predictions",
    weights: PathLike | None = None,
    backend: str = "torch",
    formats: Sequence[str] = FORMATS,
    dicom_seg: bool = False,
    device: str | torch.device = "auto",
    progress: bool = True,
    spatial_size: Sequence[int] | None = None,
    batch_size: int = 8,
    segmenter: Segmenter | None = None,
) -> InferenceReport:
    """Segment files and folders with a bundle's network and write masks, overlays, NIfTI, JSON and DICOM SEG.

    See the module docstring for the inputs accepted and the files written. Outputs of a file found in a folder go
    to the same relative subfolder of ``output_dir``; two inputs with the same stem get ``<stem>_<suffix>``.

    Args:
        inputs: files and folders (searched recursively).
        bundle: a bundle name or folder.
        output_dir: destination folder (created).
        weights: the weights; default as :class:`Segmenter`.
        backend: ``"torch"`` or ``"onnx"``.
        formats: any of ``"nii.gz"``, ``"png"``, ``"overlay"``, ``"json"``.
        dicom_seg: also write DICOM SEG for DICOM inputs (needs highdicom, ``pip install usseg[dicom]``).
        device: torch device (``"auto"``: CUDA when available).
        progress: show a progress bar over the files.
        spatial_size: network input size; default the bundle's.
        batch_size: frames per forward pass.
        segmenter: a ready :class:`Segmenter` (a bundle's ``inference.yaml`` builds one from its own ``network``);
            when given, ``bundle``, ``weights``, ``backend``, ``device``, ``spatial_size`` and ``batch_size`` are
            not used.

    Returns:
        An :class:`InferenceReport`; the same content is in ``<output_dir>/inference_report.json``.

    Raises:
        ValueError: unknown ``formats`` or ``backend``, bad ``spatial_size`` / ``batch_size``.
        TypeError: ``segmenter`` is not a :class:`Segmenter`.
        ImportError: ``dicom_seg`` without highdicom, or the onnx backend without ONNX Runtime.
        FileNotFoundError: no weights or no such bundle.
        PermissionError: ``output_dir`` is not writable.
        InputError: the weights do not fit the bundle's network.
    """
    from tqdm.auto import tqdm

    formats = (formats,) if isinstance(formats, str) else tuple(formats)
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        raise ValueError(f"unknown formats {unknown}; choose from {FORMATS}.")
    if dicom_seg and importlib.util.find_spec("highdicom") is None:  # fail before any work, not at the first DICOM
        raise ImportError("dicom_seg=True needs highdicom; install it with `pip install usseg[dicom]`.")
    output_dir = ensure_writable_dir(output_dir)
    if segmenter is None:
        segmenter = Segmenter(bundle, weights, backend, device, spatial_size, batch_size)
    elif not isinstance(segmenter, Segmenter):
        raise TypeError(f"segmenter must be a usseg.inference.Segmenter, got {type(segmenter).__name__}.")
    files, skipped, failed = collect_inputs(inputs)
    report = InferenceReport(
        output_dir=output_dir,
        report_path=output_dir / REPORT_NAME,
        failed=failed,
        skipped=skipped,
        settings=segmenter.describe(),
    )
    used: set[str] = set()
    for path, subfolder in tqdm(files, desc="usseg infer", unit="file", disable=not progress):
        stem = _unique_stem(path, subfolder, used)
        try:
            entry = _segment_file(segmenter, path, output_dir / subfolder, stem, formats, dicom_seg)
        except (KeyboardInterrupt, PermissionError):
            raise  # a stopped run or an unwritable output folder concerns every file, not this one
        except Exception as err:  # one bad file must not stop a folder run: record it, name it, go on
            message = str(err) if str(path) in str(err) else f"{path}: {err}"
            logger.warning("usseg infer: %s", message)
            report.failed.append({"input": str(path), "error": message, "error_type": type(err).__name__})
            continue
        report.succeeded.append(entry)
    atomic_write_json(
        report.report_path,
        {
            **report.settings,
            "output_dir": str(output_dir),
            "num_succeeded": len(report.succeeded),
            "num_failed": len(report.failed),
            "num_skipped": len(report.skipped),
            "succeeded": report.succeeded,
            "failed": report.failed,
            "skipped": report.skipped,
        },
    )
    return report
