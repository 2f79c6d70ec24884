#!/usr/bin/env python3
"""GPU profile of ARGenSeg-8B per mask and per request: prefill, next-scale decode, VQ-VAE decode,
end to end, peak memory, in bf16: the eager reference decoder vs the static-KV-cache decoder, with
and without CUDA graphs, batch 1 and 4, a mask alone and a request with the release's reply text,
next-scale vs raster order, torch.compile. No download: the model is the release configuration
(release.argenseg_8b_config()) with random weights, built directly on the GPU in bf16 (about 20 s).

    python bench/gpu_profile.py --out $OUT/gpu_profile.json          # one H100/H200, ~6-7 min
    python bench/gpu_profile.py --tiny --out /tmp/p.json              # CPU smoke test, seconds

Random weights give the same shapes, FLOPs and memory traffic as the real checkpoint; what they
cannot give is the real reply, so every request is forced (bench/next_scale_vs_raster.py: a logits
bias on the text head only) to exactly one mask, alone ("mask": prefill, `<ge_start>`, 10 scale
forwards, VQ decode, end) or inside the release's reply ("reply": 7 text tokens as in "Sure, the
segmentation result:", the mask, 1 more, end; 9 text forwards in all).

Variants, in order (each writes the JSON again, so a run cut short keeps what it measured):
  {eager, fast, graphs}_next_scale, {eager, fast, graphs}_reply, {eager, fast, graphs}_next_scale_batch4,
  {eager, graphs}_raster, compiled_next_scale, compiled_raster.
eager = transformers' text model with a DynamicCache (generation's reference decoder); fast = the
static KV cache decoder (static_decode.StaticDecoder: lean forward, no dynamic-RoPE host sync, no
mask rebuild); graphs = fast with every chunk width captured once as a CUDA graph (CUDA only).
Each fast variant reports whether it generated exactly the eager variant's tokens.
"compiled" = torch.compile (dynamic shapes) of each eager decoder layer (regional compilation).
"forward_breakdown" times single forwards (1 and 256 tokens) through each decoder and through the
bare text model with dynamic vs default RoPE, and counts host syncs per forward (CUDA).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from next_scale_vs_raster import DTYPES, batch_inputs, build_random, describe, measure, prompt_inputs  # noqa: E402

STATIC_CACHE_NOTE = ("measured: the fast_* (static KV cache decoder) and graphs_* (plus CUDA graphs) variants; "
                     "see argenseg_ros/engine/static_decode.py")


def compile_decoder_layers(model) -> int:
    import torch._dynamo

    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    layers = model.backbone.model.language_model.layers
    for layer in layers:
        layer.compile(dynamic=True)
    return len(layers)


def forward_breakdown(model, inputs, steps: int = 10) -> dict[str, Any]:
    """Where one LLM forward's time goes: wall and GPU time of 1- and 256-token forwards after the
    prompt, through the eager decoder (engine `decode()`, 4-D boolean mask, DynamicCache), the bare
    text model (no mask; the release's dynamic RoPE, and default RoPE: the same frequencies below
    max_position_embeddings), and the static decoder (live width; full width = CUDA-graph shapes;
    CUDA graph replay). On CUDA also the host syncs of one forward (torch.cuda sync debug mode)."""
    import warnings

    from transformers import DynamicCache

    from argenseg_ros.engine.static_decode import ChunkInputs, StaticDecoder

    device = model.pos_1LC.device
    cuda = device.type == "cuda"
    lm = model.backbone.model.language_model
    ids, valid, pixels = inputs
    ids_t = model.config.token_ids
    Cvae = model.vqvae.cfg.z_channels

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    def chunk(q: int, pos: int) -> ChunkInputs:
        slots = torch.arange(1, 1 + q, device=device)[None] % model.num_slots
        return ChunkInputs(input_ids_Rn=torch.full((1, q), ids_t["mask_context"], device=device), slot_Rn=slots,
                           slot_inputs_RnC=torch.randn(1, q, Cvae, device=device, dtype=model.pos_1LC.dtype),
                           valid_Rn=torch.ones(1, q, dtype=torch.bool, device=device),
                           position_ids_Rn=torch.arange(pos, pos + q, device=device)[None])

    def run(kind: str, q: int) -> dict[str, float]:
        with torch.no_grad():
            embeds = model.embed(ids, image_features_BNC=model.image_features(pixels))
            pos = int(valid.sum())
            prompt_pos = torch.arange(pos, device=device)[None]
            C = embeds.shape[-1]
            if kind.startswith("static"):
                decoder = StaticDecoder.allocate(model, 1, pos + (steps + 2) * q, static_shapes=kind == "static_full",
                                                 cuda_graphs=kind == "static_graphs")
                decoder.prefill(embeds, valid, prompt_pos)
            else:
                cache = DynamicCache(config=model.backbone.config.text_config)
                key_valid = valid.clone()
                model.decode(embeds, key_valid, prompt_pos, cache=cache)
            x = torch.randn(1, q, C, device=device, dtype=embeds.dtype)
            walls, gpus, host_syncs = [], [], []
            for i in range(steps + 1):             # the first forward captures graphs: not timed
                position_ids = torch.arange(pos, pos + q, device=device)[None]
                step_chunk = chunk(q, pos) if kind.startswith("static") else None
                if not kind.startswith("static"):
                    key_valid = torch.cat([key_valid, torch.ones(1, q, dtype=torch.bool, device=device)], 1)
                sync()
                with warnings.catch_warnings(record=True) as caught:
                    if cuda:
                        warnings.simplefilter("always")
                        torch.cuda.set_sync_debug_mode("warn")
                    t = time.perf_counter()
                    if cuda:
                        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                        start.record()
                    if kind == "engine_decode":
                        model.decode(x, key_valid, position_ids, cache=cache)
                    elif kind.startswith("static"):
                        decoder.step(step_chunk)
                    else:
                        lm(inputs_embeds=x, position_ids=position_ids, cache=cache, use_cache=True)
                    if cuda:
                        end.record()
                        torch.cuda.set_sync_debug_mode("default")
                sync()
                if i:
                    walls.append(time.perf_counter() - t)
                    if cuda:
                        gpus.append(start.elapsed_time(end) / 1e3)
                        host_syncs.append(sum("synchroniz" in str(w.message) for w in caught))
                pos += q
        out = {"wall_s": statistics.median(walls)}
        if gpus:
            out["gpu_s"] = statistics.median(gpus)
            out["host_syncs_per_forward"] = statistics.median(host_syncs)
        return out

    result: dict[str, Any] = {}
    rotary = lm.rotary_emb
    kinds = ["engine_decode", "bare_lm_no_mask", "bare_lm_no_mask_default_rope", "static_decode", "static_full"]
    if cuda:
        kinds.append("static_graphs")
    for q in (1, 256):
        for kind in kinds:
            name = f"{kind}_q{q}"
            try:
                if kind == "bare_lm_no_mask_default_rope":
                    saved = rotary.rope_type
                    rotary.rope_type = "default"        # same frequencies below max_position_embeddings
                    try:
                        result[name] = run("bare", q)
                    finally:
                        rotary.rope_type = saved
                else:
                    result[name] = run(kind if kind != "bare_lm_no_mask" else "bare", q)
            except Exception as err:  # noqa: BLE001 - record and go on
                result[name] = {"error": f"{type(err).__name__}: {err}"}
    return result


# name: (raster, compiled, fast, cuda_graphs, rows, text_before, text_after); the reply is
# "Sure, the segmentation result: <mask>." (7 text tokens, the mask, 1 more, end)
REPLY = (7, 1)
PLAN: list[tuple[str, tuple[bool, bool, bool, bool, int, int, int]]] = [
    ("eager_next_scale", (False, False, False, False, 1, 0, 0)),
    ("fast_next_scale", (False, False, True, False, 1, 0, 0)),
    ("graphs_next_scale", (False, False, True, True, 1, 0, 0)),
    ("eager_reply", (False, False, False, False, 1, *REPLY)),
    ("fast_reply", (False, False, True, False, 1, *REPLY)),
    ("graphs_reply", (False, False, True, True, 1, *REPLY)),
    ("eager_next_scale_batch4", (False, False, False, False, 4, 0, 0)),
    ("fast_next_scale_batch4", (False, False, True, False, 4, 0, 0)),
    ("graphs_next_scale_batch4", (False, False, True, True, 4, 0, 0)),
    ("graphs_raster", (True, False, True, True, 1, 0, 0)),
    ("eager_raster", (True, False, False, False, 1, 0, 0)),
    ("compiled_next_scale", (False, True, False, False, 1, 0, 0)),
    ("compiled_raster", (True, True, False, False, 1, 0, 0)),
]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="JSON results file")
    parser.add_argument("--tiny", action="store_true", help="tiny random model on the CPU (smoke test)")
    parser.add_argument("--device", default=None, help="default: cuda, or cpu with --tiny")
    parser.add_argument("--dtype", default=None, choices=sorted(DTYPES), help="default: bfloat16 (float32 with --tiny)")
    parser.add_argument("--reps", type=int, default=5, help="timed next-scale requests per variant")
    parser.add_argument("--raster-reps", type=int, default=2, help="timed raster requests per variant")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile variants")
    parser.add_argument("--compile", action="store_true", help="run the compile variants even with --tiny")
    parser.add_argument("--no-raster", action="store_true", help="skip the raster-order variants")
    parser.add_argument("--no-breakdown", action="store_true", help="skip the per-forward time breakdown")
    parser.add_argument("--only", nargs="+", default=None, help="run only these variants")
    parser.add_argument("--budget-s", type=float, default=420.0,
                        help="skip the remaining variants once this much time has passed")
    args = parser.parse_args(argv)
    t_start = time.perf_counter()
    device = args.device or ("cpu" if args.tiny else "cuda")
    dtype = DTYPES[args.dtype or ("float32" if args.tiny else "bfloat16")]
    if device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("CUDA is not available (use --tiny for the CPU smoke test)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    result: dict[str, Any] = {"benchmark": "gpu_profile", "model": "random-tiny" if args.tiny else "random-8b",
                              "variants": {}, "static_cache": STATIC_CACHE_NOTE}

    def save() -> None:
        result["elapsed_s"] = round(time.perf_counter() - t_start, 1)
        out.write_text(json.dumps(result, indent=2))

    t0 = time.perf_counter()
    model, tokenizer = build_random("tiny" if args.tiny else "8b", device, dtype)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        result["weights_gpu_memory_gib"] = torch.cuda.memory_allocated() / 2**30
    result["build_s"] = round(time.perf_counter() - t0, 2)
    result.update(describe(model, device, dtype))
    inputs = prompt_inputs(model, tokenizer)
    result["prompt_tokens"] = int(inputs[0].shape[1])
    print(f"{result['model']}: {result['params_b']} B params on {result.get('gpu', device)} ({result['dtype']}), "
          f"built in {result['build_s']} s, prompt {result['prompt_tokens']} tokens", flush=True)
    save()

    if not args.no_breakdown:
        try:
            result["forward_breakdown"] = forward_breakdown(model, inputs, steps=3 if args.tiny else 10)
        except Exception as err:  # noqa: BLE001
            result["forward_breakdown"] = {"error": f"{type(err).__name__}: {err}"}
        print("forward breakdown:", json.dumps(result["forward_breakdown"]), flush=True)
        save()

    compiled = False
    eager_tokens: dict[tuple[bool, int, int, int], list[list[int]]] = {}
    for name, (raster, wants_compile, fast, graphs, rows, before, after) in PLAN:
        if args.only and name not in args.only:
            continue
        if (raster and args.no_raster) or (wants_compile and (args.no_compile or (args.tiny and not args.compile))):
            continue
        if graphs and not device.startswith("cuda"):
            result["variants"][name] = {"skipped": "CUDA graphs need a CUDA device"}
            continue
        if time.perf_counter() - t_start > args.budget_s:
            result["variants"][name] = {"skipped": f"time budget of {args.budget_s} s spent"}
            save()
            continue
        entry: dict[str, Any] = {}
        shape = (raster, rows, before, after)
        request = batch_inputs(inputs, rows) if rows > 1 else inputs
        kwargs = dict(fast=fast, cuda_graphs=graphs, text_before=before, text_after=after,
                      reference_tokens=eager_tokens.get(shape) if fast else None)
        try:
            if wants_compile and not compiled:
                entry["compiled_layers"] = compile_decoder_layers(model)
                compiled = True
                t_c = time.perf_counter()
                measure(model, request, raster=False, reps=1, warmup=0, fast=False)   # compiles (and recompiles) here
                entry["first_request_with_compilation_s"] = round(time.perf_counter() - t_c, 2)
            entry.update(measure(model, request, raster=raster, reps=args.raster_reps if raster else args.reps,
                                 warmup=0 if raster and not graphs else args.warmup, **kwargs))
            tokens = entry.pop("token_ids")
            if not fast and not wants_compile:
                eager_tokens[shape] = tokens
        except Exception as err:  # noqa: BLE001 - record and go on with the next variant
            entry["error"] = f"{type(err).__name__}: {err}"
        result["variants"][name] = entry
        if "end_to_end_s" in entry:
            print(f"{name:<20} prefill {entry['prefill_s'] * 1e3:8.1f} ms  mask {entry['mask_decode_s'] * 1e3:9.1f} ms"
                  f"  vqvae {entry['vqvae_decode_s'] * 1e3:7.1f} ms  total {entry['end_to_end_s'] * 1e3:9.1f} ms"
                  + (f"  peak {entry['peak_gpu_memory_gib']:.1f} GiB" if "peak_gpu_memory_gib" in entry else "")
                  + (f"  same tokens as eager: {entry['tokens_equal_to_eager']}" if "tokens_equal_to_eager" in entry else ""),
                  flush=True)
        else:
            print(f"{name:<20} {entry}", flush=True)
        save()

    v = result["variants"]
    for mode in ("eager", "compiled", "graphs"):
        ns, rs = v.get(f"{mode}_next_scale", {}), v.get(f"{mode}_raster", {})
        if "end_to_end_s" in ns and "end_to_end_s" in rs:
            result[f"{mode}_raster_over_next_scale"] = rs["end_to_end_s"] / ns["end_to_end_s"]
    for mode in ("eager", "fast", "graphs"):
        one, four = v.get(f"{mode}_next_scale", {}), v.get(f"{mode}_next_scale_batch4", {})
        if "end_to_end_s" in one and "end_to_end_s" in four:
            result[f"{mode}_batch4_over_batch1"] = four["end_to_end_s"] / one["end_to_end_s"]
    save()
    print(f"wrote {out} after {result['elapsed_s']} s", flush=True)
    return result


if __name__ == "__main__":
    main()
