"""Intensity scaling, modality detection and the working grid."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from intermodal import preprocess
from intermodal.errors import IntermodalError


def _image(array, spacing=(1.0, 1.0, 1.0), direction=None):
    image = sitk.GetImageFromArray(np.asarray(array, dtype=np.float32))
    image.SetSpacing(spacing[: image.GetDimension()])
    if direction is not None:
        image.SetDirection(direction)
    return image


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([-1000.0, -1000.0, 40.0, 700.0], "ct"),
        ([-2048.0, -1000.0, 0.0, 300.0], "ct"),
        ([0.0, 0.0, 120.0, 900.0], "mr"),
        ([0.0, 5.0, 10.0, 4000.0], "mr"),
    ],
)
def test_detect_modality_from_values(values, expected):
    array = np.resize(np.asarray(values, np.float32), (4, 4, 4))
    assert preprocess.detect_modality(_image(array)) == expected


def test_detect_modality_prefers_dicom_tag():
    image = _image(np.full((4, 4, 4), -1000.0))
    image.SetMetaData("intermodal:modality", "MR")
    assert preprocess.detect_modality(image) == "mr"
    assert preprocess.detect_modality(image, "ct") == "ct"


def test_ct_window_maps_to_unit_range():
    image = _image(np.array([[[-2000.0, -1000.0, 0.0, 1000.0, 3000.0]]]))
    scaled = sitk.GetArrayFromImage(preprocess.normalize_intensity(image, "ct")).ravel()
    np.testing.assert_allclose(scaled, [0.0, 0.0, 0.5, 1.0, 1.0])
    custom = preprocess.normalize_intensity(image, "ct", hu_window=(-1000, 0))
    np.testing.assert_allclose(sitk.GetArrayFromImage(custom).ravel(), [0, 0, 1, 1, 1])


def test_mr_percentiles_map_to_unit_range():
    values = np.arange(1000, dtype=np.float32).reshape(10, 10, 10)
    scaled = sitk.GetArrayFromImage(preprocess.normalize_intensity(_image(values), "mr"))
    assert scaled.min() == 0.0 and scaled.max() == 1.0
    # the median lands in the middle of the range
    assert abs(float(np.median(scaled)) - 0.5) < 0.01


def test_working_grid_covers_fixed_extent_and_keeps_geometry():
    direction = (0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)
    fixed = _image(np.zeros((40, 50, 60)), spacing=(1.0, 1.0, 2.5), direction=direction)
    fixed.SetOrigin((10.0, -5.0, 3.0))
    grid = preprocess.working_grid(fixed, 2.0, multiple=8)
    assert grid.GetDirection() == direction
    assert all(n % 8 == 0 for n in grid.GetSize())
    assert grid.GetSize() == (32, 32, 56)  # ceil(60/2)=30->32, 25->32, ceil(100/2)=50->56
    # the first voxels' corners coincide
    fixed_corner = fixed.TransformContinuousIndexToPhysicalPoint((-0.5, -0.5, -0.5))
    grid_corner = grid.TransformContinuousIndexToPhysicalPoint((-0.5, -0.5, -0.5))
    np.testing.assert_allclose(fixed_corner, grid_corner, atol=1e-9)


def test_default_spacing_is_2mm_in_3d_and_native_in_2d():
    assert preprocess.default_spacing(_image(np.zeros((4, 4, 4)))) == (2.0, 2.0, 2.0)
    assert preprocess.default_spacing(_image(np.zeros((4, 4)), spacing=(0.5, 0.7))) == (0.7, 0.7)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"spacing": 0.0}, "positive"),
        ({"spacing": -1.0}, "positive"),
        ({"multiple": 0}, "multiple"),
    ],
)
def test_bad_working_grid(kwargs, message):
    with pytest.raises(IntermodalError, match=message):
        preprocess.working_grid(_image(np.zeros((4, 4, 4))), **kwargs)


def test_bad_modality_and_windows():
    image = _image(np.zeros((4, 4, 4)))
    with pytest.raises(IntermodalError, match="modality"):
        preprocess.detect_modality(image, "pet")
    with pytest.raises(IntermodalError, match="HU window"):
        preprocess.normalize_intensity(image, "ct", hu_window=(100, -100))
    with pytest.raises(IntermodalError, match="percentiles"):
        preprocess.normalize_intensity(image, "mr", percentiles=(50, 10))


def test_data_mask_leaves_out_ct_padding_only():
    array = np.full((4, 6), -2048.0, np.float32)  # padding outside the field of view
    array[:, 2:] = -1000.0  # air
    array[1:3, 3:5] = 40.0  # tissue
    ct = sitk.GetImageFromArray(array)
    ct.SetSpacing((0.8, 1.2))
    mask = preprocess.data_mask(ct, "ct")
    assert mask.GetPixelID() == sitk.sitkUInt8
    assert mask.GetSpacing() == ct.GetSpacing()
    expected = np.zeros((4, 6), np.uint8)
    expected[:, 2:] = 1  # air is scanned data; only the padding is left out
    np.testing.assert_array_equal(sitk.GetArrayFromImage(mask), expected)
    # an MR: the box of its non-zero voxels; zero rows and columns outside it are no data, the
    # zeros inside it (air around the body) count
    values = np.zeros((5, 6), np.float32)
    values[1:4, 2:5] = 7.0
    values[2, 3] = 0.0
    mr = sitk.GetImageFromArray(values)
    expected = np.zeros((5, 6), np.uint8)
    expected[1:4, 2:5] = 1
    np.testing.assert_array_equal(sitk.GetArrayFromImage(preprocess.data_mask(mr, "mr")), expected)
    empty = sitk.GetImageFromArray(np.zeros((4, 6), np.float32))
    assert sitk.GetArrayFromImage(preprocess.data_mask(empty, "mr")).max() == 0
