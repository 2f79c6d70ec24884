"""One generation loop for text and masks (ARGenSeg, next-scale prediction).

Greedy text (over the head's text rows only: `ARGenSegModel.text_logits`); when a row emits
`<ge_start>` it is fed with its scale-0 slot, whose visual logits give scale 0; each later scale
is ONE forward over all its pn^2 next-scale inputs with the KV cache; after the last scale f_hat is
decoded once, `<ge_end>` is forced and the text goes on. Rows of a batch may be in different
phases: each step feeds every row a chunk of its own length, right-padded, and the padded keys
stay masked in the cache, so rows never see each other's padding.

Each forward goes through a decoder (`static_decode.py`): `fast=True` (default) uses the static KV
cache and the lean LLM forward (CUDA graphs optional), `fast=False` the eager reference, transformers'
text model with a DynamicCache. Both run inside this one loop; the tests require the same tokens.
In the mask phase the loop never reads a device value: codes stay on the device until the mask is
complete, so a CUDA device is never made to wait for the host between scales.

All per-request state lives in local variables (or in a decoder the caller owns): the model is only
read, so one model can serve several threads (the caller serialises access to a device if it wants to).
"""

from __future__ import annotations

import bisect
import time
from dataclasses import dataclass, field
from enum import Enum

import torch

from .model import ARGenSegModel
from .static_decode import ChunkInputs, EagerDecoder, StaticDecoder, UnsupportedByStaticDecoder


class Phase(Enum):
    TEXT = "text"
    MASK = "mask"
    DONE = "done"


@dataclass
class GenerationOutput:
    token_ids: list[list[int]]                        # per row: generated ids (text, <ge_start>, visual, <ge_end>)
    mask_images: list[list[torch.Tensor]]             # per row, per mask: decoded (3, Hm, Wm) in [-1, 1], float32 cpu
    mask_codes: list[list[list[torch.Tensor]]]        # per row, per mask, per scale: (pn*pn,) code ids
    timings: dict[str, float] = field(default_factory=dict)  # seconds: prefill, text_decode, mask_decode, vqvae_decode
    step_logits: list[list[tuple[str, torch.Tensor]]] | None = None  # per row: ("text"|"visual", logits) in order
    decoder: StaticDecoder | None = None              # the static decoder that ran (reusable), None if eager


@dataclass
class _Row:
    """Per-row generation state (lives only inside one `generate` call)."""
    phase: Phase = Phase.TEXT
    scale: int = 0                    # scale whose logits the next forward yields (MASK phase)
    raster_slot: int = 0              # raster mode: slot whose logits the next forward yields
    masks_done: int = 0
    text_tokens: int = 0
    chunk_ids: list[int] = field(default_factory=list)
    chunk_slots: list[int] = field(default_factory=list)
    chunk_inputs: torch.Tensor | None = None          # (n, Cvae) next-scale inputs for slots >= 1
    codes: list[torch.Tensor] = field(default_factory=list)


def cfg_logits(cond_BNV: torch.Tensor, uncond_BNV: torch.Tensor, cfg: float, scale: int,
               num_scales: int) -> torch.Tensor:
    """Classifier-free guidance of the release: (1 + t) * cond - t * uncond, t = cfg * k / (K - 1)."""
    t = cfg * scale / max(num_scales - 1, 1)
    return (1.0 + t) * cond_BNV - t * uncond_BNV


