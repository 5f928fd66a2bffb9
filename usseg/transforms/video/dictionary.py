# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""Dictionary version of the video positive-pair transform (a trailing ``d`` marks the dictionary version).

:class:`VideoFramePaird` takes a video under one key, either as a frame array or as a path that is read
lazily, and writes two views plus a description of the draw.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
from monai.config import KeysCollection
from monai.transforms import MapTransform, Randomizable

from usseg.errors import InputError
from usseg.transforms.video.array import VideoFramePair

__all__ = [
    "VideoFramePaird",
    "VideoFramePairD",
    "VideoFramePairDict",
    "FrameSource",
    "default_frame_source",
    "DEFAULT_CACHE_BYTES",
]

DEFAULT_CACHE_BYTES = 512 * 1024**2  # per process: every DataLoader worker holds its own cache
_SOURCES_BY_PROCESS: dict[int, FrameSource] = {}


@runtime_checkable
class FrameSource(Protocol):
    """What :class:`VideoFramePaird` needs to read a video lazily (``usseg.data.readers.VideoFrameCache`` API)."""

    def num_frames(self, path: str | os.PathLike) -> int:
        """Return the number of frames of the video at ``path``."""
        ...

    def get_frames(self, path: str | os.PathLike, indices: Sequence[int]) -> np.ndarray:
        """Return the frames ``indices`` of the video at ``path``, ``(n, H, W)`` or ``(n, H, W, 3)``."""
        ...


def default_frame_source() -> FrameSource:
    """Return this process's shared :class:`usseg.data.readers.VideoFrameCache`, creating it on first use.

    One cache per process: a DataLoader worker forked from a parent that already used the cache starts a fresh
    one instead of a copy of the parent's decoded frames, so each process keeps to its own memory budget.

    Returns:
        A grayscale frame cache (``(n, H, W)`` uint8 frames) holding at most :data:`DEFAULT_CACHE_BYTES` of
        decoded frames. For RGB frames or another budget, pass your own
        ``VideoFrameCache(max_bytes, color="rgb")`` as ``frame_source``.
    """
    pid = os.getpid()
    source = _SOURCES_BY_PROCESS.get(pid)
    if source is None:
        # Imported here so that array inputs never pull in the video decoders.
        from usseg.data.readers import VideoFrameCache

        source = VideoFrameCache(max_bytes=DEFAULT_CACHE_BYTES, color="gray")
        _SOURCES_BY_PROCESS.clear()  # entries inherited from a parent process must not be reused
        _SOURCES_BY_PROCESS[pid] = source
    return source


