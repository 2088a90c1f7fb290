"""Linear sampling of a field on a grid of its direction, against ITK's resampling."""

import numpy as np
import pytest
import SimpleITK as sitk

from intermodal.grids import same_grid, sample_rows, share_direction


def _grids(ndim: int, components: int):
    rng = np.random.default_rng(11)
    size = (7, 2, 5)[:ndim]  # one axis of 2 voxels: its only interval, edge repeated
    shape = (*size[::-1], components) if components > 1 else size[::-1]
    field = sitk.GetImageFromArray(rng.normal(size=shape), isVector=components > 1)
    field.SetSpacing((3.0, 2.5, 4.0)[:ndim])
    field.SetOrigin((1.0, -2.0, 3.0)[:ndim])
    if ndim == 3:
        direction = sitk.VersorTransform((0.2, 0.5, 0.7), 0.9).GetMatrix()
    else:
        direction = (0.6, -0.8, 0.8, 0.6)
    field.SetDirection(direction)
    reference = sitk.Image(*(30, 14, 20)[:ndim], sitk.sitkUInt8)
    reference.SetSpacing((1.1, 0.9, 1.3)[:ndim])
    reference.SetOrigin((-3.0, -4.0, 1.0)[:ndim])  # starts, and ends, beyond the field
    reference.SetDirection(direction)
    return field, reference


@pytest.mark.parametrize("ndim", [2, 3])
def test_rows_are_itks_linear_resampling_zeros_outside_included(ndim):
    field, reference = _grids(ndim, ndim)
    assert share_direction(field, reference)
    identity = sitk.Transform(ndim, sitk.sitkIdentity)
    rows = reference.GetSize()[-1]
    for dtype, kind, tolerance in [(np.float64, sitk.sitkVectorFloat64, 1e-12),
                                   (np.float32, sitk.sitkVectorFloat32, 2e-6)]:  # fmt: skip
        full = sitk.GetArrayFromImage(
            sitk.Resample(field, reference, identity, sitk.sitkLinear, 0.0, kind)
        )
        full = np.moveaxis(full, -1, 0)  # components first, as sample_rows gives them
        for low, high in [(0, rows), (3, 9), (rows - 1, rows)]:
            got = sample_rows(field, reference, low, high, dtype=dtype)
            assert got.dtype == dtype and got.shape == full[:, low:high].shape
            np.testing.assert_allclose(got, full[:, low:high], rtol=0, atol=tolerance)
        outside = np.all(full == 0, axis=0)
        assert outside.any() and not outside.all()  # both sides of ITK's inside rule met


def test_a_scalar_field_and_one_component():
    field, reference = _grids(3, 3)
    identity = sitk.Transform(3, sitk.sitkIdentity)
    second = sitk.VectorIndexSelectionCast(field, 1, sitk.sitkFloat64)
    expected = sitk.GetArrayFromImage(
        sitk.Resample(second, reference, identity, sitk.sitkLinear, 0.0, sitk.sitkFloat64)
    )
    np.testing.assert_allclose(sample_rows(second, reference, 2, 7)[0], expected[2:7], atol=1e-12)
    np.testing.assert_array_equal(
        sample_rows(field, reference, 2, 7, component=1), sample_rows(second, reference, 2, 7)
    )


def test_rows_of_the_fields_own_grid_are_its_values():
    field, _ = _grids(3, 3)
    same = sitk.Image(field.GetSize(), sitk.sitkUInt8)
    same.CopyInformation(field)
    values = np.moveaxis(sitk.GetArrayFromImage(field), -1, 0)
    np.testing.assert_array_equal(sample_rows(field, same, 1, 4), values[:, 1:4])


def test_another_direction_is_not_shared_and_itk_samples_its_rows():
    field, reference = _grids(3, 3)
    reference.SetDirection(sitk.VersorTransform((0.0, 0.0, 1.0), 0.3).GetMatrix())
    assert not share_direction(field, reference)
    identity = sitk.Transform(3, sitk.sitkIdentity)
    full = sitk.Resample(field, reference, identity, sitk.sitkLinear, 0.0, sitk.sitkVectorFloat64)
    full = np.moveaxis(sitk.GetArrayFromImage(full), -1, 0)
    np.testing.assert_array_equal(sample_rows(field, reference, 2, 7), full[:, 2:7])
    np.testing.assert_array_equal(sample_rows(field, reference, 2, 7, component=1), full[1:2, 2:7])
    single = sample_rows(field, reference, 2, 7, dtype=np.float32)
    assert single.dtype == np.float32
    np.testing.assert_array_equal(single, full[:, 2:7].astype(np.float32))
    assert np.abs(full[:, 2:7]).max() > 0.5 and (full == 0).any()  # inside and outside


def test_slab_rows_fit_about_slab_voxels(monkeypatch):
    from intermodal import grids

    image = sitk.Image(10, 20, 30, sitk.sitkUInt8)
    monkeypatch.setattr(grids, "SLAB_VOXELS", 1000)
    assert grids.slab_rows(image) == 5  # 5 rows of 10 x 20 voxels
    monkeypatch.setattr(grids, "SLAB_VOXELS", 10)
    assert grids.slab_rows(image) == 1  # never fewer than one row


def test_same_grid_compares_every_part_of_the_geometry_within_the_tolerance():
    image = sitk.Image(6, 5, 4, sitk.sitkFloat32)
    image.SetSpacing((1.0, 2.0, 3.0))
    image.SetOrigin((-100.0, 20.0, 5.0))
    assert same_grid(image, sitk.Image(image))
    assert not same_grid(image, sitk.Image(6, 5, 3, sitk.sitkFloat32))  # size
    assert not same_grid(image, sitk.Image(6, 5, sitk.sitkFloat32))  # dimension
    for setter, getter in (
        ("SetSpacing", "GetSpacing"),
        ("SetOrigin", "GetOrigin"),
        ("SetDirection", "GetDirection"),
    ):
        for shift, default_same, loose_same in ((5e-7, True, True), (5e-4, False, True)):
            other = sitk.Image(image)
            values = list(getattr(image, getter)())
            values[-1] += shift
            getattr(other, setter)(values)
            assert same_grid(image, other) is default_same, (setter, shift)
            assert same_grid(image, other, tolerance=1e-3) is loose_same, (setter, shift)
