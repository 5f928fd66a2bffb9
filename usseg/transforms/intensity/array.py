# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""Ultrasound intensity augmentations for channel-first 2D B-mode images ``(C, H, W)``.

All three transforms work on a log-compressed B-mode image. A display value ``x`` normalised to
``[0, 1]`` maps to the envelope ``e = 10 ** ((x - 1) * DR / 20)`` for a dynamic range of ``DR`` dB, so a
gain ``g`` applied to the envelope (a factor, or ``20 log10 g`` dB) becomes the additive shift
``20 log10(g) / DR`` of the display value. Working in that additive form is exact and keeps the result
finite for any finite input. Every transform then clips to ``value_range``.

Pixels at (or below) the bottom of ``value_range`` carry no echo: they are below the display floor,
for example the black background outside the scan cone. They get no noise or gain (only the clipping),
so the background is never filled with noise. Remove burned-in text first
(:class:`usseg.transforms.ScanConeMask`), since the transforms would otherwise treat it as bright tissue.

The depth axis is the image rows (axis 1 of ``(C, H, W)``) unless ``depth_axis=2`` is given.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Real
from typing import Any

import numpy as np
import torch
from monai.config import NdarrayOrTensor
from monai.data import MetaTensor
from monai.data.meta_obj import get_track_meta
from monai.transforms.transform import RandomizableTransform
from monai.utils import TransformBackends, convert_to_dst_type, convert_to_tensor
from scipy import ndimage, special

from usseg.errors import InputError
from usseg.transforms.checks import source_file

__all__ = ["RandSpeckleNoise", "RandDepthAttenuation", "RandAcousticShadow"]

_GAUSSIAN_TRUNCATE = 4.0
# The Gaussian-to-gamma map is tabulated on [-8.5, 8.5]; a standard normal draw falls outside with
# probability 2e-17, so clipping there changes nothing measurable.
_NORMAL_CLIP = 8.5
_QUANTILE_TABLE_SIZE = 4097
_NOISE_FLOOR = 1e-30


def _as_range(name: str, value: Any, lower: float | None = None, lower_inclusive: bool = True) -> tuple[float, float]:
    """Validate a ``(low, high)`` pair of finite numbers; a single number ``v`` means ``(v, v)``.

    Raises:
        TypeError: ``value`` is neither a number nor a pair of numbers.
        ValueError: non-finite values, ``low > high``, or ``low`` below ``lower``.
    """
    if isinstance(value, Real) and not isinstance(value, bool):
        pair = (float(value), float(value))
    elif (
        isinstance(value, Sequence)
        and not isinstance(value, str)
        and len(value) == 2
        and all(isinstance(v, Real) and not isinstance(v, bool) for v in value)
    ):
        pair = (float(value[0]), float(value[1]))
    else:
        raise TypeError(f"{name} must be a number or a (low, high) pair of numbers, got {value!r}.")
    if not all(math.isfinite(v) for v in pair) or pair[0] > pair[1]:
        raise ValueError(f"{name} must be finite with low <= high, got {value!r}.")
    if lower is not None and (pair[0] < lower or (not lower_inclusive and pair[0] == lower)):
        bound = ">=" if lower_inclusive else ">"
        raise ValueError(f"{name} must be {bound} {lower}, got {value!r}.")
    return pair


def _as_value_range(value_range: Any) -> tuple[float, float]:
    """Validate ``value_range``: a ``(low, high)`` pair with ``low < high``."""
    pair = _as_range("value_range", value_range)
    if pair[0] == pair[1]:
        raise ValueError(f"value_range must satisfy low < high, got {value_range!r}.")
    return pair


def _as_positive_float(name: str, value: Any) -> float:
    """Validate a finite number ``> 0``."""
    if not isinstance(value, Real) or isinstance(value, bool):
        raise TypeError(f"{name} must be a number, got {value!r}.")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}.")
    return float(value)


def _as_depth_axis(depth_axis: Any) -> int:
    """Validate ``depth_axis``: 1 (rows) or 2 (columns) of a ``(C, H, W)`` image."""
    if isinstance(depth_axis, bool) or depth_axis not in (1, 2):
        raise ValueError(f"depth_axis must be 1 (rows) or 2 (columns) of a (C, H, W) image, got {depth_axis!r}.")
    return int(depth_axis)


