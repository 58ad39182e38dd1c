"""Dual-Norm (Zhou et al., CVPR 2022), a baseline of the federated GIN paper."""

from __future__ import annotations

import torch

from ..networks.domain_norm import forward_by_branch, n_branches, select_branches
from ..transforms.bezier import BezierStyleAugment, minmax_symmetric
from .base import PlainMethod


class DualNormMethod(PlainMethod):
    """Dual-Norm (Zhou et al., CVPR 2022): every slice is remapped by a random Bezier curve into a
    source-similar (monotone) and a source-dissimilar (inverted) image; the first go through BN
    branch 0, the second through branch 1 (``network.norm_branches = 2``); both are segmented.
    At test each slice takes the branch whose stored BN statistics are closest to its own.

    The network sees slices min-max scaled to ``[-1, 1]`` (training views and test slices alike),
    as in the original: on z-scored input the first BN's statistics of an image and of its
    inversion are the same (a linear conv of -x has the mean and std of that of x), and the rule
    routed about half of the in-domain slices to the wrong branch."""

    name = "dualnorm"
    label = "Dual-Norm"

    @classmethod
    def network_overrides(cls, regime, n_domains):
        return {"norm_branches": 2}

    def __init__(self):
        self.bezier = BezierStyleAugment(zscore=False)

    def training_loss(self, model, images, labels, seg_loss, domains=None):
        if n_branches(model) != 2:
            raise ValueError("dualnorm needs a network with norm_branches = 2")
        similar, dissimilar = self.bezier(images)
        branches = torch.cat([torch.zeros(len(images)), torch.ones(len(images))]).long()
        logits = forward_by_branch(model, torch.cat([similar, dissimilar]), branches)
        return seg_loss(logits, torch.cat([labels, labels])[:, None]), {}

    def infer(self, model, images, domain=None):
        images = minmax_symmetric(images)
        return forward_by_branch(model, images, select_branches(model, images))
