"""Pure tensor operations on displacement fields, for 2D and 3D through the same code.

Layouts follow ``docs/conventions.md``:

* images are ``(B, C, *spatial)`` with the spatial axes in array order
  (``(D, H, W)`` = ``(z, y, x)`` in 3D, ``(H, W)`` = ``(y, x)`` in 2D);
* a displacement or velocity is ``(B, ndim, *spatial)`` in **voxels**, channel ``i``
  along array axis ``i``; it describes ``phi(x) = x + u(x)`` and the warped image is
  ``warped(x) = moving(x + u(x))`` (backward warping);
* voxel centres sit at the integers ``0 .. n - 1`` (``align_corners=True``) when an image
  is sampled on its own grid;
* between grids of different sizes over one extent (the pyramid, the velocity grid) the
  convention is cell-centred: :func:`downsample_image` averages blocks and
  :func:`resize_displacement` interpolates with ``align_corners=False``, so both agree.

Nothing here reads files, keeps global state or chooses a device: every output is on
the device, and in the floating dtype, of its inputs.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from intermodal.errors import IntermodalError

__all__ = [
    "PointSampler",
    "SpatialArgumentError",
    "coarse_positions",
    "downsample_image",
    "gaussian_smooth",
    "identity_grid",
    "integrate_velocity",
    "jacobian_det",
    "physical_to_voxel",
    "resize_displacement",
    "sample_points",
    "voxel_to_physical",
    "warp",
]

_WARP_MODES = ("bilinear", "nearest")
_PADDING_MODES = ("border", "zeros")


class SpatialArgumentError(IntermodalError, ValueError):
    """A tensor or argument given to a spatial function has the wrong shape or value.

    It is a :class:`ValueError` too, so callers that expect the usual Python exception
    for a bad argument value catch it.
    """


# --------------------------------------------------------------------------- checks


def _check_field(name: str, field: Tensor) -> int:
    """Check a ``(B, ndim, *spatial)`` floating field with ndim 2 or 3; return ndim."""
    if not isinstance(field, Tensor):
        raise SpatialArgumentError(f"{name} must be a torch.Tensor, not {type(field).__name__}")
    if field.ndim not in (4, 5):
        raise SpatialArgumentError(
            f"{name} must be (B, 2, H, W) or (B, 3, D, H, W), not a tensor of shape "
            f"{tuple(field.shape)} ({field.ndim} dimensions)"
        )
    ndim = field.ndim - 2
    if field.shape[1] != ndim:
        raise SpatialArgumentError(
            f"{name} must have {ndim} channels (one per spatial axis) for a {ndim}D field, "
            f"but its shape is {tuple(field.shape)} ({field.shape[1]} channels)"
        )
    if not field.is_floating_point():
        raise SpatialArgumentError(f"{name} must be a floating-point tensor, not {field.dtype}")
    return ndim


def _check_shape(name: str, shape: Sequence[int], ndim: int | None = None) -> tuple[int, ...]:
    """Check a spatial shape of positive ints (of length ``ndim`` if given)."""
    try:
        shape = tuple(int(n) for n in shape)
    except (TypeError, ValueError):
        raise SpatialArgumentError(
            f"{name} must be a sequence of positive ints, not {shape!r}"
        ) from None
    if ndim is not None and len(shape) != ndim:
        raise SpatialArgumentError(
            f"{name} must have {ndim} entries (one per spatial axis), not {len(shape)}: {shape}"
        )
    if len(shape) == 0 or any(n < 1 for n in shape):
        raise SpatialArgumentError(f"{name} must be non-empty and positive, not {shape}")
    return shape


def _check_batch(name_a: str, a: Tensor, name_b: str, b: Tensor) -> None:
    """Check that two batch sizes are equal or that one of them is 1 (broadcast)."""
    if a.shape[0] != b.shape[0] and 1 not in (a.shape[0], b.shape[0]):
        raise SpatialArgumentError(
            f"{name_a} and {name_b} must have the same batch size, or one of them 1, but "
            f"{name_a} is {tuple(a.shape)} and {name_b} is {tuple(b.shape)}"
        )


def _check_spatial_match(name_a: str, a: Tensor, name_b: str, b: Tensor) -> None:
    if a.shape[2:] != b.shape[2:]:
        raise SpatialArgumentError(
            f"{name_a} and {name_b} must have the same spatial shape: expected "
            f"{tuple(a.shape[2:])} (from {name_a} of shape {tuple(a.shape)}), got "
            f"{tuple(b.shape[2:])} (from {name_b} of shape {tuple(b.shape)})"
        )


# --------------------------------------------------------------------------- grids and warping


def identity_grid(
    shape: Sequence[int],
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Voxel coordinates of every voxel of a grid, in array order.

    Not cached: a fresh tensor each call, so callers may modify it in place.

    Args:
        shape: Spatial shape in array order, ``(H, W)`` or ``(D, H, W)``.
        device: Device of the result (default: torch's default device).
        dtype: Floating dtype of the result.

    Returns:
        ``(ndim, *shape)`` tensor, in voxels: channel ``i`` holds the index along array
        axis ``i`` (``grid[i][x] == x[i]``), voxel centres at ``0 .. n - 1``.

    Raises:
        ValueError: (a :class:`SpatialArgumentError`) if ``shape`` is empty or not positive.

    Example:
        >>> identity_grid((2, 3))[1]
        tensor([[0., 1., 2.],
                [0., 1., 2.]])
    """
    shape = _check_shape("shape", shape)
    axes = [torch.arange(n, device=device, dtype=dtype) for n in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=0)


