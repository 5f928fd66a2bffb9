# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""Tests of the ultrasound intensity transforms: speckle, depth attenuation with TGC, acoustic shadow."""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor, set_track_meta
from scipy import special, stats

from usseg.transforms.intensity import (
    RandAcousticShadow,
    RandAcousticShadowD,
    RandAcousticShadowd,
    RandAcousticShadowDict,
    RandDepthAttenuation,
    RandDepthAttenuationD,
    RandDepthAttenuationd,
    RandDepthAttenuationDict,
    RandSpeckleNoise,
    RandSpeckleNoiseD,
    RandSpeckleNoised,
    RandSpeckleNoiseDict,
)

DR = 60.0  # dynamic range used throughout, dB

ARRAY_TYPES: dict[str, Callable[[np.ndarray], object]] = {
    "numpy": np.asarray,
    "torch": torch.as_tensor,
    "metatensor": lambda x: MetaTensor(x, meta={"spacing": (0.1, 0.1)}),
}

# Array transforms applied with certainty; each must change a flat mid-grey image.
ARRAY_TRANSFORMS: dict[str, Callable[..., object]] = {
    "speckle_rayleigh": lambda **kw: RandSpeckleNoise(prob=1.0, distribution="rayleigh", **kw),
    "speckle_gamma": lambda **kw: RandSpeckleNoise(prob=1.0, distribution="gamma", **kw),
    "depth_attenuation": lambda **kw: RandDepthAttenuation(prob=1.0, attenuation_db=(2.0, 6.0), **kw),
    "shadow_linear": lambda **kw: RandAcousticShadow(prob=1.0, width=(0.3, 0.5), **kw),
    "shadow_sector": lambda **kw: RandAcousticShadow(prob=1.0, width=(0.3, 0.5), apex=(-8.0, 16.0), **kw),
}

DICT_TRANSFORMS: dict[str, Callable[..., object]] = {
    "speckle": lambda **kw: RandSpeckleNoised(**kw),
    "depth_attenuation": lambda **kw: RandDepthAttenuationd(attenuation_db=(2.0, 6.0), **kw),
    "shadow": lambda **kw: RandAcousticShadowd(width=(0.3, 0.5), **kw),
}


def flat_image(value: float = 0.6, shape: tuple[int, int, int] = (1, 32, 32)) -> np.ndarray:
    return np.full(shape, value, dtype=np.float32)


def textured_image(shape: tuple[int, int, int] = (1, 32, 32), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.2, 0.8, size=shape).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------------
# Protocol shared by every array transform
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3], ids=["gray", "rgb"])
@pytest.mark.parametrize("to_type", ARRAY_TYPES.values(), ids=ARRAY_TYPES.keys())
@pytest.mark.parametrize("make", ARRAY_TRANSFORMS.values(), ids=ARRAY_TRANSFORMS.keys())
def test_output_shape_dtype_type_and_channels(make, to_type, channels):
    img = to_type(textured_image((channels, 24, 32)))
    out = make().set_random_state(3)(img)
    assert isinstance(out, MetaTensor)
    assert out.shape == (channels, 24, 32)
    assert out.dtype == torch.float32
    assert not np.allclose(np.asarray(out), np.asarray(img))


@pytest.mark.parametrize("make", ARRAY_TRANSFORMS.values(), ids=ARRAY_TRANSFORMS.keys())
def test_channels_share_one_draw(make):
    img = np.repeat(textured_image((1, 24, 32)), 3, axis=0)
    out = np.asarray(make().set_random_state(5)(img))
    np.testing.assert_array_equal(out[0], out[1])
    np.testing.assert_array_equal(out[0], out[2])


@pytest.mark.parametrize("make", ARRAY_TRANSFORMS.values(), ids=ARRAY_TRANSFORMS.keys())
def test_same_seed_same_output_other_seed_other_output(make):
    img = textured_image()
    first = np.asarray(make().set_random_state(7)(img))
    second = np.asarray(make().set_random_state(7)(img))
    other = np.asarray(make().set_random_state(8)(img))
    np.testing.assert_array_equal(first, second)
    assert not np.array_equal(first, other)


