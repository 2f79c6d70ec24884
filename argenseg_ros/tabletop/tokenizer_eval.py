"""How good is the mask tokenizer on its own? Reconstruction of held-out masks, at mask and frame size.

Every mask the model generates is a VQ-VAE decode, so a mask the tokenizer cannot reconstruct the
model cannot produce: the reconstruction IoU is a ceiling on the model's gIoU. Measured here:

* ``mask_iou``: as the trainer logs it, at the tokenizer's square size (target: the mask resized
  to that size, thresholded at 0.5);
* ``frame_iou``: what a user gets, the decode upsampled to the frame (bilinear, 0.5) against the
  exact visible mask at 640x480, and ``frame_iou_guided`` with the frame-guided filter instead
  (``engine/mask_refinement.py``); both per mask (mean) and by object size;
* ``code_usage``: distinct codes used per scale over the set (a codebook that uses few codes
  wastes capacity);
* encode + decode time per mask (one thread, batches of 64).

Console: ``python -m argenseg_ros.tabletop.tokenizer_eval --model DIR | --checkpoint PT``.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import cv2
import numpy as np
import torch

from argenseg_ros.engine.mask_refinement import GuidedUpsampler
from argenseg_ros.engine.vqvae import MultiScaleVQVAE, VQVAEConfig, images_to_mask_probs, masks_to_images

from . import world
from .randomisation import Randomisation
from .reports import write_report
from .training import HELDOUT_SEED_BASE, resize_mask

#: Object-size bins (visible pixels at 640x480) of the issue's breakdown.
SIZE_BINS: tuple[tuple[str, int, int], ...] = (("<2000", 0, 2000), ("2000-15000", 2000, 15000),
                                               (">=15000", 15000, 1 << 30))


def load_vqvae(model_dir: str | None = None, checkpoint: str | None = None) -> MultiScaleVQVAE:
    """The VQ-VAE of a native model directory (default: the shipped one) or of a trainer checkpoint."""
    if checkpoint:
        ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False)
        vqvae = MultiScaleVQVAE(VQVAEConfig.from_dict(ckpt["config"]))
        vqvae.load_state_dict(ckpt["vqvae"])
        return vqvae.eval()
    from argenseg_ros.engine.model import ARGenSegModel
    from argenseg_ros.engine.segmenter import default_model_dir

    model, _ = ARGenSegModel.from_pretrained(model_dir or default_model_dir())
    return model.vqvae.float().eval()


@torch.no_grad()
def reconstruct(vqvae: MultiScaleVQVAE, masks: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(B, S, S) coverage -> decoded probabilities (B, S, S) and the code ids per scale."""
    ids = vqvae.img_to_idx(masks_to_images(masks))
    return images_to_mask_probs(vqvae.idx_to_img(ids)), ids


def _iou(pred: np.ndarray, target: np.ndarray) -> float:
    union = np.count_nonzero(pred | target)
    return 1.0 if union == 0 else np.count_nonzero(pred & target) / union


def reconstruction_report(vqvae: MultiScaleVQVAE, num_scenes: int = 40, first_seed: int = HELDOUT_SEED_BASE,
                          upsampler: GuidedUpsampler | None = None,
                          randomisation: Randomisation | None = None) -> dict[str, Any]:
    """Reconstruction metrics (module docstring) of every object of ``num_scenes`` scenes."""
    size = vqvae.cfg.image_size
    upsampler = upsampler or GuidedUpsampler()
    images, masks = [], []
    for i in range(num_scenes):
        scene = world.render_scene(first_seed + i, randomisation=randomisation)
        for obj in scene.objects:
            images.append(scene.image)
            masks.append(obj.mask)
    small = torch.from_numpy(np.stack([resize_mask(m, size) for m in masks]))
    probs, ids, elapsed = [], [], 0.0
    for chunk in small.split(64):
        t0 = time.perf_counter()
        p, chunk_ids = reconstruct(vqvae, chunk)
        elapsed += time.perf_counter() - t0
        probs.append(p)
        ids.append(chunk_ids)
    probs_t = torch.cat(probs)
    mask_iou = [_iou(p > 0.5, t > 0.5) for p, t in zip(probs_t.numpy(), small.numpy())]
    frame, guided, refine_s = [], [], 0.0
    for image, mask, p in zip(images, masks, probs_t.numpy()):
        h, w = mask.shape
        frame.append(_iou(cv2.resize(p, (w, h), interpolation=cv2.INTER_LINEAR) > 0.5, mask))
        t0 = time.perf_counter()
        guided.append(_iou(upsampler(image, p), mask))
        refine_s += time.perf_counter() - t0
    areas = np.array([m.sum() for m in masks])
    by_size = {}
    for name, lo, hi in SIZE_BINS:
        sel = (areas >= lo) & (areas < hi)
        by_size[name] = {"n": int(sel.sum()),
                         "frame_iou": float(np.mean(np.array(frame)[sel])) if sel.any() else None,
                         "frame_iou_guided": float(np.mean(np.array(guided)[sel])) if sel.any() else None}
    usage = []
    for k in range(len(vqvae.cfg.patch_nums)):
        used = torch.unique(torch.cat([c[k].flatten() for c in ids]))
        usage.append(int(used.numel()))
    return {
        "num_scenes": num_scenes, "first_seed": first_seed, "num_masks": len(masks),
        "randomised": randomisation is not None,
        "tokenizer": {"image_size": size, "vocab_size": vqvae.cfg.vocab_size,
                      "patch_nums": list(vqvae.cfg.patch_nums)},
        "mask_iou": float(np.mean(mask_iou)), "frame_iou": float(np.mean(frame)),
        "frame_iou_guided": float(np.mean(guided)), "by_size": by_size,
        "code_usage_per_scale": usage,
        "encode_decode_ms_per_mask": 1000.0 * elapsed / len(masks),
        "guided_refine_ms_per_mask": 1000.0 * refine_s / len(masks),
        "guided_upsampler": {"radius": upsampler.radius, "eps": upsampler.eps, "subsample": upsampler.subsample},
        "torch_threads": torch.get_num_threads(),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="native model directory (default: the shipped model)")
    p.add_argument("--checkpoint", default=None, help="a VQ-VAE trainer checkpoint.pt instead")
    p.add_argument("--scenes", type=int, default=40)
    p.add_argument("--first-seed", type=int, default=HELDOUT_SEED_BASE)
    p.add_argument("--randomise", action="store_true", help="render the scenes with domain randomisation")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", required=True, help="JSON report path")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    vqvae = load_vqvae(args.model, args.checkpoint)
    report = reconstruction_report(vqvae, args.scenes, args.first_seed,
                                   randomisation=Randomisation() if args.randomise else None)
    report["source"] = args.checkpoint or args.model or "shipped model"
    write_report(args.out, report, leave_out_of_summary="by_size")
    return 0


if __name__ == "__main__":
    sys.exit(main())
