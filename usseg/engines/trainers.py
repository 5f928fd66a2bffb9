# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""Trainers: MONAI's ``SupervisedTrainer`` with device-agnostic mixed precision, and the semi-supervised base.

Every usseg trainer runs the same iteration, written once in :meth:`SupervisedTrainer._iteration`:

1. zero the gradients of every optimizer (respecting gradient accumulation);
2. :meth:`~SupervisedTrainer.forward` under autocast, then ``FORWARD_COMPLETED``;
3. :meth:`~SupervisedTrainer.compute_losses` in fp32, then ``LOSS_COMPLETED``;
4. backward (through a ``GradScaler`` for fp16), then ``BACKWARD_COMPLETED``;
5. a step of every optimizer, then ``MODEL_COMPLETED`` (where MONAI decollates and post-processes).

This is MONAI's ``IterationEvents`` order, so MONAI handlers, decollation and post-processing work unchanged. A
method is a subclass that overrides ``forward`` and ``compute_losses`` only (and ``optimizers``/``networks`` when
it trains several networks). ``compute_losses`` returns named terms; all of them land in ``engine.state.output``,
where ``StatsHandler``, TensorBoard and MLflow log them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.engines import SupervisedTrainer as MonaiSupervisedTrainer
from monai.engines.utils import IterationEvents, default_prepare_batch
from monai.utils import CommonKeys as Keys
from torch import nn

from usseg.engines.prepare_batch import PrepareWeakStrongBatch
from usseg.engines.pseudo_label import ConfidenceThreshold
from usseg.engines.utils import (
    autocast,
    needs_grad_scaler,
    plain_tensor,
    resolve_device,
    to_channels_last,
    unpack_batch,
)
from usseg.errors import DatalistError, require_bool
from usseg.losses.consistency import MaskedCrossEntropyLoss

__all__ = ["SupervisedTrainer", "SemiSupervisedTrainer"]


def _scalar(value: Any) -> Any:
    return value.detach() if isinstance(value, torch.Tensor) else value


