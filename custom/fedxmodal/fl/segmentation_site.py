"""The site side of the segmentation jobs (FedGIN and every method of ``fedxmodal.methods``):
NVFlare's Client API loop (``fedxmodal.fl.client_loop``) around the method's trainer. What a
method does beyond FedAvg at a site (weights it keeps, tasks of its own) comes from its
``SiteParts`` (``fedxmodal.methods.base``); this script names no method.

Run by NVFlare at every site; the job passes its knobs as ``--key=value`` arguments (see
``jobs/specs/*.json``): ``structures``, ``method``, ``local_epochs``, ``model`` (the U-Net's
class and arguments), ``preprocess``, ``train`` (TrainConfig fields), ``seed``, ``num_threads``. The site's
data folder comes from the site's own configuration (``fedxmodal.fl.site_config``), never from
the job. Only weights and aggregate metrics (means over the site's volumes) are sent.
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
from fedxmodal.engine.supervised import TrainConfig  # noqa: E402
from fedxmodal.fl.client_args import parse_client_args  # noqa: E402
from fedxmodal.fl.client_loop import init_site, run_client, site_data_or_stop  # noqa: E402
from fedxmodal.fl.site_config import find_site_workspace, resolve_site_config  # noqa: E402
from fedxmodal.methods import DEFAULT_METHOD, build_trainer, method_class  # noqa: E402
from fedxmodal.networks.unet import config_from_job_model  # noqa: E402

log = logging.getLogger("fedxmodal.site")
ENV_SITE_STATE_DIR = "FEDXMODAL_SITE_STATE_DIR"
DEFAULTS = {"local_epochs": 1, "method": DEFAULT_METHOD, "seed": 0, "num_threads": 1, "poll_interval": None,
            "key_metric": "dice", "model": {"args": {}}, "preprocess": {}, "train": {}, "device": "auto"}


def aggregate_metrics(evaluation: dict, prefix: str = "dice") -> dict[str, float]:
    """Site-level means only (no per-volume values leave the site); absent structures dropped."""
    summary = evaluation["summary"]
    out = {prefix: float(summary["mean_dice"]), "n_volumes": float(summary["n_volumes"])}
    out.update({f"{prefix}_{k}": float(v) for k, v in summary["dice"].items() if not math.isnan(v)})
    if math.isnan(out[prefix]):
        out[prefix] = 0.0
    return out


def main(argv=None) -> None:
    args = parse_client_args(argv, defaults=DEFAULTS)
    site = init_site(seed=args["seed"], num_threads=args["num_threads"], poll_interval=args["poll_interval"])
    structures = tuple(args["structures"])
    # The job's model spec {"path", "args"} is the one the server built the initial weights from.
    network = config_from_job_model(args["model"], len(structures))
    train_cfg = TrainConfig.from_dict({**args["train"], "method": args["method"], "seed": site.seed})
    preprocess = PreprocessConfig.from_dict(args["preprocess"])
    with site_data_or_stop(site.site_name):
        data = SiteSlices(resolve_site_config(site.site_name).data_dir, structures, preprocess, progress=False)
        images, labels = data.slices("training", foreground_only=train_cfg.foreground_only)
        data.volumes("validation")
        data.volumes("test")
    trainer = build_trainer(structures, network, train_cfg, preprocess, device=args["device"], writer=site.writer)
    trainer.method.prepare([images])
    parts = method_class(train_cfg.method).build_site_parts(trainer, images, site.site_name,
                                                            state_dir=site_state_dir())
    get_weights, set_weights = parts.weight_access()
    log.info("[%s] %s: %d training slices, method %s, device %s", site.site_name, data.modality,
             len(images), train_cfg.method, trainer.device)

    def train(info):
        epochs = int(args["local_epochs"])
        # the whole job's epochs, for schedules (FedDA's adversarial ramp)
        trainer.plan((info.total_rounds or 0) * epochs, epochs_done=info.current_round * epochs)
        parts.before_training(info)
        res = trainer.fit(images, labels, epochs=epochs, desc=f"{site.site_name} round {info.current_round}",
                          progress=False, should_stop=info.should_stop)
        extra = parts.after_training(info, res)
        return {"loss": res["loss"], "slices_per_s": res["n_slices"] * epochs / max(res["seconds"], 1e-9),
                "seconds": res["seconds"], **extra}

    run_client(
        train_fn=train,
        validate_fn=lambda: aggregate_metrics(trainer.evaluate(data, "validation")),
        evaluate_fn=lambda: aggregate_metrics(trainer.evaluate(data, "test")),
        get_weights=get_weights,
        set_weights=set_weights,
        n_train_items=len(images),
        key_metric=args["key_metric"],
        site=site,
        task_handlers=parts.task_handlers(),
        on_task=parts.on_task,
    )


def site_state_dir():
    """A folder at the site that outlives a run, for state a method keeps across rounds (FedDA's
    discriminator): ``$FEDXMODAL_SITE_STATE_DIR``, else ``<site workspace>/fedxmodal_site_state``,
    else None (the simulator wipes its workspace: set the variable there to resume)."""
    env = os.environ.get(ENV_SITE_STATE_DIR)
    if env:
        return os.path.expanduser(env)
    workspace = find_site_workspace()
    return str(workspace / "fedxmodal_site_state") if workspace else None


if __name__ == "__main__":
    main()
