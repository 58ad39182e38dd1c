"""Feature extractors for prototype few-shot segmentation.

``FewShotEncoder``: trained from scratch (no pretrained weights can be had here; the original
uses a COCO-pretrained DeepLabv3-ResNet101), a stack of MONAI residual units with GroupNorm
(tiny batches, CT and MR statistics averaged by FedAvg), strided to 1/4 or 1/8, then a 1x1
projection. ``IntensityFeatures``: no learning at all, the sanity floor "raw intensities as
features" (each pixel's intensity as a soft one-hot over fixed bins, so cosine similarity of two
pixels measures how close their intensities are).
"""

from __future__ import annotations

import math

import torch
from monai.networks.blocks import Convolution, ResidualUnit
from torch import nn


class FewShotEncoder(nn.Module):
    """(B, 1, H, W) -> (B, out_channels, H / downsample, W / downsample).

    Args:
        channels: widths of the stages after the stem; the first ``log2(downsample)`` stages have
            stride 2, the rest stride 1 (so more stages than strides add depth at the last scale).
        downsample: 4 or 8 (ALPNet's features are at 1/8).
        out_channels: width of the 1x1 projection (ALPNet: 256).
        groups: GroupNorm groups (each stage width must be divisible by it).
        in_channels: image channels.
        init_seed: seeds the initial weights without touching the caller's random state (an NVFlare
            server builds the initial global model from the job's arguments); None: the global RNG.
    """

    def __init__(self, channels=(32, 64, 128, 256), downsample: int = 8, out_channels: int = 256,
                 groups: int = 8, in_channels: int = 1, init_seed: int | None = None):
        super().__init__()
        if init_seed is None:
            self._build(channels, downsample, out_channels, groups, in_channels)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(init_seed)
                self._build(channels, downsample, out_channels, groups, in_channels)
        # every argument kept as a same-named attribute: NVFlare's job exporter needs them
        self.channels, self.groups, self.in_channels, self.init_seed = tuple(channels), groups, in_channels, init_seed

    def _build(self, channels, downsample, out_channels, groups, in_channels) -> None:
        if downsample not in (4, 8):
            raise ValueError(f"downsample must be 4 or 8, got {downsample}")
        n_strided = int(math.log2(downsample))
        channels = tuple(int(c) for c in channels)
        if len(channels) < n_strided:
            raise ValueError(f"downsample {downsample} needs at least {n_strided} stages, got {channels}")
        if any(c % groups for c in channels):
            raise ValueError(f"every width in {channels} must be divisible by groups={groups}")
        norm = ("group", {"num_groups": groups})
        layers: list[nn.Module] = [Convolution(2, in_channels, channels[0], kernel_size=3, norm=norm, act="relu")]
        prev = channels[0]
        for i, ch in enumerate(channels):
            layers.append(ResidualUnit(2, prev, ch, strides=2 if i < n_strided else 1, subunits=2,
                                       norm=norm, act="relu"))
            prev = ch
        self.body = nn.Sequential(*layers)
        self.project = nn.Conv2d(prev, out_channels, kernel_size=1, bias=False)
        self.downsample = downsample
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[-1] % self.downsample or x.shape[-2] % self.downsample:
            raise ValueError(f"expected (B, C, H, W) with H, W divisible by {self.downsample}, got {tuple(x.shape)}")
        return self.project(self.body(x))


class IntensityFeatures(nn.Module):
    """Raw intensities as features: (B, 1, H, W) -> (B, n_bins, H / downsample, W / downsample).

    Each pixel becomes Gaussian memberships exp(-(x - c_k)^2 / (2 w^2)) to ``n_bins`` centres
    spread over ``value_range`` (w = bin spacing), average-pooled by ``downsample``. No
    parameters: the baseline a trained encoder must beat.
    """

    def __init__(self, n_bins: int = 16, value_range: tuple[float, float] = (-3.0, 3.0), downsample: int = 1):
        super().__init__()
        if n_bins < 2 or value_range[1] <= value_range[0] or downsample < 1:
            raise ValueError(f"bad IntensityFeatures settings: {n_bins}, {value_range}, {downsample}")
        self.register_buffer("centres", torch.linspace(*value_range, n_bins).view(1, n_bins, 1, 1))
        self.width = (value_range[1] - value_range[0]) / (n_bins - 1)
        self.downsample = downsample
        self.out_channels = n_bins

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 1:
            raise ValueError(f"expected (B, 1, H, W), got {tuple(x.shape)}")
        f = torch.exp(-((x - self.centres) ** 2) / (2 * self.width ** 2))
        return nn.functional.avg_pool2d(f, self.downsample) if self.downsample > 1 else f
