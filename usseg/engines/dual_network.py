# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""The dual-network semi-supervised trainer (Wang, Curran, Silvestre, ISBI 2025; methods.md section 3) and its
helpers: the step-wise ramp of the released code, the unlabeled-batch preparation, delayed model selection, a timer
of inference per image and a group of report handlers for the per-network and ensemble reports.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from ignite.engine import Engine, Events
from monai.engines.utils import IterationEvents, PrepareBatch, default_prepare_batch
from monai.utils import CommonKeys as Keys
from torch import nn

from usseg.engines.trainers import SemiSupervisedTrainer
from usseg.engines.utils import plain_tensor, to_channels_last, unpack_batch
from usseg.handlers.schedules import RampUpHandler
from usseg.losses.cross_network_contrast import CrossNetworkContrastLoss
from usseg.losses.cross_supervision import CrossSupervisionLoss, SupervisedDiceCELoss

__all__ = [
    "DualNetworkTrainer",
    "PrepareImageBatch",
    "StepwiseRampUpHandler",
    "DelayedModelSelection",
    "InferenceTimer",
    "ReportGroup",
]


class PrepareImageBatch(PrepareBatch):
    """Return the image tensor of an unlabeled batch (one view: the method augments both streams alike).

    Args:
        image_key: batch key of the images.
    """

    def __init__(self, image_key: str = "image") -> None:
        if not isinstance(image_key, str) or not image_key:
            raise ValueError(f"image_key must be a non-empty string, got {image_key!r}.")
        self.image_key = image_key

    def __call__(
        self,
        batchdata: Mapping[str, Any],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> torch.Tensor:
        if self.image_key not in batchdata:
            raise KeyError(f"unlabeled batch has no {self.image_key!r}; found keys {sorted(batchdata)}.")
        return torch.as_tensor(batchdata[self.image_key]).to(device=device, non_blocking=non_blocking, **kwargs)


class StepwiseRampUpHandler(RampUpHandler):
    """:class:`~usseg.handlers.RampUpHandler` on a step-wise clock: ``max_value * ramp((t - start) // step, length)``.

    The released dual-network code computes ``0.1 * sigmoid_rampup(iter_num // 150, 200)`` with the zero-based
    iteration ``iter_num``: a staircase that reaches 0.1 after 30,000 iterations. ``RampUpHandler`` alone ramps
    continuously over ``length`` iterations; this subclass adds the ``step`` quantisation (``step=1`` is
    ``RampUpHandler``).

    Args:
        name: the key of ``engine.loss_weights`` to drive.
        max_value: the weight reached at the end of the ramp.
        length: ramp length in steps of ``step`` iterations.
        shape: ``"sigmoid"``, ``"linear"`` or ``"cosine"``.
        start: the iteration at which the ramp begins (the weight is 0 before it).
        step: iterations per ramp step.
    """

    def __init__(
        self, name: str, max_value: float, length: int, shape: str = "sigmoid", start: int = 0, step: int = 1
    ) -> None:
        super().__init__(name, max_value, length, shape, start)
        if int(step) < 1:
            raise ValueError(f"step must be >= 1, got {step}.")
        self.step = int(step)

    def value(self, iteration: int) -> float:
        """The weight for a 1-based ``iteration`` (ignite's count: the first iteration is 1)."""
        elapsed = iteration - 1 - self.start
        return 0.0 if elapsed < 0 else self.max_value * self.ramp(elapsed // self.step, self.length)


class DualNetworkTrainer(SemiSupervisedTrainer):
    r"""Two networks of different architectures that supervise each other on unlabeled images (methods.md §3).

    Each iteration takes a labeled batch (the engine's loader, e.g. 2 images) and an unlabeled batch (e.g. 6
    images) from two independent loaders: the two-stream sampling of the released code without its duplicated
    labeled set. Both networks see the concatenated batch in one forward pass each (batch norm sees all 8 images, as
    released). With :math:`f^1, f^2` the networks, :math:`L`/:math:`U` the labeled and unlabeled parts:

    .. math::
        \mathcal{L} = \sum_{k=1}^{2} \Big[\mathcal{L}_{sup}(f^k(x_L), y) + \lambda(t)\,
            \mathcal{L}_{cross}(f^k(x_U), \mathrm{sg}(f^{3-k}(x_U)))\Big] + \beta\,\mathcal{L}_{contrast}(z^1, z^2)

    - :math:`\mathcal{L}_{sup}` = ``loss_function``, by default ``0.5 (CE + Dice)`` (:class:`SupervisedDiceCELoss`);
    - :math:`\mathcal{L}_{cross}` = ``cross_supervision_loss``: soft Dice against the other network's detached
      probabilities (default) or hard-argmax cross-entropy (:class:`~usseg.losses.CrossSupervisionLoss`);
    - :math:`\lambda(t)` = ``loss_weights["unsup"]``, driven by a :class:`StepwiseRampUpHandler`
      (``0.1 * sigmoid_rampup(t // 150, 200)`` as released);
    - :math:`\mathcal{L}_{contrast}` = ``contrastive_loss`` on the projected deepest representations :math:`z^k`
      (``usseg.networks.dual.ProjectedSegmenter``), weight :math:`\beta` = ``loss_weights["contrast"]`` (0.5). It
      receives class weights for the prototype pairing: the one-hot labels for labeled rows, the OTHER network's
      detached probabilities for unlabeled rows.

    ``contrastive_inactive=True`` (``compat.contrastive_inactive``) sets :math:`\beta = 0`: numerically the released
    behaviour, whose contrastive term is identically zero. The term is still computed (and multiplied by 0) so the
    projection heads take part in every backward, which ``DistributedDataParallel`` requires.

    ``engine.state.output`` holds ``loss``, ``loss_net1``/``loss_net2`` (each network's total),
    ``sup_loss_net1``/``sup_loss_net2``, ``cross_loss_net1``/``cross_loss_net2``, ``contrast_loss``,
    ``pseudo_agreement`` (share of unlabeled pixels where the two networks' argmax agree), ``pseudo_foreground_net1``
    / ``pseudo_foreground_net2`` (share of unlabeled pixels each network labels foreground), ``unsup_weight`` and
    ``contrast_weight``. ``pred`` is network 1's prediction of the labeled images.

    Args:
        network: network 1, a module returning ``(logits, embedding map)`` (``ProjectedSegmenter``, or its
            ``DistributedDataParallel`` wrapper).
        network2: network 2, the same contract.
        optimizer: optimizer of network 1 (or of both networks when ``optimizer2`` is ``None``).
        optimizer2: optimizer of network 2; ``None`` when ``optimizer`` covers both.
        loss_function: supervised loss ``(logits, labels) -> scalar``; default :class:`SupervisedDiceCELoss`.
        cross_supervision_loss: ``(logits, other_logits) -> scalar``; default ``CrossSupervisionLoss("soft_dice")``.
        contrastive_loss: ``(z1, z2, class_weights1, class_weights2, num_labeled) -> scalar``; default
            ``CrossNetworkContrastLoss(0.07)``.
        cross_weight: initial :math:`\lambda` (a ramp handler overwrites it every iteration).
        contrastive_weight: :math:`\beta`.
        contrastive_inactive: the released behaviour: :math:`\beta = 0`.
        prepare_unlabeled: ``(batch, device, non_blocking) -> images``; default :class:`PrepareImageBatch`.
        other arguments: as :class:`~usseg.engines.SemiSupervisedTrainer` (``unlabeled_weight``, ``pseudo_label``,
            ``teacher`` and ``unlabeled_loss_function`` are not used by this method and are refused).

    Raises:
        ValueError: a negative weight, or an argument this method does not use.
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Iterable,
        unlabeled_data_loader: Iterable,
        network: nn.Module,
        network2: nn.Module,
        optimizer: torch.optim.Optimizer,
        optimizer2: torch.optim.Optimizer | None = None,
        loss_function: Callable | None = None,
        cross_supervision_loss: Callable | None = None,
        contrastive_loss: Callable | None = None,
        cross_weight: float = 0.0,
        contrastive_weight: float = 0.5,
        contrastive_inactive: bool = False,
        prepare_unlabeled: Callable | None = None,
        epoch_length: int | None = None,
        prepare_batch: Callable = default_prepare_batch,
        **kwargs: Any,
    ) -> None:
        unused = sorted(
            k for k in ("unlabeled_weight", "pseudo_label", "teacher", "unlabeled_loss_function") if k in kwargs
        )
        if unused:
            raise ValueError(f"DualNetworkTrainer does not use {unused}; set cross_weight / the loss objects instead.")
        if float(cross_weight) < 0 or float(contrastive_weight) < 0:
            raise ValueError(f"weights must be >= 0, got cross_weight={cross_weight}, contrast={contrastive_weight}.")
        self.contrastive_inactive = bool(contrastive_inactive)
        weights = {"contrast": 0.0 if self.contrastive_inactive else float(contrastive_weight)}
        kwargs["loss_weights"] = {**weights, **(kwargs.get("loss_weights") or {})}
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            train_data_loader=train_data_loader,
            unlabeled_data_loader=unlabeled_data_loader,
            network=network,
            optimizer=optimizer,
            loss_function=SupervisedDiceCELoss() if loss_function is None else loss_function,
            unlabeled_weight=float(cross_weight),
            prepare_unlabeled=PrepareImageBatch() if prepare_unlabeled is None else prepare_unlabeled,
            epoch_length=epoch_length,
            prepare_batch=prepare_batch,
            **kwargs,
        )
        if self.channels_last:
            network2 = network2.to(memory_format=torch.channels_last)
        self.network2 = network2
        self.optimizer2 = optimizer2
        self.cross_supervision_loss = (
            CrossSupervisionLoss() if cross_supervision_loss is None else cross_supervision_loss
        )
        self.contrastive_loss = CrossNetworkContrastLoss() if contrastive_loss is None else contrastive_loss

    @property
    def networks(self) -> list[nn.Module]:
        return [self.network, self.network2]

    @property
    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.optimizer] if self.optimizer2 is None else [self.optimizer, self.optimizer2]

    def forward(self, engine: DualNetworkTrainer, batchdata: Any) -> dict[str, Any]:
        batch = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        inputs, targets, _, _ = unpack_batch(batch)
        unlabeled = engine.prepare_unlabeled(engine.next_unlabeled(), engine.state.device, engine.non_blocking)
        engine.state.output = {Keys.IMAGE: inputs, Keys.LABEL: targets}
        num_labeled = int(inputs.shape[0])
        both = torch.cat([plain_tensor(inputs), plain_tensor(unlabeled)], dim=0)
        if engine.channels_last:
            both = to_channels_last(both)
        logits1, embeddings1 = engine.network(both)
        logits2, embeddings2 = engine.network2(both)
        engine.state.output[Keys.PRED] = logits1[:num_labeled]
        return {
            Keys.LABEL: plain_tensor(targets),
            "num_labeled": num_labeled,
            "logits1": logits1,
            "logits2": logits2,
            "embeddings1": embeddings1,
            "embeddings2": embeddings2,
        }

    @staticmethod
    def _class_weights(labels: torch.Tensor, own: torch.Tensor, other: torch.Tensor, size: torch.Size) -> torch.Tensor:
        """Per-class weights at the embedding size: one-hot labels (labeled rows), ``other``'s probabilities (the
        rest), area-pooled. ``own`` only gives the class count and dtype."""
        num_classes = own.shape[1]
        index = labels[:, 0] if labels.ndim == own.ndim else labels
        one_hot = F.one_hot(index.long().clamp(0, num_classes - 1), num_classes).movedim(-1, 1).float()
        weights = torch.cat([one_hot, other.detach().float().softmax(dim=1)], dim=0)
        return F.adaptive_avg_pool2d(weights, size)

    def compute_losses(self, engine: DualNetworkTrainer, forward_output: dict[str, Any]) -> dict[str, torch.Tensor]:
        n = forward_output["num_labeled"]
        labels = forward_output[Keys.LABEL]
        logits1, logits2 = forward_output["logits1"].float(), forward_output["logits2"].float()
        sup1 = engine.loss_function(logits1[:n], labels)
        sup2 = engine.loss_function(logits2[:n], labels)
        cross1 = engine.cross_supervision_loss(logits1[n:], logits2[n:])
        cross2 = engine.cross_supervision_loss(logits2[n:], logits1[n:])
        z1, z2 = forward_output["embeddings1"].float(), forward_output["embeddings2"].float()
        size = z1.shape[2:]
        weights1 = self._class_weights(labels, logits1, logits2[n:], size)  # net 1's rows: labels, net 2's beliefs
        weights2 = self._class_weights(labels, logits2, logits1[n:], size)
        contrast = engine.contrastive_loss(z1, z2, weights1, weights2, n)
        lam, beta = engine.loss_weights["unsup"], engine.loss_weights["contrast"]
        loss1 = sup1 + lam * cross1 + 0.5 * beta * contrast  # each network carries half of the shared term
        loss2 = sup2 + lam * cross2 + 0.5 * beta * contrast
        with torch.no_grad():
            argmax1, argmax2 = logits1[n:].argmax(dim=1), logits2[n:].argmax(dim=1)
            statistics = {
                "pseudo_agreement": (argmax1 == argmax2).float().mean(),
                "pseudo_foreground_net1": (argmax1 > 0).float().mean(),
                "pseudo_foreground_net2": (argmax2 > 0).float().mean(),
            }
        return {
            Keys.LOSS: loss1 + loss2,
            "loss_net1": loss1,
            "loss_net2": loss2,
            "sup_loss_net1": sup1,
            "sup_loss_net2": sup2,
            "cross_loss_net1": cross1,
            "cross_loss_net2": cross2,
            "contrast_loss": contrast,
            **statistics,
        }


class DelayedModelSelection:
    """Publish an evaluator's key metric for model selection only once training has passed an iteration.

    At the evaluator's ``EPOCH_COMPLETED`` it writes ``engine.state.metrics[output_name]``: the metric
    ``metric_name`` when the training iteration ``epoch * iterations_per_epoch`` has reached ``start_iteration``,
    else ``floor``. ``epoch`` is the evaluator's, which MONAI's ``ValidationHandler`` sets to the trainer's epoch, so
    the handler needs no reference to the trainer (a config would otherwise refer to it in a cycle). A
    ``CheckpointSaver`` with ``key_metric_name=output_name`` then selects among the validations after
    ``start_iteration`` (the released code starts the search after 8,000 iterations for Swin-UNet, 3,000 for the
    others). Attach it to the evaluator BEFORE that saver, so the value is current when the saver reads it.

    Args:
        metric_name: the evaluator metric to select on.
        output_name: the metric name written for the saver.
        start_iteration: first training iteration whose validation may be selected.
        iterations_per_epoch: training iterations per epoch.
        floor: value published before ``start_iteration`` (below any real score).
    """

    def __init__(
        self,
        metric_name: str,
        output_name: str = "val_selection_metric",
        start_iteration: int = 0,
        iterations_per_epoch: int = 1,
        floor: float = -1.0,
    ) -> None:
        if int(start_iteration) < 0 or int(iterations_per_epoch) < 1:
            raise ValueError(
                f"start_iteration must be >= 0 and iterations_per_epoch >= 1, got {start_iteration} and "
                f"{iterations_per_epoch}."
            )
        if metric_name == output_name:
            raise ValueError(f"output_name must differ from metric_name, got {output_name!r} for both.")
        self.metric_name, self.output_name = metric_name, output_name
        self.start_iteration, self.iterations_per_epoch = int(start_iteration), int(iterations_per_epoch)
        self.floor = float(floor)

    def attach(self, engine: Engine) -> None:
        if not engine.has_event_handler(self, Events.EPOCH_COMPLETED):
            engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if self.metric_name not in engine.state.metrics:
            raise KeyError(f"the evaluator computed no {self.metric_name!r}; it has {sorted(engine.state.metrics)}.")
        ready = engine.state.epoch * self.iterations_per_epoch >= self.start_iteration
        engine.state.metrics[self.output_name] = engine.state.metrics[self.metric_name] if ready else self.floor


class InferenceTimer:
    """Measure an evaluator's wall-clock time per image of the network forward pass(es).

    The clock runs from ``ITERATION_STARTED`` (the batch is loaded) to MONAI's ``IterationEvents.FORWARD_COMPLETED``
    (every network has run: both for an ``EnsembleEvaluator``), so it counts the move to the device and the forward
    passes, not data loading, post-processing or metrics. Writes ``engine.state.metrics[name]`` (seconds per image
    over the run) at ``EPOCH_COMPLETED``. The figure is as good as the machine is quiet; state the hardware with it.

    Args:
        name: the metric name.
    """

    def __init__(self, name: str = "seconds_per_image") -> None:
        self.name = name
        self._total, self._images, self._started = 0.0, 0, 0.0

    def attach(self, engine: Engine) -> None:
        for event, handler in (
            (Events.EPOCH_STARTED, self._reset),
            (Events.ITERATION_STARTED, self._start),
            (IterationEvents.FORWARD_COMPLETED, self._stop),
            (Events.EPOCH_COMPLETED, self._publish),
        ):
            if not engine.has_event_handler(handler, event):
                engine.add_event_handler(event, handler)

    def _reset(self, engine: Engine) -> None:
        self._total, self._images = 0.0, 0

    def _start(self, engine: Engine) -> None:
        self._started = time.perf_counter()

    def _stop(self, engine: Engine) -> None:
        self._total += time.perf_counter() - self._started
        batch = engine.state.batch
        images = batch.get(Keys.IMAGE) if isinstance(batch, Mapping) else None
        self._images += int(images.shape[0]) if isinstance(images, torch.Tensor) else len(batch)

    def _publish(self, engine: Engine) -> None:
        engine.state.metrics[self.name] = self._total / self._images if self._images else math.nan


class ReportGroup:
    """Several report handlers that take one ``prefix``, for ``usseg.engines.evaluate_checkpoints``.

    ``evaluate_checkpoints`` sets ``report_handler.prefix = "<checkpoint>_"`` before each run; this group passes it
    on as ``"<checkpoint>_<member>_"`` to each member (e.g. ``net1``, ``net2``, ``ensemble``), so every
    (checkpoint, network) pair gets its own report files.

    Args:
        handlers: ``{member name: handler with a prefix attribute}``.
    """

    def __init__(self, handlers: Mapping[str, Any]) -> None:
        if not handlers or any(not hasattr(h, "prefix") for h in handlers.values()):
            raise ValueError(f"handlers must be a non-empty mapping of handlers with a prefix, got {handlers!r}.")
        self.handlers = dict(handlers)
        self._prefix = ""

    @property
    def prefix(self) -> str:
        return self._prefix

    @prefix.setter
    def prefix(self, value: str) -> None:
        self._prefix = value
        for member, handler in self.handlers.items():
            handler.prefix = f"{value}{member}_"
