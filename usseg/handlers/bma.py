# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""Semi-CML's best-model-averaging (BMA) teacher and its two-phase schedule, as ignite handlers.

- :class:`BMATeacherHandler` keeps a pool of the best validation epochs of the teaching modality's network and
  blends that network into the teacher whenever an epoch enters the pool (methods.md, section 4.2).
- :class:`PhaseSwitchHandler` moves a :class:`usseg.engines.mutual_learning.MutualLearningTrainer` from stage 1
  (contrastive mutual learning) to stage 2 (pseudo-label re-learning, PReL) at a configured epoch, and drives the
  WP2 weight of the teaching modality's own re-learning term.

Epochs: the released script counts epochs from 0; ignite counts from 1. Both handlers take the released 0-based
numbers (``start_epoch=10``, ``switch_epoch=51``) and compare them with ``engine.state.epoch - 1``, so the settings
read the same as in methods.md. Both expose ``state_dict()`` / ``load_state_dict()`` with plain values only; put them
in the ``TrainingCheckpointHandler`` ``save_dict`` (with the teacher network) so a resumed run continues the pool.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as dist
from ignite.engine import Engine, Events
from torch import nn

from usseg.handlers.schedules import sigmoid_rampup

__all__ = ["BMATeacherHandler", "PhaseSwitchHandler", "wp2_weight", "WP2_SCHEDULES"]

logger = logging.getLogger(__name__)

WP2_SCHEDULES = (0, 1, 2, 3)
"""``teach_m2_WP_epoch`` values: 0 ramps from 20 % of stage 2; 1, 2, 3 step to 1 at 40 %, 60 %, 80 % of it."""


def _unwrap(module: nn.Module) -> nn.Module:
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}.")
    return value


def wp2_weight(epoch: int, switch_epoch: int, max_epochs: int, schedule: int = 3) -> float:
    """Weight of the teaching modality's own re-learning term in stage 2 (the released ``get_WP2_weight``).

    Args:
        epoch: the 0-based epoch.
        switch_epoch: the first (0-based) epoch of stage 2 (``M2_epoch``).
        max_epochs: the number of epochs of the run.
        schedule: one of :data:`WP2_SCHEDULES`; 3 (released default) steps to 1 at 80 % of stage 2.

    Returns:
        The weight in [0, 1]; 0 before stage 2.

    Raises:
        ValueError: an unknown ``schedule``.
    """
    if schedule not in WP2_SCHEDULES:
        raise ValueError(f"schedule must be one of {WP2_SCHEDULES}, got {schedule!r}.")
    stage2 = max_epochs - switch_epoch
    if schedule == 0:
        if epoch < int(stage2 * 0.2) + switch_epoch:
            return 0.0
        return sigmoid_rampup(epoch - switch_epoch, int(stage2 * 0.8))
    fraction = {1: 0.4, 2: 0.6, 3: 0.8}[schedule]
    return 0.0 if epoch < int(stage2 * fraction) + switch_epoch else 1.0


