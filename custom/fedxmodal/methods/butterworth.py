"""Random Butterworth high-pass filtering, the local frequency-domain baseline of the
federated GIN paper."""

from __future__ import annotations

from ..transforms.frequency import ButterworthHighPassAugment
from .base import PlainMethod


class ButterworthHighPassMethod(PlainMethod):
    """Local frequency-domain variant: random Butterworth high-pass (cutoff in [0.01, 0.1], order 2)."""

    name = "freq_hp"
    label = "Butterworth high-pass"

    def __init__(self, cutoff_range=(0.01, 0.1), order: int = 2, p: float = 0.5):
        self.highpass = ButterworthHighPassAugment(cutoff_range=tuple(cutoff_range), order=order, p=p)

    def augment(self, images):
        return self.highpass(images)
