# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""Augmentations of the USCL [0] and Meta-USCL [1] contrastive views, as their released code applies them.

Both pipelines are torchvision's ``Resize -> RandomResizedCrop -> RandomHorizontalFlip -> ColorJitter ->
ToTensor -> Normalize``, with the colour jitter always applied (no ``RandomApply``). The presets differ in the crop
scale, the jitter strength and the normalisation (``methods.md`` sections 2.2 and 2.3):

============  ===============  ============================  ===================
preset        crop scale       jitter (b, c, s, h)           normalise (mean/std)
============  ===============  ============================  ===================
``uscl``      (0.8, 1.0)       (0.8, 0.8, 0.8, 0.2)          0.5 / 0.25
``meta_uscl`` (0.7, 1.0)       (0.64, 0.64, 0.64, 0.16)      0.18 / 0.24
============  ===============  ============================  ===================

Inputs are channel-first ``(C, H, W)`` float tensors in 0-255 (what ``VideoFramePair`` hands to ``augment``).
Saturation and hue act on 3-channel images only; on grayscale frames they are the identity, as in torchvision.
Extra ultrasound augmentation (``usseg.transforms.RandSpeckleNoise``) is available but off in both presets.

- [0] Chen et al., USCL, MICCAI 2021 (``983632847/USCL: train_USCL/data_aug/dataset_wrapper_Ultrasound_Video_Mixup.py``)
- [1] Chen et al., Meta-USCL, IEEE TMI (``Schuture/Meta-USCL: dataloader.py::get_transforms``)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.data import get_track_meta
from monai.transforms import (
    Compose,
    NormalizeIntensity,
    RandFlip,
    RandomizableTransform,
    ScaleIntensityRange,
    Transform,
)
from monai.utils import TransformBackends, convert_to_tensor

from usseg.transforms.intensity.array import RandSpeckleNoise

__all__ = ["AUGMENT_PRESETS", "AntialiasedResize", "RandResizedCrop", "RandColorJitter", "contrastive_augmentation"]

AUGMENT_PRESETS: dict[str, dict[str, Any]] = {
    "uscl": {"scale": (0.8, 1.0), "jitter": (0.8, 0.8, 0.8, 0.2), "mean": 0.5, "std": 0.25},
    "meta_uscl": {"scale": (0.7, 1.0), "jitter": (0.64, 0.64, 0.64, 0.16), "mean": 0.18, "std": 0.24},
}
"""Released augmentation settings per preset (the crop ratio is (0.8, 1.25) for both)."""

_GRAY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601-2 luma, as torchvision's rgb_to_grayscale


def _pair(name: str, value: Sequence[float], low: float, high: float | None = None) -> tuple[float, float]:
    if len(value) != 2 or not low <= float(value[0]) <= float(value[1]) or (high is not None and value[1] > high):
        bound = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be an increasing pair (a, b) within {bound}, got {value!r}.")
    return float(value[0]), float(value[1])


def _as_image(img: Any) -> torch.Tensor:
    image = convert_to_tensor(img, track_meta=False, dtype=torch.float32)
    if image.ndim != 3:
        raise ValueError(f"expected a channel-first 2D image (C, H, W), got shape {tuple(image.shape)}.")
    return image


def _resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(image.shape[1:]) == tuple(size):
        return image
    return F.interpolate(image[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]


class AntialiasedResize(Transform):
    """Bilinear resize with antialiasing of a channel-first image, as torchvision's ``Resize`` on PIL images.

    (MONAI's ``Resize(anti_aliasing=True)`` smooths with zero padding first, which darkens the border rows.)

    Args:
        size: output ``(height, width)`` or one side for a square.

    Raises:
        ValueError: when ``size`` is not positive.
    """

    backend = [TransformBackends.TORCH]

    def __init__(self, size: int | Sequence[int]) -> None:
        size = (int(size), int(size)) if isinstance(size, int) else tuple(int(s) for s in size)
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"size must be a positive int or (height, width), got {size!r}.")
        self.size = size

    def __call__(self, img: Any) -> torch.Tensor:
        """Resize ``img`` ``(C, H, W)`` to ``(C, *size)`` float32."""
        return convert_to_tensor(_resize(_as_image(img), self.size), track_meta=get_track_meta())


