"""Replies on images outside the tabletop world: are they still sentences the model can say?

The issue's case: a uniform bright frame (grey >= 230) made the shipped model write
"II don purple purpleSuSuSu ...". Every reply the tabletop grammar allows is one of a finite set of
*sentence forms* (``"Sure, <mask>."``, ``"I don't see a purple can."``, ``"There are 3 cups."``,
``"Yes."`` ...; :func:`sentence_forms`); a reply outside the set is garbled. Measured here on three
families of out-of-world frames, a handful each, with a few instructions each:

* ``uniform``: flat grey levels and flat colours (including the bright greys of the issue);
* ``noise``: uniform, Gaussian and salt-and-pepper noise;
* ``photo_like``: frames with natural-image statistics but no tabletop object: 1/f ("pink")
  colour noise, smooth gradients with soft blobs, and a blurred checkerboard under a vignette
  (no real photographs are available offline; these stand in for them).

Console: ``python -m argenseg_ros.tabletop.out_of_world --out report.json [--model DIR]``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np

from .reports import write_report
from .world import MASK_PLACEHOLDER, REFERRING_REPLY, expression_vocabulary

#: Instructions asked of every frame: a referring expression, an "object" form, both question kinds.
INSTRUCTIONS: tuple[str, ...] = ("the red cup", "segment the leftmost object", "how many balls are there?",
                                 "is there a blue box?")


def sentence_forms() -> frozenset[str]:
    """Every reply of the tabletop grammar (referring, absent, counts 0..6, yes/no)."""
    replies = {REFERRING_REPLY, "Yes.", "No."}
    replies |= {s for s in expression_vocabulary() if s.startswith(("I don't see", "There "))}
    return frozenset(replies)


def is_sentence_form(reply: str, forms: frozenset[str] | None = None) -> bool:
    """Whether ``reply`` (whitespace normalised) is one of the model's sentence forms."""
    return " ".join(reply.split()) in (forms if forms is not None else sentence_forms())


def _uniform(value: tuple[int, int, int]) -> Callable[[np.random.Generator, int, int], np.ndarray]:
    return lambda rng, h, w: np.full((h, w, 3), value, np.uint8)


