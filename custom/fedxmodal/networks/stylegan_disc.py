"""The projection discriminator of the conditional StyleGAN2-lite (its generator:
:mod:`.stylegan`; the two with the EMA generator in one module: :mod:`.gan`).

Discriminator: StyleGAN2's residual D -- FromGray (1x1 conv), one residual block per resolution
S..8 (two 3x3 convs, the second followed by 2x2 average-pool downsampling; a 1x1 skip; sum
times sqrt(1/2)), then at 4x4 the minibatch standard deviation, a 3x3 conv, a linear layer and a
linear head to a ``cond_dim`` feature phi(x). The logit is the projection <phi(x), c> /
sqrt(cond_dim) with c the discriminator's own condition embedding -- no unconditional term, as
the official code. Equalized learning rate everywhere.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .stylegan import SQRT2, ConditionEmbedding, EqualLinear, StyleGANConfig

__all__ = ["EqualConv2d", "ProjectionDiscriminator", "minibatch_stddev"]


class EqualConv2d(nn.Module):
    """Conv2d with equalized learning rate; optional leaky ReLU * sqrt(2) and 2x2 average-pool
    downsampling after the conv. Shapes: (B, in, H, W) -> (B, out, H', W')."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool = True,
                 activation: bool = True, downsample: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.weight_gain = 1.0 / math.sqrt(in_channels * kernel_size * kernel_size)
        self.activation, self.downsample, self.padding = activation, downsample, kernel_size // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(x, self.weight * self.weight_gain, self.bias, padding=self.padding)
        if self.downsample:
            x = F.avg_pool2d(x, 2)
        return F.leaky_relu(x, 0.2) * SQRT2 if self.activation else x


class DiscriminatorBlock(nn.Module):
    """Residual block: (conv3x3, conv3x3 + downsample) + 1x1 downsampled skip, times sqrt(1/2)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv0 = EqualConv2d(in_channels, in_channels, 3)
        self.conv1 = EqualConv2d(in_channels, out_channels, 3, downsample=True)
        self.skip = EqualConv2d(in_channels, out_channels, 1, bias=False, activation=False, downsample=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.skip(x) + self.conv1(self.conv0(x))) * math.sqrt(0.5)


def minibatch_stddev(x: torch.Tensor, group_size: int = 4) -> torch.Tensor:
    """Append one channel: the std over groups of samples, averaged over features and pixels.

    The group is min(group_size, B), lowered to the largest size that divides B (so any batch
    works). Shapes: (B, C, H, W) -> (B, C + 1, H, W).
    """
    b, c, h, w = x.shape
    g = min(group_size, b)
    while b % g:
        g -= 1
    y = x.float().reshape(g, b // g, c, h, w)
    y = (y - y.mean(0)).square().mean(0).add(1e-8).sqrt()  # (B/g, C, H, W)
    y = y.mean(dim=(1, 2, 3)).reshape(1, b // g, 1, 1, 1).expand(g, -1, 1, h, w).reshape(b, 1, h, w)
    return torch.cat([x, y.to(x.dtype)], 1)


class ProjectionDiscriminator(nn.Module):
    """Conditional residual StyleGAN2 discriminator (module doc).

    Shapes: image (B, image_channels, S, S) and the condition (site (B,), key (B, key_dim),
    zbin (B,), key_keep (B,) bool or None) -> logits (B,).
    """

    def __init__(self, cfg: StyleGANConfig):
        super().__init__()
        self.cfg = cfg
        res = cfg.resolutions[::-1]  # S, ..., 4
        self.embed = ConditionEmbedding(cfg)
        self.from_gray = EqualConv2d(cfg.image_channels, cfg.channels(res[0]), 1)
        self.blocks = nn.Sequential(*[DiscriminatorBlock(cfg.channels(r), cfg.channels(r // 2)) for r in res[:-1]])
        c4 = cfg.channels(4)
        self.conv = EqualConv2d(c4 + 1, c4, 3)
        self.fc = EqualLinear(c4 * 16, c4, activation="lrelu")
        self.out = EqualLinear(c4, cfg.cond_dim)

    def condition_embedding(self, site, key, zbin, key_keep=None) -> torch.Tensor:
        """(B,), (B, key_dim), (B,), (B,) bool or None -> c (B, cond_dim)."""
        return self.embed(site, key, zbin, key_keep)

    def features(self, image: torch.Tensor) -> torch.Tensor:
        """phi(x): (B, C, S, S) -> (B, cond_dim)."""
        s = self.cfg.image_size
        if image.dim() != 4 or image.shape[1:] != (self.cfg.image_channels, s, s):
            raise ValueError(f"image must be (B, {self.cfg.image_channels}, {s}, {s}), got {tuple(image.shape)}")
        x = self.blocks(self.from_gray(image))
        x = self.conv(minibatch_stddev(x))
        return self.out(self.fc(x.flatten(1)))

    def forward(self, image: torch.Tensor, site, key, zbin, key_keep=None) -> torch.Tensor:
        phi = self.features(image)
        c = self.embed(site, key, zbin, key_keep).to(phi.dtype)
        return (phi * c).sum(1) / math.sqrt(self.cfg.cond_dim)
