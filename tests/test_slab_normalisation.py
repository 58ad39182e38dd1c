"""A slab of a volume is normalised with the WHOLE volume's intensity statistics (so the
same tissue has one value in every slab of a patient); a whole-volume case is normalised as before."""

from __future__ import annotations

import json
import logging

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import SHARED_DATA, write_site
from fedxmodal.data.contract import Case
from fedxmodal.data.preprocess import (PreprocessConfig, VolumePreprocessor, axial_axis, crop_slab,
                                       intensity_stats, normalize_intensity)
from fedxmodal.data.io import load_volume
from fedxmodal.data.slices import SiteSlices

SMALL = PreprocessConfig(spacing=2.0, size=32)


def _before_issue_30(volume, modality, config):
    """normalize_intensity as it was: statistics of the tensor it is given."""
    v = volume.float()
    if modality == "CT":
        v = v.clamp(*config.ct_window)
    else:
        flat = v.reshape(-1)
        sample = flat[:: max(1, flat.numel() // 4_000_000)]
        v = v.clamp(max=float(torch.quantile(sample, config.mr_upper_percentile / 100.0)))
    std = v.std()
    return (v - v.mean()) / (std if std > 1e-6 else 1.0)


def _volume(modality, shape=(24, 20, 16), seed=0):
    """CT-like HU or MR-like intensities whose statistics change along the axial (last) axis."""
    g = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(0, 1, shape[-1]).view(1, 1, -1)
    if modality == "CT":
        return (torch.randn(shape, generator=g) * 150 - 300 + 500 * ramp).float()
    return (torch.rand(shape, generator=g) * 800 * (0.3 + ramp) + 5 * torch.randn(shape, generator=g) ** 2).float()


@pytest.mark.parametrize("modality", ["CT", "MR"])
def test_whole_volume_normalisation_is_bit_identical_to_before(modality):
    cfg = PreprocessConfig()
    for seed in range(3):
        v = _volume(modality, seed=seed)
        assert torch.equal(normalize_intensity(v, modality, cfg), _before_issue_30(v, modality, cfg))
    flat = torch.full((8, 8, 4), 7.0)  # no spread: divided by 1, as before
    assert torch.equal(normalize_intensity(flat, modality, cfg), _before_issue_30(flat, modality, cfg))


@pytest.mark.parametrize("modality", ["CT", "MR"])
def test_slab_voxels_equal_the_whole_volume_normalised(modality):
    cfg = PreprocessConfig()
    v = _volume(modality)
    whole = normalize_intensity(v, modality, cfg)
    stats = intensity_stats(v, modality, cfg)
    for a, b in ((0, 5), (5, 11), (11, 16)):
        slab = normalize_intensity(v[..., a:b], modality, cfg, stats)
        assert torch.equal(slab, whole[..., a:b])
        # what the slabs got before: their own statistics, another value for the same voxel
        assert not torch.allclose(_before_issue_30(v[..., a:b], modality, cfg), whole[..., a:b], atol=1e-2)


def _slab_site(tmp_path, modality, vol):
    """A site of ONE volume on disk cut into three slabs, and the same volume as a whole case."""
    lab = np.zeros(vol.shape, np.uint8)
    lab[4:12, 4:12, 2:14] = 1
    site = write_site(tmp_path / f"slabs-{modality}", {"training": [(vol, lab)]}, modality=modality,
                      labels={"0": "background", "1": "liver"})
    spec = json.loads((site / "dataset.json").read_text())
    entry = spec["training"][0]
    spec["training"] = [{**entry, "slices": [0, 5]}, {**entry, "slices": [11, 16]}]
    spec["validation"] = [{**entry, "slices": [5, 8]}]
    spec["test"] = [{**entry, "slices": [8, 11]}]
    (site / "dataset.json").write_text(json.dumps(spec))
    return site, site / entry["image"], site / entry["label"]


@pytest.mark.parametrize("modality", ["CT", "MR"])
def test_prepared_slab_equals_the_prepared_whole_volume(tmp_path, modality):
    vol = _volume(modality).numpy()
    site, image, label = _slab_site(tmp_path, modality, vol)
    data = SiteSlices(site, ("liver",), SMALL, progress=False)
    whole = VolumePreprocessor(modality, SMALL).prepare(Case(image=image, label=label, split="test"),
                                                        data.mapper)
    for split in ("training", "validation", "test"):
        for prepared in data.volumes(split):
            a, b = prepared.case.slices
            assert torch.allclose(prepared.image, whole.image[a:b], atol=1e-5), (split, a, b)
            assert torch.equal(prepared.label, whole.label[a:b])
    # computed once per image file, cached in the site's cache folder, read back by a new run
    cached = list((site / ".fedxmodal_cache" / "intensity").rglob("*.json"))
    assert len(cached) == 1
    again = SiteSlices(site, ("liver",), SMALL, progress=False)
    again.preprocessor._stats.clear()
    assert again.preprocessor.volume_stats(data.site.split("test")[0]) == intensity_stats(
        load_volume(image, role="image").as_tensor(), modality, SMALL)
    # a whole-volume case ignores the cache and is normalised exactly as before
    assert torch.equal(whole.image, VolumePreprocessor(modality, SMALL, stats_cache=site / "elsewhere").prepare(
        Case(image=image, label=None, split="test")).image)
    assert not (site / "elsewhere").exists()


def test_unwritable_cache_falls_back_to_memory(tmp_path, caplog):
    vol = _volume("MR").numpy()
    site, image, _ = _slab_site(tmp_path, "MR", vol)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder would go")
    pre = VolumePreprocessor("MR", SMALL, stats_cache=blocker / "intensity")
    with caplog.at_level(logging.WARNING):
        slabs = [pre.prepare(Case(image=image, label=None, split="training", slices=s)) for s in ((0, 5), (5, 16))]
    assert "cannot cache intensity statistics" in caplog.text
    assert len(pre._stats) == 1  # measured once for both slabs, kept in memory
    whole = VolumePreprocessor("MR", SMALL).prepare(Case(image=image, label=None, split="test"))
    assert torch.allclose(torch.cat([s.image for s in slabs]), whole.image, atol=1e-5)


def test_a_changed_file_is_measured_again(tmp_path):
    vol = _volume("MR").numpy()
    site, image, _ = _slab_site(tmp_path, "MR", vol)
    case = Case(image=image, label=None, split="test", slices=(0, 5))
    first = VolumePreprocessor("MR", SMALL, stats_cache=tmp_path / "cache").volume_stats(case)
    nib.save(nib.Nifti1Image(vol * 2, np.diag([2.0, 2.0, 4.0, 1.0])), str(image))
    second = VolumePreprocessor("MR", SMALL, stats_cache=tmp_path / "cache").volume_stats(case)
    assert second.mean == pytest.approx(2 * first.mean, rel=1e-5)


@pytest.mark.parametrize("modality,sub", [("CT", "ct"), ("MR", "mr")])
def test_real_pair_slabs_share_their_volume_statistics(totalseg_sites, modality, sub):
    """The real TotalSegmentator pair as cut by ``totalseg-pair``: every slab's voxels are the whole
    volume's normalised voxels (checked on the file grid, before resampling)."""
    data = SiteSlices(totalseg_sites[modality], (), PreprocessConfig(), progress=False)
    raw = load_volume(SHARED_DATA / sub / f"{sub}.nii.gz", role="image")
    whole = normalize_intensity(raw.as_tensor(), modality, data.preprocessor.config)
    axis = axial_axis(raw.affine)
    for case in data.site.split("training") + data.site.split("validation") + data.site.split("test"):
        stats = data.preprocessor.volume_stats(case)
        slab = normalize_intensity(crop_slab(raw, case).as_tensor(), modality, data.preprocessor.config, stats)
        assert torch.equal(slab, whole.narrow(1 + axis, case.slices[0], case.slices[1] - case.slices[0]))
