# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""Tests for ``usseg.transforms.video``: USCL / Meta-USCL frame sampling, mixing formulas and lazy reads."""

from __future__ import annotations

import itertools
import os
import sys
import types
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
import torch
from monai.data import list_data_collate
from monai.transforms import RandGaussianNoise
from PIL import Image
from scipy import stats

import usseg.transforms.video.dictionary as video_dictionary
from usseg.errors import InputError
from usseg.transforms.video import VideoFramePair, VideoFramePaird, default_frame_source

SIZE = 6


def _constant_video(values: Sequence[int], dtype: type = np.uint8, channels: int | None = None) -> np.ndarray:
    """Frames whose pixels all equal ``values[t]``, so a view's value reveals the mixing weights."""
    frames = np.stack([np.full((SIZE, SIZE), v, dtype=dtype) for v in values])
    return frames if channels is None else np.repeat(frames[..., None], channels, axis=-1)


def _view_value(view: torch.Tensor) -> float:
    values = torch.unique(view)
    assert values.numel() == 1, "a view of constant frames must be constant"
    return float(values[0])


class _OffsetAugment:
    """Adds 1000 * (call number) so each output reveals which augmentation call produced it."""

    def __init__(self) -> None:
        self.calls: list[tuple[tuple[int, ...], torch.dtype]] = []

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        self.calls.append((tuple(image.shape), image.dtype))
        return image + 1000.0 * len(self.calls)


class _RecordingSource:
    """Fake frame source: serves an in-memory video and records every request."""

    def __init__(self, videos: dict[str, np.ndarray], wrong_shape: bool = False) -> None:
        self.videos = videos
        self.wrong_shape = wrong_shape
        self.num_frames_calls: list[str] = []
        self.requests: list[tuple[str, list[int]]] = []

    def num_frames(self, path: str | os.PathLike) -> int:
        self.num_frames_calls.append(os.fspath(path))
        return len(self.videos[os.fspath(path)])

    def get_frames(self, path: str | os.PathLike, indices: Sequence[int]) -> np.ndarray:
        self.requests.append((os.fspath(path), list(indices)))
        frames = self.videos[os.fspath(path)][list(indices)]
        return frames[:1] if self.wrong_shape else frames  # one frame whatever was asked


@pytest.mark.parametrize(
    ("num_frames", "max_dist"),
    [
        pytest.param(3, None, id="three_frames"),
        pytest.param(4, None, id="four_frames"),
        pytest.param(12, None, id="unlimited"),
        pytest.param(12, 2, id="max_dist_2"),
        pytest.param(40, 5, id="max_dist_5"),
    ],
)
def test_meta_uscl_frames_are_ordered_within_distance(num_frames: int, max_dist: int | None) -> None:
    pair = VideoFramePair(preset="meta_uscl", max_dist=max_dist)
    largest = num_frames - 1 if max_dist is None else min(num_frames - 1, max_dist)
    seen = set()
    for seed in range(300):
        pair.set_random_state(seed)
        pair.randomize(num_frames)
        start, first, second = pair.frame_indices
        assert 0 <= start < first < second < num_frames
        assert 1 <= first - start < second - start <= largest
        seen.add((start, first, second))
    # Every admissible triple can be drawn: distances 1 <= d1 < d2 <= largest and start in [0, L - 1 - d2].
    admissible = {
        (s, s + d1, s + d2)
        for d1, d2 in itertools.combinations(range(1, largest + 1), 2)
        for s in range(num_frames - d2)
    }
    assert seen <= admissible
    if len(admissible) <= 30:
        assert seen == admissible


def test_meta_uscl_distance_and_start_laws() -> None:
    # d1 < d2 is a uniform pair of distinct distances, and the start is uniform given d2.
    pair = VideoFramePair(preset="meta_uscl").set_random_state(0)
    num_frames, draws = 6, 3000
    triples = []
    for _ in range(draws):
        pair.randomize(num_frames)
        triples.append(pair.frame_indices)
    d2 = np.array([t[2] - t[0] for t in triples])
    # P(d2 = k) = (k - 1) / C(5, 2) for k in 2..5.
    for k in range(2, 6):
        assert abs(np.mean(d2 == k) - (k - 1) / 10) < 0.04
    starts_given_d2_2 = np.array([t[0] for t in triples if t[2] - t[0] == 2])
    counts = np.bincount(starts_given_d2_2, minlength=4)
    assert stats.chisquare(counts).pvalue > 1e-3


