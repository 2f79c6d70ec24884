"""The API the node and the tools use: an RGB image and an instruction in, masks and a reply out."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import PreTrainedTokenizerFast

from .generation import generate
from .imaging import image_to_pixel_values, mask_image_to_mask
from .model import ARGenSegModel
from .static_decode import StaticDecoder
from .tokenization import control_tokens

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
MAX_IMAGE_SIDE = 8192          # larger frames are refused rather than resized into a useless mask
MIN_IMAGE_SIDE = 8
MAX_INSTRUCTION_CHARS = 500
MASK_PLACEHOLDER = "<mask>"


class InputError(ValueError):
    """A request the model cannot serve; the message names the problem for the user."""


@dataclass(frozen=True)
class SegmentationResult:
    reply: str                       # the answer text, each generated mask shown as "<mask>"
    masks: list[np.ndarray]          # (H, W) bool per generated mask, at the source image size
    timings: dict[str, float]        # seconds: preprocess, prefill, mask_decode, vqvae_decode, total


def default_model_dir() -> Path:
    """The tabletop model shipped inside the package."""
    return Path(__file__).resolve().parents[1] / "models" / "tabletop"


def validate_image(image: object) -> np.ndarray:
    if not isinstance(image, np.ndarray):
        raise InputError(f"image must be a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise InputError(f"image must be uint8 RGB, got dtype {image.dtype}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise InputError(f"image must have shape (H, W, 3), got {image.shape}")
    h, w = image.shape[:2]
    if min(h, w) < MIN_IMAGE_SIDE:
        raise InputError(f"image is {w}x{h}: both sides must be at least {MIN_IMAGE_SIDE} px")
    if max(h, w) > MAX_IMAGE_SIDE:
        raise InputError(f"image is {w}x{h}: sides above {MAX_IMAGE_SIDE} px are not supported")
    return image


def validate_instruction(instruction: object) -> str:
    if not isinstance(instruction, str):
        raise InputError(f"instruction must be text, got {type(instruction).__name__}")
    text = instruction.strip()
    if not text:
        raise InputError("instruction is empty")
    if len(text) > MAX_INSTRUCTION_CHARS:
        raise InputError(f"instruction is {len(text)} characters long; the limit is {MAX_INSTRUCTION_CHARS}")
    if not text.isprintable():
        raise InputError("instruction contains control or non-printable characters")
    return text


class Segmenter:
    """Thread-safe: requests are serialised on a lock; no per-request state is kept on the model."""

    def __init__(self, model: ARGenSegModel, tokenizer: PreTrainedTokenizerFast, *,
                 mask_threshold: float = 0.5, cfg_scale: float = 0.0, max_new_tokens: int = 48,
                 max_masks: int = 4, fast: bool = True, cuda_graphs: bool = False):
        if not 0.0 < mask_threshold < 1.0:
            raise ValueError(f"mask_threshold must be in (0, 1), got {mask_threshold}")
        if cfg_scale < 0.0:
            raise ValueError(f"cfg_scale must be >= 0, got {cfg_scale}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.mask_threshold = mask_threshold
        self.cfg_scale = cfg_scale
        self.max_new_tokens = max_new_tokens
        self.max_masks = max_masks
        self.fast = fast                  # static KV cache decoder; False: the eager reference
        self.cuda_graphs = cuda_graphs
        self._lock = threading.Lock()
        self._decoder: StaticDecoder | None = None   # reused under the lock: cache and graphs made once
        # User text must never become a control token (an <IMG_CONTEXT> without its image, a forged
        # <ge_start> ...): one pattern of all of them, longest first, finds the first one named.
        controls = control_tokens(tokenizer)
        self._control_by_id = {i: t for t, i in controls.items()}
        self._control_pattern = re.compile("|".join(re.escape(t) for t in sorted(controls, key=len, reverse=True)))

    @classmethod
    def from_pretrained(cls, model_dir: str | Path | None = None, device: str = "cpu",
                        dtype: str = "float32", **kwargs) -> "Segmenter":
        """Load a native model directory (None: the shipped tabletop model) from local disk."""
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but CUDA is not available")
        model, tokenizer = ARGenSegModel.from_pretrained(
            model_dir or default_model_dir(), device=device, dtype=DTYPES[dtype])
        return cls(model, tokenizer, **kwargs)

    @property
    def device(self) -> torch.device:
        return self.model.pos_1LC.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.pos_1LC.dtype

    @property
    def name(self) -> str:
        return self.model.config.name

    def segment(self, image: np.ndarray, instruction: str) -> SegmentationResult:
        return self.segment_batch([image], [instruction])[0]

    def segment_batch(self, images: Sequence[np.ndarray], instructions: Sequence[str]) -> list[SegmentationResult]:
        if len(images) != len(instructions):
            raise InputError(f"{len(images)} images but {len(instructions)} instructions")
        if not images:
            raise InputError("no images given")
        t0 = time.perf_counter()
        images = [validate_image(im) for im in images]
        instructions = [self.refuse_control_tokens(validate_instruction(text)) for text in instructions]
        pixel_values = torch.cat([image_to_pixel_values(im, self.model.image_size, self.model.config.image_resize)
                                  for im in images])
        ids, valid = self._left_padded([self.model.prompt_ids(self.tokenizer, t) for t in instructions])
        uncond = (self._left_padded([self.model.prompt_ids(self.tokenizer, "")] * len(images))
                  if self.cfg_scale > 0 else (None, None))
        t_pre = time.perf_counter() - t0
        with self._lock:
            out = generate(self.model, ids, valid, pixel_values.to(self.device), max_new_tokens=self.max_new_tokens,
                           max_masks=self.max_masks, cfg_scale=self.cfg_scale,
                           uncond_input_ids_BT=uncond[0], uncond_valid_BT=uncond[1], fast=self.fast,
                           cuda_graphs=self.cuda_graphs, decoder=self._decoder)
            self._decoder = out.decoder or self._decoder
        results = []
        for b, image in enumerate(images):
            t_mask = time.perf_counter()
            masks = [mask_image_to_mask(m, image.shape[:2], self.mask_threshold, self.model.config.mask_postprocessing)
                     for m in out.mask_images[b]]
            timings = {"preprocess": t_pre, **out.timings,
                       "postprocess": time.perf_counter() - t_mask}
            timings["total"] = time.perf_counter() - t0
            results.append(SegmentationResult(reply=self.render_reply(out.token_ids[b]), masks=masks,
                                              timings=timings))
        return results

    def render_reply(self, token_ids: list[int]) -> str:
        """Answer text with each <ge_start>...<ge_end> block shown as "<mask>"."""
        ids = self.model.config.token_ids
        pieces: list[int] = []
        text_parts: list[str] = []
        inside = False
        for token in token_ids:
            if token == ids["ge_start"]:
                text_parts.append(self.tokenizer.decode(pieces, skip_special_tokens=True))
                text_parts.append(MASK_PLACEHOLDER)
                pieces, inside = [], True
            elif token == ids["ge_end"]:
                inside = False
            elif not inside and token != ids["eos"]:
                pieces.append(token)
        text_parts.append(self.tokenizer.decode(pieces, skip_special_tokens=True))
        return "".join(text_parts).strip()

    def refuse_control_tokens(self, instruction: str) -> str:
        """The instruction, or an InputError naming the control token it contains or tokenizes to."""
        found = self._control_pattern.search(instruction)
        if found:
            raise InputError(f"instruction contains the control token {found.group()!r}, which user text "
                             "may not contain")
        produced = set(self.tokenizer(instruction, add_special_tokens=False)["input_ids"]) & self._control_by_id.keys()
        if produced:   # e.g. a normalised added token, or <unk> for a character the vocabulary lacks
            raise InputError(f"instruction tokenizes to the control token {self._control_by_id[min(produced)]!r}, "
                             "which user text may not produce")
        return instruction

    def _left_padded(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        T = max(len(r) for r in rows)
        pad = self.model.config.token_ids["pad"]
        ids = torch.full((len(rows), T), pad, dtype=torch.long)
        valid = torch.zeros(len(rows), T, dtype=torch.bool)
        for i, r in enumerate(rows):
            ids[i, T - len(r):] = torch.tensor(r)
            valid[i, T - len(r):] = True
        return ids.to(self.device), valid.to(self.device)
