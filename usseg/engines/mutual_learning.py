# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""Semi-CML: contrastive mutual learning of two single-modality networks, then pseudo-label re-learning (PReL).

Two networks, one per modality, train together on co-registered pairs; losses alone couple them, so each segments
from its own modality at inference. Stage 1 and stage 2 are described in :class:`MutualLearningTrainer`;
``usseg.handlers.bma.PhaseSwitchHandler`` switches between them and ``usseg.handlers.bma.BMATeacherHandler`` keeps
the teacher (methods.md, section 4).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.utils import CommonKeys as Keys
from torch import nn

from usseg.engines.trainers import SemiSupervisedTrainer
from usseg.engines.utils import plain_tensor
from usseg.losses.asc import ASCLoss, SoftDiceBCELoss
from usseg.networks.semi_cml import set_dropout_mode

logger = logging.getLogger(__name__)

__all__ = ["MutualLearningTrainer", "PrepareMultiModalBatch", "PrepareSingleModalityBatch", "label_to_target"]


def label_to_target(label: torch.Tensor, out_channels: int) -> torch.Tensor:
    """A ``(B, 1, H, W)`` label map as sigmoid targets: ``(B, out_channels, H, W)`` floats, one per foreground class.

    With one output channel every non-zero label is foreground; with ``K`` channels channel ``k`` is label ``k + 1``.
    A label that already has ``out_channels`` (> 1) channels (one-hot foreground, or soft) is returned as float.

    Raises:
        ValueError: the label has neither 1 nor ``out_channels`` channels.
    """
    label = plain_tensor(label)
    if label.shape[1] == 1:
        if out_channels == 1:
            return (label > 0).float()
        values = label[:, 0].long()
        return torch.stack([values == k + 1 for k in range(out_channels)], dim=1).float()
    if label.shape[1] == out_channels:
        return label.float()
    raise ValueError(f"label has {label.shape[1]} channels; expected 1 (a label map) or {out_channels}.")


class PrepareMultiModalBatch:
    """Take the two modalities (and the label, when present) of a batch to ``device``.

    Args:
        keys: batch keys of modality 1 and modality 2.
        label_key: batch key of the label map.

    Returns (when called):
        ``((image_m1, image_m2), label)`` for a labeled batch; ``((image_m1, image_m2), None)`` without labels.

    Raises:
        KeyError (when called): a modality is missing; the message lists the batch's keys.
    """

    def __init__(self, keys: Sequence[str] = ("image_m1", "image_m2"), label_key: str = "label") -> None:
        keys = tuple(keys)
        if len(keys) != 2:
            raise ValueError(f"keys must name the two modalities, got {keys!r}.")
        self.keys, self.label_key = keys, label_key

    def __call__(
        self,
        batchdata: Mapping[str, Any],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor | None]:
        missing = [key for key in self.keys if key not in batchdata]
        if missing:
            raise KeyError(
                f"multi-modal batch has no {missing}; found keys {sorted(batchdata)}. Load the pair with "
                "usseg.transforms.multimodal.LoadMultiModald (datalist items with image/image_m1 and image_m2)."
            )
        m1, m2 = (torch.as_tensor(batchdata[k]).to(device=device, non_blocking=non_blocking) for k in self.keys)
        label = batchdata.get(self.label_key)
        if label is not None:
            label = torch.as_tensor(label).to(device=device, non_blocking=non_blocking)
        return (m1, m2), label


def _check_fraction(name: str, value: Any) -> float:
    # the released argparse declares the alphas as int, which truncates 0.1 to 0 (methods.md, section 4.5 item 3)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float in [0, 1], got {value!r} ({type(value).__name__}).")
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ValueError(f"{name} must lie in [0, 1], got {value!r}.")
    return float(value)


