"""The registration methods the suite compares, each run as its own documentation recommends.

Every method is one function ``(fixed, moving, context) -> sitk.Transform`` that returns the
fixed -> moving mapping (physical mm, as ``sitk.Resample`` applies it on the fixed grid);
:func:`dense_field` turns it into a displacement field on the fixed grid, which is what the
suite stores and scores, so that every method is scored by the same code.

Intensities: intermodal gets the images as read. Every peer gets each image scaled by its own
0.5 / 99.5 percentiles to [0, 1] (:func:`percentile_scaled`), the same modality-blind scaling
for all, so that a CT stored with an offset is no special case for them either.

Threads: the suite starts each run in a fresh process whose environment already holds the thread
count (``OMP_NUM_THREADS``, ``MKL_NUM_THREADS``, ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS``);
:func:`set_threads` sets what can only be set after import, and each method passes the count to
its tool where the tool takes one (elastix, Greedy, plastimatch).

Nothing here is imported by the library; peers are imported lazily, and :func:`unavailable`
says why a method cannot run (a missing package or program, a dimension it does not handle).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

WEIGHTS = Path(__file__).resolve().parent / "weights"
"""VoxelMorph ``VxmPairwise`` 3D weights (``vxm_3d_mi``, ``vxm_3d_intra``), trained on a GPU
on intermodal's synthetic pelvis data by the training benchmarks; read here, never trained."""


@dataclass(frozen=True)
class Context:
    """What a method may use besides the two images.

    Attributes:
        threads: the thread count every method gets.
        folder: a private temporary folder for the tool's files.
        device: intermodal's ``Settings.device`` (``None``: its default).
    """

    threads: int
    folder: Path
    device: str | None = None


@dataclass(frozen=True)
class Method:
    """A method of the suite.

    Attributes:
        label: the row label in RESULTS.md.
        register: ``(fixed, moving, context) -> fixed -> moving transform``.
        dims: the image dimensions it handles.
        needs: Python modules or programs (``"bin:NAME"``) it needs.
        settings: one line: what runs, and the document that recommends it.
        datasets: the datasets it is meant for (``None``: every one).
    """

    label: str
    register: Callable[[sitk.Image, sitk.Image, Context], sitk.Transform]
    dims: tuple[int, ...]
    needs: tuple[str, ...]
    settings: str
    datasets: tuple[str, ...] | None = None


# --------------------------------------------------------------------------- helpers


def set_threads(threads: int) -> None:
    """The thread count for torch and SimpleITK in this process (the environment is set by
    the suite before the process starts)."""
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    if importlib.util.find_spec("torch") is not None:
        import torch

        torch.set_num_threads(threads)


def percentile_scaled(image: sitk.Image) -> sitk.Image:
    """``image`` scaled by its 0.5 / 99.5 percentiles to [0, 1], clipped (float32)."""
    array = sitk.GetArrayFromImage(image).astype(np.float32)
    low, high = np.percentile(array, [0.5, 99.5])
    scaled = np.clip((array - low) / max(float(high - low), 1e-6), 0.0, 1.0)
    out = sitk.GetImageFromArray(scaled.astype(np.float32))
    out.CopyInformation(image)
    return out


def dense_field(transform: sitk.Transform, grid: sitk.Image) -> sitk.Image:
    """The displacement ``T(p) - p`` (mm, physical axes) at every voxel of ``grid`` (float64)."""
    return sitk.TransformToDisplacementField(
        transform,
        sitk.sitkVectorFloat64,
        grid.GetSize(),
        grid.GetOrigin(),
        grid.GetSpacing(),
        grid.GetDirection(),
    )


def field_transform(field: sitk.Image) -> sitk.Transform:
    """A displacement image (physical mm on the fixed grid) as a transform."""
    return sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64))


def voxel_field_to_physical(displacement: np.ndarray, grid: sitk.Image) -> sitk.Image:
    """A displacement in voxels along the array axes ``(*shape, ndim)`` as a physical field.

    Component ``i`` of ``displacement`` runs along array axis ``i`` (``z, y, x``), the
    convention of VoxelMorph and ConvexAdam; the result is ITK's: ``(x, y, z)`` mm.
    """
    ndim = grid.GetDimension()
    direction = np.array(grid.GetDirection()).reshape(ndim, ndim)
    index_xyz = displacement[..., ::-1] * np.array(grid.GetSpacing())
    physical = index_xyz @ direction.T
    field = sitk.GetImageFromArray(physical.astype(np.float64), isVector=True)
    field.CopyInformation(grid)
    return field


