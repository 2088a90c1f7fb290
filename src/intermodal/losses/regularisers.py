"""Smoothness regularisers for displacement and velocity fields.

Fields are ``(B, ndim, *spatial)`` in voxels (see ``docs/conventions.md``); the
penalties use finite differences on the voxel grid, so they are in squared
voxels per voxel (unitless for a displacement in voxels).
"""

from __future__ import annotations

import torch
from torch import Tensor

from intermodal.losses._checks import check_displacement
from intermodal.spatial import jacobian_det

__all__ = ["diffusion", "log_jacobian_penalty"]

# determinants are clamped here before the log, so that a folded voxel costs log(1e-3)^2
# (about 48) with a gradient that pushes it open, instead of a NaN
_MIN_DETERMINANT = 1e-3


def _axis_slice(ndim: int, axis: int, index: slice) -> tuple[slice, ...]:
    parts = [slice(None)] * (ndim + 2)
    parts[axis + 2] = index
    return tuple(parts)


def _forward_difference(field: Tensor, axis: int) -> Tensor:
    ndim = field.ndim - 2
    return (
        field[_axis_slice(ndim, axis, slice(1, None))]
        - field[_axis_slice(ndim, axis, slice(None, -1))]
    )


def diffusion(displacement: Tensor) -> Tensor:
    """Diffusion regulariser: mean squared forward difference of the field.

    ``(1 / ndim) * sum_k mean_{b, c, x} (u_c(x + e_k) - u_c(x))^2``: for each axis
    ``k`` the mean over batch, channels and voxel pairs, then the mean over axes.
    For example a field whose channel 0 is ``a * x_0`` and whose other channels
    are constant gives ``a^2 / ndim^2``; the uniform scaling ``u_c = a * x_c``
    gives ``a^2 / ndim``; a constant field gives 0.

    Args:
        displacement: ``(B, ndim, H, W)`` or ``(B, ndim, D, H, W)``, in voxels.

    Returns:
        Scalar tensor, ``>= 0``.

    Raises:
        ValueError: (an :class:`~intermodal.errors.IntermodalError`) if the field is
            not 4D/5D or its channel count is not its spatial ndim.
    """
    ndim = check_displacement("displacement", displacement)
    terms = [_forward_difference(displacement, axis).pow(2).mean() for axis in range(ndim)]
    return sum(terms) / ndim


def log_jacobian_penalty(displacement: Tensor) -> Tensor:
    """Volume-change penalty: mean squared log Jacobian determinant of ``x + u(x)``.

    ``mean_{b, x} log(max(det(I + grad u), 1e-3))^2``, with the determinant of
    :func:`intermodal.spatial.jacobian_det` (central differences). It is 0 for any
    volume-preserving field (a translation, a rotation, a shear) and grows with local
    expansion and compression alike: a uniform scaling by ``s`` along every axis gives
    ``(ndim * log s)^2``. Its square root is the spread that SDlogJ reports when the mean
    log determinant is 0, which is why it regularises that figure more directly than
    :func:`diffusion`, which also costs rotation and shear.

    Args:
        displacement: ``(B, ndim, H, W)`` or ``(B, ndim, D, H, W)``, in voxels.

    Returns:
        Scalar tensor, ``>= 0``.

    Raises:
        ValueError: (an :class:`~intermodal.errors.IntermodalError`) if the field is
            not 4D/5D or its channel count is not its spatial ndim.
    """
    check_displacement("displacement", displacement)
    determinant = jacobian_det(displacement).clamp_min(_MIN_DETERMINANT)
    return torch.log(determinant).square().mean()
