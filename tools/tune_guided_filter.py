"""Choose the guided upsampler's radius and eps on TRAINING scenes (seeds below 1e9), never on the
held-out split: frame IoU of the shipped VQ-VAE's reconstructions, bilinear vs guided.

    OMP_NUM_THREADS=1 nice -n 19 python tools/tune_guided_filter.py --out runs/guided_tuning.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from argenseg_ros.engine.mask_refinement import GuidedUpsampler
from argenseg_ros.tabletop.tokenizer_eval import load_vqvae, reconstruction_report


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scenes", type=int, default=20)
    p.add_argument("--first-seed", type=int, default=500_000_000)
    p.add_argument("--radii", type=int, nargs="+", default=[4, 8, 12, 16])
    p.add_argument("--eps", type=float, nargs="+", default=[1e-4, 1e-3, 1e-2])
    p.add_argument("--out", required=True)
    args = p.parse_args()
    torch.set_num_threads(1)
    vqvae = load_vqvae()
    rows = []
    for radius in args.radii:
        for eps in args.eps:
            r = reconstruction_report(vqvae, args.scenes, args.first_seed, GuidedUpsampler(radius=radius, eps=eps))
            rows.append({"radius": radius, "eps": eps, "frame_iou": r["frame_iou"],
                         "frame_iou_guided": r["frame_iou_guided"], "refine_ms": r["guided_refine_ms_per_mask"]})
            print(json.dumps(rows[-1]), flush=True)
    best = max(rows, key=lambda row: row["frame_iou_guided"])
    Path(args.out).write_text(json.dumps({"scenes": args.scenes, "first_seed": args.first_seed, "grid": rows,
                                          "best": best}, indent=1) + "\n")
    print("best", json.dumps(best))


if __name__ == "__main__":
    main()
