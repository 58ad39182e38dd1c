"""GIN / IPA augmentation and the KL consistency loss (fast, CPU)."""

import warnings

import pytest
import torch
import torch.nn.functional as F

from fedxmodal.losses.consistency import KLConsistencyLoss, kl_consistency
from fedxmodal.transforms.gin import GINAugment, GINIPAAugment, gin_ipa_views, random_blend_mask
from fedxmodal.transforms.ipa import blend_views, bspline2_basis


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _frob(t):
    return t.reshape(t.shape[0], -1).norm(dim=1)


def _piecewise_image(h=64, w=64):
    """(1, 1, h, w) image of constant regions; regions 1 and 3 share intensity 2.0."""
    img = torch.full((h, w), 0.5)
    img[8:30, 8:30] = 2.0    # region 1
    img[8:30, 36:58] = -1.0  # region 2
    img[36:58, 8:58] = 2.0   # region 3, same value as region 1, elsewhere
    return img[None, None]


def _reference_gin(x, gin, generator):
    """Naive per-sample GIN (one F.conv2d per sample and layer), same RNG draw order."""
    b, c = x.shape[:2]
    idx = torch.randint(len(gin.kernel_sizes), (gin.n_layers,), generator=generator)
    ks = [gin.kernel_sizes[i] for i in idx.tolist()]
    chans = [c] + [gin.interm_channels] * (gin.n_layers - 1) + [c]
    nets = 1 if gin.shared_across_batch else b
    ws, bs = [], []
    for i, k in enumerate(ks):
        ws.append(torch.randn((nets, chans[i + 1], chans[i], k, k), generator=generator, dtype=x.dtype))
        bs.append(torch.randn((nets, chans[i + 1]), generator=generator, dtype=x.dtype))
    alpha = torch.rand((nets, 1), generator=generator, dtype=x.dtype)
    lo, hi = gin.alpha_range
    alpha = alpha * (hi - lo) + lo
    outs = []
    for s in range(b):
        n = 0 if gin.shared_across_batch else s
        h = x[s:s + 1]
        for i, k in enumerate(ks):
            h = F.conv2d(h, ws[i][n], bs[i][n], padding=k // 2)
            if i < gin.n_layers - 1:
                h = F.leaky_relu(h, gin.negative_slope)
        mixed = alpha[n] * h + (1 - alpha[n]) * x[s:s + 1]
        mixed = mixed * (x[s].norm() / (mixed.norm() + 1e-5))
        outs.append(mixed)
    return torch.cat(outs)


# ---------------------------------------------------------------- GIN


@pytest.mark.parametrize("shape", [(4, 1, 32, 40), (3, 3, 24, 24), (2, 1, 8, 16, 12)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shape_dtype_device_and_norm_preserved(shape, dtype):
    x = torch.randn(shape, dtype=dtype) + 0.3
    out = GINAugment()(x)
    assert out.shape == x.shape and out.dtype == dtype and out.device == x.device
    assert torch.isfinite(out).all()
    rel = (_frob(out) - _frob(x)).abs() / _frob(x)
    assert rel.max() < 1e-3


def test_half_precision_keeps_dtype():
    x = torch.randn(2, 1, 16, 16).to(torch.bfloat16)
    out = GINAugment()(x)
    assert out.dtype == torch.bfloat16 and out.shape == x.shape


def test_matches_naive_per_sample_reference():
    x = torch.randn(5, 1, 20, 24, dtype=torch.float64)
    for shared in (False, True):
        for ks in ((1, 3), (3,), (1,)):
            gin = GINAugment(shared_across_batch=shared, kernel_sizes=ks)
            got = gin(x, generator=_gen(11))
            ref = _reference_gin(x, gin, _gen(11))
            torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-9)


def test_alpha_one_changes_intensities_alpha_zero_is_identity():
    x = _piecewise_image().repeat(4, 1, 1, 1)
    out = GINAugment(alpha_range=(1.0, 1.0))(x, generator=_gen(0))
    diff = (out - x).abs().amax(dim=(1, 2, 3))
    assert (diff > 1e-2).all(), diff
    same = GINAugment(alpha_range=(0.0, 0.0))(x, generator=_gen(0))
    torch.testing.assert_close(same, x, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shared", [False, True])
def test_local_intensity_map_keeps_piecewise_constant_regions(shared):
    # Force 3x3 kernels in all 4 layers: receptive field 9, so pixels at least 4 px from any
    # edge see a constant neighbourhood and must map to one value per input intensity.
    x = _piecewise_image().repeat(6, 1, 1, 1)
    gin = GINAugment(kernel_sizes=(3,), alpha_range=(1.0, 1.0), shared_across_batch=shared)
    out = gin(x, generator=_gen(3))
    m = 4
    r1 = out[:, 0, 8 + m:30 - m, 8 + m:30 - m]
    r2 = out[:, 0, 8 + m:30 - m, 36 + m:58 - m]
    r3 = out[:, 0, 36 + m:58 - m, 8 + m:58 - m]
    scale = out.abs().amax(dim=(1, 2, 3))
    for r in (r1, r2, r3):
        spread = (r.amax(dim=(1, 2)) - r.amin(dim=(1, 2))) / scale
        assert spread.max() < 1e-5, spread
    # Same input intensity in two separate regions -> same output (a global intensity map).
    torch.testing.assert_close(r1.mean(dim=(1, 2)), r3.mean(dim=(1, 2)), rtol=1e-5, atol=1e-6)
    # ... and different intensities map to different values.
    assert ((r1.mean(dim=(1, 2)) - r2.mean(dim=(1, 2))).abs() / scale > 1e-4).all()
    # Close to an edge (1 px away) the output is not constant: the kernels do see edges.
    near = out[:, 0, 8 + 1:30 - 1, 8 + 1:30 - 1]
    assert ((near.amax(dim=(1, 2)) - near.amin(dim=(1, 2))) / scale > 1e-4).all()


def test_receptive_field_at_most_9():
    # Perturbing one pixel changes the output only within +-4 px, up to the global
    # Frobenius rescale (one scalar per sample).
    torch.manual_seed(0)
    x = torch.randn(1, 1, 40, 40)
    xp = x.clone()
    xp[0, 0, 20, 20] += 5.0
    gin = GINAugment(kernel_sizes=(3,), alpha_range=(1.0, 1.0))
    a = gin(x, generator=_gen(5))
    b = gin(xp, generator=_gen(5))
    inside = torch.zeros(40, 40, dtype=torch.bool)
    inside[16:25, 16:25] = True
    ao, bo = a[0, 0][~inside], b[0, 0][~inside]
    ratio = (ao * bo).sum() / (ao * ao).sum()
    assert (bo - ratio * ao).abs().max() < 1e-4 * ao.abs().max()
    # The change does reach the border of the 9x9 window (random weights, no zeros).
    ai, bi = a[0, 0][inside], b[0, 0][inside]
    assert (bi - ratio * ai).abs().max() > 1e-3


def test_new_draw_each_call_and_global_rng_seeding():
    x = torch.randn(3, 1, 16, 16)
    gin = GINAugment()
    assert not torch.allclose(gin(x), gin(x))
    torch.manual_seed(123)
    a = gin(x)
    torch.manual_seed(123)
    b = gin(x)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("shared", [False, True])
def test_generator_reproducibility(shared):
    x = torch.randn(4, 1, 24, 24)
    gin = GINAugment(shared_across_batch=shared)
    a = gin(x, generator=_gen(7))
    b = gin(x, generator=_gen(7))
    c = gin(x, generator=_gen(8))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(a, c)
    # A generator does not consume the global RNG.
    torch.manual_seed(1)
    before = torch.rand(1)
    torch.manual_seed(1)
    gin(x, generator=_gen(7))
    torch.testing.assert_close(torch.rand(1), before)


def test_per_sample_vs_shared_across_batch():
    x = torch.randn(1, 1, 24, 24).repeat(6, 1, 1, 1)
    per = GINAugment(shared_across_batch=False)(x, generator=_gen(2))
    for i in range(1, 6):
        assert not torch.allclose(per[0], per[i])
    sh = GINAugment(shared_across_batch=True)(x, generator=_gen(2))
    for i in range(1, 6):
        torch.testing.assert_close(sh[0], sh[i], rtol=1e-6, atol=1e-6)


def test_nothing_learned_no_grad():
    gin = GINAugment()
    assert list(gin.parameters()) == [] and list(gin.buffers()) == []
    assert gin.state_dict() == {}
    x = torch.randn(2, 1, 16, 16, requires_grad=True)
    out = gin(x)
    assert not out.requires_grad and out.grad_fn is None
    ipa = GINIPAAugment()
    assert list(ipa.parameters()) == [] and ipa.state_dict() == {}


def test_constructor_args_stored_as_attributes():
    kw = dict(n_layers=3, interm_channels=4, kernel_sizes=(1, 3, 5), alpha_range=(0.2, 0.9),
              shared_across_batch=True, negative_slope=0.2)
    gin = GINAugment(**kw)
    for k, v in kw.items():
        assert getattr(gin, k) == v, k
    ipa = GINIPAAugment(**kw, grid=5, control_point_spacing=32, unit_norm_control_points=False)
    for k, v in dict(kw, grid=5, control_point_spacing=32, unit_norm_control_points=False).items():
        assert getattr(ipa, k) == v, k
    x = torch.randn(2, 1, 16, 16)
    assert gin(x).shape == x.shape


def test_invalid_arguments():
    with pytest.raises(ValueError):
        GINAugment(kernel_sizes=(2,))
    with pytest.raises(ValueError):
        GINAugment(alpha_range=(1.0, 0.0))
    with pytest.raises(TypeError):
        GINAugment()(torch.ones(1, 1, 4, 4, dtype=torch.int64))


def test_large_batch_path():
    # Batches past the block-diagonal GEMM width use grouped 1x1 convs; same maths.
    x = torch.randn(40, 1, 12, 12, dtype=torch.float64)
    gin = GINAugment(kernel_sizes=(1,))
    torch.testing.assert_close(gin(x, generator=_gen(4)), _reference_gin(x, gin, _gen(4)),
                               rtol=1e-9, atol=1e-9)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")
def test_cuda_matches_cpu_with_cpu_generator():
    x = torch.randn(4, 1, 32, 32, dtype=torch.float64)
    gin = GINAugment()
    a = gin(x, generator=_gen(9))
    b = gin(x.cuda(), generator=_gen(9))
    assert b.device.type == "cuda"
    torch.testing.assert_close(b.cpu(), a, rtol=1e-6, atol=1e-6)
    m = random_blend_mask((2, 32, 32), generator=_gen(1), device="cuda")
    assert m.device.type == "cuda"


# ---------------------------------------------------------------- IPA


def test_bspline_basis_partition_of_unity():
    for size, n in ((192, 6), (37, 3), (128, 5)):
        w = bspline2_basis(size, n)
        assert w.shape == (size, n)
        torch.testing.assert_close(w.sum(1), torch.ones(size), rtol=1e-6, atol=1e-6)
        assert (w >= 0).all()


def test_blend_mask_range_shape_smoothness():
    m = random_blend_mask((4, 192, 160), generator=_gen(0))
    assert m.shape == (4, 1, 192, 160) and m.dtype == torch.float32
    assert m.min() >= 0 and m.max() <= 1
    flat = m.reshape(4, -1)
    torch.testing.assert_close(flat.amin(1), torch.zeros(4), rtol=0, atol=1e-6)
    torch.testing.assert_close(flat.amax(1), torch.ones(4), rtol=0, atol=1e-6)

    def tv(t):
        return (t[..., 1:, :] - t[..., :-1, :]).abs().mean() + (t[..., :, 1:] - t[..., :, :-1]).abs().mean()

    noise = torch.rand(4, 1, 192, 160, generator=_gen(1))
    assert tv(m) < 0.02 * tv(noise), (tv(m), tv(noise))
    # Not flat either: the mask really varies across the image.
    assert (flat.std(1) > 0.1).all()


def test_blend_mask_grid_options_reproducibility_3d():
    a = random_blend_mask((2, 64, 64), grid=4, generator=_gen(3))
    b = random_blend_mask((2, 64, 64), grid=(4, 4), generator=_gen(3))
    c = random_blend_mask((2, 64, 64), grid=4, generator=_gen(4))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(a, c)
    assert not torch.allclose(a[0], a[1])  # one mask per sample
    m3 = random_blend_mask((2, 8, 32, 32))
    assert m3.shape == (2, 1, 8, 32, 32) and m3.min() >= 0 and m3.max() <= 1
    raw = random_blend_mask((2, 64, 64), unit_norm_control_points=False, generator=_gen(3))
    assert raw.shape == (2, 1, 64, 64) and raw.min() >= 0 and raw.max() <= 1
    with pytest.raises(ValueError):
        random_blend_mask((2, 64, 64), grid=2)


def test_ipa_views_complementary_blend():
    x = torch.randn(3, 1, 48, 48, dtype=torch.float64)
    gin = GINAugment()
    g = _gen(21)
    x1, x2, x3 = gin(x, generator=g), gin(x, generator=g), gin(x, generator=g)
    x1p, x2p, x3p, m = gin_ipa_views(x, gin, generator=_gen(21), return_mask=True)
    torch.testing.assert_close(x3p, x3, rtol=0, atol=0)
    torch.testing.assert_close(x1p + x2p, x1 + x2, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(x1p, x1 * m + x2 * (1 - m), rtol=1e-12, atol=1e-12)
    assert m.shape == (3, 1, 48, 48)
    # The blend is not trivial: x1' is neither view alone.
    assert not torch.allclose(x1p, x1) and not torch.allclose(x1p, x2)
    # The module form gives the same views for the same generator.
    y1p, y2p, y3 = GINIPAAugment()(x, generator=_gen(21))
    torch.testing.assert_close(y1p, x1p, rtol=0, atol=0)
    torch.testing.assert_close(y2p, x2p, rtol=0, atol=0)
    torch.testing.assert_close(y3, x3, rtol=0, atol=0)


def test_blend_views_extremes():
    x1, x2 = torch.randn(2, 2, 8, 8), torch.randn(2, 2, 8, 8)
    a, b = blend_views(x1, x2, torch.ones(2, 1, 8, 8))
    torch.testing.assert_close(a, x1)
    torch.testing.assert_close(b, x2)


def test_ipa_with_shared_gin_gives_three_different_views():
    x = torch.randn(2, 1, 32, 32)
    x1p, x2p, x3 = GINIPAAugment(shared_across_batch=True)(x, generator=_gen(0))
    assert not torch.allclose(x1p, x3) and not torch.allclose(x2p, x3)


# ---------------------------------------------------------------- KL consistency


def test_kl_consistency_zero_for_identical_positive_otherwise():
    z = torch.randn(2, 4, 8, 8)
    assert kl_consistency([z, z.clone(), z.clone()]).abs() < 1e-7
    views = [z, z + 0.5 * torch.randn_like(z), z + 0.5 * torch.randn_like(z)]
    loss = kl_consistency(views)
    assert loss > 0 and loss.dim() == 0


def test_kl_consistency_matches_torch_kldivloss_and_weight():
    torch.manual_seed(0)
    views = [torch.randn(2, 3, 5, 5) for _ in range(3)]
    probs = [F.softmax(v, 1) for v in views]
    mean_p = sum(probs) / 3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        per = [torch.nn.KLDivLoss()(F.log_softmax(v, 1), mean_p) for v in views]
        # The original GIN-IPA code: one KLDivLoss over the views concatenated on the batch.
        concat = torch.nn.KLDivLoss()(F.log_softmax(torch.cat(views), 1), torch.cat([mean_p] * 3))
    unweighted = kl_consistency(views, weight=1.0)
    torch.testing.assert_close(unweighted, sum(per) / 3)
    torch.testing.assert_close(unweighted, concat)
    torch.testing.assert_close(kl_consistency(views), 10 * unweighted)
    torch.testing.assert_close(kl_consistency(views, weight=1.0, view_reduction="sum"), sum(per))
    torch.testing.assert_close(KLConsistencyLoss(weight=2.5)(views), 2.5 * unweighted)
    torch.testing.assert_close(kl_consistency(torch.stack(views), weight=1.0), unweighted)


def test_kl_consistency_gradients_and_errors():
    views = [torch.randn(2, 3, 4, 4, requires_grad=True) for _ in range(3)]
    kl_consistency(views).backward()
    assert all(v.grad is not None and v.grad.abs().sum() > 0 for v in views)
    with pytest.raises(ValueError):
        kl_consistency([views[0]])
    with pytest.raises(ValueError):
        kl_consistency(views, view_reduction="max")


# ---------------------------------------------------------------- preview helper


def test_save_gin_gallery(tmp_path):
    pytest.importorskip("matplotlib")
    from fedxmodal.apps.previews import save_gin_gallery, save_ipa_gallery

    img = _piecewise_image()[0, 0]
    out = save_gin_gallery(img, str(tmp_path / "g.png"), n=4, seed=0, ncols=2)
    assert (tmp_path / "g.png").stat().st_size > 1000 and out.endswith("g.png")
    save_ipa_gallery(img.numpy(), str(tmp_path / "i.png"), rows=1)
    assert (tmp_path / "i.png").stat().st_size > 1000
