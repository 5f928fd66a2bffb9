# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""Dictionary versions of the ultrasound intensity transforms in :mod:`usseg.transforms.intensity.array`.

Naming follows MONAI: a trailing ``d`` marks the dictionary version, with ``D`` and ``Dict`` aliases.
Each dictionary transform holds the array transform with ``prob=1.0`` (the outer ``prob`` decides),
draws once per call, and applies that one draw to every key. List intensity images only under
``keys``; labels are never modified.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.data.meta_obj import get_track_meta
from monai.transforms.transform import MapTransform, RandomizableTransform
from monai.utils import convert_to_tensor

from usseg.transforms.intensity.array import RandAcousticShadow, RandDepthAttenuation, RandSpeckleNoise

__all__ = [
    "RandSpeckleNoised",
    "RandSpeckleNoiseD",
    "RandSpeckleNoiseDict",
    "RandDepthAttenuationd",
    "RandDepthAttenuationD",
    "RandDepthAttenuationDict",
    "RandAcousticShadowd",
    "RandAcousticShadowD",
    "RandAcousticShadowDict",
]


def _as_float32_tensors(transform: MapTransform, data: dict[Hashable, NdarrayOrTensor]) -> None:
    """Convert every key in place, so the output type does not depend on the coin flip."""
    for key in transform.key_iterator(data):
        data[key] = convert_to_tensor(data[key], track_meta=get_track_meta(), dtype=torch.float32)


class RandSpeckleNoised(RandomizableTransform, MapTransform):
    """Dictionary version of :py:class:`usseg.transforms.RandSpeckleNoise`; all ``keys`` share one noise field.

    Apply it to intensity images only, never to labels. Items under ``keys`` must share a spatial shape.
    For independent noise per key, use one transform per key.

    Args:
        keys: keys of the images to transform. See also :py:class:`monai.transforms.MapTransform`.
        prob: probability of applying the transform (one coin for all keys). Defaults to 0.1.
        distribution: ``"rayleigh"`` (default) or ``"gamma"``.
        looks: ``(low, high)`` range of the number of looks (``"gamma"`` only). Defaults to (4, 16).
        grain_sigma: ``(low, high)`` range of the grain standard deviation in pixels. Defaults to (0.5, 1.5).
        dynamic_range_db: dynamic range of the log compression in dB. Defaults to 60.
        value_range: ``(low, high)`` display range of the images. Defaults to (0, 1).
        allow_missing_keys: skip missing keys instead of raising ``KeyError``. Defaults to False.

    Raises:
        ValueError: an argument is out of its domain (see :py:class:`usseg.transforms.RandSpeckleNoise`).
    """

    backend = RandSpeckleNoise.backend

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 0.1,
        distribution: str = "rayleigh",
        looks: Sequence[float] | float = (4.0, 16.0),
        grain_sigma: Sequence[float] | float = (0.5, 1.5),
        dynamic_range_db: float = 60.0,
        value_range: Sequence[float] = (0.0, 1.0),
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.speckle = RandSpeckleNoise(
            prob=1.0,
            distribution=distribution,
            looks=looks,
            grain_sigma=grain_sigma,
            dynamic_range_db=dynamic_range_db,
            value_range=value_range,
        )

    def set_random_state(
        self, seed: int | None = None, state: np.random.RandomState | None = None
    ) -> RandSpeckleNoised:
        super().set_random_state(seed, state)
        self.speckle.set_random_state(seed, state)
        return self

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        self.randomize(None)
        first = self.first_key(d)
        if not self._do_transform or first == ():
            _as_float32_tensors(self, d)
            return d
        self.speckle.randomize(d[first])
        for key in self.key_iterator(d):
            d[key] = self.speckle(d[key], randomize=False)
        return d


class RandDepthAttenuationd(RandomizableTransform, MapTransform):
    """Dictionary version of :py:class:`usseg.transforms.RandDepthAttenuation`; all ``keys`` share one gain curve.

    Apply it to intensity images only, never to labels.

    Args:
        keys: keys of the images to transform. See also :py:class:`monai.transforms.MapTransform`.
        prob: probability of applying the transform (one coin for all keys). Defaults to 0.1.
        attenuation_db: ``(low, high)`` range of the one-way attenuation in dB per image height. Defaults to (0, 6).
        gain_db: ``(low, high)`` range of each TGC knot gain in dB. Defaults to (-3, 3).
        num_knots: number of TGC knots, ``>= 2``. Defaults to 4.
        dynamic_range_db: dynamic range of the log compression in dB. Defaults to 60.
        value_range: ``(low, high)`` display range of the images. Defaults to (0, 1).
        depth_axis: 1 (rows, default) or 2 (columns) of ``(C, H, W)``.
        allow_missing_keys: skip missing keys instead of raising ``KeyError``. Defaults to False.

    Raises:
        ValueError: an argument is out of its domain (see :py:class:`usseg.transforms.RandDepthAttenuation`).
    """

    backend = RandDepthAttenuation.backend

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 0.1,
        attenuation_db: Sequence[float] | float = (0.0, 6.0),
        gain_db: Sequence[float] | float = (-3.0, 3.0),
        num_knots: int = 4,
        dynamic_range_db: float = 60.0,
        value_range: Sequence[float] = (0.0, 1.0),
        depth_axis: int = 1,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.attenuation = RandDepthAttenuation(
            prob=1.0,
            attenuation_db=attenuation_db,
            gain_db=gain_db,
            num_knots=num_knots,
            dynamic_range_db=dynamic_range_db,
            value_range=value_range,
            depth_axis=depth_axis,
        )

    def set_random_state(
        self, seed: int | None = None, state: np.random.RandomState | None = None
    ) -> RandDepthAttenuationd:
        super().set_random_state(seed, state)
        self.attenuation.set_random_state(seed, state)
        return self

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        self.randomize(None)
        first = self.first_key(d)
        if not self._do_transform or first == ():
            _as_float32_tensors(self, d)
            return d
        self.attenuation.randomize()
        for key in self.key_iterator(d):
            d[key] = self.attenuation(d[key], randomize=False)
        return d


