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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch

from intermodal import __version__, classical, preprocess
from intermodal.errors import IntermodalError
from intermodal.io import displacement_to_image, geometry, image_to_tensor
from intermodal.losses import diffusion, mind_descriptor_loss, mind_ssc, ngf, nmi
from intermodal.metrics import jacobian_determinant
from intermodal.models import resolve_model
from intermodal.spatial import (
    integrate_velocity,
    physical_to_voxel,
    resize_displacement,
    voxel_to_physical,
    warp,
)

logger = logging.getLogger(__name__)

SIMILARITY_CHOICES = ("mind", "ngf")
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
        similarity: refinement similarity, ``"mind"`` (MIND-SSC) or ``"ngf"``.
        smoothness: weight of the diffusion regulariser on the displacement (voxels^2).
        learning_rate: Adam step on the velocity, in coarse-grid voxels.
        velocity_stride: the velocity lives on the working grid subsampled by this factor.
        pyramid: refinement levels, as factors by which the working grid is subsampled, coarse
            to fine; the ``refine`` steps are shared equally between them.
        integration_steps: scaling-and-squaring steps.
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
    pyramid: tuple[int, ...] = (4, 2, 1)
    integration_steps: int = 7
    seed: int = 0

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
        if self.velocity_stride not in (1, 2, 4):
            raise IntermodalError(f"velocity stride must be 1, 2 or 4, not {self.velocity_stride}")
        if not self.pyramid or any(f not in (1, 2, 4, 8) for f in self.pyramid):
            raise IntermodalError(
                f"pyramid levels must be factors among 1, 2, 4, 8, not {self.pyramid}"
            )
        if (self.model is None or self.model.lower() == "none") and self.refine == 0:
            raise IntermodalError("--model none with --refine 0 would do no deformable step")


@dataclass
class RegistrationResult:
    """What :func:`register` returns. Every image is on the fixed image's own grid.

    Attributes:
        fixed: the fixed image as read.
        moving: the moving image as read.
        affine: the initial transform, fixed -> moving physical points.
        displacement: deformable part, a float64 vector image of LPS mm on the fixed grid.
        inverse_displacement: its inverse (negated velocity), same layout.
        transform: ``affine`` after ``displacement``, as one ITK composite transform.
        warped: the moving image resampled through ``transform``.
        jacobian: determinant of the deformable part's Jacobian on the fixed grid.
        report: inputs, settings, timings and quality figures (JSON-serialisable).
    """

    fixed: sitk.Image
    moving: sitk.Image
    affine: sitk.Transform
    displacement: sitk.Image
    inverse_displacement: sitk.Image
    transform: sitk.CompositeTransform
    warped: sitk.Image
    jacobian: sitk.Image
    report: dict[str, Any] = field(default_factory=dict)
    fixed_normalized: sitk.Image | None = None
    moving_normalized: sitk.Image | None = None

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
    values = sitk.GetArrayViewFromImage(jacobian).astype(np.float64)
    if mask is not None:
        values = values[sitk.GetArrayViewFromImage(mask) > 0]
    values = values.ravel()
    if values.size == 0:
        raise IntermodalError("the Jacobian mask selects no voxel")
    log_det = np.log(np.clip(values, 1e-9, None))
    return {
        "nonpositive_fraction": float(np.mean(values <= 0)),
        "sdlogj": float(np.std(log_det)),
        "min": float(values.min()),
        "max": float(values.max()),
        "mean": float(values.mean()),
    }


