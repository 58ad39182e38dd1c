"""The site's *domain key*: what its images look like, as one vector, computed at the site.

The paper conditions the generator on the mean CLIP image embedding of a site's images. CLIP's
weights cannot be downloaded here, so the key is the mean descriptor of a **frozen random CNN**
that every site builds identically from a fixed seed (nothing downloaded, nothing trained, nothing
sent; differentiable, so phase 2 can backpropagate through it). Random convolutional features
keep intensity and texture statistics -- what separates CT from MR from T1 -- which is what the
condition must carry: random-weight networks are known to capture image style (texture
synthesis and style transfer with untrained filters), and ``tests/test_factory.py`` checks that
the keys of two domains lie further apart than the keys of two halves of one site.

The key is site-private: it is not part of the model, never leaves the site (the output guard
refuses any undeclared tensor) and is recomputed from the site's own training slices each run.
"""

from __future__ import annotations

import math

import torch
from torch import nn

KEY_SEED = 20240924  # every site builds the same encoder from this seed


class DomainKeyEncoder(nn.Module):
    """A frozen random CNN: (N, 1, S, S) slices in [-1, 1] -> (N, key_dim) descriptors.

    Three stride-2 3x3 convolutions (1 -> 16 -> 32 -> key_dim/2 channels, leaky ReLU 0.2, He
    initialisation from ``seed``) and, per channel, the spatial mean and standard deviation of the
    last map (first- and second-order statistics, as style descriptors use).
    """

    def __init__(self, key_dim: int = 64, seed: int = KEY_SEED):
        super().__init__()
        if key_dim < 2 or key_dim % 2:
            raise ValueError(f"key_dim must be an even number >= 2, got {key_dim}")
        self.key_dim = key_dim
        gen = torch.Generator().manual_seed(seed)
        widths = (1, 16, 32, key_dim // 2)
        layers = []
        for cin, cout in zip(widths[:-1], widths[1:]):
            conv = nn.Conv2d(cin, cout, 3, stride=2, padding=1)
            with torch.no_grad():
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) * math.sqrt(2.0 / (cin * 9)))
                conv.bias.zero_()
            layers += [conv, nn.LeakyReLU(0.2)]
        self.net = nn.Sequential(*layers)
        self.requires_grad_(False)
        self.eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != 1:
            raise ValueError(f"expected (N, 1, S, S) slices, got {tuple(images.shape)}")
        maps = self.net(images.float())
        return torch.cat([maps.mean(dim=(2, 3)), maps.std(dim=(2, 3))], dim=1)


@torch.no_grad()
def domain_key(encoder: DomainKeyEncoder, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """The site's key: the mean descriptor over ``images`` (N, 1, S, S), scaled to norm
    sqrt(key_dim) (entries of order one for the generator's linear embedding). Shape (key_dim,)."""
    if len(images) == 0:
        raise ValueError("a domain key needs at least one slice")
    total = torch.zeros(encoder.key_dim)
    for i in range(0, len(images), batch_size):
        total += encoder(images[i:i + batch_size]).sum(dim=0)
    mean = total / len(images)
    return mean / mean.norm().clamp_min(1e-8) * math.sqrt(encoder.key_dim)