def _sampling_grid(positions: Tensor, sizes: Sequence[int] | None = None) -> Tensor:
    """Turn ``(B, ndim, *spatial)`` voxel positions into a ``grid_sample`` grid.

    ``grid_sample`` wants ``(B, *spatial, ndim)`` with the last axis in ``(x, y, z)``
    order (the reverse of array order), normalised so that voxel ``0`` is ``-1`` and
    voxel ``n - 1`` is ``+1`` (``align_corners=True``) of the sampled image, whose
    spatial ``sizes`` default to the positions' own. An axis of size 1 has no extent,
    so its coordinate is pinned to its only voxel instead of dividing by 0.
    """
    sizes = positions.shape[2:] if sizes is None else sizes
    scale = [2.0 / (n - 1) if n > 1 else 0.0 for n in sizes]
    scale = torch.tensor(scale, device=positions.device, dtype=positions.dtype)
    scale = scale.view(1, -1, *([1] * len(sizes)))
    normalised = positions * scale - 1.0
    return normalised.movedim(1, -1).flip(-1)


def _displaced_grid(displacement: Tensor) -> Tensor:
    """The ``grid_sample`` grid of the points ``x + u(x)`` of a ``(B, ndim, *spatial)`` field.

    What ``_sampling_grid(identity_grid(...) + displacement)`` gives, built straight into
    ``grid_sample``'s channel-last ``(x, y, z)`` layout: one pass per axis, with no identity
    grid, flip or reordering copy. On the CPU, one thread, that made a 3-step scaling and
    squaring of a 50x50x64 field a fifth faster, forward and backward.
    """
    sizes = displacement.shape[2:]
    ndim = len(sizes)
    grid = displacement.new_empty((displacement.shape[0], *sizes, ndim))
    for axis, n in enumerate(sizes):
        scale = 2.0 / (n - 1) if n > 1 else 0.0
        view = [1] * ndim
        view[axis] = n
        # normalised identity along this axis: voxel 0 -> -1, voxel n - 1 -> +1
        line = torch.arange(n, device=displacement.device, dtype=displacement.dtype) * scale - 1
        grid[..., ndim - 1 - axis] = displacement[:, axis] * scale + line.view(view)
    return grid


# Rows of a volume stacked as one 2D image, up to which _trilinear_by_slices is used: its float32
# grid coordinate then resolves 16384 * 2**-25 = 5e-4 voxel (grid_sample's own 3D path resolves
# the longest axis the same way, typically a few 1e-6 voxel).
_SLICE_ROWS_MAX = 16384


def _by_slices(image: Tensor, padding_mode: str = "border") -> bool:
    """Whether :func:`_trilinear_by_slices` samples this ``(B, C, D, H, W)`` image."""
    if image.ndim != 5 or image.device.type != "cpu" or padding_mode != "border":
        return False
    depth, height, width = image.shape[2:]
    return depth >= 2 and height >= 2 and width >= 2 and depth * height <= _SLICE_ROWS_MAX


def _trilinear_by_slices(image: Tensor, z: Tensor, y: Tensor, x: Tensor) -> Tensor:
    """Trilinear samples of a 3D image, border padding, through 2D ``grid_sample``.

    ``image`` is ``(B, C, D, H, W)`` with every axis at least 2 voxels; ``z``, ``y`` and ``x``
    are voxel positions, all three of one shape ``(B or 1, *points)``. Returns ``(B, C, *points)``.

    On the CPU, PyTorch's 2D bilinear sampler is vectorised and its 3D one is not. So the
    ``D`` slices are stacked into one ``(D * H, W)`` image; each point is sampled bilinearly
    in slice ``z0 = floor(z)`` and in slice ``z0 + 1`` (the rows ``H`` further down), and the
    two samples are mixed linearly in ``z``. That is trilinear interpolation, with the same
    derivatives: to float64 rounding in a test. In float32 the stacked row coordinate costs
    precision (see ``_SLICE_ROWS_MAX``). One thread, a 3-step scaling and squaring of a
    50x50x64 field, forward and backward: about 1.8x faster; 32000 points of a 128x100x100
    image: about 5x. The sampler shares its work between threads by batch only, so one image
    (``B = 1``) is sampled as a batch of two, the lower slices' points and the upper ones':
    the same values; on 2 threads a 5-step scaling and squaring of a 32x25x25 field, forward
    and backward, 6.3 against 8.9 ms as one batch (measured 2026-12-07).
    """
    batch, channels, depth, height, width = image.shape
    rows = depth * height
    z = z.clamp(0, depth - 1)
    y = y.clamp(0, height - 1)
    z0 = z.detach().floor().clamp_(max=depth - 2)
    weight = z - z0
    shape = z.shape  # torch.broadcast_shapes would import sympy (0.66 s) on its first call
    count = math.prod(shape[1:])
    row_scale = 2.0 / (rows - 1)
    # grid_sample's normalised (x, row) of the point in slice z0; slice z0 + 1 is H rows down
    gx = (x * (2.0 / (width - 1)) - 1).reshape(shape[0], count)
    grow = ((z0 * height + y) * row_scale - 1).reshape(shape[0], count)
    stacked = image.reshape(batch, channels, rows, width)
    if batch == 1:
        # the two slices' samples as a batch of two: the CPU sampler shares its work between
        # threads by batch, so one image of 2N points would keep to one thread
        grid = torch.stack(
            [torch.stack([gx, grow], -1), torch.stack([gx, grow + height * row_scale], -1)]
        )  # (2, 1, N, 2)
        samples = F.grid_sample(
            stacked.expand(2, -1, -1, -1), grid, padding_mode="border", align_corners=True
        )[:, :, 0]
        low, high = samples[:1], samples[1:]
    else:
        grid = torch.stack(
            [torch.cat([gx, gx], 1), torch.cat([grow, grow + height * row_scale], 1)], -1
        )
        grid = grid.unsqueeze(1).expand(batch, 1, 2 * count, 2)
        samples = F.grid_sample(stacked, grid, padding_mode="border", align_corners=True)
        low, high = samples[:, :, 0, :count], samples[:, :, 0, count:]
    weight = weight.reshape(shape[0], 1, count)
    return (low + weight * (high - low)).reshape(batch, channels, *shape[1:])


