"""The toy job's training without NVFlare: the same sites, data, epochs and FedAvg, in one loop.

    python tests/fl_toy/plain_fedavg.py --data-root DIR --rounds N [--local-epochs E]

Prints the per-round aggregated validation Dice and the wall time; used to measure what the
simulator adds per round (docs/nvflare-notes.md)."""

import argparse
import copy
import json
import os
import sys
import time
import zlib
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch  # noqa: E402

from toy_task import ToyNet, load_toy_site, mean_dice, seg_loss  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data-root", required=True)
    p.add_argument("--sites", default="ct-site,mr-site")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--local-epochs", type=int, default=3)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    torch.set_num_threads(1)
    t0 = time.time()
    sites = {}
    for name in a.sites.split(","):
        seed = a.seed + zlib.crc32(name.encode()) % 100_000
        torch.manual_seed(seed)
        _, splits = load_toy_site(Path(a.data_root) / name, seed)
        model = ToyNet(num_classes=3, width=a.width)
        sites[name] = dict(seed=seed, splits=splits, model=model, opt=torch.optim.Adam(model.parameters(), lr=a.lr))
    glob = ToyNet(num_classes=3, width=a.width).state_dict()
    history = []
    for rnd in range(a.rounds):
        vals, weights, states = [], [], []
        for name, s in sites.items():
            m, (x, y) = s["model"], s["splits"]["training"]
            m.load_state_dict(glob)
            m.eval()
            with torch.no_grad():
                vals.append(mean_dice(m(s["splits"]["validation"][0]), s["splits"]["validation"][1], 3)["dice"])
            m.train()
            g = torch.Generator().manual_seed(s["seed"] + rnd)
            for _ in range(a.local_epochs):
                perm = torch.randperm(len(x), generator=g)
                for i in range(0, len(perm), a.batch_size):
                    idx = perm[i : i + a.batch_size]
                    loss = seg_loss(m(x[idx]), y[idx], 3)
                    s["opt"].zero_grad()
                    loss.backward()
                    s["opt"].step()
            weights.append(len(x))
            states.append(copy.deepcopy(m.state_dict()))
        tot = sum(weights)
        glob = {k: sum(w * st[k] for w, st in zip(weights, states)) / tot for k in glob}
        history.append(sum(w * v for w, v in zip(weights, vals)) / tot)
    wall = time.time() - t0
    history = [round(v, 4) for v in history]
    print(json.dumps({"rounds": a.rounds, "wall_s": round(wall, 3), "val_dice_by_round": history}))


if __name__ == "__main__":
    main()
