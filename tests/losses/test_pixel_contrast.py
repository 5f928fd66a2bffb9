# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""Pixel contrast: boolean low-confidence masking (and the released integer bug), the loss against a slow loop and
closed forms, degenerate batches, small lesions and the memory bank."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from usseg.losses.pixel_contrast import PixelContrastLoss, pixel_contrast_labels


def test_boolean_mask_blanks_only_low_confidence_and_uncertain_pixels() -> None:
    pseudo = torch.ones(3, 2, 2, dtype=torch.long)
    confident = torch.ones(3, 2, 2, dtype=torch.bool)
    confident[2, 0, 0] = False  # one low-confidence pixel, in image 2
    uncertain = torch.zeros(3, 2, 2, dtype=torch.bool)
    uncertain[1, 1, 1] = True
    labels = pixel_contrast_labels(pseudo, confident, uncertain)
    expected = torch.ones(3, 2, 2, dtype=torch.long)
    expected[2, 0, 0] = -1
    expected[1, 1, 1] = -1
    assert torch.equal(labels, expected)


def test_compat_integer_mask_reproduces_the_released_whole_image_blanking() -> None:
    pseudo = torch.ones(3, 2, 2, dtype=torch.long)
    confident = torch.ones(3, 2, 2, dtype=torch.bool)
    confident[2, 0, 0] = False
    labels = pixel_contrast_labels(pseudo, confident, torch.zeros(3, 2, 2, dtype=torch.bool), compat_int_mask=True)
    # 1 - int(high_conf) holds 0s and 1s: images 0 and 1 are blanked, image 2's low-confidence pixel is kept
    assert (labels[0] == -1).all() and (labels[1] == -1).all()
    assert (labels[2] == 1).all()


def slow_loss(anchors: list[torch.Tensor], labels: list[int], tau: float) -> float:
    """ContrastiveSeg: each positive has its own denominator e^{s_ip} + sum over negatives."""
    total, count = 0.0, 0
    for i, (zi, yi) in enumerate(zip(anchors, labels)):
        negatives = sum(math.exp(float(zi @ zk) / tau) for zk, yk in zip(anchors, labels) if yk != yi)
        terms = [
            math.log(math.exp(float(zi @ zp) / tau) / (math.exp(float(zi @ zp) / tau) + negatives))
            for p, (zp, yp) in enumerate(zip(anchors, labels))
            if p != i and yp == yi
        ]
        if terms:
            total += -sum(terms) / len(terms)
            count += 1
    return total / count


def two_class_grid() -> tuple[torch.Tensor, torch.Tensor]:
    """One image, 4x4 grid: left half class 0, right half class 1 (8 pixels each)."""
    labels = torch.zeros(1, 4, 4, dtype=torch.long)
    labels[0, :, 2:] = 1
    return labels, labels.clone()


@pytest.mark.parametrize("tau", [0.07, 0.3], ids=["tau_0.07", "tau_0.3"])
def test_matches_the_slow_loop_when_every_pixel_is_an_anchor(tau: float) -> None:
    labels, predictions = two_class_grid()
    embedding = F.normalize(torch.randn(1, 6, 4, 4, generator=torch.Generator().manual_seed(1)), dim=1)
    # each class has 8 pixels and n_view = min(1024 // 2, 100, 8) = 8: every pixel is sampled, order irrelevant
    loss = PixelContrastLoss(tau, tau, min_anchor_pixels=0)(embedding, labels, predictions)
    pixels = embedding[0].permute(1, 2, 0).reshape(16, 6).double()
    expected = slow_loss(list(pixels), labels.flatten().tolist(), tau)
    assert loss.item() == pytest.approx(expected, rel=1e-4)


def test_closed_form_for_collapsed_orthogonal_classes() -> None:
    labels, predictions = two_class_grid()
    embedding = torch.zeros(1, 2, 4, 4)
    embedding[0, 0, :, :2] = 1.0  # class 0 -> e0
    embedding[0, 1, :, 2:] = 1.0  # class 1 -> e1
    tau = 0.5
    # every positive at similarity 1, 8 negatives at 0: l = -log(e^{2} / (e^{2} + 8))
    expected = -math.log(math.exp(1 / tau) / (math.exp(1 / tau) + 8))
    loss = PixelContrastLoss(tau, tau, min_anchor_pixels=0)(embedding, labels, predictions)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_labels_are_resized_to_the_embedding_grid() -> None:
    labels, predictions = two_class_grid()
    big = F.interpolate(labels[:, None].float(), scale_factor=4, mode="nearest")[:, 0].long()  # 16x16 labels
    embedding = F.normalize(torch.randn(1, 6, 4, 4, generator=torch.Generator().manual_seed(2)), dim=1)
    loss_fn = PixelContrastLoss(min_anchor_pixels=0)
    assert loss_fn(embedding, big, big).item() == pytest.approx(loss_fn(embedding, labels, predictions).item())


def test_all_ignored_single_class_and_too_small_classes_give_zero_without_nan() -> None:
    embedding = F.normalize(torch.randn(2, 6, 4, 4), dim=1).requires_grad_(True)
    loss_fn = PixelContrastLoss(min_anchor_pixels=100)  # more than 100 anchor pixels needed, a 4x4 grid has 16
    for labels in (
        torch.full((2, 4, 4), -1, dtype=torch.long),  # everything ignored
        torch.zeros(2, 4, 4, dtype=torch.long),  # one class: no negatives
        two_class_grid()[0].repeat(2, 1, 1),  # classes too small for the released threshold
    ):
        loss = loss_fn(embedding, labels, labels)
        assert loss.item() == 0.0
        loss.backward()
        assert torch.isfinite(embedding.grad).all()
    zeros = torch.zeros(2, 4, 4, dtype=torch.long)
    single = PixelContrastLoss(min_anchor_pixels=0)(embedding, zeros, zeros)
    assert single.item() == pytest.approx(0.0, abs=1e-6)