class SupervisedTrainer(MonaiSupervisedTrainer):
    """A drop-in ``monai.engines.SupervisedTrainer`` that autocasts on any device and can train channels-last.

    Differences from MONAI's trainer (everything else, including the constructor arguments, is MONAI's):

    - ``precision`` replaces ``amp``: ``"fp32"``, ``"bf16"`` (CPU or CUDA) or ``"fp16"`` (CUDA, with a GradScaler).
      MONAI only autocasts on CUDA, so on a CPU its ``amp=True`` silently trains in fp32.
    - the loss is computed in fp32 from the autocast prediction, so Dice sums over many pixels keep their precision;
    - ``channels_last=True`` converts the network and 4D inputs to the channels-last layout;
    - the network receives plain tensors: MetaTensor metadata is kept in ``engine.state.output`` but skipped in the
      forward pass, where its dispatch overhead buys nothing;
    - ``device="auto"`` picks ``cuda:<LOCAL_RANK>`` or the CPU;
    - ``loss_weights`` is a dict of named loss weights, read by subclasses and driven by
      ``usseg.handlers.RampUpHandler``.

    Args:
        device: a device, or ``"auto"``.
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"``.
        channels_last: use the channels-last memory format for the network and its 4D inputs.
        loss_weights: initial named loss weights.
        kwargs: every other argument of ``monai.engines.SupervisedTrainer`` (``amp`` is rejected: use ``precision``).
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Iterable,
        network: nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_function: Callable,
        precision: str = "fp32",
        channels_last: bool = False,
        loss_weights: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        if kwargs.pop("amp", False):
            raise ValueError("usseg trainers take precision='bf16' or 'fp16' instead of amp=True.")
        if kwargs.get("compile"):
            raise ValueError("compile=True is not supported by usseg trainers yet; compile the network yourself.")
        device = resolve_device(device)
        self.precision = precision
        # set before MONAI's constructor, which attaches the handlers that read it (RampUpHandler)
        self.loss_weights: dict[str, float] = {k: float(v) for k, v in (loss_weights or {}).items()}
        scaler_needed = needs_grad_scaler(device, precision)  # validates precision against the device
        require_bool(channels_last=channels_last)
        if channels_last:
            network = network.to(memory_format=torch.channels_last)
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            train_data_loader=train_data_loader,
            network=network,
            optimizer=optimizer,
            loss_function=loss_function,
            amp=False,
            **kwargs,
        )
        self.channels_last = channels_last
        self.grad_scaler = torch.amp.GradScaler(device.type) if scaler_needed else None

    # -- the parts a method overrides ---------------------------------------------------------------------------

    @property
    def networks(self) -> list[nn.Module]:
        """Every network this trainer updates (put in train mode each iteration)."""
        return [self.network]

    @property
    def optimizers(self) -> list[torch.optim.Optimizer]:
        """Every optimizer stepped each iteration."""
        return [self.optimizer]

    def close_data_iterators(self) -> None:
        """Stop the current data iterator (and its prefetch thread, for a ``ThreadDataLoader``) before a new epoch.

        ignite keeps the iterator privately; ``EpochSeedHandler`` calls this before it re-seeds the generators.
        """
        iterator = getattr(self, "_dataloader_iter", None)
        if hasattr(iterator, "close"):
            iterator.close()

    def network_input(self, tensor: torch.Tensor) -> torch.Tensor:
        """A batch as the network wants it: a plain tensor, channels-last when configured."""
        tensor = plain_tensor(tensor)
        return to_channels_last(tensor) if self.channels_last else tensor

    def forward(self, engine: SupervisedTrainer, batchdata: Any) -> dict[str, Any]:
        """Run the networks on one batch; fill ``engine.state.output`` (IMAGE, LABEL, PRED) and return what the
        losses need. Runs under autocast."""
        batch = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        inputs, targets, args, kwargs = unpack_batch(batch)
        engine.state.output = {Keys.IMAGE: inputs, Keys.LABEL: targets}
        pred = engine.inferer(engine.network_input(inputs), engine.network, *args, **kwargs)
        engine.state.output[Keys.PRED] = pred
        return {Keys.PRED: pred, Keys.LABEL: plain_tensor(targets)}

    def compute_losses(self, engine: SupervisedTrainer, forward_output: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Return the named loss terms; ``"loss"`` is the total that is back-propagated. Runs in fp32."""
        pred = forward_output[Keys.PRED].float()
        return {Keys.LOSS: engine.loss_function(pred, forward_output[Keys.LABEL]).mean()}

    # -- the iteration, written once ----------------------------------------------------------------------------

    def _accumulation_flags(self, engine: SupervisedTrainer) -> tuple[bool, bool]:
        """(zero the gradients now?, step the optimizers now?) under ``accumulation_steps``, as MONAI decides."""
        acc = engine.accumulation_steps
        if acc <= 1:
            return True, True
        epoch_length = engine.state.epoch_length
        if epoch_length is not None:
            local = (engine.state.iteration - 1) % epoch_length
            return local % acc == 0, (local + 1) % acc == 0 or (local + 1) == epoch_length
        local = engine.state.iteration - 1
        return local % acc == 0, (local + 1) % acc == 0

    def _iteration(self, engine: SupervisedTrainer, batchdata: Any) -> dict:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        should_zero_grad, should_step = engine._accumulation_flags(engine)
        for net in engine.networks:
            net.train()
        if should_zero_grad:
            for opt in engine.optimizers:
                opt.zero_grad(set_to_none=engine.optim_set_to_none)

        with autocast(engine.state.device, engine.precision):
            forward_output = engine.forward(engine, batchdata)
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)

        losses = engine.compute_losses(engine, forward_output)
        if Keys.LOSS not in losses:
            raise KeyError(f"compute_losses must return the total under '{Keys.LOSS}', got {sorted(losses)}.")
        loss = losses[Keys.LOSS]
        output = engine.state.output
        output[Keys.LOSS] = loss
        output.update({name: _scalar(value) for name, value in losses.items() if name != Keys.LOSS})
        output.update({f"{name}_weight": weight for name, weight in engine.loss_weights.items()})
        engine.fire_event(IterationEvents.LOSS_COMPLETED)

        acc = engine.accumulation_steps
        scaled = loss / acc if acc > 1 else loss
        if engine.grad_scaler is not None:
            engine.grad_scaler.scale(scaled).backward()
        else:
            scaled.backward()
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        if should_step:
            for opt in engine.optimizers:
                if engine.grad_scaler is not None:
                    engine.grad_scaler.step(opt)
                else:
                    opt.step()
            if engine.grad_scaler is not None:
                engine.grad_scaler.update()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output