class RandAcousticShadowd(RandomizableTransform, MapTransform):
    """Dictionary version of :py:class:`usseg.transforms.RandAcousticShadow`; all ``keys`` share one shadow.

    With ``origin="lesion"`` the shadow starts at a random foreground pixel of ``data[label_key]``; the
    label is read only, never modified, and must not be listed in ``keys``. Items under ``keys`` must
    share a spatial shape.

    Args:
        keys: keys of the images to transform. See also :py:class:`monai.transforms.MapTransform`.
        label_key: key of the label map; required for ``origin="lesion"``. Defaults to None.
        prob: probability of applying the transform (one coin for all keys). Defaults to 0.1.
        strength_db: ``(low, high)`` range of the attenuation at the shadow's core in dB. Defaults to (10, 30).
        width: ``(low, high)`` range of the width as a fraction of the lateral size. Defaults to (0.05, 0.2).
        length: ``(low, high)`` range of the length as a fraction of the depth size. Defaults to (0.3, 1.0).
        edge_softness: fraction of the width and length over which the shadow fades. Defaults to 0.25.
        origin: ``"random"`` (default) or ``"lesion"``. A label with no foreground gives a random origin.
        apex: ``(row, col)`` of the sector apex in pixels, or None (default) for a linear probe.
        dynamic_range_db: dynamic range of the log compression in dB. Defaults to 60.
        value_range: ``(low, high)`` display range of the images. Defaults to (0, 1).
        depth_axis: 1 (rows, default) or 2 (columns) of ``(C, H, W)``.
        allow_missing_keys: skip missing keys (including a missing ``label_key``, which then gives a random
            origin) instead of raising ``KeyError``. Defaults to False.

    Raises:
        ValueError: ``origin="lesion"`` without ``label_key``, ``label_key`` listed in ``keys``, or an argument
            out of its domain (see :py:class:`usseg.transforms.RandAcousticShadow`).
    """

    backend = RandAcousticShadow.backend

    def __init__(
        self,
        keys: KeysCollection,
        label_key: Hashable | None = None,
        prob: float = 0.1,
        strength_db: Sequence[float] | float = (10.0, 30.0),
        width: Sequence[float] | float = (0.05, 0.2),
        length: Sequence[float] | float = (0.3, 1.0),
        edge_softness: float = 0.25,
        origin: str = "random",
        apex: Sequence[float] | None = None,
        dynamic_range_db: float = 60.0,
        value_range: Sequence[float] = (0.0, 1.0),
        depth_axis: int = 1,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        if origin == "lesion" and label_key is None:
            raise ValueError("RandAcousticShadowd: origin='lesion' needs a label_key, got label_key=None.")
        if label_key is not None and label_key in self.keys:
            raise ValueError(f"RandAcousticShadowd: label_key {label_key!r} must not be in keys {self.keys}.")
        self.label_key = label_key
        self.shadow = RandAcousticShadow(
            prob=1.0,
            strength_db=strength_db,
            width=width,
            length=length,
            edge_softness=edge_softness,
            origin=origin,
            apex=apex,
            dynamic_range_db=dynamic_range_db,
            value_range=value_range,
            depth_axis=depth_axis,
        )

    def set_random_state(
        self, seed: int | None = None, state: np.random.RandomState | None = None
    ) -> RandAcousticShadowd:
        super().set_random_state(seed, state)
        self.shadow.set_random_state(seed, state)
        return self

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        self.randomize(None)
        first = self.first_key(d)
        if not self._do_transform or first == ():
            _as_float32_tensors(self, d)
            return d
        label = None
        if self.label_key is not None:
            if self.label_key in d:
                label = d[self.label_key]
            elif not self.allow_missing_keys:
                raise KeyError(
                    f"Key `{self.label_key}` (label_key) of transform `{type(self).__name__}` was missing in the data "
                    "and allow_missing_keys==False."
                )
        if self.shadow.origin == "lesion" and label is None:
            # Only reachable with allow_missing_keys: a missing label is treated like an empty one.
            label = np.zeros(tuple(d[first].shape[1:]), dtype=np.uint8)
        self.shadow.randomize(d[first], label)
        for key in self.key_iterator(d):
            d[key] = self.shadow(d[key], randomize=False)
        return d


RandSpeckleNoiseD = RandSpeckleNoiseDict = RandSpeckleNoised
RandDepthAttenuationD = RandDepthAttenuationDict = RandDepthAttenuationd
RandAcousticShadowD = RandAcousticShadowDict = RandAcousticShadowd
