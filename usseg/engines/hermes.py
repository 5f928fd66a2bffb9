# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""Hermes training and evaluation engines: joint classification and segmentation with dual-threshold pseudo-labels.

:class:`HermesTrainer` trains a :class:`~usseg.networks.hermes.HermesSegmentationNet` and a
:class:`~usseg.networks.hermes.HermesClassificationNet` in one loop [0] (methods.md section 1). Per iteration it
takes a labeled batch ``(image, mask, class)`` and an unlabeled batch with a weak and a strong view, and
minimises ``Loss_cls + Loss_seg``:

- ``Loss_cls = w_cls (CE_l + u * w_cu * CE_u + c * w_cc * SupCon)``, with ``CE_u`` the FixMatch cross-entropy of
  the strong view against weak pseudo-labels kept by the "and" dual threshold, averaged over all samples, and SupCon
  on the (strong, weak) image embeddings weighted by the same mask;
- ``Loss_seg = w_seg (Seg_l + u * w_su * Dice_u + c * w_sc * PixelContrast) + w_itc(t) * ITC``, with ``Seg_l =
  0.25 CE + 0.25 (1 - softDice_tumour)``, ``Dice_u`` the tumour soft Dice of the strong view against the hard weak
  pseudo-labels over the pixels the "or" dual threshold keeps, the pixel contrast on the mean weak/strong pixel
  embedding with low-confidence and uncertain pixels ignored, and ``ITC = 1 - cos`` between the two networks'
  consistency vectors of the strong view;
- ``c`` is 0 before ``contrast_start_iteration`` (the released "epoch > 10") and 1 after; ``u`` is
  ``loss_weights["unsup"]`` (1, or ramped by a ``RampUpHandler``); the defaults are the released weights 1.1 /
  0.1 / 0.2 and 0.5 / 0.1 / 0.8.

Update order (fixes methods.md section 1.8 item 10): both losses are summed and back-propagated once, then both
optimizers step, through one ``GradScaler`` updated once per iteration (the base class). ``itc_gradient="both"``
(default) lets ITC train both consistency heads and both encoders; ``"seg_only"`` detaches the classification side,
which is what the released code would effectively do if it ran (the classification consistency head never trains).

IAS (``HermesClassificationNet(ias=True)``): ``ias_views="labeled_only"`` (released ``cls_train.py``) fuses the
segmentation maps into the classifier for the labeled images only, ``"all"`` for every view;
``detach_seg_features=True`` (released effective behaviour) keeps the classification losses out of the segmentation
network. ``supervised_only=True`` is the SupOnly baseline: the same networks, labeled batches and supervised losses,
without the unlabeled stream.

Labeled stream (methods.md 1.4 and 1.8 item 12): by default every pass over the labeled loader is a fresh draw (new
shuffle, new augmentation), as in :class:`~usseg.engines.trainers.SemiSupervisedTrainer`.
``compat_cycle_cached_labeled=True`` reproduces the released ``zip(unlabeled, itertools.cycle(labeled))``: within one
pass over the unlabeled set, the batches of the first labeled pass are stored and replayed (the same tensors, in the
same order); the next unlabeled pass starts a fresh labeled pass (:class:`CycleCachedLoader`).

