# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""Ramp-up schedules against closed forms, and ``RampUpHandler`` driven by a bare ignite engine."""

from __future__ import annotations

import math

import pytest
from ignite.engine import Engine, Events

from usseg.handlers.schedules import RAMPS, RampUpHandler, cosine_rampup, linear_rampup, sigmoid_rampup

# exp(-5 (1 - t)^2) written out by hand for t = 0, 1/2 and 1
SIGMOID_AT_0 = math.exp(-5.0)
SIGMOID_AT_HALF = math.exp(-1.25)


@pytest.mark.parametrize(
    ("step", "length", "expected"),
    [
        pytest.param(0, 10, SIGMOID_AT_0, id="start"),
        pytest.param(5, 10, SIGMOID_AT_HALF, id="half"),
        pytest.param(10, 10, 1.0, id="end"),
        pytest.param(2.5, 10, math.exp(-5.0 * 0.75**2), id="quarter"),
        pytest.param(25, 10, 1.0, id="past-the-end-clipped"),
        pytest.param(-3, 10, SIGMOID_AT_0, id="negative-step-clipped"),
        pytest.param(0, 0, 1.0, id="zero-length"),
        pytest.param(7, 0, 1.0, id="zero-length-later"),
    ],
)
def test_sigmoid_rampup_matches_closed_form(step: float, length: float, expected: float) -> None:
    assert sigmoid_rampup(step, length) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(
    ("step", "length", "linear", "cosine"),
    [
        pytest.param(0, 8, 0.0, 0.0, id="start"),
        pytest.param(2, 8, 0.25, (1 - math.sqrt(0.5)) / 2, id="quarter"),
        pytest.param(4, 8, 0.5, 0.5, id="half"),
        pytest.param(8, 8, 1.0, 1.0, id="end"),
        pytest.param(12, 8, 1.0, 1.0, id="past-the-end"),
        pytest.param(-1, 8, 0.0, 0.0, id="negative-step"),
        pytest.param(3, 0, 1.0, 1.0, id="zero-length"),
    ],
)
def test_linear_and_cosine_rampups(step: float, length: float, linear: float, cosine: float) -> None:
    assert linear_rampup(step, length) == pytest.approx(linear, abs=1e-12)
    assert cosine_rampup(step, length) == pytest.approx(cosine, abs=1e-12)


def test_ramps_registry_names_the_three_shapes() -> None:
    expected = {"sigmoid": sigmoid_rampup, "linear": linear_rampup, "cosine": cosine_rampup}
    assert expected == RAMPS


@pytest.mark.parametrize(
    ("iteration", "expected"),
    [
        pytest.param(1, 0.0, id="first-iteration-before-start"),
        pytest.param(3, 0.0, id="last-iteration-before-start"),
        pytest.param(4, 2.0 * SIGMOID_AT_0, id="first-ramp-iteration"),
        pytest.param(4 + 5, 2.0 * SIGMOID_AT_HALF, id="mid-ramp"),
        pytest.param(4 + 10, 2.0, id="end-of-ramp"),
        pytest.param(100, 2.0, id="long-after"),
    ],
)
def test_handler_value_with_start_offset_uses_one_based_iterations(iteration: int, expected: float) -> None:
    handler = RampUpHandler("unsup", max_value=2.0, length=10, shape="sigmoid", start=3)
    assert handler.value(iteration) == pytest.approx(expected, rel=1e-12)


def test_zero_length_is_a_step_at_start() -> None:
    handler = RampUpHandler("unsup", max_value=0.5, length=0, shape="linear", start=2)
    assert [handler.value(i) for i in range(1, 6)] == [0.0, 0.0, 0.5, 0.5, 0.5]


def _engine_with_weights(record: list[float], name: str = "unsup") -> Engine:
    def step(engine: Engine, batch: object) -> None:
        record.append(engine.loss_weights[name])  # the process function sees the value set at ITERATION_STARTED

    engine = Engine(step)
    engine.loss_weights = {name: -1.0}
    return engine


def test_handler_drives_engine_loss_weights_each_iteration() -> None:
    record: list[float] = []
    engine = _engine_with_weights(record)
    RampUpHandler("unsup", max_value=4.0, length=4, shape="linear", start=1).attach(engine)
    engine.run(range(3), max_epochs=2)  # 6 iterations over two epochs: the schedule follows the global count
    assert record == pytest.approx([0.0, 0.0, 1.0, 2.0, 3.0, 4.0])


def test_handler_leaves_other_loss_weights_alone() -> None:
    record: list[float] = []
    engine = _engine_with_weights(record)
    engine.loss_weights["sup"] = 1.0
    RampUpHandler("unsup", max_value=1.0, length=2, shape="cosine").attach(engine)
    engine.run(range(3), max_epochs=1)
    assert engine.loss_weights == {"sup": 1.0, "unsup": 1.0}
    assert record == pytest.approx([0.0, 0.5, 1.0])


def test_attach_to_an_engine_without_loss_weights_raises_type_error() -> None:
    engine = Engine(lambda engine, batch: None)
    with pytest.raises(TypeError, match="loss_weights"):
        RampUpHandler("unsup", max_value=1.0, length=5).attach(engine)


class _CountingRampUp(RampUpHandler):
    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.calls = 0

    def __call__(self, engine: Engine) -> None:
        self.calls += 1
        super().__call__(engine)


def test_attaching_twice_registers_the_handler_once() -> None:
    record: list[float] = []
    engine = _engine_with_weights(record)
    handler = _CountingRampUp("unsup", max_value=1.0, length=3)
    handler.attach(engine)
    handler.attach(engine)
    assert engine.has_event_handler(handler, Events.ITERATION_STARTED)
    engine.run(range(4), max_epochs=1)
    assert handler.calls == 4


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"shape": "step"}, "'step'", id="unknown-shape"),
        pytest.param({"length": -1}, "length=-1", id="negative-length"),
        pytest.param({"start": -2}, "start=-2", id="negative-start"),
    ],
)
def test_invalid_arguments_raise_value_error_quoting_the_value(kwargs: dict, message: str) -> None:
    arguments = {"name": "unsup", "max_value": 1.0, "length": 10, **kwargs}
    with pytest.raises(ValueError, match=message):
        RampUpHandler(**arguments)