def _write(image: sitk.Image, path: Path) -> str:
    sitk.WriteImage(image, str(path))
    return str(path)


# --------------------------------------------------------------------------- intermodal


def _intermodal(
    fixed: sitk.Image, moving: sitk.Image, context: Context, **chosen
) -> sitk.Transform:
    # The public API with its current defaults: only what the row names is set.
    from intermodal.registration import Settings, register

    if context.device is not None:
        chosen["device"] = context.device
    settings = Settings(**chosen) if chosen else None
    return register(fixed, moving, settings).transform


def intermodal_default(fixed: sitk.Image, moving: sitk.Image, context: Context) -> sitk.Transform:
    return _intermodal(fixed, moving, context)


def intermodal_model_none(
    fixed: sitk.Image, moving: sitk.Image, context: Context
) -> sitk.Transform:
    return _intermodal(fixed, moving, context, model="none")


# --------------------------------------------------------------------------- ANTs


def _ants_chain(paths: list[str], ndim: int) -> sitk.Transform:
    """ANTs' forward transforms ([warp,] affine) as one fixed -> moving transform."""
    composite = sitk.CompositeTransform(ndim)
    # ANTs maps p to affine(p + warp(p)); a composite applies the transform added last first.
    for path in reversed(paths):
        if path.endswith(".mat"):
            composite.AddTransform(sitk.ReadTransform(path))
        else:
            composite.AddTransform(field_transform(sitk.ReadImage(path)))
    return composite


def _antspyx(fixed: sitk.Image, moving: sitk.Image, context: Context, kind: str) -> sitk.Transform:
    import ants

    fixed_a = ants.image_read(_write(percentile_scaled(fixed), context.folder / "fixed.nii.gz"))
    moving_a = ants.image_read(_write(percentile_scaled(moving), context.folder / "moving.nii.gz"))
    # antspyx documents "Rigid" and "SyNRA" (rigid + affine + SyN) with Mattes mutual
    # information as the metric of every stage (ants.registration's docstring).
    result = ants.registration(
        fixed_a,
        moving_a,
        type_of_transform=kind,
        aff_metric="mattes",
        syn_metric="mattes",
        outprefix=str(context.folder / "ants_"),
    )
    return _ants_chain(result["fwdtransforms"], fixed.GetDimension())


def ants_rigid(fixed: sitk.Image, moving: sitk.Image, context: Context) -> sitk.Transform:
    return _antspyx(fixed, moving, context, "Rigid")


def ants_synra(fixed: sitk.Image, moving: sitk.Image, context: Context) -> sitk.Transform:
    return _antspyx(fixed, moving, context, "SyNRA")


def voxel_reversal(image: sitk.Image) -> sitk.AffineTransform:
    """The map from a point of ``turned_mr(image)`` to the point of ``image`` that holds the
    same voxel (x and z indices reversed on the same grid): a 180-degree turn about y through
    the grid's centre when the direction is the identity."""
    ndim = image.GetDimension()
    to_point = np.asarray(image.GetDirection()).reshape(ndim, ndim) @ np.diag(image.GetSpacing())
    reversal = np.diag([-1.0, 1.0, -1.0])
    offset = np.array([image.GetSize()[0] - 1, 0, image.GetSize()[2] - 1], dtype=float)
    origin = np.asarray(image.GetOrigin())
    matrix = to_point @ reversal @ np.linalg.inv(to_point)
    affine = sitk.AffineTransform(ndim)
    affine.SetMatrix(matrix.ravel().tolist())
    affine.SetTranslation((origin + to_point @ offset - matrix @ origin).tolist())
    return affine


def ants_synra_turned(fixed: sitk.Image, moving: sitk.Image, context: Context) -> sitk.Transform:
    """ANTs SyNRA given the MR turned as the CT lies (the MRI-DIR pair's MR is stored turned
    180 degrees about y, which intermodal's initial alignment finds and ANTs' does not): the
    orientation a user would fix by hand, handed to the peer, for a fair second row."""
    from intermodal.data.realistic import turned_mr

    registered = _antspyx(fixed, turned_mr(moving), context, "SyNRA")
    # fixed -> turned MR (ANTs), then turned MR -> the stored MR: the transform added last
    # is applied first
    composite = sitk.CompositeTransform(fixed.GetDimension())
    composite.AddTransform(voxel_reversal(moving))
    composite.AddTransform(registered)
    return composite