@pytest.mark.parametrize("to_type", ARRAY_TYPES.values(), ids=ARRAY_TYPES.keys())
@pytest.mark.parametrize(
    "transform",
    [RandSpeckleNoise(prob=0.0), RandDepthAttenuation(prob=0.0), RandAcousticShadow(prob=0.0)],
    ids=["speckle", "depth_attenuation", "shadow"],
)
def test_prob_zero_is_identity_as_float32_metatensor(transform, to_type):
    values = np.random.default_rng(0).integers(0, 256, size=(2, 16, 20)).astype(np.uint8)
    out = transform(to_type(values))
    assert isinstance(out, MetaTensor)
    assert out.dtype == torch.float32
    np.testing.assert_array_equal(np.asarray(out), values.astype(np.float32))


@pytest.mark.parametrize("make", ARRAY_TRANSFORMS.values(), ids=ARRAY_TRANSFORMS.keys())
def test_metatensor_meta_and_affine_survive(make):
    affine = torch.diag(torch.tensor([0.2, 0.3, 1.0, 1.0], dtype=torch.float64))
    img = MetaTensor(textured_image(), affine=affine, meta={"spacing": (0.2, 0.3), "filename_or_obj": "a.png"})
    out = make().set_random_state(0)(img)
    assert out.meta["spacing"] == (0.2, 0.3)
    assert out.meta["filename_or_obj"] == "a.png"
    torch.testing.assert_close(out.affine, affine)


def test_plain_tensor_out_when_meta_tracking_is_off():
    set_track_meta(False)
    try:
        out = RandSpeckleNoise(prob=1.0).set_random_state(0)(textured_image())
    finally:
        set_track_meta(True)
    assert type(out) is torch.Tensor
    assert out.dtype == torch.float32


@pytest.mark.parametrize(
    "transform",
    [RandSpeckleNoise(prob=1.0), RandDepthAttenuation(prob=1.0), RandAcousticShadow(prob=1.0)],
    ids=["speckle", "depth_attenuation", "shadow"],
)
def test_randomize_false_before_any_draw_raises(transform):
    with pytest.raises(RuntimeError, match="randomize"):
        transform(textured_image(), randomize=False)


@pytest.mark.parametrize("shape", [(32, 32), (1, 1, 32, 32), (1, 0, 8)], ids=["no_channel", "3d", "empty"])
@pytest.mark.parametrize(
    "transform",
    [RandSpeckleNoise(prob=1.0), RandDepthAttenuation(prob=1.0), RandAcousticShadow(prob=1.0)],
    ids=["speckle", "depth_attenuation", "shadow"],
)
def test_non_2d_channel_first_input_raises_with_shape(transform, shape):
    with pytest.raises(ValueError, match=re.escape(str(shape))):
        transform(np.zeros(shape, dtype=np.float32))


@pytest.mark.parametrize(
    "cls, kwargs, quoted",
    [
        (RandSpeckleNoise, {"distribution": "normal"}, "'normal'"),
        (RandSpeckleNoise, {"looks": (0.0, 4.0)}, "(0.0, 4.0)"),
        (RandSpeckleNoise, {"looks": (8.0, 4.0)}, "(8.0, 4.0)"),
        (RandSpeckleNoise, {"grain_sigma": (-1.0, 1.0)}, "(-1.0, 1.0)"),
        (RandSpeckleNoise, {"dynamic_range_db": 0.0}, "0.0"),
        (RandSpeckleNoise, {"value_range": (1.0, 1.0)}, "(1.0, 1.0)"),
        (RandSpeckleNoise, {"value_range": (0.0, float("nan"))}, "nan"),
        (RandDepthAttenuation, {"num_knots": 1}, "1"),
        (RandDepthAttenuation, {"gain_db": (3.0, -3.0)}, "(3.0, -3.0)"),
        (RandDepthAttenuation, {"depth_axis": 0}, "0"),
        (RandAcousticShadow, {"strength_db": (-5.0, 5.0)}, "(-5.0, 5.0)"),
        (RandAcousticShadow, {"width": (0.0, 0.2)}, "(0.0, 0.2)"),
        (RandAcousticShadow, {"length": 0.0}, "0.0"),
        (RandAcousticShadow, {"edge_softness": -0.1}, "-0.1"),
        (RandAcousticShadow, {"origin": "center"}, "'center'"),
        (RandAcousticShadow, {"apex": (float("inf"), 0.0)}, "inf"),
    ],
    ids=[
        "speckle_distribution",
        "speckle_looks_zero",
        "speckle_looks_reversed",
        "speckle_negative_grain",
        "speckle_dynamic_range",
        "speckle_empty_value_range",
        "speckle_nan_value_range",
        "depth_one_knot",
        "depth_gain_reversed",
        "depth_axis_channel",
        "shadow_negative_strength",
        "shadow_zero_width",
        "shadow_zero_length",
        "shadow_negative_softness",
        "shadow_origin",
        "shadow_infinite_apex",
    ],
)
def test_invalid_arguments_raise_value_error_quoting_the_value(cls, kwargs, quoted):
    with pytest.raises(ValueError) as info:
        cls(**kwargs)
    assert quoted in str(info.value)
    assert next(iter(kwargs)) in str(info.value)