def _warp_by_slices(image: Tensor, displacement: Tensor) -> Tensor:
    """``warp(image, displacement)`` (linear, border) through :func:`_trilinear_by_slices`.

    For a 3D ``image`` that :func:`_by_slices` accepts and a field of its batch and grid.
    """
    z, y, x = (
        torch.arange(n, device=displacement.device, dtype=displacement.dtype)
        for n in displacement.shape[2:]
    )
    return _trilinear_by_slices(
        image,
        displacement[:, 0] + z.view(-1, 1, 1),
        displacement[:, 1] + y.view(-1, 1),
        displacement[:, 2] + x,
    )


def warp(
    image: Tensor,
    displacement: Tensor,
    *,
    mode: str = "bilinear",
    padding_mode: str = "border",
) -> Tensor:
    """Warp an image by a voxel displacement: ``warped(x) = image(x + u(x))``.

    Backward warping: for every voxel ``x`` of the output grid the image is sampled at
    ``x + u(x)`` (so a field of ``+1`` along an axis moves content by ``-1`` voxel along
    that axis). Differentiable with respect to both inputs in ``"bilinear"`` mode.
    Where ``u(x)`` is exactly zero the output is exactly (bitwise) ``image(x)``, in both
    modes; the gradients there are those of the interpolation, as elsewhere.

    Args:
        image: ``(B, C, H, W)`` or ``(B, C, D, H, W)``. Any dtype; integer images are
            sampled as floats.
        displacement: ``(B, ndim, *spatial)``, in voxels, channel ``i`` along array axis
            ``i``; same spatial shape as ``image``. Its batch size may be 1 (one field
            for every image) or the image's may be 1 (one image, several fields).
        mode: ``"bilinear"`` (linear in each axis: trilinear in 3D) or ``"nearest"``
            (for label maps: values are copied, never mixed, and the result has the
            image's dtype, so integer labels stay exact).
        padding_mode: Value outside the image: ``"border"`` repeats the edge voxel,
            ``"zeros"`` uses 0.

    Returns:
        ``(max(B_image, B_displacement), C, *spatial)``. In ``"nearest"`` mode it has
        the image's dtype; in ``"bilinear"`` mode a floating image keeps its dtype and
        an integer image gives the displacement's dtype.

    Raises:
        ValueError: (a :class:`SpatialArgumentError`) if the shapes do not match (the
            message gives the expected and the actual shape), the displacement has not
            ``ndim`` channels, or ``mode`` / ``padding_mode`` is unknown.

    Example:
        >>> image = torch.arange(4.0).view(1, 1, 2, 2)
        >>> shift = torch.zeros(1, 2, 2, 2)
        >>> shift[:, 1] = 1.0  # sample one voxel to the right (+x)
        >>> warp(image, shift)[0, 0]
        tensor([[1., 1.],
                [3., 3.]])
    """
    if mode not in _WARP_MODES:
        raise SpatialArgumentError(f"mode must be one of {_WARP_MODES}, not {mode!r}")
    if padding_mode not in _PADDING_MODES:
        raise SpatialArgumentError(
            f"padding_mode must be one of {_PADDING_MODES}, not {padding_mode!r}"
        )
    if not isinstance(image, Tensor) or image.ndim not in (4, 5):
        shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
        raise SpatialArgumentError(f"image must be (B, C, H, W) or (B, C, D, H, W), not {shape}")
    ndim = _check_field("displacement", displacement)
    if image.ndim - 2 != ndim:
        raise SpatialArgumentError(
            f"image and displacement must have the same number of spatial axes, but image "
            f"is {tuple(image.shape)} ({image.ndim - 2}D) and displacement is "
            f"{tuple(displacement.shape)} ({ndim}D)"
        )
    _check_spatial_match("image", image, "displacement", displacement)
    _check_batch("image", image, "displacement", displacement)

    batch = max(image.shape[0], displacement.shape[0])
    grid = _displaced_grid(displacement)

    if image.is_floating_point():
        sample_dtype = image.dtype
    elif mode == "nearest" and image.dtype in (torch.int32, torch.int64):
        # float32 holds integers exactly only up to 2**24; wide label types go through float64.
        sample_dtype = torch.float64
    else:
        sample_dtype = displacement.dtype
    grid = grid.to(sample_dtype)
    source = image.to(sample_dtype)

    if source.shape[0] != batch:
        source = source.expand(batch, *source.shape[1:])
    if grid.shape[0] != batch:
        grid = grid.expand(batch, *grid.shape[1:])

    warped = F.grid_sample(source, grid, mode=mode, padding_mode=padding_mode, align_corners=True)
    if mode == "nearest":
        return warped.to(image.dtype)
    # Where u(x) == 0 the answer is image(x) exactly, but grid_sample's round trip through
    # [-1, 1] coordinates misplaces the sample by up to ~n * eps voxels (5e-5 relative on a
    # 64-voxel float32 axis). Put the exact value there; the straight-through term keeps
    # grid_sample's gradients (the difference is exactly 0 in value).
    still = (displacement == 0).all(dim=1, keepdim=True)
    return _SnapToExact.apply(warped, source, still)


