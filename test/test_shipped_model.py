"""The shipped tabletop weights on fixed held-out scenes: a regression in the engine or the weights
fails CI. The floors sit below the full `argenseg-eval` numbers (500 scenes) to absorb the noise
of a 50-scene sample; set them from the eval report of the shipped weights."""

import pytest

from argenseg_ros.evaluation import HELDOUT_SEED_BASE, evaluate, markdown_report
from argenseg_ros.segmenter import Segmenter, default_model_dir

NUM_SCENES = 50                  # fixed: seeds HELDOUT_SEED_BASE .. HELDOUT_SEED_BASE + 49
QUERIES_PER_SCENE = 2            # 100 queries (63 referring, 19 absent, 18 questions) to keep CPU time near 60 s;
                                 # the queries of a scene are a prefix of a larger sample, so raising it only adds
GIOU_FLOOR = 0.75                # referring gIoU must stay above this
ABSENT_FLOOR = 0.75              # absent-referent handling accuracy
QUESTION_FLOOR = 0.75            # counting and yes/no accuracy

# The one line to delete once the shipped weights are committed:
pytestmark = pytest.mark.skipif(not (default_model_dir() / "config.json").is_file(), reason=f"shipped weights not in the tree yet: {default_model_dir()} is missing")


@pytest.fixture(scope="module")
def report():
    segmenter = Segmenter.from_pretrained(None, device="cpu", dtype="float32")
    result = evaluate(segmenter, NUM_SCENES, first_seed=HELDOUT_SEED_BASE, queries_per_scene=QUERIES_PER_SCENE,
                      keep_samples=False)
    print("\n" + markdown_report(result))
    return result


def test_sample_is_the_fixed_one(report):
    assert report["split"]["first_seed"] == HELDOUT_SEED_BASE and report["split"]["held_out"]
    assert report["num_queries"] == NUM_SCENES * QUERIES_PER_SCENE
    assert report["num_errors"] == 0, report["errors"]


def test_referring_giou_above_floor(report):
    ref = report["referring"]
    assert ref["n"] >= 50
    assert ref["giou"] > GIOU_FLOOR, f"referring gIoU {ref['giou']:.3f} <= {GIOU_FLOOR} (cIoU {ref['ciou']:.3f})"


def test_absent_referents_above_floor(report):
    absent = report["absent"]
    assert absent["n"] >= 10
    assert absent["accuracy"] > ABSENT_FLOOR, f"absent-referent accuracy {absent['accuracy']:.3f} <= {ABSENT_FLOOR}"


def test_questions_above_floor(report):
    questions = report["questions"]
    assert questions["n"] >= 10
    assert questions["accuracy"] > QUESTION_FLOOR, \
        f"question accuracy {questions['accuracy']:.3f} <= {QUESTION_FLOOR}: {questions['by_type']}"
