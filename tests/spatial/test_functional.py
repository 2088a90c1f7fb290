"""Tests of the spatial core with answers worked out by hand, in 2D and 3D."""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from intermodal.errors import IntermodalError
from intermodal.spatial import (
    PointSampler,
    SpatialArgumentError,
    coarse_positions,
    downsample_image,
    identity_grid,
    integrate_velocity,
    jacobian_det,
    physical_to_voxel,
    resize_displacement,
    sample_points,
    voxel_to_physical,
    warp,
)

# Non-square on purpose, so that an axis mix-up changes shapes or answers.
SHAPES = {2: (7, 9), 3: (5, 7, 9)}


def constant_field(shape: tuple[int, ...], values: list[float], batch: int = 1) -> torch.Tensor:
    """``(batch, ndim, *shape)`` field equal to ``values[i]`` in channel ``i``."""
    field = torch.zeros(batch, len(shape), *shape, dtype=torch.float64)
    for axis, value in enumerate(values):
        field[:, axis] = value
    return field


def smooth_bump(shape: tuple[int, ...], amplitude: list[float], sigma: float) -> torch.Tensor:
    """``(1, ndim, *shape)`` Gaussian bump centred on the grid, channel ``i`` scaled by ``a_i``."""
    grid = identity_grid(shape, dtype=torch.float64)
    centre = torch.tensor([(n - 1) / 2 for n in shape], dtype=torch.float64)
    r2 = ((grid - centre.view(-1, *([1] * len(shape)))) ** 2).sum(0)
    bump = torch.exp(-r2 / (2 * sigma**2))
    return torch.stack([a * bump for a in amplitude]).unsqueeze(0)


def interior(ndim: int, margin: int) -> tuple[slice, ...]:
    return (slice(None), slice(None)) + (slice(margin, -margin),) * ndim


# --------------------------------------------------------------------------- identity_grid


def test_identity_grid_is_array_order_voxel_indices(ndim: int) -> None:
    shape = SHAPES[ndim]
    grid = identity_grid(shape, dtype=torch.float64)
    assert grid.shape == (ndim, *shape)
    assert grid.dtype == torch.float64
    index = tuple(n - 2 for n in shape)
    assert grid[(slice(None), *index)].tolist() == [float(i) for i in index]


# --------------------------------------------------------------------------- warp


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_warp_zero_displacement_is_identity(ndim: int, mode: str, dtype: torch.dtype) -> None:
    # Bitwise: grid_sample's round trip through [-1, 1] alone would be off by rounding.
    shape = SHAPES[ndim]
    image = torch.rand(2, 3, *shape, dtype=dtype)
    warped = warp(image, torch.zeros(1, ndim, *shape, dtype=dtype), mode=mode)
    assert warped.shape == image.shape
    assert warped.dtype == dtype
    assert torch.equal(warped, image)


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_warp_unit_shift_on_every_axis_moves_voxel_back_by_one(ndim: int, mode: str) -> None:
    # warped(x) = image(x + 1): the bright voxel at q shows up at q - 1 on every axis.
    shape = SHAPES[ndim]
    bright = tuple(n // 2 for n in shape)
    image = torch.zeros(1, 1, *shape, dtype=torch.float64)
    image[(0, 0, *bright)] = 1.0
    warped = warp(image, constant_field(shape, [1.0] * ndim), mode=mode, padding_mode="zeros")
    expected = torch.zeros_like(image)
    expected[(0, 0, *(q - 1 for q in bright))] = 1.0
    torch.testing.assert_close(warped, expected, atol=1e-9, rtol=0)


def test_warp_unit_shift_along_one_axis(ndim: int) -> None:
    shape = SHAPES[ndim]
    bright = tuple(n // 2 for n in shape)
    image = torch.zeros(1, 1, *shape, dtype=torch.float64)
    image[(0, 0, *bright)] = 1.0
    for axis in range(ndim):
        values = [0.0] * ndim
        values[axis] = 1.0
        warped = warp(image, constant_field(shape, values), padding_mode="zeros")
        moved = list(bright)
        moved[axis] -= 1
        assert torch.nonzero(warped[0, 0] > 0.5).tolist() == [moved]
        assert warped.sum().item() == pytest.approx(1.0)


def test_warp_half_voxel_shift_interpolates_linearly(ndim: int) -> None:
    # A ramp along the last axis sampled half a voxel further along it.
    shape = SHAPES[ndim]
    ramp = identity_grid(shape, dtype=torch.float64)[-1][None, None]
    values = [0.0] * ndim
    values[-1] = 0.5
    warped = warp(ramp, constant_field(shape, values))
    torch.testing.assert_close(warped[..., :-1], ramp[..., :-1] + 0.5)
    # border padding: past the last voxel the edge value repeats
    torch.testing.assert_close(warped[..., -1], ramp[..., -1])


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int16, torch.int64])
def test_warp_nearest_keeps_labels_exactly(ndim: int, dtype: torch.dtype) -> None:
    shape = SHAPES[ndim]
    labels = torch.tensor([0, 3, 7, 120], dtype=dtype)
    generator = torch.Generator().manual_seed(0)
    image = labels[torch.randint(0, 4, (1, 1, *shape), generator=generator)]
    # Less than half a voxel everywhere: nearest picks the same voxel, so nothing changes.
    small = 0.4 * (2 * torch.rand(1, ndim, *shape, generator=generator) - 1)
    warped = warp(image, small, mode="nearest")
    assert warped.dtype == dtype
    assert torch.equal(warped, image)
    # A large smooth field moves labels around but never invents or blends values.
    large = smooth_bump(shape, [2.3] * ndim, sigma=2.0).float()
    warped = warp(image, large, mode="nearest")
    assert warped.dtype == dtype
    assert set(warped.unique().tolist()) <= set(labels.tolist())
    assert not torch.equal(warped, image)