def _check_channel_first_2d(img: NdarrayOrTensor, transform_name: str) -> tuple[int, int]:
    """Return ``(H, W)`` of a ``(C, H, W)`` image; raise ``ValueError`` with the shape otherwise."""
    shape = tuple(img.shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"{transform_name} expects a channel-first 2D image (C, H, W), got shape {shape}.")
    return int(shape[1]), int(shape[2])


def _finite(img: torch.Tensor, transform_name: str) -> torch.Tensor:
    """Refuse NaN/Inf: clipping would silently turn an Inf pixel into bright tissue, whether or not the coin flips."""
    if not bool(torch.isfinite(img).all()):
        bad = int((~torch.isfinite(img)).sum())
        raise InputError(source_file(img, transform_name), f"contains {bad} NaN or Inf values ({transform_name}).")
    return img


def _apply_display_shift(img: torch.Tensor, shift: np.ndarray, value_range: tuple[float, float]) -> torch.Tensor:
    """Add ``shift`` (display units of a [0, 1] range) to the pixels above the floor and clip to ``value_range``.

    Args:
        img: float32 image ``(C, H, W)``, a tensor or MetaTensor.
        shift: array broadcastable to ``img``; 1.0 is the whole dynamic range.
        value_range: ``(low, high)`` of the display values.

    Returns:
        the shifted float32 image, same type, metadata and shape as ``img``.
    """
    # Plain-tensor arithmetic: every MetaTensor operation also copies the metadata, which costs more than the maths.
    values = img.as_tensor() if isinstance(img, MetaTensor) else img
    shift_t = torch.as_tensor(shift, dtype=torch.float32, device=values.device)
    low, high = value_range
    shifted = torch.where(values > low, values + shift_t * (high - low), values)
    return convert_to_dst_type(torch.clamp(shifted, low, high), img, dtype=torch.float32)[0]


def _smoothed_standard_normal(
    rng: np.random.RandomState, count: int, shape: tuple[int, int], sigma: float
) -> np.ndarray:
    """Draw ``count`` independent Gaussian fields, smoothed with ``sigma`` pixels and rescaled to unit variance.

    The fields are drawn with a margin of one kernel radius and cropped, so every returned pixel sees the
    full kernel and has exactly unit variance (no darker or brighter border).

    Args:
        rng: the transform's random state.
        count: number of independent fields.
        shape: ``(H, W)``.
        sigma: Gaussian kernel standard deviation in pixels; 0 gives white noise.

    Returns:
        float64 array ``(count, H, W)`` with standard normal marginals.
    """
    if sigma <= 0:
        return rng.standard_normal((count, *shape))
    radius = int(_GAUSSIAN_TRUNCATE * sigma + 0.5)
    white = rng.standard_normal((count, shape[0] + 2 * radius, shape[1] + 2 * radius))
    smooth = ndimage.gaussian_filter(white, sigma=sigma, radius=radius, axes=(1, 2), mode="constant")
    impulse = np.zeros((2 * radius + 1, 2 * radius + 1))
    impulse[radius, radius] = 1.0
    kernel = ndimage.gaussian_filter(impulse, sigma=sigma, radius=radius, mode="constant")
    # A linear filter of white unit-variance noise has variance sum(kernel**2): divide it out.
    field_std = float(np.sqrt(np.sum(kernel**2)))
    return smooth[:, radius : radius + shape[0], radius : radius + shape[1]] / field_std


def _gaussian_to_unit_mean_gamma(field: np.ndarray, looks: float) -> np.ndarray:
    """Map standard normal values to unit-mean gamma values with shape ``looks``, quantile to quantile.

    The map ``Q_gamma(Phi(g))`` is monotone and smooth, so it is tabulated once per draw and interpolated
    (in the log domain, where it is close to linear): evaluating the inverse incomplete gamma function at
    every pixel would cost about 20 times more. The relative error is below 1e-5 for ``looks >= 0.25``;
    for fewer looks it grows only where the noise is below 1e-30, far under any display floor.

    Args:
        field: standard normal values, any shape.
        looks: gamma shape ``L > 0``; the result has mean 1 and variance ``1 / L``.

    Returns:
        float64 array shaped like ``field``.
    """
    grid = np.linspace(-_NORMAL_CLIP, _NORMAL_CLIP, _QUANTILE_TABLE_SIZE)
    # Lower tail through gammaincinv, upper tail through gammainccinv: each keeps its tail probability
    # accurate, where a single ndtr would round the upper tail to 1.
    quantiles = np.where(
        grid < 0,
        special.gammaincinv(looks, special.ndtr(np.minimum(grid, 0.0))),
        special.gammainccinv(looks, special.ndtr(-np.maximum(grid, 0.0))),
    )
    log_quantiles = np.log(np.maximum(quantiles / looks, _NOISE_FLOOR))
    return np.exp(np.interp(np.clip(field, -_NORMAL_CLIP, _NORMAL_CLIP), grid, log_quantiles))


