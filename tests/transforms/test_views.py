# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""Tests for ``usseg.transforms.views``: shared geometry, view independence, seeding and the Hermes defaults."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import MapTransform, RandFlipd, RandGaussianNoise, RandRotate90d, ShiftIntensity

from usseg.transforms.views import WeakStrongViewsd, hermes_geometric, hermes_strong

SPACING = (0.1, 0.2)


def _square_sample(size: int = 24) -> dict[str, torch.Tensor]:
    """A bright off-centre rectangle and its mask; asymmetric so every rotation and flip is distinguishable."""
    mask = torch.zeros(1, size, size)
    mask[:, 3:9, 4:15] = 1.0
    mask[:, 14:20, 2:6] = 1.0
    image = MetaTensor(mask.clone(), meta={"spacing": SPACING})
    return {"image": image, "label": mask}


def _reflections(array: np.ndarray) -> list[np.ndarray]:
    """The four reflections of a square (H, W) array: flips composed with 90-degree rotations."""
    return [np.flip(np.rot90(array, k), axis=0) for k in range(4)]


class _RecordKeys(MapTransform):
    """Dictionary transform that records which keys it received and adds 1."""

    def __init__(self, keys: str) -> None:
        super().__init__(keys, allow_missing_keys=True)
        self.seen: list[tuple[Hashable, ...]] = []

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        self.seen.append(tuple(data))
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = d[key] + 1.0
        return d


def test_views_share_the_geometry_of_the_image() -> None:
    # A deterministic intensity shift as the only strong op: strong - weak is exactly the shift everywhere,
    # which holds only if both views were cut from the same geometric image.
    views = WeakStrongViewsd(keys="image", label_keys="label", weak=[], strong=ShiftIntensity(0.5))
    views.set_random_state(3)
    sample = _square_sample()
    for _ in range(8):
        out = views(sample)
        np.testing.assert_allclose(out["image_weak"].numpy(), out["image"].numpy())
        np.testing.assert_allclose(out["image_strong"].numpy() - out["image_weak"].numpy(), 0.5, atol=1e-6)


def test_mask_moves_with_the_image_over_every_branch() -> None:
    geometric = hermes_geometric("image", "label", image_mode="nearest")
    views = WeakStrongViewsd(keys="image", label_keys="label", geometric=geometric, weak=[], strong=[])
    views.set_random_state(0)
    sample = _square_sample()
    original = sample["label"][0].numpy()
    reflections = _reflections(original)
    counts = {"reflection": 0, "identity": 0, "rotation": 0}
    draws = 200
    for _ in range(draws):
        out = views(sample)
        image, label = out["image"][0].numpy(), out["label"][0].numpy()
        np.testing.assert_array_equal(image, label)  # the bright square and its mask stay aligned
        np.testing.assert_array_equal(out["image_weak"][0].numpy(), label)
        if any(np.array_equal(label, r) for r in reflections):
            counts["reflection"] += 1
        elif np.array_equal(label, original):
            counts["identity"] += 1
        else:
            counts["rotation"] += 1
    # Released probabilities 0.5 / 0.25 / 0.25; a tiny rotation can round back to the identity on this grid,
    # so only the reflection share and the rotation upper bound are tight. Bounds are ~4 standard errors.
    assert abs(counts["reflection"] / draws - 0.5) < 0.14
    assert 0.1 < counts["rotation"] / draws < 0.25 + 0.13
    assert counts["identity"] > 0


def test_labels_keep_their_label_set_under_rotation() -> None:
    geometric = hermes_geometric("image", "label", rot_flip_prob=0.0, rotate_prob=1.0)
    views = WeakStrongViewsd(keys="image", label_keys="label", geometric=geometric, weak=[], strong=[])
    views.set_random_state(1)
    label = torch.zeros(1, 32, 32)
    label[:, 4:14, 6:20] = 2.0
    label[:, 18:28, 10:26] = 5.0
    image = label / 5.0
    interpolated_image = False
    for _ in range(5):
        out = views({"image": image, "label": label})
        assert set(torch.unique(out["label"]).tolist()) <= {0.0, 2.0, 5.0}
        # The image is resampled bilinearly, so values between the three levels appear.
        interpolated_image |= not set(torch.unique(out["image"]).tolist()) <= {0.0, 0.4, 1.0}
    assert interpolated_image


