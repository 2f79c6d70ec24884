"""Held-out evaluation of a Segmenter on the tabletop world (CLI ``argenseg-eval``).

The split. Scene ``i`` of the split is ``tabletop.render_scene(first_seed + i, width, height)``
with ``first_seed`` = :data:`HELDOUT_SEED_BASE` (2e9) by default; training never draws seeds
at or above ``TRAIN_SEED_LIMIT`` (1e9), so these scenes are never trained on. The queries of a
scene are ``tabletop.sample_queries(scene, np.random.default_rng(seed), queries_per_scene)``
with the scene's own seed: the split is a pure function of ``(first_seed, num_scenes,
queries_per_scene, width, height)``, and a larger ``num_scenes`` extends a smaller one.

Scoring, per query (:func:`score_query`):

* referring types (``tabletop.REFERRING_TYPES``): the prediction is the first returned mask
  (no mask: an empty prediction); intersection and union with the ground-truth visible mask.
  cIoU = sum of intersections / sum of unions; gIoU = mean per-query IoU, with IoU 1 where
  the union is empty (ARGENSEG.md section 4). Also reported: the fraction of queries with no
  mask and the fraction whose reply is exactly ``"Sure, <mask>."``.
* ``absent``: correct iff the reply starts with "I don't see" and no returned mask has a set
  pixel; ``exact`` additionally requires the reply to equal the expected one.
* questions (``count_kind``, ``count_colour``, ``exists``): correct iff the reply equals the
  expected reply (whitespace normalised).

Replies are compared after collapsing runs of whitespace. A query the Segmenter refuses with
``InputError`` is scored as a failure (empty prediction, wrong reply) and its message is kept.

Latency: ``timings["total"]`` (seconds, one request at a time, image at the split's size) of
the queries that returned exactly one mask ("per mask"), median and p90, with the median of
every timing stage; separately the median of text-only replies (no mask). One untimed warm-up
request runs first.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from argenseg_ros.engine.segmenter import InputError, SegmentationResult

from . import world as tabletop
from .randomisation import FULL as FULL_RANDOMISATION
from .randomisation import Randomisation
from .training import HELDOUT_SEED_BASE, TRAIN_SEED_LIMIT

DEFAULT_QUERIES_PER_SCENE = 4
ABSENT_PREFIX = "I don't see"

REFERRING_TYPES = tabletop.REFERRING_TYPES
QUESTION_TYPES = tabletop.QUESTION_TYPES
EXPRESSION_TYPES = tabletop.EXPRESSION_TYPES

#: The issue's targets: (report key path, comparison, threshold, label).
TARGETS: tuple[tuple[tuple[str, ...], str, float, str], ...] = (
    (("referring", "ciou"), ">=", 0.85, "referring cIoU"),
    (("referring", "giou"), ">=", 0.85, "referring gIoU"),
    (("absent", "accuracy"), ">=", 0.90, "absent-referent accuracy"),
    (("questions", "accuracy"), ">=", 0.90, "question accuracy"),
    (("questions", "count_nonzero", "accuracy"), ">=", 0.85, "count accuracy, non-zero answers"),
    (("questions", "exists_balanced_accuracy"), ">=", 0.90, "yes/no balanced accuracy"),
    (("latency", "per_mask", "median_ms"), "<=", 100.0, "median latency per mask (ms)"),
)

COUNT_TYPES = ("count_kind", "count_colour")
ZERO_COUNT_PREFIX = "There are no"

MAX_RECORDED_ERRORS = 50


def category_of(expression_type: str) -> str:
    if expression_type in REFERRING_TYPES:
        return "referring"
    if expression_type == "absent":
        return "absent"
    if expression_type in QUESTION_TYPES:
        return "question"
    raise ValueError(f"unknown expression type {expression_type!r}")


def normalise_reply(text: str) -> str:
    return " ".join(text.split())


def mask_counts(pred: np.ndarray | None, target: np.ndarray) -> tuple[int, int]:
    """(intersection, union) pixel counts; ``pred`` None means an empty prediction."""
    target = np.asarray(target, dtype=bool)
    if pred is None:
        area = int(np.count_nonzero(target))
        return 0, area
    pred = np.asarray(pred, dtype=bool)
    if pred.shape != target.shape:
        raise ValueError(f"predicted mask has shape {pred.shape}, ground truth {target.shape}")
    return int(np.count_nonzero(pred & target)), int(np.count_nonzero(pred | target))


def iou_from_counts(intersection: int, union: int) -> float:
    """IoU, 1 where the union is empty (ARGENSEG.md section 4)."""
    return 1.0 if union == 0 else intersection / union


def score_query(query: tabletop.Query, result: SegmentationResult | None,
                error: str | None = None) -> dict[str, Any]:
    """Score one answer. ``result`` None (with ``error``) is a refused query: a failure.

    Returns a flat JSON-able dict: ``type``, ``category``, ``instruction``, ``expected``,
    ``reply``, ``num_masks``, ``error`` and, by category, ``intersection``/``union``/``iou``/
    ``no_mask``/``reply_exact`` (referring) or ``correct``/``exact`` (absent, questions), and
    ``latency`` (``timings`` of the result, seconds; empty on error).
    """
    category = category_of(query.expression_type)
    reply = normalise_reply(result.reply) if result is not None else ""
    masks = list(result.masks) if result is not None else []
    expected = normalise_reply(query.reply)
    out: dict[str, Any] = {
        "type": query.expression_type, "category": category, "instruction": query.instruction,
        "expected": expected, "reply": reply, "num_masks": len(masks), "error": error,
        "latency": dict(result.timings) if result is not None else {},
    }
    if category == "referring":
        inter, union = mask_counts(masks[0] if masks else None, query.mask)
        out.update(intersection=inter, union=union, iou=iou_from_counts(inter, union),
                   no_mask=not masks, reply_exact=reply == expected)
    elif category == "absent":
        no_pixels = not any(np.any(m) for m in masks)
        out.update(correct=reply.startswith(ABSENT_PREFIX) and no_pixels,
                   exact=reply == expected and no_pixels)
    else:
        out.update(correct=reply == expected, exact=reply == expected)
    return out


def _ratio(num: float, den: float) -> float | None:
    return None if den == 0 else num / den


def _percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


@dataclass
class _Group:
    """Running sums of one set of scored queries."""

    n: int = 0
    intersection: int = 0
    union: int = 0
    iou_sum: float = 0.0
    no_mask: int = 0
    reply_exact: int = 0
    correct: int = 0
    exact: int = 0
    errors: int = 0

    def add(self, s: dict[str, Any]) -> None:
        self.n += 1
        self.errors += s["error"] is not None
        if s["category"] == "referring":
            self.intersection += s["intersection"]
            self.union += s["union"]
            self.iou_sum += s["iou"]
            self.no_mask += s["no_mask"]
            self.reply_exact += s["reply_exact"]
        else:
            self.correct += s["correct"]
            self.exact += s["exact"]

    def referring(self) -> dict[str, Any]:
        return {"n": self.n, "ciou": None if self.n == 0 else iou_from_counts(self.intersection, self.union),
                "giou": _ratio(self.iou_sum, self.n), "intersection": self.intersection, "union": self.union,
                "no_mask_rate": _ratio(self.no_mask, self.n), "reply_exact_rate": _ratio(self.reply_exact, self.n),
                "errors": self.errors}

    def scored(self) -> dict[str, Any]:
        return {"n": self.n, "accuracy": _ratio(self.correct, self.n),
                "exact_accuracy": _ratio(self.exact, self.n), "errors": self.errors}


@dataclass
class Accumulator:
    """Collects :func:`score_query` results; :meth:`summary` gives the metric part of a report."""

    keep_samples: bool = True
    groups: dict[str, _Group] = field(default_factory=dict)
    latency_mask: list[dict[str, float]] = field(default_factory=list)
    latency_text: list[float] = field(default_factory=list)
    multi_mask: int = 0
    samples: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    num_errors: int = 0

    def add(self, score: dict[str, Any], **context: Any) -> None:
        """Add one scored query; ``context`` (e.g. ``seed=``) is stored with samples and errors."""
        keys = ["all", score["category"], score["type"]]
        # The question breakdowns: counts whose answer is not zero (a model that always
        # says "There are no X." scores 0 here), and yes/no by expected answer (balanced accuracy).
        if score["type"] in COUNT_TYPES and not score["expected"].startswith(ZERO_COUNT_PREFIX):
            keys.append("count_nonzero")
        if score["type"] == "exists":
            keys.append(f"exists_{score['expected'].rstrip('.').lower()}")
        for key in dict.fromkeys(keys):  # "absent" is both a category and a type
            self.groups.setdefault(key, _Group()).add(score)
        if score["error"] is not None:
            self.num_errors += 1
            if len(self.errors) < MAX_RECORDED_ERRORS:
                self.errors.append({**context, "type": score["type"], "instruction": score["instruction"],
                                    "message": score["error"]})
        elif score["num_masks"] == 1:
            self.latency_mask.append(score["latency"])
        elif score["num_masks"] == 0:
            self.latency_text.append(score["latency"]["total"])
        if score["num_masks"] > 1:
            self.multi_mask += 1
        if self.keep_samples:
            sample = {**context, **{k: v for k, v in score.items() if k != "latency"}}
            sample["total_ms"] = 1000.0 * score["latency"]["total"] if score["latency"] else None
            self.samples.append(sample)

    def _group(self, key: str) -> _Group:
        return self.groups.get(key, _Group())

    def latency(self) -> dict[str, Any]:
        totals = [t["total"] for t in self.latency_mask]
        stages = sorted({k for t in self.latency_mask for k in t})
        ms = 1000.0
        return {
            "per_mask": {
                "n": len(totals),
                "median_ms": None if not totals else ms * _percentile(totals, 50),
                "p90_ms": None if not totals else ms * _percentile(totals, 90),
                "stage_median_ms": {k: ms * _percentile([t[k] for t in self.latency_mask if k in t], 50)
                                    for k in stages},
            },
            "text_only": {"n": len(self.latency_text),
                          "median_ms": None if not self.latency_text else ms * _percentile(self.latency_text, 50)},
            "queries_with_several_masks": self.multi_mask,
        }

    def summary(self) -> dict[str, Any]:
        questions = self._group("question").scored()
        questions["by_type"] = {t: self._group(t).scored() for t in QUESTION_TYPES}
        questions["count_nonzero"] = self._group("count_nonzero").scored()
        yes, no = self._group("exists_yes").scored(), self._group("exists_no").scored()
        questions["exists_yes"], questions["exists_no"] = yes, no
        questions["exists_balanced_accuracy"] = (None if yes["accuracy"] is None or no["accuracy"] is None
                                                 else (yes["accuracy"] + no["accuracy"]) / 2)
        per_type: dict[str, Any] = {}
        for t in EXPRESSION_TYPES:
            g = self._group(t)
            per_type[t] = g.referring() if t in REFERRING_TYPES else g.scored()
        return {
            "num_queries": self._group("all").n,
            "referring": self._group("referring").referring(),
            "absent": self._group("absent").scored(),
            "questions": questions,
            "per_type": per_type,
            "latency": self.latency(),
            "num_errors": self.num_errors,
            "errors": list(self.errors),
        }


#: ``--randomise`` choices: the robustness check renders the same held-out seeds another way.
#: "photometric" keeps every scene's layout, so its queries and masks are those of the plain split
#: and the two reports compare query for query; "full" also draws sizes log-uniformly (other scenes).
RANDOMISATIONS: dict[str, Randomisation | None] = {"none": None, "photometric": FULL_RANDOMISATION.photometric(),
                                                    "full": FULL_RANDOMISATION}


def split_queries(seed: int, queries_per_scene: int, width: int = 640, height: int = 480,
                  randomisation: Randomisation | None = None) -> tuple[tabletop.Scene, list[tabletop.Query]]:
    """The scene and queries of one held-out seed (see the module docstring), optionally rendered
    with domain randomisation (an independent-looking rendering of the same world)."""
    scene = tabletop.render_scene(seed, width, height, randomisation=randomisation)
    return scene, tabletop.sample_queries(scene, np.random.default_rng(seed), queries_per_scene)


def machine_info() -> dict[str, Any]:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return {"cpu": cpu or platform.machine(), "cpu_count": os.cpu_count(),
            "affinity_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "platform": platform.platform(), "python": platform.python_version(), "hostname": platform.node()}


def _model_info(segmenter: Any) -> dict[str, Any]:
    import torch

    return {"name": str(getattr(segmenter, "name", type(segmenter).__name__)),
            "device": str(getattr(segmenter, "device", "cpu")),
            "dtype": str(getattr(segmenter, "dtype", "")).replace("torch.", ""),
            "torch_threads": torch.get_num_threads(), "torch_version": torch.__version__}


def evaluate(segmenter: Any, num_scenes: int, first_seed: int = HELDOUT_SEED_BASE,
             queries_per_scene: int = DEFAULT_QUERIES_PER_SCENE, width: int = 640, height: int = 480,
             progress: Callable[[int, int, Accumulator], None] | None = None, warmup: bool = True,
             keep_samples: bool = True, randomisation: Randomisation | None = None) -> dict[str, Any]:
    """Evaluate ``segmenter`` (anything with ``segment(image, instruction)``) on the split.

    Returns a JSON-able report: ``split``, ``model``, ``machine``, ``date``, ``wall_s``, the
    metrics of :meth:`Accumulator.summary`, ``targets`` and (``keep_samples``) ``samples``.
    ``progress(scenes_done, num_scenes, accumulator)`` is called after every scene.
    """
    if num_scenes < 1:
        raise ValueError(f"num_scenes must be >= 1, got {num_scenes}")
    if queries_per_scene < 1:
        raise ValueError(f"queries_per_scene must be >= 1, got {queries_per_scene}")
    acc = Accumulator(keep_samples=keep_samples)
    t0 = time.perf_counter()
    for i in range(num_scenes):
        seed = first_seed + i
        scene, queries = split_queries(seed, queries_per_scene, width, height, randomisation)
        if warmup and i == 0:
            try:
                segmenter.segment(scene.image, queries[0].instruction)
            except InputError:
                pass
        for q in queries:
            try:
                result, error = segmenter.segment(scene.image, q.instruction), None
            except InputError as exc:
                result, error = None, str(exc) or type(exc).__name__
            acc.add(score_query(q, result, error), seed=seed)
        if progress is not None:
            progress(i + 1, num_scenes, acc)
    report: dict[str, Any] = {
        "split": {"first_seed": first_seed, "num_scenes": num_scenes, "last_seed": first_seed + num_scenes - 1,
                  "queries_per_scene": queries_per_scene, "width": width, "height": height,
                  "held_out": first_seed >= TRAIN_SEED_LIMIT,
                  "query_rng": "sample_queries(render_scene(seed), np.random.default_rng(seed), queries_per_scene)",
                  "randomisation": None if randomisation is None else asdict(randomisation)},
        "model": _model_info(segmenter),
        "machine": machine_info(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "wall_s": time.perf_counter() - t0,
    }
    report.update(acc.summary())
    report["targets"] = check_targets(report)
    if keep_samples:
        report["samples"] = acc.samples
    return report


def _lookup(report: dict[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = report
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def check_targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets with the report's values; ``passed`` None where there is no value."""
    out = []
    for path, op, threshold, label in TARGETS:
        value = _lookup(report, path)
        passed = None if value is None else (value >= threshold if op == ">=" else value <= threshold)
        out.append({"name": label, "key": ".".join(path), "value": value, "op": op, "target": threshold,
                    "passed": passed})
    return out


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _mark(passed: bool | None) -> str:
    return "n/a" if passed is None else ("PASS" if passed else "FAIL")


