"""Depth to 3D, plain numpy (no ROS): units, intrinsics, back-projection, object points.

Modules: :mod:`.depth` (16UC1 millimetres / 32FC1 metres -> metres, invalid -> NaN),
:mod:`.camera` (pinhole intrinsics, back-projection), :mod:`.resample` (a colour-frame mask on
the depth image's pixel grid), :mod:`.object_points` (an object's points, robust centroid and
box), :mod:`.cloud` (the x/y/z float32 byte layout of a point cloud).

Frames: everything is in the depth camera's optical frame (x right, y down, z forward, metres).
"""