class _SnapToExact(torch.autograd.Function):
    """``where(still, exact, sampled)`` in value; the gradient all goes to ``sampled``.

    ``exact`` is the image itself, the sample grid_sample should have returned where the
    displacement is zero; its derivatives reach the image through ``sampled`` already.
    """

    @staticmethod
    def forward(ctx, sampled: Tensor, exact: Tensor, still: Tensor) -> Tensor:  # noqa: D102
        return torch.where(still, exact.detach(), sampled)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:  # noqa: D102
        return grad, None, None


# --------------------------------------------------------------------------- field algebra


def integrate_velocity(velocity: Tensor, steps: int = 7) -> Tensor:
    """Exponentiate a stationary velocity field by scaling and squaring.

    ``u = v / 2**steps``, then ``steps`` times ``u <- u + warp(u, u)`` (that is
    ``phi <- phi o phi``), with border padding. The result approximates the
    displacement of ``exp(v)``, a diffeomorphism when ``v`` is smooth; ``exp(-v)`` is
    its inverse. A constant velocity ``c`` gives the translation ``c`` exactly.

    Velocity range. What matters is ``L = max |d v_i / d x_j|``, the largest
    finite-difference derivative of the velocity in voxels per voxel (the amplitude alone
    does not matter: a translation of any size is exact). With 7 steps (the default) or 5
    (``register``'s default) and smooth velocities (features of 8 voxels or more),
    property tests in ``tests/hardening/test_spatial_properties.py`` check on random fields
    that:

    * for ``L <= 1`` the Jacobian determinant of the result is positive everywhere (no
      folding; the worst measured minimum is about 0.1); folding starts near ``L = 2``;
    * for ``L <= 0.5``, ``exp(v) o exp(-v)`` (the displacement ``w + warp(u, w)`` of
      ``u = integrate_velocity(v)`` and ``w = integrate_velocity(-v)``) is the identity
      within ``L / 2`` voxels (0.25 voxel at ``L = 0.5``, where the worst measured is 0.12),
      farther from the border than the largest displacement. The residual is the linear
      interpolation error of the squarings; it shrinks for smoother fields.

    Args:
        velocity: ``(B, ndim, *spatial)``, in voxels (per unit time), channel ``i``
            along array axis ``i``.
        steps: Number of squarings, ``>= 0``; ``0`` returns ``velocity`` unchanged.

    Returns:
        ``(B, ndim, *spatial)`` displacement, in voxels.

    Raises:
        ValueError: (a :class:`SpatialArgumentError`) if the field is ill-shaped or
            ``steps`` is not a non-negative int.
    """
    _check_field("velocity", velocity)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise SpatialArgumentError(f"steps must be a non-negative int, not {steps!r}")
    displacement = velocity / (2**steps)
    # on the CPU, the same squarings through the vectorised 2D sampler where it applies
    resample = _warp_by_slices if _by_slices(velocity) else warp
    for _ in range(steps):
        displacement = displacement + resample(displacement, displacement)
    return displacement


