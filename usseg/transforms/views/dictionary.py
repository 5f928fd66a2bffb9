# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""Weak and strong views of one sample for FixMatch-style semi-supervised training.

Dictionary transforms only (a trailing ``d`` marks the dictionary version, as in MONAI): a view builder
must move the image and its mask together, which only a dictionary transform can do.

- :class:`WeakStrongViewsd` draws one geometry for the image and its labels, then writes a weak and a
  strong intensity view of the geometrically transformed image under new keys.
- :func:`hermes_geometric` and :func:`hermes_strong` build the default pipelines after Hermes
  (`Zhang et al., ECAI 2025 <https://arxiv.org/abs/2508.02265>`_), as released in ``Aventador8/Hermes``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import get_track_meta
from monai.transforms import (
    Compose,
    Identityd,
    MapTransform,
    OneOf,
    RandAdjustContrastd,
    RandAxisFlipd,
    Randomizable,
    RandomizableTransform,
    RandomOrder,
    RandRotate90d,
    RandRotated,
    RandScaleIntensityd,
    RandScaleIntensityFixedMeand,
    ScaleIntensityRanged,
)
from monai.transforms.intensity.array import GaussianSmooth
from monai.utils import MAX_SEED, TransformBackends, convert_to_tensor, ensure_tuple

__all__ = [
    "WeakStrongViewsd",
    "WeakStrongViewsD",
    "WeakStrongViewsDict",
    "hermes_geometric",
    "hermes_strong",
]

TransformSpec = Sequence[Callable] | Callable | None