@pytest.mark.parametrize(
    "cls, kwargs",
    [
        (RandSpeckleNoise, {"looks": "many"}),
        (RandSpeckleNoise, {"grain_sigma": (1.0, 2.0, 3.0)}),
        (RandAcousticShadow, {"apex": 5.0}),
    ],
    ids=["string_range", "triple_range", "scalar_apex"],
)
def test_wrongly_typed_arguments_raise_type_error(cls, kwargs):
    with pytest.raises(TypeError, match=next(iter(kwargs))):
        cls(**kwargs)


def test_yaml_style_config_instantiates_with_lists():
    parser = ConfigParser(
        {
            "speckle": {
                "_target_": "usseg.transforms.intensity.RandSpeckleNoised",
                "keys": "image",
                "prob": 1.0,
                "distribution": "gamma",
                "looks": [4, 16],
                "grain_sigma": [0, 1],
                "value_range": [0, 255],
            },
            "shadow": {
                "_target_": "usseg.transforms.intensity.RandAcousticShadowd",
                "keys": ["image"],
                "apex": [-5, 8],
            },
        }
    )
    speckle = parser.get_parsed_content("speckle")
    assert speckle.speckle.looks == (4.0, 16.0) and speckle.speckle.value_range == (0.0, 255.0)
    assert parser.get_parsed_content("shadow").shadow.apex == (-5.0, 8.0)


def test_aliases_point_to_the_dictionary_classes():
    assert RandSpeckleNoiseD is RandSpeckleNoiseDict is RandSpeckleNoised
    assert RandDepthAttenuationD is RandDepthAttenuationDict is RandDepthAttenuationd
    assert RandAcousticShadowD is RandAcousticShadowDict is RandAcousticShadowd


# ----------------------------------------------------------------------------------------------------------------
# Speckle physics
# ----------------------------------------------------------------------------------------------------------------


def test_rayleigh_speckle_matches_a_replayed_rng():
    img = textured_image((1, 20, 24), seed=4)
    out = RandSpeckleNoise(prob=1.0, grain_sigma=0.0, dynamic_range_db=DR).set_random_state(11)(img)
    rng = np.random.RandomState(11)
    rng.rand()  # the prob coin
    rng.uniform(0.0, 0.0)  # the grain size
    real, imag = rng.standard_normal((2, 20, 24))
    noise = np.abs(real + 1j * imag) / math.sqrt(math.pi / 2.0)  # Rayleigh, unit mean
    envelope = 10.0 ** ((img.astype(np.float64) - 1.0) * DR / 20.0)
    expected = np.clip(1.0 + 20.0 * np.log10(envelope * noise) / DR, 0.0, 1.0)
    np.testing.assert_allclose(np.asarray(out), expected, atol=2e-6)


def test_gamma_speckle_matches_a_replayed_rng():
    img = textured_image((1, 20, 24), seed=5)
    out = RandSpeckleNoise(prob=1.0, distribution="gamma", looks=(2.0, 9.0), grain_sigma=0.0).set_random_state(12)(img)
    rng = np.random.RandomState(12)
    rng.rand()  # the prob coin
    rng.uniform(0.0, 0.0)  # the grain size
    looks = rng.uniform(2.0, 9.0)
    gaussian = rng.standard_normal((1, 20, 24))[0]
    noise = stats.gamma.ppf(stats.norm.cdf(gaussian), a=looks, scale=1.0 / looks)
    envelope = 10.0 ** ((img.astype(np.float64) - 1.0) * DR / 20.0)
    expected = np.clip(1.0 + 20.0 * np.log10(envelope * noise) / DR, 0.0, 1.0)
    np.testing.assert_allclose(np.asarray(out), expected, atol=2e-5)


