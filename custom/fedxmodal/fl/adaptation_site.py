"""The site side of the adaptation jobs (a method that adapts around a frozen phase-1 model through
its own tasks, e.g. ``jobs/factory_adapt``): NVFlare's Client API loop
(``fedxmodal.fl.client_loop``) serving the method's tasks (its ``SiteParts.task_handlers``).
This script names no method: the registry gives the trainer and the site part.

The site reads its data folder (``resolve_site_config``) once; the tasks' payloads bring the
frozen model (and, at a target, the source branch); what goes back is what the method declares to
the output guard. The job sends no ``train`` / ``validate`` task.

Knobs (``--key=value``, see ``jobs/specs/factory_adapt.json``): ``structures``, ``method``,
``local_steps`` (optimizer steps of each fit), ``model`` (the network's settings), ``preprocess``,
``train`` (the trainer's config, ``method_args``), ``seed``, ``num_threads``, ``device``.
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
from fedxmodal.fl.segmentation_site import site_state_dir  # noqa: E402
from fedxmodal.fl.site_config import resolve_site_config  # noqa: E402
from fedxmodal.methods import method_class  # noqa: E402

log = logging.getLogger("fedxmodal.site")
DEFAULTS = {"seed": 0, "num_threads": 1, "poll_interval": None, "key_metric": "dice", "model": {"args": {}},
            "preprocess": {}, "train": {}, "device": "auto", "local_steps": None, "structures": []}


def _no_such_task(*_):
    raise RuntimeError("an adaptation job sends only the method's own tasks (no train / validate / evaluate)")


def main(argv=None) -> None:
    args = parse_client_args(argv, defaults=DEFAULTS)
    if not args.get("method"):
        raise ValueError("an adaptation job names its method (client_args.method)")
    site = init_site(seed=args["seed"], num_threads=args["num_threads"], poll_interval=args["poll_interval"])
    trainer = site_trainer(args, site)
    state_dir = site_state_dir() or os.path.abspath("fedxmodal_site_state")
    with site_data_or_stop(site.site_name):  # the trainer's preprocessing (slices of the frozen model's size)
        data = SiteSlices(resolve_site_config(site.site_name).data_dir, tuple(args["structures"]),
                          trainer.preprocess, progress=False)
    parts = method_class(args["method"]).build_site_parts(trainer, data, site.site_name, state_dir=state_dir)
    get_weights, set_weights = parts.weight_access()
    log.info("[%s] %s: method %s, %d steps x %d slices per fit, state in %s, device %s", site.site_name,
             data.modality, args["method"], trainer.train_config.steps, trainer.train_config.batch_size, state_dir,
             trainer.device)
    run_client(train_fn=_no_such_task, validate_fn=_no_such_task, evaluate_fn=_no_such_task,
               get_weights=get_weights, set_weights=set_weights, n_train_items=0, key_metric=args["key_metric"],
               site=site, task_handlers=parts.task_handlers(), on_task=parts.on_task)


if __name__ == "__main__":
    main()
