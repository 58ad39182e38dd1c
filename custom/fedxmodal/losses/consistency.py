"""KL consistency loss between the predictions of several augmented views (GIN-IPA, RandConv).

Each view's predicted distribution is pulled towards the mean of all views' distributions:
``weight * reduce_v KL(mean_p || p_v)``, with the KL term computed exactly as torch's
``KLDivLoss()`` with its default ``reduction='mean'`` (the element-wise terms averaged over
batch, classes and pixels alike), as in the original GIN-IPA code.
"""

from __future__ import annotations

from typing import Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["kl_consistency", "KLConsistencyLoss"]


def _kl_div_mean(log_q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    # == F.kl_div(log_q, p) with reduction='mean', written out so torch's deprecation warning
    # about 'mean' does not fire every step and a future change of its default cannot alter it.
    return (torch.xlogy(p, p) - p * log_q).mean()


def kl_consistency(
    logits_list: Union[Sequence[torch.Tensor], torch.Tensor],
    weight: float = 10.0,
    view_reduction: str = "mean",
    detach_target: bool = False,
) -> torch.Tensor:
    """Weighted KL consistency of several views' predictions to their mean prediction.

    ``loss = weight * R_v KLDivLoss(log_softmax(z_v), mean_u softmax(z_u))`` where ``R_v`` is the
    mean (default) or sum over views and ``KLDivLoss`` uses torch's default ``reduction='mean'``.

    ``view_reduction='mean'`` reproduces the original GIN-IPA code exactly: it evaluates one
    ``KLDivLoss()`` over the views concatenated along the batch, which, with ``'mean'`` reduction
    and equal-sized views, equals the average of the per-view terms. ``'sum'`` gives V times that.

    Args:
        logits_list: V >= 2 logits tensors of equal shape ``(B, K, *spatial)`` (class dim 1), or
            one tensor ``(V, B, K, *spatial)``.
        weight: multiplier (GIN-IPA: 10).
        view_reduction: ``'mean'`` or ``'sum'`` over views.
        detach_target: stop gradients through the mean distribution (the original does not).

    Returns:
        scalar tensor; 0 when all views' logits are identical.
    """
    if view_reduction not in ("mean", "sum"):
        raise ValueError(f"view_reduction must be 'mean' or 'sum', got {view_reduction!r}")
    views = list(logits_list.unbind(0)) if isinstance(logits_list, torch.Tensor) else list(logits_list)
    if len(views) < 2:
        raise ValueError("kl_consistency needs at least two views")
    shape = views[0].shape
    if any(v.shape != shape for v in views):
        raise ValueError(f"all views must have the same shape, got {[tuple(v.shape) for v in views]}")
    z = torch.stack(views, 0)  # (V, B, K, ...)
    if z.dtype in (torch.float16, torch.bfloat16):
        z = z.float()  # softmax/log in float32 under AMP
    p_mean = F.softmax(z, dim=2).mean(0)
    if detach_target:
        p_mean = p_mean.detach()
    log_q = F.log_softmax(z, dim=2)
    per_view = torch.stack([_kl_div_mean(log_q[v], p_mean) for v in range(len(views))])
    red = per_view.mean() if view_reduction == "mean" else per_view.sum()
    return weight * red


class KLConsistencyLoss(nn.Module):
    """Module form of :func:`kl_consistency` (arguments stored as same-named attributes).

    ``forward(logits_list)`` with V tensors ``(B, K, *spatial)`` returns a scalar.
    """

    def __init__(self, weight: float = 10.0, view_reduction: str = "mean", detach_target: bool = False):
        super().__init__()
        self.weight = float(weight)
        self.view_reduction = view_reduction
        self.detach_target = bool(detach_target)

    def forward(self, logits_list) -> torch.Tensor:
        return kl_consistency(logits_list, weight=self.weight, view_reduction=self.view_reduction,
                              detach_target=self.detach_target)
