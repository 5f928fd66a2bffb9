# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""Meta-USCL under DDP: two gloo processes start from different weights and end with identical networks and CMW-Nets.

``ddp_meta_uscl_script.py`` runs the trainer with the meta step every iteration; DDP broadcasts the main network at
construction and averages its gradients, the trainer broadcasts CMW-Net at the start and averages its meta-gradient.
A run that raised an unused-parameter (or any other) error would fail the launch.
"""

from __future__ import annotations

import json
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

SCRIPT = Path(__file__).with_name("ddp_meta_uscl_script.py")
TIMEOUT_S = 240


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ddp_meta_uscl")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(SCRIPT)]
    command += ["--output", str(folder)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        output, _ = process.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"torchrun hung for {TIMEOUT_S} s:\n{output[-6000:]}")
    assert process.returncode == 0, f"torchrun exited with {process.returncode}:\n{output[-6000:]}"
    return folder


def test_ranks_end_with_identical_networks_and_cmw_nets(outputs: Path) -> None:
    weights = [torch.load(outputs / f"weights_rank{rank}.pt", weights_only=True) for rank in (0, 1)]
    for part in ("network", "cmw"):
        for name, value in weights[0][part].items():
            if name.endswith("num_batches_tracked"):
                continue
            if "running_" in name:  # batch-norm statistics are per rank (DDP broadcasts rank 0's at each forward)
                continue
            assert torch.equal(value, weights[1][part][name]), f"{part}.{name} differs between ranks"


def test_every_iteration_ran_a_meta_step_with_rank_local_losses(outputs: Path) -> None:
    losses = [json.loads((outputs / f"losses_rank{rank}.json").read_text()) for rank in (0, 1)]
    assert len(losses[0]) == len(losses[1]) == 4  # 8 videos / 2 ranks / batch 2 = 2 iterations x 2 epochs
    assert all("meta_loss" in entry for entry in losses[0] + losses[1])
    assert [e["loss"] for e in losses[0]] != [e["loss"] for e in losses[1]]  # each rank trained on its own shard