class RandSpeckleNoise(RandomizableTransform):
    """Multiply the echo envelope by unit-mean, spatially correlated speckle noise.

    The log compression of the B-mode image is inverted with ``dynamic_range_db``, the envelope is
    multiplied by a noise field ``n`` with ``E[n] = 1``, and the result is log-compressed back and
    clipped to ``value_range``. Two noise models are offered:

    - ``"rayleigh"``: fully developed speckle, the magnitude of a circular complex Gaussian field
      divided by its mean ``sqrt(pi / 2)`` (standard deviation ``sqrt(4 / pi - 1) ~ 0.52``);
    - ``"gamma"``: unit-mean gamma noise with ``L`` looks (variance ``1 / L``), as for multi-look speckle.

    The grain size is a Gaussian smoothing of the underlying Gaussian field with a standard deviation
    drawn from ``grain_sigma`` (pixels), re-normalised to unit variance so the marginal distribution
    does not depend on the grain. For ``"rayleigh"`` the real and imaginary parts are smoothed before the
    magnitude is taken; for ``"gamma"`` one smoothed field is mapped to the gamma distribution through
    its CDF (a Gaussian copula), which keeps gamma marginals (to a relative 1e-5) for any real ``L``.

    The noise is shared by all channels, since a B-mode image stored as RGB has identical channels.
    The envelope mean is preserved; the mean of the displayed (log) value drops by ``-E[20 log10 n] / DR``,
    about 1.5 dB for Rayleigh noise, as it does for real speckle.

    Args:
        prob: probability of applying the transform. Defaults to 0.1.
        distribution: ``"rayleigh"`` (default) or ``"gamma"``.
        looks: ``(low, high)`` range of the number of looks ``L > 0`` (``"gamma"`` only). Defaults to (4, 16).
        grain_sigma: ``(low, high)`` range of the grain standard deviation in pixels, ``>= 0``; 0 gives
            uncorrelated noise. Defaults to (0.5, 1.5).
        dynamic_range_db: dynamic range of the log compression in dB, ``> 0``. Defaults to 60.
        value_range: ``(low, high)`` display range of the input, for example ``(0, 255)`` for 8-bit
            images. Defaults to (0, 1).

    Raises:
        ValueError: an argument is out of its domain (the message quotes it).
        TypeError: an argument has the wrong type.

    Examples:
        >>> speckle = RandSpeckleNoise(prob=1.0, distribution="gamma", looks=(4.0, 8.0)).set_random_state(0)
        >>> out = speckle(np.full((1, 32, 32), 0.5, dtype=np.float32))  # MetaTensor (1, 32, 32), float32
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self,
        prob: float = 0.1,
        distribution: str = "rayleigh",
        looks: Sequence[float] | float = (4.0, 16.0),
        grain_sigma: Sequence[float] | float = (0.5, 1.5),
        dynamic_range_db: float = 60.0,
        value_range: Sequence[float] = (0.0, 1.0),
    ) -> None:
        RandomizableTransform.__init__(self, prob)
        if distribution not in ("rayleigh", "gamma"):
            raise ValueError(f"distribution must be 'rayleigh' or 'gamma', got {distribution!r}.")
        self.distribution = distribution
        self.looks = _as_range("looks", looks, lower=0.0, lower_inclusive=False)
        self.grain_sigma = _as_range("grain_sigma", grain_sigma, lower=0.0)
        self.dynamic_range_db = _as_positive_float("dynamic_range_db", dynamic_range_db)
        self.value_range = _as_value_range(value_range)
        self._noise: np.ndarray | None = None

    def randomize(self, img: NdarrayOrTensor) -> None:
        """Flip the ``prob`` coin, then draw the grain size, the looks (gamma) and the noise field.

        Args:
            img: the image ``(C, H, W)`` the noise is drawn for; only its shape is used.
        """
        super().randomize(None)
        if not self._do_transform:
            return
        shape = _check_channel_first_2d(img, type(self).__name__)
        sigma = self.R.uniform(*self.grain_sigma)
        if self.distribution == "rayleigh":
            real, imag = _smoothed_standard_normal(self.R, 2, shape, sigma)
            noise = np.hypot(real, imag) / math.sqrt(math.pi / 2.0)
        else:
            looks = self.R.uniform(*self.looks)
            noise = _gaussian_to_unit_mean_gamma(_smoothed_standard_normal(self.R, 1, shape, sigma)[0], looks)
        self._noise = noise[None].astype(np.float32)

    def __call__(self, img: NdarrayOrTensor, randomize: bool = True) -> NdarrayOrTensor:
        """Apply speckle to ``img``.

        Args:
            img: channel-first image ``(C, H, W)``: numpy, torch or MetaTensor, any real dtype.
            randomize: draw new noise first; ``False`` reuses the last draw (shared across several images).

        Returns:
            float32 image ``(C, H, W)`` (a MetaTensor when meta tracking is on), clipped to ``value_range``
            when the transform applies.

        Raises:
            ValueError: ``img`` is not ``(C, H, W)``, or differs in size from the noise drawn with ``randomize=False``.
            RuntimeError: ``randomize=False`` before any draw.
        """
        img = _finite(convert_to_tensor(img, track_meta=get_track_meta(), dtype=torch.float32), type(self).__name__)
        shape = _check_channel_first_2d(img, type(self).__name__)
        if randomize:
            self.randomize(img)
        if not self._do_transform:
            return img
        if self._noise is None:
            raise RuntimeError("RandSpeckleNoise: call randomize() before applying with randomize=False.")
        if self._noise.shape[1:] != shape:
            raise ValueError(
                f"RandSpeckleNoise: the noise was drawn for spatial shape {self._noise.shape[1:]}, got image shape "
                f"{tuple(img.shape)}."
            )
        shift = 20.0 * np.log10(np.maximum(self._noise, _NOISE_FLOOR)) / self.dynamic_range_db
        return _apply_display_shift(img, shift, self.value_range)


class RandDepthAttenuation(RandomizableTransform):
    r"""Depth-dependent gain: round-trip attenuation times a random time-gain-compensation (TGC) curve.

    At normalised depth ``z`` in ``[0, 1]`` (pixel centres, top to bottom of the depth axis) the
    envelope is multiplied by the round-trip attenuation ``exp(-2 a z)`` (the factor 2 is the round trip)
    and by a TGC curve, a piecewise-linear interpolation of ``num_knots`` gains spaced evenly from
    ``z = 0`` to ``z = 1``. With the attenuation written in dB per image height,
    ``alpha = 20 log10(e) a``, the total gain is

    .. math::
        G(z) = -2 \alpha z + \mathrm{TGC}(z) \quad \text{dB},

    applied to the log-compressed image as the shift ``G(z) / DR`` (see the module docstring) and clipped
    to ``value_range``. A negative ``alpha`` (over-compensated TGC) brightens with depth.

    Args:
        prob: probability of applying the transform. Defaults to 0.1.
        attenuation_db: ``(low, high)`` range of ``alpha``, the one-way attenuation in dB over the image
            height. Defaults to (0, 6), i.e. up to -12 dB at the bottom.
        gain_db: ``(low, high)`` range of each TGC knot gain in dB. Defaults to (-3, 3).
        num_knots: number of TGC knots, an integer ``>= 2``. Defaults to 4.
        dynamic_range_db: dynamic range of the log compression in dB, ``> 0``. Defaults to 60.
        value_range: ``(low, high)`` display range of the input. Defaults to (0, 1).
        depth_axis: 1 (rows, default) or 2 (columns) of ``(C, H, W)``.

    Raises:
        ValueError: an argument is out of its domain (the message quotes it).
        TypeError: an argument has the wrong type.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self,
        prob: float = 0.1,
        attenuation_db: Sequence[float] | float = (0.0, 6.0),
        gain_db: Sequence[float] | float = (-3.0, 3.0),
        num_knots: int = 4,
        dynamic_range_db: float = 60.0,
        value_range: Sequence[float] = (0.0, 1.0),
        depth_axis: int = 1,
    ) -> None:
        RandomizableTransform.__init__(self, prob)
        self.attenuation_db = _as_range("attenuation_db", attenuation_db)
        self.gain_db = _as_range("gain_db", gain_db)
        if isinstance(num_knots, bool) or not isinstance(num_knots, int) or num_knots < 2:
            raise ValueError(f"num_knots must be an integer >= 2, got {num_knots!r}.")
        self.num_knots = num_knots
        self.dynamic_range_db = _as_positive_float("dynamic_range_db", dynamic_range_db)
        self.value_range = _as_value_range(value_range)
        self.depth_axis = _as_depth_axis(depth_axis)
        self._alpha_db: float | None = None
        self._knot_gains_db: np.ndarray | None = None

    def randomize(self, data: Any = None) -> None:
        """Flip the ``prob`` coin, then draw ``alpha`` and the ``num_knots`` TGC gains.

        Args:
            data: unused; the draw does not depend on the image size.
        """
        super().randomize(None)
        if not self._do_transform:
            return
        self._alpha_db = float(self.R.uniform(*self.attenuation_db))
        self._knot_gains_db = self.R.uniform(self.gain_db[0], self.gain_db[1], size=self.num_knots)

    def gain_profile_db(self, depth_size: int) -> np.ndarray:
        """The drawn total gain ``G(z)`` in dB at the centres of ``depth_size`` pixels along the depth axis.

        Args:
            depth_size: number of pixels along the depth axis.

        Returns:
            float64 array ``(depth_size,)``.

        Raises:
            RuntimeError: nothing drawn yet.
        """
        if self._alpha_db is None or self._knot_gains_db is None:
            raise RuntimeError("RandDepthAttenuation: call randomize() before applying with randomize=False.")
        depth = (np.arange(depth_size) + 0.5) / depth_size
        tgc_db = np.interp(depth, np.linspace(0.0, 1.0, self.num_knots), self._knot_gains_db)
        return -2.0 * self._alpha_db * depth + tgc_db

    def __call__(self, img: NdarrayOrTensor, randomize: bool = True) -> NdarrayOrTensor:
        """Apply the depth gain to ``img``.

        Args:
            img: channel-first image ``(C, H, W)``: numpy, torch or MetaTensor, any real dtype.
            randomize: draw new parameters first; ``False`` reuses the last draw.

        Returns:
            float32 image ``(C, H, W)``, clipped to ``value_range`` when the transform applies.

        Raises:
            ValueError: ``img`` is not ``(C, H, W)``.
            RuntimeError: ``randomize=False`` before any draw.
        """
        img = _finite(convert_to_tensor(img, track_meta=get_track_meta(), dtype=torch.float32), type(self).__name__)
        _check_channel_first_2d(img, type(self).__name__)
        if randomize:
            self.randomize()
        if not self._do_transform:
            return img
        depth_size = int(img.shape[self.depth_axis])
        shift = self.gain_profile_db(depth_size) / self.dynamic_range_db
        shift = shift.reshape((1, depth_size, 1) if self.depth_axis == 1 else (1, 1, depth_size))
        return _apply_display_shift(img, shift, self.value_range)


