"""Toy site script for FedDA-cyclic's server workflow (tests/test_fedda.py): the toy task, plus a
record of what every cyclic payload held. Per train task it writes to $FEDXMODAL_TOY_EVENTS:
``<site>_r<round>_received.pt`` (the global weights, the peer's weights, ``peer_site``) and
``<site>_r<round>_sent.pt`` (the weights it returns), and one JSON line to ``<site>.jsonl``."""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from fedxmodal.fl.client_args import parse_client_args  # noqa: E402
from fedxmodal.fl.client_loop import init_site, run_client  # noqa: E402
from fedxmodal.utils import instantiate  # noqa: E402
from fedxmodal.fl.site_config import resolve_site_config  # noqa: E402
from toy_task import load_toy_site, mean_dice, seg_loss  # noqa: E402

PEER = "peer::"


def main():
    args = parse_client_args(defaults={"lr": 0.05, "batch_size": 8, "seed": 0, "num_threads": 1, "poll_interval": None})
    site = init_site(seed=args["seed"], num_threads=args["num_threads"], poll_interval=args["poll_interval"])
    _, splits = load_toy_site(resolve_site_config(site.site_name).data_dir, seed=site.seed)
    model = instantiate(args["model"])
    opt = torch.optim.Adam(model.parameters(), lr=args["lr"])
    x_tr, y_tr = splits["training"]
    events = os.environ["FEDXMODAL_TOY_EVENTS"]
    got = {}

    def on_task(task, fl_model):
        params = fl_model.params or {}
        peer = {k[len(PEER):]: params.pop(k) for k in [k for k in params if k.startswith(PEER)]}
        if task == "train":
            got.update(round=fl_model.current_round, peer_site=(fl_model.meta or {}).get("peer_site"),
                       peer={k: torch.as_tensor(v).clone() for k, v in peer.items()},
                       glob={k: torch.as_tensor(v).clone() for k, v in params.items()})

    def train(info):
        model.train()
        for i in range(0, len(x_tr), args["batch_size"]):
            loss = seg_loss(model(x_tr[i:i + args["batch_size"]]), y_tr[i:i + args["batch_size"]], 3)
            opt.zero_grad()
            loss.backward()
            opt.step()
        r = info.current_round
        torch.save(got, os.path.join(events, f"{site.site_name}_r{r}_received.pt"))
        torch.save({k: v.detach().clone() for k, v in model.state_dict().items()},
                   os.path.join(events, f"{site.site_name}_r{r}_sent.pt"))
        with open(os.path.join(events, f"{site.site_name}.jsonl"), "a") as f:
            f.write(json.dumps({"round": r, "peer_site": got.get("peer_site"), "n_peer": len(got.get("peer", {}))}) + "\n")
        return {"loss": float(loss)}

    @torch.no_grad()
    def score(split):
        model.eval()
        return mean_dice(model(splits[split][0]), splits[split][1], 3)

    run_client(train_fn=train, validate_fn=lambda: score("validation"), evaluate_fn=lambda: score("test"),
               get_weights=model.state_dict, set_weights=model.load_state_dict, n_train_items=len(x_tr),
               key_metric=args["key_metric"], site=site, on_task=on_task)


if __name__ == "__main__":
    main()
