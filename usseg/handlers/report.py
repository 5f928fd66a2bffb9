# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""Handlers that turn engine runs into report files: an evaluation report and a training history.

Both are plain classes with an idempotent ``attach(engine)``, as MONAI handlers are (style.md, section 2.7), and
write every file through ``usseg.data.io`` (temporary file, then rename).

- :class:`SegmentationReportHandler` goes on an evaluator. It collects every prediction of an evaluation run and,
  at the end, computes :func:`usseg.metrics.segmentation_metrics` (plus classification metrics when asked), writes
  ``<prefix>metrics.json`` and ``<prefix>montage.png``, and publishes the figures in ``engine.state.metrics``.
- :class:`TrainingHistoryHandler` goes on a trainer. It records the scalars of every iteration, epoch means, epoch
  times and, through the evaluator it is given, the validation metrics, and rewrites ``history.json`` and
  ``training_curves.png`` at every epoch end.
"""

from __future__ import annotations

import json
import logging
import math
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from numbers import Number
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.data import MetaTensor, decollate_batch
from monai.utils import IgniteInfo, min_version, optional_import

from usseg.data.io import atomic_write_json
from usseg.errors import InputError
from usseg.metrics.classification import classification_metrics
from usseg.metrics.report import plot_training_curves, save_overlay_montage, write_metrics_json
from usseg.metrics.segmentation import (
    EMPTY_POLICIES,
    METRIC_DEFINITIONS,
    evaluate_segmentation,
    nan_mean,
    to_label_maps,
)

Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")
idist, _ = optional_import("ignite", IgniteInfo.OPT_IMPORT_VERSION, min_version, "distributed")
if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")

__all__ = ["SegmentationReportHandler", "TrainingHistoryHandler"]

HISTORY_FORMAT = "usseg.training_history/1"
_RESERVED_REPORT_KEYS = ("metrics", "definitions", "settings", "classification", "per_image")


def _check_int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def _to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        plain = x.as_tensor() if isinstance(x, MetaTensor) else x
        return plain.detach().cpu().numpy()
    return np.asarray(x)


def _as_items(data: Any) -> list[Mapping[str, Any]]:
    """Per-item dictionaries from an engine output or batch, decollated or not."""
    if data is None:
        return []
    if isinstance(data, Mapping):
        return [d for d in decollate_batch(dict(data), detach=True) if isinstance(d, Mapping)]
    if isinstance(data, (list, tuple)):
        return [d for d in data if isinstance(d, Mapping)]
    return []


def _meta_of(value: Any) -> Mapping[str, Any]:
    return value.meta if isinstance(value, MetaTensor) else {}


def _to_scalar(value: Any) -> float | None:
    """A float for a number or a 0-d numeric array / tensor; ``None`` for anything else.

    One-element arrays with a shape (a per-item prediction, say) are not scalars here: they are data, not logs.
    """
    if isinstance(value, torch.Tensor):
        if value.ndim != 0 or value.is_complex():
            return None
        return float(value.detach().cpu().item())
    if isinstance(value, np.ndarray):
        if value.ndim != 0 or not np.issubdtype(value.dtype, np.number) or np.iscomplexobj(value):
            return None
        return float(value)
    if isinstance(value, Number) and not isinstance(value, complex):
        return float(value)  # type: ignore[arg-type]
    return None


# ================================================================================================ evaluation


class SegmentationReportHandler:
    """Write the segmentation (and optional classification) report of every evaluation run.

    Attach it to an evaluator (MONAI ``SupervisedEvaluator``) whose postprocessing makes label maps, for example
    ``AsDiscreted(keys="pred", argmax=True)``. At ``ITERATION_COMPLETED`` it reads ``engine.state.output``: a list
    of per-image dictionaries (the decollated output) holding ``pred`` as a ``(1, H, W)`` label map or a one-hot
    ``(C, H, W)`` map, and ``label`` in the same layouts (a collated dictionary is decollated first). At
    ``EPOCH_COMPLETED`` it computes :func:`usseg.metrics.segmentation.evaluate_segmentation` on all items, in the
    order they came, and

    - adds every figure to ``engine.state.metrics`` as ``<prefix><name>`` (scalars only), so other handlers can
      log them;
    - writes ``<output_dir>/<prefix>metrics.json``: ``{"metrics": <segmentation_metrics>, "definitions", "settings",
      "per_image": [{"case", "dice", "iou", "hd95"}], "classification"?, **extra}``;
    - writes ``<output_dir>/<prefix>montage.png`` with the first ``montage_items`` items.

    The case of an item is its ``case_key`` entry when present (in the output or the batch), else the
    ``filename_or_obj`` of the image (or label) metadata, else ``item<k>``. State is cleared at ``EPOCH_STARTED``.
    Under ``torch.distributed`` every rank's items are gathered first, so every rank holds the same metrics and
    only ``save_rank`` writes: attach the handler on every rank. The gathered items are in rank-major order, which
    matters only for the per-batch Dice and accuracy (their batches follow the item order).

    Args:
        output_dir: folder of the report files; created on first write.
        num_classes: number of label values, background included.
        class_names: one name per label value, background first; defaults to ``background, class1, ...``.
        prefix: prepended to the file names and to the ``engine.state.metrics`` keys (for example ``"val_"``).
        pred_key: output key of the prediction.
        label_key: output key of the ground truth.
        image_key: output (or batch) key of the image, used for the montage and the case names.
        montage_items: number of items in the montage.
        montage: write the montage.
        save_rank: the rank that writes the files.
        extra: further top-level entries of the JSON (run name, checkpoint, protocol...).
        cls_pred_key: output key of class probabilities ``(C,)``; with ``cls_label_key`` adds classification
            metrics (``classification_metrics``) to the report and to ``engine.state.metrics``.
        cls_label_key: output key of the class label (an index, or one-hot ``(C,)``).
        cls_class_names: names of the classification classes.
        include_background: score the background class too.
        empty: ``"one"`` or ``"nan"``, the score of a class absent from both masks (``usseg.metrics.segmentation``).
        spacing: pixel size for HD95: ``None`` (pixels), a number, a ``(row, column)`` pair, or ``"meta"`` to read
            each item's spacing from the affine of its label (or image) ``MetaTensor``.
        batch_size: the batch of the per-batch Dice and per-batch accuracy (8: Hermes).
        case_key: item key holding a case identifier.

    Raises:
        ValueError: an argument out of range (the message quotes it).
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        num_classes: int = 2,
        class_names: Sequence[str] | None = None,
        prefix: str = "",
        pred_key: str = "pred",
        label_key: str = "label",
        image_key: str = "image",
        montage_items: int = 16,
        montage: bool = True,
        save_rank: int = 0,
        extra: Mapping[str, Any] | None = None,
        cls_pred_key: str | None = None,
        cls_label_key: str | None = None,
        cls_class_names: Sequence[str] | None = None,
        include_background: bool = False,
        empty: str = "one",
        spacing: float | Sequence[float] | str | None = None,
        batch_size: int = 8,
        case_key: str = "case_id",
    ) -> None:
        self.output_dir = Path(output_dir)
        self.num_classes = _check_int(num_classes, "num_classes", 2)
        if class_names is not None and (isinstance(class_names, str) or len(class_names) != self.num_classes):
            raise ValueError(f"class_names must hold {self.num_classes} names (background first), got {class_names!r}.")
        self.class_names = None if class_names is None else [str(n) for n in class_names]
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a string, got {type(prefix).__name__}.")
        self.prefix = prefix
        for name, key in (("pred_key", pred_key), ("label_key", label_key), ("image_key", image_key)):
            if not isinstance(key, str) or not key:
                raise ValueError(f"{name} must be a non-empty string, got {key!r}.")
        self.pred_key, self.label_key, self.image_key = pred_key, label_key, image_key
        self.montage_items = _check_int(montage_items, "montage_items", 1)
        self.montage = bool(montage)
        self.save_rank = _check_int(save_rank, "save_rank", 0)
        if extra is not None and not isinstance(extra, Mapping):
            raise TypeError(f"extra must be a mapping or None, got {type(extra).__name__}.")
        clashes = sorted(set(extra or {}) & set(_RESERVED_REPORT_KEYS))
        if clashes:
            raise ValueError(f"extra must not use the report's own keys {clashes}; got keys {sorted(extra or {})}.")
        self.extra = dict(extra or {})
        if (cls_pred_key is None) != (cls_label_key is None):
            raise ValueError(f"cls_pred_key and cls_label_key go together, got {cls_pred_key!r} and {cls_label_key!r}.")
        self.cls_pred_key, self.cls_label_key = cls_pred_key, cls_label_key
        self.cls_class_names = None if cls_class_names is None else [str(n) for n in cls_class_names]
        self.include_background = bool(include_background)
        if empty not in EMPTY_POLICIES:
            raise ValueError(f"empty must be one of {EMPTY_POLICIES}, got {empty!r}.")
        self.empty = empty
        if isinstance(spacing, str) and spacing != "meta":
            raise ValueError(f"spacing must be None, a number, a (row, column) pair or 'meta', got {spacing!r}.")
        if spacing is not None and not isinstance(spacing, str):
            values = np.atleast_1d(np.asarray(spacing, dtype=np.float64))
            if values.shape not in ((1,), (2,)) or not np.all(np.isfinite(values)) or np.any(values <= 0):
                raise ValueError(f"spacing must be a positive number or (row, column) pair, got {spacing!r}.")
        self.spacing = spacing
        self.batch_size = _check_int(batch_size, "batch_size", 1)
        self.case_key = case_key
        self.logger = logging.getLogger(__name__)
        self._reset()

    # ---------------------------------------------------------------------------------------------- wiring

    def attach(self, engine: Engine) -> None:
        """Register on ``engine``; attaching twice is harmless.

        Args:
            engine: the evaluator.
        """
        for event, handler in (
            (Events.EPOCH_STARTED, self._epoch_started),
            (Events.ITERATION_COMPLETED, self._iteration_completed),
            (Events.EPOCH_COMPLETED, self._epoch_completed),
        ):
            if not engine.has_event_handler(handler, event):
                engine.add_event_handler(event, handler)

    def _reset(self) -> None:
        self._records: list[dict[str, Any]] = []

    def _epoch_started(self, engine: Engine) -> None:
        self._reset()

    # ---------------------------------------------------------------------------------------------- collect

    def _iteration_completed(self, engine: Engine) -> None:
        items = _as_items(engine.state.output)
        batch_items = _as_items(engine.state.batch)
        for k, item in enumerate(items):
            batch_item = batch_items[k] if k < len(batch_items) else {}
            self._records.append(self._record(item, batch_item, len(self._records)))

    def _lookup(self, item: Mapping[str, Any], batch_item: Mapping[str, Any], key: str) -> Any:
        if key in item:
            return item[key]
        if key in batch_item:
            return batch_item[key]
        raise KeyError(
            f"key {key!r} is in neither the engine output {sorted(item)} nor the batch {sorted(batch_item)}."
        )

    def _record(self, item: Mapping[str, Any], batch_item: Mapping[str, Any], index: int) -> dict[str, Any]:
        pred_value = self._lookup(item, batch_item, self.pred_key)
        label_value = self._lookup(item, batch_item, self.label_key)
        image_value = item.get(self.image_key, batch_item.get(self.image_key))
        case = self._case(item, batch_item, image_value, label_value, index)
        pred = self._label_map(pred_value, f"{self.pred_key} of {case}")
        label = self._label_map(label_value, f"{self.label_key} of {case}")
        if pred.shape != label.shape:
            raise ValueError(f"{case}: prediction has spatial shape {pred.shape} but label has {label.shape}.")
        record: dict[str, Any] = {"case": case, "pred": pred, "label": label, "image": None, "spacing": None}
        if self.montage and index < self.montage_items and image_value is not None:
            record["image"] = self._montage_image(image_value, pred.shape)
        if self.spacing == "meta":
            record["spacing"] = self._meta_spacing(label_value, image_value, case)
        if self.cls_pred_key is not None and self.cls_label_key is not None:
            record["cls_prob"] = _to_numpy(self._lookup(item, batch_item, self.cls_pred_key)).astype(np.float64).ravel()
            cls_label = _to_numpy(self._lookup(item, batch_item, self.cls_label_key)).ravel()
            record["cls_label"] = int(cls_label.argmax()) if cls_label.size > 1 else int(np.rint(cls_label[0]))
        return record

    def _label_map(self, value: Any, name: str) -> np.ndarray:
        arr = _to_numpy(value)
        label_map = to_label_maps([arr], self.num_classes, name)[0]
        # compact storage: an evaluation set of label maps stays small in memory and in the rank gather
        return label_map.astype(np.uint8 if self.num_classes <= 256 else np.int32)

    def _case(self, item: Mapping[str, Any], batch_item: Mapping[str, Any], image: Any, label: Any, index: int) -> str:
        for source in (item, batch_item):
            value = source.get(self.case_key) if self.case_key else None
            if isinstance(value, (str, int)):
                return str(value)
        for value in (image, label):
            name = _meta_of(value).get("filename_or_obj")
            if isinstance(name, (str, os.PathLike)) and str(name):
                return str(name)
        for source in (item, batch_item):
            meta = source.get(f"{self.image_key}_meta_dict")
            if isinstance(meta, Mapping) and isinstance(meta.get("filename_or_obj"), (str, os.PathLike)):
                return str(meta["filename_or_obj"])
        return f"item{index}"

    @staticmethod
    def _montage_image(image: Any, shape_hw: tuple[int, ...]) -> np.ndarray:
        arr = _to_numpy(image).astype(np.float32)
        if arr.ndim == 3:
            arr = arr.mean(axis=0)  # channels (RGB or several modalities) averaged to one grayscale view
        if arr.ndim != 2:
            raise ValueError(f"the montage image must be (H, W) or (C, H, W), got {tuple(arr.shape)}.")
        if arr.shape != tuple(shape_hw):  # e.g. a prediction inverted to the original size: match it for display
            arr = F.interpolate(torch.from_numpy(arr)[None, None], size=tuple(shape_hw), mode="bilinear")[0, 0].numpy()
        return arr

    @staticmethod
    def _meta_spacing(label: Any, image: Any, case: str) -> tuple[float, float]:
        for value in (label, image):
            if isinstance(value, MetaTensor):
                pixdim = np.asarray(_to_numpy(value.pixdim), dtype=np.float64).ravel()
                if pixdim.size >= 2 and np.all(np.isfinite(pixdim[:2])) and np.all(pixdim[:2] > 0):
                    return float(pixdim[0]), float(pixdim[1])
        raise InputError(case, "spacing='meta' needs the label or image as a MetaTensor with a valid affine.")

    # ---------------------------------------------------------------------------------------------- report

    def _gathered(self) -> list[dict[str, Any]]:
        if idist.get_world_size() <= 1:
            return self._records
        per_rank = idist.all_gather(self._records)
        return [record for rank_records in per_rank for record in rank_records]

    def _epoch_completed(self, engine: Engine) -> None:
        records = self._gathered()
        if not records:
            warnings.warn(
                "SegmentationReportHandler: the evaluation produced no item; no report written.", stacklevel=2
            )
            return
        names = self.class_names
        spacing: Any = self.spacing
        if spacing == "meta":
            spacing = np.asarray([r["spacing"] for r in records], dtype=np.float64)
        evaluation = evaluate_segmentation(
            [r["pred"] for r in records],
            [r["label"] for r in records],
            num_classes=self.num_classes,
            class_names=names,
            spacing=spacing,
            include_background=self.include_background,
            empty=self.empty,
            batch_size=self.batch_size,
        )
        summary = evaluation.summary
        classification = None
        if self.cls_pred_key is not None:
            classification = classification_metrics(
                np.stack([r["cls_prob"] for r in records]),
                np.asarray([r["cls_label"] for r in records]),
                class_names=self.cls_class_names,
                batch_size=self.batch_size,
            )
        published = dict(summary)
        if classification is not None:
            published.update({k: v for k, v in classification.items() if isinstance(v, (int, float))})
        for key, value in published.items():
            engine.state.metrics[f"{self.prefix}{key}"] = value

        if idist.get_rank() != self.save_rank:
            return
        json_path = self.output_dir / f"{self.prefix}metrics.json"
        write_metrics_json(json_path, summary, extra=self._report_extra(evaluation, records, classification))
        if self.montage:
            shown = [i for i in range(min(len(records), self.montage_items)) if records[i]["image"] is not None]
            if shown:
                save_overlay_montage(
                    [records[i]["image"] for i in shown],
                    [records[i]["label"] for i in shown],
                    [records[i]["pred"] for i in shown],
                    self.output_dir / f"{self.prefix}montage.png",
                    max_items=self.montage_items,
                    titles=[f"{Path(records[i]['case']).name}  dice={nan_mean(evaluation.dice[i]):.3f}" for i in shown],
                )
            else:
                warnings.warn(
                    f"SegmentationReportHandler: no {self.image_key!r} in the output or the batch; no montage.",
                    stacklevel=2,
                )
        engine.logger.info(f"segmentation report of {len(records)} items written to {json_path}")

    def _report_extra(
        self, evaluation: Any, records: list[dict[str, Any]], classification: dict[str, Any] | None
    ) -> dict[str, Any]:
        batch_key = f"dice_per_batch{self.batch_size}"
        definitions = {
            k.format(batch_size=self.batch_size): v.format(batch_size=self.batch_size)
            for k, v in METRIC_DEFINITIONS.items()
        }
        names = evaluation.class_names
        extra: dict[str, Any] = {
            "definitions": definitions,
            "settings": {
                "num_classes": self.num_classes,
                "evaluated_classes": names,
                "include_background": self.include_background,
                "empty": self.empty,
                "batch_size": self.batch_size,
                "per_batch_key": batch_key,
                "hd95_unit": "pixel" if self.spacing is None else "mm",
                "n_images": len(records),
            },
            "per_image": [
                {
                    "case": record["case"],
                    "dice": dict(zip(names, evaluation.dice[i].tolist())),
                    "iou": dict(zip(names, evaluation.iou[i].tolist())),
                    "hd95": dict(zip(names, evaluation.hd95[i].tolist())),
                }
                for i, record in enumerate(records)
            ],
        }
        if classification is not None:
            extra["classification"] = classification
        extra.update(self.extra)
        return extra


