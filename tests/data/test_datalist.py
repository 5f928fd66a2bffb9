# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""Tests for :mod:`usseg.data.datalist` on synthetic BUSI, generic, DICOM and video folders made in tmp_path."""

from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, UltrasoundMultiFrameImageStorage, generate_uid

from usseg.data.datalist import PATH_KEYS, build_datalist, load_datalist
from usseg.data.splits import SPLIT_NAMES
from usseg.errors import DatalistError, InputError

# ---------------------------------------------------------------- synthetic data


def random_image(rng: np.random.Generator, shape: tuple[int, int] = (24, 32)) -> np.ndarray:
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


def box_mask(shape: tuple[int, int], top: int, left: int, size: int = 6) -> np.ndarray:
    mask = np.zeros(shape, dtype=np.uint8)
    mask[top : top + size, left : left + size] = 255
    return mask


def save_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def make_busi(root: Path, sizes: dict[str, int], seed: int = 0) -> dict[str, np.ndarray]:
    """BUSI-like folder; returns the mask each case should end up with (union of its mask files).

    ``benign (3)`` has an extra ``_mask_1``; ``benign (12)`` is a pixel copy of ``malignant (8)`` (conflicting
    classes) and ``benign (11)`` a pixel copy of ``benign (10)`` (same class). ``normal`` masks are empty.
    """
    rng = np.random.default_rng(seed)
    expected: dict[str, np.ndarray] = {}
    images: dict[str, np.ndarray] = {}
    for name, count in sizes.items():
        for k in range(1, count + 1):
            stem = f"{name} ({k})"
            images[stem] = random_image(rng)
            mask = np.zeros((24, 32), np.uint8) if name == "normal" else box_mask((24, 32), k % 10, k % 20)
            save_png(root / name / f"{stem}_mask.png", mask)
            expected[stem] = mask
    extra = box_mask((24, 32), 15, 22)
    save_png(root / "benign" / "benign (3)_mask_1.png", extra)
    expected["benign (3)"] = np.maximum(expected["benign (3)"], extra)
    images["benign (12)"] = images["malignant (8)"]
    images["benign (11)"] = images["benign (10)"]
    for stem, pixels in images.items():
        # Store the conflicting copy as RGB: the duplicate must be found from pixels, not from file bytes.
        array = np.repeat(pixels[..., None], 3, axis=2) if stem == "benign (12)" else pixels
        save_png(root / stem.split(" ")[0] / f"{stem}.png", array)
    return expected


def all_items(datalist: dict) -> list[dict]:
    return [item for name in SPLIT_NAMES for item in datalist[name]]


