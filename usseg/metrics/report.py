# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""Reports and figures: metrics JSON, training curves and overlay montages, all written atomically.

The training-history dictionary read by :func:`plot_training_curves` is the one written by
:class:`usseg.handlers.report.TrainingHistoryHandler`. It holds plain Python types only::

    {
        "iteration": {"iteration": [int], "epoch": [int], "values": {name: [float | None]}},
        "epoch": {"epoch": [int], "iteration": [int], "wall_time_s": [float], "values": {name: [float | None]}},
        "validation": {"epoch": [int], "iteration": [int], "wall_time_s": [float], "values": {name: [float | None]}},
    }

Within a section every list has one entry per row; ``None`` marks a value missing at that row. ``epoch`` rows hold
the epoch means of the iteration values; ``validation`` rows hold the evaluator's metrics after each validation run.

Matplotlib is imported only inside :func:`plot_training_curves`, through its object API on an Agg canvas, so the
global pyplot backend of the caller (a notebook, say) is never changed.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from PIL import Image, ImageDraw, ImageFont

from usseg.data.io import atomic_save_image, atomic_write, atomic_write_json

__all__ = [
    "GROUND_TRUTH_COLOR",
    "PREDICTION_COLOR",
    "overlay_rgb",
    "plot_training_curves",
    "save_overlay_montage",
    "to_json_compatible",
    "write_metrics_json",
]

# Blue and orange stay distinct under the common colour-vision deficiencies, unlike green and red.
GROUND_TRUTH_COLOR: tuple[int, int, int] = (0, 170, 255)
PREDICTION_COLOR: tuple[int, int, int] = (255, 140, 0)

_MAX_TILE_SIDE = 256