RAYLEIGH_LOG_MEAN_DB = 20.0 / math.log(10.0) * ((math.log(2.0) - np.euler_gamma) / 2.0 - 0.5 * math.log(math.pi / 2.0))


@pytest.mark.parametrize(
    "kwargs, log_mean_db",
    [
        ({"distribution": "rayleigh"}, RAYLEIGH_LOG_MEAN_DB),
        ({"distribution": "gamma", "looks": 4.0}, 20.0 / math.log(10.0) * (special.digamma(4.0) - math.log(4.0))),
        ({"distribution": "gamma", "looks": 1.0}, 20.0 / math.log(10.0) * (special.digamma(1.0) - math.log(1.0))),
    ],
    ids=["rayleigh", "gamma_4_looks", "gamma_1_look"],
)
def test_speckle_preserves_the_envelope_mean_of_a_flat_region(kwargs, log_mean_db):
    level = 0.6  # far enough from both ends that clipping is negligible at 60 dB
    out = np.asarray(
        RandSpeckleNoise(prob=1.0, grain_sigma=0.0, **kwargs).set_random_state(0)(flat_image(level, (1, 128, 128)))
    )
    envelope_ratio = np.mean(10.0 ** ((out - level) * DR / 20.0))
    assert abs(envelope_ratio - 1.0) < 0.03  # unit-mean noise; about 4 standard errors for 1 look
    # In the displayed (log) domain the mean drops by E[20 log10 n] / DR, known in closed form.
    assert abs(float(out.mean()) - (level + log_mean_db / DR)) < 0.004


def test_speckle_grain_grows_with_sigma():
    img = flat_image(0.6, (1, 96, 96))

    def lag_one_correlation(sigma: float) -> float:
        out = np.asarray(RandSpeckleNoise(prob=1.0, grain_sigma=sigma).set_random_state(1)(img))[0] - 0.6
        return float(np.corrcoef(out[:, :-1].ravel(), out[:, 1:].ravel())[0, 1])

    white, medium, coarse = lag_one_correlation(0.0), lag_one_correlation(1.0), lag_one_correlation(3.0)
    assert abs(white) < 0.05
    assert 0.2 < medium < coarse
    assert coarse > 0.8


def test_correlated_speckle_keeps_the_rayleigh_spread():
    # the smoothed field is re-normalised, so the grain changes the texture but not the marginal law
    out = np.asarray(RandSpeckleNoise(prob=1.0, grain_sigma=1.5).set_random_state(2)(flat_image(0.6, (1, 160, 160))))
    noise = 10.0 ** ((out - 0.6) * DR / 20.0)
    assert abs(noise.std() - math.sqrt(4.0 / math.pi - 1.0)) < 0.06


def test_speckle_leaves_the_floor_alone_and_stays_in_range():
    img = flat_image(0.6, (1, 32, 32))
    img[:, :, :8] = 0.0  # background outside the cone
    img[:, :, -4:] = 0.99  # near the top: noise above 1 must clip
    out = np.asarray(RandSpeckleNoise(prob=1.0).set_random_state(0)(img))
    np.testing.assert_array_equal(out[:, :, :8], 0.0)
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert (out[:, :, -4:] == 1.0).any()


def test_speckle_value_range_scales_with_the_image():
    img = textured_image((1, 24, 24), seed=9)
    unit = np.asarray(RandSpeckleNoise(prob=1.0).set_random_state(4)(img))
    eight_bit = np.asarray(RandSpeckleNoise(prob=1.0, value_range=(0, 255)).set_random_state(4)(img * 255.0))
    np.testing.assert_allclose(eight_bit, unit * 255.0, atol=2e-3)


def test_speckle_randomize_false_rejects_another_shape():
    speckle = RandSpeckleNoise(prob=1.0)
    speckle.randomize(flat_image(shape=(1, 16, 16)))
    with pytest.raises(ValueError, match=r"\(16, 16\)"):
        speckle(flat_image(shape=(1, 16, 20)), randomize=False)


# ----------------------------------------------------------------------------------------------------------------
# Depth attenuation physics
# ----------------------------------------------------------------------------------------------------------------


