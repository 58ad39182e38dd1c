"""A digest of every registered method's weights after a few training steps, local and
centralized, on tiny synthetic data: run it before and after a change to the engine to show that
every training style still trains bit for bit the same (same machine, same torch).

    OMP_NUM_THREADS=1 python experiments/engine_digest.py --out digest.json
    diff <(python experiments/engine_digest.py) <(PYTHONPATH=<other tree>/custom python experiments/engine_digest.py)

Each line: ``method regime sha256-of-the-weights loss``. float32 (``amp`` off) so that the digest
does not depend on whether the CPU has bfloat16.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import sys

import numpy as np
import torch

from fedxmodal.engine.base import seed_everything
from fedxmodal.methods import METHODS, build_trainer

STRUCTURES = ("liver", "spleen")
SIZE = 32


def digest(state: dict) -> str:
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def slices(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, 1, S, S) images with a bright box (class 1) and a grey disk (class 2), (n, S, S) labels."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 1, SIZE, SIZE, generator=g) * 0.1 - 0.5
    labels = torch.zeros(n, SIZE, SIZE, dtype=torch.uint8)
    yy, xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    for i in range(n):
        labels[i, 4 + i % 5:14 + i % 5, 6:16] = 1
        labels[i][(yy - 22) ** 2 + (xx - 20 - i % 3) ** 2 < 20] = 2
    images[:, 0][labels == 1] += 1.2
    images[:, 0][labels == 2] += 0.6
    return images, labels


def fit_supervised(trainer, images, labels, epochs, domains=None):
    params = inspect.signature(trainer.fit).parameters
    if "labels" in params:  # the engine before one loop: fit(images, labels, epochs)
        return trainer.fit(images, labels, epochs=epochs, progress=False, domains=domains)
    from fedxmodal.engine.base import SliceData
    return trainer.fit(SliceData(images, labels, domains), epochs=epochs)


def run_plain(name: str, cls, regime: str) -> tuple[str, float]:
    import dataclasses

    from fedxmodal.engine.supervised import TrainConfig
    from fedxmodal.networks.unet import UNetConfig

    n_domains = 2 if regime == "centralized" else 1  # "reference": one domain and a reference network
    network = dataclasses.replace(UNetConfig(channels=(8, 16, 32), strides=(2, 2)),
                                  **cls.network_overrides(regime, n_domains))
    seed_everything(0)
    trainer = build_trainer(STRUCTURES, network, TrainConfig(method=name, batch_size=4, amp=False, seed=0),
                            device="cpu", domains=[f"site{i}" for i in range(n_domains)])
    parts = [slices(8, seed=d) for d in range(n_domains)]
    images, labels = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    domains = torch.cat([torch.full((8,), d, dtype=torch.long) for d in range(n_domains)])
    trainer.method.prepare([p[0] for p in parts])
    trainer.plan(2)
    if regime == "reference":  # a federated site's adversarial step: the received model as the reference
        trainer.set_reference(build_trainer(STRUCTURES, network, TrainConfig(method=name), device="cpu").get_weights())
    out = fit_supervised(trainer, images, labels, 2, domains=domains if regime == "centralized" else None)
    return digest(trainer.model.state_dict()), out["loss"]


def run_episodic(name: str, cls, regime: str) -> tuple[str, float]:
    from fedxmodal.engine.episodic import EpisodicConfig
    from fedxmodal.methods.fedcowpro import superpixels as spx
    from fedxmodal.methods.fedcowpro.episodes import EpisodeSampler

    seed_everything(0)
    method = cls()
    trainer = cls.trainer((), method, network={"channels": [8, 16, 32], "downsample": 8, "out_channels": 16},
                          train=EpisodicConfig(method=name, steps=3, batch_size=2, amp=False), device="cpu")
    n_sites = 2 if regime == "centralized" else 1
    imgs = [slices(4, seed=d)[0][:, 0].numpy() * 300 for d in range(n_sites)]
    sp = [torch.from_numpy(spx.superpixels_volume(i.astype(np.float32), "MR")) for i in imgs]
    sampler = EpisodeSampler(torch.cat([torch.from_numpy(i)[:, None] for i in imgs]), torch.cat(sp),
                             method.episode_config, seed=0)
    out = trainer.fit(lambda: sampler.batch(2), steps=3)
    return digest(trainer.model.state_dict()), out["loss"]


def _gan_batch(cfg, n: int, g: torch.Generator, sites: int) -> dict:
    return {"images": torch.rand(n, 1, cfg.image_size, cfg.image_size, generator=g) * 2 - 1,
            "site": torch.arange(n) % sites, "key": torch.randn(n, cfg.key_dim, generator=g),
            "zbin": torch.arange(n) % cfg.n_zbins}


TINY_GAN = dict(image_size=16, z_dim=32, w_dim=32, mapping_layers=2, max_channels=32, min_channels=16,
                n_sites=2, key_dim=8, n_zbins=4, cond_dim=32)


def run_gan(name: str, cls, regime: str) -> tuple[str, float]:
    from fedxmodal.engine.gan import GanConfig
    from fedxmodal.networks.gan import FactoryGAN
    from fedxmodal.networks.stylegan import StyleGANConfig

    seed_everything(0)
    model = FactoryGAN(StyleGANConfig(**TINY_GAN))
    trainer = cls.trainer(STRUCTURES, cls(), train=GanConfig(method=name, steps=3, batch_size=4, amp=False,
                                                             r1_every=2, pl_every=2), device="cpu", model=model)
    g = torch.Generator().manual_seed(1)
    sites = 2 if regime == "centralized" else 1
    out = trainer.fit(lambda: _gan_batch(trainer.cfg, 4, g, sites), steps=3)
    return digest(trainer.model.state_dict()), out.get("means", out)["loss_g"]


def run_adaptation(name: str, cls, regime: str) -> tuple[str, float]:
    from fedxmodal.methods.factory.trainer import AdaptationConfig
    from fedxmodal.networks.gan import FactoryGAN
    from fedxmodal.networks.stylegan import StyleGANConfig

    seed_everything(0)
    generator = FactoryGAN(StyleGANConfig(**TINY_GAN)).generator_ema
    cfg = AdaptationConfig(method=name, amp=False, lr=3e-3, condition_samples=8)
    src = cls.trainer(STRUCTURES, cls(), train=cfg, generator=generator, device="cpu")
    g = torch.Generator().manual_seed(2)
    images, labels = slices(4, seed=3)
    images, labels = images[:, :, ::2, ::2].clamp(-1, 1), labels[:, ::2, ::2]  # the generator's 16 px
    batch = lambda site: {"images": images, "labels": labels.long(), "site": torch.full((4,), site),  # noqa: E731
                          "key": torch.randn(4, 8, generator=g), "zbin": torch.arange(4) % 4}
    out = src.fit_source(lambda: batch(0), 2)
    if regime == "centralized":  # the target step too (source branch, cycle, few shots)
        tgt = cls.trainer(STRUCTURES, cls(), train=cfg, generator=generator, device="cpu")
        tgt.set_source_branch(src)
        target = {k: v for k, v in batch(1).items() if k != "labels"}
        out = tgt.fit_target(lambda: target, 2, source_site=0, labelled={k: v[:2] for k, v in batch(1).items()})
        return digest(tgt.model.state_dict()), out["loss"]
    return digest(src.model.state_dict()), out["loss"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", help="also write the digests as JSON here")
    p.add_argument("--methods", nargs="*", default=sorted(METHODS), help="default: every registered method")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    result = {}
    for name in a.methods:
        cls = METHODS[name]
        style = cls.trainer.__name__
        runner = {"SupervisedTrainer": run_plain, "AdversarialTrainer": run_plain, "EpisodicTrainer": run_episodic,
                  "GanTrainer": run_gan, "AdaptationTrainer": run_adaptation}[style]
        for regime in ("local", "centralized") + (("reference",) if style == "AdversarialTrainer" else ()):
            h, loss = runner(name, cls, regime)
            result[f"{name} {regime}"] = h
            print(f"{name:14s} {regime:12s} {style:18s} {h} {loss:.6f}", flush=True)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
