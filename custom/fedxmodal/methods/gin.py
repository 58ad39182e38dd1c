"""GIN and GIN-IPA (Ouyang et al., "Causality-inspired single-source domain generalization for medical
image segmentation", TMI 2022): the augmentation of FedGIN, the federated GIN paper's method."""

from __future__ import annotations

import torch

from ..losses.consistency import kl_consistency
from ..transforms.gin import GINAugment
from ..transforms.ipa import gin_ipa_views
from .base import PlainMethod


class GINMethod(PlainMethod):
    """GIN: every training batch passes through a fresh random shallow conv net (Ouyang et al.).
    ``shared_across_batch=True`` is the federated papers' variant (one net per batch)."""

    name = "gin"
    label = "GIN"

    def __init__(self, shared_across_batch: bool = False, interm_channels: int = 2, n_layers: int = 4):
        self.gin = GINAugment(n_layers=n_layers, interm_channels=interm_channels,
                              shared_across_batch=shared_across_batch)

    def augment(self, images):
        return self.gin(images)


class GINIPAMethod(GINMethod):
    """GIN-IPA: three GIN views, two blended by a smooth random mask; segmentation loss on the
    first blended view, KL consistency of all three to their mean (weight 10 by default)."""

    name = "gin_ipa"
    label = "GIN + IPA"

    def __init__(self, consistency_weight: float = 10.0, **gin_args):
        super().__init__(**gin_args)
        self.consistency_weight = consistency_weight

    def training_loss(self, model, images, labels, seg_loss, domains=None):
        views = gin_ipa_views(images, self.gin)
        logits = model(torch.cat(views))  # one forward for the three views: (3B, C, H, W)
        per_view = logits.chunk(3)
        seg = seg_loss(per_view[0], labels[:, None])
        cons = kl_consistency(list(per_view), weight=self.consistency_weight)
        return seg + cons, {"loss_seg": float(seg.detach()), "loss_consistency": float(cons.detach())}