def test_warp_nearest_keeps_large_int64_labels() -> None:
    # 2**24 + 1 is not representable in float32; the int64 path must still be exact.
    image = torch.full((1, 1, 4, 4), 2**24 + 1, dtype=torch.int64)
    image[0, 0, 0, 0] = 5
    warped = warp(image, torch.full((1, 2, 4, 4), 0.2), mode="nearest")
    assert torch.equal(warped, image)


def test_warp_rotation_by_90_degrees_turns_horizontal_into_vertical(ndim: int) -> None:
    # Rotate in the (y, x) plane about the centre c: sample image at (y', x') = (x, 2c - y).
    # A horizontal line (row y = c) in 2D, or the slab y = c in 3D, becomes the
    # vertical line x = c (the slab x = c in 3D).
    n = 9
    c = n // 2
    shape = (5,) * (ndim - 2) + (n, n)
    image = torch.zeros(1, 1, *shape, dtype=torch.float64)
    image[..., c, :] = 1.0
    grid = identity_grid(shape, dtype=torch.float64)
    y, x = grid[-2], grid[-1]
    displacement = torch.zeros(1, ndim, *shape, dtype=torch.float64)
    displacement[0, -2] = x - y
    displacement[0, -1] = (2 * c - y) - x
    expected = torch.zeros_like(image)
    expected[..., :, c] = 1.0
    for mode in ("bilinear", "nearest"):
        warped = warp(image, displacement, mode=mode, padding_mode="zeros")
        torch.testing.assert_close(warped, expected, atol=1e-9, rtol=0)


def test_warp_broadcasts_batch_of_one(ndim: int) -> None:
    shape = SHAPES[ndim]
    images = torch.rand(3, 2, *shape, dtype=torch.float64)
    field = smooth_bump(shape, [1.0] * ndim, sigma=2.0)
    warped = warp(images, field)
    assert warped.shape == images.shape
    for b in range(3):
        torch.testing.assert_close(warped[b : b + 1], warp(images[b : b + 1], field))
    fields = torch.cat([field, -field, 2 * field])
    warped = warp(images[:1], fields)
    assert warped.shape == (3, 2, *shape)
    torch.testing.assert_close(warped[1:2], warp(images[:1], -field))


def test_warp_is_differentiable(ndim: int) -> None:
    shape = SHAPES[ndim]
    generator = torch.Generator().manual_seed(1)
    image = torch.rand(1, 1, *shape, generator=generator, requires_grad=True)
    target = torch.rand(1, 1, *shape, generator=generator)
    displacement = (0.3 * torch.randn(1, ndim, *shape, generator=generator)).requires_grad_()
    loss = (warp(image, displacement) - target).pow(2).mean()
    loss.backward()
    assert displacement.grad is not None
    assert displacement.grad.abs().sum() > 0
    assert torch.isfinite(displacement.grad).all()
    assert image.grad is not None
    assert image.grad.abs().sum() > 0


def test_warp_handles_axis_of_size_one() -> None:
    # A single-slice volume: no division by zero, the slice is sampled as is.
    image = torch.rand(1, 1, 1, 6, 5)
    warped = warp(image, torch.zeros(1, 3, 1, 6, 5))
    assert torch.isfinite(warped).all()
    torch.testing.assert_close(warped, image)


# --------------------------------------------------------------------------- integrate_velocity


def test_integrate_zero_velocity_is_zero(ndim: int) -> None:
    zero = torch.zeros(2, ndim, *SHAPES[ndim])
    assert torch.equal(integrate_velocity(zero), zero)


def test_integrate_zero_steps_returns_velocity(ndim: int) -> None:
    velocity = smooth_bump(SHAPES[ndim], [1.0] * ndim, sigma=2.0)
    assert torch.equal(integrate_velocity(velocity, steps=0), velocity)


@pytest.mark.parametrize("steps", [1, 4, 7])
def test_integrate_constant_velocity_is_translation(ndim: int, steps: int) -> None:
    values = [1.5, -0.75, 2.25][:ndim]
    velocity = constant_field(SHAPES[ndim], values)
    torch.testing.assert_close(integrate_velocity(velocity, steps=steps), velocity)


