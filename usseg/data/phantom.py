# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""The embedded default data set: a physics-inspired B-mode ultrasound phantom.

Every usseg bundle must run on a fresh machine without a download, so it trains on images made here.
The simulator follows the B-mode imaging chain closely enough that what a network learns from it is
about appearance, not about synthetic shortcuts:

1. **Tissue.** An analytic tissue map in probe coordinates (depth ``z`` and lateral ``x``, both in units of
   the imaging depth): skin, subcutaneous fat with bright Cooper's-ligament-like septa, a heterogeneous
   glandular band, striated muscle and deep tissue, separated by wavy boundaries with specular fascia lines.
   Each tissue has a backscatter strength (echogenicity), a scatterer density and a stiffness.
2. **Lesions.** ``benign``: a smooth wider-than-tall oval, hypoechoic and homogeneous, with a thin echogenic
   capsule and low attenuation, hence posterior acoustic *enhancement*. ``malignant``: an irregular outline
   (radial harmonics) with spicules, not wider than tall, heterogeneous, with an echogenic halo, sometimes
   micro-calcifications, and high attenuation, hence posterior acoustic *shadowing*. ``normal``: no lesion.
   In ``multi_structure`` mode a two-lipped, cervix-like organ (labels 1 and 2 touching along a bright canal)
   is added, and the class lesion, if any, sits beside it without a label.
3. **Echo formation in beam space** (depth samples x scan lines). Random scatterers (Gaussian amplitudes,
   thinned to the tissue density) weighted by the square root of the echogenicity are convolved with a pulse
   that is a Gaussian-windowed carrier axially and a Gaussian beam laterally. The convolution is done in the
   Fourier domain with the negative axial frequencies removed, so it yields the analytic (IQ) signal of the
   RF field directly; its magnitude is the envelope. Excess attenuation inside the lesion is integrated
   along each beam, which puts the posterior shadow or enhancement below the lesion along the beam direction
   (slanted in a sector). Depth attenuation left over after time-gain compensation, a focal-zone gain and
   receiver noise amplified by the TGC complete the gain chain; log compression over a dynamic range in dB
   maps the envelope to 8 bits.
4. **Display.** ``linear``: the beam grid is a rectangle placed inside a black screen border. ``curvilinear``:
   the polar beam grid is scan-converted into a sector (scan cone) and everything outside it is black.
   Optional burned-in annotations (text-like glyphs, a depth scale, a caliper mark) are drawn only on the
   black border, never inside the cone.
5. **Cine.** The probe moves smoothly over a tissue map (translation and rocking), the tissue breathes
   (smooth compression), the scatterers are attached to the tissue with a partial refresh per frame
   (out-of-plane decorrelation), and masks are evaluated on the same moved coordinates.
6. **Strain elastography.** Strain is the inverse of stiffness, blurred like a strain estimator, decaying
   with depth and slightly noisy; stiff lesions are dark. It shares the geometry and the mask of the B-mode.

All randomness comes from the ``seed`` (an ``int`` or a :class:`numpy.random.Generator`); the same seed gives
bit-identical arrays and files. One 256x256 image takes about 10-20 ms on one core (about 70 images/s).
"""

from __future__ import annotations

import csv
import json
import math
import os
import pathlib
import re
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Any

import numpy as np
import scipy.fft
from scipy import ndimage
from tqdm.auto import tqdm

from usseg.data.io import atomic_save_image, atomic_write, atomic_write_json, ensure_writable_dir

__all__ = [
    "GEOMETRIES",
    "LESION_CLASSES",
    "LABEL_MODES",
    "MODALITIES",
    "PHANTOM_VERSION",
    "case_generator",
    "phantom_case_plan",
    "simulate_image",
    "simulate_cine",
    "write_phantom_dataset",
]

PHANTOM_VERSION = "1"
GEOMETRIES = ("linear", "curvilinear")
LESION_CLASSES = ("benign", "malignant", "normal")
LABEL_MODES = ("lesion", "multi_structure")
MODALITIES = ("bmode", "elastography")

_STREAMS = {"image": 0, "video": 1}
_MIN_SIZE = 32
_VIDEO_CODEC = "mpeg4"
_VIDEO_FPS = 15
_CARRIER = 0.27  # axial carrier in cycles per depth sample; only needs to sit well below Nyquist (0.5)
_FLOAT = np.float32


# ----------------------------------------------------------------------------------------------------------
# Seeds and validation
# ----------------------------------------------------------------------------------------------------------


def _as_generator(seed: int | np.random.Generator) -> np.random.Generator:
    """Return ``seed`` itself if it is a Generator, else a fresh PCG64 Generator seeded with it."""
    if isinstance(seed, np.random.Generator):
        return seed
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int or a numpy.random.Generator, got {seed!r} ({type(seed).__name__}).")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}.")
    return np.random.default_rng(int(seed))


def case_generator(seed: int, index: int, stream: str = "image") -> np.random.Generator:
    """The Generator that :func:`write_phantom_dataset` uses for one case, so any case can be regenerated alone.

    Args:
        seed: the data set seed (non-negative int).
        index: the case index (0-based) within its stream.
        stream: ``"image"`` for ``images/case_*.png`` or ``"video"`` for ``videos/cine_*.mp4``.

    Returns:
        ``numpy.random.default_rng(SeedSequence(seed, spawn_key=(stream_id, index)))``.

    Raises:
        ValueError: unknown ``stream`` or negative ``seed`` / ``index``.
    """
    if stream not in _STREAMS:
        raise ValueError(f"stream must be one of {tuple(_STREAMS)}, got {stream!r}.")
    if int(seed) < 0 or int(index) < 0:
        raise ValueError(f"seed and index must be non-negative, got seed={seed}, index={index}.")
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(_STREAMS[stream], int(index))))


def phantom_case_plan(index: int, class_names: tuple[str, ...], geometry: str) -> tuple[str, str]:
    """Class and geometry of case ``index`` in a written phantom data set.

    Classes cycle through ``class_names`` (balanced); with ``geometry="mixed"`` the geometry alternates between
    linear and curvilinear once per full cycle of classes, so that geometry is never confounded with class.

    Returns:
        ``(class_name, geometry)``.
    """
    num_classes = len(class_names)
    class_name = class_names[index % num_classes]
    if geometry == "mixed":
        geometry = GEOMETRIES[(index // num_classes) % 2]
    return class_name, geometry


def _check_size(size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        size = (int(size), int(size))
    if (
        not isinstance(size, (tuple, list))
        or len(size) != 2
        or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in size)
    ):
        raise TypeError(f"size must be an int or a (height, width) pair of ints, got {size!r}.")
    height, width = int(size[0]), int(size[1])
    if min(height, width) < _MIN_SIZE:
        raise ValueError(f"size must be at least {_MIN_SIZE} pixels per side, got {(height, width)}.")
    return height, width


def _check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}.")
    return value


def _check_lesion_class(lesion_class: str | None) -> str:
    return "normal" if lesion_class is None else _check_choice("lesion_class", lesion_class, LESION_CLASSES)


# ----------------------------------------------------------------------------------------------------------
# Probe geometry: beam grid, display grid, scan cone and scan conversion
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Probe:
    """Imaging geometry. Physical unit: the imaging depth (the beam reaches depth 1 below the probe face).

    Probe coordinates: ``z`` is depth below the centre of the probe face, ``x`` is lateral. For a curvilinear
    probe the virtual apex of the sector is at ``(z, x) = (-apex, 0)`` and beam lines fan out over
    ``[-half_angle, half_angle]``.
    """

    kind: str
    height: int
    width: int
    n_samples: int
    n_lines: int
    pixel_size: float  # display pixel pitch
    z_row0: float  # depth of the centre of display row 0
    x_col0: float  # lateral position of the centre of display column 0
    apex: float = 0.0
    half_angle: float = 0.0
    top: int = 0  # linear only: display row / column of the first beam sample / line
    left: int = 0

    def display_grid(self) -> tuple[np.ndarray, np.ndarray]:
        """Probe coordinates of the display pixel centres, as broadcastable ``(H, 1)`` and ``(1, W)`` arrays."""
        z = (self.z_row0 + self.pixel_size * np.arange(self.height, dtype=np.float64)).astype(_FLOAT)
        x = (self.x_col0 + self.pixel_size * np.arange(self.width, dtype=np.float64)).astype(_FLOAT)
        return z[:, None], x[None, :]

    def beam_grid(self) -> tuple[np.ndarray, np.ndarray]:
        """Probe coordinates of the beam samples: broadcastable for linear, full ``(n_samples, n_lines)`` else."""
        radial = (np.arange(self.n_samples, dtype=np.float64) + 0.5) / self.n_samples
        if self.kind == "linear":
            lateral = (np.arange(self.n_lines, dtype=np.float64) - self.n_lines / 2 + 0.5) * self.pixel_size
            return radial.astype(_FLOAT)[:, None], lateral.astype(_FLOAT)[None, :]
        theta = -self.half_angle + (np.arange(self.n_lines, dtype=np.float64) + 0.5) * self.line_pitch
        r = (self.apex + radial)[:, None]
        z = r * np.cos(theta)[None, :] - self.apex
        x = r * np.sin(theta)[None, :]
        return z.astype(_FLOAT), x.astype(_FLOAT)

    @property
    def line_pitch(self) -> float:
        return 2.0 * self.half_angle / self.n_lines

    def depth(self, z: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Depth below the skin, which conforms to the probe face (flat, or an arc around the apex)."""
        if self.kind == "linear":
            return z
        return np.hypot(x, z + _FLOAT(self.apex)) - _FLOAT(self.apex)

    def half_width_at(self, depth: float) -> float:
        """Lateral half-extent of the field of view at ``depth``."""
        if self.kind == "linear":
            return 0.5 * self.n_lines * self.pixel_size
        return (self.apex + depth) * math.sin(self.half_angle)

    def cone(self, margin_px: float = 0.0) -> np.ndarray:
        """Boolean ``(H, W)`` field-of-view mask, optionally grown by ``margin_px`` display pixels."""
        if self.kind == "linear":
            rows = np.arange(self.height)[:, None]
            cols = np.arange(self.width)[None, :]
            inside = (rows >= self.top - margin_px) & (cols >= self.left - margin_px)
            return inside & (cols < self.left + self.n_lines + margin_px)
        r, theta = self._display_polar
        margin = margin_px * self.pixel_size
        radial_ok = (r >= self.apex - margin) & (r <= self.apex + 1.0 + margin)
        return radial_ok & (np.abs(theta) <= self.half_angle + margin / np.maximum(r, 1e-6))

    @cached_property
    def _display_polar(self) -> tuple[np.ndarray, np.ndarray]:
        z, x = self.display_grid()
        z_apex = z + _FLOAT(self.apex)
        return np.hypot(x, z_apex), np.arctan2(np.broadcast_to(x, (self.height, self.width)), z_apex)

    @cached_property
    def _scan_conversion(self) -> tuple[np.ndarray, np.ndarray]:
        r, theta = self._display_polar
        sample = (r - self.apex) * self.n_samples - 0.5
        line = (theta + self.half_angle) / self.line_pitch - 0.5
        return np.stack([sample, line]).astype(_FLOAT), self.cone()

    def to_display(self, beam: np.ndarray) -> np.ndarray:
        """Place (linear) or scan-convert (curvilinear) a ``(n_samples, n_lines)`` image; 0 outside the cone."""
        out = np.zeros((self.height, self.width), dtype=_FLOAT)
        if self.kind == "linear":
            out[self.top :, self.left : self.left + self.n_lines] = beam
            return out
        coords, cone = self._scan_conversion
        ndimage.map_coordinates(beam, coords, output=out, order=1, mode="nearest", prefilter=False)
        out *= cone
        return out


