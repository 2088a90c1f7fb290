"""The QC helpers of report.py, against tiles counted by hand."""

from __future__ import annotations

import numpy as np
import pytest

from intermodal.report import checkerboard


def test_checkerboard_tiles_are_measured_in_mm():
    a, b = np.zeros((4, 8)), np.ones((4, 8))
    board = checkerboard(a, b, tile=4.0, spacing=(2.0, 1.0))
    # rows of 2 mm: two rows per tile; columns of 1 mm: four columns per tile
    np.testing.assert_array_equal(board[:, 0], [0, 0, 1, 1])
    np.testing.assert_array_equal(board[0], [0, 0, 0, 0, 1, 1, 1, 1])


def test_checkerboard_defaults_to_eight_tiles_along_the_longest_axis():
    a, b = np.zeros((8, 16)), np.ones((8, 16))
    board = checkerboard(a, b)  # tiles of 2 voxels
    np.testing.assert_array_equal(board[0], np.repeat([0, 1] * 4, 2))
    np.testing.assert_array_equal(board[:, 0], np.repeat([0, 1] * 2, 2))


def test_checkerboard_in_3d_alternates_along_every_axis():
    a, b = np.zeros((4, 4, 4)), np.ones((4, 4, 4))
    board = checkerboard(a, b, tile=2)
    assert board[0, 0, 0] == 0 and board[2, 0, 0] == 1 and board[2, 2, 0] == 0
    assert board[2, 2, 2] == 1
    assert board.mean() == 0.5


@pytest.mark.parametrize(
    ("kwargs", "shapes", "message"),
    [
        ({"tile": 0.0}, ((2, 2), (2, 2)), "tile size must be positive"),
        ({"tile": 1.0, "spacing": (1.0,)}, ((2, 2), (2, 2)), "spacing needs 2 sizes"),
        ({"spacing": (1.0, 1.0)}, ((2, 2), (2, 2)), "needs a tile size"),
        ({}, ((2, 2), (2, 3)), "one shape"),
    ],
)
def test_bad_checkerboard(kwargs, shapes, message):
    with pytest.raises(ValueError, match=message):
        checkerboard(np.zeros(shapes[0]), np.ones(shapes[1]), **kwargs)
