# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""Losses as small composable modules; each docstring gives the formula and the paper it comes from."""

from __future__ import annotations

from usseg.losses.consistency import MaskedCrossEntropyLoss

__all__ = ["MaskedCrossEntropyLoss"]
