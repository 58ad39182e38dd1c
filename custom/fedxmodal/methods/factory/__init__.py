"""The federated multimodal data factory (Galati et al., MICCAI 2024), phase 1: a
conditional StyleGAN2-style generator of every site's appearance, trained with FedAvg (uniform
weights, k of N sites per round) without any site sending an image.

Pieces: the network (``fedxmodal.networks.stylegan``), the GAN trainer
(``fedxmodal.engine.gan``), here: the site's domain key (:mod:`.domain_key`, a frozen random CNN
instead of CLIP), its conditioned slices and quality figures (:mod:`.site_data`, SWD
:mod:`.quality`), the pictures (:mod:`.pictures`), the site part that re-creates the optimizers
every round (:mod:`.site`) and the unweighted server average (:mod:`.aggregator`). Jobs run the
one site script ``fl/site.py`` (``GanSiteRunner``); ``jobs/specs/factory.json``.

Condition of a slice: the site (its row in the site embedding: ``sites``, the phase-1 federation
in a fixed order), the site's domain key, and the slice's position in its volume (``n_zbins``
bins, as the official code). Ablation without the key: model argument ``key_mix`` 0.
"""

from __future__ import annotations

from ..base import GanMethod, ServerParts
from .site_data import quality_metrics, site_slices

SPLITS = ("training", "validation", "test")


class FactoryMethod(GanMethod):
    """Args:
    sites: the phase-1 sites' names in the order of the generator's site embedding.
    quality_samples: slices (real and generated) per SWD figure.
    picture_every: rounds between two sample grids at a site.
    """

    name = "data_factory"
    label = "data factory, phase 1 (conditional StyleGAN2-lite, FedAvg)"
    site_parts = "fedxmodal.methods.factory.site.FactorySiteParts"
    QUALITY_METRICS = ("swd", "swd_nokey", "swd_other", "swd_floor")
    job_spec = "factory"  # jobs/specs/factory.json: the generator and optimiser of a comparison cell

    def __init__(self, sites=(), quality_samples: int = 64, picture_every: int = 5):
        self.sites = tuple(sites)
        if len(set(self.sites)) != len(self.sites):
            raise ValueError(f"factory: duplicate site names in {list(self.sites)}")
        self.quality_samples = int(quality_samples)
        self.picture_every = max(1, int(picture_every))
        self._last_picture_round: int | None = None

    @classmethod
    def server_parts(cls, min_clients: int, method_args: dict | None = None) -> ServerParts:
        # G, D and EMA-G averaged with uniform weights (the official code), not by slice counts
        return ServerParts(aggregator={"path": "fedxmodal.methods.factory.aggregator.UniformAggregator", "args": {}})

    def build_network(self, **args):
        from ...networks.gan import FactoryGAN

        return FactoryGAN.from_args(**args)

    def site_index(self, site_name: str) -> int:
        if site_name not in self.sites:
            raise ValueError(f"site {site_name!r} is not one of the factory's phase-1 sites {list(self.sites)} "
                             "(method_args.sites in the job spec)")
        return self.sites.index(site_name)

    def site_data(self, trainer, data, site_name: str, seed: int = 0) -> dict:
        index = self.site_index(site_name)
        cfg = trainer.model.cfg
        n_zbins, key_dim = cfg.n_zbins, cfg.key_dim
        train = site_slices(data, "training", index, n_zbins, key_dim=key_dim, seed=seed)
        out = {"training": train}
        for k, split in enumerate(SPLITS[1:], start=1):
            if data.site.split(split):
                out[split] = site_slices(data, split, index, n_zbins, key=train.key, seed=seed + k)
        return out

    def quality_metrics(self, trainer, splits: dict, split: str) -> dict:
        target = splits.get(split) or splits["training"]
        return quality_metrics(trainer, splits["training"], target, n_sites=len(self.sites),
                               n=self.quality_samples, seed=0)

    def site_pictures(self, trainer, splits: dict, out_dir, current_round: int, total_rounds: int | None = None,
                      writer=None) -> list:
        from pathlib import Path

        from .pictures import save_rows, tile

        # every `picture_every` rounds of THIS site (k of N sampled: it does not train every round)
        last = self._last_picture_round
        final = current_round == (total_rounds or 0) - 1
        if last is not None and current_round - last < self.picture_every and not final:
            return []
        self._last_picture_round = current_round
        data = splits.get("validation") or splits["training"]
        real, zbins = data.subset(8, seed=0)
        own = trainer.sample(data.site_index, data.key, zbins, n=len(real), seed=0)
        nokey = trainer.sample(data.site_index, data.key, zbins, n=len(real), seed=0, key_keep=False)
        name = self.sites[data.site_index]
        png = save_rows([("real (this site)", real), ("generated: site + key, same slice positions", own),
                         ("generated: site only (key dropped)", nokey)],
                        Path(out_dir) / f"{name}_round{current_round:03d}.png", title=f"{name}, round {current_round}")
        if writer is not None:
            writer.add_image("factory/samples", tile(own, 8)[None], current_round)
        return [png]
