# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""Step 4 of the data flow: engines that train (subclasses of ``monai.engines``) and their building blocks."""

from __future__ import annotations

from usseg.engines.contrastive import ContrastivePretrainer, cross_validate_encoder
from usseg.engines.dual_network import DualNetworkTrainer
from usseg.engines.evaluation import evaluate_checkpoints, load_model_weights
from usseg.engines.prepare_batch import PrepareWeakStrongBatch
from usseg.engines.pseudo_label import ConfidenceThreshold, DualThreshold
from usseg.engines.trainers import SemiSupervisedTrainer, SupervisedTrainer
from usseg.engines.utils import autocast, resolve_device

__all__ = [
    "ConfidenceThreshold",
    "PrepareWeakStrongBatch",
    "SemiSupervisedTrainer",
    "SupervisedTrainer",
    "autocast",
    "evaluate_checkpoints",
    "load_model_weights",
    "resolve_device",
]
__all__ += ["DualThreshold"]
__all__ += ["DualNetworkTrainer"]
__all__ += ["ContrastivePretrainer", "cross_validate_encoder"]
