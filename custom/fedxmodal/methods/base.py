"""The method protocol, and the method with no intensity augmentation.

A method owns every piece of itself (one module, or a package with its NVFlare parts):

* what the one supervised trainer runs (``training_loss(model, images, labels, seg_loss,
  domains=None) -> (loss, logs)``: images (B, 1, H, W) already spatially augmented, labels
  (B, H, W) class indices, domains (B,) the site index of each slice or None;
  ``infer(model, images, domain=None) -> (B, C, H, W)`` logits; ``prepare(per_domain_images)``
  before training), and which trainer runs it (``trainer``);
* what its network needs per regime (``network_overrides``) and which regimes apply (``regimes``);
* what its sites send beyond weights and metrics (``guard_declarations``, for the output guard);
* its federated parts, as dotted paths into its own package, loaded only inside NVFlare:
  ``site_parts`` (a :class:`SiteParts` subclass: which weights a site shares, its own tasks) and
  ``server_parts()`` (server workflows run before FedAvg, an aggregator replacing FedAvg's average).

The trainer owns the loop, the optimizer, devices, AMP, logging and evaluation; methods never copy
those. Register a new method with one line in ``fedxmodal.methods.METHODS``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..engine.supervised import SupervisedTrainer
from ..utils import import_by_path


@dataclass(frozen=True)
class ServerParts:
    """What a method's federated job adds on the server, each ``{"path": ..., "args": {...}}``."""

    pre_workflows: tuple = ()  # ModelControllers run before FedAvg (FedDG's amplitude exchange)
    aggregator: dict | None = None  # a ModelAggregator replacing FedAvg's weighted average (FedBN)


class SiteParts:
    """What a method's site does in an NVFlare job beyond train / validate / evaluate. The generic
    site script (``fedxmodal.fl.segmentation_site``) builds one per site; the defaults share every
    weight and add no task.

    Args:
        trainer: the site's trainer (``get_weights`` / ``set_weights``, ``model``, ``method``).
        train_images: (N, 1, H, W) the site's training slices (they never leave the site).
        site_name: the site's NVFlare name (for logs).
    """

    def __init__(self, trainer, train_images: torch.Tensor, site_name: str):
        self.trainer = trainer
        self.train_images = train_images
        self.site_name = site_name

    def weight_access(self):
        """(get_weights, set_weights): what the site sends and how it loads what it receives."""
        return self.trainer.get_weights, self.trainer.set_weights

    def task_handlers(self) -> dict:
        """``{task_name: fn(FLModel) -> FLModel}`` for the method's own NVFlare tasks."""
        return {}


class PlainMethod:
    """No intensity augmentation (base spatial augmentation only)."""

    name = "none"
    label = "none (spatial only)"
    regimes = ("local", "centralized", "federated")
    trainer = SupervisedTrainer
    site_parts: str | None = None  # dotted path of a SiteParts subclass; None: SiteParts

    @classmethod
    def network_overrides(cls, regime: str, n_domains: int) -> dict:
        """UNetConfig fields this method needs in ``regime`` ('local', 'centralized', 'federated')."""
        return {}

    @classmethod
    def guard_declarations(cls, image_size: int, method_args: dict | None = None) -> dict:
        """What this method's sites send beyond weights and metrics, declared to the output guard
        (``fedxmodal.fl.guard.OutputGuard`` arguments ``extra_tasks`` and ``metrics``)."""
        return {}

    @classmethod
    def server_parts(cls, min_clients: int) -> ServerParts:
        """What a federated job of this method adds on the server (``min_clients``: the sites the
        job requires)."""
        return ServerParts()

    @classmethod
    def build_site_parts(cls, trainer, train_images, site_name) -> SiteParts:
        parts_cls = import_by_path(cls.site_parts) if cls.site_parts else SiteParts
        return parts_cls(trainer, train_images, site_name)

    def augment(self, images: torch.Tensor) -> torch.Tensor:
        return images

    def training_loss(self, model, images, labels, seg_loss, domains=None):
        logits = model(self.augment(images))
        return seg_loss(logits, labels[:, None]), {}

    def infer(self, model, images, domain=None):
        return model(images)

    def prepare(self, per_domain_images) -> None:
        """Called with [(N_d, 1, H, W) training slices per domain] before training; no-op here."""
