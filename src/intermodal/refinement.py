"""Instance optimisation: a stationary velocity field refined by Adam on a masked similarity.

The similarity compares the fixed image with the moving image (already through the initial
affine, on the working grid) warped by ``exp(v)``. Only the *overlap* counts, as in ITK's
metrics: voxels inside the fixed mask (the fixed image's scanned data, its extent without the
working grid's padding, and a user mask) whose warped position lands inside the moving image's
field of view (and a user mask). The masks are weights, never differentiated: the optimiser
cannot gain by moving structures out of the overlap.

MIND-SSC descriptors are computed once, at full resolution, block-averaged for each pyramid
level (:class:`Features`), and the moving *descriptor* is warped, not re-described at every
step. The velocity lives on a grid coarser than the similarity's
(``velocity_stride``); every resize between grids is cell-centred
(:func:`intermodal.spatial.resize_displacement`, :func:`intermodal.spatial.downsample_image`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from intermodal.losses import (
    diffusion,
    log_jacobian_penalty,
    mind_ssc,
    ngf,
    parzen_mutual_information,
)
from intermodal.optim import Adam
from intermodal.spatial import (
    PointSampler,
    coarse_positions,
    downsample_image,
    gaussian_smooth,
    identity_grid,
    integrate_velocity,
    resize_displacement,
    sample_points,
    warp,
)
from intermodal.typing import Progress

SIMILARITY_CHOICES = ("mind", "ngf", "mi")
MI_BINS = 32
"""Bins per image of the refinement's mutual-information term, as in the NMI it is scored by."""


@dataclass
class Images:
    """The working-grid images of one registration, each ``(1, 1, *spatial)``.

    Attributes:
        fixed: fixed image in ``[0, 1]``.
        moving: moving image in ``[0, 1]``, resampled through the initial affine.
        fixed_mask: 1 where a fixed voxel counts, 0 where not (fractions at coarser levels).
        moving_mask: 1 where the moving image (through the affine) has data, 0 where not.
    """

    fixed: torch.Tensor
    moving: torch.Tensor
    fixed_mask: torch.Tensor
    moving_mask: torch.Tensor


@dataclass
class Features:
    """What the similarity compares at one pyramid level, each ``(1, C, *spatial)``.

    MIND-SSC descriptors are computed once, on the working grid, from the full-resolution
    images, and block-averaged for each coarser level, as ConvexAdam does (Siebert, Hansen and
    Heinrich, MICCAI 2021 Learn2Reg): a coarse level then still sees the fine texture, and the
    descriptors are computed once instead of once per level.

    Attributes:
        fixed: fixed features: ``channels`` MIND channels, then the intensity when an MI term
            is used (for ``"mi"`` and ``"ngf"`` the intensity alone).
        moving: the moving image's features, same layout.
        fixed_mask: the fixed mask (fractions at coarser levels).
        moving_mask: the moving field-of-view mask.
        channels: how many leading channels are MIND descriptors (0 for ``"mi"``/``"ngf"``).
    """

    fixed: torch.Tensor
    moving: torch.Tensor
    fixed_mask: torch.Tensor
    moving_mask: torch.Tensor
    channels: int

    @functools.cached_property
    def moving_at(self) -> PointSampler:
        """Samples the moving features and then the moving mask (its last channel) at points.

        Made once a level: the similarity's steps and the guard share its channel-last copy.
        """
        return PointSampler(self.moving, self.moving_mask)

    def level(self, factor: int) -> Features:
        """The features block-averaged by ``factor`` (a pyramid level)."""
        if factor == 1:
            return self
        pooled = (
            downsample_image(t, factor)
            for t in (self.fixed, self.moving, self.fixed_mask, self.moving_mask)
        )
        return Features(*pooled, channels=self.channels)  # fmt: skip


def describe(images: Images, options: Options) -> Features:
    """The features of ``images`` on the working grid for ``options.similarity``."""
    if options.similarity == "mind":
        fixed, moving = mind_ssc(images.fixed), mind_ssc(images.moving)
        channels = fixed.shape[1]
        if options.mi_weight > 0:
            fixed = torch.cat([fixed, images.fixed], 1)
            moving = torch.cat([moving, images.moving], 1)
    else:
        fixed, moving, channels = images.fixed, images.moving, 0
    return Features(fixed, moving, images.fixed_mask, images.moving_mask, channels)


@dataclass
class Options:
    """How the velocity is refined; see :class:`intermodal.registration.Settings`."""

    similarity: str = "mind"
    smoothness: float = 1.0
    learning_rate: float = 0.1
    integration_steps: int = 5
    velocity_smoothing: float = 0.0
    volume_penalty: float = 0.0
    sampling: float = 1.0
    max_samples: int | None = None
    mi_weight: float = 0.0
    seed: int = 0


