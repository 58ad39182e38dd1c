"""Prototype classifiers: ALPNet's adaptive local prototypes and CoWPro's correlation-weighted ones.

Shared: support masks are resized bilinearly to the feature grid; local prototypes are the
average-pooled features of ``window`` x ``window`` feature windows (4 in training, 2 at test)
whose pooled mask exceeds ``threshold`` (0.95). Foreground = local prototypes + one global
masked-average prototype (the global one alone if no window passes); background = local
prototypes (the global background prototype if no window passes).

ALP (Ouyang et al. 2020): s_k(x) = T cos(q(x), p_k); class score = sum_k softmax_k(s_k) s_k.
CoWPro (Manna et al. 2024): q(x) and p_k centred (each vector minus its channel mean, so cosine is
a correlation) and unit-normalised; w_k(x) = softmax_k(T corr(q(x), p_k));
P(x) = sum_k w_k(x) p_k; class score = T <q(x), P(x)> (P renormalised only if ``renormalise``).
Scores of [background, foreground] are the logits, upsampled to the image.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

KINDS = ("alp", "cowpro")


@dataclass(frozen=True)
class PrototypeConfig:
    """Args:
        kind: 'alp' (SSL-ALPNet) or 'cowpro'.
        train_window, test_window: local-prototype window in feature pixels.
        threshold: a window is a prototype when its pooled mask > threshold.
        temperature: the score scale T (20).
        renormalise: CoWPro only: unit-normalise P(x) before the dot product.
    """

    kind: str = "alp"
    train_window: int = 4
    test_window: int = 2
    threshold: float = 0.95
    temperature: float = 20.0
    renormalise: bool = False

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if min(self.train_window, self.test_window) < 1 or not 0.0 <= self.threshold < 1.0:
            raise ValueError(f"bad prototype settings {self}")

    def window(self, training: bool) -> int:
        return self.train_window if training else self.test_window


def safe_normalise(x: torch.Tensor, dim: int = 1, eps: float = 1e-4) -> torch.Tensor:
    """Unit L2 norm along ``dim``; norms below ``eps`` are clamped (zero vectors stay zero)."""
    return x / x.norm(dim=dim, keepdim=True).clamp_min(eps)


def global_prototype(features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked average. features (S, C, h, w), mask (S, 1, h, w) in [0, 1] -> (1, C), mean over shots."""
    per_shot = (features * mask).sum((-1, -2)) / (mask.sum((-1, -2)) + 1e-5)
    return per_shot.mean(0, keepdim=True)


def local_prototypes(features: torch.Tensor, mask: torch.Tensor, window: int, threshold: float) -> torch.Tensor:
    """Average-pooled windows whose pooled mask > ``threshold``.

    features (S, C, h, w), mask (S, 1, h, w) -> (K, C), K >= 0 (windows of every shot together).
    """
    pooled = F.avg_pool2d(features, window)  # (S, C, h', w')
    pooled_mask = F.avg_pool2d(mask, window)  # (S, 1, h', w')
    keep = (pooled_mask > threshold).flatten()  # (S * h' * w',)
    return pooled.permute(0, 2, 3, 1).reshape(-1, features.shape[1])[keep]


def class_prototypes(features: torch.Tensor, mask: torch.Tensor, window: int, threshold: float,
                     with_global: bool) -> torch.Tensor:
    """One class's prototypes, (K, C) with K >= 1.

    ``with_global`` (foreground): local windows + the global prototype, or the global alone if no
    window passes. Otherwise (background): local windows, or the global one if none passes.
    """
    local = local_prototypes(features, mask, window, threshold)
    if with_global or local.shape[0] == 0:
        return torch.cat([local, global_prototype(features, mask)], 0)
    return local


def _similarities(query: torch.Tensor, protos: torch.Tensor, temperature: float) -> torch.Tensor:
    """query (Q, C, h, w) and protos (K, C), both unit-normalised -> (Q, K, h, w) T * cos."""
    return temperature * torch.einsum("qchw,kc->qkhw", query, protos)


