"""register(fixed, moving) -> RegistrationResult: the one high-level entry.

The contract: for every fixed physical point ``p`` (mm), ``T(p) = A(p + d(p))`` is the matching
point of the moving image, where ``A`` is the initial affine and ``d`` the deformable
displacement field on the fixed grid. ``warped = moving ∘ T`` sampled on the fixed grid.

Stages: intensity scaling per modality; global alignment by Mattes MI; resampling onto a working
grid (the fixed extent at the working spacing); a stationary velocity field from the network
(or zero) refined by test-time Adam on a modality-independent similarity; integration by
scaling and squaring; conversion of the voxel displacement to millimetres on the fixed grid.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from dataclasses import field as dataclass_field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch

from intermodal import __version__, classical, preprocess
from intermodal.errors import IntermodalError
from intermodal.io import displacement_to_image, geometry, image_to_tensor
from intermodal.losses import (
    diffusion,
    log_jacobian_penalty,
    mind_ssc,
    ngf,
    nmi,
    parzen_mutual_information,
)
from intermodal.metrics import LOG_JACOBIAN_CLIP, jacobian_determinant
from intermodal.models import resolve_model
from intermodal.optim import Adam
from intermodal.presets import PRESETS
from intermodal.spatial import (
    gaussian_smooth,
    integrate_velocity,
    physical_to_voxel,
    resize_displacement,
    sample_points,
    voxel_to_physical,
    warp,
)

logger = logging.getLogger(__name__)

SIMILARITY_CHOICES = ("mind", "ngf", "mi")
# bins per image of the refinement's mutual-information term, as in the NMI it is scored by
MI_BINS = 32
DEVICE_CHOICES = ("auto", "cpu", "cuda")

# Progress callback: (stage, step, total). total is 0 for a stage without steps.
Progress = Callable[[str, int, int], None]


@dataclass
class Settings:
    """Everything that decides a registration; recorded in ``report.json``.

    Attributes:
        model: ``"auto"`` (the bundled model for the inputs' dimension, the default), a
            bundled model's name, the path of a ``.safetensors`` model, or ``None`` (or
            ``"none"``) for refinement alone; see :mod:`intermodal.models`.
        refine: test-time optimisation steps on the velocity field (0 disables it).
        init: initial alignment, one of :data:`intermodal.classical.INIT_CHOICES`.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        spacing: working spacing in mm for the refinement and the outputs (``None``: 2 mm in
            3D, native in 2D); a model's network always runs at its own trained spacing.
        fixed_modality: ``"ct"``, ``"mr"`` or ``"auto"``.
        moving_modality: ``"ct"``, ``"mr"`` or ``"auto"``.
        hu_window: CT clipping window in HU.
        mr_percentiles: MR percentiles mapped to 0 and 1.
        similarity: refinement similarity, ``"mind"`` (MIND-SSC), ``"ngf"`` or ``"mi"``
            (minus the mutual information alone, the Parzen term of ``mi_weight`` at weight 1).
        smoothness: weight of the diffusion regulariser on the displacement (voxels^2).
        learning_rate: Adam step on the velocity, in coarse-grid voxels.
        velocity_stride: the velocity lives on the working grid subsampled by this factor.
        velocity_smoothing: the refined velocity is a Gaussian-smoothed field, sigma in
            velocity-grid voxels (0: no smoothing); see :func:`refine_velocity`.
        volume_penalty: weight of the mean squared log Jacobian determinant (local volume
            change), the quantity whose spread SDlogJ measures.
        sampling: fraction of the working grid's voxels, drawn afresh at every step, at which
            the MIND or MI similarity is evaluated (1: all of them; NGF always uses all);
            smaller is faster.
        mi_weight: weight of a mutual-information term (Parzen histogram of the two images'
            intensities, nats) subtracted from the ``"mind"`` or ``"ngf"`` similarity at the
            same voxels; 0 leaves it out. Not used with ``"mi"``, which is that term alone.
        pyramid: refinement levels, as factors by which the working grid is subsampled, coarse
            to fine; the ``refine`` steps are shared equally between them.
        level_steps: steps at each level of ``pyramid``, coarse to fine, instead of ``refine``
            shared equally (as ANTs' ``--convergence [40x20x0]`` gives its iterations per
            level); ``None`` shares ``refine``. When given, its sum is the refinement's step
            count and ``refine`` is not used. A level skipped for a small image (see
            :func:`level_schedule`) passes its steps to the next level kept.
        coarse_level_velocity: at a pyramid level whose factor exceeds ``velocity_stride``
            the velocity is refined on that level's grid instead (learning rate and
            ``velocity_smoothing`` scaled so that they keep their size in millimetres), and
            resampled onto the finer grid for the next level; fewer unknowns, same field. On
            the tuning pairs: the same Dice, 0.9x the time (RESULTS.md, tuning_*_levels).
        integration_steps: scaling-and-squaring steps (5: on the tuning pairs 7 gave the same
            Dice in 2D and 3D, more slowly; benchmarks/RESULTS.md, tuning_3d_levels).
        seed: seed for every random choice (metric sampling, torch).
    """

    model: str | None = "auto"
    refine: int = 90
    init: str = "affine"
    device: str = "auto"
    spacing: float | None = None
    fixed_modality: str = "auto"
    moving_modality: str = "auto"
    hu_window: tuple[float, float] = preprocess.DEFAULT_HU_WINDOW
    mr_percentiles: tuple[float, float] = preprocess.DEFAULT_MR_PERCENTILES
    similarity: str = "mind"
    smoothness: float = 1.0
    learning_rate: float = 0.1
    velocity_stride: int = 2
    velocity_smoothing: float = 2.0
    volume_penalty: float = 0.0
    sampling: float = 1.0
    mi_weight: float = 0.0
    pyramid: tuple[int, ...] = (4, 2, 1)
    level_steps: tuple[int, ...] | None = None
    coarse_level_velocity: bool = True
    integration_steps: int = 5
    seed: int = 0

    @property
    def refine_steps(self) -> int:
        """The refinement's step count: the sum of ``level_steps`` if given, else ``refine``."""
        return self.refine if self.level_steps is None else sum(self.level_steps)

    def validate(self) -> None:
        """Raise :class:`IntermodalError` for any setting out of range."""
        if self.refine < 0:
            raise IntermodalError(f"--refine must be 0 or more steps, not {self.refine}")
        if self.init not in classical.INIT_CHOICES:
            raise IntermodalError(
                f"--init must be one of {classical.INIT_CHOICES}, not {self.init!r}"
            )
        if self.device not in DEVICE_CHOICES:
            raise IntermodalError(f"--device must be one of {DEVICE_CHOICES}, not {self.device!r}")
        if self.similarity not in SIMILARITY_CHOICES:
            raise IntermodalError(
                f"similarity must be one of {SIMILARITY_CHOICES}, not {self.similarity!r}"
            )
        if self.spacing is not None and not self.spacing > 0:
            raise IntermodalError(f"--spacing must be positive (mm), not {self.spacing}")
        if not 0 <= self.velocity_smoothing <= 8:
            raise IntermodalError(
                f"velocity smoothing must be 0 to 8 voxels, not {self.velocity_smoothing}"
            )
        if not self.volume_penalty >= 0:
            raise IntermodalError(f"volume penalty must be 0 or more, not {self.volume_penalty}")
        if not 0 <= self.mi_weight <= 100:
            raise IntermodalError(f"MI weight must be 0 to 100, not {self.mi_weight}")
        if not 0 < self.sampling <= 1:
            raise IntermodalError(
                f"similarity sampling must be a fraction in (0, 1], not {self.sampling}"
            )
        if self.velocity_stride not in (1, 2, 4):
            raise IntermodalError(f"velocity stride must be 1, 2 or 4, not {self.velocity_stride}")
        if not self.pyramid or any(f not in (1, 2, 4, 8) for f in self.pyramid):
            raise IntermodalError(
                f"pyramid levels must be factors among 1, 2, 4, 8, not {self.pyramid}"
            )
        if (
            isinstance(self.integration_steps, bool)
            or not isinstance(self.integration_steps, int)
            or not 0 <= self.integration_steps <= 10
        ):
            raise IntermodalError(
                f"integration steps must be a whole number from 0 to 10, not "
                f"{self.integration_steps!r}"
            )
        if self.level_steps is not None and (
            len(self.level_steps) != len(self.pyramid)
            or any(isinstance(n, bool) or not isinstance(n, int) or n < 0 for n in self.level_steps)
        ):
            raise IntermodalError(
                f"level steps must be one whole number of 0 or more per pyramid level "
                f"{tuple(self.pyramid)}, not {self.level_steps}"
            )
        if (self.model is None or self.model.lower() == "none") and self.refine_steps == 0:
            raise IntermodalError("--model none with --refine 0 would do no deformable step")


