# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""Video pre-training datalists (train / validation / held-out meta, split by patient or video) and video folds."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from usseg.data.datalist import (
    assign_video_folds,
    build_video_pretraining_datalist,
    load_datalist,
    resolve_video_pretraining_datalist,
)
from usseg.errors import DatalistError, InputError


def _gif(path: Path, frames: int, value: int) -> None:
    images = [Image.fromarray(np.full((16, 16), (value + 9 * i) % 256, np.uint8)) for i in range(frames)]
    images[0].save(path, save_all=True, append_images=images[1:], duration=40, loop=0)


@pytest.fixture
def videos(tmp_path: Path) -> Path:
    """12 GIFs of two classes (patients p0..p3 own two videos each), 2 frame folders and a DICOM cine."""
    root = tmp_path / "videos"
    root.mkdir()
    rows = ["image,class,patient_id"]
    for index in range(12):
        name = f"{'cov' if index % 2 else 'reg'}_{index:02d}.gif"
        _gif(root / name, frames=3 + index % 4, value=20 * index)
        rows.append(f"{name},{'covid' if index % 2 else 'regular'},{f'p{index // 2}' if index < 8 else ''}")
    for index in range(2):
        folder = root / f"clip{index}"
        folder.mkdir()
        for frame in (1, 2, 10):  # natural order: frame2 before frame10
            Image.fromarray(np.full((16, 16), frame, np.uint8)).save(folder / f"frame{frame}.png")
        rows.append(f"clip{index},regular,")
    shutil.copy(get_testdata_file("examples_ybr_color.dcm"), root / "cine.dcm")
    rows.append("cine.dcm,covid,")
    (root / "classes.csv").write_text("\n".join(rows) + "\n")
    return root


def test_meta_and_validation_lists_share_no_video_or_patient_with_training(videos: Path, tmp_path: Path) -> None:
    datalist = build_video_pretraining_datalist([videos], tmp_path / "out" / "pre.json", seed=3, val_fraction=0.2,
                                                meta_fraction=0.2, label_rate=0.5)  # fmt: skip
    splits = {name: load_datalist(tmp_path / "out" / "pre.json", name) for name in ("train", "validation", "meta")}
    cases = {name: {item["case_id"] for item in items} for name, items in splits.items()}
    assert sum(map(len, cases.values())) == 15 and all(cases.values())
    assert not (cases["train"] & cases["meta"]) and not (cases["train"] & cases["validation"])
    assert not (cases["meta"] & cases["validation"])
    patients = {name: {item.get("patient_id") for item in items} - {None} for name, items in splits.items()}
    assert not (patients["train"] & patients["meta"]) and not (patients["train"] & patients["validation"])
    by_case = {item["case_id"]: item for items in splits.values() for item in items}
    assert by_case["clip0"]["num_frames"] == 3 and by_case["cine"]["num_frames"] == 30
    assert by_case["cov_01"]["class_name"] == "covid" and by_case["cov_01"]["patient_id"] == "p0"
    assert Path(by_case["cine"]["video"]).is_file()  # absolute after load_datalist
    # labels: half of the training videos, never a validation or meta video; -1 marks the others
    labeled = [item for item in splits["train"] if item["labeled"]]
    assert len(labeled) == round(0.5 * len(splits["train"]))
    assert all(item["class"] == datalist["class_names"].index(item["class_name"]) for item in labeled)
    assert all(item["class"] == -1 for name in ("validation", "meta") for item in splits[name])


def test_the_split_is_a_function_of_the_seed(videos: Path, tmp_path: Path) -> None:
    first = build_video_pretraining_datalist([videos], tmp_path / "a.json", seed=1)
    again = build_video_pretraining_datalist([videos], tmp_path / "b.json", seed=1)
    other = build_video_pretraining_datalist([videos], tmp_path / "c.json", seed=2)
    assert first["meta"] == again["meta"] and first["train"] == again["train"]
    assert {i["case_id"] for i in first["meta"] + first["validation"]} != {
        i["case_id"] for i in other["meta"] + other["validation"]
    }


def test_class_from_and_include_classes_filter_and_record(videos: Path, tmp_path: Path) -> None:
    datalist = build_video_pretraining_datalist(
        [videos], tmp_path / "d.json", class_from={"covid": "^cov", "regular": "^reg"}, include_classes=["covid"]
    )
    names = {item["class_name"] for split in ("train", "validation", "meta") for item in datalist[split]}
    assert names == {"covid"} and datalist["class_names"] == ["covid"]
    reasons = Counter(record["reason"] for record in datalist["metadata"]["skipped"])
    assert reasons["class 'regular' not included"] == 6


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"val_fraction": 1.0}, ValueError, "val_fraction must be in \\[0, 1\\), got 1.0"),
        ({"val_fraction": 0.6, "meta_fraction": 0.5}, ValueError, "must be < 1"),
        ({"label_rate": 1.5}, ValueError, "label_rate must be in \\[0, 1\\], got 1.5"),
    ],
    ids=["val_one", "fractions_sum", "label_rate"],
)
def test_bad_arguments_raise(videos: Path, tmp_path: Path, kwargs: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        build_video_pretraining_datalist([videos], tmp_path / "e.json", **kwargs)


def test_missing_sources_and_too_few_videos_are_named(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="absent"):
        build_video_pretraining_datalist([tmp_path / "absent"], tmp_path / "f.json")
    (tmp_path / "two").mkdir()
    for index in range(2):
        _gif(tmp_path / "two" / f"v{index}.gif", 3, index)
    with pytest.raises(DatalistError, match="2 videos/patients cannot fill"):
        build_video_pretraining_datalist([tmp_path / "two"], tmp_path / "g.json")


def test_resolve_reuses_a_datalist_built_for_the_same_request(videos: Path, tmp_path: Path) -> None:
    path = resolve_video_pretraining_datalist(tmp_path / "run", sources=[videos], seed=0)
    stamp = Path(path).stat().st_mtime_ns
    assert resolve_video_pretraining_datalist(tmp_path / "run", sources=[videos], seed=0) == path
    assert Path(path).stat().st_mtime_ns == stamp
    resolve_video_pretraining_datalist(tmp_path / "run", sources=[videos], seed=1)
    assert json.loads(Path(path).read_text())["metadata"]["request"]["seed"] == 1


def test_folds_are_stratified_by_class_and_grouped_by_patient() -> None:
    items = [
        {"case_id": f"v{i}", "class_name": "a" if i < 20 else "b", "patient_id": f"p{i // 2}" if i < 8 else ""}
        for i in range(30)
    ]
    folded = assign_video_folds(items, num_folds=5, seed=0)
    assert [item["case_id"] for item in folded] == [item["case_id"] for item in items]
    for patient in {item["patient_id"] for item in items if item["patient_id"]}:
        assert len({item["fold"] for item in folded if item["patient_id"] == patient}) == 1
    per_fold = Counter((item["fold"], item["class_name"]) for item in folded)
    assert {per_fold[(fold, "b")] for fold in range(5)} == {2}  # 10 videos of b: 2 per fold
    assert max(per_fold[(f, "a")] for f in range(5)) - min(per_fold[(f, "a")] for f in range(5)) <= 2
    with pytest.raises(ValueError, match="num_folds must be an integer >= 2, got 1"):
        assign_video_folds(items, num_folds=1)
