"""StyleGAN2's losses: non-saturating logistic G loss, logistic D loss, the R1 gradient penalty and
the path-length regulariser (Karras et al., CVPR 2020). Lazy regularisation (how often, with which
weight) is the trainer's business; these compute one term each.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["g_nonsaturating", "d_logistic", "r1_penalty", "PathLengthRegularizer"]


def g_nonsaturating(fake_logits: torch.Tensor) -> torch.Tensor:
    """softplus(-D(G(z))), mean. Shapes: (B,) -> scalar."""
    return F.softplus(-fake_logits).mean()


def d_logistic(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """softplus(D(G(z))) + softplus(-D(x)), each a mean. Shapes: (B,), (B',) -> scalar."""
    return F.softplus(fake_logits).mean() + F.softplus(-real_logits).mean()


def r1_penalty(real_logits: torch.Tensor, real_images: torch.Tensor) -> torch.Tensor:
    """R1: ||d D(x) / d x||^2 per sample (summed over pixels), mean over the batch; differentiable
    (``create_graph``) so that the discriminator can be trained on it.

    Args:
        real_logits: (B,) D's logits of ``real_images``.
        real_images: (B, C, H, W), a leaf with ``requires_grad`` that produced ``real_logits``.
    """
    if not real_images.requires_grad:
        raise ValueError("r1_penalty needs real_images with requires_grad=True (set before D's forward)")
    (grad,) = torch.autograd.grad(real_logits.sum(), real_images, create_graph=True)
    return grad.square().sum(dim=(1, 2, 3)).mean()


class PathLengthRegularizer:
    """StyleGAN2's path-length penalty: with y ~ N(0, I) / sqrt(H W), the length
    ``a = sqrt(mean_l ||d <G(w), y> / d w_l||^2)`` per sample is pulled towards its running mean
    (decay 0.01): penalty = mean_b (a_b - mean)^2. ``mean`` is state to keep across rounds.

    Args:
        decay: running-mean update rate.
    Shapes: ``__call__(fake_images (B, C, H, W), ws (B, num_ws, w_dim))`` -> scalar; ``ws`` must be
    the (non-detached) styles that produced ``fake_images``.
    """

    def __init__(self, decay: float = 0.01, mean: float = 0.0):
        if not 0 < decay <= 1:
            raise ValueError(f"decay must be in (0, 1], got {decay!r}")
        self.decay = float(decay)
        self.mean = float(mean)

    def __call__(self, fake_images: torch.Tensor, ws: torch.Tensor) -> torch.Tensor:
        if not ws.requires_grad:
            raise ValueError("ws must require grad (the styles that produced fake_images)")
        h, w = fake_images.shape[2:]
        noise = torch.randn_like(fake_images) / math.sqrt(h * w)
        (grad,) = torch.autograd.grad((fake_images * noise).sum(), ws, create_graph=True)
        lengths = grad.square().sum(2).mean(1).sqrt()  # (B,)
        # the running mean starts at 0 as in StyleGAN2; the penalty is measured against the updated mean
        batch_mean = float(lengths.detach().mean())
        self.mean = self.mean + self.decay * (batch_mean - self.mean)
        return (lengths - self.mean).square().mean()

    def state_dict(self) -> dict:
        return {"decay": self.decay, "mean": self.mean}

    def load_state_dict(self, state: dict) -> None:
        self.decay, self.mean = float(state["decay"]), float(state["mean"])
