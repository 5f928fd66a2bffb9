# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""Model-zoo readiness of usseg bundles: metadata schema, shape and export checks, zoo-style zips.

The MONAI model zoo accepts a bundle when (``monai-notes.md`` sections 15 and 17):

- its folder holds ``LICENSE``, ``configs/metadata.json``, ``configs/inference.{json,yaml,yml}`` and
  ``models/model.pt`` (or lists the weights in ``large_files.yml``), and no file over 25 MB: :func:`check_bundle_dir`;
- its metadata validates against the zoo schema and its ``version`` is a key of ``changelog``: :func:`verify_metadata`,
  offline against the schema usseg ships (:data:`SCHEMA_PATH`);
- MONAI's ``verify_net_in_out`` and ``ckpt_export`` succeed on ``network_def`` of the inference config:
  :func:`verify_net_in_out`, :func:`export_torchscript`. usseg also ships ONNX (:func:`export_onnx`) and checks
  both exports against the eager network (:func:`compare_exports`, :func:`check_exports`).

:func:`zip_bundle` (``usseg bundle-zip``) packs a bundle with its trained weights as the zoo publishes it. Every
function takes a bundle folder, so bundles added later get all of this without extra code.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import math
import operator
import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import torch
import yaml

from usseg.bundles import resolve_bundle
from usseg.data.io import atomic_write, file_digest
from usseg.errors import InputError

__all__ = [
    "SCHEMA_PATH",
    "EXPORT_ATOL",
    "EXPORT_RTOL",
    "LARGE_FILE_BYTES",
    "BundleArchive",
    "verify_metadata",
    "metadata_problems",
    "inference_config",
    "example_input_shape",
    "shape_matches",
    "verify_net_in_out",
    "load_network",
    "export_torchscript",
    "export_onnx",
    "onnx_runner",
    "compare_exports",
    "check_exports",
    "check_bundle_dir",
    "find_weights",
    "zip_bundle",
]

SCHEMA_PATH: Path = Path(__file__).resolve().parent / "schemas" / "meta_schema.json"
"""The metadata schema usseg ships: an offline stand-in for the zoo's, written from the MONAI bundle specification."""

EXPORT_ATOL = 1e-4
"""Absolute tolerance between exported (TorchScript, ONNX Runtime) and eager fp32 outputs."""
EXPORT_RTOL = 1e-4
"""Relative tolerance between exported and eager fp32 outputs: kernels may sum in another order, nothing more."""

LARGE_FILE_BYTES = 25_000_000
"""The zoo's per-file limit, 25 MB; read as decimal megabytes, the stricter reading. Larger files go through
``large_files.yml``."""

INFERENCE_CONFIG_NAMES = ("inference.json", "inference.yaml", "inference.yml")
LARGE_FILES_NAMES = ("large_files.yml", "large_files.yaml", "large_files.json")
HASH_TYPES = ("md5", "sha1", "sha256", "sha512")
WEIGHTS_PATH = "models/model.pt"
# derived from the weights, so a zip with new weights must not carry stale copies
_DERIVED_MODEL_FILES = frozenset({WEIGHTS_PATH, "models/model.ts", "models/model.onnx"})
# run products and caches: never part of a published bundle (the zoo CI itself writes eval/schema.json)
_EXCLUDED_DIRS = frozenset({"outputs", "eval", "runs", "mlruns", "cache", "__pycache__"})
_EXCLUDED_SUFFIXES = (".pyc", ".pyo", ".tmp")
# fixed zip timestamps: the same bundle and weights give a byte-identical archive, so its hash means something
_ZIP_DATE_TIME = (1980, 1, 1, 0, 0, 0)
_SPATIAL_VARIABLES = ("p", "n")
_MAX_POWER = 16  # shape_matches tries p = 0 .. 16
_MAX_EXPONENT = 64


# --------------------------------------------------------------------------------------------------- metadata


