"""Initial alignment: a global rigid (or affine) transform by mutual information, in torch.

The stages, each starting from the last (the habit of ANTs' ``antsAI``, which makes an initial
alignment robust to a large misalignment):

1. **Centre of mass.** A translation that puts the moving image's intensity centroid onto the
   fixed one's.
2. **Multi-start over rotations.** Rotations on a grid (every combination of -30, 0 and +30
   degrees about each axis in 3D; -60 .. +60 in steps of 30 in 2D) are scored by mutual
   information at a coarse spacing. The best few go on.
   For the best rotations, translations on a grid around the centre-of-mass one are scored
   too (an image that covers part of the other, an MR slab of a long CT, has its centre of
   mass away from the matching one).
   In 3D the same grid is also searched around each half-turn (:data:`TURNS_DEG`): a scan whose
   stored orientation is wrong by 180 degrees (head first against feet first, prone against
   supine, or a conversion that lost the patient's position) has its body outline in the
   right place but its anatomy the wrong way round, which no local search can undo.
3. **Local optimisation on a pyramid.** Adam on the rotation and translation of each start at
   :data:`PYRAMID_MM` spacings, the starts optimised together as one batch; the best by MI
   after the coarsest level goes on. A turned start's MI is compared only after that
   optimisation, because scored where it starts it is a poor guide (on the real pair's
   tuning cases the right turn scored below the stored orientation there in two of five,
   and above it by 17 to 30 % in all five after 40 steps). A turn contradicts the headers,
   so it is kept only where a second measure agrees, as the affine in ``register`` is: the
   best turned and the best stored start both go through the pyramid, and the turn wins
   only if MI and MIND-SSC (local structure, which MI was not optimised on) both prefer it.
   A body that looks alike turned (a box, an ellipsoid) gives MI a near tie that local
   structure breaks. For ``"affine"``, scaling and shear
   are then freed and kept only if they raise MI.

MI comes from a Parzen joint histogram (:func:`intermodal.losses.parzen_mutual_information`)
over the fixed image's voxels of one block-averaged level, weighted by a fixed-image mask and
by whether a point lands inside the moving image. Nothing is drawn at random, so the result is
the same on every run and every thread count up to floating-point summation order.

Every transform returned maps *fixed* physical points to *moving* physical points (mm), the
direction SimpleITK's ``Resample`` uses.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from intermodal import refinement
from intermodal.classical import downsample
from intermodal.errors import IntermodalError
from intermodal.io.tensors import image_to_tensor
from intermodal.losses import parzen_mutual_information
from intermodal.optim import Adam
from intermodal.preprocess import nonzero_box, resample
from intermodal.presets import ALIGNMENT_METHODS, INIT_CHOICES

PYRAMID_MM = (8.0, 4.0)
"""Spacings (mm) of the optimisation's levels, coarse to fine: a global transform needs no
finer detail (ITK's and ANTs' initialisers also stop at a shrink factor of a few voxels)."""
STEPS_PER_LEVEL = (40, 20)
LEARNING_RATES = (2.0, 0.5)
"""Adam's step (mm of translation, or of arc at the image's radius) at each level."""
START_ANGLES_DEG = {3: (-30.0, 0.0, 30.0), 2: (-60.0, -30.0, 0.0, 30.0, 60.0)}
STARTS_KEPT = 3
TURNS_DEG: dict[int, tuple[tuple[float, ...], ...]] = {
    3: ((180.0, 0.0, 0.0), (0.0, 180.0, 0.0), (0.0, 0.0, 180.0)),
    2: (),
}
"""The half-turns searched besides the stored orientation (Euler angles in degrees, added to
every angle of the start grid): about x, y and z in 3D; with the stored orientation, the four
orientations that keep each image axis on its line. None in 2D: a slice's only half-turn is
the one in its plane (prone against supine; a head-first against feet-first pair is a mirror
there, which no rotation gives), and the slice of a body that is nearly symmetric can fit
turned: a held-out synthetic pelvis pair of two subjects did, by MI and by MIND-SSC, and lost
0.16 Dice."""
STRUCTURE_MM = PYRAMID_MM[-1]
"""Spacing (mm) at which a turn's second measure, MIND-SSC, compares the images."""
TRANSLATION_STEP_MM = 16.0
"""Spacing of the translation offsets tried around the centre-of-mass start: about twice the
coarsest level's voxel, within the basin that MI's local optimisation captures."""
_MAX_TRANSLATION_STEPS = 6
_SCORE_CHUNK = 32
MI_BINS = 32
_MAX_POINTS = 8_000
"""At most this many fixed voxels score a level (a regular sub-grid of them if there are more):
the Parzen histogram's forward and backward cost about 0.5 us a sample on one CPU thread, and
a global transform of 6 to 12 parameters is well determined by a few thousand samples."""

