"""Latency effect of a 128 px mask tokenizer: decode time of one mask (f_hat -> mask image), 64 vs 128 px.

Both configurations have the same latent (16x16) and scales, so the model generates the same 341
visual tokens; only the VQ-VAE decoder (one more upsampling level) costs more. Weights do not change
the time, so random ones are used. One thread, median of ``--reps``; writes JSON.

    OMP_NUM_THREADS=1 nice -n 19 python tools/vqvae_decode_latency.py --out runs/vqvae_decode_latency.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from argenseg_ros.engine.vqvae import MultiScaleVQVAE, VQVAEConfig
from argenseg_ros.tabletop.training import vqvae_config


@torch.no_grad()
def decode_ms(image_size: int, reps: int) -> dict[str, float]:
    torch.manual_seed(0)
    vqvae = MultiScaleVQVAE(VQVAEConfig(**vqvae_config(image_size))).eval()
    s = vqvae.cfg.latent_size
    f_hat = torch.randn(1, vqvae.cfg.z_channels, s, s)
    vqvae.fhat_to_img(f_hat)   # warm-up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        vqvae.fhat_to_img(f_hat)
        times.append(1000.0 * (time.perf_counter() - t0))
    return {"median_ms": statistics.median(times), "min_ms": min(times),
            "params": sum(p.numel() for p in vqvae.parameters())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    torch.set_num_threads(1)
    report = {str(size): decode_ms(size, args.reps) for size in (64, 128)}
    report["torch_threads"] = 1
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
