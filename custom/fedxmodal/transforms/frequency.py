"""Frequency-domain augmentations: FedDG-style amplitude interpolation and a Butterworth high-pass.

FedDG-ELCFS (Liu et al., CVPR 2021, arXiv 2103.06030), "continuous frequency space
interpolation": the low-frequency part of an image's amplitude spectrum carries its "style"
(global contrast, intensity distribution), the phase carries the anatomy. Each site shares the
low-frequency amplitude squares of its images (:func:`low_freq_amplitude`); locally an image's own
square is moved towards another site's, ``A' = A_loc + lam * (A_other - A_loc)``, and the image
rebuilt with its own phase (:func:`interpolate_low_freq_amplitude`,
:class:`AmplitudeInterpolationAugment`).

Local variant (no sharing): :func:`butterworth_highpass`, :class:`ButterworthHighPassAugment`
remove the low frequencies (contrast) and keep the edges.

Conventions: spectra are ``torch.fft.fft2`` over the last two dims with the default ("backward")
normalisation, as in the FedDG code (``np.fft.fft2``); centred with ``fftshift``, so DC sits at
index ``(H // 2, W // 2)`` for even and odd sizes alike. Amplitudes therefore scale with ``H * W``:
bank entries must come from images of the same size. Half-precision input is processed in float32.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple, Union

import torch

from .gin import _rand

__all__ = [
    "low_freq_half_width",
    "low_freq_amplitude",
    "interpolate_low_freq_amplitude",
    "AmplitudeInterpolationAugment",
    "butterworth_highpass",
    "ButterworthHighPassAugment",
]


def _work(images: torch.Tensor, name: str) -> torch.Tensor:
    if not torch.is_floating_point(images):
        raise TypeError(f"{name} needs a floating point tensor, got {images.dtype}")
    if images.dim() != 4:
        raise ValueError(f"{name} expects (B, C, H, W), got shape {tuple(images.shape)}")
    # torch.fft has no CPU half kernels and half would lose the large DC term anyway.
    return images.float() if images.dtype in (torch.float16, torch.bfloat16) else images


def _zscore(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-sample standardisation of ``(B, ...)`` over all non-batch dims (population std)."""
    dims = tuple(range(1, x.dim()))
    mean = x.mean(dim=dims, keepdim=True)
    std = x.std(dim=dims, keepdim=True, unbiased=False)
    return (x - mean) / (std + eps)


