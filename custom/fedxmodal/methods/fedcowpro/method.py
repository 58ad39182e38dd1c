"""The prototype methods' part for the trainer and the site: pseudo-labels -> episodes, the episode
loss, one-shot evaluation and segmentation with a support volume. One class for the three methods,
which differ only by their prototype and loss settings (``losses.LOSS_VARIANTS``); the registered
classes (``fedxmodal.methods.fedcowpro``) give it their name."""

from __future__ import annotations

import dataclasses

import torch

from ...data.errors import DataError
from ..base import EpisodicMethod
from .episodes import EpisodeConfig, EpisodeSampler
from .losses import episode_losses, method_settings
from .network import FewShotEncoder, IntensityFeatures
from .oneshot import QUADRANT_PRIORS, evaluate_oneshot, prototype_predictor, quadrant_mask, segment_volume, setting2_keep
from .superpixels import SuperpixelConfig, render_superpixel_preview, site_superpixels


class PrototypeMethod(EpisodicMethod):
    """Self-supervised prototype few-shot segmentation (SSL-ALPNet, CoWPro, FedCoWPro).

    Args (``method_args`` of a job or a checkpoint):
        superpixels: ``SuperpixelConfig`` fields (felzenszwalb, body mask).
        episodes: ``EpisodeConfig`` fields (augmentations).
        prototypes: ``PrototypeConfig`` overrides (e.g. ``{"renormalise": true}``).
        loss: ``LossConfig`` overrides (e.g. ``{"edge_weight": 0.5}``).
        exclude_structures: setting 2 -- training slices containing any of these structures are
            removed (needs the training labels, read for this filter only; [] = setting 1).
        cache_dir: where superpixels are cached (default: inside each site's folder).
        variant: the loss/prototype variant (default: the class's ``name``).
    """

    job_spec = "fedcowpro"  # jobs/specs/fedcowpro.json: the encoder, episodes and optimiser of a comparison cell

    def __init__(self, superpixels: dict | None = None, episodes: dict | None = None,
                 prototypes: dict | None = None, loss: dict | None = None, exclude_structures=(),
                 cache_dir: str | None = None, variant: str | None = None):
        proto, loss_cfg = method_settings(variant or self.name)
        self.proto = dataclasses.replace(proto, **(prototypes or {}))
        self.loss = dataclasses.replace(loss_cfg, **(loss or {}))
        self.superpixel_config = SuperpixelConfig(**(superpixels or {}))
        self.episode_config = EpisodeConfig(**(episodes or {}))
        self.exclude_structures = tuple(exclude_structures)
        self.cache_dir = cache_dir

    # ---- network ----------------------------------------------------------------------------
    def build_network(self, kind: str = "encoder", **args) -> torch.nn.Module:
        """``kind`` 'encoder': the GroupNorm ``FewShotEncoder`` trained from scratch (the job's
        model); 'intensity': raw intensities as features (``IntensityFeatures``, the floor)."""
        if kind == "encoder":
            return FewShotEncoder(**args)
        if kind == "intensity":
            return IntensityFeatures(**args)
        raise ValueError(f"network kind must be 'encoder' or 'intensity', got {kind!r}")

    # ---- episodes -----------------------------------------------------------------------------
    def training_slices(self, site, split: str = "training"):
        """(images, superpixels) of one site's ``split`` (superpixels cached in the site), without
        the slices setting 2 removes."""
        sp = site_superpixels(site, split, self.superpixel_config, cache_dir=self.cache_dir)
        if not self.exclude_structures:
            return sp.images, sp.superpixels
        unknown = [s for s in self.exclude_structures if s not in site.structures]
        if unknown:
            raise ValueError(f"exclude_structures {unknown} are not among the job's structures {site.structures}")
        unlabelled = [c.case_id for c in site.site.unlabelled(split)]
        if unlabelled:
            raise DataError(site.site.json_path, f"site '{site.name}': setting 2 removes training slices that "
                                                 f"contain a test structure, which needs their labels; "
                                                 f"{len(unlabelled)} case(s) have none ({', '.join(unlabelled[:3])})")
        labels = torch.cat([v.label for v in site.volumes(split)])
        keep = setting2_keep(labels, [site.structures.index(s) + 1 for s in self.exclude_structures])
        return sp.images[keep], sp.superpixels[keep]

    def episode_sampler(self, sites, split: str = "training", seed: int = 0) -> EpisodeSampler:
        """Episodes from the ``sites`` pooled (one site at a federated site; a site that setting 2
        empties adds nothing to a pool, but a pool with no slice at all is an error naming them)."""
        parts = [self.training_slices(s, split) for s in sites]
        if self.exclude_structures and sum(len(p[0]) for p in parts) == 0:
            raise DataError(sites[0].site.json_path, f"site(s) {', '.join(repr(s.name) for s in sites)}: setting 2 "
                                                     f"leaves no {split} slice: each holds one of "
                                                     f"{list(self.exclude_structures)}")
        return EpisodeSampler(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]),
                              self.episode_config, seed=seed)

    def episode_loss(self, model, batch: dict) -> dict:
        return episode_losses(model, batch, self.proto, self.loss)

    # ---- one shot -----------------------------------------------------------------------------
    def evaluate_oneshot(self, model, support, queries, organs, use_priors: bool = True) -> dict:
        return evaluate_oneshot(model, prototype_predictor(self.proto), support, queries, organs,
                                use_priors=use_priors)

    def segment_with_support(self, model, support_images, support_organ, query_images, structure=None,
                             use_prior: bool = False) -> torch.Tensor:
        side = QUADRANT_PRIORS.get(structure) if use_prior else None
        prior = quadrant_mask(tuple(query_images.shape[-2:]), side) if side else None
        return segment_volume(model, prototype_predictor(self.proto), support_images, support_organ, query_images,
                              prior=prior)

    def preview_pseudo_labels(self, site, out_png, split: str = "training", n_slices: int = 4):
        sp = site_superpixels(site, split, self.superpixel_config, cache_dir=self.cache_dir)
        return render_superpixel_preview(sp.images, sp.superpixels, out_png, n_slices=n_slices,
                                         title=f"{site.name} ({site.modality}) {split}: felzenszwalb superpixels")
