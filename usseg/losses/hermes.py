# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""The segmentation and inter-task losses of Hermes [0] (``Code/loss/loss_manager.py``, ``Code/seg_train.py``).

- [0] Zhang et al., 2025, Hermes, https://arxiv.org/abs/2508.02265
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MaskedSoftDiceLoss", "HermesSegmentationLoss", "InterTaskConsistencyLoss"]


class MaskedSoftDiceLoss(nn.Module):
    r"""Class-weighted soft Dice loss over the whole batch, with ignored pixels (the released ``DiceLoss_``).

    With softmax probabilities :math:`p_c`, one-hot targets :math:`t_c` and kept pixels :math:`K` (all pixels of
    all images pooled):

    .. math::
        D_c = 1 - \frac{2 \sum_K p_c t_c + s}{\sum_K p_c^2 + \sum_K t_c^2 + s}, \qquad
        \mathcal{L} = \frac{1}{C} \sum_c w_c D_c

    With the released weights ``(0, 1)`` this is half the tumour Dice loss. ``s = 1e-5``. An all-ignored batch
    gives :math:`w_c (1 - 1)/C = 0` per class: never NaN.

    Args:
        class_weights: :math:`w_c`, one per class ((0, 1) as released: tumour only).
        smooth: :math:`s`.

    Raises:
        ValueError: an empty weight list or a negative ``smooth``.
    """

    def __init__(self, class_weights: Sequence[float] = (0.0, 1.0), smooth: float = 1e-5) -> None:
        super().__init__()
        if len(class_weights) < 2:
            raise ValueError(f"class_weights needs one weight per class (>= 2), got {class_weights!r}.")
        if smooth < 0:
            raise ValueError(f"smooth must be >= 0, got {smooth!r}.")
        self.register_buffer("class_weights", torch.tensor([float(w) for w in class_weights]), persistent=False)
        self.smooth = float(smooth)

    def forward(self, logits: torch.Tensor, target: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """Shape: ``logits`` (B, C, H, W), ``target`` (B, H, W) or (B, 1, H, W) integer, ``keep`` (B, H, W) -> scalar.

        Raises:
            ValueError: shapes that do not fit or a class count unlike ``class_weights``.
        """
        num_classes = logits.shape[1]
        if num_classes != len(self.class_weights):
            raise ValueError(f"logits have {num_classes} classes but class_weights has {len(self.class_weights)}.")
        if target.ndim == 4:
            target = target[:, 0]
        if target.shape != logits.shape[:1] + logits.shape[2:]:
            raise ValueError(f"target shape {tuple(target.shape)} does not fit logits {tuple(logits.shape)}.")
        probs = logits.float().softmax(dim=1)
        onehot = F.one_hot(target.long().clamp(0, num_classes - 1), num_classes).permute(0, 3, 1, 2).float()
        weight = torch.ones_like(target, dtype=probs.dtype) if keep is None else keep.to(probs.dtype)
        if weight.shape != target.shape:
            raise ValueError(f"keep shape {tuple(weight.shape)} does not fit target {tuple(target.shape)}.")
        weight = weight[:, None]
        intersect = (probs * onehot * weight).sum(dim=(0, 2, 3))
        pred_sum = (probs * probs * weight).sum(dim=(0, 2, 3))
        target_sum = (onehot * weight).sum(dim=(0, 2, 3))
        dice_loss = 1.0 - (2.0 * intersect + self.smooth) / (pred_sum + target_sum + self.smooth)
        return (self.class_weights.to(dice_loss.device) * dice_loss).sum() / num_classes


class HermesSegmentationLoss(nn.Module):
    r"""The released supervised segmentation loss: ``(ce_weight * CE + MaskedSoftDice) / 2``.

    With the defaults, :math:`\mathcal{L} = 0.25\,\mathrm{CE} + 0.25\,(1 - \mathrm{softDice}_{tumour})`
    (methods.md section 1.2).

    Args:
        ce_weight: weight of the cross-entropy inside the bracket (0.5).
        class_weights: Dice class weights ((0, 1)).
    """

    def __init__(self, ce_weight: float = 0.5, class_weights: Sequence[float] = (0.0, 1.0)) -> None:
        super().__init__()
        if ce_weight < 0:
            raise ValueError(f"ce_weight must be >= 0, got {ce_weight!r}.")
        self.ce_weight = float(ce_weight)
        self.dice = MaskedSoftDiceLoss(class_weights)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Shape: ``logits`` (B, C, H, W), ``target`` (B, H, W) or (B, 1, H, W) -> scalar."""
        if target.ndim == 4:
            target = target[:, 0]
        ce = F.cross_entropy(logits.float(), target.long())
        return (self.ce_weight * ce + self.dice(logits, target)) / 2.0


class InterTaskConsistencyLoss(nn.Module):
    r"""Inter-task consistency :math:`1 - \frac{1}{B}\sum_b \cos(c^{cls}_b, c^{seg}_b)` (``segAndclass_consistency``).

    Shape: two (B, D) tensors -> scalar. Zero vectors (possible after the heads' final ReLU) have cosine 0,
    never NaN.
    """

    def forward(self, cls_vector: torch.Tensor, seg_vector: torch.Tensor) -> torch.Tensor:
        if cls_vector.shape != seg_vector.shape or cls_vector.ndim != 2:
            raise ValueError(
                f"expected two (B, D) tensors of one shape, got {tuple(cls_vector.shape)} "
                f"and {tuple(seg_vector.shape)}."
            )
        cosine = (F.normalize(cls_vector.float(), dim=1) * F.normalize(seg_vector.float(), dim=1)).sum(dim=1)
        return 1.0 - cosine.mean()
