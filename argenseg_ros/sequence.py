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

    def to(self, device: torch.device | str) -> "TeacherBatch":
        return TeacherBatch(*(t.to(device) for t in (self.input_ids, self.slots, self.slot_inputs,
                                                     self.targets, self.valid, self.scale)))


def mask_tokens_from_ids(model: ARGenSegModel, ids_per_scale: list[torch.Tensor]) -> list[MaskTokens]:
    """Per-scale ids (B, pn^2) of B masks -> their teacher-forcing tokens (one VQ-VAE pass for all)."""
    inputs = model.vqvae.idx_to_teacher_inputs(ids_per_scale)       # (B, L-1, Cvae)
    flat = torch.cat(ids_per_scale, dim=1)                           # (B, L)
    return [MaskTokens(codes=flat[b], slot_inputs=inputs[b]) for b in range(flat.shape[0])]


def build_teacher_batch(model: ARGenSegModel, prompts: list[list[int]],
                        answers: list[list[int | MaskTokens]]) -> TeacherBatch:
    """Answers are token ids with a `MaskTokens` where each mask goes (no <ge_start>/<ge_end>)."""
    ids = model.config.token_ids
    cvae = model.vqvae.cfg.z_channels
    L = model.num_slots
    scale_of_slot = model.scale_of_slot.tolist()
    rows = []
    for prompt, answer in zip(prompts, answers, strict=True):
        seq: list[int] = list(prompt)
        slots: list[int] = [-1] * len(prompt)
        targets: list[int] = [IGNORE] * len(prompt)
        scales: list[int] = [-1] * len(prompt)
        pieces: list[tuple[int, torch.Tensor]] = []   # (start position, slot inputs) of each mask
        for item in answer:
            if isinstance(item, MaskTokens):
                targets[-1] = ids["ge_start"]
                start = len(seq)
                seq += [ids["ge_start"]] + [ids["mask_context"]] * (L - 1) + [ids["ge_end"]]
                slots += list(range(L)) + [-1]
                targets += (item.codes + ids["visual_offset"]).tolist() + [IGNORE]
                scales += scale_of_slot + [-1]
                pieces.append((start, item.slot_inputs))
            else:
                targets[-1] = int(item)
                seq.append(int(item))
                slots.append(-1)
                targets.append(IGNORE)
                scales.append(-1)
        rows.append((seq, slots, targets, scales, pieces))
    B, T = len(rows), max(len(r[0]) for r in rows)
    batch = TeacherBatch(
        input_ids=torch.full((B, T), ids["pad"], dtype=torch.long),
        slots=torch.full((B, T), -1, dtype=torch.long),
        slot_inputs=torch.zeros(B, T, cvae, dtype=model.pos_1LC.dtype),
        targets=torch.full((B, T), IGNORE, dtype=torch.long),
        valid=torch.zeros(B, T, dtype=torch.bool),
        scale=torch.full((B, T), -1, dtype=torch.long))
    for b, (seq, slots, targets, scales, pieces) in enumerate(rows):
        n = len(seq)
        batch.input_ids[b, :n] = torch.tensor(seq)
        batch.slots[b, :n] = torch.tensor(slots)
        batch.targets[b, :n] = torch.tensor(targets)
        batch.scale[b, :n] = torch.tensor(scales)
        batch.valid[b, :n] = True
        for start, inputs in pieces:
            batch.slot_inputs[b, start + 1:start + L] = inputs.to(batch.slot_inputs.dtype).cpu()
    return batch


def teacher_forward(model: ARGenSegModel, batch: TeacherBatch, image_features_BNC: torch.Tensor,
                    output_hidden_states: bool = False):
    """One causal forward over whole right-padded sequences; returns the LLM output."""
    embeds = model.embed(batch.input_ids, slot_BT=batch.slots, slot_inputs_BTC=batch.slot_inputs,
                         image_features_BNC=image_features_BNC)
    position_ids = (batch.valid.long().cumsum(1) - 1).clamp(min=0)
    return model.decode(embeds, batch.valid, position_ids, output_hidden_states=output_hidden_states)
