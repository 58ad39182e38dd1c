"""The one site script of every fedxmodal job, whatever its method or training style: NVFlare's
Client API loop (``fedxmodal.fl.client_loop``) around what the method's base says runs at a site
(its ``site_runner``: supervised slices, self-supervised episodes, GAN batches, or only the
method's own tasks; ``fedxmodal.methods.site_runners``) and the method's ``SiteParts`` (the
weights it shares, its own tasks, what it does before and after each round). This script names no
method: the registry gives the trainer, the runner and the parts.

Run by NVFlare at every site; the job passes its knobs as ``--key=value`` arguments (see
``jobs/specs/*.json``): ``structures``, ``method``, ``local_epochs`` or ``local_steps``, ``model``
(the network's class and arguments), ``preprocess``, ``train`` (the trainer's settings, with
``method_args``), ``seed``, ``num_threads``, ``device``, ``key_metric``. The site's data folder
comes from the site's own configuration (``fedxmodal.fl.site_config``), never from the job. Only
weights and aggregate metrics (means over the site's volumes) are sent, and what the method
declares to the output guard.
"""

from __future__ import annotations

import logging
import os
import sys

# Run as a script from the job's app/custom/: make the package shipped with the job importable.
_CUSTOM_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if _CUSTOM_DIR not in sys.path:
    sys.path.insert(0, _CUSTOM_DIR)

from fedxmodal.data.slices import SiteSlices  # noqa: E402
from fedxmodal.fl.client_args import parse_client_args  # noqa: E402
from fedxmodal.fl.client_loop import init_site, run_client, site_data_or_stop, site_trainer  # noqa: E402
from fedxmodal.fl.site_config import find_site_workspace, resolve_site_config  # noqa: E402
from fedxmodal.methods import DEFAULT_METHOD, method_class  # noqa: E402

log = logging.getLogger("fedxmodal.site")
ENV_SITE_STATE_DIR = "FEDXMODAL_SITE_STATE_DIR"
DEFAULTS = {"method": DEFAULT_METHOD, "local_epochs": 1, "local_steps": None, "seed": 0, "num_threads": 1,
            "poll_interval": None, "key_metric": "dice", "model": {"args": {}}, "preprocess": {}, "train": {},
            "device": "auto", "structures": []}


def site_state_dir():
    """A folder at the site that outlives a run, for state a method keeps across rounds (FedDA's
    discriminator, the factory's pictures): ``$FEDXMODAL_SITE_STATE_DIR``, else
    ``<site workspace>/fedxmodal_site_state``, else None (the simulator wipes its workspace: set
    the variable there to resume)."""
    env = os.environ.get(ENV_SITE_STATE_DIR)
    if env:
        return os.path.expanduser(env)
    workspace = find_site_workspace()
    return str(workspace / "fedxmodal_site_state") if workspace else None


def main(argv=None) -> None:
    args = parse_client_args(argv, defaults=DEFAULTS)
    method_cls = method_class(args["method"])
    site = init_site(seed=args["seed"], num_threads=args["num_threads"], poll_interval=args["poll_interval"])
    trainer = site_trainer(args, site)
    runner_cls = method_cls.site_runner
    state_dir = site_state_dir() or (os.path.abspath("fedxmodal_site_state") if runner_cls.needs_state_dir else None)
    with site_data_or_stop(site.site_name):
        slices = SiteSlices(resolve_site_config(site.site_name).data_dir, tuple(args["structures"]),
                            trainer.preprocess, progress=False)
        runner = runner_cls(trainer, slices, site.site_name, site.seed, args, state_dir=state_dir)
    parts = method_cls.build_site_parts(trainer, runner.data, site.site_name, state_dir=state_dir)
    get_weights, set_weights = parts.weight_access()
    log.info("[%s] %s: method %s, %s, device %s", site.site_name, slices.modality, method_cls.name,
             runner.describe(), trainer.device)

    def train_round(info):
        parts.before_training(info)
        res = runner.train(info)
        return {**res, **parts.after_training(info, runner.last_fit)}

    run_client(train_fn=train_round, validate_fn=runner.validate, evaluate_fn=runner.evaluate,
               get_weights=get_weights, set_weights=set_weights, n_train_items=lambda: runner.n_train_items,
               key_metric=args["key_metric"], site=site, task_handlers=parts.task_handlers(), on_task=parts.on_task)


if __name__ == "__main__":
    main()