# ================================================================================================ training


def _empty_history() -> dict[str, Any]:
    return {
        "format": HISTORY_FORMAT,
        "iteration": {"iteration": [], "epoch": [], "values": {}},
        "epoch": {"epoch": [], "iteration": [], "wall_time_s": [], "values": {}},
        "validation": {"epoch": [], "iteration": [], "wall_time_s": [], "values": {}},
    }


def _append_row(section: dict[str, Any], index: Mapping[str, Any], values: Mapping[str, float | None]) -> None:
    """Append one aligned row: a new series is back-filled with ``None``, a missing value is ``None``."""
    n_rows = len(section["epoch"])
    for key, value in index.items():
        section[key].append(value)
    for key in values:
        if key not in section["values"]:
            section["values"][key] = [None] * n_rows
    for key, column in section["values"].items():
        value = values.get(key)
        column.append(None if value is None or not math.isfinite(value) else float(value))


def _keep_rows(section: dict[str, Any], keep: Callable[[int], bool]) -> None:
    rows = [i for i in range(len(section["epoch"])) if keep(i)]
    for key, column in section.items():
        if isinstance(column, list):
            section[key] = [column[i] for i in rows]
    section["values"] = {k: [col[i] for i in rows] for k, col in section["values"].items()}


class TrainingHistoryHandler:
    """Record the training scalars of every iteration, epoch means and validation metrics; plot them.

    Attached to a trainer, it reads ``engine.state.output`` at every iteration: a dictionary, or the first item of
    a decollated list. Every scalar in it is recorded (numbers and 0-d tensors or arrays: the loss and its
    components, acceptance rates...), and so is the learning rate of each parameter group of ``engine.optimizer``
    (``lr``, or ``lr/<group>`` when there are several). At ``EPOCH_COMPLETED`` it adds the epoch means and the
    epoch's training time (``engine.state.times``, which excludes validation), then rewrites
    ``<output_dir>/<filename>`` and the figure (:func:`usseg.metrics.report.plot_training_curves`); also at
    ``COMPLETED``.

    With an ``evaluator``, the handler also listens to the evaluator's ``COMPLETED`` event, when every metric and
    report handler of the evaluator has run, and records ``evaluator.state.metrics`` with the trainer's epoch and
    iteration. This makes the order in which it and ``ValidationHandler`` are attached irrelevant.

    Resuming: when a run starts from a restored trainer state (iteration > 0), the history of this handler, or the
    file in ``output_dir`` when the handler is new, is kept up to the restored iteration and epoch and then
    extended. A fresh run (iteration 0) starts an empty history.

    The history holds plain Python types only; its layout is documented in :mod:`usseg.metrics.report`.

    Args:
        output_dir: folder of the history and the figure.
        evaluator: the validation engine whose ``state.metrics`` are recorded, or ``None``.
        output_keys: record only these keys of the output (the learning rate is always recorded); ``None``
            records every scalar.
        filename: the history JSON file name.
        figure: the figure file name, or ``None`` for no figure.
        log_every: keep one iteration row every ``log_every`` iterations (epoch means still use every iteration).
        save_rank: the rank that writes the files.
        resume: continue the history file of ``output_dir`` when the run resumes from a checkpoint.

    Raises:
        ValueError: an argument out of range (the message quotes it).
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        evaluator: Engine | None = None,
        output_keys: Sequence[str] | None = None,
        filename: str = "history.json",
        figure: str | None = "training_curves.png",
        log_every: int = 1,
        save_rank: int = 0,
        resume: bool = True,
    ) -> None:
        self.output_dir = Path(output_dir)
        if evaluator is not None and not hasattr(evaluator, "add_event_handler"):
            raise TypeError(f"evaluator must be an ignite Engine or None, got {type(evaluator).__name__}.")
        self.evaluator = evaluator
        if isinstance(output_keys, str):
            raise TypeError(f"output_keys must be a sequence of keys, not the string {output_keys!r}.")
        self.output_keys = None if output_keys is None else [str(k) for k in output_keys]
        if not isinstance(filename, str) or not filename or not filename.endswith(".json"):
            raise ValueError(f"filename must be a .json file name, got {filename!r}.")
        if figure is not None and (not isinstance(figure, str) or not figure.endswith(".png")):
            raise ValueError(f"figure must be a .png file name or None, got {figure!r}.")
        self.filename, self.figure = filename, figure
        self.log_every = _check_int(log_every, "log_every", 1)
        self.save_rank = _check_int(save_rank, "save_rank", 0)
        self.resume = bool(resume)
        self.history: dict[str, Any] = _empty_history()
        self._trainer: Engine | None = None
        self._run_starting = True
        self._epoch_sums: dict[str, float] = {}
        self._epoch_counts: dict[str, int] = {}
        self._unsaved = False

    @property
    def history_path(self) -> Path:
        """Where the history JSON is written."""
        return self.output_dir / self.filename

    def attach(self, engine: Engine) -> None:
        """Register on the trainer ``engine`` (and on the evaluator's ``COMPLETED``); attaching twice is harmless.

        Args:
            engine: the trainer.
        """
        self._trainer = engine
        for event, handler in (
            (Events.STARTED, self._started),
            (Events.EPOCH_STARTED, self._epoch_started),
            (Events.ITERATION_COMPLETED, self._iteration_completed),
            (Events.EPOCH_COMPLETED, self._epoch_completed),
            (Events.COMPLETED, self._completed),
        ):
            if not engine.has_event_handler(handler, event):
                engine.add_event_handler(event, handler)
        if self.evaluator is not None and not self.evaluator.has_event_handler(
            self._validation_completed, Events.COMPLETED
        ):
            self.evaluator.add_event_handler(Events.COMPLETED, self._validation_completed)

    # ---------------------------------------------------------------------------------------------- events

    def _started(self, engine: Engine) -> None:
        self._run_starting = True  # resolved at the first EPOCH_STARTED, after any checkpoint loader has run

    def _epoch_started(self, engine: Engine) -> None:
        if self._run_starting:
            self._run_starting = False
            self._restore(engine)
        self._epoch_sums, self._epoch_counts = {}, {}

    def _restore(self, engine: Engine) -> None:
        iteration, finished_epochs = engine.state.iteration, engine.state.epoch - 1
        if iteration == 0:
            self.history = _empty_history()
            return
        if not self.history["iteration"]["iteration"] and not self.history["epoch"]["epoch"] and self.resume:
            self.history = self._load() or _empty_history()
        sections = self.history
        _keep_rows(sections["iteration"], lambda i: sections["iteration"]["iteration"][i] <= iteration)
        _keep_rows(sections["epoch"], lambda i: sections["epoch"]["epoch"][i] <= finished_epochs)
        _keep_rows(sections["validation"], lambda i: sections["validation"]["epoch"][i] <= finished_epochs)

    def _load(self) -> dict[str, Any] | None:
        path = self.history_path
        if not path.is_file():
            return None
        try:
            with open(path, encoding="utf-8") as handle:
                loaded = json.load(handle)
            if loaded.get("format") != HISTORY_FORMAT:
                raise ValueError(f"format is {loaded.get('format')!r}, expected {HISTORY_FORMAT!r}")
            for name in ("iteration", "epoch", "validation"):
                if not isinstance(loaded[name]["values"], dict) or not isinstance(loaded[name]["epoch"], list):
                    raise ValueError(f"section {name!r} is malformed")
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            # a lost plot history must not stop a resumed run; say so loudly and start afresh
            warnings.warn(f"{path}: cannot resume the training history ({err}); starting a new one.", stacklevel=2)
            return None
        return loaded

    def _scalars(self, engine: Engine) -> dict[str, float]:
        output = engine.state.output
        if isinstance(output, (list, tuple)) and output and isinstance(output[0], Mapping):
            output = output[0]  # decollated: batch-level scalars are copied into every item
        values: dict[str, float] = {}
        bare = _to_scalar(output)
        if bare is not None and self.output_keys is None:
            values["output"] = bare  # a process function that returns one number (ignite's supervised trainer)
        if isinstance(output, Mapping):
            for key, value in output.items():
                name = str(key)
                if self.output_keys is not None and name not in self.output_keys:
                    continue
                scalar = _to_scalar(value)
                if scalar is not None:
                    values[name] = scalar
        optimizer = getattr(engine, "optimizer", None)
        groups = getattr(optimizer, "param_groups", None) or []
        for i, group in enumerate(groups):
            lr = _to_scalar(group.get("lr"))
            if lr is not None:
                values["lr" if len(groups) == 1 else f"lr/{i}"] = lr
        return values

    def _iteration_completed(self, engine: Engine) -> None:
        values = self._scalars(engine)
        for key, value in values.items():
            if math.isfinite(value):
                self._epoch_sums[key] = self._epoch_sums.get(key, 0.0) + value
                self._epoch_counts[key] = self._epoch_counts.get(key, 0) + 1
        self._unsaved = True
        if engine.state.iteration % self.log_every == 0:
            _append_row(
                self.history["iteration"],
                {"iteration": int(engine.state.iteration), "epoch": int(engine.state.epoch)},
                values,
            )

    def _epoch_completed(self, engine: Engine) -> None:
        means = {k: self._epoch_sums[k] / self._epoch_counts[k] for k in self._epoch_sums}
        wall = engine.state.times.get(Events.EPOCH_COMPLETED.name) if hasattr(engine.state, "times") else None
        _append_row(
            self.history["epoch"],
            {
                "epoch": int(engine.state.epoch),
                "iteration": int(engine.state.iteration),
                "wall_time_s": None if wall is None else float(wall),
            },
            means,
        )
        self._unsaved = True
        self._save()

    def _completed(self, engine: Engine) -> None:
        self._save()

    def _validation_completed(self, evaluator: Engine) -> None:
        trainer = self._trainer
        epoch = int(trainer.state.epoch) if trainer is not None else int(evaluator.state.epoch)
        iteration = int(trainer.state.iteration) if trainer is not None else 0
        metrics = {str(k): v for k, v in (evaluator.state.metrics or {}).items()}
        values = {k: s for k, s in ((k, _to_scalar(v)) for k, v in metrics.items()) if s is not None}
        wall = evaluator.state.times.get(Events.COMPLETED.name) if hasattr(evaluator.state, "times") else None
        _append_row(
            self.history["validation"],
            {"epoch": epoch, "iteration": iteration, "wall_time_s": None if wall is None else float(wall)},
            values,
        )
        self._unsaved = True
        # Validation run from the trainer's EPOCH_COMPLETED before this handler's own epoch handler: that handler
        # saves in a moment, so one write per epoch is enough.
        pending_epoch_row = (
            trainer is not None
            and trainer.last_event_name == Events.EPOCH_COMPLETED
            and epoch not in self.history["epoch"]["epoch"]
        )
        if not pending_epoch_row:
            self._save()

    def _save(self) -> None:
        """Write the history and the figure, unless nothing changed since the last write."""
        if idist.get_rank() != self.save_rank or not self._unsaved:
            return
        self._unsaved = False
        atomic_write_json(self.history_path, self.history)
        if self.figure is not None:
            plot_training_curves(self.history, self.output_dir / self.figure)
