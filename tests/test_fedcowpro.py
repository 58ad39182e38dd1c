"""FedCoWPro's self-contained pieces: superpixels, episodes, encoder, prototypes, losses, training."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy import ndimage

from fedxmodal.data.preprocess import PreprocessConfig
from fedxmodal.data.slices import SiteSlices
from fedxmodal.methods.fedcowpro import superpixels as spx
from fedxmodal.methods.fedcowpro.episodes import EpisodeConfig, EpisodeSampler
from fedxmodal.methods.fedcowpro.losses import LOSS_VARIANTS, edge_map, episode_losses, method_settings
from fedxmodal.methods.fedcowpro.network import FewShotEncoder, IntensityFeatures
from fedxmodal.methods.fedcowpro.prototypes import (
    PrototypeConfig, class_prototypes, cowpro_score, cowpro_weights, few_shot_logits, global_prototype,
    local_prototypes,
)
from fedxmodal.methods.fedcowpro.train import train_episodes

from conftest import blob_case, write_site


def phantom_slices(n=4, size=64, seed=0):
    """(n, size, size) z-scored-like slices: noisy air, an elliptic body, two round organs."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] * (64.0 / size)
    body = ((yy - 32) ** 2 / 28 ** 2 + (xx - 32) ** 2 / 22 ** 2) < 1
    img = np.full((n, size, size), -3.0, np.float32)
    img[:, body] = 0.0
    img[:, ((yy - 25) ** 2 + (xx - 25) ** 2) < 64] = 2.0
    img[:, ((yy - 40) ** 2 + (xx - 38) ** 2) < 36] = 1.0
    return img + rng.normal(0, 0.2, img.shape).astype(np.float32), body


# --- superpixels -------------------------------------------------------------------------------

def test_superpixels_deterministic_inside_body_connected_and_sequential():
    img, body = phantom_slices()
    sp = spx.superpixels_volume(img, "MR")
    assert np.array_equal(sp, spx.superpixels_volume(img, "MR"))
    assert sp.shape == img.shape and sp.dtype == np.int32
    for s in sp:
        n = int(s.max())
        assert n >= 5
        assert set(np.unique(s)) == set(range(n + 1))  # relabelled 1..N, 0 = none
        assert not (s[~body] > 0).any()  # nothing in the noisy air
        assert (s[body] > 0).mean() > 0.95  # and almost all of the body is covered
        for label in range(1, n + 1):
            _, pieces = ndimage.label(s == label)  # 4-connectivity
            assert pieces == 1, f"superpixel {label} is in {pieces} pieces"


def test_min_size_scales_with_area_and_settings_are_checked():
    cfg = spx.SuperpixelConfig()
    assert cfg.min_size(256, 256) == 400 and cfg.min_size(128, 128) == 100 and cfg.min_size(64, 64) == 25
    with pytest.raises(ValueError, match="min_region_fraction"):
        spx.SuperpixelConfig(min_region_fraction=2)
    # Smaller min_size at the same image -> more superpixels.
    img, _ = phantom_slices(1)
    coarse = spx.superpixels_volume(img, "MR", spx.SuperpixelConfig(min_size_at_256=1600)).max()
    assert spx.superpixels_volume(img, "MR").max() > coarse


def _unlabelled_site(tmp_path):
    site = write_site(tmp_path / "ct", {"training": [blob_case(0), blob_case(1)], "validation": [blob_case(2)],
                                        "test": [blob_case(3)]})
    spec = json.loads((site / "dataset.json").read_text())
    for entry in spec["training"]:
        del entry["label"]
    (site / "dataset.json").write_text(json.dumps(spec))
    return site


def test_site_superpixels_on_an_unlabelled_site_are_cached_in_the_site(tmp_path, monkeypatch):
    site = _unlabelled_site(tmp_path)
    data = SiteSlices(site, (), PreprocessConfig(spacing=1.25, size=64), progress=False)
    first = spx.site_superpixels(data)
    assert first.images.shape == (12, 1, 64, 64) and first.superpixels.shape == (12, 64, 64)
    assert first.case_ids[:6] == ["training_0"] * 6 and first.z.tolist()[:6] == list(range(6))
    cached = sorted((site / ".fedxmodal_cache" / "superpixels").rglob("*.npz"))
    assert [p.name for p in cached] == ["training_0.npz", "training_1.npz"]  # never outside the site
    # A second run reads the cache (recomputing would fail here).
    monkeypatch.setattr(spx, "superpixels_volume", lambda *a, **k: pytest.fail("cache not used"))
    again = spx.site_superpixels(SiteSlices(site, (), PreprocessConfig(spacing=1.25, size=64), progress=False))
    assert torch.equal(again.superpixels, first.superpixels)
    # Other preprocessing settings -> another cache key (and a recomputation).
    monkeypatch.undo()
    spx.site_superpixels(SiteSlices(site, (), PreprocessConfig(spacing=1.25, size=48), progress=False))
    assert len(list((site / ".fedxmodal_cache" / "superpixels").iterdir())) == 2
    # The CT body (blob_case: -800 HU air around a -100 HU body) is where the superpixels are.
    img = first.images[:, 0]
    assert (first.superpixels > 0).any() and not (first.superpixels[img <= img.min() + 1e-3] > 0).any()