def ants_syn_script_arguments(fixed: str, moving: str, prefix: str, ndim: int) -> list[str]:
    """antsRegistration's arguments as ``antsRegistrationSyN.sh -t s`` builds them, for MI.

    ANTs/Scripts/antsRegistrationSyN.sh (images of 256 voxels or fewer per axis): rigid and
    affine stages ``MI[f,m,1,32,Regular,0.25]``, convergence ``[1000x500x250x100,1e-6,10]``,
    shrink factors ``8x4x2x1``, smoothing ``3x2x1x0vox``; then ``SyN[0.1,3,0]`` with
    convergence ``[100x70x50x20,1e-6,10]`` (20 iterations at full resolution), the same
    shrink factors and smoothing; ``--winsorize-image-intensities [0.005,0.995]``,
    ``--use-histogram-matching 0``, an initial moving transform by the centres of mass.
    The script's SyN metric is CC, meant for one modality; ANTs documents MI for images of
    different modalities ("For intermodal image registration, use: MI = mutual information",
    the ANTS manual), and the script's own quick variant (antsRegistrationSyNQuick.sh) uses
    ``MI[f,m,1,32]`` in its SyN stage, so that is the metric here.
    """
    linear = f"MI[{fixed},{moving},1,32,Regular,0.25]"
    schedule = ["--shrink-factors", "8x4x2x1", "--smoothing-sigmas", "3x2x1x0vox"]
    return [
        "--dimensionality", str(ndim), "--float", "0",
        "--output", f"[{prefix}]",
        "--interpolation", "Linear",
        "--use-histogram-matching", "0",
        "--winsorize-image-intensities", "[0.005,0.995]",
        "--initial-moving-transform", f"[{fixed},{moving},1]",
        "--transform", "Rigid[0.1]", "--metric", linear,
        "--convergence", "[1000x500x250x100,1e-6,10]", *schedule,
        "--transform", "Affine[0.1]", "--metric", linear,
        "--convergence", "[1000x500x250x100,1e-6,10]", *schedule,
        "--transform", "SyN[0.1,3,0]", "--metric", f"MI[{fixed},{moving},1,32]",
        "--convergence", "[100x70x50x20,1e-6,10]", *schedule,
    ]  # fmt: skip


def ants_syn_mi(fixed: sitk.Image, moving: sitk.Image, context: Context) -> sitk.Transform:
    from ants.internal import get_lib_fn, process_arguments

    fixed_path = _write(percentile_scaled(fixed), context.folder / "fixed.nii.gz")
    moving_path = _write(percentile_scaled(moving), context.folder / "moving.nii.gz")
    prefix = str(context.folder / "syn_")
    arguments = ants_syn_script_arguments(fixed_path, moving_path, prefix, fixed.GetDimension())
    code = get_lib_fn("antsRegistration")(process_arguments(arguments))
    if code != 0:
        raise RuntimeError(f"antsRegistration failed with exit code {code}")
    # the script's outputs: <prefix>0GenericAffine.mat (initial + rigid + affine collapsed)
    # and <prefix>1Warp.nii.gz
    return _ants_chain(
        [f"{prefix}1Warp.nii.gz", f"{prefix}0GenericAffine.mat"], fixed.GetDimension()
    )


# --------------------------------------------------------------------------- ConvexAdam


def convexadam(fixed: sitk.Image, moving: sitk.Image, context: Context) -> sitk.Transform:
    """antspyx "Affine" (Mattes MI), then ``convex_adam_pt`` at the package's defaults."""
    import torch
    from convexAdam.convex_adam_MIND import convex_adam_pt

    affine = _antspyx(fixed, moving, context, "Affine")
    fixed_s = percentile_scaled(fixed)
    moving_s = sitk.Resample(percentile_scaled(moving), fixed, affine, sitk.sitkLinear, 0.0)
    fixed_a = sitk.GetArrayFromImage(fixed_s)
    moving_a = sitk.GetArrayFromImage(moving_s)
    # its default coarse grid is 6 voxels: pad to a multiple of it
    shape = fixed_a.shape
    pad = [(0, int(np.ceil(n / 6) * 6) - n) for n in shape]
    # convexadam's defaults (MIND radius 1, dilation 2, grid 6, search radius 4, 80 Adam steps
    # on a grid of 2, lambda 1.25, inverse consistency) as its README runs it; float32 on the
    # CPU, where its float16 default is not supported
    displacement = convex_adam_pt(
        np.pad(fixed_a, pad), np.pad(moving_a, pad), dtype=torch.float32, device=torch.device("cpu")
    )
    displacement = displacement[: shape[0], : shape[1], : shape[2]]
    composite = sitk.CompositeTransform(3)
    composite.AddTransform(affine)
    composite.AddTransform(field_transform(voxel_field_to_physical(displacement, fixed)))
    return composite


