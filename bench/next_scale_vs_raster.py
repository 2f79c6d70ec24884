#!/usr/bin/env python3
"""Median time per mask: next-scale vs raster-order generation, on the same model and token count.

    python bench/next_scale_vs_raster.py --random-size small [--device cpu --dtype float32] --out r.json
    python bench/next_scale_vs_raster.py --model-dir /models/argenseg-8b --device cuda --dtype bfloat16

Both modes run `generation.generate()` on the same prompt, image and model: next-scale emits the
L = sum(pn^2) visual tokens of a mask in K forwards (one per scale); `raster_order=True` emits the
same L tokens one per forward (the ARGenSeg paper's baseline).

One mask per request, forced honestly: the model runs its real forwards and its real text head,
and a logits bias (+1e4 on `<ge_start>`, +5e3 on `<|im_end|>`) is added to the text logits only, so
the first answer token is `<ge_start>` and, once the mask is done (`max_masks=1` then forbids a
second `<ge_start>`), the next text token is the end of the reply. A request is thus: prefill ->
`<ge_start>` -> the mask -> VQ-VAE decode -> `<ge_end>` -> end; a released model answers
"Sure, the segmentation result: <mask>." and so spends ~8 more text forwards than measured here.

Timing (CUDA synchronised at each mark): prefill = request start .. the first text-head call, i.e.
the end of the prompt forward (vision tower + projector + LLM prefill); mask_decode = end of prefill
.. start of the VQ-VAE decode (all visual tokens, including the `<ge_start>` forward, plus any forced
text before the mask); vqvae_decode = the VQ-VAE decode;
end_to_end = the whole `generate()` call. Medians over --reps after --warmup runs.
This file also holds the helpers bench/gpu_profile.py uses.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _import_engine():
    """The engine imports cv2 and PIL at module level for image pre/post-processing, which these
    benchmarks do not use (they feed pixel tensors). On a bare GPU machine without them stubs stand in."""
    import types

    try:
        import cv2  # noqa: F401
    except ImportError:
        sys.modules["cv2"] = types.ModuleType("cv2")
    try:
        from PIL import Image  # noqa: F401
    except ImportError:
        pil, image = types.ModuleType("PIL"), types.ModuleType("PIL.Image")
        pil.Image = image
        sys.modules["PIL"], sys.modules["PIL.Image"] = pil, image
    from argenseg_ros.engine import generation, model
    return generation, model


# ---- models ----------------------------------------------------------------------------------------

SMALL_SIZES = dict(image_size=224, patch_size=14, vision_hidden=128, vision_layers=2, vision_heads=2,
                   text_hidden=512, text_layers=8, text_heads=8, text_kv_heads=2, text_intermediate=1408)


def build_random(size: str, device: str, dtype: torch.dtype, seed: int = 0):
    """('tiny' | 'small' | '8b') -> (model, tokenizer or None), built directly on `device` in `dtype`.

    tiny: the test-suite model (3 scales, 21 tokens per mask). small: a 8-layer 512-wide LLM with
    the release's 10 scales / 680 tokens / 4096 codes (VQ-VAE narrowed to ch=32). 8b: the release
    configuration (release.argenseg_8b_config()), random weights, no tokenizer.
    """
    _, model_mod = _import_engine()
    from argenseg_ros.engine.vqvae import VQVAEConfig

    torch.manual_seed(seed)
    with model_mod._default_dtype(dtype), torch.device(device):
        if size == "tiny":
            model, tokenizer = model_mod.random_model(seed=seed)
        elif size == "small":
            model, tokenizer = model_mod.random_model(seed=seed, vqvae=VQVAEConfig.var_ch160v4096z32(ch=32),
                                                      **SMALL_SIZES)
        elif size == "8b":
            from argenseg_ros.engine.release import argenseg_8b_config
            model, tokenizer = model_mod.ARGenSegModel(argenseg_8b_config()), None
        else:
            raise ValueError(f"unknown size {size!r}")
    return model.eval(), tokenizer


def load_model(model_dir: str, device: str, dtype: torch.dtype):
    _, model_mod = _import_engine()
    model, tokenizer = model_mod.ARGenSegModel.from_pretrained(model_dir, device=device, dtype=dtype)
    return model.eval(), tokenizer


def prompt_inputs(model, tokenizer, instruction: str = "the red cup on the left", text_tokens: int = 70,
                  seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids (1, T), valid (1, T), pixels (1, 3, S, S)) on the model's device.

    With a tokenizer: the model's own prompt. Without (random 8B): the release layout with random
    text ids, `text_tokens` text tokens around <img> + N x <IMG_CONTEXT> + </img> (the release
    prompt has ~70 text tokens: system message, instruction, chat markers).
    """
    device = model.pos_1LC.device
    ids = model.config.token_ids
    g = torch.Generator().manual_seed(seed)
    if tokenizer is not None:
        row = model.prompt_ids(tokenizer, instruction)   # as the Segmenter builds it (BOS per config)
    else:
        def text(n: int) -> list[int]:
            return torch.randint(1000, min(ids["eos"], 90000), (n,), generator=g).tolist()
        half = text_tokens // 2 - 6
        row = ([ids["eos"] - 1 if ids["eos"] > 0 else 0] + text(half) + [ids["eos"]]
               + [ids["img_start"]] + [ids["img_context"]] * model.num_image_tokens + [ids["img_end"]]
               + text(text_tokens - half - 6) + [ids["eos"], ids["eos"] - 1 if ids["eos"] > 0 else 0] + text(2))
    input_ids = torch.tensor([row], device=device)
    valid = torch.ones_like(input_ids, dtype=torch.bool)
    pixels = torch.randn(1, 3, model.image_size, model.image_size, generator=g).to(device, model.pos_1LC.dtype)
    return input_ids, valid, pixels


