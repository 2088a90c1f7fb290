"""register(fixed, moving) -> RegistrationResult: the one high-level entry.

The contract: for every fixed physical point ``p`` (mm), ``T(p) = A(p + d(p))`` is the matching
point of the moving image, where ``A`` is the initial affine and ``d`` the deformable
displacement field on the fixed grid. ``warped = moving ∘ T`` sampled on the fixed grid.

:func:`register` reads top to bottom as its stages, each a function of its own:

1. ``_prepare``: modalities (metadata first), intensity scaling, masks, the model and its card;
2. ``_align``: the initial rigid (or affine) alignment (:mod:`intermodal.alignment`);
3. ``_resample``: the working grid and the images and masks on it;
4. ``_predict``: the network's velocity, kept only if it improves the similarity;
5. ``_refine``: instance optimisation on the pyramid (:mod:`intermodal.refinement`), kept
   only if it improves the similarity;
6. ``_outputs``: the fields, the transform, the warped image and the Jacobian;
7. ``_report``: what was done and how well, for ``report.json``.

The guard of stages 4 and 5: ``register`` never returns a result worse, by its own similarity
on the masked overlap, than its initial alignment alone.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from dataclasses import field as dataclass_field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch

from intermodal import __version__, alignment, preprocess, refinement
from intermodal.errors import IntermodalError
from intermodal.grids import same_grid
from intermodal.io import displacement_to_image, geometry, image_to_tensor
from intermodal.metrics import image_jacobian_det, jacobian_statistics, warped_nmi
from intermodal.models import resolve_model
from intermodal.presets import PRESETS
from intermodal.refinement import SIMILARITY_CHOICES, Progress
from intermodal.spatial import (
    integrate_velocity,
    physical_to_voxel,
    resize_displacement,
    voxel_to_physical,
    warp,
)

logger = logging.getLogger(__name__)

DEVICE_CHOICES = ("auto", "cpu", "cuda")
DEFAULT_INTEGRATION_STEPS = 5


@dataclass
class Settings:
    """Everything that decides a registration; recorded in ``report.json``.

    Attributes:
        model: ``"default"`` (a bundled model where one was measured to help on the realistic
            sets, :data:`intermodal.models.DEFAULT_MODELS`: none today), ``None`` or
            ``"none"`` (refinement alone), ``"auto"`` (the bundled model for the inputs'
            dimension), a bundled model's name or the path of a ``.safetensors`` model; see
            :mod:`intermodal.models`. A model's field is kept only if it improves the
            similarity over the initial alignment alone.
        refine: test-time optimisation steps on the velocity field (0: none; with no model
            the result is the initial alignment alone).
        steps_after_network: the share of the refinement's steps (at every level, rounded
            up) taken when the guard keeps the network's field: the network gives the start
            and the large-scale part of the motion, so the refinement has less to do (1:
            every step). The default, half, was measured on the 2D tuning cases with the
            bundled ``general2d``, on synthetic pelvis slices.
        init: initial alignment, one of :data:`intermodal.alignment.INIT_CHOICES`. Rigid
            by default: the same body on another day does not change size. ``"auto"`` (for
            pairs of different subjects) keeps an affine where the refinement's similarity
            also prefers it (see :func:`_align`).
        search_orientation: the initial alignment of 3D images also tries the moving image
            turned 180 degrees about each axis (:data:`intermodal.alignment.TURNS_DEG`; none
            in 2D) and keeps a turn that MI and MIND-SSC both prefer, with a warning: a scan
            stored head first against one feet first (or prone against supine) is otherwise
            aligned by its outline with its anatomy the wrong way round. ``False`` trusts the
            stored orientations.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        spacing: working spacing in mm for the refinement and the outputs (``None``: 2 mm in
            3D, native in 2D); a model's network always runs at its own trained spacing.
        fixed_modality: ``"ct"``, ``"mr"`` or ``"auto"``.
        moving_modality: ``"ct"``, ``"mr"`` or ``"auto"``.
        hu_window: CT clipping window in HU; ``None``: the model card's, else
            :data:`intermodal.preprocess.DEFAULT_HU_WINDOW`. A window that contradicts the
            card of the model in use is refused.
        mr_percentiles: MR percentiles mapped to 0 and 1; ``None`` and a card as above.
        similarity: refinement similarity, ``"mind"`` (MIND-SSC), ``"ngf"`` or ``"mi"``
            (minus the mutual information alone, the Parzen term of ``mi_weight`` at weight 1).
        smoothness: weight of the diffusion regulariser on the displacement (voxels^2).
        learning_rate: Adam step on the velocity, in coarse-grid voxels.
        velocity_stride: the velocity lives on the working grid subsampled by this factor.
        velocity_smoothing: the refined velocity is a Gaussian-smoothed field, sigma in
            velocity-grid voxels (0: no smoothing); see
            :func:`intermodal.refinement.refine_velocity`.
        volume_penalty: weight of the mean squared log Jacobian determinant (local volume
            change), the quantity whose spread SDlogJ measures.
        sampling: fraction of the working grid's voxels, drawn afresh at every step, at which
            the MIND or MI similarity is evaluated (1: all of them; NGF always uses all);
            smaller is faster.
        max_samples: at most this many voxels a step, whatever ``sampling`` gives (``None``:
            no cap), like elastix's ``NumberOfSpatialSamples``; it bounds the cost of a
            pyramid's finest level, whose voxels outnumber the velocity's unknowns many times.
        mi_weight: weight of a mutual-information term (Parzen histogram of the two images'
            intensities, nats) subtracted from the ``"mind"`` or ``"ngf"`` similarity at the
            same voxels; 0 leaves it out. Not used with ``"mi"``, which is that term alone.
        pyramid: refinement levels, as factors by which the working grid is subsampled, coarse
            to fine; the ``refine`` steps are shared equally between them. The default
            ``(4, 2, 1)`` optimises on 8, 4 and 2 mm grids (3D) of MIND descriptors taken at
            the working spacing and block-averaged for the coarser levels, as ConvexAdam
            does. Without the working-spacing level (``(4, 2)``) it is less accurate on real
            images (see benchmarks/RESULTS.md, "The default"); ``max_samples`` keeps that
            level's cost near the 4 mm level's.
        level_steps: steps at each level of ``pyramid``, coarse to fine, instead of ``refine``
            shared equally (as ANTs' ``--convergence [40x20x0]`` gives its iterations per
            level); ``None`` shares ``refine``. When given, its sum is the refinement's step
            count and ``refine`` is not used. A level skipped for a small image (see
            :func:`intermodal.refinement.level_schedule`) passes its steps to the next
            level kept.
        coarse_level_velocity: at a pyramid level whose factor exceeds ``velocity_stride``
            the velocity is refined on that level's grid instead (learning rate and
            ``velocity_smoothing`` scaled so that they keep their size in millimetres), and
            resampled onto the finer grid for the next level; fewer unknowns, same field.
        integration_steps: scaling-and-squaring steps; ``None``: the model card's (the
            network was trained to be integrated so), else :data:`DEFAULT_INTEGRATION_STEPS`.
            A number that contradicts the card of the model in use is refused.
        seed: seed for every random choice (metric sampling, torch).
    """

    model: str | None = "default"
    refine: int = 80
    steps_after_network: float = 0.5
    init: str = "rigid"
    search_orientation: bool = True
    device: str = "auto"
    spacing: float | None = None
    fixed_modality: str = "auto"
    moving_modality: str = "auto"
    hu_window: tuple[float, float] | None = None
    mr_percentiles: tuple[float, float] | None = None
    similarity: str = "mind"
    smoothness: float = 0.5
    learning_rate: float = 0.1
    velocity_stride: int = 4
    velocity_smoothing: float = 2.0
    volume_penalty: float = 0.4
    sampling: float = 0.25
    max_samples: int | None = 32_000
    mi_weight: float = 0.0
    pyramid: tuple[int, ...] = (4, 2, 1)
    level_steps: tuple[int, ...] | None = None
    coarse_level_velocity: bool = True
    integration_steps: int | None = None
    seed: int = 0

    @property
    def refine_steps(self) -> int:
        """The refinement's step count: the sum of ``level_steps`` if given, else ``refine``."""
        return self.refine if self.level_steps is None else sum(self.level_steps)

    def validate(self) -> None:
        """Raise :class:`IntermodalError` for any setting out of range."""
        if self.refine < 0:
            raise IntermodalError(f"--refine must be 0 or more steps, not {self.refine}")
        if not 0 <= self.steps_after_network <= 1:
            raise IntermodalError(
                f"--steps-after-network must be a share from 0 to 1, not {self.steps_after_network}"
            )
        if self.init not in alignment.INIT_CHOICES:
            raise IntermodalError(
                f"--init must be one of {alignment.INIT_CHOICES}, not {self.init!r}"
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
        for name, value in (
            ("smoothness", self.smoothness), ("volume penalty", self.volume_penalty)
        ):  # fmt: skip
            if not 0 <= value < math.inf:  # NaN fails too
                raise IntermodalError(f"{name} must be a finite number, 0 or more, not {value}")
        if not 0 < self.learning_rate < math.inf:
            raise IntermodalError(
                f"learning rate must be a finite positive number, not {self.learning_rate}"
            )
        if not 0 <= self.mi_weight <= 100:
            raise IntermodalError(f"MI weight must be 0 to 100, not {self.mi_weight}")
        if not 0 < self.sampling <= 1:
            raise IntermodalError(
                f"similarity sampling must be a fraction in (0, 1], not {self.sampling}"
            )
        if self.max_samples is not None and (
            isinstance(self.max_samples, bool)
            or not isinstance(self.max_samples, int)
            or self.max_samples < 1
        ):
            raise IntermodalError(
                f"max samples must be a whole number of 1 or more, not {self.max_samples}"
            )
        if self.velocity_stride not in (1, 2, 4):
            raise IntermodalError(f"velocity stride must be 1, 2 or 4, not {self.velocity_stride}")
        if not self.pyramid or any(f not in (1, 2, 4, 8) for f in self.pyramid):
            raise IntermodalError(
                f"pyramid levels must be factors among 1, 2, 4, 8, not {self.pyramid}"
            )
        if self.integration_steps is not None and (
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


def preset_settings(name: str = "default", ndim: int = 3, **overrides: Any) -> Settings:
    """The :class:`Settings` of the preset ``name`` for ``ndim``-D images, then ``overrides``.

    Example: ``preset_settings("default", 3, device="cpu")``. Overrides win over the preset.

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
    neighbour with background 0 for label maps (``labels=True``, integer values kept; a map
    of whole values comes out as int32, which viewers load as a label map).
    """
    if image.GetDimension() != reference.GetDimension():
        raise IntermodalError(
            f"image is {image.GetDimension()}D but the transform's fixed image is "
            f"{reference.GetDimension()}D"
        )
    if labels:
        values = sitk.GetArrayViewFromImage(image)
        if np.array_equal(values, np.round(values)):
            image = sitk.Cast(image, sitk.sitkInt32)
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


@dataclass
class _Inputs:
    """Stage 1's result: the images scaled to ``[0, 1]``, their masks and the model."""

    fixed: sitk.Image
    moving: sitk.Image
    fixed_modality: preprocess.ModalityDecision
    moving_modality: preprocess.ModalityDecision
    fixed_n: sitk.Image
    moving_n: sitk.Image
    fixed_mask: sitk.Image  # uint8 on the fixed grid: scanned data and the user's mask
    moving_mask: sitk.Image  # uint8 on the moving grid: its data box and the user's mask
    model: torch.nn.Module | None
    card: dict[str, Any] | None
    model_path: str | None
    integration_steps: int
    multiple: int  # every working-grid axis is a multiple of this


@dataclass
class _Working:
    """Stage 3's result: the working grid and everything the later stages see on it."""

    grid: sitk.Image
    network_grid: sitk.Image | None
    images: refinement.Images
    moving_unaligned: torch.Tensor  # the moving image without the affine, for the report
    memory: dict[str, Any]
    overlap: float


class _StageClock:
    """Times each stage and tells the progress callback when one starts."""

    def __init__(self, progress: Progress | None) -> None:
        self.progress = progress
        self.timings: dict[str, float] = {}

    def __call__(self, name: str, shown: str | None = None) -> _StageClock:
        self._name, self._start = name, time.perf_counter()
        if self.progress and shown:
            self.progress(shown, 0, 0)
        return self

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        self.timings[self._name] = time.perf_counter() - self._start


def register(
    fixed: sitk.Image,
    moving: sitk.Image,
    settings: Settings | None = None,
    *,
    fixed_mask: sitk.Image | None = None,
    moving_mask: sitk.Image | None = None,
    progress: Progress | None = None,
) -> RegistrationResult:
    """Deformably register ``moving`` (e.g. an MR) onto ``fixed`` (e.g. a CT).

    Args:
        fixed: the fixed image, as read by :func:`intermodal.io.read_image`.
        moving: the moving image, same dimension (2D or 3D).
        settings: a :class:`Settings`; defaults when ``None``.
        fixed_mask: voxels of the fixed image that the similarity counts (non-zero), on the
            fixed image's grid; ``None``: all that hold scanned data.
        moving_mask: voxels of the moving image that count, on its grid; ``None``: all.
        progress: optional ``(stage, step, total)`` callback.

    Returns:
        A :class:`RegistrationResult` whose images lie on ``fixed``'s own grid.

    Raises:
        IntermodalError: mismatched dimensions, bad settings or masks, a model that does not
            fit, or images that do not overlap after the initial alignment.
    """
    settings = settings or Settings()
    settings.validate()
    _check_images(fixed, moving, fixed_mask, moving_mask)
    device = choose_device(settings.device)
    torch.manual_seed(settings.seed)
    clock = _StageClock(progress)

    with clock("preprocess", "preprocess"):
        inputs = _prepare(fixed, moving, settings, fixed_mask, moving_mask, device)
    options = _refinement_options(settings, inputs.integration_steps)
    with clock("initial_alignment", f"init:{settings.init}"):
        affine, aligned = _align(inputs, settings, options)
    with clock("resample"):
        working = _resample(inputs, affine, settings, device)
        features = refinement.describe(working.images, options)
    schedule = refinement.level_schedule(
        settings.pyramid, settings.refine, settings.level_steps, list(working.grid.GetSize()[::-1])
    )
    # the guard scores each stage at the finest level that the refinement optimises
    guard = features.level(min((f for f, n in schedule if n > 0), default=schedule[-1][0]))
    with clock("network", "network" if inputs.model is not None else None):
        start, network = _predict(inputs, working, guard, affine, options, settings.velocity_stride)
    with clock("refine"):
        velocity, refined = _refine(
            features, guard, start, network, schedule, settings, options, progress
        )
    del features, guard  # the descriptors' memory goes back before the outputs take theirs
    with clock("output", "output"):
        outputs = _outputs(inputs, working, affine, velocity)
    report = _report(
        inputs, working, settings, affine, aligned, network, refined, outputs, clock.timings
    )
    return RegistrationResult(
        fixed=fixed,
        moving=moving,
        affine=affine,
        field=outputs["field"],
        inverse_field=outputs["inverse_field"],
        transform=outputs["transform"],
        warped=outputs["warped"],
        jacobian=outputs["jacobian"],
        report=report,
        fixed_normalized=inputs.fixed_n,
        moving_normalized=inputs.moving_n,
    )


def _check_images(
    fixed: sitk.Image,
    moving: sitk.Image,
    fixed_mask: sitk.Image | None,
    moving_mask: sitk.Image | None,
) -> None:
    if fixed.GetDimension() != moving.GetDimension():
        raise IntermodalError(
            f"fixed image is {fixed.GetDimension()}D but moving image is "
            f"{moving.GetDimension()}D; both must be 2D or both 3D"
        )
    for name, image in (("fixed", fixed), ("moving", moving)):
        components = image.GetNumberOfComponentsPerPixel()
        if components != 1:
            raise IntermodalError(
                f"the {name} image has {components} components per voxel; register takes "
                "scalar images: read it with intermodal.io.read_image, which turns an RGB "
                "picture into its luminance"
            )
        values = sitk.GetArrayViewFromImage(image)
        low, high = values.min(), values.max()  # a NaN or infinite voxel shows in one of them
        if not (np.isfinite(low) and np.isfinite(high)):
            bad = int(np.count_nonzero(~np.isfinite(values)))
            raise IntermodalError(
                f"the {name} image has {bad} voxels that are not finite (NaN or infinite); "
                "replace them (e.g. by 0 outside the scanned data) before registering"
            )
        if low == high:
            raise IntermodalError(
                f"every voxel of the {name} image has the value {low:g}: it shows nothing to "
                "register"
            )
    for name, mask, image in (("fixed", fixed_mask, fixed), ("moving", moving_mask, moving)):
        if mask is None:
            continue
        if not same_grid(mask, image, tolerance=1e-3):
            raise IntermodalError(
                f"the {name} mask is not on the {name} image's grid (size, spacing, origin "
                "and direction must match)"
            )
        if not np.any(sitk.GetArrayViewFromImage(mask)):
            raise IntermodalError(f"the {name} mask has no foreground voxel")


def _card_setting(name: str, given: Any, from_card: Any, default: Any, path: str | None) -> Any:
    """A setting the model's card fixes: the card's value, or the user's if they agree."""
    if from_card is None:
        return default if given is None else given
    agrees = given is None or np.allclose(np.asarray(given, float), np.asarray(from_card, float))
    if not agrees:
        raise IntermodalError(
            f"{path}: the model was trained with {name} {from_card}, and {given} contradicts "
            "its card; leave the setting out to use the card's"
        )
    return from_card


def _card_normalisation(card: dict[str, Any], modality: str) -> tuple[float, float] | None:
    """``(low, high)`` from a card's ``"HU window -1000..1000"`` / ``"percentiles 0.5..99.5"``."""
    text = card.get("preprocessing", {}).get("normalisation", {}).get(modality)
    if not isinstance(text, str) or ".." not in text:
        return None
    low, high = text.split()[-1].split("..")
    return float(low), float(high)


def _prepare(
    fixed: sitk.Image,
    moving: sitk.Image,
    settings: Settings,
    fixed_mask: sitk.Image | None,
    moving_mask: sitk.Image | None,
    device: torch.device,
) -> _Inputs:
    """Stage 1: modalities, the model and its card, intensity scaling and masks."""
    ndim = fixed.GetDimension()
    fixed_modality = preprocess.decide_modality(fixed, settings.fixed_modality)
    moving_modality = preprocess.decide_modality(moving, settings.moving_modality)
    model, card, model_path = None, None, resolve_model(settings.model, ndim)
    multiple = math.lcm(settings.velocity_stride, *settings.pyramid)
    if model_path is not None:
        from intermodal.checkpoint import load_model

        model, card = load_model(model_path, device=str(device))
        if card["network"].get("ndim") != ndim:
            raise IntermodalError(
                f"{model_path}: model is for {card['network'].get('ndim')}D images, "
                f"the inputs are {ndim}D"
            )
        direction = card.get("training", {}).get("direction")
        order = f"{moving_modality.modality}_to_{fixed_modality.modality}"
        if direction in ("mr_to_ct", "ct_to_mr") and order != direction:
            logger.warning(
                "%s was trained %s only; these inputs are %s, so expect a poorer prediction",
                model_path, direction.replace("_to_", " -> "), order.replace("_to_", " -> "),
            )  # fmt: skip
        multiple = math.lcm(multiple, model.required_multiple)
    card = card or {}
    steps = _card_setting(
        "integration steps", settings.integration_steps,
        card.get("network", {}).get("integration_steps"), DEFAULT_INTEGRATION_STEPS, model_path,
    )  # fmt: skip
    scale = {
        "hu_window": _card_setting(
            "HU window", settings.hu_window, _card_normalisation(card, "ct"),
            preprocess.DEFAULT_HU_WINDOW, model_path,
        ),
        "percentiles": _card_setting(
            "MR percentiles", settings.mr_percentiles, _card_normalisation(card, "mr"),
            preprocess.DEFAULT_MR_PERCENTILES, model_path,
        ),
    }  # fmt: skip
    fixed_n = preprocess.normalize_intensity(
        fixed, fixed_modality.modality, hu_offset=fixed_modality.hu_offset, **scale
    )
    moving_n = preprocess.normalize_intensity(
        moving, moving_modality.modality, hu_offset=moving_modality.hu_offset, **scale
    )
    data = preprocess.data_mask(fixed, fixed_modality.modality, fixed_modality.hu_offset)
    if fixed_mask is not None:
        data = sitk.And(data, _binary(fixed_mask, fixed))
    moving_data = preprocess.data_mask(moving, moving_modality.modality, moving_modality.hu_offset)
    if moving_mask is not None:
        moving_data = sitk.And(moving_data, _binary(moving_mask, moving))
    return _Inputs(
        fixed=fixed,
        moving=moving,
        fixed_modality=fixed_modality,
        moving_modality=moving_modality,
        fixed_n=fixed_n,
        moving_n=moving_n,
        fixed_mask=data,
        moving_mask=moving_data,
        model=model,
        card=card or None,
        model_path=model_path,
        integration_steps=int(steps),
        multiple=multiple,
    )


def _binary(mask: sitk.Image, image: sitk.Image) -> sitk.Image:
    """A user's mask as uint8 0/1 on exactly ``image``'s grid (checked to agree to 1e-3)."""
    binary = sitk.Cast(sitk.Cast(mask, sitk.sitkFloat32) > 0, sitk.sitkUInt8)
    binary.CopyInformation(image)
    return binary


def _align(
    inputs: _Inputs, settings: Settings, options: refinement.Options
) -> tuple[sitk.AffineTransform, dict[str, Any]]:
    """Stage 2: the initial alignment, and for the report how it was chosen.

    ``"auto"`` (the default) computes the rigid alignment and the affine one started from it.
    Scaling and shear always fit MI a little better, also where the anatomy did not change
    size, so the affine is kept only where the refinement's own similarity, a second measure
    MI was not optimised on, agrees (:func:`_coarse_similarity`): a subject of another size
    needs it, the same body on another day seldom does.
    """
    masks = {"fixed_mask": inputs.fixed_mask, "moving_mask": inputs.moving_mask}
    turns = settings.search_orientation
    if settings.init != "auto":
        chosen = alignment.initial_alignment(
            inputs.fixed_n, inputs.moving_n, settings.init, **masks, turns=turns
        )
        return chosen, _size_record(_turn_record({"method": settings.init}, chosen), inputs.fixed)
    rigid, affine = alignment.rigid_and_affine(
        inputs.fixed_n, inputs.moving_n, **masks, turns=turns
    )
    record: dict[str, Any] = _turn_record({"method": "auto", "kept": "rigid"}, rigid)
    _size_record(record, inputs.fixed)
    if affine is None:
        record["affine"] = "scaling and shear did not raise MI"
        return rigid, record
    record["similarity"] = {
        "rigid": _coarse_similarity(inputs, rigid, settings, options),
        "affine": _coarse_similarity(inputs, affine, settings, options),
    }
    if record["similarity"]["affine"] < record["similarity"]["rigid"]:
        record["kept"] = "affine"
        return affine, record
    return rigid, record


SMALL_OBJECT_MM = 64.0
"""A fixed image shorter than this along its longest axis gets a warning: the alignment's
coarsest level (8 mm) would hold it in under 8 voxels, and every scale of the pipeline (the
alignment's 8 and 4 mm, the multi-start's 16 mm offsets, the refinement's 2 mm) is sized for
human anatomy in millimetres. A tester's phantom scaled to 20 mm came out misaligned by a
median of 13 mm, silently; so did the same images with their spacing in metres."""


def _size_record(record: dict[str, Any], fixed: sitk.Image) -> dict[str, Any]:
    """``record`` with a warning when the fixed image is small for millimetre-sized stages."""
    longest = max(n * s for n, s in zip(fixed.GetSize(), fixed.GetSpacing(), strict=True))
    if longest < SMALL_OBJECT_MM:
        _warn(
            record,
            f"the fixed image spans only {longest:.3g} mm along its longest axis; the initial "
            "alignment and the refinement work at scales of millimetres sized for human "
            f"anatomy (at least {SMALL_OBJECT_MM:g} mm), so the result may be wrong: check "
            "that the spacing is in mm",
        )
    return record


def _turn_record(record: dict[str, Any], transform: sitk.Transform) -> dict[str, Any]:
    """``record`` with the half-turn the alignment found (``None``: the stored orientation),
    and a warning when it found one."""
    turn = alignment.half_turn(transform)
    record["half_turn_deg"] = None if turn is None else list(turn)
    if turn is not None:
        axes = " and ".join(f"180 degrees about {axis}" for axis, a in zip("xyz", turn) if a)
        _warn(
            record,
            f"the moving image fits the fixed one best turned {axes}: the body lies the "
            "other way round in one scan (placed feet first against head first, or prone "
            "against supine, or a header that lost the position); check, or pass "
            "--trust-orientation to keep the stored orientations",
        )
    return record


def _coarse_similarity(
    inputs: _Inputs, transform: sitk.Transform, settings: Settings, options: refinement.Options
) -> float:
    """The refinement's similarity (lower is better) of the images after ``transform`` alone.

    On a grid of twice the working spacing (the refinement's finest level by default), with
    the same masks and features as the guard of the later stages.
    """
    fixed = inputs.fixed
    spacing = settings.spacing or preprocess.default_spacing(fixed)
    spacing = np.broadcast_to(np.asarray(spacing, dtype=float), (fixed.GetDimension(),))
    grid = preprocess.working_grid(fixed, tuple(2 * spacing))

    def on_grid(image: sitk.Image, moved: sitk.Transform | None = None) -> torch.Tensor:
        return image_to_tensor(preprocess.resample(image, grid, moved))

    images = refinement.Images(
        fixed=on_grid(inputs.fixed_n),
        moving=on_grid(inputs.moving_n, transform),
        fixed_mask=on_grid(sitk.Cast(inputs.fixed_mask, sitk.sitkFloat32)).round(),
        moving_mask=on_grid(sitk.Cast(inputs.moving_mask, sitk.sitkFloat32), transform),
    )
    zero = torch.zeros((1, fixed.GetDimension(), *images.fixed.shape[2:]))
    return refinement.similarity_of(refinement.describe(images, options), zero, options)


def _resample(
    inputs: _Inputs, affine: sitk.Transform, settings: Settings, device: torch.device
) -> _Working:
    """Stage 3: the working grid, and the images and masks on it (moving through ``affine``)."""
    fixed = inputs.fixed
    grid = preprocess.working_grid(fixed, settings.spacing, inputs.multiple)
    network_grid = None  # the grid at the model's trained spacing, when its card names one
    trained_spacing = (inputs.card or {}).get("preprocessing", {}).get("spacing")
    if inputs.model is not None and trained_spacing is not None:
        network_grid = preprocess.working_grid(
            fixed, trained_spacing, inputs.model.required_multiple
        )
    network_voxels = 0 if network_grid is None else math.prod(network_grid.GetSize())
    grid, memory = _grid_in_memory(fixed, grid, inputs.multiple, device, network_voxels)
    size = grid.GetSize()
    if min(size) < 2 * settings.velocity_stride:
        raise IntermodalError(
            f"the working grid has {size} voxels of {grid.GetSpacing()} mm over the fixed "
            f"image; the deformation needs {2 * settings.velocity_stride} or more along each "
            "axis: check that the spacing is in mm, or choose a finer --spacing, or register a "
            "fixed image that is thicker"
        )

    def on_grid(image: sitk.Image, transform: sitk.Transform | None = None) -> torch.Tensor:
        return image_to_tensor(preprocess.resample(image, grid, transform)).to(device)

    moving_field = sitk.Cast(inputs.moving_mask, sitk.sitkFloat32)
    fixed_mask = sitk.Cast(inputs.fixed_mask, sitk.sitkFloat32)
    images = refinement.Images(
        fixed=on_grid(inputs.fixed_n),
        moving=on_grid(inputs.moving_n, affine),
        fixed_mask=on_grid(fixed_mask).round(),  # 0 on the padding beyond the fixed image
        moving_mask=on_grid(moving_field, affine),  # 0 where the affine leaves the moving FOV
    )
    counted = float(images.fixed_mask.sum())
    overlap = float((images.fixed_mask * images.moving_mask).sum()) / max(counted, 1.0)
    if overlap == 0:
        raise IntermodalError(
            "the fixed and moving images do not overlap after the initial alignment "
            f"({settings.init}): no voxel of the fixed image maps into the moving image; check "
            "that both images show the same anatomy and that their headers' positions are right"
        )
    return _Working(
        grid=grid,
        network_grid=network_grid,
        images=images,
        moving_unaligned=on_grid(inputs.moving_n),
        memory=memory,
        overlap=overlap,
    )


def _refinement_options(settings: Settings, integration_steps: int) -> refinement.Options:
    """The refinement's share of the settings, with the integration steps the card fixed."""
    names = {f.name for f in fields(refinement.Options)} - {"integration_steps"}
    values = {name: getattr(settings, name) for name in names}
    return refinement.Options(**values, integration_steps=integration_steps)


def _warn(record: dict[str, Any], message: str) -> None:
    """Log ``message`` and keep it in the stage's record (after any earlier one of the stage)."""
    logger.warning(message)
    record["warning"] = f"{record['warning']}; {message}" if record.get("warning") else message


def _predict(
    inputs: _Inputs,
    working: _Working,
    guard: refinement.Features,
    affine: sitk.Transform,
    options: refinement.Options,
    velocity_stride: int,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Stage 4: the network's velocity on the velocity grid, if it improves the similarity.

    Returns:
        ``(velocity, record)``: the velocity the refinement starts from (zero without a
        model, or when the network's field scores worse than none), and for the report the
        similarity with and without it and whether it was kept.
    """
    images = working.images
    working_shape = list(working.grid.GetSize()[::-1])
    ndim = len(working_shape)
    velocity_shape = [n // velocity_stride for n in working_shape]
    zero = torch.zeros((1, ndim, *velocity_shape), device=images.fixed.device)
    record: dict[str, Any] = {"similarity_initial": refinement.similarity_of(guard, zero, options)}
    if inputs.model is None:
        return zero, record
    velocity = _predict_velocity(
        inputs.model, working.network_grid, working.grid, inputs.fixed_n, inputs.moving_n,
        affine, images.fixed, images.moving,
    )  # fmt: skip
    velocity = resize_displacement(velocity, velocity_shape)
    record["similarity_network"] = refinement.similarity_of(guard, velocity, options)
    record["kept"] = record["similarity_network"] < record["similarity_initial"]
    if not record["kept"]:
        _warn(record, (
            f"the network's field ({inputs.model_path}) lowered the similarity from "
            f"{record['similarity_initial']:.4f} to {record['similarity_network']:.4f} "
            "(lower is better); it was dropped and the refinement starts from the initial "
            "alignment"
        ))  # fmt: skip
        return zero, record
    return velocity, record


def _refine(
    features: refinement.Features,
    guard: refinement.Features,
    start: torch.Tensor,
    network: dict[str, Any],
    schedule: Sequence[tuple[int, int]],
    settings: Settings,
    options: refinement.Options,
    progress: Progress | None,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Stage 5: instance optimisation on the pyramid, kept only if it improves the similarity.

    After a network's field that the guard kept, each level takes ``steps_after_network`` of
    its steps.
    """
    if network.get("kept"):
        share = settings.steps_after_network
        schedule = [(factor, math.ceil(steps * share)) for factor, steps in schedule]
    record: dict[str, Any] = {"steps": sum(steps for _, steps in schedule)}
    if record["steps"] == 0:
        return start, record
    velocity = refinement.refine_on_pyramid(
        features, start, options, schedule,
        velocity_stride=settings.velocity_stride,
        coarse_level_velocity=settings.coarse_level_velocity,
        progress=progress,
    )  # fmt: skip
    # the similarity of the start: the network's field if the guard kept it, else none
    before = network["similarity_network"] if network.get("kept") else network["similarity_initial"]
    record["similarity_start"] = before
    record["similarity_after"] = refinement.similarity_of(guard, velocity, options)
    record["kept"] = record["similarity_after"] <= before
    if not record["kept"]:
        _warn(record, (
            f"the refinement lowered the similarity from {before:.4f} to "
            f"{record['similarity_after']:.4f} (lower is better); its result was dropped"
        ))  # fmt: skip
        return start, record
    return velocity, record


def _outputs(
    inputs: _Inputs, working: _Working, affine: sitk.Transform, velocity: torch.Tensor
) -> dict[str, Any]:
    """Stage 6: the forward and inverse fields, the transform, the warped image, the Jacobian.

    The velocity is integrated on its own grid and the displacement interpolated onto the
    working grid: exactly the field that the refinement scored. The fields stay on the working
    grid: the transform interpolates them linearly, which is what resampling them onto the
    fixed grid first would do, without 24 bytes per fixed voxel for each (2.4 GiB each on a
    512x512x400 CT).
    """
    grid, fixed = working.grid, inputs.fixed
    working_shape = list(grid.GetSize()[::-1])
    steps = inputs.integration_steps
    with torch.no_grad():
        forward = resize_displacement(integrate_velocity(velocity, steps), working_shape)
        backward = resize_displacement(integrate_velocity(-velocity, steps), working_shape)
        warped_w = warp(working.images.moving, forward)
    field = _physical_field(forward, grid)
    inverse_field = _physical_field(backward, grid)
    del forward, backward
    transform = sitk.CompositeTransform(fixed.GetDimension())
    transform.AddTransform(affine)
    transform.AddTransform(sitk.DisplacementFieldTransform(sitk.Image(field)))
    warped = apply_transform(transform, fixed, inputs.moving)
    # metrics.image_jacobian_det, not ITK's DisplacementFieldJacobianDeterminant: the latter
    # ignores the image direction. It is taken on the fixed grid, slab by slab.
    jacobian = sitk.GetImageFromArray(image_jacobian_det(field, reference=fixed, dtype=np.float32))
    jacobian.CopyInformation(fixed)
    return {
        "field": field,
        "inverse_field": inverse_field,
        "transform": transform,
        "warped": warped,
        "warped_working": warped_w,
        "jacobian": jacobian,
    }


def _report(
    inputs: _Inputs,
    working: _Working,
    settings: Settings,
    affine: sitk.Transform,
    aligned: dict[str, Any],
    network: dict[str, Any],
    refined: dict[str, Any],
    outputs: dict[str, Any],
    timings: dict[str, float],
) -> dict[str, Any]:
    """Stage 7: inputs, settings, each stage's similarity and decision, quality and timings."""
    ndim = inputs.fixed.GetDimension()
    images = working.images
    mask = images.fixed_mask
    trained_spacing = (inputs.card or {}).get("preprocessing", {}).get("spacing")
    warnings = [w for w in (aligned.get("warning"), working.memory["warning"],
                            network.get("warning"), refined.get("warning")) if w]  # fmt: skip

    def modality(decision: preprocess.ModalityDecision) -> dict[str, Any]:
        return {
            "modality": decision.modality,
            "modality_decided_by": decision.decided_by,
            "hu_offset": decision.hu_offset,
        }

    report = {
        "intermodal_version": __version__,
        "inputs": {
            "fixed": {**modality(inputs.fixed_modality), **geometry(inputs.fixed)},
            "moving": {**modality(inputs.moving_modality), **geometry(inputs.moving)},
        },
        "settings": {**asdict(settings), "integration_steps": inputs.integration_steps},
        "model_path": inputs.model_path,
        "model_card": inputs.card,
        "device": str(images.fixed.device),
        "working_grid": geometry(working.grid),
        # spacing (mm, x y z) the network ran at: its trained one, whatever the working grid
        "network_spacing": None
        if inputs.model is None
        else [
            float(v) for v in np.broadcast_to(trained_spacing or working.grid.GetSpacing(), (ndim,))
        ],  # fmt: skip
        "initial_transform": {
            "type": affine.GetName(),
            "method": settings.init,
            "kept": aligned.get("kept", settings.init),
            "parameters": list(affine.GetParameters()),
            "fixed_parameters": list(affine.GetFixedParameters()),
            "overlap": working.overlap,
        },
        "stages": {"align": aligned, "network": network, "refine": refined},
        "nmi": {
            "before": warped_nmi(images.fixed, working.moving_unaligned, mask),
            "after_initial": warped_nmi(images.fixed, images.moving, mask),
            "after": warped_nmi(images.fixed, outputs["warped_working"], mask),
        },
        "jacobian": jacobian_statistics(outputs["jacobian"]),
        "timings_s": {name: round(value, 4) for name, value in timings.items()},
        "memory": {k: v for k, v in working.memory.items() if k != "warning"},
        "warnings": warnings,
    }
    report["timings_s"]["total"] = round(sum(timings.values()), 4)
    return report


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
    "preset_settings",
    "RegistrationResult",
    "register",
    "apply_transform",
    "map_points",
    "jacobian_statistics",
]