def markdown_report(report: dict[str, Any]) -> str:
    """A short markdown summary: split, overall, per type, latency, targets."""
    split, model, machine = report["split"], report["model"], report["machine"]
    ref, absent, questions, lat = report["referring"], report["absent"], report["questions"], report["latency"]
    lines = [
        f"## argenseg-eval: {model['name']}",
        "",
        f"- split: {split['num_scenes']} scenes, seeds {split['first_seed']}..{split['last_seed']} "
        f"({'held out' if split['held_out'] else 'NOT held out'}), {split['queries_per_scene']} queries/scene, "
        f"{split['width']}x{split['height']}, {report['num_queries']} queries, {report['num_errors']} refused"
        + ("" if not split.get("randomisation") else ", rendered with domain randomisation"
           + ("" if split["randomisation"]["log_sizes"] else " (photometric: the plain split's layouts)")),
        f"- model on {model['device']} ({model['dtype']}, {model['torch_threads']} torch threads); "
        f"machine: {machine['cpu']}, {machine['cpu_count']} CPUs; {report['date']}; wall {report['wall_s']:.0f} s",
        "",
        "| group | n | cIoU | gIoU | accuracy | exact reply | no mask |",
        "|---|---:|---:|---:|---:|---:|---:|",
        f"| referring (all) | {ref['n']} | {_fmt(ref['ciou'])} | {_fmt(ref['giou'])} | | "
        f"{_fmt(ref['reply_exact_rate'])} | {_fmt(ref['no_mask_rate'])} |",
        f"| absent | {absent['n']} | | | {_fmt(absent['accuracy'])} | {_fmt(absent['exact_accuracy'])} | |",
        f"| questions (all) | {questions['n']} | | | {_fmt(questions['accuracy'])} | | |",
        f"| counts, non-zero answer | {questions['count_nonzero']['n']} | | | "
        f"{_fmt(questions['count_nonzero']['accuracy'])} | | |",
        f"| yes/no: yes, no, balanced | {questions['exists_yes']['n']}, {questions['exists_no']['n']} | | | "
        f"{_fmt(questions['exists_yes']['accuracy'])}, {_fmt(questions['exists_no']['accuracy'])}, "
        f"{_fmt(questions['exists_balanced_accuracy'])} | | |",
    ]
    for t in EXPRESSION_TYPES:
        g = report["per_type"][t]
        if t in REFERRING_TYPES:
            lines.append(f"| {t} | {g['n']} | {_fmt(g['ciou'])} | {_fmt(g['giou'])} | | "
                         f"{_fmt(g['reply_exact_rate'])} | {_fmt(g['no_mask_rate'])} |")
        elif t != "absent":
            lines.append(f"| {t} | {g['n']} | | | {_fmt(g['accuracy'])} | | |")
    pm = lat["per_mask"]
    stages = ", ".join(f"{k} {v:.1f}" for k, v in pm["stage_median_ms"].items())
    lines += [
        "",
        f"Latency per mask (one request at a time, {split['width']}x{split['height']}): median "
        f"{_fmt(pm['median_ms'], 1)} ms, p90 {_fmt(pm['p90_ms'], 1)} ms over {pm['n']} one-mask replies"
        + (f"; stage medians (ms): {stages}" if stages else "")
        + f". Text-only replies: median {_fmt(lat['text_only']['median_ms'], 1)} ms (n={lat['text_only']['n']}).",
        "",
        "| target | value | required | result |",
        "|---|---:|---:|---|",
    ]
    for t in report["targets"]:
        digits = 1 if t["key"].endswith("_ms") else 3
        lines.append(f"| {t['name']} | {_fmt(t['value'], digits)} | {t['op']} {t['target']:g} | {_mark(t['passed'])} |")
    return "\n".join(lines) + "\n"


