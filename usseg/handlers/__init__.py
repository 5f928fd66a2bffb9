# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""Step 4-5 of the data flow: ignite handlers that drive training and write its records.

EMA teachers are ignite's ``ignite.handlers.EMAHandler`` (use ``@ema.ema_model`` as the teacher in a config);
usseg adds no second implementation.
"""

from __future__ import annotations

from usseg.handlers.bma import BMATeacherHandler, PhaseSwitchHandler
from usseg.handlers.checkpoint import BestMetricState, EpochSeedHandler, TrainingCheckpointHandler
from usseg.handlers.report import SegmentationReportHandler, TrainingHistoryHandler
from usseg.handlers.run_record import RunRecordHandler
from usseg.handlers.schedules import RampUpHandler, cosine_rampup, linear_rampup, sigmoid_rampup
from usseg.handlers.tracking import ScalarEventWriter, loss_components

__all__ = [
    "BMATeacherHandler",
    "BestMetricState",
    "EpochSeedHandler",
    "PhaseSwitchHandler",
    "RampUpHandler",
    "RunRecordHandler",
    "ScalarEventWriter",
    "SegmentationReportHandler",
    "TrainingCheckpointHandler",
    "TrainingHistoryHandler",
    "cosine_rampup",
    "linear_rampup",
    "loss_components",
    "sigmoid_rampup",
]
