"""Image <-> tensor and displacement <-> vector image, geometry kept."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from intermodal.errors import IntermodalError
from intermodal.io import (
    displacement_to_image,
    image_to_displacement,
    image_to_tensor,
    tensor_to_image,
)


def test_image_to_tensor_shape_is_array_order(image):
    tensor = image_to_tensor(image)
    assert tensor.dtype == torch.float32
    assert tuple(tensor.shape) == (1, 1, *reversed(image.GetSize()))
    np.testing.assert_array_equal(tensor[0, 0].numpy(), sitk.GetArrayViewFromImage(image))


@pytest.mark.parametrize("lead", [(1, 1), (1,), ()], ids=["b-c", "c", "none"])
def test_tensor_to_image_round_trip(image, lead):
    tensor = image_to_tensor(image)
    back = tensor_to_image(tensor.reshape(*lead, *tensor.shape[2:]), image)
    assert back.GetSize() == image.GetSize()
    assert back.GetSpacing() == image.GetSpacing()
    assert back.GetOrigin() == image.GetOrigin()
    assert back.GetDirection() == image.GetDirection()
    np.testing.assert_array_equal(
        sitk.GetArrayViewFromImage(back), sitk.GetArrayViewFromImage(image)
    )


def test_tensor_to_image_without_reference_and_overrides():
    tensor = torch.arange(24, dtype=torch.float64).reshape(1, 1, 2, 3, 4)
    image = tensor_to_image(tensor, spacing=(1.0, 2.0, 3.0), origin=(4.0, 5.0, 6.0))
    assert image.GetSize() == (4, 3, 2)
    assert image.GetSpacing() == (1.0, 2.0, 3.0)
    assert image.GetOrigin() == (4.0, 5.0, 6.0)
    flat = tensor_to_image(torch.zeros(1, 1, 3, 4))
    assert flat.GetSize() == (4, 3)


def test_half_and_bool_tensors_become_sitk_types(image3d):
    shape = (1, 1, *reversed(image3d.GetSize()))
    assert tensor_to_image(torch.zeros(shape, dtype=torch.float16), image3d).GetPixelID() == (
        sitk.sitkFloat32
    )
    assert tensor_to_image(torch.zeros(shape, dtype=torch.bool), image3d).GetPixelID() == (
        sitk.sitkUInt8
    )


def test_bad_tensor_shape_for_reference(image3d):
    with pytest.raises(IntermodalError, match="does not match"):
        tensor_to_image(torch.zeros(1, 1, 2, 2, 2), image3d)
    with pytest.raises(IntermodalError, match="shape"):
        tensor_to_image(torch.zeros(2, 1, *reversed(image3d.GetSize())), image3d)


def test_bad_vector_image_to_tensor(image3d):
    field = displacement_to_image(torch.zeros(1, 3, *reversed(image3d.GetSize())), image3d)
    with pytest.raises(IntermodalError, match="scalar"):
        image_to_tensor(field)


def test_displacement_round_trip(image):
    ndim = image.GetDimension()
    rng = np.random.default_rng(3)
    displacement = torch.from_numpy(rng.normal(size=(1, ndim, *reversed(image.GetSize()))))
    field = displacement_to_image(displacement, image)
    assert field.GetPixelID() == sitk.sitkVectorFloat64
    assert field.GetNumberOfComponentsPerPixel() == ndim
    assert field.GetOrigin() == image.GetOrigin()
    assert field.GetDirection() == image.GetDirection()
    back = image_to_displacement(field, dtype=torch.float64)
    assert back.shape == displacement.shape
    torch.testing.assert_close(back, displacement, rtol=0, atol=0)
    # channel 0 is physical x: voxel (x=1, y=2[, z=0]) holds the vector at array [.., 2, 1]
    index = (1, 2, 0)[:ndim]
    stored = field.GetPixel(index)
    expected = displacement[(0, slice(None), *reversed(index))].numpy()
    np.testing.assert_array_equal(stored, expected)


def test_displacement_field_transform_moves_point_by_stored_vector(image):
    ndim = image.GetDimension()
    shape = tuple(reversed(image.GetSize()))
    vector = np.array([1.5, -2.0, 0.25][:ndim])
    displacement = np.zeros((1, ndim, *shape))
    index = (2, 3, 1)[:ndim]  # (x, y, z)
    displacement[(0, slice(None), *reversed(index))] = vector
    field = displacement_to_image(displacement, image)
    transform = sitk.DisplacementFieldTransform(sitk.Image(field))
    point = image.TransformIndexToPhysicalPoint(index)
    moved = transform.TransformPoint(point)
    np.testing.assert_allclose(np.subtract(moved, point), vector, atol=1e-12)
    elsewhere = image.TransformIndexToPhysicalPoint((0,) * ndim)
    np.testing.assert_allclose(transform.TransformPoint(elsewhere), elsewhere, atol=1e-12)


def test_bad_displacement_shape(image3d):
    with pytest.raises(IntermodalError, match="displacement must be"):
        displacement_to_image(torch.zeros(1, 2, *reversed(image3d.GetSize())), image3d)


def test_bad_image_to_displacement_components(image3d):
    with pytest.raises(IntermodalError, match="components"):
        image_to_displacement(image3d)
