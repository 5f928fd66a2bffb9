# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""Consistency losses between a student prediction and a teacher's pseudo-label."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MaskedCrossEntropyLoss"]


class MaskedCrossEntropyLoss(nn.Module):
    r"""Cross-entropy against hard pseudo-labels, counted only where a mask accepts them (FixMatch [0]).

    For student logits :math:`s`, pseudo-labels :math:`\hat y` and an acceptance mask :math:`m \in \{0, 1\}` over
    :math:`N` positions (images, or pixels of all images):

    .. math::
        \mathcal{L} = \frac{1}{N} \sum_{i=1}^{N} m_i \, \mathrm{CE}(s_i, \hat y_i)

    The normaliser is :math:`N`, not :math:`\sum_i m_i`, as in FixMatch: when the teacher is unsure and few positions
    are accepted the loss shrinks instead of amplifying the few survivors. ``normalize="accepted"`` divides by
    :math:`\max(1, \sum_i m_i)` instead. An all-rejected batch gives exactly 0 (with a gradient of 0), never NaN.

    - [0] Sohn et al., 2020, FixMatch, https://arxiv.org/abs/2001.07685

    Args:
        normalize: ``"all"`` (divide by N) or ``"accepted"`` (divide by the number of accepted positions).

    Examples:
        >>> loss_fn = MaskedCrossEntropyLoss()
        >>> logits = torch.randn(2, 3, 8, 8)
        >>> target, mask = logits.detach().softmax(1).max(1)[1], torch.ones(2, 8, 8)
        >>> loss = loss_fn(logits, target, mask)
    """

    def __init__(self, normalize: str = "all") -> None:
        super().__init__()
        if normalize not in ("all", "accepted"):
            raise ValueError(f"normalize must be 'all' or 'accepted', got {normalize!r}.")
        self.normalize = normalize

    def forward(self, logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Shape: ``logits`` (B, C, ...), ``target`` (B, ...) integer, ``mask`` (B, ...) -> scalar."""
        if target.shape != mask.shape or logits.shape[:1] + logits.shape[2:] != target.shape:
            raise ValueError(
                f"shapes do not match: logits {tuple(logits.shape)}, target {tuple(target.shape)}, "
                f"mask {tuple(mask.shape)} (expected logits (B, C, ...) and target/mask (B, ...))."
            )
        per_position = F.cross_entropy(logits.float(), target.long(), reduction="none")
        weighted = per_position * mask.float()
        if self.normalize == "all":
            return weighted.mean()
        return weighted.sum() / mask.float().sum().clamp_min(1.0)
