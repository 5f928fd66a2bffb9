# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""The one shape of every ``benchmarks/results/<name>.json`` file, and the data path every benchmark takes.

```json
{"benchmark": "...", "command": "...", "commit": "...", "date": "...", "settings": {},
 "results": [{"method": "...", "labeled": 72, "seed": 0, "metrics": {"dice": 0.0}}]}
```
Fields that do not apply are omitted; ratios go in ``metrics`` under descriptive names (``overhead_vs_plain``).
"""

from __future__ import annotations

import datetime
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from usseg.data.io import atomic_write_json

RESULTS_DIR = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parent.parent

__all__ = ["RESULTS_DIR", "default_data_root", "git_commit", "write_results"]


def default_data_root() -> Path:
    """``$USSEG_DATA`` if set, else ``../shared/data`` beside the repository."""
    return Path(os.environ.get("USSEG_DATA") or REPO.parent / "shared" / "data")


def git_commit() -> str:
    """The checked-out commit, with ``-dirty`` when tracked files differ from it."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def write_results(name: str, settings: dict[str, Any], results: list[dict[str, Any]]) -> Path:
    """Write ``benchmarks/results/<name>.json`` with the command line, commit and date of this run."""
    for row in results:
        if "metrics" not in row:
            raise ValueError(f"every result row needs 'metrics', got {sorted(row)}")
    payload = {
        "benchmark": name,
        "command": " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv]),
        "commit": git_commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "settings": settings,
        "results": results,
    }
    return atomic_write_json(RESULTS_DIR / f"{name}.json", payload)