def progress_printer(every: int = 50, stream: Any = None) -> Callable[[int, int, Accumulator], None]:
    """A ``progress`` callback printing one line every ``every`` scenes (and at the end)."""
    t0 = time.perf_counter()

    def show(done: int, total: int, acc: Accumulator) -> None:
        if done % every and done != total:
            return
        s = acc.summary()
        pm = s["latency"]["per_mask"]["median_ms"]
        print(f"argenseg-eval: {done}/{total} scenes, {s['num_queries']} queries, "
              f"referring cIoU {_fmt(s['referring']['ciou'])} gIoU {_fmt(s['referring']['giou'])}, "
              f"absent {_fmt(s['absent']['accuracy'])}, questions {_fmt(s['questions']['accuracy'])}, "
              f"median/mask {_fmt(pm, 1)} ms, {time.perf_counter() - t0:.0f} s",
              file=stream or sys.stderr, flush=True)

    return show


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="argenseg-eval", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default=None, help="native model directory (default: the shipped tabletop model)")
    p.add_argument("--scenes", type=int, default=500, help="number of held-out scenes")
    p.add_argument("--first-seed", type=int, default=HELDOUT_SEED_BASE, help="seed of the first scene")
    p.add_argument("--queries-per-scene", type=int, default=DEFAULT_QUERIES_PER_SCENE)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--out", required=True, help="JSON report path")
    p.add_argument("--markdown", default=None, help="also write the markdown summary here")
    p.add_argument("--no-samples", action="store_true", help="leave the per-query records out of the JSON")
    p.add_argument("--progress-every", type=int, default=50, help="scenes between progress lines")
    p.add_argument("--randomise", choices=sorted(RANDOMISATIONS), default="none",
                   help="render the held-out scenes with domain randomisation (fixed per seed): photometric "
                        "keeps the plain split's layouts and queries, full also redraws sizes")
    p.add_argument("--guided-upsampling", action="store_true",
                   help="refine every mask at the frame size with the colour guided filter (mask_refinement.py)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import torch

    from argenseg_ros.engine.mask_refinement import EdgeAwareSegmenter
    from argenseg_ros.engine.segmenter import Segmenter, default_model_dir

    if args.threads is not None:
        if args.threads < 1:
            raise SystemExit("argenseg-eval: --threads must be >= 1")
        torch.set_num_threads(args.threads)
    if args.first_seed < TRAIN_SEED_LIMIT:
        print(f"argenseg-eval: warning: --first-seed {args.first_seed} is below {TRAIN_SEED_LIMIT}: "
              "these scenes may have been trained on", file=sys.stderr)
    model_dir = Path(args.model) if args.model else default_model_dir()
    try:
        segmenter = Segmenter.from_pretrained(model_dir, device=args.device, dtype=args.dtype)
    except Exception as exc:  # a clean message, not a traceback, for a wrong path or device
        raise SystemExit(f"argenseg-eval: cannot load {model_dir}: {exc}") from exc
    if args.guided_upsampling:
        segmenter = EdgeAwareSegmenter(segmenter)
    report = evaluate(segmenter, args.scenes, first_seed=args.first_seed, queries_per_scene=args.queries_per_scene,
                      width=args.width, height=args.height,
                      progress=progress_printer(max(1, args.progress_every)), keep_samples=not args.no_samples,
                      randomisation=RANDOMISATIONS[args.randomise])
    report["model"]["dir"] = str(model_dir.resolve())
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    text = markdown_report(report)
    if args.markdown:
        md = Path(args.markdown)
        md.parent.mkdir(parents=True, exist_ok=True)
        md.write_text(text, encoding="utf-8")
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
