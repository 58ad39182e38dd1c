"""The data factory's GAN on this machine: seconds per 100 G+D steps (one D step with lazy R1,
one G step with lazy path length, the EMA update) of the default conditional StyleGAN2-lite,
float32 and, where the CPU has native bfloat16, bf16 autocast; one thread by default.

    .venv/bin/python benchmarks/bench_gan.py [--size 64] [--batch 8] [--steps 20] [--threads 1]

``--steps`` are timed after 2 warm-up steps and extrapolated to 100 (lazy R1 every 16 and path
length every 4 steps: with few steps the mix of regularised steps differs a little from a long
run's). Random real slices (throughput does not depend on content). A figure, not a test.
"""

from __future__ import annotations

import argparse
import time

import torch

from fedxmodal.engine.base import cpu_supports_bf16
from fedxmodal.engine.gan import GanConfig, GanTrainer
from fedxmodal.networks.gan import FactoryGAN


class _Method:
    def build_network(self, **args):
        return FactoryGAN.from_args(**args)


def seconds_per_100(size: int, batch: int, steps: int, amp: bool) -> tuple[float, GanTrainer]:
    torch.manual_seed(0)
    trainer = GanTrainer(("x",), _Method(), network={"image_size": size}, train=GanConfig(amp=amp, batch_size=batch),
                         device="cpu")
    cfg = trainer.cfg

    def next_batch():
        return {"images": torch.rand(batch, 1, size, size) * 2 - 1, "site": torch.randint(0, cfg.n_sites, (batch,)),
                "key": torch.randn(batch, cfg.key_dim), "zbin": torch.randint(0, cfg.n_zbins, (batch,))}

    trainer.fit(next_batch, steps=2)  # warm-up (and the first R1 / PL steps)
    t0 = time.perf_counter()
    trainer.fit(next_batch, steps=steps)
    return (time.perf_counter() - t0) * 100 / steps, trainer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    modes = [("fp32", False)] + ([("bf16", True)] if cpu_supports_bf16() else [])
    for name, amp in modes:
        secs, trainer = seconds_per_100(a.size, a.batch, a.steps, amp)
        count = lambda m: sum(p.numel() for p in m.parameters()) / 1e6  # noqa: E731
        print(f"{a.size} px, batch {a.batch}, {a.threads} thread(s), {name}: {secs:.1f} s per 100 G+D steps "
              f"(G {count(trainer.generator):.2f} M, D {count(trainer.discriminator):.2f} M, "
              f"G+D+EMA-G {count(trainer.model):.2f} M parameters)", flush=True)
    if len(modes) == 1:
        print("bf16: this CPU has no native bfloat16, not measured")


if __name__ == "__main__":
    main()