class BMATeacherHandler:
    r"""Best-model-averaging teacher: a pool of the best validation epochs of the teaching network.

    At the end of every (0-based) epoch ``e`` with ``start_epoch < e < stop_epoch`` the handler runs ``evaluator``
    (whose network is ``student``, the teaching modality's network, on a validation split that is not the reported
    test split) unless it already ran for this epoch (a ``ValidationHandler`` attached earlier), and reads
    ``evaluator.state.metrics[metric_name]`` as the validation Dice :math:`d`. Then, as
    released (methods.md, section 4.2):

    1. while the pool holds fewer than ``pool_size`` entries, :math:`(e, d)` joins it;
    2. at epoch ``start_epoch + 1 + pool_size`` the teacher becomes a copy of the student;
    3. afterwards, when :math:`d` beats the pool's worst entry :math:`d_{min}`, that entry is replaced and

       .. math::
           \theta_T \leftarrow \alpha \theta_T + (1 - \alpha) \theta_S, \qquad
           \alpha = \min(1 - \alpha_b, \alpha_{max}), \quad \alpha_b = (d - d_{min}) / d

    with :math:`\alpha_{max} = 0.99`. The released update blends parameters only and leaves the teacher's batch-norm
    statistics at their initial values (its BN runs in train mode, so they were never read). usseg's teacher
    normalises with its running statistics (BN in eval mode), so floating-point buffers are blended with the same
    :math:`\alpha`; ``blend_buffers=False`` reproduces the released parameters-only update. Under
    ``torch.distributed`` the teacher is broadcast from rank 0 after every update, so all ranks hold the same one.

    Args:
        teacher: the BMA teacher network (same architecture as ``student``; never trained by an optimizer).
        student: the teaching modality's network (a DDP wrapper is looked through).
        evaluator: an evaluator of ``student`` on the validation split; None means :meth:`update` is called by hand.
        metric_name: the key of ``evaluator.state.metrics`` to rank by.
        pool_size: number of best epochs kept (6 as released).
        start_epoch: the pool is fed from epoch ``start_epoch + 1`` (``T_epoch = 10`` as released), 0-based.
        stop_epoch: and up to epoch ``stop_epoch - 1`` (``M2_epoch = 51``, the start of stage 2), 0-based.
        max_alpha: :math:`\alpha_{max}`, in [0, 1].
        blend_buffers: blend batch-norm running statistics too.

    Raises:
        ValueError: a negative or inconsistent epoch, a pool size < 1, or ``max_alpha`` outside [0, 1].
    """

    def __init__(
        self,
        teacher: nn.Module,
        student: nn.Module,
        evaluator: Engine | None = None,
        metric_name: str = "val_mean_dice",
        pool_size: int = 6,
        start_epoch: int = 10,
        stop_epoch: int = 51,
        max_alpha: float = 0.99,
        blend_buffers: bool = True,
    ) -> None:
        self.pool_size = _check_int("pool_size", pool_size, 1)
        self.start_epoch = _check_int("start_epoch", start_epoch, -1)
        self.stop_epoch = _check_int("stop_epoch", stop_epoch, 0)
        if isinstance(max_alpha, bool) or not isinstance(max_alpha, (int, float)) or not 0.0 <= max_alpha <= 1.0:
            raise ValueError(f"max_alpha must be a number in [0, 1], got {max_alpha!r}.")
        self.teacher, self.student, self.evaluator = teacher, student, evaluator
        self.metric_name = metric_name
        self.max_alpha = float(max_alpha)
        self.blend_buffers = bool(blend_buffers)
        self.pool: list[tuple[int, float]] = []  # (0-based epoch, validation Dice)
        self.initialized = False
        self.last_alpha: float | None = None
        for param in _unwrap(teacher).parameters():
            param.requires_grad_(False)  # the teacher learns only through blending

    # -- the pool rules, usable without an engine ---------------------------------------------------------------

    def in_window(self, epoch: int) -> bool:
        """Whether the 0-based ``epoch`` feeds the pool (``start_epoch < epoch < stop_epoch``)."""
        return self.start_epoch < epoch < self.stop_epoch

    def update(self, dice: float, epoch: int) -> str:
        """Apply the pool rule for validation Dice ``dice`` at 0-based ``epoch``.

        Returns:
            What happened: ``"pooled"``, ``"initialized"``, ``"replaced"`` (and blended) or ``"kept"``.

        Raises:
            ValueError: ``dice`` is not a finite number.
        """
        dice = float(dice)
        if not math.isfinite(dice):
            raise ValueError(f"validation Dice of epoch {epoch} is not finite ({dice}); cannot rank it.")
        if len(self.pool) < self.pool_size:
            self.pool.append((int(epoch), dice))
            return "pooled"
        if epoch == self.start_epoch + 1 + self.pool_size:
            self.copy_student()
            return "initialized"
        worst = min(range(len(self.pool)), key=lambda i: (self.pool[i][1], self.pool[i][0]))
        worst_dice = self.pool[worst][1]
        if dice > worst_dice:
            self.pool[worst] = (int(epoch), dice)
            alpha_b = (dice - worst_dice) / dice
            self.blend(min(1.0 - alpha_b, self.max_alpha))
            return "replaced"
        return "kept"

    @torch.no_grad()
    def blend(self, alpha: float) -> None:
        """``teacher <- alpha * teacher + (1 - alpha) * student`` (parameters, and float buffers if configured)."""
        teacher, student = _unwrap(self.teacher), _unwrap(self.student)
        pairs = list(zip(teacher.parameters(), student.parameters()))
        if self.blend_buffers:
            pairs += [(t, s) for t, s in zip(teacher.buffers(), student.buffers()) if t.is_floating_point()]
        for target, source in pairs:
            target.mul_(alpha).add_(source.detach().to(target.dtype), alpha=1.0 - alpha)
        self.initialized = True
        self.last_alpha = float(alpha)
        self._broadcast()

    @torch.no_grad()
    def copy_student(self) -> None:
        """Make the teacher an exact copy of the student (weights and all buffers)."""
        _unwrap(self.teacher).load_state_dict(_unwrap(self.student).state_dict())
        self.initialized = True
        self.last_alpha = 0.0
        self._broadcast()

    def _broadcast(self) -> None:
        # the evaluator's metric is gathered over ranks, so every rank takes the same decision; buffers of a DDP
        # student are rank-local, so rank 0's blended teacher is made everyone's
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            for tensor in _unwrap(self.teacher).state_dict().values():
                dist.broadcast(tensor, src=0)

    # -- ignite -----------------------------------------------------------------------------------------------------

    def attach(self, engine: Engine) -> None:
        if not engine.has_event_handler(self, Events.EPOCH_COMPLETED):
            engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        epoch = engine.state.epoch - 1
        if not self.in_window(epoch) or self.evaluator is None:
            return
        # a ValidationHandler attached before this handler may have validated this epoch already: reuse its result
        # (MONAI's evaluator.run(global_epoch) leaves state.epoch at the trainer's epoch)
        if getattr(self.evaluator.state, "epoch", None) != engine.state.epoch or not self.evaluator.state.metrics:
            self.evaluator.run(engine.state.epoch)
        metrics = self.evaluator.state.metrics
        if self.metric_name not in metrics:
            raise KeyError(f"BMA pool: the evaluator has no metric {self.metric_name!r}; it has {sorted(metrics)}.")
        action = self.update(metrics[self.metric_name], epoch)
        logger.info("BMA pool, epoch %d: %s=%.4f -> %s", epoch, self.metric_name, metrics[self.metric_name], action)

    # -- checkpointing ------------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "pool_epochs": [epoch for epoch, _ in self.pool],
            "pool_dice": [dice for _, dice in self.pool],
            "initialized": self.initialized,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.pool = [(int(e), float(d)) for e, d in zip(state["pool_epochs"], state["pool_dice"])]
        self.initialized = bool(state["initialized"])