def jacobian_det(displacement: Tensor, spacing: Sequence[float] | None = None) -> Tensor:
    """Jacobian determinant of ``phi(x) = x + u(x)``: ``det(I + grad u)`` at every voxel.

    Derivatives are central differences inside and one-sided at the borders
    (``torch.gradient``), so a linear field gives its exact determinant everywhere.
    Values ``<= 0`` mark folding. The determinant is unitless: it is the same for a
    field in voxels on an isotropic grid and for that field in millimetres. For an
    anisotropic grid the field and the grid must be in consistent units: either a
    field in voxels with ``spacing=None``, or a field in millimetres (channel ``i``
    along array axis ``i``) with ``spacing`` giving the voxel size of each array axis.

    Args:
        displacement: ``(B, ndim, *spatial)``, channel ``i`` along array axis ``i``: in
            voxels when ``spacing`` is None, in millimetres otherwise. Every spatial
            axis needs at least 2 voxels.
        spacing: Voxel size in millimetres per array axis (``(z, y, x)`` order in 3D, the
            reverse of ``image.GetSpacing()``), or None for unit spacing.

    Returns:
        ``(B, 1, *spatial)``, unitless.

    Raises:
        ValueError: (a :class:`SpatialArgumentError`) if the field is ill-shaped, an axis
            has fewer than 2 voxels, or ``spacing`` has the wrong length or is not positive.
    """
    ndim = _check_field("displacement", displacement)
    sizes = tuple(displacement.shape[2:])
    if any(n < 2 for n in sizes):
        raise SpatialArgumentError(
            f"displacement needs at least 2 voxels along every spatial axis for finite "
            f"differences, but its spatial shape is {sizes}"
        )
    if spacing is None:
        step: list[float] = [1.0] * ndim
    else:
        step = [float(s) for s in spacing]
        if len(step) != ndim or any(not s > 0 for s in step):
            raise SpatialArgumentError(
                f"spacing must be {ndim} positive numbers in array order, not {tuple(spacing)}"
            )
    spatial_dims = tuple(range(2, 2 + ndim))
    # derivatives[j][:, i] = d u_i / d x_j
    derivatives = torch.gradient(displacement, spacing=step, dim=spatial_dims, edge_order=1)
    jac = [
        [derivatives[j][:, i] + (1.0 if i == j else 0.0) for j in range(ndim)] for i in range(ndim)
    ]
    if ndim == 2:
        det = jac[0][0] * jac[1][1] - jac[0][1] * jac[1][0]
    else:
        det = (
            jac[0][0] * (jac[1][1] * jac[2][2] - jac[1][2] * jac[2][1])
            - jac[0][1] * (jac[1][0] * jac[2][2] - jac[1][2] * jac[2][0])
            + jac[0][2] * (jac[1][0] * jac[2][1] - jac[1][1] * jac[2][0])
        )
    return det.unsqueeze(1)


def sample_points(image: Tensor, points: Tensor, *, padding_mode: str = "border") -> Tensor:
    """Interpolate an image at arbitrary voxel positions, linearly in each axis.

    ``sample_points(image, identity_grid(shape).flatten(1) + u.flatten(2)[0])`` equals
    ``warp(image, u)`` flattened, up to rounding; with a few positions instead of every
    voxel it costs in proportion, which is what a sampled similarity needs.

    Args:
        image: ``(1, C, H, W)`` or ``(1, C, D, H, W)``.
        points: ``(ndim, N)`` positions in voxels of ``image``'s grid, array order;
            differentiable.
        padding_mode: Value outside the image: ``"border"`` or ``"zeros"``.

    Returns:
        ``(1, C, N)`` in ``image``'s floating dtype.

    Raises:
        ValueError: (a :class:`SpatialArgumentError`) for a batch other than 1, points of
            the wrong shape, or an unknown ``padding_mode``.
    """
    if padding_mode not in _PADDING_MODES:
        raise SpatialArgumentError(
            f"padding_mode must be one of {_PADDING_MODES}, not {padding_mode!r}"
        )
    if not isinstance(image, Tensor) or image.ndim not in (4, 5) or image.shape[0] != 1:
        shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
        raise SpatialArgumentError(f"image must be (1, C, H, W) or (1, C, D, H, W), not {shape}")
    ndim = image.ndim - 2
    if not isinstance(points, Tensor) or points.ndim != 2 or points.shape[0] != ndim:
        shape = tuple(points.shape) if isinstance(points, Tensor) else type(points).__name__
        raise SpatialArgumentError(f"points must be ({ndim}, N) for a {ndim}D image, not {shape}")
    if _by_slices(image, padding_mode):
        z, y, x = points.to(image.dtype).unsqueeze(1)
        return _trilinear_by_slices(image, z, y, x)
    # (ndim, N) -> (1, ndim, N, 1[, 1]): a grid of N positions, normalised to the image
    positions = points.reshape(1, ndim, -1, *([1] * (ndim - 1)))
    grid = _sampling_grid(positions, image.shape[2:]).to(image.dtype)
    sampled = F.grid_sample(image, grid, mode="bilinear", padding_mode=padding_mode,
                            align_corners=True)  # fmt: skip
    return sampled.reshape(1, image.shape[1], -1)


