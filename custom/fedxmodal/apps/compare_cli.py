"""The ``compare`` command's arguments (parsing only: the grid is imported when it runs)."""

from __future__ import annotations


def cmd_compare(args) -> int:
    from .compare import run_compare

    return run_compare(args)


def add_compare_parser(sub) -> None:
    from .preflight import DEVICE_HELP, check_compare, command

    s = command(sub, "compare", "the federated GIN paper's grid: every method x local/centralized/federated (nvflare "
                                 "simulator), same seed and budget per cell; resumable; table + chart")
    s.add_argument("--data", required=True, help="folder of site folders (written as a phantom if it has none)")
    s.add_argument("--task", choices=("abdomen", "heart"), default="abdomen", help="structure set")
    s.add_argument("--quick", action="store_true",
                   help="smoke run: 2 rounds x 1 epoch on a tiny phantom, Dice meaningless (7 min 16 s for the "
                        "28 abdomen cells on an idle 2-core CPU; more methods, more cells: docs/results.md)")
    s.add_argument("--rounds", type=int, help="federated rounds per cell (default 12, 2 with --quick; "
                                              "local/centralized cells train rounds x local epochs)")
    s.add_argument("--local-epochs", type=int, help="local epochs per round (default 1)")
    s.add_argument("--local-steps", type=int, help="steps per round of the step-based methods (one-shot, GAN; "
                                                   "default: their job's)")
    s.add_argument("--out", help="results folder (default: DATA/../compare-TASK[-quick])")
    s.add_argument("--methods", nargs="+", help="methods to compare (default: the grid's own list, the supervised "
                                                "methods; see the README)")
    s.add_argument("--regimes", nargs="+", choices=("local", "centralized", "federated"),
                   help="subset of regimes (default: all)")
    s.add_argument("--method-args", help='JSON: arguments per method, e.g. \'{"fedda": {"adv_weight": 0.003}}\'')
    s.add_argument("--seed", type=int, default=0, help="one seed (and the phantom's seed)")
    s.add_argument("--seeds", type=int, nargs="+", help="several seeds: the grid per seed in OUT/seed<k>/, then "
                                                         "mean +- sd per cell and differences vs the seed spread")
    s.add_argument("--device", default="auto", help=DEVICE_HELP)
    s.set_defaults(func=cmd_compare, check=check_compare)