def preset_settings(name: str = "default", ndim: int = 3, **overrides: Any) -> Settings:
    """The :class:`Settings` of the preset ``name`` for ``ndim``-D images, then ``overrides``.

    Example: ``preset_settings("fast", 3, device="cpu")``. Overrides win over the preset.

    Raises:
        IntermodalError: an unknown preset, a dimension other than 2 or 3, or an unknown
            setting among the overrides.
    """
    if name not in PRESETS:
        raise IntermodalError(f"unknown preset {name!r}; presets are {', '.join(PRESETS)}")
    if ndim not in (2, 3):
        raise IntermodalError(f"presets are for 2D or 3D images, not {ndim}D")
    return settings_from_mapping({**PRESETS[name][ndim], **overrides})


@dataclass
class RegistrationResult:
    """What :func:`register` returns. Every image is on the fixed image's own grid.

    The deformable part is kept on the working grid, where it was computed (``field``,
    ``inverse_field``): the transform interpolates it linearly there, exactly as it would
    interpolate it after resampling onto the fixed grid, at a fraction of the memory on a
    large CT. ``displacement`` and ``inverse_displacement`` give it on the fixed grid.

    Attributes:
        fixed: the fixed image as read.
        moving: the moving image as read.
        affine: the initial transform, fixed -> moving physical points.
        field: deformable part, a float64 vector image of LPS mm on the working grid.
        inverse_field: its inverse (negated velocity), same layout.
        transform: ``affine`` after ``field``, as one ITK composite transform.
        warped: the moving image resampled through ``transform``.
        jacobian: determinant of the deformable part's Jacobian on the fixed grid (float32).
        report: inputs, settings, timings and quality figures (JSON-serialisable).
    """

    fixed: sitk.Image
    moving: sitk.Image
    affine: sitk.Transform
    field: sitk.Image
    inverse_field: sitk.Image
    transform: sitk.CompositeTransform
    warped: sitk.Image
    jacobian: sitk.Image
    report: dict[str, Any] = dataclass_field(default_factory=dict)
    fixed_normalized: sitk.Image | None = None
    moving_normalized: sitk.Image | None = None

    @property
    def displacement(self) -> sitk.Image:
        """The deformable part on the fixed grid: float64 vector image of LPS mm.

        Made on each access (24 bytes per voxel in 3D), in the pixel type that
        ``sitk.DisplacementFieldTransform`` takes; :func:`intermodal.report.save_result`
        writes it to a file without ever holding it whole.
        """
        return _field_on(self.field, self.fixed)

    @property
    def inverse_displacement(self) -> sitk.Image:
        """The inverse of :attr:`displacement`, on the fixed grid, made on each access."""
        return _field_on(self.inverse_field, self.fixed)

    def warp_image(self, image: sitk.Image, *, labels: bool = False) -> sitk.Image:
        """Apply the transform to another image defined in the moving image's space."""
        return apply_transform(self.transform, self.fixed, image, labels=labels)

    def map_points(self, points: np.ndarray) -> np.ndarray:
        """Map fixed-space points ``(N, ndim)`` in mm to moving-space points in mm."""
        return map_points(self.transform, points)


