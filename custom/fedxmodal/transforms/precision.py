"""Augmentations run in float32, also inside a trainer's mixed-precision (autocast) region: they
are data transforms, not the network, and their random convolutions, blends and rescalings keep
full precision (under CPU bfloat16 autocast a random conv would otherwise return bfloat16 and
break in-place mixing with the float32 input)."""

from __future__ import annotations

import functools

import torch


def float32_augmentation(fn):
    """Decorator: run ``fn`` with autocast off on the device of its first tensor argument; float
    tensor arguments are cast to float32."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        device = next((a.device.type for a in args if isinstance(a, torch.Tensor)), "cpu")
        args = tuple(a.float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)
        with torch.autocast(device, enabled=False):
            return fn(*args, **kwargs)

    return wrapper