def _unravel(index: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Flat (C-order) indices -> ``(len(shape), N)`` voxel indices.

    Speed workaround: ``torch.unravel_index``'s first call imports sympy, 0.55 s against 0.3 ms
    for this loop (fresh process, 2 shared CPU cores, measured 2026-12-07).
    """
    coordinates = []
    for size in reversed(shape):
        coordinates.append(index % size)
        index = index.div(size, rounding_mode="floor")
    return torch.stack(coordinates[::-1])


def _inside(positions: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """1 where ``(ndim, ...)`` voxel ``positions`` lie on the grid: in ``[-0.5, n - 0.5]``.

    That is the extent of the grid's cells (ITK's rule for a point inside an image): a point
    within half a voxel of the outer centres reads the edge voxel, as it would in ITK.
    """
    inside = torch.ones_like(positions[0])
    for axis, size in enumerate(shape):
        inside = inside * ((positions[axis] >= -0.5) & (positions[axis] <= size - 0.5))
    return inside


def similarity_loss(
    features: Features,
    options: Options,
    generator: torch.Generator | None = None,
    sampling: float | None = None,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function of a displacement on any coarser grid that scores the warped overlap.

    Args:
        features: one level's features (:func:`describe`, :meth:`Features.level`).
        options: the similarity, its sampling and the MI weight.
        generator: draws the sampled voxels (with ``sampling`` < 1).
        sampling: overrides ``options.sampling`` (1: every voxel of the fixed mask).

    Returns:
        ``loss(coarse)`` for a ``(1, ndim, *coarse)`` displacement in coarse voxels; lower is
        better. ``"mind"``: weighted mean squared MIND-SSC difference; ``"mi"``: minus the
        mutual information (nats); ``"ngf"``: the weighted NGF loss. With ``mi_weight`` > 0
        ``"mind"`` and ``"ngf"`` subtract that multiple of the images' mutual information.
    """
    sampling = options.sampling if sampling is None else sampling
    fixed = features.fixed
    shape = tuple(fixed.shape[2:])
    channels = features.channels
    mi_weight = 1.0 if options.similarity == "mi" else options.mi_weight
    # a whole-grid warp: the moving mask travels as one more channel of the moving features,
    # and the voxel positions give the weights (the sampled path has its points and sampler)
    whole_grid = options.similarity == "ngf" or sampling >= 1
    stacked = torch.cat([features.moving, features.moving_mask], 1) if whole_grid else None
    grid = identity_grid(shape, device=fixed.device, dtype=fixed.dtype) if whole_grid else None

    def overlap(displacement: torch.Tensor, warped_mask: torch.Tensor) -> torch.Tensor:
        inside = _inside(grid + displacement[0], shape)
        return (features.fixed_mask[0, 0] * warped_mask * inside).detach()

    if options.similarity == "ngf":

        def ngf_score(coarse: torch.Tensor) -> torch.Tensor:
            displacement = resize_displacement(coarse, shape)
            warped = warp(stacked, displacement)
            weight = overlap(displacement, warped[0, 1])
            loss = ngf(fixed, warped[:, :1], weights=weight[None, None])
            if mi_weight > 0:
                weights = weight.flatten()[None]
                mi = parzen_mutual_information(
                    fixed.flatten(1), warped[:, 0].flatten(1), MI_BINS, weights=weights
                )
                loss = loss - mi_weight * mi[0]
            return loss

        return ngf_score

    def score(fixed_values: torch.Tensor, warped: torch.Tensor, weight: torch.Tensor):
        """``(K, N)`` fixed and ``(K + 1, N)`` warped samples, ``(N,)`` weights -> the loss."""
        loss = fixed_values.new_zeros(())
        if channels:
            weighted, total = _mind_sums(fixed_values[:channels], warped[:channels], weight)
            loss = weighted / total.clamp_min(1e-8)
        if mi_weight > 0:
            mi = parzen_mutual_information(
                fixed_values[channels:], warped[channels:-1], MI_BINS,
                weights=weight.expand(fixed_values.shape[0] - channels, -1),
            )  # fmt: skip
            loss = loss - mi_weight * mi[0]
        return loss

    fixed_rows = fixed.flatten(2)[0]  # (K, voxels)
    if sampling >= 1:

        def full(coarse: torch.Tensor) -> torch.Tensor:
            displacement = resize_displacement(coarse, shape)
            warped = warp(stacked, displacement)
            weight = overlap(displacement, warped[0, -1])
            return score(fixed_rows, warped.flatten(2)[0], weight.flatten())

        return full

    candidates = torch.nonzero(features.fixed_mask.flatten() > 0).flatten()
    count = max(1, round(sampling * candidates.numel()))
    if options.max_samples is not None:
        count = min(count, options.max_samples)
    fixed_rows_t = fixed_rows.t().contiguous()  # (voxels, K): one row a voxel
    fixed_mask = features.fixed_mask.flatten()

    def sampled(coarse: torch.Tensor) -> torch.Tensor:
        pick = torch.randint(candidates.numel(), (count,), generator=generator, device=fixed.device)
        index = candidates[pick]
        points = _unravel(index, shape).to(coarse.dtype)
        coarse_shape = coarse.shape[2:]
        ratio = torch.tensor(
            [n / m for n, m in zip(shape, coarse_shape, strict=True)],
            device=coarse.device, dtype=coarse.dtype,
        ).view(-1, 1)  # fmt: skip
        displacement = sample_points(coarse, coarse_positions(points, shape, coarse_shape))[0]
        positions = points + displacement * ratio
        warped = features.moving_at(positions)[0]
        weight = (fixed_mask[index] * warped[-1] * _inside(positions, shape)).detach()
        return score(F.embedding(index, fixed_rows_t).t(), warped, weight)

    return sampled


