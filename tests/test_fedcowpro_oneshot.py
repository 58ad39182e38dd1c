"""SSL-ALPNet's one-shot evaluation protocol (fedxmodal.methods.fedcowpro.oneshot)."""

from __future__ import annotations

import pytest
import torch

from fedxmodal.methods.fedcowpro.network import FewShotEncoder, IntensityFeatures
from fedxmodal.methods.fedcowpro.oneshot import (
    chunk_by_position, chunk_in_range, evaluate_oneshot, evaluate_query, organ_range, prototype_predictor,
    quadrant_mask, setting2_keep, support_slice_indices,
)


def organ_volume(n_slices, z_from, z_to, size=16, box=(slice(8, 14), slice(4, 10))):
    """(Z, size, size) bool with a box on slices z_from..z_to (inclusive)."""
    v = torch.zeros(n_slices, size, size, dtype=torch.bool)
    v[z_from: z_to + 1, box[0], box[1]] = True
    return v


def test_support_slices_at_one_sixth_half_five_sixths():
    # Organ on slices 3..12 (10 slices): int(10/6) = 1, int(10/2) = 5, int(50/6) = 8 -> z 4, 8, 11.
    assert support_slice_indices(organ_volume(16, 3, 12)) == [4, 8, 11]
    # 7 slices 0..6: int(7/6)=1, int(3.5)=3, int(35/6)=5.
    assert support_slice_indices(organ_volume(7, 0, 6)) == [1, 3, 5]
    assert support_slice_indices(organ_volume(5, 2, 2)) == [2, 2, 2]
    with pytest.raises(ValueError, match="does not contain"):
        support_slice_indices(torch.zeros(4, 8, 8, dtype=torch.bool))


def test_chunk_assignment_in_the_gt_range_and_by_position():
    # Range 2..11: width 9 / 3 = 3 -> z 2,3,4 -> 0; 5,6,7 -> 1; 8,9,10 -> 2; 11 -> 3 clipped to 2.
    assert [chunk_in_range(z, 2, 11) for z in range(2, 12)] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 2]
    assert chunk_in_range(0, 2, 11) == 0 and chunk_in_range(15, 2, 11) == 2  # outside: clipped
    assert chunk_in_range(5, 5, 5) == 0  # a one-slice organ
    assert [chunk_by_position(z, 12) for z in range(12)] == [0] * 4 + [1] * 4 + [2] * 4
    assert [chunk_by_position(z, 7) for z in range(7)] == [0, 0, 0, 1, 1, 2, 2]


def _encoded_volume(n, organ, offset):
    """Images whose every pixel holds offset + z, so a fake predictor can tell which slice it got."""
    img = (offset + torch.arange(n, dtype=torch.float32)).view(n, 1, 1, 1).expand(n, 1, *organ.shape[1:]).clone()
    return img


def test_evaluate_query_pairs_each_query_slice_with_its_chunks_support_slice():
    support_organ, query_organ = organ_volume(16, 3, 12), organ_volume(12, 2, 11)
    support_img, query_img = _encoded_volume(16, support_organ, 100), _encoded_volume(12, query_organ, 0)
    calls = []

    def perfect_plus_left_blob(encoder, s_img, s_mask, q_img):
        zs, sup = q_img[:, 0, 0, 0].long(), (s_img[:, 0, 0, 0] - 100).long()
        calls.extend(zip(zs.tolist(), sup.tolist()))
        assert torch.equal(s_mask[:, 0].bool(), support_organ[sup])  # the support slice's own mask
        pred = query_organ[zs].clone()
        pred[:, 0:2, 0:2] = True  # a false positive on the patient's left (low dim -2 index)
        return pred

    res = evaluate_query(None, perfect_plus_left_blob, support_img, support_organ, query_img, query_organ,
                         prior=quadrant_mask((16, 16), "right"))
    assert res["support_slices"] == [4, 8, 11] and res["query_range"] == (2, 11)
    pairs = set(calls)
    # Published protocol: z 2..4 -> support 4, 5..7 -> 8, 8..11 -> 11.
    assert {(z, 4) for z in (2, 3, 4)} | {(z, 8) for z in (5, 6, 7)} | {(z, 11) for z in (8, 9, 10, 11)} <= pairs
    # Whole volume, by position (12 slices): 0..3 -> 4, 4..7 -> 8, 8..11 -> 11.
    assert {(z, 4) for z in range(4)} | {(z, 8) for z in range(4, 8)} | {(z, 11) for z in range(8, 12)} <= pairs
    assert len(calls) == len(pairs)  # each (slice, support) predicted once
    inr, whole = res["in_range"], res["whole_volume"]
    assert inr["n_slices"] == 10 and whole["n_slices"] == 12
    organ_px = int(query_organ.sum())
    assert (inr["tp"], inr["fn"], inr["fp"]) == (organ_px, 0, 4 * 10)
    assert (whole["tp"], whole["fn"], whole["fp"]) == (organ_px, 0, 4 * 12)
    assert inr["dice"] == pytest.approx(2 * organ_px / (2 * organ_px + 40))
    # The right-side prior removes the left false positives.
    assert res["in_range_prior"]["dice"] == 1.0 and res["whole_volume_prior"]["dice"] == 1.0


