"""Bezier-curve intensity remapping, as used by Dual-Norm (Zhou et al., CVPR 2022, arXiv 2112.11177).

Each image is min-max scaled to ``[-1, 1]`` and its intensities are pushed through a random
monotone cubic Bezier curve: increasing from ``(-1, -1)`` to ``(1, 1)`` for the
"source-similar" view (contrast order kept: bright stays bright), decreasing (the curve flipped,
``v -> -curve(v)``, from ``(-1, 1)`` to ``(1, -1)``) for the "source-dissimilar" view (contrast
inverted, e.g. CT-like -> MR-like). Dual-Norm then normalises the two views with separate
BatchNorm branches.

Pure tensor ops, no learned state; any H, W, CPU or CUDA.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

from .gin import _rand

__all__ = ["bezier_curve", "BezierStyleAugment"]


def bezier_curve(control_points: torch.Tensor, n: int = 1000) -> torch.Tensor:
    """Points of Bezier curves at ``n`` evenly spaced parameters ``t`` in ``[0, 1]``.

    ``B(t) = sum_i C(K-1, i) t^i (1 - t)^(K-1-i) P_i`` (Bernstein form), so ``B(0) = P_0`` and
    ``B(1) = P_{K-1}`` exactly.

    Args:
        control_points: ``(..., K, D)`` with ``K >= 2`` control points (4: cubic) of dimension D.
        n: number of samples along each curve (>= 2).

    Returns:
        ``(..., n, D)`` points, same dtype and device as ``control_points``.
    """
    if control_points.dim() < 2 or control_points.shape[-2] < 2:
        raise ValueError(f"control_points must be (..., K >= 2, D), got {tuple(control_points.shape)}")
    if n < 2:
        raise ValueError(f"n must be >= 2, got {n}")
    deg = control_points.shape[-2] - 1
    t = torch.linspace(0.0, 1.0, n, dtype=control_points.dtype, device=control_points.device)
    basis = torch.stack([math.comb(deg, i) * t ** i * (1 - t) ** (deg - i) for i in range(deg + 1)], -1)
    return basis @ control_points  # (n, K) @ (..., K, D) -> (..., n, D)


def _interp(v: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear ``y(v)`` through ``(xs, ys)`` per row: v ``(B, P)``, xs/ys ``(B, n)``.

    ``xs`` must be non-decreasing; values outside ``[xs[0], xs[-1]]`` are clamped to the ends.
    """
    n = xs.shape[-1]
    i = torch.searchsorted(xs, v.contiguous(), right=True).clamp_(1, n - 1)
    x0, x1 = xs.gather(1, i - 1), xs.gather(1, i)
    y0, y1 = ys.gather(1, i - 1), ys.gather(1, i)
    # Flat stretches of xs (dx = 0) give weight 0 instead of 0/0.
    wgt = ((v - x0) / (x1 - x0).clamp_min(torch.finfo(xs.dtype).tiny)).clamp_(0, 1)
    return y0 + wgt * (y1 - y0)


def minmax_symmetric(images: torch.Tensor) -> torch.Tensor:
    """``(B, ...)`` -> same shape, each sample min-max scaled to ``[-1, 1]`` (a constant sample -> -1).

    Dual-Norm's input range: unlike a z-score it keeps the sign of the contrast (a dark background
    stays at -1), so the first BatchNorm's statistics can tell an image from its inversion."""
    b = images.shape[0]
    flat = images.reshape(b, -1)
    lo = flat.amin(dim=1, keepdim=True)
    span = (flat.amax(dim=1, keepdim=True) - lo).clamp_min(torch.finfo(flat.dtype).tiny)
    return ((flat - lo) / span * 2 - 1).reshape(images.shape)


