# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""Device, precision and memory-layout choices shared by every usseg engine.

MONAI's engines only autocast on CUDA (``torch.autocast("cuda")``); on a CPU they silently train in fp32. usseg
engines instead autocast on whatever device they run on, which is what makes bf16 training on CPUs with AVX-512
BF16 (1.5-5x faster here, ``docs/architecture.md``) possible.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from typing import Any

import torch

__all__ = [
    "PRECISIONS",
    "resolve_device",
    "autocast",
    "needs_grad_scaler",
    "to_channels_last",
    "plain_tensor",
    "unpack_batch",
]

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Turn ``"auto"`` into the device a run should use.

    ``"auto"`` picks ``cuda:<LOCAL_RANK>`` when CUDA is available (so one config serves single-GPU runs and every
    ``torchrun`` rank), else the CPU. Any other value is passed to ``torch.device`` unchanged.
    """
    if isinstance(device, torch.device):
        return device
    if device != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
    return torch.device("cpu")


def _check_precision(precision: str, device: torch.device) -> torch.dtype | None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}.")
    if precision == "fp16" and device.type == "cpu":
        raise ValueError("precision 'fp16' is not supported on the CPU; use 'bf16' or 'fp32'.")
    return PRECISIONS[precision]


@contextlib.contextmanager
def autocast(device: torch.device, precision: str = "fp32") -> Iterator[None]:
    """Autocast on ``device`` to the dtype named by ``precision`` (``fp32`` disables autocast)."""
    dtype = _check_precision(precision, device)
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


def needs_grad_scaler(device: torch.device, precision: str) -> bool:
    """fp16 gradients underflow without loss scaling; bf16 has fp32's exponent range and needs none."""
    return _check_precision(precision, device) is torch.float16


def to_channels_last(tensor: torch.Tensor) -> torch.Tensor:
    """Return a channels-last copy of a 4D (N, C, H, W) tensor; other ranks are returned unchanged."""
    if isinstance(tensor, torch.Tensor) and tensor.ndim == 4:
        return tensor.contiguous(memory_format=torch.channels_last)
    return tensor


def plain_tensor(value: Any) -> Any:
    """A MetaTensor's data without its metadata (anything else unchanged): losses need only the numbers, and plain
    tensors skip MetaTensor's per-operation dispatch overhead."""
    return value.as_tensor() if hasattr(value, "as_tensor") else value


def unpack_batch(batch: Sequence) -> tuple[Any, Any, tuple, dict]:
    """``(inputs, targets, args, kwargs)`` of what a MONAI ``prepare_batch`` returns: ``(inputs, targets)`` or
    ``(inputs, targets, args, kwargs)``."""
    if len(batch) == 2:
        return batch[0], batch[1], (), {}
    return batch[0], batch[1], tuple(batch[2]), dict(batch[3])