def test_uscl_frames_are_distinct_and_unordered() -> None:
    pair = VideoFramePair(preset="uscl").set_random_state(0)
    orders = set()
    for _ in range(300):
        pair.randomize(3)
        indices = pair.frame_indices
        assert sorted(indices) == [0, 1, 2]
        orders.add(indices)
    assert len(orders) == 6  # no temporal ordering: every permutation occurs


def test_uscl_lambda_is_shared_and_recoverable() -> None:
    values = [10, 40, 90, 160, 250]
    frames = _constant_video(values)
    pair = VideoFramePair(preset="uscl").set_random_state(1)
    for _ in range(20):
        view_1, view_2 = pair(frames)
        info = pair.pair_info()
        f1, f2, f3 = (values[i] for i in info["frame_indices"])
        lam_1 = (_view_value(view_1) - f2) / (f1 - f2)
        lam_2 = (_view_value(view_2) - f2) / (f3 - f2)
        assert lam_1 == pytest.approx(lam_2, abs=1e-4)
        assert lam_1 == pytest.approx(info["coefficients"]["lambda"], abs=1e-4)
        assert info["mixed"]


def test_meta_uscl_alpha_beta_are_recoverable_from_float_frames() -> None:
    values = [0.0, 1.0, 3.0, 7.0, 15.0, 31.0]
    frames = _constant_video(values, dtype=np.float32)
    pair = VideoFramePair(preset="meta_uscl").set_random_state(2)
    for _ in range(20):
        view_1, view_2 = pair(frames)
        info = pair.pair_info()
        f0, f1, f2 = (values[i] for i in info["frame_indices"])
        alpha = (_view_value(view_1) - f0) / (f1 - f0)
        beta = (_view_value(view_2) - f2) / (f1 - f2)
        assert alpha == pytest.approx(info["coefficients"]["alpha"], abs=1e-5)
        assert beta == pytest.approx(info["coefficients"]["beta"], abs=1e-5)


@pytest.mark.parametrize(
    ("preset", "names", "law"),
    [
        pytest.param("uscl", ("lambda",), (0.5, 0.5), id="uscl_beta_half_half"),
        pytest.param("meta_uscl", ("alpha", "beta"), (3.0, 5.0), id="meta_beta_3_5"),
    ],
)
def test_coefficients_follow_their_beta_law(preset: str, names: tuple[str, ...], law: tuple[float, float]) -> None:
    pair = VideoFramePair(preset=preset).set_random_state(3)
    draws: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(800):
        pair.randomize(20)
        for name in names:
            draws[name].append(pair.pair_info()["coefficients"][name])
    for name in names:
        assert stats.kstest(draws[name], "beta", args=law).pvalue > 1e-3
    if len(names) == 2:
        assert abs(np.corrcoef(draws["alpha"], draws["beta"])[0, 1]) < 0.15  # drawn independently


def test_custom_beta_parameters_are_used() -> None:
    pair = VideoFramePair(preset="uscl", beta_uscl=(50.0, 50.0)).set_random_state(0)
    lambdas = []
    for _ in range(200):
        pair.randomize(5)
        lambdas.append(pair.pair_info()["coefficients"]["lambda"])
    assert abs(np.mean(lambdas) - 0.5) < 0.02 and np.std(lambdas) < 0.08


def test_meta_uscl_mixes_uint8_frames_with_truncation() -> None:
    values = [7, 200, 13, 101, 254, 3, 77]
    frames = _constant_video(values)
    pair = VideoFramePair(preset="meta_uscl").set_random_state(4)
    rounding_would_differ = False
    for _ in range(30):
        view_1, view_2 = pair(frames)
        info = pair.pair_info()
        v0, v1, v2 = (values[i] for i in info["frame_indices"])
        f0, f1, f2 = (np.full((2, 2), v, dtype=np.uint8) for v in (v0, v1, v2))
        alpha, beta = info["coefficients"]["alpha"], info["coefficients"]["beta"]
        # The released expression, literally.
        expected_1 = np.uint8(f0 * (1 - alpha) + f1 * alpha)[0, 0]
        expected_2 = np.uint8(f1 * beta + f2 * (1 - beta))[0, 0]
        assert _view_value(view_1) == float(expected_1)
        assert _view_value(view_2) == float(expected_2)
        rounding_would_differ |= round(v0 * (1 - alpha) + v1 * alpha) != expected_1
    assert rounding_would_differ


