"""Domain-specific normalization: BatchNorm layers with several branches (DSBN, Dual-Norm) and the
helpers FedBN needs (which state-dict entries are BatchNorm, i.e. stay at the site).

A multi-branch network shares every convolution; each BatchNorm layer holds one ``BatchNorm2d`` per
branch and normalizes with the *active* branch (``set_branch``). DSBN (Chang et al., CVPR 2019) has
one branch per domain (site); Dual-Norm (Zhou et al., CVPR 2022) has two, "source-similar" and
"source-dissimilar". When the branch of a test image is unknown, ``select_branches`` picks, per
slice, the branch whose stored statistics are closest to the slice's own feature statistics at the
first BatchNorm layer (its input does not depend on the branch).
"""

from __future__ import annotations

import re

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

# MONAI's UNet names its norm layers "...adn.N"; FedBN keeps these tensors at the site.
MONAI_NORM_PATTERN = r"(^|\.)adn\.N\."


class MultiBranchBatchNorm2d(nn.Module):
    """(B, C, H, W) -> (B, C, H, W), normalized by ``branches[active]``."""

    def __init__(self, template: nn.BatchNorm2d, n_branches: int):
        super().__init__()
        self.branches = nn.ModuleList(
            nn.BatchNorm2d(template.num_features, eps=template.eps, momentum=template.momentum,
                           affine=template.affine, track_running_stats=template.track_running_stats)
            for _ in range(n_branches))
        self.active = 0  # plain attribute: not part of the state dict

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.branches[self.active](x)


def convert_to_multibranch(model: nn.Module, n_branches: int) -> nn.Module:
    """Replace every ``BatchNorm2d`` of ``model`` (in place) by a ``MultiBranchBatchNorm2d``."""
    if n_branches < 2:
        return model
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.BatchNorm2d):
                setattr(module, child_name, MultiBranchBatchNorm2d(child, n_branches))
    if not multibranch_layers(model):
        raise ValueError("norm_branches > 1 needs a network with BatchNorm2d layers (norm='batch')")
    return model


def multibranch_layers(model: nn.Module) -> list[MultiBranchBatchNorm2d]:
    return [m for m in model.modules() if isinstance(m, MultiBranchBatchNorm2d)]


def n_branches(model: nn.Module) -> int:
    layers = multibranch_layers(model)
    return len(layers[0].branches) if layers else 1


def set_branch(model: nn.Module, branch: int) -> None:
    layers = multibranch_layers(model)
    if not layers:
        return
    if not 0 <= branch < len(layers[0].branches):
        raise ValueError(f"branch {branch} out of range (network has {len(layers[0].branches)})")
    for layer in layers:
        layer.active = int(branch)


@torch.no_grad()
def select_branches(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) -> (B,) branch index per slice: the branch whose running statistics at the
    first BatchNorm layer are closest to the slice's channel mean/std there (Dual-Norm's rule).
    Distance: sum over channels of (mean - mu_b)^2 + (std - sigma_b)^2."""
    layers = multibranch_layers(model)
    if not layers:
        return torch.zeros(images.shape[0], dtype=torch.long)
    first = layers[0]
    captured = {}

    def grab(_module, inputs):
        captured["x"] = inputs[0]
        raise _StopForward

    handle = first.register_forward_pre_hook(grab)
    was_training = model.training
    model.eval()
    try:
        model(images)
    except _StopForward:
        pass
    finally:
        handle.remove()
        model.train(was_training)
    feats = captured["x"].float()  # (B, C, h, w)
    mean = feats.mean(dim=(2, 3))
    std = feats.var(dim=(2, 3), unbiased=False).add(1e-5).sqrt()
    dists = []
    for bn in first.branches:
        mu, sigma = bn.running_mean.float(), bn.running_var.float().add(bn.eps).sqrt()
        dists.append(((mean - mu) ** 2 + (std - sigma) ** 2).sum(1))
    return torch.stack(dists, 1).argmin(1).cpu()


class _StopForward(Exception):
    """Raised by the pre-hook: only the first BatchNorm's input is needed."""


def forward_by_branch(model: nn.Module, images: torch.Tensor, branches: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W), (B,) branch per sample -> (B, C, H, W) logits, each sample through its branch."""
    out = None
    for b in branches.unique().tolist():
        idx = (branches == b).nonzero(as_tuple=True)[0].to(images.device)
        set_branch(model, b)
        logits = model(images[idx])
        if out is None:
            out = logits.new_empty((images.shape[0], *logits.shape[1:]))
        out[idx] = logits
    return out


def batchnorm_state_keys(model: nn.Module) -> set[str]:
    """State-dict keys of every BatchNorm layer (affine parameters and running statistics): what
    FedBN keeps at the site."""
    keys = set()
    for name, module in model.named_modules():
        if isinstance(module, _BatchNorm):
            prefix = f"{name}." if name else ""
            keys.update(prefix + k for k in module.state_dict())
    return keys


def matches(pattern: str, key: str) -> bool:
    return re.search(pattern, key) is not None
