# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""Ultrasound geometry: scan-cone estimation, masking of burned-in text outside the cone, cropping to the cone."""

from __future__ import annotations

from usseg.transforms.spatial.array import SCAN_CONE_BOX_KEY, CropToScanCone, ScanConeMask, estimate_scan_cone
from usseg.transforms.spatial.dictionary import (
    CropToScanConeD,
    CropToScanConed,
    CropToScanConeDict,
    ScanConeMaskD,
    ScanConeMaskd,
    ScanConeMaskDict,
)

__all__ = [
    "SCAN_CONE_BOX_KEY",
    "estimate_scan_cone",
    "ScanConeMask",
    "ScanConeMaskd",
    "ScanConeMaskD",
    "ScanConeMaskDict",
    "CropToScanCone",
    "CropToScanConed",
    "CropToScanConeD",
    "CropToScanConeDict",
]