def test_uscl_augments_each_frame_then_mixes() -> None:
    values = [10, 20, 30, 40]
    augment = _OffsetAugment()
    pair = VideoFramePair(preset="uscl", augment=augment).set_random_state(5)
    view_1, view_2 = pair(_constant_video(values))
    assert augment.calls == [((1, SIZE, SIZE), torch.float32)] * 3  # one call per frame, channel-first float32
    info = pair.pair_info()
    lam = info["coefficients"]["lambda"]
    a1, a2, a3 = (values[i] + 1000.0 * (call + 1) for call, i in enumerate(info["frame_indices"][:3]))
    assert _view_value(view_1) == pytest.approx(lam * a1 + (1 - lam) * a2, rel=1e-5)
    assert _view_value(view_2) == pytest.approx(lam * a3 + (1 - lam) * a2, rel=1e-5)


def test_meta_uscl_mixes_then_augments_each_view() -> None:
    values = [10, 20, 30, 40]
    augment = _OffsetAugment()
    pair = VideoFramePair(preset="meta_uscl", augment=augment).set_random_state(6)
    view_1, view_2 = pair(_constant_video(values))
    assert len(augment.calls) == 2
    info = pair.pair_info()
    f0, f1, f2 = (values[i] for i in info["frame_indices"])
    alpha, beta = info["coefficients"]["alpha"], info["coefficients"]["beta"]
    assert _view_value(view_1) == np.floor(f0 * (1 - alpha) + f1 * alpha) + 1000.0
    assert _view_value(view_2) == np.floor(f1 * beta + f2 * (1 - beta)) + 2000.0


def test_meta_uscl_aug_first_mixes_augmented_floats() -> None:
    values = [10, 20, 30, 40]
    augment = _OffsetAugment()
    pair = VideoFramePair(preset="meta_uscl", augment=augment, aug_first=True).set_random_state(7)
    view_1, view_2 = pair(_constant_video(values))
    assert len(augment.calls) == 3  # f1 is augmented once and shared by both views, as released
    info = pair.pair_info()
    a0, a1, a2 = (values[i] + 1000.0 * (call + 1) for call, i in enumerate(info["frame_indices"][:3]))
    alpha, beta = info["coefficients"]["alpha"], info["coefficients"]["beta"]
    assert _view_value(view_1) == pytest.approx((1 - alpha) * a0 + alpha * a1, rel=1e-5)
    assert _view_value(view_2) == pytest.approx(beta * a1 + (1 - beta) * a2, rel=1e-5)


@pytest.mark.parametrize("preset", ["uscl", "meta_uscl"])
def test_one_frame_video_gives_the_frame_twice(preset: str) -> None:
    augment = _OffsetAugment()
    pair = VideoFramePair(preset=preset, augment=augment).set_random_state(0)
    view_1, view_2 = pair(_constant_video([42]))
    assert (_view_value(view_1), _view_value(view_2)) == (1042.0, 2042.0)  # two independent augmentations
    info = pair.pair_info()
    assert info["frame_indices"].tolist() == [0, -1, -1]
    assert not info["mixed"]
    assert all(np.isnan(v) for v in info["coefficients"].values())


@pytest.mark.parametrize("preset", ["uscl", "meta_uscl"])
def test_two_frame_video_gives_the_two_frames_unmixed(preset: str) -> None:
    pair = VideoFramePair(preset=preset).set_random_state(0)
    pairs = set()
    for _ in range(40):
        view_1, view_2 = pair(_constant_video([5, 9]))
        pairs.add((_view_value(view_1), _view_value(view_2)))
        assert not pair.pair_info()["mixed"]
    # USCL draws the two frames in random order; Meta-USCL keeps temporal order.
    assert pairs == ({(5.0, 9.0), (9.0, 5.0)} if preset == "uscl" else {(5.0, 9.0)})