@torch.no_grad()
def generate(model: ARGenSegModel, input_ids_BT: torch.Tensor, prompt_valid_BT: torch.Tensor,
             pixel_values_B3SS: torch.Tensor, *, max_new_tokens: int = 48, max_masks: int = 4,
             cfg_scale: float = 0.0, uncond_input_ids_BT: torch.Tensor | None = None,
             uncond_valid_BT: torch.Tensor | None = None, raster_order: bool = False,
             record_logits: bool = False, fast: bool = True, cuda_graphs: bool = False,
             decoder: StaticDecoder | None = None) -> GenerationOutput:
    """Generate replies with masks for B left-padded prompts.

    With `cfg_scale > 0`, the unconditional prompts (same images) run as B extra rows; visual
    logits are guided, text follows the conditional rows. `raster_order=True` generates the same
    number of visual tokens one per forward (timing comparisons only; masks are not meaningful).
    `fast=False` runs the eager reference decoder. `decoder`: a `StaticDecoder` to reuse (its
    cache and CUDA graphs), used if it fits this request, else a fresh one is allocated (capturing
    CUDA graphs if `cuda_graphs`); the one that ran is returned in the output for the next call.
    """
    device = input_ids_BT.device
    ids = model.config.token_ids
    B = input_ids_BT.shape[0]
    use_cfg = cfg_scale > 0.0
    if use_cfg:
        if uncond_input_ids_BT is None or uncond_valid_BT is None:
            raise ValueError("cfg_scale > 0 needs the unconditional prompts")
        input_ids_BT, prompt_valid_BT = _stack_left_padded(
            [(input_ids_BT, prompt_valid_BT), (uncond_input_ids_BT, uncond_valid_BT)], ids["pad"])
        pixel_values_B3SS = torch.cat([pixel_values_B3SS, pixel_values_B3SS])
    R = input_ids_BT.shape[0]  # rows actually run: B, or 2B with guidance
    K = len(model.patch_nums)
    dtype = model.pos_1LC.dtype
    timings = {"prefill": 0.0, "text_decode": 0.0, "mask_decode": 0.0, "vqvae_decode": 0.0}

    # ---- prefill: image tokens + prompt ----------------------------------------------------------
    t0 = time.perf_counter()
    image_features = model.image_features(pixel_values_B3SS.to(device=device, dtype=dtype))
    embeds = model.embed(input_ids_BT, image_features_BNC=image_features)
    key_valid = prompt_valid_BT.bool()
    next_pos = key_valid.long().sum(1)                                  # (R,) next RoPE position
    position_ids = (key_valid.long().cumsum(1) - 1).clamp(min=0)
    step_decoder: StaticDecoder | EagerDecoder = EagerDecoder(model)
    if fast:
        capacity, max_position = static_cache_size(model, input_ids_BT.shape[1], B, max_new_tokens, max_masks)
        if decoder is None or not decoder.fits(R, capacity, max_position):
            try:
                decoder = StaticDecoder.allocate(model, R, capacity, max_position=max_position,
                                                 cuda_graphs=cuda_graphs)
            except UnsupportedByStaticDecoder:
                decoder = None           # e.g. dynamic RoPE past max_position_embeddings: eager is exact
        if decoder is not None:
            step_decoder = decoder.start()
    hidden = step_decoder.prefill(embeds, key_valid, position_ids)
    last_hidden = hidden[:, -1]                                          # left padding: last is real
    timings["prefill"] = time.perf_counter() - t0

    rows = [_Row() for _ in range(B)]
    token_ids: list[list[int]] = [[] for _ in range(B)]
    mask_images: list[list[torch.Tensor]] = [[] for _ in range(B)]
    mask_codes: list[list[list[torch.Tensor]]] = [[] for _ in range(B)]
    step_logits: list[list[tuple[str, torch.Tensor]]] | None = [[] for _ in range(B)] if record_logits else None
    f_hat = model.vqvae.empty_fhat(B, device=device, dtype=dtype)
    text_hidden = last_hidden                                            # (R, C) per row, for TEXT rows
    chunk_hidden = hidden                                                # (R, n, C) of the last forward

    while True:
        # ---- read the logits of the last forward, decide each row's next chunk -------------------
        finished_masks: list[int] = []
        for b, row in enumerate(rows):
            if row.phase is Phase.TEXT:
                logits = model.text_logits(text_hidden[b]).float()
                if row.masks_done >= max_masks:
                    logits[ids["ge_start"]] = float("-inf")
                if step_logits is not None:
                    step_logits[b].append(("text", logits.cpu()))
                token = int(logits.argmax())
                token_ids[b].append(token)
                row.text_tokens += 1
                if token == ids["eos"] or row.text_tokens >= max_new_tokens:
                    row.phase = Phase.DONE
                elif token == ids["ge_start"]:
                    row.phase, row.scale, row.raster_slot, row.codes = Phase.MASK, 0, 0, []
                    row.chunk_ids, row.chunk_slots, row.chunk_inputs = [token], [0], None
                else:
                    row.chunk_ids, row.chunk_slots, row.chunk_inputs = [token], [-1], None
            elif row.phase is Phase.MASK:
                n = len(row.chunk_slots)
                logits = model.visual_logits(chunk_hidden[b, :n]).float()          # (n, V)
                if use_cfg:
                    uncond = model.visual_logits(chunk_hidden[B + b, :n]).float()
                    logits = cfg_logits(logits, uncond, cfg_scale, row.scale, K)
                if step_logits is not None:
                    step_logits[b].append(("visual", logits.cpu()))
                codes = logits.argmax(-1)                                         # (n,), on the device
                if raster_order:
                    _raster_step(model, row, codes)
                else:
                    _next_scale_step(model, row, codes, f_hat, b)
                if row.phase is Phase.TEXT:      # the mask is complete: force <ge_end>
                    token_ids[b].extend((torch.cat(row.codes) + ids["visual_offset"]).tolist())
                    finished_masks.append(b)
                    row.chunk_ids, row.chunk_slots, row.chunk_inputs = [ids["ge_end"]], [-1], None
                    token_ids[b].append(ids["ge_end"])
        if finished_masks:
            t_vq = time.perf_counter()
            _decode_masks(model, rows, finished_masks, f_hat, mask_images, mask_codes, raster_order)
            timings["vqvae_decode"] += time.perf_counter() - t_vq
        if all(row.phase is Phase.DONE for row in rows):
            break

        # ---- one forward over every row's chunk ----------------------------------------------------
        t_step = time.perf_counter()
        in_mask = any(row.phase is Phase.MASK for row in rows)
        chunk = _chunk_inputs(model, rows, use_cfg, device, next_pos)
        chunk_valid = chunk.valid_Rn
        next_pos = next_pos + chunk_valid.long().sum(1)
        chunk_hidden = step_decoder.step(chunk)
        last = (chunk_valid.long().sum(1) - 1).clamp(min=0)
        text_hidden = chunk_hidden[torch.arange(R, device=device), last]
        timings["mask_decode" if in_mask else "text_decode"] += time.perf_counter() - t_step

    return GenerationOutput(token_ids=token_ids, mask_images=mask_images, mask_codes=mask_codes,
                            timings=timings, step_logits=step_logits,
                            decoder=step_decoder if isinstance(step_decoder, StaticDecoder) else None)


