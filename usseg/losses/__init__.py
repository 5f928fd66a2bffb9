# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""Losses as small composable modules; each docstring gives the formula and the paper it comes from."""

from __future__ import annotations

from usseg.losses.asc import ASCLoss, SoftDiceBCELoss
from usseg.losses.consistency import MaskedCrossEntropyLoss
from usseg.losses.cross_network_contrast import CrossNetworkContrastLoss, PrototypeContrastLoss
from usseg.losses.cross_supervision import CrossSupervisionLoss, SupervisedDiceCELoss
from usseg.losses.hermes import HermesSegmentationLoss, InterTaskConsistencyLoss, MaskedSoftDiceLoss
from usseg.losses.ntxent import NTXentLoss
from usseg.losses.pixel_contrast import RELEASED_MIN_ANCHOR_FRACTION, PixelContrastLoss, pixel_contrast_labels
from usseg.losses.supcon import SupConLoss

__all__ = [
    "ASCLoss",
    "CrossNetworkContrastLoss",
    "CrossSupervisionLoss",
    "HermesSegmentationLoss",
    "InterTaskConsistencyLoss",
    "MaskedCrossEntropyLoss",
    "MaskedSoftDiceLoss",
    "NTXentLoss",
    "PixelContrastLoss",
    "PrototypeContrastLoss",
    "SoftDiceBCELoss",
    "SupConLoss",
    "SupervisedDiceCELoss",
    "pixel_contrast_labels",
    "RELEASED_MIN_ANCHOR_FRACTION",
]
