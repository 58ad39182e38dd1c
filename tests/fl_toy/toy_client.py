"""Toy fedxmodal site script (NVFlare Client API) -- the template for real method scripts.

Everything method-specific is in the five callables handed to ``run_client``; the rest (FL
protocol, validation before training, cross-site evaluation, TensorBoard, abort) is generic.

Test hooks (environment): FEDXMODAL_TOY_EVENTS=<dir> appends one JSON line per task to
<dir>/<site>.jsonl; FEDXMODAL_TOY_FAIL_AT_ROUND=<r> makes the site crash at round r (an
interrupted job, for the resume test).
"""

import hashlib
import json
import os
import sys
import time

# Use the code shipped with the job (app/custom/), even where an older fedxmodal is installed.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

import fedxmodal  # noqa: E402
from fedxmodal.fl.client_args import parse_client_args  # noqa: E402
from fedxmodal.fl.client_loop import init_site, run_client  # noqa: E402
from fedxmodal.utils import instantiate  # noqa: E402
from fedxmodal.fl.site_config import resolve_site_config  # noqa: E402
from toy_task import load_toy_site, mean_dice, seg_loss  # noqa: E402


def weights_digest(state) -> str:
    h = hashlib.sha1()
    for k in sorted(state):
        h.update(k.encode())
        h.update(torch.as_tensor(state[k]).detach().cpu().float().numpy().tobytes())
    return h.hexdigest()[:16]


def main():
    args = parse_client_args(
        defaults={"local_epochs": 1, "lr": 0.01, "batch_size": 8, "seed": 0, "num_threads": 1, "poll_interval": None}
    )
    site = init_site(seed=args["seed"], num_threads=args["num_threads"], poll_interval=args["poll_interval"])
    cfg = resolve_site_config(site.site_name)  # the site's own config, never the job's
    meta, splits = load_toy_site(cfg.data_dir, seed=site.seed)
    model = instantiate(args["model"])
    num_classes = args["model"]["args"].get("num_classes", 3)
    opt = torch.optim.Adam(model.parameters(), lr=args["lr"])
    x_tr, y_tr = splits["training"]

    events_dir = os.environ.get("FEDXMODAL_TOY_EVENTS")
    fail_at = os.environ.get("FEDXMODAL_TOY_FAIL_AT_ROUND")

    def log_event(**ev):
        if events_dir:
            ev.update(site=site.site_name, time=time.time(), fedxmodal_file=fedxmodal.__file__)
            with open(os.path.join(events_dir, f"{site.site_name}.jsonl"), "a") as f:
                f.write(json.dumps(ev) + "\n")

    @torch.no_grad()
    def score(split):
        model.eval()
        x, y = splits[split]
        return mean_dice(model(x), y, num_classes)

    def train(info):
        if fail_at is not None and info.current_round == int(fail_at):
            raise RuntimeError(f"toy failure injected at round {info.current_round}")
        model.train()
        g = torch.Generator().manual_seed(site.seed + info.current_round)
        losses = []
        for epoch in range(args["local_epochs"]):
            perm = torch.randperm(len(x_tr), generator=g)
            for i in range(0, len(perm), args["batch_size"]):
                if info.should_stop():
                    return None
                idx = perm[i : i + args["batch_size"]]
                loss = seg_loss(model(x_tr[idx]), y_tr[idx], num_classes)
                opt.zero_grad()
                loss.backward()
                opt.step()
                losses.append(loss.item())
        log_event(task="train", round=info.current_round, val=info.global_metrics)
        return {"loss": sum(losses) / max(1, len(losses))}

    def on_task(task, fl_model):
        digest = weights_digest(fl_model.params) if fl_model.params else None
        log_event(task="received", name=task, round=fl_model.current_round, total=fl_model.total_rounds, digest=digest)

    run_client(
        train_fn=train,
        validate_fn=lambda: score("validation"),
        evaluate_fn=lambda: score("test"),
        get_weights=model.state_dict,
        set_weights=model.load_state_dict,
        n_train_items=len(x_tr),
        key_metric=args["key_metric"],
        site=site,
        on_task=on_task,
    )


if __name__ == "__main__":
    main()
