"""Base spatial augmentation, batched: random rotation/scale/shift applied with MONAI's
``AffineTransform`` layer to images (bilinear) and labels (nearest) with one draw per sample.
No flips: left/right flips would swap kidney_left and kidney_right."""

from __future__ import annotations

import math

import torch
from monai.networks.layers import AffineTransform


class RandomAffine2D:
    def __init__(self, rotate_deg: float = 15.0, scale: tuple[float, float] = (0.85, 1.15),
                 shift: float = 0.05, prob: float = 0.8):
        self.rotate_deg = rotate_deg
        self.scale = scale
        self.shift = shift
        self.prob = prob
        self._warp_image = AffineTransform(normalized=True, mode="bilinear", padding_mode="border")
        self._warp_label = AffineTransform(normalized=True, mode="nearest", padding_mode="zeros")

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, generator=None):
        """images (B, C, H, W) float, labels (B, H, W) integer -> same shapes, one draw per sample."""
        b, dev = images.shape[0], images.device
        rnd = torch.rand(b, 4, generator=generator).to(dev)
        angle = (rnd[:, 0] * 2 - 1) * math.radians(self.rotate_deg)
        scale = self.scale[0] + rnd[:, 1] * (self.scale[1] - self.scale[0])
        apply = (torch.rand(b, generator=generator).to(dev) < self.prob)
        angle, scale = angle * apply, torch.where(apply, scale, torch.ones_like(scale))
        shift = (rnd[:, 2:] * 2 - 1) * self.shift * apply[:, None]
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
        out_img = self._warp_image(images, theta)
        out_lab = self._warp_label(labels[:, None].float(), theta)[:, 0].round().to(labels.dtype)
        return out_img, out_lab