def refine_velocity(
    features: Features,
    velocity: torch.Tensor,
    options: Options,
    *,
    steps: int,
    progress: Progress | None = None,
) -> torch.Tensor:
    """Adam on a stationary velocity field, starting from exactly ``velocity``.

    Minimises ``similarity(exp(v)) + smoothness * diffusion(exp(v)) + volume_penalty *
    mean(log det J^2)`` with ``v = v0 + G * w``: ``v0`` is the given velocity, ``G`` a
    Gaussian of ``velocity_smoothing`` voxels and ``w`` starts at 0, so the first step scores
    exactly the field it was given. The update is smoothed the way ANTs SyN and the demons
    smooth theirs, which keeps large deformations but not voxel-scale roughness.

    Args:
        features: the level's features (:meth:`Features.level`).
        velocity: ``(1, ndim, *coarse)`` starting velocity in voxels of its own (coarser) grid.
        options: similarity, weights, learning rate (coarse voxels per step, roughly).
        steps: Adam iterations.
        progress: callback ``("refine", step, steps)``.

    Returns:
        The refined velocity, same shape as ``velocity``, detached.
    """
    generator = torch.Generator(device=features.fixed.device).manual_seed(options.seed)
    score = similarity_loss(features, options, generator)
    start = velocity.detach()
    update = torch.zeros_like(start, requires_grad=True)
    optimizer = Adam(update, lr=options.learning_rate)
    for step in range(steps):
        optimizer.zero_grad()
        current = start + gaussian_smooth(update, options.velocity_smoothing)
        coarse = integrate_velocity(current, options.integration_steps)
        loss = score(coarse) + options.smoothness * diffusion(coarse)
        if options.volume_penalty > 0:
            loss = loss + options.volume_penalty * log_jacobian_penalty(coarse)
        loss.backward()
        optimizer.step()
        if progress:
            progress("refine", step + 1, steps)
    with torch.no_grad():
        return start + gaussian_smooth(update, options.velocity_smoothing)


def similarity_of(features: Features, velocity: torch.Tensor, options: Options) -> float:
    """The similarity (lower is better) of ``exp(velocity)`` on every voxel of the overlap.

    The guard's measure: the refinement's own similarity at one level, on every voxel of the
    fixed mask (not sampled), without regularisers. MIND alone is summed a slab at a time
    (:func:`_mind_by_slabs`), the same value at a fraction of the memory.
    """
    with torch.no_grad():
        coarse = integrate_velocity(velocity, options.integration_steps)
        if options.similarity == "mind" and options.mi_weight == 0:
            return _mind_by_slabs(features, coarse)
        return float(similarity_loss(features, options, sampling=1.0)(coarse))


SLAB_VOXELS = 1 << 18
"""Voxels a slab of :func:`_mind_by_slabs`: the guard's warped descriptors at full size take
about 200 MB more peak memory on the real pair's 2 mm grid (12 channels of 1.0 M voxels,
their squared differences and a copy of the moving ones)."""


