"""Augmentations run in their input's precision (float32 for training batches), also inside a
trainer's mixed-precision (autocast) region: they are data transforms, not the network, and their
random convolutions, blends and rescalings keep full precision (under CPU bfloat16 autocast a
random conv would otherwise return bfloat16 and break in-place mixing with the float32 input)."""

from __future__ import annotations

import functools

import torch


def float32_augmentation(fn):
    """Decorator: run ``fn`` with autocast off on the device of its first tensor argument, so it
    computes in its input's own dtype (float32 for training batches; a float64 or half input stays
    as it is)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        device = next((a.device.type for a in args if isinstance(a, torch.Tensor)), "cpu")
        with torch.autocast(device, enabled=False):
            return fn(*args, **kwargs)

    return wrapper
