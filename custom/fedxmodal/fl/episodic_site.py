"""The site side of the self-supervised one-shot jobs (every method whose trainer is the episodic
one: ``fedxmodal.methods.base.EpisodicMethod``; e.g. ``jobs/fedcowpro``): NVFlare's Client API
loop (``fedxmodal.fl.client_loop``) around the method's :class:`~fedxmodal.engine.episodic.EpisodicTrainer`.
This script names no method.

At the site, no label is needed to train: the method computes its pseudo-labels (superpixels) from
the site's training images once (cached in the site's own folder) and draws episodes from them;
each round trains ``local_steps`` steps. Validation of the received global model:

* the site's own **one-shot Dice** (``dice``; ``oneshot`` = 1) when its validation split holds a
  labelled volume: each structure is segmented on the validation volumes from ONE support volume
  of the same site -- the first labelled volume containing it, looked for in validation, then
  training, then test; a support is never its own query, except when it is the site's only
  labelled volume with that structure (then ``self_support`` counts such structures);
* otherwise the **episode metrics** on fixed, seeded episodes of the site (``episode_loss``, and
  ``dice`` = ``episode_dice``, the Dice of the query prediction vs its pseudo-label; ``oneshot`` = 0).

The key metric ``dice`` therefore means one-shot Dice at labelled sites and episode Dice at the
others (the server averages what the sites report). Cross-site evaluation does the same on the
test split. Only the network's weights and these site-level means are sent: no superpixel, image,
label or per-volume value leaves the site.

Knobs (``--key=value``, see ``jobs/specs/fedcowpro.json``): ``structures``, ``method``,
``local_steps``, ``model`` (the network's class and arguments), ``preprocess``, ``train``
(``EpisodicConfig`` fields, ``method_args``), ``seed``, ``num_threads``, ``device``.
"""

from __future__ import annotations

import logging
import math
import os
import sys

# Run as a script from the job's app/custom/: make the package shipped with the job importable.
_CUSTOM_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if _CUSTOM_DIR not in sys.path:
    sys.path.insert(0, _CUSTOM_DIR)

from fedxmodal.data.preprocess import PreprocessConfig  # noqa: E402
from fedxmodal.data.slices import SiteSlices  # noqa: E402
from fedxmodal.fl.client_args import parse_client_args  # noqa: E402
from fedxmodal.fl.client_loop import init_site, serve_runner, site_data_or_stop, site_trainer  # noqa: E402
from fedxmodal.fl.site_config import resolve_site_config  # noqa: E402
from fedxmodal.methods import DEFAULT_ONESHOT_METHOD, method_class  # noqa: E402

log = logging.getLogger("fedxmodal.site")
DEFAULTS = {"method": DEFAULT_ONESHOT_METHOD, "seed": 0, "num_threads": 1, "poll_interval": None,
            "key_metric": "dice", "model": {"args": {}}, "preprocess": {}, "train": {}, "device": "auto",
            "local_steps": None}


def has_labelled(data: SiteSlices, split: str) -> bool:
    cases = data.site.split(split)
    return bool(cases) and len(data.site.unlabelled(split)) < len(cases)


def oneshot_metrics(evaluation: dict) -> dict[str, float]:
    """Site-level means of a one-shot evaluation (no per-volume value leaves the site)."""
    s = evaluation["summary"]
    out = {"dice": float(s["mean_dice"]), "n_volumes": float(s["n_volumes"]), "oneshot": 1.0,
           "self_support": float(len(evaluation["self_support"]))}
    out.update({f"dice_{k}": float(v) for k, v in s["dice"].items() if not math.isnan(v)})
    whole = s["settings"].get("whole_volume", {}).get("mean_dice", math.nan)
    if not math.isnan(whole):
        out["whole_volume_dice"] = float(whole)
    return out


class EpisodicSite:
    """The train / validate / evaluate callables of one site (also used without NVFlare in tests)."""

    def __init__(self, trainer, data: SiteSlices, seed: int, site_name: str):
        self.trainer, self.data, self.site_name = trainer, data, site_name
        tc = trainer.train_config
        self.sampler = trainer.sampler(data, "training", seed=seed)  # superpixels: computed or read from the cache
        fixed = self.sampler.with_seed(seed + 1)  # the same slices and superpixels, other episodes
        self.val_batches = [fixed.batch(tc.batch_size) for _ in range(max(1, math.ceil(tc.val_episodes / tc.batch_size)))]

    @property
    def n_train_items(self) -> int:
        return len(self.sampler)

    def train(self, info) -> dict:
        res = self.trainer.fit(lambda: self.sampler.batch(self.trainer.train_config.batch_size),
                               desc=f"{self.site_name} round {info.current_round}", should_stop=info.should_stop)
        return {"loss": res["loss"], "episodes_per_s": res["n_slices"] / max(res["seconds"], 1e-9)}

    def _metrics(self, split: str) -> dict[str, float]:
        episodes = self.trainer.episode_metrics(self.val_batches)
        if has_labelled(self.data, split):
            out = oneshot_metrics(self.trainer.evaluate(self.data, split))
            if not math.isnan(out["dice"]):
                return {**out, **episodes}
        return {"dice": episodes["episode_dice"], "oneshot": 0.0, **episodes}

    def validate(self) -> dict[str, float]:
        return self._metrics("validation")

    def evaluate(self) -> dict[str, float]:
        return self._metrics("test")


def main(argv=None) -> None:
    args = parse_client_args(argv, defaults=DEFAULTS)
    site = init_site(seed=args["seed"], num_threads=args["num_threads"], poll_interval=args["poll_interval"])
    trainer = site_trainer(args, site)
    with site_data_or_stop(site.site_name):
        data = SiteSlices(resolve_site_config(site.site_name).data_dir, tuple(args["structures"]),
                          PreprocessConfig.from_dict(args["preprocess"]), progress=False)
        runner = EpisodicSite(trainer, data, site.seed, site.site_name)
    parts = method_class(args["method"]).build_site_parts(trainer, None, site.site_name)  # no labelled slices
    log.info("[%s] %s: %d training slices with pseudo-labels, method %s, %d steps x %d episodes per round, "
             "validation: %s, device %s", site.site_name, data.modality, runner.n_train_items, args["method"],
             trainer.train_config.steps, trainer.train_config.batch_size,
             "one-shot Dice" if has_labelled(data, "validation") else "episode metrics", trainer.device)
    serve_runner(runner, parts, args, site)


if __name__ == "__main__":
    main()
