# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""Pseudo-label policies: which predictions of the teacher become training targets.

A policy is an ``nn.Module`` so that any running statistics it keeps are buffers: they follow ``.to(device)`` and are
saved by ``state_dict()`` (and so by a ``CheckpointSaver``). It returns a target and a mask and never mutates the
trainer; the trainer logs what the policy returns.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ConfidenceThreshold"]


class ConfidenceThreshold(nn.Module):
    """Hard pseudo-labels kept where the teacher's confidence reaches a fixed threshold, as in FixMatch [0].

    Works for classification probabilities ``(B, C)`` and for segmentation probabilities ``(B, C, H, W)``: the
    class axis is always axis 1.

    - [0] Sohn et al., 2020, FixMatch: Simplifying Semi-Supervised Learning with Consistency and Confidence,
      https://arxiv.org/abs/2001.07685

    Args:
        threshold: minimum max-probability for a prediction to be kept, in [0, 1].
    """

    def __init__(self, threshold: float = 0.95) -> None:
        super().__init__()
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must lie in [0, 1], got {threshold}.")
        self.threshold = threshold

    @torch.no_grad()
    def forward(self, probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(target, mask)``: ``target`` is the argmax over axis 1 (long), ``mask`` is 1.0 where it is kept.

        Shape: ``probs`` (B, C, ...) -> ``target`` and ``mask`` (B, ...).
        """
        if probs.ndim < 2:
            raise ValueError(f"probs must have a class axis at dim 1, got shape {tuple(probs.shape)}.")
        confidence, target = probs.max(dim=1)
        return target, (confidence >= self.threshold).to(probs.dtype)