def apply_transform(
    transform: sitk.Transform, reference: sitk.Image, image: sitk.Image, *, labels: bool = False
) -> sitk.Image:
    """Resample ``image`` onto ``reference``'s grid through ``transform`` (fixed -> moving).

    Linear interpolation with the image's minimum outside the field of view, or nearest
    neighbour with background 0 for label maps (``labels=True``, integer values kept).
    """
    if image.GetDimension() != reference.GetDimension():
        raise IntermodalError(
            f"image is {image.GetDimension()}D but the transform's fixed image is "
            f"{reference.GetDimension()}D"
        )
    if labels:
        return sitk.Resample(image, reference, transform, sitk.sitkNearestNeighbor, 0.0)
    low = float(sitk.GetArrayViewFromImage(image).min())
    return sitk.Resample(image, reference, transform, sitk.sitkLinear, low, image.GetPixelID())


def map_points(transform: sitk.Transform, points: np.ndarray) -> np.ndarray:
    """Map points ``(N, ndim)`` (mm) through ``transform``; returns the same shape."""
    points = np.asarray(points, dtype=np.float64)
    return np.array([transform.TransformPoint(tuple(p)) for p in points]).reshape(points.shape)


def choose_device(requested: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA without it is an error."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise IntermodalError("--device cuda was asked for, but no CUDA device is available")
    return torch.device(requested)


def jacobian_statistics(jacobian: sitk.Image, mask: sitk.Image | None = None) -> dict[str, float]:
    """Folding and smoothness of a Jacobian determinant image.

    Returns:
        ``nonpositive_fraction`` (share of voxels with det <= 0), ``sdlogj`` (standard deviation
        of log det, determinants clipped at 1e-9 as Learn2Reg does), and min/max/mean.
    """
    values = sitk.GetArrayViewFromImage(jacobian).ravel()
    if mask is not None:
        values = values[sitk.GetArrayViewFromImage(mask).ravel() > 0]
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


_STAT_CHUNK = 1 << 22


def _unravel(index: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Flat (C-order) indices -> ``(len(shape), N)`` voxel indices.

    ``torch.unravel_index`` does the same, but its first call imports sympy (0.66 s).
    """
    coordinates = []
    for size in reversed(shape):
        coordinates.append(index % size)
        index = index.div(size, rounding_mode="floor")
    return torch.stack(coordinates[::-1])


def _similarity_loss(
    similarity: str,
    fixed: torch.Tensor,
    moving: torch.Tensor,
    sampling: float = 1.0,
    generator: torch.Generator | None = None,
    mi_weight: float = 0.0,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function of the coarse displacement that scores ``moving`` warped against ``fixed``.

    MIND descriptors are computed once and the moving *descriptor* is warped, which gives the
    same optimum as re-describing the warped image at a fraction of the cost. With
    ``sampling`` < 1 (MIND or MI, not NGF) each call compares the descriptors at a fresh random
    ``sampling`` fraction of the voxels instead of all of them, as ANTs and elastix sample
    their metrics: the warp, the costliest step, shrinks in proportion. ``"mi"`` scores minus
    the mutual information alone; with ``"mind"`` or ``"ngf"``, ``mi_weight`` > 0
    subtracts that multiple of the images' mutual information (:data:`MI_BINS`-bin Parzen
    histogram, nats) at the same voxels: the moving image is warped as one more channel of
    its descriptor, so the term costs little.
    """
    shape = tuple(fixed.shape[2:])
    if similarity == "ngf":

        def ngf_score(coarse: torch.Tensor) -> torch.Tensor:
            warped = warp(moving, resize_displacement(coarse, shape))
            loss = ngf(fixed, warped)
            if mi_weight > 0:
                mi = parzen_mutual_information(fixed.flatten(1), warped.flatten(1), MI_BINS)
                loss = loss - mi_weight * mi.mean()
            return loss

        return ngf_score
    if similarity == "mi":
        fixed_desc, moving_desc, channels, mi_weight = fixed, moving, 0, 1.0
    else:
        fixed_desc = mind_ssc(fixed)
        moving_desc = mind_ssc(moving)
        channels = fixed_desc.shape[1]
        if mi_weight > 0:
            fixed_desc = torch.cat([fixed_desc, fixed], 1)
            moving_desc = torch.cat([moving_desc, moving], 1)

    def score(fixed_values: torch.Tensor, warped_values: torch.Tensor) -> torch.Tensor:
        """``(C, N)`` descriptor (and intensity) samples -> the loss."""
        loss = fixed_values.new_zeros(())
        if channels:
            loss = (fixed_values[:channels] - warped_values[:channels]).pow(2).mean()
        if mi_weight > 0:
            mi = parzen_mutual_information(
                fixed_values[channels:], warped_values[channels:], MI_BINS
            )
            loss = loss - mi_weight * mi[0]
        return loss

    if sampling >= 1:
        fixed_all = fixed_desc.flatten(2)[0]
        return lambda coarse: score(
            fixed_all, warp(moving_desc, resize_displacement(coarse, shape)).flatten(2)[0]
        )
    voxels = math.prod(shape)
    count = max(1, round(sampling * voxels))
    fixed_rows = fixed_desc.flatten(2)[0].t().contiguous()  # (voxels, K): one row a voxel

    def sampled(coarse: torch.Tensor) -> torch.Tensor:
        index = torch.randint(voxels, (count,), generator=generator, device=fixed.device)
        points = _unravel(index, shape).to(coarse.dtype)
        # the coarse field at those points, in coarse voxels, then in working-grid voxels
        ratio = [(c - 1) / (n - 1) for c, n in zip(coarse.shape[2:], shape, strict=True)]
        ratio = torch.tensor(ratio, device=coarse.device, dtype=coarse.dtype).view(-1, 1)
        displacement = sample_points(coarse, points * ratio)[0] / ratio
        warped = sample_points(moving_desc, points + displacement)
        return score(fixed_rows.index_select(0, index).t(), warped[0])

    return sampled


def level_schedule(settings: Settings, working_shape: Sequence[int]) -> list[tuple[int, int]]:
    """The refinement's ``(factor, steps)`` per pyramid level, coarse to fine.

    A level whose grid would be under 8 voxels along an axis is skipped. Without
    ``settings.level_steps`` the ``refine`` steps are shared equally between the levels kept
    (the finest takes the remainder); with it each level keeps its own count, and a skipped
    level's steps go to the next level kept (to the last one kept, after it). If no level is
    kept, the working grid itself takes every step.
    """
    kept = [f for f in settings.pyramid if min(working_shape) // f >= 8]
    if settings.level_steps is None:
        levels = kept or [1]
        share, extra = divmod(settings.refine, len(levels))
        return list(zip(levels, [share] * (len(levels) - 1) + [share + extra]))
    if not kept:
        return [(1, sum(settings.level_steps))]
    schedule: list[tuple[int, int]] = []
    carried = 0
    for factor, steps in zip(settings.pyramid, settings.level_steps, strict=True):
        if factor in kept:
            schedule.append((factor, steps + carried))
            carried = 0
        else:
            carried += steps
    factor, steps = schedule[-1]
    schedule[-1] = (factor, steps + carried)
    return schedule


def refine_velocity(
    fixed: torch.Tensor,
    moving: torch.Tensor,
    velocity: torch.Tensor,
    *,
    steps: int,
    similarity: str = "mind",
    smoothness: float = 1.0,
    learning_rate: float = 0.1,
    integration_steps: int = 5,
    velocity_smoothing: float = 0.0,
    volume_penalty: float = 0.0,
    sampling: float = 1.0,
    mi_weight: float = 0.0,
    seed: int = 0,
    progress: Progress | None = None,
) -> torch.Tensor:
    """Instance optimisation: Adam on a stationary velocity field.

    Minimises ``similarity(fixed, moving ∘ (id + exp(v))) + smoothness * diffusion(exp(v))``.
    The velocity and its integration live on a coarse grid (fewer unknowns, smoother fields);
    the displacement is upsampled to the working grid, where the similarity is evaluated.
    With ``velocity_smoothing`` > 0 the velocity is ``v = G * w`` for a Gaussian ``G`` and
    Adam moves ``w`` (started at the given velocity): the update is smoothed the way ANTs
    SyN and the demons smooth theirs, which keeps large deformations but not the voxel-scale
    roughness that a stronger diffusion weight would remove only by shrinking everything.

    Args:
        fixed: ``(1, 1, *spatial)`` fixed image in ``[0, 1]`` on the working grid.
        moving: ``(1, 1, *spatial)`` moving image in ``[0, 1]`` on the same grid.
        velocity: ``(1, ndim, *coarse)`` starting velocity in coarse-grid voxels.
        steps: Adam iterations.
        similarity: ``"mind"``, ``"ngf"`` or ``"mi"``.
        smoothness: diffusion regulariser weight.
        learning_rate: Adam learning rate (coarse voxels per step, roughly).
        integration_steps: scaling-and-squaring steps.
        velocity_smoothing: sigma of ``G`` in velocity-grid voxels (0: ``v = w``).
        volume_penalty: weight of ``mean(log(det J)^2)`` of the coarse displacement, which
            costs local volume change but not rotation or shear, unlike the diffusion term.
        sampling: fraction of the voxels (drawn afresh each step) at which the MIND or MI
            similarity is evaluated; 1 evaluates it everywhere.
        mi_weight: weight of the mutual information of the images (nats), subtracted from
            the similarity at the same voxels (0: none).
        seed: seed of those draws.
        progress: callback ``("refine", step, steps)``.

    Returns:
        The refined velocity ``G * w``, same shape as ``velocity``, detached.
    """
    generator = torch.Generator(device=fixed.device).manual_seed(seed)
    score = _similarity_loss(similarity, fixed, moving, sampling, generator, mi_weight)
    weights = velocity.detach().clone().requires_grad_(True)
    optimizer = Adam(weights, lr=learning_rate)
    for step in range(steps):
        optimizer.zero_grad()
        velocity = gaussian_smooth(weights, velocity_smoothing)
        coarse = integrate_velocity(velocity, integration_steps)
        loss = score(coarse) + smoothness * diffusion(coarse)
        if volume_penalty > 0:
            loss = loss + volume_penalty * log_jacobian_penalty(coarse)
        loss.backward()
        optimizer.step()
        if progress:
            progress("refine", step + 1, steps)
    with torch.no_grad():
        return gaussian_smooth(weights, velocity_smoothing).detach()


def _physical_field(displacement: torch.Tensor, grid: sitk.Image) -> sitk.Image:
    """Voxel displacement on ``grid`` -> float64 LPS mm vector image on the same grid."""
    physical = voxel_to_physical(displacement, grid.GetSpacing(), grid.GetDirection())
    return displacement_to_image(physical.cpu(), grid)


def _field_on(field: sitk.Image, target: sitk.Image) -> sitk.Image:
    """A vector image of mm resampled linearly onto ``target``'s grid (zero outside), float64."""
    identity = sitk.Transform(target.GetDimension(), sitk.sitkIdentity)
    return sitk.Resample(field, target, identity, sitk.sitkLinear, 0.0, sitk.sitkVectorFloat64)


def _physical_field_on(
    displacement: torch.Tensor, grid: sitk.Image, target: sitk.Image
) -> sitk.Image:
    """Voxel displacement on ``grid`` -> LPS mm vector image (float64) on ``target``."""
    return _field_on(_physical_field(displacement, grid), target)


def _predict_velocity(
    model: torch.nn.Module,
    network_grid: sitk.Image | None,
    grid: sitk.Image,
    fixed_n: sitk.Image,
    moving_n: sitk.Image,
    affine: sitk.Transform,
    fixed_w: torch.Tensor,
    moving_w: torch.Tensor,
) -> torch.Tensor:
    """The network's velocity for the working grid ``grid``, in its voxels, full size.

    The network runs at the spacing it was trained at: ``network_grid`` covers the fixed
    image at that spacing (``None`` when the model's card names none: the working grid is
    used). When the working grid has another spacing, the inputs are resampled onto
    ``network_grid`` and the predicted velocity is carried over to the working grid through
    millimetres, so a model trained at 4 mm can start a refinement at 2 mm.
    """
    device = fixed_w.device
    same = network_grid is None or np.allclose(grid.GetSpacing(), network_grid.GetSpacing())
    with torch.no_grad():
        if same:
            return model.unet(fixed_w, moving_w)
        fixed_net = image_to_tensor(preprocess.resample(fixed_n, network_grid)).to(device)
        moving_net = image_to_tensor(preprocess.resample(moving_n, network_grid, affine))
        velocity = model.unet(fixed_net, moving_net.to(device))
        velocity = resize_displacement(velocity, list(network_grid.GetSize()[::-1]))
    physical = _physical_field_on(velocity, network_grid, grid)
    ndim = grid.GetDimension()
    array = np.moveaxis(sitk.GetArrayFromImage(physical), -1, 0)[None]
    mm = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).to(device)
    return physical_to_voxel(mm, grid.GetSpacing(), grid.GetDirection()).reshape(
        1, ndim, *grid.GetSize()[::-1]
    )


def _nmi_on(fixed: torch.Tensor, moving: torch.Tensor, mask: torch.Tensor) -> float:
    return float(nmi(fixed.cpu().numpy(), moving.cpu().numpy(), mask=mask.cpu().numpy() > 0))


# Peak memory of one registration and of writing its outputs (bytes) ~ per_working *
# working-grid voxels + per_fixed * fixed-image voxels + constant, fitted by least squares to
# the peak RSS (VmHWM reset through /proc/self/clear_refs, minus VmRSS with the inputs read) of
# register() then save_result(), --model none, --refine 6, on the CPU, one thread, on phantom
# pairs (moving as large as fixed, so the moving image's copies are in the fixed term).
# 3D, 5 runs: 64x80x80 to 200x256x256 voxels, working grids of 0.2M to 3.3M voxels (1 mm
# images on 2 and 4 mm grids, 2 mm images on 2 and 4 mm grids): within -13 % .. +17 % of every
# run. 2D, 4 runs (512^2 to 2048^2 pixels, working grids of 65k to 1M pixels): within 0.1 %.
# The working-grid term is the refinement's (MIND-SSC descriptors of both images, 12 channels
# in 3D and 4 in 2D, the warped descriptor and its autograd buffers); the fixed-image term is
# the outputs (warped image, Jacobian computed slab by slab, one float32 component of a field
# at a time while it is written; in 2D also the QC figure); the constant is allocator pools,
# thread buffers and ITK's registration. The displacement fields stay on the working grid, so
# a 512x512x400 CT with a 512x512x100 MR peaked at 3.3 GiB in all (benchmarks/RESULTS.md),
# where fields resampled onto the CT's grid had taken 12 GiB.
_MEMORY_MODEL = {2: (169.4, 126.1, 110 << 20), 3: (374.1, 28.4, 216 << 20)}
_MEMORY_MARGIN = 1.25
"""The estimate is multiplied by this before it is compared with the available memory."""
_MAX_COARSENING = 4
"""A working grid may be made at most this many times coarser (by doubling) to fit in memory."""


def available_memory() -> int | None:
    """Bytes this process can still allocate: ``MemAvailable``, capped by a cgroup's limit.

    The cgroup's headroom is its limit (v2 ``memory.max`` or v1 ``memory.limit_in_bytes``)
    minus its usage not counting inactive page cache, which the kernel reclaims first.

    Returns:
        Bytes, or ``None`` where neither ``/proc/meminfo`` nor a cgroup limit can be read
        (e.g. not Linux): then nothing is checked.
    """
    known: list[int] = []
    try:
        for line in Path("/proc/meminfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("MemAvailable:"):
                known.append(int(line.split()[1]) * 1024)  # kB
    except (OSError, ValueError, IndexError):
        pass
    for folder, limit_name, usage_name, cache_name in (
        ("/sys/fs/cgroup", "memory.max", "memory.current", "inactive_file"),
        ("/sys/fs/cgroup/memory", "memory.limit_in_bytes", "memory.usage_in_bytes",
         "total_inactive_file"),
    ):  # fmt: skip
        try:
            limit = Path(folder, limit_name).read_text(encoding="utf-8").strip()
            if not limit.isdigit() or int(limit) >= 1 << 60:  # "max" or v1's "unlimited"
                continue
            usage = int(Path(folder, usage_name).read_text(encoding="utf-8"))
            stats = dict(
                line.split()
                for line in Path(folder, "memory.stat").read_text(encoding="utf-8").splitlines()
            )
            usage -= int(stats.get(cache_name, 0))
        except (OSError, ValueError):
            continue
        known.append(max(0, int(limit) - usage))
    return min(known) if known else None


def estimate_memory(working_voxels: int, fixed_voxels: int, ndim: int) -> int:
    """Estimated peak memory of :func:`register` beyond its inputs, in bytes, on the CPU.

    Args:
        working_voxels: voxels of the working grid (or of the network's grid, if larger).
        fixed_voxels: voxels of the fixed image, where the outputs are made.
        ndim: 2 or 3.

    Returns:
        Bytes, from the fit described at ``_MEMORY_MODEL``, without the safety margin.
    """
    per_working, per_fixed, constant = _MEMORY_MODEL[ndim]
    return int(per_working * working_voxels + per_fixed * fixed_voxels + constant)


def _grid_in_memory(
    fixed: sitk.Image,
    grid: sitk.Image,
    multiple: int,
    device: torch.device,
    network_voxels: int = 0,
) -> tuple[sitk.Image, dict[str, Any]]:
    """``grid``, or a coarser working grid when the registration would not fit in memory.

    The spacing is doubled (up to ``_MAX_COARSENING`` times) until the estimate, with its
    margin, fits in :func:`available_memory`. On CUDA the working-grid tensors live on the
    GPU, so only the fixed-image term is held against the host's memory.

    Returns:
        ``(grid, record)``: the grid to use and ``{"estimated_mib", "available_mib",
        "warning"}`` for the report (``warning`` is ``None`` when ``grid`` was kept).

    Raises:
        IntermodalError: even the coarsest grid (or the outputs on the fixed grid alone)
            would not fit; the message gives the estimate and the available memory.
    """
    ndim = fixed.GetDimension()
    fixed_voxels = math.prod(fixed.GetSize())
    on_cpu = device.type == "cpu"

    def need(candidate: sitk.Image) -> int:
        working = max(math.prod(candidate.GetSize()), network_voxels) if on_cpu else 0
        return int(_MEMORY_MARGIN * estimate_memory(working, fixed_voxels, ndim))

    def describe(candidate: sitk.Image) -> str:
        size = "x".join(str(n) for n in candidate.GetSize())
        spacing = "x".join(f"{s:g}" for s in candidate.GetSpacing())
        return f"{size} voxels of {spacing} mm"

    mib = 1 << 20
    available = available_memory()
    record: dict[str, Any] = {
        "estimated_mib": round(need(grid) / mib),
        "available_mib": None if available is None else round(available / mib),
        "warning": None,
    }
    if available is None or need(grid) <= available:
        return grid, record
    factor, candidate = 1, grid
    while factor < _MAX_COARSENING:
        factor *= 2
        spacing = [s * factor for s in grid.GetSpacing()]
        candidate = preprocess.working_grid(fixed, spacing, multiple)
        if need(candidate) <= available:
            record["warning"] = (
                f"registering on the working grid of {describe(grid)} would need about "
                f"{need(grid) / mib:.0f} MiB but {available / mib:.0f} MiB are available; "
                f"using a {factor}x coarser grid of {describe(candidate)} (about "
                f"{need(candidate) / mib:.0f} MiB)"
            )
            record["estimated_mib"] = round(need(candidate) / mib)
            logger.warning(record["warning"])
            return candidate, record
    raise IntermodalError(
        f"not enough memory: registering needs about {need(grid) / mib:.0f} MiB on the "
        f"working grid of {describe(grid)} and still about {need(candidate) / mib:.0f} MiB on "
        f"the coarsest acceptable one ({describe(candidate)}), but {available / mib:.0f} MiB "
        "are available; free memory or register smaller images"
    )


def register(
    fixed: sitk.Image,
    moving: sitk.Image,
    settings: Settings | None = None,
    *,
    progress: Progress | None = None,
) -> RegistrationResult:
    """Deformably register ``moving`` (e.g. an MR) onto ``fixed`` (e.g. a CT).

    Args:
        fixed: the fixed image, as read by :func:`intermodal.io.read_image`.
        moving: the moving image, same dimension (2D or 3D).
        settings: a :class:`Settings`; defaults when ``None``.
        progress: optional ``(stage, step, total)`` callback.

    Returns:
        A :class:`RegistrationResult` whose images lie on ``fixed``'s own grid.

    Raises:
        IntermodalError: mismatched dimensions, bad settings, or a model that does not fit.
    """
    settings = settings or Settings()
    settings.validate()
    if fixed.GetDimension() != moving.GetDimension():
        raise IntermodalError(
            f"fixed image is {fixed.GetDimension()}D but moving image is "
            f"{moving.GetDimension()}D; both must be 2D or both 3D"
        )
    ndim = fixed.GetDimension()
    device = choose_device(settings.device)
    torch.manual_seed(settings.seed)
    timings: dict[str, float] = {}

    def stage(name: str) -> None:
        if progress:
            progress(name, 0, 0)

    start = time.perf_counter()
    stage("preprocess")
    fixed_modality = preprocess.detect_modality(fixed, settings.fixed_modality)
    moving_modality = preprocess.detect_modality(moving, settings.moving_modality)
    scale = {"hu_window": settings.hu_window, "percentiles": settings.mr_percentiles}
    fixed_n = preprocess.normalize_intensity(fixed, fixed_modality, **scale)
    moving_n = preprocess.normalize_intensity(moving, moving_modality, **scale)

    model, card = None, None
    spacing = settings.spacing
    # every pyramid level and the velocity grid divide the working grid exactly
    multiple = math.lcm(settings.velocity_stride, *settings.pyramid)
    model_path = resolve_model(settings.model, ndim)
    if model_path is not None:
        from intermodal.checkpoint import load_model

        model, card = load_model(model_path, device=str(device))
        if card["network"].get("ndim") != ndim:
            raise IntermodalError(
                f"{model_path}: model is for {card['network'].get('ndim')}D images, "
                f"the inputs are {ndim}D"
            )
        direction = card.get("training", {}).get("direction")
        order = f"{moving_modality}_to_{fixed_modality}"
        if direction in ("mr_to_ct", "ct_to_mr") and order != direction:
            logger.warning(
                "%s was trained %s only; these inputs are %s, so expect a poorer prediction",
                model_path, direction.replace("_to_", " -> "), order.replace("_to_", " -> "),
            )  # fmt: skip
        trained_spacing = card.get("preprocessing", {}).get("spacing")
        # The working (refinement and output) grid stays the default one, not the model's:
        # the bundled 3D model is trained at 4 mm, and refining at 4 mm instead of 2 mm cost
        # 0.054 mean organ Dice on held-out synthetic pairs (benchmarks/RESULTS.md). The
        # network still runs at its trained spacing (see _predict_velocity).
        multiple = math.lcm(multiple, model.required_multiple)
    timings["preprocess"] = time.perf_counter() - start

    start = time.perf_counter()
    stage(f"init:{settings.init}")
    affine = classical.initial_alignment(fixed_n, moving_n, settings.init, seed=settings.seed)
    timings["initial_alignment"] = time.perf_counter() - start

    start = time.perf_counter()
    grid = preprocess.working_grid(fixed, spacing, multiple)
    network_grid = None  # the grid at the model's trained spacing, when it has one
    if model is not None and trained_spacing is not None:
        network_grid = preprocess.working_grid(fixed, trained_spacing, model.required_multiple)
    network_voxels = 0 if network_grid is None else math.prod(network_grid.GetSize())
    grid, memory = _grid_in_memory(fixed, grid, multiple, device, network_voxels)
    fixed_w = image_to_tensor(preprocess.resample(fixed_n, grid)).to(device)
    moving_w = image_to_tensor(preprocess.resample(moving_n, grid, affine)).to(device)
    moving_raw = image_to_tensor(preprocess.resample(moving_n, grid)).to(device)
    # NMI's mask: the fixed image's scanned data on the working grid (0 beyond its extent)
    data = preprocess.data_mask(fixed, fixed_modality)
    mask = image_to_tensor(
        preprocess.resample(data, grid, interpolator=sitk.sitkNearestNeighbor)
    ).to(device)
    timings["resample"] = time.perf_counter() - start

    start = time.perf_counter()
    working_shape = list(grid.GetSize()[::-1])
    coarse = [n // settings.velocity_stride for n in working_shape]
    if model is not None:
        stage("network")
        velocity = _predict_velocity(
            model, network_grid, grid, fixed_n, moving_n, affine, fixed_w, moving_w
        )
        velocity = resize_displacement(velocity, coarse)
    else:
        velocity = torch.zeros((1, ndim, *coarse), device=device)
    timings["network"] = time.perf_counter() - start

    start = time.perf_counter()
    total_steps = settings.refine_steps
    if total_steps > 0:
        done = 0
        for factor, steps in level_schedule(settings, working_shape):
            if steps == 0:
                continue
            fixed_level, moving_level = fixed_w, moving_w
            # a level coarser than the velocity grid refines a velocity on its own grid: the
            # same field in fewer unknowns; step and smoothing keep their size in millimetres
            stride = settings.velocity_stride
            if settings.coarse_level_velocity:
                stride = max(stride, factor)
            level_grid = [n // stride for n in working_shape]
            if list(velocity.shape[2:]) != level_grid:
                velocity = resize_displacement(velocity, level_grid)
            scale = settings.velocity_stride / stride
            if factor > 1:
                size = [n // factor for n in working_shape]
                fixed_level = torch.nn.functional.interpolate(fixed_w, size=size, mode="area")
                moving_level = torch.nn.functional.interpolate(moving_w, size=size, mode="area")

            def level_progress(stage: str, step: int, total: int, offset: int = done) -> None:
                if progress:
                    progress(stage, offset + step, total_steps)

            velocity = refine_velocity(
                fixed_level,
                moving_level,
                velocity,
                steps=steps,
                similarity=settings.similarity,
                smoothness=settings.smoothness,
                learning_rate=settings.learning_rate * scale,
                integration_steps=settings.integration_steps,
                velocity_smoothing=settings.velocity_smoothing * scale,
                volume_penalty=settings.volume_penalty,
                sampling=settings.sampling,
                mi_weight=settings.mi_weight,
                seed=settings.seed + factor,
                progress=level_progress,
            )
            done += steps
    timings["refine"] = time.perf_counter() - start

    start = time.perf_counter()
    stage("output")
    with torch.no_grad():
        # The velocity is integrated on its own grid and the displacement interpolated onto
        # the working grid: exactly the field that the refinement scored. Integrating the
        # interpolated velocity on the working grid instead cost 8x the voxels (0.55 s of a 3 s
        # registration on the real pair at 2 mm) for forward and inverse fields that agree
        # scarcely better (round trip inverse(forward(p)) - p, mean: 0.21 against 0.22 mm on
        # the real pair; 0.037 against 0.049 mm, worst 0.14 against 0.23 mm, on the 5 mm test
        # phantom of test_registration).
        forward = resize_displacement(
            integrate_velocity(velocity, settings.integration_steps), working_shape
        )
        backward = resize_displacement(
            integrate_velocity(-velocity, settings.integration_steps), working_shape
        )
        warped_w = warp(moving_w, forward)
    # The fields stay on the working grid: the transform interpolates them linearly, which is
    # what resampling them onto the fixed grid first would do, without 24 bytes per fixed
    # voxel for each (2.4 GiB each on a 512x512x400 CT).
    displacement_w = _physical_field(forward, grid)
    inverse_w = _physical_field(backward, grid)
    del forward, backward
    transform = sitk.CompositeTransform(ndim)
    transform.AddTransform(affine)
    transform.AddTransform(sitk.DisplacementFieldTransform(sitk.Image(displacement_w)))
    warped = apply_transform(transform, fixed, moving)
    # metrics.jacobian_determinant, not ITK's DisplacementFieldJacobianDeterminant: the latter
    # ignores the image direction, so it was wrong for every non-identity direction. It is
    # taken on the fixed grid, slab by slab, of the field interpolated there.
    jacobian = sitk.GetImageFromArray(
        jacobian_determinant(displacement_w, reference=fixed, dtype=np.float32)
    )
    jacobian.CopyInformation(fixed)
    timings["output"] = time.perf_counter() - start

    report = {
        "intermodal_version": __version__,
        "inputs": {
            "fixed": {"modality": fixed_modality, **geometry(fixed)},
            "moving": {"modality": moving_modality, **geometry(moving)},
        },
        "settings": asdict(settings),
        "model_path": model_path,
        "model_card": card,
        "device": str(device),
        "working_grid": geometry(grid),
        # spacing (mm, x y z) the network ran at: its trained one, whatever the working grid
        "network_spacing": None
        if model is None
        else [float(v) for v in np.broadcast_to(trained_spacing or grid.GetSpacing(), (ndim,))],
        "initial_transform": {
            "type": affine.GetName(),
            "parameters": list(affine.GetParameters()),
            "fixed_parameters": list(affine.GetFixedParameters()),
        },
        "nmi": {
            "before": _nmi_on(fixed_w, moving_raw, mask),
            "after_initial": _nmi_on(fixed_w, moving_w, mask),
            "after": _nmi_on(fixed_w, warped_w, mask),
        },
        "jacobian": jacobian_statistics(jacobian),
        "timings_s": {name: round(value, 4) for name, value in timings.items()},
        "memory": {k: v for k, v in memory.items() if k != "warning"},
        "warnings": [memory["warning"]] if memory["warning"] else [],
    }
    report["timings_s"]["total"] = round(sum(timings.values()), 4)
    return RegistrationResult(
        fixed=fixed,
        moving=moving,
        affine=affine,
        field=displacement_w,
        inverse_field=inverse_w,
        transform=transform,
        warped=warped,
        jacobian=jacobian,
        report=report,
        fixed_normalized=fixed_n,
        moving_normalized=moving_n,
    )


def settings_from_mapping(values: dict[str, Any]) -> Settings:
    """Build :class:`Settings` from a mapping, refusing unknown keys by name."""
    known = set(Settings.__dataclass_fields__)
    unknown = sorted(set(values) - known)
    if unknown:
        raise IntermodalError(f"unknown setting(s) {unknown}; valid settings are {sorted(known)}")
    return Settings(**values)


__all__: Sequence[str] = [
    "Settings",
    "PRESETS",
    "level_schedule",
    "preset_settings",
    "RegistrationResult",
    "register",
    "refine_velocity",
    "apply_transform",
    "map_points",
    "jacobian_statistics",
]