# ---- one instrumented request --------------------------------------------------------------------

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class ForcedSingleMask:
    """Context: bias the text logits so a request is exactly `text_before` text tokens, `<ge_start>`,
    the mask, `<ge_end>`, `text_after` text tokens, end; time-stamp the end of the prefill (the
    first text-head call) and the VQ-VAE decode (with device syncs). `rows`: the batch size (all
    rows are forced alike, so they move in lockstep and the text head is called once per row)."""

    def __init__(self, model, text_before: int = 0, text_after: int = 0, rows: int = 1):
        self.model = model
        self.text_before, self.text_after, self.rows = text_before, text_after, rows
        self.marks: dict[str, float] = {}
        self.text_head_calls = 0

    def __enter__(self):
        model, ids = self.model, self.model.config.token_ids
        device = model.pos_1LC.device
        n_text = model.vocab_size - model.codebook_size
        filler = next(i for i in range(n_text) if i not in set(ids.values()))   # an ordinary text token

        def bias_towards(token: int) -> torch.Tensor:
            bias = torch.zeros(n_text, device=device, dtype=torch.float32)
            bias[token] = 1e4
            return bias

        biases = {"filler": bias_towards(filler), "ge_start": bias_towards(ids["ge_start"]), "eos": bias_towards(ids["eos"])}
        text_logits, fhat_to_img = model.text_logits, model.vqvae.fhat_to_img

        def biased_text_logits(hidden):
            if "prefill_end" not in self.marks:
                _sync(device)
                self.marks["prefill_end"] = time.perf_counter()
            step = self.text_head_calls // self.rows
            self.text_head_calls += 1
            before, after = self.text_before, self.text_after
            kind = ("filler" if step < before or before < step <= before + after
                    else "ge_start" if step == before else "eos")
            return text_logits(hidden).float() + biases[kind]

        def timed_fhat_to_img(*args, **kwargs):
            _sync(device)
            self.marks.setdefault("vq_start", time.perf_counter())
            out = fhat_to_img(*args, **kwargs)
            _sync(device)
            self.marks.setdefault("vq_end", time.perf_counter())
            return out

        model.text_logits, model.vqvae.fhat_to_img = biased_text_logits, timed_fhat_to_img
        return self

    def __exit__(self, *exc):
        self.model.__dict__.pop("text_logits", None)
        self.model.vqvae.__dict__.pop("fhat_to_img", None)
        return False


