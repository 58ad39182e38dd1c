"""The factory's quality figure: the sliced Wasserstein distance (SWD) between real and generated
slices, on Laplacian-pyramid patches (ProGAN's SWD, Karras et al. 2018), computed at the site.

Why this figure: it needs no pretrained network (FID needs Inception weights, which cannot be had
here), it compares *distributions* of local structure at several scales (intensity, edges,
texture) and it is cheap on a CPU. Why it can be trusted here, per site and round, the site also
reports reference points computed the same way (``quality_metrics`` in ``.site_data``): the real
training slices against the real validation slices (the floor a perfect generator would reach)
and samples generated with *other* sites' conditions (what a generator ignoring the condition
would score). A working factory sits between the two and moves towards the floor over rounds.

Units: the distance between standardised 7x7 patch descriptors, x 100, averaged over the pyramid
levels. Lower is better.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

PATCH = 7


def laplacian_pyramid(images: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """(N, 1, S, S) -> ``levels`` band-pass images, finest first; the last is the low-pass rest."""
    out, current = [], images.float()
    for _ in range(levels - 1):
        down = F.avg_pool2d(current, 2)
        out.append(current - F.interpolate(down, scale_factor=2, mode="bilinear", align_corners=False))
        current = down
    out.append(current)
    return out


def patch_descriptors(images: torch.Tensor, per_image: int, gen: torch.Generator) -> torch.Tensor:
    """``per_image`` random 7x7 patches of each (N, 1, s, s) image -> (N * per_image, 49)."""
    n, _, h, w = images.shape
    if h < PATCH or w < PATCH:
        raise ValueError(f"images of {h}x{w} are smaller than the {PATCH}x{PATCH} patches")
    ys = torch.randint(0, h - PATCH + 1, (n, per_image), generator=gen)
    xs = torch.randint(0, w - PATCH + 1, (n, per_image), generator=gen)
    offs = torch.arange(PATCH)
    rows = (ys[..., None, None] + offs[:, None]).expand(n, per_image, PATCH, PATCH)
    cols = (xs[..., None, None] + offs[None, :]).expand(n, per_image, PATCH, PATCH)
    idx = torch.arange(n)[:, None, None, None].expand_as(rows)
    return images[:, 0][idx, rows, cols].reshape(n * per_image, PATCH * PATCH)


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, n_projections: int, gen: torch.Generator) -> float:
    """Mean 1D Wasserstein-1 distance of (n, d) and (m, d) point sets over random unit directions
    (compared at the same quantiles, so n and m may differ)."""
    dirs = F.normalize(torch.randn(a.shape[1], n_projections, generator=gen), dim=0)
    pa, pb = torch.sort(a @ dirs, dim=0).values, torch.sort(b @ dirs, dim=0).values
    q = torch.linspace(0, 1, max(len(a), len(b)))
    qa = pa[(q * (len(a) - 1)).round().long()]
    qb = pb[(q * (len(b) - 1)).round().long()]
    return float((qa - qb).abs().mean())


@torch.no_grad()
def swd(real: torch.Tensor, fake: torch.Tensor, seed: int = 0, levels: int = 3, per_image: int = 64,
        n_projections: int = 128) -> float:
    """The SWD between real (N, 1, S, S) and generated (M, 1, S, S) slices (module doc), fixed by
    ``seed`` (same patches positions and directions for every call with the same seed and sizes)."""
    if real.shape[1:] != fake.shape[1:]:
        raise ValueError(f"real {tuple(real.shape)} and generated {tuple(fake.shape)} slices differ in shape")
    gen = torch.Generator().manual_seed(seed)
    total = 0.0
    for lr, lf in zip(laplacian_pyramid(real, levels), laplacian_pyramid(fake, levels)):
        dr, df = patch_descriptors(lr, per_image, gen), patch_descriptors(lf, per_image, gen)
        mean, std = dr.mean(dim=0), dr.std(dim=0).clamp_min(1e-6)  # standardised by the REAL set
        total += sliced_wasserstein((dr - mean) / std, (df - mean) / std, n_projections, gen)
    return 100.0 * total / levels