def test_integrate_velocity_and_its_negative_compose_to_identity(ndim: int) -> None:
    # exp(-v) o exp(v) = id; tolerance 0.05 voxel in the interior for a smooth field
    # whose largest value is 1.5 voxels.
    shape = (32, 32) if ndim == 2 else (24, 24, 24)
    velocity = smooth_bump(shape, [1.5, -1.0, 0.8][:ndim], sigma=5.0)
    forward = integrate_velocity(velocity)
    backward = integrate_velocity(-velocity)
    assert forward.abs().max() > 1.0  # the test means something
    for outer, inner in ((backward, forward), (forward, backward)):
        residual = (inner + warp(outer, inner))[interior(ndim, 4)]  # outer o inner
        assert residual.abs().max() < 0.05


# --------------------------------------------------------------------------- jacobian_det


def test_jacobian_of_zero_is_one(ndim: int) -> None:
    det = jacobian_det(torch.zeros(2, ndim, *SHAPES[ndim]))
    assert det.shape == (2, 1, *SHAPES[ndim])
    assert torch.equal(det, torch.ones_like(det))


@pytest.mark.parametrize("a", [0.3, -0.5])
def test_jacobian_of_linear_field_along_one_axis(ndim: int, a: float) -> None:
    shape = SHAPES[ndim]
    grid = identity_grid(shape, dtype=torch.float64)
    for axis in range(ndim):
        field = torch.zeros(1, ndim, *shape, dtype=torch.float64)
        field[0, axis] = a * grid[axis]
        det = jacobian_det(field)
        torch.testing.assert_close(det, torch.full_like(det, 1 + a))


def test_jacobian_of_two_axis_scaling_is_product(ndim: int) -> None:
    a, b = 0.2, -0.4
    shape = SHAPES[ndim]
    grid = identity_grid(shape, dtype=torch.float64)
    field = torch.zeros(1, ndim, *shape, dtype=torch.float64)
    field[0, -2] = a * grid[-2]
    field[0, -1] = b * grid[-1]
    det = jacobian_det(field)
    torch.testing.assert_close(det, torch.full_like(det, (1 + a) * (1 + b)))


def test_jacobian_of_shear_is_one(ndim: int) -> None:
    # u_0 = k * x_1 only has an off-diagonal derivative: volume is preserved.
    shape = SHAPES[ndim]
    field = torch.zeros(1, ndim, *shape, dtype=torch.float64)
    field[0, 0] = 0.7 * identity_grid(shape, dtype=torch.float64)[1]
    det = jacobian_det(field)
    torch.testing.assert_close(det, torch.ones_like(det))


def test_jacobian_of_rotation_is_one(ndim: int) -> None:
    # The 90 degree rotation of the warp test is rigid: det = 1.
    shape = SHAPES[ndim]
    grid = identity_grid(shape, dtype=torch.float64)
    field = torch.zeros(1, ndim, *shape, dtype=torch.float64)
    field[0, -2] = grid[-1] - grid[-2]
    field[0, -1] = -grid[-2] - grid[-1]
    det = jacobian_det(field)
    torch.testing.assert_close(det, torch.ones_like(det))


def test_jacobian_spacing_scales_derivatives(ndim: int) -> None:
    # A field in mm, u_0 = a * z_mm with z_mm = index * spacing_0: det = 1 + a with the
    # spacing given, and 1 + a * spacing_0 if the field is (wrongly) read as voxels.
    a = 0.1
    spacing = [2.5, 0.5, 1.5][:ndim]
    shape = SHAPES[ndim]
    field = torch.zeros(1, ndim, *shape, dtype=torch.float64)
    field[0, 0] = a * identity_grid(shape, dtype=torch.float64)[0] * spacing[0]
    det = jacobian_det(field, spacing=spacing)
    torch.testing.assert_close(det, torch.full_like(det, 1 + a))
    det = jacobian_det(field)
    torch.testing.assert_close(det, torch.full_like(det, 1 + a * spacing[0]))


def test_jacobian_of_velocity_exponential_is_positive(ndim: int) -> None:
    shape = (32, 32) if ndim == 2 else (24, 24, 24)
    velocity = smooth_bump(shape, [3.0, -2.0, 2.0][:ndim], sigma=4.0)
    assert jacobian_det(integrate_velocity(velocity)).min() > 0


# --------------------------------------------------------------------------- resize_displacement


@pytest.mark.parametrize("factor", [2.0, 0.5])
def test_resize_constant_shift_is_rescaled(ndim: int, factor: float) -> None:
    old = (8, 12, 16)[:ndim]
    new = tuple(int(n * factor) for n in old)
    values = [1.0, -2.0, 3.0][:ndim]
    resized = resize_displacement(constant_field(old, values), new)
    expected = constant_field(new, [v * m / n for v, m, n in zip(values, new, old)])
    assert resized.shape == (1, ndim, *new)
    torch.testing.assert_close(resized, expected)


def test_resize_to_unequal_factors(ndim: int) -> None:
    old = SHAPES[ndim]
    new = (11, 4, 6)[:ndim]
    values = [1.0, 1.0, 1.0][:ndim]
    resized = resize_displacement(constant_field(old, values), new)
    for axis in range(ndim):
        expected = new[axis] / old[axis]
        torch.testing.assert_close(resized[:, axis], torch.full_like(resized[:, axis], expected))