def test_strong_ops_do_not_touch_the_weak_view_or_the_image() -> None:
    def zero_in_place(image: torch.Tensor) -> torch.Tensor:
        image.meta["touched_by"] = "strong"
        return image.mul_(0.0)

    views = WeakStrongViewsd(keys="image", geometric=[], weak=[], strong=zero_in_place)
    sample = _square_sample()
    out = views(sample)
    assert float(out["image_strong"].abs().sum()) == 0.0
    np.testing.assert_array_equal(out["image_weak"].numpy(), sample["label"].numpy())
    np.testing.assert_array_equal(out["image"].numpy(), sample["label"].numpy())
    assert "touched_by" not in out["image_weak"].meta
    assert "touched_by" not in out["image"].meta
    assert "touched_by" not in sample["image"].meta


def test_default_strong_view_differs_from_weak() -> None:
    views = WeakStrongViewsd(keys="image", label_keys="label").set_random_state(0)
    image = MetaTensor(torch.linspace(0.05, 0.95, 32 * 32).reshape(1, 32, 32), meta={"spacing": SPACING})
    label = (image > 0.5).float()
    differing = 0
    for _ in range(10):
        out = views({"image": image, "label": label})
        np.testing.assert_array_equal(out["image_weak"].numpy(), out["image"].numpy())  # default weak: identity
        differing += not torch.allclose(out["image_weak"], out["image_strong"])
    # Without any of jitter (p 0.8), blur (p 0.5) and speckle (p 0.5) a view is unchanged: 5% of draws.
    assert differing >= 8


def test_strong_with_every_step_applied_always_differs() -> None:
    strong = hermes_strong("image", jitter_prob=1.0, blur_prob=1.0, speckle_prob=0.0)
    views = WeakStrongViewsd(keys="image", geometric=[], strong=strong).set_random_state(2)
    image = torch.linspace(0.05, 0.95, 16 * 16).reshape(1, 16, 16)
    for _ in range(5):
        out = views({"image": image})
        assert not torch.allclose(out["image_strong"], out["image_weak"])
        assert float(out["image_strong"].min()) >= 0.0
        assert float(out["image_strong"].max()) <= 1.0


def test_blur_is_isotropic_with_sigma_in_range() -> None:
    blur_only = hermes_strong("image", jitter_prob=0.0, blur_prob=1.0, speckle_prob=0.0).set_random_state(0)
    impulse = torch.zeros(1, 41, 41)
    impulse[0, 20, 20] = 1.0
    grid = torch.arange(41, dtype=torch.float32) - 20
    for _ in range(5):
        blurred = blur_only({"image": impulse})["image"][0]
        torch.testing.assert_close(blurred, blurred.T)  # one sigma for both axes
        weights = blurred / blurred.sum()
        variance_rows = float((weights.sum(dim=1) * grid**2).sum())
        assert 0.1**2 - 0.02 < variance_rows < 2.0**2 + 0.02


def test_strong_with_no_step_is_identity() -> None:
    nothing = hermes_strong("image", jitter_prob=0.0, blur_prob=0.0, speckle_prob=0.0).set_random_state(0)
    image = torch.rand(1, 8, 8)
    torch.testing.assert_close(nothing({"image": image})["image"].as_tensor(), image)


def test_set_random_state_makes_runs_reproducible() -> None:
    sample = _square_sample()
    sample["image"] = MetaTensor(torch.rand(1, 24, 24), meta={"spacing": SPACING})
    first = WeakStrongViewsd(keys="image", label_keys="label")
    assert first.set_random_state(7) is first
    second = WeakStrongViewsd(keys="image", label_keys="label").set_random_state(7)
    other = WeakStrongViewsd(keys="image", label_keys="label").set_random_state(8)
    outs_first = [first(sample) for _ in range(4)]
    outs_second = [second(sample) for _ in range(4)]
    outs_other = [other(sample) for _ in range(4)]
    for a, b in zip(outs_first, outs_second):
        for key in ("image", "image_weak", "image_strong", "label"):
            torch.testing.assert_close(a[key].as_tensor(), b[key].as_tensor())
    assert any(not torch.allclose(a["image_strong"], c["image_strong"]) for a, c in zip(outs_first, outs_other))


def test_inner_transforms_get_distinct_seeds() -> None:
    noise_a, noise_b = RandGaussianNoise(prob=1.0), RandGaussianNoise(prob=1.0)
    views = WeakStrongViewsd(keys="image", geometric=[], weak=noise_a, strong=noise_b).set_random_state(0)
    out = views({"image": torch.zeros(1, 8, 8)})
    assert not torch.allclose(out["image_weak"], out["image_strong"])


def test_dictionary_and_array_transforms_in_view_pipelines() -> None:
    record = _RecordKeys("image")
    views = WeakStrongViewsd(
        keys="image", label_keys="label", geometric=[], weak=record, strong=[record, ShiftIntensity(2.0)]
    )
    sample = _square_sample()
    out = views(sample)
    assert record.seen == [("image",), ("image",)]  # only the current image key, never the label
    np.testing.assert_allclose(out["image_weak"].numpy(), sample["label"].numpy() + 1.0)
    np.testing.assert_allclose(out["image_strong"].numpy(), sample["label"].numpy() + 3.0)


