# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""Networks and heads of the methods, plus the pretrained-encoder contract that connects the bundles."""

from __future__ import annotations

from usseg.networks.contrastive import (
    CMWNet,
    ContrastiveNetwork,
    ContrastiveOutputs,
    ProjectionHead,
    build_contrastive_network,
)
from usseg.networks.dual import DualNetworkEnsemble, ProjectedSegmenter, build_segmenter
from usseg.networks.encoders import (
    build_resnet_encoder,
    encoder_feature_dim,
    load_encoder_weights,
    resnet_features,
    save_encoder,
)
from usseg.networks.hermes import HermesClassificationNet, HermesInferenceModel, HermesSegmentationNet
from usseg.networks.resnet_unet import ResNetUNet
from usseg.networks.semi_cml import SemiCMLUNet

__all__ = [
    "CMWNet",
    "ContrastiveNetwork",
    "ContrastiveOutputs",
    "DualNetworkEnsemble",
    "HermesClassificationNet",
    "HermesInferenceModel",
    "HermesSegmentationNet",
    "ProjectedSegmenter",
    "ProjectionHead",
    "ResNetUNet",
    "SemiCMLUNet",
    "build_contrastive_network",
    "build_resnet_encoder",
    "build_segmenter",
    "encoder_feature_dim",
    "load_encoder_weights",
    "resnet_features",
    "save_encoder",
]
