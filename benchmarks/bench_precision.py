"""Mixed precision on this machine: training throughput (slices/s) of every trainer style in
float32 and in its mixed-precision mode (CPU: bfloat16 autocast where the CPU has it; CUDA: float16
AMP), measured in ONE run, variants interleaved (A B A B ..., order alternated), medians reported.

    .venv/bin/python benchmarks/bench_precision.py [--threads 1 2] [--reps 7] [--size 128] [--out p.json]

The FedGIN job's network (16-32-64-128 U-Net) and batch size 16 on 128x128 slices (random
intensities, blob labels: throughput does not depend on content). Trainers measured:
``supervised:gin`` and ``supervised:none`` (SupervisedTrainer, with and without GIN),
``adversarial:fedda`` (AdversarialTrainer: a segmentation and a discriminator step per batch) and
``episodic:fedcowpro`` (EpisodicTrainer, the fedcowpro job's encoder, 4 episodes per step; figure
in episodes/s), ``gan:data_factory`` (GanTrainer, the factory job's conditional GAN at 64 px, batch
8: one D step, one G step, the EMA update per batch, lazy R1 / path length as in training) and
``adaptation:target`` (AdaptationTrainer, the factory_adapt job's encoder and head on an untrained
generator of the factory's settings, batch 8: a target adaptation step -- reconstruction, cycle
through the source domain, source-like samples labelled by a source branch, three labelled slices).
A figure, not a test; run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path


def supervised(method: str, amp: bool, size: int, n: int, device: str):
    import torch

    from fedxmodal.engine.base import SliceData
    from fedxmodal.engine.supervised import TrainConfig
    from fedxmodal.methods import build_trainer

    torch.manual_seed(0)
    x = torch.randn(n, 1, size, size)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    blob = ((yy - size // 2) ** 2 + (xx - size // 2) ** 2 < (size // 5) ** 2).to(torch.uint8)
    y = blob.expand(n, size, size).clone()
    trainer = build_trainer(tuple(f"s{i}" for i in range(6)),
                            train=TrainConfig(method=method, amp=amp, batch_size=16), device=device)
    return trainer, lambda: trainer.fit(SliceData(x, y), epochs=1), n


def adversarial(amp: bool, size: int, n: int, device: str):
    """FedDA's AdversarialTrainer: segmentation step + discriminator step per batch, the reference
    encoder (here the trainer's own initial weights) forwarded on the same batch."""
    trainer, fit, n = supervised("fedda", amp, size, n, device)
    trainer.set_reference(trainer.get_weights())
    return trainer, fit, n


def episodic(amp: bool, size: int, n: int, device: str):
    """FedCoWPro's EpisodicTrainer with the job's encoder: ``n // 4`` steps of 4 episodes each
    (episodes pre-drawn: the augmentations are not part of the figure)."""
    import json

    import torch

    from fedxmodal.engine.episodic import EpisodicConfig
    from fedxmodal.methods import build_trainer
    from fedxmodal.methods.fedcowpro.episodes import EpisodeConfig, EpisodeSampler

    spec = json.loads((Path(__file__).resolve().parents[1] / "jobs" / "specs" / "fedcowpro.json").read_text())
    net = {k: v for k, v in spec["model"]["args"].items() if k != "init_seed"}
    torch.manual_seed(0)
    images = torch.randn(8, 1, size, size)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    sps = (1 + (yy >= size // 2).long() * 2 + (xx >= size // 2).long()).expand(8, size, size).clone()
    sampler = EpisodeSampler(images, sps, EpisodeConfig(), seed=0)
    batches = [sampler.batch(4) for _ in range(4)]
    trainer = build_trainer(("organ",), network=net, train=EpisodicConfig(method="fedcowpro", amp=amp), device=device)
    steps = max(1, n // 4)
    cycle = iter(lambda: batches[trainer.global_step % len(batches)], None)
    return trainer, lambda: trainer.fit(lambda: next(cycle), steps=steps), steps * 4


def _spec_args(name: str) -> dict:
    spec = json.loads((Path(__file__).resolve().parents[1] / "jobs" / "specs" / f"{name}.json").read_text())
    return {k: v for k, v in spec["model"]["args"].items() if k != "init_seed"}


def _gan_batch(cfg, b: int, site: int | None = None):
    """Random slices and conditions; ``site``: all of one site (a target's batches), else mixed."""
    import torch

    sites = torch.randint(0, cfg.n_sites, (b,)) if site is None else torch.full((b,), site)
    return {"images": torch.rand(b, 1, cfg.image_size, cfg.image_size) * 2 - 1, "site": sites,
            "key": torch.randn(b, cfg.key_dim), "zbin": torch.randint(0, cfg.n_zbins, (b,))}


def gan(amp: bool, n: int, device: str):
    """The data factory's GanTrainer with the factory job's network: ``n // 8`` steps of batch 8."""
    import torch

    from fedxmodal.engine.gan import GanConfig
    from fedxmodal.methods import build_trainer

    torch.manual_seed(0)
    trainer = build_trainer((), _spec_args("factory"), GanConfig(method="data_factory", amp=amp, batch_size=8,
                            method_args={"sites": ["a", "b", "c"]}), device=device)
    steps = max(1, n // 8)
    return trainer, lambda: trainer.fit(lambda: _gan_batch(trainer.cfg, 8), steps=steps), steps * 8


def adaptation(amp: bool, n: int, device: str):
    """Phase 2's AdaptationTrainer at a target, the factory_adapt job's widths, an untrained generator
    of the factory's settings: ``n // 8`` target steps of batch 8 with three labelled slices."""
    import torch

    from fedxmodal.methods.factory.trainer import AdaptationConfig, AdaptationTrainer
    from fedxmodal.methods.factory.adaptation import AdaptationMethod
    from fedxmodal.networks.gan import FactoryGAN

    args = _spec_args("factory_adapt")
    widths = {k: args.pop(k) for k in ("encoder_width", "head_width")}
    structures = tuple(f"s{i}" for i in range(args.pop("n_classes") - 1))
    torch.manual_seed(0)
    generator = FactoryGAN.from_args(**args).generator_ema

    def trainer_():
        return AdaptationTrainer(structures, AdaptationMethod(), network=widths, generator=generator, device=device,
                                 train=AdaptationConfig(method=AdaptationMethod.name, amp=amp, batch_size=8))
    source, trainer = trainer_(), trainer_()
    trainer.set_source_branch(source)
    cfg = generator.cfg
    labelled = {**_gan_batch(cfg, 3, site=1), "labels": torch.randint(0, len(structures) + 1, (3, cfg.image_size,
                                                                                         cfg.image_size))}
    steps = max(1, n // 8)
    return trainer, lambda: trainer.fit_target(lambda: _gan_batch(cfg, 8, site=1), steps, source_site=0,
                                               labelled=labelled), steps * 8


TRAINERS = {"supervised:gin": lambda amp, a: supervised("gin", amp, a.size, a.n, a.device),
            "supervised:none": lambda amp, a: supervised("none", amp, a.size, a.n, a.device),
            "adversarial:fedda": lambda amp, a: adversarial(amp, a.size, a.n, a.device),
            "episodic:fedcowpro": lambda amp, a: episodic(amp, a.size, a.n, a.device),
            "gan:data_factory": lambda amp, a: gan(amp, a.n, a.device),
            "adaptation:target": lambda amp, a: adaptation(amp, a.n, a.device)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, nargs="+", default=[1])
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--n", type=int, default=64, help="slices per repetition")
    p.add_argument("--device", default="auto")
    p.add_argument("--trainers", nargs="+", default=list(TRAINERS))
    p.add_argument("--out")
    a = p.parse_args(argv)
    import torch

    from fedxmodal.engine.base import cpu_supports_bf16

    results = {"cpu_bf16": cpu_supports_bf16(), "torch": torch.__version__, "rows": []}
    print(f"torch {torch.__version__}, CPU native bf16: {results['cpu_bf16']}, size {a.size}, batch 16, "
          f"{a.n} slices/rep, {a.reps} reps")
    for threads in a.threads:
        torch.set_num_threads(threads)
        for name in a.trainers:
            variants = {amp: TRAINERS[name](amp, a) for amp in (False, True)}
            for _, fn, _ in variants.values():
                fn()  # warm-up: allocator, first optimizer step, oneDNN kernels
            speed = {False: [], True: []}
            for r in range(a.reps):
                for amp in ((False, True) if r % 2 == 0 else (True, False)):
                    _, fn, n = variants[amp]
                    t0 = time.perf_counter()
                    fn()
                    speed[amp].append(n / (time.perf_counter() - t0))
            dtype = variants[True][0].amp_dtype
            row = {"trainer": name, "threads": threads, "mixed_dtype": str(dtype).replace("torch.", ""),
                   "fp32_slices_s": statistics.median(speed[False]),
                   "mixed_slices_s": statistics.median(speed[True])}
            row["speedup"] = row["mixed_slices_s"] / row["fp32_slices_s"]
            results["rows"].append(row)
            print(f"{name:18s} threads {threads}: fp32 {row['fp32_slices_s']:.1f}, {row['mixed_dtype']} "
                  f"{row['mixed_slices_s']:.1f} slices/s -> x{row['speedup']:.2f}", flush=True)
    if a.out:
        Path(a.out).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
