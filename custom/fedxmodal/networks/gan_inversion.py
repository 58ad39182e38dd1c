"""Phase 2 of the federated multimodal data factory (Galati et al., MICCAI 2024): the networks a site trains
around the FROZEN phase-1 generator F.

* :class:`InversionEncoder` E: a slice -> F's extended latent w+ (one w per synthesis layer),
  as offsets from F's mean latent ``w_avg`` (so an untrained encoder starts at F's "average
  slice", the usual start of GAN inversion);
* :class:`FeatureSegHead` S: F's synthesis feature maps (every resolution) -> segmentation logits;
* :class:`InversionSegNet`: E + S in one module -- the weights a site trains and may share
  (F itself never changes in phase 2).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .stylegan import StyleGANConfig

__all__ = ["num_ws", "InversionEncoder", "FeatureSegHead", "InversionSegNet"]


def num_ws(cfg: StyleGANConfig) -> int:
    """The generator's number of w inputs: two styled convs per resolution above 4 px, one at
    4 px, plus the last ToGray's (``StyleGenerator.num_ws``)."""
    return 2 * len(cfg.resolutions)


def _groups(channels: int) -> int:
    """GroupNorm groups: 8 where they divide the channels (batches of a few slices: no BatchNorm)."""
    return math.gcd(8, channels)


def _conv_block(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1),
                         nn.GroupNorm(_groups(c_out), c_out), nn.LeakyReLU(0.2))


class InversionEncoder(nn.Module):
    """Image -> w+ for a frozen generator of ``cfg`` (GAN inversion).

    A stem conv, then stride-2 conv blocks down to 4x4 (channels doubling from ``width`` up to
    4 x ``width``), GroupNorm + LeakyReLU, global average pooling and a linear layer to
    ``num_ws * w_dim`` offsets added to ``w_avg`` (a buffer copied from the generator with
    :meth:`set_w_avg`). The last layer starts near zero: an untrained encoder returns ``w_avg``
    on every layer, which the generator renders as a plausible slice.

    Args:
        cfg: the generator's configuration (image size, ``w_dim``, ``num_ws``).
        width: channels of the first block.
    Shapes: images (B, image_channels, S, S) in [-1, 1] -> w+ (B, num_ws, w_dim).
    """

    def __init__(self, cfg: StyleGANConfig, width: int = 32):
        super().__init__()
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        self.cfg, self.num_ws = cfg, num_ws(cfg)
        layers, c = [_conv_block(cfg.image_channels, width)], width
        for i in range(int(math.log2(cfg.image_size)) - 2):  # S -> 4
            c_out = min(width * 2 ** (i + 1), 4 * width)
            layers.append(_conv_block(c, c_out, stride=2))
            c = c_out
        self.features = nn.Sequential(*layers)
        self.to_w = nn.Linear(c, self.num_ws * cfg.w_dim)
        with torch.no_grad():
            self.to_w.weight.mul_(1e-3)
            self.to_w.bias.zero_()
        self.register_buffer("w_avg", torch.zeros(cfg.w_dim))

    @torch.no_grad()
    def set_w_avg(self, w_avg: torch.Tensor) -> None:
        """Copy the generator's mean latent (w_dim,): the point every offset is taken from."""
        if w_avg.shape != self.w_avg.shape:
            raise ValueError(f"w_avg must be ({self.cfg.w_dim},), got {tuple(w_avg.shape)}")
        self.w_avg.copy_(w_avg)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        s, c = self.cfg.image_size, self.cfg.image_channels
        if images.dim() != 4 or images.shape[1:] != (c, s, s):
            raise ValueError(f"images must be (B, {c}, {s}, {s}), got {tuple(images.shape)}")
        h = self.features(images).mean(dim=(2, 3))
        offsets = self.to_w(h).view(-1, self.num_ws, self.cfg.w_dim)
        return self.w_avg.to(offsets.dtype)[None, None] + offsets


class FeatureSegHead(nn.Module):
    """Segmentation from the generator's synthesis features (the paper's S branch).

    Each resolution's map -> 1x1 conv to ``width`` -> bilinear upsampling to S; the maps are summed,
    then a 3x3 conv block (GroupNorm, LeakyReLU) and a 3x3 conv to ``n_classes`` logits.

    Args:
        cfg: the generator's configuration (its channels per resolution).
        n_classes: background + structures.
        width: the common width of the per-resolution maps.
    Shapes: features [(B, C_r, r, r) for r = 4..S] -> logits (B, n_classes, S, S).
    """

    def __init__(self, cfg: StyleGANConfig, n_classes: int, width: int = 32):
        super().__init__()
        if n_classes < 2 or width < 1:
            raise ValueError(f"n_classes must be >= 2 and width >= 1, got {n_classes}, {width}")
        self.cfg = cfg
        self.lateral = nn.ModuleList([nn.Conv2d(cfg.channels(r), width, 1) for r in cfg.resolutions])
        self.head = nn.Sequential(_conv_block(width, width), nn.Conv2d(width, n_classes, 3, padding=1))

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        if len(features) != len(self.lateral):
            raise ValueError(f"expected {len(self.lateral)} feature maps (one per resolution), got {len(features)}")
        s = self.cfg.image_size
        total = 0
        for conv, f in zip(self.lateral, features):
            x = conv(f)
            total = total + (x if x.shape[-1] == s else
                             F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False))
        return self.head(total)


class InversionSegNet(nn.Module):
    """A site's trainable phase-2 networks: ``encoder`` (:class:`InversionEncoder`) and
    ``seg_head`` (:class:`FeatureSegHead`). Its state dict is what a site may share."""

    def __init__(self, cfg: StyleGANConfig | None = None, n_classes: int = 2, encoder_width: int = 32,
                 head_width: int = 32, **config):
        """``InversionSegNet(cfg, n_classes)`` or ``InversionSegNet(n_classes=..., **StyleGANConfig
        fields)`` (a job's model spec; ``init_seed`` is ignored: E and S start from the torch seed)."""
        super().__init__()
        config.pop("init_seed", None)
        if cfg is not None and config:
            raise ValueError("pass a StyleGANConfig or its fields, not both")
        cfg = self.cfg = cfg or StyleGANConfig.from_dict(config)
        self.encoder = InversionEncoder(cfg, encoder_width)
        self.seg_head = FeatureSegHead(cfg, n_classes, head_width)
