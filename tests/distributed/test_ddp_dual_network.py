# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""DualNetworkTrainer under DistributedDataParallel: two gloo ranks under ``torchrun``, a few iterations.

Both networks and their projection heads must take part in every backward (DDP without
``find_unused_parameters`` fails otherwise), also when the contrastive weight is 0 (``compat.contrastive_inactive``),
and the ranks must end with identical parameters for both networks although each started from its own.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()), reason="needs torch.distributed gloo"),
]

SCRIPT = Path(__file__).resolve().parent / "ddp_dual_script.py"
TIMEOUT_S = 240
DDP_ERRORS = ("unused parameters", "marked as ready", "finished reduction", "ready only once")


# contrastive weight 0 (compat.contrastive_inactive) is the case a "skip the unused term" shortcut would break; the
# active term's gradients are checked in tests/losses/test_cross_network_contrast.py
@pytest.fixture(scope="module", params=[True], ids=["contrastive_inactive"])
def ranks(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict], str, bool]:
    workdir = tmp_path_factory.mktemp("ddp_dual")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(SCRIPT)]
    command += ["--output", str(workdir)] + (["--contrastive-inactive"] if request.param else [])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    process = subprocess.Popen(
        command,
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"torchrun hung for {TIMEOUT_S} s:\n{output[-6000:]}")
    assert process.returncode == 0, f"torchrun exited with {process.returncode}:\n{output[-6000:]}"
    records = [torch.load(workdir / f"dual_rank{rank}.pt", map_location="cpu", weights_only=True) for rank in (0, 1)]
    return records, output, request.param


def test_ddp_runs_without_unused_parameter_errors(ranks: tuple[list[dict], str, bool]) -> None:
    records, output, inactive = ranks
    assert not [error for error in DDP_ERRORS if error in output.lower()], output[-4000:]
    for record in records:
        assert len(record["losses"]) == 6
        assert all(math.isfinite(v) for row in record["losses"] for v in row.values())
        assert all(row["contrast_loss"] > 0 for row in record["losses"])  # computed either way


def test_ranks_end_with_identical_parameters_for_both_networks(ranks: tuple[list[dict], str, bool]) -> None:
    records, _, inactive = ranks
    for network in (0, 1):
        start0, start1 = records[0]["initial"][network], records[1]["initial"][network]
        assert any(not torch.equal(start0[k], start1[k]) for k in start0), "the ranks started from the same weights"
        final0, final1 = records[0]["final"][network], records[1]["final"][network]
        assert final0.keys() == final1.keys()
        differing = [k for k in final0 if not torch.equal(final0[k], final1[k])]
        assert not differing, f"network {network + 1}: {len(differing)} parameters differ, e.g. {differing[:3]}"
        heads_changed = any(not torch.equal(final0[k], start0[k]) for k in final0 if k.startswith("head."))
        assert heads_changed != inactive  # the heads learn from the contrastive term only