# --------------------------------------------------------------------------- Greedy


def greedy(fixed: sitk.Image, moving: sitk.Image, context: Context) -> sitk.Transform:
    """Greedy (picsl-greedy): affine then deformable, both on NMI, at Greedy's defaults.

    Greedy's reference (greedy.readthedocs.io/en/latest/reference.html) offers NMI among its
    metrics, the one for images of two modalities, and the picsl-greedy README runs its affine
    stage on it. Both stages take ``-m NMI``; everything else is Greedy's default (affine:
    12 degrees of freedom, ``-n 100x100``; deformable: ``-n 100x100``, smoothing
    ``-s 1.732vox 0.7071vox``), the affine stage started from the image centres
    (``-ia-image-centers``) and the deformable one from the affine (``-it``). ``-rc`` composes
    both into one warp on the fixed grid (ITK convention: fixed -> moving, physical mm).
    """
    from picsl_greedy import Greedy2D, Greedy3D

    runner = (Greedy3D if fixed.GetDimension() == 3 else Greedy2D)()
    images = {"fx": percentile_scaled(fixed), "mv": percentile_scaled(moving)}
    threads = f"-threads {context.threads}"
    runner.execute(
        f"-i fx mv -a -dof 12 -ia-image-centers -m NMI {threads} -o affine", affine=None, **images
    )
    runner.execute(f"-i fx mv -it affine -m NMI {threads} -o warp", warp=None)
    runner.execute("-rf fx -r warp affine -rc mapping", mapping=None)
    return field_transform(runner["mapping"])


# --------------------------------------------------------------------------- elastix


def elastix(fixed: sitk.Image, moving: sitk.Image, context: Context) -> sitk.Transform:
    """elastix's default "rigid", "affine" and "bspline" parameter maps, in turn.

    ITKElastix's examples (example 2) start users on its default maps, run as a chain from a
    linear map to "bspline"; the chain there begins with "translation", here with "rigid",
    since every case here moves by a rotation too. The maps are unchanged: metric
    AdvancedMattesMutualInformation, the elastix manual's metric for images of two
    modalities (the B-spline map adds its TransformBendingEnergyPenalty), adaptive
    stochastic gradient descent, 4 resolutions, final B-spline grid 10 mm.
    """
    import itk

    def to_itk(image: sitk.Image):
        scaled = percentile_scaled(image)
        out = itk.GetImageFromArray(sitk.GetArrayFromImage(scaled))
        out.SetSpacing(scaled.GetSpacing())
        out.SetOrigin(scaled.GetOrigin())
        ndim = scaled.GetDimension()
        out.SetDirection(itk.matrix_from_array(np.array(scaled.GetDirection()).reshape(ndim, ndim)))
        return out

    fixed_i, moving_i = to_itk(fixed), to_itk(moving)
    parameters = itk.ParameterObject.New()
    for name in ("rigid", "affine", "bspline"):
        parameters.AddParameterMap(parameters.GetDefaultParameterMap(name))
    _, transform_parameters = itk.elastix_registration_method(
        fixed_i,
        moving_i,
        parameter_object=parameters,
        log_to_console=False,
        number_of_threads=context.threads,
    )
    field = itk.transformix_deformation_field(
        moving_i, transform_parameters, output_directory=str(context.folder)
    )
    displacement = sitk.GetImageFromArray(
        itk.GetArrayFromImage(field).astype(np.float64), isVector=True
    )
    displacement.CopyInformation(fixed)
    return field_transform(displacement)


# --------------------------------------------------------------------------- SimpleITK