def test_setting2_keeps_slices_without_a_test_organ_and_names_the_site_when_none_is_left(tmp_path):
    from fedxmodal.data.errors import DataError
    from fedxmodal.methods.fedcowpro import FedCoWProMethod

    img, lab = blob_case(0)
    everywhere = lab.copy()
    everywhere[5:20, 8:25, :] = 1  # the liver in all 6 slices
    site = write_site(tmp_path / "ct", {"training": [blob_case(0), (img, everywhere)], "validation": [blob_case(2)],
                                        "test": [blob_case(3)]})
    mixed = SiteSlices(site, ("liver", "spleen"), PreprocessConfig(spacing=1.25, size=64), progress=False)
    images, sp = FedCoWProMethod(exclude_structures=["liver"]).training_slices(mixed)
    assert images.shape[0] == 2 and sp.shape[0] == 2  # blob_case's first and last slice hold no liver
    only_everywhere = write_site(tmp_path / "ct2", {"training": [(img, everywhere)], "validation": [blob_case(2)],
                                                    "test": [blob_case(3)]})
    data = SiteSlices(only_everywhere, ("liver", "spleen"), PreprocessConfig(spacing=1.25, size=64), progress=False)
    method = FedCoWProMethod(exclude_structures=["liver"])
    assert method.training_slices(data)[0].shape[0] == 0  # adds nothing to a pool of sites ...
    with pytest.raises(DataError, match="site\\(s\\) 'ct2': setting 2 leaves no training slice") as err:
        method.episode_sampler([data])  # ... but cannot train alone
    assert "dataset.json" in str(err.value)
    assert len(method.episode_sampler([mixed, data]).candidates) == 2  # pooled (centralized): the other site's 2


def test_superpixel_preview_png(tmp_path):
    import matplotlib.image as mpimg

    img, _ = phantom_slices(5)
    sp = spx.superpixels_volume(img, "MR")
    out = spx.render_superpixel_preview(torch.from_numpy(img)[:, None], sp, tmp_path / "prev" / "sp.png", n_slices=3)
    pixels = mpimg.imread(out)
    assert pixels.ndim == 3 and pixels.shape[1] > pixels.shape[0]  # three panels side by side
    with pytest.raises(ValueError, match="no slice has superpixels"):
        spx.render_superpixel_preview(img, np.zeros_like(sp), tmp_path / "x.png")


# --- episodes ----------------------------------------------------------------------------------

def _quadrants(size=64):
    """4 slices of four constant quadrants (intensities 0, 1, 2, 3) and those quadrants as superpixels."""
    img = np.zeros((size, size), np.float32)
    sp = np.zeros((size, size), np.int64)
    h = size // 2
    for k, (ys, xs) in enumerate([(slice(0, h), slice(0, h)), (slice(0, h), slice(h, None)),
                                  (slice(h, None), slice(0, h)), (slice(h, None), slice(h, None))]):
        img[ys, xs], sp[ys, xs] = float(k), k + 1
    return torch.from_numpy(np.stack([img] * 4))[:, None], torch.from_numpy(np.stack([sp] * 4))


def test_episodes_are_seeded_and_shaped():
    img, _ = phantom_slices()
    sp = torch.from_numpy(spx.superpixels_volume(img, "MR"))
    a = EpisodeSampler(torch.from_numpy(img)[:, None], sp, seed=3).batch(3)
    b = EpisodeSampler(torch.from_numpy(img)[:, None], sp, seed=3).batch(3)
    c = EpisodeSampler(torch.from_numpy(img)[:, None], sp, seed=4).batch(3)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["query_image"], c["query_image"])
    for k in ("support_image", "support_mask", "query_image", "query_mask"):
        assert a[k].shape == (3, 1, 64, 64) and a[k].dtype == torch.float32
    assert set(torch.unique(a["query_mask"]).tolist()) <= {0.0, 1.0}
    with pytest.raises(ValueError, match="do not match"):
        EpisodeSampler(torch.from_numpy(img)[:, None], sp[:, :10])


