# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""Experiment tracking: which scalars of a run are time series, and where they go (TensorBoard, MLflow).

- :func:`loss_components` picks every scalar of ``engine.state.output``: the ``output_transform`` of MONAI's
  ``TensorBoardStatsHandler`` and ``MLFlowHandler``, so each loss term and pseudo-label statistic gets a curve.
- :class:`ScalarEventWriter` writes TensorBoard event files (scalars) without the ``tensorboard`` package, which the
  base install and CI do not have; MONAI's ``TensorBoardStatsHandler`` takes it as ``summary_writer``.
  :func:`read_scalars` reads event files back (ours, or scalars written by ``torch.utils.tensorboard``).
- :func:`mlflow_settings` is MONAI's ``DEFAULT_MLFLOW_SETTINGS`` (a local SQLite store under ``output_dir``, no server)
  with every loss component logged; ``usseg run --tracking mlflow`` passes it to ``monai.bundle.run``.

The event-file format is TensorBoard's: records of ``uint64 length, uint32 masked CRC32C(length), payload, uint32
masked CRC32C(payload)``, each payload a serialised ``tensorflow.Event`` protocol buffer. The few fields a scalar needs
are encoded by hand below (the protobuf runtime would need TensorBoard's generated classes).
"""

from __future__ import annotations

import copy
import importlib.util
import os
import socket
import struct
import time
from collections.abc import Mapping
from numbers import Number
from pathlib import Path
from typing import IO, Any

import torch

from usseg.data.io import ensure_writable_dir

__all__ = [
    "MLFLOW_EXTRA_HINT",
    "ScalarEventWriter",
    "loss_components",
    "mlflow_available",
    "mlflow_settings",
    "read_scalars",
]

MLFLOW_EXTRA_HINT = "install the tracking extra: pip install 'usseg[tracking]'"
"""What to do when MLflow is missing; part of every error about it."""

_FILE_VERSION = b"brain.Event:2"  # the format tag TensorBoard expects in the first record of an event file
_CRC_MASK_DELTA = 0xA282EAD8
_UINT32 = 0xFFFFFFFF


def loss_components(output: Any) -> dict[str, float]:
    """Every scalar in an iteration output, as floats keyed by name.

    Trainers put each loss term and pseudo-label statistic into ``engine.state.output``; logging all scalar entries
    (rather than a hand-picked list per bundle) means a new loss component shows up in TensorBoard or MLflow without a
    config change. Images, predictions and other non-scalar entries are skipped. Non-finite values are kept, because a
    NaN loss is exactly what a curve should show.

    Args:
        output: the iteration output, usually a dict of tensors and numbers; a bare scalar is logged as ``loss``.

    Returns:
        ``{name: value}`` for every 0-d tensor, one-element tensor, Python/NumPy number or bool in ``output``.
    """
    if not isinstance(output, Mapping):
        value = _scalar(output)
        return {} if value is None else {"loss": value}
    scalars: dict[str, float] = {}
    for key, value in output.items():
        number = _scalar(value)
        if number is not None:
            scalars[str(key)] = number
    return scalars


def _scalar(value: Any) -> float | None:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.is_complex():
            return None
        return float(value.detach().float().cpu().item())
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, Number) and not isinstance(value, complex):
        return float(value)  # NumPy scalars register as numbers.Number too
    return None


# ------------------------------------------------------------------------------------------- TensorBoard event files


def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1  # Castagnoli polynomial, bit-reversed
        table.append(crc)
    return table


_CRC32C_TABLE = _crc32c_table()


def _crc32c(data: bytes) -> int:
    crc = _UINT32
    for byte in data:
        crc = _CRC32C_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ _UINT32


def _masked_crc(data: bytes) -> int:
    # TFRecord masks the CRC so that a CRC of data that itself holds CRCs is not degenerate
    crc = _crc32c(data)
    return ((((crc >> 15) | (crc << 17)) & _UINT32) + _CRC_MASK_DELTA) & _UINT32


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # int64 fields: negative numbers as their two's complement, ten bytes
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _length_delimited(field: int, payload: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def _event(wall_time: float, step: int | None = None, file_version: bytes | None = None, summary: bytes = b"") -> bytes:
    """A serialised ``Event``: wall_time (1, double), step (2, int64), file_version (3), summary (5)."""
    out = _varint(1 << 3 | 1) + struct.pack("<d", wall_time)
    if step is not None:
        out += _varint(2 << 3 | 0) + _varint(step)
    if file_version is not None:
        out += _length_delimited(3, file_version)
    if summary:
        out += _length_delimited(5, summary)
    return out


def _scalar_summary(tag: str, value: float) -> bytes:
    """A ``Summary`` with one ``Value``: tag (1, string), simple_value (2, float)."""
    value_message = _length_delimited(1, tag.encode("utf-8")) + _varint(2 << 3 | 5) + struct.pack("<f", value)
    return _length_delimited(1, value_message)


def _record(payload: bytes) -> bytes:
    header = struct.pack("<Q", len(payload))
    return header + struct.pack("<I", _masked_crc(header)) + payload + struct.pack("<I", _masked_crc(payload))


class ScalarEventWriter:
    """Write scalars as a TensorBoard event file, with no dependency on ``tensorboard`` or ``tensorboardX``.

    It has the part of ``torch.utils.tensorboard.SummaryWriter`` that MONAI's ``TensorBoardStatsHandler`` uses
    (``add_scalar``, ``flush``, ``close``), so a config passes it as the handler's ``summary_writer``. The file,
    ``<log_dir>/events.out.tfevents.<time>.<host>.<pid>.<n>``, is created at the first scalar: a handler disabled on
    ranks > 0 leaves no empty file behind. Each record is written whole and :meth:`flush` pushes it to disk, so a
    killed run keeps every flushed point (an event file is an append-only stream, so it cannot be written through
    ``usseg.data.io``'s rename; TensorBoard and :func:`read_scalars` ignore a torn last record).

    Args:
        log_dir: folder of the event file (created when the first scalar is written).
        filename_suffix: appended to the file name, as ``SummaryWriter`` does.

    Raises:
        TypeError: ``log_dir`` is not a path, or ``filename_suffix`` is not a string.

    Example::

        writer = ScalarEventWriter("outputs/run/tensorboard")
        writer.add_scalar("loss", 0.5, 1)
        writer.flush()
    """

    _instances = 0

    def __init__(self, log_dir: str | os.PathLike, filename_suffix: str = "") -> None:
        if not isinstance(log_dir, (str, os.PathLike)):
            raise TypeError(f"log_dir must be a path, got {log_dir!r}.")
        if not isinstance(filename_suffix, str):
            raise TypeError(f"filename_suffix must be a string, got {filename_suffix!r}.")
        self.log_dir = Path(log_dir)
        self.filename_suffix = filename_suffix
        self.path: Path | None = None
        self._handle: IO[bytes] | None = None
        ScalarEventWriter._instances += 1
        self._number = ScalarEventWriter._instances  # two writers of one process in one second get distinct files

    def _open(self) -> IO[bytes]:
        if self._handle is None:
            ensure_writable_dir(self.log_dir)
            now = time.time()
            name = f"events.out.tfevents.{int(now)}.{socket.gethostname()}.{os.getpid()}.{self._number}"
            self.path = self.log_dir / f"{name}{self.filename_suffix}"
            self._handle = open(self.path, "ab")  # noqa: SIM115 (kept open for the whole run, closed in close())
            self._handle.write(_record(_event(now, step=0, file_version=_FILE_VERSION)))
        return self._handle

    def add_scalar(
        self, tag: str, scalar_value: Any, global_step: int | None = None, walltime: float | None = None, **_: Any
    ) -> None:
        """Append one point of the series ``tag``.

        Args:
            tag: the series name (``/`` groups series in TensorBoard).
            scalar_value: a number or a one-element tensor.
            global_step: the x coordinate (iteration or epoch); 0 when None.
            walltime: seconds since the epoch; now when None.

        Raises:
            TypeError: ``tag`` is not a string or ``scalar_value`` is not a scalar.
        """
        if not isinstance(tag, str):
            raise TypeError(f"tag must be a string, got {tag!r}.")
        value = _scalar(scalar_value)
        if value is None:
            raise TypeError(f"scalar_value of {tag!r} must be a number or a one-element tensor, got {scalar_value!r}.")
        step = 0 if global_step is None else int(global_step)
        wall_time = time.time() if walltime is None else float(walltime)
        self._open().write(_record(_event(wall_time, step=step, summary=_scalar_summary(tag, value))))

    def flush(self) -> None:
        """Push the written records to disk."""
        if self._handle is not None:
            self._handle.flush()
            os.fsync(self._handle.fileno())

    def close(self) -> None:
        """Flush and close the file; a later scalar starts a new file."""
        if self._handle is not None:
            self.flush()
            self._handle.close()
            self._handle = None

    def __enter__(self) -> ScalarEventWriter:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def _read_varint(data: bytes, position: int) -> tuple[int, int]:
    result, shift = 0, 0
    while True:
        if position >= len(data):
            raise ValueError("truncated varint")
        byte = data[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, position
        shift += 7


def _fields(message: bytes) -> list[tuple[int, int, Any]]:
    """``(field number, wire type, value)`` of a protocol-buffer message; unknown fields are parsed and kept."""
    fields: list[tuple[int, int, Any]] = []
    position = 0
    while position < len(message):
        key, position = _read_varint(message, position)
        field, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value, position = _read_varint(message, position)
        elif wire_type == 1:
            value, position = message[position : position + 8], position + 8
        elif wire_type == 2:
            length, position = _read_varint(message, position)
            value, position = message[position : position + length], position + length
        elif wire_type == 5:
            value, position = message[position : position + 4], position + 4
        else:
            raise ValueError(f"unsupported wire type {wire_type}")
        if position > len(message):
            raise ValueError("truncated field")
        fields.append((field, wire_type, value))
    return fields


def _iter_records(path: Path) -> list[bytes]:
    data = path.read_bytes()
    records, position = [], 0
    while position + 12 <= len(data):
        header = data[position : position + 8]
        (length,) = struct.unpack("<Q", header)
        (header_crc,) = struct.unpack("<I", data[position + 8 : position + 12])
        end = position + 12 + length + 4
        if header_crc != _masked_crc(header) or end > len(data):
            break  # a torn last record (killed writer) or a foreign file: keep what was read
        payload = data[position + 12 : position + 12 + length]
        (payload_crc,) = struct.unpack("<I", data[end - 4 : end])
        if payload_crc != _masked_crc(payload):
            break
        records.append(payload)
        position = end
    return records


def read_scalars(path: str | os.PathLike) -> dict[str, list[tuple[int, float]]]:
    """Read the scalar series of TensorBoard event files.

    Reads what :class:`ScalarEventWriter` writes and the ``simple_value`` scalars of ``torch.utils.tensorboard``
    and ``tensorboardX``; other summaries (images, histograms, tensors) are skipped.

    Args:
        path: an event file, or a folder whose ``*tfevents*`` files (searched recursively) are read in name order.

    Returns:
        ``{tag: [(step, value), ...]}`` in the order written.

    Raises:
        FileNotFoundError: ``path`` does not exist, or a folder holds no event file.
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*tfevents*") if p.is_file())
        if not files:
            raise FileNotFoundError(f"{path}: no TensorBoard event file (*tfevents*) in this folder.")
    elif path.is_file():
        files = [path]
    else:
        raise FileNotFoundError(f"{path}: no such event file or folder.")
    series: dict[str, list[tuple[int, float]]] = {}
    for event_file in files:
        for payload in _iter_records(event_file):
            event = _fields(payload)
            step = next((value for field, _, value in event if field == 2), 0)
            step = step - (1 << 64) if step >= 1 << 63 else step
            for field, _, summary in event:
                if field != 5:
                    continue
                for value_field, _, value_message in _fields(summary):
                    if value_field != 1:
                        continue
                    value_fields = {number: value for number, _, value in _fields(value_message)}
                    if 1 in value_fields and 2 in value_fields:
                        (number,) = struct.unpack("<f", value_fields[2])
                        series.setdefault(value_fields[1].decode("utf-8"), []).append((int(step), float(number)))
    return series


# --------------------------------------------------------------------------------------------------------- MLflow


def mlflow_available() -> bool:
    """Whether MLflow can be imported (the ``tracking`` extra is installed)."""
    return importlib.util.find_spec("mlflow") is not None


def mlflow_settings(experiment_name: str | None = None) -> dict[str, Any]:
    """MONAI's default MLflow tracking settings, logging every loss component.

    ``monai.bundle.run(..., tracking=mlflow_settings())`` adds an ``MLFlowHandler`` to the trainer, the validator
    and the evaluator, as ``--tracking mlflow`` does (``monai.bundle.utils.DEFAULT_MLFLOW_SETTINGS``: a local SQLite
    store ``<output_dir>/mlruns.db`` with artifacts in ``<output_dir>/mlruns``, no server; the executed config saved as
    ``<output_dir>/config_<date>.json`` and logged as an artifact). usseg changes two things: the trainer logs
    :func:`loss_components` (MONAI logs only ``loss``), and the experiment is ``experiment_name``
    (``usseg run`` passes the bundle's folder name). Config keys of the settings (``tracking_uri``,
    ``experiment_name``, ``run_name``, ``save_execute_config``) can be overridden on the command line.

    Args:
        experiment_name: the MLflow experiment; None for ``"usseg"``.

    Returns:
        A settings dict for the ``tracking`` argument of ``monai.bundle.run`` / ``ConfigWorkflow``.

    Raises:
        TypeError: ``experiment_name`` is neither None nor a string.
    """
    from monai.bundle.utils import DEFAULT_MLFLOW_SETTINGS

    if experiment_name is not None and not isinstance(experiment_name, str):
        raise TypeError(f"experiment_name must be a string or None, got {experiment_name!r}.")
    settings = copy.deepcopy(DEFAULT_MLFLOW_SETTINGS)
    configs = settings["configs"]
    configs["experiment_name"] = "usseg" if experiment_name is None else experiment_name
    # an import item: MONAI evaluates every "$import" item first, so the expression below works in any config
    configs["usseg_tracking_import"] = "$from usseg.handlers import tracking as usseg_tracking"
    configs["trainer"]["output_transform"] = "$usseg_tracking.loss_components"
    return settings
