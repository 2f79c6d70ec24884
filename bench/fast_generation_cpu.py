#!/usr/bin/env python3
"""Eager vs fast generation per request on the CPU, through the Segmenter (the node's path).

    python bench/fast_generation_cpu.py --out bench/results/fast_generation_cpu_tabletop.json

Both variants share one model (the shipped tabletop model by default): `Segmenter(fast=False)` runs
the eager reference decoder (transformers' text model, DynamicCache), `Segmenter(fast=True)` the
static KV cache decoder. Requests alternate eager, fast, eager, ... on the same scenes and
instructions in the same process, so a shared machine's load hits both alike; per stage medians
(the generation loop's own timings: prefill, text_decode, mask_decode, vqvae_decode; and the whole
request, `total`), for each thread count. Every pair must give the same reply and masks.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from argenseg_ros.engine.segmenter import Segmenter  # noqa: E402
from argenseg_ros.tabletop.world import render_scene  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ros_latency import cpu_model  # noqa: E402

STAGES = ("preprocess", "prefill", "text_decode", "mask_decode", "vqvae_decode", "postprocess", "total")


def requests(num_scenes: int) -> list[tuple[np.ndarray, str]]:
    """Held-out scenes (evaluation seeds), one referring instruction each: "Sure, <mask>." replies."""
    out = []
    for i in range(num_scenes):
        scene = render_scene(2000000000 + i)
        obj = scene.objects[0]
        out.append((scene.image, f"the {obj.colour} {obj.kind}"))
    return out


def count_calls(seg: Segmenter, image: np.ndarray, text: str) -> dict[str, int]:
    import cProfile
    import pstats

    from torch.profiler import ProfilerActivity, profile
    from torch.utils.flop_counter import FlopCounterMode

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        seg.segment(image, text)
    aten = sum(e.count for e in prof.key_averages() if e.key.startswith("aten::"))
    profiler = cProfile.Profile()
    profiler.runcall(seg.segment, image, text)
    with FlopCounterMode(display=False) as flops:      # matmuls, convolutions, attention
        seg.segment(image, text)
    return {"aten_ops": aten, "python_calls": pstats.Stats(profiler).total_calls,
            "gflop": round(flops.get_total_flops() / 1e9, 3)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--model-dir", default=None, help="default: the shipped tabletop model")
    parser.add_argument("--threads", type=int, nargs="+", default=[2, 1])
    parser.add_argument("--scenes", type=int, default=4)
    parser.add_argument("--reps", type=int, default=5, help="rounds over the scenes per thread count")
    parser.add_argument("--warmup", type=int, default=1)
    args = parser.parse_args(argv)

    eager = Segmenter.from_pretrained(args.model_dir, fast=False)
    fast = Segmenter(eager.model, eager.tokenizer, fast=True)
    variants = {"eager": eager, "fast": fast}
    work = requests(args.scenes)
    result: dict[str, Any] = {
        "benchmark": "fast_generation_cpu", "model": eager.name, "device": "cpu", "dtype": str(eager.dtype),
        "torch": torch.__version__, "python": platform.python_version(),
        "machine": {"cpu": cpu_model(), "cpus": os.cpu_count(), "shared": True},
        "requests": [{"instruction": text} for _, text in work], "by_threads": {}}
    mismatches: list[str] = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        load_before = os.getloadavg()
        per_variant: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
        for rep in range(args.warmup + args.reps):
            for image, text in work:
                replies = {}
                for name, seg in variants.items():
                    res = seg.segment(image, text)
                    replies[name] = res
                    if rep >= args.warmup:
                        per_variant[name].append(res.timings)
                a, b = replies["eager"], replies["fast"]
                if a.reply != b.reply or len(a.masks) != len(b.masks) or not all(
                        np.array_equal(x, y) for x, y in zip(a.masks, b.masks)):
                    mismatches.append(f"{threads} threads, {text!r}: {a.reply!r} vs {b.reply!r}")
        entry: dict[str, Any] = {"loadavg_before": list(load_before), "loadavg_after": list(os.getloadavg()),
                                 "requests_per_variant": len(per_variant["fast"])}
        for name, timings in per_variant.items():
            entry[name] = {f"{k}_ms": round(statistics.median(t[k] for t in timings) * 1e3, 2) for k in STAGES}
        entry["fast_over_eager_total"] = round(entry["fast"]["total_ms"] / entry["eager"]["total_ms"], 3)
        result["by_threads"][str(threads)] = entry
        print(f"{threads} thread(s), load {load_before[0]:.2f}: "
              + "  ".join(f"{n} {entry[n]['total_ms']:.1f} ms" for n in variants), flush=True)
    result["replies"] = [eager.segment(image, text).reply for image, text in work]
    # load-independent: operator calls and Python function calls of one request
    result["calls_per_request"] = {name: count_calls(seg, *work[0]) for name, seg in variants.items()}
    result["mismatches"] = mismatches
    result["date_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
