# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""Where the shipped MONAI bundles live, so configs and the CLI work from any working directory.

MONAI does not tell a config where its own file is, so a bundle's ``bundle_root`` is found here: the current
directory when a run starts inside the bundle (the zoo's habit), else the bundles folder, which is ``$USSEG_BUNDLES``
when that folder exists and otherwise the ``bundles/`` folder of this source checkout (an editable install).
``--bundle_root`` on the command line overrides all of them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["bundles_dir", "list_bundles", "bundle_root", "bundle_configs", "resolve_bundle"]


def bundles_dir() -> Path:
    """The folder that holds the shipped bundles.

    Raises:
        FileNotFoundError: when neither ``$USSEG_BUNDLES`` nor the source checkout's ``bundles/`` exists.
    """
    candidates = [Path(os.environ["USSEG_BUNDLES"])] if os.environ.get("USSEG_BUNDLES") else []
    candidates.append(Path(__file__).resolve().parent.parent / "bundles")
    for folder in candidates:
        if folder.is_dir():
            return folder
    raise FileNotFoundError(
        f"no bundles folder found (looked in {', '.join(map(str, candidates))}); install usseg from a source "
        "checkout with `pip install -e .`, or set USSEG_BUNDLES to the folder holding the bundles."
    )


def _is_bundle(folder: Path) -> bool:
    return (folder / "configs" / "metadata.json").is_file()


def list_bundles() -> dict[str, dict]:
    """Map each shipped bundle's name to its metadata (version, task, description) and config files."""
    found = {}
    for folder in sorted(p for p in bundles_dir().iterdir() if _is_bundle(p)):
        meta = json.loads((folder / "configs" / "metadata.json").read_text())
        found[folder.name] = {
            "path": str(folder),
            "version": meta.get("version"),
            "task": meta.get("task"),
            "description": meta.get("description"),
            "configs": bundle_configs(folder.name),
        }
    return found


def bundle_root(name: str) -> str:
    """The root folder of bundle ``name``: the current directory when it is that bundle, else the shipped copy."""
    cwd = Path.cwd()
    if cwd.name == name and _is_bundle(cwd):
        return str(cwd)
    shipped = bundles_dir() / name
    if not _is_bundle(shipped):
        known = ", ".join(sorted(p.name for p in bundles_dir().iterdir() if _is_bundle(p)))
        raise FileNotFoundError(f"no bundle named {name!r} in {bundles_dir()} (known: {known}).")
    return str(shipped)


def bundle_configs(name: str) -> list[str]:
    """The config file names of bundle ``name`` (``train.yaml``, ``evaluate.yaml``...)."""
    folder = Path(bundle_root(name)) / "configs"
    return sorted(p.name for p in folder.iterdir() if p.suffix in (".yaml", ".yml", ".json") and p.stem != "metadata")


def resolve_bundle(bundle: str | os.PathLike) -> Path:
    """A bundle given by name (``breast_us_supervised_segmentation``) or by folder, as its resolved folder.

    Raises:
        InputError: a folder that is not a bundle (no ``configs/metadata.json``).
        FileNotFoundError: an unknown bundle name.
    """
    from usseg.errors import InputError

    candidate = Path(bundle)
    if candidate.is_dir():
        if not _is_bundle(candidate):
            raise InputError(candidate, "is not a bundle folder (no configs/metadata.json).")
        return candidate.resolve()
    return Path(bundle_root(os.fspath(bundle)))