def _read_metadata(meta_file: str | os.PathLike) -> dict[str, Any]:
    try:
        meta = json.loads(Path(meta_file).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(meta_file, f"cannot be read as JSON ({err}).") from err
    if not isinstance(meta, dict):
        raise InputError(meta_file, f"must hold a JSON object, got {type(meta).__name__}.")
    return meta


def _is_finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _changelog_problems(meta: Mapping[str, Any]) -> list[str]:
    """The zoo CI's version check: ``version`` exists and is a key of ``changelog``."""
    if "version" not in meta:
        return ["'version' is missing"]
    changelog = meta.get("changelog")
    if not isinstance(changelog, Mapping):
        return ["'changelog' is missing or not an object; the zoo requires one with the current version"]
    if meta["version"] not in changelog:
        return [f"version {meta['version']!r} is not a key of 'changelog' (keys: {sorted(changelog)})"]
    return []


def metadata_problems(meta: Mapping[str, Any]) -> list[str]:
    """The metadata checks a JSON schema cannot express, each returned as one sentence.

    - ``version`` must be a key of ``changelog`` (the zoo CI's version check);
    - in ``network_data_format``, ``channel_def`` of a multi-channel tensor (every format but ``segmentation``, whose
      single channel holds label values) must name channels ``0 .. num_channels - 1``;
    - a non-empty ``value_range`` must be ``[min, max]`` with ``min <= max``.

    Args:
        meta: the content of a ``metadata.json``.

    Returns:
        The problems found; ``[]`` when there are none. Malformed parts the schema rejects are skipped here.
    """
    problems = _changelog_problems(meta)
    data_format = meta.get("network_data_format")
    if not isinstance(data_format, Mapping):
        return problems
    for group in ("inputs", "outputs", "post_processed_outputs"):
        tensors = data_format.get(group)
        if not isinstance(tensors, Mapping):
            continue
        for name, spec in tensors.items():
            if not isinstance(spec, Mapping):
                continue
            where = f"network_data_format#{group}#{name}"
            channels, channel_def = spec.get("num_channels"), spec.get("channel_def")
            if spec.get("format") != "segmentation" and isinstance(channels, int) and isinstance(channel_def, Mapping):
                expected = {str(i) for i in range(channels)}
                if channel_def and set(channel_def) != expected:
                    problems.append(
                        f"{where}: channel_def names channels {sorted(channel_def)} but num_channels is {channels} "
                        f"(expected {sorted(expected)})"
                    )
            value_range = spec.get("value_range")
            if (
                isinstance(value_range, list)
                and len(value_range) == 2
                and all(_is_finite_number(v) for v in value_range)
                and value_range[0] > value_range[1]
            ):
                problems.append(f"{where}: value_range {value_range} has min > max")
    return problems


def verify_metadata(meta_file: str | os.PathLike, schema_file: str | os.PathLike = SCHEMA_PATH) -> None:
    """Validate a ``metadata.json`` as the zoo CI does, without network access.

    Runs ``monai.bundle.verify_metadata`` against ``schema_file`` (an existing file, so MONAI skips its download),
    then :func:`metadata_problems`.

    Args:
        meta_file: the bundle's ``configs/metadata.json``.
        schema_file: the JSON schema; defaults to the one usseg ships.

    Raises:
        FileNotFoundError: ``meta_file`` or ``schema_file`` does not exist (MONAI would otherwise try a download).
        InputError: the metadata is not valid; the message names the file and the failing rule.
    """
    from monai.bundle import verify_metadata as monai_verify_metadata

    schema_file = Path(schema_file)
    if not schema_file.is_file():
        raise FileNotFoundError(f"{schema_file}: no such schema file; usseg ships one at {SCHEMA_PATH}.")
    meta = _read_metadata(meta_file)
    try:
        # the hash only tells MONAI the local file is the intended one; without it MONAI warns on every call
        monai_verify_metadata(
            meta_file=os.fspath(meta_file),
            filepath=os.fspath(schema_file),
            hash_val=file_digest(schema_file),
            hash_type="sha256",
        )
    except ValueError as err:
        detail = "; ".join(_schema_errors(meta, schema_file)) or str(err)
        raise InputError(meta_file, f"does not match the metadata schema {schema_file}: {detail}") from err
    problems = metadata_problems(meta)
    if problems:
        raise InputError(meta_file, "; ".join(problems) + ".")


def _schema_errors(meta: Mapping[str, Any], schema_file: Path, limit: int = 5) -> list[str]:
    """Every schema violation with its location (``required_packages_version#usseg: '>=0.1' does not match ...``).

    MONAI keeps only the first violation and drops where it is; this is what a user needs to fix the file.
    """
    import jsonschema

    schema = json.loads(schema_file.read_text(encoding="utf-8"))
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = sorted(validator.iter_errors(meta), key=lambda error: [str(part) for part in error.absolute_path])
    found = [f"{'#'.join(map(str, e.absolute_path)) or '(top level)'}: {e.message}" for e in errors[:limit]]
    if len(errors) > limit:
        found.append(f"and {len(errors) - limit} more")
    return found


# ------------------------------------------------------------------------------------------- shapes and checks


def inference_config(bundle_dir: str | os.PathLike) -> Path:
    """The bundle's inference config, ``configs/inference.{json,yaml,yml}``, the file the zoo CI builds networks from.

    Args:
        bundle_dir: the bundle folder.

    Returns:
        The first of ``inference.json``, ``inference.yaml``, ``inference.yml`` that exists.

    Raises:
        FileNotFoundError: the bundle has none; the message lists the names looked for.
    """
    for name in INFERENCE_CONFIG_NAMES:
        path = Path(bundle_dir) / "configs" / name
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"{Path(bundle_dir) / 'configs'}: no inference config ({', '.join(INFERENCE_CONFIG_NAMES)})."
    )


_OPERATORS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Pow: operator.pow,
}