def test_a_fraction_threshold_lets_small_lesions_contribute() -> None:
    labels = torch.zeros(1, 16, 16, dtype=torch.long)
    labels[0, :4, :4] = 1  # a lesion of 16 pixels: 6% of the grid
    embedding = F.normalize(torch.randn(1, 6, 16, 16), dim=1)
    # released count: only the background (240 pixels) is an anchor class, alone it has no negatives -> 0
    assert PixelContrastLoss(min_anchor_pixels=100)(embedding, labels, labels).item() == pytest.approx(0.0, abs=1e-6)
    assert PixelContrastLoss(min_anchor_pixels=0.05)(embedding, labels, labels).item() > 0.1


def test_the_default_threshold_is_the_released_count_at_224_and_scales_with_the_grid() -> None:
    released = PixelContrastLoss()
    assert released._threshold(28 * 28) == pytest.approx(100.0)  # 224 x 224 input: the released count
    assert released._threshold(16 * 16) == pytest.approx(100 * 256 / 784)  # 128 x 128: 32.7 pixels, not 100
    labels = torch.zeros(1, 16, 16, dtype=torch.long)
    labels[0, :6, :6] = 1  # 36 of 256 pixels (14%): an anchor class by the default, not by a count of 100
    embedding = F.normalize(torch.randn(1, 6, 16, 16), dim=1)
    released(embedding, labels, labels)
    assert released.last_contrast_classes == 2


def test_last_contrast_classes_tells_whether_the_call_could_contribute() -> None:
    labels = torch.zeros(1, 16, 16, dtype=torch.long)
    labels[0, :4, :4] = 1
    embedding = F.normalize(torch.randn(1, 6, 16, 16), dim=1)
    expected = {1000: 0, 100: 1, 0.05: 2}  # no anchor class; the background alone; background and lesion
    for threshold, classes in expected.items():
        loss_fn = PixelContrastLoss(min_anchor_pixels=threshold)
        loss = loss_fn(embedding, labels, labels)
        assert loss_fn.last_contrast_classes == classes, threshold
        assert (loss.item() > 0.1) is (classes >= 2), threshold
    # a class held only in the memory bank counts: the background anchors then have negatives
    loss_fn = PixelContrastLoss(min_anchor_pixels=0.05, memory_size=4, embedding_dim=6)
    loss_fn(embedding, labels, labels)
    background_only = torch.zeros(1, 16, 16, dtype=torch.long)
    assert loss_fn(embedding, background_only, background_only).item() > 0.1
    assert loss_fn.last_contrast_classes == 2


def test_hard_anchors_are_preferred_half_and_half() -> None:
    loss_fn = PixelContrastLoss(max_views=4, min_anchor_pixels=0)
    labels = torch.zeros(1, 4, 4, dtype=torch.long)
    labels[0, 2:] = 1
    predictions = labels.clone()
    predictions[0, 0, :2] = 1  # two hard class-0 pixels (label 0, predicted 1)
    samples, classes = loss_fn._sample(labels.flatten(1), predictions.flatten(1), torch.Generator().manual_seed(0))
    class0 = dict(zip(classes, samples))[0][1].tolist()
    assert len(class0) == 4 and {0, 1} <= set(class0)  # both hard pixels are among the 4 sampled


def test_memory_bank_fills_joins_the_contrast_and_is_saved() -> None:
    labels, predictions = two_class_grid()
    embedding = F.normalize(torch.randn(1, 6, 4, 4, generator=torch.Generator().manual_seed(3)), dim=1)
    plain = PixelContrastLoss(min_anchor_pixels=0)(embedding, labels, predictions)
    loss_fn = PixelContrastLoss(min_anchor_pixels=0, memory_size=5, memory_per_update=3, embedding_dim=6)
    first = loss_fn(embedding, labels, predictions, generator=torch.Generator().manual_seed(0))
    assert first.item() == pytest.approx(plain.item())  # empty memory: same as no memory
    assert loss_fn.memory_count.tolist() == [3, 3]
    second = loss_fn(embedding, labels, predictions, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(second) and second.item() != pytest.approx(first.item())
    assert loss_fn.memory_count.tolist() == [5, 5]  # ring buffer of 5
    state = loss_fn.state_dict()
    assert state["memory"].shape == (2, 5, 6)
    restored = PixelContrastLoss(min_anchor_pixels=0, memory_size=5, embedding_dim=6)
    restored.load_state_dict(state)
    assert torch.equal(restored.memory, loss_fn.memory)


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"temperature": 0}, "0"),
        ({"max_samples": 0}, "0"),
        ({"min_anchor_pixels": 1.5}, "1.5"),
        ({"memory_size": -1}, "-1"),
    ],
    ids=["temperature", "max_samples", "min_anchor_fraction_above_one", "memory"],
)
def test_invalid_arguments(kwargs: dict, fragment: str) -> None:
    with pytest.raises(ValueError, match="got") as raised:
        PixelContrastLoss(**kwargs)
    assert fragment in str(raised.value)
