# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""The BMA teacher pool (released update rules) and the stage switch of Semi-CML."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch
from ignite.engine import Engine, Events

from usseg.handlers.bma import BMATeacherHandler, PhaseSwitchHandler, wp2_weight


def _net(value: float) -> torch.nn.Module:
    """A conv + batch-norm net whose parameters and running mean are all ``value``."""
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1), torch.nn.BatchNorm2d(2))
    with torch.no_grad():
        for tensor in [*net.parameters(), net[1].running_mean]:
            tensor.fill_(value)
    return net


def _value(net: torch.nn.Module) -> float:
    return float(net[0].weight.flatten()[0])


def test_pool_fills_then_copies_then_blends_with_the_released_alpha():
    teacher, student = _net(0.0), _net(1.0)
    handler = BMATeacherHandler(teacher, student, pool_size=3, start_epoch=10, stop_epoch=51)
    # epochs 11, 12, 13 fill the pool of 3
    assert [handler.update(d, e) for e, d in [(11, 0.5), (12, 0.4), (13, 0.6)]] == ["pooled"] * 3
    assert _value(teacher) == 0.0 and not handler.initialized
    # epoch start + 1 + pool = 14: the teacher becomes the student, whatever the Dice
    assert handler.update(0.1, 14) == "initialized"
    assert _value(teacher) == 1.0 and handler.initialized
    assert handler.pool == [(11, 0.5), (12, 0.4), (13, 0.6)]
    # a Dice below the pool's worst (0.4) changes nothing
    student_value = 3.0
    for tensor in student.parameters():
        tensor.data.fill_(student_value)
    assert handler.update(0.35, 15) == "kept" and _value(teacher) == 1.0
    # 0.8 beats 0.4: replaced, alpha_b = (0.8 - 0.4) / 0.8 = 0.5, alpha = min(1 - 0.5, 0.99) = 0.5
    assert handler.update(0.8, 16) == "replaced"
    assert handler.last_alpha == pytest.approx(0.5)
    assert _value(teacher) == pytest.approx(0.5 * 1.0 + 0.5 * student_value)
    assert sorted(handler.pool) == [(11, 0.5), (13, 0.6), (16, 0.8)]
    # a tiny improvement: alpha_b ~ 0, alpha capped at 0.99
    before = _value(teacher)
    assert handler.update(0.5000001, 17) == "replaced"
    assert handler.last_alpha == pytest.approx(0.99)
    assert _value(teacher) == pytest.approx(0.99 * before + 0.01 * student_value, rel=1e-5)


@pytest.mark.parametrize("blend_buffers, expected_mean", [(True, 2.0), (False, 0.0)], ids=["buffers", "released"])
def test_blend_buffers_switch(blend_buffers, expected_mean):
    teacher, student = _net(0.0), _net(4.0)
    handler = BMATeacherHandler(teacher, student, blend_buffers=blend_buffers)
    handler.blend(0.5)
    assert _value(teacher) == 2.0
    assert float(teacher[1].running_mean[0]) == expected_mean
    assert not any(p.requires_grad for p in teacher.parameters())


def test_handler_runs_the_evaluator_only_inside_the_window_and_resumes_from_its_state():
    teacher, student = _net(0.0), _net(1.0)
    dice_per_run = iter([0.3, 0.5, 0.7, 0.9])
    evaluator = SimpleNamespace(state=SimpleNamespace(metrics={}), runs=0)

    def run(epoch: int) -> None:
        evaluator.runs += 1
        evaluator.state.metrics = {"val_mean_dice": next(dice_per_run)}

    evaluator.run = run
    handler = BMATeacherHandler(teacher, student, evaluator, pool_size=1, start_epoch=0, stop_epoch=4)
    engine = Engine(lambda e, b: None)
    handler.attach(engine)
    handler.attach(engine)  # idempotent
    engine.run([0], max_epochs=6)
    # 0-based epochs 1, 2, 3 are in the window (0 < e < 4): epoch 1 pooled (0.3); epoch 2 = start + 1 + pool size
    # initialises the teacher (its 0.5 is not pooled); epoch 3 (0.7) replaces the worst entry (0.3)
    assert evaluator.runs == 3
    assert handler.initialized and handler.pool == [(3, 0.7)]
    restored = BMATeacherHandler(_net(0.0), _net(1.0), pool_size=1, start_epoch=0, stop_epoch=4)
    restored.load_state_dict(handler.state_dict())
    assert restored.pool == handler.pool and restored.initialized
    assert all(isinstance(v, (list, bool)) for v in handler.state_dict().values())  # weights_only-loadable


