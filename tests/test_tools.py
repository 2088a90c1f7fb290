"""The measuring scripts in tools/: the pieces that decide what they measure."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

TOOLS = Path(__file__).resolve().parents[1] / "tools"


def _tool(name: str):
    spec = importlib.util.spec_from_file_location(name, TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _ramp(size=(10, 8, 6), spacing=(2.0, 2.0, 2.0)) -> sitk.Image:
    """A linear ramp along x, on a rotated grid: linear interpolation reproduces it exactly."""
    z, y, x = np.meshgrid(*[np.arange(n) for n in size[::-1]], indexing="ij")
    image = sitk.GetImageFromArray((3.0 * x + 100.0).astype(np.float32))
    image.SetSpacing(spacing)
    image.SetOrigin((-12.0, 30.0, 5.0))
    image.SetDirection(sitk.VersorTransform((0, 0, 1), 0.3).GetMatrix())
    return image


def test_full_resolution_grid_keeps_the_corner_and_the_extent():
    check = _tool("full_resolution_check")
    image = _ramp()
    fine = check.on_grid(image, (20, 16, 12), (1.0, 1.0, 1.0))
    assert fine.GetSize() == (20, 16, 12) and fine.GetDirection() == image.GetDirection()
    corner = np.asarray(image.TransformContinuousIndexToPhysicalPoint([-0.5] * 3))
    np.testing.assert_allclose(
        fine.TransformContinuousIndexToPhysicalPoint([-0.5] * 3), corner, atol=1e-9
    )
    np.testing.assert_allclose(
        fine.TransformContinuousIndexToPhysicalPoint([19.5, 15.5, 11.5]),
        image.TransformContinuousIndexToPhysicalPoint([9.5, 7.5, 5.5]),
        atol=1e-9,
    )
    # inside the coarse image's voxel centres, the fine image is the ramp where it lies
    point = fine.TransformIndexToPhysicalPoint((7, 5, 3))
    expected = 3.0 * image.TransformPhysicalPointToContinuousIndex(point)[0] + 100.0
    assert fine[7, 5, 3] == pytest.approx(expected, abs=1e-3)


def test_known_motion_check_measures_a_shift_as_its_length():
    check = _tool("known_motion_check")
    grid = _ramp()
    shift = check.mapping(sitk.TranslationTransform(3, (3.0, 4.0, 0.0)), grid)
    still = check.mapping(sitk.TranslationTransform(3), grid)
    assert shift.shape == (6, 8, 10, 3)
    mask = np.ones(shift.shape[:3], bool)
    assert check.median_distance(shift, still, mask) == pytest.approx(5.0)


def test_the_mirrored_copy_holds_every_voxel_where_it_was():
    check = _tool("known_motion_check")
    image = _ramp()
    copy = check.mirrored(image)
    assert copy.GetSize() == image.GetSize()
    assert not np.array_equal(sitk.GetArrayFromImage(copy), sitk.GetArrayFromImage(image))
    for index in [(0, 0, 0), (9, 7, 5), (3, 2, 1)]:
        point = image.TransformIndexToPhysicalPoint(index)
        mirror_index = copy.TransformPhysicalPointToIndex(point)
        assert copy[mirror_index] == image[index]
        assert mirror_index[0] == image.GetSize()[0] - 1 - index[0]