def test_support_and_query_are_two_views_of_the_same_superpixel():
    images, sps = _quadrants()
    batch = EpisodeSampler(images, sps, EpisodeConfig(gamma=(1.0, 1.0)), seed=0).batch(8)
    for b in range(8):
        value = float(batch["superpixel"][b] - 1)  # the chosen quadrant's intensity
        region = (sps[batch["slice_index"][b]] == batch["superpixel"][b]).float()
        for view in ("support", "query"):
            mask = batch[f"{view}_mask"][b, 0] > 0
            # The mask moved with its image: the image under it is the quadrant's intensity...
            assert torch.median(batch[f"{view}_image"][b, 0][mask]).item() == pytest.approx(value, abs=0.05)
            # ...and it is still mostly the same region (small affine + elastic).
            dice = 2 * (mask * region).sum() / (mask.sum() + region.sum())
            assert dice > 0.6
        # Two independent augmentations: the views differ.
        assert (batch["support_image"][b] - batch["query_image"][b]).abs().mean() > 0.01
        assert not torch.equal(batch["support_mask"][b], batch["query_mask"][b])
    plain = EpisodeSampler(images, sps, EpisodeConfig(augment=False), seed=0).batch(2)
    assert torch.equal(plain["support_image"], plain["query_image"])
    assert torch.equal(plain["support_mask"], plain["query_mask"])


# --- encoder -----------------------------------------------------------------------------------

@pytest.mark.parametrize("downsample", [4, 8])
def test_encoder_shapes_and_groupnorm(downsample):
    torch.manual_seed(0)
    enc = FewShotEncoder(channels=(8, 16, 32), downsample=downsample, out_channels=24)
    assert enc(torch.randn(2, 1, 64, 64)).shape == (2, 24, 64 // downsample, 64 // downsample)
    kinds = {type(m).__name__ for m in enc.modules()}
    assert "GroupNorm" in kinds and not any("BatchNorm" in k for k in kinds)
    with pytest.raises(ValueError, match="divisible"):
        enc(torch.randn(1, 1, 62, 62))
    assert IntensityFeatures(n_bins=8, downsample=4)(torch.randn(2, 1, 64, 64)).shape == (2, 8, 16, 16)


# --- prototypes --------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["alp", "cowpro"])
def test_query_equal_to_support_is_segmented_with_raw_intensities(kind):
    torch.manual_seed(0)
    img = torch.full((1, 1, 64, 64), -1.0)
    img[..., 20:50, 30:60] = 1.0
    img = img + 0.05 * torch.randn_like(img)
    fg = torch.zeros(1, 1, 64, 64)
    fg[..., 20:50, 30:60] = 1.0
    feats = IntensityFeatures(n_bins=16)(img)
    for training in (True, False):
        logits = few_shot_logits(feats, fg, feats, PrototypeConfig(kind=kind), training=training)
        assert logits.shape == (1, 2, 64, 64)
        pred = logits.argmax(1) == 1
        dice = 2 * (pred & (fg[:, 0] > 0)).sum() / (pred.sum() + fg.sum())
        assert dice > 0.99


def test_local_windows_kept_only_above_095_and_global_fallback():
    feats = torch.arange(2 * 8 * 8, dtype=torch.float32).view(1, 2, 8, 8)
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 0:4, 0:4] = 1.0  # window (0, 0): pooled 1.0 -> kept
    mask[..., 0:4, 4:8] = 1.0
    mask[..., 0, 4] = 0.0  # window (0, 1): pooled 15/16 = 0.9375 -> dropped at 0.95
    protos = local_prototypes(feats, mask, window=4, threshold=0.95)
    assert protos.shape == (1, 2)
    assert torch.allclose(protos[0], feats[0, :, 0:4, 0:4].mean((1, 2)))
    assert local_prototypes(feats, mask, window=4, threshold=0.9).shape == (2, 2)
    # Foreground = local + global; background = local only.
    assert class_prototypes(feats, mask, 4, 0.95, with_global=True).shape == (2, 2)
    assert class_prototypes(feats, mask, 4, 0.95, with_global=False).shape == (1, 2)
    # No window passes (a thin stripe): the global masked average alone, for fg and bg alike.
    stripe = torch.zeros(1, 1, 8, 8)
    stripe[..., 3, :] = 1.0
    for with_global in (True, False):
        only = class_prototypes(feats, stripe, 4, 0.95, with_global=with_global)
        assert only.shape == (1, 2)
        assert torch.allclose(only, global_prototype(feats, stripe), atol=1e-3)
        assert torch.allclose(only[0], feats[0, :, 3, :].mean(1), atol=1e-3)


