# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""Pixel contrast with hard-anchor sampling (ContrastiveSeg [0]), as used by Hermes [1] on pixel embeddings."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PixelContrastLoss", "RELEASED_MIN_ANCHOR_FRACTION", "pixel_contrast_labels"]

# the released threshold, 100 pixels of the 28x28 embedding grid of a 224x224 input, as a share of the grid: the same
# test at 224x224, and one that scales with the input (a count of 100 on the 16x16 grid of 128x128 asks for 39%)
RELEASED_MIN_ANCHOR_FRACTION = 100 / 28**2


def pixel_contrast_labels(
    pseudo_labels: torch.Tensor,
    confident: torch.Tensor,
    uncertain: torch.Tensor,
    ignore_index: int = -1,
    compat_int_mask: bool = False,
) -> torch.Tensor:
    """Pseudo-labels for pixel contrast: low-confidence and uncertain pixels set to ``ignore_index``.

    The released Hermes (``Code/seg_train.py``) subscripts with the integer tensor ``1 - int(high_conf)``, which
    PyTorch reads as image indices along dim 0: whole images #0 and #1 are blanked and low-confidence pixels
    elsewhere are kept (methods.md section 1.8 item 4). usseg uses the boolean mask ``~confident``;
    ``compat_int_mask=True`` reproduces the released indexing.

    Args:
        pseudo_labels: (B, H, W) integer pseudo-labels (argmax of the weak view).
        confident: (B, H, W) bool, the class-wise confidence test.
        uncertain: (B, H, W) bool, entropy above the threshold.
        ignore_index: label of ignored pixels.
        compat_int_mask: reproduce the released integer subscript.

    Returns:
        (B, H, W) long labels.

    Raises:
        ValueError: when the shapes differ.
    """
    if pseudo_labels.shape != confident.shape or confident.shape != uncertain.shape:
        raise ValueError(
            f"shapes differ: pseudo_labels {tuple(pseudo_labels.shape)}, confident {tuple(confident.shape)}, "
            f"uncertain {tuple(uncertain.shape)}."
        )
    labels = pseudo_labels.long().clone()
    labels[uncertain.bool()] = ignore_index
    if compat_int_mask:
        labels[(~confident.bool()).long()] = ignore_index  # advanced indexing on dim 0, exactly as released
    else:
        labels[~confident.bool()] = ignore_index
    return labels


