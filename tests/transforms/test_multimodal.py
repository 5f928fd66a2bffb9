# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""Loading co-registered pairs: PNG pairs, one multi-channel NIfTI, separate NIfTI/DICOM files, and bad pairs."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.transforms import Compose, RandAffined
from PIL import Image
from pydicom.dataset import Dataset as DicomDataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, UltrasoundImageStorage, generate_uid

from usseg.errors import DatalistError, InputError
from usseg.transforms.multimodal import LoadMultiModald, load_multimodal_datalist, modality_inputs, read_modality_file


def _ramp(height: int, width: int, offset: int = 0) -> np.ndarray:
    """An asymmetric uint8 image, so a transpose or flip would show."""
    return ((np.arange(height)[:, None] * 7 + np.arange(width)[None, :] * 3 + offset) % 256).astype(np.uint8)


def _png(path: Path, array: np.ndarray) -> str:
    Image.fromarray(array).save(path)
    return str(path)


def _nifti(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> str:
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), str(path))
    return str(path)


def _dicom(path: Path, array: np.ndarray, spacing_mm: tuple[float, float]) -> str:
    ds = DicomDataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = UltrasoundImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID, ds.SOPInstanceUID = UltrasoundImageStorage, ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID = "US", "P1"
    ds.Rows, ds.Columns = array.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelSpacing = [spacing_mm[0], spacing_mm[1]]
    ds.PixelData = array.astype(np.uint8).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return str(path)


