"""argenseg_ros.geometry: depth units (REP-118) and the x/y/z cloud byte layout (no ROS)."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from argenseg_ros.geometry.cloud import POINT_STEP, XYZ_OFFSETS, pack_xyz, unpack_xyz
from argenseg_ros.geometry.depth import DepthError, decode_depth, encode_depth


def test_16uc1_is_millimetres_with_0_invalid():
    raw = np.array([[0, 1, 1000], [65535, 500, 2]], np.uint16)
    metres = decode_depth(raw, "16UC1")
    assert metres.dtype == np.float32
    assert np.isnan(metres[0, 0])
    np.testing.assert_array_equal(metres[~np.isnan(metres)],
                                  np.float32([0.001, 1.0, 65.535, 0.5, 0.002]))


def test_32fc1_is_metres_with_0_nan_inf_and_negatives_invalid():
    raw = np.array([[0.0, np.nan, np.inf, -np.inf, -0.5, 0.75]], np.float32)
    metres = decode_depth(raw, "32FC1")
    assert np.isnan(metres[0, :5]).all() and metres[0, 5] == np.float32(0.75)
    assert raw[0, 2] == np.inf   # the input is not modified


def test_encode_round_trips_and_rounds_to_millimetres():
    metres = np.array([[0.4996, 1.2344, np.nan, 0.0, -1.0]], np.float32)
    assert encode_depth(metres, "16UC1").tolist() == [[500, 1234, 0, 0, 0]]
    assert encode_depth(metres, "16UC1").dtype == np.uint16
    back = decode_depth(encode_depth(metres, "32FC1"), "32FC1")
    np.testing.assert_array_equal(back[0, :2], metres[0, :2])
    assert np.isnan(back[0, 2:]).all()
    with pytest.raises(DepthError, match="does not fit 16UC1"):
        encode_depth(np.float32([[70.0]]), "16UC1")


def test_bad_depth_input_names_the_problem():
    with pytest.raises(DepthError, match="'mono16' is not supported"):
        decode_depth(np.zeros((2, 2), np.uint16), "mono16")
    with pytest.raises(DepthError, match="16UC1 depth must be uint16, got float32"):
        decode_depth(np.zeros((2, 2), np.float32), "16UC1")
    with pytest.raises(DepthError, match="32FC1 depth must be float32, got uint16"):
        decode_depth(np.zeros((2, 2), np.uint16), "32FC1")
    with pytest.raises(DepthError, match="2-D"):
        decode_depth(np.zeros((2, 2, 1), np.uint16), "16UC1")


def test_pack_xyz_is_little_endian_float32_triplets():
    points = np.array([[1.0, -2.0, 0.5], [0.25, 0.0, 3.0]])
    data = pack_xyz(points)
    assert len(data) == 2 * POINT_STEP == 24
    assert struct.unpack("<6f", data) == (1.0, -2.0, 0.5, 0.25, 0.0, 3.0)
    assert dict(XYZ_OFFSETS) == {"x": 0, "y": 4, "z": 8}
    np.testing.assert_array_equal(unpack_xyz(data, POINT_STEP, dict(XYZ_OFFSETS), 2), points)
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        pack_xyz(np.zeros((3, 4)))


def test_unpack_reads_other_layouts():
    """A padded big-endian cloud (16-byte points, z first) reads back to the same x, y, z."""
    data = b"".join(struct.pack(">fffi", z, x, y, 7) for x, y, z in ((1.0, 2.0, 3.0), (4.0, 5.0, 6.0)))
    got = unpack_xyz(data, 16, {"x": 4, "y": 8, "z": 0}, 2, big_endian=True)
    np.testing.assert_array_equal(got, [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    with pytest.raises(ValueError, match="cannot hold"):
        unpack_xyz(data, 16, {"x": 4, "y": 8, "z": 0}, 3)
