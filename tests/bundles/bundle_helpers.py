# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""Running a bundle the way a user does, for the bundle tests (not collected: no ``test_`` prefix)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def run_bundle(configs_dir: Path, cwd: Path, configs: list[str], *overrides: str) -> subprocess.CompletedProcess:
    """``python -m monai.bundle run`` with the named config files merged; fails the test with both logs' tails."""
    files = [str(configs_dir / c) for c in configs]
    config_arg = files[0] if len(files) == 1 else "[" + ",".join(f"'{f}'" for f in files) + "]"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", config_arg, *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, (
        f"{' '.join(cmd)}\n--- stdout\n{result.stdout[-3000:]}\n--- stderr\n{result.stderr[-5000:]}"
    )
    return result