def to_json_compatible(obj: Any, where: str = "metrics") -> Any:
    """Convert ``obj`` to plain JSON types: non-finite floats become ``None``, arrays and tensors become lists.

    Args:
        obj: nested dictionaries, lists, tuples, numbers, strings, paths, numpy or torch values.
        where: location used in the error message.

    Returns:
        A structure of ``dict``, ``list``, ``str``, ``int``, ``float``, ``bool`` and ``None`` only.

    Raises:
        TypeError: an object that has no JSON form (the message names where it sits).
    """
    if obj is None or isinstance(obj, (bool, str, int)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return to_json_compatible(float(obj), where)
    if isinstance(obj, torch.Tensor):
        plain = obj.as_tensor() if isinstance(obj, MetaTensor) else obj
        return to_json_compatible(plain.detach().cpu().numpy(), where)
    if isinstance(obj, np.ndarray):
        return to_json_compatible(obj.tolist(), where)
    if isinstance(obj, Mapping):
        return {str(k): to_json_compatible(v, f"{where}[{k!r}]") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_json_compatible(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    raise TypeError(f"{where}: an object of type {type(obj).__name__} cannot be written to JSON.")


def write_metrics_json(
    path: str | os.PathLike, metrics: Mapping[str, Any], extra: Mapping[str, Any] | None = None
) -> Path:
    """Write ``{"metrics": metrics, **extra}`` as JSON, atomically; NaN and infinities become ``null``.

    Args:
        path: destination file; parent folders are created.
        metrics: the figures, usually the output of ``segmentation_metrics`` or ``classification_metrics``.
        extra: further top-level entries (definitions, per-image values, run information); must not contain
            ``"metrics"``.

    Returns:
        The path written.

    Raises:
        ValueError: ``extra`` has a ``"metrics"`` entry.
        TypeError: a value with no JSON form.
    """
    if not isinstance(metrics, Mapping):
        raise TypeError(f"metrics must be a mapping, got {type(metrics).__name__}.")
    payload: dict[str, Any] = {"metrics": to_json_compatible(dict(metrics), "metrics")}
    for key, value in (extra or {}).items():
        if key == "metrics":
            raise ValueError("extra must not contain a 'metrics' entry; it would overwrite the metrics.")
        payload[str(key)] = to_json_compatible(value, str(key))
    return atomic_write_json(path, payload)


# ----------------------------------------------------------------------------------------------- overlays


def _to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        plain = x.as_tensor() if isinstance(x, MetaTensor) else x
        return plain.detach().cpu().numpy()
    return np.asarray(x)


def _gray_to_uint8(image: np.ndarray) -> np.ndarray:
    """Min-max normalise one image to ``[0, 255]``; a constant image becomes black."""
    img = image.astype(np.float64)
    finite = np.isfinite(img)
    if not finite.any():
        return np.zeros(img.shape, dtype=np.uint8)
    low, high = img[finite].min(), img[finite].max()
    scaled = np.zeros(img.shape) if high <= low else (np.where(finite, img, low) - low) / (high - low)
    return np.clip(np.rint(scaled * 255.0), 0, 255).astype(np.uint8)


def _squeeze_channel(x: np.ndarray, name: str) -> np.ndarray:
    if x.ndim == 3 and x.shape[0] == 1:
        return x[0]
    if x.ndim != 2:
        raise ValueError(f"{name} must have shape (H, W) or (1, H, W), got {tuple(x.shape)}.")
    return x


def _boundary(labels: np.ndarray) -> np.ndarray:
    """Foreground pixels with a 4-neighbour of another label (or on the image border)."""
    padded = np.pad(labels, 1, mode="edge")
    centre = padded[1:-1, 1:-1]
    differs = (
        (padded[:-2, 1:-1] != centre)
        | (padded[2:, 1:-1] != centre)
        | (padded[1:-1, :-2] != centre)
        | (padded[1:-1, 2:] != centre)
    )
    return differs & (labels > 0)


def overlay_rgb(
    image: Any,
    mask: Any,
    color: tuple[int, int, int] = PREDICTION_COLOR,
    alpha: float = 0.35,
    contour: bool = True,
) -> np.ndarray:
    """Blend a mask over an image: a translucent fill and an opaque outline of each labelled region.

    Args:
        image: grayscale ``(H, W)`` or ``(1, H, W)``, shown as is when uint8 and min-max normalised otherwise,
            or an RGB uint8 ``(H, W, 3)`` array used as is.
        mask: label map ``(H, W)`` or ``(1, H, W)``; every non-zero pixel is foreground. Region boundaries are
            drawn per label value, so adjacent classes stay visible.
        color: RGB colour of the fill and the outline.
        alpha: opacity of the fill in ``[0, 1]``; 0 draws the outline only.
        contour: draw the opaque outline.

    Returns:
        uint8 array ``(H, W, 3)``.

    Raises:
        ValueError: mismatched shapes, or ``alpha`` / ``color`` out of range.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha!r}.")
    if len(color) != 3 or any(not 0 <= int(c) <= 255 for c in color):
        raise ValueError(f"color must be an RGB triple of integers in [0, 255], got {color!r}.")
    img = _to_numpy(image)
    if img.ndim == 3 and img.shape[-1] == 3 and img.dtype == np.uint8:
        rgb = img.astype(np.float64)
    else:
        gray = _squeeze_channel(img, "image")
        if gray.dtype != np.uint8:  # uint8 is already a display image; its contrast is kept as read
            gray = _gray_to_uint8(gray)
        rgb = np.repeat(gray[..., None], 3, axis=-1).astype(np.float64)
    labels = _squeeze_channel(_to_numpy(mask), "mask")
    if labels.shape != rgb.shape[:2]:
        raise ValueError(f"mask has shape {labels.shape} but image has spatial shape {rgb.shape[:2]}.")
    labels = np.rint(labels.astype(np.float64)).astype(np.int64) if labels.dtype != np.bool_ else labels.astype(int)
    colour = np.asarray(color, dtype=np.float64)
    foreground = labels > 0
    rgb[foreground] = (1.0 - alpha) * rgb[foreground] + alpha * colour
    if contour:
        rgb[_boundary(labels)] = colour
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def _as_items(x: Any, name: str) -> list[np.ndarray]:
    if isinstance(x, (list, tuple)):
        return [_to_numpy(item) for item in x]
    arr = _to_numpy(x)
    if arr.ndim not in (3, 4) or (arr.ndim == 4 and arr.shape[1] != 1):
        raise ValueError(f"{name} must have shape (N, H, W) or (N, 1, H, W), got {tuple(arr.shape)}.")
    return list(arr)


def _resize(array: np.ndarray, size_hw: tuple[int, int], nearest: bool) -> np.ndarray:
    if array.shape[:2] == size_hw:
        return array
    resample = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
    if nearest:
        return np.asarray(Image.fromarray(array.astype(np.int32)).resize(size_hw[::-1], resample))
    return np.asarray(Image.fromarray(array.astype(np.float32)).resize(size_hw[::-1], resample))


def save_overlay_montage(
    images: Any,
    labels: Any,
    preds: Any,
    path: str | os.PathLike,
    max_items: int = 16,
    titles: Sequence[str] | None = None,
) -> Path:
    """Save a PNG grid of triplets: the image, the ground truth over it, and the prediction over it.

    The ground truth is drawn in :data:`GROUND_TRUTH_COLOR` (blue), the prediction in :data:`PREDICTION_COLOR`
    (orange). Every tile is scaled to the size of the first image (longest side at most 256 pixels): images
    bilinearly, masks with nearest neighbour. A caption above each triplet shows its title.

    Args:
        images: ``(N, H, W)`` or ``(N, 1, H, W)`` in any range (min-max normalised per image), or a list of
            ``(H, W)`` / ``(1, H, W)`` arrays.
        labels: ground-truth label maps in the same layouts.
        preds: predicted label maps in the same layouts.
        path: destination PNG; parent folders are created.
        max_items: at most this many (the first) items are shown.
        titles: one caption per item (extra ones are ignored); defaults to the item index.

    Returns:
        The path written.

    Raises:
        ValueError: no item, different item counts, mismatched shapes, or ``max_items`` below 1.
    """
    if isinstance(max_items, bool) or not isinstance(max_items, int) or max_items < 1:
        raise ValueError(f"max_items must be a positive integer, got {max_items!r}.")
    image_items, label_items, pred_items = (
        _as_items(images, "images"),
        _as_items(labels, "labels"),
        _as_items(preds, "preds"),
    )
    if not len(image_items) == len(label_items) == len(pred_items):
        raise ValueError(
            f"images, labels and preds must hold as many items; got {len(image_items)}, {len(label_items)} "
            f"and {len(pred_items)}."
        )
    if not image_items:
        raise ValueError("the montage needs at least one item.")
    if titles is not None and len(titles) < min(len(image_items), max_items):
        raise ValueError(f"titles holds {len(titles)} captions for {min(len(image_items), max_items)} items.")
    count = min(len(image_items), max_items)

    first = _squeeze_channel(image_items[0], "images[0]")
    scale = min(1.0, _MAX_TILE_SIDE / max(first.shape))
    tile_hw = (max(1, round(first.shape[0] * scale)), max(1, round(first.shape[1] * scale)))
    triplets = []
    for i in range(count):
        img = _squeeze_channel(image_items[i], f"images[{i}]")
        lab = _squeeze_channel(label_items[i], f"labels[{i}]")
        prd = _squeeze_channel(pred_items[i], f"preds[{i}]")
        if not img.shape == lab.shape == prd.shape:
            raise ValueError(
                f"item {i}: image {img.shape}, label {lab.shape} and prediction {prd.shape} must share a shape."
            )
        gray = np.clip(np.rint(_resize(_gray_to_uint8(img), tile_hw, nearest=False)), 0, 255).astype(np.uint8)
        lab_r, prd_r = _resize(lab, tile_hw, nearest=True), _resize(prd, tile_hw, nearest=True)
        plain = np.repeat(gray[..., None], 3, axis=-1)
        triplets.append(
            (plain, overlay_rgb(gray, lab_r, GROUND_TRUTH_COLOR), overlay_rgb(gray, prd_r, PREDICTION_COLOR))
        )

    gap, triplet_gap, caption_h, header_h = 2, 8, 14, 16
    per_row = max(1, round(math.sqrt(count / 3)))
    n_rows = math.ceil(count / per_row)
    tile_h, tile_w = tile_hw
    triplet_w = 3 * tile_w + 2 * gap
    width = per_row * triplet_w + (per_row + 1) * triplet_gap
    height = header_h + n_rows * (caption_h + tile_h) + (n_rows + 1) * triplet_gap
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    draw.text((triplet_gap, 2), "image | ground truth (blue) | prediction (orange)", fill=(0, 0, 0), font=font)
    for i, tiles in enumerate(triplets):
        row, col = divmod(i, per_row)
        x0 = triplet_gap + col * (triplet_w + triplet_gap)
        y0 = header_h + triplet_gap + row * (caption_h + tile_h + triplet_gap)
        caption = str(titles[i]) if titles is not None else f"#{i}"
        draw.text((x0, y0), _fit_caption(draw, caption, font, triplet_w), fill=(0, 0, 0), font=font)
        for k, tile in enumerate(tiles):
            canvas.paste(Image.fromarray(tile), (x0 + k * (tile_w + gap), y0 + caption_h))
    return atomic_save_image(path, canvas)


def _fit_caption(draw: ImageDraw.ImageDraw, text: str, font: Any, width: int) -> str:
    """Shorten ``text`` from the left (file names differ at their end) until it fits ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while len(text) > 1 and draw.textlength("..." + text, font=font) > width:
        text = text[1:]
    return "..." + text


# ----------------------------------------------------------------------------------------------- curves


def _series(section: Mapping[str, Any], key: str, x_name: str) -> tuple[np.ndarray, np.ndarray]:
    """Finite ``(x, y)`` points of one named series of a history section."""
    xs = np.asarray(section.get(x_name, []), dtype=np.float64)
    raw = section.get("values", {}).get(key, [])
    ys = np.asarray([math.nan if v is None else float(v) for v in raw], dtype=np.float64)
    n = min(len(xs), len(ys))
    xs, ys = xs[:n], ys[:n]
    keep = np.isfinite(ys)
    return xs[keep], ys[keep]


def _smooth(values: np.ndarray) -> np.ndarray:
    """Trailing moving average whose window grows with the series (1 to 100 points)."""
    window = int(min(100, max(1, len(values) // 20)))
    if window == 1:
        return values
    head = np.cumsum(values[: window - 1]) / np.arange(1, window)  # shorter windows at the start: no lag artefact
    tail = np.convolve(values, np.full(window, 1.0 / window), mode="valid")
    return np.concatenate([head, tail])


def _is_count(key: str) -> bool:
    leaf = key.rsplit("/", 1)[-1]
    return leaf.startswith("n_") or "_n_" in leaf


def _is_lr(key: str) -> bool:
    return key == "lr" or key.startswith("lr/")


def plot_training_curves(history: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Draw the training history as one PNG.

    Panels, top to bottom: the loss components per iteration (raw, faint, and smoothed) with their epoch means as
    markers; the validation metrics per epoch (values within ``[0, 1]`` on the left axis, others such as HD95 dashed
    on a right axis; counts are left out); other training scalars (acceptance rates...) and the learning rate, each
    in its own panel when present.

    Args:
        history: the dictionary described in the module docstring.
        path: destination PNG; parent folders are created.

    Returns:
        The path written.

    Raises:
        TypeError: ``history`` is not a mapping.
    """
    if not isinstance(history, Mapping):
        raise TypeError(f"history must be a mapping, got {type(history).__name__}.")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    iteration = history.get("iteration", {}) or {}
    epoch = history.get("epoch", {}) or {}
    validation = history.get("validation", {}) or {}
    train_keys = list(iteration.get("values", {}))
    loss_keys = [k for k in train_keys if "loss" in k.lower()]
    lr_keys = [k for k in train_keys if _is_lr(k)]
    other_keys = [k for k in train_keys if k not in loss_keys and k not in lr_keys]
    if not loss_keys:  # nothing called a loss: show every training scalar in the first panel
        loss_keys, other_keys = other_keys, []
    val_keys = [k for k in validation.get("values", {}) if not _is_count(k)]

    panels = ["loss", "validation"] + (["other"] if other_keys else []) + (["lr"] if lr_keys else [])
    figure = Figure(figsize=(9, 3.2 * len(panels)), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(panels), 1, squeeze=False)[:, 0]
    colours = [f"C{i % 10}" for i in range(max(len(train_keys), len(val_keys), 1))]

    def draw_training(ax: Any, keys: list[str], title: str, schedule: bool = False) -> None:
        drawn = False
        for i, key in enumerate(keys):
            x, y = _series(iteration, key, "iteration")
            if x.size and schedule:  # a schedule is exact: no noise to smooth away
                ax.plot(x, y, color=colours[i], linewidth=1.5, label=key)
                drawn = True
            elif x.size:
                ax.plot(x, y, color=colours[i], alpha=0.25, linewidth=0.8)
                ax.plot(x, _smooth(y), color=colours[i], linewidth=1.5, label=key)
                drawn = True
            ex, ey = _series(epoch, key, "iteration")
            if ex.size:
                ax.plot(ex, ey, "o", color=colours[i], markersize=4, markeredgecolor="black", markeredgewidth=0.5)
                drawn = True
        line = "per iteration" if schedule else "smoothed per iteration"
        ax.set_title(f"{title} (line: {line}; dots: epoch means)")
        ax.set_xlabel("iteration")
        if drawn:
            if schedule and all((_series(iteration, k, "iteration")[1] > 0).all() for k in keys):
                ax.set_yscale("log")
            ax.legend(fontsize="small", loc="best")
        else:
            ax.text(0.5, 0.5, "nothing recorded yet", ha="center", va="center", transform=ax.transAxes)
        ax.grid(alpha=0.3)

    for ax, panel in zip(axes, panels):
        if panel == "loss":
            draw_training(ax, loss_keys, "Training losses")
        elif panel == "other":
            draw_training(ax, other_keys, "Other training scalars")
        elif panel == "lr":
            draw_training(ax, lr_keys, "Learning rate", schedule=True)
        else:
            _draw_validation(ax, validation, val_keys, colours)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    with atomic_write(path, "wb") as handle:
        handle.write(buffer.getvalue())
    return Path(path)


def _draw_validation(ax: Any, validation: Mapping[str, Any], keys: list[str], colours: list[str]) -> None:
    series = {k: _series(validation, k, "epoch") for k in keys}
    series = {k: v for k, v in series.items() if v[0].size}
    bounded = [k for k, (_, y) in series.items() if (y >= 0).all() and (y <= 1).all()]
    unbounded = [k for k in series if k not in bounded]
    ax.set_title("Validation metrics per epoch")
    ax.set_xlabel("epoch")
    ax.grid(alpha=0.3)
    if not series:
        ax.text(0.5, 0.5, "no validation metrics", ha="center", va="center", transform=ax.transAxes)
        return
    handles = []
    for i, key in enumerate(bounded):
        x, y = series[key]
        handles += ax.plot(x, y, "o-", color=colours[i % len(colours)], markersize=3, label=key)
    if unbounded:
        right = ax.twinx()
        for j, key in enumerate(unbounded, start=len(bounded)):
            x, y = series[key]
            handles += right.plot(x, y, "s--", color=colours[j % len(colours)], markersize=3, label=key)
        right.set_ylabel("unbounded metrics (dashed)")
    ax.legend(handles=handles, labels=[h.get_label() for h in handles], fontsize="small", loc="best")
