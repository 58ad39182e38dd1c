"""Baseline augmentations: RandConv, FedDG amplitude interpolation, Butterworth high-pass,
Dual-Norm Bezier views (fast, CPU; CUDA checks skip without a GPU)."""

import math

import pytest
import torch
import torch.nn.functional as F

from fedxmodal.transforms.bezier import BezierStyleAugment, bezier_curve, minmax_symmetric
from fedxmodal.transforms.frequency import (
    AmplitudeInterpolationAugment,
    ButterworthHighPassAugment,
    butterworth_highpass,
    interpolate_low_freq_amplitude,
    low_freq_amplitude,
    low_freq_half_width,
)
from fedxmodal.transforms.randconv import RandConvAugment


# torch.testing.assert_close imports torch.distributed lazily (~1 s): pay it at collection time.
torch.testing.assert_close(torch.zeros(1), torch.zeros(1))


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _piecewise_image(h=48, w=48):
    """(1, 1, h, w) image of constant regions; regions 1 and 3 share intensity 2.0."""
    img = torch.full((h, w), 0.5, dtype=torch.float64)
    img[6:22, 6:22] = 2.0    # region 1
    img[6:22, 26:42] = -1.0  # region 2
    img[28:42, 6:42] = 2.0   # region 3, same value as region 1
    return img[None, None]


def _spectrum(x):
    return torch.fft.fftshift(torch.fft.fft2(x), dim=(-2, -1))