class PointSampler:
    """Linear interpolation of one constant image at many sets of points, border padding.

    ``PointSampler(image)(points)`` equals ``sample_points(image, points)``: the image is
    stored once channel-last, one row of ``C`` values a voxel, and each point gathers the
    rows of its ``2**ndim`` corner voxels and mixes them with the linear weights. The
    gradient flows to ``points`` only (the image is a constant, as the refinement's moving
    descriptors are). Border padding: a position is clamped to ``[0, n - 1]`` along each
    axis, and the gradient is 0 beyond, as ``grid_sample``'s is.

    Speed and precision: one corner row is one cache line for all channels, where the
    channel-first samplers read each channel's plane at scattered places. 32 000 points of
    a 13-channel 128x100x100 image, forward and backward, 2 CPU threads: 12 ms against 37 ms
    for :func:`sample_points`, whose stacked-slices path rounds positions to about 5e-4
    voxel in float32 (maximum value difference 1.2e-3 against float64, here 2e-7; measured
    2026-12-07). Not for images that need a gradient: there the gather's backward is the
    slower one (a 5-step scaling and squaring of a 32x25x25 field: 48 against 10 ms). The
    rows are gathered by ``embedding``, which shares the work between threads where
    ``index_select`` did not: 8 gathers of 32 000 rows of 13, 2 threads, 4.6 against 7.0 ms.

    Args:
        *images: each ``(1, C_i, H, W)`` or ``(1, C_i, D, H, W)``, one grid; sampled as one
            image of their channels in turn (without the copy that concatenating them first
            would make).

    Raises:
        ValueError: (a :class:`SpatialArgumentError`) for a batch other than 1, or images of
            different grids.
    """

    def __init__(self, *images: Tensor) -> None:
        for image in images:
            if not isinstance(image, Tensor) or image.ndim not in (4, 5) or image.shape[0] != 1:
                shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
                raise SpatialArgumentError(
                    f"image must be (1, C, H, W) or (1, C, D, H, W), not {shape}"
                )
        if not images or any(image.shape[2:] != images[0].shape[2:] for image in images):
            shapes = [tuple(image.shape) for image in images]
            raise SpatialArgumentError(f"images must share one grid, not {shapes}")
        self.shape = tuple(images[0].shape[2:])
        channels = sum(image.shape[1] for image in images)
        # one row of every image's channels a voxel
        self.rows = images[0].new_empty((math.prod(self.shape), channels))
        column = 0
        for image in images:
            count = image.shape[1]
            self.rows[:, column : column + count] = image.detach()[0].flatten(1).t()
            column += count
        strides = [math.prod(self.shape[axis + 1 :]) for axis in range(len(self.shape))]
        # the upper corner along an axis of one voxel is the voxel itself
        self.steps = [s if n > 1 else 0 for s, n in zip(strides, self.shape, strict=True)]
        self.strides = strides

    def __call__(self, points: Tensor) -> Tensor:
        """``(ndim, N)`` voxel positions, array order -> ``(1, C, N)`` samples."""
        ndim = len(self.shape)
        if not isinstance(points, Tensor) or points.ndim != 2 or points.shape[0] != ndim:
            shape = tuple(points.shape) if isinstance(points, Tensor) else type(points).__name__
            raise SpatialArgumentError(f"points must be ({ndim}, N), not {shape}")
        points = points.to(self.rows.dtype)
        base = torch.zeros(points.shape[1], dtype=torch.long, device=points.device)
        fractions = []
        for axis, n in enumerate(self.shape):
            position = points[axis].clamp(0, n - 1)
            lower = position.detach().floor().clamp_(max=max(n - 2, 0))
            fractions.append((position - lower).unsqueeze(1))
            base += lower.long() * self.strides[axis]
        result = 0
        for corner in itertools.product((0, 1), repeat=ndim):
            weight = math.prod(f if c else 1 - f for f, c in zip(fractions, corner, strict=True))
            offset = sum(s for s, c in zip(self.steps, corner, strict=True) if c)
            result = result + F.embedding(base + offset, self.rows) * weight
        return result.t().unsqueeze(0)


def coarse_positions(
    points: Tensor, fine_shape: Sequence[int], coarse_shape: Sequence[int]
) -> Tensor:
    """Voxel positions on a fine grid -> the same physical positions on a coarser grid.

    Both grids cover the same extent and are cell-centred (the pyramid's convention, see
    :func:`resize_displacement`): fine voxel ``x`` on ``n`` voxels sits at coarse position
    ``(x + 0.5) * m / n - 0.5`` on ``m`` voxels.

    Args:
        points: ``(ndim, N)`` voxel positions on the fine grid, axis ``i`` along array axis ``i``.
        fine_shape: the fine grid's spatial shape, array order.
        coarse_shape: the coarse grid's spatial shape, array order.

    Returns:
        ``(ndim, N)`` positions in coarse voxels.
    """
    ratio = torch.tensor(
        [m / n for m, n in zip(coarse_shape, fine_shape, strict=True)],
        device=points.device,
        dtype=points.dtype,
    ).view(-1, 1)
    return (points + 0.5) * ratio - 0.5