def write_dicom(path: Path, frames: np.ndarray, patient_id: str) -> None:
    """A small uncompressed 8-bit ultrasound DICOM; ``frames`` is (F, H, W)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UltrasoundMultiFrameImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID = meta.MediaStorageSOPClassUID
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dataset.PatientID = patient_id
    dataset.Modality = "US"
    dataset.Rows, dataset.Columns = frames.shape[1:]
    dataset.NumberOfFrames = frames.shape[0]
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = "MONOCHROME2"
    dataset.BitsAllocated = dataset.BitsStored = 8
    dataset.HighBit = 7
    dataset.PixelRepresentation = 0
    dataset.PixelData = np.ascontiguousarray(frames, dtype=np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    dataset.save_as(path, enforce_file_format=True)


def write_video(path: Path, num_frames: int, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for index in range(num_frames):
            pixels = np.full((32, 32, 3), (value + 17 * index) % 256, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


# ---------------------------------------------------------------- BUSI


@pytest.fixture
def busi(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    root = tmp_path / "Dataset_BUSI_with_GT"
    return root, make_busi(root, {"benign": 12, "malignant": 8, "normal": 5})


def test_busi_dedup_union_and_excluded_normal(busi, tmp_path, capsys):
    root, expected_masks = busi
    output = tmp_path / "out" / "busi.json"
    datalist = build_datalist(root, "busi", output, seed=0, exclude_classes=["normal"], test_fraction=0.2)

    assert datalist["class_names"] == ["benign", "malignant"]
    items = all_items(datalist)
    ids = [item["case_id"] for item in items]
    assert len(ids) == len(set(ids)) == 12 + 8 - 3  # the conflicting pair and one same-class copy are gone
    assert not {"benign (12)", "malignant (8)", "benign (11)"} & set(ids)
    assert all(item["class_name"] != "normal" for item in items)
    assert all(item["class"] == datalist["class_names"].index(item["class_name"]) for item in items)
    assert all(item["source"] == "busi" for item in items)

    records = {tuple(record["case_ids"]): record for record in datalist["metadata"]["dropped_duplicates"]}
    assert records[("benign (10)", "benign (11)")]["kept"] == "benign (10)"
    assert records[("benign (12)", "malignant (8)")]["kept"] is None
    assert records[("benign (12)", "malignant (8)")]["dropped"] == ["benign (12)", "malignant (8)"]
    assert datalist["metadata"]["excluded_classes"] == {"normal": 5}

    # num_labeled=None: every training item is labeled, so every kept item carries its mask.
    assert datalist["unlabeled"] == []
    by_id = {item["case_id"]: item for item in items}
    assert by_id["benign (3)"]["label"] == "merged_masks/benign (3)_mask.png"
    assert by_id["benign (4)"]["label"] == "../Dataset_BUSI_with_GT/benign/benign (4)_mask.png"
    merged = np.asarray(Image.open(output.parent / "merged_masks" / "benign (3)_mask.png"))
    np.testing.assert_array_equal(merged, expected_masks["benign (3)"])

    summary = json.loads((output.parent / "busi_summary.json").read_text())
    assert summary["counts"]["test"]["total"] == round(17 * 0.2)
    assert sum(summary["counts"][name]["total"] for name in SPLIT_NAMES) == 17
    assert "dropped 3 duplicate(s)" in capsys.readouterr().out
    leftovers = [path.name for path in output.parent.rglob("*") if path.name.endswith(".tmp")]
    assert leftovers == []
    assert json.loads(output.read_text()) == datalist


def test_busi_paths_resolve_through_load_datalist(busi, tmp_path):
    root, expected_masks = busi
    output = tmp_path / "lists" / "busi.json"
    datalist = build_datalist(root, "busi", output, seed=1, num_labeled=3, exclude_classes=["normal"])
    labeled = load_datalist(output, "labeled")
    assert len(labeled) == 3 == len(datalist["labeled"])
    for item in labeled + load_datalist(output, "unlabeled"):
        for key in PATH_KEYS:
            if key in item:
                assert os.path.isabs(item[key]) and os.path.isfile(item[key])
        assert Path(item["image"]) == root / item["class_name"] / f"{item['case_id']}.png"
    for item in load_datalist(output, "labeled") + load_datalist(output, "test"):
        np.testing.assert_array_equal(np.asarray(Image.open(item["label"])), expected_masks[item["case_id"]])
    assert all("label" not in item for item in load_datalist(output, "unlabeled"))


def test_busi_is_deterministic_and_seed_dependent(busi, tmp_path):
    root, _ = busi

    def splits(seed: int, name: str) -> dict[str, list[str]]:
        datalist = build_datalist(root, "busi", tmp_path / name / "d.json", seed=seed, num_labeled=0.5)
        return {split: [item["case_id"] for item in datalist[split]] for split in SPLIT_NAMES}

    assert splits(3, "a") == splits(3, "b")
    assert splits(3, "a") != splits(4, "c")


def test_busi_with_normal_keeps_three_classes_stratified(busi, tmp_path):
    root, _ = busi
    datalist = build_datalist(root, "busi", tmp_path / "d.json", seed=0, test_fraction=0.4, val_fraction=0.0)
    assert datalist["class_names"] == ["benign", "malignant", "normal"]
    sizes = {"benign": 12 - 2, "malignant": 8 - 1, "normal": 5}
    test = [item["class_name"] for item in datalist["test"]]
    for name, size in sizes.items():
        assert abs(test.count(name) - size * 0.4) <= 1


def test_too_many_labels_names_the_count(busi, tmp_path):
    root, _ = busi
    # 17 items: 3 test (0.2 * 17 = 3.4), 1 validation (0.1 * 14), 13 in the pool.
    with pytest.raises(DatalistError, match="asked for 14 labeled items but only 13 training items exist"):
        build_datalist(root, "busi", tmp_path / "d.json", num_labeled=14, exclude_classes=["normal"])


def test_missing_mask_is_named(busi, tmp_path):
    root, _ = busi
    (root / "malignant" / "malignant (2)_mask.png").unlink()
    with pytest.raises(DatalistError, match=r"malignant \(2\)\.png: has no '<name>_mask.png'"):
        build_datalist(root, "busi", tmp_path / "d.json")


@pytest.mark.parametrize(
    ("mask", "pattern"),
    [
        pytest.param(np.full((24, 32), 128, np.uint8), r"benign \(5\)_mask\.png", id="bad_values"),
        pytest.param(
            np.zeros((20, 32), np.uint8), r"benign \(5\)_mask\.png: .*\(20, 32\).*\(24, 32\)", id="size_mismatch"
        ),
    ],
)
def test_bad_masks_fail_at_build_time_naming_the_file(busi, tmp_path, mask, pattern):
    root, _ = busi
    save_png(root / "benign" / "benign (5)_mask.png", mask)
    output = tmp_path / "d.json"
    with pytest.raises(InputError, match=pattern):
        build_datalist(root, "busi", output, num_labeled=1)  # the mask is checked even if the case is unlabeled
    assert not output.exists()


def test_load_datalist_errors(busi, tmp_path):
    root, _ = busi
    output = tmp_path / "d.json"
    build_datalist(root, "busi", output)
    with pytest.raises(DatalistError, match=r"available splits: \['labeled', 'unlabeled', 'validation', 'test'\]"):
        load_datalist(output, "train")
    with pytest.raises(DatalistError, match=re.escape(f"{output}: split 'unlabeled' is empty")):
        load_datalist(output, "unlabeled")
    assert load_datalist(output, "unlabeled", allow_empty=True) == []
    with pytest.raises(DatalistError, match="no such datalist file"):
        load_datalist(tmp_path / "missing.json", "labeled")


# ---------------------------------------------------------------- generic


def generic_patient(k: int) -> str:
    """Images 0-11 (masked) come two per patient; mask-less images 12-15 belong to patients p2-p5."""
    return f"p{k // 2}" if k < 12 else f"p{k - 10}"


def generic_class(k: int) -> str:
    return "thyroid" if int(generic_patient(k)[1:]) % 2 else "breast"


def make_generic(root: Path, with_csv: bool = True) -> None:
    rng = np.random.default_rng(1)
    rows = []
    for k in range(16):
        name = f"case_{k:03d}.png"
        save_png(root / "images" / name, random_image(rng))
        save_png(root / "images_m2" / name, random_image(rng))
        if k < 12:  # four images have no mask
            labels = np.zeros((24, 32), np.uint8)
            labels[2:8, 2:8] = 1
            labels[10:16, 10:20] = 2
            save_png(root / "masks" / name, labels)
        rows.append({"image": name, "class": generic_class(k), "patient_id": generic_patient(k)})
    write_video(root / "videos" / "cine_000.mp4", 4, 10)
    rows.append({"image": "cine_000.mp4", "class": "breast", "patient_id": "p_video"})
    dataset = {"name": "toy", "mask_mode": "labels", "labels": {"0": "background", "1": "a", "2": "b"}}
    dataset["class_names"] = ["thyroid", "breast"]
    (root / "dataset.json").write_text(json.dumps(dataset))
    if with_csv:
        with open(root / "classes.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["image", "class", "patient_id"])
            writer.writeheader()
            writer.writerows(rows)


def test_generic_layout(tmp_path):
    root = tmp_path / "toy"
    make_generic(root)
    datalist = build_datalist(root, "generic", root / "datalist.json", seed=2, test_fraction=0.25, val_fraction=0.0)
    assert datalist["class_names"] == ["thyroid", "breast"]  # dataset.json order, not alphabetical
    assert datalist["metadata"]["settings"]["mask_mode"] == "labels"
    assert datalist["metadata"]["settings"]["num_classes"] == 3
    items = {item["case_id"]: item for item in all_items(datalist)}
    for k in range(12):
        item = items[f"case_{k:03d}"]
        assert (item["class_name"], item["class"]) == (generic_class(k), 0 if generic_class(k) == "thyroid" else 1)
        assert item["patient_id"] == generic_patient(k)
    assert items["case_000"]["image_m2"] == "images_m2/case_000.png"
    assert items["videos/cine_000"]["video"] == "videos/cine_000.mp4"
    assert items["videos/cine_000"]["num_frames"] == 4
    assert all(item["source"] == "toy" for item in items.values())
    # Images without a mask never reach labeled/validation/test; they are unlabeled unless their patient is held out.
    maskless = {f"case_{k:03d}" for k in range(12, 16)}
    for name in ("labeled", "validation", "test"):
        assert all(item["case_id"] not in maskless and "label" in item for item in datalist[name])
    unlabeled = {item["case_id"] for item in datalist["unlabeled"]}
    held_out = {item["patient_id"] for item in datalist["test"]}
    skipped = {Path(record["path"]).stem for record in datalist["metadata"]["skipped"]}
    assert 0 < len(maskless & skipped) < len(maskless)  # seed 2 exercises both outcomes
    for case_id in maskless:
        patient = generic_patient(int(case_id[-3:]))
        assert (case_id in skipped) if patient in held_out else (case_id in unlabeled)
    # 12 masked images * 0.25 = 3 asked for; patients come in pairs, so the test split has 2 or 4.
    assert len(datalist["test"]) in (2, 4)
    assert "videos/cine_000" in unlabeled


def test_generic_without_classes_csv_has_one_class_and_shows_progress(tmp_path, capsys):
    root = tmp_path / "toy"
    make_generic(root, with_csv=False)
    datalist = build_datalist(root, "generic", tmp_path / "d.json", seed=0, mask_mode="labels", progress=True)
    assert datalist["class_names"] == ["unknown"]
    assert {item.get("class_name") for item in datalist["labeled"]} == {"unknown"}
    bars = capsys.readouterr().err
    assert "hash" in bars and "check masks" in bars


def test_generic_mask_values_above_num_classes_are_named(tmp_path):
    root = tmp_path / "toy"
    make_generic(root)
    labels = np.zeros((24, 32), np.uint8)
    labels[0, 0] = 7
    save_png(root / "masks" / "case_004.png", labels)
    with pytest.raises(InputError, match=r"case_004\.png"):
        build_datalist(root, "generic", tmp_path / "d.json")


# ---------------------------------------------------------------- DICOM


def make_dicom_folder(root: Path) -> None:
    rng = np.random.default_rng(2)
    for index in range(12):
        class_name = "pos" if index % 3 == 0 else "neg"
        frames = rng.integers(0, 256, size=(3 if index == 0 else 1, 16, 20), dtype=np.uint8)
        name = f"scan_{index:02d}.dcm" if index != 5 else "IM00005"  # a suffix-free file found by its preamble
        write_dicom(root / class_name / name, frames, patient_id=f"P{index // 2}")


def test_dicom_layout_groups_by_patient_id(tmp_path):
    root = tmp_path / "dicoms"
    make_dicom_folder(root)
    datalist = build_datalist(
        root, "dicom", tmp_path / "d.json", seed=0, test_fraction=0.3, val_fraction=0.0, require_masks=False
    )
    items = {item["case_id"]: item for item in all_items(datalist)}
    assert len(items) == 12
    assert items["pos/scan_00"]["video"] == "dicoms/pos/scan_00.dcm" and items["pos/scan_00"]["num_frames"] == 3
    assert items["neg/IM00005"]["image"] == "dicoms/neg/IM00005" and items["neg/IM00005"]["num_frames"] == 1
    assert datalist["class_names"] == ["neg", "pos"]
    split_of_patient: dict[str, set[str]] = {}
    for name in SPLIT_NAMES:
        for item in datalist[name]:
            split_of_patient.setdefault(item["patient_id"], set()).add(name)
    assert len(split_of_patient) == 6 and all(len(names) == 1 for names in split_of_patient.values())


def test_dicom_masks_from_masks_folder(tmp_path):
    root = tmp_path / "dicoms"
    make_dicom_folder(root)
    for index in (1, 2, 3, 4, 7, 8, 9, 10, 11):
        save_png(root / "masks" / f"scan_{index:02d}.png", box_mask((16, 20), 2, 3, 5))
    datalist = build_datalist(root, "dicom", tmp_path / "d.json", seed=0, test_fraction=0.25, val_fraction=0.0)
    labeled_ids = {item["case_id"] for name in ("labeled", "test") for item in datalist[name]}
    assert {"pos/scan_00", "neg/IM00005", "pos/scan_06"}.isdisjoint(labeled_ids)  # no mask: unlabeled or skipped
    for name in ("labeled", "test"):
        for item in datalist[name]:
            assert item["label"] == f"dicoms/masks/{item['case_id'].split('/')[1]}.png"


# ---------------------------------------------------------------- video


POCUS_CLASSES = {"covid": "^Cov", "pneumonia": "^[Pp]neu", "regular": "^Reg"}


def make_video_folder(root: Path) -> None:
    names = [f"Cov_{k}.mp4" for k in range(4)] + [f"Pneu_{k}.mp4" for k in range(2)] + ["pneu_x.mp4"]
    names += [f"Reg_{k}.mp4" for k in range(5)] + ["Vir_0.mp4"]
    for index, name in enumerate(names):
        write_video(root / ("linear" if index % 4 == 0 else "convex") / name, 2 + index % 3, 20 * index)
    write_dicom(root / "convex" / "Reg_cine.dcm", np.zeros((4, 8, 8), np.uint8), patient_id="R1")
    write_dicom(root / "convex" / "Reg_still.dcm", np.ones((1, 8, 8), np.uint8), patient_id="R2")
    with open(root / "classes.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "class", "patient_id"])
        writer.writerows([["Reg_0.mp4", "regular", "shared"], ["Reg_1.mp4", "regular", "shared"]])


def test_video_layout_with_regex_classes(tmp_path, capsys):
    root = tmp_path / "pocus_videos"
    make_video_folder(root)
    datalist = build_datalist(
        root, "video", tmp_path / "v.json", seed=0, class_from=POCUS_CLASSES, test_fraction=0.25, val_fraction=0.0
    )
    assert datalist["class_names"] == ["covid", "pneumonia", "regular"]
    items = {item["case_id"]: item for item in all_items(datalist)}
    assert len(items) == 4 + 3 + 5 + 1  # Vir_0 matches no pattern; the single-frame DICOM is no video
    assert items["convex/pneu_x"]["class_name"] == "pneumonia"
    assert items["convex/Reg_cine"]["video"] == "pocus_videos/convex/Reg_cine.dcm"
    assert items["convex/Reg_cine"]["num_frames"] == 4 and items["convex/Reg_cine"]["patient_id"] == "R1"
    assert items["linear/Cov_0"]["num_frames"] == 2 and "label" not in items["linear/Cov_0"]
    skipped = {Path(record["path"]).name for record in datalist["metadata"]["skipped"]}
    assert skipped == {"Vir_0.mp4", "Reg_still.dcm"}
    holders = {name for name in SPLIT_NAMES for item in datalist[name] if item.get("patient_id") == "shared"}
    assert len(holders) == 1
    test_classes = [item["class_name"] for item in datalist["test"]]
    for name, size in {"covid": 4, "pneumonia": 3, "regular": 6}.items():
        assert abs(test_classes.count(name) - size * 0.25) <= 1 + (name == "regular")  # "shared" is a 2-video group
    assert "covid" in capsys.readouterr().out


def test_ambiguous_class_patterns_raise(tmp_path):
    root = tmp_path / "pocus_videos"
    make_video_folder(root)
    with pytest.raises(DatalistError, match="several class_from patterns"):
        build_datalist(root, "video", tmp_path / "v.json", class_from={"a": "^Cov", "b": "_0"})


# ---------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    ("kwargs", "exception", "pattern"),
    [
        pytest.param({"layout": "nifti"}, ValueError, "layout must be one of", id="layout"),
        pytest.param({"mask_mode": "soft"}, ValueError, "mask_mode", id="mask_mode"),
        pytest.param({"test_fraction": 1.5}, DatalistError, "test_fraction", id="fraction"),
        pytest.param({"include_classes": "benign"}, TypeError, "include_classes", id="include_str"),
        pytest.param({"include_classes": ["cyst"]}, DatalistError, r"no files: \['cyst'\]", id="include_missing"),
        pytest.param({"class_from": {"a": "("}}, ValueError, "not a valid regex", id="regex"),
    ],
)
def test_bad_arguments(busi, tmp_path, kwargs, exception, pattern):
    root, _ = busi
    arguments = {"layout": "busi"} | kwargs
    layout = arguments.pop("layout")
    with pytest.raises(exception, match=pattern):
        build_datalist(root, layout, tmp_path / "d.json", **arguments)
