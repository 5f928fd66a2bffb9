# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""``resolve_datalist`` (phantom generation, reuse and rebuild of the datalist) and ``inference_inputs``."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import usseg.data.datalist
import usseg.data.phantom
from usseg.data.datalist import load_datalist
from usseg.data.prepare import IMAGE_SUFFIXES, inference_inputs, resolve_datalist
from usseg.errors import DatalistError

PHANTOM = {"num_images": 12, "size": 64}
SPLITS = ("labeled", "unlabeled", "validation", "test")


def _items(datalist: str | Path) -> list[dict]:
    data = json.loads(Path(datalist).read_text())
    return [item for split in SPLITS for item in data[split]]


class _Calls:
    """Wraps a function and counts its calls, so a test can tell reuse from rebuild."""

    def __init__(self, function: Callable) -> None:
        self.function, self.count = function, 0

    def __call__(self, *args: object, **kwargs: object) -> object:
        self.count += 1
        return self.function(*args, **kwargs)


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> dict[str, _Calls]:
    counters = {
        "phantom": _Calls(usseg.data.phantom.write_phantom_dataset),
        "datalist": _Calls(usseg.data.datalist.build_datalist),
    }
    # prepare.py imports both lazily from their modules, so patching the module attributes is enough
    monkeypatch.setattr(usseg.data.phantom, "write_phantom_dataset", counters["phantom"])
    monkeypatch.setattr(usseg.data.datalist, "build_datalist", counters["datalist"])
    return counters


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An output folder after one default ``resolve_datalist`` run on the small phantom (built once per module)."""
    output = tmp_path_factory.mktemp("template")
    resolve_datalist(output, phantom=PHANTOM)
    return output


@pytest.fixture
def output(template: Path, tmp_path: Path) -> Path:
    """A copy of the template's phantom (with its marker) in a fresh output folder, without the datalist."""
    folder = tmp_path / "run"
    shutil.copytree(template / "phantom", folder / "phantom")
    return folder


def test_no_data_generates_the_phantom_and_a_datalist(tmp_path: Path, calls: dict[str, _Calls]) -> None:
    output = tmp_path / "run"
    path = resolve_datalist(output, phantom=PHANTOM)
    assert path == str(output / "datalist.json")
    assert calls["phantom"].count == 1 and calls["datalist"].count == 1
    phantom = output / "phantom"
    assert sorted(p.name for p in (phantom / "images").iterdir()) == [f"case_{i:04d}.png" for i in range(12)]
    with Image.open(phantom / "images" / "case_0000.png") as image:
        assert image.size == (64, 64)
    assert len(_items(path)) == 12
    request = json.loads(Path(path).read_text())["metadata"]["request"]
    assert request == {
        "root": str(phantom),
        "layout": "generic",
        "seed": 0,
        "test_fraction": 0.2,
        "val_fraction": 0.1,
        "num_labeled": None,
        "exclude_classes": None,
        "phantom": PHANTOM,
    }
    for item in load_datalist(path, "labeled"):
        assert os.path.isfile(item["image"]) and os.path.isfile(item["label"])


def test_second_call_with_same_settings_reuses_phantom_and_datalist(output: Path, calls: dict[str, _Calls]) -> None:
    first = resolve_datalist(output, phantom=PHANTOM)
    assert calls["phantom"].count == 0  # the copied phantom carries its settings marker
    assert calls["datalist"].count == 1
    datalist_mtime = Path(first).stat().st_mtime_ns
    image_mtime = (output / "phantom" / "images" / "case_0000.png").stat().st_mtime_ns
    second = resolve_datalist(output, phantom=dict(PHANTOM))
    assert second == first
    assert calls["phantom"].count == 0 and calls["datalist"].count == 1
    assert Path(second).stat().st_mtime_ns == datalist_mtime
    assert (output / "phantom" / "images" / "case_0000.png").stat().st_mtime_ns == image_mtime


@pytest.mark.parametrize(
    ("changes", "check"),
    [
        pytest.param({"seed": 1}, lambda data: data["metadata"]["request"]["seed"] == 1, id="seed"),
        pytest.param({"num_labeled": 4}, lambda data: len(data["labeled"]) == 4, id="num-labeled"),
        pytest.param(
            {"test_fraction": 0.5}, lambda data: data["metadata"]["request"]["test_fraction"] == 0.5, id="test-fraction"
        ),
        pytest.param(
            {"exclude_classes": ("malignant",)},
            lambda data: {item["class_name"] for split in SPLITS for item in data[split]} == {"benign"},
            id="exclude-classes",
        ),
    ],
)
def test_changed_split_settings_rebuild_only_the_datalist(
    output: Path, calls: dict[str, _Calls], changes: dict, check: Callable[[dict], bool]
) -> None:
    path = resolve_datalist(output, phantom=PHANTOM)
    assert calls["datalist"].count == 1
    resolve_datalist(output, phantom=PHANTOM, **changes)
    assert calls["datalist"].count == 2
    assert calls["phantom"].count == 0
    assert check(json.loads(Path(path).read_text()))
    resolve_datalist(output, phantom=PHANTOM, **changes)  # and the rebuilt one is reused in turn
    assert calls["datalist"].count == 2


def test_changed_phantom_settings_regenerate_the_phantom(output: Path, calls: dict[str, _Calls]) -> None:
    resolve_datalist(output, phantom={**PHANTOM, "seed": 3})
    assert calls["phantom"].count == 1
    marker = json.loads((output / "phantom" / ".usseg_phantom.json").read_text())
    assert marker == {**PHANTOM, "seed": 3}


