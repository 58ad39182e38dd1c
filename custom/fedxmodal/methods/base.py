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
  ``site_parts`` (a :class:`SiteParts` subclass: which weights a site shares, its own tasks, what
  it does around a round) and ``server_parts()`` (server workflows run before FedAvg, an
  aggregator replacing FedAvg's average, per-site payloads, further FedAvg arguments).

The trainer owns the loop, the optimizer, devices, AMP, logging and evaluation; methods never copy
those. :class:`MethodBase` is what every method declares to the registry; :class:`PlainMethod`
is the supervised base, :class:`EpisodicMethod` the self-supervised one-shot base (no labels;
``needs_labels = False``, its own trainer and site runner), :class:`GanMethod` the generative base
(a conditional GAN of the sites' appearance; no labels). Register a new method with one line in ``fedxmodal.methods.METHODS``.
"""

from __future__ import annotations

import abc
import time
from dataclasses import dataclass, field

import torch

from ..engine.episodic import EpisodicTrainer
from ..engine.gan import GanTrainer
from ..engine.supervised import SupervisedTrainer
from ..utils import import_by_path
from .site_runners import EpisodicSiteRunner, GanSiteRunner, SiteData, SupervisedSiteRunner


@dataclass(frozen=True)
class ServerParts:
    """What a method's federated job adds on the server, each ``{"path": ..., "args": {...}}``."""

    pre_workflows: tuple = ()  # ModelControllers run before FedAvg (FedDG's amplitude exchange)
    aggregator: dict | None = None  # a ModelAggregator replacing FedAvg's weighted average (FedBN)
    # One payload per site per round (FedDA-cyclic's peer weights): an object composed into
    # fedxmodal.fl.server.ResumableFedAvg (its `site_payloads` argument documents the protocol).
    site_payloads: dict | None = None
    fedavg_args: dict = field(default_factory=dict)  # further FedAvg arguments (FedProx: fedprox_mu)


class SiteParts:
    """What a method's site does in an NVFlare job beyond train / validate / evaluate. The one
    site script (``fedxmodal.fl.site``) builds one per site; the defaults share every weight and
    add no task.

    Args:
        trainer: the site's trainer (``get_weights`` / ``set_weights``, ``model``, ``method``).
        data: the site's :class:`~fedxmodal.methods.site_runners.SiteData` (its volumes and, for
            the supervised styles, its (N, 1, H, W) training slices; nothing of it leaves the site).
        site_name: the site's NVFlare name (for logs).
        state_dir: a folder at the site that outlives a run, for state a method keeps across
            rounds (None: keep nothing on disk).
    """

    def __init__(self, trainer, data: SiteData, site_name: str, state_dir=None):
        self.trainer = trainer
        self.data = data
        self.site_name = site_name
        self.state_dir = state_dir

    def weight_access(self):
        """(get_weights, set_weights): what the site sends and how it loads what it receives."""
        return self.trainer.get_weights, self.trainer.set_weights

    def task_handlers(self) -> dict:
        """``{task_name: fn(FLModel) -> FLModel}`` for the method's own NVFlare tasks."""
        return {}

    def on_task(self, task_name: str, fl_model) -> None:
        """Every received task's FLModel, before its weights are loaded: a method takes (and
        removes) what it receives beyond the model's weights here."""

    def before_training(self, info) -> None:
        """Before a round's local training (``info``: the round, ``fedxmodal.fl.client_loop.RoundInfo``)."""

    def after_training(self, info, fit_result: dict) -> dict:
        """After a round's local training (``fit_result``: the trainer's fit summary, see
        ``BaseTrainer.fit``); returns extra training metrics (scalars, TensorBoard
        ``train/<name>``; they stay at the site's TensorBoard stream)."""
        return {}


class MethodBase:
    """What the registry and the generic pieces read from every method, whatever its training style."""

    name = ""
    label = ""
    regimes = ("local", "centralized", "federated")
    trainer = SupervisedTrainer
    needs_labels = True  # False: trains on unlabelled sites (self-supervised); not in the supervised grid
    site_runner = SupervisedSiteRunner  # what runs at its sites (methods/site_runners.py), by training style
    site_parts: str | None = None  # dotted path of a SiteParts subclass; None: SiteParts
    # How a comparison cell of this method (``compare``, fedxmodal.apps.cells) is trained and scored:
    # "segmentation" (epochs with labels; per-volume 3D Dice), "oneshot" (episode steps without
    # labels; one-shot Dice from a support volume), "generative" (G+D steps; image quality per site).
    evaluation = "segmentation"
    # The committed job (jobs/specs/<job_spec>.json) whose network, training and preprocessing
    # settings a comparison cell of this method starts from ("": none, the method is not in the grid).
    job_spec = "fedgin"

    @classmethod
    def evaluate_sites(cls, trainer, sites, split: str = "test") -> dict:
        """This method's evaluation of ``trainer`` on every site of ``sites``
        (:class:`~fedxmodal.data.slices.SiteSlices`): ``{"per_site": {site: summary}}`` -- here the
        per-volume 3D Dice (``mean_dice``, ``dice`` per structure, ``n_volumes``)."""
        return {"per_site": {s.name: trainer.evaluate(s, split)["summary"] for s in sites}}

    @classmethod
    def network_overrides(cls, regime: str, n_domains: int) -> dict:
        """UNetConfig fields this method needs in ``regime`` ('local', 'centralized', 'federated')."""
        return {}

    @classmethod
    def guard_declarations(cls, image_size: int, method_args: dict | None = None, model: dict | None = None) -> dict:
        """What this method's sites send beyond weights and metrics, declared to the output guard
        (``fedxmodal.fl.guard.OutputGuard`` arguments ``extra_tasks``, ``metrics`` and
        ``expected_shapes``; ``model``: the job's model spec)."""
        return {}

    @classmethod
    def server_parts(cls, min_clients: int, method_args: dict | None = None) -> ServerParts:
        """What a federated job of this method adds on the server (``min_clients``: the sites the
        job requires; ``method_args``: the job's method arguments)."""
        return ServerParts()

    @classmethod
    def build_site_parts(cls, trainer, data: SiteData, site_name, state_dir=None) -> SiteParts:
        parts_cls = import_by_path(cls.site_parts) if cls.site_parts else SiteParts
        return parts_cls(trainer, data, site_name, state_dir=state_dir)


class PlainMethod(MethodBase):
    """No intensity augmentation (base spatial augmentation only)."""

    name = "none"
    label = "none (spatial only)"

    def augment(self, images: torch.Tensor) -> torch.Tensor:
        return images

    def training_loss(self, model, images, labels, seg_loss, domains=None):
        logits = model(self.augment(images))
        return seg_loss(logits, labels[:, None]), {}

    def infer(self, model, images, domain=None):
        return model(images)

    def prepare(self, per_domain_images) -> None:
        """Called with [(N_d, 1, H, W) training slices per domain] before training; no-op here."""


class EpisodicMethod(MethodBase, abc.ABC):
    """A self-supervised few-shot method: trains on episodes built from unlabelled slices through
    :class:`~fedxmodal.engine.episodic.EpisodicTrainer`, segments a new volume from one labelled
    support volume. Its sites run ``EpisodicSiteRunner``. Subclasses implement ``build_network``,
    ``episode_sampler``, ``episode_loss``, ``evaluate_oneshot`` and ``segment_with_support`` (see
    :mod:`fedxmodal.engine.episodic`) and ``preview_pseudo_labels`` (the ``superpixels`` command)."""

    trainer = EpisodicTrainer
    needs_labels = False
    site_runner = EpisodicSiteRunner
    evaluation = "oneshot"
    job_spec = ""
    # the metrics its sites send (EpisodicSiteRunner): one-shot Dice where a site has a
    # labelled volume, the episode loss / Dice otherwise
    SITE_METRICS = ("dice", "dice_[a-z_]+", "n_volumes", "oneshot", "self_support", "episode_loss", "episode_dice",
                    "whole_volume_dice")

    @classmethod
    def guard_declarations(cls, image_size: int, method_args: dict | None = None, model: dict | None = None) -> dict:
        return {"metrics": list(cls.SITE_METRICS)}

    @classmethod
    def evaluate_sites(cls, trainer, sites, split: str = "test") -> dict:
        """One-shot evaluation of every (support site, query site) pair on the query's ``split``
        (:meth:`EpisodicTrainer.evaluate <fedxmodal.engine.episodic.EpisodicTrainer.evaluate>`):
        ``{"per_site": {query: summary with its own site as the support}, "pairs": {"S->Q": ...}}``;
        a pair holds both modalities, the support cases, the settings' Dice and its seconds."""
        per_site, pairs = {}, {}
        for q in sites:
            for s in sites:
                t0 = time.perf_counter()
                ev = trainer.evaluate(q, split, support_site=s)
                secs = time.perf_counter() - t0
                n = max(1, sum(len(r["per_volume"][k]) for r in ev["result"].values() for k in r["per_volume"]))
                pairs[f"{s.name}->{q.name}"] = {
                    "support_modality": s.modality, "query_modality": q.modality, "supports": ev["supports"],
                    "self_support": ev["self_support"], "settings": ev["summary"]["settings"],
                    "n_volumes": ev["summary"]["n_volumes"], "seconds": secs, "seconds_per_volume_structure": secs / n}
                if s is q:
                    per_site[q.name] = {**ev["summary"], "support_site": s.name}
        return {"per_site": per_site, "pairs": pairs}

    @abc.abstractmethod
    def build_network(self, **args) -> torch.nn.Module:
        """See :mod:`fedxmodal.engine.episodic`."""

    @abc.abstractmethod
    def episode_sampler(self, sites, split: str = "training", seed: int = 0):
        """A sampler over the sites' ``split``: ``len()`` (slices), ``batch(n)`` (a dict of episode
        tensors) and ``with_seed(seed)`` (the same slices, other episodes)."""

    @abc.abstractmethod
    def episode_loss(self, model, batch: dict) -> dict:
        """See :mod:`fedxmodal.engine.episodic`."""

    @abc.abstractmethod
    def evaluate_oneshot(self, model, support, queries, organs, use_priors: bool = True) -> dict:
        """See :mod:`fedxmodal.engine.episodic`."""

    @abc.abstractmethod
    def segment_with_support(self, model, support_images, support_organ, query_images, structure=None,
                             use_prior: bool = False) -> torch.Tensor:
        """See :mod:`fedxmodal.engine.episodic`."""

    @abc.abstractmethod
    def preview_pseudo_labels(self, site_slices, out_png, split: str = "training", n_slices: int = 4):
        """See :mod:`fedxmodal.engine.episodic`."""


class GanMethod(MethodBase, abc.ABC):
    """A generative method: a conditional GAN of the sites' slices trained through
    :class:`~fedxmodal.engine.gan.GanTrainer` (no labels). Its sites run ``GanSiteRunner``, which
    calls ``site_data`` once, ``trainer.fit`` on its training batches every round, and judges the
    received model with ``quality_metrics`` (``QUALITY_METRICS``, sent as aggregate scalars; the
    job's key metric is the first, lower is better); ``site_pictures`` stay at the site."""

    trainer = GanTrainer
    needs_labels = False
    site_runner = GanSiteRunner
    regimes = ("federated", "centralized", "local")
    evaluation = "generative"
    job_spec = ""
    QUALITY_METRICS: tuple = ()

    @classmethod
    def guard_declarations(cls, image_size: int, method_args: dict | None = None, model: dict | None = None) -> dict:
        return {"metrics": list(cls.QUALITY_METRICS)}

    @classmethod
    def evaluate_sites(cls, trainer, sites, split: str = "test", seed: int = 0) -> dict:
        """``{"per_site": {site: quality_metrics on its split}}`` of the trainer's generator, every
        site's data prepared by ``site_data`` (the site must be one the model is conditioned on)."""
        method = trainer.method
        return {"per_site": {s.name: method.quality_metrics(trainer, method.site_data(trainer, s, s.name, seed=seed),
                                                            split) for s in sites}}

    @abc.abstractmethod
    def build_network(self, **args) -> torch.nn.Module:
        """The generator, discriminator and EMA generator in one module (the weights a federation averages)."""

    @abc.abstractmethod
    def site_data(self, trainer, data, site_name: str, seed: int = 0) -> dict:
        """``{split: sampler}`` for ``training`` / ``validation`` / ``test`` of a
        :class:`~fedxmodal.data.slices.SiteSlices` (a sampler: ``len()``, ``batch(n)`` -> the dict
        :meth:`GanTrainer.fit` reads); raises ``ValueError`` naming the site if it cannot take part."""

    @abc.abstractmethod
    def quality_metrics(self, trainer, splits: dict, split: str) -> dict:
        """Aggregate quality figures of the trainer's current model on ``splits[split]``."""

    @abc.abstractmethod
    def site_pictures(self, trainer, splits: dict, out_dir, current_round: int, total_rounds: int | None = None,
                      writer=None) -> list:
        """Pictures of the current model at the site (PNG files in ``out_dir``; images in ``writer``,
        a local TensorBoard writer); returns the files written."""