def test_meta_uscl_two_samples_respect_max_dist() -> None:
    pair = VideoFramePair(preset="meta_uscl", samples=2, max_dist=3).set_random_state(0)
    distances = set()
    for _ in range(200):
        pair.randomize(30)
        first, second = pair.frame_indices
        distances.add(second - first)
        assert 0 <= first < second < 30
    assert distances == {1, 2, 3}


def test_meta_uscl_one_sample_takes_the_first_frame() -> None:
    pair = VideoFramePair(preset="meta_uscl", samples=1).set_random_state(0)
    view_1, view_2 = pair(_constant_video([3, 4, 5, 6]))
    assert (_view_value(view_1), _view_value(view_2)) == (3.0, 3.0)


def test_uscl_one_sample_takes_one_random_frame() -> None:
    pair = VideoFramePair(preset="uscl", samples=1).set_random_state(0)
    chosen = set()
    for _ in range(60):
        view_1, view_2 = pair(_constant_video([3, 4, 5, 6]))
        assert _view_value(view_1) == _view_value(view_2)
        chosen.add(_view_value(view_1))
    assert chosen == {3.0, 4.0, 5.0, 6.0}


def test_inner_mixing_uses_convex_weights_over_ordered_frames() -> None:
    values = [float(2**i) for i in range(10)]
    pair = VideoFramePair(preset="meta_uscl", samples=5, mixing="inner").set_random_state(0)
    for _ in range(20):
        view_1, view_2 = pair(_constant_video(values, dtype=np.float64))
        info = pair.pair_info()
        indices, weights = info["frame_indices"], info["weights"]
        assert list(indices) == sorted(indices) and len(set(indices)) == 5
        assert np.all(weights >= 0)
        np.testing.assert_allclose(weights.sum(axis=1), 1.0)
        frame_values = np.array([values[i] for i in indices])
        assert _view_value(view_1) == pytest.approx(float(weights[0] @ frame_values), rel=1e-5)
        assert _view_value(view_2) == pytest.approx(float(weights[1] @ frame_values), rel=1e-5)


@pytest.mark.parametrize(
    ("shape", "expected"),
    [
        pytest.param((4, SIZE, SIZE), (1, SIZE, SIZE), id="grayscale"),
        pytest.param((4, SIZE, SIZE, 3), (3, SIZE, SIZE), id="rgb_channels_last"),
    ],
)
def test_views_are_float32_channel_first(shape: tuple[int, ...], expected: tuple[int, ...]) -> None:
    frames = np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)
    for preset in ("uscl", "meta_uscl"):
        view_1, view_2 = VideoFramePair(preset=preset).set_random_state(0)(torch.as_tensor(frames))
        assert tuple(view_1.shape) == tuple(view_2.shape) == expected
        assert view_1.dtype == view_2.dtype == torch.float32


def test_rgb_channels_are_kept_apart() -> None:
    frames = np.zeros((1, SIZE, SIZE, 3), dtype=np.uint8)
    frames[..., 1] = 50
    view_1, _ = VideoFramePair(preset="uscl").set_random_state(0)(frames)
    assert view_1[:, 0, 0].tolist() == [0.0, 50.0, 0.0]


@pytest.mark.parametrize(
    "shape",
    [
        pytest.param((SIZE, SIZE), id="single_image"),
        pytest.param((4, 3, SIZE, SIZE + 10), id="channel_first_frames"),
        pytest.param((0, SIZE, SIZE), id="empty_video"),
    ],
)
def test_wrong_frame_layout_raises(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="frames-first"):
        VideoFramePair()(np.zeros(shape, dtype=np.uint8))