def test_depth_attenuation_matches_a_replayed_rng():
    img = textured_image((2, 30, 12), seed=6)
    transform = RandDepthAttenuation(prob=1.0, attenuation_db=(1.0, 8.0), gain_db=(-4.0, 4.0), num_knots=5)
    out = transform.set_random_state(21)(img)
    rng = np.random.RandomState(21)
    rng.rand()  # the prob coin
    alpha = rng.uniform(1.0, 8.0)
    knots = rng.uniform(-4.0, 4.0, size=5)
    depth = (np.arange(30) + 0.5) / 30
    gain_db = -2.0 * alpha * depth + np.interp(depth, [0.0, 0.25, 0.5, 0.75, 1.0], knots)
    expected = np.clip(img + gain_db[None, :, None] / DR, 0.0, 1.0)
    np.testing.assert_allclose(np.asarray(out), expected, atol=1e-6)


def test_pure_attenuation_darkens_monotonically_with_depth():
    out = np.asarray(
        RandDepthAttenuation(prob=1.0, attenuation_db=(3.0, 6.0), gain_db=0.0).set_random_state(0)(flat_image())
    )
    row_means = out[0].mean(axis=1)
    assert np.all(np.diff(row_means) < 0)
    np.testing.assert_allclose(out[0], out[0][:, :1].repeat(32, axis=1))  # no lateral variation


def test_attenuation_with_random_tgc_darkens_with_depth_in_expectation():
    transform = RandDepthAttenuation(prob=1.0, attenuation_db=(2.0, 6.0), gain_db=(-3.0, 3.0)).set_random_state(0)
    img = flat_image(0.6, (1, 16, 2))
    profiles = np.stack([np.asarray(transform(img))[0, :, 0] for _ in range(300)])
    quarter_means = profiles.mean(axis=0).reshape(4, 4).mean(axis=1)
    assert np.all(np.diff(quarter_means) < 0)
    # expected total drop over the image: 2 * E[alpha] * (depth span of the quarter centres), in display units
    np.testing.assert_allclose(quarter_means[0] - quarter_means[-1], 2.0 * 4.0 * 0.75 / DR, rtol=0.15)


def test_depth_axis_two_is_the_transpose_of_rows():
    img = textured_image((1, 20, 20), seed=2)
    rows = np.asarray(RandDepthAttenuation(prob=1.0, depth_axis=1).set_random_state(3)(img))
    cols = np.asarray(RandDepthAttenuation(prob=1.0, depth_axis=2).set_random_state(3)(img.transpose(0, 2, 1)))
    np.testing.assert_allclose(cols, rows.transpose(0, 2, 1), atol=1e-7)


def test_attenuation_leaves_the_floor_alone():
    img = flat_image(0.6)
    img[:, :, :5] = 0.0
    out = np.asarray(RandDepthAttenuation(prob=1.0, gain_db=(6.0, 9.0)).set_random_state(0)(img))
    np.testing.assert_array_equal(out[:, :, :5], 0.0)


# ----------------------------------------------------------------------------------------------------------------
# Acoustic shadow physics
# ----------------------------------------------------------------------------------------------------------------


def changed_pixels(out: object, img: np.ndarray) -> np.ndarray:
    return np.asarray(out)[0] != img[0]


@pytest.mark.parametrize("seed", [0, 1, 2, 3], ids=["seed0", "seed1", "seed2", "seed3"])
def test_linear_shadow_darkens_below_the_origin_only(seed):
    img = flat_image(0.6, (1, 40, 40))
    transform = RandAcousticShadow(prob=1.0, strength_db=(20.0, 30.0), width=0.3, edge_softness=0.0)
    out = np.asarray(transform.set_random_state(seed)(img))[0]
    changed = out != img[0]
    rows, cols = np.nonzero(changed)
    assert rows.size > 0
    top = rows.min()
    assert not changed[:top].any()  # nothing above the origin
    assert np.all(out <= img[0])  # only darker
    # directly below the origin, the full strength (at least 20 dB) applies
    below = out[top : top + 3, int(np.median(cols[rows == top]))]
    assert np.all(below <= 0.6 - 20.0 / DR + 1e-6)
    # a linear-probe shadow is a band of constant width
    widths = changed.sum(axis=1)[top : top + 5]
    assert np.all(widths == widths[0])