def batch_inputs(inputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor], rows: int):
    """The same request `rows` times in one batch."""
    return tuple(t.expand(rows, *t.shape[1:]).contiguous() for t in inputs)


def run_once(model, inputs, raster: bool, *, fast: bool = True, cuda_graphs: bool = False, decoder=None,
             text_before: int = 0, text_after: int = 0):
    """One forced request -> (timings, the generation output); `decoder` is reused (see generate)."""
    generation, _ = _import_engine()
    ids, valid, pixels = inputs
    rows = ids.shape[0]
    device = model.pos_1LC.device
    with ForcedSingleMask(model, text_before, text_after, rows) as forced:
        _sync(device)
        t0 = time.perf_counter()
        out = generation.generate(model, ids, valid, pixels, max_new_tokens=text_before + text_after + 4,
                                  max_masks=1, raster_order=raster, fast=fast, cuda_graphs=cuda_graphs,
                                  decoder=decoder)
        _sync(device)
        t1 = time.perf_counter()
    m = forced.marks
    offset = model.config.token_ids["visual_offset"]
    for b in range(rows):
        visual = sum(1 for t in out.token_ids[b] if t >= offset)
        text = len(out.token_ids[b]) - visual - 1                      # <ge_end> is forced, not decoded
        if len(out.mask_codes[b]) != 1 or visual != model.num_slots or text != text_before + text_after + 2 \
                or not {"prefill_end", "vq_start", "vq_end"} <= set(m):
            raise RuntimeError(f"expected exactly one mask of {model.num_slots} tokens and {text_before + text_after + 2} "
                               f"text tokens, got {len(out.mask_codes[b])} mask(s), {visual} visual, {text} text tokens")
    timings = {"prefill_s": m["prefill_end"] - t0, "mask_decode_s": m["vq_start"] - m["prefill_end"],
               "vqvae_decode_s": m["vq_end"] - m["vq_start"], "end_to_end_s": t1 - t0,
               "tokens_per_mask": model.num_slots, "forwards_per_mask": model.num_slots if raster else len(model.patch_nums),
               "text_forwards": text_before + text_after + 1, "rows": rows}
    return timings, out


