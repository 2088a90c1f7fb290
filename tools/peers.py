"""The peers of ``benchmarks/compare.py``: each registers a moving MR onto a fixed CT its own way.

Every function here takes the fixed CT and the moving MR as SimpleITK images (CT in HU, MR in
scanner units) and returns a :class:`PeerResult`: a fixed -> moving transform that
``sitk.Resample`` applies on the fixed grid, the Jacobian determinant of its deformable part on
the fixed grid, and the seconds the registration itself took (intensity scaling, alignment,
deformable stage; not the scoring that follows). All peers see the same [0, 1] intensities as
intermodal (CT: HU window -1000..1000, MR: 0.5/99.5 percentiles), because 32 histogram bins
over the raw CT range would put fat and muscle into one bin.

- VoxelMorph: ``voxelmorph.nn.models.VxmPairwise`` (PyPI voxelmorph 0.3.4), trained here by
  :func:`train_voxelmorph` on intermodal's own prepared data, pair sampling and losses, so that
  only the network differs from intermodal's bundled model. At test time it gets intermodal's
  initial affine (:func:`intermodal.classical.initial_alignment`) and runs on the working grid
  intermodal's 2D model runs on.
- ANTs: ``ants.registration(type_of_transform="SyNRA")`` with Mattes MI in every stage.
- elastix: ``itk.elastix_registration_method`` with the default "affine" and "bspline"
  parameter maps, metric AdvancedMattesMutualInformation in both.
- SimpleITK: intermodal's own Mattes MI affine + B-spline baseline
  (:func:`intermodal.classical.bspline_registration`).

Threads: the caller sets ``OMP_NUM_THREADS=1`` and ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=1``
before anything is imported; :func:`single_threaded` sets what can be set after import.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import SimpleITK as sitk

VXM_MULTIPLE = 16  # VxmPairwise's default U-Net pools 4 times


@dataclass
class PeerResult:
    """One registration by one method.

    Attributes:
        transform: fixed -> moving physical points (mm), for ``sitk.Resample`` on the fixed grid.
        jacobian_det: ``(*spatial)`` array order, the determinant of the deformable part's
            Jacobian on the fixed grid (all ones for a method without one).
        seconds: wall time of the registration (no scoring, no file output).
        info: method details for the report (settings, stage times).
    """

    transform: sitk.Transform
    jacobian_det: np.ndarray
    seconds: float
    info: dict[str, Any]


def single_threaded() -> None:
    """One thread for torch and for ITK (SimpleITK's global default, ITK's environment)."""
    import torch

    torch.set_num_threads(1)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = "1"


def normalised(fixed_ct: sitk.Image, moving_mr: sitk.Image) -> tuple[sitk.Image, sitk.Image]:
    """Both images in [0, 1] the way intermodal scales them (float32)."""
    from intermodal.preprocess import normalize_intensity

    fixed = sitk.Cast(fixed_ct, sitk.sitkFloat32)
    moving = sitk.Cast(moving_mr, sitk.sitkFloat32)
    return normalize_intensity(fixed, "ct"), normalize_intensity(moving, "mr")


def field_jacobian(displacement: sitk.Image) -> np.ndarray:
    """Jacobian determinant of ``p -> p + d(p)`` for an LPS mm vector image (array order)."""
    from intermodal.metrics import image_jacobian_det

    return np.asarray(image_jacobian_det(displacement), dtype=np.float32)


def transform_jacobian(transform: sitk.Transform, reference: sitk.Image) -> np.ndarray:
    """Jacobian determinant of a dense-able transform sampled on ``reference``'s grid."""
    displacement = sitk.TransformToDisplacementField(
        transform,
        sitk.sitkVectorFloat64,
        reference.GetSize(),
        reference.GetOrigin(),
        reference.GetSpacing(),
        reference.GetDirection(),
    )
    return field_jacobian(displacement)


# --------------------------------------------------------------------------- intermodal


