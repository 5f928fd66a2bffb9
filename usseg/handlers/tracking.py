# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""Experiment tracking helpers: what of ``engine.state.output`` is worth a time series."""

from __future__ import annotations

from collections.abc import Mapping
from numbers import Number
from typing import Any

import torch

__all__ = ["loss_components"]


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
