# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""Frames per second of every bundle's deployed network, and whether each fast variant keeps its accuracy.

For each bundle given, its inference network (``network_def`` of ``configs/inference.yaml`` with the given weights,
built by ``usseg.zoo.load_network``) runs at ``--size`` x ``--size`` (224 by default), batch 1, on ``--threads`` CPU
threads (2), in one run, as

- ``eager_fp32``: the eager network;
- ``eager_bf16_channels_last``: bf16 autocast with channels-last weights and input;
- ``torchscript``: MONAI ``ckpt_export`` (``usseg.zoo.export_torchscript``), run with ``torch.jit.load``;
- ``onnxruntime``: ``onnx_export`` (``usseg.zoo.export_onnx``), run by ONNX Runtime's CPU provider on the same
  number of threads;
- for a network that also classifies (Hermes: ``predict(image)`` returns segmentation and class logits, what the
  bundle's ``HermesEvaluator`` computes per image): ``eager_fp32_with_classification`` and
  ``eager_bf16_channels_last_with_classification``, the cost of both outputs in one call (the exports carry only
  the segmentation ``forward``).

The variants of one bundle are timed in interleaved rounds (A B C D A B C D ...) after a warm-up, and the median
latency per frame gives frames/s. Then every variant processes the images of a datalist split (``test`` by default,
at most ``--test-images``), prepared by the bundle's own inference ``preprocessing`` (intensity scaling, the
Meta-USCL normalisation) at the timed size; for Semi-CML the split's files of the modality the inference config uses
(``modality: 1``, the B-mode ``image``). The accuracy check depends on what the network returns:

- segmentation logits ``(B, K, H, W)``: Dice (mean per image, over the non-background classes) of the argmax mask
  against the ground truth resized (nearest) to the same size, its change against eager fp32 in points, and the
  Dice between each variant's masks and eager fp32's; the target is met at >= 30 frames/s with a Dice loss of at
  most ``--max-dice-loss`` points (0.5). Class logits, when returned, add the class agreement with eager fp32 and
  the accuracy against the datalist's ``class``;
- embeddings ``(B, D)`` (Meta-USCL, whose inference writes the projection ``z``; any datalist with ``image`` items
  serves, labels are not read): cosine similarity of each image's embedding with eager fp32's (mean and minimum);
  the target is met at >= 30 frames/s with a minimum cosine of at least ``--min-cosine`` (0.99).

A variant that cannot be exported or fails on its first frame is reported with the error, and the run goes on.
Method names are ``<label>_<variant>``, the label being the bundle's name unless a spec file names it. Results go
to ``benchmarks/results/<--name>.json`` (default ``inference_speed``), rewritten after each bundle, so an
interrupted run keeps what it finished. The exit status is 1 if any bundle could not be measured at all.

Bundles on the command line, ``--run BUNDLE=WEIGHTS,DATALIST[,SPLIT]``, repeated (BUNDLE is a shipped bundle's name
or a bundle folder)::

    python benchmarks/inference_speed.py \\
        --run breast_us_supervised_segmentation=sup/models/model.pt,sup/datalist.json \\
        --run breast_us_hermes_classification_segmentation=hermes/models/model.pt,hermes/datalist.json \\
        --run ultrasound_video_meta_uscl_pretraining=uscl/models/model.pt,sup/datalist.json \\
        --run us_dual_network_semisupervised_segmentation=dual/models/model.pt,dual/datalist.json \\
        --run multimodal_us_semi_cml_segmentation=cml/models/model.pt,cml/datalist.json

