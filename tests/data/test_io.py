# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""Atomic writers: complete files or none, normal permissions, clear errors for unwritable folders."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest

from usseg.data.io import atomic_save_image, atomic_write, atomic_write_json, ensure_writable_dir


def test_json_round_trip_with_numpy_values_and_normal_permissions(tmp_path):
    path = atomic_write_json(tmp_path / "sub" / "a.json", {"x": np.float32(1.5), "y": np.arange(3)})
    assert json.loads(path.read_text()) == {"x": 1.5, "y": [0, 1, 2]}
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask
    assert [p.name for p in path.parent.iterdir()] == ["a.json"]  # no temporary left behind


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic_write(path) as handle:
        handle.write("new, half")
        raise RuntimeError("crash in the middle")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_image_save_and_unknown_suffix(tmp_path):
    atomic_save_image(tmp_path / "m.png", np.zeros((4, 5), np.uint8))
    assert (tmp_path / "m.png").stat().st_size > 0
    with pytest.raises(ValueError, match="unknown image suffix"):
        atomic_save_image(tmp_path / "m.xyz", np.zeros((4, 5), np.uint8))


def test_unwritable_folder_is_named(tmp_path, monkeypatch):
    # CI runs as root, which may write anywhere: simulate the permission check failing
    monkeypatch.setattr(os, "access", lambda *args, **kwargs: False)
    with pytest.raises(PermissionError, match=r"ro: the output folder is not writable"):
        ensure_writable_dir(tmp_path / "ro")