# The presets that intermodal had before issue 23 made one default, kept here so that the
# earlier benchmark rows (RESULTS.md's older sections) stay reproducible by name. They set what
# they set then; the settings they leave out now take today's defaults.
FORMER_PRESETS: dict[str, dict[int, dict[str, Any]]] = {
    "smooth": {
        2: {"volume_penalty": 0.6, "smoothness": 0.5},
        3: {"volume_penalty": 0.4, "smoothness": 0.5},
    },
    "fast": {
        2: {"model": "auto", "init": "moments", "refine": 6, "learning_rate": 0.3,
            "integration_steps": 3},
        3: {"model": None, "init": "moments", "spacing": 4.0, "sampling": 0.1, "refine": 18,
            "learning_rate": 0.45, "integration_steps": 3},
    },
}  # fmt: skip


def preset_values(preset: str, ndim: int) -> dict[str, Any]:
    """A preset's settings: today's (``intermodal.presets``) or a former one's."""
    from intermodal.presets import PRESETS

    return dict((PRESETS.get(preset) or FORMER_PRESETS[preset])[ndim])


def resolve_settings(settings: dict[str, Any], ndim: int):
    """``Settings(**settings)``, or, when ``settings`` names a ``preset``, that preset for
    ``ndim``-D images with the rest as overrides (as ``--preset`` and the options combine)."""
    from intermodal.registration import settings_from_mapping

    values = dict(settings)
    return settings_from_mapping({**preset_values(values.pop("preset", "default"), ndim), **values})


def intermodal_register(
    fixed_ct: sitk.Image, moving_mr: sitk.Image, settings: dict[str, Any]
) -> PeerResult:
    """``intermodal.registration.register`` with :func:`resolve_settings` of ``settings``."""
    from intermodal.registration import register

    ndim = fixed_ct.GetDimension()
    chosen = resolve_settings(settings, ndim)
    start = time.perf_counter()
    result = register(fixed_ct, moving_mr, chosen)
    seconds = time.perf_counter() - start
    jacobian = sitk.GetArrayFromImage(result.jacobian)
    # the settings that the caller or its preset named, with the values that ran
    preset = settings.get("preset", "default")
    named = set(settings) | set(preset_values(preset, ndim))
    info = {
        "preset": preset,
        "settings": {k: v for k, v in result.report["settings"].items() if k in named},
        "model_path": result.report["model_path"],
        "stage_s": result.report["timings_s"],
    }
    return PeerResult(result.transform, jacobian, seconds, info)


# --------------------------------------------------------------------------- VoxelMorph


def _vxm_network(ndim: int):
    from voxelmorph.nn.models import VxmPairwise

    # VoxelMorph's defaults: 5 levels of 16 features, 5 scaling-and-squaring steps at full size
    return VxmPairwise(ndim, 1, 1)


