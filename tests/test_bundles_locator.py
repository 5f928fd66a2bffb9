# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""Locating shipped bundles: the checkout's ``bundles/`` folder, the working directory, and ``$USSEG_BUNDLES``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import usseg.bundles
from usseg.bundles import bundle_configs, bundle_root, bundles_dir, list_bundles

SHIPPED = "breast_us_supervised_segmentation"
CHECKOUT_BUNDLES = Path(usseg.bundles.__file__).resolve().parent.parent / "bundles"


@pytest.fixture(autouse=True)
def _no_bundles_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # a developer's own USSEG_BUNDLES must not change what these tests see
    monkeypatch.delenv("USSEG_BUNDLES", raising=False)


def _fake_bundle(parent: Path, name: str, configs: tuple[str, ...] = ("train.yaml",), **meta: object) -> Path:
    folder = parent / name / "configs"
    folder.mkdir(parents=True)
    (folder / "metadata.json").write_text(json.dumps({"version": "9.9.9", "task": "fake task", **meta}))
    for config in configs:
        (folder / config).write_text("run: []\n")
    return parent / name


def _expected_configs(bundle: Path) -> list[str]:
    return sorted(
        p.name
        for p in (bundle / "configs").iterdir()
        if p.suffix in (".yaml", ".yml", ".json") and p.name != "metadata.json"
    )


def test_shipped_bundle_is_listed_with_its_metadata_and_configs() -> None:
    bundles = list_bundles()
    assert SHIPPED in bundles
    info = bundles[SHIPPED]
    folder = CHECKOUT_BUNDLES / SHIPPED
    meta = json.loads((folder / "configs" / "metadata.json").read_text())
    assert Path(info["path"]) == folder
    assert info["version"] == meta["version"]
    assert info["task"] == meta["task"]
    assert info["description"] == meta["description"]
    assert info["configs"] == _expected_configs(folder)
    assert {"train.yaml", "evaluate.yaml", "inference.yaml"} <= set(info["configs"])
    assert "metadata.json" not in info["configs"] and "logging.conf" not in info["configs"]


def test_bundles_dir_is_the_checkout_folder() -> None:
    assert bundles_dir() == CHECKOUT_BUNDLES


def test_bundle_root_outside_any_bundle_is_the_shipped_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert Path(bundle_root(SHIPPED)) == CHECKOUT_BUNDLES / SHIPPED


def test_bundle_root_is_the_working_directory_when_it_is_that_bundle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy = _fake_bundle(tmp_path, SHIPPED, configs=("train.yaml", "custom.yaml"))
    monkeypatch.chdir(copy)
    assert Path(bundle_root(SHIPPED)) == copy.resolve()  # the working directory is reported resolved
    assert bundle_configs(SHIPPED) == ["custom.yaml", "train.yaml"]


@pytest.mark.parametrize(
    "make_cwd",
    [
        pytest.param(lambda tmp: _fake_bundle(tmp, "another_bundle"), id="a-different-bundle"),
        pytest.param(lambda tmp: (tmp / SHIPPED).mkdir() or tmp / SHIPPED, id="same-name-without-metadata"),
    ],
)
def test_bundle_root_ignores_a_working_directory_that_is_not_the_bundle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_cwd: object
) -> None:
    monkeypatch.chdir(make_cwd(tmp_path))
    assert Path(bundle_root(SHIPPED)) == CHECKOUT_BUNDLES / SHIPPED


def test_unknown_bundle_raises_file_not_found_listing_known_ones() -> None:
    with pytest.raises(FileNotFoundError) as info:
        bundle_root("no_such_bundle")
    message = str(info.value)
    assert "'no_such_bundle'" in message
    assert SHIPPED in message
    assert str(CHECKOUT_BUNDLES) in message


def test_environment_variable_points_at_another_bundles_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _fake_bundle(tmp_path, "fake_bundle", configs=("train.yaml", "evaluate.json", "notes.txt"))
    (tmp_path / "not_a_bundle").mkdir()  # no configs/metadata.json: not listed
    (tmp_path / "README.md").write_text("a file next to the bundles")
    monkeypatch.setenv("USSEG_BUNDLES", str(tmp_path))
    assert bundles_dir() == tmp_path
    bundles = list_bundles()
    assert list(bundles) == ["fake_bundle"]
    assert bundles["fake_bundle"] == {
        "path": str(fake),
        "version": "9.9.9",
        "task": "fake task",
        "description": None,
        "configs": ["evaluate.json", "train.yaml"],
    }
    assert Path(bundle_root("fake_bundle")) == fake
    with pytest.raises(FileNotFoundError, match="known: fake_bundle"):
        bundle_root(SHIPPED)


def test_environment_variable_to_a_missing_folder_falls_back_to_the_checkout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("USSEG_BUNDLES", str(tmp_path / "missing"))
    assert bundles_dir() == CHECKOUT_BUNDLES


def test_no_bundles_folder_anywhere_raises_file_not_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # pretend usseg is installed from a wheel: no bundles/ next to the package
    monkeypatch.setattr(usseg.bundles, "__file__", str(tmp_path / "site-packages" / "usseg" / "bundles.py"))
    monkeypatch.setenv("USSEG_BUNDLES", str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError) as info:
        bundles_dir()
    message = str(info.value)
    assert str(tmp_path / "missing") in message
    assert str(tmp_path / "site-packages" / "bundles") in message
    assert "USSEG_BUNDLES" in message
