"""Teacher-forced sequences: a prompt and an answer whose masks are laid out as next-scale slots.

Used by the trainer, and by the tests that check generation against one teacher-forced forward.
Target rules (one head, one cross-entropy over the joint vocabulary):
  - a text position predicts the next token (the token before a mask predicts `<ge_start>`);
  - the `<ge_start>` slot predicts scale 0's code; a slot of scale k >= 1 predicts the code at the
    same place of scale k;
  - `<ge_end>` is forced at generation, so nothing predicts it; its own position predicts the text
    that follows; prompt positions predict nothing, except the last, which predicts the answer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .model import ARGenSegModel

IGNORE = -100


@dataclass
class MaskTokens:
    codes: torch.Tensor          # (L,) code ids, scale by scale (row-major within a scale)
    slot_inputs: torch.Tensor    # (L - 1, Cvae) next-scale inputs of slots 1..L-1


@dataclass
class TeacherBatch:
    input_ids: torch.Tensor      # (B, T) right-padded
    slots: torch.Tensor          # (B, T) mask slot per position, -1 for text
    slot_inputs: torch.Tensor    # (B, T, Cvae), zero except at slots >= 1
    targets: torch.Tensor        # (B, T) joint-vocabulary targets, IGNORE where no loss
    valid: torch.Tensor          # (B, T) bool
    scale: torch.Tensor          # (B, T) scale of the visual target, -1 for text targets / ignored
    mask_index: torch.Tensor     # (B, T) which mask of the batch a slot belongs to, -1 for text

    def to(self, device: torch.device | str) -> "TeacherBatch":
        return TeacherBatch(*(t.to(device, non_blocking=True) for t in (
            self.input_ids, self.slots, self.slot_inputs, self.targets, self.valid, self.scale, self.mask_index)))


def layout_row(token_ids: dict[str, int], num_slots: int, prompt: list[int],
               answer: list[int | None]) -> tuple[list[int], list[int], list[int], list[int]]:
    """Sequence of one conversation before its masks are tokenized; `None` in `answer` is a mask.

    Returns (input_ids, slots, targets, mask_ordinal): visual targets are left IGNORE (filled by
    `fill_masks` once the masks are encoded), mask_ordinal numbers the row's masks at their slots.
    No model is needed, so data-loader workers can do this.
    """
    seq: list[int] = list(prompt)
    slots: list[int] = [-1] * len(prompt)
    targets: list[int] = [IGNORE] * len(prompt)
    ordinal: list[int] = [-1] * len(prompt)
    n_masks = 0
    for item in answer:
        if item is None:
            targets[-1] = token_ids["ge_start"]
            seq += [token_ids["ge_start"]] + [token_ids["mask_context"]] * (num_slots - 1) + [token_ids["ge_end"]]
            slots += list(range(num_slots)) + [-1]
            targets += [IGNORE] * (num_slots + 1)
            ordinal += [n_masks] * num_slots + [-1]
            n_masks += 1
        else:
            targets[-1] = int(item)
            seq.append(int(item))
            slots.append(-1)
            targets.append(IGNORE)
            ordinal.append(-1)
    return seq, slots, targets, ordinal


def collate_rows(rows: list[tuple[list[int], list[int], list[int], list[int]]], pad_id: int,
                 scale_of_slot: list[int], cvae: int, pad_to: int | None = None) -> TeacherBatch:
    """Right-pad laid-out rows into a batch; mask ordinals become batch-wide mask indices."""
    B = len(rows)
    T = max(pad_to or 0, max(len(r[0]) for r in rows))
    batch = TeacherBatch(
        input_ids=torch.full((B, T), pad_id, dtype=torch.long),
        slots=torch.full((B, T), -1, dtype=torch.long),
        slot_inputs=torch.zeros(B, T, cvae),
        targets=torch.full((B, T), IGNORE, dtype=torch.long),
        valid=torch.zeros(B, T, dtype=torch.bool),
        scale=torch.full((B, T), -1, dtype=torch.long),
        mask_index=torch.full((B, T), -1, dtype=torch.long))
    scale_lut = np.asarray(scale_of_slot + [-1])       # index -1 -> -1
    masks_before = 0
    for b, (seq, slots, targets, ordinal) in enumerate(rows):
        n = len(seq)
        slots_a, ordinal_a = np.asarray(slots), np.asarray(ordinal)
        batch.input_ids[b, :n] = torch.from_numpy(np.asarray(seq))
        batch.slots[b, :n] = torch.from_numpy(slots_a)
        batch.targets[b, :n] = torch.from_numpy(np.asarray(targets))
        batch.scale[b, :n] = torch.from_numpy(scale_lut[slots_a])
        batch.valid[b, :n] = True
        batch.mask_index[b, :n] = torch.from_numpy(np.where(ordinal_a >= 0, ordinal_a + masks_before, -1))
        masks_before += int(ordinal_a.max(initial=-1)) + 1
    return batch


def fill_masks(batch: TeacherBatch, codes_ML: torch.Tensor, slot_inputs_MLC: torch.Tensor,
               visual_offset: int) -> TeacherBatch:
    """Put the batch's encoded masks in place: visual targets and next-scale slot inputs."""
    at_slot = batch.mask_index >= 0
    m, s = batch.mask_index[at_slot], batch.slots[at_slot]
    batch.targets[at_slot] = codes_ML[m, s] + visual_offset
    fed = at_slot & (batch.slots > 0)
    inputs = batch.slot_inputs.to(slot_inputs_MLC.dtype)
    inputs[fed] = slot_inputs_MLC[batch.mask_index[fed], batch.slots[fed] - 1]
    batch.slot_inputs = inputs
    return batch