class RandResizedCrop(RandomizableTransform):
    """torchvision's ``RandomResizedCrop`` on a channel-first image: a random area and aspect ratio, then resize.

    The box is drawn as torchvision does: up to 10 attempts with ``area ~ U(scale) * H * W`` and
    ``log(ratio) ~ U(log ratio)``; if none fits, a centre crop at the nearest allowed ratio. The crop is resized to
    ``size`` with bilinear interpolation and antialiasing.

    Args:
        size: output ``(height, width)`` or one side for a square.
        scale: range of the crop's share of the image area. Defaults to (0.08, 1.0).
        ratio: range of the crop's width / height. Defaults to (3/4, 4/3).

    Raises:
        ValueError: when ``size`` is not positive, or ``scale``/``ratio`` is not an increasing positive pair.
    """

    backend = [TransformBackends.TORCH]

    def __init__(
        self,
        size: int | Sequence[int],
        scale: Sequence[float] = (0.08, 1.0),
        ratio: Sequence[float] = (3 / 4, 4 / 3),
    ) -> None:
        RandomizableTransform.__init__(self, prob=1.0)
        size = (int(size), int(size)) if isinstance(size, int) else tuple(int(s) for s in size)
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"size must be a positive int or (height, width), got {size!r}.")
        self.size = size
        self.scale = _pair("scale", scale, 1e-8, 1.0)
        self.ratio = _pair("ratio", ratio, 1e-8)
        self._box: tuple[int, int, int, int] | None = None

    def randomize(self, height: int, width: int) -> None:  # type: ignore[override]
        """Draw the box ``(top, left, crop height, crop width)`` for an image of ``height x width``."""
        super().randomize(None)
        area = height * width
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target = area * self.R.uniform(*self.scale)
            aspect = math.exp(self.R.uniform(*log_ratio))
            crop_w = int(round(math.sqrt(target * aspect)))
            crop_h = int(round(math.sqrt(target / aspect)))
            if 0 < crop_w <= width and 0 < crop_h <= height:
                top = int(self.R.randint(0, height - crop_h + 1))
                left = int(self.R.randint(0, width - crop_w + 1))
                self._box = (top, left, crop_h, crop_w)
                return
        aspect = width / height
        if aspect < self.ratio[0]:
            crop_w, crop_h = width, int(round(width / self.ratio[0]))
        elif aspect > self.ratio[1]:
            crop_h, crop_w = height, int(round(height * self.ratio[1]))
        else:
            crop_w, crop_h = width, height
        self._box = ((height - crop_h) // 2, (width - crop_w) // 2, crop_h, crop_w)

    def __call__(self, img: Any, randomize: bool = True) -> torch.Tensor:
        """Crop and resize ``img`` ``(C, H, W)``; returns ``(C, *size)`` float32."""
        image = _as_image(img)
        if randomize:
            self.randomize(int(image.shape[1]), int(image.shape[2]))
        if self._box is None:
            raise RuntimeError("call randomize() before applying RandResizedCrop with randomize=False.")
        top, left, crop_h, crop_w = self._box
        crop = image[:, top : top + crop_h, left : left + crop_w]
        return convert_to_tensor(_resize(crop, self.size), track_meta=get_track_meta())


def _gray(image: torch.Tensor) -> torch.Tensor:
    if image.shape[0] != 3:
        return image
    r, g, b = image
    return (_GRAY_WEIGHTS[0] * r + _GRAY_WEIGHTS[1] * g + _GRAY_WEIGHTS[2] * b)[None].expand_as(image)


def _rgb_to_hsv(image: torch.Tensor) -> torch.Tensor:
    r, g, b = image
    maxc, _ = image.max(dim=0)
    minc, _ = image.min(dim=0)
    delta = maxc - minc
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    hue = torch.where(maxc == r, ((g - b) / safe) % 6, torch.where(maxc == g, (b - r) / safe + 2, (r - g) / safe + 4))
    hue = torch.where(delta > 0, hue / 6.0, torch.zeros_like(hue))
    saturation = torch.where(
        maxc > 0, delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc)), torch.zeros_like(maxc)
    )
    return torch.stack([hue, saturation, maxc])