def test_metadata_and_types_are_kept() -> None:
    views = WeakStrongViewsd(keys="image", label_keys="label", strong=ShiftIntensity(0.1)).set_random_state(0)
    out = views(_square_sample())
    for key in ("image", "image_weak", "image_strong"):
        assert isinstance(out[key], MetaTensor)
        assert tuple(out[key].meta["spacing"]) == SPACING


def test_numpy_inputs_leave_as_tensors() -> None:
    views = WeakStrongViewsd(keys="image", label_keys="label", geometric=[], weak=[], strong=[])
    out = views({"image": np.ones((1, 4, 4), dtype=np.float32), "label": np.zeros((1, 4, 4), dtype=np.uint8)})
    for key in ("image", "image_weak", "image_strong", "label"):
        assert isinstance(out[key], torch.Tensor)


def test_several_image_keys_with_user_geometry() -> None:
    geometric = [
        RandFlipd(["image", "doppler", "label"], prob=1.0, spatial_axis=1),
        RandRotate90d(["image", "doppler", "label"], prob=1.0, max_k=1),
    ]
    views = WeakStrongViewsd(keys=["image", "doppler"], label_keys="label", geometric=geometric).set_random_state(0)
    sample = _square_sample()
    sample["doppler"] = sample["label"] * 2.0
    out = views(sample)
    expected = np.rot90(np.flip(sample["label"][0].numpy(), axis=1), 1)
    np.testing.assert_array_equal(out["label"][0].numpy(), expected)
    np.testing.assert_array_equal(out["doppler_weak"][0].numpy(), 2.0 * expected)
    assert {"image_weak", "image_strong", "doppler_weak", "doppler_strong"} <= set(out)


@pytest.mark.parametrize(
    "present",
    [
        pytest.param({"label": torch.zeros(1, 4, 4)}, id="missing_image"),
        pytest.param({"image": torch.zeros(1, 4, 4)}, id="missing_label"),
    ],
)
def test_missing_key_raises_unless_allowed(present: dict[str, torch.Tensor]) -> None:
    with pytest.raises(KeyError):
        WeakStrongViewsd(keys="image", label_keys="label", geometric=[], strong=[])(present)
    out = WeakStrongViewsd(keys="image", label_keys="label", geometric=[], strong=[], allow_missing_keys=True)(present)
    assert set(present) <= set(out)


def test_existing_view_key_raises() -> None:
    views = WeakStrongViewsd(keys="image", geometric=[], strong=[])
    with pytest.raises(KeyError, match="image_weak"):
        views({"image": torch.zeros(1, 4, 4), "image_weak": torch.zeros(1, 4, 4)})


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        pytest.param({"keys": "image", "label_keys": "image"}, ValueError, "overlap", id="overlapping_keys"),
        pytest.param({"weak_suffix": "_v", "strong_suffix": "_v"}, ValueError, "differ", id="equal_suffixes"),
        pytest.param({"weak_suffix": ""}, ValueError, "weak_suffix", id="empty_suffix"),
        pytest.param({"geometric": ShiftIntensity(1.0)}, TypeError, "dictionary transforms", id="array_geometric"),
        pytest.param({"strong": [3]}, TypeError, "callables", id="non_callable_strong"),
        pytest.param({"keys": 3}, TypeError, "strings", id="non_string_key"),
    ],
)
def test_invalid_arguments_raise(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    kwargs.setdefault("strong", [])
    with pytest.raises(error, match=match):
        WeakStrongViewsd(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        pytest.param({"rot_flip_prob": 1.5}, "rot_flip_prob", id="prob_above_one"),
        pytest.param({"rot_flip_prob": 0.8, "rotate_prob": 0.4}, "exceed", id="probs_sum_above_one"),
        pytest.param({"max_angle_deg": -1.0}, "max_angle_deg", id="negative_angle"),
    ],
)
def test_invalid_geometric_arguments_raise(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        hermes_geometric("image", "label", **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        pytest.param({"jitter_prob": -0.1}, "jitter_prob", id="negative_prob"),
        pytest.param({"gamma": 1.0}, "gamma", id="gamma_too_wide"),
        pytest.param({"blur_sigma": (2.0, 1.0)}, "blur_sigma", id="reversed_sigma"),
        pytest.param({"intensity_range": (1.0, 0.0)}, "intensity_range", id="reversed_range"),
    ],
)
def test_invalid_strong_arguments_raise(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        hermes_strong("image", speckle_prob=0.0, **kwargs)
