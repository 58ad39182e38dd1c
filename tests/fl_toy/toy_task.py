"""A tiny segmentation task for testing the FL plumbing: synthetic 2-structure slices, a 3-layer
conv net, soft-Dice + CE training and a mean foreground Dice. Trains in well under a second per
round on one CPU thread, and its Dice rises quickly, so FL rounds show real improvement."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F


class ToyNet(nn.Module):
    def __init__(self, in_channels: int = 1, num_classes: int = 3, width: int = 16, init_seed: int = 0):
        super().__init__()
        # stored under the argument names: NVFlare's job exporter reads constructor args back this way
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.width = width
        self.init_seed = init_seed
        # the server process is not seeded: fix the initial weights here (as SegmentationUNet does)
        with torch.random.fork_rng():
            torch.manual_seed(init_seed)
            self.net = nn.Sequential(
                nn.Conv2d(in_channels, width, 3, padding=1),
                nn.ReLU(),
                nn.Conv2d(width, width, 3, padding=2, dilation=2),
                nn.ReLU(),
                nn.Conv2d(width, num_classes, 1),
            )
        with torch.no_grad():  # start by predicting background everywhere: initial Dice is exactly 0
            self.net[-1].bias.copy_(torch.tensor([3.0] + [0.0] * (num_classes - 1)))

    def forward(self, x):
        return self.net(x)


def make_split(n: int, size: int, modality: str, seed: int):
    """n slices (1 x size x size) with a disk (label 1) and a square (label 2); MR has another contrast."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    images = torch.zeros(n, 1, size, size)
    labels = torch.zeros(n, size, size, dtype=torch.long)
    for i in range(n):
        cy, cx = torch.randint(4, size - 4, (2,), generator=g).tolist()
        r = float(torch.randint(2, 4, (1,), generator=g))
        disk = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        sy, sx = torch.randint(1, size - 5, (2,), generator=g).tolist()
        square = torch.zeros(size, size, dtype=torch.bool)
        square[sy : sy + 4, sx : sx + 4] = True
        square &= ~disk
        labels[i][disk] = 1
        labels[i][square] = 2
        img = 0.2 + 0.6 * disk.float() + 1.0 * square.float()
        if modality.upper() == "MR":  # a milder, shifted contrast: a domain shift FedAvg can bridge
            img = 0.6 * img + 0.3
        images[i, 0] = img + 0.15 * torch.randn(size, size, generator=g)
    return images, labels


def load_toy_site(data_dir: Path, seed: int):
    """Read the site's dataset.json (toy variant) and synthesise its train/validation/test splits."""
    meta = json.loads((Path(data_dir) / "dataset.json").read_text())
    toy = meta.get("toy", {})
    size = int(toy.get("size", 16))
    modality = meta.get("modality", "CT")
    splits = {}
    for k, split in enumerate(("training", "validation", "test")):
        splits[split] = make_split(int(toy.get(f"n_{split}", 32)), size, modality, seed + 1000 * k)
    return meta, splits


def mean_dice(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict:
    pred = logits.argmax(1)
    out = {}
    for c in range(1, num_classes):
        p, t = pred == c, labels == c
        denom = p.sum() + t.sum()
        out[f"dice_{c}"] = float(2 * (p & t).sum() / denom) if denom > 0 else 1.0
    out["dice"] = sum(out.values()) / max(1, num_classes - 1)
    return out


def seg_loss(logits, labels, num_classes):
    weight = torch.ones(num_classes, device=logits.device)
    weight[0] = 0.2  # background dominates the pixels
    ce = F.cross_entropy(logits, labels, weight=weight)
    prob = logits.softmax(1)
    onehot = F.one_hot(labels, num_classes).permute(0, 3, 1, 2).float()
    inter = (prob * onehot).sum((0, 2, 3))
    dice = (2 * inter + 1e-5) / (prob.sum((0, 2, 3)) + onehot.sum((0, 2, 3)) + 1e-5)
    return ce + (1 - dice[1:].mean())