def _parse_size(expression: str) -> Callable[[Mapping[str, int]], float]:
    """Compile a spatial-shape expression such as ``"16*n"`` or ``"2**p*n"`` (integers, p, n, + - * / // **).

    Returns:
        A function of ``{"p": ..., "n": ...}`` giving the size.

    Raises:
        ValueError: the expression uses anything else (names, calls, attributes), which MONAI could not evaluate.
    """
    try:
        tree = ast.parse(expression.strip(), mode="eval").body
    except SyntaxError as err:
        raise ValueError(f"spatial shape {expression!r} is not an expression ({err.msg}).") from err
    for node in ast.walk(tree):
        allowed = (
            (isinstance(node, ast.Constant) and type(node.value) is int)
            or (isinstance(node, ast.Name) and node.id in _SPATIAL_VARIABLES)
            or (isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub))
            or (isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS)
            or isinstance(node, (ast.operator, ast.unaryop, ast.expr_context))
        )
        if not allowed:
            raise ValueError(
                f"spatial shape {expression!r}: only integers, the variables {_SPATIAL_VARIABLES} and + - * / // ** "
                "are supported (MONAI's verify_net_in_out and exporters evaluate p and n only)."
            )

    def evaluate(node: ast.expr, values: Mapping[str, int]) -> float:
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            return values[node.id]
        if isinstance(node, ast.UnaryOp):
            return -evaluate(node.operand, values)
        left, right = evaluate(node.left, values), evaluate(node.right, values)
        if isinstance(node.op, ast.Pow) and abs(right) > _MAX_EXPONENT:  # 2**10**10 would not finish
            raise ValueError(f"spatial shape {expression!r}: exponent {right} is too large.")
        return _OPERATORS[type(node.op)](left, right)

    return lambda values: evaluate(tree, values)


def _spatial_spec(meta: Mapping[str, Any], group: str, name: str) -> Mapping[str, Any]:
    try:
        spec = meta["network_data_format"][group][name]
    except (KeyError, TypeError) as err:
        raise KeyError(f"metadata has no network_data_format#{group}#{name}.") from err
    return spec


def example_input_shape(
    meta: Mapping[str, Any], n: int = 1, p: int = 1, any_size: int = 1, batch: int = 1, input_name: str = "image"
) -> tuple[int, ...]:
    """The shape of an input the metadata documents: ``(batch, num_channels, *spatial)``.

    Spatial entries are evaluated as MONAI's ``verify_net_in_out`` does, with the same defaults: an integer stays,
    ``"*"`` becomes ``any_size``, an expression is evaluated with ``p`` and ``n`` (``"16*n+16"`` gives 32 at ``n=1``,
    64 at ``n=3``).

    Args:
        meta: the content of a ``metadata.json``.
        n: value of the variable ``n``.
        p: value of the variable ``p``.
        any_size: size used for ``"*"``.
        batch: batch size.
        input_name: the key under ``network_data_format#inputs`` (MONAI's tools use ``image``).

    Returns:
        ``(batch, C, H[, W[, D]])`` as integers.

    Raises:
        KeyError: the input is not described.
        ValueError: an entry evaluates to a non-positive or non-integer size, or ``n``/``p``/``batch`` are invalid.
    """
    if n < 1 or p < 0 or batch < 1 or any_size < 1:
        raise ValueError(f"need n >= 1, p >= 0, batch >= 1, any_size >= 1; got n={n}, p={p}, batch={batch}.")
    spec = _spatial_spec(meta, "inputs", input_name)
    sizes = []
    for entry in spec["spatial_shape"]:
        if isinstance(entry, str) and entry.strip() == "*":
            value: float = any_size
        elif isinstance(entry, str):
            value = _parse_size(entry)({"p": p, "n": n})
        else:
            value = entry
        if value != int(value) or value < 1:
            raise ValueError(f"spatial shape entry {entry!r} gives {value} with n={n}, p={p}; not a positive integer.")
        sizes.append(int(value))
    return (batch, int(spec["num_channels"]), *sizes)


def shape_matches(spatial_shape: Sequence[int | str], shape: Sequence[int]) -> bool:
    """Whether a concrete spatial ``shape`` fits a documented ``spatial_shape``.

    As the bundle specification says, a variable means the same value in every dimension: ``["16*n", "16*n"]``
    accepts 128x128 but not 128x96. ``"*"`` accepts any size.

    Args:
        spatial_shape: the metadata's ``spatial_shape`` list.
        shape: the spatial sizes of a tensor (without batch and channel axes).

    Returns:
        True when some ``p >= 0``, ``n >= 1`` makes every entry equal the size.
    """
    if len(spatial_shape) != len(shape):
        return False
    fixed = [(entry, size) for entry, size in zip(spatial_shape, shape) if not isinstance(entry, str)]
    if any(int(entry) != size for entry, size in fixed):
        return False
    expressions = [
        (_parse_size(entry), size)
        for entry, size in zip(spatial_shape, shape)
        if isinstance(entry, str) and entry.strip() != "*"
    ]
    if not expressions:
        return True
    largest = max(size for _, size in expressions)
    for p in range(_MAX_POWER + 1):
        for n in range(1, largest + 1):
            if all(size_of({"p": p, "n": n}) == size for size_of, size in expressions):
                return True
    return False


def _default_device(device: str | torch.device | None) -> str:
    from usseg.engines.utils import resolve_device

    return str(resolve_device("auto" if device is None else device))


