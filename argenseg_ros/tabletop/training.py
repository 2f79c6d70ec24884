"""Trainers for the embedded tabletop model: first the mask VQ-VAE, then ARGenSeg on top of it.

Grounding (see TRAINING_NOTES.md: a from-scratch model otherwise never learns *where*) comes from
the training design only; inference stays pure ARGenSeg:
  - the tabletop prompt puts the instruction before the image, so image tokens see the sentence;
  - 2-D sine-cosine initialisation of the ViT patch positions and of `pos_1LC`, in the same 0-1
    image coordinates, so a mask slot and the image token at its place start out related;
  - a training-only head on the image-token states of an intermediate LLM layer predicts the
    referent's coarse mask (BCE); it is not part of the shipped model;
  - the visual loss is averaged per scale, so the few coarse tokens that carry the location weigh
    as much as the many fine ones.
Both trainers run in the background, log to `<run>/train.log`, checkpoint every few minutes and
resume from `<run>/checkpoint.pt`; schedules follow the wall-clock budget so a resumed run continues.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import cv2
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from argenseg_ros.engine.config import TEXT_FIRST_PROMPT_TEMPLATE, build_config, format_prompt
from argenseg_ros.engine.model import ARGenSegModel, image_to_pixel_values
from argenseg_ros.engine.sequence import IGNORE, TeacherBatch, collate_rows, fill_masks, layout_row, teacher_forward
from argenseg_ros.engine.tokenization import build_tabletop_tokenizer, resolve_token_ids
from argenseg_ros.engine.vqvae import MultiScaleVQVAE, VQVAEConfig, masks_to_images

from . import world as tabletop
from .codebook import restart_dead_codes
from .data_mix import FailureMix, plan_focus, sample_focus_scene
from .dataset import load_image, load_masks, read_dataset
from .randomisation import FULL as FULL_RANDOMISATION
from .randomisation import Randomisation

TABLETOP_VQVAE = dict(vocab_size=512, z_channels=16, ch=32, ch_mult=(1, 1, 2), num_res_blocks=1,
                      patch_nums=(1, 2, 4, 8, 16), image_size=64, share_quant_resi=4)
TABLETOP_SIZES = dict(image_size=224, patch_size=14, vision_hidden=192, vision_layers=4, vision_heads=3,
                      text_hidden=256, text_layers=6, text_heads=4, text_kv_heads=4, text_intermediate=768)
TRAIN_SEED_LIMIT = 1_000_000_000  # training scenes draw their seeds below this
HELDOUT_SEED_BASE = 2_000_000_000 # evaluation scenes use HELDOUT_SEED_BASE + i: never trained on
QUERIES_PER_SCENE = 8


# ---- logging / checkpoint helpers ---------------------------------------------------------------

class RunLog:
    def __init__(self, run_dir: Path):
        self.path = run_dir / "train.log"
        self.jsonl = run_dir / "metrics.jsonl"

    def line(self, text: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        with self.path.open("a") as f:
            f.write(f"[{stamp}] {text}\n")
        print(f"[{stamp}] {text}", flush=True)

    def metrics(self, record: dict[str, Any]) -> None:
        with self.jsonl.open("a") as f:
            f.write(json.dumps(record) + "\n")


def cosine_lr(base: float, progress: float, warmup: float = 0.03, floor: float = 0.05) -> float:
    if progress < warmup:
        return base * progress / warmup
    p = min(1.0, (progress - warmup) / (1 - warmup))
    return base * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * p)))


def scheduled(loader: DataLoader, opt: torch.optim.Optimizer, base_lr: float, budget_s: float,
              elapsed_before: float = 0.0) -> Iterator[tuple[Any, float]]:
    """Batches until the wall-clock budget is spent, with the cosine learning rate set for each.

    The schedule follows elapsed time (carried over on resume), so a run stopped and resumed ends
    on the same schedule as one that was never stopped.
    """
    t_start = time.time()
    for batch in loader:
        elapsed = elapsed_before + time.time() - t_start
        if elapsed >= budget_s:
            return
        for group in opt.param_groups:
            group["lr"] = cosine_lr(base_lr, elapsed / budget_s)
        yield batch, elapsed


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))


def _start_run(args: argparse.Namespace) -> tuple[Path, RunLog]:
    run = Path(args.out)
    run.mkdir(parents=True, exist_ok=True)
    _seed_everything(args.seed)
    return run, RunLog(run)


def _worker_rng(seed: int) -> np.random.Generator:
    info = get_worker_info()
    worker = info.id if info is not None else 0
    return np.random.default_rng([seed, worker])


# ---- mask VQ-VAE ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class SceneMix:
    """Where training scenes come from: ``mix_fraction`` of them from the failure mix
    (``data_mix.py``), the rest plain; all rendered with ``randomisation`` when given. The default
    (0, None) is the plain sampler, draw for draw."""

    mix_fraction: float = 0.0
    randomisation: Randomisation | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.mix_fraction <= 1.0:
            raise ValueError(f"mix_fraction must be in [0, 1], got {self.mix_fraction}")

    def use_mix(self, rng: np.random.Generator) -> bool:
        return self.mix_fraction > 0 and rng.random() < self.mix_fraction


class TabletopMasks(IterableDataset):
    """Visible object masks of random tabletop scenes, resized to the VQ-VAE's square input."""

    def __init__(self, size: int, seed: int, width: int = 640, height: int = 480, mix: SceneMix = SceneMix()):
        self.size, self.seed, self.width, self.height, self.mix = size, seed, width, height, mix

    def __iter__(self) -> Iterator[torch.Tensor]:
        rng = _worker_rng(self.seed)
        while True:
            seed = int(rng.integers(TRAIN_SEED_LIMIT))
            # Masks do not see pixels: only the mix's compositions (small, crowded) and sizes matter.
            composition = plan_focus(FailureMix().draw(rng), rng).composition if self.mix.use_mix(rng) else None
            scene = tabletop.render_scene(seed, self.width, self.height, composition=composition,
                                          randomisation=self.mix.randomisation)
            for obj in scene.objects:
                yield torch.from_numpy(resize_mask(obj.mask, self.size))