def _hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    hue, saturation, value = hsv
    sector = torch.floor(hue * 6.0)
    fraction = hue * 6.0 - sector
    p = value * (1 - saturation)
    q = value * (1 - saturation * fraction)
    t = value * (1 - saturation * (1 - fraction))
    sector = sector.long() % 6
    table = [(value, t, p), (q, value, p), (p, value, t), (p, q, value), (t, p, value), (value, p, q)]
    out = torch.zeros_like(hsv)
    for index, (r, g, b) in enumerate(table):
        mask = sector == index
        out[0] = torch.where(mask, r, out[0])
        out[1] = torch.where(mask, g, out[1])
        out[2] = torch.where(mask, b, out[2])
    return out


class RandColorJitter(RandomizableTransform):
    """torchvision's ``ColorJitter`` on ``(C, H, W)`` images in [0, 1], always applied.

    Factors ``b ~ U(max(0, 1 - brightness), 1 + brightness)``, ``c`` and ``s`` likewise, and ``h ~ U(-hue, hue)``
    are applied in a random order, each followed by clipping to [0, 1]: brightness scales the image, contrast blends
    it with its mean gray level, saturation with its gray version, hue rotates the HSV hue. Saturation and hue are
    the identity for images that are not 3-channel.

    Args:
        brightness: brightness jitter strength, >= 0.
        contrast: contrast jitter strength, >= 0.
        saturation: saturation jitter strength, >= 0.
        hue: hue jitter, in [0, 0.5].

    Raises:
        ValueError: on a negative strength or a hue outside [0, 0.5].
    """

    backend = [TransformBackends.TORCH]

    def __init__(self, brightness: float = 0.0, contrast: float = 0.0, saturation: float = 0.0, hue: float = 0.0):
        RandomizableTransform.__init__(self, prob=1.0)
        for name, value in (("brightness", brightness), ("contrast", contrast), ("saturation", saturation)):
            if float(value) < 0:
                raise ValueError(f"{name} must be >= 0, got {value!r}.")
        if not 0.0 <= float(hue) <= 0.5:
            raise ValueError(f"hue must be in [0, 0.5], got {hue!r}.")
        self.brightness, self.contrast, self.saturation, self.hue = (
            float(brightness),
            float(contrast),
            float(saturation),
            float(hue),
        )
        self._order: list[int] = [0, 1, 2, 3]
        self._factors: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 0.0)

    def randomize(self, data: Any = None) -> None:
        """Draw the order of the four operations and their factors."""
        super().randomize(None)
        self._order = [int(i) for i in self.R.permutation(4)]
        factors = [
            float(self.R.uniform(max(0.0, 1 - s), 1 + s)) if s > 0 else 1.0
            for s in (self.brightness, self.contrast, self.saturation)
        ]
        hue = float(self.R.uniform(-self.hue, self.hue)) if self.hue > 0 else 0.0
        self._factors = (factors[0], factors[1], factors[2], hue)

    def __call__(self, img: Any, randomize: bool = True) -> torch.Tensor:
        """Jitter ``img`` ``(C, H, W)`` in [0, 1]; returns a float32 tensor of the same shape."""
        image = _as_image(img)
        if randomize:
            self.randomize()
        brightness, contrast, saturation, hue = self._factors
        for operation in self._order:
            if operation == 0 and brightness != 1.0:
                image = (image * brightness).clamp(0, 1)
            elif operation == 1 and contrast != 1.0:
                mean = _gray(image).mean()
                image = (contrast * image + (1 - contrast) * mean).clamp(0, 1)
            elif operation == 2 and saturation != 1.0 and image.shape[0] == 3:
                image = (saturation * image + (1 - saturation) * _gray(image)).clamp(0, 1)
            elif operation == 3 and hue != 0.0 and image.shape[0] == 3:
                hsv = _rgb_to_hsv(image)
                hsv[0] = (hsv[0] + hue) % 1.0
                image = _hsv_to_rgb(hsv).clamp(0, 1)
        return convert_to_tensor(image, track_meta=get_track_meta())