class MutualLearningTrainer(SemiSupervisedTrainer):
    r"""Semi-CML trainer [0]: two networks (one per modality), stage 1 mutual learning, stage 2 PReL.

    Each iteration takes a labeled batch of pairs :math:`(x^1, x^2, y)` and an unlabeled batch of pairs; each network
    sees its own modality, labeled and unlabeled images in ONE forward pass (so batch norm sees both, as released,
    and a DDP network is called once). :math:`P^m = \sigma(f_m(x^m))`, :math:`U^m` its unlabeled part.

    **Stage 1** (``engine.phase == 1``):

    .. math::
        \mathcal{L} = w_{sup}(\mathcal{L}_{sup}^1 + \mathcal{L}_{sup}^2) + w_{asc}\,\mathrm{ASC}(U^1, U^2)
            + w_{cons}(t)\,\overline{(U^1 - U^2)^2}

    with :math:`\mathcal{L}_{sup} = 10\,\mathrm{BCE} + 7\,(1 - \mathrm{softDice})` and :math:`w_{asc} = 3.5`;
    :math:`w_{cons}` is ``loss_weights["consistency"]``, ramped by a ``RampUpHandler`` (sigmoid over 200 epochs as
    released).

    **Stage 2, PReL** (``engine.phase == 2``): the teacher (the BMA model of the teaching modality :math:`t`) labels
    the unlabeled images of modality :math:`t` with ``teacher_passes`` noisy MC-dropout passes,
    :math:`\hat Y = \frac{1}{T}\sum_k \sigma(g(U^t_{img} + \mathrm{clamp}(\sigma_n \epsilon_k, lo, hi)))`; with
    :math:`o` the other modality,

    .. math::
        \mathcal{L}_{teach}^m = \alpha_m \mathrm{ASC}(\hat Y, U^m) + (1 - \alpha_m)\,\mathcal{L}_{seg}(U^m, \hat Y),
        \qquad \mathcal{L} = \mathcal{L}_{teach}^o + \mathrm{WP2}(e)\,\mathcal{L}_{teach}^t
            + w_{sup2}(\mathcal{L}_{sup}^1 + \mathcal{L}_{sup}^2)

    WP2 is ``loss_weights["teach_self"]`` (set by ``PhaseSwitchHandler``); :math:`w_{sup2}` is
    ``stage2_supervised_weight``, 0 in the released code, which drops the labeled data in stage 2.

    Teacher modes: the teacher's dropout always runs (MC dropout); its batch norm runs in eval mode (running
    statistics), unless ``bma_train_mode_bn`` reproduces the released train-mode batch norm, which normalises with the
    small unlabeled batch and updates the teacher's running statistics under ``no_grad``. The students train with
    dropout off (``student_dropout="off"``, released) or on (``"train"``).

    ``engine.state.output`` carries ``loss``, ``sup_m1``, ``sup_m2``, and in stage 1 ``asc``, ``mse``; in stage 2
    ``teach_m1``, ``teach_m2``, ``asc_teach_m1``, ``asc_teach_m2``, ``seg_teach_m1``, ``seg_teach_m2`` and the
    pseudo-label statistics ``pseudo_mean`` (mean soft label), ``pseudo_foreground`` (fraction above 0.5),
    ``pseudo_mc_std`` (mean per-pixel standard deviation over the MC passes); plus ``phase`` and every
    ``<name>_weight``.

    - [0] Zhang et al., 2023, Multi-modal contrastive mutual learning and pseudo-label re-learning for
      semi-supervised medical image segmentation, Medical Image Analysis 83:102656

    Args:
        network: the modality-1 network (returns logits); also the zoo's ``network_def``.
        network_m2: the modality-2 network.
        optimizer: optimizer of ``network``.
        optimizer_m2: optimizer of ``network_m2``.
        teacher: the BMA teacher, same architecture as the teaching modality's network; None allows stage 1 only.
        loss_function: supervised and re-learning segmentation loss; default ``SoftDiceBCELoss(10, 7)``.
        asc_loss: default ``ASCLoss(temperature=1.0)``.
        out_channels: sigmoid channels of the networks (one per foreground class).
        asc_weight: :math:`w_{asc}` (3.5).
        consistency_weight: initial :math:`w_{cons}` (a ``RampUpHandler`` named ``"consistency"`` drives it).
        alpha_m1: :math:`\alpha_1` (0.1, the released effective default; the function defaults were 0.01).
        alpha_m2: :math:`\alpha_2` (0.1; function default 0.2).
        teacher_modality: 1 or 2 (2 as released): whose images and BMA network make the pseudo-labels.
        teacher_passes: :math:`T` (4).
        teacher_noise_std: :math:`\sigma_n` (0.1).
        teacher_noise_clamp: ``(lo, hi)`` (``(0, 0.2)``: positive noise only, as released).
        symmetric_noise: clamp to ``(-hi, hi)`` instead (zero-mean noise).
        stage2_supervised_weight: :math:`w_{sup2}` (0 as released; the bundle keeps the loss with 1.0, measured in
            ``benchmarks/results/phantom_semi_cml.json``).
        student_dropout: dropout mode of both students during training: ``"off"`` (released) or ``"train"``.
        bma_train_mode_bn: compat switch: the teacher's batch norm in train mode, as released.
        phase: the initial stage (a ``PhaseSwitchHandler`` sets it every epoch).
        prepare_batch / prepare_unlabeled: default :class:`PrepareMultiModalBatch` for both.
        other arguments: as :class:`~usseg.engines.SemiSupervisedTrainer` (``precision``, ``channels_last``, ...).

    Raises:
        ValueError: an argument out of range (the message quotes it).
        TypeError: an alpha that is not a number.
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Iterable,
        unlabeled_data_loader: Iterable,
        network: nn.Module,
        network_m2: nn.Module,
        optimizer: torch.optim.Optimizer,
        optimizer_m2: torch.optim.Optimizer,
        teacher: nn.Module | None = None,
        loss_function: Callable | None = None,
        asc_loss: Callable | None = None,
        out_channels: int = 1,
        asc_weight: float = 3.5,
        consistency_weight: float = 1.0,
        alpha_m1: float = 0.1,
        alpha_m2: float = 0.1,
        teacher_modality: int = 2,
        teacher_passes: int = 4,
        teacher_noise_std: float = 0.1,
        teacher_noise_clamp: Sequence[float] = (0.0, 0.2),
        symmetric_noise: bool = False,
        stage2_supervised_weight: float = 0.0,
        student_dropout: str = "off",
        bma_train_mode_bn: bool = False,
        phase: int = 1,
        prepare_batch: Callable | None = None,
        prepare_unlabeled: Callable | None = None,
        **kwargs: Any,
    ) -> None:
        if teacher_modality not in (1, 2):
            raise ValueError(f"teacher_modality must be 1 or 2, got {teacher_modality!r}.")
        if phase not in (1, 2):
            raise ValueError(f"phase must be 1 or 2, got {phase!r}.")
        if isinstance(teacher_passes, bool) or not isinstance(teacher_passes, int) or teacher_passes < 1:
            raise ValueError(f"teacher_passes must be an int >= 1, got {teacher_passes!r}.")
        if isinstance(out_channels, bool) or not isinstance(out_channels, int) or out_channels < 1:
            raise ValueError(f"out_channels must be an int >= 1, got {out_channels!r}.")
        clamp = tuple(float(v) for v in teacher_noise_clamp)
        if len(clamp) != 2 or clamp[0] > clamp[1]:
            raise ValueError(f"teacher_noise_clamp must be (low, high) with low <= high, got {teacher_noise_clamp!r}.")
        if student_dropout not in ("off", "train"):
            raise ValueError(f"student_dropout must be 'off' or 'train', got {student_dropout!r}.")
        for name, value in (
            ("asc_weight", asc_weight),
            ("consistency_weight", consistency_weight),
            ("teacher_noise_std", teacher_noise_std),
            ("stage2_supervised_weight", stage2_supervised_weight),
        ):
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not (value >= 0 and math.isfinite(value))
            ):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}.")
        self.alpha = {1: _check_fraction("alpha_m1", alpha_m1), 2: _check_fraction("alpha_m2", alpha_m2)}
        kwargs["loss_weights"] = {
            "sup": 1.0,
            "asc": float(asc_weight),
            "consistency": float(consistency_weight),
            "teach_self": 0.0,
            "stage2_sup": float(stage2_supervised_weight),
            **(kwargs.get("loss_weights") or {}),
        }
        channels_last = bool(kwargs.get("channels_last", False))
        if channels_last:  # the base class converts `network` only
            network_m2 = network_m2.to(memory_format=torch.channels_last)
            if teacher is not None:
                teacher = teacher.to(memory_format=torch.channels_last)
        preparer = PrepareMultiModalBatch() if prepare_batch is None else prepare_batch
        self.phase = phase  # before MONAI's constructor, which attaches the handlers that check it (PhaseSwitchHandler)
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            train_data_loader=train_data_loader,
            unlabeled_data_loader=unlabeled_data_loader,
            network=network,
            optimizer=optimizer,
            loss_function=SoftDiceBCELoss() if loss_function is None else loss_function,
            prepare_batch=preparer,
            prepare_unlabeled=preparer if prepare_unlabeled is None else prepare_unlabeled,
            teacher=teacher,
            **kwargs,
        )
        self.loss_weights.pop("unsup", None)  # the base class's FixMatch weight is not a Semi-CML term
        self.network_m2 = network_m2
        self.optimizer_m2 = optimizer_m2
        self.asc_loss = ASCLoss() if asc_loss is None else asc_loss
        self.out_channels = out_channels
        self.teacher_modality = teacher_modality
        self.teacher_passes = teacher_passes
        self.teacher_noise_std = float(teacher_noise_std)
        self.teacher_noise_clamp = (-clamp[1], clamp[1]) if symmetric_noise else clamp
        self.student_dropout = student_dropout
        self.bma_train_mode_bn = bool(bma_train_mode_bn)
        logger.info(
            "Semi-CML: teacher modality %d, teacher BN %s (compat.bma_train_mode_bn=%s), alpha_m1=%g, alpha_m2=%g, "
            "stage-2 supervised weight %g, teacher noise clamp %s.",
            teacher_modality,
            "train mode (released)" if self.bma_train_mode_bn else "eval mode",
            self.bma_train_mode_bn,
            self.alpha[1],
            self.alpha[2],
            float(stage2_supervised_weight),
            self.teacher_noise_clamp,
        )

    # -- what checkpointing, DDP and the base iteration see ------------------------------------------------------

    @property
    def networks(self) -> list[nn.Module]:
        """Both students and the teacher; ``forward`` then sets the teacher's own modes."""
        return [self.network, self.network_m2] + ([] if self.teacher is None else [self.teacher])

    @property
    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.optimizer, self.optimizer_m2]

    # -- one iteration ----------------------------------------------------------------------------------------------

    @torch.no_grad()
    def soft_pseudo_labels(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The teacher's soft labels for ``images`` ``(B, 1, H, W)``: the mean sigmoid over ``teacher_passes`` noisy
        MC-dropout passes, and the per-pixel standard deviation over the passes (both ``(B, C, H, W)``, fp32).

        Raises:
            RuntimeError: no teacher was given.
        """
        if self.teacher is None:
            raise RuntimeError("stage 2 (PReL) needs a teacher network; pass teacher= (the BMA model).")
        self.teacher.train(self.bma_train_mode_bn)
        set_dropout_mode(self.teacher, "always")
        low, high = self.teacher_noise_clamp
        passes = []
        for _ in range(self.teacher_passes):
            noise = torch.clamp(torch.randn_like(images) * self.teacher_noise_std, low, high)
            passes.append(torch.sigmoid(self.teacher(self.network_input(images + noise)).float()))
        stacked = torch.stack(passes)  # (T, B, C, H, W)
        return stacked.mean(dim=0), stacked.std(dim=0, unbiased=False)

    def forward(self, engine: MutualLearningTrainer, batchdata: Any) -> dict[str, Any]:
        (lab_m1, lab_m2), label = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking)
        if label is None:
            raise KeyError("the labeled batch has no label; check the labeled split of the datalist.")
        (unl_m1, unl_m2), _ = engine.prepare_unlabeled(
            engine.next_unlabeled(), engine.state.device, engine.non_blocking
        )
        engine.state.output = {Keys.IMAGE: lab_m1, "image_m2": lab_m2, Keys.LABEL: label}
        for student in (engine.network, engine.network_m2):
            set_dropout_mode(student, engine.student_dropout)
        num_labeled = lab_m1.shape[0]
        logits_m1 = engine.network(engine.network_input(torch.cat([plain_tensor(lab_m1), plain_tensor(unl_m1)])))
        logits_m2 = engine.network_m2(engine.network_input(torch.cat([plain_tensor(lab_m2), plain_tensor(unl_m2)])))
        engine.state.output[Keys.PRED] = logits_m1[:num_labeled]
        engine.state.output["pred_m2"] = logits_m2[:num_labeled]
        forward_output = {
            "logits": {1: logits_m1, 2: logits_m2},
            "num_labeled": num_labeled,
            Keys.LABEL: label_to_target(label, engine.out_channels),
        }
        if engine.phase == 2:
            teacher_images = plain_tensor(unl_m2 if engine.teacher_modality == 2 else unl_m1)
            forward_output["pseudo"], forward_output["pseudo_std"] = engine.soft_pseudo_labels(teacher_images)
        return forward_output

    def compute_losses(self, engine: MutualLearningTrainer, forward_output: dict[str, Any]) -> dict[str, torch.Tensor]:
        num_labeled = forward_output["num_labeled"]
        target = forward_output[Keys.LABEL]
        logits = {m: forward_output["logits"][m].float() for m in (1, 2)}
        weights = engine.loss_weights
        sup = {m: engine.loss_function(logits[m][:num_labeled], target) for m in (1, 2)}
        unlabeled = {m: logits[m][num_labeled:] for m in (1, 2)}
        probs = {m: torch.sigmoid(unlabeled[m]) for m in (1, 2)}
        terms: dict[str, torch.Tensor] = {
            "sup_m1": sup[1],
            "sup_m2": sup[2],
            "phase": torch.tensor(float(engine.phase)),
        }
        if engine.phase == 1:
            asc = engine.asc_loss(probs[1], probs[2])
            mse = F.mse_loss(probs[1], probs[2])
            total = weights["sup"] * (sup[1] + sup[2]) + weights["asc"] * asc + weights["consistency"] * mse
            terms.update(asc=asc, mse=mse)
        else:
            pseudo = forward_output["pseudo"]
            teach = {}
            for m in (1, 2):
                asc_m = engine.asc_loss(pseudo, probs[m])
                seg_m = engine.loss_function(unlabeled[m], pseudo)
                teach[m] = engine.alpha[m] * asc_m + (1.0 - engine.alpha[m]) * seg_m
                terms.update({f"asc_teach_m{m}": asc_m, f"seg_teach_m{m}": seg_m, f"teach_m{m}": teach[m]})
            taught = 1 if engine.teacher_modality == 2 else 2
            total = teach[taught] + weights["teach_self"] * teach[engine.teacher_modality]
            total = total + weights["stage2_sup"] * (sup[1] + sup[2])
            terms.update(
                pseudo_mean=pseudo.mean(),
                pseudo_foreground=(pseudo > 0.5).float().mean(),
                pseudo_mc_std=forward_output["pseudo_std"].mean(),
            )
        return {Keys.LOSS: total, **terms}


class PrepareSingleModalityBatch:
    """``(image, label)`` of ONE modality of a multi-modal batch, for an evaluator of that modality's network.

    Args:
        image_key: batch key of the modality (``"image_m1"`` or ``"image_m2"``).
        label_key: batch key of the label map.
    """

    def __init__(self, image_key: str = "image_m1", label_key: str = "label") -> None:
        self.image_key, self.label_key = image_key, label_key

    def __call__(
        self,
        batchdata: Mapping[str, Any],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.image_key not in batchdata:
            raise KeyError(f"batch has no {self.image_key!r}; found keys {sorted(batchdata)}.")
        image = torch.as_tensor(batchdata[self.image_key]).to(device=device, non_blocking=non_blocking)
        label = batchdata.get(self.label_key)
        if label is not None:
            label = torch.as_tensor(label).to(device=device, non_blocking=non_blocking)
        return image, label
