"""One training step and a tiny loop, as thin uses of the engine's
:class:`~fedxmodal.engine.episodic.EpisodicTrainer` (the one episodic training loop: AMP, step
logging, abort polling)."""

from __future__ import annotations

from typing import Callable, Iterable

import torch

from ...engine.episodic import EpisodicConfig, EpisodicTrainer
from .prototypes import PrototypeConfig
from .losses import LossConfig

LOSS_KEYS = ("loss", "ce", "align", "dice", "edge")


def _method(method: str | tuple[PrototypeConfig, LossConfig]):
    from .method import PrototypeMethod

    if isinstance(method, str):
        return PrototypeMethod(variant=method)
    proto, loss = method
    m = PrototypeMethod(variant="fedcowpro")
    m.proto, m.loss = proto, loss
    return m


def trainer_for(encoder: torch.nn.Module, method="fedcowpro", optimizer: torch.optim.Optimizer | None = None,
                device: str | torch.device = "cpu", **config) -> EpisodicTrainer:
    """An ``EpisodicTrainer`` around an existing encoder (SSL-ALPNet's SGD unless ``optimizer``)."""
    return EpisodicTrainer((), _method(method), train=EpisodicConfig(**config), device=str(device), model=encoder,
                           optimizer=optimizer)


def train_step(encoder: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: dict,
               method: str | tuple[PrototypeConfig, LossConfig] = "fedcowpro") -> dict[str, float]:
    """One optimisation step on one batch of episodes; returns the loss terms (``LOSS_KEYS``)."""
    tensors = [*encoder.parameters()]
    device = tensors[0].device if tensors else torch.device("cpu")
    out = trainer_for(encoder, method, optimizer, device).fit(lambda: batch, steps=1, keep_history=True)
    return out["history"][0]


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
        method: a name in ``losses.LOSS_VARIANTS`` or explicit (prototype, loss) settings.
        optimizer: default SSL-ALPNet's SGD (lr 1e-3, momentum 0.9, weight decay 5e-4).
        log_every: print the running loss every N steps (0: silent).

    Returns:
        one dict of loss terms per step.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    fixed = None if callable(batches) else list(batches)
    if fixed is not None and not fixed:
        raise ValueError("no batches given")
    counter = iter(range(10 ** 12))

    def next_batch():
        i = next(counter)
        if log_every and i and i % log_every == 0:
            log(f"step {i}/{steps}")
        return batches() if fixed is None else fixed[i % len(fixed)]

    trainer = trainer_for(encoder, method, optimizer, device)
    return trainer.fit(next_batch, steps=steps, keep_history=True)["history"]
