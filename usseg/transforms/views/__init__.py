# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""Multi-view builders: weak and strong views sharing one geometry, for FixMatch-style methods."""

from __future__ import annotations

from usseg.transforms.views.dictionary import (
    WeakStrongViewsD,
    WeakStrongViewsd,
    WeakStrongViewsDict,
    hermes_geometric,
    hermes_strong,
)

__all__ = ["WeakStrongViewsd", "WeakStrongViewsD", "WeakStrongViewsDict", "hermes_geometric", "hermes_strong"]
