"""The site side of the generative jobs (every method whose trainer is the GAN one:
``fedxmodal.methods.base.GanMethod``; e.g. ``jobs/factory``): NVFlare's Client API loop
(``fedxmodal.fl.client_loop``) around the method's :class:`~fedxmodal.engine.gan.GanTrainer`.
This script names no method.

No label is read. The method turns the site's slices into conditioned training batches once (the
factory: intensities to [-1, 1], slice positions, the site's domain key -- all kept here); each
round trains ``local_steps`` G+D steps (the optimizers re-created by the method's site part) and
every few rounds writes sample grids to the site's own folder (``<state dir>/<site>/pictures``, PNG, and
a local TensorBoard there: generated images do not travel with the metrics). Validation of the
received model: the method's quality figures on the validation split (the factory: SWD of
generated vs real slices, lower is better), sent as site-level scalars; cross-site evaluation the
same on the test split. Only the network's weights and these scalars are sent.

Knobs (``--key=value``, see ``jobs/specs/factory.json``): ``structures`` (kept for phase 2),
``method``, ``local_steps``, ``model`` (the network's class and arguments), ``preprocess``,
``train`` (``GanConfig`` fields, ``method_args``), ``seed``, ``num_threads``, ``device``.
"""

from __future__ import annotations

import logging
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
from fedxmodal.fl.segmentation_site import site_state_dir  # noqa: E402
from fedxmodal.fl.site_config import resolve_site_config  # noqa: E402
from fedxmodal.methods import DEFAULT_GAN_METHOD, method_class  # noqa: E402

log = logging.getLogger("fedxmodal.site")
DEFAULTS = {"method": DEFAULT_GAN_METHOD, "seed": 0, "num_threads": 1, "poll_interval": None, "key_metric": "swd",
            "model": {"args": {}}, "preprocess": {}, "train": {}, "device": "auto", "local_steps": None,
            "structures": []}


def local_writer(folder):
    """A TensorBoard writer in the site's own folder (images stay at the site), or None."""
    try:
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(str(folder))
    except Exception as exc:  # TensorBoard missing: pictures as PNG only
        log.warning(f"no local TensorBoard for the sample grids ({exc}); PNG files only")
        return None


class GanSite:
    """The train / validate / evaluate callables of one site (also used without NVFlare in tests)."""

    def __init__(self, trainer, data: SiteSlices, site_name: str, seed: int, pictures_dir=None):
        self.trainer, self.site_name = trainer, site_name
        self.method = trainer.method
        self.splits = self.method.site_data(trainer, data, site_name, seed=seed)
        self.pictures_dir = pictures_dir
        self.writer = local_writer(os.path.join(pictures_dir, "tb")) if pictures_dir else None

    @property
    def n_train_items(self) -> int:
        return len(self.splits["training"])

    def train(self, info) -> dict:
        tc = self.trainer.train_config
        res = self.trainer.fit(lambda: self.splits["training"].batch(tc.batch_size), should_stop=info.should_stop)
        if self.pictures_dir:
            self.method.site_pictures(self.trainer, self.splits, self.pictures_dir, info.current_round,
                                      total_rounds=info.total_rounds, writer=self.writer)
        return {k: v for k, v in res.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}

    def validate(self) -> dict:
        return self.method.quality_metrics(self.trainer, self.splits, "validation")

    def evaluate(self) -> dict:
        return self.method.quality_metrics(self.trainer, self.splits, "test")


def main(argv=None) -> None:
    args = parse_client_args(argv, defaults=DEFAULTS)
    site = init_site(seed=args["seed"], num_threads=args["num_threads"], poll_interval=args["poll_interval"])
    trainer = site_trainer(args, site)
    state_dir = site_state_dir() or os.path.abspath("fedxmodal_site_state")
    with site_data_or_stop(site.site_name):
        data = SiteSlices(resolve_site_config(site.site_name).data_dir, tuple(args["structures"]),
                          PreprocessConfig.from_dict(args["preprocess"]), progress=False)
        runner = GanSite(trainer, data, site.site_name, site.seed,
                         pictures_dir=os.path.join(state_dir, site.site_name, "pictures"))
    parts = method_class(args["method"]).build_site_parts(trainer, None, site.site_name, state_dir=state_dir)

    def train_round(info):
        parts.before_training(info)
        return {**runner.train(info), **parts.after_training(info, {})}

    log.info("[%s] %s: %d training slices, method %s, %d G+D steps x %d slices per round, pictures in %s, "
             "device %s", site.site_name, data.modality, runner.n_train_items, args["method"],
             trainer.train_config.steps, trainer.train_config.batch_size, runner.pictures_dir, trainer.device)
    serve_runner(runner, parts, args, site, train_fn=train_round)


if __name__ == "__main__":
    main()