def _draw_probe(rng: np.random.Generator, kind: str, height: int, width: int) -> _Probe:
    if kind == "linear":
        top = round(height * rng.uniform(0.07, 0.10))
        left = round(width * rng.uniform(0.035, 0.06))
        right = round(width * rng.uniform(0.035, 0.06))
        n_samples, n_lines = height - top, width - left - right
        pixel_size = 1.0 / n_samples
        return _Probe(
            kind="linear",
            height=height,
            width=width,
            n_samples=n_samples,
            n_lines=n_lines,
            pixel_size=pixel_size,
            z_row0=(0.5 - top) * pixel_size,
            x_col0=(0.5 - left - n_lines / 2) * pixel_size,
            top=top,
            left=left,
        )
    apex = rng.uniform(0.25, 0.45)
    half_angle = math.radians(rng.uniform(25.0, 33.0))
    z_top = apex * math.cos(half_angle) - apex  # depth of the two upper corners of the sector
    span_z = 1.0 - z_top
    span_x = 2.0 * (apex + 1.0) * math.sin(half_angle)
    top_px = height * 0.035
    pixel_size = max(span_z / (height - top_px - 0.02 * height), span_x / (0.97 * width))
    return _Probe(
        kind="curvilinear",
        height=height,
        width=width,
        n_samples=math.ceil(1.0 / pixel_size),
        n_lines=width,
        pixel_size=pixel_size,
        z_row0=z_top - top_px * pixel_size,
        x_col0=-(width - 1) / 2 * pixel_size,
        apex=apex,
        half_angle=half_angle,
    )


# ----------------------------------------------------------------------------------------------------------
# Tissue: layers, texture, lesion and organ, as analytic functions of probe (or tissue) coordinates
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _SmoothField:
    """Unit-variance random field: a sum of plane waves with random directions, frequencies and phases."""

    wave_z: np.ndarray  # (M,) in cycles per unit
    wave_x: np.ndarray
    phase: np.ndarray
    weight: np.ndarray

    @classmethod
    def draw(cls, rng: np.random.Generator, num_waves: int, low: float, high: float) -> _SmoothField:
        freq = rng.uniform(low, high, num_waves)
        angle = rng.uniform(0.0, np.pi, num_waves)
        weight = rng.uniform(0.5, 1.0, num_waves)
        weight *= math.sqrt(2.0) / np.linalg.norm(weight)  # cos waves of random phase: variance 1/2 each
        phase = rng.uniform(0.0, 2 * np.pi, num_waves)
        return cls(freq * np.cos(angle), freq * np.sin(angle), phase, weight)

    def __call__(self, z: np.ndarray, x: np.ndarray) -> np.ndarray:
        out = np.zeros(np.broadcast_shapes(z.shape, x.shape), dtype=_FLOAT)
        for kz, kx, phase, weight in zip(self.wave_z, self.wave_x, self.phase, self.weight):
            out += _FLOAT(weight) * np.cos(_FLOAT(2 * np.pi * kz) * z + _FLOAT(2 * np.pi * kx) * x + _FLOAT(phase))
        return out


