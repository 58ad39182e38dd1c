"""Tables of the factory's phase-1 runs (experiments/factory_phase1.sh): per run and site, the SWD
(x 100, lower is better) of the last validation of each site with the site's full condition, with
the key dropped, with the other sites' conditions, and the real-vs-real floor; wall time.

    python experiments/summarize_factory.py runs/factory
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def main(root) -> None:
    root = Path(root)
    runs = sorted(root.glob("*/*/seed*/summary.json"))
    if not runs:
        raise SystemExit(f"no runs under {root} (*/*/seed*/summary.json)")
    print("| data | condition | seed | site | SWD generated (site + key) | key dropped | other sites' conditions | "
          "real vs real (floor) | first validation | rounds x steps | wall (s) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for path in runs:
        s = json.loads(path.read_text())
        data, cond, seed = path.parts[-4], path.parts[-3], path.parts[-2]
        for site in s["sites"]:
            last = s["last_validation"].get(site, {})
            first = s["curves"].get(site, {}).get("val/swd", [[None, np.nan]])[0][1]
            cells = [last.get(k, np.nan) for k in ("swd", "swd_nokey", "swd_other", "swd_floor")]
            print(f"| {data} | {cond} | {seed} | {site} | " + " | ".join(f"{c:.2f}" for c in cells)
                  + f" | {first:.2f} | {s['num_rounds']} x {s['local_steps']} | {s['simulator_seconds']:.0f} |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/factory")
