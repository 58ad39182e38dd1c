"""Self-supervised one-shot episodes from superpixels (SSL-ALPNet).

An episode: a random slice that has superpixels, one random superpixel of it as the "organ"; the
slice (with that superpixel's mask) is augmented twice independently: once as the support, once
as the query. Geometry (MONAI RandAffine then Rand2DElastic) moves image and mask together (mask
with nearest-neighbour interpolation); gamma (RandAdjustContrast) touches the image only. No flips.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from monai.transforms import Compose, Rand2DElasticd, RandAdjustContrastd, RandAffined


@dataclass(frozen=True)
class EpisodeConfig:
    """SSL-ALPNet's augmentation ('sabs_aug'), in pixels and degrees of the stored slices.

    Args:
        rotate_deg, shear_deg: uniform in +-value (shear as an angle: factor tan(angle)).
        shift_px: uniform translation in +-value pixels per axis.
        zoom: scale factor range (MONAI draws it per axis; the original draws one isotropic factor).
        elastic_alpha, elastic_sigma: the original Simard-style field (uniform noise smoothed by a
            Gaussian of ``sigma`` px, times ``alpha``); mapped to Rand2DElastic with control points
            every ``2 * sigma`` px and the same rms displacement (``rms_elastic_px``).
        gamma: gamma range on the min-max range of the image.
        min_fg_pixels: an episode whose support or query mask keeps fewer pixels is redrawn.
        augment: False gives support == query (tests, sanity checks).
    """

    rotate_deg: float = 5.0
    shift_px: float = 5.0
    shear_deg: float = 5.0
    zoom: tuple[float, float] = (0.9, 1.2)
    elastic_alpha: float = 10.0
    elastic_sigma: float = 5.0
    gamma: tuple[float, float] = (0.5, 1.5)
    min_fg_pixels: int = 4
    augment: bool = True

    def __post_init__(self):
        object.__setattr__(self, "zoom", tuple(self.zoom))  # JSON gives lists
        object.__setattr__(self, "gamma", tuple(self.gamma))
        if not (0 < self.zoom[0] <= self.zoom[1]) or not (0 < self.gamma[0] <= self.gamma[1]):
            raise ValueError(f"zoom {self.zoom} and gamma {self.gamma} must be increasing positive ranges")
        if min(self.rotate_deg, self.shift_px, self.shear_deg, self.elastic_alpha) < 0 or self.elastic_sigma <= 0:
            raise ValueError(f"augmentation magnitudes must be >= 0 (sigma > 0): {self}")

    @property
    def rms_elastic_px(self) -> float:
        """rms displacement per axis of the original field: alpha * std(U(-1, 1)) * ||G_sigma||_2."""
        return self.elastic_alpha / math.sqrt(3.0) / (2.0 * math.sqrt(math.pi) * self.elastic_sigma)

    def transforms(self) -> Compose:
        """The MONAI pipeline over {'image': (1, H, W), 'mask': (1, H, W)}."""
        keys = ("image", "mask")
        rot, shear = math.radians(self.rotate_deg), math.tan(math.radians(self.shear_deg))
        zoom = (self.zoom[0] - 1.0, self.zoom[1] - 1.0)  # MONAI adds 1 to scale_range
        return Compose([
            RandAffined(keys, prob=1.0, rotate_range=(rot,), shear_range=(shear, shear),
                        translate_range=(self.shift_px, self.shift_px), scale_range=(zoom, zoom),
                        mode=("bilinear", "nearest"), padding_mode=("border", "zeros")),
            Rand2DElasticd(keys, spacing=(2 * self.elastic_sigma,) * 2,
                           magnitude_range=(self.rms_elastic_px, self.rms_elastic_px), prob=1.0,
                           mode=("bilinear", "nearest"), padding_mode=("border", "zeros")),
            RandAdjustContrastd("image", prob=1.0, gamma=self.gamma),
        ])


class EpisodeSampler:
    """Draws seeded episodes from slices and their superpixels.

    Args:
        images: (N, 1, H, W) float slices.
        superpixels: (N, H, W) int labels, 0 = none, 1..n per slice.
        config: augmentation settings.
        seed: seeds slice/superpixel choice and both augmentations (same seed -> same episodes).
    """

    def __init__(self, images: torch.Tensor, superpixels: torch.Tensor,
                 config: EpisodeConfig = EpisodeConfig(), seed: int = 0):
        if images.ndim != 4 or images.shape[1] != 1:
            raise ValueError(f"images must be (N, 1, H, W), got {tuple(images.shape)}")
        if tuple(superpixels.shape) != (images.shape[0], *images.shape[2:]):
            raise ValueError(f"superpixels {tuple(superpixels.shape)} do not match images {tuple(images.shape)}")
        self.images = images.float()
        self.superpixels = torch.as_tensor(superpixels).long()
        self.n_superpixels = self.superpixels.flatten(1).amax(1)
        self.candidates = torch.nonzero(self.n_superpixels > 0).flatten()
        if self.candidates.numel() == 0:
            raise ValueError("no slice has superpixels: nothing to draw episodes from")
        self.config = config
        self.rng = np.random.RandomState(seed)
        self.augment = config.transforms()
        self.augment.set_random_state(seed=seed + 1)

    def __len__(self) -> int:
        """Number of slices episodes are drawn from (those with superpixels)."""
        return int(self.candidates.numel())

    def _view(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.config.augment:
            return image.clone(), mask.clone()
        out = self.augment({"image": image.clone(), "mask": mask.clone()})
        img, msk = (torch.as_tensor(out[k]) for k in ("image", "mask"))
        return img.as_subclass(torch.Tensor).float(), (msk.as_subclass(torch.Tensor) > 0.5).float()

    def sample(self, max_tries: int = 20) -> dict:
        """One episode.

        Returns:
            dict with ``support_image``, ``query_image``: (1, H, W) float; ``support_mask``,
            ``query_mask``: (1, H, W) float in {0, 1} (the chosen superpixel after each view's
            geometry); ``slice_index``, ``superpixel``: ints identifying the source.
        """
        for _ in range(max_tries):
            i = int(self.candidates[self.rng.randint(len(self.candidates))])
            sp_id = int(self.rng.randint(1, int(self.n_superpixels[i]) + 1))
            mask = (self.superpixels[i] == sp_id).float()[None]
            s_img, s_msk = self._view(self.images[i], mask)
            q_img, q_msk = self._view(self.images[i], mask)
            if min(s_msk.sum(), q_msk.sum()) >= self.config.min_fg_pixels:
                return {"support_image": s_img, "support_mask": s_msk, "query_image": q_img,
                        "query_mask": q_msk, "slice_index": i, "superpixel": sp_id}
        raise RuntimeError(f"no episode with >= {self.config.min_fg_pixels} foreground pixels in "
                           f"{max_tries} draws; are the superpixels tiny?")

    def with_seed(self, seed: int) -> "EpisodeSampler":
        """A sampler over the same slices and superpixels with another seed (no recomputation)."""
        return EpisodeSampler(self.images, self.superpixels, self.config, seed=seed)

    def batch(self, batch_size: int = 1) -> dict:
        """``batch_size`` episodes stacked: images/masks (B, 1, H, W), ``slice_index`` and
        ``superpixel`` (B,) long."""
        eps = [self.sample() for _ in range(batch_size)]
        out = {k: torch.stack([e[k] for e in eps])
               for k in ("support_image", "support_mask", "query_image", "query_mask")}
        out.update({k: torch.tensor([e[k] for e in eps]) for k in ("slice_index", "superpixel")})
        return out