def downsample_image(image: Tensor, factor: int) -> Tensor:
    """Average ``factor``-wide blocks of voxels: one level of the registration pyramid.

    Coarse voxel ``k`` is the mean of fine voxels ``f k .. f k + f - 1`` and so sits at fine
    position ``f k + (f - 1) / 2``: the cell-centred convention that
    :func:`resize_displacement` keeps for fields, so that images and fields of one level
    line up exactly.

    Args:
        image: ``(B, C, *spatial)``, every spatial size a multiple of ``factor``.
        factor: block width in voxels, ``>= 1``.

    Raises:
        ValueError: (a :class:`SpatialArgumentError`) for a size not divisible by ``factor``.
    """
    if factor == 1:
        return image
    if any(n % factor for n in image.shape[2:]):
        raise SpatialArgumentError(
            f"every spatial size must be a multiple of the factor {factor}, not "
            f"{tuple(image.shape[2:])}"
        )
    pool = F.avg_pool3d if image.dim() == 5 else F.avg_pool2d
    return pool(image, factor)


def resize_displacement(displacement: Tensor, shape: Sequence[int]) -> Tensor:
    """Resample a voxel displacement onto a grid of another size covering the same extent.

    Both grids are cell-centred: they share their outer *edges*, not their corner voxels, so
    voxel ``k`` of ``n`` sits at ``(k + 0.5) / n`` of the extent, as in a block average
    (:func:`downsample_image`). The field is interpolated (bilinear in 2D, trilinear in 3D,
    ``align_corners=False``, edge voxels extended outwards) and channel ``i`` is multiplied
    by ``new_n_i / old_n_i``, the ratio of the voxel sizes. A constant shift of ``s`` voxels
    on ``n`` becomes ``s * m / n`` on ``m``.

    One convention for images and fields matters: the pyramid's images are block averages,
    and a corner-aligned field on them was offset by up to 1.5 working voxels at a 4x level,
    with a 3 % scale error.

    Args:
        displacement: ``(B, ndim, *spatial)``, in voxels of its own grid.
        shape: New spatial shape, in array order, ``ndim`` entries each ``>= 1``.

    Returns:
        ``(B, ndim, *shape)``, in voxels of the new grid.

    Raises:
        ValueError: (a :class:`SpatialArgumentError`) if the field is ill-shaped or
            ``shape`` has the wrong length or an empty axis.
    """
    ndim = _check_field("displacement", displacement)
    new_shape = _check_shape("shape", shape, ndim)
    old_shape = tuple(displacement.shape[2:])
    if new_shape == old_shape:
        return displacement
    mode = "bilinear" if ndim == 2 else "trilinear"
    resized = F.interpolate(displacement, size=new_shape, mode=mode, align_corners=False)
    factors = [m / n for m, n in zip(new_shape, old_shape, strict=True)]
    factors = torch.tensor(factors, device=resized.device, dtype=resized.dtype)
    return resized * factors.view(1, ndim, *([1] * ndim))


@functools.lru_cache(maxsize=64)
def _smoothing_matrix(size: int, sigma: float, device: torch.device, dtype: torch.dtype) -> Tensor:
    """The ``(size, size)`` matrix of a 1D Gaussian smoothing with replicated borders.

    Row ``i`` holds the weight of every input voxel in output ``i``: the kernel taps that fall
    beyond an end of the axis are added to that end's voxel, which is what padding by
    replication and then convolving does. Built in float64, returned in ``dtype``.

    Cached by size, sigma, device and dtype (callers only read it): the refinement smooths its
    velocity at every step, and building the matrix each time cost 1.4 of a 13 s registration
    of the real pair on one loaded thread (cProfile, 2026-12-07).
    """
    radius = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    rows = torch.arange(size).unsqueeze(1).expand(size, offsets.numel())
    columns = (rows + offsets.long()).clamp(0, size - 1)
    matrix = torch.zeros(size, size, dtype=torch.float64)
    matrix.index_put_((rows, columns), kernel.expand(size, -1), accumulate=True)
    return matrix.to(device=device, dtype=dtype)


def gaussian_smooth(field: Tensor, sigma: float) -> Tensor:
    """Smooth every channel of ``field`` with a Gaussian of ``sigma`` voxels, axis by axis.

    The kernel is sampled out to ``ceil(3 sigma)`` voxels and normalised to sum 1; the border
    is extended by replication, so a constant field stays constant, and the output has the
    input's shape, device and dtype. ``sigma == 0`` returns ``field`` itself.

    Each axis is smoothed as one product with the axis' banded smoothing matrix (the
    replicated border folded into its end rows) rather than as a depthwise convolution of
    the padded field: the same numbers to rounding, and on the CPU 3-4x faster forward and
    backward together (the refinement smooths its velocity at every step), because a
    depthwise 3D convolution's backward has no fast CPU kernel.

    Args:
        field: ``(B, C, *spatial)``, 2D or 3D.
        sigma: standard deviation in voxels, the same along every axis, ``>= 0``.

    Raises:
        ValueError: (a :class:`SpatialArgumentError`) for a negative ``sigma`` or a field
            that is not ``(B, C, H, W)`` / ``(B, C, D, H, W)``.
    """
    if field.dim() not in (4, 5):
        raise SpatialArgumentError(
            f"field must be (B, C, H, W) or (B, C, D, H, W), not of shape {tuple(field.shape)}"
        )
    if not sigma >= 0:
        raise SpatialArgumentError(f"sigma must be 0 or more voxels, not {sigma}")
    if sigma == 0:
        return field
    out = field
    for axis in range(2, field.dim()):
        matrix = _smoothing_matrix(field.shape[axis], sigma, field.device, field.dtype)
        # out[..., i, ...] = sum_j matrix[i, j] out[..., j, ...] along this axis
        out = torch.movedim(torch.movedim(out, axis, -1) @ matrix.t(), -1, axis)
    return out