class VideoFramePaird(Randomizable, MapTransform):
    """Dictionary version of :class:`usseg.transforms.video.array.VideoFramePair`.

    The value under the single key (see :class:`monai.transforms.MapTransform`) is either

    - a frame array, frames-first ``(T, H, W)`` or ``(T, H, W, C)`` (numpy or tensor), or
    - a path (``str`` or ``os.PathLike``) to a video, a cine or a frame folder. Only the drawn frames (at most
      ``samples``) are requested, through ``frame_source.num_frames(path)`` and
      ``frame_source.get_frames(path, sorted_indices)``; how the source decodes them is its own business
      (:class:`usseg.data.readers.VideoFrameCache` decodes a video once and keeps it under a byte budget).

    The two views are written under ``view_keys`` as float32 channel-first tensors ``(C, H, W)`` and the
    description of the draw (:meth:`VideoFramePair.pair_info`: preset, frame indices, weights, coefficients)
    under ``info_key``. The video itself is removed unless ``keep_source=True``, because videos of different
    lengths cannot be collated into one batch.

    Args:
        keys: the video key; exactly one. Defaults to ``"video"``.
        preset: ``"uscl"`` or ``"meta_uscl"``; see :class:`VideoFramePair` for the formulas. Defaults to ``"uscl"``.
        augment: array transform on ``(C, H, W)`` float32 tensors, or ``None``.
        samples: frames drawn per video. Defaults to 3.
        max_dist: largest frame distance (``meta_uscl`` only); ``None`` for no limit.
        beta_uscl: Beta law of the USCL ``lambda``. Defaults to (0.5, 0.5).
        beta_meta: Beta law of the Meta-USCL ``alpha`` and ``beta``. Defaults to (3, 5).
        aug_first: augment before mixing; ``None`` for the preset's released choice.
        mixing: ``"standard"`` or ``"inner"`` (``meta_uscl`` only).
        view_keys: the two output keys. Defaults to ``("view_1", "view_2")``.
        info_key: key of the draw description, or ``None`` to leave it out. Defaults to ``"pair_info"``.
        frame_source: object with the :class:`FrameSource` methods used for path values; ``None`` uses
            :func:`default_frame_source` on first use.
        keep_source: keep the video (array or path) under its key. Defaults to False.
        allow_missing_keys: do not raise when the key is missing.

    Raises:
        ValueError: on a number of keys other than one, output and video keys that are not all distinct, or any
            invalid :class:`VideoFramePair` argument.
        TypeError: when ``frame_source`` lacks ``num_frames`` / ``get_frames``.
    """

    backend = VideoFramePair.backend

    def __init__(
        self,
        keys: KeysCollection = "video",
        preset: str = "uscl",
        augment: Callable | None = None,
        samples: int = 3,
        max_dist: int | None = None,
        beta_uscl: tuple[float, float] = (0.5, 0.5),
        beta_meta: tuple[float, float] = (3.0, 5.0),
        aug_first: bool | None = None,
        mixing: str = "standard",
        view_keys: Sequence[Hashable] = ("view_1", "view_2"),
        info_key: Hashable | None = "pair_info",
        frame_source: FrameSource | None = None,
        keep_source: bool = False,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        if len(self.keys) != 1:
            raise ValueError(f"VideoFramePaird takes exactly one video key, got {self.keys!r}.")
        view_keys = tuple(view_keys)
        if len(view_keys) != 2 or view_keys[0] == view_keys[1]:
            raise ValueError(f"view_keys must be two distinct keys, got {view_keys!r}.")
        if info_key is not None and info_key in view_keys:
            raise ValueError(f"info_key {info_key!r} must differ from view_keys {view_keys!r}.")
        if self.keys[0] in (*view_keys, info_key):
            raise ValueError(
                f"the video key {self.keys[0]!r} must differ from the output keys {view_keys!r}, {info_key!r}."
            )
        if frame_source is not None and not all(
            callable(getattr(frame_source, name, None)) for name in ("num_frames", "get_frames")
        ):
            raise TypeError(
                f"frame_source must provide num_frames(path) and get_frames(path, indices), "
                f"got {type(frame_source).__name__}."
            )
        self.view_keys = view_keys
        self.info_key = info_key
        self.frame_source = frame_source
        self.keep_source = bool(keep_source)
        self.pair = VideoFramePair(
            preset=preset,
            augment=augment,
            samples=samples,
            max_dist=max_dist,
            beta_uscl=beta_uscl,
            beta_meta=beta_meta,
            aug_first=aug_first,
            mixing=mixing,
        )

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> VideoFramePaird:
        """Seed the inner :class:`VideoFramePair` with the same seed, so both versions draw alike.

        Args:
            seed: seed of the generators.
            state: a generator to use instead of ``seed``.

        Returns:
            ``self``.
        """
        super().set_random_state(seed, state)
        self.pair.set_random_state(seed, state)
        return self

    def randomize(self, num_frames: int) -> None:
        """Draw frames and coefficients for a video of ``num_frames`` frames (see :meth:`VideoFramePair.randomize`).

        Args:
            num_frames: number of frames of the video.
        """
        self.pair.randomize(num_frames)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Replace the video by two positive views and the draw description.

        Args:
            data: a dictionary holding the video key.

        Returns:
            A new dictionary with ``view_keys`` (and ``info_key``) set.

        Raises:
            KeyError: when the key is missing and ``allow_missing_keys`` is False, or an output key already exists.
            InputError: when a video file has no frames or the frame source returns the wrong frames.
            ValueError: when a frame array has the wrong layout.
        """
        d = dict(data)
        for key in self.key_iterator(d):
            clashes = [k for k in (*self.view_keys, self.info_key) if k is not None and k in d]
            if clashes:
                raise KeyError(f"output keys {clashes} already exist in the data; choose other view_keys / info_key.")
            video = d[key]
            if isinstance(video, (str, os.PathLike)):
                view_1, view_2 = self._views_from_path(video)
            else:
                view_1, view_2 = self.pair(video)
            d[self.view_keys[0]], d[self.view_keys[1]] = view_1, view_2
            if self.info_key is not None:
                d[self.info_key] = self.pair.pair_info()
            if not self.keep_source:
                del d[key]
        return d

    def _views_from_path(self, path: str | os.PathLike) -> tuple[Any, Any]:
        source = self.frame_source if self.frame_source is not None else default_frame_source()
        num_frames = int(source.num_frames(path))
        if num_frames < 1:
            raise InputError(path, f"the video has {num_frames} frames; at least one is needed for a pair.")
        self.pair.randomize(num_frames)
        drawn = self.pair.frame_indices
        wanted = sorted(set(drawn))  # sorted reads let a decoder seek forward only
        frames = np.asarray(source.get_frames(path, wanted))
        if frames.ndim not in (3, 4) or frames.shape[0] != len(wanted):
            raise InputError(
                path,
                f"asked for frames {wanted}, got shape {frames.shape}; expected ({len(wanted)}, H, W[, C]).",
            )
        position = {index: row for row, index in enumerate(wanted)}
        return self.pair.views_from_selected(frames[[position[index] for index in drawn]])


VideoFramePairD = VideoFramePairDict = VideoFramePaird