def mask_tokens_from_ids(model: ARGenSegModel, ids_per_scale: list[torch.Tensor]) -> list[MaskTokens]:
    """Per-scale ids (B, pn^2) of B masks -> their teacher-forcing tokens (one VQ-VAE pass for all)."""
    inputs = model.vqvae.idx_to_teacher_inputs(ids_per_scale)       # (B, L-1, Cvae)
    flat = torch.cat(ids_per_scale, dim=1)                           # (B, L)
    return [MaskTokens(codes=flat[b], slot_inputs=inputs[b]) for b in range(flat.shape[0])]


def build_teacher_batch(model: ARGenSegModel, prompts: list[list[int]],
                        answers: list[list[int | MaskTokens]]) -> TeacherBatch:
    """Answers are token ids with a `MaskTokens` where each mask goes (no <ge_start>/<ge_end>)."""
    ids = model.config.token_ids
    rows, masks = [], []
    for prompt, answer in zip(prompts, answers, strict=True):
        rows.append(layout_row(ids, model.num_slots, prompt,
                               [None if isinstance(a, MaskTokens) else a for a in answer]))
        masks += [a for a in answer if isinstance(a, MaskTokens)]
    batch = collate_rows(rows, ids["pad"], model.scale_of_slot.tolist(), model.vqvae.cfg.z_channels)
    if masks:
        batch = fill_masks(batch, torch.stack([m.codes for m in masks]),
                           torch.stack([m.slot_inputs for m in masks]), ids["visual_offset"])
    return batch


def teacher_forward(model: ARGenSegModel, batch: TeacherBatch, image_features_BNC: torch.Tensor,
                    output_hidden_states: bool = False):
    """One causal forward over whole right-padded sequences (no mask needed); returns the LLM output."""
    embeds = model.embed(batch.input_ids, slot_BT=batch.slots, slot_inputs_BTC=batch.slot_inputs,
                         image_features_BNC=image_features_BNC)
    position_ids = (batch.valid.long().cumsum(1) - 1).clamp(min=0)
    return model.decode(embeds, None, position_ids, output_hidden_states=output_hidden_states)
