"""A training mix aimed at the shipped model's measured failures (issue 16), as a sampling option.

The plain sampler (``world.render_scene`` + ``world.sample_queries``) leaves the model weak where
its scenes are rare: count answers are mostly 0 or 1 (so it learned "There are no X."), two objects
of one kind in different colours are uncommon (so "the green plate" picks the blue one), small
objects and six-object tables are a minority, and absent referents rarely share a colour or a kind
with what is on the table (so "no" is learned from the colour alone). Each *focus* below builds a
scene composition for one failure and asks the queries that exercise it:

* ``count_kind`` / ``count_colour``: the answer N is drawn uniformly in 0..6, the scene built
  with N objects of that kind (colour) among others;
* ``colour_pair``: two objects of one kind in different colours (half of the time neighbouring
  hues such as green/blue), asked for by colour, plus an absent third colour of that kind;
* ``small``: every object near the lower size limit; ``crowded``: six objects;
* ``absent_confusable``: absent ``{colour} {kind}`` referents whose colour or kind is present;
* ``exists``: yes/no balanced, each "no" naming a present colour or a present kind;
* ``out_of_world``: a frame with no tabletop at all (a flat colour, or noise), whose answers are
  all "I don't see ...", "There are no ..." and "No." (the shipped model garbles its text on flat
  bright or saturated frames). Its frames come from ``out_of_world.training_frame``; the
  photo-like family of ``out_of_world.py`` is never trained on, so it stays a check.

Every reply and mask comes from ``world.all_queries`` of the scene actually rendered, so a query
is correct even when the layout could not place every planned object. The mix is deterministic:
a function of the seed (and the generator passed in for the queries).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .out_of_world import training_frame
from .randomisation import Randomisation
from .world import (
    COLOURS,
    KINDS,
    MAX_OBJECTS,
    MIN_OBJECTS,
    PLURALS,
    REFERRING_TYPES,
    Composition,
    Query,
    Scene,
    all_queries,
    render_scene,
    sample_queries,
    with_lead_in,
)

FOCUSES: tuple[str, ...] = ("count_kind", "count_colour", "colour_pair", "small", "crowded",
                            "absent_confusable", "exists", "out_of_world")

#: Colour pairs the shipped model confuses most readily: neighbours on the hue circle, and white
#: with the palest of the saturated colours.
NEIGHBOUR_COLOURS: tuple[tuple[str, str], ...] = (
    ("red", "orange"), ("orange", "yellow"), ("yellow", "green"), ("green", "blue"),
    ("blue", "purple"), ("purple", "red"), ("yellow", "white"))

MAX_COUNT = MAX_OBJECTS           # count answers are balanced over 0..MAX_COUNT
SMALL_SIDE_RANGE = (0.0, 0.2)     # fractions of the legal side range: about 44-75 px at 640x480
CROWDED_SIDE_RANGE = (0.0, 0.6)   # six objects of at most ~140 px still fit a 640x480 table


@dataclass(frozen=True)
class FailureMix:
    """Focus weights of :func:`sample_focus_scene` (relative; every focus on by default)."""

    weights: dict[str, float] = field(default_factory=lambda: {f: 1.0 for f in FOCUSES})

    def __post_init__(self) -> None:
        unknown = set(self.weights) - set(FOCUSES)
        if unknown or not any(w > 0 for w in self.weights.values()):
            raise ValueError(f"weights need a positive weight and known focuses only (unknown: {sorted(unknown)})")

    def draw(self, rng: np.random.Generator) -> str:
        names = [f for f in FOCUSES if self.weights.get(f, 0.0) > 0]
        p = np.array([self.weights[f] for f in names], dtype=np.float64)
        return names[int(rng.choice(len(names), p=p / p.sum()))]


def _others(rng: np.random.Generator, n: int, kind: str | None = None,
            colour: str | None = None) -> list[tuple[str | None, str | None]]:
    """``n`` random objects that are not of ``kind`` (and not of ``colour``), so they never add to
    the focus count or make the focus pair ambiguous."""
    kinds = [k for k in KINDS if k != kind]
    colours = [c for c in COLOURS if c != colour]
    return [(kinds[int(rng.integers(len(kinds)))] if kind is not None else None,
             colours[int(rng.integers(len(colours)))] if colour is not None else None) for _ in range(n)]


def _shuffled(rng: np.random.Generator, items: list) -> tuple:
    order = rng.permutation(len(items))
    return tuple(items[i] for i in order)


@dataclass(frozen=True)
class FocusPlan:
    """A focus, its composition and the attributes the queries are about."""

    focus: str
    composition: Composition | None   # None: not a tabletop scene (out_of_world)
    kind: str | None = None
    colour: str | None = None
    pair: tuple[str, str] | None = None


def plan_focus(focus: str, rng: np.random.Generator) -> FocusPlan:
    """The composition of one scene for ``focus`` (see the module docstring)."""
    if focus in ("count_kind", "count_colour"):
        count = int(rng.integers(0, MAX_COUNT + 1))
        total = max(count, int(rng.integers(MIN_OBJECTS, MAX_OBJECTS + 1)), 1)
        if focus == "count_kind":
            kind = KINDS[int(rng.integers(len(KINDS)))]
            objects = [(kind, None)] * count + _others(rng, total - count, kind=kind)
            plan = dict(kind=kind)
        else:
            colour = COLOURS[int(rng.integers(len(COLOURS)))]
            objects = [(None, colour)] * count + _others(rng, total - count, colour=colour)
            plan = dict(colour=colour)
        sides = CROWDED_SIDE_RANGE if total >= 5 else (0.0, 1.0)
        return FocusPlan(focus, Composition(_shuffled(rng, objects), sides), **plan)
    if focus == "colour_pair":
        kind = KINDS[int(rng.integers(len(KINDS)))]
        if rng.random() < 0.5:
            pair = NEIGHBOUR_COLOURS[int(rng.integers(len(NEIGHBOUR_COLOURS)))]
        else:
            first, second = rng.choice(len(COLOURS), size=2, replace=False)
            pair = (COLOURS[int(first)], COLOURS[int(second)])
        objects = [(kind, pair[0]), (kind, pair[1])] + _others(rng, int(rng.integers(0, 4)), kind=kind)
        return FocusPlan(focus, Composition(_shuffled(rng, objects)), kind=kind, pair=pair)
    if focus == "small":
        n = int(rng.integers(MIN_OBJECTS, MAX_OBJECTS + 1))
        return FocusPlan(focus, Composition(((None, None),) * n, SMALL_SIDE_RANGE))
    if focus == "crowded":
        return FocusPlan(focus, Composition(((None, None),) * MAX_OBJECTS, CROWDED_SIDE_RANGE))
    if focus == "out_of_world":
        return FocusPlan(focus, None)
    if focus in ("absent_confusable", "exists"):
        n = int(rng.integers(MIN_OBJECTS, MAX_OBJECTS + 1))
        return FocusPlan(focus, Composition(((None, None),) * n))
    raise ValueError(f"unknown focus {focus!r}; one of {FOCUSES}")


def _confusable(scene: Scene, colour: str, kind: str) -> bool:
    """Whether an absent ``{colour} {kind}`` shares its colour or its kind with a present object."""
    return any(o.colour == colour or o.kind == kind for o in scene.objects)


def _parse_colour_kind(expression: str) -> tuple[str, str] | None:
    words = expression.split()
    if len(words) == 3 and words[0] == "the" and words[1] in COLOURS and words[2] in KINDS:
        return words[1], words[2]
    return None


def _exists_subject(question: str) -> tuple[str, str]:
    # "is there a red cup?" / "is there an orange cup?"
    words = question.rstrip("?").split()
    return words[-2], words[-1]


def focus_pool(scene: Scene, plan: FocusPlan) -> dict[str, list[Query]]:
    """The queries of ``scene`` that exercise ``plan.focus``, grouped so that drawing a group
    uniformly and then a query in it balances what matters (types, yes/no, pair members)."""
    queries = all_queries(scene)
    pool: dict[str, list[Query]] = {}

    def add(key: str, q: Query) -> None:
        pool.setdefault(key, []).append(q)

    for q in queries:
        t = q.expression_type
        if plan.focus == "count_kind" and t == "count_kind" and q.expression == \
                f"how many {PLURALS[plan.kind]} are there?":
            add("count", q)
        elif plan.focus == "count_colour" and t == "count_colour" and q.expression == \
                f"how many {plan.colour} objects are there?":
            add("count", q)
        elif plan.focus == "colour_pair":
            ck = _parse_colour_kind(q.expression)
            if ck is None or ck[1] != plan.kind:
                continue
            if t == "colour_kind" and ck[0] in plan.pair:
                add(f"pair_{ck[0]}", q)
            elif t == "absent":
                add("absent_same_kind", q)
        elif plan.focus in ("small", "crowded") and t in REFERRING_TYPES:
            add(t, q)
        elif plan.focus == "absent_confusable" and t == "absent":
            ck = _parse_colour_kind(q.expression)
            if ck is not None and _confusable(scene, *ck):
                add("absent", q)
        elif plan.focus == "out_of_world":
            add(t, q)          # every absent form, every count (all zero), every yes/no (all "No.")
        elif plan.focus == "exists" and t == "exists":
            if q.reply == "Yes.":
                add("yes", q)
            elif _confusable(scene, *_exists_subject(q.expression)):
                add("no", q)
    return pool


def focus_queries(scene: Scene, plan: FocusPlan, rng: np.random.Generator, n: int) -> list[Query]:
    """Up to ``n`` queries, the plan's focus first (a group uniformly, then a query in it; lead-ins
    as usual); when the focus has fewer than ``n`` distinct queries (a count scene has one count
    question) the rest are plain ``sample_queries`` of the scene that do not repeat them (so a
    scene may get a few fewer than ``n``)."""
    pool = {key: list(items) for key, items in focus_pool(scene, plan).items()}
    out: list[Query] = []
    while len(out) < n and pool:
        keys = sorted(pool)
        key = keys[int(rng.integers(len(keys)))]
        q = pool[key].pop(int(rng.integers(len(pool[key]))))
        if not pool[key]:
            del pool[key]
        if q.mask is not None:     # referring and absent expressions get lead-ins, questions do not
            q = Query(with_lead_in(q.expression, rng), q.reply, q.mask, q.expression_type, q.target,
                      q.expression)
        out.append(q)
    if len(out) < n:  # oversample the plain queries so that repeats of the focus ones can go
        used = {q.expression for q in out}
        extra = [q for q in sample_queries(scene, rng, 2 * (n - len(out))) if q.expression not in used]
        out += extra[:n - len(out)]
    return out


def sample_focus_scene(seed: int, rng: np.random.Generator, queries: int, mix: FailureMix | None = None,
                       width: int = 640, height: int = 480, randomisation: Randomisation | None = None
                       ) -> tuple[Scene, list[Query], str]:
    """One failure-mix scene: (scene, queries, focus). The plan is drawn from ``rng``; the scene
    is rendered from ``seed`` with the plan's composition (and the randomisation, if any)."""
    mix = mix or FailureMix()
    plan = plan_focus(mix.draw(rng), rng)
    if plan.composition is None:
        scene = Scene(image=training_frame(rng, height, width), objects=[], seed=seed, width=width, height=height)
    else:
        scene = render_scene(seed, width, height, composition=plan.composition, randomisation=randomisation)
    return scene, focus_queries(scene, plan, rng, queries), plan.focus
