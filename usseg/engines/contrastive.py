# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""Contrastive pre-training on video positive pairs: USCL [0] and Meta-USCL [1] in one trainer.

:class:`ContrastivePretrainer` trains an encoder + projection head (``usseg.networks.contrastive``) with NT-Xent on
the two views made by ``usseg.transforms.VideoFramePaird``. Two options turn it into either method:

- USCL: Adam, an optional semi-supervised cross-entropy on the frames of labeled videos (``classification_weight``,
  0.2 in the USCL preset), no pair weighting;
- Meta-USCL: SGD with momentum, and pair weights from CMW-Net learned by a bi-level (meta) step.

The meta step, every ``meta_interval`` iterations, follows the released order (``methods.md`` section 2.3) with the
fixes of section 2.7:

1. the weighted training loss ``L(theta, alpha)`` is computed from the iteration's one forward pass per view (the
   released code runs a second, copied model);
2. a virtual SGD step ``theta' = theta - eta * d(theta)`` where ``d`` reproduces the main optimizer's momentum
   buffer, dampening, Nesterov flag and weight decay, with ``create_graph=True``. ``eta`` is ``meta_lr``
   (``virtual_lr="meta"``, fixed) or the main optimizer's current learning rate (``"scheduled"``, the released
   behaviour, ``compat.scheduled_virtual_lr``). ``meta_parameters`` can restrict the virtual step to some parameters
   (e.g. the last ResNet stage and the head); the others stay at ``theta`` and need no second-order graph;
3. the unweighted NT-Xent of the virtually stepped model, evaluated with ``torch.func.functional_call`` (no
   parameter surgery; batch-norm statistics of that pass go to copies and are discarded) on a batch from the
   held-out meta loader, both views in one pass;
4. its gradient with respect to CMW-Net's parameters ``alpha`` (second order, through ``theta'(alpha)``), averaged
   over ranks under DDP, and an Adam step on CMW-Net (6e-5 in the bundle);
5. the real step: weights recomputed by the updated CMW-Net without gradient, the weighted loss back-propagated
   through the same forward pass, and the main optimizer stepped by the base iteration.

Memory: the second-order graph roughly doubles the activation memory of a step. Time on 2 CPU cores, ResNet-18 at
64x64, 32 pairs: ``benchmarks/results/meta_step_overhead.json``.

Why :class:`~usseg.engines.SemiSupervisedTrainer` is the base: its second data stream (restarted with a fresh shuffle
when it runs out, ``set_epoch`` on its sampler, seeded per epoch by ``EpochSeedHandler``, so a resumed run replays
it) is exactly what the meta batches need; here that stream is the held-out meta list. Without meta weighting the
second stream is never read.

- [0] Chen et al., USCL, MICCAI 2021, https://arxiv.org/abs/2011.13066
- [1] Chen et al., Meta-USCL, IEEE TMI, https://arxiv.org/abs/2212.04097
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from ignite.engine import Engine, Events
from ignite.metrics import Metric
from ignite.metrics.metric import reinit__is_reduced, sync_all_reduce
from monai.metrics import EmbeddingCollapseMetric
from monai.utils import CommonKeys as Keys
from torch import nn
from torch.func import functional_call

from usseg.data.io import atomic_write, atomic_write_json, ensure_writable_dir
from usseg.engines.trainers import SemiSupervisedTrainer
from usseg.engines.utils import autocast
from usseg.errors import InputError
from usseg.losses.ntxent import NTXentLoss

__all__ = [
    "VIRTUAL_LR_MODES",
    "UNLABELED",
    "PrepareViewPairBatch",
    "PrepareStackedViews",
    "ContrastivePretrainer",
    "ContrastiveLossMetric",
    "CollapseScoreMetric",
    "EmbeddingWriter",
    "FINETUNE_MODES",
    "classification_summary",
    "cross_validate_encoder",
    "embedding_std",
    "load_video_frames",
    "pretraining_lr_lambda",
    "ReseedTransformHandler",
    "export_pretrained_encoder",
    "weight_statistics",
]

VIRTUAL_LR_MODES = ("meta", "scheduled")
UNLABELED = -1
"""Class value of frames from unlabeled videos (ignored by the semi-supervised cross-entropy)."""


def _unwrap(network: nn.Module) -> nn.Module:
    return network.module if isinstance(network, nn.parallel.DistributedDataParallel) else network


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class PrepareViewPairBatch:
    """Move a batch of positive pairs to the device: ``((view_1, view_2), labels or None)``.

    Args:
        view_keys: the two view keys written by ``VideoFramePaird``. Defaults to ``("view_1", "view_2")``.
        label_key: key of the per-item class (``-1`` for unlabeled videos), or ``None`` to ignore classes.

    Raises:
        ValueError: when ``view_keys`` is not two distinct keys.
    """

    def __init__(self, view_keys: Sequence[str] = ("view_1", "view_2"), label_key: str | None = "class") -> None:
        view_keys = tuple(view_keys)
        if len(view_keys) != 2 or view_keys[0] == view_keys[1]:
            raise ValueError(f"view_keys must be two distinct keys, got {view_keys!r}.")
        self.view_keys, self.label_key = view_keys, label_key

    def __call__(
        self, batchdata: Mapping[str, Any], device: str | torch.device | None = None, non_blocking: bool = False
    ) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor | None]:
        """Return the two views ``(B, C, H, W)`` and the labels ``(B,)`` (``None`` without ``label_key``).

        Raises:
            KeyError: when a view key is missing (the message lists the keys found).
        """
        missing = [k for k in self.view_keys if k not in batchdata]
        if missing:
            raise KeyError(
                f"pair batch has no {missing}; found keys {sorted(batchdata)}. Add usseg.transforms.VideoFramePaird "
                "to the transforms, or set view_keys."
            )
        views = tuple(
            torch.as_tensor(batchdata[k]).to(device=device, non_blocking=non_blocking) for k in self.view_keys
        )
        labels = None
        if self.label_key is not None and self.label_key in batchdata:
            labels = torch.as_tensor(batchdata[self.label_key]).long().to(device=device, non_blocking=non_blocking)
        return views, labels  # type: ignore[return-value]