def measure(model, inputs, raster: bool, reps: int, warmup: int, *, fast: bool = True, cuda_graphs: bool = False,
            text_before: int = 0, text_after: int = 0, reference_tokens: list[list[int]] | None = None) -> dict[str, Any]:
    """Medians over `reps` requests after `warmup`; one decoder is reused throughout (graphs captured
    in the first request). With `reference_tokens`, reports whether every request generated them."""
    device = model.pos_1LC.device
    decoder = None
    kwargs = dict(fast=fast, cuda_graphs=cuda_graphs, text_before=text_before, text_after=text_after)
    for _ in range(warmup):
        decoder = run_once(model, inputs, raster, decoder=decoder, **kwargs)[1].decoder
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    runs, outputs = [], []
    for _ in range(reps):
        timings, out = run_once(model, inputs, raster, decoder=decoder, **kwargs)
        decoder = out.decoder
        runs.append(timings)
        outputs.append(out.token_ids)
    result: dict[str, Any] = {k: statistics.median(r[k] for r in runs) for k in runs[0] if k.endswith("_s")}
    result.update(tokens_per_mask=runs[0]["tokens_per_mask"], forwards_per_mask=runs[0]["forwards_per_mask"],
                  text_forwards=runs[0]["text_forwards"], rows=runs[0]["rows"], decoder=_decoder_name(fast, cuda_graphs),
                  reps=reps, warmup=warmup, end_to_end_all_s=[round(r["end_to_end_s"], 5) for r in runs])
    if reference_tokens is not None:
        result["tokens_equal_to_eager"] = all(tokens == reference_tokens for tokens in outputs)
    result["token_ids"] = outputs[-1]
    if device.type == "cuda":
        result["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return result


def _decoder_name(fast: bool, cuda_graphs: bool) -> str:
    return "eager" if not fast else "static+cuda_graphs" if cuda_graphs else "static"


def describe(model, device: str, dtype: torch.dtype) -> dict[str, Any]:
    text = model.backbone.config.text_config
    info = {
        "device": device, "dtype": str(dtype).replace("torch.", ""),
        "params_b": round(sum(p.numel() for p in model.parameters()) / 1e9, 4),
        "llm": {"hidden": text.hidden_size, "layers": text.num_hidden_layers, "heads": text.num_attention_heads,
                "kv_heads": text.num_key_value_heads, "intermediate": text.intermediate_size, "vocab": model.vocab_size},
        "image_tokens": model.num_image_tokens, "patch_nums": list(model.patch_nums), "tokens_per_mask": model.num_slots,
        "torch": torch.__version__, "python": platform.python_version(),
    }
    import transformers
    info["transformers"] = transformers.__version__
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    else:
        info["cpu"] = platform.processor() or platform.machine()
        info["cpu_threads"] = torch.get_num_threads()
    return info


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--model-dir", help="native model directory (e.g. the converted ARGenSeg-8B)")
    src.add_argument("--random-tiny", action="store_true", help="the test-suite model (seconds on a CPU)")
    src.add_argument("--random-size", choices=["tiny", "small", "8b"], help="random weights of this size")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, choices=sorted(DTYPES), help="default: bfloat16 on cuda, else float32")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--raster-reps", type=int, default=None, help="default: --reps")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--decoder", choices=["fast", "eager"], default="fast",
                        help="generation's static-cache decoder (default) or the eager reference")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    dtype = DTYPES[args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")]
    if args.model_dir:
        model, tokenizer = load_model(args.model_dir, args.device, dtype)
        source = args.model_dir
    else:
        size = "tiny" if args.random_tiny else (args.random_size or "small")
        model, tokenizer = build_random(size, args.device, dtype)
        source = f"random-{size}"
    inputs = prompt_inputs(model, tokenizer)
    result: dict[str, Any] = {"benchmark": "next_scale_vs_raster", "model": source, **describe(model, args.device, dtype),
                              "prompt_tokens": int(inputs[0].shape[1])}
    fast = args.decoder == "fast"
    result["decoder"] = args.decoder
    result["next_scale"] = measure(model, inputs, raster=False, reps=args.reps, warmup=args.warmup, fast=fast)
    result["raster"] = measure(model, inputs, raster=True, reps=args.raster_reps or args.reps, warmup=args.warmup,
                               fast=fast)
    for entry in (result["next_scale"], result["raster"]):
        entry.pop("token_ids")
    ns, rs = result["next_scale"], result["raster"]
    result["speedup_end_to_end"] = rs["end_to_end_s"] / ns["end_to_end_s"]
    result["speedup_mask_decode"] = rs["mask_decode_s"] / ns["mask_decode_s"]
    print(f"{source} on {args.device}/{result['dtype']}: {model.num_slots} visual tokens per mask, "
          f"prompt {result['prompt_tokens']} tokens")
    print(f"{'mode':<11} {'forwards':>8} {'prefill s':>10} {'mask s':>10} {'vqvae s':>10} {'total s':>10}")
    for name, r in (("next-scale", ns), ("raster", rs)):
        print(f"{name:<11} {r['forwards_per_mask']:>8} {r['prefill_s']:>10.4f} {r['mask_decode_s']:>10.4f} "
              f"{r['vqvae_decode_s']:>10.4f} {r['end_to_end_s']:>10.4f}")
    print(f"raster / next-scale: {result['speedup_end_to_end']:.2f}x end to end, "
          f"{result['speedup_mask_decode']:.2f}x mask decode")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