def test_sector_shadow_follows_the_rays_and_widens_with_depth():
    apex = (-20.0, 32.0)
    img = flat_image(0.6, (1, 64, 64))
    label = np.zeros((1, 64, 64), dtype=np.uint8)
    label[0, 10, 42] = 1  # an origin right of the apex: the ray leans to the right
    transform = RandAcousticShadow(
        prob=1.0, strength_db=25.0, width=0.15, length=1.0, edge_softness=0.0, origin="lesion", apex=apex
    )
    out = np.asarray(transform.set_random_state(1)(img, label))[0]
    changed = out != img[0]
    rows, cols = np.mgrid[0:64, 0:64]
    radius = np.hypot(rows - apex[0], cols - apex[1])
    assert changed[10, 42]
    assert not changed[radius < np.hypot(10 - apex[0], 42 - apex[1]) - 1e-9].any()
    widths = changed.sum(axis=1)
    assert widths[40] > widths[12] > 0
    centres = [np.mean(np.nonzero(changed[row])[0]) for row in (12, 40)]  # row 40: still inside the image
    ray_slope = (42 - apex[1]) / (10 - apex[0])
    assert centres[1] - centres[0] == pytest.approx(ray_slope * 28, abs=1.0)
    np.testing.assert_array_equal(changed, transform.shadow_weight() > 0)


def test_shadow_softness_gives_graded_edges():
    transform = RandAcousticShadow(prob=1.0, strength_db=30.0, width=0.5, edge_softness=0.5).set_random_state(0)
    out = np.asarray(transform(flat_image(0.6, (1, 40, 40))))[0]
    darkening = 0.6 - out
    levels = np.unique(np.round(darkening[darkening > 0], 5))
    assert levels.size > 5  # a ramp, not a hard step
    assert darkening.max() == pytest.approx(30.0 / DR, abs=1e-5)


def test_lesion_origin_is_the_only_foreground_pixel():
    label = np.zeros((1, 40, 40), dtype=np.uint8)
    label[0, 12, 25] = 1
    img = flat_image(0.6, (1, 40, 40))
    transform = RandAcousticShadow(prob=1.0, origin="lesion", width=0.2, edge_softness=0.0, strength_db=20.0)
    for seed in range(3):
        changed = changed_pixels(transform.set_random_state(seed)(img, label), img)
        rows, cols = np.nonzero(changed)
        assert rows.min() == 12
        assert changed[12, 25]
        assert not changed[:12].any()


def test_lesion_origin_lies_in_the_foreground():
    label = np.zeros((1, 48, 48), dtype=np.float32)
    label[0, 10:20, 30:40] = 1.0
    img = flat_image(0.6, (1, 48, 48))
    transform = RandAcousticShadow(prob=1.0, origin="lesion", width=0.1, edge_softness=0.0, strength_db=20.0)
    for seed in range(10):
        changed = changed_pixels(transform.set_random_state(seed)(img, label), img)
        rows, cols = np.nonzero(changed)
        top = rows.min()
        centre = int(round(np.mean(cols[rows == top])))
        assert 10 <= top < 20 and 30 <= centre < 40


def test_one_hot_label_uses_the_non_background_channels():
    label = np.zeros((2, 30, 30), dtype=np.float32)
    label[0] = 1.0  # background channel everywhere except the lesion
    label[0, 5, 7] = 0.0
    label[1, 5, 7] = 1.0
    img = flat_image(0.6, (1, 30, 30))
    transform = RandAcousticShadow(prob=1.0, origin="lesion", width=0.2, edge_softness=0.0).set_random_state(0)
    changed = changed_pixels(transform(img, label), img)
    assert np.nonzero(changed)[0].min() == 5 and changed[5, 7]


def test_empty_lesion_label_falls_back_to_a_random_origin():
    img = flat_image(0.6, (1, 30, 30))
    out = RandAcousticShadow(prob=1.0, origin="lesion").set_random_state(0)(img, np.zeros((1, 30, 30)))
    assert changed_pixels(out, img).any()


def test_lesion_origin_needs_a_label_of_the_image_shape():
    transform = RandAcousticShadow(prob=1.0, origin="lesion")
    with pytest.raises(ValueError, match="label"):
        transform(flat_image())
    with pytest.raises(ValueError, match=r"\(1, 16, 16\)"):
        transform(flat_image(shape=(1, 32, 32)), np.ones((1, 16, 16)))