def hermes_geometric(
    keys: KeysCollection,
    label_keys: KeysCollection = (),
    rot_flip_prob: float = 0.5,
    rotate_prob: float = 0.25,
    max_angle_deg: float = 20.0,
    image_mode: str = "bilinear",
    allow_missing_keys: bool = False,
) -> OneOf:
    """Build the Hermes geometric augmentation, shared by an image, its labels and both unlabeled views.

    Exactly one branch is drawn per call, with overall probabilities as in the released code
    (``Code/dataset/BUSI.py``, where the rotation is drawn with probability 0.5 when the first branch is not):

    - ``rot_flip_prob``: rotate by ``k * 90`` degrees with ``k`` uniform in {0, 1, 2, 3}, then flip along a
      random spatial axis;
    - ``rotate_prob``: rotate by an angle uniform in ``[-max_angle_deg, max_angle_deg]`` with zero padding
      and the output size kept;
    - otherwise: identity.

    Images must be channel-first 2D (C, H, W) and labels (1, H, W). Labels are always resampled with
    nearest-neighbour interpolation, so their label set is preserved.

    Args:
        keys: image keys (resampled with ``image_mode``).
        label_keys: label keys (resampled with ``"nearest"``); must not overlap ``keys``.
        rot_flip_prob: probability of the rot90-and-flip branch. Defaults to 0.5.
        rotate_prob: probability of the small-rotation branch. Defaults to 0.25.
        max_angle_deg: largest rotation angle, in degrees. Defaults to 20.
        image_mode: interpolation for images in the small rotation. Defaults to ``"bilinear"``; the released
            code uses order 0 for images too, which ``"nearest"`` reproduces.
        allow_missing_keys: do not raise when a key is missing from the data.

    Returns:
        A :class:`monai.transforms.OneOf` over the three branches.

    Raises:
        ValueError: when a probability is outside [0, 1], their sum exceeds 1, ``max_angle_deg`` is negative,
            or image and label keys overlap.
    """
    image_keys, label_keys = _split_keys(keys, label_keys)
    for name, value in (("rot_flip_prob", rot_flip_prob), ("rotate_prob", rotate_prob)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {value!r}.")
    identity_prob = 1.0 - rot_flip_prob - rotate_prob
    if identity_prob < -1e-9:
        raise ValueError(f"rot_flip_prob + rotate_prob must not exceed 1, got {rot_flip_prob!r} + {rotate_prob!r}.")
    if max_angle_deg < 0:
        raise ValueError(f"max_angle_deg must be non-negative, got {max_angle_deg!r}.")
    all_keys = image_keys + label_keys
    modes = tuple([image_mode] * len(image_keys) + ["nearest"] * len(label_keys))
    # MONAI draws k in {1..max_k} when applied: prob 0.75 with max_k 3 gives k uniform in {0..3}, as released.
    rot_flip = Compose(
        [
            RandRotate90d(all_keys, prob=0.75, max_k=3, allow_missing_keys=allow_missing_keys),
            RandAxisFlipd(all_keys, prob=1.0, allow_missing_keys=allow_missing_keys),
        ]
    )
    rotate = RandRotated(
        all_keys,
        range_x=math.radians(max_angle_deg),
        prob=1.0,
        keep_size=True,
        mode=modes,
        padding_mode="zeros",
        allow_missing_keys=allow_missing_keys,
    )
    identity = Identityd(all_keys, allow_missing_keys=allow_missing_keys)
    return OneOf([rot_flip, rotate, identity], weights=[rot_flip_prob, rotate_prob, max(identity_prob, 0.0)])


def hermes_strong(
    keys: KeysCollection,
    jitter_prob: float = 0.8,
    brightness: float = 0.5,
    contrast: float = 0.5,
    gamma: float = 0.5,
    blur_prob: float = 0.5,
    blur_sigma: tuple[float, float] = (0.1, 2.0),
    speckle_prob: float = 0.5,
    intensity_range: tuple[float, float] | None = (0.0, 1.0),
    allow_missing_keys: bool = True,
) -> Compose:
    """Build the Hermes strong intensity pipeline for grayscale ultrasound, plus speckle noise.

    Steps, each drawn independently per call:

    1. with probability ``jitter_prob``, in random order: brightness ``x * b`` with ``b ~ U[1 - brightness,
       1 + brightness]``, contrast ``(x - mean) * c + mean`` with ``c ~ U[1 - contrast, 1 + contrast]``, and a
       gamma curve with ``g ~ U[1 - gamma, 1 + gamma]``; each followed by clipping to ``intensity_range``. This
       stands in for ``ColorJitter(0.5, 0.5, 0.5, 0.25)``, whose saturation and hue do nothing on grayscale;
    2. with probability ``blur_prob``, an isotropic Gaussian blur with ``sigma ~ U[blur_sigma]`` (pixels);
    3. with probability ``speckle_prob``, :class:`usseg.transforms.intensity.RandSpeckleNoised` with its default
       noise settings and ``value_range=intensity_range`` (when set). This step is a usseg addition:
       ``speckle_prob=0`` reproduces the released pipeline.

    Args:
        keys: image keys, channel-first (C, H, W), intensities expected in ``intensity_range``.
        jitter_prob: probability of the intensity jitter group. Defaults to 0.8.
        brightness: half-width of the brightness factor range. Defaults to 0.5.
        contrast: half-width of the contrast factor range. Defaults to 0.5.
        gamma: half-width of the gamma range around 1, in [0, 1) so that gamma stays positive; 0 leaves the
            gamma step out. Defaults to 0.5.
        blur_prob: probability of the Gaussian blur. Defaults to 0.5.
        blur_sigma: ``(low, high)`` range of the blur standard deviation in pixels. Defaults to (0.1, 2.0).
        speckle_prob: probability of the speckle noise; 0 leaves it out. Defaults to 0.5.
        intensity_range: ``(low, high)`` clip after each jitter step, as torchvision clamps float images to
            [0, 1]; ``None`` disables clipping. Defaults to (0.0, 1.0).
        allow_missing_keys: do not raise when a key is missing. Defaults to True because
            :class:`WeakStrongViewsd` applies the pipeline to one image key at a time.

    Returns:
        A :class:`monai.transforms.Compose` of dictionary transforms.

    Raises:
        ValueError: when a probability is outside [0, 1], a range is empty or reversed, ``gamma`` is outside
            [0, 1), or a jitter strength is outside [0, 1].
    """
    image_keys = _check_keys(keys, "keys")
    for name, value in (("jitter_prob", jitter_prob), ("blur_prob", blur_prob), ("speckle_prob", speckle_prob)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {value!r}.")
    for name, value in (("brightness", brightness), ("contrast", contrast)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {value!r}.")
    if not 0.0 <= gamma < 1.0:
        raise ValueError(f"gamma must be in [0, 1) so that the gamma exponent stays positive, got {gamma!r}.")
    if len(blur_sigma) != 2 or not 0.0 < blur_sigma[0] <= blur_sigma[1]:
        raise ValueError(f"blur_sigma must be (low, high) with 0 < low <= high, got {blur_sigma!r}.")
    if intensity_range is not None and (len(intensity_range) != 2 or not intensity_range[0] < intensity_range[1]):
        raise ValueError(f"intensity_range must be (low, high) with low < high or None, got {intensity_range!r}.")

    def clipped(step: MapTransform) -> Callable:
        if intensity_range is None:
            return step
        low, high = intensity_range
        clip = ScaleIntensityRanged(
            image_keys, a_min=low, a_max=high, b_min=low, b_max=high, clip=True, allow_missing_keys=allow_missing_keys
        )
        return Compose([step, clip])

    jitter_steps = [
        clipped(RandScaleIntensityd(image_keys, factors=brightness, prob=1.0, allow_missing_keys=allow_missing_keys)),
        clipped(
            RandScaleIntensityFixedMeand(image_keys, factors=contrast, prob=1.0, allow_missing_keys=allow_missing_keys)
        ),
    ]
    if gamma > 0:
        jitter_steps.append(
            clipped(
                RandAdjustContrastd(
                    image_keys, gamma=(1.0 - gamma, 1.0 + gamma), prob=1.0, allow_missing_keys=allow_missing_keys
                )
            )
        )
    jitter = OneOf(
        [RandomOrder(jitter_steps), Identityd(image_keys, allow_missing_keys=allow_missing_keys)],
        weights=[jitter_prob, 1.0 - jitter_prob],
    )
    steps: list[Callable] = [
        jitter,
        _RandIsotropicGaussianSmoothd(
            image_keys, sigma=blur_sigma, prob=blur_prob, allow_missing_keys=allow_missing_keys
        ),
    ]
    if speckle_prob > 0:
        # Imported here: the intensity package is optional for users who never build the default strong view.
        from usseg.transforms.intensity.dictionary import RandSpeckleNoised

        # The speckle model log-compresses within the display range, which is the clipping range when one is set.
        display = {} if intensity_range is None else {"value_range": tuple(intensity_range)}
        steps.append(
            RandSpeckleNoised(keys=image_keys, prob=speckle_prob, allow_missing_keys=allow_missing_keys, **display)
        )
    return Compose(steps)


class WeakStrongViewsd(Randomizable, MapTransform):
    """Make a weak and a strong view of each image key under one shared geometry, for FixMatch-style training.

    Per call:

    1. ``geometric`` runs once on the whole dictionary, image and label keys together, so one geometry is drawn
       for the image, its mask and both views;
    2. for each image key, ``weak`` runs on a copy of the geometric image and the result is stored under
       ``<key><weak_suffix>``; ``strong`` runs on another copy and is stored under ``<key><strong_suffix>``.
       Copies are deep (tensor data and metadata), so in-place operations of one pipeline never reach the other
       view or the original;
    3. ``<key>`` keeps the geometric image and label keys keep the geometric masks.

    Pipelines are given as one callable or a sequence of callables:

    - ``geometric`` items must be dictionary transforms (:class:`monai.transforms.MapTransform`, or a
      :class:`monai.transforms.Compose` / ``OneOf`` / ``RandomOrder`` of them) listing the image and label keys;
      use nearest-neighbour interpolation for labels;
    - ``weak`` and ``strong`` items may be either kind: a dictionary transform receives ``{key: image}``, a dict
      holding only the current image key (so it must list that key, or set ``allow_missing_keys=True`` when it
      lists several image keys); any other callable is an array transform and receives the image itself.
      With several image keys, each key gets its own random draws.

    ``None`` selects the default and an empty sequence selects no transform: the default ``geometric`` is
    :func:`hermes_geometric`, the default ``weak`` is none (the weak view is the geometric image, as in Hermes)
    and the default ``strong`` is :func:`hermes_strong`, which includes speckle noise.

    Images are expected channel-first (C, H, W) with intensities in [0, 1] for the default strong pipeline.
    Image keys, label keys and views leave as tensors (MetaTensor when metadata tracking is on) with their
    metadata.

    Args:
        keys: image keys. Defaults to ``"image"``.
        label_keys: label (mask) keys moved with the images by ``geometric``. Defaults to none.
        geometric: shared geometric pipeline; ``None`` builds :func:`hermes_geometric`.
        weak: weak-view pipeline; ``None`` means identity.
        strong: strong-view pipeline; ``None`` builds :func:`hermes_strong`.
        weak_suffix: suffix of the weak-view key. Defaults to ``"_weak"``.
        strong_suffix: suffix of the strong-view key. Defaults to ``"_strong"``.
        allow_missing_keys: do not raise when an image key is missing (also passed to the default pipelines).

    Raises:
        TypeError: when a key is not a string, a pipeline item is not callable, or a ``geometric`` item is not a
            dictionary transform.
        ValueError: when image and label keys overlap, or the suffixes are empty or equal.

    Examples:
        >>> import torch
        >>> views = WeakStrongViewsd(keys="image", label_keys="label").set_random_state(0)
        >>> image, label = torch.rand(1, 32, 32), (torch.rand(1, 32, 32) > 0.5).float()
        >>> out = views({"image": image, "label": label})
        >>> sorted(out)
        ['image', 'image_strong', 'image_weak', 'label']
    """

    backend = [TransformBackends.TORCH]

    def __init__(
        self,
        keys: KeysCollection = "image",
        label_keys: KeysCollection = (),
        geometric: TransformSpec = None,
        weak: TransformSpec = None,
        strong: TransformSpec = None,
        weak_suffix: str = "_weak",
        strong_suffix: str = "_strong",
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        image_keys, self.label_keys = _split_keys(keys, label_keys)
        for name, suffix in (("weak_suffix", weak_suffix), ("strong_suffix", strong_suffix)):
            if not isinstance(suffix, str) or not suffix:
                raise ValueError(f"{name} must be a non-empty string, got {suffix!r}.")
        if weak_suffix == strong_suffix:
            raise ValueError(f"weak_suffix and strong_suffix must differ, both are {weak_suffix!r}.")
        self.weak_suffix = weak_suffix
        self.strong_suffix = strong_suffix

        if geometric is None:
            geometric = hermes_geometric(image_keys, self.label_keys, allow_missing_keys=allow_missing_keys)
        self.geometric = _as_transform_list(geometric, "geometric")
        for item in self.geometric:
            if not _is_dictionary_transform(item):
                raise TypeError(
                    "geometric transforms must be dictionary transforms (MapTransform or a Compose of them) so that "
                    f"images and labels share one geometry, got {type(item).__name__}."
                )
        self.weak = _as_transform_list(weak, "weak")
        self.strong = _as_transform_list(hermes_strong(image_keys) if strong is None else strong, "strong")

    def randomize(self, data: Any = None) -> None:
        """Do nothing: every draw is made by the inner transforms, which :meth:`set_random_state` seeds."""

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> WeakStrongViewsd:
        """Seed this transform and give every inner randomizable transform its own derived seed.

        Args:
            seed: seed of this transform's generator.
            state: a generator to use instead of ``seed``.

        Returns:
            ``self``, so that seeding chains with construction.
        """
        super().set_random_state(seed, state)
        for transform in (*self.geometric, *self.weak, *self.strong):
            if isinstance(transform, Randomizable):
                transform.set_random_state(seed=int(self.R.randint(MAX_SEED, dtype="uint32")))
        return self

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Apply the shared geometry, then write the weak and strong views.

        Args:
            data: a dictionary holding the image keys, channel-first (C, H, W), and the label keys.

        Returns:
            A new dictionary with ``<key><weak_suffix>`` and ``<key><strong_suffix>`` added for each image key.

        Raises:
            KeyError: when an image or label key is missing (unless ``allow_missing_keys``) or a view key already
                exists.
            ValueError: when an image or label is not channel-first (C, H, W) with 1-4 channels.
            TypeError: when a dictionary transform does not return a dictionary.
        """
        d: dict[Hashable, Any] = dict(data)
        # float32 channel-first tensors BEFORE the geometry, so dtype and layout never depend on the branch drawn
        for key in (*self.keys, *self.label_keys):
            if key not in d:
                if key in self.label_keys and not self.allow_missing_keys:
                    raise KeyError(f"label key {key!r} is not in the data; set allow_missing_keys=True to skip it.")
                continue
            shape = tuple(getattr(d[key], "shape", ()))
            if len(shape) != 3 or not 1 <= shape[0] <= 4:
                raise ValueError(f"{key!r} must be channel-first (C, H, W) with 1-4 channels, got shape {shape}.")
            d[key] = convert_to_tensor(d[key], track_meta=get_track_meta(), dtype=torch.float32)
        for transform in self.geometric:
            d = _expect_mapping(transform(d), transform)
        for key in self.label_keys:  # the identity branch returns inputs unchanged: convert for a stable type
            if key in d:
                d[key] = convert_to_tensor(d[key], track_meta=get_track_meta(), dtype=torch.float32)
        for key in self.key_iterator(d):
            d[key] = convert_to_tensor(d[key], track_meta=get_track_meta(), dtype=torch.float32)
            for suffix, pipeline in ((self.weak_suffix, self.weak), (self.strong_suffix, self.strong)):
                view_key = f"{key}{suffix}"
                if view_key in d:
                    raise KeyError(f"view key {view_key!r} already exists in the data; choose another suffix.")
                d[view_key] = self._make_view(d[key], key, pipeline)
        return d

    @staticmethod
    def _make_view(image: torch.Tensor, key: Hashable, pipeline: list[Callable]) -> torch.Tensor:
        view: dict[Hashable, Any] = {key: _deep_copy(image)}
        for transform in pipeline:
            if _is_dictionary_transform(transform):
                view = _expect_mapping(transform(view), transform)
            else:
                view[key] = transform(view[key])
        return convert_to_tensor(view[key], track_meta=get_track_meta())


class _RandIsotropicGaussianSmoothd(RandomizableTransform, MapTransform):
    """Gaussian blur with one sigma for both axes, drawn once per call and shared by all keys.

    MONAI's ``RandGaussianSmoothd`` draws each axis' sigma independently; the Hermes blur (PIL ``GaussianBlur``)
    is isotropic.
    """

    backend = GaussianSmooth.backend

    def __init__(
        self,
        keys: KeysCollection,
        sigma: tuple[float, float] = (0.1, 2.0),
        prob: float = 0.5,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        if len(sigma) != 2 or not 0.0 < sigma[0] <= sigma[1]:
            raise ValueError(f"sigma must be (low, high) with 0 < low <= high, got {sigma!r}.")
        self.sigma_range = (float(sigma[0]), float(sigma[1]))
        self.sigma: float | None = None

    def randomize(self, data: Any = None) -> None:
        super().randomize(None)
        if self._do_transform:
            self.sigma = float(self.R.uniform(*self.sigma_range))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize(None)
        for key in self.key_iterator(d):
            image = convert_to_tensor(d[key], track_meta=get_track_meta())
            d[key] = GaussianSmooth(sigma=self.sigma)(image) if self._do_transform else image
        return d


def _check_keys(keys: KeysCollection, name: str) -> tuple[str, ...]:
    checked = ensure_tuple(keys)
    for key in checked:
        if not isinstance(key, str):
            raise TypeError(f"{name} must be strings (view keys are built by appending a suffix), got {key!r}.")
    return checked


def _split_keys(keys: KeysCollection, label_keys: KeysCollection) -> tuple[tuple[str, ...], tuple[str, ...]]:
    image_keys = _check_keys(keys, "keys")
    labels = _check_keys(label_keys, "label_keys")
    overlap = sorted(set(image_keys) & set(labels))
    if overlap:
        raise ValueError(f"keys and label_keys must not overlap, both contain {overlap}.")
    return image_keys, labels


def _as_transform_list(spec: TransformSpec, name: str) -> list[Callable]:
    if spec is None:
        return []
    items = [spec] if callable(spec) else list(spec)
    for item in items:
        if not callable(item):
            raise TypeError(f"{name} must hold callables, got {item!r} of type {type(item).__name__}.")
    return items


def _is_dictionary_transform(transform: Callable) -> bool:
    # A Compose is not a MapTransform, yet a Compose of dictionary transforms must receive the dictionary.
    if isinstance(transform, MapTransform):
        return True
    if isinstance(transform, Compose):
        return all(_is_dictionary_transform(inner) for inner in transform.transforms)
    return False


def _expect_mapping(result: Any, transform: Callable) -> dict[Hashable, Any]:
    if not isinstance(result, Mapping):
        raise TypeError(
            f"{type(transform).__name__} returned {type(result).__name__}, expected a dictionary; "
            "multi-sample transforms (e.g. RandCropByPosNegLabeld) cannot be used inside WeakStrongViewsd."
        )
    return dict(result)


def _deep_copy(image: Any) -> Any:
    if isinstance(image, torch.Tensor):
        return image.clone()  # MetaTensor.clone deep-copies the metadata as well
    if isinstance(image, np.ndarray):
        return image.copy()
    return copy.deepcopy(image)


WeakStrongViewsD = WeakStrongViewsDict = WeakStrongViewsd
