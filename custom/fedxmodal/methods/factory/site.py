"""The factory at a site, around each NVFlare round (no NVFlare import needed)."""

from __future__ import annotations

from ..base import SiteParts


class FactorySiteParts(SiteParts):
    """Every weight of the factory (generator, discriminator, EMA generator) is shared; the Adam
    state is NOT carried from one round to the next (the official federated code re-creates the
    optimizers every round: the moments belong to weights the average has just replaced)."""

    def before_training(self, info) -> None:
        self.trainer.reset_optimizers()
