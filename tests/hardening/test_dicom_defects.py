"""DICOM series with defects: resampled with a warning that names the gap, or refused.

Slice ``k`` written by ``make_dicom_series`` holds ``100 * k + column``, so the value at
column 0 tells which slice (or which blend of slices) a voxel came from.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import SimpleITK as sitk
from fuzz_inputs import make_dicom_series, slice_pixels

from intermodal.errors import ImageReadError
from intermodal.io import read_image
from intermodal.io.dicom import MAX_GAP_RATIO


def column0(image: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(image)[:, 0, 0]


def refusal(folder, *words: str) -> str:
    with pytest.raises(ImageReadError) as err:
        read_image(folder)
    message = str(err.value)
    assert "\n" not in message and folder.name in message, message
    for word in words:
        assert word in message, message
    return message


def test_even_series_is_read_without_warning(tmp_path, caplog):
    folder = make_dicom_series(tmp_path / "even", [0.0, 2.5, 5.0, 7.5])
    with caplog.at_level(logging.WARNING, logger="intermodal.io"):
        image = read_image(folder)
    assert image.GetSize() == (6, 5, 4)
    assert image.GetSpacing()[2] == pytest.approx(2.5)
    np.testing.assert_array_equal(column0(image), [0, 100, 200, 300])
    assert caplog.text == ""


def test_files_in_any_order_are_sorted_by_position(tmp_path):
    # Written in the order 2, 0, 3, 1: sorted along the slice normal, not by file name.
    depths = [5.0, 0.0, 7.5, 2.5]
    pixels = [slice_pixels(k) for k in (2, 0, 3, 1)]
    image = read_image(make_dicom_series(tmp_path / "shuffled", depths, pixels=pixels))
    np.testing.assert_array_equal(column0(image), [0, 100, 200, 300])
    assert image.GetOrigin()[2] == pytest.approx(0.0)


def test_missing_slice_is_interpolated_with_a_warning_naming_the_gap(tmp_path, caplog):
    # Slices at 0, 2.5, 7.5, 10 mm: the one at 5 mm is missing.
    pixels = [slice_pixels(k) for k in (0, 1, 3, 4)]
    folder = make_dicom_series(tmp_path / "gap", [0.0, 2.5, 7.5, 10.0], pixels=pixels)
    with caplog.at_level(logging.WARNING, logger="intermodal.io"):
        image = read_image(folder)
    assert image.GetSize()[2] == 5
    assert image.GetSpacing()[2] == pytest.approx(2.5)
    # Linear interpolation fills the missing slice halfway between its neighbours.
    np.testing.assert_allclose(column0(image), [0, 100, 200, 300, 400])
    assert "5.000 mm between" in caplog.text
    assert "at 2.500 mm" in caplog.text and "at 7.500 mm" in caplog.text
    assert "Resampled" in caplog.text


def test_uneven_spacing_is_resampled_not_stretched(tmp_path, caplog):
    # Slice positions 0, 2, 5, 7, 9 mm: one gap of 3 mm among gaps of 2 mm.
    depths = [0.0, 2.0, 5.0, 7.0, 9.0]
    folder = make_dicom_series(tmp_path / "uneven", depths)
    with caplog.at_level(logging.WARNING, logger="intermodal.io"):
        image = read_image(folder)
    spacing = image.GetSpacing()[2]
    positions = image.GetOrigin()[2] + spacing * np.arange(image.GetSize()[2])
    # The values along z follow the true slice positions (what stretching would get wrong).
    expected = np.interp(positions, depths, [0, 100, 200, 300, 400])
    np.testing.assert_allclose(column0(image), expected, atol=1e-3)
    assert positions[-1] == pytest.approx(9.0)
    assert "3.000 mm between" in caplog.text and "at 2.000 mm" in caplog.text


def test_gap_wider_than_the_limit_is_refused(tmp_path):
    usual = 2.0
    wide = usual * (MAX_GAP_RATIO + 1)
    folder = make_dicom_series(tmp_path / "hole", [0.0, 2.0, 4.0, 4.0 + wide, 6.0 + wide])
    refusal(folder, "gap", f"{wide:.3f} mm", "at 4.000 mm")


def test_identical_duplicate_slice_is_dropped_with_a_warning(tmp_path, caplog):
    pixels = [slice_pixels(0), slice_pixels(1), slice_pixels(1), slice_pixels(2)]
    folder = make_dicom_series(tmp_path / "dup", [0.0, 3.0, 3.0, 6.0], pixels=pixels)
    with caplog.at_level(logging.WARNING, logger="intermodal.io"):
        image = read_image(folder)
    np.testing.assert_array_equal(column0(image), [0, 100, 200])
    assert image.GetSpacing()[2] == pytest.approx(3.0)
    assert "duplicates" in caplog.text and "3.000 mm" in caplog.text


def test_different_slices_at_one_position_are_refused(tmp_path):
    pixels = [slice_pixels(0), slice_pixels(1), slice_pixels(7), slice_pixels(2)]
    folder = make_dicom_series(tmp_path / "clash", [0.0, 3.0, 3.0, 6.0], pixels=pixels)
    refusal(folder, "same position", "3.000 mm", "slice001.dcm", "slice002.dcm")


def test_mixed_orientations_are_refused(tmp_path):
    tilted = (1.0, 0.0, 0.0, 0.0, np.cos(0.2), np.sin(0.2))
    axial = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    folder = make_dicom_series(
        tmp_path / "mixed", [0.0, 2.0, 4.0], orientations=[axial, tilted, axial]
    )
    refusal(folder, "mixed slice orientations", "slice001.dcm")


def test_sheared_stack_is_refused(tmp_path):
    # Gantry tilt: each slice shifted 0.5 mm along the rows as it goes up.
    folder = make_dicom_series(tmp_path / "tilt", [0.0, 2.0, 4.0], lateral=[0.0, 0.5, 1.0])
    refusal(folder, "gantry tilt", "slice002.dcm is shifted 1.000 mm")


def test_slices_of_different_sizes_are_refused(tmp_path):
    pixels = [slice_pixels(0), slice_pixels(1, (4, 6)), slice_pixels(2)]
    folder = make_dicom_series(tmp_path / "sizes", [0.0, 2.0, 4.0], pixels=pixels)
    refusal(folder, "different sizes")


def test_oblique_series_keeps_its_geometry_when_resampled(tmp_path):
    # The same gap on an oblique stack: resampling runs along the slice normal.
    angle = 0.4
    oblique = (np.cos(angle), np.sin(angle), 0.0, 0.0, 0.0, 1.0)
    pixels = [slice_pixels(k) for k in (0, 1, 3)]
    folder = make_dicom_series(
        tmp_path / "oblique", [0.0, 1.5, 4.5], orientations=[oblique] * 3, pixels=pixels
    )
    image = read_image(folder)
    direction = np.reshape(image.GetDirection(), (3, 3))
    np.testing.assert_allclose(direction[:, 0], oblique[:3], atol=1e-6)
    np.testing.assert_allclose(direction[:, 2], np.cross(oblique[:3], oblique[3:]), atol=1e-6)
    np.testing.assert_allclose(column0(image), [0, 100, 200, 300], atol=1e-3)
