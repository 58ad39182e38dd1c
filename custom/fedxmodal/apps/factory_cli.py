"""The ``factory`` command's arguments (parsing only: the work is imported when a subcommand runs)."""

from __future__ import annotations


def cmd_factory(args) -> int:
    import sys

    from . import factory

    try:
        funcs = {"run": factory.run, "sample": factory.sample, "morph": factory.morph, "adapt": factory.adapt}
        return funcs[args.factory_func](args)
    except ValueError as exc:  # an unknown site, a checkpoint of another kind: one line naming it
        print(f"error: {exc}", file=sys.stderr)
        return 2


def add_factory_parser(sub) -> None:
    p = sub.add_parser("factory", help="the data factory (seed 002): phase 1 (run the federated GAN, sample, morph), phase 2 (adapt)")
    fs = p.add_subparsers(dest="factory_command", required=True)
    s = fs.add_parser("run", help="the phase-1 job in nvflare simulator, then quality curves and sample grids")
    s.add_argument("--data", required=True, help="folder holding the site folders")
    s.add_argument("--sites", nargs="+", default=["ct-site", "mr-site", "mr-t1-site"])
    s.add_argument("--out", required=True)
    s.add_argument("--rounds", type=int)
    s.add_argument("--local-steps", type=int)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--no-key", action="store_true", help="ablation: no domain key in the condition")
    s.add_argument("--quick", action="store_true", help="2 rounds x 4 steps (a smoke run)")
    s.add_argument("--resume", action="store_true", help="continue an interrupted run in the same --out")
    s.set_defaults(func=cmd_factory, factory_func="run")
    s = fs.add_parser("sample", help="a grid of generated slices for one site")
    s.add_argument("--model", required=True, help="a factory checkpoint, or the server's FL_global_model.pt with --job")
    s.add_argument("--job", help="the job folder of an NVFlare global model")
    s.add_argument("--site", required=True)
    s.add_argument("--n", type=int, default=16)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--data", help="the site's folder: condition on its domain key (run at the site)")
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_factory, factory_func="sample")
    s = fs.add_parser("morph", help="slices morphing from one site's condition to another's")
    s.add_argument("--model", required=True)
    s.add_argument("--job")
    s.add_argument("--sites", nargs=2, required=True)
    s.add_argument("--steps", type=int, default=8)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_factory, factory_func="morph")
    s = fs.add_parser("adapt", help="phase 2 in nvflare simulator: the source branch, then every target adapts")
    s.add_argument("--factory-model", required=True,
                   help="phase 1's factory_model.pt, or its FL_global_model.pt with --job")
    s.add_argument("--job", help="the phase-1 job folder of an NVFlare global model")
    s.add_argument("--data", required=True, help="folder holding the site folders")
    s.add_argument("--source", default="ct-site", help="the labelled source site (a phase-1 site)")
    s.add_argument("--targets", nargs="+", default=["mr-site", "mr-t1-site", "cect-site"],
                   help="target sites (three labelled volumes each; a site not in phase 1 may take part)")
    s.add_argument("--out", required=True)
    s.add_argument("--steps", type=int, help="optimizer steps of each fit (default: the spec's)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--quick", action="store_true", help="4 steps per fit (a smoke run)")
    s.add_argument("--allow-fewer", action="store_true",
                   help="a target with fewer than three labelled training volumes uses what it has (the real "
                        "CT/MR pair: two slabs per site) instead of failing")
    s.set_defaults(func=cmd_factory, factory_func="adapt")
