# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""Positive pairs from the frames of one ultrasound video, for contrastive pre-training.

:class:`VideoFramePair` implements the positive pair generation of USCL [0] and the positive pair interpolator
of Meta-USCL [1], as their released code computes them (``usseg`` docs, ``methods.md`` sections 2.2 and 2.3).

- [0] Chen et al., "USCL: Pretraining Deep Ultrasound Image Diagnosis Model through Video Contrastive
  Representation Learning", MICCAI 2021, https://arxiv.org/abs/2011.13066
  (code ``983632847/USCL: train_USCL/data_aug/dataset_wrapper_Ultrasound_Video_Mixup.py``).
- [1] Chen et al., "Generating and Weighting Semantically Consistent Sample Pairs for Ultrasound Contrastive
  Learning", IEEE TMI, https://arxiv.org/abs/2212.04097 (code ``Schuture/Meta-USCL: dataloader.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from monai.data import get_track_meta
from monai.transforms import Randomizable
from monai.utils import MAX_SEED, TransformBackends, convert_to_tensor

__all__ = ["VideoFramePair", "PAIR_PRESETS", "MIXING_MODES"]

PAIR_PRESETS = ("uscl", "meta_uscl")
MIXING_MODES = ("standard", "inner")
_MAX_CHANNELS = 4  # channels-last frames hold gray, RGB or RGBA; more means the layout was misread


