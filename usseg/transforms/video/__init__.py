# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""Video transforms: USCL and Meta-USCL positive pairs from the frames of one video, and their view augmentations."""

from __future__ import annotations

from usseg.transforms.video.array import MIXING_MODES, PAIR_PRESETS, VideoFramePair
from usseg.transforms.video.augment import (
    AUGMENT_PRESETS,
    AntialiasedResize,
    RandColorJitter,
    RandResizedCrop,
    contrastive_augmentation,
)
from usseg.transforms.video.dictionary import (
    DEFAULT_CACHE_BYTES,
    FrameSource,
    VideoFramePairD,
    VideoFramePaird,
    VideoFramePairDict,
    default_frame_source,
)

__all__ = [
    "VideoFramePair",
    "VideoFramePaird",
    "VideoFramePairD",
    "VideoFramePairDict",
    "FrameSource",
    "default_frame_source",
    "DEFAULT_CACHE_BYTES",
    "PAIR_PRESETS",
    "MIXING_MODES",
]
__all__ += ["AUGMENT_PRESETS", "AntialiasedResize", "RandColorJitter", "RandResizedCrop", "contrastive_augmentation"]