def test_seed_determinism_including_augment() -> None:
    frames = np.random.default_rng(1).integers(0, 256, size=(15, SIZE, SIZE), dtype=np.uint8)

    def run(seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        pair = VideoFramePair(preset="meta_uscl", augment=RandGaussianNoise(prob=1.0, std=5.0))
        pair.set_random_state(seed)
        return [pair(frames) for _ in range(3)]

    first, again, other = run(11), run(11), run(12)
    for (a1, a2), (b1, b2) in zip(first, again):
        torch.testing.assert_close(a1.as_tensor(), b1.as_tensor())
        torch.testing.assert_close(a2.as_tensor(), b2.as_tensor())
    assert not torch.allclose(first[0][0], other[0][0])


def test_randomize_false_reuses_the_last_draw() -> None:
    pair = VideoFramePair(preset="uscl")
    with pytest.raises(RuntimeError, match="randomize"):
        pair(_constant_video([1, 2, 3]), randomize=False)
    pair.set_random_state(0)
    frames = _constant_video([1, 2, 3, 4])
    view_1, _ = pair(frames)
    again, _ = pair(frames, randomize=False)
    torch.testing.assert_close(view_1.as_tensor(), again.as_tensor())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        pytest.param({"preset": "simclr"}, "preset", id="unknown_preset"),
        pytest.param({"mixing": "cutmix"}, "mixing", id="unknown_mixing"),
        pytest.param({"preset": "uscl", "mixing": "inner"}, "meta_uscl", id="inner_for_uscl"),
        pytest.param({"samples": 0}, "samples", id="zero_samples"),
        pytest.param({"preset": "meta_uscl", "samples": 4}, "inner", id="standard_with_four_samples"),
        pytest.param({"preset": "uscl", "max_dist": 5}, "max_dist", id="max_dist_for_uscl"),
        pytest.param({"preset": "meta_uscl", "max_dist": 1}, "max_dist", id="max_dist_too_small"),
        pytest.param({"beta_meta": (0.0, 5.0)}, "beta_meta", id="non_positive_beta"),
    ],
)
def test_invalid_arguments_raise(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        VideoFramePair(**kwargs)


def test_non_callable_augment_raises() -> None:
    with pytest.raises(TypeError, match="augment"):
        VideoFramePair(augment="flip")  # type: ignore[arg-type]


def test_dictionary_matches_array_version() -> None:
    frames = np.random.default_rng(2).integers(0, 256, size=(9, SIZE, SIZE), dtype=np.uint8)
    pair = VideoFramePair(preset="meta_uscl").set_random_state(5)
    paird = VideoFramePaird(keys="video", preset="meta_uscl").set_random_state(5)
    for _ in range(3):
        expected = pair(frames)
        out = paird({"video": frames, "label": 1})
        assert set(out) == {"view_1", "view_2", "pair_info", "label"}  # the video itself is dropped
        torch.testing.assert_close(out["view_1"].as_tensor(), expected[0].as_tensor())
        torch.testing.assert_close(out["view_2"].as_tensor(), expected[1].as_tensor())
        np.testing.assert_array_equal(out["pair_info"]["frame_indices"], pair.pair_info()["frame_indices"])


@pytest.mark.parametrize(
    ("preset", "num_frames"),
    [
        pytest.param("uscl", 50, id="uscl_long"),
        pytest.param("meta_uscl", 50, id="meta_long"),
        pytest.param("uscl", 1, id="uscl_single_frame"),
        pytest.param("meta_uscl", 2, id="meta_two_frames"),
    ],
)
def test_path_input_reads_only_the_drawn_frames(tmp_path: Any, preset: str, num_frames: int) -> None:
    path = str(tmp_path / "clip.mp4")
    video = _constant_video(list(range(num_frames)))
    source = _RecordingSource({path: video})
    paird = VideoFramePaird(preset=preset, frame_source=source, keep_source=True).set_random_state(0)
    from_array = VideoFramePaird(preset=preset).set_random_state(0)
    for _ in range(3):
        out = paird({"video": path})
        expected = from_array({"video": video})
        drawn = [i for i in out["pair_info"]["frame_indices"].tolist() if i >= 0]
        assert source.requests[-1] == (path, sorted(set(drawn)))
        torch.testing.assert_close(out["view_1"].as_tensor(), expected["view_1"].as_tensor())
        torch.testing.assert_close(out["view_2"].as_tensor(), expected["view_2"].as_tensor())
        assert out["video"] == path
    assert len(source.num_frames_calls) == 3 and len(source.requests) == 3


def test_path_like_input_is_accepted(tmp_path: Any) -> None:
    path = tmp_path / "clip.avi"
    source = _RecordingSource({str(path): _constant_video([1, 2, 3, 4])})
    out = VideoFramePaird(preset="meta_uscl", frame_source=source).set_random_state(0)({"video": path})
    assert {"view_1", "view_2", "pair_info"} <= set(out) and "video" not in out


@pytest.mark.parametrize(
    ("videos", "wrong_shape", "match"),
    [
        pytest.param({"clip": np.zeros((0, SIZE, SIZE), dtype=np.uint8)}, False, "0 frames", id="empty_video"),
        pytest.param({"clip": _constant_video([1, 2, 3])}, True, "asked for frames", id="wrong_frames_returned"),
    ],
)
def test_bad_video_file_raises_input_error(videos: dict[str, np.ndarray], wrong_shape: bool, match: str) -> None:
    paird = VideoFramePaird(frame_source=_RecordingSource(videos, wrong_shape=wrong_shape))
    with pytest.raises(InputError, match=match) as raised:
        paird({"video": "clip"})
    assert raised.value.path == "clip"


def test_pair_info_collates_across_video_lengths() -> None:
    paird = VideoFramePaird(preset="meta_uscl").set_random_state(0)
    batch = list_data_collate([paird({"video": _constant_video(list(range(n)))}) for n in (1, 2, 3, 10)])
    assert tuple(batch["view_1"].shape) == (4, 1, SIZE, SIZE)
    assert tuple(batch["pair_info"]["frame_indices"].shape) == (4, 3)
    assert tuple(batch["pair_info"]["weights"].shape) == (4, 2, 3)
    assert batch["pair_info"]["mixed"].tolist() == [False, False, True, True]


def test_info_key_none_and_custom_view_keys() -> None:
    paird = VideoFramePaird(view_keys=("a", "b"), info_key=None).set_random_state(0)
    out = paird({"video": _constant_video([1, 2, 3])})
    assert set(out) == {"a", "b"}


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        pytest.param({"keys": ["video", "cine"]}, ValueError, "exactly one", id="two_keys"),
        pytest.param({"view_keys": ("v", "v")}, ValueError, "distinct", id="same_view_keys"),
        pytest.param({"info_key": "view_1"}, ValueError, "info_key", id="info_key_clash"),
        pytest.param({"frame_source": object()}, TypeError, "frame_source", id="bad_frame_source"),
        pytest.param({"keys": "view_2"}, ValueError, "video key", id="video_key_is_an_output_key"),
        pytest.param({"preset": "byol"}, ValueError, "preset", id="invalid_preset"),
    ],
)
def test_invalid_dictionary_arguments_raise(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        VideoFramePaird(**kwargs)


def test_existing_output_key_raises() -> None:
    with pytest.raises(KeyError, match="pair_info"):
        VideoFramePaird()({"video": _constant_video([1, 2, 3]), "pair_info": {}})


def test_missing_key_raises_unless_allowed() -> None:
    with pytest.raises(KeyError):
        VideoFramePaird()({"image": 1})
    assert VideoFramePaird(allow_missing_keys=True)({"image": 1}) == {"image": 1}


def test_frame_folder_is_read_through_the_default_cache(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "clip"
    folder.mkdir()
    values = [10, 60, 110, 160, 210]
    for index, value in enumerate(values):
        Image.fromarray(np.full((SIZE, SIZE), value, dtype=np.uint8)).save(folder / f"frame{index}.png")
    monkeypatch.setattr(video_dictionary, "_SOURCES_BY_PROCESS", {})
    out = VideoFramePaird(preset="meta_uscl", aug_first=True).set_random_state(0)({"video": str(folder)})
    info = out["pair_info"]
    f0, f1, _ = (values[i] for i in info["frame_indices"])
    alpha = info["coefficients"]["alpha"]
    assert _view_value(out["view_1"]) == pytest.approx((1 - alpha) * f0 + alpha * f1, rel=1e-5)
    assert tuple(out["view_1"].shape) == (1, SIZE, SIZE)


def test_default_frame_source_is_one_cache_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    created: list[dict[str, Any]] = []

    class FakeCache:
        def __init__(self, **kwargs: Any) -> None:
            created.append(kwargs)

    fake_readers = types.ModuleType("usseg.data.readers")
    fake_readers.VideoFrameCache = FakeCache  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "usseg.data.readers", fake_readers)
    # An entry left by a parent process (another pid) must not be reused.
    monkeypatch.setattr(video_dictionary, "_SOURCES_BY_PROCESS", {os.getpid() + 1: object()})
    first = default_frame_source()
    assert isinstance(first, FakeCache)
    assert default_frame_source() is first
    assert len(created) == 1
    assert list(video_dictionary._SOURCES_BY_PROCESS) == [os.getpid()]
