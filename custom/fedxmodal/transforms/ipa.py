"""IPA: interventional pseudo-correlation augmentation (the "IPA" of GIN-IPA, Ouyang et al. 2022).

Two GIN draws of a batch are blended through a smooth random mask ``m`` in [0, 1], so that
appearance varies slowly across the image in a way unrelated to the anatomy:
``x1' = x1 * m + x2 * (1 - m)``, ``x2' = x1 * (1 - m) + x2 * m``, and a third draw ``x3`` is kept
as is. The segmentation loss uses ``x1'``; a consistency loss ties the predictions of all three
views together (:func:`fedxmodal.losses.consistency.kl_consistency`).

The mask: N(0, 1) control points on a coarse grid (6x6 for a 192^2 image), per-sample L2
normalisation of the control points (as in the original code), quadratic (order-2) B-spline
interpolation to the image size, ``exp``, then per-sample min-max to [0, 1]. Pure torch,
separable, on the requested device; 2D and 3D.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence, Tuple, Union

import torch

from .precision import float32_augmentation

__all__ = ["random_blend_mask", "bspline2_basis", "blend_views", "gin_ipa_views"]

#: Control-point spacing in pixels used when ``grid`` is None: the original code uses 24 px at
#: half resolution (downscale 2), i.e. 48 px at full resolution -> 4 inner cells + 2 border
#: points = a 6x6 grid for 192^2.
DEFAULT_CONTROL_POINT_SPACING = 48


def _auto_grid(size: int, spacing: float) -> int:
    # ceil(size / spacing) inner cells plus one control point outside each border.
    return int(math.ceil(size / float(spacing))) + 2


def bspline2_basis(size: int, n_points: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Quadratic B-spline interpolation matrix from ``n_points`` control points to ``size`` pixels.

    Control point ``j`` sits at index ``j``; pixel centres are mapped uniformly onto
    ``[0.5, n_points - 1.5]``, the span where the quadratic basis is a partition of unity
    (one control point lies outside each border, as in the original implementation).

    Returns:
        ``(size, n_points)`` tensor whose rows sum to 1.
    """
    if n_points < 3:
        raise ValueError(f"a quadratic B-spline needs >= 3 control points per axis, got {n_points}")
    u = torch.arange(size, device=device, dtype=torch.float64)
    t = 0.5 + (u + 0.5) / size * (n_points - 2)
    d = (t[:, None] - torch.arange(n_points, device=device, dtype=torch.float64)[None, :]).abs()
    # Centred quadratic B-spline: 3/4 - d^2 on |d| < 1/2, (3/2 - |d|)^2 / 2 on 1/2 <= |d| < 3/2.
    w = torch.where(d < 0.5, 0.75 - d * d, 0.5 * (1.5 - d).clamp_min(0.0) ** 2)
    return w.to(dtype)


