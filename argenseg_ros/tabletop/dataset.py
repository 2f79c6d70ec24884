"""On-disk segmentation-conversation dataset: images, PNG masks and a JSONL of conversations.

Format (a user can fill one with their own robot's images and train on it)::

    <root>/
      images/<id>.png          RGB image (any size; PNG, 8-bit, 3 channels)
      masks/<id>_<k>.png       one binary mask: single-channel 8-bit PNG, 0 = background,
                               255 = object, same size as its image (<k> is any distinct
                               suffix; the tabletop generator uses the object's index)
      conversations.jsonl      one JSON object per line, one line per instruction

A conversation line::

    {"image": "images/000001.png", "instruction": "pick up the red cup",
     "answer": "Sure, <mask>.", "masks": ["masks/000001_0.png"], "type": "colour_kind"}

* ``image``: path of the image, relative to ``<root>``.
* ``instruction``: the user's sentence.
* ``answer``: the model's reply. Every ``<mask>`` placeholder stands for one generated mask;
  the number of placeholders must equal the number of entries in ``masks``, and the i-th
  placeholder is the i-th mask file. Replies without a mask (questions, "I don't see a purple
  can.") have no placeholder and ``"masks": []``.
* ``masks``: mask paths relative to ``<root>`` (may be omitted when empty). Several lines
  may share an image and mask files.
* ``type``: optional free-form tag (the tabletop generator writes the expression type, e.g.
  ``colour_kind``, ``relation``, ``absent``, ``count_kind``; see ``tabletop.py``).
  Unknown keys are ignored. Blank lines are ignored. Paths must stay inside ``<root>``.

:func:`read_dataset` validates the file and raises :class:`DatasetError` (a ``ValueError``)
naming the file, the line number and the problem (bad JSON, missing key, missing image or
mask file, placeholder count not matching the mask count).

Console script ``argenseg-make-dataset`` (:func:`main`) renders a synthetic tabletop dataset
in this format.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import cv2
import numpy as np

from .world import MASK_PLACEHOLDER, Query, Scene, render_scene, sample_queries

CONVERSATIONS_FILE = "conversations.jsonl"
IMAGES_DIR = "images"
MASKS_DIR = "masks"


class DatasetError(ValueError):
    """A dataset file is malformed or refers to a missing file."""


@dataclass
class ConversationRecord:
    """One line of ``conversations.jsonl``; paths are relative to ``root``."""

    image: str
    instruction: str
    answer: str
    masks: list[str] = field(default_factory=list)
    type: str = ""
    root: Path = field(default_factory=Path)
    line: int = 0  # 1-based line number in conversations.jsonl (0: not read from a file)

    @property
    def image_path(self) -> Path:
        return self.root / self.image

    @property
    def mask_paths(self) -> list[Path]:
        return [self.root / m for m in self.masks]

    def to_json(self) -> str:
        return json.dumps({"image": self.image, "instruction": self.instruction,
                           "answer": self.answer, "masks": list(self.masks),
                           "type": self.type}, ensure_ascii=False)


# ----------------------------------------------------------------------------- writing

def _write_png(path: Path, array: np.ndarray) -> None:
    data = array[:, :, ::-1] if array.ndim == 3 else array  # OpenCV writes BGR
    if not cv2.imwrite(str(path), np.ascontiguousarray(data)):
        raise OSError(f"could not write {path}")


def write_dataset(root: str | os.PathLike[str],
                  scenes_and_queries: Iterable[tuple[Scene, Sequence[Query]]],
                  append: bool = False) -> int:
    """Write scenes and their queries under ``root``; returns the number of records written.

    The image id is the scene's seed (``%06d``), so datasets rendered from disjoint seed
    ranges can be appended into one root (``append=True``). Each referenced object's visible
    mask is written once per scene as ``masks/<id>_<object index>.png``. Absent referents and
    questions get no mask. Streams: scenes are written as they are produced.
    """
    root = Path(root)
    (root / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    (root / MASKS_DIR).mkdir(parents=True, exist_ok=True)
    conv_path = root / CONVERSATIONS_FILE
    seen: set[str] = set()
    count = 0
    with open(conv_path, "a" if append else "w", encoding="utf-8") as f:
        for scene, queries in scenes_and_queries:
            ident = f"{scene.seed:06d}"
            image_rel = f"{IMAGES_DIR}/{ident}.png"
            if ident in seen or (append and (root / image_rel).exists()):
                raise DatasetError(f"{root}: image id {ident} (scene seed {scene.seed}) is "
                                   "already in the dataset")
            seen.add(ident)
            _write_png(root / image_rel, scene.image)
            written: set[int] = set()
            for q in queries:
                masks: list[str] = []
                if q.target is not None and q.mask is not None:
                    mask_rel = f"{MASKS_DIR}/{ident}_{q.target}.png"
                    if q.target not in written:
                        _write_png(root / mask_rel, q.mask.astype(np.uint8) * 255)
                        written.add(q.target)
                    masks.append(mask_rel)
                if q.reply.count(MASK_PLACEHOLDER) != len(masks):
                    raise DatasetError(f"query {q.instruction!r} of scene {scene.seed}: reply "
                                       f"{q.reply!r} does not match its {len(masks)} mask(s)")
                rec = ConversationRecord(image_rel, q.instruction, q.reply, masks,
                                         q.expression_type)
                f.write(rec.to_json() + "\n")
                count += 1
    return count


def generate_tabletop_dataset(root: str | os.PathLike[str], seeds: Iterable[int],
                              queries_per_scene: int = 4, width: int = 640,
                              height: int = 480, append: bool = False) -> int:
    """Render one tabletop scene per seed with ``queries_per_scene`` sampled queries each.

    Deterministic: the queries of a scene come from a generator seeded by ``(seed, 1)``.
    Returns the number of records written.
    """
    if queries_per_scene < 1:
        raise ValueError("queries_per_scene must be at least 1")

    def items() -> Iterable[tuple[Scene, list[Query]]]:
        for seed in seeds:
            scene = render_scene(int(seed), width, height)
            rng = np.random.default_rng([int(seed), 1])
            yield scene, sample_queries(scene, rng, queries_per_scene)

    return write_dataset(root, items(), append=append)


# ----------------------------------------------------------------------------- reading

def _relative_path(value: object, key: str, where: str, root: Path) -> str:
    if not isinstance(value, str) or not value:
        raise DatasetError(f"{where}: {key!r} must be a non-empty string path, got {value!r}")
    p = PurePosixPath(value)
    if p.is_absolute() or ".." in p.parts:
        raise DatasetError(f"{where}: {key} path {value!r} must be relative to the dataset "
                           "root and stay inside it")
    if not (root / value).is_file():
        raise DatasetError(f"{where}: missing file {value!r} (looked for {root / value})")
    return value


def _parse_line(text: str, lineno: int, conv_path: Path, root: Path,
                check_files: bool) -> ConversationRecord:
    where = f"{conv_path}:{lineno}"
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{where}: invalid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(obj, dict):
        raise DatasetError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    for key in ("image", "instruction", "answer"):
        if key not in obj:
            raise DatasetError(f"{where}: missing key {key!r}")
    for key in ("instruction", "answer"):
        if not isinstance(obj[key], str):
            raise DatasetError(f"{where}: {key!r} must be a string")
    masks = obj.get("masks", [])
    if not isinstance(masks, list):
        raise DatasetError(f"{where}: 'masks' must be a list of paths")
    kind = obj.get("type", "")
    if not isinstance(kind, str):
        raise DatasetError(f"{where}: 'type' must be a string")
    n_slots = obj["answer"].count(MASK_PLACEHOLDER)
    if n_slots != len(masks):
        raise DatasetError(f"{where}: answer has {n_slots} {MASK_PLACEHOLDER} placeholder(s) "
                           f"but {len(masks)} mask file(s) are listed")
    if check_files:
        image = _relative_path(obj["image"], "image", where, root)
        masks = [_relative_path(m, "mask", where, root) for m in masks]
    else:
        image = obj["image"]
        if not isinstance(image, str) or not all(isinstance(m, str) for m in masks):
            raise DatasetError(f"{where}: paths must be strings")
    return ConversationRecord(image, obj["instruction"], obj["answer"], list(masks), kind,
                              root, lineno)


def read_dataset(root: str | os.PathLike[str], check_files: bool = True
                 ) -> list[ConversationRecord]:
    """Read and validate ``<root>/conversations.jsonl``.

    ``check_files`` verifies that every image and mask file exists (one ``stat`` each).
    Raises :class:`DatasetError` with ``file:line`` on the first problem.
    """
    root = Path(root)
    conv_path = root / CONVERSATIONS_FILE
    if not root.is_dir():
        raise DatasetError(f"dataset root {root} is not a directory")
    if not conv_path.is_file():
        raise DatasetError(f"missing file {conv_path} (a dataset needs {CONVERSATIONS_FILE})")
    records: list[ConversationRecord] = []
    with open(conv_path, encoding="utf-8") as f:
        for lineno, text in enumerate(f, start=1):
            if text.strip():
                records.append(_parse_line(text, lineno, conv_path, root, check_files))
    return records


def _where(record: ConversationRecord) -> str:
    return f"{record.root / CONVERSATIONS_FILE}:{record.line}" if record.line else "record"


def load_image(record: ConversationRecord) -> np.ndarray:
    """The record's image as (H, W, 3) uint8 RGB."""
    path = record.image_path
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise DatasetError(f"{_where(record)}: cannot read image {path}")
    if img.dtype != np.uint8:
        raise DatasetError(f"{_where(record)}: image {path} must be 8-bit, got {img.dtype}")
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    elif img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    else:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    return img


