"""RandConv: random convolution augmentation (Xu et al., ICLR 2021, arXiv 2007.13003).

One untrained ``C -> C`` convolution is drawn afresh on every call and applied to the whole batch,
then mixed with the input: local textures and the intensity scale (even its sign) change, the
spatial layout does not (a ``k x k`` kernel only mixes pixels at most ``k // 2`` apart).

Pure tensor ops, no learned state: :class:`RandConvAugment` holds no parameters and its output
carries no autograd graph.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .gin import _rand, _randn, check_kernels_and_alpha
from .precision import float32_augmentation

__all__ = ["RandConvAugment"]

_PADDING_MODES = ("replicate", "reflect", "zeros")


class RandConvAugment:
    """Random convolution augmentation, one new random conv per call (per batch).

    Per call, in this RNG order:

    1. a kernel size ``k`` is drawn uniformly from ``kernel_sizes`` (one for the whole batch);
    2. one weight tensor ``(C, C, k, k)`` ~ N(0, 1 / (C k^2)) (kaiming-normal with gain 1, i.e.
       std ``1 / sqrt(fan_in)``), no bias, shared by all samples of the batch;
    3. with ``mix=True``: ``alpha ~ U(alpha_range)`` **per sample**, and
       ``out = alpha * conv(x) + (1 - alpha) * x``; with ``mix=False``: ``out = conv(x)``.

    The image is padded by ``k // 2`` so the output keeps its size. ``padding_mode="replicate"``
    (default) is a deliberate deviation from the paper's plain ``nn.Conv2d`` (zero padding): our
    slices are z-scored, so their background is not 0 and zero padding would turn the image
    border into a fake edge. ``"zeros"`` reproduces the original behaviour.

    No rescaling afterwards (as in the paper): with ``k = 1`` and ``C = 1`` the output is
    ``(alpha * w + 1 - alpha) * x``, a random per-sample contrast change that may invert the image.

    Args:
        kernel_sizes: odd kernel sizes to draw from (paper: 1, 3, 5, 7).
        mix: blend the conv output with the input (paper's "mixing" variant).
        alpha_range: ``(lo, hi)`` of the uniform mixing weight (only used with ``mix=True``).
        padding_mode: ``"replicate"``, ``"reflect"`` or ``"zeros"``.

    Shapes:
        ``images``: ``(B, C, H, W)`` float, any H, W, CPU or CUDA. Output: same shape, dtype, device.
    """

    def __init__(
        self,
        kernel_sizes: Sequence[int] = (1, 3, 5, 7),
        mix: bool = True,
        alpha_range: Tuple[float, float] = (0.0, 1.0),
        padding_mode: str = "replicate",
    ) -> None:
        kernel_sizes, (lo, hi) = check_kernels_and_alpha(kernel_sizes, alpha_range)
        if padding_mode not in _PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {_PADDING_MODES}, got {padding_mode!r}")
        self.kernel_sizes = kernel_sizes
        self.mix = bool(mix)
        self.alpha_range = (lo, hi)
        self.padding_mode = padding_mode

    def __repr__(self) -> str:
        return (f"RandConvAugment(kernel_sizes={self.kernel_sizes}, mix={self.mix}, "
                f"alpha_range={self.alpha_range}, padding_mode={self.padding_mode!r})")

    @torch.no_grad()
    @float32_augmentation
    def __call__(self, images: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Apply one fresh random convolution.

        Args:
            images: ``(B, C, H, W)`` float tensor.
            generator: optional ``torch.Generator`` (CPU or the images' device) for reproducible
                draws; default: the global RNG.

        Returns:
            ``(B, C, H, W)`` tensor, same dtype and device as ``images``; no autograd graph.
        """
        if not torch.is_floating_point(images):
            raise TypeError(f"RandConvAugment needs a floating point tensor, got {images.dtype}")
        if images.dim() != 4:
            raise ValueError(f"expected (B, C, H, W), got shape {tuple(images.shape)}")
        in_dtype = images.dtype
        # Half precision: conv in float32, cast back at the end.
        wdt = torch.float32 if in_dtype in (torch.float16, torch.bfloat16) else in_dtype
        x = images.to(wdt)
        b, c, h, w = x.shape
        dev, g = x.device, generator

        # Kernel size drawn on the CPU (or the generator's device): .item() needs no CUDA sync then.
        k_dev = g.device if g is not None else torch.device("cpu")
        k = self.kernel_sizes[int(torch.randint(len(self.kernel_sizes), (1,), generator=g, device=k_dev))]
        weight = _randn((c, c, k, k), g, dev, wdt) / math.sqrt(c * k * k)

        p = k // 2
        if p and self.padding_mode == "zeros":
            out = F.conv2d(x, weight, padding=p)
        else:
            # reflect needs pad < size; fall back to replicate for tiny images.
            mode = self.padding_mode if (self.padding_mode != "reflect" or min(h, w) > p) else "replicate"
            out = F.conv2d(F.pad(x, (p, p, p, p), mode=mode) if p else x, weight)

        if self.mix:
            lo, hi = self.alpha_range
            alpha = _rand((b, 1, 1, 1), g, dev, wdt) * (hi - lo) + lo
            out = torch.lerp(x, out, alpha)  # alpha * conv(x) + (1 - alpha) * x
        return out.to(in_dtype)
