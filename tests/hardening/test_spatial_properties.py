"""Properties of the spatial core on random smooth fields (hypothesis), in 2D and 3D.

Fields are sums of random Fourier modes (up to one cycle across each axis), scaled so that
their largest finite-difference derivative ``L = max |d v_i / d x_j|`` (voxel per voxel) is a
drawn value: ``L`` is what decides whether scaling and squaring stays invertible. The
tolerances and the range of ``L`` are the ones documented in
:func:`intermodal.spatial.integrate_velocity`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis_budget import fuzz_settings

from intermodal.spatial import integrate_velocity, jacobian_det, warp

INVERSE_MAX_L = 0.5  # |exp(v) o exp(-v) - id| <= L / 2 voxels for L <= 0.5 (integrate_velocity)
POSITIVE_MAX_L = 1.0  # det J > 0 for L <= 1 (see integrate_velocity's docstring)

shapes_2d = st.tuples(st.integers(12, 32), st.integers(12, 32))
shapes_3d = st.tuples(st.integers(8, 16), st.integers(8, 16), st.integers(8, 16))
shapes = st.one_of(shapes_2d, shapes_3d)
seeds = st.integers(0, 2**31 - 1)


def smooth_field(shape: tuple[int, ...], seed: int, lipschitz: float) -> torch.Tensor:
    """``(1, ndim, *shape)`` float64 velocity in voxels with ``max |grad v| == lipschitz``."""
    rng = np.random.default_rng(seed)
    ndim = len(shape)
    axes = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij")
    field = np.zeros((ndim, *shape))
    for channel in range(ndim):
        for _ in range(3):
            cycles = rng.integers(-1, 2, size=ndim)
            phase = sum(2 * math.pi * cycles[j] * axes[j] / shape[j] for j in range(ndim))
            field[channel] += rng.normal() * np.sin(phase + rng.uniform(0, 2 * math.pi))
            field[channel] += 0.3 * rng.normal()  # a constant part: a translation
    velocity = torch.from_numpy(field)[None]
    steepest = max(
        float(g.abs().max()) for g in torch.gradient(velocity, dim=tuple(range(2, 2 + ndim)))
    )
    if steepest == 0:  # every mode had zero frequency: a pure translation
        return velocity
    return velocity * (lipschitz / steepest)


def interior(displacement: torch.Tensor) -> tuple[slice, ...]:
    """Voxels farther from the border than the largest displacement (no padding involved)."""
    margin = int(math.ceil(float(displacement.abs().max()))) + 1
    return (slice(None), slice(None)) + (slice(margin, -margin),) * (displacement.ndim - 2)


# integrate_velocity's default, and the registration's default (Settings.integration_steps)
STEPS = st.sampled_from([7, 5])


@fuzz_settings
@given(shape=shapes, seed=seeds, lipschitz=st.floats(0.01, INVERSE_MAX_L), steps=STEPS)
def test_exp_v_composed_with_exp_minus_v_is_the_identity(shape, seed, lipschitz, steps):
    velocity = smooth_field(shape, seed, lipschitz)
    forward = integrate_velocity(velocity, steps)
    backward = integrate_velocity(-velocity, steps)
    inside = interior(forward)
    # the displacement of outer o inner is inner + outer(x + inner(x))
    for outer, inner in ((forward, backward), (backward, forward)):
        residual = (inner + warp(outer, inner))[inside]
        if residual.numel():
            assert float(residual.abs().max()) <= lipschitz / 2


@fuzz_settings
@given(shape=shapes, seed=seeds, lipschitz=st.floats(0.01, POSITIVE_MAX_L), steps=STEPS)
def test_integrated_velocity_never_folds_in_the_documented_range(shape, seed, lipschitz, steps):
    displacement = integrate_velocity(smooth_field(shape, seed, lipschitz), steps)
    assert float(jacobian_det(displacement).min()) > 0


@fuzz_settings
@given(
    shape=shapes,
    seed=seeds,
    channels=st.integers(1, 3),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    mode=st.sampled_from(["bilinear", "nearest"]),
    padding_mode=st.sampled_from(["border", "zeros"]),
)
def test_warp_by_zero_is_bitwise_exact(shape, seed, channels, dtype, mode, padding_mode):
    generator = torch.Generator().manual_seed(seed)
    image = torch.randn(2, channels, *shape, generator=generator, dtype=torch.float64).to(dtype)
    image[0, 0].view(-1)[::3] = 0  # zeros beside non-zeros: no rounding may leak into them
    zero = torch.zeros(1, len(shape), *shape, dtype=dtype)
    warped = warp(image, zero, mode=mode, padding_mode=padding_mode)
    assert torch.equal(warped, image)


def test_warp_by_zero_keeps_gradients():
    # The exact value at zero displacement must not cut the gradient a refinement starts from.
    image = torch.linspace(0, 1, 64, dtype=torch.float64).view(1, 1, 8, 8) ** 2
    zero = torch.zeros(1, 2, 8, 8, dtype=torch.float64, requires_grad=True)
    warp(image, zero).sum().backward()
    assert float(zero.grad.abs().sum()) > 0


def slab(field_2d: torch.Tensor, depth: int) -> torch.Tensor:
    """A 3D field constant along the new first axis, with no displacement along it."""
    planar = field_2d.unsqueeze(2).expand(-1, -1, depth, -1, -1)
    along_z = torch.zeros_like(planar[:, :1])
    return torch.cat([along_z, planar], dim=1).contiguous()


@fuzz_settings
@given(shape=shapes_2d, seed=seeds, lipschitz=st.floats(0.01, 2.0), depth=st.integers(2, 4))
def test_3d_slab_gives_the_2d_result(shape, seed, lipschitz, depth):
    velocity_2d = smooth_field(shape, seed, lipschitz)
    other_2d = smooth_field(shape, seed + 1, lipschitz)
    image_2d = torch.randn(
        1, 1, *shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )
    velocity_3d, other_3d = slab(velocity_2d, depth), slab(other_2d, depth)
    image_3d = image_2d.unsqueeze(2).expand(-1, -1, depth, -1, -1).contiguous()

    def planes(field_3d: torch.Tensor) -> torch.Tensor:
        """Drop the z channel (checked to be 0) and compare each z plane."""
        assert float(field_3d[:, 0].abs().max()) == 0
        return field_3d[:, 1:]

    displacement_2d = integrate_velocity(velocity_2d)
    displacement_3d = integrate_velocity(velocity_3d)
    composed_2d = other_2d + warp(displacement_2d, other_2d)
    composed_3d = other_3d + warp(displacement_3d, other_3d)
    warped_2d = warp(image_2d, displacement_2d)
    warped_3d = warp(image_3d, displacement_3d)
    jacobian_2d = jacobian_det(displacement_2d)
    jacobian_3d = jacobian_det(displacement_3d)
    for z in range(depth):
        torch.testing.assert_close(
            planes(displacement_3d)[:, :, z], displacement_2d, rtol=0, atol=1e-10
        )
        torch.testing.assert_close(planes(composed_3d)[:, :, z], composed_2d, rtol=0, atol=1e-10)
        torch.testing.assert_close(warped_3d[:, :, z], warped_2d, rtol=0, atol=1e-10)
        torch.testing.assert_close(jacobian_3d[:, :, z], jacobian_2d, rtol=0, atol=1e-10)