def contrastive_augmentation(
    preset: str = "meta_uscl",
    spatial_size: int = 64,
    speckle_prob: float = 0.0,
    crop_scale: Sequence[float] | None = None,
    jitter: Sequence[float] | None = None,
    normalize: Sequence[float] | None = None,
) -> Compose:
    """The released view augmentation of a preset, as a MONAI ``Compose`` for ``VideoFramePair(augment=...)``.

    Steps: ``Resize(spatial_size)`` -> :class:`RandResizedCrop` (preset scale, ratio (0.8, 1.25)) -> horizontal flip
    (p = 0.5) -> scale 0-255 to [0, 1] -> :class:`RandColorJitter` -> optional ``RandSpeckleNoise`` -> normalise.

    Args:
        preset: ``"uscl"`` or ``"meta_uscl"`` (see :data:`AUGMENT_PRESETS`).
        spatial_size: output side in pixels (64 for Meta-USCL's default, 224 for the papers' best numbers).
        speckle_prob: probability of an extra ultrasound speckle augmentation; 0 (off) in the presets.
        crop_scale: override of the preset's crop scale range.
        jitter: override of the preset's ``(brightness, contrast, saturation, hue)``.
        normalize: override of the preset's ``(mean, std)``.

    Returns:
        the pipeline, ``(C, H, W)`` float in 0-255 to ``(C, spatial_size, spatial_size)`` float32, normalised.

    Raises:
        ValueError: on an unknown preset, a non-positive size or a probability outside [0, 1].
    """
    if preset not in AUGMENT_PRESETS:
        raise ValueError(f"preset must be one of {sorted(AUGMENT_PRESETS)}, got {preset!r}.")
    if isinstance(spatial_size, bool) or not isinstance(spatial_size, int) or spatial_size < 1:
        raise ValueError(f"spatial_size must be a positive integer, got {spatial_size!r}.")
    if not 0.0 <= float(speckle_prob) <= 1.0:
        raise ValueError(f"speckle_prob must be in [0, 1], got {speckle_prob!r}.")
    settings = AUGMENT_PRESETS[preset]
    brightness, contrast, saturation, hue = settings["jitter"] if jitter is None else jitter
    mean, std = (settings["mean"], settings["std"]) if normalize is None else normalize
    steps: list[Any] = [
        AntialiasedResize(spatial_size),
        RandResizedCrop(spatial_size, scale=settings["scale"] if crop_scale is None else crop_scale, ratio=(0.8, 1.25)),
        RandFlip(prob=0.5, spatial_axis=1),  # lateral flip: depth stays down the image
        ScaleIntensityRange(a_min=0.0, a_max=255.0, b_min=0.0, b_max=1.0, clip=True),
        RandColorJitter(brightness, contrast, saturation, hue),
    ]
    if speckle_prob > 0:
        steps.append(RandSpeckleNoise(prob=speckle_prob, value_range=(0.0, 1.0)))
    steps.append(NormalizeIntensity(subtrahend=float(mean), divisor=float(std)))
    return Compose(steps, lazy=False)
