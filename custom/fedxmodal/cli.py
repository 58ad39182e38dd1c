"""``python -m fedxmodal <command>``: every user-facing command of the bundle."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path


def _structures(args) -> tuple[str, ...]:
    from .data.contract import TASK_STRUCTURES

    if getattr(args, "structures", None):
        return tuple(s.strip() for s in args.structures.split(",") if s.strip())
    return TASK_STRUCTURES[args.task]


def _add_task(p) -> None:
    p.add_argument("--task", choices=("abdomen", "heart"), default="abdomen",
                   help="structure set: abdomen (liver, kidneys, spleen, pancreas, gallbladder) or heart")
    p.add_argument("--structures", help="comma-separated canonical structure names (overrides --task)")


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
    from .data.preprocess import PreprocessConfig
    from .apps.regimes import train_regime

    res = train_regime(args.regime, args.sites, _structures(args), args.out, epochs=args.epochs,
                       eval_sites=args.eval_sites, train=_train_config(args),
                       preprocess=PreprocessConfig(spacing=args.spacing, size=args.size), device=args.device)
    print((Path(args.out) / "evaluation_best.md").read_text())
    print(f"results: {Path(args.out) / 'results.json'} ({res['seconds']:.0f} s)")
    return 0


def cmd_evaluate(args) -> int:
    from .data.slices import SiteSlices
    from .apps.models import load_model
    from .metrics.report import cross_modality_matrix, write_evaluation

    try:
        from .apps.models import split_models_and_sites

        args.model, args.site_dirs = split_models_and_sites(args.model, args.site_dirs)
    except ValueError as exc:
        print(f"error: evaluate: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    matrix = {}
    for ckpt in args.model:
        engine = load_model(ckpt, args.job, device=args.device)
        sites = [SiteSlices(s, engine.structures, engine.preprocess) for s in args.site_dirs]
        evals = [engine.evaluate(s, args.split, hd95=args.hd95, progress=True) for s in sites]
        name = Path(ckpt).stem if len(args.model) > 1 else "evaluation"
        js, md = write_evaluation(evals, out / name, title=f"{Path(ckpt).name} on {args.split}")
        print(md.read_text())
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

        if not args.structure:
            print("error: --support needs --structure (the structure the support label outlines)", file=sys.stderr)
            return 2
        try:
            segment_with_support(args.image, args.model, *args.support, args.structure, args.out,
                                 label_id=args.support_label_id, modality=args.modality,
                                 support_modality=args.support_modality, overlay=args.overlay, prior=args.prior,
                                 device=args.device, job_dir=args.job)
        except ValueError as exc:  # a label id not in the support, a supervised model, ...
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"mask: {args.out}" + (f", overlay: {args.overlay}" if args.overlay else ""))
        return 0
    from .apps.segment import output_paths, segment_file

    paths = output_paths(args.image, args.out)
    segment_file(args.image, args.model, args.out, modality=args.modality, overlay=args.overlay, device=args.device,
                 job_dir=args.job)
    for kind, label in (("nifti", "mask"), ("seg", "DICOM SEG")):
        if kind in paths:
            print(f"{label}: {paths[kind]}")
    if args.overlay:
        print(f"overlay: {args.overlay}")
    return 0


def cmd_export_bundle(args) -> int:
    from .apps.bundle import export_bundle

    try:
        out = export_bundle(args.model, args.out, job_dir=args.job, modality=args.modality)
    except ValueError as exc:
        print(f"error: export-bundle: {exc}", file=sys.stderr)
        return 2
    cfg = (out / "configs" / "inference.json").resolve()
    print(f"MONAI bundle: {out}\nrun it: python -m monai.bundle run --config_file {cfg} --image IMAGE.nii.gz "
          f"[--modality CT|MR] [--output_dir DIR]")
    return 0


def cmd_superpixels(args) -> int:
    from .data.preprocess import PreprocessConfig
    from .data.slices import SiteSlices
    from .methods import DEFAULT_ONESHOT_METHOD, build_method

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


def cmd_compare(args) -> int:
    from .apps.compare import run_compare

    return run_compare(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fedxmodal", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("demo-data", help="write the procedural phantom federation (ct-site, mr-site; "
                                         "--sites / --factory: also mr-t1-site, cect-site)")
    s.add_argument("--out", required=True)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--task", choices=("abdomen", "heart"), default="abdomen")
    s.add_argument("--n-train", type=int, default=6)
    s.add_argument("--n-val", type=int, default=2)
    s.add_argument("--n-test", type=int, default=3)
    which = s.add_mutually_exclusive_group()
    which.add_argument("--sites", nargs="+", metavar="SITE",
                       help="site folders to write, among ct-site (CT), mr-site (T2-like MR), mr-t1-site "
                            "(T1-like MR), cect-site (portal-venous CT); default: ct-site mr-site")
    which.add_argument("--factory", action="store_true", help="all four: the data factory's phase-1 sites "
                                                              "ct-site mr-site mr-t1-site + the late cect-site")
    s.add_argument("--preview", metavar="PNG", help="also write one mid-slice per site, side by side, with the "
                                                    "label contours")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_demo_data)

    s = sub.add_parser("check-data", help="check site folders and report every problem (exit 1 if any)")
    s.add_argument("site_dirs", nargs="+")
    _add_task(s)
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_check_data)

    s = sub.add_parser("convert", help="convert a public data set to site folders split by modality")
    s.add_argument("dataset", choices=("amos", "chaos", "totalseg"))
    s.add_argument("src")
    s.add_argument("--out", required=True)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_convert)

    s = sub.add_parser("train", help="train with --regime local (one site) or centralized (pooled sites)")
    s.add_argument("--regime", choices=("local", "centralized"), required=True)
    s.add_argument("--sites", nargs="+", required=True, help="site folders to train on")
    s.add_argument("--eval-sites", nargs="+", help="site folders to test on (default: the training sites)")
    s.add_argument("--out", required=True)
    s.add_argument("--epochs", type=int, default=10)
    s.add_argument("--method", default="gin", help="none | gin | gin_ipa")
    s.add_argument("--method-args", default="{}", help='JSON, e.g. \'{"shared_across_batch": true}\' (FedGIN\'s GIN)')
    _add_common_train(s)
    _add_task(s)
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("evaluate", help="per-volume, per-structure 3D Dice of model(s) on site test splits")
    s.add_argument("--model", nargs="+", required=True, help="checkpoint(s); site folders may come before or after")
    s.add_argument("site_dirs", nargs="*", help="site folders (with dataset.json)")
    s.add_argument("--split", default="test")
    s.add_argument("--out", default="evaluation")
    s.add_argument("--hd95", action="store_true")
    s.add_argument("--overlays", metavar="DIR", help="also write one PNG per volume: prediction over the image "
                                                     "(reference dashed), axial + coronal, radiological view")
    s.add_argument("--job", help="job folder, when --model is an NVFlare global model (FL_global_model.pt)")
    s.add_argument("--device", default="auto")
    s.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("segment", help="segment a NIfTI file or DICOM series (with a supervised model, or one-shot "
                                       "from --support); the mask is in the input's geometry")
    s.add_argument("image", help="NIfTI file or DICOM series folder")
    s.add_argument("--model", required=True)
    s.add_argument("--out", required=True, help="mask path: .nii.gz (for a DICOM series also a DICOM SEG beside it, "
                                                "mask.dcm) or .dcm (DICOM SEG only)")
    s.add_argument("--modality", choices=("CT", "MR"), help="default: the DICOM tag, else guessed from intensities")
    s.add_argument("--overlay", help="also write a PNG overlay (axial + coronal, radiological view)")
    s.add_argument("--job", help="job folder, when --model is an NVFlare global model (FL_global_model.pt)")
    s.add_argument("--device", default="auto")
    s.add_argument("--support", nargs=2, metavar=("SUPPORT_IMAGE", "SUPPORT_LABEL"),
                   help="one-shot: segment --structure from this ONE labelled example (a few-shot model, "
                        "e.g. jobs/fedcowpro's); any modality")
    s.add_argument("--structure", help="with --support: the structure's name (e.g. liver)")
    s.add_argument("--support-label-id", type=int, help="with --support: the structure's value in SUPPORT_LABEL "
                                                        "(default: its only non-zero value)")
    s.add_argument("--support-modality", choices=("CT", "MR"), help="default: guessed like --modality")
    s.add_argument("--prior", action="store_true", help="with --support: keep the structure's side of the patient")
    s.set_defaults(func=cmd_segment)

    s = sub.add_parser("export-bundle", help="write the model as a MONAI bundle (metadata.json, inference.json, "
                                             "weights) that `python -m monai.bundle run` runs with MONAI alone")
    s.add_argument("--model", required=True, help="checkpoint")
    s.add_argument("--job", help="job folder, when --model is an NVFlare global model (FL_global_model.pt)")
    s.add_argument("--out", required=True, help="bundle folder")
    s.add_argument("--modality", choices=("CT", "MR"), default="CT",
                   help="default modality of inference.json (override at run time with --modality)")
    s.set_defaults(func=cmd_export_bundle)

    s = sub.add_parser("superpixels", help="render a site's superpixel pseudo-labels (self-supervised methods) on "
                                           "a few slices as a PNG; computes and caches them in the site folder")
    s.add_argument("site_dirs", nargs="+")
    s.add_argument("--out", required=True, help="PNG path (one per site: <stem>_<site>.png for several sites)")
    s.add_argument("--n", type=int, default=4, help="slices shown")
    s.add_argument("--split", default="training")
    s.add_argument("--method", help="the self-supervised method whose pseudo-labels to show (default: the job's)")
    s.add_argument("--spacing", type=float, default=3.0, help="in-plane spacing (mm), as the job's preprocessing")
    s.add_argument("--size", type=int, default=128, help="slice size (pixels), as the job's preprocessing")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_superpixels)

    s = sub.add_parser("demo", help="the main job: phantom data -> FedGIN in nvflare simulator -> evaluation")
    s.add_argument("--workdir", default="demo")
    s.add_argument("--rounds", type=int, default=None)
    s.add_argument("--quick", action="store_true", help="tiny settings (CI smoke run)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--data", help="use these site folders (DATA/ct-site, DATA/mr-site) instead of the phantom")
    s.add_argument("--local-epochs", type=int, default=None)
    s.add_argument("--lr-schedule", choices=["constant", "cosine"], default=None,
                   help="the sites' learning-rate schedule over the job (default: the job spec's)")
    s.add_argument("--warmup", type=float, default=None, help="with --lr-schedule cosine: linear warm-up, a "
                   "fraction of the job")
    s.add_argument("--fp32", action="store_true", help="train in float32 (default: mixed precision where the "
                                                       "device has it: CPU bfloat16, CUDA float16)")
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("compare", help="seed 000's grid: every method x local/centralized/federated (nvflare "
                                       "simulator), same seed and budget per cell; resumable; table + chart")
    s.add_argument("--data", required=True, help="folder of site folders (written as a phantom if it has none)")
    s.add_argument("--task", choices=("abdomen", "heart"), default="abdomen")
    s.add_argument("--quick", action="store_true", help="small budget (and small phantom): ~10 min on 2 cores")
    s.add_argument("--rounds", type=int, help="federated rounds per cell (default 12; local/centralized cells "
                                              "train rounds x local epochs)")
    s.add_argument("--local-epochs", type=int, help="local epochs per round (default 1)")
    s.add_argument("--out", help="results folder (default: DATA/../compare-TASK[-quick])")
    s.add_argument("--methods", nargs="+", help="subset of methods (default: all)")
    s.add_argument("--regimes", nargs="+", choices=("local", "centralized", "federated"),
                   help="subset of regimes (default: all)")
    s.add_argument("--method-args", help='JSON: arguments per method, e.g. \'{"fedda": {"adv_weight": 0.003}}\'')
    s.add_argument("--seed", type=int, default=0, help="one seed (and the phantom's seed)")
    s.add_argument("--seeds", type=int, nargs="+", help="several seeds: the grid per seed in OUT/seed<k>/, then "
                                                         "mean +- sd per cell and differences vs the seed spread")
    s.add_argument("--device", default="auto")
    s.set_defaults(func=cmd_compare)

    s = sub.add_parser("totalseg-pair", help="site folders over the real TotalSegmentator CT/MR pair "
                                             "(each volume split into disjoint axial slabs)")
    s.add_argument("--src", default=str(Path(__file__).resolve().parents[2].parent / "shared" / "data" / "totalseg-ct-mr"))
    s.add_argument("--out", required=True)
    s.add_argument("--with-phantom-sites", nargs="+", metavar="SITE",
                   help="also write these procedural phantom sites (abdomen) into OUT, e.g. mr-t1-site cect-site: "
                        "a federation of two real domains + phantom ones")
    s.add_argument("--seed", type=int, default=0, help="the phantom sites' seed")
    s.set_defaults(func=cmd_totalseg_pair)

    from .apps.factory_cli import add_factory_parser

    add_factory_parser(sub)
    from .apps.run import add_run_parser  # run: any job as its NVFlare Recipe in SimEnv / PocEnv / ProdEnv

    add_run_parser(sub)
    return p


def _add_common_train(s) -> None:
    s.add_argument("--batch-size", type=int, default=16)
    s.add_argument("--lr", type=float, default=1e-3)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--spacing", type=float, default=3.0, help="in-plane spacing (mm)")
    s.add_argument("--size", type=int, default=128, help="slice size (pixels)")
    s.add_argument("--device", default="auto")


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.task_given = "--task" in argv
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from .data.errors import DataError

    try:
        return int(args.func(args) or 0)
    except (DataError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