def static_cache_size(model: ARGenSegModel, prompt_len: int, rows: int, max_new_tokens: int,
                      max_masks: int) -> tuple[int, int]:
    """(cache columns, RoPE positions) one request can reach. A row feeds at most `max_new_tokens`
    text columns and L per mask (its positions); a step's width is that of its widest row, so the
    rows' sum bounds the columns. Rounded up so that a reused decoder fits the next, slightly
    longer prompt."""
    per_row = max_new_tokens + max_masks * model.num_slots
    return _round_up(prompt_len + rows * per_row, 64), _round_up(prompt_len + per_row, 64)


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _next_scale_step(model: ARGenSegModel, row: _Row, codes: torch.Tensor, f_hat: torch.Tensor, b: int) -> None:
    """Codes of scale `row.scale` are known: update f_hat and prepare the next scale's inputs."""
    row.codes.append(codes)
    f_b, next_inputs = model.vqvae.next_scale_step(row.scale, f_hat[b:b + 1], codes[None])
    f_hat[b:b + 1] = f_b
    if next_inputs is None:
        row.phase = Phase.TEXT
        row.masks_done += 1
        return
    row.scale += 1
    begin = model.scale_begin[row.scale]
    n = model.patch_nums[row.scale] ** 2
    row.chunk_ids = [model.config.token_ids["mask_context"]] * n
    row.chunk_slots = list(range(begin, begin + n))
    row.chunk_inputs = next_inputs[0]


