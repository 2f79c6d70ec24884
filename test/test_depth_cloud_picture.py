"""nodes/cloud_picture.py: the demo's picture of a cloud puts the centroid and box where they are."""

from __future__ import annotations

import numpy as np
import pytest

from argenseg_ros.nodes import cloud_picture


def test_front_and_side_views_at_one_scale():
    # A 10 x 10 cm plate at 0.5 m with a 5 cm tall bump in its middle (closer to the camera).
    xs, ys = np.meshgrid(np.linspace(-0.05, 0.05, 60), np.linspace(-0.05, 0.05, 60))
    z = np.where(np.hypot(xs, ys) < 0.02, 0.45, 0.5)
    points = np.stack([xs.ravel(), ys.ravel(), z.ravel()], axis=1)
    box_min, box_max = (-0.03, -0.03, 0.46), (0.03, 0.03, 0.49)   # inside the cloud: no overdraw
    picture = cloud_picture.render_cloud(points, (0.0, 0.0, 0.5), box_min, box_max, "plate")
    size = cloud_picture.PANEL_PX
    assert picture.shape == (26 + size, 2 * size + 4, 3) and picture.dtype == np.uint8
    front, side = picture[26:, :size], picture[26:, size + 4:]
    # The centroid cross is white at the panel centre of the front view (x, y = 0, 0).
    assert (front[size // 2, size // 2] == 255).all()
    # Front: the 10 cm square fills (PANEL - 2 * MARGIN) px; side: 5 cm of depth is half of it.
    def points_drawn(panel):   # depth-coloured pixels (text, box and cross are grey or white)
        return np.argwhere((panel.max(axis=2) - panel.min(axis=2)) > 10)

    f, s = points_drawn(front), points_drawn(side)
    span = size - 2 * cloud_picture.MARGIN_PX
    assert np.ptp(f[:, 1]) == pytest.approx(span, abs=2) and np.ptp(f[:, 0]) == pytest.approx(span, abs=2)
    assert np.ptp(s[:, 1]) == pytest.approx(span / 2, abs=2)    # side: 5 cm of depth, half of 10 cm
    # The box outline is white, 6 cm wide in the front view.
    white_rows = np.argwhere((front == 255).all(axis=2).sum(axis=1) > 100)[:, 0]
    assert len(white_rows) == 2 and np.ptp(white_rows) == pytest.approx(span * 0.6, abs=2)
    assert np.ptp(s[:, 0]) == pytest.approx(span, abs=2)
    with pytest.raises(ValueError, match="non-empty"):
        cloud_picture.render_cloud(np.zeros((0, 3)), (0, 0, 0), (0, 0, 0), (0, 0, 0))
