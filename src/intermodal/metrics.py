"""Evaluation metrics: overlap, surface distance, landmark error and Jacobian statistics.

The definitions follow Learn2Reg where it defines them:

- **Dice** ``2|A∩B| / (|A|+|B|)`` per label.
- **HD95**: the robust Hausdorff distance, the larger of the two *directed* 95th percentiles of
  surface distances (every surface voxel of A to the nearest surface voxel of B, and B to A), in
  mm. A surface voxel is a voxel of the mask with a face neighbour outside it (or on the image
  border). Percentiles interpolate linearly between ranked distances (NumPy's default).
- **TRE**: ``|T(f) - m|`` in mm for corresponding landmarks ``f`` (fixed space) and ``m`` (moving
  space), where ``T`` maps fixed points to moving points as every transform of intermodal does.
- **Jacobian**: the determinant of ``I + ∂d/∂p`` of a displacement ``d`` (mm) on the fixed grid,
  by central differences (one-sided at the border); the share of determinants ``<= 0``
  (folding) and **SDlogJ**, the standard deviation of ``log(max(det, 1e-9))``.
- **NMI** ``(H(A) + H(B)) / H(A, B)`` of the fixed image and the moving one on its grid, each
  scaled as ``register`` scales it, 32 bins per image, inside the fixed image's scanned data
  (:func:`warped_nmi`, :class:`NMIScorer`).

Arrays are in array order, ``(z, y, x)`` in 3D and ``(y, x)`` in 2D, and so are the spacings
passed with them; SimpleITK images carry their own spacing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import SimpleITK as sitk

from intermodal.errors import IntermodalError
from intermodal.grids import same_grid, sample_rows, slab_rows

if TYPE_CHECKING:
    import torch

LOG_JACOBIAN_CLIP = 1e-9
"""Determinants are clipped to this before the logarithm of SDlogJ, as Learn2Reg does."""

NMI_BINS = 32
"""Bins per image of the NMI that intermodal reports (register, evaluate, prepare)."""

WORST_FRACTION = 0.3
"""Share of cases in the "worst cases" statistic (Learn2Reg's 30 % lowest Dice)."""


def _check_same_shape(reference: np.ndarray, candidate: np.ndarray) -> None:
    if reference.shape != candidate.shape:
        raise IntermodalError(
            f"masks differ in shape: reference {reference.shape}, candidate {candidate.shape}"
        )


def dice(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Dice overlap ``2|A∩B| / (|A|+|B|)`` of two boolean masks of the same shape.

    Returns:
        A value in ``[0, 1]``; NaN when both masks are empty.

    Raises:
        IntermodalError: the masks differ in shape.
    """
    reference, candidate = np.asarray(reference, bool), np.asarray(candidate, bool)
    _check_same_shape(reference, candidate)
    total = int(reference.sum()) + int(candidate.sum())
    if total == 0:
        return float("nan")
    return 2.0 * int(np.logical_and(reference, candidate).sum()) / total


def dice_per_label(
    reference: sitk.Image, candidate: sitk.Image, labels: Mapping[str, int]
) -> dict[str, float]:
    """Dice overlap ``2|A∩B| / (|A|+|B|)`` per named label, on one grid.

    Args:
        reference: label map, e.g. the fixed image's.
        candidate: label map on the same grid, e.g. the warped moving labels.
        labels: name -> integer label value.

    Returns:
        name -> Dice in ``[0, 1]``; NaN where the label is absent from both maps.

    Raises:
        IntermodalError: if the two maps have different sizes.
    """
    if reference.GetSize() != candidate.GetSize():
        raise IntermodalError(
            f"label maps differ in size: {reference.GetSize()} and {candidate.GetSize()}"
        )
    a = sitk.GetArrayViewFromImage(reference)
    b = sitk.GetArrayViewFromImage(candidate)
    return {name: dice(a == value, b == value) for name, value in labels.items()}


def surface(mask: np.ndarray) -> np.ndarray:
    """The surface voxels of a boolean mask: those with a face neighbour outside the mask.

    Voxels on the image border count as surface (the outside of the image is background).
    """
    from scipy import ndimage  # here, not at the top: 0.2 s that `register` never needs

    mask = np.asarray(mask, bool)
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def directed_surface_distances(
    source: np.ndarray, target: np.ndarray, spacing: Sequence[float]
) -> np.ndarray:
    """Distance (mm) from every surface voxel of ``source`` to the nearest one of ``target``.

    Args:
        source: boolean mask, any dimension, with at least one voxel set.
        target: boolean mask of the same shape, with at least one voxel set.
        spacing: voxel size in mm per array axis (array order).

    Returns:
        A 1D float64 array, one distance per surface voxel of ``source``.
    """
    from scipy import ndimage

    to_target = ndimage.distance_transform_edt(~surface(target), sampling=tuple(spacing))
    return np.asarray(to_target[surface(source)], dtype=np.float64)


def _grid_diagonal(shape: Sequence[int], spacing: Sequence[float]) -> float:
    """The longest distance between two voxel centres of the grid (mm)."""
    return float(math.sqrt(sum(((n - 1) * s) ** 2 for n, s in zip(shape, spacing))))


def hausdorff_distance(
    reference: np.ndarray,
    candidate: np.ndarray,
    spacing: Sequence[float],
    percentile: float = 95.0,
) -> float:
    """Robust (percentile) Hausdorff distance between two boolean masks, in mm.

    The larger of the two directed percentiles: ``max(P(d(∂A, ∂B)), P(d(∂B, ∂A)))`` where
    ``d(∂A, ∂B)`` are the distances from each surface voxel of A to the nearest surface voxel of
    B; ``percentile=100`` gives the classical Hausdorff distance.

    Empty masks: NaN when ``reference`` is empty (the label cannot be scored); when only
    ``candidate`` is empty (the label was lost), the grid's diagonal, the largest distance the
    field of view allows, so that the case counts as a failure yet means stay finite.

    Args:
        reference: boolean mask, e.g. a fixed label.
        candidate: boolean mask of the same shape, e.g. the warped moving label.
        spacing: voxel size in mm per array axis (array order).
        percentile: in ``[0, 100]``; 95 gives HD95.

    Returns:
        The distance in mm.

    Raises:
        IntermodalError: the masks differ in shape, the spacing does not fit them or is not
            positive, or ``percentile`` is out of range.
    """
    reference, candidate = np.asarray(reference, bool), np.asarray(candidate, bool)
    _check_same_shape(reference, candidate)
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != reference.ndim or not all(s > 0 for s in spacing):
        raise IntermodalError(
            f"spacing must be {reference.ndim} positive numbers (mm), not {spacing}"
        )
    if not 0.0 <= percentile <= 100.0:
        raise IntermodalError(f"percentile must be in [0, 100], not {percentile}")
    if not reference.any():
        return float("nan")
    if not candidate.any():
        return _grid_diagonal(reference.shape, spacing)
    # Only the box around both masks matters (one voxel more, so that a mask touches the box's
    # side only where it touches the image's): distances are the same, the work much smaller.
    where = np.argwhere(reference | candidate)
    box = tuple(
        slice(max(int(lo) - 1, 0), int(hi) + 2) for lo, hi in zip(where.min(0), where.max(0))
    )
    reference, candidate = reference[box], candidate[box]
    forward = directed_surface_distances(reference, candidate, spacing)
    backward = directed_surface_distances(candidate, reference, spacing)
    return float(max(np.percentile(forward, percentile), np.percentile(backward, percentile)))


def hd95(reference: np.ndarray, candidate: np.ndarray, spacing: Sequence[float]) -> float:
    """HD95 in mm: :func:`hausdorff_distance` at the 95th percentile."""
    return hausdorff_distance(reference, candidate, spacing, 95.0)


def hd95_per_label(
    reference: sitk.Image, candidate: sitk.Image, labels: Mapping[str, int]
) -> dict[str, float]:
    """HD95 (mm) per named label between two label maps on one grid.

    Distances use the images' spacing; with a non-identity (orthonormal) direction, distances
    are the same as along the axes.

    Returns:
        name -> HD95 in mm (see :func:`hausdorff_distance` for empty labels).

    Raises:
        IntermodalError: the two maps have different sizes.
    """
    if reference.GetSize() != candidate.GetSize():
        raise IntermodalError(
            f"label maps differ in size: {reference.GetSize()} and {candidate.GetSize()}"
        )
    a = sitk.GetArrayViewFromImage(reference)
    b = sitk.GetArrayViewFromImage(candidate)
    spacing = reference.GetSpacing()[::-1]
    return {name: hd95(a == value, b == value, spacing) for name, value in labels.items()}


def target_registration_error(
    transform: sitk.Transform, fixed_points: np.ndarray, moving_points: np.ndarray
) -> np.ndarray:
    """Landmark error ``|T(f_i) - m_i|`` in mm, one value per landmark pair.

    ``T`` maps fixed-space points to moving-space points (ITK's convention, and that of every
    ``transform.h5`` intermodal writes), so fixed landmarks are mapped and compared with the
    moving ones where they were marked.

    Args:
        transform: fixed -> moving transform (physical mm).
        fixed_points: ``(N, ndim)`` landmarks in the fixed image's space, mm (LPS).
        moving_points: ``(N, ndim)`` corresponding landmarks in the moving space, mm (LPS).

    Returns:
        ``(N,)`` float64 distances in mm.

    Raises:
        IntermodalError: the arrays differ in shape or do not match the transform's dimension.
    """
    fixed_points = np.asarray(fixed_points, dtype=np.float64)
    moving_points = np.asarray(moving_points, dtype=np.float64)
    ndim = transform.GetDimension()
    if fixed_points.shape != moving_points.shape:
        raise IntermodalError(
            f"fixed and moving landmarks differ in shape: {fixed_points.shape} and "
            f"{moving_points.shape}; they must correspond row by row"
        )
    if fixed_points.ndim != 2 or fixed_points.shape[1] != ndim:
        raise IntermodalError(
            f"landmarks must be an array (N, {ndim}) for a {ndim}D transform, "
            f"not {fixed_points.shape}"
        )
    mapped = np.array(
        [transform.TransformPoint(tuple(float(v) for v in p)) for p in fixed_points]
    ).reshape(fixed_points.shape)
    return np.linalg.norm(mapped - moving_points, axis=1)


def image_jacobian_det(
    displacement: sitk.Image, reference: sitk.Image | None = None, *, dtype: type = np.float64
) -> np.ndarray:
    """Determinant of the Jacobian of ``p -> p + d(p)`` at every voxel, in array order.

    ``d`` is a displacement in physical mm (ITK convention: a vector image whose components are
    ``(x, y, z)`` LPS mm). Derivatives are central differences along the grid (one-sided at the
    border), turned into derivatives in mm through the image's spacing and direction:
    ``J = I + (∂d/∂i) (D S)^-1`` for index ``i``, direction ``D`` and spacing ``S``. A field
    linear in ``p`` gives its exact determinant everywhere.

    Args:
        displacement: vector image of ``ndim`` float components on the fixed grid.
        reference: when given, the determinant is taken on this grid instead, of the field
            linearly interpolated onto it (zero outside the field's grid): slab by slab, so a
            field kept on a coarse grid is never held at the reference's full size.
        dtype: of the returned array. Each slab is computed in float64, or in float32 when
            that is asked for (half the memory traffic; determinants within about 1e-6 of the
            float64 ones, relative).

    Returns:
        An array of the (reference) grid's shape (array order ``(z, y, x)`` / ``(y, x)``).

    Raises:
        IntermodalError: not a vector image with one component per dimension, or a grid with
            fewer than 2 voxels along an axis.
    """
    ndim = displacement.GetDimension()
    if displacement.GetNumberOfComponentsPerPixel() != ndim:
        raise IntermodalError(
            f"a {ndim}D displacement needs {ndim} components per voxel, "
            f"not {displacement.GetNumberOfComponentsPerPixel()}"
        )
    if min(displacement.GetSize()) < 2:
        raise IntermodalError(
            f"displacement grid {displacement.GetSize()} needs 2 voxels or more along each axis"
        )
    if reference is not None and same_grid(reference, displacement):
        reference = None  # sampling the field at its own voxels gives it back: skip that
    grid = displacement if reference is None else reference
    if reference is not None:
        if reference.GetDimension() != ndim:
            raise IntermodalError(
                f"a {ndim}D displacement cannot be sampled on a {reference.GetDimension()}D grid"
            )
        if min(reference.GetSize()) < 2:
            raise IntermodalError(
                f"reference grid {reference.GetSize()} needs 2 voxels or more along each axis"
            )
    direction = np.array(grid.GetDirection()).reshape(ndim, ndim)
    index_to_mm = np.linalg.inv(direction @ np.diag(grid.GetSpacing()))
    shape = grid.GetSize()[::-1]
    single = np.dtype(dtype) == np.float32
    if reference is None:
        view = sitk.GetArrayViewFromImage(displacement)  # (*spatial, ndim), a view

        def rows(low: int, high: int) -> np.ndarray:
            return view[low:high].astype(np.float32 if single else np.float64)
    else:

        def rows(low: int, high: int) -> np.ndarray:
            return _sampled_rows(displacement, reference, low, high, single)

    # Slabs along the first array axis keep the memory small on large volumes; each slab is
    # read with one neighbouring slice on either side, so its differences are the same as on
    # the whole grid (central inside, one-sided at the grid's own border).
    depth = shape[0]
    step = slab_rows(grid)
    det = np.empty(shape, dtype=dtype)
    for start in range(0, depth, step):
        stop = min(start + step, depth)
        low, high = max(start - 1, 0), min(stop + 1, depth)
        slab = _jacobian_det_of(rows(low, high), index_to_mm)
        det[start:stop] = slab[start - low : start - low + stop - start]
    return det


def _sampled_rows(
    field: sitk.Image, reference: sitk.Image, low: int, high: int, single: bool = False
) -> np.ndarray:
    """``field`` sampled linearly on rows ``low:high`` (first array axis) of ``reference``.

    As ITK's linear resampling does it (zero outside the field's grid), in float64, or in
    float32 when ``single`` (:func:`intermodal.grids.sample_rows`), components last.
    """
    rows = sample_rows(field, reference, low, high, dtype=np.float32 if single else np.float64)
    return np.moveaxis(rows, 0, -1)


def _jacobian_det_of(field: np.ndarray, index_to_mm: np.ndarray) -> np.ndarray:
    """Determinant of ``I + (∂d/∂i) index_to_mm`` for a ``(*spatial, ndim)`` field (mm).

    In the field's own floating dtype.
    """
    ndim = field.shape[-1]
    # gradient[c][k]: derivative of component c (x, y, z) along index axis k (x, y, z).
    gradient = [np.gradient(field[..., c])[::-1] for c in range(ndim)]
    # Python floats, so that a float32 field is not promoted by NumPy float64 scalars
    to_mm = index_to_mm.tolist()
    # terms of a zero matrix entry are left out: with an axis-aligned direction only the
    # diagonal ones remain, a third of the products
    j = [
        [float(c == m) + sum(gradient[c][k] * to_mm[k][m] for k in range(ndim) if to_mm[k][m])
         for m in range(ndim)]
        for c in range(ndim)
    ]  # fmt: skip
    # the determinant written out (cofactors), 3-4x faster than np.linalg.det on (N, 3, 3)
    if ndim == 2:
        return j[0][0] * j[1][1] - j[0][1] * j[1][0]
    return (
        j[0][0] * (j[1][1] * j[2][2] - j[1][2] * j[2][1])
        - j[0][1] * (j[1][0] * j[2][2] - j[1][2] * j[2][0])
        + j[0][2] * (j[1][0] * j[2][1] - j[1][1] * j[2][0])
    )


def _masked(values: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if mask is not None:
        mask = np.asarray(mask, bool)
        if mask.shape != values.shape:
            raise IntermodalError(
                f"mask shape {mask.shape} differs from the Jacobian's {values.shape}"
            )
        values = values[mask]
    values = values.ravel()
    if values.size == 0:
        raise IntermodalError("the Jacobian mask selects no voxel")
    return values


def nonpositive_fraction(jacobian_det: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Share of voxels whose Jacobian determinant is ``<= 0`` (folding), in ``[0, 1]``.

    Args:
        jacobian_det: determinants, any shape.
        mask: optional boolean array of the same shape; only voxels where it is true count.
    """
    return float(np.mean(_masked(jacobian_det, mask) <= 0))


def sdlogj(jacobian_det: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Standard deviation of ``log(max(det, 1e-9))`` (Learn2Reg's SDlogJ), over ``mask``.

    The standard deviation is the population one (divided by N), as NumPy's ``std``; it is
    :func:`jacobian_statistics`' ``sdlogj``.
    """
    return jacobian_statistics(jacobian_det, mask)["sdlogj"]


_STAT_CHUNK = 1 << 22
"""Determinants per chunk of :func:`jacobian_statistics` (32 MiB of float64)."""


def jacobian_statistics(
    jacobian_det: np.ndarray | sitk.Image, mask: np.ndarray | sitk.Image | None = None
) -> dict[str, float]:
    """Folding and smoothness of Jacobian determinants.

    Args:
        jacobian_det: determinants, an array of any shape or a scalar image.
        mask: optional, of the same shape (array) or size (image); only voxels where it is
            nonzero count.

    Returns:
        ``nonpositive_fraction`` (share of voxels with det <= 0), ``sdlogj`` (population
        standard deviation of log det, determinants clipped at 1e-9 as Learn2Reg does), and
        ``min``, ``max``, ``mean`` of the determinants.

    Raises:
        IntermodalError: the mask's shape differs from the determinants', or it selects no
            voxel.
    """

    def view(value: np.ndarray | sitk.Image) -> np.ndarray:
        if isinstance(value, sitk.Image):
            return sitk.GetArrayViewFromImage(value)
        return np.asarray(value)

    values = view(jacobian_det)
    if mask is not None:
        keep = view(mask)
        if keep.shape != values.shape:
            raise IntermodalError(
                f"mask shape {keep.shape} differs from the Jacobian's {values.shape}"
            )
        values = values[keep != 0]
    values = values.ravel()
    if values.size == 0:
        raise IntermodalError("the Jacobian mask selects no voxel")
    # Chunk by chunk in float64, so that a 512^3 grid never needs whole float64 copies of the
    # determinant and of its logarithm; each chunk's logarithm is taken once, and the chunks'
    # means and sums of squared deviations are merged exactly (Chan, Golub and LeVeque's
    # pairwise update), which is as stable as two passes over the whole.
    count, log_mean, log_m2 = 0, 0.0, 0.0
    nonpositive, total = 0, 0.0
    low, high = math.inf, -math.inf
    for start in range(0, values.size, _STAT_CHUNK):
        chunk = values[start : start + _STAT_CHUNK]
        logs = np.log(np.clip(chunk.astype(np.float64), LOG_JACOBIAN_CLIP, None))
        n, mean = logs.size, float(logs.mean())
        m2 = float(np.square(logs - mean).sum())
        delta = mean - log_mean
        log_m2 += m2 + delta * delta * count * n / (count + n)
        log_mean += delta * n / (count + n)
        count += n
        nonpositive += int(np.count_nonzero(chunk <= 0))
        total += float(chunk.sum(dtype=np.float64))
        low, high = min(low, float(chunk.min())), max(high, float(chunk.max()))
    return {
        "nonpositive_fraction": nonpositive / values.size,
        "sdlogj": math.sqrt(log_m2 / values.size),
        "min": low,
        "max": high,
        "mean": total / values.size,
    }


def warped_nmi(
    fixed: np.ndarray | torch.Tensor,
    warped: np.ndarray | torch.Tensor,
    mask: np.ndarray | torch.Tensor,
) -> float:
    """NMI of a fixed image and a moving image on its grid, inside ``mask``: the one definition
    behind every NMI intermodal reports.

    :func:`intermodal.losses.nmi` with :data:`NMI_BINS` bins per image, over the voxels where
    ``mask`` is nonzero. Scale the intensities first as ``register`` does (CT by its HU window,
    MR by its percentiles; :class:`NMIScorer` does it for images).

    Args:
        fixed: the fixed image, any shape (array or tensor, any device).
        warped: the moving image on the fixed grid, same shape.
        mask: same shape; the voxels counted (usually the fixed image's scanned data).

    Returns:
        NMI in ``[1, 2]``.

    Raises:
        IntermodalError: the shapes differ or the mask selects no voxel.
    """
    from intermodal.losses import nmi

    return float(nmi(fixed, warped, bins=NMI_BINS, mask=mask != 0))


class NMIScorer:
    """:func:`warped_nmi` of a moving image resampled onto a fixed image's grid.

    Both images are scaled once, as ``register`` scales them (each by its modality, detected
    unless given), and the mask is the fixed image's scanned data
    (:func:`intermodal.preprocess.data_mask`: a CT's padding is left out). Calling the scorer
    with a transform (fixed -> moving mm, as every transform of intermodal) resamples the
    moving image linearly through it, zero outside, and scores it; ``None`` is the identity.

    Example:
        >>> score = NMIScorer(ct, mr)
        >>> before, after = score(None), score(result.transform)
    """

    def __init__(
        self,
        fixed: sitk.Image,
        moving: sitk.Image,
        fixed_modality: str | None = None,
        moving_modality: str | None = None,
    ) -> None:
        from intermodal import preprocess

        fixed = sitk.Cast(fixed, sitk.sitkFloat32)
        moving = sitk.Cast(moving, sitk.sitkFloat32)
        fixed_modality = fixed_modality or preprocess.detect_modality(fixed)
        moving_modality = moving_modality or preprocess.detect_modality(moving)
        self.fixed = preprocess.normalize_intensity(fixed, fixed_modality)
        self.moving = preprocess.normalize_intensity(moving, moving_modality)
        self.fixed_array = sitk.GetArrayFromImage(self.fixed)
        self.mask = sitk.GetArrayFromImage(preprocess.data_mask(fixed, fixed_modality)) > 0

    def warp(self, transform: sitk.Transform | None = None) -> np.ndarray:
        """The scaled moving image on the fixed grid through ``transform``, in array order."""
        if transform is None:
            transform = sitk.Transform(self.fixed.GetDimension(), sitk.sitkIdentity)
        warped = sitk.Resample(
            self.moving, self.fixed, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32
        )
        return sitk.GetArrayFromImage(warped)

    def __call__(self, transform: sitk.Transform | None = None) -> float:
        """NMI of the fixed image and the moving one through ``transform`` (None: identity)."""
        return warped_nmi(self.fixed_array, self.warp(transform), self.mask)


def worst_cases_mean(
    values: Sequence[float] | np.ndarray, *, higher_is_worse: bool, fraction: float = WORST_FRACTION
) -> float:
    """Mean of the worst ``fraction`` of cases, ignoring NaN (Learn2Reg's "30 % lowest Dice").

    The worst ``ceil(fraction * n)`` values of the ``n`` finite ones are averaged: the lowest
    for scores such as Dice, the highest for errors such as HD95 (``higher_is_worse``).

    Returns:
        The mean; NaN when no value is finite.
    """
    array = np.asarray(values, dtype=np.float64)
    array = np.sort(array[~np.isnan(array)])
    if array.size == 0:
        return float("nan")
    count = max(1, math.ceil(fraction * array.size - 1e-9))
    worst = array[-count:] if higher_is_worse else array[:count]
    return float(np.mean(worst))
