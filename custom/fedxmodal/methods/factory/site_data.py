"""A site's real slices with their generator conditions, and the site's quality metrics.

Everything here stays at the site: the slices, their positions in their volumes and the domain
key are used to train and to judge the factory; only the aggregate metrics of
:func:`quality_metrics` (scalars) are sent.
"""

from __future__ import annotations

import torch

from .domain_key import DomainKeyEncoder, domain_key
from .quality import swd


def to_unit_range(volume: torch.Tensor) -> torch.Tensor:
    """A preprocessed volume (Z, 1, S, S) (CT windowed / MR clipped, z-scored) -> [-1, 1] by its own
    min and max: the generator's output range, whatever the modality."""
    v = volume.float()
    lo, hi = v.min(), v.max()
    return (v - lo) / (hi - lo).clamp_min(1e-6) * 2.0 - 1.0


def slice_zbins(n_slices: int, n_zbins: int) -> torch.Tensor:
    """The position bin of each slice of a volume of ``n_slices`` slices: floor(z / Z * n_zbins), (Z,)."""
    return torch.clamp((torch.arange(n_slices) * n_zbins) // max(n_slices, 1), max=n_zbins - 1).long()


class ConditionedSlices:
    """Real slices of one site and split with their conditions.

    Args:
        volumes: the split's volumes, each (Z, 1, S, S) preprocessed slices.
        site_index: the site's row in the generator's site embedding.
        key: (key_dim,) the site's domain key (:func:`fedxmodal.methods.factory.domain_key.domain_key`).
        n_zbins: position bins (the generator's ``n_zbins``).
        seed: seeds the batch sampler.

    Attributes: ``images`` (N, 1, S, S) in [-1, 1], ``zbins`` (N,) long.
    """

    def __init__(self, volumes, site_index: int, key: torch.Tensor, n_zbins: int, seed: int = 0):
        volumes = [v for v in volumes if len(v)]
        if not volumes:
            raise ValueError("no slices")
        self.images = torch.cat([to_unit_range(v) for v in volumes])
        self.zbins = torch.cat([slice_zbins(len(v), n_zbins) for v in volumes])
        self.site_index = int(site_index)
        self.key = key.float()
        self.gen = torch.Generator().manual_seed(seed)
        self.floor_cache: dict = {}  # real-vs-real SWD against another split: fixed, computed once

    def __len__(self) -> int:
        return len(self.images)

    def batch(self, n: int) -> dict:
        """``n`` random slices: {"images": (n, 1, S, S), "site": (n,), "key": (n, K), "zbin": (n,)}."""
        idx = torch.randint(0, len(self), (n,), generator=self.gen)
        return {"images": self.images[idx], "site": torch.full((n,), self.site_index, dtype=torch.long),
                "key": self.key.expand(n, -1).clone(), "zbin": self.zbins[idx]}

    def subset(self, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """A fixed subset of at most ``n`` slices (same for the same seed): (images, zbins)."""
        idx = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:n]
        return self.images[idx], self.zbins[idx]


def site_slices(data, split: str, site_index: int, n_zbins: int, key: torch.Tensor | None = None,
                key_dim: int = 64, seed: int = 0) -> ConditionedSlices:
    """The :class:`ConditionedSlices` of a :class:`~fedxmodal.data.slices.SiteSlices` split; the
    domain key is computed from these slices unless given (a site's key comes from its training
    split and is reused for its other splits)."""
    volumes = [v.image.as_subclass(torch.Tensor) if hasattr(v.image, "as_subclass") else v.image
               for v in data.volumes(split)]
    if key is None:
        key = domain_key(DomainKeyEncoder(key_dim), torch.cat([to_unit_range(v) for v in volumes]))
    return ConditionedSlices(volumes, site_index, key, n_zbins, seed=seed)


@torch.no_grad()
def quality_metrics(trainer, train: ConditionedSlices, val: ConditionedSlices, n_sites: int, n: int = 64,
                    seed: int = 0) -> dict[str, float]:
    """The site's quality figures of the current (EMA) generator, SWD x 100 (lower is better):

    * ``swd``: generated with the site's full condition (site, key, the real slices' positions)
      vs the site's real ``val`` slices -- the factory's quality figure for this site;
    * ``swd_nokey``: the same with the key dropped (site embedding alone);
    * ``swd_other``: generated with every OTHER site's embedding (key dropped), mean -- what a
      generator that ignores its condition would score here;
    * ``swd_floor``: the site's real training slices vs its real validation slices.
    """
    real, zbins = val.subset(n, seed=seed)
    m = len(real)

    def generated(site: int, keep: bool) -> torch.Tensor:
        return trainer.sample(site, val.key, zbins, n=m, seed=seed, key_keep=keep)

    others = [s for s in range(n_sites) if s != val.site_index]
    out = {"swd": swd(real, generated(val.site_index, True), seed=seed),
           "swd_nokey": swd(real, generated(val.site_index, False), seed=seed),
           "swd_floor": val.floor_cache.get((train, n, seed))}
    if out["swd_floor"] is None:  # keyed by the split object itself (a held reference, unlike an id)
        out["swd_floor"] = val.floor_cache[(train, n, seed)] = swd(real, train.subset(n, seed=seed)[0], seed=seed)
    if others:
        out["swd_other"] = sum(swd(real, generated(s, False), seed=seed) for s in others) / len(others)
    return out
