"""Segmentation loss: soft Dice + cross-entropy (MONAI's DiceCELoss)."""

from __future__ import annotations

from monai.losses import DiceCELoss


def build_segmentation_loss() -> DiceCELoss:
    """logits (B, C, H, W), target (B, 1, H, W) class indices -> scalar."""
    return DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True)