def _square_mask(h, w, b):
    m = torch.zeros(h, w, dtype=torch.bool)
    m[h // 2 - b:h // 2 + b + 1, w // 2 - b:w // 2 + b + 1] = True
    return m


def _per_sample(t):
    return t.reshape(t.shape[0], -1)


# ---------------------------------------------------------------- RandConv


@pytest.mark.parametrize("shape", [(3, 1, 32, 32), (2, 3, 17, 23), (2, 1, 5, 4)])
def test_randconv_shape_dtype_and_changes_input(shape):
    x = torch.randn(shape)
    for k in (1, 3, 5, 7):
        out = RandConvAugment(kernel_sizes=(k,))(x, generator=_gen(k))
        assert out.shape == x.shape and out.dtype == x.dtype and torch.isfinite(out).all()
        assert ((_per_sample(out) - _per_sample(x)).abs().amax(1) > 1e-3).all()
    half = RandConvAugment()(x.to(torch.bfloat16))
    assert half.dtype == torch.bfloat16 and half.shape == x.shape


def test_randconv_k1_is_per_sample_scaling_and_weights_shared_across_batch():
    x = _piecewise_image().repeat(5, 1, 1, 1)
    # k = 1, C = 1: conv(x) = w * x with one w for the batch -> out = (alpha w + 1 - alpha) x.
    out = RandConvAugment(kernel_sizes=(1,))(x, generator=_gen(0))
    ratio = out / x
    torch.testing.assert_close(ratio, ratio[:, :, :1, :1].expand_as(ratio), rtol=1e-12, atol=1e-12)
    # alpha per sample: the scale differs between (identical) samples ...
    s = ratio[:, 0, 0, 0]
    assert (s[1:] - s[0]).abs().min() > 1e-6, s
    # ... but without mixing every sample gets the same (batch-shared) weight.
    raw = RandConvAugment(kernel_sizes=(1,), mix=False)(x, generator=_gen(0)) / x
    torch.testing.assert_close(raw, raw[:1, :1, :1, :1].expand_as(raw), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("k", [3, 5, 7])
def test_randconv_changes_only_near_edges(k):
    x = _piecewise_image().repeat(4, 1, 1, 1)
    out = RandConvAugment(kernel_sizes=(k,))(x, generator=_gen(k))
    r = k // 2
    # Pixels whose (k x k) neighbourhood (replicate-padded) is constant.
    xp = F.pad(x, (r, r, r, r), mode="replicate")
    flat = F.max_pool2d(xp, k, 1) == -F.max_pool2d(-xp, k, 1)
    assert flat.float().mean() > 0.4
    # There the output is one linear function of the input per sample: out = s * x, the same s
    # in every flat region (also regions of equal intensity far apart) and at the image border.
    s = out[:, :, 0, 0] / x[:, :, 0, 0]
    expect = s[:, :, None, None] * x
    torch.testing.assert_close(out[flat], expect[flat], rtol=1e-10, atol=1e-10)
    # Within k // 2 of an edge the kernel does see the edge.
    dev = (out - expect).abs()[~flat].reshape(4, -1).amax(1)
    assert (dev > 1e-4).all(), dev


def test_randconv_zero_padding_option_creates_border_effect_replicate_does_not():
    x = torch.full((2, 1, 12, 12), -1.0, dtype=torch.float64)
    rep = RandConvAugment(kernel_sizes=(5,))(x, generator=_gen(1))
    assert (_per_sample(rep).std(1) < 1e-12).all()  # constant in, constant out
    zer = RandConvAugment(kernel_sizes=(5,), padding_mode="zeros")(x, generator=_gen(1))
    assert (_per_sample(zer).std(1) > 1e-3).all()
    refl = RandConvAugment(kernel_sizes=(7,), padding_mode="reflect")(torch.randn(1, 1, 3, 3))
    assert refl.shape == (1, 1, 3, 3)


def test_randconv_reproducible_fresh_draws_and_alpha_zero_identity():
    x = torch.randn(3, 2, 16, 16)
    aug = RandConvAugment()
    torch.testing.assert_close(aug(x, generator=_gen(7)), aug(x, generator=_gen(7)), rtol=0, atol=0)
    assert not torch.allclose(aug(x, generator=_gen(7)), aug(x, generator=_gen(8)))
    assert not torch.allclose(aug(x), aug(x))  # new conv every call
    # A generator leaves the global RNG alone.
    torch.manual_seed(1)
    before = torch.rand(1)
    torch.manual_seed(1)
    aug(x, generator=_gen(7))
    torch.testing.assert_close(torch.rand(1), before)
    torch.testing.assert_close(RandConvAugment(alpha_range=(0.0, 0.0))(x), x, rtol=0, atol=0)


def test_randconv_kernel_size_drawn_from_set_and_weight_scale():
    # Constant image, replicate padding, k x k kernel, alpha = 1, C = 1: out = sum(w) * x, and
    # sum(w) ~ N(0, k^2 / k^2 = 1) whatever k: std about 1 over many draws.
    x = torch.ones(1, 1, 9, 9, dtype=torch.float64)
    aug = RandConvAugment(kernel_sizes=(1, 7), alpha_range=(1.0, 1.0))
    g = _gen(3)
    sums = torch.stack([aug(x, generator=g)[0, 0, 4, 4] for _ in range(250)])
    assert 0.85 < sums.std() < 1.15, sums.std()
    # Single pixel impulse: the response's support is the kernel size, only 1 or 7.
    imp = torch.zeros(1, 1, 15, 15, dtype=torch.float64)
    imp[0, 0, 7, 7] = 1.0
    widths = set()
    for _ in range(30):
        resp = aug(imp, generator=g)[0, 0]
        cols = (resp.abs() > 0).any(0).nonzero()
        widths.add(int(cols.max() - cols.min() + 1))
    assert widths == {1, 7}, widths


def test_randconv_no_state_and_invalid_args():
    aug = RandConvAugment()
    assert aug.kernel_sizes == (1, 3, 5, 7) and aug.mix is True
    x = torch.randn(1, 1, 8, 8, requires_grad=True)
    assert aug(x).grad_fn is None
    with pytest.raises(ValueError):
        RandConvAugment(kernel_sizes=(2,))
    with pytest.raises(ValueError):
        RandConvAugment(alpha_range=(1.0, 0.0))
    with pytest.raises(ValueError):
        RandConvAugment(padding_mode="circular")
    with pytest.raises(TypeError):
        aug(torch.ones(1, 1, 4, 4, dtype=torch.int64))


# ---------------------------------------------------------------- amplitude interpolation


@pytest.mark.parametrize("hw", [(128, 128), (16, 16), (15, 17), (13, 20)])
def test_low_freq_amplitude_shape_centre_and_symmetry(hw):
    h, w = hw
    x = torch.randn(3, 1, h, w, dtype=torch.float64) + 0.7
    b = low_freq_half_width(h, w, 0.1)
    assert b == min(int(0.1 * min(h, w)), (min(h, w) - 1) // 2)
    a = low_freq_amplitude(x, ratio=0.1)
    assert a.shape == (3, 1, 2 * b + 1, 2 * b + 1)
    # Centre is DC: |sum of pixels|; symmetric about DC.
    torch.testing.assert_close(a[:, 0, b, b], x.sum(dim=(1, 2, 3)).abs())
    torch.testing.assert_close(a, a.flip(-2, -1))
    assert low_freq_amplitude(x, ratio=0.3).shape[-1] == 2 * low_freq_half_width(h, w, 0.3) + 1


def test_low_freq_half_width_clamped():
    assert low_freq_half_width(128, 128, 0.1) == 12
    assert low_freq_half_width(100, 100, 0.29) == 29  # no floating-point off-by-one
    assert low_freq_half_width(8, 8, 0.5) == 3       # never the Nyquist row
    assert low_freq_half_width(9, 7, 0.5) == 3
    assert low_freq_half_width(9, 7, 0.0) == 0


@pytest.mark.parametrize("hw", [(16, 16), (15, 17), (13, 20)])
def test_amplitude_interpolation_keeps_phase_and_outside_amplitude(hw):
    h, w = hw
    x = torch.randn(4, 1, h, w, dtype=torch.float64)
    bank = low_freq_amplitude(3.0 * torch.randn(5, 1, h, w, dtype=torch.float64) + 2.0, 0.2)
    out = interpolate_low_freq_amplitude(x, bank, ratio=0.2, generator=_gen(0))
    assert out.shape == x.shape and out.dtype == x.dtype and not out.is_complex()
    fi, fo = _spectrum(x), _spectrum(out)
    # Phase kept everywhere (compare unit phasors; where amplitudes are not tiny).
    ok = (fi.abs() > 1e-6) & (fo.abs() > 1e-6)
    assert ok.float().mean() > 0.99
    torch.testing.assert_close((fo / fo.abs())[ok], (fi / fi.abs())[ok], rtol=1e-8, atol=1e-8)
    # Amplitude changed inside the square only.
    sq = _square_mask(h, w, low_freq_half_width(h, w, 0.2))
    torch.testing.assert_close(fo.abs()[..., ~sq], fi.abs()[..., ~sq], rtol=1e-9, atol=1e-9)
    assert ((fo.abs() - fi.abs())[..., sq].reshape(4, -1).abs().amax(1) > 1e-3).all()


@pytest.mark.parametrize("hw", [(16, 16), (15, 17), (12, 9)])
def test_amplitude_interpolation_lam_extremes(hw):
    h, w = hw
    x = torch.randn(3, 1, h, w, dtype=torch.float64)
    src = 2.0 * torch.randn(1, 1, h, w, dtype=torch.float64) + 1.0
    bank = low_freq_amplitude(src, 0.25)
    ident = interpolate_low_freq_amplitude(x, bank, 0.25, lam_range=(0.0, 0.0), generator=_gen(1))
    torch.testing.assert_close(ident, x, rtol=1e-10, atol=1e-10)
    swap = interpolate_low_freq_amplitude(x, bank, 0.25, lam_range=(1.0, 1.0), generator=_gen(1))
    torch.testing.assert_close(low_freq_amplitude(swap, 0.25), bank.expand(3, -1, -1, -1),
                               rtol=1e-9, atol=1e-9)
    # Half way: the midpoint of the two amplitude squares.
    mid = interpolate_low_freq_amplitude(x, bank, 0.25, lam_range=(0.5, 0.5))
    torch.testing.assert_close(low_freq_amplitude(mid, 0.25), 0.5 * (low_freq_amplitude(x, 0.25) + bank),
                               rtol=1e-9, atol=1e-9)


def test_amplitude_interpolation_output_real_with_asymmetric_bank():
    # A bank that no real image could have: the result is real with the bank's DC-symmetrised
    # amplitude in the square and the input's phase (the only Hermitian spectrum close to the
    # formula), not some other projection of a non-Hermitian spectrum.
    h = w = 14
    x = torch.randn(2, 1, h, w, dtype=torch.float64)
    b = low_freq_half_width(h, w, 0.2)
    bank = torch.rand(1, 1, 2 * b + 1, 2 * b + 1, generator=_gen(2), dtype=torch.float64) * 50
    out = interpolate_low_freq_amplitude(x, bank, 0.2, lam_range=(1.0, 1.0))
    sym = 0.5 * (bank + bank.flip(-2, -1))
    torch.testing.assert_close(low_freq_amplitude(out, 0.2), sym.expand(2, -1, -1, -1), rtol=1e-9, atol=1e-9)
    fi, fo = _spectrum(x), _spectrum(out)
    torch.testing.assert_close(fo / fo.abs(), fi / fi.abs(), rtol=1e-8, atol=1e-8)


def test_amplitude_interpolation_picks_bank_entries_per_sample_and_reproducible():
    h = w = 16
    x = torch.randn(1, 1, h, w, dtype=torch.float64).repeat(8, 1, 1, 1)
    bank = low_freq_amplitude(torch.randn(3, 1, h, w, dtype=torch.float64) * torch.tensor([1.0, 5.0, 20.0],
                              dtype=torch.float64).view(3, 1, 1, 1), 0.1)
    out = interpolate_low_freq_amplitude(x, bank, 0.1, lam_range=(1.0, 1.0), generator=_gen(3))
    a = low_freq_amplitude(out, 0.1)
    picked = [int((a[i:i + 1] - bank).abs().flatten(1).amax(1).argmin()) for i in range(8)]
    for i, j in enumerate(picked):
        torch.testing.assert_close(a[i], bank[j], rtol=1e-9, atol=1e-9)
    assert len(set(picked)) > 1
    again = interpolate_low_freq_amplitude(x, bank, 0.1, lam_range=(1.0, 1.0), generator=_gen(3))
    torch.testing.assert_close(again, out, rtol=0, atol=0)
    # lam per sample: identical inputs, one bank entry, different outputs.
    lam_out = interpolate_low_freq_amplitude(x, bank[:1], 0.1, generator=_gen(4))
    assert not torch.allclose(lam_out[0], lam_out[1])


def test_amplitude_augment_module_bank_handling():
    x = torch.randn(2, 1, 16, 16)
    aug = AmplitudeInterpolationAugment(ratio=0.1)
    assert aug(x) is x  # no bank: unchanged
    aug.set_bank(torch.empty(0, 1, 3, 3))
    assert aug(x) is x
    bank = low_freq_amplitude(torch.randn(4, 1, 16, 16) * 3, 0.1)
    aug.set_bank(bank)
    out = aug(x, generator=_gen(0))
    torch.testing.assert_close(out, interpolate_low_freq_amplitude(x, bank, 0.1, generator=_gen(0)))
    assert out.shape == x.shape and not torch.allclose(out, x)
    assert aug(x.to(torch.bfloat16)).dtype == torch.bfloat16
    with pytest.raises(ValueError):  # square of the wrong size for these images and ratio
        AmplitudeInterpolationAugment(bank=low_freq_amplitude(torch.randn(1, 1, 32, 32), 0.2))(x)
    with pytest.raises(ValueError):
        AmplitudeInterpolationAugment(lam_range=(0.0, 1.5))
    with pytest.raises(ValueError):
        aug.set_bank(torch.ones(1, 1, 4, 4))


# ---------------------------------------------------------------- Butterworth high-pass


@pytest.mark.parametrize("hw", [(16, 16), (15, 21)])
def test_butterworth_removes_dc_passes_checkerboard(hw):
    h, w = hw
    const = torch.full((2, 1, h, w), 3.0, dtype=torch.float64)
    out = butterworth_highpass(const, torch.tensor([0.01, 0.1], dtype=torch.float64))
    assert out.abs().max() < 1e-12
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    checker = ((yy + xx) % 2 * 2 - 1).to(torch.float64)[None, None].repeat(2, 1, 1, 1)
    hp = butterworth_highpass(checker + 5.0, torch.tensor([0.01, 0.1], dtype=torch.float64))
    if h % 2 == 0 and w % 2 == 0:  # exact Nyquist pattern: D = sqrt(0.5), gain ~1
        torch.testing.assert_close(hp, checker, rtol=0, atol=1e-3)
    else:  # odd sizes: the checkerboard is not one frequency, but its mean still goes
        assert hp.mean(dim=(1, 2, 3)).abs().max() < 1e-10
        assert (hp - checker).abs().mean() < 0.1


def test_butterworth_gain_on_pure_cosines():
    # cos(2 pi k x / W) is an eigenfunction: output = H(k / W) * input exactly.
    w, order = 32, 2
    xx = torch.arange(w, dtype=torch.float64)
    for k in (1, 2, 5, 12):
        img = torch.cos(2 * math.pi * k * xx / w).expand(1, 1, 8, w)
        for d0 in (0.02, 0.1, 0.3):
            gain = 1.0 / (1.0 + (d0 / (k / w)) ** (2 * order))
            torch.testing.assert_close(butterworth_highpass(img, d0, order), gain * img,
                                       rtol=1e-9, atol=1e-9)
    # Low frequencies attenuated much more than high ones.
    lo = butterworth_highpass(torch.cos(2 * math.pi * xx / w).expand(1, 1, 8, w), 0.1)
    hi = butterworth_highpass(torch.cos(2 * math.pi * 12 * xx / w).expand(1, 1, 8, w), 0.1)
    assert lo.abs().max() < 0.1 and hi.abs().max() > 0.95


def test_butterworth_augment_standardised_probability_and_reproducible():
    x = torch.randn(6, 1, 20, 18) * 2 + 3 + torch.linspace(0, 4, 18)  # contrast ramp + offset
    out = ButterworthHighPassAugment(p=1.0)(x, generator=_gen(0))
    f = _per_sample(out)
    torch.testing.assert_close(f.mean(1), torch.zeros(6), rtol=0, atol=1e-5)
    torch.testing.assert_close(f.std(1, unbiased=False), torch.ones(6), rtol=0, atol=1e-4)
    assert not torch.allclose(out, (x - x.mean()) / x.std())
    torch.testing.assert_close(ButterworthHighPassAugment(p=0.0)(x), x, rtol=0, atol=0)
    half = ButterworthHighPassAugment(p=0.5)(x.repeat(10, 1, 1, 1), generator=_gen(1))
    changed = (_per_sample(half) != _per_sample(x.repeat(10, 1, 1, 1))).any(1)
    assert 0 < int(changed.sum()) < 60
    aug = ButterworthHighPassAugment()
    torch.testing.assert_close(aug(x, generator=_gen(5)), aug(x, generator=_gen(5)), rtol=0, atol=0)
    with pytest.raises(ValueError):
        ButterworthHighPassAugment(cutoff_range=(0.0, 0.1))


# ---------------------------------------------------------------- Bezier / Dual-Norm


def test_bezier_curve_endpoints_and_formula():
    cp = torch.tensor([[-1.0, -1.0], [-0.2, 0.6], [0.3, -0.4], [1.0, 1.0]], dtype=torch.float64)
    pts = bezier_curve(cp, n=5)
    assert pts.shape == (5, 2)
    torch.testing.assert_close(pts[0], cp[0], rtol=0, atol=0)
    torch.testing.assert_close(pts[-1], cp[-1], rtol=0, atol=0)
    torch.testing.assert_close(pts[2], (cp[0] + 3 * cp[1] + 3 * cp[2] + cp[3]) / 8)
    line = torch.stack([torch.linspace(-1, 1, 4, dtype=torch.float64)] * 2, -1)
    torch.testing.assert_close(bezier_curve(line, n=7)[:, 0], torch.linspace(-1, 1, 7, dtype=torch.float64))
    assert bezier_curve(cp.expand(3, 2, 4, 2), n=11).shape == (3, 2, 11, 2)


@pytest.mark.parametrize("shape", [(6, 1, 16, 16), (3, 1, 15, 9)])
def test_bezier_similar_monotone_dissimilar_inverted_and_zscored(shape):
    x = torch.randn(shape, dtype=torch.float64) * 3 + 1
    sim, dis = BezierStyleAugment()(x, generator=_gen(0))
    assert sim.shape == x.shape and dis.shape == x.shape and sim.dtype == x.dtype
    order = _per_sample(x).argsort(1)
    s = _per_sample(sim).gather(1, order)
    d = _per_sample(dis).gather(1, order)
    assert (s.diff(dim=1) >= -1e-12).all()
    assert (d.diff(dim=1) <= 1e-12).all()
    for t in (sim, dis):
        f = _per_sample(t)
        torch.testing.assert_close(f.mean(1), torch.zeros(shape[0], dtype=torch.float64), rtol=0, atol=1e-9)
        torch.testing.assert_close(f.std(1, unbiased=False), torch.ones(shape[0], dtype=torch.float64),
                                   rtol=0, atol=1e-5)
    # The maps are non-linear (not just +-z-score of the input) and the two curves independent.
    fx = _per_sample(x)
    z = (fx - fx.mean(1, keepdim=True)) / fx.std(1, unbiased=False, keepdim=True)
    assert ((_per_sample(sim) - z).abs().amax(1) > 1e-2).all()
    assert ((_per_sample(dis) + z).abs().amax(1) > 1e-2).all()
    assert ((_per_sample(dis) + _per_sample(sim)).abs().amax(1) > 1e-2).all()


def test_bezier_without_zscore_keeps_dual_norms_range_and_the_sign_of_the_contrast():
    """Dual-Norm's views stay in [-1, 1]: the similar view keeps the darkest pixel at -1 and the
    brightest at +1 (curve endpoints), the dissimilar view swaps them; z-scored views would not."""
    x = torch.randn(4, 1, 20, 20, dtype=torch.float64) * 5 + 3
    sim, dis = BezierStyleAugment(zscore=False)(x, generator=_gen(1))
    fx, fs, fd = _per_sample(x), _per_sample(sim), _per_sample(dis)
    lo, hi = fx.argmin(1, keepdim=True), fx.argmax(1, keepdim=True)
    for t, at_lo, at_hi in ((fs, -1.0, 1.0), (fd, 1.0, -1.0)):
        assert t.amin() >= -1 - 1e-9 and t.amax() <= 1 + 1e-9
        torch.testing.assert_close(t.gather(1, lo).squeeze(1), torch.full((4,), at_lo, dtype=torch.float64))
        torch.testing.assert_close(t.gather(1, hi).squeeze(1), torch.full((4,), at_hi, dtype=torch.float64))
    # the same draw with z-scoring is the standardised version of these views
    zs, _ = BezierStyleAugment()(x, generator=_gen(1))
    expected = (fs - fs.mean(1, keepdim=True)) / (fs.std(1, unbiased=False, keepdim=True) + 1e-6)  # _zscore's eps
    torch.testing.assert_close(_per_sample(zs), expected, rtol=1e-7, atol=1e-9)


def test_minmax_symmetric_scales_each_sample_to_minus_one_one():
    x = torch.stack([torch.linspace(2, 6, 16).reshape(1, 4, 4), torch.full((1, 4, 4), 7.0)])
    out = minmax_symmetric(x)
    torch.testing.assert_close(out[0].flatten(), torch.linspace(-1, 1, 16))
    assert (out[1] == -1).all()  # constant sample
    torch.testing.assert_close(minmax_symmetric(3 * x + 1), out)


def test_bezier_is_global_intensity_map_invariant_to_affine_input_scaling():
    x = _piecewise_image().repeat(3, 1, 1, 1) + 0.01 * torch.randn(3, 1, 48, 48, dtype=torch.float64)
    aug = BezierStyleAugment()
    s1, d1 = aug(x, generator=_gen(4))
    s2, d2 = aug(4.0 * x - 7.0, generator=_gen(4))  # min-max first: same result
    torch.testing.assert_close(s1, s2, rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(d1, d2, rtol=1e-7, atol=1e-7)
    s3, _ = aug(x, generator=_gen(5))
    assert not torch.allclose(s1, s3)
    const_s, const_d = aug(torch.full((2, 1, 8, 8), 0.3))
    assert torch.isfinite(const_s).all() and const_s.abs().max() == 0 and const_d.abs().max() == 0


def test_bezier_maps_intensities_along_the_drawn_curve():
    # Input spanning [-1, 1] exactly (min-max is the identity). Reference: solve x(t) = v by
    # bisection on the explicit cubic (x(t) is non-decreasing), then y(t).
    x = torch.linspace(-1, 1, 97, dtype=torch.float64).reshape(1, 1, 1, 97).repeat(3, 1, 1, 1)
    aug = BezierStyleAugment(n_points=2000)
    sim, dis = aug(x, generator=_gen(6))
    cp = aug.curves(3, generator=_gen(6), dtype=torch.float64)[:, :, None]  # (2, 3, 1, 4, 2)

    def cubic(t, c):
        return ((1 - t) ** 3 * c[..., 0] + 3 * t * (1 - t) ** 2 * c[..., 1]
                + 3 * t ** 2 * (1 - t) * c[..., 2] + t ** 3 * c[..., 3])

    v = x.reshape(1, 3, 97).expand(2, 3, 97)
    lo, hi = torch.zeros_like(v), torch.ones_like(v)
    for _ in range(60):
        mid = (lo + hi) / 2
        right = cubic(mid, cp[..., 0]) < v
        lo, hi = torch.where(right, mid, lo), torch.where(right, hi, mid)
    ref = cubic((lo + hi) / 2, cp[..., 1])

    def z(t):
        return (t - t.mean(-1, keepdim=True)) / t.std(-1, unbiased=False, keepdim=True)

    torch.testing.assert_close(_per_sample(sim), z(ref[0]), rtol=0, atol=2e-3)
    torch.testing.assert_close(_per_sample(dis), z(-ref[1]), rtol=0, atol=2e-3)


def test_bezier_control_points_sorted_and_curves_monotone():
    cp = BezierStyleAugment().curves(200, generator=_gen(9), dtype=torch.float64)
    assert cp.shape == (2, 200, 4, 2)
    assert (cp.diff(dim=2) >= 0).all()  # x and y non-decreasing along the control polygon
    assert (cp[:, :, 1:3].abs() <= 1).all()
    pts = bezier_curve(cp, n=200)
    assert (pts.diff(dim=2) >= -1e-12).all()


# ---------------------------------------------------------------- CUDA


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")
def test_cuda_matches_cpu_with_cpu_generator():
    x = torch.randn(3, 1, 33, 32, dtype=torch.float64)
    bank = low_freq_amplitude(torch.randn(2, 1, 33, 32, dtype=torch.float64) * 4, 0.1)
    cases = [
        lambda t, g: RandConvAugment()(t, generator=g),
        lambda t, g: interpolate_low_freq_amplitude(t, bank, 0.1, generator=g),
        lambda t, g: AmplitudeInterpolationAugment(bank)(t, generator=g),
        lambda t, g: ButterworthHighPassAugment(p=0.7)(t, generator=g),
        lambda t, g: torch.cat(BezierStyleAugment()(t, generator=g)),
    ]
    for fn in cases:
        a = fn(x, _gen(3))
        b = fn(x.cuda(), _gen(3))
        assert b.device.type == "cuda"
        torch.testing.assert_close(b.cpu(), a, rtol=1e-6, atol=1e-6)
    gen = torch.Generator(device="cuda").manual_seed(0)
    assert RandConvAugment()(x.cuda().float(), generator=gen).device.type == "cuda"