def _mind_by_slabs(features: Features, coarse: torch.Tensor) -> float:
    """The ``"mind"`` loss of :func:`similarity_loss` on every voxel, a slab of rows at a time."""
    shape = tuple(features.fixed.shape[2:])
    channels = features.channels
    # no displacement (the guard's score of the initial alignment): every voxel samples
    # itself, so the moving features are read as they are, the same values
    still = not bool(coarse.any())
    displacement = None if still else resize_displacement(coarse, shape)[0]
    rows = max(1, SLAB_VOXELS // math.prod(shape[1:]))
    total = weights = 0.0
    for start in range(0, shape[0], rows):
        stop = min(start + rows, shape[0])
        if still:
            warped = features.moving[0, :channels, start:stop].flatten(1)
            weight = features.moving_mask[0, 0, start:stop].flatten()
        else:
            grid = identity_grid((stop - start, *shape[1:]), dtype=displacement.dtype)
            grid[0] += start
            positions = (grid + displacement[:, start:stop]).flatten(1)
            warped = features.moving_at(positions)[0]
            inside, warped = warped[-1], warped[:channels]
            weight = inside * _inside(positions, shape)
        weight = features.fixed_mask[0, 0, start:stop].flatten() * weight
        fixed = features.fixed[0, :channels, start:stop].flatten(1)
        weighted, weight_sum = _mind_sums(fixed, warped, weight)
        total += float(weighted)
        weights += float(weight_sum)
    return total / max(weights, 1e-8)


def _mind_sums(
    fixed: torch.Tensor, warped: torch.Tensor, weight: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The MIND loss's two sums over ``N`` voxels: the weighted squared descriptor difference
    (a mean over the ``(K, N)`` channels) and the weight; the loss is their ratio."""
    squared = (fixed - warped).pow(2).mean(0)
    return (squared * weight).sum(), weight.sum()


def level_schedule(
    pyramid: Sequence[int],
    refine: int,
    level_steps: Sequence[int] | None,
    working_shape: Sequence[int],
) -> list[tuple[int, int]]:
    """The refinement's ``(factor, steps)`` per pyramid level, coarse to fine.

    A level whose grid would be under 8 voxels along an axis is skipped. Without
    ``level_steps`` the ``refine`` steps are shared equally between the levels kept (the
    finest takes the remainder); with it each level keeps its own count, and a skipped level's
    steps go to the next level kept (to the last one kept, after it). If no level is kept, the
    working grid itself takes every step.
    """
    kept = [f for f in pyramid if min(working_shape) // f >= 8]
    if level_steps is None:
        levels = kept or [1]
        share, extra = divmod(refine, len(levels))
        return list(zip(levels, [share] * (len(levels) - 1) + [share + extra]))
    if not kept:
        return [(1, sum(level_steps))]
    schedule: list[tuple[int, int]] = []
    carried = 0
    for factor, steps in zip(pyramid, level_steps, strict=True):
        if factor in kept:
            schedule.append((factor, steps + carried))
            carried = 0
        else:
            carried += steps
    factor, steps = schedule[-1]
    schedule[-1] = (factor, steps + carried)
    return schedule


def refine_on_pyramid(
    features: Features,
    velocity: torch.Tensor,
    options: Options,
    schedule: Sequence[tuple[int, int]],
    *,
    velocity_stride: int,
    coarse_level_velocity: bool = True,
    progress: Progress | None = None,
) -> torch.Tensor:
    """Refine ``velocity`` level by level, coarse to fine.

    At a level coarser than the velocity grid (``factor > velocity_stride``) with
    ``coarse_level_velocity`` the velocity is refined on that level's grid: the same field in
    fewer unknowns, its step and smoothing kept in millimetres.

    Args:
        features: the working grid's features (:func:`describe`).
        velocity: ``(1, ndim, *velocity grid)``: the working grid divided by
            ``velocity_stride``, in its voxels.
        options: see :class:`Options`; its learning rate and smoothing are for the velocity
            grid and are rescaled at coarser levels.
        schedule: ``(factor, steps)`` per level, from :func:`level_schedule`.
        velocity_stride: the velocity grid's subsampling of the working grid.
        coarse_level_velocity: see above.
        progress: ``("refine", done, total)`` over all levels.

    Returns:
        The refined velocity on the velocity grid.
    """
    working_shape = list(features.fixed.shape[2:])
    velocity_shape = [n // velocity_stride for n in working_shape]
    total = sum(steps for _, steps in schedule)
    done = 0
    for factor, steps in schedule:
        if steps == 0:
            continue
        stride = max(velocity_stride, factor) if coarse_level_velocity else velocity_stride
        velocity = resize_displacement(velocity, [n // stride for n in working_shape])
        scale = velocity_stride / stride
        level_options = Options(
            **{
                **options.__dict__,
                "learning_rate": options.learning_rate * scale,
                "velocity_smoothing": options.velocity_smoothing * scale,
                "seed": options.seed + factor,
            }
        )

        def level_progress(stage: str, step: int, _total: int, offset: int = done) -> None:
            if progress:
                progress(stage, offset + step, total)

        velocity = refine_velocity(
            features.level(factor), velocity, level_options, steps=steps, progress=level_progress
        )
        done += steps
    return resize_displacement(velocity, velocity_shape)


__all__ = [
    "SIMILARITY_CHOICES",
    "Features",
    "Images",
    "Options",
    "describe",
    "level_schedule",
    "refine_on_pyramid",
    "refine_velocity",
    "similarity_loss",
    "similarity_of",
]
