# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""Hermes networks: shapes, IAS gating and gradients, the saliency bridge, encoder files, TorchScript."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from usseg.errors import InputError
from usseg.networks.encoders import build_resnet_encoder, save_encoder
from usseg.networks.hermes import (
    HermesClassificationNet,
    HermesInferenceModel,
    HermesSegmentationNet,
    gradient_saliency,
)

SMALL = {"depth": 10, "widths": (8, 16, 16, 32)}


def nets(ias: bool = True, saliency: bool = False) -> tuple[HermesSegmentationNet, HermesClassificationNet]:
    torch.manual_seed(0)
    seg = HermesSegmentationNet(embedding_dim=16, consistency_dim=12, saliency=saliency, **SMALL)
    cls = HermesClassificationNet(embedding_dim=8, consistency_dim=12, ias=ias, seg_channels=seg.ias_channels, **SMALL)
    return seg, cls


@pytest.mark.parametrize("size", [(64, 64), (48, 80)], ids=["square", "non_square"])
def test_output_shapes(size: tuple[int, int]) -> None:
    seg, cls = nets()
    x = torch.rand(2, 1, *size)
    logits, embedding, consistency, ias_features = seg(x)
    assert logits.shape == (2, 2, *size)
    assert embedding.shape == (2, 16, size[0] // 8, size[1] // 8)
    torch.testing.assert_close(embedding.norm(dim=1), torch.ones(2, size[0] // 8, size[1] // 8))
    assert consistency.shape == (2, 12)
    assert [f.shape[1] for f in ias_features] == seg.ias_channels == [8, 8, 16, 16]
    cls_logits, cls_embedding, cls_consistency = cls(x, ias_features)
    assert cls_logits.shape == (2, 2) and cls_embedding.shape == (2, 8) and cls_consistency.shape == (2, 12)
    torch.testing.assert_close(cls_embedding.norm(dim=1), torch.ones(2))
    seg.eval()  # dropout makes two training-mode passes differ
    torch.testing.assert_close(seg.segment(x), seg(x)[0])


def test_segmentation_encoder_drops_layer4() -> None:
    seg, _ = nets()
    assert not [name for name, _ in seg.named_parameters() if name.startswith("encoder.layer4")]


def test_ias_gate_fuses_only_the_gated_samples_and_carries_gradient_to_the_seg_maps() -> None:
    seg, cls = nets()
    seg.eval(), cls.eval()
    x = torch.rand(3, 1, 32, 32)
    _, _, _, features = seg(x)
    plain = cls.classify(x)
    gate = torch.tensor([True, False, False])
    gated = cls.classify(x, features, gate)
    torch.testing.assert_close(gated[1:], plain[1:])  # ungated samples see no fusion
    assert not torch.allclose(gated[:1], plain[:1])
    torch.testing.assert_close(cls.classify(x, features, torch.zeros(3, dtype=torch.bool)), plain)
    gated[0].sum().backward()
    assert seg.dec0[0].weight.grad is not None and seg.dec0[0].weight.grad.abs().sum() > 0


def test_without_ias_the_classifier_ignores_seg_features_and_has_no_attention_parameters() -> None:
    seg, cls = nets(ias=False)
    cls.eval()
    x = torch.rand(2, 1, 32, 32)
    torch.testing.assert_close(cls.classify(x, seg(x)[3]), cls.classify(x))
    assert not [n for n, _ in cls.named_parameters() if n.startswith("ias_")]


def test_saliency_bridge_has_matching_channels_and_changes_the_output() -> None:
    seg, cls = nets(saliency=True)
    seg.eval(), cls.eval()
    x = torch.rand(2, 1, 32, 32)
    saliency = gradient_saliency(cls, x)
    assert saliency.shape == (2, 1, 32, 32) and (saliency >= 0).all() and not saliency.requires_grad
    with_map = seg.segment(x, saliency)
    assert with_map.shape == (2, 2, 32, 32)
    assert not torch.allclose(with_map, seg.segment(x, torch.zeros_like(saliency)))
    with pytest.raises(ValueError, match="saliency=True"):
        seg.segment(x)
    model = HermesInferenceModel(seg, cls).eval()
    torch.testing.assert_close(model(x), with_map)


def test_gradient_saliency_is_the_input_gradient_of_the_top_logit() -> None:
    _, cls = nets(ias=False)
    cls.eval()
    x = torch.rand(1, 1, 32, 32, requires_grad=True)
    logits = cls.classify(x)
    logits[0, logits.argmax()].backward()
    torch.testing.assert_close(gradient_saliency(cls, x), x.grad.abs())


def test_inference_model_segments_classifies_and_scripts() -> None:
    seg, cls = nets()
    model = HermesInferenceModel(seg, cls).eval()
    x = torch.rand(2, 1, 64, 64)
    seg_logits, cls_logits = model.predict(x)
    torch.testing.assert_close(model(x), seg_logits)
    torch.testing.assert_close(model.classify(x), cls_logits)
    scripted = torch.jit.script(model)
    torch.testing.assert_close(scripted(x), model(x))
    assert {k.split(".")[0] for k in model.state_dict()} == {"segmentation", "classification"}


def test_ias_at_eval_uses_the_segmentation_maps() -> None:
    seg, cls = nets()
    x = torch.rand(2, 1, 32, 32)
    with_ias = HermesInferenceModel(seg, cls, ias_at_eval=True).eval()
    without = HermesInferenceModel(seg, cls, ias_at_eval=False).eval()
    torch.testing.assert_close(with_ias.classify(x), cls.classify(x, seg(x)[3]))
    assert not torch.allclose(with_ias.classify(x), without.classify(x))
    with pytest.raises(ValueError, match="ias=True"):
        HermesInferenceModel(seg, nets(ias=False)[1], ias_at_eval=True)


def test_encoders_load_from_an_encoder_file(tmp_path: Path) -> None:
    torch.manual_seed(1)
    pretrained = build_resnet_encoder(depth=10, in_channels=1, widths=SMALL["widths"])
    weights, _ = save_encoder(pretrained, tmp_path / "encoder.pt")
    seg = HermesSegmentationNet(encoder_weights=weights, **SMALL)
    cls = HermesClassificationNet(encoder_weights=weights, **SMALL)
    for net in (seg, cls):
        torch.testing.assert_close(net.encoder.conv1.weight, pretrained.conv1.weight)
        torch.testing.assert_close(net.encoder.layer3[0].conv1.weight, pretrained.layer3[0].conv1.weight)
    torch.testing.assert_close(cls.encoder.layer4[0].conv1.weight, pretrained.layer4[0].conv1.weight)
    with pytest.raises(InputError, match="mis-shaped") as raised:
        HermesClassificationNet(depth=10, widths=(16, 16, 16, 32), encoder_weights=weights)
    assert str(weights) in str(raised.value)


@pytest.mark.parametrize(
    "build, fragment",
    [
        (lambda: HermesSegmentationNet(num_classes=1), "num_classes"),
        (lambda: HermesSegmentationNet(embedding_dim=0), "embedding_dim"),
        (lambda: HermesClassificationNet(ias=True, seg_channels=None), "seg_channels"),
        (lambda: HermesInferenceModel(torch.nn.Identity(), nets()[1]), "HermesSegmentationNet"),
    ],
    ids=["one_class", "embedding_dim", "ias_without_channels", "wrong_type"],
)
def test_invalid_arguments(build: object, fragment: str) -> None:
    with pytest.raises((ValueError, TypeError), match=fragment):
        build()
