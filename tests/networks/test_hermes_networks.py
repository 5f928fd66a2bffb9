# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""Hermes networks: shapes, IAS gating and gradients, the saliency bridge, encoder files, TorchScript, and the
input normalisation whose statistics travel in the state dict."""

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
    InputNormalization,
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


# ------------------------------------------------------------------------------------ input normalisation

# ImageNet statistics typed in independently of the package; 1 channel uses their means
IMAGENET = {3: ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]), 1: ([0.449], [0.226])}


def normalising_model(channels: int, normalization: str = "imagenet", saliency: bool = False) -> HermesInferenceModel:
    torch.manual_seed(0)  # the normalisation draws no random number: the same seed gives the same weights
    seg = HermesSegmentationNet(channels, saliency=saliency, normalization=normalization, **SMALL)
    cls = HermesClassificationNet(
        channels, ias=True, seg_channels=seg.ias_channels, normalization=normalization, **SMALL
    )
    return HermesInferenceModel(seg, cls, ias_at_eval=True).eval()


def by_hand(x: torch.Tensor, channels: int) -> torch.Tensor:
    mean, std = (torch.tensor(v, dtype=torch.float64).view(1, channels, 1, 1) for v in IMAGENET[channels])
    return ((x.double() - mean) / std).float()


@pytest.mark.parametrize("channels", [1, 3])
def test_a_normalising_network_is_the_identity_network_on_the_normalised_image(channels: int) -> None:
    normalising = normalising_model(channels)
    plain = normalising_model(channels, "none")
    plain_state, normalising_state = plain.state_dict(), normalising.state_dict()
    assert plain_state.keys() == normalising_state.keys()  # same keys: only the buffers' values differ
    for name, value in plain_state.items():
        if "input_normalization" not in name:
            assert torch.equal(value, normalising_state[name]), name
    x = torch.rand(2, channels, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(normalising(x), plain(by_hand(x, channels)), rtol=1e-5, atol=1e-5)
        # the classifier normalises its own input, IAS maps included (ias_at_eval), and nothing twice
        torch.testing.assert_close(normalising.classify(x), plain.classify(by_hand(x, channels)), rtol=1e-5, atol=1e-5)
        # training's full forward passes of both networks as well
        for out, ref in zip(normalising.segmentation(x)[:3], plain.segmentation(by_hand(x, channels))[:3]):
            torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
        for out, ref in zip(normalising.classification(x), plain.classification(by_hand(x, channels))):
            torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_none_is_the_exact_identity() -> None:
    module = InputNormalization(3)
    x = torch.randn(2, 3, 5, 7)
    assert torch.equal(module(x), x)
    assert module.mean.shape == module.std.shape == (1, 3, 1, 1)
    assert set(module.state_dict()) == {"mean", "std"}  # persistent: saved with the weights


def test_saliency_is_the_gradient_with_respect_to_the_image_as_fed() -> None:
    normalising = normalising_model(3, saliency=True)
    plain = normalising_model(3, "none", saliency=True)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    # d/dx = d/d(normalised) / std, per channel, then the maximum of the absolute value over channels
    probe = by_hand(x, 3).requires_grad_(True)
    plain.classification.classify(probe).max(dim=1).values.sum().backward()
    std = torch.tensor(IMAGENET[3][1]).view(1, 3, 1, 1)
    expected = (probe.grad / std).abs().amax(dim=1, keepdim=True)
    saliency = gradient_saliency(normalising.classification, x)
    torch.testing.assert_close(saliency, expected, rtol=1e-4, atol=1e-7)
    # the bridge fuses the normalised image with that saliency, as training did
    torch.testing.assert_close(
        normalising(x), plain.segmentation.segment(by_hand(x, 3), saliency), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("channels", [1, 3])
def test_a_default_network_loaded_from_a_normalising_state_dict_reproduces_it_exactly(channels: int) -> None:
    normalising = normalising_model(channels)
    torch.manual_seed(123)  # other weights, so the load must replace every one of them
    seg = HermesSegmentationNet(channels, **SMALL)
    default = HermesInferenceModel(
        seg, HermesClassificationNet(channels, ias=True, seg_channels=seg.ias_channels, **SMALL), ias_at_eval=True
    )
    x = torch.rand(2, channels, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        before = default.eval()(x)
        default.load_state_dict(normalising.state_dict(), strict=True)
        assert torch.equal(default(x), normalising(x)) and torch.equal(default.classify(x), normalising.classify(x))
        assert not torch.allclose(before, default(x))
    for net in (default.segmentation, default.classification):
        torch.testing.assert_close(net.input_normalization.mean.flatten(), torch.tensor(IMAGENET[channels][0]))
        torch.testing.assert_close(net.input_normalization.std.flatten(), torch.tensor(IMAGENET[channels][1]))


def test_torchscript_of_a_normalising_network_matches_eager() -> None:
    normalising = normalising_model(3)
    torch.manual_seed(7)
    seg = HermesSegmentationNet(3, **SMALL)  # built with the identity, normalising through the loaded buffers
    loaded = HermesInferenceModel(seg, HermesClassificationNet(3, ias=True, seg_channels=seg.ias_channels, **SMALL))
    loaded.load_state_dict(normalising.state_dict())
    scripted = torch.jit.script(loaded.eval())
    x = torch.rand(2, 3, 48, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), normalising(x))
    assert "segmentation.input_normalization.mean" in scripted.state_dict()


@pytest.mark.parametrize(
    "build, fragment",
    [
        (lambda: HermesSegmentationNet(normalization="imagnet"), "'imagnet'"),
        (lambda: HermesClassificationNet(normalization=None), "None"),
        (lambda: HermesSegmentationNet(in_channels=2, normalization="imagenet"), "2"),
        (lambda: InputNormalization(3, mean=[0.5, 0.5]), r"\[0.5, 0.5\]"),
        (lambda: InputNormalization(1, std=[0.0]), r"\[0.0\]"),
        (lambda: InputNormalization(0), "0"),
    ],
    ids=["unknown_mode", "mode_not_a_string", "imagenet_two_channels", "mean_length", "zero_std", "no_channel"],
)
def test_invalid_normalization(build: object, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        build()


def test_none_works_for_any_channel_count() -> None:
    net = HermesSegmentationNet(in_channels=2, **SMALL).eval()
    x = torch.rand(1, 2, 32, 32)
    assert net.segment(x).shape == (1, 2, 32, 32)


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