def _uniform_noise(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _gaussian_noise(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    return np.clip(rng.normal(128, 40, (h, w, 3)), 0, 255).astype(np.uint8)


def _salt_and_pepper(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    img = np.full((h, w, 3), 128, np.uint8)
    r = rng.random((h, w))
    img[r < 0.1], img[r > 0.9] = 0, 255
    return img


def _pink_noise(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Colour noise with a 1/f amplitude spectrum, the statistics of natural images."""
    fy, fx = np.fft.fftfreq(h)[:, None], np.fft.fftfreq(w)[None, :]
    amplitude = 1.0 / np.maximum(np.hypot(fy, fx), 1.0 / max(h, w))
    channels = []
    for _ in range(3):
        phase = np.exp(2j * np.pi * rng.random((h, w)))
        x = np.real(np.fft.ifft2(amplitude * phase))
        channels.append((x - x.mean()) / (x.std() + 1e-9))
    img = np.stack(channels, axis=-1) * 45 + rng.uniform(70, 180, 3)
    return np.clip(img, 0, 255).astype(np.uint8)


def _gradient_blobs(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    a, b = rng.uniform(40, 220, 3), rng.uniform(40, 220, 3)
    t = (xx / w)[:, :, None]
    img = a * (1 - t) + b * t
    for _ in range(4):
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0.05, 0.25) * w
        blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))[:, :, None]
        img = img * (1 - blob) + rng.uniform(0, 255, 3) * blob
    return np.clip(img, 0, 255).astype(np.uint8)


def _vignetted_checkerboard(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cell = rng.uniform(30, 90)
    board = ((xx // cell + yy // cell) % 2)[:, :, None]
    img = board * rng.uniform(150, 230, 3) + (1 - board) * rng.uniform(20, 100, 3)
    img = cv2.GaussianBlur(img.astype(np.float32), (0, 0), 3.0)
    vignette = 1.0 - 0.5 * (((xx - w / 2) / w) ** 2 + ((yy - h / 2) / h) ** 2)[:, :, None]
    return np.clip(img * vignette, 0, 255).astype(np.uint8)


#: family -> (name, generator(rng, h, w) -> (h, w, 3) uint8 RGB)
FRAMES: dict[str, tuple[tuple[str, Callable[[np.random.Generator, int, int], np.ndarray]], ...]] = {
    "uniform": (("grey_0", _uniform((0, 0, 0))), ("grey_128", _uniform((128, 128, 128))),
                ("grey_230", _uniform((230, 230, 230))), ("grey_255", _uniform((255, 255, 255))),
                ("red", _uniform((200, 30, 30))), ("blue", _uniform((30, 60, 210)))),
    "noise": (("uniform_noise", _uniform_noise), ("gaussian_noise", _gaussian_noise),
              ("salt_and_pepper", _salt_and_pepper)),
    "photo_like": (("pink_noise", _pink_noise), ("gradient_blobs", _gradient_blobs),
                   ("vignetted_checkerboard", _vignetted_checkerboard)),
}


def training_frame(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A random out-of-world frame for training (``data_mix``'s ``out_of_world`` focus): half flat
    colours of any value (grey or saturated, dark or bright), half the noise family. The photo-like
    family is left out on purpose: it is the part of :func:`measure` no training frame resembles."""
    if rng.random() < 0.5:
        grey = rng.random() < 0.5
        value = np.full(3, rng.integers(0, 256)) if grey else rng.integers(0, 256, 3)
        return np.full((height, width, 3), value, np.uint8)
    noise = FRAMES["noise"]
    return noise[int(rng.integers(len(noise)))][1](rng, height, width)


def frames(seed: int = 0, width: int = 640, height: int = 480) -> list[tuple[str, str, np.ndarray]]:
    """(family, name, image) for every out-of-world frame; deterministic in ``seed``."""
    out = []
    for i, (family, items) in enumerate(FRAMES.items()):
        for j, (name, make) in enumerate(items):
            out.append((family, name, make(np.random.default_rng([seed, i, j]), height, width)))
    return out


def measure(segmenter: Any, seed: int = 0, instructions: tuple[str, ...] = INSTRUCTIONS) -> dict[str, Any]:
    """Ask every instruction of every frame; count replies that are not sentence forms, by family.

    Also counted: referring replies whose ``<mask>`` came with a non-empty mask (the model claims an
    object that is not there), since an out-of-world frame has no tabletop object.
    """
    forms = sentence_forms()
    families: dict[str, dict[str, Any]] = {}
    samples = []
    for family, name, image in frames(seed):
        g = families.setdefault(family, {"n": 0, "garbled": 0, "mask_on_nothing": 0})
        for instruction in instructions:
            result = segmenter.segment(image, instruction)
            ok = is_sentence_form(result.reply, forms)
            claimed = MASK_PLACEHOLDER in result.reply and any(np.any(m) for m in result.masks)
            g["n"] += 1
            g["garbled"] += not ok
            g["mask_on_nothing"] += claimed
            samples.append({"family": family, "frame": name, "instruction": instruction, "reply": result.reply,
                            "sentence_form": ok, "mask_pixels": int(sum(int(np.count_nonzero(m)) for m in result.masks))})
    for g in families.values():
        g["garbled_rate"] = g["garbled"] / g["n"]
    total = sum(g["n"] for g in families.values())
    garbled = sum(g["garbled"] for g in families.values())
    return {"families": families, "n": total, "garbled": garbled, "garbled_rate": garbled / total,
            "instructions": list(instructions), "samples": samples}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="native model directory (default: the shipped model)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="JSON report path")
    args = p.parse_args(argv)
    import torch

    from argenseg_ros.engine.segmenter import Segmenter

    torch.set_num_threads(args.threads)
    report = measure(Segmenter.from_pretrained(args.model), args.seed)
    report["model"] = args.model or "shipped model"
    write_report(args.out, report, leave_out_of_summary="samples")
    return 0


if __name__ == "__main__":
    sys.exit(main())