def train_voxelmorph(
    config_path: Path,
    loss: str,
    out: Path,
    *,
    steps: int | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    device: str = "cpu",
) -> dict[str, Any]:
    """Train ``VxmPairwise`` on the data, pairs, batches, steps and lr of an intermodal config.

    The loop is intermodal's (:mod:`intermodal.training.trainer`) with its network swapped:
    the same :func:`~intermodal.training.pairs.sample_pairs` draws (seed, direction), the same
    :func:`~intermodal.training.pairs.make_batch` augmentation, the same
    :func:`~intermodal.training.objectives.training_loss` (``intra``: LNCC CT + LNCC MR +
    diffusion; ``mi``: Mattes-style MI of the network's own pair + diffusion), Adam at the same
    learning rate. VoxelMorph's displacement convention (voxels, channel ``i`` along array axis
    ``i``, ``x + u(x)``, corners aligned) is intermodal's, so intermodal's warp serves both.

    Args:
        config_path: an intermodal training config (e.g. ``configs/pelvis2d.toml``).
        loss: ``"intra"`` or ``"mi"``.
        out: folder for ``model.safetensors`` and ``card.json``.
        steps: override the config's step count (None: the config's).
        overrides: further ``KEY=VALUE`` config overrides, as ``intermodal train --set``
            takes them (``train.batch_size=4``).
        device: ``"cpu"`` or ``"cuda"``; on CUDA in fp32 (intermodal's trainer uses fp16
            autocast there).

    Returns:
        The card: loss, steps, batch, lr, wall time, final loss.
    """
    import torch
    from safetensors.torch import save_file

    from intermodal.data.manifest import load_manifest
    from intermodal.networks import RegistrationOutput
    from intermodal.training.config import load_config
    from intermodal.training.objectives import training_loss
    from intermodal.training.pairs import make_batch, sample_pairs, step_generator
    from intermodal.training.volumes import load_volumes

    overrides = [f"loss.name={loss}", *overrides] + ([f"train.steps={steps}"] if steps else [])
    config = load_config(config_path, overrides)
    manifest = load_manifest(config.data.manifest)
    volumes = load_volumes(manifest, "training", dim=config.data.dim, labels="never").to(device)
    torch.manual_seed(config.train.seed)
    network = _vxm_network(config.data.dim).to(device)
    network.train()
    optimizer = torch.optim.Adam(network.parameters(), lr=config.train.lr)
    out.mkdir(parents=True, exist_ok=True)
    history = []
    start = time.perf_counter()
    for step in range(config.train.steps):
        pairs = sample_pairs(
            len(volumes),
            config.train.batch_size,
            seed=config.train.seed,
            step=step,
            direction=config.train.direction,
        )
        batch = make_batch(
            volumes.ct,
            volumes.mr,
            None,
            pairs,
            augment=config.augment,
            generator=step_generator(config.train.seed, step),
        )
        velocity = network(batch.network_moving, batch.network_fixed, return_field_type="svf")
        displacement = network.velocity_field_integrator(velocity)
        value, terms = training_loss(
            config.loss,
            RegistrationOutput(velocity, displacement),
            batch,
            integration_steps=network.integration_steps,
            seed=config.train.seed * 1_000_003 + step,
        )
        if not torch.isfinite(value):
            raise RuntimeError(f"VoxelMorph {loss}: non-finite loss at step {step}")
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        optimizer.step()
        if step % 50 == 0 or step == config.train.steps - 1:
            history.append({"step": step + 1, **terms, "s": time.perf_counter() - start})
            print(f"vxm {loss} step {step + 1}/{config.train.steps} {terms}", flush=True)
    wall = time.perf_counter() - start
    state = {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
    save_file(state, out / "model.safetensors")
    card = {
        "network": "voxelmorph.nn.models.VxmPairwise(ndim, 1, 1) (defaults)",
        "parameters": sum(p.numel() for p in network.parameters()),
        "config": _repo_relative(config_path),
        "loss": loss,
        "smoothness": config.loss.smoothness,
        "lncc_window": config.loss.lncc_window,
        "mi_bins": config.loss.mi_bins,
        "steps": config.train.steps,
        "batch_size": config.train.batch_size,
        "lr": config.train.lr,
        "direction": config.train.direction,
        "augment_probability": config.augment.probability,
        "seed": config.train.seed,
        "subjects": len(volumes),
        "shape": list(volumes.shape),
        "spacing": list(volumes.spacing),
        "wall_time_s": wall,
        "torch_threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
        "torch": torch.__version__,
        "history": history,
    }
    (out / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    return card


def _repo_relative(path: Path) -> str:
    """``path`` relative to the repository when it lies inside it (cards travel)."""
    repo = Path(__file__).resolve().parents[1]
    resolved = Path(path).resolve()
    return str(resolved.relative_to(repo)) if resolved.is_relative_to(repo) else str(path)


def load_voxelmorph(folder: Path):
    """A trained ``VxmPairwise`` (eval mode) and its card."""
    from safetensors.torch import load_file

    card = json.loads((folder / "card.json").read_text())
    network = _vxm_network(len(card["shape"]))
    network.load_state_dict(load_file(folder / "model.safetensors"))
    network.eval()
    return network, card


def voxelmorph_register(
    fixed_ct: sitk.Image, moving_mr: sitk.Image, network: Any, spacing: list[float]
) -> PeerResult:
    """intermodal's initial affine, then VxmPairwise's field on the working grid at ``spacing``.

    The same steps as ``register`` with ``refine=0``: scale intensities, Mattes MI affine,
    resample both onto the fixed extent at the network's training spacing (padded to a
    multiple of 16), one forward pass, the voxel displacement converted to LPS mm and resampled
    onto the fixed grid, composed after the affine.
    """
    import torch

    from intermodal.classical import initial_alignment
    from intermodal.io import displacement_to_image, image_to_tensor
    from intermodal.preprocess import resample, working_grid
    from intermodal.spatial import voxel_to_physical

    start = time.perf_counter()
    fixed_n, moving_n = normalised(fixed_ct, moving_mr)
    affine = initial_alignment(fixed_n, moving_n, "affine")
    grid = working_grid(fixed_ct, spacing, VXM_MULTIPLE)
    fixed_w = image_to_tensor(resample(fixed_n, grid))
    moving_w = image_to_tensor(resample(moving_n, grid, affine))
    with torch.no_grad():
        displacement = network(moving_w, fixed_w)
    physical = voxel_to_physical(displacement, grid.GetSpacing(), grid.GetDirection())
    on_grid = displacement_to_image(physical, grid)
    identity = sitk.Transform(grid.GetDimension(), sitk.sitkIdentity)
    field = sitk.Resample(on_grid, fixed_ct, identity, sitk.sitkLinear, 0.0, sitk.sitkVectorFloat64)
    transform = sitk.CompositeTransform(fixed_ct.GetDimension())
    transform.AddTransform(affine)
    transform.AddTransform(sitk.DisplacementFieldTransform(sitk.Image(field)))
    seconds = time.perf_counter() - start
    return PeerResult(transform, field_jacobian(field), seconds, {"working_grid": grid.GetSize()})


# --------------------------------------------------------------------------- ANTs


def _to_ants(image: sitk.Image, folder: Path, name: str):
    import ants

    path = folder / f"{name}.nii.gz"
    sitk.WriteImage(image, str(path))
    return ants.image_read(str(path))


def ants_register(
    fixed_ct: sitk.Image, moving_mr: sitk.Image, *, seed: int | None = None
) -> PeerResult:
    """ANTs SyNRA (rigid + affine + SyN), Mattes MI in every stage, antspyx defaults otherwise.

    The returned transform is ANTs' own chain read back into SimpleITK (ANTs writes ITK
    formats): the generic affine after the forward warp field, as ``antsApplyTransforms``
    applies them. In 2D the images go through NIfTI files (antspyx reads from files).

    ``seed``: antspyx has no seed argument; ANTs reads ``ANTS_RANDOM_SEED`` from the
    environment when none is given, so it is set for this call. ``None`` (the default, as
    antspyx users run it) leaves ANTs to seed its metric sampling from the clock.
    """
    if seed is None:
        return _ants_register(fixed_ct, moving_mr)
    # patch.dict puts the environment back as it was, an earlier ANTS_RANDOM_SEED included
    with mock.patch.dict(os.environ, {"ANTS_RANDOM_SEED": str(seed)}):
        return _ants_register(fixed_ct, moving_mr)


def _ants_register(fixed_ct: sitk.Image, moving_mr: sitk.Image) -> PeerResult:
    import ants

    start = time.perf_counter()
    fixed_n, moving_n = normalised(fixed_ct, moving_mr)
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        fixed = _to_ants(fixed_n, folder, "fixed")
        moving = _to_ants(moving_n, folder, "moving")
        registration = ants.registration(
            fixed,
            moving,
            type_of_transform="SyNRA",
            aff_metric="mattes",
            syn_metric="mattes",
            outprefix=str(folder / "ants_"),
        )
        seconds = time.perf_counter() - start
        forward = registration["fwdtransforms"]
        # fwdtransforms is [warp, affine]: a fixed point p maps to affine(p + warp(p)). A
        # SimpleITK composite applies the transform added last first, so add them reversed.
        composite = sitk.CompositeTransform(fixed_ct.GetDimension())
        for path in reversed(forward):
            if path.endswith(".mat"):
                composite.AddTransform(sitk.ReadTransform(path))
            else:
                field = sitk.ReadImage(path, sitk.sitkVectorFloat64)
                jacobian = field_jacobian(field)
                composite.AddTransform(sitk.DisplacementFieldTransform(field))
    return PeerResult(
        composite,
        jacobian,
        seconds,
        {"transforms": [Path(p).name for p in forward]},
    )


# --------------------------------------------------------------------------- elastix


def elastix_register(fixed_ct: sitk.Image, moving_mr: sitk.Image) -> PeerResult:
    """elastix (itk-elastix): default "affine" then "bspline" maps, Mattes MI in both.

    Both maps are itk-elastix's defaults, unchanged: AdvancedMattesMutualInformation in both
    (the B-spline map adds its default TransformBendingEnergyPenalty), 4 resolutions of 256
    adaptive stochastic gradient descent iterations on 2048 random samples each, B-spline
    final grid spacing 10 mm. (Replacing the B-spline metric by MI alone, without the bending
    penalty, gave SDlogJ 0.99 and folding on a 2D test pair.)
    The result is read back as a dense displacement on the fixed grid (``transformix``'s
    deformation field, affine included), so the Jacobian here covers affine + B-spline; the
    affine part has a constant, positive determinant, which does not change the folding.
    """
    import itk

    start = time.perf_counter()
    fixed_n, moving_n = normalised(fixed_ct, moving_mr)
    fixed = itk.GetImageFromArray(sitk.GetArrayFromImage(fixed_n))
    moving = itk.GetImageFromArray(sitk.GetArrayFromImage(moving_n))
    for itk_image, sitk_image in ((fixed, fixed_n), (moving, moving_n)):
        itk_image.SetSpacing(sitk_image.GetSpacing())
        itk_image.SetOrigin(sitk_image.GetOrigin())
        ndim = sitk_image.GetDimension()
        direction = np.array(sitk_image.GetDirection()).reshape(ndim, ndim)
        itk_image.SetDirection(itk.matrix_from_array(direction))
    parameters = itk.ParameterObject.New()
    for name in ("affine", "bspline"):
        parameters.AddParameterMap(parameters.GetDefaultParameterMap(name))
    _, transform_parameters = itk.elastix_registration_method(
        fixed, moving, parameter_object=parameters, log_to_console=False, number_of_threads=1
    )
    seconds_registration = time.perf_counter() - start
    # transformix writes deformationField.nii into its output directory (default: the cwd)
    with tempfile.TemporaryDirectory() as temporary:
        field = itk.transformix_deformation_field(
            moving, transform_parameters, output_directory=temporary
        )
    array = itk.GetArrayFromImage(field).astype(np.float64)
    displacement = sitk.GetImageFromArray(array, isVector=True)
    displacement.CopyInformation(fixed_n)
    jacobian = field_jacobian(displacement)
    transform = sitk.DisplacementFieldTransform(sitk.Image(displacement))
    seconds = time.perf_counter() - start
    return PeerResult(
        transform,
        jacobian,
        seconds,
        {"registration_s": seconds_registration, "maps": ["affine", "bspline"]},
    )


# --------------------------------------------------------------------------- SimpleITK


def sitk_register(fixed_ct: sitk.Image, moving_mr: sitk.Image) -> PeerResult:
    """intermodal's SimpleITK baseline: Mattes MI affine, then Mattes MI B-spline (40 mm)."""
    from intermodal import classical

    start = time.perf_counter()
    fixed_n, moving_n = normalised(fixed_ct, moving_mr)
    initial = classical.initial_alignment(fixed_n, moving_n, "affine")
    composite = classical.bspline_registration(fixed_n, moving_n, initial, threads=1)
    seconds = time.perf_counter() - start
    composite = sitk.CompositeTransform(composite)
    parts = [composite.GetNthTransform(i) for i in range(composite.GetNumberOfTransforms())]
    bspline = [p for p in parts if "BSpline" in p.GetName()][0]
    return PeerResult(
        composite,
        transform_jacobian(bspline, fixed_ct),
        seconds,
        {"transforms": [p.GetName() for p in parts], "mesh_mm": 40.0},
    )