def _zscore(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-row standardisation of ``(B, P)`` (population std)."""
    mean = x.mean(dim=1, keepdim=True)
    std = x.std(dim=1, keepdim=True, unbiased=False)
    return (x - mean) / (std + eps)


class BezierStyleAugment:
    """Dual-Norm style views: a random increasing and a random decreasing Bezier intensity map.

    Per call and per sample (RNG: one ``(2, B, 2, 2)`` uniform draw):

    1. min-max the image (over ``C, H, W``) to ``v`` in ``[-1, 1]`` (a constant image maps to -1);
    2. two independent cubic curves, each from ``(-1, -1)`` to ``(1, 1)`` with two inner control
       points ~ ``U([-1, 1]^2)``, whose x and y coordinates are each sorted (``P1 <= P2``
       coordinate-wise). Then both ``x(t)`` and ``y(t)`` are non-decreasing in ``t`` (the
       derivative's Bernstein coefficients are all >= 0), so each curve is the graph of a monotone
       non-decreasing map ``[-1, 1] -> [-1, 1]``. Sorting is sufficient, not necessary: a few
       monotone curves are never drawn;
    3. ``similar = curve_1(v)``; ``dissimilar = -curve_2(v)`` (the second curve flipped, from
       ``(-1, 1)`` to ``(1, -1)``: non-increasing). Independent curves, so the dissimilar view is
       not just ``-similar``;
    4. with ``zscore=True`` (default) each view is z-scored per sample over ``(C, H, W)``; with
       ``zscore=False`` the views stay in ``[-1, 1]`` (Dual-Norm's range: see :func:`minmax_symmetric`).

    The map is evaluated by linear interpolation between ``n_points`` points of the curve.

    Args:
        n_points: samples along each curve (lookup table size).
        zscore: standardise each view per sample (else keep ``[-1, 1]``).

    Shapes:
        ``images`` ``(B, C, H, W)`` float -> ``(similar, dissimilar)``, each ``(B, C, H, W)``,
        same dtype and device (float32 maths for half precision); no autograd graph.
    """

    def __init__(self, n_points: int = 1000, zscore: bool = True) -> None:
        if n_points < 2:
            raise ValueError(f"n_points must be >= 2, got {n_points}")
        self.n_points = int(n_points)
        self.zscore = bool(zscore)

    def __repr__(self) -> str:
        return f"BezierStyleAugment(n_points={self.n_points}, zscore={self.zscore})"

    def curves(self, batch: int, generator: Optional[torch.Generator] = None,
               device=None, dtype=torch.float32) -> torch.Tensor:
        """Control points ``(2, B, 4, 2)`` of the similar [0] and (unflipped) dissimilar [1] curves."""
        inner = _rand((2, batch, 2, 2), generator, torch.device(device or "cpu"), dtype) * 2 - 1
        inner = inner.sort(dim=2).values  # sort the two inner points' x and y separately
        start = torch.full((2, batch, 1, 2), -1.0, dtype=dtype, device=inner.device)
        return torch.cat([start, inner, -start], dim=2)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor,
                 generator: Optional[torch.Generator] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Return ``(similar, dissimilar)``, each ``(B, C, H, W)``, z-scored per sample or in ``[-1, 1]``."""
        if not torch.is_floating_point(images):
            raise TypeError(f"BezierStyleAugment needs a floating point tensor, got {images.dtype}")
        if images.dim() != 4:
            raise ValueError(f"expected (B, C, H, W), got shape {tuple(images.shape)}")
        wdt = torch.float32 if images.dtype in (torch.float16, torch.bfloat16) else images.dtype
        b = images.shape[0]
        v = minmax_symmetric(images.to(wdt).reshape(b, -1))

        pts = bezier_curve(self.curves(b, generator, images.device, wdt), self.n_points)  # (2, B, n, 2)
        # cummax: Bernstein sums can wobble by an ulp; searchsorted needs sorted xs and the
        # monotone guarantee should hold exactly.
        xs = pts[..., 0].cummax(dim=-1).values
        ys = pts[..., 1].cummax(dim=-1).values
        similar = _interp(v, xs[0].contiguous(), ys[0].contiguous())
        dissimilar = -_interp(v, xs[1].contiguous(), ys[1].contiguous())
        if self.zscore:
            similar, dissimilar = _zscore(similar), _zscore(dissimilar)
        return (similar.reshape(images.shape).to(images.dtype),
                dissimilar.reshape(images.shape).to(images.dtype))
