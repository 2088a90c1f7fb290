"""Linear resampling of a field onto another grid, a slab of rows at a time.

``register`` keeps its displacement fields on the working grid, a coarser grid with the fixed
image's direction, and samples them onto the fixed grid for the Jacobian and for the files it
writes. ITK's ``sitk.Resample`` does that point by point through the general transform
machinery. When both grids share their direction, the continuous index of a voxel of one on
the other is a scale and a shift per axis, so the multilinear interpolation splits into 1D
interpolations along each array axis, each a product with a small banded matrix.
:func:`sample_rows` gives ITK's values (its inside/outside rule included) to rounding that way,
and takes ITK's own resampling for grids of other directions; either way a slab of rows at a
time, so that a field on a coarse grid is never held at the full grid's size.
:func:`slab_rows` says how many rows make a slab.
"""

from __future__ import annotations

import math

import numpy as np
import SimpleITK as sitk

__all__ = ["SLAB_VOXELS", "same_grid", "sample_rows", "share_direction", "slab_rows"]

SLAB_VOXELS = 2_000_000
"""About this many voxels of a full grid are sampled, or worked on, at a time."""


def slab_rows(image: sitk.Image) -> int:
    """Rows (first array axis) of ``image``'s grid in a slab of about :data:`SLAB_VOXELS`."""
    return max(1, SLAB_VOXELS // max(1, math.prod(image.GetSize()[:-1])))


def same_grid(a: sitk.Image, b: sitk.Image, tolerance: float = 1e-6) -> bool:
    """Whether two images lie on one grid: the same dimension and size, and spacing, origin
    (mm) and direction cosines each within ``tolerance`` of the other's.

    The default suits grids computed here; a grid read back from a file (float32 NIfTI
    headers) wants a looser one, such as the desktop app's 1e-3.
    """
    return (
        a.GetDimension() == b.GetDimension()
        and a.GetSize() == b.GetSize()
        and all(
            np.allclose(x, y, rtol=0, atol=tolerance)
            for x, y in (
                (a.GetSpacing(), b.GetSpacing()),
                (a.GetOrigin(), b.GetOrigin()),
                (a.GetDirection(), b.GetDirection()),
            )
        )
    )


def share_direction(a: sitk.Image, b: sitk.Image) -> bool:
    """Whether two images of one dimension have the same direction (to 1e-9)."""
    return a.GetDimension() == b.GetDimension() and np.allclose(
        a.GetDirection(), b.GetDirection(), rtol=0, atol=1e-9
    )


def _interpolation_matrix(positions: np.ndarray, size: int, dtype: type) -> np.ndarray:
    """``(len(positions), size)`` weights of linear interpolation at continuous ``positions``.

    ITK's rule: a position inside ``[-0.5, size - 0.5)`` takes the two voxels around it, the
    edge voxel repeated beyond the outermost centres; one outside gets no weight (the value 0).
    """
    inside = (positions >= -0.5) & (positions < size - 0.5)
    clamped = np.clip(positions, 0, size - 1)
    lower = np.minimum(np.floor(clamped).astype(np.intp), max(size - 2, 0))
    fraction = clamped - lower
    matrix = np.zeros((positions.size, size), dtype=dtype)
    rows = np.arange(positions.size)
    np.add.at(matrix, (rows, lower), (1 - fraction) * inside)
    np.add.at(matrix, (rows, np.minimum(lower + 1, size - 1)), fraction * inside)
    return matrix


def sample_rows(
    field: sitk.Image,
    reference: sitk.Image,
    low: int,
    high: int,
    *,
    dtype: type = np.float64,
    component: int | None = None,
) -> np.ndarray:
    """``field`` sampled linearly on rows ``low:high`` (first array axis) of ``reference``.

    The values of ``sitk.Resample(field, reference, identity, sitkLinear, 0.0)`` on those rows,
    zero outside the field's grid: axis by axis where the two grids share their direction (see
    :func:`share_direction`), to rounding (1e-14 in float64 in a test); by ITK's resampling of
    the rows otherwise.

    Args:
        field: a scalar or vector image of the reference's dimension.
        reference: the grid sampled (its pixels are not read).
        low, high: the rows, along the first array axis (the last index axis).
        dtype: ``np.float64`` or ``np.float32``, the precision of the products.
        component: one component of a vector ``field`` only.

    Returns:
        ``(components, rows, *rest)``, components first (one for a scalar field or a chosen
        component), the spatial axes in array order.
    """
    if not share_direction(field, reference):
        return _resampled_rows(field, reference, low, high, dtype, component)
    ndim = reference.GetDimension()
    direction = np.array(field.GetDirection()).reshape(ndim, ndim)
    spacing = np.array(field.GetSpacing())
    # index on the field's grid of the reference's voxel i: offset + scale * i, per axis
    offset = np.linalg.solve(
        direction @ np.diag(spacing), np.subtract(reference.GetOrigin(), field.GetOrigin())
    )
    scale = np.array(reference.GetSpacing()) / spacing
    values = sitk.GetArrayViewFromImage(field)
    if field.GetNumberOfComponentsPerPixel() == 1:
        values = values[None]
    else:
        values = np.moveaxis(values, -1, 0)
        if component is not None:
            values = values[component : component + 1]
    for axis in range(ndim):  # array axis; index axis ndim - 1 - axis
        k = ndim - 1 - axis
        first, last = (low, high) if axis == 0 else (0, reference.GetSize()[k])
        positions = offset[k] + scale[k] * np.arange(first, last, dtype=np.float64)
        matrix = _interpolation_matrix(positions, values.shape[axis + 1], dtype)
        if axis == 0:  # only the field's rows that these rows reach are read (and copied)
            used = np.flatnonzero(matrix.any(axis=0))
            begin, end = (used[0], used[-1] + 1) if used.size else (0, 1)
            matrix, values = matrix[:, begin:end], values[:, begin:end].astype(dtype)
        values = np.moveaxis(np.moveaxis(values, axis + 1, -1) @ matrix.T, -1, axis + 1)
    return values


def _resampled_rows(
    field: sitk.Image,
    reference: sitk.Image,
    low: int,
    high: int,
    dtype: type,
    component: int | None,
) -> np.ndarray:
    """:func:`sample_rows` through ``sitk.Resample`` onto a grid of the rows alone."""
    ndim = reference.GetDimension()
    vector = field.GetNumberOfComponentsPerPixel() > 1
    single = np.dtype(dtype) == np.float32
    if vector and component is not None:
        field = sitk.VectorIndexSelectionCast(field, component, sitk.sitkFloat64)
        vector = False
    if vector:
        kind = sitk.sitkVectorFloat32 if single else sitk.sitkVectorFloat64
    else:
        kind = sitk.sitkFloat32 if single else sitk.sitkFloat64
    size = list(reference.GetSize())
    size[-1] = high - low  # the last index axis is the first array axis
    start = [0] * ndim
    start[-1] = low
    origin = reference.TransformIndexToPhysicalPoint(start)
    identity = sitk.Transform(ndim, sitk.sitkIdentity)
    slab = sitk.Resample(
        field, size, identity, sitk.sitkLinear, origin, reference.GetSpacing(),
        reference.GetDirection(), 0.0, kind,
    )  # fmt: skip
    values = sitk.GetArrayFromImage(slab)
    return np.moveaxis(values, -1, 0) if vector else values[None]
