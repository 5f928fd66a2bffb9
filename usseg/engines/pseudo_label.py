# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""Pseudo-label policies: which predictions of the teacher become training targets.

A policy is an ``nn.Module`` so that any running statistics it keeps are buffers: they follow ``.to(device)`` and are
saved by ``state_dict()`` (and so by a ``CheckpointSaver``). It returns a target and a mask and never mutates the
trainer; the trainer logs what the policy returns.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["ConfidenceThreshold", "DualThreshold", "DualThresholdResult", "COMBINE_RULES"]

COMBINE_RULES = ("and", "or")


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


@dataclass
class DualThresholdResult:
    """What :class:`DualThreshold` decides for one batch (all tensors detached).

    Attributes:
        target: (B, ...) long pseudo-labels (argmax).
        mask: (B, ...) float, 1 where the combine rule keeps the position.
        confident: (B, ...) bool, ``p_max > tau_{target}``.
        uncertain: (B, ...) bool, ``H > theta_H``.
        class_thresholds: (C,) the thresholds :math:`\tau_c` used.
        class_ratios: (C,) the class ratios :math:`r_c` used.
        entropy_threshold: :math:`\theta_H(t)`.
    """

    target: torch.Tensor
    mask: torch.Tensor
    confident: torch.Tensor
    uncertain: torch.Tensor
    class_thresholds: torch.Tensor
    class_ratios: torch.Tensor
    entropy_threshold: float

    def __iter__(self) -> Iterator[torch.Tensor]:
        # unpacks as (target, mask): the pseudo-label policy contract of SemiSupervisedTrainer
        return iter((self.target, self.mask))

    def statistics(self, prefix: str = "") -> dict[str, float]:
        """Floats for ``engine.state.output``: accepted, confident and certain fractions, thresholds, ratios."""
        stats = {
            f"{prefix}accept_rate": float(self.mask.float().mean()),
            f"{prefix}confident_rate": float(self.confident.float().mean()),
            f"{prefix}certain_rate": float((~self.uncertain).float().mean()),
            f"{prefix}entropy_threshold": float(self.entropy_threshold),
        }
        for c, (tau, ratio) in enumerate(zip(self.class_thresholds.tolist(), self.class_ratios.tolist())):
            stats[f"{prefix}threshold_c{c}"] = float(tau)
            stats[f"{prefix}ratio_c{c}"] = float(ratio)
        return stats