class SemiSupervisedTrainer(SupervisedTrainer):
    """Labeled and unlabeled streams in one iteration; by default FixMatch [0] on weak/strong views.

    Each iteration takes one labeled batch (the engine's loader) and one unlabeled batch. An epoch is
    ``max(len(labeled), len(unlabeled))`` iterations unless ``epoch_length`` is given; the shorter loader is started
    again when it runs out (a fresh pass with a fresh shuffle, never ``itertools.cycle``, which would replay the
    cached batches of its first pass). ``set_epoch`` is called on both loaders' samplers at every pass, so
    ``DistributedSampler`` shuffles differently each time.

    The default ``forward``/``compute_losses`` implement FixMatch for segmentation or classification:

    .. math::
        \\mathcal{L} = \\mathcal{L}_{sup}(f(x_l), y_l) + w_{unsup}(t)\\,
        \\mathrm{MaskedCE}\\big(f(x_s), \\hat y(g(x_w))\\big)

    where :math:`g` is the teacher (the network itself, or an EMA copy), :math:`x_w`/:math:`x_s` the weak and strong
    views of the same unlabeled image, and :math:`\\hat y` the pseudo-label policy's targets and mask. The labeled and
    strong batches go through the network in ONE forward pass (as in FixMatch): batch-norm sees both, and a
    ``DistributedDataParallel`` network is called once per backward. Methods override ``forward``/``compute_losses``.

    - [0] Sohn et al., 2020, FixMatch, https://arxiv.org/abs/2001.07685

    Args:
        unlabeled_data_loader: loader of unlabeled batches (with ``image_weak``/``image_strong`` by default).
        unlabeled_loss_function: ``(student_logits, target, mask) -> loss``; default ``MaskedCrossEntropyLoss()``.
        pseudo_label: ``probs -> (target, mask)``; default ``ConfidenceThreshold(0.95)``.
        teacher: network that labels the weak view; ``None`` uses the trained network itself (FixMatch). Pass
            ``ignite.handlers.EMAHandler(...).ema_model`` for a mean teacher.
        prepare_unlabeled: ``(batch, device, non_blocking) -> (weak, strong)``; default ``PrepareWeakStrongBatch()``.
        unlabeled_weight: initial ``loss_weights["unsup"]`` (a ``RampUpHandler`` may drive it).
        other arguments: as :class:`SupervisedTrainer`.

    Raises:
        DatalistError: when the unlabeled loader has no items.
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Iterable,
        unlabeled_data_loader: Iterable,
        network: nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_function: Callable,
        unlabeled_loss_function: Callable | None = None,
        pseudo_label: Callable | None = None,
        teacher: nn.Module | None = None,
        prepare_unlabeled: Callable | None = None,
        unlabeled_weight: float = 1.0,
        epoch_length: int | None = None,
        prepare_batch: Callable = default_prepare_batch,
        **kwargs: Any,
    ) -> None:
        for name, loader in (("labeled", train_data_loader), ("unlabeled", unlabeled_data_loader)):
            if hasattr(loader, "__len__") and len(loader) == 0:
                raise DatalistError(
                    f"{name} data loader",
                    f"the {name} set is empty; a semi-supervised run needs labeled and unlabeled items "
                    "(check the datalist's splits, or train the supervised bundle instead).",
                )
        kwargs["loss_weights"] = {"unsup": float(unlabeled_weight), **(kwargs.get("loss_weights") or {})}
        if epoch_length is None and hasattr(train_data_loader, "__len__") and hasattr(unlabeled_data_loader, "__len__"):
            epoch_length = max(len(train_data_loader), len(unlabeled_data_loader))
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            train_data_loader=train_data_loader,
            network=network,
            optimizer=optimizer,
            loss_function=loss_function,
            epoch_length=epoch_length,
            prepare_batch=prepare_batch,
            **kwargs,
        )
        self.unlabeled_data_loader = unlabeled_data_loader
        self.unlabeled_loss_function = (
            MaskedCrossEntropyLoss() if unlabeled_loss_function is None else unlabeled_loss_function
        )
        self.pseudo_label = ConfidenceThreshold() if pseudo_label is None else pseudo_label
        self.teacher = teacher
        self.prepare_unlabeled = PrepareWeakStrongBatch() if prepare_unlabeled is None else prepare_unlabeled
        self._unlabeled_iter: Iterator | None = None
        self._unlabeled_passes = 0
        self._labeled_passes = 0
        self.add_event_handler(Events.EPOCH_STARTED, self._restart_unlabeled_stream)
        self.add_event_handler(Events.DATALOADER_STOP_ITERATION, self._reshuffle_labeled_stream)

    # -- the two streams ----------------------------------------------------------------------------------------

    @staticmethod
    def _set_sampler_epoch(loader: Iterable, epoch: int) -> None:
        sampler = getattr(loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)

    def _pass_seed(self, passes: int) -> int:
        # unique per (epoch, pass) and derived from engine state only, so a resumed run reproduces it
        return self.state.epoch * 10_000 + passes

    def close_data_iterators(self) -> None:
        super().close_data_iterators()
        self._close_unlabeled_iterator()

    def _close_unlabeled_iterator(self) -> None:
        if hasattr(self._unlabeled_iter, "close"):  # stop a ThreadDataLoader's prefetch thread
            self._unlabeled_iter.close()
        self._unlabeled_iter = None

    def _restart_unlabeled_stream(self, engine: Engine) -> None:
        self._close_unlabeled_iterator()
        self._unlabeled_passes, self._labeled_passes = 0, 0

    def _reshuffle_labeled_stream(self, engine: Engine) -> None:
        # ignite restarts the labeled loader when it runs out inside an epoch; without a new sampler epoch a
        # DistributedSampler would replay the same order
        self._labeled_passes += 1
        self._set_sampler_epoch(self.data_loader, self._pass_seed(self._labeled_passes))

    def next_unlabeled(self) -> Any:
        """The next unlabeled batch, starting a new pass (new shuffle) when the loader runs out."""
        for _ in range(2):
            if self._unlabeled_iter is None:
                self._set_sampler_epoch(self.unlabeled_data_loader, self._pass_seed(self._unlabeled_passes))
                self._unlabeled_passes += 1
                self._unlabeled_iter = iter(self.unlabeled_data_loader)
            try:
                return next(self._unlabeled_iter)
            except StopIteration:
                self._unlabeled_iter = None
        raise DatalistError(
            "unlabeled data loader", "yielded no batch (empty unlabeled set, or drop_last with too few)."
        )

    # -- FixMatch by default ------------------------------------------------------------------------------------

    def forward(self, engine: SemiSupervisedTrainer, batchdata: Any) -> dict[str, Any]:
        batch = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        inputs, targets, args, kwargs = unpack_batch(batch)
        weak, strong = engine.prepare_unlabeled(engine.next_unlabeled(), engine.state.device, engine.non_blocking)
        engine.state.output = {Keys.IMAGE: inputs, Keys.LABEL: targets}
        with torch.no_grad():
            teacher = engine.network if engine.teacher is None else engine.teacher
            teacher_logits = teacher(engine.network_input(weak))
        num_labeled = inputs.shape[0]
        both = torch.cat([engine.network_input(inputs), engine.network_input(strong)], dim=0)
        logits = engine.inferer(both, engine.network, *args, **kwargs)
        pred, student_logits = logits[:num_labeled], logits[num_labeled:]
        engine.state.output[Keys.PRED] = pred
        return {
            Keys.PRED: pred,
            Keys.LABEL: plain_tensor(targets),
            "student": student_logits,
            "teacher": teacher_logits,
        }

    def compute_losses(self, engine: SemiSupervisedTrainer, forward_output: dict[str, Any]) -> dict[str, torch.Tensor]:
        sup = engine.loss_function(forward_output[Keys.PRED].float(), forward_output[Keys.LABEL]).mean()
        target, mask = engine.pseudo_label(forward_output["teacher"].float().softmax(dim=1))
        unsup = engine.unlabeled_loss_function(forward_output["student"].float(), target, mask)
        total = sup + engine.loss_weights["unsup"] * unsup
        return {Keys.LOSS: total, "sup_loss": sup, "unsup_loss": unsup, "accept_rate": mask.float().mean()}