def test_non_finite_dice_is_refused_naming_the_epoch():
    handler = BMATeacherHandler(_net(0.0), _net(1.0))
    with pytest.raises(ValueError, match="epoch 12"):
        handler.update(float("nan"), 12)


@pytest.mark.parametrize(
    "kwargs",
    [{"pool_size": 0}, {"max_alpha": 1.5}, {"start_epoch": 2.5}],
    ids=["empty_pool", "alpha_above_one", "float_epoch"],
)
def test_bad_pool_settings_are_refused(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        BMATeacherHandler(_net(0.0), _net(1.0), **kwargs)


@pytest.mark.parametrize(
    "schedule, expected_first_full_epoch",
    [(3, 75), (2, 69), (1, 63)],
    ids=["released_80pct", "60pct", "40pct"],
)
def test_wp2_step_schedules_match_the_released_epochs(schedule, expected_first_full_epoch):
    # released: max_epoch 81, M2_epoch 51 -> int(0.8 * 30) + 51 = 75
    weights = [wp2_weight(e, 51, 81, schedule) for e in range(81)]
    assert weights.index(1.0) == expected_first_full_epoch
    assert set(weights[:expected_first_full_epoch]) == {0.0} and set(weights[expected_first_full_epoch:]) == {1.0}


def test_wp2_ramp_schedule_is_zero_then_a_sigmoid_ramp():
    assert wp2_weight(56, 51, 81, 0) == 0.0  # int(0.2 * 30) + 51 = 57
    assert wp2_weight(57, 51, 81, 0) == pytest.approx(torch.exp(torch.tensor(-5 * (1 - 6 / 24) ** 2)).item())
    assert wp2_weight(80, 51, 81, 0) == 1.0


class _Trainer(Engine):
    """The two attributes PhaseSwitchHandler drives."""

    def __init__(self) -> None:
        super().__init__(lambda engine, batch: None)
        self.phase = 1
        self.loss_weights: dict[str, float] = {}
        self.seen: list[tuple[int, float]] = []
        self.add_event_handler(
            Events.ITERATION_COMPLETED, lambda e: e.seen.append((e.phase, e.loss_weights["teach_self"]))
        )


def test_phase_switches_at_the_configured_epoch_and_drives_wp2():
    trainer = _Trainer()
    PhaseSwitchHandler(switch_epoch=3, wp2_schedule=1).attach(trainer)
    trainer.run([0], max_epochs=8)
    # 0-based epochs 0-2 stage 1; stage 2 from 3; schedule 1 steps at int(0.4 * 5) + 3 = 5
    assert trainer.seen == [(1, 0.0)] * 3 + [(2, 0.0)] * 2 + [(2, 1.0)] * 3


def test_phase_switch_initialises_a_teacher_that_was_never_set(caplog):
    teacher, student = _net(0.0), _net(5.0)
    bma = BMATeacherHandler(teacher, student, pool_size=6, start_epoch=10, stop_epoch=51)
    trainer = _Trainer()
    PhaseSwitchHandler(switch_epoch=1, teacher_handler=bma).attach(trainer)
    with caplog.at_level(logging.WARNING):
        trainer.run([0], max_epochs=2)
    assert bma.initialized and _value(teacher) == 5.0
    assert "never set" in caplog.text


def test_phase_switch_state_checks_the_switch_epoch_on_resume():
    handler = PhaseSwitchHandler(switch_epoch=4)
    PhaseSwitchHandler(switch_epoch=4).load_state_dict(handler.state_dict())
    with pytest.raises(ValueError, match="switch_epoch"):
        PhaseSwitchHandler(switch_epoch=5).load_state_dict(handler.state_dict())


def test_phase_switch_refuses_an_engine_without_phases():
    with pytest.raises(TypeError, match="MutualLearningTrainer"):
        PhaseSwitchHandler(switch_epoch=1).attach(Engine(lambda e, b: None))