def random_blend_mask(
    shape_bhw: Sequence[int],
    grid: Union[None, int, Sequence[int]] = None,
    generator: Optional[torch.Generator] = None,
    device: Union[None, str, torch.device] = None,
    dtype: torch.dtype = torch.float32,
    control_point_spacing: float = DEFAULT_CONTROL_POINT_SPACING,
    unit_norm_control_points: bool = True,
) -> torch.Tensor:
    """Smooth random blend mask in [0, 1], one per sample.

    Args:
        shape_bhw: ``(B, H, W)`` for 2D, or ``(B, D, H, W)`` for 3D.
        grid: control points per axis, border points included (int for all axes or one per
            axis, each >= 3). None: ``ceil(size / control_point_spacing) + 2`` per axis (6 for 192).
        generator: optional ``torch.Generator`` (CPU or ``device``); default the global RNG.
        device: where the mask is returned (default CPU).
        dtype: floating dtype of the mask.
        control_point_spacing: pixels between control points when ``grid`` is None.
        unit_norm_control_points: scale each sample's control points to unit L2 norm before
            ``exp`` (the original code does; keeps ``exp`` mild so the mask is not dominated by
            one peak). False: raw N(0, 1) values.

    Returns:
        ``(B, 1, H, W)`` (or ``(B, 1, D, H, W)``) tensor, per-sample min 0 and max 1.
    """
    shape = [int(s) for s in shape_bhw]
    if len(shape) not in (2, 3, 4):
        raise ValueError(f"shape_bhw must be (B, H, W) or (B, D, H, W), got {tuple(shape_bhw)}")
    b, spatial = shape[0], shape[1:]
    device = torch.device(device) if device is not None else torch.device("cpu")
    if grid is None:
        grids = [_auto_grid(s, control_point_spacing) for s in spatial]
    elif isinstance(grid, int):
        grids = [int(grid)] * len(spatial)
    else:
        grids = [int(gv) for gv in grid]
        if len(grids) != len(spatial):
            raise ValueError(f"grid {tuple(grid)} does not match spatial dims {tuple(spatial)}")

    draw_dev = generator.device if generator is not None else device
    cp = torch.randn([b] + grids, generator=generator, device=draw_dev, dtype=torch.float32)
    cp = cp.to(device)
    if unit_norm_control_points:
        cp = cp / torch.linalg.vector_norm(cp.reshape(b, -1), dim=1).clamp_min(1e-12).reshape(
            [b] + [1] * len(grids))

    # Separable interpolation: contract each grid axis with its (size, n_points) basis matrix.
    field = cp
    for ax, (size, n) in enumerate(zip(spatial, grids)):
        basis = bspline2_basis(size, n, device=device, dtype=field.dtype)
        field = torch.movedim(torch.tensordot(field, basis, dims=([ax + 1], [1])), -1, ax + 1)

    field = torch.exp(field)
    # The original's rescale to [1 - eps, 1 + eps] is affine, so the min-max below cancels it.
    flat = field.reshape(b, -1)
    lo = flat.amin(dim=1, keepdim=True)
    hi = flat.amax(dim=1, keepdim=True)
    m = ((flat - lo) / (hi - lo).clamp_min(1e-12)).clamp_(0.0, 1.0)
    return m.reshape([b, 1] + spatial).to(dtype)


def blend_views(x1: torch.Tensor, x2: torch.Tensor, m: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Complementary blend of two views through mask ``m``.

    Args:
        x1, x2: ``(B, C, *spatial)``.
        m: ``(B, 1, *spatial)`` in [0, 1] (broadcast over channels).

    Returns:
        ``(x1 * m + x2 * (1 - m), x1 * (1 - m) + x2 * m)``; their sum equals ``x1 + x2``.
    """
    m = m.to(dtype=x1.dtype, device=x1.device)
    return x1 * m + x2 * (1.0 - m), x1 * (1.0 - m) + x2 * m


@float32_augmentation
def gin_ipa_views(
    x: torch.Tensor,
    gin: Callable[..., torch.Tensor],
    mask_fn: Callable[..., torch.Tensor] = random_blend_mask,
    generator: Optional[torch.Generator] = None,
    return_mask: bool = False,
):
    """Three GIN views of a batch, the first two blended by a random IPA mask.

    Args:
        x: ``(B, C, *spatial)`` batch.
        gin: callable ``gin(x, generator=None) -> (B, C, *spatial)`` (e.g. a ``GINAugment``);
            called three times, so a batch-shared GIN still gives three different views.
        mask_fn: ``mask_fn(shape_bhw, generator=..., device=...) -> (B, 1, *spatial)`` in [0, 1].
        generator: optional ``torch.Generator`` passed to ``gin`` and ``mask_fn``.
        return_mask: also return the mask.

    Returns:
        ``(x1p, x2p, x3)``, each ``(B, C, *spatial)`` (plus the ``(B, 1, *spatial)`` mask when
        ``return_mask``): ``x1p = x1*m + x2*(1-m)``, ``x2p = x1*(1-m) + x2*m``, ``x3`` a plain draw.
    """
    kw = {} if generator is None else {"generator": generator}
    x1, x2, x3 = gin(x, **kw), gin(x, **kw), gin(x, **kw)
    m = mask_fn((x.shape[0],) + tuple(x.shape[2:]), device=x.device, **kw).to(x.dtype)
    x1p, x2p = blend_views(x1, x2, m)
    if return_mask:
        return x1p, x2p, x3, m
    return x1p, x2p, x3
