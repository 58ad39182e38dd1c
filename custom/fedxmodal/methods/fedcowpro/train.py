"""One training step and a tiny seeded loop: plain functions the engine's trainer can wrap."""

from __future__ import annotations

import random
from typing import Callable, Iterable

import numpy as np
import torch

from .losses import LossConfig, episode_losses, method_settings
from .prototypes import PrototypeConfig

LOSS_KEYS = ("loss", "ce", "align", "dice", "edge")


def make_optimizer(encoder: torch.nn.Module, lr: float = 1e-3, momentum: float = 0.9,
                   weight_decay: float = 5e-4) -> torch.optim.Optimizer:
    """SSL-ALPNet's optimiser: SGD, lr 1e-3, momentum 0.9, weight decay 5e-4."""
    return torch.optim.SGD(encoder.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)


def train_step(encoder: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: dict,
               method: str | tuple[PrototypeConfig, LossConfig] = "fedcowpro") -> dict[str, float]:
    """One optimisation step on one batch of episodes.

    Args:
        encoder: (N, 1, H, W) -> (N, C, h, w) feature extractor (put in train mode here).
        optimizer: over the encoder's parameters.
        batch: ``EpisodeSampler.batch`` output (tensors on the encoder's device).
        method: a name in ``losses.METHODS`` or explicit (prototype, loss) settings.

    Returns:
        the loss terms as floats (``LOSS_KEYS``).
    """
    proto, loss_cfg = method_settings(method) if isinstance(method, str) else method
    encoder.train()
    optimizer.zero_grad(set_to_none=True)
    out = episode_losses(encoder, batch, proto, loss_cfg)
    if not torch.isfinite(out["loss"]):
        raise FloatingPointError(f"non-finite loss {out['loss'].item()} ({ {k: float(out[k]) for k in LOSS_KEYS} })")
    out["loss"].backward()
    optimizer.step()
    return {k: float(out[k].detach()) for k in LOSS_KEYS}


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (the episode sampler is seeded separately)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train_episodes(encoder: torch.nn.Module, batches: Callable[[], dict] | Iterable[dict], steps: int,
                   method: str | tuple[PrototypeConfig, LossConfig] = "fedcowpro",
                   optimizer: torch.optim.Optimizer | None = None, device: str | torch.device = "cpu",
                   log_every: int = 0, log: Callable[[str], None] = print) -> list[dict[str, float]]:
    """A tiny training loop (tests, smoke runs).

    Args:
        encoder: the network to train (moved to ``device``).
        batches: a callable returning a new batch (e.g. ``lambda: sampler.batch(1)``) or an
            iterable of batches (cycled, e.g. a fixed synthetic episode set).
        steps: number of optimisation steps.
        method: see ``train_step``.
        optimizer: default ``make_optimizer(encoder)``.
        log_every: print the running loss every N steps (0: silent).

    Returns:
        one dict of loss terms per step.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    encoder.to(device)
    optimizer = optimizer or make_optimizer(encoder)
    fixed = None if callable(batches) else list(batches)
    if fixed is not None and not fixed:
        raise ValueError("no batches given")
    history = []
    for step in range(steps):
        batch = batches() if fixed is None else fixed[step % len(fixed)]
        batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        history.append(train_step(encoder, optimizer, batch, method))
        if log_every and (step + 1) % log_every == 0:
            log(f"step {step + 1}/{steps}: " + ", ".join(f"{k} {history[-1][k]:.4f}" for k in LOSS_KEYS))
    return history