# --------------------------------------------------------------------------- voxel <-> physical


def _index_to_physical_matrix(
    ndim: int, spacing: Sequence[float], direction: Sequence[float]
) -> Tensor:
    """``Direction @ diag(spacing)`` in float64, ``(ndim, ndim)``, ITK ``(x, y, z)`` order."""
    spacing_t = torch.as_tensor([float(s) for s in spacing], dtype=torch.float64)
    direction_t = torch.as_tensor([float(d) for d in direction], dtype=torch.float64)
    if spacing_t.numel() != ndim or not bool((spacing_t > 0).all()):
        raise SpatialArgumentError(
            f"spacing must be {ndim} positive numbers in (x, y, z) order (as from "
            f"image.GetSpacing()), not {tuple(spacing)}"
        )
    if direction_t.numel() != ndim * ndim:
        raise SpatialArgumentError(
            f"direction must be the {ndim}x{ndim} matrix flattened row by row ({ndim * ndim} "
            f"numbers, as from image.GetDirection()), not {len(direction_t)} numbers: "
            f"{tuple(direction)}"
        )
    direction_m = direction_t.view(ndim, ndim)
    if abs(float(torch.linalg.det(direction_m))) < 1e-6:
        raise SpatialArgumentError(
            f"direction must be an invertible (normally orthonormal) matrix, but "
            f"{tuple(direction)} is singular"
        )
    return direction_m @ torch.diag(spacing_t)


def _apply_channel_matrix(matrix: Tensor, field: Tensor) -> Tensor:
    """``out[:, i] = sum_j matrix[i, j] * field[:, j]`` at every voxel."""
    matrix = matrix.to(device=field.device, dtype=field.dtype)
    return torch.einsum("ij,bj...->bi...", matrix, field)


def voxel_to_physical(
    displacement: Tensor, spacing: Sequence[float], direction: Sequence[float]
) -> Tensor:
    """Convert a voxel displacement (array order) to an ITK physical one (``x, y, z`` mm).

    ``d = Direction @ diag(spacing) @ u_xyz`` at every voxel, where ``u_xyz`` is the voxel
    displacement with its channels reversed into ``(x, y, z)`` order. This is the vector
    ``TransformContinuousIndexToPhysicalPoint(idx + u_xyz) -
    TransformContinuousIndexToPhysicalPoint(idx)`` of SimpleITK; the origin cancels. The
    result is what SimpleITK's ``DisplacementFieldTransform`` expects (after moving the
    channel axis last).

    Args:
        displacement: ``(B, ndim, *spatial)``, in voxels, channel ``i`` along array axis
            ``i`` (``(z, y, x)`` in 3D).
        spacing: Voxel size in millimetres in ``(x, y, z)`` order, as from
            ``image.GetSpacing()``.
        direction: Direction cosines, the ``ndim x ndim`` matrix flattened row by row,
            as from ``image.GetDirection()``.

    Returns:
        ``(B, ndim, *spatial)``, in millimetres, channels ``(x, y, z)`` in LPS.

    Raises:
        ValueError: (a :class:`SpatialArgumentError`) if the field is ill-shaped,
            ``spacing`` is not ``ndim`` positive numbers, or ``direction`` is not an
            invertible ``ndim x ndim`` matrix.
    """
    ndim = _check_field("displacement", displacement)
    matrix = _index_to_physical_matrix(ndim, spacing, direction)
    return _apply_channel_matrix(matrix, displacement.flip(1))


def physical_to_voxel(
    displacement: Tensor, spacing: Sequence[float], direction: Sequence[float]
) -> Tensor:
    """Convert an ITK physical displacement (``x, y, z`` mm) to a voxel one (array order).

    The inverse of :func:`voxel_to_physical`:
    ``u_xyz = (Direction @ diag(spacing))^-1 @ d``, then the channels are reversed into
    array order.

    Args:
        displacement: ``(B, ndim, *spatial)``, in millimetres, channels ``(x, y, z)`` in LPS.
        spacing: Voxel size in millimetres in ``(x, y, z)`` order, as from
            ``image.GetSpacing()``.
        direction: Direction cosines, the ``ndim x ndim`` matrix flattened row by row,
            as from ``image.GetDirection()``.

    Returns:
        ``(B, ndim, *spatial)``, in voxels, channel ``i`` along array axis ``i``.

    Raises:
        ValueError: (a :class:`SpatialArgumentError`) if the field is ill-shaped,
            ``spacing`` is not ``ndim`` positive numbers, or ``direction`` is not an
            invertible ``ndim x ndim`` matrix.
    """
    ndim = _check_field("displacement", displacement)
    matrix = _index_to_physical_matrix(ndim, spacing, direction)
    return _apply_channel_matrix(torch.linalg.inv(matrix), displacement).flip(1)
