# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""Atomic file writing: a reader never sees a half-written file.

Every writer in usseg goes through :func:`atomic_write`: the data goes to a temporary file in the destination
folder, is flushed and fsynced, then renamed over the target, and the folder is fsynced (``os.replace`` is atomic
on POSIX and Windows when both paths are on one file system). A crash leaves either the old file or the new one,
never a truncated one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_write", "atomic_write_json", "atomic_save_image", "ensure_writable_dir", "file_digest"]


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open a temporary sibling of ``path`` for writing; rename it to ``path`` on success.

    Args:
        path: final destination. Parent folders are created.
        mode: ``"w"`` (text) or ``"wb"`` (binary).
        encoding: text encoding; ignored for binary mode.

    Raises:
        PermissionError: the destination folder is not writable (the message names it).
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}.")
    path = Path(path)
    parent = ensure_writable_dir(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent)
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give what open() would have given
        os.replace(tmp, path)
        _fsync_dir(parent)  # the rename itself must reach the disk, or a power cut can undo it
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int = 2) -> Path:
    """Write ``obj`` as JSON atomically and return the path."""
    with atomic_write(path, "w") as handle:
        json.dump(obj, handle, indent=indent, sort_keys=False, default=_json_default)
        handle.write("\n")
    return Path(path)


def atomic_save_image(path: str | os.PathLike, image: Any, **save_kwargs: Any) -> Path:
    """Save a PIL image (or a uint8 numpy array) atomically; the format follows the suffix of ``path``."""
    from PIL import Image

    if not isinstance(image, Image.Image):
        image = Image.fromarray(image)
    fmt = Image.registered_extensions().get(Path(path).suffix.lower())
    if fmt is None:
        raise ValueError(f"{path}: unknown image suffix; use .png or .jpg.")
    with atomic_write(path, "wb") as handle:
        image.save(handle, format=fmt, **save_kwargs)
    return Path(path)


def ensure_writable_dir(folder: str | os.PathLike) -> Path:
    """Create ``folder`` if needed and check that files can be created in it.

    Raises:
        PermissionError: with the folder named, when it cannot be created or written.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise PermissionError(f"{folder}: cannot create the output folder ({err.strerror}).") from err
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"{folder}: the output folder is not writable.")
    return folder


def file_digest(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes, read in 1 MiB blocks (weights and videos can be large)."""
    digest = hashlib.new(algorithm, usedforsecurity=False)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some platforms (Windows) cannot open folders; the rename is then as durable as it gets
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _json_default(obj: Any) -> Any:
    """Serialise numpy / torch scalars and arrays, and paths, which ``json`` does not know."""
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serialisable")