def test_cowpro_weights_sum_to_one_and_single_prototype_score_is_correlation():
    torch.manual_seed(0)
    q, p = torch.randn(2, 6, 5, 5), torch.randn(4, 6)
    w = cowpro_weights(q, p)
    assert w.shape == (2, 4, 5, 5)
    assert torch.allclose(w.sum(1), torch.ones(2, 5, 5), atol=1e-6) and (w >= 0).all()
    # With one prototype, w = 1 and the score is 20 x Pearson correlation over channels.
    score = cowpro_score(q, p[:1])
    qc = q - q.mean(1, keepdim=True)
    pc = p[0] - p[0].mean()
    corr = (qc * pc[None, :, None, None]).sum(1) / (qc.norm(dim=1) * pc.norm())
    assert torch.allclose(score[:, 0], 20 * corr, atol=1e-4)
    # The flag renormalises P(x): scores reach +-20 at most and change when several prototypes mix.
    renorm = cowpro_score(q, p, renormalise=True)
    assert renorm.abs().max() <= 20 + 1e-4
    assert not torch.allclose(renorm, cowpro_score(q, p))


# --- losses and training -----------------------------------------------------------------------

def test_edge_map_is_the_boundary_of_a_mask():
    m = torch.zeros(1, 1, 16, 16)
    m[..., 4:12, 4:12] = 1.0
    e = edge_map(m)
    assert e.shape == m.shape and e.min() >= 0 and e.max() <= 1
    assert e[0, 0, 8, 3:5].min() > 0.9  # across the left border
    assert e[0, 0, 8, 8] < 1e-3 and e[0, 0, 0, 0] < 1e-3  # inside and far outside


def _episode_set(n_batches=3, batch=2):
    img, _ = phantom_slices(4)
    sp = torch.from_numpy(spx.superpixels_volume(img, "MR"))
    sampler = EpisodeSampler(torch.from_numpy(img)[:, None], sp, seed=0)
    return [sampler.batch(batch) for _ in range(n_batches)]


def test_method_flags_share_one_code_path():
    assert set(LOSS_VARIANTS) == {"ssl_alpnet", "cowpro", "fedcowpro"}
    with pytest.raises(ValueError, match="unknown method"):
        method_settings("panet")
    batch = _episode_set(1)[0]
    out = {}
    for m in LOSS_VARIANTS:
        torch.manual_seed(0)
        out[m] = episode_losses(FewShotEncoder((8, 16, 32), 8, 16), batch, *method_settings(m))
    assert out["ssl_alpnet"]["dice"] == 0 and out["cowpro"]["edge"] == 0
    assert out["fedcowpro"]["dice"] > 0 and out["fedcowpro"]["edge"] > 0
    assert torch.allclose(out["cowpro"]["ce"], out["fedcowpro"]["ce"])  # same prototypes, same init
    assert not torch.allclose(out["cowpro"]["ce"], out["ssl_alpnet"]["ce"])
    f = out["fedcowpro"]
    assert torch.allclose(f["loss"], f["ce"] + f["align"] + f["dice"] + f["edge"])


@pytest.fixture
def one_thread():
    """Tiny convolutions run faster on one thread, and the machine is shared."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("method", sorted(LOSS_VARIANTS))
def test_loss_decreases_on_a_tiny_episode_set(method, one_thread):
    episodes = _episode_set()
    torch.manual_seed(0)
    enc = FewShotEncoder(channels=(8, 16, 32), downsample=8, out_channels=32)
    history = train_episodes(enc, episodes, steps=30, method=method,
                             optimizer=torch.optim.Adam(enc.parameters(), lr=1e-3))
    losses = [h["loss"] for h in history]
    assert len(losses) == 30 and all(np.isfinite(losses))
    assert np.mean(losses[-6:]) < 0.6 * np.mean(losses[:6])
    # Seeded: the same run gives the same numbers.
    torch.manual_seed(0)
    enc2 = FewShotEncoder(channels=(8, 16, 32), downsample=8, out_channels=32)
    again = train_episodes(enc2, episodes, steps=3, method=method,
                           optimizer=torch.optim.Adam(enc2.parameters(), lr=1e-3))
    assert [h["loss"] for h in again] == pytest.approx(losses[:3], rel=1e-5)