def simpleitk(fixed: sitk.Image, moving: sitk.Image, context: Context) -> sitk.Transform:
    """SimpleITK's own registration framework: a rigid stage, then a B-spline, both on MI.

    Rigid as SimpleITK's registration notebooks set it up (60_Registration_Introduction):
    centred Euler transform by the image geometry, Mattes MI with 50 bins on 1 % random
    samples, gradient descent (learning rate 1, 100 iterations) with scales from physical
    shift, 3 levels shrunk 4, 2, 1 and smoothed 2, 1, 0 mm. B-spline as its example
    ImageRegistrationMethodBSpline3: a mesh of 2 nodes per axis refined by 1, 2, 5, joint
    histogram MI, gradient descent with line search (step 5, 100 iterations), 3 levels shrunk
    4, 2, 1 and smoothed 4, 2, 1; the rigid result as the moving initial transform.
    """
    fixed_s = percentile_scaled(fixed)
    moving_s = percentile_scaled(moving)
    ndim = fixed.GetDimension()
    euler = sitk.Euler3DTransform() if ndim == 3 else sitk.Euler2DTransform()
    initial = sitk.CenteredTransformInitializer(
        fixed_s, moving_s, euler, sitk.CenteredTransformInitializerFilter.GEOMETRY
    )
    rigid = sitk.ImageRegistrationMethod()
    rigid.SetMetricAsMattesMutualInformation(numberOfHistogramBins=50)
    rigid.SetMetricSamplingStrategy(rigid.RANDOM)
    # the notebooks' 1 % is of 3D volumes (millions of voxels); on a 2D slice that would be a
    # few hundred samples, too few for a 50-bin histogram, so at least 20,000 are drawn
    voxels = int(np.prod(fixed.GetSize()))
    rigid.SetMetricSamplingPercentage(min(1.0, max(0.01, 20_000 / voxels)), seed=0)
    rigid.SetInterpolator(sitk.sitkLinear)
    rigid.SetOptimizerAsGradientDescent(
        learningRate=1.0, numberOfIterations=100, convergenceMinimumValue=1e-6,
        convergenceWindowSize=10,
    )  # fmt: skip
    rigid.SetOptimizerScalesFromPhysicalShift()
    rigid.SetShrinkFactorsPerLevel([4, 2, 1])
    rigid.SetSmoothingSigmasPerLevel([2, 1, 0])
    rigid.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    # in place: the Euler transform itself is optimised (a composite nested in the final
    # composite is not sampled correctly by TransformToDisplacementField)
    rigid.SetInitialTransform(initial, inPlace=True)
    rigid.Execute(fixed_s, moving_s)
    rigid_transform = initial

    mesh = sitk.BSplineTransformInitializer(fixed_s, [2] * ndim)
    bspline = sitk.ImageRegistrationMethod()
    bspline.SetMetricAsJointHistogramMutualInformation()
    bspline.SetOptimizerAsGradientDescentLineSearch(
        5.0, 100, convergenceMinimumValue=1e-4, convergenceWindowSize=5
    )
    bspline.SetInterpolator(sitk.sitkLinear)
    bspline.SetMovingInitialTransform(rigid_transform)
    bspline.SetInitialTransformAsBSpline(mesh, inPlace=True, scaleFactors=[1, 2, 5])
    bspline.SetShrinkFactorsPerLevel([4, 2, 1])
    bspline.SetSmoothingSigmasPerLevel([4, 2, 1])
    deformable = bspline.Execute(fixed_s, moving_s)
    composite = sitk.CompositeTransform(ndim)
    composite.AddTransform(rigid_transform)
    composite.AddTransform(deformable)
    return composite


# --------------------------------------------------------------------------- VoxelMorph

VXM_MULTIPLE = 16  # VxmPairwise's default U-Net pools 4 times


