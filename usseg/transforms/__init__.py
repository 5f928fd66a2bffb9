# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""Step 3 of the data flow: ultrasound transforms in MONAI's conventions (array + dictionary versions).

Import them from here (``usseg.transforms.RandSpeckleNoised``) or use the dotted path in a bundle config
(``_target_: usseg.transforms.RandSpeckleNoised``). The package is ``usseg.transforms``, never a top-level
``transforms``, which would collide with other installs (``docs/architecture.md``).
"""

from __future__ import annotations

from usseg.transforms.checks import (
    CheckFinited,
    CheckMaskMatchesImaged,
    source_file,
)
from usseg.transforms.geometry_checks import (
    CheckSameGeometryD,
    CheckSameGeometryd,
    CheckSameGeometryDict,
)
from usseg.transforms.intensity import (
    RandAcousticShadow,
    RandAcousticShadowD,
    RandAcousticShadowd,
    RandAcousticShadowDict,
    RandDepthAttenuation,
    RandDepthAttenuationD,
    RandDepthAttenuationd,
    RandDepthAttenuationDict,
    RandSpeckleNoise,
    RandSpeckleNoiseD,
    RandSpeckleNoised,
    RandSpeckleNoiseDict,
)
from usseg.transforms.spatial import (
    SCAN_CONE_BOX_KEY,
    CropToScanCone,
    CropToScanConeD,
    CropToScanConed,
    CropToScanConeDict,
    ScanConeMask,
    ScanConeMaskD,
    ScanConeMaskd,
    ScanConeMaskDict,
    estimate_scan_cone,
)
from usseg.transforms.video import (
    DEFAULT_CACHE_BYTES,
    MIXING_MODES,
    PAIR_PRESETS,
    FrameSource,
    VideoFramePair,
    VideoFramePairD,
    VideoFramePaird,
    VideoFramePairDict,
    default_frame_source,
)
from usseg.transforms.views import (
    WeakStrongViewsD,
    WeakStrongViewsd,
    WeakStrongViewsDict,
    hermes_geometric,
    hermes_strong,
)

__all__ = [
    "CheckSameGeometryd",
    "CheckSameGeometryD",
    "CheckSameGeometryDict",
    "CheckFinited",
    "CheckMaskMatchesImaged",
    "CropToScanCone",
    "CropToScanConeD",
    "CropToScanConeDict",
    "CropToScanConed",
    "DEFAULT_CACHE_BYTES",
    "FrameSource",
    "MIXING_MODES",
    "PAIR_PRESETS",
    "RandAcousticShadow",
    "RandAcousticShadowD",
    "RandAcousticShadowDict",
    "RandAcousticShadowd",
    "RandDepthAttenuation",
    "RandDepthAttenuationD",
    "RandDepthAttenuationDict",
    "RandDepthAttenuationd",
    "RandSpeckleNoise",
    "RandSpeckleNoiseD",
    "RandSpeckleNoiseDict",
    "RandSpeckleNoised",
    "SCAN_CONE_BOX_KEY",
    "ScanConeMask",
    "ScanConeMaskD",
    "ScanConeMaskDict",
    "ScanConeMaskd",
    "VideoFramePair",
    "VideoFramePairD",
    "VideoFramePairDict",
    "VideoFramePaird",
    "WeakStrongViewsD",
    "WeakStrongViewsDict",
    "WeakStrongViewsd",
    "default_frame_source",
    "estimate_scan_cone",
    "hermes_geometric",
    "hermes_strong",
    "source_file",
]
