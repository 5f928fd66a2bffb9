# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""Ramp-up schedules for loss weights, and the handler that applies them to a trainer each iteration.

A trainer reads every loss weight from ``engine.loss_weights[name]``. :class:`RampUpHandler` rewrites one entry at
the start of each iteration from ``engine.state.iteration`` alone, so the schedule needs no state of its own and a
resumed run continues on the same curve.
"""

from __future__ import annotations

import math

from ignite.engine import Engine, Events

__all__ = ["sigmoid_rampup", "linear_rampup", "cosine_rampup", "RAMPS", "RampUpHandler"]


def sigmoid_rampup(step: float, length: float) -> float:
    """``exp(-5 (1 - t)^2)`` with ``t = clip(step / length, 0, 1)``; 1 when ``length`` is 0 (Laine & Aila, 2017)."""
    if length <= 0:
        return 1.0
    t = min(max(step, 0.0), length) / length
    return math.exp(-5.0 * (1.0 - t) ** 2)


def linear_rampup(step: float, length: float) -> float:
    """``clip(step / length, 0, 1)``; 1 when ``length`` is 0."""
    return 1.0 if length <= 0 else min(max(step / length, 0.0), 1.0)


def cosine_rampup(step: float, length: float) -> float:
    """``(1 - cos(pi t)) / 2`` with ``t = clip(step / length, 0, 1)``; 1 when ``length`` is 0."""
    return 1.0 if length <= 0 else 0.5 * (1.0 - math.cos(math.pi * linear_rampup(step, length)))


RAMPS = {"sigmoid": sigmoid_rampup, "linear": linear_rampup, "cosine": cosine_rampup}


class RampUpHandler:
    """Set ``engine.loss_weights[name] = max_value * ramp(iteration - start, length)`` before every iteration.

    Before ``start`` the weight is 0, so a term can be switched on after a warm-up. The value is also written into
    ``engine.state.output`` as ``<name>_weight`` by the trainer, where loggers pick it up.

    Args:
        name: the key of ``engine.loss_weights`` to drive (e.g. ``"unsup"``).
        max_value: the weight reached at the end of the ramp.
        length: ramp length in iterations; 0 means a step to ``max_value`` at ``start``.
        shape: ``"sigmoid"`` (Laine & Aila), ``"linear"`` or ``"cosine"``.
        start: the iteration at which the ramp begins (the weight is 0 before it).
    """

    def __init__(self, name: str, max_value: float, length: int, shape: str = "sigmoid", start: int = 0) -> None:
        if shape not in RAMPS:
            raise ValueError(f"shape must be one of {sorted(RAMPS)}, got {shape!r}.")
        if length < 0 or start < 0:
            raise ValueError(f"length and start must be >= 0, got length={length}, start={start}.")
        self.name, self.max_value, self.length, self.start = name, float(max_value), int(length), int(start)
        self.ramp = RAMPS[shape]

    def value(self, iteration: int) -> float:
        """The weight for a 1-based ``iteration`` (ignite's count: the first iteration is 1)."""
        step = iteration - 1 - self.start
        return 0.0 if step < 0 else self.max_value * self.ramp(step, self.length)

    def attach(self, engine: Engine) -> None:
        if not hasattr(engine, "loss_weights"):
            raise TypeError(f"{type(engine).__name__} has no `loss_weights`; RampUpHandler drives usseg trainers.")
        if not engine.has_event_handler(self, Events.ITERATION_STARTED):
            engine.add_event_handler(Events.ITERATION_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        engine.loss_weights[self.name] = self.value(engine.state.iteration)