class PhaseSwitchHandler:
    """Switch a mutual-learning trainer to stage 2 (PReL) at ``switch_epoch`` and drive its WP2 weight.

    At every ``EPOCH_STARTED`` it sets ``engine.phase`` to 1 for 0-based epochs ``< switch_epoch`` and to 2 after,
    and ``engine.loss_weights["teach_self"]`` to :func:`wp2_weight`. The phase follows from the epoch alone, so a
    resumed run is in the right phase without stored state. When stage 2 starts before the BMA teacher was ever
    set (a short run, or ``switch_epoch <= start_epoch + 1 + pool_size``), the teacher is copied from its student
    with a warning, instead of teaching with random weights.

    Args:
        switch_epoch: the first 0-based epoch of stage 2 (``M2_epoch = 51`` as released); a value >= ``max_epochs``
            never switches (stage 1 only).
        wp2_schedule: one of :data:`WP2_SCHEDULES` (3 as released).
        teacher_handler: the :class:`BMATeacherHandler` whose teacher stage 2 uses.

    Raises:
        ValueError: a negative ``switch_epoch`` or an unknown ``wp2_schedule``.
    """

    def __init__(
        self, switch_epoch: int, wp2_schedule: int = 3, teacher_handler: BMATeacherHandler | None = None
    ) -> None:
        self.switch_epoch = _check_int("switch_epoch", switch_epoch, 0)
        if wp2_schedule not in WP2_SCHEDULES:
            raise ValueError(f"wp2_schedule must be one of {WP2_SCHEDULES}, got {wp2_schedule!r}.")
        self.wp2_schedule = wp2_schedule
        self.teacher_handler = teacher_handler
        self.phase = 1

    def phase_of(self, epoch: int) -> int:
        """The stage (1 or 2) of a 0-based ``epoch``."""
        return 1 if epoch < self.switch_epoch else 2

    def attach(self, engine: Engine) -> None:
        if not hasattr(engine, "phase") or not hasattr(engine, "loss_weights"):
            raise TypeError(f"{type(engine).__name__} has no `phase`; PhaseSwitchHandler drives MutualLearningTrainer.")
        if not engine.has_event_handler(self, Events.EPOCH_STARTED):
            engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        epoch = engine.state.epoch - 1
        phase = self.phase_of(epoch)
        if phase == 2 and self.teacher_handler is not None and not self.teacher_handler.initialized:
            logger.warning(
                "stage 2 starts at epoch %d but the BMA teacher was never set (pool window %d < epoch < %d); "
                "the teacher starts as a copy of its student.",
                epoch,
                self.teacher_handler.start_epoch,
                self.teacher_handler.stop_epoch,
            )
            self.teacher_handler.copy_student()
        if phase != self.phase:
            logger.info("epoch %d: mutual-learning stage %d begins.", epoch, phase)
        self.phase = phase
        engine.phase = phase
        engine.loss_weights["teach_self"] = wp2_weight(
            epoch, self.switch_epoch, engine.state.max_epochs, self.wp2_schedule
        )

    def state_dict(self) -> dict[str, Any]:
        return {"phase": self.phase, "switch_epoch": self.switch_epoch}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if int(state["switch_epoch"]) != self.switch_epoch:
            raise ValueError(
                f"the checkpoint switched to stage 2 at epoch {state['switch_epoch']}, this run at "
                f"{self.switch_epoch}; resume with the same switch_epoch."
            )
        self.phase = int(state["phase"])