def _voxelmorph(fixed: sitk.Image, moving: sitk.Image, weights: str) -> sitk.Transform:
    """intermodal's initial affine, then VxmPairwise's field at the weights' training grid.

    The weights were trained on intermodal-normalised images (CT HU window, MR percentiles) at
    the spacing of their card, so the images are prepared that way; the network's voxel
    displacement (along the array axes, ``x + u(x)``) is converted to mm and composed after
    the affine.
    """
    import torch
    from safetensors.torch import load_file
    from voxelmorph.nn.models import VxmPairwise

    from intermodal.classical import initial_alignment
    from intermodal.preprocess import normalize_intensity

    folder = WEIGHTS / weights
    card = json.loads((folder / "card.json").read_text())
    network = VxmPairwise(3, 1, 1)  # VoxelMorph's defaults, as the weights were trained
    network.load_state_dict(load_file(folder / "model.safetensors"))
    network.eval()
    fixed_n = normalize_intensity(sitk.Cast(fixed, sitk.sitkFloat32), "ct")
    moving_n = normalize_intensity(sitk.Cast(moving, sitk.sitkFloat32), "mr")
    affine = initial_alignment(fixed_n, moving_n, "affine")
    # the fixed extent on the training spacing, padded to a multiple of 16 voxels
    spacing = np.array(card["spacing"], dtype=float)
    extent = np.array(fixed.GetSize()) * np.array(fixed.GetSpacing())
    size = [int(np.ceil(n / VXM_MULTIPLE) * VXM_MULTIPLE) for n in np.ceil(extent / spacing)]
    grid = sitk.Image(size, sitk.sitkFloat32)
    grid.SetSpacing(tuple(spacing))
    grid.SetDirection(fixed.GetDirection())
    grid.SetOrigin(fixed.GetOrigin())
    identity = sitk.Transform(3, sitk.sitkIdentity)
    fixed_w = sitk.Resample(fixed_n, grid, identity, sitk.sitkLinear, 0.0)
    moving_w = sitk.Resample(moving_n, grid, affine, sitk.sitkLinear, 0.0)

    def tensor(image: sitk.Image) -> torch.Tensor:
        return torch.from_numpy(sitk.GetArrayFromImage(image))[None, None]

    with torch.no_grad():
        displacement = network(tensor(moving_w), tensor(fixed_w))[0].numpy()
    field = voxel_field_to_physical(np.moveaxis(displacement, 0, -1), grid)
    on_fixed = sitk.Resample(field, fixed, identity, sitk.sitkLinear, 0.0, sitk.sitkVectorFloat64)
    composite = sitk.CompositeTransform(3)
    composite.AddTransform(affine)
    composite.AddTransform(field_transform(on_fixed))
    return composite


def voxelmorph_mi(fixed: sitk.Image, moving: sitk.Image, context: Context) -> sitk.Transform:
    return _voxelmorph(fixed, moving, "vxm_3d_mi")


def voxelmorph_intra(fixed: sitk.Image, moving: sitk.Image, context: Context) -> sitk.Transform:
    return _voxelmorph(fixed, moving, "vxm_3d_intra")


# --------------------------------------------------------------------------- plastimatch

PLASTIMATCH_STAGES = """\
[STAGE]
xform=align_center

[STAGE]
xform=affine
impl=itk
optim=rsg
metric=mi
max_its=100
res=4 4 4

[STAGE]
xform=bspline
impl=plastimatch
optim=lbfgsb
metric=mi
max_its=50
grid_spac=30 30 30
res=2 2 2

[STAGE]
xform=bspline
impl=plastimatch
optim=lbfgsb
metric=mi
max_its=50
grid_spac=15 15 15
res=1 1 1
"""
"""plastimatch's registration command file (plastimatch.org, "Registration command file
reference"): centre alignment, an ITK affine stage and two B-spline stages (30 then 15 mm
grids), every stage on mutual information (``metric=mi``, its multimodal metric)."""


def plastimatch(fixed: sitk.Image, moving: sitk.Image, context: Context) -> sitk.Transform:
    folder = context.folder
    fixed_path = _write(percentile_scaled(fixed), folder / "fixed.nrrd")
    moving_path = _write(percentile_scaled(moving), folder / "moving.nrrd")
    command_file = folder / "register.txt"
    command_file.write_text(
        f"[GLOBAL]\nfixed={fixed_path}\nmoving={moving_path}\nvf_out={folder / 'vf.nrrd'}\n\n"
        + PLASTIMATCH_STAGES
    )
    environment = {**os.environ, "OMP_NUM_THREADS": str(context.threads)}
    subprocess.run(
        ["plastimatch", "register", str(command_file)],
        check=True, capture_output=True, env=environment,
    )  # fmt: skip
    field = sitk.ReadImage(str(folder / "vf.nrrd"), sitk.sitkVectorFloat64)
    return field_transform(field)


# --------------------------------------------------------------------------- the registry

