"""The three networks a data-factory site trains and a federation averages, in one module:
the conditional StyleGAN2-lite generator (:mod:`.stylegan`), its projection discriminator
(:mod:`.stylegan_disc`) and the generator's EMA copy."""

from __future__ import annotations

import copy

import torch
from torch import nn

from .stylegan import StyleGANConfig, StyleGenerator
from .stylegan_disc import ProjectionDiscriminator

__all__ = ["FactoryGAN"]


class FactoryGAN(nn.Module):
    """The data factory's networks from one :class:`StyleGANConfig`: ``generator``,
    ``discriminator`` and ``generator_ema`` (a frozen copy of G that follows it by EMA; always
    in eval mode). State-dict keys are prefixed by these names; a federation averages all three.

    With the defaults at 64 px: G 1.93 M, D 2.37 M, total 6.24 M parameters (6.34 M at 128 px).
    """

    def __init__(self, cfg: StyleGANConfig | None = None, init_seed: int | None = 0, **config):
        """``FactoryGAN(cfg)`` or ``FactoryGAN(**StyleGANConfig fields)`` (a job's model spec);
        ``init_seed`` fixes the initial weights without touching the caller's random state."""
        super().__init__()
        if cfg is not None and config:
            raise ValueError("pass a StyleGANConfig or its fields, not both")
        self.cfg = cfg or StyleGANConfig.from_dict(config)
        with torch.random.fork_rng(devices=[]):
            if init_seed is not None:
                torch.manual_seed(init_seed)
            self.generator = StyleGenerator(self.cfg)
            self.discriminator = ProjectionDiscriminator(self.cfg)
        self.generator_ema = copy.deepcopy(self.generator).requires_grad_(False).eval()

    @classmethod
    def from_args(cls, **kwargs) -> "FactoryGAN":
        """Build from :class:`StyleGANConfig` keyword arguments (a job's model ``args``)."""
        init_seed = kwargs.pop("init_seed", 0)
        return cls(StyleGANConfig.from_dict(kwargs), init_seed=init_seed)

    def train(self, mode: bool = True) -> "FactoryGAN":
        super().train(mode)
        self.generator_ema.eval()  # never trained: w_avg is copied from G, not re-estimated
        return self

    @torch.no_grad()
    def update_ema(self, beta: float) -> None:
        """generator_ema <- beta * generator_ema + (1 - beta) * generator (parameters); buffers
        (w_avg, constant noise) copied."""
        for p_ema, p in zip(self.generator_ema.parameters(), self.generator.parameters()):
            p_ema.lerp_(p.detach(), 1.0 - beta)
        for b_ema, b in zip(self.generator_ema.buffers(), self.generator.buffers()):
            b_ema.copy_(b)