def alp_score(query: torch.Tensor, protos: torch.Tensor, temperature: float = 20.0) -> torch.Tensor:
    """ALP class score. query (Q, C, h, w), protos (K, C) -> (Q, 1, h, w) sum_k softmax_k(s_k) s_k."""
    s = _similarities(safe_normalise(query, 1), safe_normalise(protos, 1), temperature)
    return (F.softmax(s, dim=1) * s).sum(1, keepdim=True)


def _centred(x: torch.Tensor, dim: int) -> torch.Tensor:
    return safe_normalise(x - x.mean(dim, keepdim=True), dim)


def cowpro_weights(query: torch.Tensor, protos: torch.Tensor, temperature: float = 20.0) -> torch.Tensor:
    """w_k(x) = softmax_k(T corr(q(x), p_k)). query (Q, C, h, w), protos (K, C) -> (Q, K, h, w),
    summing to 1 over k at every pixel."""
    return F.softmax(_similarities(_centred(query, 1), _centred(protos, 1), temperature), dim=1)


def cowpro_score(query: torch.Tensor, protos: torch.Tensor, temperature: float = 20.0,
                 renormalise: bool = False) -> torch.Tensor:
    """CoWPro class score. query (Q, C, h, w), protos (K, C) -> (Q, 1, h, w) T <q(x), P(x)> with
    the dynamic prototype P(x) = sum_k w_k(x) p_k on centred, normalised vectors."""
    q, p = _centred(query, 1), _centred(protos, 1)
    w = F.softmax(_similarities(q, p, temperature), dim=1)
    dynamic = torch.einsum("qkhw,kc->qchw", w, p)
    if renormalise:
        dynamic = safe_normalise(dynamic, 1)
    return temperature * (q * dynamic).sum(1, keepdim=True)


def few_shot_logits(support_features: torch.Tensor, support_fg: torch.Tensor, query_features: torch.Tensor,
                    config: PrototypeConfig, training: bool, out_size=None) -> torch.Tensor:
    """Segment queries with one support set (one episode).

    Args:
        support_features: (S, C, h, w) features of the S support shots.
        support_fg: (S, 1, H, W) support foreground in [0, 1] at image resolution (background =
            1 - foreground); resized bilinearly to (h, w).
        query_features: (Q, C, h, w).
        config: prototype settings; ``training`` picks the window.
        out_size: (H, W) of the logits; default the support mask's size.

    Returns:
        (Q, 2, H, W) logits [background, foreground].
    """
    h, w = support_features.shape[-2:]
    fg = F.interpolate(support_fg.float(), size=(h, w), mode="bilinear", align_corners=False)
    window = config.window(training)
    fg_protos = class_prototypes(support_features, fg, window, config.threshold, with_global=True)
    bg_protos = class_prototypes(support_features, 1.0 - fg, window, config.threshold, with_global=False)
    if config.kind == "alp":
        scores = [alp_score(query_features, p, config.temperature) for p in (bg_protos, fg_protos)]
    else:
        scores = [cowpro_score(query_features, p, config.temperature, config.renormalise)
                  for p in (bg_protos, fg_protos)]
    logits = torch.cat(scores, 1)
    size = tuple(out_size) if out_size is not None else tuple(support_fg.shape[-2:])
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def batch_logits(support_features: torch.Tensor, support_fg: torch.Tensor, query_features: torch.Tensor,
                 config: PrototypeConfig, training: bool) -> torch.Tensor:
    """B independent 1-shot episodes: support_features, query_features (B, C, h, w), support_fg
    (B, 1, H, W) -> (B, 2, H, W) logits (episode b's query segmented with support b only)."""
    if support_features.shape != query_features.shape or support_fg.shape[0] != support_features.shape[0]:
        raise ValueError(f"support features {tuple(support_features.shape)}, query features "
                         f"{tuple(query_features.shape)} and masks {tuple(support_fg.shape)} disagree")
    return torch.cat([few_shot_logits(support_features[b:b + 1], support_fg[b:b + 1], query_features[b:b + 1],
                                      config, training) for b in range(support_features.shape[0])])