def low_freq_half_width(h: int, w: int, ratio: float) -> int:
    """Half-width ``b = floor(ratio * min(H, W))`` of the centred low-frequency square.

    Clamped to ``(min(H, W) - 1) // 2`` so that the square ``[-b, b]^2`` (in frequency index units)
    fits the spectrum and every frequency in it has its conjugate ``-f`` in it too, for even and
    odd sizes (the even-size Nyquist row/column is never included).
    """
    if ratio < 0:
        raise ValueError(f"ratio must be >= 0, got {ratio}")
    # The tiny offset keeps e.g. 0.29 * 100 = 28.999999999999996 at 29.
    b = int(math.floor(ratio * min(h, w) + 1e-9))
    return min(b, (min(h, w) - 1) // 2)


def _square_slices(h: int, w: int, b: int) -> Tuple[slice, slice]:
    return slice(h // 2 - b, h // 2 + b + 1), slice(w // 2 - b, w // 2 + b + 1)


def _centred_spectrum(x: torch.Tensor) -> torch.Tensor:
    return torch.fft.fftshift(torch.fft.fft2(x), dim=(-2, -1))


def low_freq_amplitude(images: torch.Tensor, ratio: float = 0.1) -> torch.Tensor:
    """Centred low-frequency square of the amplitude spectrum ``|FFT2(x)|``: what a site shares.

    This is the only thing FedDG-style training sends to other sites: **amplitudes** of the
    low-frequency square only, **never the phase** (which holds the anatomy) and **never pixels**.
    It is still a (small) privacy trade-off: e.g. the DC amplitude is ``|sum of the pixels|``.

    Args:
        images: ``(B, C, H, W)`` float.
        ratio: square half-width as a fraction of ``min(H, W)``: ``b = floor(ratio * min(H, W))``
            (see :func:`low_freq_half_width`).

    Returns:
        ``(B, C, 2b + 1, 2b + 1)`` non-negative amplitudes, centred on DC (index ``[b, b]``) and
        symmetric about it (``A[..., b + i, b + j] == A[..., b - i, b - j]``, real input).
        float32 for half-precision input, else the input dtype.
    """
    x = _work(images, "low_freq_amplitude")
    h, w = x.shape[-2:]
    rs, cs = _square_slices(h, w, low_freq_half_width(h, w, ratio))
    return _centred_spectrum(x)[..., rs, cs].abs()


def interpolate_low_freq_amplitude(
    images: torch.Tensor,
    bank: torch.Tensor,
    ratio: float = 0.1,
    lam_range: Tuple[float, float] = (0.0, 1.0),
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Move each image's low-frequency amplitude towards a random bank entry; keep its phase.

    Per sample (RNG order: all bank indices, then all ``lam``): a bank entry ``A_bank`` is drawn
    uniformly, ``lam ~ U(lam_range)``, and inside the centred square
    ``A' = A_loc + lam * (A_bank - A_loc)``; the spectrum becomes ``A' * exp(i * phase_loc)`` there
    and stays untouched outside; the output is the real part of the inverse FFT.

    Real output: the square holds ``-f`` for each ``f`` (see :func:`low_freq_half_width`), the local
    phase is odd and the bank is symmetrised about DC (``0.5 * (A + A.flip)``, a no-op for
    amplitudes of real images), so the new spectrum is Hermitian and the discarded imaginary part
    is rounding noise only. (Taking the real part of a non-Hermitian spectrum would symmetrise the
    amplitude implicitly anyway; doing it explicitly keeps the result what the formula says.)

    Args:
        images: ``(B, C, H, W)`` float.
        bank: ``(M, C, 2b + 1, 2b + 1)`` amplitude squares (from :func:`low_freq_amplitude` on other
            sites' images of the same ``H, W`` and the same ``ratio``), M >= 1.
        ratio: square half-width fraction, as for :func:`low_freq_amplitude`.
        lam_range: ``(lo, hi)`` with ``0 <= lo <= hi <= 1``; ``(0, 0)`` is the identity,
            ``(1, 1)`` a full swap of the square.
        generator: optional ``torch.Generator`` (CPU or the images' device).

    Returns:
        ``(B, C, H, W)`` real tensor, same dtype and device as ``images``.
    """
    x = _work(images, "interpolate_low_freq_amplitude")
    lo, hi = (float(v) for v in lam_range)
    if not 0.0 <= lo <= hi <= 1.0:
        # Outside [0, 1] the interpolation extrapolates and amplitudes can turn negative.
        raise ValueError(f"lam_range must satisfy 0 <= lo <= hi <= 1, got {lam_range}")
    n, c, h, w = x.shape
    b = low_freq_half_width(h, w, ratio)
    s = 2 * b + 1
    if bank.dim() != 4 or bank.shape[0] < 1 or tuple(bank.shape[1:]) != (c, s, s):
        raise ValueError(f"bank must be (M >= 1, {c}, {s}, {s}) for images {tuple(x.shape)} and "
                         f"ratio {ratio}, got {tuple(bank.shape)}")
    bank = bank.to(device=x.device, dtype=x.dtype)
    bank = 0.5 * (bank + bank.flip(-2, -1))  # f -> -f inside the DC-centred square

    idx_dev = generator.device if generator is not None else x.device
    idx = torch.randint(bank.shape[0], (n,), generator=generator, device=idx_dev).to(x.device)
    lam = _rand((n, 1, 1, 1), generator, x.device, x.dtype) * (hi - lo) + lo

    spec = _centred_spectrum(x)
    rs, cs = _square_slices(h, w, b)
    sq = spec[..., rs, cs]
    amp = torch.lerp(sq.abs(), bank[idx], lam)
    # Only the square is rebuilt, so everything outside it round-trips untouched.
    spec[..., rs, cs] = torch.polar(amp, sq.angle())
    out = torch.fft.ifft2(torch.fft.ifftshift(spec, dim=(-2, -1))).real
    return out.to(images.dtype)


class AmplitudeInterpolationAugment:
    """FedDG amplitude-spectrum interpolation with a bank of other sites' amplitude squares.

    Without a bank (``None`` or empty: e.g. before the first exchange) the call returns the input
    unchanged, silently.

    Args:
        bank: optional ``(M, C, 2b + 1, 2b + 1)`` amplitude squares (see :meth:`set_bank`).
        ratio: low-frequency square half-width fraction (FedDG's ``L``; ``b = floor(ratio * min(H, W))``).
        lam_range: ``(lo, hi)`` of the per-sample interpolation weight, within ``[0, 1]``.

    Shapes:
        ``images`` ``(B, C, H, W)`` float -> same shape, dtype and device.
    """

    def __init__(self, bank: Optional[torch.Tensor] = None, ratio: float = 0.1,
                 lam_range: Tuple[float, float] = (0.0, 1.0)) -> None:
        lo, hi = (float(v) for v in lam_range)
        if not 0.0 <= lo <= hi <= 1.0:
            raise ValueError(f"lam_range must satisfy 0 <= lo <= hi <= 1, got {lam_range}")
        if ratio < 0:
            raise ValueError(f"ratio must be >= 0, got {ratio}")
        self.ratio = float(ratio)
        self.lam_range = (lo, hi)
        self.bank: Optional[torch.Tensor] = None
        self.set_bank(bank)

    def set_bank(self, bank: Optional[torch.Tensor]) -> None:
        """Replace the bank: ``(M, C, 2b + 1, 2b + 1)`` amplitudes, or ``None``/empty to disable.

        Stored detached; moved to the images' device and dtype at call time.
        """
        if bank is None or bank.numel() == 0:
            self.bank = None
            return
        if bank.dim() != 4 or bank.shape[-1] != bank.shape[-2] or bank.shape[-1] % 2 == 0:
            raise ValueError(f"bank must be (M, C, 2b + 1, 2b + 1), got {tuple(bank.shape)}")
        self.bank = bank.detach()

    def __repr__(self) -> str:
        m = 0 if self.bank is None else self.bank.shape[0]
        return (f"AmplitudeInterpolationAugment(bank={m} entries, ratio={self.ratio}, "
                f"lam_range={self.lam_range})")

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """``(B, C, H, W)`` -> same shape; identity while no bank is set."""
        if self.bank is None:
            return images
        if self.bank.device != images.device:
            self.bank = self.bank.to(images.device)  # move once, not on every call
        return interpolate_low_freq_amplitude(images, self.bank, self.ratio, self.lam_range, generator)


def butterworth_highpass(images: torch.Tensor, cutoff: Union[float, torch.Tensor],
                         order: int = 2) -> torch.Tensor:
    """Butterworth high-pass filter ``H(D) = 1 / (1 + (d0 / D)^(2 n))``, one cutoff per sample.

    ``D`` is the distance from DC in **cycles per pixel**: ``D = sqrt(fy^2 + fx^2)`` with
    ``fy, fx`` from ``torch.fft.fftfreq`` (each in ``[-0.5, 0.5)``, so ``D`` in ``[0, 0.71]``); the
    cutoff ``d0`` is in the same unit (0.1 -> 12.8 cycles across a 128 px image). ``H(0) = 0``: the
    mean goes; ``H(d0) = 1/2``; ``H -> 1`` far above ``d0``. The filter is real and even, so the
    output is real (computed with ``rfft2`` / ``irfft2``, any H, W).

    Args:
        images: ``(B, C, H, W)`` float.
        cutoff: ``d0 > 0``, a float or a ``(B,)`` tensor (one per sample).
        order: Butterworth order ``n`` (sharpness of the transition).

    Returns:
        ``(B, C, H, W)`` filtered images, same dtype and device (not re-standardised).
    """
    x = _work(images, "butterworth_highpass")
    n, _, h, w = x.shape
    if not torch.is_tensor(cutoff) and cutoff <= 0:
        raise ValueError(f"cutoff must be > 0, got {cutoff}")
    d0 = torch.as_tensor(cutoff, dtype=x.dtype, device=x.device).reshape(-1)
    if d0.numel() not in (1, n):
        raise ValueError(f"cutoff must be a scalar or ({n},), got {tuple(d0.shape)}")
    fy = torch.fft.fftfreq(h, device=x.device, dtype=x.dtype)
    fx = torch.fft.rfftfreq(w, device=x.device, dtype=x.dtype)
    d2 = fy[:, None] ** 2 + fx[None, :] ** 2  # (H, W // 2 + 1)
    # (d0^2 / D^2)^n: inf at DC -> gain exactly 0, and no overflow where D >> d0.
    gain = torch.reciprocal(1 + (d0.reshape(-1, 1, 1, 1) ** 2 / d2) ** order)
    out = torch.fft.irfft2(torch.fft.rfft2(x) * gain, s=(h, w))
    return out.to(images.dtype)


class ButterworthHighPassAugment:
    """Random Butterworth high-pass, re-standardised (local frequency augmentation).

    Per call, per sample (RNG order: all apply flags, then all cutoffs): with probability ``p`` the
    image is replaced by its high-passed version with ``d0 ~ U(cutoff_range)`` (cycles/pixel, see
    :func:`butterworth_highpass`), z-scored per sample over ``(C, H, W)``; other samples pass
    unchanged. The high-pass removes the mean and the slow contrast variations, which is the point:
    the network must rely on edges; the z-score brings the result back to the input scale the
    network expects (a constant image becomes all zeros).

    Args:
        cutoff_range: ``(lo, hi)``, ``0 < lo <= hi`` (the FedDG authors' companion code: 0.01-0.1).
        order: Butterworth order (2 there).
        p: probability per sample.

    Shapes:
        ``images`` ``(B, C, H, W)`` float -> same shape, dtype and device.
    """

    def __init__(self, cutoff_range: Tuple[float, float] = (0.01, 0.1), order: int = 2,
                 p: float = 0.5) -> None:
        lo, hi = (float(v) for v in cutoff_range)
        if not 0.0 < lo <= hi:
            raise ValueError(f"cutoff_range must satisfy 0 < lo <= hi, got {cutoff_range}")
        if order < 1:
            raise ValueError(f"order must be >= 1, got {order}")
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p}")
        self.cutoff_range = (lo, hi)
        self.order = int(order)
        self.p = float(p)

    def __repr__(self) -> str:
        return (f"ButterworthHighPassAugment(cutoff_range={self.cutoff_range}, order={self.order}, "
                f"p={self.p})")

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """``(B, C, H, W)`` -> same shape; a fresh draw per call."""
        x = _work(images, "ButterworthHighPassAugment")
        n = x.shape[0]
        apply = _rand((n, 1, 1, 1), generator, x.device, x.dtype) < self.p
        lo, hi = self.cutoff_range
        d0 = _rand((n,), generator, x.device, x.dtype) * (hi - lo) + lo
        hp = _zscore(butterworth_highpass(x, d0, self.order))
        return torch.where(apply, hp, x).to(images.dtype)