def weight_statistics(weights: torch.Tensor) -> dict[str, torch.Tensor]:
    """Mean, standard deviation and normalised entropy of pair weights.

    Args:
        weights: ``(N,)`` non-negative weights.

    Returns:
        ``{"weight_mean", "weight_std", "weight_entropy"}`` as 0-d tensors; the entropy is that of ``w / sum(w)``
        divided by ``log N`` (1 for uniform weights, towards 0 when a few pairs take all the weight; 1 when N = 1).
    """
    weights = weights.detach().float()
    share = weights / weights.sum().clamp_min(1e-12)
    entropy = -(share * share.clamp_min(1e-12).log()).sum()
    normaliser = math.log(weights.numel()) if weights.numel() > 1 else 1.0
    std = weights.std() if weights.numel() > 1 else torch.zeros((), device=weights.device)
    return {"weight_mean": weights.mean(), "weight_std": std, "weight_entropy": entropy / normaliser}


def embedding_std(embeddings: torch.Tensor) -> torch.Tensor:
    """The collapse indicator of SimSiam (Chen & He, CVPR 2021, section 4.1): per-dimension standard deviation of
    the l2-normalised embeddings, averaged and multiplied by ``sqrt(D)``.

    About 1 for embeddings spread over the sphere, 0 when every embedding is the same.

    Args:
        embeddings: ``(B, D)``.

    Returns:
        a 0-d tensor.
    """
    normalised = F.normalize(embeddings.detach().float(), dim=1)
    return normalised.std(dim=0).mean() * math.sqrt(embeddings.shape[1])


class _NoMetaStream:
    """Stands in for the meta loader when meta weighting is off; reading it is a bug, so it says so."""

    def __iter__(self) -> Any:
        raise RuntimeError("meta weighting is off (no weight_network): there is no meta data stream to read.")


