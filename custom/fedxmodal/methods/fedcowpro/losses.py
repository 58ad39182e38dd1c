"""Episode losses; one code path for the three methods (``LOSS_VARIANTS``):

- ``ssl_alpnet``: ALP prototypes, CE + prototype alignment;
- ``cowpro``: CoWPro prototypes, CE + prototype alignment;
- ``fedcowpro``: CoWPro prototypes, CE + alignment + soft Dice + edge Dice (FedAvg of this is
  FedCoWPro; the federation is not this module's business).

Terms: CE of the query logits vs the query pseudo-label with class weights [0.05, 1] (bg, fg);
PANet alignment: the query's own hard prediction gives prototypes that segment the support,
unweighted CE vs the support pseudo-label; soft Dice (MONAI DiceLoss) of the query foreground
probability vs its pseudo-label; edge Dice: MONAI DiceLoss between *Sobel gradient magnitudes*
(MONAI SobelGradients, normalised 3x3 kernels) of the soft foreground probability and of the
pseudo-label, each scaled by 2 (a sharp 0/1 step then reads 1) and clamped to [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from monai.transforms import SobelGradients

from .prototypes import PrototypeConfig, batch_logits


@dataclass(frozen=True)
class LossConfig:
    """Args:
        ce_weights: CE class weights (background, foreground).
        align_weight: weight of the PANet alignment term (0 disables it).
        dice_weight: weight of the soft Dice term (FedCoWPro's L_ds).
        edge_weight: weight of the edge Dice term (FedCoWPro's L_es).
    """

    ce_weights: tuple[float, float] = (0.05, 1.0)
    align_weight: float = 1.0
    dice_weight: float = 0.0
    edge_weight: float = 0.0

    def __post_init__(self):
        object.__setattr__(self, "ce_weights", tuple(self.ce_weights))  # JSON gives a list
        if len(self.ce_weights) != 2 or min(self.ce_weights) < 0:
            raise ValueError(f"ce_weights must be two non-negative numbers, got {self.ce_weights}")
        if min(self.align_weight, self.dice_weight, self.edge_weight) < 0:
            raise ValueError(f"loss weights must be >= 0: {self}")


LOSS_VARIANTS: dict[str, tuple[PrototypeConfig, LossConfig]] = {
    "ssl_alpnet": (PrototypeConfig(kind="alp"), LossConfig()),
    "cowpro": (PrototypeConfig(kind="cowpro"), LossConfig()),
    "fedcowpro": (PrototypeConfig(kind="cowpro"), LossConfig(dice_weight=1.0, edge_weight=1.0)),
}


def method_settings(method: str) -> tuple[PrototypeConfig, LossConfig]:
    """(prototype settings, loss settings) of a method name in ``LOSS_VARIANTS``."""
    if method not in LOSS_VARIANTS:
        raise ValueError(f"unknown method {method!r}; expected one of {sorted(LOSS_VARIANTS)}")
    return LOSS_VARIANTS[method]


_sobel = SobelGradients(kernel_size=3, padding_mode="reflect")
_dice = DiceLoss(include_background=True, sigmoid=False, softmax=False)


def edge_map(prob: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) soft or hard mask -> (B, 1, H, W) edge strength in [0, 1]: the Sobel gradient
    magnitude, times 2, clamped (differentiable)."""
    grads = _sobel(prob[:, 0])  # SobelGradients treats the B maps as channels: (2B, H, W)
    gx, gy = grads[: prob.shape[0]], grads[prob.shape[0]:]
    magnitude = torch.sqrt(gx ** 2 + gy ** 2 + 1e-12)
    return (2.0 * magnitude).clamp(max=1.0).unsqueeze(1).as_subclass(torch.Tensor)


def alignment_loss(query_features: torch.Tensor, query_logits: torch.Tensor, support_features: torch.Tensor,
                   support_mask: torch.Tensor, config: PrototypeConfig) -> torch.Tensor:
    """PANet prototype alignment: prototypes from the query's hard prediction segment the support.

    Args:
        query_features, support_features: (B, C, h, w).
        query_logits: (B, 2, H, W) the query's logits (argmax taken; no gradient through it).
        support_mask: (B, 1, H, W) the support pseudo-label in {0, 1}.
        config: prototype settings (training windows).

    Returns:
        scalar unweighted CE of the support's logits vs ``support_mask``.
    """
    pred = query_logits.argmax(1, keepdim=True).float()
    support_logits = batch_logits(query_features, pred, support_features, config, training=True)
    return F.cross_entropy(support_logits, support_mask[:, 0].long())


def episode_losses(encoder: torch.nn.Module, batch: dict, proto: PrototypeConfig, loss: LossConfig) -> dict:
    """All loss terms of a batch of episodes (one encoder pass over supports and queries).

    Args:
        encoder: (N, 1, H, W) -> (N, C, h, w).
        batch: ``EpisodeSampler.batch`` output: ``support_image``, ``support_mask``, ``query_image``,
            ``query_mask``, each (B, 1, H, W); masks in {0, 1}.
        proto, loss: method settings (``method_settings``).

    Returns:
        dict: ``loss`` (scalar to backpropagate), ``ce``, ``align``, ``dice``, ``edge`` (scalars;
        zero when disabled), ``logits`` (B, 2, H, W) of the queries.
    """
    for key in ("support_image", "support_mask", "query_image", "query_mask"):
        if batch[key].ndim != 4 or batch[key].shape[1] != 1:
            raise ValueError(f"batch[{key!r}] must be (B, 1, H, W), got {tuple(batch[key].shape)}")
    n = batch["support_image"].shape[0]
    features = encoder(torch.cat([batch["support_image"], batch["query_image"]]))
    support_features, query_features = features[:n], features[n:]
    logits = batch_logits(support_features, batch["support_mask"], query_features, proto, training=True)
    target = batch["query_mask"]
    weights = torch.tensor(loss.ce_weights, dtype=logits.dtype, device=logits.device)
    zero = logits.new_zeros(())
    out = {"ce": F.cross_entropy(logits, target[:, 0].long(), weight=weights), "align": zero, "dice": zero,
           "edge": zero}
    if loss.align_weight:
        out["align"] = alignment_loss(query_features, logits, support_features, batch["support_mask"], proto)
    fg_prob = F.softmax(logits, 1)[:, 1:2]
    if loss.dice_weight:
        out["dice"] = _dice(fg_prob, target)
    if loss.edge_weight:
        out["edge"] = _dice(edge_map(fg_prob), edge_map(target))
    out["loss"] = (out["ce"] + loss.align_weight * out["align"] + loss.dice_weight * out["dice"]
                   + loss.edge_weight * out["edge"])
    out["logits"] = logits
    return out