def load_masks(record: ConversationRecord,
               shape: tuple[int, int] | None = None) -> list[np.ndarray]:
    """The record's masks as (H, W) bool arrays, in placeholder order.

    A pixel is foreground when its value is above half the range (0/255 masks as written by
    :func:`write_dataset`). ``shape`` (H, W), e.g. the image's, is checked when given.
    """
    out = []
    for path in record.mask_paths:
        m = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if m is None:
            raise DatasetError(f"{_where(record)}: cannot read mask {path}")
        if m.ndim != 2:
            raise DatasetError(f"{_where(record)}: mask {path} must be a single-channel "
                               f"(mono) PNG, got {m.shape[2]} channels")
        if shape is not None and m.shape != tuple(shape):
            raise DatasetError(f"{_where(record)}: mask {path} is {m.shape[1]}x{m.shape[0]} "
                               f"but the image is {shape[1]}x{shape[0]}")
        out.append(m > (np.iinfo(m.dtype).max // 2 if m.dtype.kind == "u" else 0.5))
    return out


# ----------------------------------------------------------------------------- CLI

def main(argv: Sequence[str] | None = None) -> int:
    """``argenseg-make-dataset``: render a synthetic tabletop dataset to disk."""
    parser = argparse.ArgumentParser(
        prog="argenseg-make-dataset",
        description="Render synthetic tabletop scenes and write them as an argenseg dataset "
                    "(images/, masks/, conversations.jsonl).")
    parser.add_argument("--out", required=True, help="dataset root directory")
    parser.add_argument("--first-seed", type=int, default=0,
                        help="seed of the first scene (default 0)")
    parser.add_argument("--num-scenes", type=int, default=1000,
                        help="number of scenes (default 1000)")
    parser.add_argument("--queries-per-scene", type=int, default=4,
                        help="instructions sampled per scene (default 4)")
    parser.add_argument("--width", type=int, default=640, help="image width (default 640)")
    parser.add_argument("--height", type=int, default=480, help="image height (default 480)")
    parser.add_argument("--append", action="store_true",
                        help="append to an existing dataset (seeds must not overlap)")
    args = parser.parse_args(argv)
    if args.num_scenes < 1 or args.queries_per_scene < 1:
        parser.error("--num-scenes and --queries-per-scene must be at least 1")
    if args.first_seed < 0:
        parser.error("--first-seed must be non-negative")
    if args.width < 32 or args.height < 32:
        parser.error("--width and --height must be at least 32")
    seeds = range(args.first_seed, args.first_seed + args.num_scenes)
    try:
        n = generate_tabletop_dataset(args.out, seeds, args.queries_per_scene, args.width,
                                      args.height, append=args.append)
    except (DatasetError, OSError) as e:
        print(f"argenseg-make-dataset: error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.num_scenes} scenes and {n} conversations to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
