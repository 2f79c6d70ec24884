#!/usr/bin/env python3
"""GPU profile of ARGenSeg-8B per mask: prefill, next-scale decode, VQ-VAE decode, end to end, peak
memory, in bf16, eager and with torch.compile, next-scale vs raster order. No download: the model
is the release configuration (release.argenseg_8b_config()) with random weights, built directly on
the GPU in bf16 (about 20 s), so one call fits in a few minutes.

    python bench/gpu_profile.py --out $OUT/gpu_profile.json          # one H100/H200, ~4-6 min
    python bench/gpu_profile.py --tiny --out /tmp/p.json              # CPU smoke test, seconds

Random weights give the same shapes, FLOPs and memory traffic as the real checkpoint; what they
cannot give is the real reply, so every request is forced to exactly one mask (see
bench/next_scale_vs_raster.py: a logits bias on the text head only). Latencies are per request of
batch 1 and one mask; the released model also spends ~8 text forwards on "Sure, the segmentation
result:" and the closing tokens, which are not in these numbers.

Variants, in order (each writes the JSON again, so a run cut short keeps what it measured):
  eager_next_scale, eager_raster, compiled_next_scale, compiled_raster.
"compiled" = torch.compile (dynamic shapes) of each LLM decoder layer (regional compilation: one
graph shared by the 32 identical layers); the generation loop itself stays in Python.
A static KV cache is not measured: generation.generate() allocates a DynamicCache and builds its
masks for the live cache length; a static cache would need support there (reported in the JSON).
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
from next_scale_vs_raster import DTYPES, build_random, describe, measure, prompt_inputs  # noqa: E402

STATIC_CACHE_NOTE = ("not measured: generation.generate() allocates a DynamicCache and sizes its attention "
                     "masks to the live cache length; a static cache (and CUDA graphs) needs support in "
                     "argenseg_ros/generation.py")


def compile_decoder_layers(model) -> int:
    import torch._dynamo

    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    layers = model.backbone.model.language_model.layers
    for layer in layers:
        layer.compile(dynamic=True)
    return len(layers)


def forward_breakdown(model, inputs, steps: int = 10) -> dict[str, Any]:
    """Where one LLM forward's time goes: wall vs GPU time of single-token and 256-token forwards
    after the prompt, through the engine's `decode()` (4-D boolean mask) and through the bare text
    model (no mask, and with the default instead of the release's dynamic RoPE), plus the engine's
    per-step work outside the forward (head, argmax, f_hat update) as the remainder."""
    from transformers import DynamicCache

    device = model.pos_1LC.device
    cuda = device.type == "cuda"
    lm = model.backbone.model.language_model
    ids, valid, pixels = inputs
    C = model.backbone.config.text_config.hidden_size

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    def run(kind: str, q: int) -> dict[str, float]:
        cache = DynamicCache(config=model.backbone.config.text_config)
        with torch.no_grad():
            embeds = model.embed(ids, image_features_BNC=model.image_features(pixels))
            key_valid = valid.clone()
            pos = int(valid.sum())
            model.decode(embeds, key_valid, torch.arange(pos, device=device)[None], cache=cache)
            x = torch.randn(1, q, C, device=device, dtype=embeds.dtype)
            walls, gpus = [], []
            for _ in range(steps):
                position_ids = torch.arange(pos, pos + q, device=device)[None]
                key_valid = torch.cat([key_valid, torch.ones(1, q, dtype=torch.bool, device=device)], 1)
                sync()
                t = time.perf_counter()
                if cuda:
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    start.record()
                if kind == "engine_decode":
                    model.decode(x, key_valid, position_ids, cache=cache)
                else:
                    lm(inputs_embeds=x, position_ids=position_ids, cache=cache, use_cache=True)
                if cuda:
                    end.record()
                sync()
                walls.append(time.perf_counter() - t)
                if cuda:
                    gpus.append(start.elapsed_time(end) / 1e3)
                pos += q
        out = {"wall_s": statistics.median(walls)}
        if gpus:
            out["gpu_s"] = statistics.median(gpus)
        return out

    result: dict[str, Any] = {}
    rotary = lm.rotary_emb
    for q in (1, 256):
        result[f"engine_decode_q{q}"] = run("engine_decode", q)
        result[f"bare_lm_no_mask_q{q}"] = run("bare", q)
        saved = rotary.rope_type
        rotary.rope_type = "default"        # same frequencies below max_position_embeddings
        try:
            result[f"bare_lm_no_mask_default_rope_q{q}"] = run("bare", q)
        finally:
            rotary.rope_type = saved
    return result


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
            result["forward_breakdown"] = forward_breakdown(model, inputs)
        except Exception as err:  # noqa: BLE001
            result["forward_breakdown"] = {"error": f"{type(err).__name__}: {err}"}
        print("forward breakdown:", json.dumps(result["forward_breakdown"]), flush=True)
        save()

    plan = [("eager_next_scale", False, False), ("eager_raster", True, False)]
    if not args.no_compile and (args.compile or not args.tiny):
        plan += [("compiled_next_scale", False, True), ("compiled_raster", True, True)]
    compiled = False
    for name, raster, wants_compile in plan:
        if raster and args.no_raster:
            continue
        if time.perf_counter() - t_start > args.budget_s:
            result["variants"][name] = {"skipped": f"time budget of {args.budget_s} s spent"}
            save()
            continue
        entry: dict[str, Any] = {}
        try:
            if wants_compile and not compiled:
                entry["compiled_layers"] = compile_decoder_layers(model)
                compiled = True
                t_c = time.perf_counter()
                measure(model, inputs, raster=False, reps=1, warmup=0)    # compiles (and recompiles) here
                entry["first_request_with_compilation_s"] = round(time.perf_counter() - t_c, 2)
            entry.update(measure(model, inputs, raster=raster, reps=args.raster_reps if raster else args.reps,
                                 warmup=0 if raster else args.warmup))
        except Exception as err:  # noqa: BLE001 - record and go on with the next variant
            entry["error"] = f"{type(err).__name__}: {err}"
        result["variants"][name] = entry
        if "end_to_end_s" in entry:
            print(f"{name:<20} prefill {entry['prefill_s'] * 1e3:8.1f} ms  mask {entry['mask_decode_s'] * 1e3:9.1f} ms"
                  f"  vqvae {entry['vqvae_decode_s'] * 1e3:7.1f} ms  total {entry['end_to_end_s'] * 1e3:9.1f} ms"
                  + (f"  peak {entry['peak_gpu_memory_gib']:.1f} GiB" if "peak_gpu_memory_gib" in entry else ""),
                  flush=True)
        else:
            print(f"{name:<20} {entry}", flush=True)
        save()

    v = result["variants"]
    for mode in ("eager", "compiled"):
        ns, rs = v.get(f"{mode}_next_scale", {}), v.get(f"{mode}_raster", {})
        if "end_to_end_s" in ns and "end_to_end_s" in rs:
            result[f"{mode}_raster_over_next_scale"] = rs["end_to_end_s"] / ns["end_to_end_s"]
    save()
    print(f"wrote {out} after {result['elapsed_s']} s", flush=True)
    return result


if __name__ == "__main__":
    main()