def _similarity_loss(
    similarity: str, fixed: torch.Tensor, moving: torch.Tensor
) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function of the displacement that scores how well ``moving`` warped matches ``fixed``.

    MIND descriptors are computed once and the moving *descriptor* is warped, which gives the
    same optimum as re-describing the warped image at a fraction of the cost.
    """
    if similarity == "mind":
        fixed_desc = mind_ssc(fixed)
        moving_desc = mind_ssc(moving)
        return lambda u: mind_descriptor_loss(fixed_desc, warp(moving_desc, u))
    return lambda u: ngf(fixed, warp(moving, u))


def refine_velocity(
    fixed: torch.Tensor,
    moving: torch.Tensor,
    velocity: torch.Tensor,
    *,
    steps: int,
    similarity: str = "mind",
    smoothness: float = 1.0,
    learning_rate: float = 0.1,
    integration_steps: int = 7,
    progress: Progress | None = None,
) -> torch.Tensor:
    """Instance optimisation: Adam on a stationary velocity field.

    Minimises ``similarity(fixed, moving ∘ (id + exp(v))) + smoothness * diffusion(exp(v))``,
    The velocity and its integration live on a coarse grid (fewer unknowns, smoother fields);
    the displacement is upsampled to the working grid, where the similarity is evaluated.

    Args:
        fixed: ``(1, 1, *spatial)`` fixed image in ``[0, 1]`` on the working grid.
        moving: ``(1, 1, *spatial)`` moving image in ``[0, 1]`` on the same grid.
        velocity: ``(1, ndim, *coarse)`` starting velocity in coarse-grid voxels.
        steps: Adam iterations.
        similarity: ``"mind"`` or ``"ngf"``.
        smoothness: diffusion regulariser weight.
        learning_rate: Adam learning rate (coarse voxels per step, roughly).
        integration_steps: scaling-and-squaring steps.
        progress: callback ``("refine", step, steps)``.

    Returns:
        The refined velocity, same shape as ``velocity``, detached.
    """
    shape = tuple(fixed.shape[2:])
    score = _similarity_loss(similarity, fixed, moving)
    velocity = velocity.detach().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([velocity], lr=learning_rate)
    for step in range(steps):
        optimizer.zero_grad(set_to_none=True)
        coarse = integrate_velocity(velocity, integration_steps)
        loss = score(resize_displacement(coarse, shape)) + smoothness * diffusion(coarse)
        loss.backward()
        optimizer.step()
        if progress:
            progress("refine", step + 1, steps)
    return velocity.detach()


def _physical_field_on(
    displacement: torch.Tensor, grid: sitk.Image, target: sitk.Image
) -> sitk.Image:
    """Voxel displacement on ``grid`` -> LPS mm vector image resampled onto ``target``."""
    physical = voxel_to_physical(displacement, grid.GetSpacing(), grid.GetDirection())
    field_on_grid = displacement_to_image(physical.cpu(), grid)
    identity = sitk.Transform(grid.GetDimension(), sitk.sitkIdentity)
    return sitk.Resample(
        field_on_grid, target, identity, sitk.sitkLinear, 0.0, sitk.sitkVectorFloat64
    )


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


# Peak memory of one registration (bytes) ~ per_working * working-grid voxels
# + per_fixed * fixed-image voxels + constant, fitted by least squares to the peak RSS (VmHWM
# reset through /proc/self/clear_refs, minus VmRSS after reading the inputs) of register() with
# --model none, --refine 6, on the CPU, one thread, on phantom pairs (moving as large as fixed):
# 3D, 9 runs from 48x64x64 to 128x160x160 voxels, working grids of 74k to 3.3M voxels (spacing
# 1.5, 2 and 4 mm on 2 mm images): the fit is within -22 % .. +13 % of every run (3.3M/3.3M:
# 1598 MiB measured, 1623 fitted). 2D, 3 runs (512^2 and 1024^2 pixels, working grids of 65k to
# 1M pixels): fitted exactly. The working-grid term is the refinement's (MIND-SSC descriptors
# of both images, 12 channels in 3D and 4 in 2D, the warped descriptor and its autograd
# buffers); the fixed-image term is the outputs (two float64 displacement fields, their
# resampling, the Jacobian); the constant is allocator pools, thread buffers and ITK's
# registration. 30 refinement steps instead of 6 raised the peak by 7 %, 2 threads by 1 %; the
# bundled 2D model at 1024^2 pixels without refinement stayed below the refinement's peak.
_MEMORY_MODEL = {2: (184.0, 148.0, 91 << 20), 3: (357.0, 103.0, 186 << 20)}
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
    mask = image_to_tensor(preprocess.field_of_view_mask(fixed, grid)).to(device)
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
    if settings.refine > 0:
        # Coarse to fine: the steps are shared between the levels of the pyramid; a level whose
        # grid would be under 8 voxels along an axis is skipped.
        levels = [f for f in settings.pyramid if min(working_shape) // f >= 8] or [1]
        share, extra = divmod(settings.refine, len(levels))
        steps_per_level = [share] * (len(levels) - 1) + [share + extra]
        schedule = list(zip(levels, steps_per_level))
        done = 0
        for factor, steps in schedule:
            if steps == 0:
                continue
            fixed_level, moving_level = fixed_w, moving_w
            if factor > 1:
                size = [n // factor for n in working_shape]
                fixed_level = torch.nn.functional.interpolate(fixed_w, size=size, mode="area")
                moving_level = torch.nn.functional.interpolate(moving_w, size=size, mode="area")

            def level_progress(stage: str, step: int, total: int, offset: int = done) -> None:
                if progress:
                    progress(stage, offset + step, settings.refine)

            velocity = refine_velocity(
                fixed_level,
                moving_level,
                velocity,
                steps=steps,
                similarity=settings.similarity,
                smoothness=settings.smoothness,
                learning_rate=settings.learning_rate,
                integration_steps=settings.integration_steps,
                progress=level_progress,
            )
            done += steps
    timings["refine"] = time.perf_counter() - start

    start = time.perf_counter()
    stage("output")
    with torch.no_grad():
        # The outputs integrate the velocity on the working grid rather than the coarse one:
        # it is done once, so the cost is small, and forward and inverse agree better (on the
        # 5 mm test phantom the mean round-trip error halved, 0.14 -> 0.07 mm).
        velocity_w = resize_displacement(velocity, working_shape)
        forward = integrate_velocity(velocity_w, settings.integration_steps)
        backward = integrate_velocity(-velocity_w, settings.integration_steps)
        warped_w = warp(moving_w, forward)
    displacement = _physical_field_on(forward, grid, fixed)
    inverse_displacement = _physical_field_on(backward, grid, fixed)
    transform = sitk.CompositeTransform(ndim)
    transform.AddTransform(affine)
    transform.AddTransform(sitk.DisplacementFieldTransform(sitk.Image(displacement)))
    warped = apply_transform(transform, fixed, moving)
    # metrics.jacobian_determinant, not ITK's DisplacementFieldJacobianDeterminant: the latter
    # ignores the image direction, so it was wrong for every non-identity direction.
    jacobian = sitk.GetImageFromArray(jacobian_determinant(displacement).astype(np.float32))
    jacobian.CopyInformation(displacement)
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
        displacement=displacement,
        inverse_displacement=inverse_displacement,
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
    "RegistrationResult",
    "register",
    "refine_velocity",
    "apply_transform",
    "map_points",
    "jacobian_statistics",
]