or in a JSON spec file (``--spec runs.json``; relative paths are read from the current folder), a list of objects
with ``bundle``, ``weights``, ``datalist`` and optionally ``split``, ``label`` and ``overrides`` (inference-config
keys, ``#`` for nested ones, each of which must exist), which is how a documented real-time variant is measured
next to the default one::

    [{"bundle": "us_dual_network_semisupervised_segmentation", "weights": "dual/models/model.pt",
      "datalist": "dual/datalist.json"},
     {"bundle": "us_dual_network_semisupervised_segmentation", "label": "dual_net1_only",
      "weights": "dual/models/model.pt", "datalist": "dual/datalist.json",
      "overrides": {"inference_network": "net1"}}]

The single-bundle form of earlier versions still works and means the baseline bundle::

    python benchmarks/inference_speed.py --weights outputs/breast_us_supervised_segmentation/models/model.pt \\
        --datalist outputs/breast_us_supervised_segmentation/datalist.json

A quick check that writes elsewhere: ``--rounds 1 --frames-per-round 2 --warmup 1 --test-images 2 --size 64
--name inference_speed_smoke`` (then delete ``benchmarks/results/inference_speed_smoke.json``).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml

from usseg.bundles import resolve_bundle
from usseg.data.datalist import load_datalist
from usseg.data.io import atomic_write
from usseg.data.readers import read_mask
from usseg.metrics.segmentation import mean_dice_per_image
from usseg.zoo import export_onnx, export_torchscript, inference_config, load_network

try:
    from results import write_results
except ImportError:
    from benchmarks.results import write_results

DEFAULT_BUNDLE = "breast_us_supervised_segmentation"
TARGET_FPS = 30.0
REFERENCE = "eager_fp32"
CLASSIFY_REFERENCE = "eager_fp32_with_classification"
MAX_ERROR_CHARS = 2000
_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

Outputs = tuple[torch.Tensor, ...]
Runner = Callable[[torch.Tensor], Outputs]


@dataclass
class RunSpec:
    """One bundle to measure.

    Args:
        bundle_dir: the bundle folder.
        weights: the state dict loaded into ``network_def``.
        datalist: the datalist whose ``split`` gives the accuracy check.
        split: the datalist split.
        label: prefix of the method names; the bundle's folder name by default.
        overrides: inference-config keys (``a#b`` for nested ones) and their values.
    """

    bundle_dir: Path
    weights: Path
    datalist: Path
    split: str = "test"
    label: str = ""
    overrides: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.label = self.label or self.bundle_dir.name
        # absolute, so the datalist's relative paths resolve against its own folder wherever the run starts
        self.weights, self.datalist = Path(self.weights).resolve(), Path(self.datalist).resolve()
        if not _NAME_PATTERN.match(self.label):
            raise ValueError(f"label must be letters, digits, '_', '.' or '-', got {self.label!r}.")
        for name, path in (("weights", self.weights), ("datalist", self.datalist)):
            if not path.is_file():
                raise FileNotFoundError(f"{path}: {name} of {self.label} not found.")
        if not isinstance(self.split, str) or not self.split:
            raise ValueError(f"split must be a non-empty string, got {self.split!r}.")
        if not isinstance(self.overrides, dict) or not all(isinstance(k, str) and k for k in self.overrides):
            raise TypeError(f"overrides must map config keys to values, got {self.overrides!r}.")
        overridden_config(self)  # a mistyped key fails here, before any bundle is measured


@dataclass
class EvalSet:
    """The images a bundle's variants process, and what their outputs are checked against.

    Args:
        images: ``(N, C, S, S)`` network inputs, preprocessed as the bundle's inference does.
        files: the N image files.
        masks: ``(N, S, S)`` ground-truth label maps, or None when the items have no ``label``.
        classes: ``(N,)`` true image classes (``-1`` unknown), or None when the items have no ``class``.
        modality: the inference config's ``modality`` (Semi-CML), else None.
    """

    images: torch.Tensor
    files: list[str]
    masks: np.ndarray | None
    classes: np.ndarray | None
    modality: int | None


# ------------------------------------------------------------------------------------------------ run specs


def parse_run(text: str) -> RunSpec:
    """A ``--run BUNDLE=WEIGHTS,DATALIST[,SPLIT]`` argument as a :class:`RunSpec`.

    Raises:
        ValueError: the text does not have that form.
        FileNotFoundError: an unknown bundle, or missing weights or datalist.
    """
    bundle, sep, rest = text.partition("=")
    parts = rest.split(",")
    if not sep or not bundle or len(parts) not in (2, 3) or not all(parts):
        raise ValueError(f"--run takes BUNDLE=WEIGHTS,DATALIST[,SPLIT], got {text!r}.")
    return RunSpec(resolve_bundle(bundle), Path(parts[0]), Path(parts[1]), *parts[2:])


def load_spec_file(path: Path) -> list[RunSpec]:
    """The runs of a JSON spec file: a list of ``{"bundle", "weights", "datalist"[, "split", "label", "overrides"]}``.

    Raises:
        ValueError: the file is not such a list, or an entry lacks a key or has an unknown one.
    """
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: cannot be read as a JSON spec file ({err}).") from err
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{path}: a spec file holds a non-empty JSON list of runs, got {type(entries).__name__}.")
    allowed, required = (
        {"bundle", "weights", "datalist", "split", "label", "overrides"},
        {"bundle", "weights", "datalist"},
    )
    specs = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or not required <= set(entry) or not set(entry) <= allowed:
            raise ValueError(
                f"{path}: run {index} must be an object with {sorted(required)} and optionally "
                f"{sorted(allowed - required)}, got {entry!r}."
            )
        specs.append(
            RunSpec(
                resolve_bundle(entry["bundle"]),
                Path(entry["weights"]),
                Path(entry["datalist"]),
                entry.get("split", "test"),
                entry.get("label", ""),
                entry.get("overrides", {}),
            )
        )
    return specs


def _set_config_key(config: dict[str, Any], key: str, value: Any) -> None:
    """Set ``config[a][b]`` for the key ``a#b``; an existing key only, so a typo cannot pass silently."""
    node: Any = config
    parts = key.split("#")
    for depth, part in enumerate(parts):
        index: Any = int(part) if isinstance(node, list) and part.lstrip("-").isdigit() else part
        present = (
            (0 <= index < len(node))
            if isinstance(node, list) and isinstance(index, int)
            else (isinstance(node, dict) and index in node)
        )
        if not present:
            raise KeyError(f"override {key!r}: the inference config has no {'#'.join(parts[: depth + 1])!r}.")
        if depth == len(parts) - 1:
            node[index] = value
        else:
            node = node[index]


def overridden_config(spec: RunSpec) -> dict[str, Any]:
    """The bundle's inference config with the run's overrides applied, and ``ckpt_path`` set to the run's weights.

    ``ckpt_path`` matters beyond the handlers: a ``network_def`` may read its architecture from it (the supervised
    bundle's ``unet_or_resnet_unet`` builds a ResNetUNet when the checkpoint holds one), while ``usseg.zoo`` loads
    the weights it is given into whatever ``network_def`` builds from the config's own default path.

    Raises:
        KeyError: an override names a key the inference config does not have.
    """
    config = yaml.safe_load(inference_config(spec.bundle_dir).read_text(encoding="utf-8"))
    if isinstance(config.get("ckpt_path"), str):
        config["ckpt_path"] = str(spec.weights)
    for key, value in spec.overrides.items():
        _set_config_key(config, key, value)
    return config


def stage_bundle(spec: RunSpec, workdir: Path) -> Path:
    """A copy of the bundle's metadata and of its inference config from :func:`overridden_config`, for the
    ``usseg.zoo`` functions, which build and export ``network_def`` from a bundle folder, not from a parser.

    Args:
        spec: the run.
        workdir: a scratch folder.

    Returns:
        The folder holding ``configs/metadata.json`` and the inference config to use.

    Raises:
        KeyError: an override names a key the inference config does not have.
    """
    config = overridden_config(spec)
    # the same folder name: configs that locate themselves with bundle_root(name) keep working
    staged = workdir / "staged" / spec.label / spec.bundle_dir.name
    (staged / "configs").mkdir(parents=True)
    shutil.copyfile(spec.bundle_dir / "configs" / "metadata.json", staged / "configs" / "metadata.json")
    with atomic_write(staged / "configs" / "inference.yaml") as handle:
        yaml.safe_dump(config, handle, sort_keys=False)
    return staged


# ------------------------------------------------------------------------------------------------------ data


def inference_parser(bundle_dir: Path, datalist: Path, split: str, size: int) -> Any:
    """A ``ConfigParser`` of the bundle's inference config reading ``split`` of ``datalist`` at ``size`` x ``size``."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(inference_config(bundle_dir)))
    parser["bundle_root"] = str(bundle_dir)
    parser["input_dir"] = None
    parser["datalist"] = str(datalist.resolve())
    parser["datalist_split"] = split
    # Meta-USCL writes its size as one integer ("$[@spatial_size, @spatial_size]"), the others as [H, W]
    parser["spatial_size"] = size if isinstance(parser.get("spatial_size"), int) else [size, size]
    return parser


def _datalist_mask_settings(datalist: Path, num_classes: int) -> tuple[str, int | None]:
    """``read_mask``'s ``mode`` and ``num_classes`` as the datalist was built, else from the network's classes."""
    settings = json.loads(datalist.read_text(encoding="utf-8")).get("metadata", {}).get("settings", {})
    mode = settings.get("mask_mode") or ("binary" if num_classes == 2 else "labels")
    if mode == "binary":
        return "binary", None
    return "labels", int(settings.get("num_classes") or num_classes)


def _item_paths(item: Mapping[str, Any], base: Path) -> set[Path]:
    return {(base / value).resolve() for value in item.values() if isinstance(value, str) and value}


def load_eval_set(
    parser: Any, datalist: Path, split: str, limit: int, size: int, num_classes: int, channels: int
) -> EvalSet:
    """Preprocess the split's images with the bundle's inference ``preprocessing`` and read their masks.

    The images are the inference config's own ``dataset#data`` (for Semi-CML: the files of its ``modality``), so a
    variant sees exactly what the deployed bundle would feed it at the timed size.

    Args:
        parser: from :func:`inference_parser`.
        datalist: the datalist file.
        split: its split.
        limit: at most this many images, the split's first.
        size: the height and width the config was set to (:func:`inference_parser`).
        num_classes: classes of the network's segmentation output (0 for an embedding network: masks are not read).
        channels: input channels the metadata documents.

    Returns:
        The :class:`EvalSet`.

    Raises:
        ValueError: an image has another channel count or size than expected, or the config's inputs do not follow
            the datalist's items.
    """
    inputs = parser.get_parsed_content("dataset#data")[:limit]
    items = load_datalist(datalist, split)[:limit]
    if len(inputs) != len(items):
        raise ValueError(f"the inference config lists {len(inputs)} inputs for {len(items)} items of {split!r}.")
    preprocessing = parser.get_parsed_content("preprocessing")
    images, masks, classes = [], [], []
    with_masks = num_classes > 0 and all(item.get("label") for item in items)
    mode, mask_classes = _datalist_mask_settings(datalist, num_classes) if with_masks else ("binary", None)
    for item, entry in zip(items, inputs, strict=True):
        if Path(entry["image"]).resolve() not in _item_paths(item, datalist.parent):
            raise ValueError(f"inference input {entry['image']} is not a file of the datalist item {item!r}.")
        image = preprocessing(dict(entry))["image"]
        image = torch.as_tensor(image.as_tensor() if hasattr(image, "as_tensor") else image, dtype=torch.float32)
        if tuple(image.shape) != (channels, size, size):
            raise ValueError(
                f"{entry['image']}: preprocessed to {tuple(image.shape)}, expected {(channels, size, size)}."
            )
        images.append(image)
        if with_masks:
            mask = torch.from_numpy(read_mask(item["label"], mode, mask_classes).astype(np.float32))[None, None]
            masks.append(F.interpolate(mask, size=(size, size), mode="nearest")[0, 0].numpy().astype(np.uint8))
        classes.append(int(item["class"]) if isinstance(item.get("class"), int) else -1)
    modality = parser.get("modality")
    return EvalSet(
        images=torch.stack(images),
        files=[entry["image"] for entry in inputs],
        masks=np.stack(masks) if with_masks else None,
        classes=np.asarray(classes) if any(c >= 0 for c in classes) else None,
        modality=modality if isinstance(modality, int) else None,
    )


# -------------------------------------------------------------------------------------------------- variants


def _as_outputs(value: Any) -> Outputs:
    if isinstance(value, torch.Tensor):
        return (value,)
    if isinstance(value, (tuple, list)) and value and all(isinstance(v, torch.Tensor) for v in value):
        return tuple(value)
    raise TypeError(f"a network output must be a tensor or a tuple of tensors, got {type(value).__name__}.")


def onnx_session(onnx_file: Path, threads: int) -> Runner:
    """ONNX Runtime on the CPU provider with ``threads`` intra-op threads, returning every output.

    ``usseg.zoo.onnx_runner`` returns the first output only and leaves the thread count to ONNX Runtime, which
    would make the comparison with torch on ``threads`` threads unequal.
    """
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    return lambda x: tuple(torch.from_numpy(out) for out in session.run(None, {input_name: x.numpy()}))


def _error_text(err: BaseException) -> str:
    return f"{type(err).__name__}: {' '.join(str(err).split())}"[:MAX_ERROR_CHARS]


def build_variants(
    bundle_dir: Path, weights: Path, workdir: Path, input_shape: Sequence[int], threads: int
) -> tuple[dict[str, Runner], dict[str, str], torch.nn.Module]:
    """Every variant of the bundle's network, and the error of each variant that could not be built.

    Args:
        bundle_dir: the (possibly staged) bundle folder.
        weights: the state dict.
        workdir: where the exports are written.
        input_shape: ``(1, C, S, S)``, the ONNX example input.
        threads: ONNX Runtime intra-op threads.

    Returns:
        ``(runners by variant name, errors by variant name, the eager network)``.

    Raises:
        InputError: the weights do not fit the network (nothing can be measured then).
    """
    eager = load_network(bundle_dir, weights)
    fast = load_network(bundle_dir, weights).to(memory_format=torch.channels_last)

    def bf16(module_call: Callable[[torch.Tensor], Any]) -> Runner:
        def run(x: torch.Tensor) -> Outputs:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                outputs = _as_outputs(module_call(x.contiguous(memory_format=torch.channels_last)))
            return tuple(out.float() for out in outputs)

        return run

    runners: dict[str, Runner] = {
        "eager_fp32": lambda x: _as_outputs(eager(x)),
        "eager_bf16_channels_last": bf16(fast),
    }
    errors: dict[str, str] = {}
    with warnings.catch_warnings():  # torch 2.13 deprecates TorchScript; the zoo still requires it
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            scripted = torch.jit.load(str(export_torchscript(bundle_dir, weights, workdir / "model.ts")))
            runners["torchscript"] = lambda x: _as_outputs(scripted(x))
        except Exception as err:  # an export failure is a result to report, not a reason to stop the run
            errors["torchscript"] = _error_text(err)
        try:
            onnx_file = export_onnx(bundle_dir, weights, workdir / "model.onnx", list(input_shape))
            runners["onnxruntime"] = onnx_session(onnx_file, threads)
        except Exception as err:
            errors["onnxruntime"] = _error_text(err)
    if callable(getattr(eager, "predict", None)):  # Hermes: segmentation and class logits, as its evaluator needs
        runners[CLASSIFY_REFERENCE] = lambda x: _as_outputs(eager.predict(x))
        runners["eager_bf16_channels_last_with_classification"] = bf16(fast.predict)
    return runners, errors, eager


def time_variants(
    runners: dict[str, Runner], frame: torch.Tensor, rounds: int, frames_per_round: int, warmup: int
) -> tuple[dict[str, list[float]], dict[str, str]]:
    """Seconds per frame of each variant, per round, with the variants interleaved within every round.

    A variant that raises during the warm-up is dropped from ``runners`` and returned in the errors.

    Returns:
        ``(latencies by variant, errors by variant)``.
    """
    errors: dict[str, str] = {}
    for name, run in list(runners.items()):  # warm-up: oneDNN primitive caches, the ONNX Runtime session
        try:
            for _ in range(warmup):
                run(frame)
        except Exception as err:
            errors[name] = _error_text(err)
            del runners[name]
    latencies: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            start = time.perf_counter()
            for _ in range(frames_per_round):
                run(frame)
            latencies[name].append((time.perf_counter() - start) / frames_per_round)
    return latencies, errors


# --------------------------------------------------------------------------------------------------- scoring


def _cosine(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    return F.cosine_similarity(a.flatten(1).double(), b.flatten(1).double(), dim=1).numpy()


def score_variants(
    outputs: dict[str, list[Outputs]],
    latencies: dict[str, list[float]],
    data: EvalSet,
    max_dice_loss: float,
    min_cosine: float,
) -> dict[str, dict[str, Any]]:
    """The metrics of every timed variant.

    Args:
        outputs: per variant, the outputs of each image (batch 1).
        latencies: per variant, seconds per frame of each round.
        data: the evaluation set.
        max_dice_loss: the largest acceptable Dice loss against eager fp32, in points.
        min_cosine: the smallest acceptable embedding cosine similarity with eager fp32.

    Returns:
        Metrics by variant name.
    """
    primary = {name: torch.cat([out[0] for out in per_image]) for name, per_image in outputs.items()}
    segmentation = primary[REFERENCE].ndim == 4
    num_classes = primary[REFERENCE].shape[1]
    masks = {name: value.argmax(1).numpy().astype(np.uint8) for name, value in primary.items()} if segmentation else {}
    class_logits = {
        name: torch.cat([out[1] for out in per_image])
        for name, per_image in outputs.items()
        if all(len(out) > 1 for out in per_image)
    }
    scores = {}
    reference_dice = None
    if segmentation and data.masks is not None:
        reference_dice = mean_dice_per_image(masks[REFERENCE], data.masks, num_classes=num_classes)
    for name in outputs:
        latency = statistics.median(latencies[name])
        metrics: dict[str, Any] = {
            "frames_per_s": 1.0 / latency,
            "latency_ms_median": 1000.0 * latency,
            "latency_ms_min_round": 1000.0 * min(latencies[name]),
        }
        keeps: bool | None = None
        if segmentation:
            if reference_dice is not None:
                dice = mean_dice_per_image(masks[name], data.masks, num_classes=num_classes)
                change = 100.0 * (dice - reference_dice)
                metrics.update(dice_mean_per_image=dice, dice_change_vs_eager_fp32_points=change)
                keeps = change >= -max_dice_loss
            metrics["mask_agreement_dice_vs_eager_fp32"] = mean_dice_per_image(
                masks[name], masks[REFERENCE], num_classes=num_classes
            )
        else:
            cosine = _cosine(primary[name], primary[REFERENCE])
            metrics.update(
                embedding_cosine_vs_eager_fp32_mean=float(cosine.mean()),
                embedding_cosine_vs_eager_fp32_min=float(cosine.min()),
            )
            keeps = float(cosine.min()) >= min_cosine
        if name in class_logits and CLASSIFY_REFERENCE in class_logits:
            predicted = class_logits[name].argmax(1).numpy()
            metrics["class_agreement_vs_eager_fp32"] = float(
                np.mean(predicted == class_logits[CLASSIFY_REFERENCE].argmax(1).numpy())
            )
            if data.classes is not None:
                known = data.classes >= 0
                metrics["class_accuracy"] = float(np.mean(predicted[known] == data.classes[known]))
        metrics["meets_30_fps"] = metrics["frames_per_s"] >= TARGET_FPS
        if keeps is not None:
            metrics["keeps_accuracy"] = bool(keeps)
            metrics["meets_target"] = bool(keeps and metrics["meets_30_fps"])
        scores[name] = metrics
    return scores


def _network_summary(parser: Any, network: torch.nn.Module) -> dict[str, Any]:
    definition = parser.get("network_def")
    target = definition.get("_target_") if isinstance(definition, dict) else None
    return {
        "network_def": target or type(network).__name__,
        "class": type(network).__name__,
        "module_parameters": int(sum(p.numel() for p in network.parameters())),  # unused branches included
    }


@torch.inference_mode()
def measure_bundle(spec: RunSpec, args: argparse.Namespace, workdir: Path) -> tuple[list[dict[str, Any]], dict]:
    """Time and check every variant of one bundle.

    Returns:
        ``(result rows, this bundle's settings)``.
    """
    bundle_dir = stage_bundle(spec, workdir)
    meta = json.loads((bundle_dir / "configs" / "metadata.json").read_text(encoding="utf-8"))
    channels = int(meta["network_data_format"]["inputs"]["image"]["num_channels"])
    input_shape = (1, channels, args.size, args.size)
    exports = workdir / "exports" / spec.label
    exports.mkdir(parents=True)
    runners, errors, eager = build_variants(bundle_dir, spec.weights, exports, input_shape, args.threads)
    probe = _as_outputs(eager(torch.zeros(input_shape)))[0]
    num_classes = int(probe.shape[1]) if probe.ndim == 4 else 0
    parser = inference_parser(bundle_dir, spec.datalist, spec.split, args.size)
    data = load_eval_set(parser, spec.datalist, spec.split, args.test_images, args.size, num_classes, channels)

    latencies, warmup_errors = time_variants(
        runners, data.images[:1].contiguous(), args.rounds, args.frames_per_round, args.warmup
    )
    errors.update(warmup_errors)
    if REFERENCE not in runners:
        raise RuntimeError(f"eager fp32 failed, nothing to compare with: {errors.get(REFERENCE)}")
    outputs = {name: [run(image[None]) for image in data.images] for name, run in runners.items()}
    scores = score_variants(outputs, latencies, data, args.max_dice_loss, args.min_cosine)

    rows = []
    for name in [*runners, *errors]:
        row: dict[str, Any] = {"method": f"{spec.label}_{name}", "metrics": scores.get(name, {})}
        if name in errors:
            row["error"] = errors[name]
        shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in row["metrics"].items()}
        print(row["method"], row.get("error") or shown, flush=True)
        rows.append(row)
    settings = {
        "bundle": spec.bundle_dir.name,
        "weights": str(spec.weights),
        "overrides": spec.overrides,
        **_network_summary(parser, eager),
        "input": list(input_shape),
        "output": "segmentation logits" if num_classes else "embedding",
        "accuracy_data": (
            f"split {spec.split!r} of {spec.datalist} ({len(data.files)} images"
            + (f", modality {data.modality}" if data.modality is not None else "")
            + f") through the inference config's preprocessing at {args.size}x{args.size}"
        ),
        "ground_truth": "masks (nearest-resized)" if data.masks is not None else "none: agreement with eager fp32 only",
        # what the config resizes to when deployed (its training size), for reading the Dice at the timed size
        "inference_config_spatial_size": yaml.safe_load(inference_config(bundle_dir).read_text()).get("spatial_size"),
    }
    return rows, settings


# ------------------------------------------------------------------------------------------------------ main


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text!r}")
    return value


def parse_args(argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, list[RunSpec]]:
    """The command line and the runs it names, in order (``--spec`` runs after ``--run`` ones)."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--run", action="append", default=[], help="BUNDLE=WEIGHTS,DATALIST[,SPLIT]; repeatable")
    parser.add_argument("--spec", type=Path, default=None, help="JSON list of runs (bundle, weights, datalist...)")
    parser.add_argument("--weights", type=Path, default=None, help="single-bundle form: the baseline's model.pt")
    parser.add_argument("--datalist", type=Path, default=None, help="single-bundle form: its datalist")
    parser.add_argument("--name", default="inference_speed", help="results file benchmarks/results/<name>.json")
    parser.add_argument("--size", type=_positive, default=224, help="input height and width (default 224)")
    parser.add_argument("--threads", type=_positive, default=2)
    parser.add_argument("--rounds", type=_positive, default=10, help="interleaved timing rounds")
    parser.add_argument("--frames-per-round", type=_positive, default=20)
    parser.add_argument("--warmup", type=_positive, default=10, help="warm-up frames per variant")
    parser.add_argument("--test-images", type=_positive, default=60, help="images used for the accuracy check")
    parser.add_argument("--max-dice-loss", type=float, default=0.5, help="acceptable Dice loss in points (0.5)")
    parser.add_argument("--min-cosine", type=float, default=0.99, help="acceptable embedding cosine (0.99)")
    args = parser.parse_args(argv)
    if not _NAME_PATTERN.match(args.name) or args.name.endswith(".json"):
        parser.error(f"--name must be a file stem (letters, digits, '_', '.', '-'), got {args.name!r}")
    if (args.weights is None) != (args.datalist is None):
        parser.error("--weights and --datalist go together (the single-bundle form)")
    if args.max_dice_loss < 0 or not -1.0 <= args.min_cosine <= 1.0:
        parser.error(
            f"need --max-dice-loss >= 0 and -1 <= --min-cosine <= 1, got {args.max_dice_loss}, {args.min_cosine}"
        )
    try:
        specs = [parse_run(text) for text in args.run]
        if args.weights is not None:
            specs.insert(0, RunSpec(resolve_bundle(DEFAULT_BUNDLE), args.weights, args.datalist))
        if args.spec is not None:
            specs.extend(load_spec_file(args.spec))
    except (ValueError, TypeError, KeyError, FileNotFoundError) as err:  # checked before any measurement starts
        parser.error(err.args[0] if isinstance(err, KeyError) and err.args else str(err))
    if not specs:
        parser.error("give at least one --run, --spec or --weights/--datalist")
    labels = [spec.label for spec in specs]
    if len(set(labels)) != len(labels):
        parser.error(f"every run needs its own label (method names would collide), got {labels}")
    return args, specs


def main(argv: Sequence[str] | None = None) -> int:
    """Measure every run and write the results after each; returns the exit status."""
    args, specs = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    settings: dict[str, Any] = {
        "input": f"batch 1, the metadata's channels, {args.size}x{args.size}",
        "threads": args.threads,
        "rounds": args.rounds,
        "frames_per_round": args.frames_per_round,
        "warmup_frames": args.warmup,
        "timing": "variants of one bundle interleaved in every round; frames/s = 1 / median seconds per frame",
        "dice": "mean over images of the per-image Dice over the non-background classes of the argmax mask, "
        "against the ground truth at the same size",
        "embedding_agreement": "cosine similarity of each image's embedding with eager fp32's",
        "target": f">= {TARGET_FPS:g} frames/s, with a Dice loss vs eager fp32 of at most {args.max_dice_loss} points "
        f"(embeddings: minimum cosine >= {args.min_cosine})",
        "bundles_requested": [spec.label for spec in specs],
        "bundles": {},
    }
    results: list[dict[str, Any]] = []
    failed = []
    with tempfile.TemporaryDirectory(prefix="usseg_inference_speed_") as scratch:
        for spec in specs:
            print(f"== {spec.label}", flush=True)
            try:
                rows, bundle_settings = measure_bundle(spec, args, Path(scratch))
            except Exception as err:  # one bundle's failure (bad weights, bad datalist) must not lose the others
                print(f"{spec.label}: not measured: {_error_text(err)}", file=sys.stderr, flush=True)
                failed.append(spec.label)
                rows = [{"method": spec.label, "metrics": {}, "error": _error_text(err)}]
                bundle_settings = {"bundle": spec.bundle_dir.name, "weights": str(spec.weights)}
            results.extend(rows)
            settings["bundles"][spec.label] = bundle_settings
            settings["bundles_done"] = len(settings["bundles"])
            path = write_results(args.name, settings, results)
    print(path)
    if failed:
        print(f"not measured: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