class VideoFramePair(Randomizable):
    """Make two positive views from the frames of one video, USCL or Meta-USCL style.

    Frames are frames-first, as the usseg readers return them: ``(T, H, W)`` for grayscale or ``(T, H, W, C)``
    channels-last with ``C <= 4``; numpy arrays or tensors of any numeric dtype (usually ``uint8``). With
    ``L = T`` frames and ``n = min(L, samples)``:

    ``preset="uscl"`` (augment then mix by default):
        - ``n >= 3``: three distinct random frames ``f1, f2, f3`` (no order, no distance limit), each augmented
          independently; one ``lambda ~ Beta(*beta_uscl)`` shared by both views:
          ``view_1 = lambda * f1 + (1 - lambda) * f2`` and ``view_2 = lambda * f3 + (1 - lambda) * f2``;
        - ``n == 2``: two distinct random frames, in random order, unmixed;
        - ``n == 1``: one random frame, augmented twice (the released 1-frame video case, and USCL's image
          baseline when ``samples=1``).

    ``preset="meta_uscl"`` (mix then augment by default):
        - ``n >= 3``: ``n - 1`` distinct distances ``1 <= d_1 < ... <= min(L - 1, max_dist)``, start
          ``s ~ U{0, ..., L - 1 - d_max}``, frames ``F[s], F[s + d_1], ...`` in temporal order. With
          ``mixing="standard"`` (``n = 3``): ``alpha, beta ~ Beta(*beta_meta)`` independently,
          ``view_1 = (1 - alpha) * f0 + alpha * f1`` and ``view_2 = beta * f1 + (1 - beta) * f2``. With
          ``mixing="inner"``: each view is a convex combination of the ``n`` frames with weights given by the
          gaps between sorted uniform draws (a flat Dirichlet), drawn independently per view;
        - ``n == 2``: a distance ``d ~ U{1, ..., min(L - 1, max_dist)}`` and start ``s ~ U{0, ..., L - 1 - d}``
          give the unmixed pair ``F[s], F[s + d]``;
        - ``n == 1``: the first frame, augmented twice (the released meta batch uses ``samples=1``).

    When mixing happens before augmentation (``aug_first=False``), the views are computed from the raw frames in
    float64 and cast back to the frame dtype by truncation, as ``np.uint8(...)`` does in the released code;
    float frames are not cast. Otherwise every selected frame is augmented once (a frame shared by both views is
    augmented once, as released) and the views are mixed in float32.

    Views are returned as float32 channel-first tensors ``(C, H, W)`` (``C = 1`` for grayscale frames), in the
    frames' value range (0-255 for ``uint8``); scaling and normalisation belong in ``augment``.

    Args:
        preset: ``"uscl"`` or ``"meta_uscl"``. Defaults to ``"uscl"``.
        augment: array transform applied to each ``(C, H, W)`` float32 tensor (frame or mixed view), or ``None``
            for no augmentation. Randomizable augmentations are seeded by :meth:`set_random_state`.
        samples: number of frames drawn per video: 1, 2 or 3 (more only with ``mixing="inner"``). Defaults to 3.
        max_dist: largest frame distance for ``meta_uscl``; ``None`` means no limit (the released default 999).
            Must be ``None`` for ``uscl``, which has no distance limit.
        beta_uscl: ``(a, b)`` of the Beta law of ``lambda`` (``uscl``). Defaults to (0.5, 0.5).
        beta_meta: ``(a, b)`` of the Beta law of ``alpha`` and ``beta`` (``meta_uscl``). Defaults to (3, 5).
        aug_first: augment frames before mixing; ``None`` takes the preset's released choice (True for ``uscl``,
            False for ``meta_uscl``).
        mixing: ``"standard"`` or ``"inner"`` (``meta_uscl`` only). Defaults to ``"standard"``.

    Raises:
        ValueError: on an unknown preset or mixing mode, a non-positive ``samples`` or Beta parameter, a
            ``max_dist`` too small to draw ``samples - 1`` distinct distances, or options that do not apply to
            the preset.
        TypeError: when ``augment`` is neither callable nor ``None``.

    Examples:
        >>> import numpy as np
        >>> frames = np.random.default_rng(0).integers(0, 256, size=(10, 32, 32), dtype=np.uint8)
        >>> pair = VideoFramePair(preset="meta_uscl").set_random_state(0)
        >>> view_1, view_2 = pair(frames)
        >>> tuple(view_1.shape), list(pair.frame_indices) == sorted(pair.frame_indices)
        ((1, 32, 32), True)
    """

    backend = [TransformBackends.NUMPY, TransformBackends.TORCH]

    def __init__(
        self,
        preset: str = "uscl",
        augment: Callable | None = None,
        samples: int = 3,
        max_dist: int | None = None,
        beta_uscl: tuple[float, float] = (0.5, 0.5),
        beta_meta: tuple[float, float] = (3.0, 5.0),
        aug_first: bool | None = None,
        mixing: str = "standard",
    ) -> None:
        if preset not in PAIR_PRESETS:
            raise ValueError(f"preset must be one of {PAIR_PRESETS}, got {preset!r}.")
        if mixing not in MIXING_MODES:
            raise ValueError(f"mixing must be one of {MIXING_MODES}, got {mixing!r}.")
        if preset == "uscl" and mixing != "standard":
            raise ValueError(f"mixing={mixing!r} exists only for preset 'meta_uscl'; USCL mixes with one lambda.")
        if isinstance(samples, bool) or not isinstance(samples, (int, np.integer)) or samples < 1:
            raise ValueError(f"samples must be a positive integer, got {samples!r}.")
        if mixing == "standard" and samples > 3:
            raise ValueError(f"samples > 3 needs mixing='inner'; standard mixing uses 3 frames, got {samples!r}.")
        if max_dist is not None:
            if preset == "uscl":
                raise ValueError(f"max_dist applies only to preset 'meta_uscl'; USCL has no limit, got {max_dist!r}.")
            if isinstance(max_dist, bool) or not isinstance(max_dist, (int, np.integer)) or max_dist < 1:
                raise ValueError(f"max_dist must be a positive integer or None, got {max_dist!r}.")
            if max_dist < samples - 1:
                raise ValueError(
                    f"max_dist={max_dist!r} cannot give {samples - 1} distinct distances for samples={samples!r}."
                )
        for name, params in (("beta_uscl", beta_uscl), ("beta_meta", beta_meta)):
            if len(params) != 2 or not all(float(p) > 0 for p in params):
                raise ValueError(f"{name} must be two positive Beta parameters (a, b), got {params!r}.")
        if augment is not None and not callable(augment):
            raise TypeError(f"augment must be callable or None, got {type(augment).__name__}.")

        self.preset = preset
        self.augment = augment
        self.samples = int(samples)
        self.max_dist = None if max_dist is None else int(max_dist)
        self.beta_uscl = (float(beta_uscl[0]), float(beta_uscl[1]))
        self.beta_meta = (float(beta_meta[0]), float(beta_meta[1]))
        self.aug_first = (preset == "uscl") if aug_first is None else bool(aug_first)
        self.mixing = mixing
        # The draw of the last randomize(): distinct frame indices and the (2, m) weights combining them.
        self._num_frames: int | None = None
        self._frame_indices: tuple[int, ...] | None = None
        self._weights: np.ndarray | None = None
        self._coefficients: dict[str, float] = {}

    @property
    def frame_indices(self) -> tuple[int, ...]:
        """Distinct frame indices of the last draw, in the order of the formulas (``f1, f2, f3`` / ``f0, f1, f2``).

        Raises:
            RuntimeError: before the first call to :meth:`randomize`.
        """
        if self._frame_indices is None:
            raise RuntimeError("call randomize() before reading the drawn frame indices.")
        return self._frame_indices

    @property
    def weights(self) -> np.ndarray:
        """Weights of the last draw, shape ``(2, m)``: view ``i`` is ``sum_j weights[i, j] * frame_j``.

        Raises:
            RuntimeError: before the first call to :meth:`randomize`.
        """
        if self._weights is None:
            raise RuntimeError("call randomize() before reading the drawn weights.")
        return self._weights.copy()

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> VideoFramePair:
        """Seed the frame and coefficient draws, and ``augment`` with a derived seed when it is randomizable.

        Args:
            seed: seed of this transform's generator.
            state: a generator to use instead of ``seed``.

        Returns:
            ``self``.
        """
        super().set_random_state(seed, state)
        if isinstance(self.augment, Randomizable):
            self.augment.set_random_state(seed=int(self.R.randint(MAX_SEED, dtype="uint32")))
        return self

    def randomize(self, num_frames: int) -> None:
        """Draw the frames and the mixing coefficients for a video of ``num_frames`` frames.

        Args:
            num_frames: number of frames ``L`` of the video, at least 1.

        Raises:
            ValueError: when ``num_frames`` is not a positive integer.
        """
        if isinstance(num_frames, bool) or not isinstance(num_frames, (int, np.integer)) or num_frames < 1:
            raise ValueError(f"num_frames must be a positive integer, got {num_frames!r}.")
        num_frames = int(num_frames)
        used = min(num_frames, self.samples)
        if self.preset == "uscl":
            indices, weights, coefficients = self._draw_uscl(num_frames, used)
        else:
            indices, weights, coefficients = self._draw_meta_uscl(num_frames, used)
        self._num_frames = num_frames
        self._frame_indices = tuple(int(i) for i in indices)
        self._weights = np.asarray(weights, dtype=np.float64)
        self._coefficients = coefficients

    def _coefficient_names(self) -> tuple[str, ...]:
        if self.preset == "uscl":
            return ("lambda",)
        return ("alpha", "beta") if self.mixing == "standard" else ()

    def _unmixed(self) -> dict[str, float]:
        return dict.fromkeys(self._coefficient_names(), float("nan"))

    def _draw_uscl(self, num_frames: int, used: int) -> tuple[list[int], list[list[float]], dict[str, float]]:
        if used >= 3:
            indices = self.R.choice(num_frames, size=3, replace=False).tolist()
            lam = float(self.R.beta(*self.beta_uscl))
            return indices, [[lam, 1.0 - lam, 0.0], [0.0, 1.0 - lam, lam]], {"lambda": lam}
        if used == 2:
            return self.R.choice(num_frames, size=2, replace=False).tolist(), [[1.0, 0.0], [0.0, 1.0]], self._unmixed()
        return [int(self.R.randint(num_frames))], [[1.0], [1.0]], self._unmixed()

    def _draw_meta_uscl(self, num_frames: int, used: int) -> tuple[list[int], list[list[float]], dict[str, float]]:
        # d_max <= L - 1 keeps every frame inside the video; max_dist >= samples - 1 (checked in __init__) and
        # used <= L keep enough distinct distances available.
        largest = num_frames - 1 if self.max_dist is None else min(num_frames - 1, self.max_dist)
        if used >= 3:
            distances = np.sort(self.R.choice(np.arange(1, largest + 1), size=used - 1, replace=False))
            start = int(self.R.randint(num_frames - int(distances[-1])))
            indices = [start] + [start + int(d) for d in distances]
            if self.mixing == "standard":
                alpha = float(self.R.beta(*self.beta_meta))
                beta = float(self.R.beta(*self.beta_meta))
                return indices, [[1.0 - alpha, alpha, 0.0], [0.0, beta, 1.0 - beta]], {"alpha": alpha, "beta": beta}
            weights = [self._flat_dirichlet(used), self._flat_dirichlet(used)]
            return indices, weights, {}
        if used == 2:
            distance = int(self.R.randint(1, largest + 1))
            start = int(self.R.randint(num_frames - distance))
            return [start, start + distance], [[1.0, 0.0], [0.0, 1.0]], self._unmixed()
        return [0], [[1.0], [1.0]], self._unmixed()

    def _flat_dirichlet(self, count: int) -> list[float]:
        # Gaps between sorted uniforms on [0, 1], as the released "inner" mode draws them.
        cuts = np.concatenate([[0.0], np.sort(self.R.rand(count - 1)), [1.0]])
        return np.diff(cuts).tolist()

    def pair_info(self) -> dict[str, Any]:
        """Describe the last draw with a fixed structure, so that it collates into batches.

        Returns:
            A dictionary with ``preset`` (str), ``num_frames`` (int), ``mixed`` (bool), ``frame_indices``
            (int64 array of length ``max(samples, 2)``, the drawn frames in formula order, padded with -1),
            ``weights`` (float64 array ``(2, max(samples, 2))``, zero-padded; view ``i`` is
            ``sum_j weights[i, j] * frame_j``) and ``coefficients`` (``{"lambda"}`` for ``uscl``,
            ``{"alpha", "beta"}`` for standard ``meta_uscl``, empty for ``inner``; NaN when nothing was mixed).

        Raises:
            RuntimeError: before the first call to :meth:`randomize`.
        """
        indices = self.frame_indices
        slots = max(self.samples, 2)
        padded_indices = np.full(slots, -1, dtype=np.int64)
        padded_indices[: len(indices)] = indices
        padded_weights = np.zeros((2, slots), dtype=np.float64)
        padded_weights[:, : len(indices)] = self.weights
        return {
            "preset": self.preset,
            "num_frames": self._num_frames,
            "mixed": len(indices) >= 3,
            "frame_indices": padded_indices,
            "weights": padded_weights,
            "coefficients": dict(self._coefficients),
        }

    def __call__(self, frames: np.ndarray | torch.Tensor, randomize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw frames and coefficients (unless ``randomize=False``) and return the two views.

        Args:
            frames: the whole video, ``(T, H, W)`` or ``(T, H, W, C)``.
            randomize: draw anew; ``False`` reuses the last draw, for example to apply it to another stream.

        Returns:
            ``(view_1, view_2)``, float32 tensors ``(C, H, W)``.

        Raises:
            ValueError: when the frames are not ``(T, H, W)`` / ``(T, H, W, C)`` with ``T >= 1``, or the last draw
                indexes past ``T``.
            RuntimeError: when ``randomize=False`` and nothing was drawn yet.
        """
        video = _as_frame_stack(frames, "frames")
        if randomize:
            self.randomize(video.shape[0])
        indices = self.frame_indices
        if max(indices) >= video.shape[0]:
            raise ValueError(f"the last draw uses frame {max(indices)} but the video has {video.shape[0]} frames.")
        return self.views_from_selected(video[list(indices)])

    def views_from_selected(self, selected: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Build the two views from the drawn frames only, for callers that read frames lazily.

        Args:
            selected: the frames ``frame_indices`` in that order, ``(m, H, W)`` or ``(m, H, W, C)``.

        Returns:
            ``(view_1, view_2)``, float32 tensors ``(C, H, W)``.

        Raises:
            ValueError: when ``selected`` does not hold exactly one frame per drawn index.
            RuntimeError: before the first call to :meth:`randomize`.
        """
        indices = self.frame_indices
        frames = _as_frame_stack(selected, "selected")
        if frames.shape[0] != len(indices):
            raise ValueError(
                f"selected must hold the {len(indices)} drawn frames {indices}, got shape {tuple(frames.shape)}."
            )
        weights = self.weights
        if len(indices) < 3:
            # Unmixed pair: each view is one frame (possibly the same one) with its own augmentation.
            view_1, view_2 = (self._augment(_to_channel_first(frames[int(np.argmax(row))])) for row in weights)
        elif self.aug_first:
            augmented = [self._augment(_to_channel_first(frame)) for frame in frames]
            shapes = {tuple(view.shape) for view in augmented}
            if len(shapes) != 1:
                raise ValueError(f"augment must give frames of one shape to mix them, got shapes {sorted(shapes)}.")
            view_1, view_2 = (_weighted_sum(row, augmented) for row in weights)
        else:
            view_1, view_2 = (self._augment(_to_channel_first(_mix_raw(row, frames))) for row in weights)
        return (
            convert_to_tensor(view_1, dtype=torch.float32, track_meta=get_track_meta()),
            convert_to_tensor(view_2, dtype=torch.float32, track_meta=get_track_meta()),
        )

    def _augment(self, image: torch.Tensor) -> Any:
        return image if self.augment is None else self.augment(image)


def _as_frame_stack(frames: Any, name: str) -> np.ndarray:
    if isinstance(frames, torch.Tensor):
        frames = frames.detach().cpu().numpy()
    if not isinstance(frames, np.ndarray):
        raise TypeError(f"{name} must be a numpy array or a tensor, got {type(frames).__name__}.")
    if frames.ndim not in (3, 4) or frames.shape[0] < 1 or (frames.ndim == 4 and frames.shape[-1] > _MAX_CHANNELS):
        raise ValueError(
            f"{name} must be frames-first (T, H, W) or channels-last (T, H, W, C) with T >= 1 and C <= "
            f"{_MAX_CHANNELS}, got shape {frames.shape}."
        )
    return frames.astype(frames.dtype.newbyteorder("="), copy=False)  # torch takes native byte order only


def _to_channel_first(frame: np.ndarray) -> torch.Tensor:
    chw = frame[None] if frame.ndim == 2 else np.moveaxis(frame, -1, 0)
    return convert_to_tensor(np.ascontiguousarray(chw), dtype=torch.float32, track_meta=get_track_meta())


def _mix_raw(row: np.ndarray, frames: np.ndarray) -> np.ndarray:
    # Same arithmetic as the release: float64 sum in frame order, then an integer cast that truncates.
    mixed: np.ndarray | float = 0.0
    for weight, frame in zip(row, frames):
        if weight != 0.0:
            mixed = mixed + frame * float(weight)
    mixed = np.asarray(mixed, dtype=np.float64)
    if np.issubdtype(frames.dtype, np.integer):
        info = np.iinfo(frames.dtype)
        return np.clip(np.trunc(mixed), info.min, info.max).astype(frames.dtype)
    return mixed.astype(frames.dtype)


def _weighted_sum(row: np.ndarray, images: Sequence[Any]) -> Any:
    total: Any = None
    for weight, image in zip(row, images):
        if weight != 0.0:
            term = image * float(weight)
            total = term if total is None else total + term
    return total
