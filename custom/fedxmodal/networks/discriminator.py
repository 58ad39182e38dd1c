"""A small fully convolutional feature discriminator (PatchGAN-style, sized for CPU sites).

On (B, C, h, w) encoder features it returns (B, 1, h', w') patch logits: conv3x3 (C -> w),
LeakyReLU 0.2, conv4x4/2 (w -> 2w), LeakyReLU, conv4x4/2 (2w -> 2w), LeakyReLU, conv3x3 (2w -> 1);
no normalisation (FedDA's local discriminator, arXiv 2509.23907; ~0.14 M parameters for C = 128, w = 32).
Any h, w >= 1.
"""

from __future__ import annotations

import torch
from torch import nn


class FeatureDiscriminator(nn.Module):
    def __init__(self, in_channels: int, width: int = 32):
        super().__init__()
        self.in_channels, self.width = in_channels, width
        act = lambda: nn.LeakyReLU(0.2, inplace=True)  # noqa: E731
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), act(),
            nn.Conv2d(width, 2 * width, 4, stride=2, padding=1), act(),
            nn.Conv2d(2 * width, 2 * width, 4, stride=2, padding=1), act(),
            nn.Conv2d(2 * width, 1, 3, padding=1),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)
