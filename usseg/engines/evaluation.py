# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""Evaluate several checkpoints of one network with one evaluator (the last one, the validation-selected one...)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping

import torch
from monai.engines import Evaluator
from torch import nn

__all__ = ["load_model_weights", "evaluate_checkpoints"]

logger = logging.getLogger(__name__)


def load_model_weights(network: nn.Module, path: str | os.PathLike, key: str = "model") -> nn.Module:
    """Load the ``key`` entry of a usseg checkpoint (or a bare state dict) into ``network`` with ``weights_only``.

    Raises:
        FileNotFoundError: the checkpoint does not exist (the path is named).
        KeyError: the checkpoint holds neither ``key`` nor a bare state dict.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: checkpoint not found; train the bundle first or pass its path.")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    state = checkpoint.get(key, checkpoint) if isinstance(checkpoint, Mapping) else checkpoint
    target = network.module if isinstance(network, nn.parallel.DistributedDataParallel) else network
    try:
        target.load_state_dict(state)
    except RuntimeError as err:
        raise KeyError(f"{path}: cannot load entry {key!r} into {type(target).__name__}: {err}") from err
    return network


def evaluate_checkpoints(
    evaluator: Evaluator,
    network: nn.Module,
    checkpoints: Mapping[str, str | os.PathLike],
    report_handler: object | None = None,
) -> dict[str, dict]:
    """Run ``evaluator`` once per checkpoint, loading each into ``network`` first.

    Args:
        evaluator: an evaluator whose network is ``network``.
        network: the module the checkpoints are loaded into.
        checkpoints: ``{name: path}``, e.g. ``{"final": ".../model_final.pt", "best": ".../model.pt"}``.
        report_handler: a handler with a ``prefix`` attribute (``SegmentationReportHandler``); it is set to
            ``"<name>_"`` before each run so each checkpoint gets its own report files.

    Returns:
        ``{name: evaluator.state.metrics}`` for each checkpoint.
    """
    results = {}
    for name, path in checkpoints.items():
        load_model_weights(network, path)
        if report_handler is not None:
            report_handler.prefix = f"{name}_"
        evaluator.run()
        # the evaluator keeps earlier runs' prefixed entries: report only this checkpoint's and the key metric
        results[name] = {k: v for k, v in evaluator.state.metrics.items() if _belongs_to(k, name, checkpoints)}
        logger.info("checkpoint %s (%s): %s", name, path, results[name])
    return results


def _belongs_to(key: str, name: str, checkpoints: Iterable[str]) -> bool:
    """Whether a metric key is not another checkpoint's prefixed entry (the longest matching prefix wins, so
    checkpoints named ``best`` and ``best_net1`` keep their entries apart)."""
    matches = [other for other in checkpoints if key.startswith(f"{other}_")]
    return not matches or max(matches, key=len) == name