ProgressCallback = Callable[[str], None]


@dataclass
class _Level:
    """One pyramid level: fixed sample points and values, and the moving image to sample."""

    points: torch.Tensor  # (N, ndim) fixed physical points, mm, float64
    fixed_values: torch.Tensor  # (N,) in [0, 1]
    fixed_weights: torch.Tensor  # (N,) fixed mask, 0 or 1
    moving: torch.Tensor  # (1, 2, *size) moving values and its field-of-view mask
    to_index: torch.Tensor  # (ndim, ndim) physical offset -> moving continuous index (x, y, z)
    origin: torch.Tensor  # (ndim,)
    size: torch.Tensor  # (ndim,) moving size, x y z order
    fixed_image: sitk.Image  # the fixed image at the level's spacing


def _as_level(
    fixed: sitk.Image,
    moving: sitk.Image,
    fixed_mask: sitk.Image | None,
    moving_mask: sitk.Image | None,
    spacing: float,
) -> _Level:
    fixed_small = downsample(sitk.Cast(fixed, sitk.sitkFloat32), spacing)
    moving_small = downsample(sitk.Cast(moving, sitk.sitkFloat32), spacing)
    if moving_mask is None:
        moving_inside = np.ones(moving_small.GetSize()[::-1], dtype=np.float32)
    else:
        small_mask = downsample(sitk.Cast(moving_mask > 0, sitk.sitkFloat32), spacing)
        moving_inside = sitk.GetArrayFromImage(small_mask).astype(np.float32)
    ndim = fixed.GetDimension()
    values = sitk.GetArrayFromImage(fixed_small).ravel()
    if fixed_mask is None:
        weights = np.ones_like(values)
    else:
        mask = sitk.Resample(
            sitk.Cast(fixed_mask, sitk.sitkFloat32), fixed_small, sitk.Transform(),
            sitk.sitkLinear, 0.0,
        )  # fmt: skip
        weights = (sitk.GetArrayFromImage(mask).ravel() > 0.5).astype(np.float32)
    size = fixed_small.GetSize()
    # voxel indices in (x, y, z) order, C-ordered like the array's ravel
    index = np.stack(np.meshgrid(*[np.arange(n) for n in size[::-1]], indexing="ij"), 0)
    index = index.reshape(ndim, -1)[::-1].T.astype(np.float64)
    keep = np.flatnonzero(weights > 0)
    if keep.size > _MAX_POINTS:
        keep = keep[:: math.ceil(keep.size / _MAX_POINTS)]
    direction = np.asarray(fixed_small.GetDirection()).reshape(ndim, ndim)
    scaled = direction * np.asarray(fixed_small.GetSpacing())
    points = np.asarray(fixed_small.GetOrigin()) + index[keep] @ scaled.T
    moving_array = sitk.GetArrayFromImage(moving_small).astype(np.float32)
    moving_direction = np.asarray(moving_small.GetDirection()).reshape(ndim, ndim)
    to_index = np.linalg.inv(moving_direction * np.asarray(moving_small.GetSpacing()))
    return _Level(
        points=torch.from_numpy(points),
        fixed_values=torch.from_numpy(values[keep].astype(np.float32)),
        fixed_weights=torch.from_numpy(weights[keep].astype(np.float32)),
        moving=torch.from_numpy(np.stack([moving_array, moving_inside]))[None],
        to_index=torch.from_numpy(to_index),
        origin=torch.tensor(moving_small.GetOrigin(), dtype=torch.float64),
        size=torch.tensor(moving_small.GetSize(), dtype=torch.float64),
        fixed_image=fixed_small,
    )


