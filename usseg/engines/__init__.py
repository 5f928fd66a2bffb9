# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""Step 4 of the data flow: engines that train (subclasses of ``monai.engines``) and their building blocks."""

from __future__ import annotations

from usseg.engines.contrastive import ContrastivePretrainer, cross_validate_encoder
from usseg.engines.dual_network import DualNetworkTrainer
from usseg.engines.evaluation import evaluate_checkpoints, load_model_weights
from usseg.engines.hermes import HermesTrainer
from usseg.engines.mutual_learning import MutualLearningTrainer
from usseg.engines.prepare_batch import PrepareWeakStrongBatch
from usseg.engines.pseudo_label import ConfidenceThreshold, DualThreshold
from usseg.engines.trainers import SemiSupervisedTrainer, SupervisedTrainer
from usseg.engines.utils import autocast, resolve_device

__all__ = [
    "ConfidenceThreshold",
    "ContrastivePretrainer",
    "DualNetworkTrainer",
    "DualThreshold",
    "HermesTrainer",
    "MutualLearningTrainer",
    "PrepareWeakStrongBatch",
    "SemiSupervisedTrainer",
    "SupervisedTrainer",
    "autocast",
    "cross_validate_encoder",
    "evaluate_checkpoints",
    "load_model_weights",
    "resolve_device",
]
