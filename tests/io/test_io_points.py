"""Landmark CSV files."""

from __future__ import annotations

import numpy as np
import pytest
from io_helpers import assert_one_line_naming

from intermodal.errors import IntermodalError, OutputExistsError
from intermodal.io import read_points, write_points


@pytest.mark.parametrize("ndim", [2, 3])
def test_points_round_trip_exactly(tmp_path, ndim):
    points = np.random.default_rng(4).normal(scale=100, size=(7, ndim))
    path = write_points(tmp_path / "landmarks.csv", points)
    assert path.read_text(encoding="utf-8").splitlines()[0] == "x,y,z"[: 2 * ndim - 1]
    np.testing.assert_array_equal(read_points(path), points)
    assert [p.name for p in tmp_path.iterdir()] == ["landmarks.csv"]


def test_read_points_tolerates_spaces_case_and_blank_lines(tmp_path):
    path = tmp_path / "pts.csv"
    path.write_text(" X , Y , Z \n1, 2, 3\n\n-4.5,5e1,6\n")
    np.testing.assert_array_equal(read_points(path), [[1, 2, 3], [-4.5, 50, 6]])


def test_read_points_header_only_gives_empty(tmp_path):
    path = tmp_path / "none.csv"
    path.write_text("x,y\n")
    assert read_points(path).shape == (0, 2)


def test_write_points_refuses_overwrite(tmp_path):
    path = write_points(tmp_path / "p.csv", np.zeros((1, 3)))
    with pytest.raises(OutputExistsError):
        write_points(path, np.ones((1, 3)))
    write_points(path, np.ones((1, 3)), overwrite=True)
    np.testing.assert_array_equal(read_points(path), np.ones((1, 3)))


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("x,y,z\n1,2,3\n4,5\n", "line 3"),
        ("x,y,z\n1,2,abc\n", "line 2"),
        ("x,y,z\n1,2,nan\n", "line 2"),
        ("a,b,c\n1,2,3\n", "line 1"),
        ("1,2,3\n", "line 1"),
        ("x,y\n1,2\n\n3,4,5\n", "line 4"),
    ],
    ids=["short-row", "not-a-number", "nan", "bad-header", "no-header", "long-row"],
)
def test_bad_points_csv(tmp_path, text, line):
    path = tmp_path / "bad_points.csv"
    path.write_text(text)
    with pytest.raises(IntermodalError) as err:
        read_points(path)
    assert_one_line_naming(err, "bad_points.csv")
    assert line in str(err.value)


def test_bad_points_csv_empty_or_missing(tmp_path):
    (tmp_path / "empty.csv").write_text("\n\n")
    with pytest.raises(IntermodalError) as err:
        read_points(tmp_path / "empty.csv")
    assert_one_line_naming(err, "empty.csv")
    with pytest.raises(IntermodalError) as err:
        read_points(tmp_path / "missing.csv")
    assert_one_line_naming(err, "missing.csv")


@pytest.mark.parametrize("points", [np.zeros((3, 4)), np.zeros(3), np.full((2, 3), np.inf)])
def test_bad_points_to_write(tmp_path, points):
    with pytest.raises(IntermodalError) as err:
        write_points(tmp_path / "out.csv", points)
    assert_one_line_naming(err, "out.csv")
    assert not (tmp_path / "out.csv").exists()