def resize_mask(mask_hw: np.ndarray, size: int) -> np.ndarray:
    """Bool (H, W) -> float32 (size, size) coverage, squashed like the model's image input."""
    return cv2.resize(mask_hw.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA)


def heldout_masks(size: int, scenes: int = 40) -> torch.Tensor:
    """Visible masks of every object of the first held-out scenes, at the VQ-VAE's size."""
    return torch.stack([torch.from_numpy(resize_mask(o.mask, size))
                        for s in range(scenes) for o in tabletop.render_scene(HELDOUT_SEED_BASE + s).objects])


def mask_iou(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample IoU of boolean masks (B, H, W); 1 where both are empty."""
    inter = (pred & target).flatten(1).sum(1).float()
    union = (pred | target).flatten(1).sum(1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def train_vqvae(args: argparse.Namespace) -> None:
    run, log = _start_run(args)
    device = torch.device(args.device)
    cfg = VQVAEConfig(**vqvae_config(args.image_size))
    vqvae = MultiScaleVQVAE(cfg).to(device)
    if args.init and not (run / "checkpoint.pt").exists():
        vqvae.load_state_dict(_vqvae_state(args.init, cfg))
        log.line(f"VQ-VAE initialised from {args.init}")
    opt = torch.optim.AdamW(vqvae.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.0)
    ckpt_path = run / "checkpoint.pt"
    step, elapsed_before = 0, 0.0
    restart_rng = torch.Generator().manual_seed(args.seed)
    if ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=False)
        vqvae.load_state_dict(ckpt["vqvae"])
        opt.load_state_dict(ckpt["opt"])
        step, elapsed_before = ckpt["step"], ckpt["elapsed"]
        log.line(f"resumed VQ-VAE at step {step}, {elapsed_before / 60:.1f} min done")
    log.line(f"VQ-VAE {cfg.to_dict()} params={sum(p.numel() for p in vqvae.parameters())} "
             f"command: {' '.join(sys.argv)}")
    mix = SceneMix(args.data_mix, FULL_RANDOMISATION if args.randomise else None)
    loader = DataLoader(TabletopMasks(cfg.image_size, args.seed + step, mix=mix), batch_size=args.batch,
                        num_workers=args.workers, persistent_workers=args.workers > 0)
    heldout = heldout_masks(cfg.image_size)
    t_start, last_ckpt = time.time(), time.time()
    for masks, elapsed in scheduled(loader, opt, args.lr, args.minutes * 60, elapsed_before):
        img = masks_to_images(masks.to(device))
        recon, vq_loss, usage = vqvae(img)
        loss = F.mse_loss(recon, img) + F.l1_loss(recon, img) + vq_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vqvae.parameters(), 1.0)
        opt.step()
        step += 1
        if args.restart_every and step % args.restart_every == 0:
            n = restart_dead_codes(vqvae, img, restart_rng)
            if n:
                log.line(f"step {step}: restarted {n} dead codes")
        if step % args.log_every == 0:
            iou = _vqvae_heldout_iou(vqvae, heldout, device)
            log.line(f"step {step} loss {loss.item():.4f} vq {vq_loss.item():.4f} usage {usage.item():.2f} "
                     f"heldout IoU {iou:.4f} ({elapsed / 60:.1f} min)")
            log.metrics({"step": step, "loss": loss.item(), "usage": usage.item(), "heldout_iou": iou,
                         "elapsed": elapsed})
        if time.time() - last_ckpt > args.checkpoint_minutes * 60:
            _save_vqvae(run, vqvae, opt, step, elapsed)
            last_ckpt = time.time()
    elapsed = elapsed_before + time.time() - t_start
    _save_vqvae(run, vqvae, opt, step, elapsed)
    iou = _vqvae_heldout_iou(vqvae, heldout, device)
    log.line(f"done: step {step}, held-out reconstruction IoU {iou:.4f}")
    (run / "vqvae_eval.json").write_text(json.dumps({"heldout_mask_iou": iou, "steps": step,
                                                     "heldout_masks": len(heldout)}, indent=2))


@torch.no_grad()
def _vqvae_heldout_iou(vqvae: MultiScaleVQVAE, masks: torch.Tensor, device: torch.device) -> float:
    vqvae.eval()
    ious = []
    for chunk in masks.split(128):
        chunk = chunk.to(device)
        recon = vqvae.idx_to_img(vqvae.img_to_idx(masks_to_images(chunk)))
        ious.append(mask_iou(vqvae.images_to_mask_probs(recon) > 0.5, chunk > 0.5))
    vqvae.train()
    return float(torch.cat(ious).mean())


def vqvae_config(image_size: int = 64) -> dict[str, Any]:
    """The tabletop VQ-VAE at 64 px (shipped) or 128 px: one more downsampling level, so the latent
    and every scale (1..16), hence the 341 visual tokens, stay the same; only the decoder grows."""
    if image_size == TABLETOP_VQVAE["image_size"]:
        return dict(TABLETOP_VQVAE)
    if image_size == 128:
        return {**TABLETOP_VQVAE, "image_size": 128, "ch_mult": (1, 1, 2, 2)}
    raise ValueError(f"tabletop VQ-VAE image size must be 64 or 128, got {image_size}")


def _vqvae_state(source: str, cfg: VQVAEConfig) -> dict[str, torch.Tensor]:
    """A VQ-VAE state dict from a trainer checkpoint.pt or a native model directory."""
    if Path(source).is_dir():
        model, _ = ARGenSegModel.from_pretrained(source)
        state = {k: v.float() for k, v in model.vqvae.state_dict().items()}
        found = model.vqvae.cfg
    else:
        ckpt = torch.load(source, map_location="cpu", weights_only=False)
        state, found = ckpt["vqvae"], VQVAEConfig.from_dict(ckpt["config"])
    if found.to_dict() != cfg.to_dict():
        raise SystemExit(f"--init {source}: its VQ-VAE is {found.to_dict()}, this run trains {cfg.to_dict()}")
    return state


def _save_vqvae(run: Path, vqvae: MultiScaleVQVAE, opt: torch.optim.Optimizer, step: int, elapsed: float) -> None:
    torch.save({"vqvae": vqvae.state_dict(), "opt": opt.state_dict(), "step": step, "elapsed": elapsed,
                "config": vqvae.cfg.to_dict()}, run / "checkpoint.tmp")
    os.replace(run / "checkpoint.tmp", run / "checkpoint.pt")


# ---- ARGenSeg --------------------------------------------------------------------------------------

@dataclass
class Sample:
    """One conversation, laid out for teacher forcing (masks still as pixels)."""
    row: tuple[list[int], list[int], list[int], list[int]]
    masks: list[np.ndarray]          # (S, S) float32 coverage per mask, in answer order
    grounding: np.ndarray | None     # (g, g) referent coverage on the image-token grid, or None


class ConversationEncoder:
    """Turns (instruction, reply with <mask>, masks) into token layouts; picklable for workers."""

    def __init__(self, model: ARGenSegModel, tokenizer: Any):
        self.tokenizer, self.config = tokenizer, model.config
        self.token_ids = model.config.token_ids
        self.num_slots, self.num_image_tokens = model.num_slots, model.num_image_tokens
        self.mask_size = model.vqvae.cfg.image_size
        self.grid = int(round(math.sqrt(self.num_image_tokens)))
        self._cache: dict[tuple[str, str], list] = {}   # the grammar repeats sentences a lot

    def prompt_ids(self, instruction: str) -> list[int]:
        key = ("prompt", instruction)
        if key not in self._cache:
            text = format_prompt(self.config, instruction, self.num_image_tokens)
            self._cache[key] = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return self._cache[key]

    def answer_items(self, reply: str) -> list[int | None]:
        key = ("answer", reply)
        if key not in self._cache:
            self._cache[key] = self._answer_items(reply)
        return self._cache[key]

    def _answer_items(self, reply: str) -> list[int | None]:
        pieces = reply.split(tabletop.MASK_PLACEHOLDER)
        items: list[int | None] = []
        for i, piece in enumerate(pieces):
            if i:
                items.append(None)
            if piece:
                items += self.tokenizer(piece, add_special_tokens=False)["input_ids"]
        return items + [self.token_ids["eos"]]

    def encode(self, instruction: str, reply: str, masks: list[np.ndarray],
               grounding_mask: np.ndarray | None) -> Sample:
        """Masks may come at any size (resized here) or already at the VQ-VAE's size."""
        row = layout_row(self.token_ids, self.num_slots, self.prompt_ids(instruction), self.answer_items(reply))
        masks = [m if m.shape == (self.mask_size, self.mask_size) and m.dtype == np.float32
                 else resize_mask(m, self.mask_size) for m in masks]
        grounding = None if grounding_mask is None else resize_mask(grounding_mask, self.grid)
        return Sample(row=row, masks=masks, grounding=grounding)


class TabletopConversations(IterableDataset):
    """Random scenes, each with several queries; yields (pixel_values, samples) per scene."""

    def __init__(self, encoder: ConversationEncoder, image_size: int, seed: int, queries: int = QUERIES_PER_SCENE,
                 mix: SceneMix = SceneMix()):
        self.encoder, self.image_size, self.seed, self.queries, self.mix = encoder, image_size, seed, queries, mix

    def __iter__(self):
        rng = _worker_rng(self.seed)
        while True:
            seed = int(rng.integers(TRAIN_SEED_LIMIT))
            if self.mix.use_mix(rng):
                scene, queries, _ = sample_focus_scene(seed, rng, self.queries, randomisation=self.mix.randomisation)
            else:
                scene = tabletop.render_scene(seed, randomisation=self.mix.randomisation)
                queries = tabletop.sample_queries(scene, rng, self.queries)
            yield scene_samples(scene, queries, self.encoder, self.image_size)


class DiskConversations(IterableDataset):
    """Conversations of a dataset directory (dataset.py format), in random order, forever."""

    def __init__(self, root: str, encoder: ConversationEncoder, image_size: int, seed: int):
        self.records = read_dataset(root)
        self.encoder, self.image_size, self.seed = encoder, image_size, seed

    def __iter__(self):
        rng = _worker_rng(self.seed)
        while True:
            record = self.records[int(rng.integers(len(self.records)))]
            image, masks = load_image(record), load_masks(record)
            grounding = masks[0] if masks else None
            sample = self.encoder.encode(record.instruction, record.answer, masks, grounding)
            yield image_to_pixel_values(image, self.image_size)[0].half(), [sample]


def scene_samples(scene: tabletop.Scene, queries: list[tabletop.Query], encoder: ConversationEncoder,
                  image_size: int) -> tuple[torch.Tensor, list[Sample]]:
    samples = []
    small = {}   # object index -> its mask at the VQ-VAE size, resized once per scene
    for q in queries:
        if q.target is not None and q.target not in small:
            small[q.target] = resize_mask(q.mask, encoder.mask_size)
        masks = [small[q.target]] if q.target is not None else []
        # the grounding target comes from the small mask (absent referents: all zero)
        grounding = small[q.target] if q.target is not None else (
            np.zeros((encoder.grid, encoder.grid), np.float32) if q.mask is not None else None)
        samples.append(encoder.encode(q.instruction, q.reply, masks, grounding))
    return image_to_pixel_values(scene.image, image_size)[0].half(), samples


@dataclass
class TrainBatch:
    pixel_values: torch.Tensor   # (S, 3, H, W) one per scene
    scene_index: torch.Tensor    # (B,) scene of each conversation
    teacher: TeacherBatch        # visual targets not yet filled
    masks: torch.Tensor          # (M, s, s) coverage of every mask, batch order
    grounding: torch.Tensor      # (B, g*g) targets
    grounding_weight: torch.Tensor  # (B,) 1 where a grounding target exists


def make_collate(token_ids: dict[str, int], scale_of_slot: list[int], cvae: int, mask_size: int, grid: int):
    def collate(scenes: list[tuple[torch.Tensor, list[Sample]]]) -> TrainBatch:
        pixels, scene_index, rows, masks, grounding, weight = [], [], [], [], [], []
        for s, (pix, samples) in enumerate(scenes):
            pixels.append(pix)
            for sample in samples:
                scene_index.append(s)
                rows.append(sample.row)
                masks += sample.masks
                has = sample.grounding is not None
                grounding.append(sample.grounding if has else np.zeros((grid, grid), np.float32))
                weight.append(1.0 if has else 0.0)
        teacher = collate_rows(rows, token_ids["pad"], scale_of_slot, cvae)
        mask_t = (torch.from_numpy(np.stack(masks)) if masks else torch.zeros(0, mask_size, mask_size))
        return TrainBatch(pixel_values=torch.stack(pixels), scene_index=torch.tensor(scene_index),
                          teacher=teacher, masks=mask_t,
                          grounding=torch.from_numpy(np.stack(grounding)).flatten(1),
                          grounding_weight=torch.tensor(weight))
    return collate


def sincos_2d(side: int, dim: int) -> torch.Tensor:
    """(side*side, dim) sine-cosine embedding of cell centres in 0-1 coordinates (row-major)."""
    centres = (torch.arange(side, dtype=torch.float32) + 0.5) / side
    yy, xx = torch.meshgrid(centres, centres, indexing="ij")
    quarter = dim // 4
    freqs = 2.0 ** torch.arange(quarter, dtype=torch.float32) * math.pi / 2
    parts = []
    for coord in (xx.flatten(), yy.flatten()):
        angles = coord[:, None] * freqs[None]
        parts += [torch.sin(angles), torch.cos(angles)]
    emb = torch.cat(parts, dim=1)
    return F.pad(emb, (0, dim - emb.shape[1]))


def init_positions(model: ARGenSegModel, scale: float = 0.1) -> None:
    """ViT patch positions and pos_1LC from one 2-D code of 0-1 image coordinates."""
    with torch.no_grad():
        emb = model.backbone.model.vision_tower.embeddings
        n_patches = emb.position_embeddings.shape[1] - 1
        side = int(round(math.sqrt(n_patches)))
        emb.position_embeddings[0, 1:] = scale * sincos_2d(side, emb.position_embeddings.shape[-1])
        hidden = model.pos_1LC.shape[-1]
        rows = [sincos_2d(pn, hidden) for pn in model.patch_nums]
        model.pos_1LC[0] = scale * torch.cat(rows)


def build_tabletop_model(vqvae_state: dict[str, torch.Tensor] | None, seed: int,
                         vqvae: dict[str, Any] | None = None,
                         sizes: dict[str, Any] | None = None) -> tuple[ARGenSegModel, Any]:
    """A fresh tabletop ARGenSeg (TABLETOP_* sizes unless overridden) on a trained mask VQ-VAE."""
    vq_cfg = VQVAEConfig(**(vqvae or TABLETOP_VQVAE))
    corpus = tabletop.expression_vocabulary()
    tokenizer = build_tabletop_tokenizer(corpus, vq_cfg.vocab_size, bpe_vocab_size=400)
    token_ids = resolve_token_ids(tokenizer, vq_cfg.vocab_size)
    config = build_config(token_ids, len(tokenizer), vq_cfg, prompt_template=TEXT_FIRST_PROMPT_TEMPLATE,
                          system_prompt="", name="argenseg-tabletop", **(sizes or TABLETOP_SIZES))
    torch.manual_seed(seed)
    model = ARGenSegModel(config)
    if vqvae_state is not None:
        model.vqvae.load_state_dict(vqvae_state)
    init_positions(model)
    return model, tokenizer


class Losses(nn.Module):
    """Joint-vocabulary CE (text + per-scale-balanced visual) and the training-only grounding head."""

    def __init__(self, model: ARGenSegModel, grounding_weight: float):
        super().__init__()
        hidden = model.pos_1LC.shape[-1]
        self.grounding_head = nn.Linear(hidden, 1)
        self.grounding_weight = grounding_weight
        self.num_scales = len(model.patch_nums)
        # hidden_states index of the grounded image-token states: the middle LLM block's output
        self.grounding_layer = model.backbone.config.text_config.num_hidden_layers // 2

    def forward(self, model: ARGenSegModel, batch: TrainBatch, image_features: torch.Tensor) -> dict[str, torch.Tensor]:
        t = batch.teacher
        out = teacher_forward(model, t, image_features, output_hidden_states=self.grounding_weight > 0)
        sel = t.targets != IGNORE
        logits = model.logits(out.last_hidden_state[sel]).float()           # (P, V)
        ce = F.cross_entropy(logits, t.targets[sel], reduction="none")     # (P,)
        scale = t.scale[sel]
        text = ce[scale < 0].mean() if (scale < 0).any() else ce.sum() * 0
        per_scale = []
        for k in range(self.num_scales):
            at = scale == k
            if at.any():
                per_scale.append(ce[at].mean())
        visual = torch.stack(per_scale).mean() if per_scale else ce.sum() * 0
        losses = {"text": text, "visual": visual}
        for k, value in enumerate(per_scale):
            losses[f"scale{k}"] = value.detach()
        if self.grounding_weight > 0:
            h = out.hidden_states[self.grounding_layer]
            is_img = t.input_ids == model.config.token_ids["img_context"]
            img_states = h[is_img].view(h.shape[0], -1, h.shape[-1])       # (B, N, C)
            g_logits = self.grounding_head(img_states).squeeze(-1).float()  # (B, N)
            bce = F.binary_cross_entropy_with_logits(g_logits, batch.grounding, reduction="none").mean(1)
            w = batch.grounding_weight
            losses["grounding"] = (bce * w).sum() / w.sum().clamp(min=1)
        total = text + visual + self.grounding_weight * losses.get("grounding", 0.0)
        losses["total"] = total
        return losses


def prepare_batch(model: ARGenSegModel, batch: TrainBatch, device: torch.device) -> TrainBatch:
    """Move to device, encode masks with the frozen VQ-VAE, fill visual targets; image features."""
    teacher = batch.teacher.to(device)
    if batch.masks.shape[0]:
        with torch.no_grad():
            ids = model.vqvae.img_to_idx(masks_to_images(batch.masks.to(device).float()))
            codes = torch.cat(ids, dim=1)
            inputs = model.vqvae.idx_to_teacher_inputs(ids)
        teacher = fill_masks(teacher, codes, inputs, model.config.token_ids["visual_offset"])
    batch = TrainBatch(pixel_values=batch.pixel_values.to(device).float(),
                       scene_index=batch.scene_index.to(device), teacher=teacher, masks=batch.masks,
                       grounding=batch.grounding.to(device), grounding_weight=batch.grounding_weight.to(device))
    return batch


def train_model(args: argparse.Namespace) -> None:
    run, log = _start_run(args)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    if args.init:   # continue from a trained model (its VQ-VAE, so its codes, stay as they are)
        model, tokenizer = ARGenSegModel.from_pretrained(args.init)
    elif args.vqvae:
        vq_ckpt = torch.load(args.vqvae, map_location="cpu", weights_only=False)
        model, tokenizer = build_tabletop_model(vq_ckpt["vqvae"], args.seed, vqvae=vq_ckpt.get("config"))
    else:
        raise SystemExit("argenseg-train: give --vqvae (a new model) or --init (continue a model)")
    model.to(device)
    losses = Losses(model, args.grounding_weight).to(device)
    params = [p for p in model.parameters() if p.requires_grad] + list(losses.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.95), weight_decay=0.05)
    ckpt_path = run / "checkpoint.pt"
    step, samples_seen, elapsed_before = 0, 0, 0.0
    if ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=False)
        model.load_state_dict(ckpt["model"])
        losses.load_state_dict(ckpt["losses"])
        opt.load_state_dict(ckpt["opt"])
        step, samples_seen, elapsed_before = ckpt["step"], ckpt["samples"], ckpt["elapsed"]
        log.line(f"resumed at step {step}, {samples_seen} samples, {elapsed_before / 60:.1f} min done")
    n_params = sum(p.numel() for p in model.parameters())
    log.line(f"ARGenSeg tabletop: {n_params / 1e6:.2f}M params on {device}; command: {' '.join(sys.argv)}")
    encoder = ConversationEncoder(model, tokenizer)
    collate = make_collate(model.config.token_ids, model.scale_of_slot.tolist(), model.vqvae.cfg.z_channels,
                           model.vqvae.cfg.image_size, encoder.grid)
    source = (DiskConversations(args.data, encoder, model.image_size, args.seed + step) if args.data
              else TabletopConversations(encoder, model.image_size, args.seed + step,
                                         mix=SceneMix(args.data_mix, FULL_RANDOMISATION if args.randomise else None)))
    scenes_per_batch = max(1, args.batch // (1 if args.data else QUERIES_PER_SCENE))
    loader = DataLoader(source, batch_size=scenes_per_batch, num_workers=args.workers, collate_fn=collate,
                        persistent_workers=args.workers > 0, pin_memory=device.type == "cuda",
                        prefetch_factor=4 if args.workers > 0 else None)
    heldout = collate([scene_samples(sc, tabletop.sample_queries(sc, np.random.default_rng(s), QUERIES_PER_SCENE),
                                     encoder, model.image_size)
                       for s, sc in ((s, tabletop.render_scene(HELDOUT_SEED_BASE + s)) for s in range(8))])
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    t_start, last_ckpt, last_log, last_samples = time.time(), time.time(), time.time(), samples_seen
    model.train()
    for batch, elapsed in scheduled(loader, opt, args.lr, args.minutes * 60, elapsed_before):
        batch = prepare_batch(model, batch, device)
        with autocast:
            feats = model.image_features(batch.pixel_values)[batch.scene_index]
            out = losses(model, batch, feats)
        opt.zero_grad(set_to_none=True)
        out["total"].backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        samples_seen += len(batch.scene_index)
        if step % args.log_every == 0:
            rate = (samples_seen - last_samples) / (time.time() - last_log)
            last_log, last_samples = time.time(), samples_seen
            gap = _shuffle_gap(model, losses, heldout, device, autocast)
            scales = " ".join(f"{out[f'scale{k}'].item():.2f}" for k in range(len(model.patch_nums)) if f"scale{k}" in out)
            log.line(f"step {step} samples {samples_seen} ({rate:.0f}/s) total {out['total'].item():.3f} "
                     f"text {out['text'].item():.3f} visual {out['visual'].item():.3f} [{scales}] "
                     f"grounding {out.get('grounding', torch.tensor(0.)).item():.3f} | held-out visual "
                     f"{gap['real']:.3f} shuffled {gap['shuffled']:.3f} gap {gap['gap']:+.3f} "
                     f"({elapsed / 60:.1f} min)")
            log.metrics({"step": step, "samples": samples_seen, "elapsed": elapsed,
                         **{k: float(v.detach()) for k, v in out.items()}, **{f"heldout_{k}": v for k, v in gap.items()}})
        if time.time() - last_ckpt > args.checkpoint_minutes * 60:
            _save_model(run, model, tokenizer, losses, opt, step, samples_seen,
                        elapsed_before + time.time() - t_start, args)
            last_ckpt = time.time()
    _save_model(run, model, tokenizer, losses, opt, step, samples_seen, elapsed_before + time.time() - t_start, args)
    log.line(f"done: step {step}, {samples_seen} samples; model saved to {run / 'model'}")


@torch.no_grad()
def _shuffle_gap(model: ARGenSegModel, losses: Losses, heldout: TrainBatch, device: torch.device,
                 autocast) -> dict[str, float]:
    """Held-out visual loss with the right images and with images rolled across scenes."""
    model.eval()
    batch = prepare_batch(model, heldout, device)
    with autocast:
        feats = model.image_features(batch.pixel_values)
        real = losses(model, batch, feats[batch.scene_index])["visual"].item()
        rolled = (batch.scene_index + 1) % feats.shape[0]
        shuffled = losses(model, batch, feats[rolled])["visual"].item()
    model.train()
    return {"real": real, "shuffled": shuffled, "gap": shuffled - real}


def _save_model(run: Path, model: ARGenSegModel, tokenizer: Any, losses: Losses, opt: torch.optim.Optimizer,
                step: int, samples: int, elapsed: float, args: argparse.Namespace) -> None:
    model.config.extra = {"training": {"command": " ".join(sys.argv), "seed": args.seed, "steps": step,
                                       "samples": samples, "minutes": round(elapsed / 60, 2)}}
    model.save_pretrained(run / "model", tokenizer, storage_dtype=torch.float16)
    torch.save({"model": model.state_dict(), "losses": losses.state_dict(), "opt": opt.state_dict(),
                "step": step, "samples": samples, "elapsed": elapsed}, run / "checkpoint.tmp")
    os.replace(run / "checkpoint.tmp", run / "checkpoint.pt")


# ---- command lines -------------------------------------------------------------------------------

def _common_args(parser: argparse.ArgumentParser, minutes: float, lr: float, batch: int) -> None:
    parser.add_argument("--out", required=True, help="run directory (log, checkpoints, results)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--minutes", type=float, default=minutes, help="wall-clock training budget")
    parser.add_argument("--lr", type=float, default=lr)
    parser.add_argument("--batch", type=int, default=batch)
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--checkpoint-minutes", type=float, default=2.0)
    parser.add_argument("--data-mix", type=float, default=0.0,
                        help="share of training scenes drawn from the failure mix (data_mix.py); default 0: plain")
    parser.add_argument("--randomise", action="store_true",
                        help="render training scenes with domain randomisation (randomisation.py)")


def main_vqvae(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train the tabletop mask VQ-VAE (resumes from <out>/checkpoint.pt).")
    _common_args(parser, minutes=20, lr=2e-3, batch=64)
    parser.add_argument("--image-size", type=int, default=64, choices=[64, 128], help="mask size of the VQ-VAE")
    parser.add_argument("--init", default=None, help="start from this VQ-VAE (checkpoint.pt or model directory; "
                        "same configuration; a fresh optimizer, so use --lr 3e-5 or lower: one step at 1e-3 "
                        "ruins the shipped one); <out>/checkpoint.pt still wins when present")
    parser.add_argument("--restart-every", type=int, default=0,
                        help="every N steps move dead codes onto encoder latents (codebook.py); 0: never")
    train_vqvae(parser.parse_args(argv))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train the tabletop ARGenSeg (resumes from <out>/checkpoint.pt).")
    _common_args(parser, minutes=150, lr=1e-3, batch=256)
    parser.add_argument("--vqvae", help="checkpoint.pt of a VQ-VAE run (a new model on that VQ-VAE)")
    parser.add_argument("--init", help="native model directory to continue training (e.g. the shipped "
                        "model); a fresh optimizer and schedule; <out>/checkpoint.pt still wins when present")
    parser.add_argument("--data", default=None, help="dataset directory (dataset.py format); default: "
                        "tabletop scenes generated on the fly")
    parser.add_argument("--grounding-weight", type=float, default=1.0)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    train_model(parser.parse_args(argv))


if __name__ == "__main__":
    main()