def test_raw_intensity_and_untrained_encoder_predictors_run_the_protocol():
    torch.manual_seed(0)
    labels = torch.zeros(12, 32, 32, dtype=torch.long)
    labels[3:10, 18:28, 6:16] = 1  # "liver" on the patient's right
    labels[4:9, 4:10, 18:26] = 2  # "spleen" on the left
    images = torch.full((12, 1, 32, 32), -1.0)
    images[:, 0][labels == 1] = 1.0
    images[:, 0][labels == 2] = 0.3
    images = images + 0.05 * torch.randn_like(images)
    query = (images.roll(1, 0), labels.roll(1, 0))
    out = evaluate_oneshot(IntensityFeatures(n_bins=16), prototype_predictor(), (images, labels), [query],
                           {"liver": 1, "spleen": 2})
    assert out["mean"]["liver"]["in_range"] > 0.9 and out["mean"]["spleen"]["in_range"] > 0.9
    assert set(out["mean_over_organs"]) == {"in_range", "whole_volume", "in_range_prior", "whole_volume_prior"}
    untrained = evaluate_oneshot(FewShotEncoder((8, 16), downsample=4, out_channels=16), prototype_predictor(),
                                 (images, labels), [query], {"liver": 1}, use_priors=False)
    assert set(untrained["mean"]["liver"]) == {"in_range", "whole_volume"}
    assert 0.0 <= untrained["mean"]["liver"]["in_range"] <= 1.0


def test_setting2_removes_training_slices_with_any_test_organ_and_quadrants():
    labels = torch.zeros(5, 8, 8, dtype=torch.long)
    labels[1, 2, 2] = 1
    labels[3, 4, 4] = 3
    labels[4, 5, 5] = 2
    assert setting2_keep(labels, [1, 3]).tolist() == [True, False, True, False, True]
    assert setting2_keep(labels, []).all()
    right, left = quadrant_mask((6, 4), "right"), quadrant_mask((6, 4), "left")
    assert right[3:].all() and not right[:3].any() and torch.equal(left, ~right)
    with pytest.raises(ValueError):
        quadrant_mask((4, 4), "up")
    assert organ_range(organ_volume(9, 2, 6)) == (2, 6)


def test_in_range_protocol_margin_scores_slices_beyond_the_organ_range_clipped_to_the_volume():
    """SSL-ALPNet records z_min - z_margin <= z <= z_max + z_margin (its config: z_margin = 0, the
    default here); a margin adds the slices beyond each end, their chunk clipped to the nearest one."""
    support_organ, query_organ = organ_volume(16, 3, 12), organ_volume(12, 2, 11)
    support_img, query_img = _encoded_volume(16, support_organ, 100), _encoded_volume(12, query_organ, 0)
    calls = []

    def everywhere(encoder, s_img, s_mask, q_img):
        zs, sup = q_img[:, 0, 0, 0].long(), (s_img[:, 0, 0, 0] - 100).long()
        calls.extend(zip(zs.tolist(), sup.tolist()))
        return torch.ones(len(zs), *query_organ.shape[1:], dtype=torch.bool)

    default = evaluate_query(None, everywhere, support_img, support_organ, query_img, query_organ)
    assert default["in_range"]["n_slices"] == 10  # exactly [2, 11]
    calls.clear()
    res = evaluate_query(None, everywhere, support_img, support_organ, query_img, query_organ, z_margin=1)
    assert res["in_range"]["n_slices"] == 11  # [1, 11]: slice 12 is beyond the 12-slice volume
    assert {(1, 4), (2, 4), (11, 11)} <= set(calls)  # slice 1 takes the first chunk's support slice
    px = query_organ[0].numel()
    assert res["in_range"]["fp"] == default["in_range"]["fp"] + px  # the extra slice holds no organ
    assert res["whole_volume"] == default["whole_volume"]
    with pytest.raises(ValueError):
        evaluate_query(None, everywhere, support_img, support_organ, query_img, query_organ, z_margin=-1)
