"""The ``factory`` command's arguments (parsing only: the work is imported when a subcommand runs)."""

from __future__ import annotations

JOB_HELP = ("the phase-1 job folder, when --model is the NVFlare server's FL_global_model.pt (weights only); "
            "not needed for factory run's factory_model.pt")


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
    from .preflight import check_factory, command

    p = command(sub, "factory", "the federated multimodal data factory: phase 1 (run the federated GAN, sample, morph), "
                                "phase 2 (adapt)")
    fs = p.add_subparsers(dest="factory_command", required=True, metavar="SUBCOMMAND")
    s = command(fs, "run", "the phase-1 job in nvflare simulator, then quality curves and sample grids")
    s.add_argument("--data", required=True, help="folder holding the site folders")
    s.add_argument("--sites", nargs="+", default=["ct-site", "mr-site", "mr-t1-site"],
                   help="the phase-1 sites (their order is the site embedding's)")
    s.add_argument("--out", required=True, help="folder for the job, workspace, pictures, summary.json and "
                                                "factory_model.pt")
    s.add_argument("--rounds", type=int, help="FedAvg rounds (default: the job spec's, jobs/specs/factory.json)")
    s.add_argument("--local-steps", type=int, help="optimizer steps per site and round (default: the job spec's)")
    s.add_argument("--seed", type=int, default=0, help="network initialisation, site sampling and site seeds")
    s.add_argument("--no-key", action="store_true", help="ablation: no domain key in the condition")
    s.add_argument("--quick", action="store_true", help="2 rounds x 4 steps (a smoke run)")
    s.add_argument("--resume", action="store_true", help="continue an interrupted run in the same --out")
    s.set_defaults(func=cmd_factory, factory_func="run", check=check_factory)
    s = command(fs, "sample", "a grid of generated slices for one site")
    s.add_argument("--model", required=True, help="a data-factory generator: factory run's factory_model.pt, or the "
                                                   "server's FL_global_model.pt with --job")
    s.add_argument("--job", help=JOB_HELP)
    s.add_argument("--site", required=True, help="the phase-1 site whose condition to sample")
    s.add_argument("--n", type=int, default=16, help="slices generated")
    s.add_argument("--seed", type=int, default=0, help="noise seed (same seed, same slices)")
    s.add_argument("--data", help="the site's folder: condition on its domain key (run at the site)")
    s.add_argument("--out", required=True, help="PNG path")
    s.set_defaults(func=cmd_factory, factory_func="sample", check=check_factory)
    s = command(fs, "morph", "slices morphing from one site's condition to another's")
    s.add_argument("--model", required=True, help="a data-factory generator: factory run's factory_model.pt, or the "
                                                  "server's FL_global_model.pt with --job")
    s.add_argument("--job", help=JOB_HELP)
    s.add_argument("--sites", nargs=2, required=True, metavar=("A", "B"), help="the two phase-1 sites to morph between")
    s.add_argument("--steps", type=int, default=8, help="slices from A's condition to B's")
    s.add_argument("--seed", type=int, default=0, help="noise seed")
    s.add_argument("--out", required=True, help="PNG path")
    s.set_defaults(func=cmd_factory, factory_func="morph", check=check_factory)
    s = command(fs, "adapt", "phase 2 in nvflare simulator: the source branch, then every target adapts")
    s.add_argument("--factory-model", required=True,
                   help="phase 1's factory_model.pt, or its FL_global_model.pt with --job")
    s.add_argument("--job", help=JOB_HELP)
    s.add_argument("--data", required=True, help="folder holding the site folders")
    s.add_argument("--source", default="ct-site", help="the labelled source site (a phase-1 site)")
    s.add_argument("--targets", nargs="+", default=["mr-site", "mr-t1-site", "cect-site"],
                   help="target sites (three labelled volumes each; a site not in phase 1 may take part)")
    s.add_argument("--out", required=True, help="folder for the job, workspace, dice.md/.json and the targets' "
                                                "models (site_state/<site>/factory_adapt/target.pt)")
    s.add_argument("--steps", type=int, help="optimizer steps of each fit (default: the spec's, "
                                             "jobs/specs/factory_adapt.json)")
    s.add_argument("--seed", type=int, default=0, help="the sites' seed")
    s.add_argument("--quick", action="store_true", help="4 steps per fit (a smoke run)")
    s.add_argument("--allow-fewer", action="store_true",
                   help="a target with fewer than three labelled training volumes uses what it has (the real "
                        "CT/MR pair: two slabs per site) instead of failing")
    s.set_defaults(func=cmd_factory, factory_func="adapt", check=check_factory)