def verify_net_in_out(bundle_dir: str | os.PathLike, device: str | torch.device | None = None, n: int = 1) -> None:
    """Run MONAI's ``verify_net_in_out`` on ``network_def`` of the bundle's inference config, as the zoo CI does.

    MONAI builds the network, feeds a random input of the documented shape and checks output channels and dtype.
    The zoo CI runs it with ``n=1``, the smallest documented size, so the spatial shape must not promise sizes the
    network cannot take (a U-Net with four stride-2 levels and instance norm needs 32, not 16).

    Args:
        bundle_dir: the bundle folder.
        device: where to run; ``None`` picks CUDA when available, else the CPU.
        n: value of ``n`` in the spatial shape; 1 as in the zoo CI.

    Raises:
        ValueError: channels or dtype of the output differ from ``network_data_format``.
        KeyError: the config has no ``network_def``.
    """
    from monai.bundle import verify_net_in_out as monai_verify_net_in_out

    bundle_dir = Path(bundle_dir)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}.")
    monai_verify_net_in_out(
        net_id="network_def",
        meta_file=os.fspath(bundle_dir / "configs" / "metadata.json"),
        config_file=os.fspath(inference_config(bundle_dir)),
        device=_default_device(device),
        n=n,
        bundle_root=os.fspath(bundle_dir),
    )


