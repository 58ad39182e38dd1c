"""What each branch of an adapted target contributes: the data factory's phase-2 models
(``factory adapt``'s ``site_state/<target>/factory_adapt/target.pt``) re-tested on their site's test
split with the target's own branch only (S_t on E_t), the source branch only (S_s on the
translation to the source domain) and the 0.5 / 0.5 average the method uses. If the source branch
alone is no better than chance, or the average no better than the own branch, the factory's source
side adds nothing at this budget.

    python experiments/factory_branches.py --adapt runs/factory2/phantom/adapt --data runs/factory/phantom/data

Prints, per target, mean +- sd over the seeds found (``seed<k>/``) of the mean test Dice (3D, per
volume, as ``factory adapt`` reports) per inference rule, and the spread verdict of average vs own.
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "custom"))

from fedxmodal.apps.compare_seeds import exceeds_spread, format_mean_sd, mean_sd  # noqa: E402
from fedxmodal.data.slices import SiteSlices  # noqa: E402
from fedxmodal.engine.evaluation import evaluate_site  # noqa: E402
from fedxmodal.methods import load_trainer  # noqa: E402

RULES = ("own", "source", "average")  # AdaptationTrainer.predict's rules, in the table's order


def target_rules(model: Path, site_dir: Path) -> dict[str, float]:
    """{rule: mean test Dice} of one adapted target model on its site folder."""
    trainer = load_trainer(model, device="cpu")
    if trainer.source_branch is None:
        raise SystemExit(f"error: {model}: not an adapted target (no source branch)")
    site = SiteSlices(site_dir, trainer.structures, trainer.preprocess, progress=False)
    return {rule: evaluate_site(partial(trainer.predict_slices, rule=rule), site, trainer.structures,
                                "test")["summary"]["mean_dice"] for rule in RULES}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--adapt", required=True, help="folder of seed<k>/ (factory adapt --out)")
    p.add_argument("--data", required=True, help="the folder of site folders the runs used")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    models = sorted(Path(a.adapt).glob("seed*/site_state/*/factory_adapt/target.pt"))
    if not models:
        raise SystemExit(f"error: {a.adapt}: no seed*/site_state/<target>/factory_adapt/target.pt")
    per_target: dict[str, dict[str, list]] = {}
    for model in models:
        target = model.parents[1].name
        for rule, dice in target_rules(model, Path(a.data) / target).items():
            per_target.setdefault(target, {}).setdefault(rule, []).append(dice)
        print(f"  {model.parents[3].name} {target}: " + ", ".join(
            f"{r} {per_target[target][r][-1]:.3f}" for r in RULES), flush=True)
    print("| target | " + " | ".join(RULES) + " | average vs own |\n|---|" + "---|" * (len(RULES) + 1))
    for target, rules in per_target.items():
        st = {r: mean_sd(rules[r]) for r in RULES}
        verdict = exceeds_spread(st["average"], st["own"])
        verdict = "n/a (1 seed)" if verdict is None else ("beyond the spread" if verdict else "within the spread")
        print(f"| {target} | " + " | ".join(format_mean_sd(v) for v in st.values())
              + f" | {st['average'][0] - st['own'][0]:+.3f}, {verdict} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
