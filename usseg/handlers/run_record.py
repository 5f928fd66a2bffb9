# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""Record what a run was: its resolved config next to its checkpoints, with the overrides, versions and date.

:class:`RunRecordHandler` goes in a bundle's ``train#handlers``. When the trainer starts, rank 0 writes

- ``<save_dir>/resolved_config.json``: the config the run executes, i.e. the merged config files with every
  command-line override applied and ``%`` macros expanded, plus ``_meta_``. It runs again as it is:
  ``python -m monai.bundle run --config_file <save_dir>/resolved_config.json``;
- ``<save_dir>/run_record.json``: one entry per start of training (a resumed run adds one), each with the UTC date,
  the command line, how ``monai.bundle.run`` was called (config files, overrides, tracking), the plain values the
  run's top-level ids resolved to (``output_dir``, ``device``, ``datalist_file``... as far as the run used them),
  the epoch it started from, the world size, the versions of usseg, MONAI, torch, ignite, numpy and Python, the git
  commit of the usseg sources (and whether they had uncommitted changes), and the SHA-256 of the resolved config
  (as JSON with sorted keys).

How the handler gets the config: MONAI gives the objects a config builds no handle on the ``ConfigParser`` building
them, and its own record of the executed config (``save_execute_config``) is written only when a run is started
with ``--tracking``. The handler therefore takes, when it is constructed, the ``ConfigParser`` that is instantiating
it: the innermost ``ConfigParser`` method on the call stack (``get_parsed_content`` resolving ``train#trainer``).
That covers ``python -m monai.bundle run``, ``usseg run``, ``ConfigWorkflow`` and a bare ``ConfigParser``. The
arguments of ``monai.bundle.run`` (config files and overrides, which the parser does not keep separately) are read
from its frame when it is on the stack. Built outside a config, the handler takes the ``config`` argument instead.
"""

from __future__ import annotations

import datetime
import hashlib
import inspect
import json
import logging
import os
import platform
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from monai.bundle.utils import ID_SEP_KEY
from monai.utils import IgniteInfo, min_version, optional_import

from usseg.data.io import atomic_write_json, ensure_writable_dir

Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")
if TYPE_CHECKING:
    from ignite.engine import Engine
    from monai.bundle import ConfigParser
else:
    Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")

__all__ = ["CONFIG_NAME", "RECORD_NAME", "RECORD_FORMAT", "RunRecordHandler", "find_config_parser", "run_invocation"]

CONFIG_NAME = "resolved_config.json"
RECORD_NAME = "run_record.json"
RECORD_FORMAT = "usseg.run_record/1"
_GIT_TIMEOUT_S = 10
_JSON_SCALARS = (str, int, float, bool, type(None))
_RUN_ARGUMENTS = ("config_file", "meta_file", "logging_file", "run_id", "init_id", "final_id", "tracking", "args_file")

logger = logging.getLogger(__name__)


def find_config_parser(skip: int = 1) -> ConfigParser | None:
    """The ``ConfigParser`` whose method is running closest on the call stack, or None.

    Args:
        skip: frames to skip from the caller of this function outwards.

    Returns:
        The parser that is instantiating the caller (when it is built from a config), else None.
    """
    from monai.bundle import ConfigParser

    frame = inspect.currentframe()
    try:
        for _ in range(skip + 1):
            frame = frame.f_back if frame is not None else None
        while frame is not None:
            candidate = frame.f_locals.get("self")
            if isinstance(candidate, ConfigParser):
                return candidate
            frame = frame.f_back
        return None
    finally:
        del frame  # frames reference their locals: break the cycle at once


def run_invocation() -> dict[str, Any] | None:
    """The arguments ``monai.bundle.run`` was called with, when the caller runs inside it; else None.

    Returns:
        ``{"config_file", "meta_file", "logging_file", "run_id", "init_id", "final_id", "tracking", "args_file",
        "overrides"}``; ``overrides`` are the ``--id value`` pairs (without those of an ``args_file``, which is
        named instead). Values that are not JSON (objects passed from Python) are given as their ``repr``.
    """
    from monai.bundle import scripts

    target = scripts.run.__code__
    frame = inspect.currentframe()
    try:
        while frame is not None and frame.f_code is not target:
            frame = frame.f_back
        if frame is None:
            return None
        local = frame.f_locals
        invocation = {name: _jsonable(local.get(name)) for name in _RUN_ARGUMENTS}
        invocation["overrides"] = _jsonable(dict(local.get("override") or {}))
        return invocation
    finally:
        del frame


def _jsonable(value: Any) -> Any:
    """``value`` with everything JSON cannot hold replaced by its ``repr`` (paths and devices by ``str``)."""
    if isinstance(value, _JSON_SCALARS):
        return value
    if isinstance(value, Mapping):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if isinstance(value, (os.PathLike, torch.device)):
        return str(value)
    return repr(value)


def _resolved_values(parser: ConfigParser) -> dict[str, Any]:
    """Top-level config ids already resolved to plain values (numbers, strings, paths, devices, lists of them)."""
    values: dict[str, Any] = {}
    resolved = parser.ref_resolver.resolved_content
    for config_id, value in list(resolved.items()):
        if "#" in config_id or ID_SEP_KEY in config_id or config_id.startswith("_") or config_id == "imports":
            continue
        if isinstance(value, (os.PathLike, torch.device)):
            values[config_id] = str(value)
        elif isinstance(value, _JSON_SCALARS) or (
            isinstance(value, (list, tuple)) and all(isinstance(item, _JSON_SCALARS) for item in value)
        ):
            values[config_id] = list(value) if isinstance(value, tuple) else value
    return values


def _git_state(folder: Path) -> dict[str, Any]:
    """Commit and dirtiness of the git checkout holding ``folder``; nulls when it is not one or git is missing."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "-C", os.fspath(folder), *args],
                capture_output=True,
                text=True,
                timeout=_GIT_TIMEOUT_S,
                check=False,
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def _versions() -> dict[str, Any]:
    import ignite
    import monai
    import numpy

    import usseg

    return {
        "usseg": usseg.__version__,
        "monai": monai.__version__,
        "torch": torch.__version__,
        "pytorch-ignite": ignite.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
    }


def _world() -> tuple[int, int]:
    # torch.distributed directly: ignite's idist helpers make a collective call the first time, which would hang
    # the other ranks when only rank 0 asks (docs/distributed.md)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class RunRecordHandler:
    """Write ``resolved_config.json`` and append to ``run_record.json`` in ``save_dir`` when training starts.

    See the module docstring for the content and for how the config is found. Attach it on every rank (do not
    disable it on ranks > 0): only ``save_rank`` writes, and it makes no collective call. Put it after
    ``TrainingCheckpointHandler`` in the handler list so that a resumed run records the epoch it resumed from.

    Args:
        save_dir: the folder of the checkpoints (a bundle's ``ckpt_dir``); created when needed.
        config: the config to record; default: the content of the ``ConfigParser`` building this handler.
        save_rank: the rank that writes.

    Raises:
        TypeError: ``save_dir`` is not a path, or ``config`` is neither a mapping nor a ``ConfigParser``.
        ValueError: ``save_rank`` is not a non-negative integer, or no ``config`` was given and the handler is not
            being built from a config.
    """

    def __init__(
        self,
        save_dir: str | os.PathLike,
        config: Mapping[str, Any] | ConfigParser | None = None,
        save_rank: int = 0,
    ) -> None:
        from monai.bundle import ConfigParser

        if not isinstance(save_dir, (str, os.PathLike)):
            raise TypeError(f"save_dir must be a path, got {save_dir!r}.")
        if isinstance(save_rank, bool) or not isinstance(save_rank, int) or save_rank < 0:
            raise ValueError(f"save_rank must be a non-negative integer, got {save_rank!r}.")
        if config is None:
            config = find_config_parser(skip=1)
            if config is None:
                raise ValueError(
                    "RunRecordHandler is not being built by a MONAI ConfigParser, so it cannot find the run's config; "
                    "pass config= (a dict or a ConfigParser)."
                )
        if not isinstance(config, (Mapping, ConfigParser)):
            raise TypeError(f"config must be a mapping or a monai.bundle.ConfigParser, got {type(config).__name__}.")
        self.save_dir = Path(save_dir)
        self.save_rank = save_rank
        self.parser: ConfigParser | None = config if isinstance(config, ConfigParser) else None
        raw = config.get() if isinstance(config, ConfigParser) else config
        self.config: dict[str, Any] = _jsonable(dict(raw))  # new containers: later edits of the parser stay out
        self.invocation = run_invocation()

    def attach(self, engine: Engine) -> None:
        """Write the record when ``engine`` starts (once per ``run``)."""
        if not engine.has_event_handler(self, Events.STARTED):
            engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        rank, world_size = _world()
        if rank != self.save_rank:
            return
        self.write(start_epoch=int(engine.state.epoch), world_size=world_size)

    def write(self, start_epoch: int = 0, world_size: int = 1) -> Path:
        """Write ``resolved_config.json`` and append this run to ``run_record.json``.

        Args:
            start_epoch: the epoch training starts from (0 for a fresh run).
            world_size: the number of processes of the run.

        Returns:
            The path of ``run_record.json``.
        """
        folder = ensure_writable_dir(self.save_dir)
        config_text = json.dumps(self.config, indent=2, sort_keys=True)
        atomic_write_json(folder / CONFIG_NAME, self.config)
        entry = {
            "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": list(sys.argv),
            "working_dir": os.getcwd(),
            "invocation": self.invocation,
            "resolved_values": {} if self.parser is None else _resolved_values(self.parser),
            "start_epoch": start_epoch,
            "world_size": world_size,
            "host": platform.node(),
            "versions": _versions(),
            "git": _git_state(Path(__file__).resolve().parent),
            "config_file": CONFIG_NAME,
            "config_sha256": hashlib.sha256(config_text.encode("utf-8")).hexdigest(),
        }
        record_path = folder / RECORD_NAME
        runs: list[Any] = []
        try:
            previous = json.loads(record_path.read_text(encoding="utf-8"))
            runs = list(previous.get("runs", [])) if isinstance(previous, dict) else []
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as err:  # a damaged record must not stop training: start a new one, say so
            logger.warning("%s is unreadable (%s); starting a new run record.", record_path, err)
        runs.append(entry)
        logger.info("run record written to %s (resolved config: %s)", record_path, folder / CONFIG_NAME)
        return atomic_write_json(record_path, {"format": RECORD_FORMAT, "runs": runs})