def load_network(
    bundle_dir: str | os.PathLike, ckpt_file: str | os.PathLike, device: str | torch.device = "cpu"
) -> torch.nn.Module:
    """Build ``network_def`` from the inference config and load a bare state dict into it, in eval mode.

    Args:
        bundle_dir: the bundle folder.
        ckpt_file: a ``model.pt`` holding a state dict (what the bundles' ``CheckpointSaver`` writes).
        device: where to put the network.

    Returns:
        The network with the weights loaded, in eval mode.

    Raises:
        InputError: the file is not a state dict of this network (the message names the missing or extra keys).
    """
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(os.fspath(inference_config(bundle_dir)))
    parser["bundle_root"] = os.fspath(bundle_dir)
    parser["ckpt_path"] = os.fspath(ckpt_file)  # a network_def may read its architecture from the checkpoint
    network = parser.get_parsed_content("network_def")
    try:
        state = torch.load(ckpt_file, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:  # torch raises pickle, zip and runtime errors alike for a file that is not a checkpoint
        raise InputError(ckpt_file, f"cannot be loaded as a PyTorch checkpoint ({err}).") from err
    if not isinstance(state, Mapping):
        raise InputError(ckpt_file, f"must hold a state dict, got a {type(state).__name__}.")
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as err:  # the message lists missing and unexpected keys and mismatched shapes
        detail = " ".join(str(err).split())
        raise InputError(ckpt_file, f"does not fit network_def of {Path(bundle_dir).name}: {detail[:500]}") from err
    return network.to(device).eval()


def export_torchscript(
    bundle_dir: str | os.PathLike, ckpt_file: str | os.PathLike, filepath: str | os.PathLike
) -> Path:
    """Export the bundle network to TorchScript with MONAI's ``ckpt_export`` (the zoo CI's check).

    The archive embeds ``metadata.json`` and the inference config as extra files (``load_net_with_metadata`` reads
    them back). TorchScript is deprecated in torch 2.13 and warns, but the zoo CI and MONAI Deploy still need it.

    Args:
        bundle_dir: the bundle folder.
        ckpt_file: the weights (a state dict).
        filepath: where to write, conventionally ``models/model.ts``; written atomically.

    Returns:
        ``filepath``.
    """
    from monai.bundle import ckpt_export

    bundle_dir = Path(bundle_dir)
    with atomic_write(filepath, "wb") as handle:
        ckpt_export(
            net_id="network_def",
            filepath=handle,
            ckpt_file=os.fspath(ckpt_file),
            meta_file=os.fspath(bundle_dir / "configs" / "metadata.json"),
            config_file=os.fspath(inference_config(bundle_dir)),
            bundle_root=os.fspath(bundle_dir),
            ckpt_path=os.fspath(ckpt_file),  # as in load_network: the architecture may come from the checkpoint
        )
    return Path(filepath)


def _dynamic_axes(meta: Mapping[str, Any], group: str) -> dict[str, dict[int, str]]:
    """Batch axis plus every spatial axis whose documented size is not a fixed integer."""
    axes: dict[str, dict[int, str]] = {}
    for name, spec in meta["network_data_format"][group].items():
        named = {0: "batch"}
        for index, entry in enumerate(spec.get("spatial_shape", [])):
            if isinstance(entry, str):  # each tensor its own names: an output may be smaller than the input
                named[index + 2] = f"{name}_spatial_{index}"
        axes[name] = named
    return axes


def export_onnx(
    bundle_dir: str | os.PathLike,
    ckpt_file: str | os.PathLike,
    filepath: str | os.PathLike,
    input_shape: Sequence[int] | None = None,
    dynamic: bool = True,
) -> Path:
    """Export the bundle network to ONNX with MONAI's ``onnx_export`` (torch's dynamo exporter).

    Input and output names are the ``network_data_format`` keys (``image``, ``pred``). With ``dynamic=True`` the
    batch axis and every spatial axis documented by an expression (``"16*n"``, ``"*"``) are dynamic, so one file
    serves any documented size.

    Args:
        bundle_dir: the bundle folder.
        ckpt_file: the weights (a state dict).
        filepath: where to write, conventionally ``models/model.onnx``; written atomically.
        input_shape: the example input traced by the exporter; default the documented shape at ``n=4``.
        dynamic: whether to export dynamic batch and spatial axes.

    Returns:
        ``filepath``.

    Raises:
        ImportError: ``onnx`` or ``onnxscript`` is missing (install ``usseg[export]``).
    """
    from monai.bundle import onnx_export

    for module in ("onnx", "onnxscript"):
        if importlib.util.find_spec(module) is None:
            raise ImportError(f"ONNX export needs {module!r}; install it with `pip install usseg[export]`.")
    bundle_dir = Path(bundle_dir)
    meta_file = bundle_dir / "configs" / "metadata.json"
    meta = _read_metadata(meta_file)
    shape = list(input_shape) if input_shape is not None else list(example_input_shape(meta, n=4))
    converter_kwargs: dict[str, Any] = {
        "input_names": list(meta["network_data_format"]["inputs"]),
        "output_names": list(meta["network_data_format"]["outputs"]),
    }
    if dynamic:
        converter_kwargs["dynamic_axes"] = {**_dynamic_axes(meta, "inputs"), **_dynamic_axes(meta, "outputs")}
    # onnx.save needs a real file name (it resolves paths of external data), so export to a scratch folder and copy
    with tempfile.TemporaryDirectory(prefix="usseg_onnx_") as scratch, atomic_write(filepath, "wb") as handle:
        scratch_file = Path(scratch) / "model.onnx"
        onnx_export(
            net_id="network_def",
            filepath=os.fspath(scratch_file),
            ckpt_file=os.fspath(ckpt_file),
            meta_file=os.fspath(meta_file),
            config_file=os.fspath(inference_config(bundle_dir)),
            input_shape=shape,
            converter_kwargs=converter_kwargs,
            bundle_root=os.fspath(bundle_dir),
            ckpt_path=os.fspath(ckpt_file),  # as in load_network: the architecture may come from the checkpoint
        )
        with scratch_file.open("rb") as exported:
            shutil.copyfileobj(exported, handle, 1 << 20)
    return Path(filepath)


def onnx_runner(onnx_file: str | os.PathLike) -> Callable[[torch.Tensor], np.ndarray]:
    """An ONNX Runtime session on the CPU provider, as a function of a torch tensor returning the first output."""
    try:
        import onnxruntime
    except ImportError as err:
        raise ImportError("comparing an ONNX export needs onnxruntime; `pip install usseg[export]`.") from err
    session = onnxruntime.InferenceSession(os.fspath(onnx_file), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    return lambda inputs: session.run(None, {input_name: inputs.numpy()})[0]


def compare_exports(
    bundle_dir: str | os.PathLike,
    ckpt_file: str | os.PathLike,
    torchscript_file: str | os.PathLike | None = None,
    onnx_file: str | os.PathLike | None = None,
    input_shapes: Sequence[Sequence[int]] | None = None,
    seed: int = 0,
    atol: float = EXPORT_ATOL,
    rtol: float = EXPORT_RTOL,
) -> dict[str, float]:
    """Compare exported networks with the eager one on random inputs, on the CPU in fp32.

    TorchScript runs through ``torch.jit.load``, ONNX through ONNX Runtime's CPU provider. Outputs agree when
    ``|exported - eager| <= atol + rtol * |eager|`` everywhere (``numpy.allclose``).

    Args:
        bundle_dir: the bundle folder.
        ckpt_file: the weights both exports were made from.
        torchscript_file: a TorchScript export, or None to skip.
        onnx_file: an ONNX export, or None to skip.
        input_shapes: shapes ``(B, C, *spatial)`` to test; default the smallest documented shape (``n=1``) and a
            batch of 2 at ``n=4``, which needs dynamic batch and spatial axes in an ONNX export.
        seed: seed of the random inputs, uniform in [0, 1).
        atol: absolute tolerance.
        rtol: relative tolerance.

    Returns:
        ``{"torchscript": max |difference|, "onnx": ...}`` over all inputs, for the formats given.

    Raises:
        ValueError: a tolerance is negative, no export is given, or an export differs from eager beyond the
            tolerance or in shape (the message gives the format, the input shape and the largest difference).
        TypeError: the network returns something other than one tensor.
    """
    if atol < 0 or rtol < 0:
        raise ValueError(f"tolerances must be >= 0, got atol={atol}, rtol={rtol}.")
    runners: dict[str, Callable[[torch.Tensor], np.ndarray]] = {}
    if torchscript_file is not None:
        scripted = torch.jit.load(os.fspath(torchscript_file), map_location="cpu").eval()
        runners["torchscript"] = lambda x: scripted(x).numpy()
    if onnx_file is not None:
        runners["onnx"] = onnx_runner(onnx_file)
    if not runners:
        raise ValueError("give torchscript_file, onnx_file or both.")
    network = load_network(bundle_dir, ckpt_file, "cpu")
    if input_shapes is None:
        meta = _read_metadata(Path(bundle_dir) / "configs" / "metadata.json")
        input_shapes = [example_input_shape(meta, n=1), example_input_shape(meta, n=4, batch=2)]
    generator = torch.Generator().manual_seed(seed)
    worst = dict.fromkeys(runners, 0.0)
    with torch.no_grad():
        for shape in input_shapes:
            inputs = torch.rand(*shape, generator=generator)
            eager = network(inputs)
            if not isinstance(eager, torch.Tensor):
                raise TypeError(f"compare_exports handles networks with one tensor output, got {type(eager).__name__}.")
            eager = eager.numpy()
            for name, run in runners.items():
                exported = run(inputs)
                if exported.shape != eager.shape:
                    raise ValueError(f"{name} output has shape {exported.shape}, eager {eager.shape}, input {shape}.")
                difference = float(np.max(np.abs(exported - eager)))
                worst[name] = max(worst[name], difference)
                if not np.allclose(exported, eager, atol=atol, rtol=rtol):
                    raise ValueError(
                        f"{name} output differs from eager beyond atol={atol}, rtol={rtol} on input {tuple(shape)}: "
                        f"max |difference| {difference:.3g}."
                    )
    return worst


def check_exports(
    bundle_dir: str | os.PathLike,
    ckpt_file: str | os.PathLike,
    output_dir: str | os.PathLike,
    input_shapes: Sequence[Sequence[int]] | None = None,
) -> dict[str, float]:
    """Export to ``output_dir/model.ts`` and ``output_dir/model.onnx`` and compare both with eager.

    Args:
        bundle_dir: the bundle folder.
        ckpt_file: the weights.
        output_dir: where the two exports are written.
        input_shapes: passed to :func:`compare_exports`.

    Returns:
        The largest absolute difference per format, each within :data:`EXPORT_ATOL` / :data:`EXPORT_RTOL`.

    Raises:
        ValueError: an export differs from eager beyond the tolerance (see :func:`compare_exports`).
    """
    output_dir = Path(output_dir)
    torchscript_file = export_torchscript(bundle_dir, ckpt_file, output_dir / "model.ts")
    onnx_file = export_onnx(bundle_dir, ckpt_file, output_dir / "model.onnx")
    return compare_exports(bundle_dir, ckpt_file, torchscript_file, onnx_file, input_shapes=input_shapes)


# ------------------------------------------------------------------------------------------- bundle folders


def _large_files_file(bundle_dir: Path) -> Path | None:
    return next((bundle_dir / name for name in LARGE_FILES_NAMES if (bundle_dir / name).is_file()), None)


def _read_large_files(path: Path) -> list[dict[str, Any]]:
    """The ``large_files`` entries of a ``large_files.{yml,yaml,json}``.

    Raises:
        InputError: the file is not in the zoo's ``{large_files: [{path, url, ...}]}`` form.
    """
    try:
        text = path.read_text(encoding="utf-8")
        content = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as err:
        raise InputError(path, f"cannot be parsed ({err}).") from err
    entries = content.get("large_files") if isinstance(content, dict) else None
    if not isinstance(entries, list) or not all(isinstance(entry, dict) for entry in entries):
        raise InputError(path, "must hold `large_files:` followed by a list of {path, url, hash_val, hash_type}.")
    return entries


def _large_file_problems(bundle_dir: Path, entries: list[dict[str, Any]], source: str) -> list[str]:
    problems = []
    for index, entry in enumerate(entries):
        where = f"{source} entry {index}"
        path = entry.get("path")
        if not isinstance(path, str) or not path:
            problems.append(f"{where} has no path")
        elif Path(path).is_absolute() or not (bundle_dir / path).resolve().is_relative_to(bundle_dir.resolve()):
            problems.append(f"{where}: path {path!r} leaves the bundle folder")
        if not isinstance(entry.get("url"), str) or not entry.get("url"):
            problems.append(f"{where} has no url")
        if "hash_type" in entry and entry["hash_type"] not in HASH_TYPES:
            problems.append(f"{where}: hash_type {entry['hash_type']!r} is not one of {HASH_TYPES}")
    return problems


def _bundle_files(bundle_dir: Path) -> list[str]:
    """Paths (POSIX, relative) of the files that belong in a published bundle: no run products, caches or dot-files."""
    found = []
    for root, dirs, files in os.walk(bundle_dir):
        dirs[:] = sorted(d for d in dirs if d not in _EXCLUDED_DIRS and not d.startswith("."))
        for name in sorted(files):
            if name.startswith(".") or name.endswith(_EXCLUDED_SUFFIXES):
                continue
            found.append((Path(root) / name).relative_to(bundle_dir).as_posix())
    return found


def check_bundle_dir(
    path: str | os.PathLike, require_weights: bool = True, max_file_bytes: int = LARGE_FILE_BYTES
) -> list[str]:
    """The model zoo CI's directory checks on an (unzipped) bundle folder.

    Checked: ``LICENSE``; ``configs/metadata.json`` (a JSON object whose ``version`` is a key of ``changelog``);
    ``configs/inference.{json,yaml,yml}``; ``models/model.pt`` unless ``require_weights`` is False; a file listed in
    ``large_files.{yml,yaml,json}`` counts as present (the CI downloads it first), and the list must be well formed;
    no other file over ``max_file_bytes``. Schema validation is :func:`verify_metadata`.

    Args:
        path: the bundle folder.
        require_weights: whether ``models/model.pt`` is required (False: the zoo's exclusion list).
        max_file_bytes: the per-file limit.

    Returns:
        One sentence per problem; ``[]`` when the folder passes.
    """
    bundle_dir = Path(path)
    if not bundle_dir.is_dir():
        return [f"{bundle_dir}: not a folder"]
    problems: list[str] = []
    listed: set[str] = set()
    large_files = _large_files_file(bundle_dir)
    if large_files is not None:
        try:
            entries = _read_large_files(large_files)
        except InputError as err:
            problems.append(str(err))
        else:
            problems += _large_file_problems(bundle_dir, entries, large_files.name)
            listed = {Path(entry["path"]).as_posix() for entry in entries if isinstance(entry.get("path"), str)}
    if not (bundle_dir / "LICENSE").is_file():
        problems.append("LICENSE is missing")
    meta_file = bundle_dir / "configs" / "metadata.json"
    if not meta_file.is_file():
        problems.append("configs/metadata.json is missing")
    else:
        try:
            meta = _read_metadata(meta_file)
        except InputError as err:
            problems.append(str(err))
        else:
            problems += [f"configs/metadata.json: {problem}" for problem in _changelog_problems(meta)]
    if not any((bundle_dir / "configs" / name).is_file() for name in INFERENCE_CONFIG_NAMES):
        problems.append(
            f"no inference config (configs/{{{','.join(n.split('.')[1] for n in INFERENCE_CONFIG_NAMES)}}})"
        )
    if require_weights and not (bundle_dir / WEIGHTS_PATH).is_file() and WEIGHTS_PATH not in listed:
        problems.append(f"{WEIGHTS_PATH} is missing and not listed in large_files.yml")
    for relative in _bundle_files(bundle_dir):
        size = (bundle_dir / relative).stat().st_size
        if size > max_file_bytes and relative not in listed:
            problems.append(
                f"{relative} is {size} bytes, over the {max_file_bytes}-byte limit; list it in large_files.yml"
            )
    return problems


# ------------------------------------------------------------------------------------------------ zipping


@dataclass(frozen=True)
class BundleArchive:
    """What :func:`zip_bundle` produced.

    Attributes:
        path: the zip, ``<output_dir>/<name>_v<version>.zip``.
        weights: the weights file packed or listed, or None.
        weights_in_zip: True when the weights are ``models/model.pt`` in the zip, False when listed in
            ``large_files.yml`` (or absent).
        large_files: the ``large_files.yml`` entries written into the zip.
    """

    path: Path
    weights: Path | None
    weights_in_zip: bool
    large_files: list[dict[str, Any]] = field(default_factory=list)


def find_weights(
    name: str,
    bundle_dir: str | os.PathLike,
    weights: str | os.PathLike | None = None,
    search_dir: str | os.PathLike | None = None,
) -> Path | None:
    """The trained weights to publish with a bundle.

    In order: ``weights`` when given; ``<search_dir>/outputs/<name>/models/model.pt``, where the bundles' training
    writes its validation-selected weights (``search_dir`` defaults to the working directory); the bundle's own
    ``models/model.pt``.

    Args:
        name: the bundle name.
        bundle_dir: the bundle folder.
        weights: an explicit weights file.
        search_dir: the folder holding ``outputs/``.

    Returns:
        The weights file, or None when there is none.

    Raises:
        FileNotFoundError: ``weights`` is given but is not a file.
    """
    if weights is not None:
        if not Path(weights).is_file():
            raise FileNotFoundError(f"{weights}: no such weights file.")
        return Path(weights)
    base = Path.cwd() if search_dir is None else Path(search_dir)
    for candidate in (base / "outputs" / name / WEIGHTS_PATH, Path(bundle_dir) / WEIGHTS_PATH):
        if candidate.is_file():
            return candidate
    return None


def _check_url(url: str) -> None:
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError(f"weights_url must be an http(s) URL the zoo can download, got {url!r}.")


def zip_bundle(
    bundle: str | os.PathLike,
    output_dir: str | os.PathLike = ".",
    weights: str | os.PathLike | None = None,
    weights_url: str | None = None,
    include_weights: bool = True,
    max_file_bytes: int = LARGE_FILE_BYTES,
) -> BundleArchive:
    """Pack a bundle as a model-zoo zip: ``<output_dir>/<name>_v<version>.zip``, unpacking to ``<name>/...``.

    The zip holds the bundle folder (configs, docs, LICENSE...) without run products and caches (``outputs``,
    ``eval``, ``runs``, ``mlruns``, ``cache``, ``__pycache__``, dot-files, ``*.pyc``), plus the trained weights
    (:func:`find_weights`) as ``models/model.pt``; stale ``models/model.{ts,onnx}`` are left out. Weights over
    ``max_file_bytes`` stay out of the zip and are listed in ``large_files.yml`` with ``weights_url`` and their
    sha256, merged with any entries the bundle already lists. Before writing, the weights must load into
    ``network_def``, the metadata must pass :func:`verify_metadata`, and the staged folder :func:`check_bundle_dir`.
    The zip is written atomically and is byte-identical for identical inputs.

    Args:
        bundle: a bundle name (see ``usseg bundles``) or a bundle folder.
        output_dir: where the zip goes (created if needed).
        weights: the weights file; default :func:`find_weights`.
        weights_url: download URL for weights over the limit.
        include_weights: False packs the configs only (for a bundle on the zoo's preferred-files exclusion list).
        max_file_bytes: the per-file limit.

    Returns:
        A :class:`BundleArchive`.

    Raises:
        ValueError: contradictory arguments (``weights`` with ``include_weights=False``), a bad ``weights_url``.
        InputError: no weights found, weights that do not fit the network, weights over the limit without
            ``weights_url``, another file over the limit, invalid metadata, or a failed directory check.
        FileNotFoundError: the bundle or the weights file does not exist.
    """
    if max_file_bytes < 1:
        raise ValueError(f"max_file_bytes must be >= 1, got {max_file_bytes}.")
    if weights is not None and not include_weights:
        raise ValueError(f"weights={os.fspath(weights)!r} contradicts include_weights=False (--no-weights).")
    if weights_url is not None:
        _check_url(weights_url)
    bundle_dir = resolve_bundle(bundle)
    name = bundle_dir.name
    meta_file = bundle_dir / "configs" / "metadata.json"
    verify_metadata(meta_file)
    version = _read_metadata(meta_file)["version"]

    weights_file = find_weights(name, bundle_dir, weights) if include_weights else None
    if include_weights and weights_file is None:
        raise InputError(
            bundle_dir,
            f"no trained weights found (looked for {Path.cwd() / 'outputs' / name / WEIGHTS_PATH} and "
            f"{bundle_dir / WEIGHTS_PATH}); train the bundle, pass --weights PATH, or pass --no-weights to pack the "
            "configs only (the zoo then needs the bundle on its preferred-files exclusion list).",
        )

    large_file = _large_files_file(bundle_dir)
    entries = _read_large_files(large_file) if large_file is not None else []
    if weights_file is not None:
        load_network(bundle_dir, weights_file, "cpu")  # a zip whose weights do not fit its network is useless
        entries = [entry for entry in entries if entry.get("path") != WEIGHTS_PATH]
    listed = {entry.get("path") for entry in entries}
    weights_in_zip = weights_file is not None and weights_file.stat().st_size <= max_file_bytes
    if weights_file is not None and not weights_in_zip:
        size = weights_file.stat().st_size
        if weights_url is None:
            raise InputError(
                weights_file,
                f"is {size} bytes, over the model zoo's {max_file_bytes}-byte file limit, so it cannot go into the "
                "zip; upload it and pass its download URL with --weights-url URL (it is then listed in "
                "large_files.yml with its sha256).",
            )
        entries.append(
            {"path": WEIGHTS_PATH, "url": weights_url, "hash_val": file_digest(weights_file), "hash_type": "sha256"}
        )

    files = [
        relative
        for relative in _bundle_files(bundle_dir)
        if relative not in _DERIVED_MODEL_FILES and relative not in listed and relative not in LARGE_FILES_NAMES
    ]
    for relative in files:
        size = (bundle_dir / relative).stat().st_size
        if size > max_file_bytes:
            raise InputError(
                bundle_dir / relative,
                f"is {size} bytes, over the model zoo's {max_file_bytes}-byte file limit; upload it and list it in "
                "large_files.yml.",
            )

    with tempfile.TemporaryDirectory(prefix="usseg_bundle_zip_") as staging_root:
        staging = Path(staging_root) / name
        for relative in files:
            (staging / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(bundle_dir / relative, staging / relative)
        if weights_in_zip:
            (staging / "models").mkdir(parents=True, exist_ok=True)
            shutil.copyfile(weights_file, staging / WEIGHTS_PATH)
        if entries:
            large_name = large_file.name if large_file is not None else LARGE_FILES_NAMES[0]
            text = (
                json.dumps({"large_files": entries}, indent=4) + "\n"
                if large_name.endswith(".json")
                else yaml.safe_dump({"large_files": entries}, sort_keys=False)
            )
            (staging / large_name).write_text(text, encoding="utf-8")
        problems = check_bundle_dir(staging, require_weights=include_weights, max_file_bytes=max_file_bytes)
        if problems:
            raise InputError(bundle_dir, "fails the model zoo's directory checks: " + "; ".join(problems) + ".")
        zip_path = Path(output_dir) / f"{name}_v{version}.zip"
        with atomic_write(zip_path, "wb") as handle, zipfile.ZipFile(handle, "w") as archive:
            for relative in _bundle_files(staging):
                info = zipfile.ZipInfo(f"{name}/{relative}", date_time=_ZIP_DATE_TIME)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = 0o644 << 16  # rw-r--r--, whatever the umask of the machine that packed it
                with (staging / relative).open("rb") as source, archive.open(info, "w") as target:
                    shutil.copyfileobj(source, target, 1 << 20)
    return BundleArchive(
        path=zip_path,
        weights=weights_file,
        weights_in_zip=weights_in_zip,
        large_files=[dict(entry) for entry in entries],
    )