Input normalisation (``none`` as released, or ImageNet's) is not done here nor in the data pipeline: it is the
first step of both networks (``normalization=`` of :class:`~usseg.networks.hermes.HermesSegmentationNet` and
:class:`~usseg.networks.hermes.HermesClassificationNet`), whose statistics are saved with the weights. The trainer
feeds images in [0, 1], and the saliency is the gradient with respect to them.

- [0] Zhang et al., 2025, Hermes, https://arxiv.org/abs/2508.02265
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from ignite.engine import Engine, Events
from monai.engines import SupervisedEvaluator
from monai.engines.utils import IterationEvents, default_prepare_batch
from monai.utils import CommonKeys as Keys
from torch import nn

from usseg.engines.pseudo_label import DualThreshold
from usseg.engines.trainers import SemiSupervisedTrainer
from usseg.engines.utils import plain_tensor, unpack_batch
from usseg.errors import DatalistError, require_bool
from usseg.losses.hermes import HermesSegmentationLoss, InterTaskConsistencyLoss, MaskedSoftDiceLoss
from usseg.losses.pixel_contrast import PixelContrastLoss, pixel_contrast_labels
from usseg.losses.supcon import SupConLoss
from usseg.networks.hermes import gradient_saliency

__all__ = [
    "CycleCachedLoader",
    "HermesTrainer",
    "HermesEvaluator",
    "IAS_VIEWS",
    "ITC_GRADIENTS",
    "released_itc_ramp",
]

ITC_GRADIENTS = ("both", "seg_only")
IAS_VIEWS = ("labeled_only", "all")


class CycleCachedLoader:
    """A labeled stream that replays its first pass, as ``itertools.cycle`` does, until a new cycle starts.

    The released Hermes loop is ``for unlabeled, labeled in zip(unlabeled_loader, cycle(labeled_loader))``, with a
    new ``cycle`` per epoch (one pass over the unlabeled set). ``cycle`` stores the batches of its first pass and,
    once the loader is exhausted, yields the stored batches again in the same order instead of drawing new ones.
    This iterable does the same for an ignite engine: it is its own (endless) iterator; a cycle starts a fresh
    pass over ``loader`` and stores its batches; when that pass ends the stored batches are replayed. A new cycle
    starts on :meth:`restart`, on ``iter()`` (ignite calls it when it sets up the data), and by itself after
    ``period`` batches (the number of batches of one unlabeled pass), so cycles line up with unlabeled passes.
    If ``loader`` yields more than ``period`` batches, the cycle ends before any replay, as ``zip`` stops ``cycle``.

    Args:
        loader: the labeled loader (an iterable with a length, e.g. a ``DataLoader``).
        period: batches served per cycle; ``None`` = cycles end only on :meth:`restart` / ``iter()``.
        on_new_pass: called with no argument right before each fresh pass over ``loader`` (the trainer sets its
            sampler's epoch there).

    Raises:
        TypeError: ``loader`` is not iterable, or ``on_new_pass`` is not callable.
        ValueError: ``period`` is not a positive integer.
        DatalistError: (when iterated) a fresh pass yields no batch.
    """

    def __init__(self, loader: Iterable, period: int | None = None, on_new_pass: Callable[[], Any] | None = None):
        if not isinstance(loader, Iterable):
            raise TypeError(f"loader must be iterable, got {type(loader).__name__}.")
        if period is not None and (isinstance(period, bool) or int(period) != period or period < 1):
            raise ValueError(f"period must be a positive integer or None, got {period!r}.")
        if on_new_pass is not None and not callable(on_new_pass):
            raise TypeError(f"on_new_pass must be callable or None, got {type(on_new_pass).__name__}.")
        self.loader = loader
        self.period = None if period is None else int(period)
        self.on_new_pass = on_new_pass
        self._cache: list[Any] = []
        self._iterator: Iterator | None = None
        self._replaying = False
        self._served = 0  # batches served in the current cycle

    # the attributes usseg's handlers and trainers read from a loader
    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]

    @property
    def dataset(self) -> Any:
        """The wrapped loader's data set (``EpochSeedHandler`` seeds its transform)."""
        return getattr(self.loader, "dataset", None)

    @property
    def sampler(self) -> Any:
        """The wrapped loader's sampler."""
        return getattr(self.loader, "sampler", None)

    @property
    def replaying(self) -> bool:
        """Whether the current cycle is replaying stored batches."""
        return self._replaying

    def __iter__(self) -> CycleCachedLoader:
        self.restart()
        return self

    def restart(self) -> None:
        """End the current cycle: drop the stored batches; the next batch starts a fresh pass over ``loader``."""
        self.close()
        self._cache = []
        self._replaying = False
        self._served = 0

    def close(self) -> None:
        """Stop the pass in progress (and a ``ThreadDataLoader``'s prefetch thread); stored batches are kept."""
        if hasattr(self._iterator, "close"):
            self._iterator.close()
        self._iterator = None

    def __next__(self) -> Any:
        if self.period is not None and self._served >= self.period:
            self.restart()
        batch = self._replayed() if self._replaying else self._drawn()
        self._served += 1
        return batch

    def _replayed(self) -> Any:
        # the first pass served len(cache) batches, so position `served` replays cache[served % len]
        return self._cache[self._served % len(self._cache)]

    def _drawn(self) -> Any:
        if self._iterator is None:
            if self.on_new_pass is not None:
                self.on_new_pass()
            self._iterator = iter(self.loader)
        try:
            batch = next(self._iterator)
        except StopIteration:
            self._iterator = None
            if not self._cache:
                raise DatalistError(
                    "labeled data loader", "yielded no batch (empty labeled set, or drop_last with too few items)."
                ) from None
            self._replaying = True
            return self._replayed()
        self._cache.append(batch)
        return batch


