"""A picture of one object's point cloud (numpy + OpenCV, no ROS): the demo's ``*_cloud.png``.

Two orthographic panels at one scale, both in the depth camera's optical frame: *front* (x right,
y down: what the camera sees) and *side* (z, the depth, right; y down). Points are coloured by
depth, the robust centroid is a white cross, the axis-aligned box a white rectangle, and a scale
bar gives 5 cm.
"""

from __future__ import annotations

import cv2
import numpy as np

PANEL_PX = 360
MARGIN_PX = 28
MAX_DRAWN_POINTS = 40_000
SCALE_BAR_M = 0.05


def _panel(points_2d: np.ndarray, depth: np.ndarray, centre: np.ndarray, metres_per_px: float,
           z_range: tuple[float, float], centroid_2d: np.ndarray, box_lo: np.ndarray,
           box_hi: np.ndarray, title: str) -> np.ndarray:
    panel = np.full((PANEL_PX, PANEL_PX, 3), 24, np.uint8)
    half = PANEL_PX / 2.0

    def to_px(xy: np.ndarray) -> np.ndarray:
        return np.rint((xy - centre) / metres_per_px + half).astype(np.int64)

    px = to_px(points_2d)
    inside = (px >= 0).all(axis=1) & (px < PANEL_PX).all(axis=1)
    span = max(z_range[1] - z_range[0], 1e-6)
    shade = np.clip((depth - z_range[0]) / span * 255.0, 0, 255).astype(np.uint8)
    colours = cv2.applyColorMap(shade.reshape(-1, 1), cv2.COLORMAP_TURBO).reshape(-1, 3)[:, ::-1]
    panel[px[inside, 1], px[inside, 0]] = colours[inside]
    lo, hi = to_px(box_lo), to_px(box_hi)
    cv2.rectangle(panel, (int(lo[0]), int(lo[1])), (int(hi[0]), int(hi[1])), (255, 255, 255), 1)
    c = to_px(centroid_2d)
    cv2.drawMarker(panel, (int(c[0]), int(c[1])), (255, 255, 255), cv2.MARKER_CROSS, 16, 2)
    cv2.putText(panel, title, (8, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (230, 230, 230), 1, cv2.LINE_AA)
    bar = int(round(SCALE_BAR_M / metres_per_px))
    y = PANEL_PX - 12
    cv2.line(panel, (8, y), (8 + bar, y), (230, 230, 230), 2)
    cv2.putText(panel, f"{SCALE_BAR_M * 100:.0f} cm", (12 + bar, y + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                (230, 230, 230), 1, cv2.LINE_AA)
    return panel


def render_cloud(points: np.ndarray, centroid, box_min, box_max, title: str = "") -> np.ndarray:
    """(N, 3) points (metres, optical frame) -> (H, W, 3) uint8 RGB picture, front and side views."""
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 3 or len(points) == 0:
        raise ValueError(f"points must be a non-empty (N, 3) array, got shape {np.shape(points)}")
    if len(points) > MAX_DRAWN_POINTS:  # a fixed subsample: the picture is the same every run
        points = points[np.linspace(0, len(points) - 1, MAX_DRAWN_POINTS).astype(np.int64)]
    centroid, box_min, box_max = (np.asarray(v, dtype=np.float64) for v in (centroid, box_min, box_max))
    lo, hi = points.min(axis=0), points.max(axis=0)
    extent = max(float((hi - lo).max()), 0.01)
    metres_per_px = extent / (PANEL_PX - 2 * MARGIN_PX)
    z_range = (float(lo[2]), float(hi[2]))
    mid = (lo + hi) / 2.0
    front = _panel(points[:, [0, 1]], points[:, 2], mid[[0, 1]], metres_per_px, z_range,
                   centroid[[0, 1]], box_min[[0, 1]], box_max[[0, 1]], "front: x right, y down")
    side = _panel(points[:, [2, 1]], points[:, 2], mid[[2, 1]], metres_per_px, z_range,
                  centroid[[2, 1]], box_min[[2, 1]], box_max[[2, 1]], "side: z (depth) right, y down")
    picture = np.concatenate([front, np.full((PANEL_PX, 4, 3), 90, np.uint8), side], axis=1)
    caption = np.full((26, picture.shape[1], 3), 24, np.uint8)
    text = (f"{title}  " if title else "") + "centroid x %.3f y %.3f z %.3f m, %d points" % (
        *centroid, len(points))
    cv2.putText(caption, text, (8, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (230, 230, 230), 1, cv2.LINE_AA)
    return np.concatenate([caption, picture], axis=0)