@dataclass(frozen=True)
class _Lesion:
    """A focal lesion: an ellipse whose boundary radius is modulated by harmonics and spicules."""

    kind: str
    center: tuple[float, float]  # (z, x)
    semi_axes: tuple[float, float]  # along the rotated lateral (u) and depth (v) axes
    angle: float
    harmonics: np.ndarray  # (K, 3): order, amplitude, phase
    spikes: np.ndarray  # (J, 3): direction, height, angular half-width
    echogenicity: float
    texture_strength: float
    rim_gain: float  # capsule (benign) or halo (malignant) brightness factor
    rim_width: float  # in normalised radius
    attenuation: float  # excess attenuation inside, dB per unit depth (negative: enhancement below)
    stiffness: float  # relative to the glandular background
    calcifications: np.ndarray  # (M, 2) positions (z, x)

    @property
    def reach(self) -> float:
        """Radius of a circle around the centre that contains the lesion, its rim and its spicules."""
        bump = float(np.abs(self.harmonics[:, 1]).sum() + (self.spikes[:, 1].max() if len(self.spikes) else 0.0))
        return max(self.semi_axes) * (1.0 + bump) * (1.0 + self.rim_width) + 1e-3

    def normalized_radius(self, z: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Normalised radius ``q`` (< 1 inside, 1 on the boundary) on the points near the lesion.

        Returns:
            ``(flat_indices, q)``: indices into the flattened broadcast grid of the points evaluated, and ``q``.
        """
        shape = np.broadcast_shapes(z.shape, x.shape)
        dz = np.broadcast_to(z - _FLOAT(self.center[0]), shape)
        dx = np.broadcast_to(x - _FLOAT(self.center[1]), shape)
        reach = _FLOAT(self.reach)
        near = np.flatnonzero((np.abs(dz) < reach) & (np.abs(dx) < reach))
        dz, dx = dz.reshape(-1)[near], dx.reshape(-1)[near]
        cos_a, sin_a = _FLOAT(math.cos(self.angle)), _FLOAT(math.sin(self.angle))
        u = (cos_a * dx + sin_a * dz) / _FLOAT(self.semi_axes[0])
        v = (-sin_a * dx + cos_a * dz) / _FLOAT(self.semi_axes[1])
        rho = np.hypot(u, v)
        psi = np.arctan2(v, u)
        boundary = np.ones_like(rho)
        for order, amplitude, phase in self.harmonics:
            boundary += _FLOAT(amplitude) * np.cos(_FLOAT(order) * psi + _FLOAT(phase))
        for direction, height, half_width in self.spikes:
            offset = np.abs((psi - _FLOAT(direction) + _FLOAT(np.pi)) % _FLOAT(2 * np.pi) - _FLOAT(np.pi))
            boundary += _FLOAT(height) * np.square(np.clip(1 - offset / _FLOAT(half_width), 0, None))
        return near, rho / boundary

    def calcification_echo(self, z: np.ndarray, x: np.ndarray, width: float) -> np.ndarray:
        """Extra echogenicity of point-like micro-calcifications at the given (flat) points.

        ``width`` is one beam sample: the peak scales with its area so that a calcification reflects the same
        energy whatever the image size.
        """
        out = np.zeros(z.shape, dtype=_FLOAT)
        peak = _FLOAT(40.0 * (width / (1.0 / 256)) ** -2)
        for cz, cx in self.calcifications:
            d2 = np.square(z - _FLOAT(cz)) + np.square(x - _FLOAT(cx))
            out += peak * np.exp(-d2 / _FLOAT(2 * width * width))
        return out


@dataclass(frozen=True)
class _Organ:
    """Two adjacent structures (labels 1 and 2): an ellipse split by a curved, echogenic canal."""

    center: tuple[float, float]
    semi_axes: tuple[float, float]
    angle: float
    canal_curvature: float
    canal_wave: tuple[float, float, float]  # amplitude (fraction of the minor axis), cycles, phase
    echogenicity: tuple[float, float]
    stiffness: tuple[float, float]

    rim_width: float = 0.1  # echogenic capsule around the organ, in normalised radius

    def evaluate(self, z: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Points inside the organ or its capsule.

        Returns:
            ``(flat_indices, label, radius, canal_offset)``: label 1 or 2 inside (0 in the capsule), the normalised
            radius (< 1 inside) and the signed distance to the canal in minor-axis units.
        """
        shape = np.broadcast_shapes(z.shape, x.shape)
        dz = np.broadcast_to(z - _FLOAT(self.center[0]), shape).reshape(-1)
        dx = np.broadcast_to(x - _FLOAT(self.center[1]), shape).reshape(-1)
        cos_a, sin_a = _FLOAT(math.cos(self.angle)), _FLOAT(math.sin(self.angle))
        u = (cos_a * dx + sin_a * dz) / _FLOAT(self.semi_axes[0])
        v = (-sin_a * dx + cos_a * dz) / _FLOAT(self.semi_axes[1])
        radius = np.hypot(u, v)
        near = np.flatnonzero(radius < 1 + self.rim_width)
        u, v, radius = u[near], v[near], radius[near]
        amplitude, cycles, phase = self.canal_wave
        canal = _FLOAT(self.canal_curvature) * (np.square(u) - _FLOAT(0.5)) + _FLOAT(amplitude) * np.sin(
            _FLOAT(np.pi * cycles) * u + _FLOAT(phase)
        )
        offset = v - canal
        label = np.where(radius < 1, np.where(offset < 0, 1, 2), 0).astype(np.uint8)
        return near, label, radius, offset


@dataclass(frozen=True)
class _Imaging:
    """Scanner settings: pulse, gain chain and display mapping."""

    sigma_axial: float  # pulse envelope, in depth samples
    sigma_lateral: float  # beam width, in scan lines
    dynamic_range: float  # dB
    gain: float  # dB
    tgc_depths: np.ndarray
    tgc_db: np.ndarray  # residual gain after attenuation and TGC, at tgc_depths
    focus_depth: float
    focus_gain: float  # dB
    noise_db: float  # receiver noise relative to unit-echogenicity speckle, before TGC
    smoothing: float  # incoherent smoothing of the intensity, as a fraction of the PSF widths

    def residual_gain_db(self, depth: np.ndarray) -> np.ndarray:
        focal = self.focus_gain * np.exp(-np.square((depth - self.focus_depth) / 0.18))
        return (np.interp(depth, self.tgc_depths, self.tgc_db) + focal).astype(_FLOAT)

    def tgc_db_curve(self, depth: np.ndarray) -> np.ndarray:
        """TGC applied to the receiver noise: it compensates the round-trip attenuation (about 40 dB in depth)."""
        return (40.0 * depth + np.interp(depth, self.tgc_depths, self.tgc_db)).astype(_FLOAT)


@dataclass(frozen=True)
class _Scene:
    """Everything that an image shows, as analytic functions of tissue coordinates."""

    probe: _Probe
    boundaries: np.ndarray  # (4, 4): mean depth, amplitude, wavelength, phase of skin/fat/gland/muscle bottoms
    texture: _SmoothField
    fine_texture: _SmoothField
    ligaments: tuple[float, float, float, float]  # period, direction, wobble wavelength, phase
    striations: tuple[float, float, float]  # period, slope, phase
    fat_echo: float
    lesion: _Lesion | None
    organ: _Organ | None
    imaging: _Imaging

    def _layer_depths(self, x: np.ndarray) -> list[np.ndarray]:
        depths = []
        for mean, amplitude, wavelength, phase in self.boundaries:
            wave = np.sin(_FLOAT(2 * np.pi / wavelength) * x + _FLOAT(phase))
            depths.append(_FLOAT(mean) + _FLOAT(amplitude) * wave)
        return depths

    def acoustics(self, z: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Tissue properties at the beam samples.

        Args:
            z, x: tissue coordinates of the beam samples, broadcastable to ``(n_samples, n_lines)``.

        Returns:
            ``(echogenicity, density, attenuation)``: float32 arrays of shape ``(n_samples, n_lines)``; the
            attenuation is the excess over the tissue average, in dB per unit depth.
        """
        shape = np.broadcast_shapes(z.shape, x.shape)
        depth = self.probe.depth(z, x)
        skin, fat, gland, muscle = self._layer_depths(x)
        texture = self.texture(z, x)
        period, direction, wobble, phase = self.ligaments
        septa = np.cos(
            _FLOAT(2 * np.pi / period) * (x * _FLOAT(math.cos(direction)) + depth * _FLOAT(math.sin(direction)))
            + _FLOAT(1.2) * np.sin(_FLOAT(2 * np.pi / wobble) * x + _FLOAT(phase))
        )
        fat_echo = _FLOAT(self.fat_echo) * np.exp(_FLOAT(0.3) * texture) + _FLOAT(1.6) * (septa > 0.93)
        fine_texture = self.fine_texture(z, x)
        gland_echo = np.exp(_FLOAT(0.35) * texture + _FLOAT(0.45) * fine_texture)
        s_period, s_slope, s_phase = self.striations
        fibres = np.cos(_FLOAT(2 * np.pi / s_period) * (depth + _FLOAT(s_slope) * x) + _FLOAT(s_phase))
        muscle_echo = _FLOAT(0.3) + _FLOAT(1.4) * np.clip(fibres, 0, None) ** 6
        deep_echo = _FLOAT(0.6) * np.exp(_FLOAT(0.4) * texture)
        echo = np.where(
            depth < skin,
            _FLOAT(2.5),
            np.where(
                depth < fat,
                fat_echo,
                np.where(depth < gland, gland_echo, np.where(depth < muscle, muscle_echo, deep_echo)),
            ),
        ).astype(_FLOAT)
        echo = np.broadcast_to(echo, shape).copy()
        sample = 1.0 / self.probe.n_samples
        for boundary, strength in zip((skin, fat, gland, muscle), (1.5, 1.2, 2.0, 1.5)):
            echo += _FLOAT(strength) * np.exp(-np.square((depth - boundary) / _FLOAT(1.5 * sample)))
        density = np.where(depth < fat, np.where(depth < skin, _FLOAT(1.0), _FLOAT(0.35)), _FLOAT(1.0))
        density = np.broadcast_to(density, shape)
        attenuation = np.zeros(shape, dtype=_FLOAT)
        flat_echo, flat_attenuation = echo.reshape(-1), attenuation.reshape(-1)
        if self.organ is not None:
            idx, label, radius, offset = self.organ.evaluate(z, x)
            inner, capsule = idx[label > 0], idx[label == 0]
            label, offset = label[label > 0], offset[label > 0]
            lip = np.where(label == 1, _FLOAT(self.organ.echogenicity[0]), _FLOAT(self.organ.echogenicity[1]))
            canal = _FLOAT(5.0) * np.exp(-np.square(offset / _FLOAT(0.08)))
            flat_echo[inner] = lip * np.exp(_FLOAT(0.25) * texture.reshape(-1)[inner]) + canal
            flat_echo[capsule] *= _FLOAT(2.5)
        if self.lesion is not None:
            lesion = self.lesion
            idx, q = lesion.normalized_radius(z, x)
            core = q < 1
            rim = (~core) & (q < 1 + lesion.rim_width)
            rim_profile = 1 + _FLOAT(lesion.rim_gain - 1) * (1 - (q[rim] - 1) / _FLOAT(lesion.rim_width))
            core_idx, rim_idx = idx[core], idx[rim]
            flat_echo[rim_idx] *= rim_profile
            core_texture = fine_texture.reshape(-1)[core_idx]
            core_echo = _FLOAT(lesion.echogenicity) * np.exp(_FLOAT(lesion.texture_strength) * core_texture)
            if len(lesion.calcifications):
                zz = np.broadcast_to(z, shape).reshape(-1)[core_idx]
                xx = np.broadcast_to(x, shape).reshape(-1)[core_idx]
                core_echo += lesion.calcification_echo(zz, xx, sample)
            flat_echo[core_idx] = core_echo
            flat_attenuation[core_idx] = _FLOAT(lesion.attenuation)
        return echo, density, attenuation

    def labels(self, z: np.ndarray, x: np.ndarray, label_mode: str) -> np.ndarray:
        """Label map (uint8) at the given tissue coordinates: the lesion (1), or the organ's two structures."""
        shape = np.broadcast_shapes(z.shape, x.shape)
        out = np.zeros(shape, dtype=np.uint8)
        flat = out.reshape(-1)
        if label_mode == "multi_structure":
            if self.organ is not None:
                idx, label, _, _ = self.organ.evaluate(z, x)
                flat[idx] = label
            if self.lesion is not None:  # the class lesion occludes the organ (it never does by placement)
                idx, q = self.lesion.normalized_radius(z, x)
                flat[idx[q < 1]] = 0
        elif self.lesion is not None:
            idx, q = self.lesion.normalized_radius(z, x)
            flat[idx[q < 1]] = 1
        return out

    def stiffness(self, z: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Relative Young's modulus at the given tissue coordinates (glandular tissue = 1)."""
        shape = np.broadcast_shapes(z.shape, x.shape)
        depth = self.probe.depth(z, x)
        skin, fat, gland, muscle = self._layer_depths(x)
        layered = np.where(
            depth < skin,
            _FLOAT(1.5),
            np.where(
                depth < fat,
                _FLOAT(0.6),
                np.where(depth < gland, _FLOAT(1.0), np.where(depth < muscle, _FLOAT(1.8), _FLOAT(2.2))),
            ),
        )
        out = np.broadcast_to(layered, shape).astype(_FLOAT) * np.exp(_FLOAT(0.06) * self.texture(z, x))
        flat = out.reshape(-1)
        if self.organ is not None:
            idx, label, _, _ = self.organ.evaluate(z, x)
            idx, label = idx[label > 0], label[label > 0]
            flat[idx] = np.where(label == 1, _FLOAT(self.organ.stiffness[0]), _FLOAT(self.organ.stiffness[1]))
        if self.lesion is not None:
            idx, q = self.lesion.normalized_radius(z, x)
            flat[idx[q < 1]] = _FLOAT(self.lesion.stiffness)
        return out


def _draw_lesion(rng: np.random.Generator, kind: str, probe: _Probe, lateral: float | None, scale: float) -> _Lesion:
    """Draw a lesion of ``kind`` centred at a random depth; ``lateral`` fixes its side (fraction of half-width)."""
    if kind == "benign":
        width = rng.uniform(0.07, 0.14) * scale
        height = width / rng.uniform(1.3, 2.0)  # wider than tall: parallel to the skin
        angle = rng.uniform(-0.3, 0.3)
        harmonics = np.zeros((0, 3))
        spikes = np.zeros((0, 3))
    else:
        width = rng.uniform(0.065, 0.11) * scale
        height = width / rng.uniform(0.7, 1.1)  # not wider than tall
        angle = rng.uniform(-0.4, 0.4)
        orders = np.arange(3, 9, dtype=np.float64)
        harmonics = np.stack(
            [
                orders,
                rng.uniform(0.03, 0.09, orders.size) / np.sqrt(orders / 3),
                rng.uniform(0, 2 * np.pi, orders.size),
            ],
            axis=1,
        )
        num_spikes = int(rng.integers(6, 15))
        spikes = np.stack(
            [
                rng.uniform(-np.pi, np.pi, num_spikes),
                rng.uniform(0.2, 0.6, num_spikes),
                rng.uniform(0.05, 0.11, num_spikes),
            ],
            axis=1,
        )
    vertical_half = math.hypot(width * math.sin(angle), height * math.cos(angle))
    depth = rng.uniform(0.3, 0.48)
    half_width = probe.half_width_at(depth)
    lateral_reach = math.hypot(width * math.cos(angle), height * math.sin(angle)) * (
        1.6 if kind == "malignant" else 1.1
    )
    if lateral is None:
        lateral = rng.uniform(-0.5, 0.5) * max(half_width - lateral_reach, 0.0) / max(half_width, 1e-6)
    if probe.kind == "linear":
        center = (depth, lateral * half_width)
    else:
        theta = lateral * probe.half_angle
        center = ((probe.apex + depth) * math.cos(theta) - probe.apex, (probe.apex + depth) * math.sin(theta))
    if kind == "benign":
        posterior_db = rng.uniform(5.0, 9.0)  # enhancement
        params = {
            "echogenicity": rng.uniform(0.006, 0.02),
            "texture_strength": 0.15,
            "rim_gain": rng.uniform(1.5, 2.2),
            "rim_width": 0.06,
            "stiffness": rng.uniform(2.5, 4.0),
        }
        calcifications = np.zeros((0, 2))
        attenuation = -posterior_db / (2 * vertical_half)
    else:
        posterior_db = rng.uniform(10.0, 16.0)  # shadowing
        params = {
            "echogenicity": rng.uniform(0.01, 0.03),
            "texture_strength": 0.7,
            "rim_gain": rng.uniform(1.6, 2.6),
            "rim_width": 0.22,
            "stiffness": rng.uniform(6.0, 12.0),
        }
        num_calcs = int(rng.integers(3, 11)) if rng.random() < 0.6 else 0
        radius = 0.7 * np.sqrt(rng.random(num_calcs))
        phi = rng.uniform(0, 2 * np.pi, num_calcs)
        u, v = radius * np.cos(phi) * width, radius * np.sin(phi) * height
        calcifications = np.stack(
            [
                center[0] + u * math.sin(angle) + v * math.cos(angle),
                center[1] + u * math.cos(angle) - v * math.sin(angle),
            ],
            axis=1,
        )
        attenuation = posterior_db / (2 * vertical_half)
    return _Lesion(
        kind=kind,
        center=center,
        semi_axes=(width, height),
        angle=angle,
        harmonics=harmonics,
        spikes=spikes,
        attenuation=attenuation,
        calcifications=calcifications,
        **params,
    )


def _draw_organ(rng: np.random.Generator, probe: _Probe, lateral: float) -> _Organ:
    depth = rng.uniform(0.42, 0.55)
    half_width = probe.half_width_at(depth)
    if probe.kind == "linear":
        center = (depth, lateral * half_width)
    else:
        theta = lateral * probe.half_angle
        center = ((probe.apex + depth) * math.cos(theta) - probe.apex, (probe.apex + depth) * math.sin(theta))
    return _Organ(
        center=center,
        semi_axes=(rng.uniform(0.17, 0.23), rng.uniform(0.10, 0.14)),
        angle=rng.uniform(-0.25, 0.25),
        canal_curvature=rng.uniform(-0.3, 0.3),
        canal_wave=(rng.uniform(0.0, 0.1), rng.uniform(1.0, 3.0), rng.uniform(0, 2 * np.pi)),
        echogenicity=(rng.uniform(0.035, 0.055), rng.uniform(0.11, 0.17)),
        stiffness=(rng.uniform(1.6, 2.0), rng.uniform(2.2, 2.8)),
    )


def _draw_scene(
    rng: np.random.Generator, probe: _Probe, lesion_class: str, label_mode: str, motion_margin: float = 0.0
) -> _Scene:
    skin = rng.uniform(0.025, 0.04)
    fat = skin + rng.uniform(0.08, 0.18)
    gland = fat + rng.uniform(0.38, 0.5)
    muscle = gland + rng.uniform(0.1, 0.18)
    means = np.array([skin, fat, gland, muscle])
    amplitudes = np.array([0.003, rng.uniform(0.01, 0.03), rng.uniform(0.02, 0.05), rng.uniform(0.01, 0.03)])
    boundaries = np.stack([means, amplitudes, rng.uniform(0.5, 1.6, 4), rng.uniform(0, 2 * np.pi, 4)], axis=1)
    lesion = organ = None
    scale = 1.0 - motion_margin
    if label_mode == "multi_structure":
        if lesion_class == "normal":
            organ = _draw_organ(rng, probe, rng.uniform(-0.1, 0.1))
        else:
            side = 1.0 if rng.random() < 0.5 else -1.0
            organ = _draw_organ(rng, probe, 0.38 * side)
            lesion = _draw_lesion(rng, lesion_class, probe, -0.6 * side, 0.75 * scale)
    elif lesion_class != "normal":
        # A sector displays more tissue per pixel: larger lesions keep a similar size on screen.
        lesion = _draw_lesion(rng, lesion_class, probe, None, scale * (1.2 if probe.kind == "curvilinear" else 1.0))
    size_factor = probe.n_samples / 256.0
    tgc_depths = np.linspace(0.0, 1.0, 6)
    imaging = _Imaging(
        sigma_axial=max(rng.uniform(1.0, 1.35) * size_factor, 0.7),
        sigma_lateral=max(rng.uniform(2.0, 2.8) * probe.n_lines / 256.0, 1.0),
        dynamic_range=rng.uniform(50.0, 60.0),
        gain=rng.uniform(-2.5, 2.5),
        tgc_depths=tgc_depths,
        tgc_db=rng.uniform(-2.5, 2.5, tgc_depths.size) - rng.uniform(0.0, 6.0) * tgc_depths,
        focus_depth=rng.uniform(0.3, 0.6),
        focus_gain=rng.uniform(1.0, 3.0),
        noise_db=-rng.uniform(62.0, 68.0),
        smoothing=rng.uniform(0.35, 0.55),
    )
    return _Scene(
        probe=probe,
        boundaries=boundaries,
        texture=_SmoothField.draw(rng, 6, 2.0, 9.0),
        fine_texture=_SmoothField.draw(rng, 6, 12.0, 30.0),
        ligaments=(rng.uniform(0.08, 0.16), rng.uniform(-0.6, 0.6), rng.uniform(0.2, 0.5), rng.uniform(0, 2 * np.pi)),
        striations=(rng.uniform(0.022, 0.035), rng.uniform(-0.1, 0.1), rng.uniform(0, 2 * np.pi)),
        fat_echo=rng.uniform(0.15, 0.25),
        lesion=lesion,
        organ=organ,
        imaging=imaging,
    )


# ----------------------------------------------------------------------------------------------------------
# Echo formation: PSF, envelope, gain chain, log compression
# ----------------------------------------------------------------------------------------------------------


@lru_cache(maxsize=8)  # a cine loop reuses one PSF for all its frames
def _psf_transfer(shape: tuple[int, int], sigma_axial: float, sigma_lateral: float) -> tuple[np.ndarray, float]:
    """Fourier transfer function of the pulse-echo PSF, one-sided along depth (analytic signal).

    The spatial PSF is ``exp(-z^2 / 2 s_z^2) cos(2 pi f z) * exp(-x^2 / 2 s_x^2)``; keeping only its positive axial
    frequencies (times 2) makes the filtered field the analytic signal of the RF field, whose magnitude is the
    envelope. Also returns the RMS output for unit-variance white scatterers, the log-compression reference.
    """
    freq_z = scipy.fft.fftfreq(shape[0]).astype(_FLOAT)[:, None]
    freq_x = scipy.fft.fftfreq(shape[1]).astype(_FLOAT)[None, :]
    axial = 2 * np.exp(-2 * np.pi**2 * sigma_axial**2 * np.square(freq_z - _CARRIER)) * (freq_z > 0)
    lateral = np.exp(-2 * np.pi**2 * sigma_lateral**2 * np.square(freq_x))
    transfer = (axial * lateral).astype(_FLOAT)
    rms = float(np.sqrt(np.mean(np.square(transfer, dtype=np.float64))))
    return transfer, rms


def _pulse_echo(scatterers: np.ndarray, imaging: _Imaging) -> tuple[np.ndarray, float]:
    """Analytic (IQ) echo field of a scatterer map ``(n_samples, n_lines)`` and its unit-echogenicity RMS."""
    pad_z = math.ceil(4 * imaging.sigma_axial) + 2
    pad_x = math.ceil(4 * imaging.sigma_lateral) + 2
    padded = np.pad(scatterers, ((pad_z, pad_z), (pad_x, pad_x)), mode="reflect")  # no dark or wrapped borders
    shape = (scipy.fft.next_fast_len(padded.shape[0]), scipy.fft.next_fast_len(padded.shape[1]))
    transfer, rms = _psf_transfer(shape, round(imaging.sigma_axial, 4), round(imaging.sigma_lateral, 4))
    spectrum = scipy.fft.fft2(padded, s=shape)
    spectrum *= transfer
    field = scipy.fft.ifft2(spectrum, overwrite_x=True)
    n_samples, n_lines = scatterers.shape
    return field[pad_z : pad_z + n_samples, pad_x : pad_x + n_lines], rms


def _beam_image(
    scene: _Scene,
    acoustics: tuple[np.ndarray, np.ndarray, np.ndarray],
    gaussian: np.ndarray,
    uniform: np.ndarray,
    noise: np.ndarray,
) -> np.ndarray:
    """Log-compressed B-mode in beam space, float32 grey levels in [0, 255].

    Args:
        acoustics: output of :meth:`_Scene.acoustics` on the beam grid.
        gaussian: unit-variance scatterer amplitudes ``(n_samples, n_lines)``.
        uniform: U(0, 1) draws that thin the scatterers to the tissue density.
        noise: complex unit-variance receiver noise.
    """
    echo, density, attenuation = acoustics
    imaging = scene.imaging
    amplitude = np.sqrt(echo / density) * (uniform < density)  # sparse scatterers keep the mean power
    field, rms = _pulse_echo(gaussian * amplitude, imaging)
    n_samples = echo.shape[0]
    depth = (np.arange(n_samples, dtype=_FLOAT) + 0.5) / n_samples
    # Excess attenuation integrated along each beam: a shadow (or enhancement) that starts in the lesion and
    # continues below it along the line of sight.
    posterior_db = -np.cumsum(attenuation, axis=0) / _FLOAT(n_samples)
    tissue_gain = 10 ** ((imaging.residual_gain_db(depth)[:, None] + posterior_db) / _FLOAT(20))
    noise_gain = _FLOAT(10 ** (imaging.noise_db / 20)) * 10 ** (imaging.tgc_db_curve(depth)[:, None] / _FLOAT(20))
    field = field * (tissue_gain / _FLOAT(rms)) + noise * noise_gain
    intensity = np.square(field.real) + np.square(field.imag)
    # Scanners compound and smooth before log compression, which fills the deepest speckle nulls.
    smoothing = (imaging.smoothing * imaging.sigma_axial, imaging.smoothing * imaging.sigma_lateral)
    intensity = ndimage.gaussian_filter(intensity, smoothing, mode="nearest", truncate=3.0)
    decibels = _FLOAT(10) * np.log10(intensity + _FLOAT(1e-12))
    grey = (decibels + _FLOAT(imaging.gain + 0.66 * imaging.dynamic_range)) * _FLOAT(255 / imaging.dynamic_range)
    return np.clip(grey, 0, 255, out=grey)


def _draw_noise(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    pair = rng.standard_normal((2, *shape), dtype=_FLOAT) * _FLOAT(math.sqrt(0.5))
    return pair[0] + 1j * pair[1]


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(image, 0, 255)).astype(np.uint8)


# ----------------------------------------------------------------------------------------------------------
# Strain elastography and annotations
# ----------------------------------------------------------------------------------------------------------


def _elastogram(scene: _Scene, rng: np.random.Generator, cone: np.ndarray) -> np.ndarray:
    """Strain image (uint8, black outside the cone): strain ~ 1 / stiffness, blurred, decaying with depth."""
    probe = scene.probe
    z, x = probe.display_grid()
    strain = 1.0 / scene.stiffness(z, x)
    # Strain estimators average displacement gradients over a window, so edges are soft.
    sigma = 0.012 * min(probe.height, probe.width) + 0.6
    strain = ndimage.gaussian_filter(strain, sigma, mode="nearest")
    noise = ndimage.gaussian_filter(rng.standard_normal(strain.shape, dtype=_FLOAT), 2 * sigma, mode="wrap")
    noise *= _FLOAT(2 * math.sqrt(math.pi) * 2 * sigma)  # smoothing white noise by s leaves std 1 / (2 sqrt(pi) s)
    strain = strain * np.exp(_FLOAT(0.12) * noise) * (1 - _FLOAT(0.35) * np.clip(probe.depth(z, x), 0, 1))
    reference = np.median(strain[cone]) if cone.any() else 1.0
    grey = _FLOAT(128) + _FLOAT(45) * np.log2(np.maximum(strain, 1e-6) / _FLOAT(reference))
    return _to_uint8(grey) * cone


def _glyph_patch(rng: np.random.Generator, num_chars: int, scale: int) -> np.ndarray:
    """A line of random 5x3 pixel glyphs (text-like), upscaled by ``scale``; bool ``(5 s, 4 s n - s)``."""
    glyphs = rng.random((num_chars, 5, 3)) < 0.55
    glyphs[:, 0, 1] |= ~glyphs.any(axis=(1, 2))  # no blank characters
    spaced = np.concatenate([glyphs, np.zeros((num_chars, 5, 1), dtype=bool)], axis=2)
    line = spaced.transpose(1, 0, 2).reshape(5, num_chars * 4)[:, :-1]
    return np.kron(line, np.ones((scale, scale), dtype=bool))


def _burn_annotations(image: np.ndarray, free: np.ndarray, rng: np.random.Generator) -> None:
    """Burn text lines, a depth scale and a caliper mark into ``image`` where ``free`` (outside the cone) is True."""
    height, width = image.shape
    scale = max(1, round(min(height, width) / 128))
    margin = 2 * scale

    def place(patch: np.ndarray, row: int, col: int) -> bool:
        rows, cols = patch.shape
        if row < 0 or col < 0 or row + rows > height or col + cols > width:
            return False
        if not free[row : row + rows, col : col + cols].all():
            return False
        region = image[row : row + rows, col : col + cols]
        region[patch] = np.uint8(rng.integers(215, 256))
        return True

    line_height = 7 * scale
    for corner in ("top_left", "top_right", "bottom_left", "bottom_right"):
        for line in range(int(rng.integers(1, 3))):
            for num_chars in range(int(rng.integers(5, 11)), 2, -1):
                patch = _glyph_patch(rng, num_chars, scale)
                row = margin + line * line_height
                if corner.startswith("bottom"):
                    row = height - margin - patch.shape[0] - line * line_height
                col = margin if corner.endswith("left") else width - margin - patch.shape[1]
                if place(patch, row, col):
                    break
    # Depth scale: short ticks down the right border, drawn only where they stay clear of the cone.
    tick = np.ones((scale, 3 * scale), dtype=bool)
    col = width - margin - tick.shape[1]
    for row in np.linspace(0.1 * height, 0.95 * height, 10).astype(int):
        place(tick, int(row), col)
    # A caliper "+" in a free spot of the left border.
    cross = np.zeros((5 * scale, 5 * scale), dtype=bool)
    cross[2 * scale : 3 * scale, :] = True
    cross[:, 2 * scale : 3 * scale] = True
    for row in np.linspace(0.25 * height, 0.9 * height, 8).astype(int):
        if place(cross, int(row), margin):
            break


# ----------------------------------------------------------------------------------------------------------
# Public simulators
# ----------------------------------------------------------------------------------------------------------


def simulate_image(
    seed: int | np.random.Generator,
    size: tuple[int, int] = (256, 256),
    geometry: str = "linear",
    lesion_class: str | None = "benign",
    label_mode: str = "lesion",
    elastography: bool = False,
    annotations: bool = False,
) -> dict[str, np.ndarray | str]:
    """Simulate one B-mode image with its label map and scan cone.

    Args:
        seed: an int (>= 0) or a Generator (which is advanced). The same seed gives bit-identical output.
        size: display ``(H, W)`` in pixels (or one int for a square), at least 32 per side.
        geometry: ``"linear"`` (rectangular field of view inside a black border) or ``"curvilinear"`` (sector).
        lesion_class: ``"benign"``, ``"malignant"``, or ``"normal"`` / ``None`` for no lesion.
        label_mode: ``"lesion"`` (mask 0/1 of the lesion) or ``"multi_structure"`` (mask 0/1/2 of a two-lipped
            organ; a benign/malignant lesion is drawn beside it, unlabelled, so the class stays visible).
        elastography: also return a co-registered strain image.
        annotations: burn text-like annotations, a depth scale and a caliper mark outside the cone. They use
            their own random stream, so the image inside the cone does not depend on this flag.

    Returns:
        ``{"image": uint8 (H, W), "mask": uint8 (H, W), "cone": bool (H, W), "class": str, "geometry": str}``
        plus ``"elastography": uint8 (H, W)`` when asked. Image, mask and strain are 0 outside the cone.

    Raises:
        ValueError: unknown ``geometry`` / ``lesion_class`` / ``label_mode``, or a too small ``size``.
        TypeError: ``seed`` or ``size`` of the wrong type.
    """
    height, width = _check_size(size)
    geometry = _check_choice("geometry", geometry, GEOMETRIES)
    lesion_class = _check_lesion_class(lesion_class)
    label_mode = _check_choice("label_mode", label_mode, LABEL_MODES)
    rng = _as_generator(seed)
    # Independent child streams: speckle, strain noise and annotations never shift the anatomy draws.
    scene_rng, speckle_rng, elasto_rng, annotation_rng = rng.spawn(4)
    probe = _draw_probe(scene_rng, geometry, height, width)
    scene = _draw_scene(scene_rng, probe, lesion_class, label_mode)
    beam_shape = (probe.n_samples, probe.n_lines)
    gaussian = speckle_rng.standard_normal(beam_shape, dtype=_FLOAT)
    uniform = speckle_rng.random(beam_shape, dtype=_FLOAT)
    noise = _draw_noise(speckle_rng, beam_shape)
    z, x = probe.beam_grid()
    beam = _beam_image(scene, scene.acoustics(z, x), gaussian, uniform, noise)
    cone = probe.cone()
    image = _to_uint8(probe.to_display(beam)) * cone
    mask = scene.labels(*probe.display_grid(), label_mode) * cone
    result: dict[str, np.ndarray | str] = {
        "image": image.astype(np.uint8),
        "mask": mask.astype(np.uint8),
        "cone": cone,
        "class": lesion_class,
        "geometry": geometry,
    }
    if elastography:
        result["elastography"] = _elastogram(scene, elasto_rng, cone).astype(np.uint8)
    if annotations:
        _burn_annotations(result["image"], ~probe.cone(margin_px=2.0), annotation_rng)
    return result


@dataclass(frozen=True)
class _Motion:
    """Smooth probe motion (translation, rocking) and breathing-like tissue compression over a clip."""

    shift_x: tuple[float, float, float]  # amplitude, cycles per clip, phase
    shift_z: tuple[float, float, float]
    rotation: tuple[float, float, float]
    breathing: tuple[float, float, float]
    bulge: float

    @staticmethod
    def _wave(params: tuple[float, float, float], time: float) -> float:
        amplitude, cycles, phase = params
        return amplitude * (math.sin(2 * math.pi * cycles * time + phase) - math.sin(phase))

    def to_tissue(self, z: np.ndarray, x: np.ndarray, time: float) -> tuple[np.ndarray, np.ndarray]:
        """Map probe coordinates of a frame at ``time`` in [0, 1] to tissue coordinates (identity at time 0)."""
        compression = self._wave(self.breathing, time)
        lateral_profile = 1 + _FLOAT(self.bulge) * np.cos(_FLOAT(np.pi) * x)
        z_def = z * (1 + _FLOAT(compression) * lateral_profile)
        x_def = x * (1 + _FLOAT(0.3 * compression) * np.clip(z, 0, 1))
        angle = self._wave(self.rotation, time)
        cos_a, sin_a = _FLOAT(math.cos(angle)), _FLOAT(math.sin(angle))
        z_t = cos_a * z_def - sin_a * x_def + _FLOAT(self._wave(self.shift_z, time))
        x_t = sin_a * z_def + cos_a * x_def + _FLOAT(self._wave(self.shift_x, time))
        return z_t.astype(_FLOAT), x_t.astype(_FLOAT)


def _draw_motion(rng: np.random.Generator, scale: float) -> _Motion:
    def wave(low: float, high: float, cycles: tuple[float, float]) -> tuple[float, float, float]:
        sign = 1.0 if rng.random() < 0.5 else -1.0
        return (sign * rng.uniform(low, high) * scale, rng.uniform(*cycles), rng.uniform(0, 2 * np.pi))

    return _Motion(
        shift_x=wave(0.03, 0.07, (0.3, 0.8)),
        shift_z=wave(0.005, 0.015, (0.3, 0.8)),
        rotation=wave(math.radians(1.0), math.radians(4.0), (0.3, 0.7)),
        breathing=wave(0.02, 0.045, (0.6, 1.4)),
        bulge=rng.uniform(-0.3, 0.3),
    )


class _TissueNoise:
    """Scatterer amplitudes attached to the tissue: a white grid sampled at moving tissue coordinates.

    Args:
        rng: source of the grid values.
        low, high: ``(z, x)`` corners of the tissue region that any frame will sample.
        spacing: grid pitch, one axial beam sample, so the speckle grain matches a single image's.
    """

    def __init__(self, rng: np.random.Generator, low: np.ndarray, high: np.ndarray, spacing: float) -> None:
        self.origin = low - 2 * spacing
        self.spacing = spacing
        shape = tuple(int(n) for n in np.ceil((high - low) / spacing).astype(int) + 5)
        self.gaussian = rng.standard_normal(shape, dtype=_FLOAT)
        self.uniform = rng.random(shape, dtype=_FLOAT)

    def sample(self, z: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Bilinear samples of the Gaussian grid, renormalised to unit variance, and nearest uniform samples."""
        fz = (z - _FLOAT(self.origin[0])) / _FLOAT(self.spacing)
        fx = (x - _FLOAT(self.origin[1])) / _FLOAT(self.spacing)
        iz = np.clip(np.floor(fz).astype(np.intp), 0, self.gaussian.shape[0] - 2)
        ix = np.clip(np.floor(fx).astype(np.intp), 0, self.gaussian.shape[1] - 2)
        wz, wx = np.clip(fz - iz, 0, 1), np.clip(fx - ix, 0, 1)
        g = self.gaussian
        value = (1 - wz) * ((1 - wx) * g[iz, ix] + wx * g[iz, ix + 1]) + wz * (
            (1 - wx) * g[iz + 1, ix] + wx * g[iz + 1, ix + 1]
        )
        # Interpolating white noise lowers its variance by sum(w^2); undo it so brightness does not ripple.
        norm = np.sqrt((np.square(1 - wz) + np.square(wz)) * (np.square(1 - wx) + np.square(wx)))
        nearest = self.uniform[
            np.rint(fz).astype(np.intp).clip(0, g.shape[0] - 1), np.rint(fx).astype(np.intp).clip(0, g.shape[1] - 1)
        ]
        return (value / norm).astype(_FLOAT), nearest


def simulate_cine(
    seed: int | np.random.Generator,
    num_frames: int = 16,
    size: tuple[int, int] = (256, 256),
    geometry: str = "curvilinear",
    lesion_class: str | None = "benign",
    label_mode: str = "lesion",
    annotations: bool = False,
    motion_scale: float = 1.0,
    speckle_correlation: float = 0.95,
) -> dict[str, np.ndarray | str]:
    """Simulate a cine loop: probe motion over a tissue map, breathing-like deformation, decorrelating speckle.

    Args:
        seed: an int (>= 0) or a Generator (which is advanced).
        num_frames: number of frames ``T`` (>= 1).
        size, geometry, lesion_class, label_mode, annotations: as in :func:`simulate_image`.
        motion_scale: multiplies the probe translation / rotation and breathing amplitudes (>= 0; 0 = static).
        speckle_correlation: weight in [0, 1] of the tissue-attached scatterers against fresh ones in each
            frame (out-of-plane decorrelation); 1 = speckle moves rigidly with the tissue.

    Returns:
        ``{"frames": uint8 (T, H, W), "masks": uint8 (T, H, W), "cone": bool (H, W), "class": str,
        "geometry": str}``. Masks are evaluated on the same moved tissue coordinates as the frames.

    Raises:
        ValueError: invalid ``num_frames``, ``motion_scale``, ``speckle_correlation`` or any argument that
            :func:`simulate_image` rejects.
    """
    height, width = _check_size(size)
    geometry = _check_choice("geometry", geometry, GEOMETRIES)
    lesion_class = _check_lesion_class(lesion_class)
    label_mode = _check_choice("label_mode", label_mode, LABEL_MODES)
    if isinstance(num_frames, bool) or not isinstance(num_frames, (int, np.integer)) or num_frames < 1:
        raise ValueError(f"num_frames must be a positive int, got {num_frames!r}.")
    if not motion_scale >= 0:
        raise ValueError(f"motion_scale must be >= 0, got {motion_scale!r}.")
    if not 0.0 <= speckle_correlation <= 1.0:
        raise ValueError(f"speckle_correlation must lie in [0, 1], got {speckle_correlation!r}.")
    rng = _as_generator(seed)
    scene_rng, motion_rng, speckle_rng, annotation_rng = rng.spawn(4)
    probe = _draw_probe(scene_rng, geometry, height, width)
    scene = _draw_scene(scene_rng, probe, lesion_class, label_mode, motion_margin=0.1)
    motion = _draw_motion(motion_rng, float(motion_scale))
    times = np.linspace(0.0, 1.0, num_frames) if num_frames > 1 else np.zeros(1)
    beam_z, beam_x = np.broadcast_arrays(*probe.beam_grid())
    display_z, display_x = probe.display_grid()
    tissue_beams = [motion.to_tissue(beam_z, beam_x, float(t)) for t in times]
    low = np.array([min(float(b[0].min()) for b in tissue_beams), min(float(b[1].min()) for b in tissue_beams)])
    high = np.array([max(float(b[0].max()) for b in tissue_beams), max(float(b[1].max()) for b in tissue_beams)])
    tissue_noise = _TissueNoise(speckle_rng, low, high, spacing=1.0 / probe.n_samples)
    fresh_weight = _FLOAT(math.sqrt(1.0 - speckle_correlation**2))
    cone = probe.cone()
    frames = np.zeros((num_frames, height, width), dtype=np.uint8)
    masks = np.zeros((num_frames, height, width), dtype=np.uint8)
    for index, (time, (tz, tx)) in enumerate(zip(times, tissue_beams)):
        attached, uniform = tissue_noise.sample(tz, tx)
        fresh = speckle_rng.standard_normal(attached.shape, dtype=_FLOAT)
        gaussian = _FLOAT(speckle_correlation) * attached + fresh_weight * fresh
        noise = _draw_noise(speckle_rng, attached.shape)
        beam = _beam_image(scene, scene.acoustics(tz, tx), gaussian, uniform, noise)
        frames[index] = _to_uint8(probe.to_display(beam)) * cone
        dz, dx = motion.to_tissue(*np.broadcast_arrays(display_z, display_x), float(time))
        masks[index] = scene.labels(dz, dx, label_mode) * cone
    if annotations:
        overlay = np.zeros((height, width), dtype=np.uint8)
        _burn_annotations(overlay, ~probe.cone(margin_px=2.0), annotation_rng)
        frames = np.maximum(frames, overlay[None])
    return {"frames": frames, "masks": masks, "cone": cone, "class": lesion_class, "geometry": geometry}


# ----------------------------------------------------------------------------------------------------------
# Data set writer
# ----------------------------------------------------------------------------------------------------------


def _write_video(path: pathlib.Path, frames: np.ndarray, fps: int = _VIDEO_FPS) -> None:
    """Encode grey ``(T, H, W)`` uint8 frames as an MPEG-4 Part 2 ``.mp4`` with PyAV, atomically."""
    import av

    _, height, width = frames.shape
    with atomic_write(path, "wb") as handle, av.open(handle, mode="w", format="mp4") as container:
        stream = container.add_stream(_VIDEO_CODEC, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.bit_rate = int(2.0 * height * width * fps)  # about 2 bits per pixel: speckle survives
        stream.thread_count = 1  # one thread keeps the bitstream reproducible
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="gray")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _remove_stale_phantom_files(root: pathlib.Path, keep: dict[str, set[str]]) -> None:
    """Delete phantom-named files that this run will not rewrite, left by an earlier phantom in ``root``.

    Only runs when ``root/dataset.json`` says the folder holds a phantom, and only touches files named like the
    phantom's own (``case_N.png``, ``cine_N.mp4``) in its four folders; a folder left empty is removed.

    Args:
        root: the data set folder.
        keep: folder name -> file names that the current run writes there.
    """
    meta_path = root / "dataset.json"
    if not meta_path.is_file():
        return
    try:
        generator = json.loads(meta_path.read_text(encoding="utf-8")).get("generator", {})
    except (OSError, ValueError, AttributeError):
        return
    if not isinstance(generator, dict) or generator.get("module") != __name__:
        return
    pattern = re.compile(r"^(case_\d+\.png|cine_\d+\.mp4)$")
    for folder in ("images", "masks", "images_m2", "videos"):
        directory = root / folder
        if not directory.is_dir():
            continue
        for path in directory.iterdir():
            if pattern.match(path.name) and path.name not in keep.get(folder, set()):
                path.unlink()
        if not any(directory.iterdir()):
            directory.rmdir()


def write_phantom_dataset(
    root: str | os.PathLike,
    num_images: int = 120,
    size: int | tuple[int, int] = 256,
    seed: int = 0,
    geometry: str = "mixed",
    class_names: tuple[str, ...] = ("benign", "malignant"),
    label_mode: str = "lesion",
    modalities: tuple[str, ...] = ("bmode",),
    num_videos: int = 0,
    frames_per_video: int = 16,
    annotations: bool = True,
    progress: bool = False,
) -> pathlib.Path:
    """Write a phantom data set in the usseg "generic" layout.

    Layout: ``images/case_NNNN.png`` (8-bit grey), ``masks/case_NNNN.png`` ({0, 255} in ``"lesion"`` mode, raw
    labels 0..2 in ``"multi_structure"`` mode; empty for ``normal`` cases), ``images_m2/case_NNNN.png`` (strain)
    when ``"elastography"`` is in ``modalities``, ``videos/cine_NNNN.mp4`` (unlabelled MPEG-4 loops),
    ``classes.csv`` (``image,class`` for every image and video) and ``dataset.json`` with a ``"generator"``
    record of all settings. Case ``i`` is simulated with :func:`case_generator` ``(seed, i, "image")`` and the
    class and geometry of :func:`phantom_case_plan`, so it can be regenerated alone. Every file is written
    atomically. Files of an earlier, larger phantom in ``root`` are removed; nothing else is touched. The
    datalist is not built here (see ``usseg.data.datalist``).

    Args:
        root: output folder (created).
        num_images: number of labelled images (>= 1), classes balanced by cycling through ``class_names``.
        size: image size, an int or ``(H, W)``; must be even when ``num_videos > 0`` (yuv420p video).
        seed: data set seed (>= 0).
        geometry: ``"linear"``, ``"curvilinear"`` or ``"mixed"`` (alternating, balanced within each class).
        class_names: distinct names among ``"benign"``, ``"malignant"``, ``"normal"``.
        label_mode: ``"lesion"`` or ``"multi_structure"``.
        modalities: ``("bmode",)`` or ``("bmode", "elastography")``.
        num_videos: number of cine loops (>= 0).
        frames_per_video: frames per loop (>= 2).
        annotations: burn annotations outside the scan cone.
        progress: show a tqdm progress bar.

    Returns:
        ``root`` as a :class:`pathlib.Path`.

    Raises:
        ValueError: an unknown geometry, class, label mode or modality (the message names it), or counts / sizes
            out of range.
        TypeError: arguments of the wrong type.
    """
    height, width = _check_size(size)
    for name, value, minimum in (
        ("num_images", num_images, 1),
        ("num_videos", num_videos, 0),
        ("frames_per_video", frames_per_video, 2),
        ("seed", seed, 0),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"{name} must be an int, got {value!r}.")
        if value < minimum:
            raise ValueError(f"{name} must be >= {minimum}, got {value}.")
    _check_choice("geometry", geometry, (*GEOMETRIES, "mixed"))
    label_mode = _check_choice("label_mode", label_mode, LABEL_MODES)
    if isinstance(class_names, str) or not class_names:
        raise ValueError(f"class_names must be a non-empty tuple of class names, got {class_names!r}.")
    class_names = tuple(class_names)
    for name in class_names:
        _check_choice("class name", name, LESION_CLASSES)
    if len(set(class_names)) != len(class_names):
        raise ValueError(f"class_names must be distinct, got {class_names!r}.")
    if isinstance(modalities, str):
        raise ValueError(f"modalities must be a tuple such as ('bmode',), got {modalities!r}.")
    modalities = tuple(modalities)
    for name in modalities:
        _check_choice("modality", name, MODALITIES)
    if "bmode" not in modalities or len(set(modalities)) != len(modalities):
        raise ValueError(f"modalities must contain 'bmode' once and no duplicates, got {modalities!r}.")
    if num_videos > 0 and (height % 2 or width % 2):
        raise ValueError(f"size must be even in both dimensions to encode videos (yuv420p), got {(height, width)}.")

    root = ensure_writable_dir(root)
    digits = max(4, len(str(max(num_images, num_videos) - 1)))
    image_names = [f"case_{i:0{digits}d}.png" for i in range(num_images)]
    video_names = [f"cine_{i:0{digits}d}.mp4" for i in range(num_videos)]
    with_elastography = "elastography" in modalities
    written = set(image_names)
    keep = {"images": written, "masks": written, "images_m2": written if with_elastography else set()}
    _remove_stale_phantom_files(root, {**keep, "videos": set(video_names)})

    rows: list[tuple[str, str]] = []
    cases: list[dict[str, Any]] = []
    with tqdm(total=num_images + num_videos, desc="phantom", disable=not progress, unit="case") as bar:
        for index, name in enumerate(image_names):
            class_name, case_geometry = phantom_case_plan(index, class_names, geometry)
            case = simulate_image(
                case_generator(seed, index, "image"),
                size=(height, width),
                geometry=case_geometry,
                lesion_class=class_name,
                label_mode=label_mode,
                elastography=with_elastography,
                annotations=annotations,
            )
            atomic_save_image(root / "images" / name, case["image"])
            mask = case["mask"] * np.uint8(255) if label_mode == "lesion" else case["mask"]
            atomic_save_image(root / "masks" / name, mask)
            if with_elastography:
                atomic_save_image(root / "images_m2" / name, case["elastography"])
            rows.append((name, class_name))
            cases.append(
                {"image": name, "class": class_name, "geometry": case_geometry, "stream": "image", "index": index}
            )
            bar.update(1)
        for index, name in enumerate(video_names):
            class_name, case_geometry = phantom_case_plan(index, class_names, geometry)
            cine = simulate_cine(
                case_generator(seed, index, "video"),
                num_frames=frames_per_video,
                size=(height, width),
                geometry=case_geometry,
                lesion_class=class_name,
                label_mode=label_mode,
                annotations=annotations,
            )
            _write_video(root / "videos" / name, cine["frames"])
            rows.append((name, class_name))
            cases.append(
                {"image": name, "class": class_name, "geometry": case_geometry, "stream": "video", "index": index}
            )
            bar.update(1)

    with atomic_write(root / "classes.csv", "w") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(("image", "class"))
        writer.writerows(rows)
    if label_mode == "lesion":
        labels = {"0": "background", "1": "lesion"}
    else:
        labels = {"0": "background", "1": "upper_structure", "2": "lower_structure"}
    atomic_write_json(
        root / "dataset.json",
        {
            "name": "usseg_phantom",
            "mask_mode": "binary" if label_mode == "lesion" else "labels",
            "labels": labels,
            "class_names": list(class_names),
            "modalities": list(modalities),
            "generator": {
                "module": __name__,
                "version": PHANTOM_VERSION,
                "seed": int(seed),
                "num_images": int(num_images),
                "size": [height, width],
                "geometry": geometry,
                "class_names": list(class_names),
                "label_mode": label_mode,
                "modalities": list(modalities),
                "num_videos": int(num_videos),
                "frames_per_video": int(frames_per_video),
                "annotations": bool(annotations),
                "video_codec": _VIDEO_CODEC,
                "video_fps": _VIDEO_FPS,
                "case_seed": "numpy.random.SeedSequence(seed, spawn_key=(stream, index)); stream 0 = image, 1 = video",
                "cases": cases,
            },
        },
    )
    return root