METHODS: dict[str, Method] = {
    "intermodal": Method(
        "intermodal (defaults)", intermodal_default, (2, 3), ("intermodal",),
        "intermodal.registration.register(fixed, moving): the public API's current defaults",
    ),
    "intermodal_model_none": Method(
        "intermodal --model none", intermodal_model_none, (2, 3), ("intermodal",),
        'register(fixed, moving, Settings(model="none")): no network, defaults otherwise',
    ),
    "ants_rigid": Method(
        "ANTs rigid (Mattes MI)", ants_rigid, (2, 3), ("ants",),
        'antspyx ants.registration(type_of_transform="Rigid", aff_metric="mattes")',
    ),
    "ants_synra": Method(
        "ANTs SyNRA (Mattes MI)", ants_synra, (2, 3), ("ants",),
        'antspyx ants.registration(type_of_transform="SyNRA"), Mattes MI in every stage',
    ),
    "ants_synra_turned": Method(
        "ANTs SyNRA (Mattes MI), MR turned first", ants_synra_turned, (3,), ("ants",),
        "as ANTs SyNRA, on the MR turned 180 degrees about y (the pair's true orientation, "
        "given to it; intermodal finds it)", ("real_pair", "real_motion"),
    ),
    "ants_syn_mi": Method(
        "ANTs antsRegistrationSyN.sh -t s, MI", ants_syn_mi, (2, 3), ("ants",),
        "antsRegistrationSyN.sh's stages (full-resolution iterations), MI in every stage",
    ),
    "convexadam": Method(
        "ConvexAdam after ANTs affine", convexadam, (3,), ("convexAdam", "ants"),
        "antspyx Affine (Mattes MI), then convexadam's convex_adam_pt at its defaults",
    ),
    "greedy": Method(
        "Greedy affine + deformable (NMI)", greedy, (2, 3), ("picsl_greedy",),
        "picsl-greedy at its defaults with -m NMI: affine (-dof 12), then deformable",
    ),
    "elastix": Method(
        "elastix rigid + affine + B-spline (Mattes MI)", elastix, (2, 3), ("itk",),
        'itk-elastix default "rigid", "affine", "bspline" maps (AdvancedMattesMutualInformation)',
    ),
    "simpleitk": Method(
        "SimpleITK rigid + B-spline (MI)", simpleitk, (2, 3), (),
        "SimpleITK's registration examples: Euler + Mattes MI, then B-spline + joint-histogram MI",
    ),
    "voxelmorph_mi": Method(
        "VoxelMorph VxmPairwise (MI loss)", voxelmorph_mi, (3,), ("voxelmorph", "safetensors"),
        "benchmarks/weights/vxm_3d_mi after intermodal's affine, at the weights' 4 mm grid",
    ),
    "voxelmorph_intra": Method(
        "VoxelMorph VxmPairwise (intra loss)", voxelmorph_intra, (3,),
        ("voxelmorph", "safetensors"),
        "benchmarks/weights/vxm_3d_intra after intermodal's affine, at the weights' 4 mm grid",
    ),
    "plastimatch": Method(
        "plastimatch B-spline (MI)", plastimatch, (3,), ("bin:plastimatch",),
        "plastimatch register: centre, ITK affine, B-spline 30 mm then 15 mm, metric=mi",
    ),
}  # fmt: skip


def unavailable(name: str, ndim: int, dataset: str | None = None) -> str | None:
    """Why method ``name`` cannot run on ``ndim``-D images (of ``dataset``) here, or None when
    it can."""
    if name not in METHODS:
        raise ValueError(f"method must be one of {sorted(METHODS)}, not {name!r}")
    method = METHODS[name]
    if dataset is not None and method.datasets is not None and dataset not in method.datasets:
        return f"{name} is meant for {' and '.join(method.datasets)} only"
    if ndim not in method.dims:
        return f"{name} registers {' and '.join(f'{d}D' for d in method.dims)} images only"
    for need in method.needs:
        if need.startswith("bin:"):
            if shutil.which(need[4:]) is None:
                return f"the program {need[4:]} is not installed (Debian package {need[4:]})"
        elif importlib.util.find_spec(need) is None:
            return f"the Python module {need} is not installed (pip install -e '.[bench]')"
    if name.startswith("voxelmorph"):
        folder = WEIGHTS / name.replace("voxelmorph", "vxm_3d")
        if not (folder / "model.safetensors").is_file():
            return f"no stored weights in {folder}"
    return None
