# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""Batch preparation for multi-view batches (weak/strong views of unlabeled images)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from monai.engines.utils import PrepareBatch

__all__ = ["PrepareWeakStrongBatch"]


class PrepareWeakStrongBatch(PrepareBatch):
    """Return the ``(weak, strong)`` views of an unlabeled batch made by ``usseg.transforms.WeakStrongViewsd``.

    Args:
        weak_key: batch key of the weak view (the teacher's input).
        strong_key: batch key of the strong view (the student's input).
    """

    def __init__(self, weak_key: str = "image_weak", strong_key: str = "image_strong") -> None:
        self.weak_key, self.strong_key = weak_key, strong_key

    def __call__(
        self,
        batchdata: Mapping[str, Any],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        missing = [k for k in (self.weak_key, self.strong_key) if k not in batchdata]
        if missing:
            raise KeyError(
                f"unlabeled batch has no {missing}; found keys {sorted(batchdata)}. Add "
                "usseg.transforms.WeakStrongViewsd to the unlabeled transforms, or set weak_key/strong_key."
            )
        return tuple(  # type: ignore[return-value]
            torch.as_tensor(batchdata[k]).to(device=device, non_blocking=non_blocking, **kwargs)
            for k in (self.weak_key, self.strong_key)
        )
