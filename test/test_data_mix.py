"""The failure-aimed data mix: the distributions it promises, and queries that are correct."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from argenseg_ros.tabletop import data_mix as mix
from argenseg_ros.tabletop import world as tt

COUNT_WORDS = {"no": 0, "one": 1}


def _focus_scenes(focus: str, n: int, queries: int = 4):
    for sd in range(n):
        yield mix.sample_focus_scene(10_000 + sd, np.random.default_rng([sd, 1]), queries,
                                     mix.FailureMix({focus: 1.0}))


def _answer(reply: str) -> int:
    word = reply.split()[2]                # "There are no cups." / "There is one cup." / "There are 4 cups."
    return COUNT_WORDS[word] if word in COUNT_WORDS else int(word)


@pytest.mark.parametrize("focus", ["count_kind", "count_colour"])
def test_count_answers_are_balanced_over_0_to_6(focus: str) -> None:
    answers = Counter()
    for scene, queries, got in _focus_scenes(focus, 280):
        assert got == focus
        # one count question per scene comes first; the rest are plain queries of the scene
        assert queries[0].expression_type == focus
        assert all(q.expression != queries[0].expression for q in queries[1:])
        answers[_answer(queries[0].reply)] += 1
    assert set(answers) == set(range(7))
    share = np.array([answers[n] for n in range(7)]) / sum(answers.values())
    assert share.min() > 0.09 and share.max() < 0.2, share   # uniform is 0.143 each
    assert share[2:].sum() > 0.6                              # non-zero, non-one answers dominate


def test_plain_sampler_counts_are_mostly_zero_or_one() -> None:
    """Why the mix exists: the plain sampler rarely asks a count whose answer is 2 or more."""
    answers = Counter()
    for sd in range(200):
        for q in tt.sample_queries(tt.render_scene(sd), np.random.default_rng(sd), 8):
            if q.expression_type == "count_kind":
                answers[_answer(q.reply)] += 1
    total = sum(answers.values())
    assert (answers[0] + answers[1]) / total > 0.7


def test_colour_pairs_of_the_same_kind() -> None:
    neighbours = referring = 0
    for scene, queries, _ in _focus_scenes("colour_pair", 60):
        for q in queries[:2]:
            if q.expression_type == "colour_kind":
                referring += 1
                target = scene.objects[q.target]
                twins = [o for o in scene.objects if o.kind == target.kind and o is not target]
                assert any(o.colour != target.colour for o in twins)   # a same-kind, other-colour object
                pair = tuple(sorted({target.colour} | {o.colour for o in twins}))
                neighbours += any(tuple(sorted(p)) == pair for p in mix.NEIGHBOUR_COLOURS)
            elif q.expression_type == "absent":
                _, colour, kind = q.expression.split()
                assert any(o.kind == kind for o in scene.objects)
    assert referring > 60 and neighbours > 0.3 * referring


def test_small_and_crowded_scenes() -> None:
    small = [o.side for scene, _, _ in _focus_scenes("small", 30) for o in scene.objects]
    assert max(small) <= 80
    plain = [o.side for sd in range(30) for o in tt.render_scene(sd).objects]
    assert np.median(plain) > 100
    crowded = [len(scene.objects) for scene, _, _ in _focus_scenes("crowded", 30)]
    assert min(crowded) == 6
    for scene, queries, _ in _focus_scenes("crowded", 10):
        assert all(q.expression_type in tt.REFERRING_TYPES for q in queries)


def test_absent_referents_share_a_colour_or_kind() -> None:
    for scene, queries, _ in _focus_scenes("absent_confusable", 40):
        for q in queries:
            assert q.expression_type == "absent" and not q.mask.any()
            _, colour, kind = q.expression.split()
            assert (colour, kind) not in {(o.colour, o.kind) for o in scene.objects}
            assert any(o.colour == colour or o.kind == kind for o in scene.objects)
            assert q.reply == f"I don't see {tt.article(colour)} {colour} {kind}."


def test_exists_is_balanced_and_its_no_is_confusable() -> None:
    replies = Counter()
    for scene, queries, _ in _focus_scenes("exists", 60):
        present = {(o.colour, o.kind) for o in scene.objects}
        for q in queries:
            colour, kind = q.expression.rstrip("?").split()[-2:]
            assert q.reply == ("Yes." if (colour, kind) in present else "No.")
            if q.reply == "No.":
                assert any(o.colour == colour or o.kind == kind for o in scene.objects)
            replies[q.reply] += 1
    assert 0.4 < replies["Yes."] / sum(replies.values()) < 0.6


def test_mix_draws_every_focus_and_is_deterministic() -> None:
    seen = Counter(mix.FailureMix().draw(np.random.default_rng([3, i])) for i in range(700))
    assert set(seen) == set(mix.FOCUSES) and min(seen.values()) > 60
    a = mix.sample_focus_scene(7, np.random.default_rng(1), 6)
    b = mix.sample_focus_scene(7, np.random.default_rng(1), 6)
    assert a[0].image.tobytes() == b[0].image.tobytes() and a[2] == b[2]
    assert [(q.instruction, q.reply) for q in a[1]] == [(q.instruction, q.reply) for q in b[1]]
    with pytest.raises(ValueError):
        mix.FailureMix({"counting": 1.0})


def test_out_of_world_frames_answer_nothing_is_there() -> None:
    flat = noisy = 0
    for scene, queries, _ in _focus_scenes("out_of_world", 30, queries=6):
        assert scene.objects == [] and scene.image.shape == (480, 640, 3) and scene.image.dtype == np.uint8
        if scene.image.std() == 0:
            flat += 1
        else:
            noisy += 1
        for q in queries:
            assert q.reply.startswith(("I don't see", "There are no")) or q.reply == "No.", q.reply
            assert q.mask is None or not q.mask.any()
        assert len({q.expression for q in queries}) == len(queries) == 6
    assert flat > 5 and noisy > 5