def _rotation(angles: torch.Tensor) -> torch.Tensor:
    """``(B, 1)`` angles (2D) or ``(B, 3)`` Euler angles (3D), radians -> ``(B, ndim, ndim)``."""
    cos, sin = torch.cos(angles), torch.sin(angles)
    one, zero = torch.ones_like(cos[:, 0]), torch.zeros_like(cos[:, 0])
    if angles.shape[1] == 1:
        return torch.stack([cos[:, 0], -sin[:, 0], sin[:, 0], cos[:, 0]], 1).view(-1, 2, 2)

    def about(axis: int) -> torch.Tensor:
        c, s = cos[:, axis], sin[:, axis]
        rows = {
            0: [one, zero, zero, zero, c, -s, zero, s, c],
            1: [c, zero, s, zero, one, zero, -s, zero, c],
            2: [c, -s, zero, s, c, zero, zero, zero, one],
        }[axis]
        return torch.stack(rows, 1).view(-1, 3, 3)

    return about(2) @ about(1) @ about(0)


class _Parameters:
    """A batch of transforms ``p -> A (p - c) + c + t`` packed into one tensor for Adam.

    Columns: angles times :attr:`radius` (so that a step in them moves the image's edge by
    about as many mm as a step in the translation), the translation in mm and, for an affine,
    the entries of ``A = R (I + G)``'s ``G`` times the radius.
    """

    def __init__(self, ndim: int, centre: np.ndarray, radius: float) -> None:
        self.ndim = ndim
        self.angles = 1 if ndim == 2 else 3
        self.centre = torch.as_tensor(centre, dtype=torch.float64)
        self.radius = radius

    def matrix_and_translation(self, packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, ndim = self.angles, self.ndim
        matrix = _rotation(packed[:, :n] / self.radius)
        translation = packed[:, n : n + ndim]
        if packed.shape[1] > n + ndim:
            shear = packed[:, n + ndim :].reshape(-1, ndim, ndim) / self.radius
            matrix = matrix @ (torch.eye(ndim, dtype=packed.dtype) + shear)
        return matrix, translation

    def transform(self, packed_row: torch.Tensor) -> sitk.AffineTransform:
        matrix, translation = self.matrix_and_translation(packed_row[None].detach())
        affine = sitk.AffineTransform(self.ndim)
        affine.SetCenter([float(v) for v in self.centre])
        affine.SetMatrix([float(v) for v in matrix[0].reshape(-1)])
        affine.SetTranslation([float(v) for v in translation[0]])
        return affine


def _mutual_information(level: _Level, params: _Parameters, packed: torch.Tensor) -> torch.Tensor:
    """``(B,)`` MI of the fixed samples and the moving image through each transform."""
    matrix, translation = params.matrix_and_translation(packed)
    centred = (level.points - params.centre).to(packed.dtype)
    moved = centred @ matrix.transpose(1, 2) + (params.centre + translation).unsqueeze(1)
    index = (moved - level.origin) @ level.to_index.T.to(packed.dtype)
    grid = 2 * index / (level.size - 1).clamp_min(1) - 1
    batch = packed.shape[0]
    ndim = params.ndim
    grid = grid.to(torch.float32).view(batch, *([1] * (ndim - 1)), -1, ndim)
    sampled = F.grid_sample(
        level.moving.expand(batch, *level.moving.shape[1:]), grid,
        mode="bilinear", padding_mode="zeros", align_corners=True,
    ).reshape(batch, 2, -1)  # fmt: skip
    values, inside = sampled[:, 0], sampled[:, 1]
    weights = inside * level.fixed_weights
    return parzen_mutual_information(
        level.fixed_values[None], values.clamp(0, 1), MI_BINS, weights=weights
    )


def _optimise(
    level: _Level, params: _Parameters, start: torch.Tensor, steps: int, learning_rate: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Adam on a batch of packed transforms; returns the best iterate of each and its MI."""
    packed = start.detach().clone().requires_grad_(True)
    optimizer = Adam(packed, lr=learning_rate)
    best = start.detach().clone()
    best_mi = torch.full((start.shape[0],), -math.inf, dtype=torch.float64)
    for _ in range(steps):
        optimizer.zero_grad()
        mi = _mutual_information(level, params, packed)
        with torch.no_grad():
            better = mi.double() > best_mi
            best[better] = packed.detach()[better]
            best_mi[better] = mi.detach().double()[better]
        (-mi.sum()).backward()
        optimizer.step()
    with torch.no_grad():
        mi = _mutual_information(level, params, packed).double()
        better = mi > best_mi
        best[better] = packed.detach()[better]
        best_mi[better] = mi[better]
    return best, best_mi


def _data_extent(image: sitk.Image, mask: sitk.Image | None) -> np.ndarray:
    """The size (mm) along each physical axis of the box that holds the mask's voxels."""
    ndim = image.GetDimension()
    if mask is None:
        counts = np.asarray(image.GetSize(), dtype=float)
    else:
        box = nonzero_box(sitk.GetArrayViewFromImage(mask))
        counts = np.array([span.stop - span.start for span in box], dtype=float)[::-1]
    direction = np.abs(np.asarray(image.GetDirection()).reshape(ndim, ndim))
    return direction @ (counts * np.asarray(image.GetSpacing()))


def _translation_offsets(fixed_extent: np.ndarray, moving_extent: np.ndarray) -> np.ndarray:
    """``(K, ndim)`` offsets (mm) around the centre-of-mass translation to start from.

    Along each physical axis, steps of :data:`TRANSLATION_STEP_MM` out to half the difference
    of the two images' data extents (at least one step): an image that covers a part of the
    other (an MR slab of a longer CT) has its centre of mass anywhere along that difference.
    """
    reach = np.maximum(np.abs(fixed_extent - moving_extent) / 2, TRANSLATION_STEP_MM)
    counts = np.minimum(np.ceil(reach / TRANSLATION_STEP_MM), _MAX_TRANSLATION_STEPS)
    axes = [np.linspace(-r, r, 2 * int(n) + 1) for r, n in zip(reach, counts, strict=True)]
    return np.array(list(itertools.product(*axes)))


def _starts(
    level: _Level,
    params: _Parameters,
    moments: torch.Tensor,
    offsets: np.ndarray,
    turns: bool = True,
) -> tuple[torch.Tensor, int]:
    """The multi-start: rotations on a grid, then translations around the best rotations.

    In the stored orientation every rotation of :data:`START_ANGLES_DEG` is scored by MI at
    the centre-of-mass translation; the unrotated start and the best :data:`STARTS_KEPT` go
    on, each tried at every translation offset, and the :data:`STARTS_KEPT` best starts by MI
    are returned, the plain centre-of-mass start always among them (first, and once: when it
    is also among the best, one start fewer is returned). With ``turns`` the best start of
    the rotations around each half-turn of :data:`TURNS_DEG` follows, at the centre-of-mass
    translation.

    Returns:
        ``(starts, stored)``: the packed starts, the first ``stored`` of them in the stored
        orientation and the rest one per half-turn.
    """
    stored = _best_starts(level, params, moments, offsets, None, STARTS_KEPT - 1)
    # the centre-of-mass start (no rotation, no offset) is among them already: once is enough
    starts = [moments] + [row[None] for row in stored if not torch.equal(row, moments[0])]
    count = len(starts)
    if turns:
        starts += [
            _best_starts(level, params, moments, offsets, turn, 1)
            for turn in TURNS_DEG[params.ndim]
        ]
    return torch.cat(starts), count


def _best_starts(
    level: _Level,
    params: _Parameters,
    moments: torch.Tensor,
    offsets: np.ndarray,
    turn: tuple[float, ...] | None,
    count: int,
) -> torch.Tensor:
    """The ``count`` best starts by MI around the stored orientation (``turn`` None: the
    unrotated start always tried, then translation offsets) or around one half-turn
    (degrees, the rotations alone)."""
    n_angles, ndim = params.angles, params.ndim
    angles = np.radians(START_ANGLES_DEG[ndim])
    rotations = torch.tensor(list(itertools.product(angles, repeat=n_angles)), dtype=torch.float64)
    if turn is not None:
        rotations = rotations + torch.tensor(np.radians(turn), dtype=torch.float64)
    candidates = moments.repeat(len(rotations), 1)
    candidates[:, :n_angles] = rotations * params.radius
    scores = _scored(level, params, candidates)
    ranked = [int(i) for i in torch.argsort(scores, descending=True)]
    if turn is not None:
        # at the centre-of-mass translation only: the offsets would cost ~0.2 s a turn (one
        # Parzen MI of 8 000 points is ~1 ms) for a search that is only a safety net
        return candidates[ranked[:count]]
    identity = len(rotations) // 2
    kept = candidates[[identity] + [i for i in ranked if i != identity][:STARTS_KEPT]]
    moved = kept.repeat_interleave(len(offsets), 0)
    moved[:, n_angles:] += torch.from_numpy(offsets).repeat(len(kept), 1)
    scores = _scored(level, params, moved)
    return moved[torch.argsort(scores, descending=True)[:count]]


def _scored(level: _Level, params: _Parameters, candidates: torch.Tensor) -> torch.Tensor:
    """MI of each candidate, in chunks that keep the Parzen weights small."""
    return torch.cat([
        _mutual_information(level, params, chunk).double()
        for chunk in candidates.split(_SCORE_CHUNK)
    ])  # fmt: skip


def _centre_of_mass(image: sitk.Image, mask: sitk.Image | None = None) -> np.ndarray:
    """The intensity-weighted centroid of ``image`` in physical mm."""
    small = downsample(sitk.Cast(image, sitk.sitkFloat32), PYRAMID_MM[-1])
    array = sitk.GetArrayFromImage(small).astype(np.float64)
    if mask is not None:
        resampled = sitk.Resample(
            sitk.Cast(mask, sitk.sitkFloat32), small, sitk.Transform(), sitk.sitkLinear, 0.0
        )
        array = array * (sitk.GetArrayFromImage(resampled) > 0.5)
    ndim = image.GetDimension()
    total = array.sum()
    if not total > 0:
        index = (np.asarray(small.GetSize()) - 1) / 2.0
    else:
        grids = np.meshgrid(*[np.arange(n) for n in array.shape], indexing="ij")
        index = np.array([(g * array).sum() / total for g in grids])[::-1]
    return np.asarray(small.TransformContinuousIndexToPhysicalPoint(index.tolist()))[:ndim]


def initial_alignment(
    fixed: sitk.Image,
    moving: sitk.Image,
    method: str = "rigid",
    *,
    fixed_mask: sitk.Image | None = None,
    moving_mask: sitk.Image | None = None,
    turns: bool = True,
    progress: ProgressCallback | None = None,
) -> sitk.AffineTransform:
    """Align ``moving`` to ``fixed`` globally by mutual information (see the module).

    Args:
        fixed: fixed image, intensities scaled to ``[0, 1]``.
        moving: moving image, intensities scaled to ``[0, 1]``, same dimension.
        method: ``"none"`` (identity), ``"moments"`` (centres of mass only), ``"rigid"`` or
            ``"affine"``.
        fixed_mask: voxels of the fixed image that count (non-zero), on its grid, or ``None``.
        moving_mask: voxels of the moving image that count, on its grid, or ``None``.
        turns: also search around each half-turn of :data:`TURNS_DEG` (``False``: trust
            the stored orientations).
        progress: told the name of each stage as it starts.

    Returns:
        An ``AffineTransform`` mapping fixed physical points (mm) to moving physical points.

    Raises:
        IntermodalError: an unknown method, or images of different dimension.
    """
    if method not in ALIGNMENT_METHODS:
        raise IntermodalError(f"--init must be one of {ALIGNMENT_METHODS}, not {method!r}")
    ndim = fixed.GetDimension()
    if moving.GetDimension() != ndim:
        raise IntermodalError(
            f"fixed image is {ndim}D but moving image is {moving.GetDimension()}D"
        )
    if method == "none":
        return sitk.AffineTransform(ndim)
    params, moments = _moments(fixed, moving, fixed_mask, moving_mask)
    if method == "moments":
        return params.transform(moments[0])
    rigid, affine = _optimised(
        fixed, moving, fixed_mask, moving_mask, params, moments, method != "rigid", turns,
        progress,
    )  # fmt: skip
    return affine if method == "affine" and affine is not None else rigid


def rigid_and_affine(
    fixed: sitk.Image,
    moving: sitk.Image,
    *,
    fixed_mask: sitk.Image | None = None,
    moving_mask: sitk.Image | None = None,
    turns: bool = True,
    progress: ProgressCallback | None = None,
) -> tuple[sitk.AffineTransform, sitk.AffineTransform | None]:
    """The rigid alignment, and the affine one started from it, for a caller to choose.

    The same stages as :func:`initial_alignment`, run once: ``"rigid"`` and ``"affine"``
    would each return one of these two. The affine is ``None`` when scaling and shear did not
    raise MI over the rigid result.

    Args:
        fixed: fixed image, intensities scaled to ``[0, 1]``.
        moving: moving image, intensities scaled to ``[0, 1]``, same dimension.
        fixed_mask: voxels of the fixed image that count (non-zero), on its grid, or ``None``.
        moving_mask: voxels of the moving image that count, on its grid, or ``None``.
        turns: also search around each half-turn of :data:`TURNS_DEG`.
        progress: told the name of each stage as it starts.

    Returns:
        ``(rigid, affine)``, each mapping fixed physical points (mm) to moving ones.

    Raises:
        IntermodalError: images of different dimension.
    """
    ndim = fixed.GetDimension()
    if moving.GetDimension() != ndim:
        raise IntermodalError(
            f"fixed image is {ndim}D but moving image is {moving.GetDimension()}D"
        )
    params, moments = _moments(fixed, moving, fixed_mask, moving_mask)
    return _optimised(
        fixed, moving, fixed_mask, moving_mask, params, moments, True, turns, progress
    )


def _moments(
    fixed: sitk.Image,
    moving: sitk.Image,
    fixed_mask: sitk.Image | None,
    moving_mask: sitk.Image | None,
) -> tuple[_Parameters, torch.Tensor]:
    """The parameterisation about the fixed centre of mass, and the centre-of-mass start."""
    ndim = fixed.GetDimension()
    fixed_centre = _centre_of_mass(fixed, fixed_mask)
    shift = _centre_of_mass(moving, moving_mask) - fixed_centre
    extent = np.asarray(fixed.GetSize()) * np.asarray(fixed.GetSpacing())
    params = _Parameters(ndim, fixed_centre, radius=float(np.linalg.norm(extent)) / 4)
    moments = torch.zeros(1, params.angles + ndim, dtype=torch.float64)
    moments[0, params.angles :] = torch.from_numpy(shift)
    return params, moments


def _optimised(
    fixed: sitk.Image,
    moving: sitk.Image,
    fixed_mask: sitk.Image | None,
    moving_mask: sitk.Image | None,
    params: _Parameters,
    moments: torch.Tensor,
    with_affine: bool,
    turns: bool,
    progress: ProgressCallback | None,
) -> tuple[sitk.AffineTransform, sitk.AffineTransform | None]:
    """Stages 2 and 3: the multi-start and the pyramid; then, if asked, the affine."""
    ndim = params.ndim
    with torch.no_grad():
        levels = [_as_level(fixed, moving, fixed_mask, moving_mask, s) for s in PYRAMID_MM]
    if progress:
        progress("rigid")
    with torch.no_grad():
        starts, stored = _starts(levels[0], params, moments, _translation_offsets(
            _data_extent(fixed, fixed_mask), _data_extent(moving, moving_mask)
        ), turns)  # fmt: skip
    batch, mi = _optimise(levels[0], params, starts, STEPS_PER_LEVEL[0], LEARNING_RATES[0])
    # the best start goes on to the finer levels, with the best turned one if MI prefers it
    best_start = [int(torch.argmax(mi[:stored]))]
    if stored < len(starts):
        turned = stored + int(torch.argmax(mi[stored:]))
        if mi[turned] > mi[best_start[0]]:
            best_start.append(turned)
    batch, mi = batch[best_start], mi[best_start]
    for level, steps, rate in zip(levels[1:], STEPS_PER_LEVEL[1:], LEARNING_RATES[1:], strict=True):
        batch, mi = _optimise(level, params, batch, steps, rate)
    best = batch[0]
    if len(batch) > 1 and mi[1] > mi[0]:
        candidates = [params.transform(row) for row in batch]
        # STRUCTURE_MM is the last level's spacing: its fixed image is the grid
        grid = levels[PYRAMID_MM.index(STRUCTURE_MM)].fixed_image
        distances = _structure_distances(grid, moving, fixed_mask, moving_mask, candidates)
        if distances[1] < distances[0]:
            best = batch[1]
    rigid = params.transform(best)
    if not with_affine:
        return rigid, None

    if progress:
        progress("affine")
    rigid_mi = float(mi.max())
    affine = torch.cat([best, torch.zeros(ndim * ndim, dtype=best.dtype)])[None]
    # the same pyramid and steps as the rigid search: Adam moves a parameter by at most about
    # its learning rate a step, so 20 steps of 0.5 at the fine level alone reach a scale of
    # only about 10 mm / radius (~ 1.1), short of another subject's size
    for level, steps, rate in zip(levels, STEPS_PER_LEVEL, LEARNING_RATES, strict=True):
        affine, affine_mi = _optimise(level, params, affine, steps, rate)
    # scaling and shear flatten MI's landscape; keep them only if they raise it
    if float(affine_mi[0]) > rigid_mi:
        return rigid, params.transform(affine[0])
    return rigid, None


def _structure_distances(
    grid: sitk.Image,
    moving: sitk.Image,
    fixed_mask: sitk.Image | None,
    moving_mask: sitk.Image | None,
    transforms: list[sitk.AffineTransform],
) -> list[float]:
    """The refinement's own similarity (MIND-SSC, :func:`intermodal.refinement.similarity_of`)
    of the fixed image and the moving image through each transform, at :data:`STRUCTURE_MM`,
    over the fixed mask where the moving image (and its mask) has data: lower is more alike.

    ``grid`` is the fixed image downsampled to :data:`STRUCTURE_MM` (a pyramid level's). The
    masks are thresholded after their nearest-neighbour resampling onto it, which gives the
    same values as before it, without a pass over a full-resolution image.
    """
    options = refinement.Options()
    still = torch.zeros((1, grid.GetDimension(), *grid.GetSize()[::-1]))

    def on_grid(image: sitk.Image, transform: sitk.Transform | None, linear: bool) -> torch.Tensor:
        interpolator = sitk.sitkLinear if linear else sitk.sitkNearestNeighbor
        return image_to_tensor(resample(image, grid, transform, interpolator=interpolator))

    def inside(mask: sitk.Image, transform: sitk.Transform | None) -> torch.Tensor:
        return (on_grid(mask, transform, linear=False) > 0).float()

    if fixed_mask is None:
        fixed_weight = torch.ones((1, 1, *grid.GetSize()[::-1]))
    else:
        fixed_weight = inside(fixed_mask, None)
    if moving_mask is None:  # the moving image's extent
        moving_mask = sitk.Image(moving.GetSize(), sitk.sitkUInt8) + 1
        moving_mask.CopyInformation(moving)
    moving_values = sitk.Cast(moving, sitk.sitkFloat32)
    distances = []
    for transform in transforms:
        images = refinement.Images(
            fixed=image_to_tensor(grid),
            moving=on_grid(moving_values, transform, linear=True),
            fixed_mask=fixed_weight,
            moving_mask=inside(moving_mask, transform),
        )
        features = refinement.describe(images, options)
        distances.append(refinement.similarity_of(features, still, options))
    return distances


def half_turn(transform: sitk.Transform) -> tuple[float, ...] | None:
    """The half-turn of :data:`TURNS_DEG` that ``transform``'s linear part is nearest to, or
    ``None`` when it is nearest to the stored orientation (the identity)."""
    ndim = transform.GetDimension()
    if not hasattr(transform, "GetMatrix"):
        return None
    matrix = np.asarray(transform.GetMatrix(), dtype=float).reshape(ndim, ndim)
    turns = TURNS_DEG[ndim]
    if not turns:
        return None
    rotations = _rotation(torch.tensor(np.radians(turns), dtype=torch.float64)).numpy()
    agreement = [np.trace(matrix)] + [float(np.trace(r.T @ matrix)) for r in rotations]
    best = int(np.argmax(agreement))
    return None if best == 0 else turns[best - 1]


__all__ = ["INIT_CHOICES", "TURNS_DEG", "half_turn", "initial_alignment", "rigid_and_affine"]