def test_png_pair_from_a_usseg_datalist_item(tmp_path):
    m1, m2 = _ramp(20, 30), _ramp(20, 30, offset=50)
    mask = np.zeros((20, 30), np.uint8)
    mask[5:10, 8:20] = 255
    item = {
        "image": _png(tmp_path / "b.png", m1),
        "image_m2": _png(tmp_path / "e.png", m2),
        "label": _png(tmp_path / "m.png", mask),
        "case_id": "c1",
    }
    out = LoadMultiModald()(item)
    assert out["image_m1"].shape == (1, 20, 30) and out["image_m1"].dtype == torch.float32
    np.testing.assert_array_equal(out["image_m1"][0].numpy(), m1)
    np.testing.assert_array_equal(out["image_m2"][0].numpy(), m2)
    np.testing.assert_array_equal(out["label"][0].numpy(), mask // 255)
    assert out["image_m2"].meta["filename_or_obj"] == item["image_m2"]
    assert out["case_id"] == "c1"


def test_explicit_image_m1_key_takes_precedence_and_unlabeled_items_have_no_mask(tmp_path):
    item = {
        "image_m1": _png(tmp_path / "a.png", _ramp(8, 8)),
        "image": "unused.png",
        "image_m2": _png(tmp_path / "b.png", _ramp(8, 8, 9)),
    }
    out = LoadMultiModald()(item)
    np.testing.assert_array_equal(out["image_m1"][0].numpy(), _ramp(8, 8))
    assert "label" not in out


@pytest.mark.parametrize("shape", [(12, 16, 2), (12, 16, 1, 2)], ids=["hw_c", "hw_1_c"])
def test_one_multichannel_nifti_is_split_into_the_two_modalities(tmp_path, shape):
    t2, t1ce = _ramp(12, 16).astype(np.float32), _ramp(12, 16, 77).astype(np.float32) * 3
    array = np.stack([t2, t1ce], axis=-1).reshape(shape)
    spacing = np.diag([0.9, 0.8, 1.0, 1.0])
    item = {"image": _nifti(tmp_path / "slice.nii.gz", array, spacing)}
    item["label"] = _nifti(tmp_path / "seg.nii.gz", (t2 > 100).astype(np.uint8) * 4, spacing)  # BraTS label 4
    out = LoadMultiModald()(item)
    np.testing.assert_array_equal(out["image_m1"][0].numpy(), t2)
    np.testing.assert_array_equal(out["image_m2"][0].numpy(), t1ce)
    np.testing.assert_array_equal(out["label"][0].numpy(), (t2 > 100).astype(np.float32))  # binary: whole tumour
    assert out["image_m1"].pixdim[:2].tolist() == pytest.approx([0.9, 0.8])
    swapped = LoadMultiModald(channels=(1, 0))(item)
    np.testing.assert_array_equal(swapped["image_m1"][0].numpy(), t1ce)


def test_separate_dicom_files_with_the_same_calibration(tmp_path):
    item = {
        "image": _dicom(tmp_path / "b.dcm", _ramp(10, 14), (0.2, 0.2)),
        "image_m2": _dicom(tmp_path / "d.dcm", _ramp(10, 14, 3), (0.2, 0.2)),
    }
    out = LoadMultiModald()(item)
    assert out["image_m2"].pixdim[:2].tolist() == pytest.approx([0.2, 0.2])
    np.testing.assert_array_equal(out["image_m2"][0].numpy(), _ramp(10, 14, 3))


def _mismatch_shape(tmp_path: Path) -> dict:
    return {
        "image": _png(tmp_path / "bmode.png", _ramp(20, 30)),
        "image_m2": _png(tmp_path / "strain.png", _ramp(20, 32)),
    }


def _mismatch_spacing(tmp_path: Path) -> dict:
    return {
        "image": _dicom(tmp_path / "bmode.dcm", _ramp(10, 14), (0.2, 0.2)),
        "image_m2": _dicom(tmp_path / "strain.dcm", _ramp(10, 14), (0.3, 0.3)),
    }


def _mismatch_orientation(tmp_path: Path) -> dict:
    flipped = np.diag([-1.0, 1.0, 1.0, 1.0])
    return {
        "image": _nifti(tmp_path / "bmode.nii.gz", _ramp(10, 14).astype(np.float32)),
        "image_m2": _nifti(tmp_path / "strain.nii.gz", _ramp(10, 14).astype(np.float32), flipped),
    }


@pytest.mark.parametrize(
    "make, problem",
    [
        (_mismatch_shape, "spatial shape differs"),
        (_mismatch_spacing, "pixel spacing differs"),
        (_mismatch_orientation, "orientation"),
    ],
    ids=["shape", "spacing", "orientation"],
)
def test_a_pair_with_another_geometry_is_rejected_naming_both_files(tmp_path, make, problem):
    item = make(tmp_path)
    with pytest.raises(InputError, match=problem) as raised:
        LoadMultiModald()(item)
    message = str(raised.value)
    assert item["image"] in message and item["image_m2"] in message


def test_a_mask_of_another_size_is_rejected_naming_mask_and_image(tmp_path):
    item = {
        "image": _png(tmp_path / "b.png", _ramp(20, 30)),
        "image_m2": _png(tmp_path / "e.png", _ramp(20, 30)),
        "label": _png(tmp_path / "m.png", np.zeros((21, 30), np.uint8)),
    }
    with pytest.raises(InputError, match=r"\(21, 30\).*\(20, 30\)") as raised:
        LoadMultiModald()(item)
    assert item["label"] in str(raised.value) and item["image"] in str(raised.value)


def test_a_single_channel_file_without_a_second_modality_is_refused(tmp_path):
    item = {"image": _png(tmp_path / "only.png", _ramp(8, 8))}
    with pytest.raises(InputError, match="image_m2"):
        LoadMultiModald()(item)
    with pytest.raises(DatalistError, match="image_m1"):
        LoadMultiModald()({"case_id": "x", "image_m2": item["image"]})


def test_one_random_affine_moves_both_modalities_and_the_label_together(tmp_path):
    base = np.zeros((32, 32), np.uint8)
    base[8:20, 10:24] = 200
    item = {
        "image": _png(tmp_path / "a.png", base),
        "image_m2": _png(tmp_path / "b.png", base),
        "label": _png(tmp_path / "m.png", (base > 0).astype(np.uint8) * 255),
    }
    keys = ["image_m1", "image_m2", "label"]
    pipeline = Compose(
        [LoadMultiModald(), RandAffined(keys=keys, prob=1.0, rotate_range=0.5, translate_range=(5, 5), mode="nearest")]
    ).set_random_state(3)
    out = pipeline(item)
    assert not torch.equal(out["image_m1"][0].as_tensor(), torch.as_tensor(base, dtype=torch.float32))
    torch.testing.assert_close(out["image_m1"].as_tensor(), out["image_m2"].as_tensor())
    torch.testing.assert_close((out["image_m1"] > 0).float().as_tensor(), out["label"].as_tensor())


def test_read_modality_file_names_a_missing_file(tmp_path):
    with pytest.raises(InputError, match="does not exist") as raised:
        read_modality_file(tmp_path / "gone.png")
    assert "gone.png" in str(raised.value)


@pytest.mark.parametrize(
    "kwargs, match",
    [({"keys": ("a", "a")}, "distinct"), ({"channels": (0, 0)}, "channels"), ({"mask_mode": "soft"}, "mask_mode")],
    ids=["same_keys", "same_channels", "mask_mode"],
)
def test_bad_settings_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LoadMultiModald(**kwargs)


def test_a_hand_written_datalist_with_image_m1_keys_resolves_relative_paths(tmp_path):
    (tmp_path / "pairs").mkdir()
    _png(tmp_path / "pairs" / "t2.png", _ramp(8, 8))
    _png(tmp_path / "pairs" / "t1ce.png", _ramp(8, 8, 5))
    item = {"image_m1": "pairs/t2.png", "image_m2": "pairs/t1ce.png", "case_id": "s1"}
    (tmp_path / "datalist.json").write_text(json.dumps({"labeled": [item], "test": [item]}))
    [loaded] = load_multimodal_datalist(tmp_path / "datalist.json", "labeled")
    assert loaded["image_m1"] == str(tmp_path / "pairs" / "t2.png")
    assert loaded["image_m2"] == str(tmp_path / "pairs" / "t1ce.png")
    assert LoadMultiModald()(loaded)["image_m2"].shape == (1, 8, 8)
    assert modality_inputs(datalist=tmp_path / "datalist.json", split="test", modality=2) == [
        {"image": str(tmp_path / "pairs" / "t1ce.png")}
    ]
    with pytest.raises(ValueError, match="modality"):
        modality_inputs(datalist=tmp_path / "datalist.json", modality=3)