def test_changed_phantom_size_rebuilds_the_datalist(output: Path) -> None:
    path = resolve_datalist(output, phantom=PHANTOM)
    resolve_datalist(output, phantom={**PHANTOM, "num_images": 8})
    items = _items(path)
    assert len(items) == 8
    assert all((Path(path).parent / item["image"]).is_file() for item in items)


def test_moved_output_folder_rebuilds_the_datalist_for_the_new_root(output: Path, calls: dict[str, _Calls]) -> None:
    path = resolve_datalist(output, phantom=PHANTOM)
    assert json.loads(Path(path).read_text())["metadata"]["request"]["root"] == str(output / "phantom")
    assert calls["datalist"].count == 1  # the copy's root differs from the template's


def test_dataset_folder_is_used_without_generating_the_phantom(
    template: Path, tmp_path: Path, calls: dict[str, _Calls]
) -> None:
    dataset = tmp_path / "my_data"
    shutil.copytree(template / "phantom", dataset)
    output = tmp_path / "run"
    path = resolve_datalist(output, dataset_dir=dataset, num_labeled=3, seed=2)
    assert calls["phantom"].count == 0
    assert not (output / "phantom").exists()
    data = json.loads(Path(path).read_text())
    assert len(data["labeled"]) == 3
    assert data["metadata"]["request"]["root"] == str(dataset.resolve())
    assert data["metadata"]["request"]["seed"] == 2


def test_explicit_datalist_is_returned_as_is(tmp_path: Path, calls: dict[str, _Calls]) -> None:
    datalist = tmp_path / "mine.json"
    datalist.write_text('{"labeled": []}')
    output = tmp_path / "run"
    assert resolve_datalist(output, datalist=datalist, dataset_dir=tmp_path / "ignored") == str(datalist.resolve())
    assert datalist.read_text() == '{"labeled": []}'
    assert not output.exists()
    assert calls["phantom"].count == 0 and calls["datalist"].count == 0


@pytest.mark.parametrize(
    ("argument", "message"),
    [
        pytest.param("datalist", "datalist not found", id="datalist"),
        pytest.param("dataset_dir", "dataset folder not found", id="dataset-dir"),
    ],
)
def test_missing_paths_raise_file_not_found_naming_them(tmp_path: Path, argument: str, message: str) -> None:
    missing = tmp_path / "missing" / "thing"
    with pytest.raises(FileNotFoundError) as info:
        resolve_datalist(tmp_path / "run", **{argument: missing})
    assert str(info.value) == f"{missing}: {message}."


def _write_png(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((4, 4), dtype=np.uint8)).save(path)
    return path


def test_inference_inputs_from_a_folder_are_recursive_filtered_and_sorted(tmp_path: Path) -> None:
    folder = tmp_path / "inputs"
    images = [
        _write_png(folder / "b.png"),
        _write_png(folder / "a.PNG"),
        _write_png(folder / "sub" / "deeper" / "c.jpg"),
        _write_png(folder / "sub" / "d.TIFF"),
        _write_png(folder / "e.bmp"),
    ]
    (folder / "notes.txt").write_text("not an image")
    (folder / "volume.nii.gz").write_bytes(b"\x00")
    (folder / "folder.png").mkdir()  # a folder with an image suffix is not a file
    items = inference_inputs(input_dir=folder)
    assert items == [{"image": str(p.resolve())} for p in sorted(images)]
    assert {Path(item["image"]).suffix.lower() for item in items} <= set(IMAGE_SUFFIXES)


def test_input_folder_wins_over_a_datalist(tmp_path: Path) -> None:
    image = _write_png(tmp_path / "inputs" / "x.png")
    assert inference_inputs(input_dir=tmp_path / "inputs", datalist=tmp_path / "missing.json") == [
        {"image": str(image.resolve())}
    ]


def test_inference_inputs_from_a_datalist_split(tmp_path: Path) -> None:
    datalist = tmp_path / "lists" / "datalist.json"
    datalist.parent.mkdir()
    datalist.write_text(
        json.dumps(
            {
                "labeled": [{"image": "../imgs/l.png", "label": "../masks/l.png"}],
                "validation": [],
                "test": [
                    {"image": "../imgs/t1.png", "label": "../masks/t1.png", "class": 0},
                    {"image": "/abs/t2.png"},
                ],
            }
        )
    )
    assert inference_inputs(datalist=datalist) == [
        {"image": str(tmp_path / "imgs" / "t1.png")},
        {"image": "/abs/t2.png"},
    ]
    assert inference_inputs(datalist=datalist, split="labeled") == [{"image": str(tmp_path / "imgs" / "l.png")}]
    with pytest.raises(DatalistError, match="empty"):
        inference_inputs(datalist=datalist, split="validation")
    with pytest.raises(DatalistError, match="no split 'unlabeled'"):
        inference_inputs(datalist=datalist, split="unlabeled")


def test_inference_inputs_errors(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        inference_inputs(input_dir=missing)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("nothing to infer on")
    with pytest.raises(DatalistError) as info:
        inference_inputs(input_dir=empty)
    assert info.value.path == str(empty.resolve())
    assert "no image files" in str(info.value)
    with pytest.raises(DatalistError, match="input_dir or a datalist"):
        inference_inputs()
    with pytest.raises(DatalistError, match="no such datalist file"):
        inference_inputs(datalist=tmp_path / "nowhere.json")