def _smoothstep(inside_distance: np.ndarray, ramp: float) -> np.ndarray:
    """Soft indicator of ``inside_distance >= 0``: 0.5 on the edge, a smoothstep over ``ramp`` pixels."""
    if ramp <= 0:
        return (inside_distance >= 0).astype(np.float64)
    s = np.clip(inside_distance / ramp + 0.5, 0.0, 1.0)
    return s * s * (3.0 - 2.0 * s)


def _label_foreground(label: NdarrayOrTensor, spatial_shape: tuple[int, int]) -> np.ndarray:
    """Foreground ``(H, W)`` of a label ``(H, W)``, ``(1, H, W)`` or one-hot ``(C, H, W)`` (channel 0 = background)."""
    lab = np.asarray(convert_to_tensor(label, track_meta=False).detach().cpu())
    if lab.ndim == 2:
        lab = lab[None]
    if lab.ndim != 3 or tuple(lab.shape[1:]) != spatial_shape:
        raise ValueError(
            f"RandAcousticShadow: the label must be (H, W) or (C, H, W) with the image's spatial shape "
            f"{spatial_shape}, got label shape {tuple(lab.shape)}."
        )
    channels = lab if lab.shape[0] == 1 else lab[1:]
    return np.any(channels > 0, axis=0)