def _raster_step(model: ARGenSegModel, row: _Row, codes: torch.Tensor) -> None:
    """Raster order: one visual token per forward, fed back as its code vector (timing mode)."""
    row.codes.append(codes)
    row.raster_slot += 1
    if row.raster_slot >= model.num_slots:
        row.phase = Phase.TEXT
        row.masks_done += 1
        return
    row.scale = bisect.bisect_right(model.scale_begin, row.raster_slot) - 1   # host-side: no device read
    row.chunk_ids = [model.config.token_ids["mask_context"]]
    row.chunk_slots = [row.raster_slot]
    row.chunk_inputs = model.vqvae.quantize.embedding.weight[codes]


def _decode_masks(model: ARGenSegModel, rows: list[_Row], finished: list[int], f_hat: torch.Tensor,
                  mask_images: list, mask_codes: list, raster_order: bool) -> None:
    """Decode the final f_hat of every row that just completed a mask: one VQ-VAE decode each."""
    if raster_order:
        for b in finished:
            flat = torch.cat(rows[b].codes)
            per_scale = list(torch.split(flat, [pn * pn for pn in model.patch_nums]))
            f_hat[b:b + 1] = model.vqvae.idx_to_fhat([c[None] for c in per_scale])
            rows[b].codes = per_scale
    index = torch.tensor(finished, device=f_hat.device)
    images = model.vqvae.fhat_to_img(f_hat[index]).float().cpu()   # post-processing is the caller's
    for i, b in enumerate(finished):
        mask_images[b].append(images[i])
        mask_codes[b].append(rows[b].codes)
        f_hat[b].zero_()


def _chunk_inputs(model: ARGenSegModel, rows: list[_Row], use_cfg: bool, device: torch.device,
                  next_pos_R: torch.Tensor) -> ChunkInputs:
    """Right-padded chunk (R, n) of every row, positions continuing; guidance rows mirror their pair."""
    ids = model.config.token_ids
    n = max([len(r.chunk_ids) for r in rows if r.phase is not Phase.DONE] or [1])
    cvae = model.vqvae.cfg.z_channels
    B = len(rows)
    # ids, slots and validity are host data: built on the CPU, then one asynchronous copy each
    # (a blocking copy per row would make the host wait for the device at every step)
    input_ids = torch.full((B, n), ids["pad"], dtype=torch.long)
    slots = torch.full((B, n), -1, dtype=torch.long)
    valid = torch.zeros(B, n, dtype=torch.bool)
    inputs = torch.zeros(B, n, cvae, dtype=model.pos_1LC.dtype, device=device)
    for b, row in enumerate(rows):
        if row.phase is Phase.DONE:
            continue
        m = len(row.chunk_ids)
        input_ids[b, :m] = torch.tensor(row.chunk_ids)
        slots[b, :m] = torch.tensor(row.chunk_slots)
        if row.chunk_inputs is not None:
            inputs[b, :m] = row.chunk_inputs.to(inputs.dtype)
        valid[b, :m] = True
    input_ids, slots, valid = (t.to(device, non_blocking=True) for t in (input_ids, slots, valid))
    if use_cfg:
        input_ids, slots, inputs, valid = (torch.cat([t, t]) for t in (input_ids, slots, inputs, valid))
    position_ids = (next_pos_R[:, None] + valid.long().cumsum(1) - 1).clamp(min=0)
    return ChunkInputs(input_ids_Rn=input_ids, slot_Rn=slots, slot_inputs_RnC=inputs, valid_Rn=valid,
                       position_ids_Rn=position_ids)


def _stack_left_padded(parts: list[tuple[torch.Tensor, torch.Tensor]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate left-padded (ids, valid) batches of different lengths along the batch."""
    T = max(ids.shape[1] for ids, _ in parts)
    out_ids, out_valid = [], []
    for ids, valid in parts:
        pad = T - ids.shape[1]
        out_ids.append(torch.nn.functional.pad(ids, (pad, 0), value=pad_id))
        out_valid.append(torch.nn.functional.pad(valid.bool(), (pad, 0), value=False))
    return torch.cat(out_ids), torch.cat(out_valid)
