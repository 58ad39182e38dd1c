"""GIN: global intensity non-linear augmentation (Ouyang et al., TMI 2022, arXiv 2111.12525).

A random, untrained shallow conv net (4 convolutions, 1x1 or 3x3 kernels, leaky ReLU) is drawn
afresh on every call and applied to the image, then mixed with the input and rescaled to the
input's Frobenius norm. Organ shapes stay (the receptive field is at most 9 pixels), intensities
and textures change non-linearly: a CT slice can come out looking MR-like.

Pure tensor ops, no learned state: ``GINAugment`` has no ``nn.Parameter`` and its output carries
no autograd graph. Works on 2D ``(B, C, H, W)`` and 3D ``(B, C, D, H, W)`` batches.

IPA (interventional pseudo-correlation augmentation): the blend mask and the view mixing live in
:mod:`fedxmodal.transforms.ipa` and are re-exported here; ``GINIPAAugment`` (GIN + IPA in one
module) is defined here.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .ipa import gin_ipa_views, random_blend_mask
from .precision import float32_augmentation

__all__ = ["GINAugment", "GINIPAAugment", "random_blend_mask", "gin_ipa_views"]

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
# 1x1 layers run as one GEMM with a block-diagonal (B*cin, B*cout) weight while B*channels is at
# most this; the GEMM's cost grows with B^2, so wider folded batches use the grouped conv.
_GEMM_MAX_WIDTH = 64


def _draw_device(generator: Optional[torch.Generator], device: torch.device) -> torch.device:
    # A torch.Generator can only fill tensors on its own device: draw there, then move.
    return generator.device if generator is not None else device


def _randn(shape, generator, device, dtype) -> torch.Tensor:
    t = torch.randn(shape, generator=generator, device=_draw_device(generator, device), dtype=dtype)
    return t.to(device, non_blocking=True)


def _rand(shape, generator, device, dtype) -> torch.Tensor:
    t = torch.rand(shape, generator=generator, device=_draw_device(generator, device), dtype=dtype)
    return t.to(device, non_blocking=True)


def _sample_norms(v: torch.Tensor, b: int, c: int) -> torch.Tensor:
    """Frobenius norm per sample of a ``(P, B*C)`` folded batch -> ``(B,)``."""
    col = torch.linalg.vector_norm(v, dim=0)
    return col.square().reshape(b, c).sum(1).sqrt() if c > 1 else col


def check_kernels_and_alpha(kernel_sizes, alpha_range):
    """Validate random-conv settings: odd kernel sizes, alpha range lo <= hi."""
    kernel_sizes = tuple(int(k) for k in kernel_sizes)
    if not kernel_sizes or any(k < 1 or k % 2 == 0 for k in kernel_sizes):
        raise ValueError(f"kernel_sizes must be non-empty odd sizes, got {kernel_sizes}")
    lo, hi = (float(a) for a in alpha_range)
    if lo > hi:
        raise ValueError(f"alpha_range must be (lo, hi) with lo <= hi, got {alpha_range}")
    return kernel_sizes, (lo, hi)


class GINAugment(nn.Module):
    """Random shallow conv net intensity augmentation (GIN), a new net drawn on every call.

    Per call: for each of ``n_layers`` convolutions a kernel size is drawn from ``kernel_sizes``
    (one size per layer for the whole batch, padding ``k // 2``); weights and one bias per output
    channel are drawn from N(0, 1), fresh for every sample (``shared_across_batch=False``, one
    grouped convolution per layer with ``groups = B``) or once for the whole batch
    (``shared_across_batch=True``, the federated-GIN papers' variant). Channels go
    ``C -> interm_channels -> ... -> interm_channels -> C``; leaky ReLU after every layer but the
    last. Then ``out = alpha * net(x) + (1 - alpha) * x`` with ``alpha ~ U(alpha_range)`` (per sample,
    or one for the batch when shared) and ``out *= ||x||_F / (||out||_F + 1e-5)`` per sample over all
    channels and voxels.

    Args:
        n_layers: number of convolutions (>= 1; the paper uses 4).
        interm_channels: width of the hidden layers (paper: 2).
        kernel_sizes: odd kernel sizes to draw from, uniformly, per layer and call.
        alpha_range: ``(lo, hi)`` of the uniform mixing weight; ``(1, 1)`` gives the pure net output.
        shared_across_batch: one net and one alpha for the whole batch instead of one per sample.
        negative_slope: leaky ReLU slope.

    Shapes:
        ``x``: ``(B, C, *spatial)`` with 1 to 3 spatial dims, floating point, any device.
        Output: same shape, dtype and device.
    """

    def __init__(
        self,
        n_layers: int = 4,
        interm_channels: int = 2,
        kernel_sizes: Sequence[int] = (1, 3),
        alpha_range: Tuple[float, float] = (0.0, 1.0),
        shared_across_batch: bool = False,
        negative_slope: float = 0.01,
    ) -> None:
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {n_layers}")
        if interm_channels < 1:
            raise ValueError(f"interm_channels must be >= 1, got {interm_channels}")
        kernel_sizes, (lo, hi) = check_kernels_and_alpha(kernel_sizes, alpha_range)
        # Same-named attributes: NVFlare exports component arguments from them.
        self.n_layers = int(n_layers)
        self.interm_channels = int(interm_channels)
        self.kernel_sizes = kernel_sizes
        self.alpha_range = (lo, hi)
        self.shared_across_batch = bool(shared_across_batch)
        self.negative_slope = float(negative_slope)

    def extra_repr(self) -> str:
        return (
            f"n_layers={self.n_layers}, interm_channels={self.interm_channels}, "
            f"kernel_sizes={self.kernel_sizes}, alpha_range={self.alpha_range}, "
            f"shared_across_batch={self.shared_across_batch}, negative_slope={self.negative_slope}"
        )

    @torch.no_grad()
    @float32_augmentation
    def forward(self, x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Apply one fresh random GIN draw.

        Args:
            x: ``(B, C, *spatial)`` float tensor (1 to 3 spatial dims).
            generator: optional ``torch.Generator`` for reproducible draws (CPU or x's device);
                default: the global RNG.

        Returns:
            ``(B, C, *spatial)`` tensor, same dtype and device as ``x``; no autograd graph.
        """
        if not torch.is_floating_point(x):
            raise TypeError(f"GINAugment needs a floating point tensor, got {x.dtype}")
        n_sp = x.dim() - 2
        if n_sp not in _CONV:
            raise ValueError(f"expected (B, C, *spatial) with 1-3 spatial dims, got shape {tuple(x.shape)}")
        conv = _CONV[n_sp]
        in_dtype = x.dtype
        # Half precision: do the maths in float32 (norms over 128^2+ pixels), cast back at the end.
        wdt = torch.float32 if in_dtype in (torch.float16, torch.bfloat16) else in_dtype
        b, c = x.shape[:2]
        spatial = tuple(x.shape[2:])
        dev = x.device
        g = generator

        # Kernel sizes: one per layer for the whole batch. Drawn on the CPU when no generator is
        # given, so a CUDA input needs no host sync for .tolist().
        k_dev = g.device if g is not None else torch.device("cpu")
        k_idx = torch.randint(len(self.kernel_sizes), (self.n_layers,), generator=g, device=k_dev)
        ks = [self.kernel_sizes[i] for i in k_idx.tolist()]
        chans = [c] + [self.interm_channels] * (self.n_layers - 1) + [c]
        nets = 1 if self.shared_across_batch else b

        # Layout: the batch is folded into channels and the image kept as a (pixels, B*ch) matrix.
        # A per-sample conv is then one grouped conv (groups=B) on a channels-last view, and a 1x1
        # conv (small batches) one GEMM with a block-diagonal weight: no loop over samples, and
        # several times faster on CPU than NCHW grouped convs with 1-2 channels per group. The
        # shared variant uses the same path with its single net repeated B times.
        n_pix = 1
        for s in spatial:
            n_pix *= s
        v0 = x.to(wdt).reshape(b * c, n_pix).t().contiguous()  # (P, B*C)
        v = v0
        eye = None
        for i, k in enumerate(ks):
            cin, cout = chans[i], chans[i + 1]
            w = _randn((nets, cout, cin) + (k,) * n_sp, g, dev, wdt)
            bias = _randn((nets, cout), g, dev, wdt)
            if nets != b:
                w = w.expand((b,) + tuple(w.shape[1:]))
                bias = bias.expand(b, cout)
            bias = bias.reshape(b * cout)
            if k == 1 and b * max(cin, cout) <= _GEMM_MAX_WIDTH:
                if eye is None:
                    eye = torch.eye(b, device=dev, dtype=wdt)
                # Block-diagonal (B*cin, B*cout): entry [(s, i), (t, o)] = w[s, o, i] * [s == t].
                bd = (w.reshape(b, cout, cin).transpose(1, 2)[:, :, None, :]
                      * eye[:, None, :, None]).reshape(b * cin, b * cout)
                v = torch.addmm(bias, v, bd)
            else:
                # (P, B*cin) -> (1, B*cin, *spatial) channels-last view, grouped conv, and back.
                h = v.reshape((1,) + spatial + (b * cin,)).movedim(-1, 1)
                h = conv(h, w.reshape((b * cout, cin) + (k,) * n_sp), bias, padding=k // 2, groups=b)
                v = h.movedim(1, -1).reshape(n_pix, b * cout)
            if i < self.n_layers - 1:
                # In place: v is always a fresh tensor here, and CPU allocations of image-sized
                # buffers (page faults) cost as much as the arithmetic.
                F.leaky_relu(v, self.negative_slope, inplace=True)

        # Per-sample Frobenius norms (over all channels and pixels) of the input.
        n_in = _sample_norms(v0, b, c)
        lo, hi = self.alpha_range
        alpha = _rand((nets, 1), g, dev, wdt) * (hi - lo) + lo
        alpha = alpha.expand(b, c).reshape(1, b * c)
        out = torch.lerp(v0, v, alpha, out=v)  # alpha * net(x) + (1 - alpha) * x, in place

        # Keep each sample's overall energy: rescale to the input's Frobenius norm.
        scale = (n_in / (_sample_norms(out, b, c) + 1e-5)).repeat_interleave(c).reshape(b * c, 1)
        res = torch.empty((b * c, n_pix), device=dev, dtype=wdt)
        torch.mul(out.t(), scale, out=res)  # rescale and transpose back in one pass
        return res.reshape((b, c) + spatial).to(in_dtype)


class GINIPAAugment(nn.Module):
    """GIN + IPA: three GIN views of a batch, the first two blended by a smooth random mask.

    Constructor arguments are those of :class:`GINAugment` plus the IPA mask settings
    (see :func:`fedxmodal.transforms.ipa.random_blend_mask`):

    Args:
        grid: control points per axis of the blend mask (None: from ``control_point_spacing``,
            6 for 192 px).
        control_point_spacing: pixels between control points when ``grid`` is None.
        unit_norm_control_points: L2-normalise each sample's control points before ``exp``.

    Shapes:
        ``forward(x)`` with ``x`` ``(B, C, *spatial)`` returns ``(x1p, x2p, x3)``, each like ``x``
        (and the ``(B, 1, *spatial)`` mask with ``return_mask=True``).
    """

    def __init__(
        self,
        n_layers: int = 4,
        interm_channels: int = 2,
        kernel_sizes: Sequence[int] = (1, 3),
        alpha_range: Tuple[float, float] = (0.0, 1.0),
        shared_across_batch: bool = False,
        negative_slope: float = 0.01,
        grid=None,
        control_point_spacing: float = 48,
        unit_norm_control_points: bool = True,
    ) -> None:
        super().__init__()
        self.gin = GINAugment(n_layers, interm_channels, kernel_sizes, alpha_range,
                              shared_across_batch, negative_slope)
        self.n_layers = self.gin.n_layers
        self.interm_channels = self.gin.interm_channels
        self.kernel_sizes = self.gin.kernel_sizes
        self.alpha_range = self.gin.alpha_range
        self.shared_across_batch = self.gin.shared_across_batch
        self.negative_slope = self.gin.negative_slope
        self.grid = grid
        self.control_point_spacing = control_point_spacing
        self.unit_norm_control_points = bool(unit_norm_control_points)

    def mask(self, shape_bhw, generator=None, device=None, dtype=torch.float32) -> torch.Tensor:
        """``(B, 1, *spatial)`` blend mask with this module's settings."""
        return random_blend_mask(shape_bhw, grid=self.grid, generator=generator, device=device,
                                 dtype=dtype, control_point_spacing=self.control_point_spacing,
                                 unit_norm_control_points=self.unit_norm_control_points)

    @torch.no_grad()
    @float32_augmentation
    def forward(self, x: torch.Tensor, generator: Optional[torch.Generator] = None,
                return_mask: bool = False):
        """Return ``(x1p, x2p, x3)`` (see :func:`fedxmodal.transforms.ipa.gin_ipa_views`)."""
        return gin_ipa_views(x, self.gin, mask_fn=self.mask, generator=generator,
                             return_mask=return_mask)
