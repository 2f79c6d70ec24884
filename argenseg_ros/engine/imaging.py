"""Pixels in, mask out: an RGB frame -> the vision tower's pixel values, a decoded mask image -> a
binary mask at the frame's size. Each step has the rule a model was trained or evaluated with
(`ARGenSegConfig.image_resize` / `.mask_postprocessing`); docs/ARGENSEG_8B.md says where each comes from.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
from PIL import Image

from .config import (
    MASK_CHANNEL_MEAN,
    MASK_PIL_LUMA_UINT8,
    RESIZE_CV2_CUBIC,
    RESIZE_PIL_BICUBIC,
)
from .vqvae import images_to_mask_probs

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resize_image(image_hw3: np.ndarray, image_size: int, rule: str) -> np.ndarray:
    """RGB uint8 (H, W, 3) -> (S, S, 3) uint8, aspect ratio squashed as both rules do."""
    if rule == RESIZE_PIL_BICUBIC:
        # torchvision's Resize on a PIL image is PIL's resize: BICUBIC with antialiasing when shrinking.
        return np.asarray(Image.fromarray(image_hw3, "RGB").resize((image_size, image_size), Image.BICUBIC))
    if rule == RESIZE_CV2_CUBIC:
        return cv2.resize(image_hw3, (image_size, image_size), interpolation=cv2.INTER_CUBIC)
    raise ValueError(f"unknown image resize rule {rule!r}")


def image_to_pixel_values(image_hw3: np.ndarray, image_size: int, resize: str = RESIZE_CV2_CUBIC) -> torch.Tensor:
    """RGB uint8 (H, W, 3) -> (1, 3, S, S) float32: resize, [0, 1], ImageNet mean/std.

    The default is the rule of the project's trainer (tabletop/training.py calls it without one);
    inference passes the model's `config.image_resize`."""
    x = resize_image(np.ascontiguousarray(image_hw3), image_size, resize).astype(np.float32) / 255.0
    x = (x - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None]


def mask_image_to_mask(image_3hw: torch.Tensor, size_hw: tuple[int, int], threshold: float, rule: str) -> np.ndarray:
    """A decoded mask image (3, Hm, Wm) in [-1, 1] -> (H, W) bool at the source size."""
    h, w = size_hw
    if rule == MASK_PIL_LUMA_UINT8:
        # The reference evaluation: to uint8 by truncation, resize the RGB image, then PIL's luma.
        rgb = ((image_3hw.float() + 1) / 2 * 255).to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
        grey = Image.fromarray(rgb, "RGB").resize((w, h), Image.BILINEAR).convert("L")
        return np.asarray(grey) / 255 > threshold
    if rule == MASK_CHANNEL_MEAN:
        probs = images_to_mask_probs(image_3hw[None].float())[0].numpy()
        return cv2.resize(probs, (w, h), interpolation=cv2.INTER_LINEAR) > threshold
    raise ValueError(f"unknown mask post-processing rule {rule!r}")