class DualThreshold(nn.Module):
    """Hermes' dual-threshold pseudo-label selection [0]: class-wise adaptive confidence plus ramped entropy.

    For probabilities ``p`` (class axis 1) with pseudo-labels ``y = argmax p`` over N positions (samples, or
    pixels of all images):

    1. class ratios ``r_c = #{y == c} / N`` from this batch (``ratio_source="batch"``, released) or an EMA of them
       (``"ema"``: ``r <- m r + (1 - m) r_batch``, started at ``1 / C``);
    2. class-wise thresholds ``tau_c = tau_min + (tau_max - tau_min) * r_c``; confident iff ``p_max > tau_y``;
    3. entropy ``H = -sum_c p_c log(p_c + 1e-6)`` against ``theta_H(t) = (h0 + (1 - h0) * sigmoid_rampup(t, T))
       * ln C``; certain iff ``H < theta_H``, uncertain iff ``H > theta_H``;
    4. ``combine="and"`` keeps a position iff confident AND certain (Hermes classification); ``"or"`` keeps it
       unless it is neither confident nor certain, i.e. ignores it iff NOT confident AND uncertain (Hermes
       segmentation Dice).

    The EMA ratio is a buffer (moves with ``.to()``, saved by ``state_dict()``). With ``gather_distributed`` the
    class counts are summed over ranks, so every rank uses the same thresholds.

    - [0] Zhang et al., 2025, Hermes, https://arxiv.org/abs/2508.02265 (``get_classwise_thresholds``,
      ``filter_pseudo_labels_by_threshold`` and the inline entropy threshold of ``Code/seg_train.py``)

    Args:
        num_classes: C.
        min_threshold: tau_min (0.5).
        max_threshold: tau_max (0.95).
        entropy_start: h0 (0.75).
        rampup_length: T in iterations (the training length, 3000 as released).
        combine: ``"and"`` or ``"or"``.
        ratio_source: ``"batch"`` or ``"ema"``.
        ratio_momentum: m of the EMA.
        gather_distributed: sum class counts over ``torch.distributed`` ranks.

    Raises:
        ValueError: a value out of range (quoted).
    """

    def __init__(
        self,
        num_classes: int = 2,
        min_threshold: float = 0.5,
        max_threshold: float = 0.95,
        entropy_start: float = 0.75,
        rampup_length: int = 3000,
        combine: str = "and",
        ratio_source: str = "batch",
        ratio_momentum: float = 0.999,
        gather_distributed: bool = False,
    ) -> None:
        super().__init__()
        if int(num_classes) != num_classes or num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}.")
        if not 0.0 <= min_threshold <= max_threshold <= 1.0:
            raise ValueError(
                f"need 0 <= min_threshold <= max_threshold <= 1, got {min_threshold!r}, {max_threshold!r}."
            )
        if not 0.0 <= entropy_start <= 1.0:
            raise ValueError(f"entropy_start must lie in [0, 1], got {entropy_start!r}.")
        if int(rampup_length) != rampup_length or rampup_length < 0:
            raise ValueError(f"rampup_length must be an integer >= 0, got {rampup_length!r}.")
        if combine not in COMBINE_RULES:
            raise ValueError(f"combine must be one of {COMBINE_RULES}, got {combine!r}.")
        if ratio_source not in ("batch", "ema"):
            raise ValueError(f"ratio_source must be 'batch' or 'ema', got {ratio_source!r}.")
        if not 0.0 <= ratio_momentum < 1.0:
            raise ValueError(f"ratio_momentum must lie in [0, 1), got {ratio_momentum!r}.")
        self.num_classes = int(num_classes)
        self.min_threshold, self.max_threshold = float(min_threshold), float(max_threshold)
        self.entropy_start = float(entropy_start)
        self.rampup_length = int(rampup_length)
        self.combine = combine
        self.ratio_source = ratio_source
        self.ratio_momentum = float(ratio_momentum)
        self.gather_distributed = bool(gather_distributed)
        self.register_buffer("ema_ratio", torch.full((self.num_classes,), 1.0 / self.num_classes))

    def entropy_threshold(self, step: int) -> float:
        """``theta_H(step) = (h0 + (1 - h0) * sigmoid_rampup(step, T)) * ln C``."""
        if self.rampup_length <= 0:
            ramp = 1.0
        else:
            t = min(max(float(step), 0.0), self.rampup_length) / self.rampup_length
            ramp = math.exp(-5.0 * (1.0 - t) ** 2)
        return (self.entropy_start + (1.0 - self.entropy_start) * ramp) * math.log(self.num_classes)

    def class_thresholds(self, ratios: torch.Tensor) -> torch.Tensor:
        """``tau_c = tau_min + (tau_max - tau_min) * r_c`` for ratios (C,)."""
        return self.min_threshold + (self.max_threshold - self.min_threshold) * ratios

    @torch.no_grad()
    def forward(self, probs: torch.Tensor, step: int = 0) -> DualThresholdResult:
        """Select pseudo-labels.

        Args:
            probs: (B, C) or (B, C, H, W) probabilities.
            step: the 0-based training iteration t (drives the entropy ramp).

        Returns:
            a :class:`DualThresholdResult`; it unpacks as ``(target, mask)``.

        Raises:
            ValueError: when the class axis does not have ``num_classes`` entries.
        """
        if probs.ndim < 2 or probs.shape[1] != self.num_classes:
            raise ValueError(f"probs must be (B, {self.num_classes}, ...), got shape {tuple(probs.shape)}.")
        probs = probs.float()
        confidence, target = probs.max(dim=1)
        counts = torch.bincount(target.flatten(), minlength=self.num_classes).float()
        if self.gather_distributed and dist.is_available() and dist.is_initialized():
            dist.all_reduce(counts)
        batch_ratio = counts / counts.sum().clamp_min(1.0)
        if self.ratio_source == "ema":
            self.ema_ratio.mul_(self.ratio_momentum).add_(
                batch_ratio.to(self.ema_ratio.device), alpha=1 - self.ratio_momentum
            )
            ratios = self.ema_ratio.clone()
        else:
            ratios = batch_ratio
        thresholds = self.class_thresholds(ratios.to(probs.device))
        confident = confidence > thresholds[target]
        entropy = -(probs * torch.log(probs + 1e-6)).sum(dim=1)
        theta = self.entropy_threshold(step)
        uncertain = entropy > theta
        # "or" ignores only positions that are neither confident nor certain (released segmentation rule)
        keep = confident & (entropy < theta) if self.combine == "and" else confident | ~uncertain
        return DualThresholdResult(
            target=target,
            mask=keep.to(probs.dtype),
            confident=confident,
            uncertain=uncertain,
            class_thresholds=thresholds,
            class_ratios=ratios,
            entropy_threshold=theta,
        )