def _unwrap(network: nn.Module) -> nn.Module:
    return network.module if isinstance(network, nn.parallel.DistributedDataParallel) else network


def _sigmoid_rampup(step: float, length: float) -> float:
    if length <= 0:
        return 1.0
    t = min(max(step, 0.0), length) / length
    return math.exp(-5.0 * (1.0 - t) ** 2)


def released_itc_ramp(step: int) -> float:
    """The released ITC weight ``sigmoid_rampup(step // 100, 40)``: 0.73 at the released 3000 steps, never 1."""
    return _sigmoid_rampup(step // 100, 40)


class HermesTrainer(SemiSupervisedTrainer):
    """Hermes: two networks, two optimizers, dual-threshold pseudo-labels, SupCon, pixel contrast and ITC.

    The module docstring gives the losses and the update order. Labeled batches must hold ``image``, ``label``
    (the mask) and ``class_key`` (the class index); unlabeled batches the weak and strong views (by default
    ``image_weak``/``image_strong``). Everything computed is put in ``engine.state.output``: each loss term, the
    totals ``cls_loss``/``seg_loss``, the weights ``itc_weight``/``contrast_weight``, and the dual-threshold
    statistics of both tasks (``cls_accept_rate``, ``seg_threshold_c1``, ... see
    :meth:`~usseg.engines.pseudo_label.DualThresholdResult.statistics`), and ``pixel_contrast_classes`` (classes in
    the pixel-contrast set; below 2 that term is 0). After an epoch in which the switched-on pixel contrast never saw
    two classes, the trainer logs a warning.

    Args:
        device: device or ``"auto"``.
        max_epochs: epochs.
        train_data_loader: labeled loader.
        unlabeled_data_loader: unlabeled loader (weak/strong views).
        network: the segmentation network (or its DDP wrapper).
        optimizer: the segmentation optimizer (Adam as released).
        cls_network: the classification network (or its DDP wrapper).
        cls_optimizer: the classification optimizer (SGD as released).
        seg_loss: supervised segmentation loss; default :class:`HermesSegmentationLoss`.
        cls_pseudo_label: classification dual threshold; default ``DualThreshold(combine="and")``.
        seg_pseudo_label: segmentation dual threshold; default ``DualThreshold(combine="or")``.
        unlabeled_dice: unlabeled segmentation loss; default ``MaskedSoftDiceLoss((0, 1))``.
        supcon_loss: image contrast; default ``SupConLoss(0.07)``.
        pixel_contrast_loss: pixel contrast; default ``PixelContrastLoss()``.
        cls_weight: w_cls (1.1).
        cls_unlabeled_weight: w_cu (0.1).
        cls_contrast_weight: w_cc (0.2).
        seg_weight: w_seg (0.5).
        seg_unlabeled_weight: w_su (0.1).
        seg_contrast_weight: w_sc (0.8).
        itc_weight: the ITC weight reached at the end of its ramp (1).
        itc_rampup_length: iterations of the sigmoid ramp of the ITC weight; it reaches ``itc_weight`` there.
        contrast_start_iteration: 0-based iteration from which SupCon and pixel contrast count (released: after
            10 passes over the unlabeled set).
        itc_gradient: ``"both"`` or ``"seg_only"``.
        ias_views: ``"labeled_only"`` or ``"all"``.
        detach_seg_features: detach the segmentation maps fed to IAS.
        renormalize_pixel_embedding: L2-normalise the mean of the weak and strong pixel embeddings (released: no).
        supervised_only: train on the labeled losses only (SupOnly baseline).
        class_key: batch key of the class index.
        compat_itc_ramp: use the released ITC ramp ``sigmoid_rampup(t // 100, 40)`` (methods.md 1.8 item 7).
        compat_pixel_contrast_int_mask: the released integer-subscript masking (methods.md 1.8 item 4).
        compat_cycle_cached_labeled: replay the first labeled pass within each unlabeled pass, as the released
            ``itertools.cycle`` (methods.md 1.8 item 12); the labeled loader is wrapped in a
            :class:`CycleCachedLoader` whose cycle is one pass over the unlabeled loader (both need a length; with
            ``supervised_only`` the unlabeled loader is not read but still sets the cycle length).
        kwargs: other :class:`SemiSupervisedTrainer` arguments (``precision``, ``channels_last``, handlers, ...).

    Raises:
        ValueError: an unknown ``itc_gradient`` / ``ias_views``, a negative weight (the value is quoted), or
            ``compat_cycle_cached_labeled`` with a loader that has no length.
        TypeError: a flag that is not a bool (e.g. the string ``"false"`` from a command line).
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Iterable,
        unlabeled_data_loader: Iterable,
        network: nn.Module,
        optimizer: torch.optim.Optimizer,
        cls_network: nn.Module,
        cls_optimizer: torch.optim.Optimizer,
        seg_loss: Callable | None = None,
        cls_pseudo_label: DualThreshold | None = None,
        seg_pseudo_label: DualThreshold | None = None,
        unlabeled_dice: Callable | None = None,
        supcon_loss: Callable | None = None,
        pixel_contrast_loss: Callable | None = None,
        cls_weight: float = 1.1,
        cls_unlabeled_weight: float = 0.1,
        cls_contrast_weight: float = 0.2,
        seg_weight: float = 0.5,
        seg_unlabeled_weight: float = 0.1,
        seg_contrast_weight: float = 0.8,
        itc_weight: float = 1.0,
        itc_rampup_length: int = 2250,
        contrast_start_iteration: int = 0,
        itc_gradient: str = "both",
        ias_views: str = "labeled_only",
        detach_seg_features: bool = True,
        renormalize_pixel_embedding: bool = False,
        supervised_only: bool = False,
        class_key: str = "class",
        compat_itc_ramp: bool = False,
        compat_pixel_contrast_int_mask: bool = False,
        compat_cycle_cached_labeled: bool = False,
        epoch_length: int | None = None,
        prepare_batch: Callable = default_prepare_batch,
        **kwargs: Any,
    ) -> None:
        flags = {
            "detach_seg_features": detach_seg_features,
            "renormalize_pixel_embedding": renormalize_pixel_embedding,
            "supervised_only": supervised_only,
            "compat_itc_ramp": compat_itc_ramp,
            "compat_pixel_contrast_int_mask": compat_pixel_contrast_int_mask,
            "compat_cycle_cached_labeled": compat_cycle_cached_labeled,
        }
        require_bool(**flags)
        if itc_gradient not in ITC_GRADIENTS:
            raise ValueError(f"itc_gradient must be one of {ITC_GRADIENTS}, got {itc_gradient!r}.")
        if ias_views not in IAS_VIEWS:
            raise ValueError(f"ias_views must be one of {IAS_VIEWS}, got {ias_views!r}.")
        weights = {
            "cls_weight": cls_weight,
            "cls_unlabeled_weight": cls_unlabeled_weight,
            "cls_contrast_weight": cls_contrast_weight,
            "seg_weight": seg_weight,
            "seg_unlabeled_weight": seg_unlabeled_weight,
            "seg_contrast_weight": seg_contrast_weight,
            "itc_weight": itc_weight,
        }
        for name, value in weights.items():
            if not value >= 0:
                raise ValueError(f"{name} must be >= 0, got {value!r}.")
        for name, value in (
            ("itc_rampup_length", itc_rampup_length),
            ("contrast_start_iteration", contrast_start_iteration),
        ):
            if int(value) != value or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}.")
        labeled_cycle = None
        if compat_cycle_cached_labeled:
            for name, loader in (("labeled", train_data_loader), ("unlabeled", unlabeled_data_loader)):
                if not hasattr(loader, "__len__"):
                    raise ValueError(
                        f"compat_cycle_cached_labeled needs a {name} loader with a length (a cycle is one unlabeled "
                        f"pass), got {type(loader).__name__}."
                    )
            # same length as the loader it wraps, so the base class derives the same epoch length; an empty
            # unlabeled loader (period 0) is left for the base class to report as a datalist problem
            labeled_cycle = CycleCachedLoader(train_data_loader, period=max(len(unlabeled_data_loader), 1))
            train_data_loader = labeled_cycle
        seg_pseudo_label = DualThreshold(combine="or") if seg_pseudo_label is None else seg_pseudo_label
        if kwargs.get("channels_last"):
            cls_network = cls_network.to(memory_format=torch.channels_last)
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            train_data_loader=train_data_loader,
            unlabeled_data_loader=unlabeled_data_loader,
            network=network,
            optimizer=optimizer,
            loss_function=HermesSegmentationLoss() if seg_loss is None else seg_loss,
            pseudo_label=seg_pseudo_label,
            epoch_length=epoch_length,
            prepare_batch=prepare_batch,
            **kwargs,
        )
        self.cls_network = cls_network
        self.cls_optimizer = cls_optimizer
        self.cls_pseudo_label = DualThreshold(combine="and") if cls_pseudo_label is None else cls_pseudo_label
        self.seg_pseudo_label = seg_pseudo_label
        self.unlabeled_dice = MaskedSoftDiceLoss((0.0, 1.0)) if unlabeled_dice is None else unlabeled_dice
        self.supcon_loss = SupConLoss(0.07, 0.07) if supcon_loss is None else supcon_loss
        self.pixel_contrast_loss = PixelContrastLoss() if pixel_contrast_loss is None else pixel_contrast_loss
        self.itc_loss = InterTaskConsistencyLoss()
        self.weights = {name: float(value) for name, value in weights.items()}
        self.itc_rampup_length = int(itc_rampup_length)
        self.contrast_start_iteration = int(contrast_start_iteration)
        self.itc_gradient = itc_gradient
        self.ias_views = ias_views
        self.detach_seg_features = bool(detach_seg_features)
        self.renormalize_pixel_embedding = bool(renormalize_pixel_embedding)
        self.supervised_only = bool(supervised_only)
        self.class_key = class_key
        self.compat_itc_ramp = bool(compat_itc_ramp)
        self.compat_pixel_contrast_int_mask = bool(compat_pixel_contrast_int_mask)
        self.labeled_cycle = labeled_cycle
        if labeled_cycle is not None:
            labeled_cycle.on_new_pass = self._start_cached_labeled_pass
            # the unlabeled stream starts a new pass at every epoch start (base class): so does the labeled cycle
            self.add_event_handler(Events.EPOCH_STARTED, self._restart_labeled_cycle)
        for policy in (self.cls_pseudo_label, self.seg_pseudo_label, self.pixel_contrast_loss):
            if isinstance(policy, nn.Module):
                policy.to(self.state.device)
        # iterations of this epoch with the pixel contrast switched on, and of them those with two classes or more
        self._pixel_contrast_steps = 0
        self._pixel_contrast_live_steps = 0
        self.add_event_handler(Events.EPOCH_COMPLETED, self._warn_if_pixel_contrast_idle)

    # -- what the base class trains and checkpoints -------------------------------------------------------------

    @property
    def networks(self) -> list[nn.Module]:
        """The segmentation and the classification network."""
        return [self.network, self.cls_network]

    @property
    def optimizers(self) -> list[torch.optim.Optimizer]:
        """The segmentation and the classification optimizer, stepped after one joint backward."""
        return [self.optimizer, self.cls_optimizer]

    def _start_cached_labeled_pass(self) -> None:
        # the wrapped loader never runs out for ignite, so the base class's reshuffle on DATALOADER_STOP_ITERATION
        # never fires: each fresh labeled pass sets the sampler epoch here (a DistributedSampler reshuffles)
        self._set_sampler_epoch(self.labeled_cycle.loader, self._pass_seed(self._labeled_passes))
        self._labeled_passes += 1

    def _restart_labeled_cycle(self, engine: Engine) -> None:
        self.labeled_cycle.restart()

    def _warn_if_pixel_contrast_idle(self, engine: Engine) -> None:
        # a contrast set of one class gives exactly 0: without this the term can be dead for a whole run unnoticed
        steps, live = self._pixel_contrast_steps, self._pixel_contrast_live_steps
        self._pixel_contrast_steps = self._pixel_contrast_live_steps = 0
        if steps and not live:
            self.logger.warning(
                f"epoch {engine.state.epoch}: the pixel contrast saw fewer than two classes at all {steps} "
                "iterations, so it trained nothing: at most one class covered more than min_anchor_pixels of the "
                "embedding grid in an image (lower pixel_contrast#min_anchor_pixels, or give it as a fraction of the "
                "grid)."
            )

    def itc_weight_at(self, step: int) -> float:
        """The ITC weight at 0-based iteration ``step``."""
        ramp = released_itc_ramp(step) if self.compat_itc_ramp else _sigmoid_rampup(step, self.itc_rampup_length)
        return self.weights["itc_weight"] * ramp

    def contrast_weight_at(self, step: int) -> float:
        """1 from ``contrast_start_iteration`` on, else 0 (the terms are computed either way, so DDP sees them)."""
        return 1.0 if step >= self.contrast_start_iteration else 0.0

    # -- the method -----------------------------------------------------------------------------------------------

    def _classes(self, batchdata: Any) -> torch.Tensor:
        if not isinstance(batchdata, Mapping) or self.class_key not in batchdata:
            keys = sorted(batchdata) if isinstance(batchdata, Mapping) else type(batchdata).__name__
            raise KeyError(
                f"the labeled batch has no {self.class_key!r} (the class index of each image); found {keys}. "
                "Hermes needs a class per labeled image: a datalist with 'class' entries (classes.csv)."
            )
        return torch.as_tensor(plain_tensor(batchdata[self.class_key])).long().to(self.state.device).view(-1)

    def forward(self, engine: HermesTrainer, batchdata: Any) -> dict[str, Any]:
        batch = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        images, masks, _, _ = unpack_batch(batch)
        classes = engine._classes(batchdata)
        engine.state.output = {Keys.IMAGE: images, Keys.LABEL: masks}
        labeled = engine.network_input(images)
        num_labeled = labeled.shape[0]
        if engine.supervised_only:
            inputs = labeled
        else:
            weak, strong = engine.prepare_unlabeled(engine.next_unlabeled(), engine.state.device, engine.non_blocking)
            inputs = torch.cat([labeled, engine.network_input(weak), engine.network_input(strong)], dim=0)
        # one call per network: DDP expects one forward per backward, and batch-norm sees the whole batch
        seg_module, cls_module = _unwrap(engine.network), _unwrap(engine.cls_network)
        saliency = gradient_saliency(cls_module, inputs) if seg_module.saliency_enabled else None
        seg_logits, seg_embedding, seg_consistency, ias_features = engine.network(inputs, saliency)
        if cls_module.ias_enabled:
            fused = [f.detach() for f in ias_features] if engine.detach_seg_features else list(ias_features)
            gate = None
            if engine.ias_views == "labeled_only":
                gate = torch.arange(inputs.shape[0], device=inputs.device) < num_labeled
            cls_logits, cls_embedding, cls_consistency = engine.cls_network(inputs, fused, gate)
        else:
            cls_logits, cls_embedding, cls_consistency = engine.cls_network(inputs)
        engine.state.output[Keys.PRED] = seg_logits[:num_labeled]
        engine.state.output["class_logits"] = cls_logits[:num_labeled].detach()
        return {
            "num_labeled": num_labeled,
            "masks": plain_tensor(masks),
            "classes": classes,
            "seg_logits": seg_logits,
            "seg_embedding": seg_embedding,
            "seg_consistency": seg_consistency,
            "cls_logits": cls_logits,
            "cls_embedding": cls_embedding,
            "cls_consistency": cls_consistency,
        }

    def compute_losses(self, engine: HermesTrainer, forward_output: dict[str, Any]) -> dict[str, torch.Tensor]:
        step = engine.state.iteration - 1
        n = forward_output["num_labeled"]
        seg_logits = forward_output["seg_logits"].float()
        cls_logits = forward_output["cls_logits"].float()
        masks = forward_output["masks"]
        masks = (masks[:, 0] if masks.ndim == 4 else masks).long()
        w = engine.weights
        cls_sup = F.cross_entropy(cls_logits[:n], forward_output["classes"])
        seg_sup = engine.loss_function(seg_logits[:n], masks)
        with torch.no_grad():
            train_accuracy = (cls_logits[:n].argmax(dim=1) == forward_output["classes"]).float().mean()
        if engine.supervised_only:
            cls_total, seg_total = w["cls_weight"] * cls_sup, w["seg_weight"] * seg_sup
            return {
                Keys.LOSS: cls_total + seg_total,
                "cls_loss": cls_total,
                "seg_loss": seg_total,
                "cls_sup_loss": cls_sup,
                "seg_sup_loss": seg_sup,
                "cls_train_accuracy": train_accuracy,
            }

        unsup = engine.loss_weights.get("unsup", 1.0)
        contrast = engine.contrast_weight_at(step)
        itc_weight = engine.itc_weight_at(step)

        # classification: weak view labels, strong view learns; "and" dual threshold
        cls_weak, cls_strong = cls_logits[n : 2 * n], cls_logits[2 * n :]
        cls_select = engine.cls_pseudo_label(cls_weak.detach().softmax(dim=1), step)
        cls_unsup = (F.cross_entropy(cls_strong, cls_select.target, reduction="none") * cls_select.mask).mean()
        embedding = forward_output["cls_embedding"].float()
        views = torch.stack([embedding[2 * n :], embedding[n : 2 * n]], dim=1)  # (B, [strong, weak], E) as released
        supcon = engine.supcon_loss(views, labels=cls_select.target, weights=cls_select.mask)

        # segmentation: "or" dual threshold for the Dice, both tests for the pixel-contrast labels
        seg_weak, seg_strong = seg_logits[n : 2 * n], seg_logits[2 * n :]
        seg_select = engine.seg_pseudo_label(seg_weak.detach().softmax(dim=1), step)
        seg_unsup = engine.unlabeled_dice(seg_strong, seg_select.target, seg_select.mask)
        pixel_labels = pixel_contrast_labels(
            seg_select.target,
            seg_select.confident,
            seg_select.uncertain,
            compat_int_mask=engine.compat_pixel_contrast_int_mask,
        )
        pixel_embedding = forward_output["seg_embedding"].float()
        mean_embedding = (pixel_embedding[n : 2 * n] + pixel_embedding[2 * n :]) / 2.0
        if engine.renormalize_pixel_embedding:
            mean_embedding = F.normalize(mean_embedding, dim=1)
        pixel = engine.pixel_contrast_loss(mean_embedding, pixel_labels, seg_strong.detach().argmax(dim=1))
        contrast_classes = getattr(engine.pixel_contrast_loss, "last_contrast_classes", None)
        if contrast_classes is not None and contrast > 0 and w["seg_contrast_weight"] > 0:
            engine._pixel_contrast_steps += 1
            engine._pixel_contrast_live_steps += int(contrast_classes >= 2)

        # inter-task consistency on the strong view; "seg_only" keeps it out of the classification network
        cls_vector = forward_output["cls_consistency"][2 * n :].float()
        if engine.itc_gradient == "seg_only":
            cls_vector = cls_vector.detach()
        itc = engine.itc_loss(cls_vector, forward_output["seg_consistency"][2 * n :].float())

        cls_total = w["cls_weight"] * (
            cls_sup + unsup * w["cls_unlabeled_weight"] * cls_unsup + contrast * w["cls_contrast_weight"] * supcon
        )
        seg_total = (
            w["seg_weight"]
            * (seg_sup + unsup * w["seg_unlabeled_weight"] * seg_unsup + contrast * w["seg_contrast_weight"] * pixel)
            + itc_weight * itc
        )
        losses: dict[str, Any] = {
            Keys.LOSS: cls_total + seg_total,
            "cls_loss": cls_total,
            "seg_loss": seg_total,
            "cls_sup_loss": cls_sup,
            "cls_unsup_loss": cls_unsup,
            "cls_contrast_loss": supcon,
            "seg_sup_loss": seg_sup,
            "seg_unsup_loss": seg_unsup,
            "seg_contrast_loss": pixel,
            "itc_loss": itc,
            "itc_weight": itc_weight,
            "contrast_weight": contrast,
            "cls_train_accuracy": train_accuracy,
            "pixel_contrast_ignored_rate": float((pixel_labels < 0).float().mean()),
        }
        if contrast_classes is not None:
            losses["pixel_contrast_classes"] = float(contrast_classes)  # below 2 the pixel contrast is 0
        losses.update(cls_select.statistics("cls_"))
        losses.update(seg_select.statistics("seg_"))
        return losses


class HermesEvaluator(SupervisedEvaluator):
    """MONAI's ``SupervisedEvaluator`` for a :class:`~usseg.networks.hermes.HermesInferenceModel`.

    The segmentation logits go to ``pred`` as usual (postprocessing and metrics unchanged); after the forward pass
    the class probabilities ``softmax(network.classify(image))`` are added to the output under ``class_prob_key``,
    (B, K) before decollation and (K,) per item after it, for ``SegmentationReportHandler(cls_pred_key=...)`` or a
    ``ClassificationSaver``. When the batch holds the true class under ``class_key`` it is copied to the output
    too, so metrics can read both from the output.

    Args:
        args: as ``monai.engines.SupervisedEvaluator``.
        class_prob_key: output key of the class probabilities.
        class_key: batch key of the true class index (copied to the output when present).
        kwargs: as ``monai.engines.SupervisedEvaluator``.
    """

    def __init__(self, *args: Any, class_prob_key: str = "class_prob", class_key: str = "class", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for name, key in (("class_prob_key", class_prob_key), ("class_key", class_key)):
            if not isinstance(key, str) or not key:
                raise ValueError(f"{name} must be a non-empty string, got {key!r}.")
        self.class_prob_key = class_prob_key
        self.class_key = class_key
        self.add_event_handler(IterationEvents.FORWARD_COMPLETED, self._add_class_probabilities)

    def _add_class_probabilities(self, engine: HermesEvaluator) -> None:
        model = _unwrap(engine.network)
        if not hasattr(model, "classify"):
            raise TypeError(f"HermesEvaluator needs a network with classify(), got {type(model).__name__}.")
        image = plain_tensor(engine.state.output[Keys.IMAGE])
        with engine.mode(engine.network), torch.no_grad():
            logits = model.classify(image)
        engine.state.output[self.class_prob_key] = logits.float().softmax(dim=1)
        batch = engine.state.batch
        if isinstance(batch, Mapping) and self.class_key in batch:
            engine.state.output[self.class_key] = torch.as_tensor(plain_tensor(batch[self.class_key])).long().view(-1)
