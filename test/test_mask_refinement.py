"""The guided filter and the edge-aware upsampler: exact identities, edge snapping, the real tokenizer."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from argenseg_ros.engine.mask_refinement import GuidedUpsampler, guided_filter
from argenseg_ros.tabletop import tokenizer_eval


def _box(x: np.ndarray, r: int) -> np.ndarray:
    return cv2.boxFilter(x, -1, (2 * r + 1, 2 * r + 1), normalize=True, borderType=cv2.BORDER_REFLECT)


def test_flat_guide_gives_a_double_box_filter() -> None:
    """With a constant guide the colour covariance is 0: a = 0, b = mean(p), q = mean(mean(p))."""
    rng = np.random.default_rng(0)
    source = rng.random((40, 50)).astype(np.float32)
    guide = np.full((40, 50, 3), 0.3, np.float32)
    out = guided_filter(guide, source, radius=3, eps=1e-3)
    np.testing.assert_allclose(out, _box(_box(source, 3), 3), atol=1e-5)


def test_guide_equal_to_source_with_tiny_eps_reproduces_it() -> None:
    """Where the guide's channels equal the source, the local affine fit is the identity."""
    rng = np.random.default_rng(1)
    source = cv2.GaussianBlur(rng.random((48, 48)).astype(np.float32), (0, 0), 2.0)
    guide = np.repeat(source[:, :, None], 3, axis=2) + rng.normal(0, 1e-3, (48, 48, 3)).astype(np.float32)
    out = guided_filter(guide, source, radius=4, eps=1e-8)
    assert np.abs(out - source)[8:-8, 8:-8].max() < 0.02


def test_coarse_mask_snaps_to_the_colour_edge() -> None:
    image = np.full((120, 160, 3), 90, np.uint8)
    truth = np.zeros((120, 160), bool)
    cv2.circle(image, (80, 60), 31, (200, 30, 40), -1)
    cv2.circle(truth.view(np.uint8), (80, 60), 31, 1, -1)
    coarse = cv2.resize(cv2.resize(truth.astype(np.float32), (12, 12), interpolation=cv2.INTER_AREA), (160, 120),
                        interpolation=cv2.INTER_LINEAR)

    def iou(a: np.ndarray) -> float:
        return float((a & truth).sum() / (a | truth).sum())

    assert iou(coarse > 0.5) < 0.96
    assert iou(GuidedUpsampler(radius=8, subsample=1)(image, coarse)) == 1.0
    assert iou(GuidedUpsampler(radius=8, subsample=2)(image, coarse)) > 0.99
    # A mask given at its own small size is upsampled first, with the same result.
    small = cv2.resize(truth.astype(np.float32), (12, 12), interpolation=cv2.INTER_AREA)
    assert np.array_equal(GuidedUpsampler(radius=8, subsample=1)(image, small),
                          GuidedUpsampler(radius=8, subsample=1)(image, coarse))


def test_window_around_the_mask_equals_the_whole_frame() -> None:
    rng = np.random.default_rng(2)
    image = (rng.random((96, 128, 3)) * 255).astype(np.uint8)
    probs = np.zeros((96, 128), np.float32)
    probs[40:55, 60:80] = 1.0
    up = GuidedUpsampler(radius=6, subsample=2)
    whole = guided_filter(image.astype(np.float32) / 255.0, probs, 6, up.eps, 2)
    np.testing.assert_allclose(up.probabilities(image, probs), whole, atol=1e-5)
    assert not up(image, np.zeros((96, 128), np.float32)).any()
    with pytest.raises(ValueError):
        guided_filter(image.astype(np.float32), probs[:10], 3, 1e-3)


def test_shipped_tokenizer_reconstructions_gain_from_the_guided_upsampler() -> None:
    """The shipped 64 px VQ-VAE on held-out masks: a real model on real tensors (3 scenes)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        report = tokenizer_eval.reconstruction_report(tokenizer_eval.load_vqvae(), num_scenes=3)
    finally:
        torch.set_num_threads(threads)
    assert report["num_masks"] >= 6 and report["tokenizer"]["image_size"] == 64
    assert 0.6 < report["mask_iou"] < 0.95
    assert report["frame_iou_guided"] > report["frame_iou"] + 0.03
    assert len(report["code_usage_per_scale"]) == 5 and report["code_usage_per_scale"][0] >= 1


def test_tokenizer_eval_cli_writes_its_report(tmp_path, capsys) -> None:
    import json

    threads = torch.get_num_threads()
    try:
        assert tokenizer_eval.main(["--scenes", "1", "--out", str(tmp_path / "r" / "tok.json")]) == 0
    finally:
        torch.set_num_threads(threads)
    report = json.loads((tmp_path / "r" / "tok.json").read_text())
    assert report["num_scenes"] == 1 and report["source"] == "shipped model" and "by_size" in report
    assert '"by_size"' not in capsys.readouterr().out and report["torch_threads"] == 1
