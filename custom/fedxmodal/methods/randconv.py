"""RandConv (Xu et al., ICLR 2021), a baseline of the federated GIN paper."""

from __future__ import annotations

import torch

from ..losses.consistency import kl_consistency
from ..transforms.randconv import RandConvAugment
from .base import PlainMethod


class RandConvMethod(PlainMethod):
    """RandConv (Xu et al., ICLR 2021): one random conv layer per batch, kernel from {1,3,5,7},
    mixed with the input. With ``consistency_weight > 0`` two random views are segmented and a KL
    consistency of clean/view1/view2 to their mean is added (the paper's optional loss)."""

    name = "randconv"
    label = "RandConv"

    def __init__(self, kernel_sizes=(1, 3, 5, 7), mix: bool = True, consistency_weight: float = 0.0):
        self.randconv = RandConvAugment(kernel_sizes=tuple(kernel_sizes), mix=mix)
        self.consistency_weight = consistency_weight

    def augment(self, images):
        return self.randconv(images)

    def training_loss(self, model, images, labels, seg_loss, domains=None):
        if self.consistency_weight <= 0:
            return super().training_loss(model, images, labels, seg_loss)
        logits = model(torch.cat([images, self.augment(images), self.augment(images)])).chunk(3)
        seg = seg_loss(logits[1], labels[:, None])
        cons = kl_consistency(list(logits), weight=self.consistency_weight)
        return seg + cons, {"loss_seg": float(seg.detach()), "loss_consistency": float(cons.detach())}