class PixelContrastLoss(nn.Module):
    r"""Supervised pixel contrast with hard-anchor sampling [0], as in Hermes [1], plus an optional memory bank.

    Labels and predictions are nearest-resized to the embedding grid. In every image, each class with more than
    ``min_anchor_pixels`` labelled pixels is an anchor class; ``n`` pixels are sampled per anchor class, half
    "hard" (label differs from the prediction) and half "easy" when both are available, with
    ``n = min(max_samples // #anchor classes, max_views, smallest anchor class)``. For anchor :math:`i` with
    positives :math:`P(i)` (same class, itself excluded) and negatives :math:`N(i)`, with :math:`s = z \cdot z' / \tau`:

    .. math::
        \ell_i = -\frac{\tau}{\tau_b} \frac{1}{|P(i)|} \sum_{p \in P(i)}
            \log \frac{e^{s_{ip}}}{e^{s_{ip}} + \sum_{k \in N(i)} e^{s_{ik}}}, \qquad
        \mathcal{L} = \operatorname{mean}_i \ell_i

    (each positive has its own denominator, as ContrastiveSeg). With ``memory_size > 0`` a per-class queue of
    past (detached) pixel embeddings joins the contrast set as extra positives and negatives (the memory bank of
    the Hermes paper figure, absent from the released code); ``memory_per_update`` sampled anchors per class are
    enqueued after every call. The queue is a buffer: it is saved in ``state_dict()``.

    No anchor class gives 0 (with a zero gradient), a single class has no negatives and gives 0, and anchors without
    a positive are left out of the mean: the loss is never NaN. After each call, ``last_contrast_classes`` holds the
    number of distinct classes in its contrast set (anchors and memory): below 2 the call contributed nothing, which
    happens at every step when ``min_anchor_pixels`` exceeds what a lesion covers on the embedding grid.

    - [0] Wang et al., 2021, Exploring Cross-Image Pixel Contrast for Semantic Segmentation,
      https://arxiv.org/abs/2101.11939 (``tfzhou/ContrastiveSeg``)
    - [1] Zhang et al., 2025, Hermes, https://arxiv.org/abs/2508.02265 (``Code/loss/pixel_contrast.py``)

    Args:
        temperature: :math:`\tau` (0.07).
        base_temperature: :math:`\tau_b` (0.07).
        max_samples: anchor pixels per batch (1024).
        max_views: anchor pixels per class and image (100).
        min_anchor_pixels: a class is an anchor class with more pixels than this on the embedding grid: a count
            (>= 1) or, when in (0, 1), a fraction of the grid. Default: :data:`RELEASED_MIN_ANCHOR_FRACTION`, the
            released count of 100 at 224 x 224 expressed as a fraction; a smaller one lets small lesions contribute.
        ignore_index: label of ignored pixels.
        num_classes: classes (needed for the memory bank).
        memory_size: queue length per class; 0 disables the memory bank (released).
        memory_per_update: embeddings enqueued per class per call.
        embedding_dim: embedding size (needed for the memory bank).

    Raises:
        ValueError: a non-positive temperature, count or size, or a negative memory size.

    Examples:
        >>> loss_fn = PixelContrastLoss(min_anchor_pixels=4)
        >>> emb = torch.nn.functional.normalize(torch.randn(2, 16, 8, 8), dim=1)
        >>> labels = torch.randint(0, 2, (2, 32, 32))
        >>> loss = loss_fn(emb, labels, labels)
    """

    def __init__(
        self,
        temperature: float = 0.07,
        base_temperature: float = 0.07,
        max_samples: int = 1024,
        max_views: int = 100,
        min_anchor_pixels: float = RELEASED_MIN_ANCHOR_FRACTION,
        ignore_index: int = -1,
        num_classes: int = 2,
        memory_size: int = 0,
        memory_per_update: int = 10,
        embedding_dim: int = 256,
    ) -> None:
        super().__init__()
        for name, value in (("temperature", temperature), ("base_temperature", base_temperature)):
            if not value > 0:
                raise ValueError(f"{name} must be positive, got {value!r}.")
        for name, value in (
            ("max_samples", max_samples),
            ("max_views", max_views),
            ("num_classes", num_classes),
            ("memory_per_update", memory_per_update),
            ("embedding_dim", embedding_dim),
        ):
            if int(value) != value or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        if not min_anchor_pixels >= 0 or (min_anchor_pixels >= 1 and int(min_anchor_pixels) != min_anchor_pixels):
            raise ValueError(
                f"min_anchor_pixels must be a count >= 0 or a fraction in (0, 1), got {min_anchor_pixels!r}."
            )
        if int(memory_size) != memory_size or memory_size < 0:
            raise ValueError(f"memory_size must be an integer >= 0, got {memory_size!r}.")
        self.temperature, self.base_temperature = float(temperature), float(base_temperature)
        self.max_samples, self.max_views = int(max_samples), int(max_views)
        self.min_anchor_pixels = float(min_anchor_pixels)
        self.ignore_index = int(ignore_index)
        self.num_classes = int(num_classes)
        self.memory_size = int(memory_size)
        self.memory_per_update = int(memory_per_update)
        self.register_buffer("memory", torch.zeros(self.num_classes, self.memory_size, int(embedding_dim)))
        self.register_buffer("memory_count", torch.zeros(self.num_classes, dtype=torch.long))
        self.register_buffer("memory_pointer", torch.zeros(self.num_classes, dtype=torch.long))
        self.last_contrast_classes = 0

    def _threshold(self, grid_pixels: int) -> float:
        return self.min_anchor_pixels * grid_pixels if 0 < self.min_anchor_pixels < 1 else self.min_anchor_pixels

    @torch.no_grad()
    def _sample(
        self, labels: torch.Tensor, predictions: torch.Tensor, generator: torch.Generator | None
    ) -> tuple[list[tuple[int, torch.Tensor]], list[int]]:
        """Per anchor (image, class): the sampled flat pixel indices. labels/predictions: (B, h*w)."""
        threshold = self._threshold(labels.shape[1])
        pairs = []
        for b in range(labels.shape[0]):
            for c in torch.unique(labels[b]).tolist():
                if c == self.ignore_index:
                    continue
                count = int((labels[b] == c).sum())
                if count > threshold:
                    pairs.append((b, int(c), count))
        if not pairs:
            return [], []
        n_view = max(1, min(self.max_samples // len(pairs), self.max_views, min(p[2] for p in pairs)))
        samples, classes = [], []
        for b, c, _ in pairs:
            is_c = labels[b] == c
            hard = torch.nonzero(is_c & (predictions[b] != c)).flatten().cpu()
            easy = torch.nonzero(is_c & (predictions[b] == c)).flatten().cpu()
            half = n_view / 2
            if len(hard) >= half and len(easy) >= half:
                keep_hard = n_view // 2
                keep_easy = n_view - keep_hard
            elif len(hard) >= half:
                keep_easy = len(easy)
                keep_hard = n_view - keep_easy
            else:  # len(hard) + len(easy) >= n_view, so the easy pixels cover the rest
                keep_hard = len(hard)
                keep_easy = n_view - keep_hard
            hard = hard[torch.randperm(len(hard), generator=generator)[:keep_hard]]
            easy = easy[torch.randperm(len(easy), generator=generator)[:keep_easy]]
            samples.append((b, torch.cat([hard, easy]).to(labels.device)))
            classes.append(c)
        return samples, classes

    def forward(
        self,
        embedding: torch.Tensor,
        labels: torch.Tensor,
        predictions: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Compute the loss.

        Args:
            embedding: (B, D, h, w) pixel embeddings (L2-normalised, or the mean of two normalised views).
            labels: (B, H, W) integer labels, ``ignore_index`` where ignored.
            predictions: (B, H, W) integer predictions (hard anchors are pixels where they differ from labels).
            generator: torch generator for the pixel sampling (default: torch's global generator).

        Returns:
            the scalar loss.

        Raises:
            ValueError: shapes that do not fit.
        """
        if embedding.ndim != 4 or labels.ndim != 3 or labels.shape != predictions.shape:
            raise ValueError(
                f"expected embedding (B, D, h, w) and labels/predictions (B, H, W), got {tuple(embedding.shape)}, "
                f"{tuple(labels.shape)}, {tuple(predictions.shape)}."
            )
        if labels.shape[0] != embedding.shape[0]:
            raise ValueError(f"batch sizes differ: embedding {embedding.shape[0]}, labels {labels.shape[0]}.")
        batch, dim, height, width = embedding.shape
        grid = (height, width)
        small_labels = F.interpolate(labels[:, None].float(), size=grid, mode="nearest")[:, 0].long().flatten(1)
        small_preds = F.interpolate(predictions[:, None].float(), size=grid, mode="nearest")[:, 0].long().flatten(1)
        pixels = embedding.float().permute(0, 2, 3, 1).reshape(batch, height * width, dim)
        samples, classes = self._sample(small_labels, small_preds, generator)
        stored_classes = {c for c in range(self.num_classes) if self.memory_size and int(self.memory_count[c]) > 0}
        self.last_contrast_classes = len(set(classes) | stored_classes) if samples else 0
        if not samples:
            return embedding.sum() * 0.0  # keeps the graph (and DDP) connected
        anchors = torch.stack([pixels[b, index] for b, index in samples])  # (A, n, D)
        anchor_labels = torch.tensor(classes, device=embedding.device)  # (A,)
        loss = self._contrast(anchors, anchor_labels)
        if self.memory_size > 0:
            self._enqueue(anchors.detach(), anchor_labels, generator)
        return loss

    def _memory_entries(self, dim: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if self.memory_size == 0 or int(self.memory_count.sum()) == 0:
            return torch.zeros(0, dim, device=device), torch.zeros(0, dtype=torch.long, device=device)
        features, labels = [], []
        for c in range(self.num_classes):
            count = int(self.memory_count[c])
            features.append(self.memory[c, :count])
            labels.append(torch.full((count,), c, dtype=torch.long, device=device))
        return torch.cat(features).to(device), torch.cat(labels)

    def _contrast(self, anchors: torch.Tensor, anchor_labels: torch.Tensor) -> torch.Tensor:
        num_anchor_classes, n_view, dim = anchors.shape
        current = torch.cat(torch.unbind(anchors, dim=1), dim=0)  # (n*A, D), view-major as ContrastiveSeg
        current_labels = anchor_labels.repeat(n_view)  # (n*A,)
        stored, stored_labels = self._memory_entries(dim, anchors.device)
        contrast = torch.cat([current, stored.float()])  # (n*A + M, D)
        contrast_labels = torch.cat([current_labels, stored_labels])
        logits = current @ contrast.T / self.temperature  # (n*A, n*A + M)
        logits = logits - logits.detach().amax(dim=1, keepdim=True)
        same = current_labels[:, None].eq(contrast_labels[None, :]).float()
        not_self = torch.ones_like(same)
        not_self[:, : current.shape[0]].fill_diagonal_(0.0)
        positives = same * not_self
        negatives = 1.0 - same
        exp_logits = torch.exp(logits)
        negative_sum = (exp_logits * negatives).sum(dim=1, keepdim=True)
        log_prob = logits - torch.log(exp_logits + negative_sum)
        count = positives.sum(dim=1)
        has_positive = count > 0
        if not bool(has_positive.any()):
            return anchors.sum() * 0.0
        mean_log_prob_pos = (positives * log_prob).sum(dim=1) / count.clamp_min(1.0)
        loss = -(self.temperature / self.base_temperature) * mean_log_prob_pos
        return loss[has_positive].mean()

    @torch.no_grad()
    def _enqueue(self, anchors: torch.Tensor, anchor_labels: torch.Tensor, generator: torch.Generator | None) -> None:
        for c in torch.unique(anchor_labels).tolist():
            if not 0 <= c < self.num_classes:
                raise ValueError(f"label {c} is outside [0, {self.num_classes}) and cannot enter the memory bank.")
            pool = anchors[anchor_labels == c].reshape(-1, anchors.shape[-1])
            take = pool[torch.randperm(len(pool), generator=generator)[: min(self.memory_per_update, self.memory_size)]]
            positions = (int(self.memory_pointer[c]) + torch.arange(len(take))) % self.memory_size
            self.memory[c, positions.to(self.memory.device)] = take.to(self.memory.dtype)
            self.memory_pointer[c] = (int(self.memory_pointer[c]) + len(take)) % self.memory_size
            self.memory_count[c] = min(self.memory_size, int(self.memory_count[c]) + len(take))
