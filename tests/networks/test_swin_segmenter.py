# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""The dual-network method's SwinUNETR option (needs einops, part of the ``swin`` and ``test`` extras)."""

from __future__ import annotations

import pytest
import torch

from usseg.networks.dual import ProjectedSegmenter, build_segmenter

pytest.importorskip("einops")


def test_swin_unetr_segments_at_the_input_size_and_projects_its_bottleneck() -> None:
    torch.manual_seed(0)
    projected = ProjectedSegmenter(build_segmenter("swin_unetr", 3, swin_feature_size=12), embedding_dim=8)
    images = torch.rand(2, 1, 64, 64)
    logits, embedding = projected(images)
    assert logits.shape == (2, 3, 64, 64)
    assert embedding.shape[:2] == (2, 8) and embedding.shape[2] == embedding.shape[3] < 64
    (logits.mean() + embedding.mean()).backward()
    trunk = [p for name, p in projected.named_parameters() if not name.startswith("head")]
    assert all(p.grad is not None for p in trunk if p.requires_grad)


def test_swin_unetr_refuses_a_feature_size_that_is_not_a_multiple_of_12() -> None:
    with pytest.raises(ValueError, match="12"):
        build_segmenter("swin_unetr", 2, swin_feature_size=16)
