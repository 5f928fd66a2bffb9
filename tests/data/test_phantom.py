# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""Tests for the embedded B-mode phantom: determinism, anatomy versus labels, geometry, cine and the writer."""

from __future__ import annotations

import csv
import json

import av
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from usseg.data.phantom import (
    case_generator,
    phantom_case_plan,
    simulate_cine,
    simulate_image,
    write_phantom_dataset,
)

SIZE = (128, 128)
SEEDS = (0, 1, 2)


def _ring(mask: np.ndarray, cone: np.ndarray, inner: int = 2, outer: int = 6) -> np.ndarray:
    """Tissue around the lesion (in the cone), excluding rows below it where the posterior band lies."""
    ring = ndimage.binary_dilation(mask, iterations=outer) & ~ndimage.binary_dilation(mask, iterations=inner)
    ring &= cone
    ring[np.flatnonzero(mask.any(axis=1))[-1] + 1 :] = False
    return ring


def _posterior_contrast(image: np.ndarray, mask: np.ndarray, cone: np.ndarray) -> float:
    """Mean grey level in a band below the lesion minus the same depth band in the columns beside it."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    height, width = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
    band = slice(rows[-1] + 2, min(rows[-1] + 2 + max(height, 8), image.shape[0]))
    centre = slice(cols[0] + width // 4, cols[-1] - width // 4 + 1)
    sides = []
    for side in (slice(max(cols[0] - width, 0), max(cols[0] - 2, 0)), slice(cols[-1] + 3, cols[-1] + width + 1)):
        sides.append(image[band, side][cone[band, side]])
    return float(image[band, centre].mean() - np.concatenate(sides).mean())


# ---------------------------------------------------------------- determinism


@pytest.mark.parametrize("geometry", ["linear", "curvilinear"])
@pytest.mark.parametrize("label_mode", ["lesion", "multi_structure"])
def test_same_seed_is_bit_identical_and_other_seed_differs(geometry, label_mode):
    kwargs = {"size": SIZE, "geometry": geometry, "label_mode": label_mode, "elastography": True, "annotations": True}
    first, again = simulate_image(7, **kwargs), simulate_image(np.random.default_rng(7), **kwargs)
    assert first.keys() == again.keys()
    for key in ("image", "mask", "cone", "elastography"):
        np.testing.assert_array_equal(first[key], again[key])
    other = simulate_image(8, **kwargs)
    assert not np.array_equal(first["image"], other["image"])


def test_output_types_and_shapes():
    result = simulate_image(3, size=(96, 112), geometry="curvilinear", lesion_class="malignant", elastography=True)
    assert result["image"].dtype == np.uint8 and result["image"].shape == (96, 112)
    assert result["mask"].dtype == np.uint8 and set(np.unique(result["mask"])) == {0, 1}
    assert result["cone"].dtype == bool and result["cone"].shape == (96, 112)
    assert result["elastography"].dtype == np.uint8 and result["elastography"].shape == (96, 112)
    assert result["class"] == "malignant" and result["geometry"] == "curvilinear"


# ---------------------------------------------------------------- lesions


@pytest.mark.parametrize("lesion_class", ["benign", "malignant"])
@pytest.mark.parametrize("geometry", ["linear", "curvilinear"])
@pytest.mark.parametrize("seed", SEEDS)
def test_lesion_is_hypoechoic_and_stiff(lesion_class, geometry, seed):
    result = simulate_image(seed, size=SIZE, geometry=geometry, lesion_class=lesion_class, elastography=True)
    mask = result["mask"].astype(bool)
    assert 20 < mask.sum() < 0.25 * mask.size
    ring = _ring(mask, result["cone"])
    image, strain = result["image"].astype(float), result["elastography"].astype(float)
    assert image[mask].mean() < image[ring].mean() - 10  # several grey levels darker, not just noise
    assert strain[mask].mean() < strain[ring].mean() - 10  # stiff lesion: low strain


@pytest.mark.parametrize("seed", SEEDS)
def test_posterior_enhancement_for_benign_and_shadowing_for_malignant(seed):
    benign = simulate_image(seed, size=SIZE, geometry="linear", lesion_class="benign")
    malignant = simulate_image(seed, size=SIZE, geometry="linear", lesion_class="malignant")
    assert _posterior_contrast(benign["image"].astype(float), benign["mask"] > 0, benign["cone"]) > 8
    assert _posterior_contrast(malignant["image"].astype(float), malignant["mask"] > 0, malignant["cone"]) < -15


def test_shape_separates_classes():
    """Benign masks are smooth wide ovals; malignant masks are irregular (low solidity) and not wider than tall."""

    def shape_stats(mask: np.ndarray) -> tuple[float, float]:
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        ellipse_fill = mask.sum() / (np.pi / 4 * (rows[-1] - rows[0] + 1) * (cols[-1] - cols[0] + 1))
        return (cols[-1] - cols[0] + 1) / (rows[-1] - rows[0] + 1), ellipse_fill

    for seed in SEEDS:
        benign = shape_stats(simulate_image(seed, size=(192, 192), lesion_class="benign")["mask"] > 0)
        malignant = shape_stats(simulate_image(seed, size=(192, 192), lesion_class="malignant")["mask"] > 0)
        assert benign[0] > 1.15 and benign[1] > 0.9  # wider than tall, fills its bounding ellipse
        assert malignant[1] < 0.85  # spicules stretch the bounding box


@pytest.mark.parametrize("lesion_class", ["normal", None])
def test_normal_class_has_an_empty_mask(lesion_class):
    result = simulate_image(4, size=SIZE, lesion_class=lesion_class)
    assert result["class"] == "normal"
    assert not result["mask"].any()
    assert result["image"][result["cone"]].mean() > 40  # still an ultrasound image


# ---------------------------------------------------------------- geometry and annotations


@pytest.mark.parametrize("geometry", ["linear", "curvilinear"])
def test_image_and_mask_are_black_outside_the_cone(geometry):
    result = simulate_image(5, size=SIZE, geometry=geometry, lesion_class="malignant")
    cone = result["cone"]
    assert 0.3 * cone.size < cone.sum() < cone.size
    assert not result["image"][~cone].any()
    assert not result["mask"][~cone].any()
    assert (result["image"][cone] > 0).mean() > 0.95
    if geometry == "curvilinear":
        assert not cone[0, 0] and not cone[0, -1] and not cone[-1, 0]  # sector: corners outside
        assert cone[SIZE[0] // 2, SIZE[1] // 2]
    else:
        rows, cols = np.flatnonzero(cone.any(axis=1)), np.flatnonzero(cone.any(axis=0))
        assert cone[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].all()  # a rectangle


@pytest.mark.parametrize("geometry", ["linear", "curvilinear"])
def test_annotations_only_outside_the_cone(geometry):
    plain = simulate_image(6, size=(160, 160), geometry=geometry, annotations=False)
    annotated = simulate_image(6, size=(160, 160), geometry=geometry, annotations=True)
    cone = plain["cone"]
    np.testing.assert_array_equal(annotated["image"][cone], plain["image"][cone])
    burned = annotated["image"] > 0
    burned &= ~cone
    assert burned.sum() > 50
    assert annotated["image"][burned].min() >= 200  # white text
    assert not (ndimage.binary_dilation(cone, iterations=1) & burned).any()  # never touching the cone
    np.testing.assert_array_equal(annotated["mask"], plain["mask"])


# ---------------------------------------------------------------- multi-structure mode


@pytest.mark.parametrize("lesion_class", ["benign", "normal"])
@pytest.mark.parametrize("geometry", ["linear", "curvilinear"])
def test_multi_structure_labels_are_two_touching_structures(lesion_class, geometry):
    result = simulate_image(9, size=SIZE, geometry=geometry, lesion_class=lesion_class, label_mode="multi_structure")
    mask = result["mask"]
    assert set(np.unique(mask)) == {0, 1, 2}
    upper, lower = mask == 1, mask == 2
    assert upper.sum() > 100 and lower.sum() > 100
    assert (ndimage.binary_dilation(upper) & lower).sum() > 10  # they share a boundary
    for label in (upper, lower):
        assert ndimage.label(label)[1] == 1  # each structure is one piece
    image = result["image"].astype(float)
    around = ndimage.binary_dilation(mask > 0, iterations=8) & ~ndimage.binary_dilation(mask > 0, iterations=3)
    around &= result["cone"]
    assert image[upper].mean() < image[around].mean()  # the organ is visible against its surroundings


# ---------------------------------------------------------------- cine


@pytest.fixture(scope="module")
def cine() -> dict:
    return simulate_cine(11, num_frames=8, size=(96, 96), geometry="curvilinear", lesion_class="benign")


def test_cine_shapes_and_determinism(cine):
    assert cine["frames"].shape == (8, 96, 96) and cine["frames"].dtype == np.uint8
    assert cine["masks"].shape == (8, 96, 96) and cine["masks"].dtype == np.uint8
    again = simulate_cine(11, num_frames=8, size=(96, 96), geometry="curvilinear", lesion_class="benign")
    np.testing.assert_array_equal(cine["frames"], again["frames"])
    np.testing.assert_array_equal(cine["masks"], again["masks"])
    assert not cine["frames"][:, ~cine["cone"]].any() and not cine["masks"][:, ~cine["cone"]].any()


def test_cine_mask_moves_smoothly_with_the_lesion(cine):
    centroids = np.array([ndimage.center_of_mass(mask) for mask in cine["masks"]])
    steps = np.diff(centroids, axis=0)
    assert np.abs(centroids[-1] - centroids[0]).max() > 1.0 or np.linalg.norm(steps, axis=1).sum() > 2.0
    assert np.linalg.norm(steps, axis=1).max() < 4.0  # no jumps
    assert np.linalg.norm(np.diff(steps, axis=0), axis=1).max() < 1.5  # smooth trajectory
    for frame, mask in zip(cine["frames"].astype(float), cine["masks"].astype(bool)):
        assert frame[mask].mean() < frame[_ring(mask, cine["cone"])].mean() - 10  # the mask sits on the lesion


def test_cine_frames_are_correlated_but_not_identical(cine):
    cone = cine["cone"]
    frames = cine["frames"].astype(float)
    correlations = [np.corrcoef(a[cone], b[cone])[0, 1] for a, b in zip(frames[:-1], frames[1:])]
    assert min(correlations) > 0.5
    assert max(correlations) < 0.999


def test_static_cine_with_rigid_speckle_changes_only_by_receiver_noise():
    cine = simulate_cine(2, num_frames=3, size=(64, 64), geometry="linear", motion_scale=0.0, speckle_correlation=1.0)
    cone = cine["cone"]
    first, last = cine["frames"][0][cone].astype(float), cine["frames"][2][cone].astype(float)
    assert np.corrcoef(first, last)[0, 1] > 0.98
    assert np.abs(first - last).mean() < 2.0
    np.testing.assert_array_equal(cine["masks"][0], cine["masks"][2])


# ---------------------------------------------------------------- writer


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> dict:
    settings = {
        "num_images": 6,
        "size": 64,
        "seed": 5,
        "modalities": ("bmode", "elastography"),
        "num_videos": 2,
        "frames_per_video": 4,
    }
    first = write_phantom_dataset(tmp_path_factory.mktemp("phantom_a"), **settings)
    second = write_phantom_dataset(tmp_path_factory.mktemp("phantom_b"), **settings)
    return {"root": first, "copy": second, "settings": settings}


def test_written_dataset_has_the_generic_layout(dataset):
    root = dataset["root"]
    names = [f"case_{i:04d}.png" for i in range(6)]
    for folder in ("images", "masks", "images_m2"):
        assert sorted(p.name for p in (root / folder).iterdir()) == names
    assert sorted(p.name for p in (root / "videos").iterdir()) == ["cine_0000.mp4", "cine_0001.mp4"]
    with open(root / "classes.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["image"] for row in rows] == [*names, "cine_0000.mp4", "cine_0001.mp4"]
    assert [row["class"] for row in rows[:6]].count("benign") == 3  # balanced
    meta = json.loads((root / "dataset.json").read_text())
    assert meta["mask_mode"] == "binary" and meta["labels"] == {"0": "background", "1": "lesion"}
    assert meta["class_names"] == ["benign", "malignant"] and meta["modalities"] == ["bmode", "elastography"]
    assert meta["generator"]["seed"] == 5 and meta["generator"]["num_videos"] == 2
    for name in names:
        image = np.asarray(Image.open(root / "images" / name))
        mask = np.asarray(Image.open(root / "masks" / name))
        strain = np.asarray(Image.open(root / "images_m2" / name))
        assert image.shape == mask.shape == strain.shape == (64, 64)
        assert set(np.unique(mask)) == {0, 255}


def test_written_dataset_is_reproducible_file_by_file(dataset):
    first, second = dataset["root"], dataset["copy"]
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert len(files) == 6 * 3 + 2 + 2
    for relative in files:
        assert (first / relative).read_bytes() == (second / relative).read_bytes(), relative


def test_any_written_case_can_be_regenerated_alone(dataset):
    root, settings = dataset["root"], dataset["settings"]
    class_name, geometry = phantom_case_plan(3, ("benign", "malignant"), "mixed")
    assert (class_name, geometry) == ("malignant", "curvilinear")
    case = simulate_image(
        case_generator(settings["seed"], 3),
        size=(64, 64),
        geometry=geometry,
        lesion_class=class_name,
        elastography=True,
        annotations=True,
    )
    np.testing.assert_array_equal(np.asarray(Image.open(root / "images" / "case_0003.png")), case["image"])
    np.testing.assert_array_equal(np.asarray(Image.open(root / "masks" / "case_0003.png")), case["mask"] * 255)


def test_written_video_decodes_with_the_right_frame_count(dataset):
    with av.open(str(dataset["root"] / "videos" / "cine_0001.mp4")) as container:
        frames = [frame.to_ndarray(format="gray") for frame in container.decode(video=0)]
    assert len(frames) == 4
    assert frames[0].shape == (64, 64)
    assert 20 < np.mean(frames[0]) < 200


def test_multi_structure_dataset_stores_raw_labels_and_removes_stale_cases(tmp_path):
    write_phantom_dataset(
        tmp_path,
        num_images=5,
        size=48,
        class_names=("normal",),
        geometry="linear",
        modalities=("bmode", "elastography"),
    )
    (tmp_path / "images" / "notes.txt").write_text("not the phantom's")
    root = write_phantom_dataset(
        tmp_path, num_images=3, size=48, class_names=("benign", "malignant", "normal"), label_mode="multi_structure"
    )
    names = [f"case_{i:04d}.png" for i in range(3)]
    assert sorted(p.name for p in (root / "images").iterdir()) == [*names, "notes.txt"]  # foreign files are kept
    assert sorted(p.name for p in (root / "masks").iterdir()) == names
    meta = json.loads((root / "dataset.json").read_text())
    assert meta["mask_mode"] == "labels" and set(meta["labels"]) == {"0", "1", "2"}
    assert set(np.unique(np.asarray(Image.open(root / "masks" / "case_0000.png")))) == {0, 1, 2}
    assert not (root / "videos").exists() and not (root / "images_m2").exists()


# ---------------------------------------------------------------- invalid arguments


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        pytest.param({"geometry": "phased"}, ValueError, "phased", id="unknown_geometry"),
        pytest.param({"lesion_class": "cyst"}, ValueError, "cyst", id="unknown_class"),
        pytest.param({"label_mode": "organs"}, ValueError, "organs", id="unknown_label_mode"),
        pytest.param({"size": (16, 64)}, ValueError, "16", id="too_small"),
        pytest.param({"size": (64.0, 64)}, TypeError, "64.0", id="float_size"),
        pytest.param({"seed": -1}, ValueError, "-1", id="negative_seed"),
        pytest.param({"seed": 1.5}, TypeError, "1.5", id="float_seed"),
    ],
)
def test_simulate_image_rejects_bad_arguments(kwargs, error, match):
    kwargs = {"seed": 0, **kwargs}
    with pytest.raises(error, match=match):
        simulate_image(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        pytest.param({"num_frames": 0}, "num_frames", id="no_frames"),
        pytest.param({"motion_scale": -1.0}, "motion_scale", id="negative_motion"),
        pytest.param({"speckle_correlation": 1.5}, "1.5", id="correlation_above_one"),
        pytest.param({"geometry": "phased"}, "phased", id="unknown_geometry"),
    ],
)
def test_simulate_cine_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        simulate_cine(0, size=(32, 32), **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        pytest.param({"geometry": "phased"}, ValueError, "phased", id="unknown_geometry"),
        pytest.param({"class_names": ("benign", "cyst")}, ValueError, "cyst", id="unknown_class"),
        pytest.param({"class_names": ("benign", "benign")}, ValueError, "distinct", id="duplicate_class"),
        pytest.param({"class_names": ()}, ValueError, "class_names", id="no_class"),
        pytest.param({"label_mode": "organs"}, ValueError, "organs", id="unknown_label_mode"),
        pytest.param({"modalities": ("bmode", "doppler")}, ValueError, "doppler", id="unknown_modality"),
        pytest.param({"modalities": ("elastography",)}, ValueError, "bmode", id="no_bmode"),
        pytest.param({"num_images": 0}, ValueError, "num_images", id="no_images"),
        pytest.param({"num_videos": 1, "size": 63}, ValueError, "even", id="odd_video_size"),
        pytest.param({"frames_per_video": 1}, ValueError, "frames_per_video", id="one_frame_video"),
        pytest.param({"seed": "0"}, TypeError, "seed", id="string_seed"),
    ],
)
def test_write_phantom_dataset_rejects_bad_arguments(tmp_path, kwargs, error, match):
    with pytest.raises(error, match=match):
        write_phantom_dataset(tmp_path / "out", **{"num_images": 2, "size": 48, **kwargs})
    assert not (tmp_path / "out").exists()  # validation happens before anything is written
