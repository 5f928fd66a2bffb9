# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""Ultrasound intensity augmentations: speckle, depth attenuation with TGC, acoustic shadowing."""

from __future__ import annotations

from usseg.transforms.intensity.array import RandAcousticShadow, RandDepthAttenuation, RandSpeckleNoise
from usseg.transforms.intensity.dictionary import (
    RandAcousticShadowD,
    RandAcousticShadowd,
    RandAcousticShadowDict,
    RandDepthAttenuationD,
    RandDepthAttenuationd,
    RandDepthAttenuationDict,
    RandSpeckleNoiseD,
    RandSpeckleNoised,
    RandSpeckleNoiseDict,
)

__all__ = [
    "RandSpeckleNoise",
    "RandSpeckleNoised",
    "RandSpeckleNoiseD",
    "RandSpeckleNoiseDict",
    "RandDepthAttenuation",
    "RandDepthAttenuationd",
    "RandDepthAttenuationD",
    "RandDepthAttenuationDict",
    "RandAcousticShadow",
    "RandAcousticShadowd",
    "RandAcousticShadowD",
    "RandAcousticShadowDict",
]
