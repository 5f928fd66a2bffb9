# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""usseg: label-efficient ultrasound image analysis on MONAI.

The package follows the data flow of a study:

``usseg.data`` (read files, build datalists and splits, the phantom) ->
``usseg.transforms`` (ultrasound augmentations and view builders) ->
``usseg.engines`` and ``usseg.handlers`` (training) ->
``usseg.metrics`` (reports and figures) -> ``usseg.cli`` (the ``usseg`` command).

Subpackages are imported lazily by the caller; importing ``usseg`` itself stays cheap.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
