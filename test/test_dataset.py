"""Tests of the on-disk dataset format (argenseg_ros.tabletop.dataset)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from argenseg_ros.tabletop import dataset as ds
from argenseg_ros.tabletop import world as tt


def _small_dataset(root: Path, seeds: range = range(3), q: int = 6) -> int:
    return ds.generate_tabletop_dataset(root, seeds, queries_per_scene=q, width=160,
                                        height=120)


def test_round_trip(tmp_path: Path) -> None:
    scenes = [tt.render_scene(s, 160, 120) for s in (11, 12)]
    queries = [tt.all_queries(s) for s in scenes]
    n = ds.write_dataset(tmp_path, zip(scenes, queries))
    assert n == sum(len(q) for q in queries)
    records = ds.read_dataset(tmp_path)
    assert len(records) == n
    it = iter(records)
    for scene, qs in zip(scenes, queries):
        img = None
        for q in qs:
            rec = next(it)
            assert rec.image == f"images/{scene.seed:06d}.png"
            assert (rec.instruction, rec.answer, rec.type) == (q.instruction, q.reply,
                                                               q.expression_type)
            if img is None:
                img = ds.load_image(rec)
                assert img.dtype == np.uint8 and np.array_equal(img, scene.image)
            masks = ds.load_masks(rec, shape=img.shape[:2])
            if q.expression_type in tt.REFERRING_TYPES:
                assert rec.masks == [f"masks/{scene.seed:06d}_{q.target}.png"]
                assert len(masks) == 1 and np.array_equal(masks[0], q.mask)
            else:
                assert rec.masks == [] and masks == []
            assert rec.answer.count("<mask>") == len(rec.masks)


def test_jsonl_lines_follow_the_documented_schema(tmp_path: Path) -> None:
    _small_dataset(tmp_path)
    lines = (tmp_path / "conversations.jsonl").read_text().splitlines()
    assert len(lines) == 18
    for line in lines:
        obj = json.loads(line)
        assert list(obj) == ["image", "instruction", "answer", "masks", "type"]
        assert obj["type"] in tt.EXPRESSION_TYPES
    first_mask = next(json.loads(line)["masks"][0] for line in lines
                      if json.loads(line)["masks"])
    m = cv2.imread(str(tmp_path / first_mask), cv2.IMREAD_UNCHANGED)
    assert m.ndim == 2 and set(np.unique(m)) <= {0, 255}


def test_generation_is_deterministic(tmp_path: Path) -> None:
    _small_dataset(tmp_path / "a")
    _small_dataset(tmp_path / "b")
    assert (tmp_path / "a/conversations.jsonl").read_bytes() == \
        (tmp_path / "b/conversations.jsonl").read_bytes()
    assert (tmp_path / "a/images/000001.png").read_bytes() == \
        (tmp_path / "b/images/000001.png").read_bytes()


def test_append_and_duplicate_ids(tmp_path: Path) -> None:
    _small_dataset(tmp_path, range(0, 2), q=2)
    ds.generate_tabletop_dataset(tmp_path, range(2, 4), 2, 160, 120, append=True)
    assert len(ds.read_dataset(tmp_path)) == 8
    with pytest.raises(ds.DatasetError, match="already in the dataset"):
        ds.generate_tabletop_dataset(tmp_path, range(3, 5), 2, 160, 120, append=True)


def _write_lines(root: Path, lines: list[str]) -> None:
    (root / "conversations.jsonl").write_text("\n".join(lines) + "\n")


def test_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ds.DatasetError, match="not a directory"):
        ds.read_dataset(tmp_path / "nope")
    with pytest.raises(ds.DatasetError, match="missing file .*conversations.jsonl"):
        ds.read_dataset(tmp_path)
    _small_dataset(tmp_path, range(1), q=1)
    good = {"image": "images/000000.png", "instruction": "the red cup",
            "answer": "Sure, <mask>.", "masks": ["masks/000000_0.png"]}
    cv2.imwrite(str(tmp_path / "masks/000000_0.png"), np.zeros((120, 160), np.uint8))

    _write_lines(tmp_path, [json.dumps(good), "", "{not json"])
    with pytest.raises(ds.DatasetError, match=r"conversations.jsonl:3: invalid JSON"):
        ds.read_dataset(tmp_path)

    _write_lines(tmp_path, [json.dumps({**good, "answer": "Sure."})])
    with pytest.raises(ds.DatasetError, match=r":1: answer has 0 <mask> placeholder\(s\) but "
                                              r"1 mask file\(s\)"):
        ds.read_dataset(tmp_path)

    _write_lines(tmp_path, [json.dumps(good), json.dumps({**good, "image": "images/x.png"})])
    with pytest.raises(ds.DatasetError, match=r":2: missing file 'images/x.png'"):
        ds.read_dataset(tmp_path)
    assert len(ds.read_dataset(tmp_path, check_files=False)) == 2

    _write_lines(tmp_path, [json.dumps({**good, "masks": ["masks/gone.png"]})])
    with pytest.raises(ds.DatasetError, match=r":1: missing file 'masks/gone.png'"):
        ds.read_dataset(tmp_path)

    _write_lines(tmp_path, [json.dumps({k: v for k, v in good.items() if k != "answer"})])
    with pytest.raises(ds.DatasetError, match=r":1: missing key 'answer'"):
        ds.read_dataset(tmp_path)

    _write_lines(tmp_path, [json.dumps({**good, "image": "../outside.png"})])
    with pytest.raises(ds.DatasetError, match="inside it"):
        ds.read_dataset(tmp_path)

    _write_lines(tmp_path, ["[1, 2]"])
    with pytest.raises(ds.DatasetError, match="expected a JSON object"):
        ds.read_dataset(tmp_path)


def test_user_dataset_and_mask_checks(tmp_path: Path) -> None:
    """A hand-made dataset (no 'type', two masks in one answer) reads and loads."""
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    img = np.zeros((10, 12, 3), np.uint8)
    img[..., 0] = 200  # red in RGB
    cv2.imwrite(str(tmp_path / "images/a.png"), img[:, :, ::-1])
    m0 = np.zeros((10, 12), np.uint8)
    m0[2:5, 3:6] = 255
    cv2.imwrite(str(tmp_path / "masks/a_0.png"), m0)
    cv2.imwrite(str(tmp_path / "masks/a_1.png"), 255 - m0)
    cv2.imwrite(str(tmp_path / "masks/rgb.png"), np.zeros((10, 12, 3), np.uint8))
    _write_lines(tmp_path, [
        json.dumps({"image": "images/a.png", "instruction": "both", "masks":
                    ["masks/a_0.png", "masks/a_1.png"], "answer": "<mask> and <mask>."}),
        json.dumps({"image": "images/a.png", "instruction": "how many?", "answer": "One."}),
        json.dumps({"image": "images/a.png", "instruction": "x", "answer": "<mask>",
                    "masks": ["masks/rgb.png"]}),
    ])
    recs = ds.read_dataset(tmp_path)
    assert [r.type for r in recs] == ["", "", ""] and recs[1].masks == []
    loaded = ds.load_image(recs[0])
    assert np.array_equal(loaded, img)
    a, b = ds.load_masks(recs[0], shape=(10, 12))
    assert np.array_equal(a, m0 > 0) and np.array_equal(b, m0 == 0)
    with pytest.raises(ds.DatasetError, match="is 12x10 but the image is 20x10"):
        ds.load_masks(recs[0], shape=(10, 20))
    with pytest.raises(ds.DatasetError, match=":3: mask .*single-channel"):
        ds.load_masks(recs[2])


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    rc = ds.main(["--out", str(out), "--first-seed", "5", "--num-scenes", "2",
                  "--queries-per-scene", "3", "--width", "128", "--height", "96"])
    assert rc == 0 and "wrote 2 scenes and 6 conversations" in capsys.readouterr().out
    recs = ds.read_dataset(out)
    assert {r.image for r in recs} == {"images/000005.png", "images/000006.png"}
    assert ds.load_image(recs[0]).shape == (96, 128, 3)
    rc = ds.main(["--out", str(out), "--first-seed", "6", "--num-scenes", "1", "--append"])
    assert rc == 1 and "already in the dataset" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        ds.main(["--out", str(out), "--num-scenes", "0"])