class RandAcousticShadow(RandomizableTransform):
    """Posterior acoustic shadow: darken a band behind a random origin along the beam direction.

    A shadow starts at an origin pixel and runs away from the probe: straight along the depth axis for a
    linear probe, or along the rays from ``apex`` for a sector (phased or curvilinear) probe, so its width
    grows with depth there. The band has soft lateral edges and fades out at its far end; pixels in front
    of the origin are never changed. Inside the band the envelope loses up to ``strength_db`` dB, applied
    to the log-compressed image as in :class:`RandSpeckleNoise` and clipped to ``value_range``.

    Draws, in order: the coin, ``strength_db``, ``width``, ``length``, then the origin row and column
    (uniform over the image, or a uniform foreground pixel of ``label`` for ``origin="lesion"``).

    Args:
        prob: probability of applying the transform. Defaults to 0.1.
        strength_db: ``(low, high)`` range of the attenuation at the shadow's core in dB, ``>= 0``.
            Defaults to (10, 30).
        width: ``(low, high)`` range of the shadow width as a fraction of the lateral image size (the
            axis that is not ``depth_axis``), ``> 0``; for a sector it is the arc width at the origin.
            Defaults to (0.05, 0.2).
        length: ``(low, high)`` range of the shadow length as a fraction of the depth size, ``> 0``.
            Defaults to (0.3, 1.0).
        edge_softness: fraction of the width (laterally) and of the length (at the far end) over which
            the shadow fades, ``>= 0``; 0 gives hard edges. Defaults to 0.25.
        origin: ``"random"`` (default) or ``"lesion"``: a foreground pixel of the ``label`` passed to
            ``__call__``. An image whose label has no foreground (a normal case) gets a random origin.
        apex: ``(row, col)`` of the sector apex in pixels (may lie outside the image), or None (default)
            for a linear probe.
        dynamic_range_db: dynamic range of the log compression in dB, ``> 0``. Defaults to 60.
        value_range: ``(low, high)`` display range of the input. Defaults to (0, 1).
        depth_axis: 1 (rows, default) or 2 (columns) of ``(C, H, W)``; used for a linear probe and for the
            size fractions.

    Raises:
        ValueError: an argument is out of its domain (the message quotes it).
        TypeError: an argument has the wrong type.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self,
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
    ) -> None:
        RandomizableTransform.__init__(self, prob)
        self.strength_db = _as_range("strength_db", strength_db, lower=0.0)
        self.width = _as_range("width", width, lower=0.0, lower_inclusive=False)
        self.length = _as_range("length", length, lower=0.0, lower_inclusive=False)
        if not isinstance(edge_softness, Real) or isinstance(edge_softness, bool):
            raise TypeError(f"edge_softness must be a number, got {edge_softness!r}.")
        if not (math.isfinite(edge_softness) and edge_softness >= 0):
            raise ValueError(f"edge_softness must be a finite number >= 0, got {edge_softness!r}.")
        self.edge_softness = float(edge_softness)
        if origin not in ("random", "lesion"):
            raise ValueError(f"origin must be 'random' or 'lesion', got {origin!r}.")
        self.origin = origin
        if apex is None:
            self.apex: tuple[float, float] | None = None
        else:
            is_pair = isinstance(apex, Sequence) and not isinstance(apex, str) and len(apex) == 2
            if not is_pair or not all(isinstance(v, Real) and not isinstance(v, bool) for v in apex):
                raise TypeError(f"apex must be None or a (row, col) pair of numbers, got {apex!r}.")
            if not all(math.isfinite(v) for v in apex):
                raise ValueError(f"apex must be finite, got {apex!r}.")
            self.apex = (float(apex[0]), float(apex[1]))
        self.dynamic_range_db = _as_positive_float("dynamic_range_db", dynamic_range_db)
        self.value_range = _as_value_range(value_range)
        self.depth_axis = _as_depth_axis(depth_axis)
        self._shadow: dict[str, Any] | None = None

    def randomize(self, img: NdarrayOrTensor, label: NdarrayOrTensor | None = None) -> None:
        """Flip the ``prob`` coin, then draw strength, width, length and origin.

        Args:
            img: the image ``(C, H, W)``; only its shape is used.
            label: label map ``(H, W)``, ``(1, H, W)`` or one-hot ``(C, H, W)``; required for ``origin="lesion"``.

        Raises:
            ValueError: ``origin="lesion"`` without a label, or a label of another spatial shape.
        """
        super().randomize(None)
        if not self._do_transform:
            return
        shape = _check_channel_first_2d(img, type(self).__name__)
        if self.origin == "lesion" and label is None:
            raise ValueError("RandAcousticShadow: origin='lesion' needs the label (pass label=..., or label_key).")
        strength_db = float(self.R.uniform(*self.strength_db))
        width = float(self.R.uniform(*self.width))
        length = float(self.R.uniform(*self.length))
        foreground = _label_foreground(label, shape) if self.origin == "lesion" and label is not None else None
        if foreground is not None and foreground.any():
            rows, cols = np.nonzero(foreground)
            pick = self.R.randint(rows.size)
            origin = (int(rows[pick]), int(cols[pick]))
        else:
            origin = (int(self.R.randint(shape[0])), int(self.R.randint(shape[1])))
        self._shadow = {"shape": shape, "strength_db": strength_db, "width": width, "length": length, "origin": origin}

    def shadow_weight(self) -> np.ndarray:
        """The drawn shadow as a weight map in ``[0, 1]`` (1 = full ``strength_db``).

        Returns:
            float64 array ``(H, W)`` for the image shape of the last draw.

        Raises:
            RuntimeError: nothing drawn yet.
        """
        if self._shadow is None:
            raise RuntimeError("RandAcousticShadow: call randomize() before applying with randomize=False.")
        height, width = self._shadow["shape"]
        origin_row, origin_col = self._shadow["origin"]
        rows, cols = np.meshgrid(np.arange(height, dtype=np.float64), np.arange(width, dtype=np.float64), indexing="ij")
        lateral_size, depth_size = (width, height) if self.depth_axis == 1 else (height, width)
        width_px = self._shadow["width"] * lateral_size
        length_px = self._shadow["length"] * depth_size
        if self.apex is None:
            axial, lateral = (rows - origin_row, cols - origin_col)
            if self.depth_axis == 2:
                axial, lateral = lateral, axial
        else:
            apex_row, apex_col = self.apex
            # Radius 1 px at least, so an origin on the apex still has a defined angular width.
            origin_radius = max(math.hypot(origin_row - apex_row, origin_col - apex_col), 1.0)
            origin_angle = math.atan2(origin_col - apex_col, origin_row - apex_row)
            angle = np.arctan2(cols - apex_col, rows - apex_row)
            axial = np.hypot(rows - apex_row, cols - apex_col) - origin_radius
            # Arc length at the origin radius: constant angular width, so the shadow widens with depth.
            lateral = origin_radius * np.angle(np.exp(1j * (angle - origin_angle)))
        lateral_weight = _smoothstep(width_px / 2.0 - np.abs(lateral), self.edge_softness * width_px)
        far_weight = _smoothstep(length_px - axial, self.edge_softness * length_px)
        return np.where(axial >= 0, lateral_weight * far_weight, 0.0)

    def __call__(
        self, img: NdarrayOrTensor, label: NdarrayOrTensor | None = None, randomize: bool = True
    ) -> NdarrayOrTensor:
        """Darken a shadow band in ``img``.

        Args:
            img: channel-first image ``(C, H, W)``: numpy, torch or MetaTensor, any real dtype.
            label: optional label (see :meth:`randomize`); only read, never modified.
            randomize: draw a new shadow first; ``False`` reuses the last draw.

        Returns:
            float32 image ``(C, H, W)``, clipped to ``value_range`` when the transform applies.

        Raises:
            ValueError: ``img`` is not ``(C, H, W)`` or differs in size from the drawn shadow; ``origin="lesion"``
                without a label.
            RuntimeError: ``randomize=False`` before any draw.
        """
        img = _finite(convert_to_tensor(img, track_meta=get_track_meta(), dtype=torch.float32), type(self).__name__)
        shape = _check_channel_first_2d(img, type(self).__name__)
        if randomize:
            self.randomize(img, label)
        if not self._do_transform:
            return img
        weight = self.shadow_weight()
        if weight.shape != shape:
            raise ValueError(
                f"RandAcousticShadow: the shadow was drawn for spatial shape {weight.shape}, got image shape "
                f"{tuple(img.shape)}."
            )
        shift = -self._shadow["strength_db"] * weight[None] / self.dynamic_range_db
        return _apply_display_shift(img, shift, self.value_range)
