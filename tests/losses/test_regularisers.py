"""Regularisers: constant, linear and quadratic fields with answers worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from intermodal.losses import diffusion, log_jacobian_penalty

SHAPES = {2: (12, 10), 3: (8, 9, 10)}


def coordinates(ndim: int) -> torch.Tensor:
    """``(1, ndim, *spatial)`` with channel ``i`` equal to the voxel index along axis ``i``."""
    axes = [torch.arange(size, dtype=torch.float64) for size in SHAPES[ndim]]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"))[None]


def single_channel(ndim: int, values: torch.Tensor, channel: int = 0) -> torch.Tensor:
    field = torch.zeros(1, ndim, *SHAPES[ndim], dtype=torch.float64)
    field[:, channel] = values
    return field


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize(
    ("make_field", "expected"),
    [
        (lambda n, x: torch.full_like(x, 3.5), lambda n, a: 0.0),
        (lambda n, x: 1.5 * x, lambda n, a: 1.5**2 / n),
        (lambda n, x: single_channel(n, -2.0 * x[:, 0]), lambda n, a: 4.0 / n**2),
        (lambda n, x: single_channel(n, 0.5 * x[:, n - 1], channel=1), lambda n, a: 0.25 / n**2),
    ],
    ids=["constant", "scaling", "stretch", "shear"],
)
def test_diffusion_known_values(ndim, make_field, expected):
    field = make_field(ndim, coordinates(ndim))
    assert diffusion(field).item() == pytest.approx(expected(ndim, None), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize(
    ("make_field", "expected"),
    [
        (lambda n, x: torch.full_like(x, -4.25), lambda n: 0.0),
        # a uniform scaling by s along every axis: det = s^n everywhere
        (lambda n, x: 0.25 * x, lambda n: (n * math.log(1.25)) ** 2),
        (lambda n, x: -0.5 * x, lambda n: (n * math.log(0.5)) ** 2),
        # a shear changes no volume: det = 1, though diffusion charges it
        (lambda n, x: single_channel(n, 0.5 * x[:, 1]), lambda n: 0.0),
        # u = -2x along axis 0 reflects: det = -1 is clamped to 1e-3
        (lambda n, x: single_channel(n, -2.0 * x[:, 0]), lambda n: math.log(1e-3) ** 2),
    ],
    ids=["constant", "expansion", "compression", "shear", "folded"],
)
def test_log_jacobian_penalty_known_values(ndim, make_field, expected):
    field = make_field(ndim, coordinates(ndim))
    value = log_jacobian_penalty(field).item()
    assert value == pytest.approx(expected(ndim), rel=1e-9, abs=1e-12)


def test_log_jacobian_penalty_averages_over_voxels():
    # channel 0 = 0.1 x0^2 gives det = 1 + 0.2 x0 (central differences are exact inside,
    # one-sided ones at the two borders of axis 0 give 1 + 0.2 x0 -+ 0.1)
    x = coordinates(2)
    field = single_channel(2, 0.1 * x[:, 0] ** 2)
    rows = [1 + 0.2 * i for i in range(SHAPES[2][0])]
    rows[0], rows[-1] = 1.1, 1 + 0.2 * (SHAPES[2][0] - 1) - 0.1
    expected = sum(math.log(d) ** 2 for d in rows) / len(rows)
    assert log_jacobian_penalty(field).item() == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("regulariser", [diffusion, log_jacobian_penalty])
@pytest.mark.parametrize("ndim", [2, 3])
def test_regulariser_gradients_flow(regulariser, ndim):
    field = torch.randn(2, ndim, *SHAPES[ndim], requires_grad=True)
    regulariser(field).backward()
    assert torch.isfinite(field.grad).all()
    assert field.grad.abs().sum() > 0


@pytest.mark.parametrize("regulariser", [diffusion, log_jacobian_penalty])
@pytest.mark.parametrize("shape", [(1, 3, 8, 8), (1, 2, 8, 8, 8), (2, 8, 8), (1, 3, 4, 4, 4, 4)])
def test_bad_field_shape(regulariser, shape):
    with pytest.raises(ValueError, match=r"must be \(B"):
        regulariser(torch.zeros(shape))
