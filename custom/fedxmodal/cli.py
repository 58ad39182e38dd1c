"""``python -m fedxmodal <command>``: every user-facing command of the bundle.

Every wrong input is one line, ``error: ...``, exit status 2: the arguments and the input paths
are checked before torch, MONAI or NVFlare is imported (a missing file is reported at once), and a
model file of another kind than the command needs is named as such (``apps/checkpoints.py``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from .apps.preflight import (DEVICE_HELP, JOB_HELP, PHANTOM_SITES, SPLITS, HelpFormatter, check_convert,
                            check_data, check_demo, check_evaluate, check_export_bundle, check_segment,
                            check_superpixels, check_totalseg_pair, check_train, oneshot_methods, preflight,
                            train_method_help, train_methods)
from .apps.preflight import add_common_train as _add_common_train, add_task as _add_task, command as _command
from .apps.preflight import structures_of as _structures

DEFAULT_SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "totalseg-ct-mr"


def cmd_demo_data(args) -> int:
    from .data.phantom import DEFAULT_SITES, FACTORY_SITES, LATE_SITES, write_phantom_federation

    chosen = FACTORY_SITES + LATE_SITES if args.factory else (args.sites or DEFAULT_SITES)
    try:
        sites = write_phantom_federation(args.out, seed=args.seed, task=args.task, n_train=args.n_train,
                                         n_val=args.n_val, n_test=args.n_test, progress=not args.quiet, sites=chosen)
    except ValueError as exc:  # an unknown site name (the message lists the valid ones), negative counts
        print(f"error: demo-data: {exc}", file=sys.stderr)
        return 2
    for name, path in sites.items():
        print(f"{name}: {path}")
    if args.preview:
        from .apps.previews import save_sites_preview

        print(f"preview: {save_sites_preview(list(sites.values()), args.preview)}")
    return 0


def cmd_check_data(args) -> int:
    from .data.check import check_site

    structures = _structures(args) if (args.structures or args.task_given) else None
    bad = 0
    for site in args.site_dirs:
        report = check_site(site, structures, progress=not args.quiet)
        print(report.render())
        bad += not report.ok
    return 1 if bad else 0


def cmd_convert(args) -> int:
    from .data import converters

    fn = {"amos": converters.convert_amos, "chaos": converters.convert_chaos,
          "totalseg": converters.convert_totalseg}[args.dataset]
    for name, path in fn(args.src, args.out, seed=args.seed).items():
        print(f"{name}: {path}")
    return 0


def _train_config(args):
    from .engine.supervised import TrainConfig

    return TrainConfig(method=args.method, method_args=json.loads(args.method_args), batch_size=args.batch_size,
                       lr=args.lr, seed=args.seed)


def cmd_train(args) -> int:
    methods = train_methods()
    if args.method not in methods:
        print(f"error: train: --method {args.method}: not a method train runs; choose from {', '.join(methods)}",
              file=sys.stderr)
        return 2
    if args.regime not in methods[args.method]:
        print(f"error: train: --method {args.method} trains with --regime {' or '.join(methods[args.method])} only "
              "(it needs two domains)", file=sys.stderr)
        return 2
    from .data.preprocess import PreprocessConfig
    from .apps.regimes import train_regime

    res = train_regime(args.regime, args.sites, _structures(args), args.out, epochs=args.epochs,
                       eval_sites=args.eval_sites, train=_train_config(args),
                       preprocess=PreprocessConfig(spacing=args.spacing, size=args.size), device=args.device)
    print((Path(args.out) / "evaluation_best.md").read_text())
    print(f"results: {Path(args.out) / 'results.json'} ({res['seconds']:.0f} s)")
    return 0


def cmd_evaluate(args) -> int:
    from .apps.checkpoints import inspect_model, load_checked, require

    infos = {ckpt: require(inspect_model(ckpt, args.job), "evaluate") for ckpt in args.model}  # before any work
    from .data.slices import SiteSlices
    from .metrics.report import cross_modality_matrix, write_evaluation

    out = Path(args.out)
    matrix = {}
    for ckpt in args.model:
        engine, _ = load_checked(ckpt, args.job, "evaluate", device=args.device, info=infos[ckpt])
        sites = [SiteSlices(s, engine.structures, engine.preprocess) for s in args.site_dirs]
        evals = [engine.evaluate(s, args.split, hd95=args.hd95, progress=True) for s in sites]
        name = Path(ckpt).stem if len(args.model) > 1 else "evaluation"
        js, md = write_evaluation(evals, out / name, title=f"{Path(ckpt).name} on {args.split}")
        print(md.read_text())
        print(f"tables: {md}, {js}")
        matrix[Path(ckpt).name] = evals
        if args.overlays:
            from .apps.overlay import write_case_overlays

            folder = Path(args.overlays) / (Path(ckpt).stem if len(args.model) > 1 else "")
            pngs = [p for s in sites for p in write_case_overlays(engine, s, args.split, folder)]
            print(f"{len(pngs)} overlays (prediction filled, reference dashed): {folder}")
    if len(args.site_dirs) > 1:
        text = "# Cross-modality matrix (mean 3D Dice)\n\n" + cross_modality_matrix(matrix)
        (out / "cross_modality.md").write_text(text)
        print(text)
    return 0


def cmd_segment(args) -> int:
    if args.support:
        from .apps.support_segment import segment_with_support

        try:
            segment_with_support(args.image, args.model, *args.support, args.structure, args.out,
                                 label_id=args.support_label_id, modality=args.modality,
                                 support_modality=args.support_modality, overlay=args.overlay, prior=args.prior,
                                 device=args.device, job_dir=args.job)
        except ValueError as exc:  # a label id not in the support, another kind of model, ...
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"mask: {args.out}" + (f", overlay: {args.overlay}" if args.overlay else ""))
        return 0
    from .apps.segment import segment_file

    written: dict = {}
    segment_file(args.image, args.model, args.out, modality=args.modality, overlay=args.overlay, device=args.device,
                 job_dir=args.job, written=written)
    for kind, label in (("nifti", "mask"), ("seg", "DICOM SEG")):
        if kind in written:
            print(f"{label}: {written[kind]}")
    if args.overlay:
        print(f"overlay: {args.overlay}")
    return 0


def cmd_export_bundle(args) -> int:
    from .apps.bundle import export_bundle
    from .apps.checkpoints import ModelError

    try:
        out = export_bundle(args.model, args.out, job_dir=args.job, modality=args.modality)
    except ModelError:
        raise  # one line of its own: "error: MODEL is a ... model"
    except ValueError as exc:
        print(f"error: export-bundle: {exc}", file=sys.stderr)
        return 2
    cfg = (out / "configs" / "inference.json").resolve()
    how = (f"modality {args.modality}" if args.modality else
           "modality auto: CT where the image holds Hounsfield air (< -500), else MR")
    print(f"MONAI bundle: {out} ({how})\nrun it with a Python that has MONAI, PyTorch, nibabel and python-fire "
          f"(here: .venv/bin/python):\n  python -m monai.bundle run --config_file {cfg} --image IMAGE.nii.gz "
          f"[--modality CT|MR] [--output_dir DIR]")
    return 0


def cmd_superpixels(args) -> int:
    from .data.preprocess import PreprocessConfig
    from .data.slices import SiteSlices
    from .methods import DEFAULT_ONESHOT_METHOD, build_method

    if args.method and args.method not in oneshot_methods():
        print(f"error: superpixels: --method {args.method}: not a self-supervised one-shot method; choose from "
              f"{', '.join(oneshot_methods())}", file=sys.stderr)
        return 2
    method = build_method(args.method or DEFAULT_ONESHOT_METHOD)
    for i, site_dir in enumerate(args.site_dirs):
        site = SiteSlices(site_dir, (), PreprocessConfig(spacing=args.spacing, size=args.size), progress=not args.quiet)
        out = Path(args.out) if len(args.site_dirs) == 1 else Path(args.out).with_name(
            f"{Path(args.out).stem}_{site.name}{Path(args.out).suffix}")
        print(f"{site.name}: {method.preview_pseudo_labels(site, out, split=args.split, n_slices=args.n)}")
    return 0


def cmd_totalseg_pair(args) -> int:
    from .data.sites import TOTALSEG_ABDOMEN_LABELS, write_slab_site

    real = ("ct-site", "mr-site")
    extra = tuple(dict.fromkeys(args.with_phantom_sites or ()))
    if set(extra) & set(real):
        print(f"error: totalseg-pair: --with-phantom-sites {' '.join(sorted(set(extra) & set(real)))}: those "
              "folders hold the real pair; choose among the other phantom sites (e.g. mr-t1-site cect-site)",
              file=sys.stderr)
        return 2
    src = Path(args.src)
    for site, mod, sub in (("ct-site", "CT", "ct"), ("mr-site", "MR", "mr")):
        d = write_slab_site(src / sub / f"{sub}.nii.gz", src / sub / "seg.nii.gz", Path(args.out) / site, mod,
                            TOTALSEG_ABDOMEN_LABELS, name=site)
        print(f"{site}: {d} ({json.loads((d / 'dataset.json').read_text())['description']})")
    if extra:
        from .data.phantom import write_phantom_federation

        try:
            written = write_phantom_federation(args.out, seed=args.seed, task="abdomen", sites=extra,
                                               progress=False)
        except ValueError as exc:
            print(f"error: totalseg-pair: {exc}", file=sys.stderr)
            return 2
        for name, path in written.items():
            print(f"{name}: {path} (procedural phantom, abdomen, seed {args.seed})")
    return 0


def cmd_demo(args) -> int:
    from .apps.demo import run_demo

    return run_demo(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fedxmodal", description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level (default: warnings only)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = _command(sub, "demo-data", "write the procedural phantom federation (ct-site, mr-site; --sites / --factory: "
                                   "also mr-t1-site, cect-site)")
    s.add_argument("--out", required=True, help="folder for the site folders (DIR/ct-site, DIR/mr-site, ...)")
    s.add_argument("--seed", type=int, default=0, help="phantom seed (same seed, same volumes)")
    s.add_argument("--task", choices=("abdomen", "heart"), default="abdomen", help="structures drawn")
    s.add_argument("--n-train", type=int, default=6, help="training volumes per site")
    s.add_argument("--n-val", type=int, default=2, help="validation volumes per site")
    s.add_argument("--n-test", type=int, default=3, help="test volumes per site")
    which = s.add_mutually_exclusive_group()
    which.add_argument("--sites", nargs="+", metavar="SITE",
                       help="site folders to write, among ct-site (CT), mr-site (T2-like MR), mr-t1-site "
                            "(T1-like MR), cect-site (portal-venous CT); default: ct-site mr-site")
    which.add_argument("--factory", action="store_true", help="all four: the data factory's phase-1 sites "
                                                              "ct-site mr-site mr-t1-site + the late cect-site")
    s.add_argument("--preview", metavar="PNG", help="also write one axial slice per site, side by side, with the "
                                                    "label contours, orientation letters and a colour key")
    s.add_argument("--quiet", action="store_true", help="no progress bars")
    s.set_defaults(func=cmd_demo_data)

    s = _command(sub, "check-data", "check site folders and report every problem (exit 1 if any)")
    s.add_argument("site_dirs", nargs="+", help="site folders (with dataset.json)")
    _add_task(s)
    s.add_argument("--quiet", action="store_true", help="no progress bars")
    s.set_defaults(func=cmd_check_data, check=check_data)

    s = _command(sub, "convert", "convert a public data set to site folders split by modality")
    s.add_argument("dataset", choices=("amos", "chaos", "totalseg"), help="which data set SRC holds")
    s.add_argument("src", help="the data set's folder as downloaded")
    s.add_argument("--out", required=True, help="folder for the site folders")
    s.add_argument("--seed", type=int, default=0, help="seed of the training/validation/test split")
    s.set_defaults(func=cmd_convert, check=check_convert)

    s = _command(sub, "train", "train with --regime local (one site) or centralized (pooled sites)")
    s.add_argument("--regime", choices=("local", "centralized"), required=True,
                   help="local: one site alone; centralized: the sites' training slices pooled (federated runs go "
                        "through NVFlare: see the README)")
    s.add_argument("--sites", nargs="+", required=True, help="site folders to train on")
    s.add_argument("--eval-sites", nargs="+", help="site folders to test on (default: the training sites)")
    s.add_argument("--out", required=True, help="folder for best_model.pt, final_model.pt, evaluation tables, tb/")
    s.add_argument("--epochs", type=int, default=10, help="training epochs")
    s.add_argument("--method", default="gin", metavar="METHOD", help="the supervised method").lazy_help = \
        train_method_help
    s.add_argument("--method-args", default="{}", help='JSON, e.g. \'{"shared_across_batch": true}\' (FedGIN\'s GIN)')
    _add_common_train(s)
    _add_task(s)
    s.set_defaults(func=cmd_train, check=check_train)

    s = _command(sub, "evaluate", "per-volume, per-structure 3D Dice of segmentation model(s) on site splits")
    s.add_argument("--model", nargs="+", required=True, metavar="CKPT",
                   help="segmentation model checkpoint(s); site folders may come before or after")
    s.add_argument("site_dirs", nargs="*", help="site folders (with dataset.json)")
    s.add_argument("--split", choices=SPLITS, default="test", help="which split of each site")
    s.add_argument("--out", default="evaluation",
                   help="folder for the tables (evaluation.md/.json; one sub-folder per model for several)")
    s.add_argument("--hd95", action="store_true", help="also the 95th-percentile Hausdorff distance (mm; slower)")
    s.add_argument("--overlays", metavar="DIR", help="also write one PNG per volume: prediction over the image "
                                                     "(reference dashed), axial + coronal, radiological view")
    s.add_argument("--job", help=JOB_HELP)
    s.add_argument("--device", default="auto", help=DEVICE_HELP)
    s.set_defaults(func=cmd_evaluate, check=check_evaluate)

    s = _command(sub, "segment", "segment a NIfTI file or DICOM series (with a segmentation model, or one-shot "
                                 "from --support with a one-shot model); the mask is in the input's geometry")
    s.add_argument("image", help="NIfTI file or DICOM series folder")
    s.add_argument("--model", required=True,
                   help="model file: a segmentation checkpoint (e.g. demo/results/fedgin_best_model.pt), a one-shot "
                        "model with --support, or an NVFlare global model with --job")
    s.add_argument("--out", required=True, help="mask path: .nii.gz (for a DICOM series also a DICOM SEG beside it, "
                                                "mask.dcm) or .dcm (DICOM SEG only)")
    s.add_argument("--modality", choices=("CT", "MR"), help="default: the DICOM tag, else guessed from intensities "
                                                           "(Hounsfield air values below -500: CT)")
    s.add_argument("--overlay", metavar="PNG", help="also write a PNG overlay (axial + coronal, radiological view)")
    s.add_argument("--job", help=JOB_HELP)
    s.add_argument("--device", default="auto", help=DEVICE_HELP)
    s.add_argument("--support", nargs=2, metavar=("SUPPORT_IMAGE", "SUPPORT_LABEL"),
                   help="one-shot: segment --structure from this ONE labelled example (a one-shot model, "
                        "e.g. jobs/fedcowpro's); any modality")
    s.add_argument("--structure", help="with --support: the structure's canonical name (e.g. liver, kidney_right)")
    s.add_argument("--support-label-id", type=int, help="with --support: the structure's value in SUPPORT_LABEL "
                                                        "(default: its only non-zero value)")
    s.add_argument("--support-modality", choices=("CT", "MR"), help="with --support: default guessed like --modality")
    s.add_argument("--prior", action="store_true", help="with --support: keep the structure's side of the patient")
    s.set_defaults(func=cmd_segment, check=check_segment)

    s = _command(sub, "export-bundle", "write a segmentation model as a MONAI bundle (metadata.json, inference.json, "
                                       "weights) that `python -m monai.bundle run` runs without fedxmodal")
    s.add_argument("--model", required=True, help="a 2D U-Net segmentation checkpoint, or an NVFlare global model "
                                                  "with --job")
    s.add_argument("--job", help=JOB_HELP)
    s.add_argument("--out", required=True, help="bundle folder (its configs/, models/, docs/ are replaced)")
    s.add_argument("--modality", choices=("CT", "MR"),
                   help="the bundle's default modality; default: auto, guessed per image as `segment` does "
                        "(Hounsfield air values below -500: CT, else MR); `--modality` at run time overrides it")
    s.set_defaults(func=cmd_export_bundle, check=check_export_bundle)

    s = _command(sub, "superpixels", "render a site's superpixel pseudo-labels (self-supervised methods) on a few "
                                     "slices as a PNG; computes and caches them in the site folder")
    s.add_argument("site_dirs", nargs="+", help="site folders (with dataset.json)")
    s.add_argument("--out", required=True, help="PNG path (one per site: <stem>_<site>.png for several sites)")
    s.add_argument("--n", type=int, default=4, help="slices shown")
    s.add_argument("--split", choices=SPLITS, default="training", help="which split's slices")
    s.add_argument("--method", help="the self-supervised method whose pseudo-labels to show").lazy_help = \
        lambda: (f"the self-supervised method whose pseudo-labels to show, one of: {', '.join(oneshot_methods())} "
                 "(default: jobs/fedcowpro's)")
    s.add_argument("--spacing", type=float, default=3.0, help="in-plane spacing (mm), as the job's preprocessing")
    s.add_argument("--size", type=int, default=128, help="slice size (pixels), as the job's preprocessing")
    s.add_argument("--quiet", action="store_true", help="no progress bars")
    s.set_defaults(func=cmd_superpixels, check=check_superpixels)

    s = _command(sub, "demo", "the main job: phantom data -> FedGIN in nvflare simulator -> evaluation "
                              "(DIR/results: Dice tables, learning curve, overlays, fedgin_best_model.pt)")
    s.add_argument("--workdir", default="demo", help="folder for data/, jobs/, workspace/ and results/")
    s.add_argument("--rounds", type=int, default=None, help="FedAvg rounds (default: the job spec's, 2 with --quick)")
    s.add_argument("--quick", action="store_true", help="tiny settings (CI smoke run)")
    s.add_argument("--seed", type=int, default=0, help="phantom, network initialisation and site seeds")
    s.add_argument("--data", help="use these site folders (DATA/ct-site, DATA/mr-site) instead of the phantom")
    s.add_argument("--local-epochs", type=int, default=None,
                   help="local epochs per round (default: the job spec's, 3 with --quick)")
    s.add_argument("--lr-schedule", choices=["constant", "cosine"], default=None,
                   help="the sites' learning-rate schedule over the job (default: the job spec's)")
    s.add_argument("--warmup", type=float, default=None, help="with --lr-schedule cosine: linear warm-up, a "
                   "fraction of the job (default: the job spec's)")
    s.add_argument("--fp32", action="store_true", help="train in float32 (default: mixed precision where the "
                                                       "device has it: CPU bfloat16, CUDA float16)")
    s.set_defaults(func=cmd_demo, check=check_demo)

    from .apps.compare_cli import add_compare_parser

    add_compare_parser(sub)

    s = _command(sub, "totalseg-pair", "site folders over the real TotalSegmentator CT/MR pair "
                                       "(each volume split into disjoint axial slabs)")
    s.add_argument("--src", default=str(DEFAULT_SHARED),
                   help="folder holding ct/ct.nii.gz, ct/seg.nii.gz, mr/mr.nii.gz, mr/seg.nii.gz")
    s.add_argument("--out", required=True, help="folder for ct-site/ and mr-site/ (and the phantom sites)")
    s.add_argument("--with-phantom-sites", nargs="+", metavar="SITE", choices=PHANTOM_SITES,
                   help="also write these procedural phantom sites (abdomen) into OUT, e.g. mr-t1-site cect-site: "
                        "a federation of two real domains + phantom ones")
    s.add_argument("--seed", type=int, default=0, help="the phantom sites' seed")
    s.set_defaults(func=cmd_totalseg_pair, check=check_totalseg_pair)

    from .apps.factory_cli import add_factory_parser

    add_factory_parser(sub)
    from .apps.run import add_run_parser  # run: any job as its NVFlare Recipe in SimEnv / PocEnv / ProdEnv

    add_run_parser(sub)
    return p


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.task_given = "--task" in argv
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    name = " ".join(x for x in (args.command, getattr(args, "factory_command", None)) if x)
    problem = preflight(args)
    if problem:
        print(f"error: {name}: {problem}", file=sys.stderr)
        return 2
    from .apps.checkpoints import ModelError
    from .data.errors import DataError

    try:
        return int(args.func(args) or 0)
    except (DataError, ModelError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