class ContrastivePretrainer(SemiSupervisedTrainer):
    """USCL / Meta-USCL contrastive pre-training (see the module docstring for the meta step).

    Each batch (from ``train_data_loader``) holds two views per video and optionally the video's class; the network
    is called as ``network(images) -> {"h", "z"[, "logits"]}`` (wrap a ``ContrastiveNetwork`` in
    ``usseg.networks.contrastive.ContrastiveOutputs``, then in ``DistributedDataParallel`` for DDP), once per view.

    ``engine.state.output`` holds per iteration: ``loss``, ``contrastive_loss``, ``cls_loss`` (with a classifier),
    ``meta_loss`` (iterations with a meta step), ``weight_mean``/``weight_std``/``weight_entropy`` (pair weights
    used for the real step; uniform without CMW-Net), ``embedding_std`` (SimSiam's collapse indicator) and
    ``collapse_rank_score`` (MONAI ``EmbeddingCollapseMetric`` effective-rank score of the embeddings; higher means
    more collapsed), ``labeled_fraction``.

    Args:
        device: device or ``"auto"``.
        max_epochs: epochs to train.
        train_data_loader: batches of positive pairs.
        network: returns ``{"h", "z"[, "logits"]}``; usually ``ContrastiveOutputs(ContrastiveNetwork)``, DDP-wrapped
            under ``torchrun``.
        optimizer: the main optimizer (SGD with momentum for Meta-USCL; any optimizer without meta weighting).
        loss_function: NT-Xent with optional pair weights; default ``NTXentLoss(0.5)``.
        meta_data_loader: held-out meta pairs (first frame of each meta video, two augmentations); required with
            ``weight_network``.
        weight_network: CMW-Net ``(h_i, h_j) -> (N,)`` weights, or ``None`` for plain SimCLR/USCL.
        weight_optimizer: optimizer of ``weight_network`` (Adam 6e-5 as released), stepped inside the meta step.
        meta_interval: run the meta step every ``meta_interval`` iterations (1 = every iteration, as released);
            in between, the current CMW-Net still weights the pairs.
        virtual_lr: ``"meta"`` (virtual step at ``meta_lr``, fixed) or ``"scheduled"`` (the main optimizer's
            current lr, released).
        meta_lr: learning rate of the virtual step when ``virtual_lr="meta"``.
        meta_parameters: name prefixes (of the network behind the wrappers, e.g. ``"encoder.layer4"``,
            ``"projection"``) of the parameters moved by the virtual step; ``None`` for all (released).
        classification_weight: weight of USCL's semi-supervised cross-entropy (needs a network with a classifier
            and batches with ``class``; ``-1`` marks unlabeled videos). 0 disables it.
        double_forward: reproduce USCL's four forwards per step (``compat.uscl_double_forward``): the
            cross-entropy uses a first pass over both views, NT-Xent a second one, so batch-norm statistics move
            four times.
        collapse_metric: compute ``collapse_rank_score`` every iteration.
        epoch_length: iterations per epoch; defaults to the length of ``train_data_loader``.
        prepare_batch: returns ``((view_1, view_2), labels)``; default :class:`PrepareViewPairBatch`.
        kwargs: other :class:`~usseg.engines.SupervisedTrainer` arguments (``precision``, ``channels_last``,
            ``train_handlers``...).

    Raises:
        ValueError: an invalid option value (quoted), a weight network without meta loader or optimizer, fp16
            with meta weighting, or a classification weight without classifier settings.
        TypeError: meta weighting with a main optimizer other than ``torch.optim.SGD``.
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Iterable,
        network: nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_function: Callable | None = None,
        meta_data_loader: Iterable | None = None,
        weight_network: nn.Module | None = None,
        weight_optimizer: torch.optim.Optimizer | None = None,
        meta_interval: int = 1,
        virtual_lr: str = "meta",
        meta_lr: float = 0.1,
        meta_parameters: Sequence[str] | None = None,
        classification_weight: float = 0.0,
        double_forward: bool = False,
        collapse_metric: bool = True,
        epoch_length: int | None = None,
        prepare_batch: Callable | None = None,
        **kwargs: Any,
    ) -> None:
        if isinstance(meta_interval, bool) or not isinstance(meta_interval, int) or meta_interval < 1:
            raise ValueError(f"meta_interval must be a positive integer, got {meta_interval!r}.")
        if virtual_lr not in VIRTUAL_LR_MODES:
            raise ValueError(f"virtual_lr must be one of {VIRTUAL_LR_MODES}, got {virtual_lr!r}.")
        if not float(meta_lr) > 0:
            raise ValueError(f"meta_lr must be positive, got {meta_lr!r}.")
        if float(classification_weight) < 0:
            raise ValueError(f"classification_weight must be >= 0, got {classification_weight!r}.")
        if isinstance(meta_parameters, str):
            raise TypeError(f"meta_parameters must be a list of name prefixes, got the string {meta_parameters!r}.")
        if weight_network is not None:
            if meta_data_loader is None or weight_optimizer is None:
                raise ValueError(
                    "meta weighting (weight_network) needs meta_data_loader and weight_optimizer, got "
                    f"meta_data_loader={meta_data_loader!r}, weight_optimizer={weight_optimizer!r}."
                )
            if not isinstance(optimizer, torch.optim.SGD):
                raise TypeError(
                    f"the virtual step reproduces torch.optim.SGD (momentum, weight decay); got "
                    f"{type(optimizer).__name__}. Use SGD with meta weighting, or weight_network=None."
                )
            if kwargs.get("precision") == "fp16":
                raise ValueError(
                    "precision 'fp16' is not supported with meta weighting (no loss scaling in the meta "
                    "step); use 'bf16' or 'fp32'."
                )
        if epoch_length is None and hasattr(train_data_loader, "__len__"):
            epoch_length = len(train_data_loader)
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            train_data_loader=train_data_loader,
            unlabeled_data_loader=meta_data_loader if weight_network is not None else _NoMetaStream(),
            network=network,
            optimizer=optimizer,
            loss_function=NTXentLoss(0.5) if loss_function is None else loss_function,
            epoch_length=epoch_length,
            prepare_batch=PrepareViewPairBatch() if prepare_batch is None else prepare_batch,
            loss_weights={"cls": float(classification_weight)},
            **kwargs,
        )
        self.loss_weights.pop("unsup", None)  # the semi-supervised base's FixMatch weight has no meaning here
        self.prepare_meta = self.prepare_batch
        self.weight_network = weight_network
        self.weight_optimizer = weight_optimizer
        self.meta_interval = int(meta_interval)
        self.virtual_lr = virtual_lr
        self.meta_lr = float(meta_lr)
        self.meta_parameters = None if meta_parameters is None else tuple(str(p) for p in meta_parameters)
        self.double_forward = bool(double_forward)
        self.collapse_metric = (
            EmbeddingCollapseMetric(include_indicators=["effective_rank"]) if collapse_metric else None
        )
        if self.meta_parameters is not None:
            names = [name for name, _ in self.core_network.named_parameters()]
            unmatched = [p for p in self.meta_parameters if not any(n.startswith(p) for n in names)]
            if unmatched or not self.meta_parameters:
                raise ValueError(
                    f"meta_parameters {list(self.meta_parameters)!r}: {unmatched or 'empty'} match no parameter "
                    f"name; names start with {sorted({n.split('.')[0] for n in names})}."
                )
        if weight_network is not None:
            self.add_event_handler(Events.STARTED, self._broadcast_weight_network)

    # -- what the base iteration and the checkpoints see ---------------------------------------------------------

    @property
    def core_network(self) -> nn.Module:
        """The network behind DDP and output wrappers, whose parameter names ``meta_parameters`` refer to."""
        network = _unwrap(self.network)
        return getattr(network, "network", network)

    @property
    def networks(self) -> list[nn.Module]:
        """The trained network and, with meta weighting, CMW-Net."""
        return [self.network] + ([self.weight_network] if self.weight_network is not None else [])

    @property
    def optimizers(self) -> list[torch.optim.Optimizer]:
        """The optimizers the base iteration zeroes and steps: the main one.

        CMW-Net's optimizer is stepped inside the meta step instead, because the released order needs the updated
        CMW-Net before the real step (put it in the checkpoint's ``save_dict`` like any optimizer).
        """
        return [self.optimizer]

    def _broadcast_weight_network(self, engine: Engine) -> None:
        # DDP broadcasts the main network at construction; CMW-Net is not DDP-wrapped, so ranks start from rank 0's
        if _world_size() > 1:
            for tensor in self.weight_network.state_dict().values():
                dist.broadcast(tensor, src=0)

    # -- forward: one pass per view --------------------------------------------------------------------------------

    def _views_forward(self, engine: ContrastivePretrainer, views: Sequence[torch.Tensor]) -> list[dict]:
        outputs = [engine.network(engine.network_input(view)) for view in views]
        if not isinstance(outputs[0], Mapping) or "h" not in outputs[0] or "z" not in outputs[0]:
            raise TypeError(
                f"the network must return a dict with 'h' and 'z' (wrap it in "
                f"usseg.networks.contrastive.ContrastiveOutputs), got {type(outputs[0]).__name__}."
            )
        return outputs

    def forward(self, engine: ContrastivePretrainer, batchdata: Any) -> dict[str, Any]:
        views, labels = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking)
        engine.state.output = {Keys.IMAGE: views[0]}
        classify = engine.loss_weights.get("cls", 0.0) > 0
        first = engine._views_forward(engine, views) if (engine.double_forward and classify) else None
        outputs = engine._views_forward(engine, views)
        cls_outputs = first if first is not None else outputs
        engine.state.output[Keys.PRED] = outputs[0]["z"]
        return {
            "h": (outputs[0]["h"], outputs[1]["h"]),
            "z": (outputs[0]["z"], outputs[1]["z"]),
            "logits": tuple(out.get("logits") for out in cls_outputs),
            "labels": labels,
        }

    # -- losses, the meta step, statistics -----------------------------------------------------------------------

    def _classification_loss(self, logits: Sequence[torch.Tensor | None], labels: torch.Tensor | None) -> torch.Tensor:
        if logits[0] is None or labels is None:
            raise ValueError(
                "classification_weight > 0 needs a network with a classifier (num_classes > 0) and batches with the "
                f"class key; got logits={'missing' if logits[0] is None else 'present'}, "
                f"labels={'missing' if labels is None else 'present'}."
            )
        labeled = labels != UNLABELED
        total = logits[0].float().sum() * 0.0 + logits[1].float().sum() * 0.0  # keeps DDP's graph complete
        if bool(labeled.any()):
            for view_logits in logits:
                total = total + F.cross_entropy(view_logits.float()[labeled], labels[labeled])
        return total

    def _pair_weights(self, h: Sequence[torch.Tensor], with_grad: bool) -> torch.Tensor | None:
        if self.weight_network is None:
            return None
        # CMW-Net sees the representations as data: its gradient comes from the meta loss only
        h_i, h_j = h[0].detach().float(), h[1].detach().float()
        if with_grad:
            return self.weight_network(h_i, h_j)
        with torch.no_grad():
            return self.weight_network(h_i, h_j)

    def _training_loss(
        self, engine: ContrastivePretrainer, fwd: Mapping[str, Any], weights: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(total, NT-Xent, cross-entropy or None) of the iteration's forward pass with pair ``weights``."""
        contrastive = engine.loss_function(fwd["z"][0].float(), fwd["z"][1].float(), weights)
        cls_weight = engine.loss_weights.get("cls", 0.0)
        if cls_weight > 0:
            cls = engine._classification_loss(fwd["logits"], fwd["labels"])
            return contrastive + cls_weight * cls, contrastive, cls
        return contrastive, contrastive, None

    def _virtual_parameters(self, loss: torch.Tensor) -> dict[str, torch.Tensor]:
        """``theta'`` as a differentiable function of CMW-Net's parameters, SGD's update rule replayed."""
        core = self.core_network
        named = dict(core.named_parameters())
        moved = [
            name
            for name in named
            if self.meta_parameters is None or any(name.startswith(prefix) for prefix in self.meta_parameters)
        ]
        grads = torch.autograd.grad(
            loss, [named[n] for n in moved], create_graph=True, retain_graph=True, allow_unused=True
        )
        group_of = {id(p): group for group in self.optimizer.param_groups for p in group["params"]}
        virtual: dict[str, torch.Tensor] = {name: param.detach() for name, param in named.items()}
        for name, grad in zip(moved, grads):
            param = named[name]
            group = group_of.get(id(param))
            if group is None or not param.requires_grad:
                continue  # not trained by the main optimizer: it does not move in the real step either
            if group.get("maximize", False):
                raise ValueError("the virtual step does not support SGD(maximize=True).")
            step = torch.zeros_like(param) if grad is None else grad.float()
            if group["weight_decay"]:
                step = step + group["weight_decay"] * param.detach()
            if group["momentum"]:
                buffer = self.optimizer.state.get(param, {}).get("momentum_buffer")
                velocity = step if buffer is None else group["momentum"] * buffer + (1 - group["dampening"]) * step
                step = step + group["momentum"] * velocity if group["nesterov"] else velocity
            lr = self.meta_lr if self.virtual_lr == "meta" else float(group["lr"])
            virtual[name] = param.detach() - lr * step
        return virtual

    def _meta_step(self, engine: ContrastivePretrainer, fwd: Mapping[str, Any]) -> torch.Tensor:
        weights = engine._pair_weights(fwd["h"], with_grad=True)
        estimated, _, _ = engine._training_loss(engine, fwd, weights)
        virtual = engine._virtual_parameters(estimated)
        core = engine.core_network
        # batch-norm statistics of the virtual model go to copies: the released code discards its meta_model
        buffers = {name: buffer.clone() for name, buffer in core.named_buffers()}
        (meta_1, meta_2), _ = engine.prepare_meta(engine.next_unlabeled(), engine.state.device, engine.non_blocking)
        # both views in one pass: a meta list of a single video still gives batch-norm two samples
        stacked = engine.network_input(torch.cat([meta_1, meta_2], dim=0))
        with autocast(engine.state.device, engine.precision):
            z_meta = functional_call(core, {**virtual, **buffers}, (stacked,), strict=True).float()
        meta_loss = engine.loss_function(z_meta[: meta_1.shape[0]], z_meta[meta_1.shape[0] :])
        alpha = [p for p in engine.weight_network.parameters() if p.requires_grad]
        grads = torch.autograd.grad(meta_loss, alpha, retain_graph=True, allow_unused=True)
        world = _world_size()
        for param, grad in zip(alpha, grads):
            grad = torch.zeros_like(param) if grad is None else grad.detach()
            if world > 1:
                dist.all_reduce(grad)
                grad = grad / world
            param.grad = grad
        engine.weight_optimizer.step()
        engine.weight_optimizer.zero_grad(set_to_none=True)
        return meta_loss.detach()

    def compute_losses(self, engine: ContrastivePretrainer, forward_output: dict[str, Any]) -> dict[str, torch.Tensor]:
        terms: dict[str, torch.Tensor] = {}
        if engine.weight_network is not None and engine.state.iteration % engine.meta_interval == 0:
            terms["meta_loss"] = engine._meta_step(engine, forward_output)
        weights = engine._pair_weights(forward_output["h"], with_grad=False)
        total, contrastive, cls = engine._training_loss(engine, forward_output, weights)
        terms.update({Keys.LOSS: total, "contrastive_loss": contrastive})
        if cls is not None:
            terms["cls_loss"] = cls
            labels = forward_output["labels"]
            terms["labeled_fraction"] = (labels != UNLABELED).float().mean()
        num_pairs = forward_output["z"][0].shape[0]
        shown = weights if weights is not None else torch.ones(num_pairs, device=forward_output["z"][0].device)
        terms.update(weight_statistics(shown))
        embeddings = torch.cat(forward_output["z"]).detach().float()
        terms["embedding_std"] = embedding_std(embeddings)
        if engine.collapse_metric is not None and embeddings.shape[0] >= 2:
            terms["collapse_rank_score"] = engine.collapse_metric(embeddings.cpu())["effective_rank_score"]
        return terms


# -- validation and inference ------------------------------------------------------------------------------------


class PrepareStackedViews:
    """Both views of a pair batch stacked into one batch ``(2B, C, H, W)`` for an evaluator (eval-mode batch-norm
    makes one pass over both views identical to one pass per view), with no target.

    Args:
        view_keys: the two view keys. Defaults to ``("view_1", "view_2")``.

    Raises:
        ValueError: when ``view_keys`` is not two distinct keys.
    """

    def __init__(self, view_keys: Sequence[str] = ("view_1", "view_2")) -> None:
        self.pair = PrepareViewPairBatch(view_keys, label_key=None)

    def __call__(
        self,
        batchdata: Mapping[str, Any],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, None]:
        (view_1, view_2), _ = self.pair(batchdata, device, non_blocking)
        return torch.cat([view_1, view_2], dim=0), None


def _halves(embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if embeddings.ndim != 2 or embeddings.shape[0] % 2:
        raise ValueError(f"expected stacked pair embeddings (2B, D), got shape {tuple(embeddings.shape)}.")
    half = embeddings.shape[0] // 2
    return embeddings[:half], embeddings[half:]


class ContrastiveLossMetric(Metric):
    """Validation NT-Xent (unweighted) averaged over pairs, from stacked pair embeddings ``(2B, D)`` in ``pred``.

    Lower is better: use it as the evaluator's key metric with ``metric_cmp_fn=lambda current, best: current < best``
    and ``CheckpointSaver(key_metric_negative_sign=True)``. Summed over ranks under DDP.

    Args:
        temperature: NT-Xent temperature. Defaults to 0.5.
        output_transform: maps the engine output to the ``(2B, D)`` embeddings; default ``output["pred"]``.
    """

    def __init__(self, temperature: float = 0.5, output_transform: Callable = lambda output: output[Keys.PRED]) -> None:
        self.loss = NTXentLoss(temperature)
        super().__init__(output_transform=output_transform)

    @reinit__is_reduced
    def reset(self) -> None:
        self._sum = torch.zeros((), dtype=torch.float64)
        self._count = torch.zeros((), dtype=torch.float64)

    @reinit__is_reduced
    def update(self, output: torch.Tensor) -> None:
        z_1, z_2 = _halves(torch.as_tensor(output).detach().float())
        self._sum += float(self.loss(z_1, z_2)) * z_1.shape[0]
        self._count += z_1.shape[0]

    @sync_all_reduce("_sum", "_count")
    def compute(self) -> float:
        if self._count == 0:
            raise RuntimeError("ContrastiveLossMetric needs at least one batch before compute().")
        return float(self._sum / self._count)


class CollapseScoreMetric(Metric):
    """MONAI ``EmbeddingCollapseMetric`` effective-rank score of all validation embeddings (higher = more collapsed).

    Args:
        output_transform: maps the engine output to embeddings ``(B, D)``; default ``output["pred"]``.
    """

    def __init__(self, output_transform: Callable = lambda output: output[Keys.PRED]) -> None:
        self.metric = EmbeddingCollapseMetric(include_indicators=["effective_rank"])
        super().__init__(output_transform=output_transform)

    @reinit__is_reduced
    def reset(self) -> None:
        self._embeddings: list[torch.Tensor] = []

    @reinit__is_reduced
    def update(self, output: torch.Tensor) -> None:
        self._embeddings.append(torch.as_tensor(output).detach().float().cpu())

    def compute(self) -> float:
        embeddings = torch.cat(self._embeddings) if self._embeddings else torch.zeros(0, 1)
        if idist.get_world_size() > 1:
            embeddings = idist.all_gather(embeddings)
        if embeddings.shape[0] < 2:
            raise RuntimeError(f"the collapse score needs at least 2 embeddings, got {embeddings.shape[0]}.")
        return float(self.metric(embeddings)["effective_rank_score"])


class EmbeddingWriter:
    """Collect the network outputs of an inference run and write them once, at the end.

    Writes ``<output_dir>/embeddings.npz`` (``embeddings``: ``(N, D)`` float32, ``files``: the source of each row)
    and ``<output_dir>/embeddings.json`` (row -> file, and the settings), atomically.

    Args:
        output_dir: destination folder (created; must be writable).
        source_key: batch key whose MetaTensor metadata names the file (``filename_or_obj``).
        output_transform: maps the engine output to ``(B, D)``; default ``output["pred"]``.
    """

    def __init__(
        self, output_dir: str, source_key: str = "image", output_transform: Callable = lambda o: o[Keys.PRED]
    ) -> None:
        self.output_dir = output_dir
        self.source_key = source_key
        self.output_transform = output_transform
        self.rows: list[torch.Tensor] = []
        self.files: list[str] = []

    def attach(self, engine: Engine) -> None:
        ensure_writable_dir(self.output_dir)
        if not engine.has_event_handler(self.collect, Events.ITERATION_COMPLETED):
            engine.add_event_handler(Events.STARTED, self.reset)
            engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
            engine.add_event_handler(Events.COMPLETED, self.write)

    def reset(self, engine: Engine) -> None:
        self.rows, self.files = [], []

    def collect(self, engine: Engine) -> None:
        output = engine.state.output
        if isinstance(output, Sequence) and not isinstance(output, Mapping):  # decollated: one dict per item
            rows = torch.stack([torch.as_tensor(self.output_transform(item)).detach().float() for item in output])
            images = [item.get(self.source_key) for item in output]
            files = [str(getattr(image, "meta", {}).get("filename_or_obj", "")) for image in images]
        else:
            rows = torch.as_tensor(self.output_transform(output)).detach().float()
            meta = getattr(output.get(self.source_key), "meta", {})
            names = meta.get("filename_or_obj", [""] * rows.shape[0])
            files = [str(name) for name in (names if isinstance(names, (list, tuple)) else [names])]
        self.rows.append(rows.reshape(rows.shape[0], -1).cpu())
        self.files.extend(files)

    def write(self, engine: Engine) -> None:
        embeddings = torch.cat(self.rows).numpy() if self.rows else np.zeros((0, 0), np.float32)
        folder = Path(self.output_dir)
        with atomic_write(folder / "embeddings.npz", "wb", encoding=None) as handle:
            np.savez(handle, embeddings=embeddings.astype(np.float32), files=np.asarray(self.files))
        atomic_write_json(
            folder / "embeddings.json",
            {
                "num_rows": int(embeddings.shape[0]),
                "dim": int(embeddings.shape[1]) if embeddings.size else 0,
                "files": self.files,
            },
        )


def export_pretrained_encoder(
    network: nn.Module,
    checkpoint: str | os.PathLike | None,
    path: str | os.PathLike,
    description: Mapping[str, Any] | None = None,
) -> str:
    """Write ``encoder.pt`` + ``encoder.json`` (``usseg.networks.encoders.save_encoder``) from a trained network.

    Args:
        network: a ``ContrastiveNetwork`` (or a wrapper of one) with an ``encoder`` submodule.
        checkpoint: weights of ``network`` to load first (a bare state dict, e.g. ``models/model.pt``), or ``None``
            to export the network as it is.
        path: destination of ``encoder.pt``.
        description: extra facts for ``encoder.json`` (method, data, epochs...).

    Returns:
        the path of ``encoder.pt``.

    Raises:
        InputError: when ``checkpoint`` is missing or does not fit ``network``.
    """
    from usseg.networks.encoders import save_encoder

    module = _unwrap(network)
    module = getattr(module, "network", module)
    if checkpoint is not None:
        if not Path(checkpoint).is_file():
            raise InputError(checkpoint, "checkpoint to export not found; train first.")
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        try:
            module.load_state_dict(state)
        except RuntimeError as err:
            raise InputError(checkpoint, f"does not fit the network: {str(err)[:400]}") from err
    weights, _ = save_encoder(module.encoder, path, dict(description or {}))
    return str(weights)


# -- downstream evaluation: video-level cross-validation of a pre-trained encoder -----------------------------------

FINETUNE_MODES = ("finetune", "linear")
"""``finetune``: the last residual block (``layer4[-1]``) and a new classifier are trained, as Meta-USCL's POCUS
protocol actually does (its ``'last_three'`` mode, ``methods.md`` section 2.4 item 13); ``linear``: the classifier
only (linear probe)."""


def load_video_frames(
    items: Sequence[Mapping[str, Any]],
    spatial_size: int = 64,
    frame_step: int = 5,
    max_frames_per_video: int = 16,
    normalize: Sequence[float] = (0.18, 0.24),
    frame_source: Any | None = None,
) -> tuple[torch.Tensor, list[int]]:
    """Every ``frame_step``-th frame of each video (at most ``max_frames_per_video``), resized and normalised.

    Args:
        items: video items with ``video`` (absolute path: video file, DICOM cine or frame folder).
        spatial_size: output side.
        frame_step: keep frames ``0, step, 2 step, ...``.
        max_frames_per_video: cap per video, so long videos do not dominate a fold.
        normalize: ``(mean, std)`` applied after scaling 0-255 to [0, 1].
        frame_source: an object with ``num_frames(path)`` and ``get_frames(path, indices)`` returning grayscale
            uint8 ``(n, H, W)`` (e.g. frames decoded and downsized once); default: a grayscale ``VideoFrameCache``.

    Returns:
        ``(frames (F, 1, S, S) float32, video index of every frame)``.

    Raises:
        ValueError: on a non-positive ``frame_step``, cap or size.
        InputError: an unreadable video (from the reader).
    """
    from usseg.data.readers import VideoFrameCache

    for name, value in (("spatial_size", spatial_size), ("frame_step", frame_step), ("cap", max_frames_per_video)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    cache = VideoFrameCache(max_bytes=256 * 1024**2, color="gray") if frame_source is None else frame_source
    frames, owners = [], []
    for index, item in enumerate(items):
        count = cache.num_frames(item["video"])
        wanted = list(range(0, count, frame_step))[:max_frames_per_video]
        raw = torch.from_numpy(np.ascontiguousarray(cache.get_frames(item["video"], wanted))).float()[:, None]
        resized = F.interpolate(raw, size=(spatial_size, spatial_size), mode="bilinear", antialias=True)
        frames.append(((resized / 255.0).clamp(0, 1) - float(normalize[0])) / float(normalize[1]))
        owners.extend([index] * len(wanted))
        if frame_source is None:
            cache.clear()  # each video is read once: keep the memory flat
    return torch.cat(frames), owners


class _TrainedHead(nn.Module):
    """What a fold trains on the cached trunk features: an optional last residual block, pooling, the classifier."""

    def __init__(self, block: nn.Module | None, pool: nn.Module, classifier: nn.Module) -> None:
        super().__init__()
        self.block, self.pool, self.classifier = block, pool, classifier

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.block is None:
            return self.classifier(features)
        return self.classifier(torch.flatten(self.pool(self.block(features)), 1))


def _split_validation(videos: Sequence[int], labels: Sequence[int], fraction: float, seed: int) -> set[int]:
    """A class-stratified share of the training videos for epoch selection."""
    rng = np.random.default_rng(seed)
    chosen: set[int] = set()
    for label in sorted({labels[v] for v in videos}):
        members = [v for v in videos if labels[v] == label]
        take = max(1, int(round(fraction * len(members)))) if len(members) > 1 else 0
        chosen.update(members[int(i)] for i in rng.permutation(len(members))[:take])
    return chosen


def _confusion(truth: torch.Tensor, predicted: torch.Tensor, num_classes: int) -> np.ndarray:
    return np.bincount((truth * num_classes + predicted).numpy(), minlength=num_classes**2).reshape(
        num_classes, num_classes
    )


def classification_summary(confusion: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
    """Accuracy and per-class precision / recall of a confusion matrix (rows = truth, columns = prediction)."""
    confusion = np.asarray(confusion, dtype=np.int64)
    total = int(confusion.sum())
    per_class = {}
    for index, name in enumerate(class_names):
        predicted, actual = int(confusion[:, index].sum()), int(confusion[index].sum())
        hits = int(confusion[index, index])
        per_class[name] = {
            "precision": hits / predicted if predicted else float("nan"),
            "recall": hits / actual if actual else float("nan"),
            "support": actual,
        }
    return {
        "accuracy": float(np.trace(confusion)) / total if total else float("nan"),
        "per_class": per_class,
        "confusion_matrix": confusion.tolist(),
    }


def cross_validate_encoder(
    videos: Sequence[Mapping[str, Any]],
    class_names: Sequence[str],
    output_file: str | os.PathLike | None = None,
    encoder_weights: str | os.PathLike | None = None,
    mode: str = "finetune",
    depth: int = 18,
    widths: Sequence[int] = (64, 128, 256, 512),
    spatial_size: int = 64,
    frame_step: int = 5,
    max_frames_per_video: int = 16,
    normalize: Sequence[float] = (0.18, 0.24),
    epochs: int = 30,
    batch_size: int = 128,
    learning_rate: float = 0.01,
    weight_decay: float = 1e-4,
    val_fraction: float = 0.2,
    seed: int = 0,
    frames: tuple[torch.Tensor, list[int]] | None = None,
) -> dict[str, Any]:
    """Video-level k-fold cross-validation of a (pre-trained) encoder on frame classification.

    For every fold ``k``: test = the videos of fold ``k``; the other folds' videos are split (stratified by class)
    into training and a ``val_fraction`` validation part. A ResNet (``build_resnet_encoder``) initialised from
    ``encoder_weights`` (random when ``None``) gets a new linear classifier; ``mode`` chooses what is trained
    (:data:`FINETUNE_MODES`). The frozen part runs in eval mode and its output is computed once per fold, so an
    epoch only runs the trained part; there is no augmentation (the same protocol for every initialisation).
    Adam (``learning_rate``, ``weight_decay``) with a per-epoch cosine schedule, as the Meta-USCL POCUS protocol.

    Reported per fold: the test accuracy at the epoch with the best validation accuracy (``selected``; the number to
    quote), at the last epoch (``last``), and the best test accuracy over epochs (``paper_protocol_best_test_epoch``,
    the optimistic selection of the USCL/Meta-USCL code, for comparison only). Summed over folds: confusion
    matrices, total accuracy, per-class precision and recall; and mean +- std of the per-fold accuracies.

    Args:
        videos: items with ``video`` (absolute path), ``class`` (index into ``class_names``) and ``fold``.
        class_names: class names, in index order.
        output_file: JSON to write the results to (atomically), or ``None``.
        encoder_weights: ``encoder.pt`` from ``save_encoder``, or ``None`` for random initialisation.
        mode: ``"finetune"`` or ``"linear"``.
        depth, widths: the encoder architecture (must match ``encoder_weights``).
        spatial_size, frame_step, max_frames_per_video, normalize: frame sampling (:func:`load_video_frames`).
        epochs, batch_size, learning_rate, weight_decay: the fine-tuning schedule.
        val_fraction: share of the training videos used to choose the epoch.
        seed: seed of the weights of new layers, the batch order and the validation split.
        frames: frames already loaded with :func:`load_video_frames` for ``videos`` (reused across runs).

    Returns:
        the results dictionary (also written to ``output_file``).

    Raises:
        ValueError: an unknown mode, bad numbers, or items without ``fold``/``class``.
    """
    from usseg.networks.encoders import build_resnet_encoder, encoder_feature_dim, load_encoder_weights

    if mode not in FINETUNE_MODES:
        raise ValueError(f"mode must be one of {FINETUNE_MODES}, got {mode!r}.")
    if not 0.0 < float(val_fraction) < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}.")
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    missing = [i for i, item in enumerate(videos) if "fold" not in item or "class" not in item]
    if missing:
        raise ValueError(f"videos {missing[:5]} lack 'fold' or 'class'; assign folds with assign_video_folds.")
    num_classes = len(class_names)
    labels = [int(item["class"]) for item in videos]
    folds = sorted({int(item["fold"]) for item in videos})
    images, owners = (
        frames
        if frames is not None
        else load_video_frames(videos, spatial_size, frame_step, max_frames_per_video, normalize)
    )
    frame_labels = torch.tensor([labels[v] for v in owners])

    per_fold, sums = [], {key: np.zeros((num_classes, num_classes), np.int64) for key in ("selected", "last", "paper")}
    for fold in folds:
        generator = torch.Generator().manual_seed(int(seed) * 1000 + fold)
        torch.manual_seed(int(seed) * 1000 + fold)  # the new layers' initial weights
        test_videos = [v for v, item in enumerate(videos) if int(item["fold"]) == fold]
        pool = [v for v, item in enumerate(videos) if int(item["fold"]) != fold]
        val_videos = _split_validation(pool, labels, val_fraction, seed * 1000 + fold)
        masks = {
            "train": torch.tensor([v in set(pool) - val_videos for v in owners]),
            "validation": torch.tensor([v in val_videos for v in owners]),
            "test": torch.tensor([v in set(test_videos) for v in owners]),
        }
        encoder = build_resnet_encoder(depth=depth, in_channels=int(images.shape[1]), widths=tuple(widths))
        if encoder_weights is not None:
            load_encoder_weights(encoder, encoder_weights)
        classifier = nn.Linear(encoder_feature_dim(encoder), num_classes)
        trained_block = encoder.layer4[-1] if mode == "finetune" else None
        encoder.eval()
        with torch.no_grad():  # the frozen trunk, once per fold: conv1 ... layer4[:-1] (or all of it, linear)
            cached = []
            for start in range(0, images.shape[0], 256):
                x = images[start : start + 256]
                x = encoder.maxpool(encoder.act(encoder.bn1(encoder.conv1(x))))
                x = encoder.layer3(encoder.layer2(encoder.layer1(x)))
                x = encoder.layer4[:-1](x) if trained_block is not None else encoder.avgpool(encoder.layer4(x))
                cached.append(x.flatten(1) if trained_block is None else x)
            cached_features = torch.cat(cached)
        head = _TrainedHead(trained_block, encoder.avgpool, classifier)
        optimizer = torch.optim.Adam(head.parameters(), lr=learning_rate, weight_decay=weight_decay)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)

        train_index = torch.nonzero(masks["train"]).squeeze(1)
        history = []
        for epoch in range(epochs):
            order = train_index[torch.randperm(len(train_index), generator=generator)]
            for start in range(0, len(order), batch_size):
                batch = order[start : start + batch_size]
                if len(batch) < 2 and trained_block is not None:
                    continue  # batch-norm cannot train on one frame
                head.train()
                loss = F.cross_entropy(head(cached_features[batch]), frame_labels[batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            schedule.step()
            head.eval()
            with torch.no_grad():
                val_pred = head(cached_features[masks["validation"]]).argmax(dim=1)
                test_pred = head(cached_features[masks["test"]]).argmax(dim=1)
            history.append(
                {
                    "epoch": epoch + 1,
                    "val_accuracy": float((val_pred == frame_labels[masks["validation"]]).float().mean()),
                    "test_accuracy": float((test_pred == frame_labels[masks["test"]]).float().mean()),
                    "test_pred": test_pred,
                }
            )
        selected = max(history, key=lambda h: (h["val_accuracy"], -h["epoch"]))  # the earliest best epoch
        best_test = max(history, key=lambda h: (h["test_accuracy"], -h["epoch"]))
        truth = frame_labels[masks["test"]]
        confusions = {
            "selected": _confusion(truth, selected["test_pred"], num_classes),
            "last": _confusion(truth, history[-1]["test_pred"], num_classes),
            "paper": _confusion(truth, best_test["test_pred"], num_classes),
        }
        for key, matrix in confusions.items():
            sums[key] += matrix
        per_fold.append(
            {
                "fold": fold,
                "test_videos": len(test_videos),
                "test_frames": int(masks["test"].sum()),
                "train_frames": int(masks["train"].sum()),
                "validation_frames": int(masks["validation"].sum()),
                "selected_epoch": selected["epoch"],
                "accuracy_selected": selected["test_accuracy"],
                "accuracy_last": history[-1]["test_accuracy"],
                "accuracy_paper_protocol_best_test_epoch": best_test["test_accuracy"],
                "confusion_selected": confusions["selected"].tolist(),
                "val_accuracy_curve": [h["val_accuracy"] for h in history],
            }
        )

    def mean_std(key: str) -> dict[str, float]:
        values = np.array([fold_result[key] for fold_result in per_fold])
        return {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0}

    results = {
        "settings": {
            "mode": mode,
            "encoder_weights": None if encoder_weights is None else str(encoder_weights),
            "depth": depth,
            "widths": list(widths),
            "spatial_size": spatial_size,
            "frame_step": frame_step,
            "max_frames_per_video": max_frames_per_video,
            "normalize": list(normalize),
            "epochs": epochs,
            "batch_size": batch_size,
            "learning_rate": learning_rate,
            "weight_decay": weight_decay,
            "val_fraction": val_fraction,
            "seed": seed,
            "augmentation": "none (the frozen part's features are computed once per fold)",
            "epoch_selection": "best validation accuracy (videos of the training folds), never the test fold",
        },
        "class_names": list(class_names),
        "num_videos": len(videos),
        "num_frames": int(images.shape[0]),
        "folds": per_fold,
        "accuracy_selected": mean_std("accuracy_selected"),
        "accuracy_last": mean_std("accuracy_last"),
        "accuracy_paper_protocol_best_test_epoch": mean_std("accuracy_paper_protocol_best_test_epoch"),
        "pooled_selected": classification_summary(sums["selected"], class_names),
        "pooled_last": classification_summary(sums["last"], class_names),
        "pooled_paper_protocol_best_test_epoch": classification_summary(sums["paper"], class_names),
    }
    if output_file is not None:
        atomic_write_json(output_file, results)
    return results


# -- schedules and small handlers for the bundle ---------------------------------------------------------------------


def pretraining_lr_lambda(method: str, max_epochs: int, warmup_epochs: int = 10) -> Callable[[int], float]:
    """The released per-epoch learning-rate factor of a method, for ``torch.optim.lr_scheduler.LambdaLR``.

    - ``"meta_uscl"``: ``0.1 + 0.9 * exp(-5 (1 - e / W)^2)`` for epoch ``e < W``, then
      ``0.5 (1 + cos(pi (e - W) / (E - W)))`` (``Schuture/Meta-USCL: train.py``, W = 10, E = 300);
    - ``"uscl"``: 1 for ``e < W``, then the same cosine (``CosineAnnealingLR`` stepped from epoch 10).

    Args:
        method: ``"uscl"`` or ``"meta_uscl"``.
        max_epochs: ``E``.
        warmup_epochs: ``W``, clipped to ``E - 1``.

    Returns:
        ``epoch -> factor``.

    Raises:
        ValueError: an unknown method or a non-positive ``max_epochs``.
    """
    if method not in ("uscl", "meta_uscl"):
        raise ValueError(f"method must be 'uscl' or 'meta_uscl', got {method!r}.")
    if isinstance(max_epochs, bool) or not isinstance(max_epochs, int) or max_epochs < 1:
        raise ValueError(f"max_epochs must be a positive integer, got {max_epochs!r}.")
    warm = max(0, min(int(warmup_epochs), max_epochs - 1))
    return _LrFactor(method, max_epochs, warm)


class _LrFactor:
    """Picklable per-epoch factor (a lambda in a scheduler's state would break checkpoints)."""

    def __init__(self, method: str, max_epochs: int, warm: int) -> None:
        self.method, self.max_epochs, self.warm = method, max_epochs, warm

    def __call__(self, epoch: int) -> float:
        if epoch < self.warm:
            return 0.1 + 0.9 * math.exp(-5 * (1 - epoch / self.warm) ** 2) if self.method == "meta_uscl" else 1.0
        return 0.5 * (1 + math.cos(math.pi * (epoch - self.warm) / max(1, self.max_epochs - self.warm)))


class ReseedTransformHandler:
    """Seed a transform with the same seed at every run of an engine (``STARTED``), so that a validation set with
    random views (crops, frame draws) gives comparable losses from one validation to the next.

    Args:
        transform: anything with ``set_random_state(seed=...)``.
        seed: the seed.

    Raises:
        TypeError: when ``transform`` cannot be seeded.
    """

    def __init__(self, transform: Any, seed: int = 0) -> None:
        if not callable(getattr(transform, "set_random_state", None)):
            raise TypeError(f"transform must have set_random_state(), got {type(transform).__name__}.")
        self.transform, self.seed = transform, int(seed)

    def attach(self, engine: Engine) -> None:
        if not engine.has_event_handler(self, Events.STARTED):
            engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        self.transform.set_random_state(seed=self.seed)