def test_resize_linear_field_stays_linear_inside(ndim: int) -> None:
    # u = a * x (fine voxels) is a physical stretch; on the grid of half as many cell-centred
    # voxels, coarse voxel k sits at fine 2k + 0.5, so it reads a * (2k + 0.5) / 2 coarse voxels.
    a = [0.1, -0.2, 0.3][:ndim]
    fine = (16, 12, 20)[:ndim]
    coarse = tuple(n // 2 for n in fine)
    fine_grid = identity_grid(fine, dtype=torch.float64)
    coarse_grid = identity_grid(coarse, dtype=torch.float64)
    field = torch.stack([a[i] * fine_grid[i] for i in range(ndim)]).unsqueeze(0)
    expected = torch.stack([a[i] * (2 * coarse_grid[i] + 0.5) / 2 for i in range(ndim)])
    torch.testing.assert_close(resize_displacement(field, coarse), expected.unsqueeze(0))


@pytest.mark.parametrize("factor", [2, 4])
def test_pyramid_images_and_fields_share_one_convention(ndim: int, factor: int) -> None:
    # A ramp image moved by an affine field, then block-averaged, equals the block-averaged
    # ramp warped by the resized field, exactly (both are linear), away from the border.
    # The corner-aligned resize that the pyramid used before is off by up to 0.11 here.
    shape = (32, 32, 32)[:ndim]
    grid = identity_grid(shape, dtype=torch.float64)
    slope = torch.tensor([0.3, -0.5, 0.7][:ndim], dtype=torch.float64)
    moving = (grid * slope.view(-1, *[1] * ndim)).sum(0)[None, None]
    field = torch.stack([1.5 + 0.05 * grid[(i + 1) % ndim] for i in range(ndim)])[None]
    coarse_shape = tuple(n // factor for n in shape)
    warped_then_down = downsample_image(warp(moving, field), factor)
    down_then_warped = warp(
        downsample_image(moving, factor), resize_displacement(field, coarse_shape)
    )
    torch.testing.assert_close(
        warped_then_down[interior(ndim, 2)], down_then_warped[interior(ndim, 2)]
    )


def test_coarse_positions_are_cell_centred() -> None:
    points = torch.tensor([[0.0, 1.0, 3.0], [1.5, 0.0, 7.0]])
    coarse = coarse_positions(points, (4, 8), (2, 4))
    torch.testing.assert_close(coarse, torch.tensor([[-0.25, 0.25, 1.25], [0.5, -0.25, 3.25]]))


def test_bad_downsample_factor() -> None:
    with pytest.raises(SpatialArgumentError, match="multiple of the factor 4"):
        downsample_image(torch.zeros(1, 1, 6, 8), 4)


def test_resize_to_same_shape_is_identity(ndim: int) -> None:
    field = smooth_bump(SHAPES[ndim], [1.0] * ndim, sigma=2.0)
    assert torch.equal(resize_displacement(field, SHAPES[ndim]), field)


# --------------------------------------------------------------------------- voxel <-> physical


def identity_direction(ndim: int) -> list[float]:
    return np.eye(ndim).ravel().tolist()


def rotation_about_z(ndim: int, angle: float) -> list[float]:
    matrix = np.eye(ndim)
    matrix[:2, :2] = [[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]]
    return matrix.ravel().tolist()


def test_voxel_to_physical_identity_direction(ndim: int) -> None:
    spacing = [2.0, 3.0, 4.0][:ndim]  # (x, y, z)
    shape = SHAPES[ndim]
    unit = constant_field(shape, [1.0] + [0.0] * (ndim - 1))  # array axis 0: z in 3D, y in 2D
    physical = voxel_to_physical(unit, spacing, identity_direction(ndim))
    expected = [0.0, 0.0, 4.0] if ndim == 3 else [0.0, 3.0]
    torch.testing.assert_close(physical, constant_field(shape, expected))
    unit_x = constant_field(shape, [0.0] * (ndim - 1) + [1.0])  # last array axis is x
    physical = voxel_to_physical(unit_x, spacing, identity_direction(ndim))
    torch.testing.assert_close(physical, constant_field(shape, [2.0] + [0.0] * (ndim - 1)))


def test_voxel_to_physical_rotated_direction(ndim: int) -> None:
    # Direction rotates x onto y: a voxel step along x (2 mm) points along +y.
    spacing = [2.0, 3.0, 4.0][:ndim]
    shape = SHAPES[ndim]
    direction = rotation_about_z(ndim, math.pi / 2)
    unit_x = constant_field(shape, [0.0] * (ndim - 1) + [1.0])
    expected = [0.0, 2.0] + [0.0] * (ndim - 2)
    physical = voxel_to_physical(unit_x, spacing, direction)
    torch.testing.assert_close(physical, constant_field(shape, expected))
    unit_y = constant_field(shape, [0.0] * (ndim - 2) + [1.0, 0.0])
    expected = [-3.0, 0.0] + [0.0] * (ndim - 2)
    physical = voxel_to_physical(unit_y, spacing, direction)
    torch.testing.assert_close(physical, constant_field(shape, expected))


def test_physical_to_voxel_round_trip(ndim: int) -> None:
    spacing = [0.8, 1.7, 2.9][:ndim]
    direction = rotation_about_z(ndim, 0.4)
    field = torch.randn(2, ndim, *SHAPES[ndim], dtype=torch.float64)
    physical = voxel_to_physical(field, spacing, direction)
    torch.testing.assert_close(physical_to_voxel(physical, spacing, direction), field)
    torch.testing.assert_close(
        voxel_to_physical(physical_to_voxel(field, spacing, direction), spacing, direction), field
    )


def test_voxel_to_physical_matches_simpleitk(ndim: int) -> None:
    shape = SHAPES[ndim]  # array order
    spacing = [0.7, 1.3, 2.1][:ndim]
    if ndim == 3:
        angle_z, angle_x = 0.3, -0.5
        rz = np.array(rotation_about_z(3, angle_z)).reshape(3, 3)
        rx = np.array(
            [
                [1, 0, 0],
                [0, math.cos(angle_x), -math.sin(angle_x)],
                [0, math.sin(angle_x), math.cos(angle_x)],
            ]
        )
        direction = (rz @ rx).ravel().tolist()
    else:
        direction = rotation_about_z(2, 0.6)
    image = sitk.Image(list(reversed(shape)), sitk.sitkFloat32)
    image.SetSpacing(spacing)
    image.SetDirection(direction)
    image.SetOrigin([12.0, -4.0, 7.5][:ndim])

    generator = torch.Generator().manual_seed(3)
    field = torch.randn(1, ndim, *shape, generator=generator, dtype=torch.float64)
    physical = voxel_to_physical(field, image.GetSpacing(), image.GetDirection())
    for index in [tuple(0 for _ in shape), tuple(n // 2 for n in shape), (1, 3, 2)[:ndim]]:
        du_xyz = field[(0, slice(None), *index)].tolist()[::-1]
        idx_xyz = [float(i) for i in index[::-1]]
        moved = [i + d for i, d in zip(idx_xyz, du_xyz)]
        expected = np.subtract(
            image.TransformContinuousIndexToPhysicalPoint(moved),
            image.TransformContinuousIndexToPhysicalPoint(idx_xyz),
        )
        np.testing.assert_allclose(physical[(0, slice(None), *index)].numpy(), expected, atol=1e-9)


# --------------------------------------------------------------------------- errors


def test_bad_warp_spatial_shape_mismatch_names_both_shapes(ndim: int) -> None:
    shape = SHAPES[ndim]
    other = tuple(n + 1 for n in shape)
    with pytest.raises(ValueError, match="spatial shape") as info:
        warp(torch.zeros(1, 1, *shape), torch.zeros(1, ndim, *other))
    assert str(shape) in str(info.value)
    assert str(other) in str(info.value)
    assert isinstance(info.value, IntermodalError)
    assert isinstance(info.value, SpatialArgumentError)


def test_bad_warp_channel_count(ndim: int) -> None:
    shape = SHAPES[ndim]
    with pytest.raises(ValueError, match=f"{ndim} channels"):
        warp(torch.zeros(1, 1, *shape), torch.zeros(1, ndim + 1, *shape))


def test_bad_warp_dimension_mismatch() -> None:
    with pytest.raises(ValueError, match="same number of spatial axes"):
        warp(torch.zeros(1, 1, 4, 4, 4), torch.zeros(1, 2, 4, 4))


def test_bad_warp_image_not_4d_or_5d() -> None:
    with pytest.raises(ValueError, match="image must be"):
        warp(torch.zeros(4, 4), torch.zeros(1, 2, 4, 4))


def test_bad_warp_batch_mismatch() -> None:
    with pytest.raises(ValueError, match="batch size"):
        warp(torch.zeros(2, 1, 4, 4), torch.zeros(3, 2, 4, 4))


def test_bad_warp_integer_displacement() -> None:
    with pytest.raises(ValueError, match="floating-point"):
        warp(torch.zeros(1, 1, 4, 4), torch.zeros(1, 2, 4, 4, dtype=torch.int64))


def test_bad_warp_mode() -> None:
    with pytest.raises(ValueError, match="mode must be one of"):
        warp(torch.zeros(1, 1, 4, 4), torch.zeros(1, 2, 4, 4), mode="bicubic")


def test_bad_warp_padding_mode() -> None:
    with pytest.raises(ValueError, match="padding_mode"):
        warp(torch.zeros(1, 1, 4, 4), torch.zeros(1, 2, 4, 4), padding_mode="reflection")


@pytest.mark.parametrize("steps", [-1, 2.5, True])
def test_bad_integrate_steps(steps: object) -> None:
    with pytest.raises(ValueError, match="steps"):
        integrate_velocity(torch.zeros(1, 2, 4, 4), steps=steps)  # type: ignore[arg-type]


def test_bad_jacobian_inputs() -> None:
    with pytest.raises(ValueError, match="at least 2 voxels"):
        jacobian_det(torch.zeros(1, 3, 1, 4, 4))
    with pytest.raises(ValueError, match="spacing"):
        jacobian_det(torch.zeros(1, 2, 4, 4), spacing=[1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="spacing"):
        jacobian_det(torch.zeros(1, 2, 4, 4), spacing=[1.0, 0.0])


def test_bad_resize_shape() -> None:
    with pytest.raises(ValueError, match="3 entries"):
        resize_displacement(torch.zeros(1, 3, 4, 4, 4), (8, 8))
    with pytest.raises(ValueError, match="positive"):
        resize_displacement(torch.zeros(1, 2, 4, 4), (0, 8))


def test_bad_identity_grid_shape() -> None:
    with pytest.raises(ValueError, match="positive"):
        identity_grid((4, 0))


def test_bad_physical_geometry() -> None:
    field = torch.zeros(1, 3, 2, 2, 2)
    with pytest.raises(ValueError, match="spacing must be 3 positive"):
        voxel_to_physical(field, [1.0, 1.0], identity_direction(3))
    with pytest.raises(ValueError, match="spacing must be 3 positive"):
        physical_to_voxel(field, [1.0, -1.0, 1.0], identity_direction(3))
    with pytest.raises(ValueError, match="9 numbers"):
        voxel_to_physical(field, [1.0, 1.0, 1.0], identity_direction(2))
    with pytest.raises(ValueError, match="singular"):
        physical_to_voxel(field, [1.0, 1.0, 1.0], [0.0] * 9)


def test_gaussian_smooth_keeps_sums_constants_and_shape():
    from intermodal.spatial import gaussian_smooth

    impulse = torch.zeros(1, 2, 9, 11, 13, dtype=torch.float64)
    impulse[0, 0, 4, 5, 6] = 1.0
    smoothed = gaussian_smooth(impulse, 1.0)
    assert smoothed.shape == impulse.shape and smoothed.dtype == impulse.dtype
    assert float(smoothed[0, 0].sum()) == pytest.approx(1.0, abs=1e-3)  # tails past 3 sigma
    # the centre of a unit 3D Gaussian sampled at the integers, normalised per axis
    axis = torch.exp(-0.5 * torch.arange(-3, 4, dtype=torch.float64) ** 2)
    assert float(smoothed[0, 0, 4, 5, 6]) == pytest.approx(float(1 / axis.sum()) ** 3)
    assert float(smoothed[0, 1].abs().max()) == 0.0  # channels stay apart
    constant = torch.full((1, 2, 5, 6), 2.5)
    torch.testing.assert_close(gaussian_smooth(constant, 2.0), constant)
    assert gaussian_smooth(impulse, 0.0) is impulse
    with pytest.raises(ValueError, match="sigma"):
        gaussian_smooth(impulse, -1.0)
    with pytest.raises(ValueError, match="shape"):
        gaussian_smooth(torch.zeros(3, 4), 1.0)


@pytest.mark.parametrize("shape", [(2, 3, 4, 5, 6), (1, 2, 7, 1), (1, 3, 1, 4, 3)])
def test_displaced_grid_is_the_normalised_points_x_plus_u(shape):
    from intermodal.spatial.functional import _displaced_grid

    field = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    sizes = shape[2:]
    points = identity_grid(sizes, dtype=torch.float64).unsqueeze(0) + field
    # by hand: voxel 0 -> -1 and n - 1 -> +1 along each axis (an axis of one voxel: -1),
    # laid out (B, *spatial, ndim) with the axes reversed to grid_sample's (x, y, z)
    expected = torch.stack(
        [points[:, a] * (2 / (n - 1) if n > 1 else 0.0) - 1 for a, n in enumerate(sizes)], -1
    ).flip(-1)
    torch.testing.assert_close(_displaced_grid(field), expected, rtol=0, atol=1e-14)


def _smooth_by_taps(field: torch.Tensor, sigma: float) -> torch.Tensor:
    """Reference: every output is the kernel-weighted sum of its clamped-index neighbours."""
    radius = max(1, math.ceil(3 * sigma))
    offsets = range(-radius, radius + 1)
    weights = [math.exp(-0.5 * (k / sigma) ** 2) for k in offsets]
    total = sum(weights)
    out = field
    for axis in range(2, field.dim()):
        n = field.shape[axis]
        index = torch.arange(n)
        out = sum(
            (w / total) * out.index_select(axis, (index + k).clamp(0, n - 1))
            for k, w in zip(offsets, weights, strict=True)
        )
    return out


@pytest.mark.parametrize("sigma", [0.4, 1.0, 2.0, 6.0])
@pytest.mark.parametrize("shape", [(1, 2, 9, 11, 13), (2, 3, 7, 10)])
def test_gaussian_smooth_matches_clamped_taps_and_its_gradient_is_the_adjoint(sigma, shape):
    from intermodal.spatial import gaussian_smooth

    generator = torch.Generator().manual_seed(3)
    field = torch.randn(shape, dtype=torch.float64, generator=generator, requires_grad=True)
    smoothed = gaussian_smooth(field, sigma)
    # sigma 6 reaches 18 voxels, beyond both ends of every axis: the borders fold fully
    torch.testing.assert_close(smoothed, _smooth_by_taps(field, sigma), rtol=0, atol=1e-12)
    other = torch.randn(shape, dtype=torch.float64, generator=generator)
    (gradient,) = torch.autograd.grad((smoothed * other).sum(), field)
    (expected,) = torch.autograd.grad((_smooth_by_taps(field, sigma) * other).sum(), field)
    torch.testing.assert_close(gradient, expected, rtol=0, atol=1e-12)
    # float32 in, float32 out, within float32 rounding of the float64 result
    single = gaussian_smooth(field.detach().float(), sigma)
    assert single.dtype == torch.float32
    torch.testing.assert_close(single.double(), smoothed.detach(), rtol=0, atol=1e-5)


# --------------------------------------------------------------------------- sample_points


@pytest.mark.parametrize("ndim", [2, 3])
def test_sample_points_at_every_voxel_is_warp(ndim: int) -> None:
    shape = SHAPES[ndim]
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, *shape, generator=generator, dtype=torch.float64)
    u = 2.0 * torch.randn(1, ndim, *shape, generator=generator, dtype=torch.float64)
    points = identity_grid(shape, dtype=torch.float64).flatten(1) + u.flatten(2)[0]
    expected = warp(image, u).flatten(2)
    torch.testing.assert_close(sample_points(image, points), expected)


def test_sample_points_interpolates_between_voxels_and_pads_at_the_border() -> None:
    image = torch.tensor([[0.0, 10.0, 20.0], [30.0, 40.0, 50.0]]).view(1, 1, 2, 3)
    points = torch.tensor([[0.5, 0.0, 1.0, 1.0], [1.5, 2.0, 5.0, -3.0]])  # (y, x) columns
    sampled = sample_points(image, points)[0, 0]
    # (0.5, 1.5): halfway between rows and between columns 1 and 2; beyond x = 2 the
    # border value; "zeros" gives 0 there instead
    torch.testing.assert_close(sampled, torch.tensor([30.0, 20.0, 50.0, 30.0]))
    zeros = sample_points(image, points, padding_mode="zeros")[0, 0]
    torch.testing.assert_close(zeros, torch.tensor([30.0, 20.0, 0.0, 0.0]))


def test_sample_points_gradient_flows_to_the_points() -> None:
    image = torch.arange(12.0).view(1, 1, 3, 4)  # value = 4 y + x
    points = torch.tensor([[1.2], [1.5]], requires_grad=True)
    sample_points(image, points).sum().backward()
    torch.testing.assert_close(points.grad, torch.tensor([[4.0], [1.0]]))


def test_sample_points_rejects_bad_shapes() -> None:
    image = torch.zeros(1, 1, 4, 4)
    with pytest.raises(SpatialArgumentError, match=r"points must be \(2, N\)"):
        sample_points(image, torch.zeros(3, 5))
    with pytest.raises(SpatialArgumentError, match="image must be"):
        sample_points(torch.zeros(2, 1, 4, 4), torch.zeros(2, 5))
    with pytest.raises(SpatialArgumentError, match="padding_mode"):
        sample_points(image, torch.zeros(2, 5), padding_mode="reflect")


# --------------------------------------------------------------------------- PointSampler


@pytest.mark.parametrize("ndim", [2, 3])
def test_point_sampler_equals_sample_points_in_value_and_gradient(ndim: int) -> None:
    generator = torch.Generator().manual_seed(3)
    shape = (*SHAPES[ndim][:-1], 1) if ndim == 3 else SHAPES[ndim]  # 3D: one axis of 1 voxel
    image = torch.randn(1, 4, *shape, generator=generator, dtype=torch.float64)
    # points inside, between voxels and beyond every face (border padding)
    extent = torch.tensor(shape, dtype=torch.float64).view(-1, 1)
    points = torch.rand(ndim, 200, generator=generator, dtype=torch.float64) * (extent + 4) - 2
    points.requires_grad_(True)
    expected = sample_points(image, points)
    (expected_grad,) = torch.autograd.grad(expected.pow(2).sum(), points)
    sampled = PointSampler(image)(points)
    (grad,) = torch.autograd.grad(sampled.pow(2).sum(), points)
    assert sampled.shape == (1, 4, 200)
    torch.testing.assert_close(sampled, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(grad, expected_grad, rtol=0, atol=1e-10)


def test_point_sampler_is_exact_where_the_stacked_slices_round_in_float32() -> None:
    # 80 slices of 200 rows: sample_points stacks them as 16 000 rows, and its float32 row
    # coordinate there resolves about 1e-3 voxel (1.0e-3 off in value at these points)
    generator = torch.Generator().manual_seed(4)
    image = torch.rand(1, 2, 80, 200, 6, generator=generator, dtype=torch.float64)
    points = torch.rand(3, 500, generator=generator, dtype=torch.float64)
    points = points * torch.tensor([79.0, 199.0, 5.0], dtype=torch.float64).view(-1, 1)
    exact = sample_points(image, points)
    single = PointSampler(image.float())(points.float())
    assert float((single.double() - exact).abs().max()) < 1e-5


def test_point_sampler_of_several_images_samples_their_channels_in_turn() -> None:
    generator = torch.Generator().manual_seed(5)
    first = torch.rand(1, 3, 5, 6, 7, generator=generator)
    second = torch.rand(1, 1, 5, 6, 7, generator=generator)
    points = torch.rand(3, 50, generator=generator) * 4
    together = PointSampler(torch.cat([first, second], 1))(points)
    torch.testing.assert_close(PointSampler(first, second)(points), together, rtol=0, atol=0)


def test_point_sampler_rejects_bad_shapes() -> None:
    with pytest.raises(SpatialArgumentError, match="image must be"):
        PointSampler(torch.zeros(2, 1, 4, 4))
    with pytest.raises(SpatialArgumentError, match="one grid"):
        PointSampler(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 5))
    with pytest.raises(SpatialArgumentError, match=r"points must be \(2, N\)"):
        PointSampler(torch.zeros(1, 1, 4, 4))(torch.zeros(3, 5))


# --------------------------------------------------------------------------- 3D sampling by slices


# one image is sampled as a batch of two (its lower and upper slices), several as they are
@pytest.mark.parametrize("batch", [1, 2])
def test_trilinear_by_slices_matches_grid_sample_in_value_and_both_gradients(batch) -> None:
    from intermodal.spatial.functional import _sampling_grid, _trilinear_by_slices

    generator = torch.Generator().manual_seed(7)
    shape = (5, 6, 7)
    image = torch.randn(batch, 3, *shape, generator=generator, dtype=torch.float64)
    # points inside, between voxels, and beyond every face (border padding)
    points = torch.rand(3, 4, 9, generator=generator, dtype=torch.float64)
    points = points * (torch.tensor(shape, dtype=torch.float64) + 4).view(3, 1, 1) - 2
    image.requires_grad_(True)
    points.requires_grad_(True)
    sampled = _trilinear_by_slices(image, points[0:1], points[1:2], points[2:3])
    grid = _sampling_grid(points.view(1, 3, 1, 4, 9), shape).expand(batch, -1, -1, -1, -1)
    expected = torch.nn.functional.grid_sample(
        image, grid, padding_mode="border", align_corners=True
    )[:, :, 0]
    assert sampled.shape == (batch, 3, 4, 9)
    torch.testing.assert_close(sampled, expected, rtol=0, atol=1e-12)
    weights = torch.randn(sampled.shape, generator=generator, dtype=torch.float64)
    got = torch.autograd.grad((sampled * weights).sum(), (image, points))
    want = torch.autograd.grad((expected * weights).sum(), (image, points))
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


@pytest.mark.parametrize("batch", [1, 2])
def test_integrate_velocity_by_slices_is_the_warp_squarings(batch) -> None:
    from intermodal.spatial.functional import _by_slices

    generator = torch.Generator().manual_seed(2)
    velocity = torch.randn(batch, 3, 6, 7, 8, generator=generator, dtype=torch.float64)
    velocity = (3 * torch.nn.functional.avg_pool3d(velocity, 3, 1, 1)).requires_grad_(True)
    assert _by_slices(velocity)
    result = integrate_velocity(velocity, 4)
    expected = velocity / 16
    for _ in range(4):  # the definition, through warp's 3D sampler
        expected = expected + warp(expected, expected)
    torch.testing.assert_close(result, expected, rtol=0, atol=1e-12)
    weights = torch.randn(result.shape, generator=generator, dtype=torch.float64)
    (got,) = torch.autograd.grad((result * weights).sum(), velocity)
    (want,) = torch.autograd.grad((expected * weights).sum(), velocity)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_sampling_by_slices_in_float32_stays_within_its_stated_precision() -> None:
    from intermodal.spatial.functional import _SLICE_ROWS_MAX, _by_slices

    # the most rows the slice path takes: 128 slices of 128 rows
    generator = torch.Generator().manual_seed(4)
    velocity = torch.randn(1, 3, 128, 128, 6, generator=generator, dtype=torch.float64)
    velocity = 4 * torch.nn.functional.avg_pool3d(velocity, 5, 1, 2)
    assert 128 * 128 == _SLICE_ROWS_MAX and _by_slices(velocity)
    single = integrate_velocity(velocity.float(), 3)
    double = integrate_velocity(velocity, 3)
    assert (single.double() - double).abs().max() < 2e-3  # voxels
    # beyond the limit, off the CPU or with zeros padding: grid_sample's 3D path
    assert not _by_slices(torch.zeros(1, 3, 129, 128, 2))
    assert not _by_slices(torch.zeros(1, 3, 4, 4, 4), padding_mode="zeros")
    assert not _by_slices(torch.zeros(1, 3, 1, 4, 4))
    assert not _by_slices(torch.zeros(1, 3, 4, 4, 4, device="meta"))