# ----------------------------------------------------------------------------------------------------------------
# Dictionary versions
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("make", DICT_TRANSFORMS.values(), ids=DICT_TRANSFORMS.keys())
def test_dictionary_keys_share_one_draw(make):
    base = textured_image((1, 32, 32), seed=1) * 0.5 + 0.25  # in [0.35, 0.65]: no clipping at either end
    other = base + 0.05
    data = {"image": base, "image_b": other, "label": np.ones((1, 32, 32), dtype=np.uint8)}
    out = make(keys=["image", "image_b"], prob=1.0).set_random_state(2)(data)
    out_a, out_b = np.asarray(out["image"]), np.asarray(out["image_b"])
    unclipped = (out_a > 0) & (out_a < 1) & (out_b > 0) & (out_b < 1)
    assert unclipped.mean() > 0.95
    change_a, change_b = (out_a - base)[unclipped], (out_b - other)[unclipped]
    assert np.abs(change_a).max() > 0
    np.testing.assert_allclose(change_a, change_b, atol=1e-5)
    assert out["label"] is data["label"]  # not listed, not touched


@pytest.mark.parametrize("make", DICT_TRANSFORMS.values(), ids=DICT_TRANSFORMS.keys())
def test_dictionary_seeding_is_reproducible_and_chains(make):
    data = {"image": textured_image()}
    transform = make(keys="image", prob=1.0)
    assert transform.set_random_state(4) is transform
    first = np.asarray(transform(data)["image"])
    second = np.asarray(make(keys="image", prob=1.0).set_random_state(4)(data)["image"])
    np.testing.assert_array_equal(first, second)


@pytest.mark.parametrize("make", DICT_TRANSFORMS.values(), ids=DICT_TRANSFORMS.keys())
def test_dictionary_prob_zero_converts_every_key(make):
    values = textured_image()
    out = make(keys=["image", "image_b"], prob=0.0)({"image": values, "image_b": values.astype(np.float64)})
    for key in ("image", "image_b"):
        assert isinstance(out[key], MetaTensor) and out[key].dtype == torch.float32
        np.testing.assert_array_equal(np.asarray(out[key]), values)


@pytest.mark.parametrize("make", DICT_TRANSFORMS.values(), ids=DICT_TRANSFORMS.keys())
def test_dictionary_missing_key_raises_unless_allowed(make):
    with pytest.raises(KeyError, match="image_b"):
        make(keys=["image", "image_b"], prob=1.0)({"image": textured_image()})
    out = make(keys=["image", "image_b"], prob=1.0, allow_missing_keys=True)({"image": textured_image()})
    assert set(out) == {"image"} and out["image"].shape == (1, 32, 32)


@pytest.mark.parametrize("make", DICT_TRANSFORMS.values(), ids=DICT_TRANSFORMS.keys())
def test_dictionary_metadata_survives(make):
    img = MetaTensor(textured_image(), meta={"spacing": (0.1, 0.2)})
    out = make(keys="image", prob=1.0).set_random_state(0)({"image": img})["image"]
    assert out.meta["spacing"] == (0.1, 0.2)


def test_shadow_dictionary_reads_the_label_and_never_changes_it():
    label = np.zeros((1, 40, 40), dtype=np.uint8)
    label[0, 15, 10] = 1
    label_before = label.copy()
    img = flat_image(0.6, (1, 40, 40))
    transform = RandAcousticShadowd(
        keys="image", label_key="label", origin="lesion", prob=1.0, width=0.2, edge_softness=0.0
    ).set_random_state(0)
    out = transform({"image": img, "label": label})
    assert out["label"] is label
    np.testing.assert_array_equal(label, label_before)
    changed = changed_pixels(out["image"], img)
    assert np.nonzero(changed)[0].min() == 15 and changed[15, 10]


def test_shadow_dictionary_argument_checks():
    with pytest.raises(ValueError, match="label_key"):
        RandAcousticShadowd(keys="image", origin="lesion")
    with pytest.raises(ValueError, match="'label'"):
        RandAcousticShadowd(keys=["image", "label"], label_key="label")


def test_shadow_dictionary_missing_label_raises_unless_allowed():
    transform = RandAcousticShadowd(keys="image", label_key="label", origin="lesion", prob=1.0)
    with pytest.raises(KeyError, match="label"):
        transform({"image": flat_image()})
    allowed = RandAcousticShadowd(keys="image", label_key="label", origin="lesion", prob=1.0, allow_missing_keys=True)
    out = allowed.set_random_state(0)({"image": flat_image()})
    assert changed_pixels(out["image"], flat_image()).any()  # random origin instead
