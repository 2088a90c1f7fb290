"""Classical registration with SimpleITK: initial alignment and a B-spline baseline.

Every transform returned here maps *fixed* physical points to *moving* physical points, the
direction SimpleITK's ``Resample`` uses, so that ``Resample(moving, fixed, transform)`` puts the
moving image on the fixed grid.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import SimpleITK as sitk

from intermodal.errors import IntermodalError
from intermodal.presets import ALIGNMENT_METHODS

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[str], None]


def _mattes_method(
    *,
    bins: int = 32,
    sampling: float = 0.1,
    shrink: tuple[int, ...] = (4, 2, 1),
    smooth: tuple[float, ...] = (2.0, 1.0, 0.0),
    iterations: int = 200,
    learning_rate: float = 1.0,
    min_step: float = 1e-3,
    seed: int = 0,
    threads: int | None = None,
    scales: bool = True,
) -> sitk.ImageRegistrationMethod:
    method = sitk.ImageRegistrationMethod()
    if threads is not None:
        method.SetNumberOfThreads(threads)
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=bins)
    method.SetMetricSamplingStrategy(method.RANDOM)
    # ITK reads seed 0 as "seed from the wall clock" (sitk.sitkWallClock), so shift by one.
    method.SetMetricSamplingPercentage(sampling, seed + 1)
    method.SetInterpolator(sitk.sitkLinear)
    # The step halves whenever the gradient turns back, and random sampling makes it turn
    # back often; it stops below min_step (in physical-shift units, about mm). 1e-3 instead
    # of 1e-4 took half the time in 2D and two thirds in 3D, with the same Dice on the
    # tuning pairs (benchmarks/RESULTS.md, section affine_schedule).
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=learning_rate,
        minStep=min_step,
        numberOfIterations=iterations,
        relaxationFactor=0.5,
        gradientMagnitudeTolerance=1e-6,
    )
    if scales:
        method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel(list(shrink))
    method.SetSmoothingSigmasPerLevel(list(smooth))
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    return method


def downsample(image: sitk.Image, spacing_mm: float) -> sitk.Image:
    """Average ``image`` over whole blocks of voxels so that its spacing nears ``spacing_mm``.

    Axes already at that spacing or coarser are left alone, and every axis keeps at least two
    voxels (a small image is not shrunk to nothing). Block averaging keeps the physical extent
    and anti-aliases, which is what a global MI alignment needs from its input.
    """
    factors = [
        max(1, min(int(spacing_mm / s + 1e-6), n // 2))
        for s, n in zip(image.GetSpacing(), image.GetSize(), strict=True)
    ]
    if all(f == 1 for f in factors):
        return image
    return sitk.BinShrink(image, factors)


@contextmanager
def _single_threaded() -> Iterator[None]:
    """Run ITK filters and metrics on one thread (some ignore the per-object setting)."""
    previous = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(previous)


def initial_alignment(
    fixed: sitk.Image,
    moving: sitk.Image,
    method: str = "affine",
    *,
    seed: int = 0,
    spacing_mm: float | None = 4.0,
    min_step: float = 1e-3,
    progress: ProgressCallback | None = None,
) -> sitk.Transform:
    """Align ``moving`` to ``fixed`` globally by Mattes mutual information.

    It runs on one ITK thread: with several, the metric's partial sums arrive in a varying
    order and the result changes from run to run. On the 4 mm images this costs little.

    The stages build on each other: image moments give a centred translation; ``rigid`` then
    optimises a rotation and translation; ``affine`` starts from that rigid result and frees
    scaling and shear. Each optimisation runs over a three-level pyramid (shrink 4, 2, 1).

    Args:
        fixed: fixed image, intensities scaled to ``[0, 1]``.
        moving: moving image, intensities scaled to ``[0, 1]``.
        method: ``"none"``, ``"moments"``, ``"rigid"`` or ``"affine"``.
        seed: seed of the metric's random sampling, so results repeat.
        spacing_mm: the images are first block-averaged to about this spacing (a global
            transform needs no finer detail, and it makes the MI optimisation several times
            faster); ``None`` keeps the native grids.
        min_step: the optimiser stops once its step falls below this (physical-shift units,
            about mm); smaller runs longer for little gain.
        progress: optional callback told the name of each stage as it starts.

    Returns:
        An ``AffineTransform`` mapping fixed physical points (mm) to moving physical points.

    Raises:
        IntermodalError: for an unknown method or images of different dimension.
    """
    with _single_threaded():
        return _initial_alignment(fixed, moving, method, seed, spacing_mm, min_step, progress)


def _initial_alignment(
    fixed: sitk.Image,
    moving: sitk.Image,
    method: str,
    seed: int,
    spacing_mm: float | None,
    min_step: float,
    progress: ProgressCallback | None,
) -> sitk.Transform:
    if method not in ALIGNMENT_METHODS:
        raise IntermodalError(f"--init must be one of {ALIGNMENT_METHODS}, not {method!r}")
    if not min_step > 0:
        raise IntermodalError(f"the alignment's minimum step must be positive, not {min_step}")
    ndim = fixed.GetDimension()
    if moving.GetDimension() != ndim:
        raise IntermodalError(
            f"fixed image is {ndim}D but moving image is {moving.GetDimension()}D"
        )
    affine = sitk.AffineTransform(ndim)
    if method == "none":
        return affine

    fixed = sitk.Cast(fixed, sitk.sitkFloat32)
    moving = sitk.Cast(moving, sitk.sitkFloat32)
    if spacing_mm is not None:
        fixed, moving = downsample(fixed, spacing_mm), downsample(moving, spacing_mm)
    rigid_type = sitk.Euler3DTransform() if ndim == 3 else sitk.Euler2DTransform()
    rigid = sitk.CenteredTransformInitializer(
        fixed, moving, rigid_type, sitk.CenteredTransformInitializerFilter.MOMENTS
    )
    if method != "moments":
        if progress:
            progress("rigid")
        # A denser sample than the affine stage: with 10% the rotation stalls short of the
        # answer on the phantom (measured 10 of 15 degrees), with 25% it reaches it.
        registration = _mattes_method(seed=seed, sampling=0.25, min_step=min_step, threads=1)
        registration.SetInitialTransform(rigid, inPlace=True)
        registration.Execute(fixed, moving)
    affine.SetCenter(rigid.GetCenter())
    affine.SetMatrix(rigid.GetMatrix())
    affine.SetTranslation(rigid.GetTranslation())
    if method == "affine":
        if progress:
            progress("affine")
        rigid_cost = _mattes_cost(fixed, moving, affine)
        candidate = sitk.AffineTransform(affine)
        registration = _mattes_method(
            seed=seed, iterations=100, learning_rate=0.1, min_step=min_step, threads=1
        )
        registration.SetInitialTransform(candidate, inPlace=True)
        registration.Execute(fixed, moving)
        # Scaling and shear make MI's landscape flatter; a random-sampled optimiser can wander
        # off. Keep the affine result only if it beats the rigid one on the full image.
        if _mattes_cost(fixed, moving, candidate) < rigid_cost:
            affine = candidate
        else:
            logger.info("affine stage did not improve Mattes MI over rigid; keeping rigid")
    return affine


def _mattes_cost(fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform) -> float:
    """Mattes MI cost (lower is better) of ``transform`` over every fixed voxel."""
    method = sitk.ImageRegistrationMethod()
    method.SetNumberOfThreads(1)
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    method.SetMetricSamplingStrategy(method.NONE)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetInitialTransform(transform, inPlace=False)
    return float(method.MetricEvaluate(fixed, moving))


def bspline_registration(
    fixed: sitk.Image,
    moving: sitk.Image,
    initial: sitk.Transform,
    *,
    mesh_spacing_mm: float = 40.0,
    iterations: int = 100,
    metric_spacing_mm: float | None = None,
    seed: int = 0,
    threads: int | None = None,
) -> sitk.Transform:
    """Deformable B-spline registration by Mattes MI on top of ``initial`` (a baseline).

    Args:
        fixed: fixed image, intensities in ``[0, 1]``.
        moving: moving image, intensities in ``[0, 1]``.
        initial: fixed -> moving transform to start from (kept fixed, composed first).
        mesh_spacing_mm: approximate control-point spacing in mm.
        iterations: L-BFGS-B iterations per pyramid level.
        metric_spacing_mm: if given, both images are block-averaged to about this spacing
            before the metric sees them (see :func:`downsample`); the control grid does not
            change, so a mesh several times coarser loses little and the run is much faster.
        seed: metric sampling seed.
        threads: ITK threads for the registration; ``None`` uses every core.

    Returns:
        A composite transform (``initial`` then the B-spline), fixed -> moving.
    """
    ndim = fixed.GetDimension()
    mesh = [
        max(1, round(n * s / mesh_spacing_mm)) for n, s in zip(fixed.GetSize(), fixed.GetSpacing())
    ]
    bspline = sitk.BSplineTransformInitializer(fixed, mesh, order=3)
    # No physical-shift scales: L-BFGS-B does not use them (ITK warns so on stderr, once per
    # level), and estimating them is work per B-spline coefficient. With them, on a 96x96x80
    # synthetic CT, 100 and 30 iterations both took about 100 s, so most of the time was not
    # the optimisation; a clean timing without them is still to be taken on a quiet machine.
    registration = _mattes_method(
        seed=seed, shrink=(2, 1), smooth=(1.0, 0.0), threads=threads, scales=False
    )
    registration.SetOptimizerAsLBFGSB(
        gradientConvergenceTolerance=1e-5,
        numberOfIterations=iterations,
        maximumNumberOfCorrections=5,
    )
    registration.SetMovingInitialTransform(initial)
    registration.SetInitialTransform(bspline, inPlace=True)
    if metric_spacing_mm is not None:
        fixed, moving = downsample(fixed, metric_spacing_mm), downsample(moving, metric_spacing_mm)
    registration.Execute(sitk.Cast(fixed, sitk.sitkFloat32), sitk.Cast(moving, sitk.sitkFloat32))
    composite = sitk.CompositeTransform(ndim)
    composite.AddTransform(initial)
    composite.AddTransform(bspline)
    return composite
