"""Out-of-world frames and the sentence-form check of replies."""

from __future__ import annotations

import numpy as np
import torch

from argenseg_ros.engine.model import random_model
from argenseg_ros.engine.segmenter import Segmenter
from argenseg_ros.tabletop import out_of_world as oow
from argenseg_ros.tabletop import world as tt


def test_sentence_forms_are_exactly_the_grammar_replies() -> None:
    forms = oow.sentence_forms()
    # 1 referring + 2 yes/no + absent (35 colour-kind, 7 colour, 5 kind) + counts 0..6 of 5 kinds and 7 colours
    assert len(forms) == 1 + 2 + (35 + 7 + 5) + 7 * (5 + 7)
    for sd in range(10):
        for q in tt.all_queries(tt.render_scene(sd)):
            assert oow.is_sentence_form(q.reply, forms), q.reply
    assert oow.is_sentence_form("  There are   3 cups. ")
    for bad in ("II don purple purpleSuSuSu", "Sure, <mask>. Sure, <mask>.", "There are 7 cups.", "Yes", ""):
        assert not oow.is_sentence_form(bad, forms)


def test_frames_are_deterministic_and_outside_the_world() -> None:
    a, b = oow.frames(seed=3), oow.frames(seed=3)
    assert [(f, n) for f, n, _ in a] == [(f, n) for f, n, _ in b]
    assert all(x.tobytes() == y.tobytes() for (_, _, x), (_, _, y) in zip(a, b))
    assert {f for f, _, _ in a} == {"uniform", "noise", "photo_like"} and len(a) == 12
    for family, name, image in a:
        assert image.shape == (480, 640, 3) and image.dtype == np.uint8
        if family == "uniform":
            assert image.min() == image.max() or len(np.unique(image.reshape(-1, 3), axis=0)) == 1
        else:
            assert image.std() > 10, name
    grey = dict((n, im) for _, n, im in a)["grey_230"]
    assert int(grey[0, 0, 0]) == 230
    # 1/f noise: far more energy at low than at high spatial frequencies.
    pink = dict((n, im) for _, n, im in a)["pink_noise"][:, :, 0].astype(np.float64)
    spectrum = np.abs(np.fft.fft2(pink - pink.mean()))
    assert spectrum[1:8, 1:8].mean() > 10 * spectrum[200:240, 280:320].mean()


def test_measure_counts_garbled_replies_of_a_real_model() -> None:
    model, tokenizer = random_model(seed=0, corpus=tt.expression_vocabulary())
    segmenter = Segmenter(model, tokenizer, max_new_tokens=5, max_masks=1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        report = oow.measure(segmenter, instructions=("the red cup",))
    finally:
        torch.set_num_threads(threads)
    assert report["n"] == 12 and sum(g["n"] for g in report["families"].values()) == 12
    judged = [oow.is_sentence_form(s["reply"]) for s in report["samples"]]
    assert report["garbled"] == judged.count(False)
    # A random model's five tokens are not a sentence of the grammar.
    assert report["garbled_rate"] > 0.5
