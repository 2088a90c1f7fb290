"""Side-by-side runs on the realistic validation sets of issue 23 (held out from tuning).

Every method registers the same cases (:mod:`intermodal.data.realistic`), each in its own
spawned process, one at a time, with the same thread count (``--threads``: OMP, MKL, ITK and
torch threads, elastix's ``number_of_threads``). Each process reads the case's images from disk
through :func:`intermodal.io.read_image` (NIfTI, or PNG for the 2D pictures: the user's path),
registers, and writes its fixed -> moving mapping as a dense displacement field on the fixed
grid; this process then scores it. Wall time is the registration alone (reading, normalising,
registering, building the mapping; not the process start, imports or scoring); peak RSS is the
process's ``ru_maxrss`` after registering (imports included).

Methods (``--methods``):

- ``intermodal``: :func:`intermodal.registration.register` with its current defaults.
- ``intermodal_none``: the same with ``model="none"`` (``--model none``).
- ``ants_rigid``: antspyx ``type_of_transform="Rigid"``, Mattes MI.
- ``ants_synra``: antspyx ``"SyNRA"`` (rigid + affine + SyN), Mattes MI in every stage.
- ``ants_synquick``: antspyx ``"antsRegistrationSyNQuick[s]"``, its recreation of
  ``antsRegistrationSyNQuick.sh -t s``: rigid and affine stages with
  ``MI[fixed,moving,1,32,Regular,0.25]``, convergence ``[1000x500x250x0,1e-6,10]``, shrink
  factors ``8x4x2x1``, smoothing ``3x2x1x0vox``, then ``SyN[0.1,3,0]`` with ``MI[...,1,32]``,
  convergence ``[100x70x50x0,1e-6,10]``, same shrink factors and smoothing. The script's
  default SyN metric is MI for the quick variant, as here.
- ``convexadam``: PyPI ``convexadam`` 0.2 (``convex_adam_pt``: MIND-SSC, coupled convex
  optimisation and Adam) at its package defaults (MIND radius 1, dilation 2, grid spacing 6,
  search radius 4, 80 Adam steps at grid spacing 2, lambda 1.25, inverse consistency on), with
  an antspyx ``"Affine"`` stage (Mattes MI) in front, since it has none; images padded to a
  multiple of 6 voxels. 3D only.
- ``elastix``: itk-elastix with the default ``"rigid"``, ``"affine"`` and ``"bspline"``
  parameter maps, whose metric is ``AdvancedMattesMutualInformation`` (the B-spline map adds
  elastix's default bending-energy penalty; final grid spacing 10 mm).

Intensities: intermodal gets the images as read; every peer gets each image scaled by its own
0.5 / 99.5 percentiles to [0, 1] (clipped), the same modality-blind scaling for all peers, so
that a CT stored with an offset is handled the same as one in HU.

Scores (per case): Dice and HD95 per tissue label (rendered and robustness sets, inside the
region the MR sees); mapping error in mm over the CT body (median, 95th percentile, max;
capture failure: median > 5 mm) against the truth (rendered sets) or against the known motion
composed with the method's own result on the unmoved pair (real-motion and 2D sets); SDlogJ
and folding fraction of the whole mapping's Jacobian over the scored body; wall time; peak RSS.

Usage::

    nice -n 10 .venv/bin/python benchmarks/realistic.py --set rendered --split heldout \\
        --cases 3 --methods intermodal,intermodal_none,ants_synra,convexadam --threads 1
    .venv/bin/python benchmarks/realistic.py --table   # markdown tables from the JSON

Results go to ``benchmarks/measured/realistic/<set>_<split>.json`` (entries of a method and a
case replace earlier ones; the others are kept).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
import traceback
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
MEASURED = ROOT / "benchmarks" / "measured" / "realistic"
METHODS = (
    "intermodal",
    "intermodal_none",
    "ants_rigid",
    "ants_synra",
    "ants_synquick",
    "convexadam",
    "elastix",
)
CAPTURE_FAILURE_MM = 5.0
"""A case whose median mapping error exceeds this (mm) is a capture failure."""


# --------------------------------------------------------------------------- scoring


def dense_field(transform: sitk.Transform, grid: sitk.Image) -> sitk.Image:
    """The displacement ``T(p) - p`` of a transform at every voxel of ``grid``.

    Args:
        transform: maps ``grid``'s physical points to another space.
        grid: the fixed grid.

    Returns:
        A float64 vector image on ``grid`` (components physical ``x, y[, z]``).
    """
    return sitk.TransformToDisplacementField(
        transform,
        sitk.sitkVectorFloat64,
        grid.GetSize(),
        grid.GetOrigin(),
        grid.GetSpacing(),
        grid.GetDirection(),
    )


def _mask_array(mask: sitk.Image) -> np.ndarray:
    return sitk.GetArrayViewFromImage(mask) > 0


def mapping_error(
    recovered: sitk.Image,
    expected: sitk.Transform,
    mask: sitk.Image,
    *,
    mm_per_unit: float = 1.0,
) -> dict[str, float]:
    """Distance between a recovered mapping and the expected one over a mask.

    Args:
        recovered: the method's displacement on the fixed grid (:func:`dense_field`).
        expected: the expected fixed -> moving transform.
        mask: uint8 on the same grid, the voxels scored (e.g. the CT body).
        mm_per_unit: millimetres per unit of the moving space (2 for 2 mm pictures stored at
            1 unit per pixel).

    Returns:
        ``median_mm``, ``p95_mm``, ``mean_mm``, ``max_mm`` of ``|recovered(p) - expected(p)|``
        in mm; ``capture_failure`` (median > :data:`CAPTURE_FAILURE_MM`); NaN with an empty
        mask.
    """
    truth = sitk.GetArrayFromImage(dense_field(expected, recovered))
    found = sitk.GetArrayViewFromImage(recovered)
    inside = _mask_array(mask)
    if not inside.any():
        nan = float("nan")
        return {"median_mm": nan, "p95_mm": nan, "mean_mm": nan, "max_mm": nan}
    error = np.linalg.norm(found[inside] - truth[inside], axis=-1) * mm_per_unit
    median = float(np.median(error))
    return {
        "median_mm": median,
        "p95_mm": float(np.percentile(error, 95)),
        "mean_mm": float(error.mean()),
        "max_mm": float(error.max()),
        "capture_failure": bool(median > CAPTURE_FAILURE_MM),
    }


def jacobian_scores(recovered: sitk.Image, mask: sitk.Image) -> dict[str, float]:
    """SDlogJ and folding of the mapping ``p -> p + d(p)`` over a mask.

    The whole mapping is scored (a rigid or affine part only adds a constant to log J, which
    leaves SDlogJ and folding as the deformable part makes them).

    Returns:
        ``sdlogj`` (determinants clipped at 1e-9 before the log), ``folding_fraction`` (share
        of determinants <= 0), ``jacobian_median``.
    """
    from intermodal.data.render import displacement_jacobian
    from intermodal.metrics import sdlogj

    ndim = recovered.GetDimension()
    direction = np.array(recovered.GetDirection()).reshape(ndim, ndim)
    physical = sitk.GetArrayFromImage(recovered)  # (*shape, ndim)
    along_axes = np.moveaxis(physical @ direction, -1, 0)  # rotate into the grid's axes
    det = displacement_jacobian(along_axes, recovered.GetSpacing())
    inside = _mask_array(mask)
    return {
        "sdlogj": sdlogj(det, inside),
        "folding_fraction": float((det[inside] <= 0).mean()),
        "jacobian_median": float(np.median(det[inside])),
    }


def label_scores(
    fixed_labels: sitk.Image,
    moving_labels: sitk.Image,
    region: sitk.Image,
    transform: sitk.Transform,
    labels: Mapping[str, int],
) -> dict[str, dict[str, float]]:
    """Dice and HD95 per label of the moving labels warped onto the fixed labels' grid.

    Args:
        fixed_labels: uint8 labels on the fixed grid.
        moving_labels: uint8 labels on the moving grid.
        region: uint8 on the fixed grid: where labels are scored (warped labels are zeroed
            elsewhere, as the fixed labels are).
        transform: fixed -> moving.
        labels: name -> label value.

    Returns:
        ``{"dice": {name: value}, "hd95_mm": {name: value}}``.
    """
    from intermodal.metrics import dice_per_label, hd95_per_label

    warped = sitk.Resample(moving_labels, fixed_labels, transform, sitk.sitkNearestNeighbor, 0)
    masked = sitk.GetImageFromArray(sitk.GetArrayFromImage(warped) * _mask_array(region))
    masked.CopyInformation(fixed_labels)
    return {
        "dice": dice_per_label(fixed_labels, masked, labels),
        "hd95_mm": hd95_per_label(fixed_labels, masked, labels),
    }


def score_case(case, recovered: sitk.Image, reference: sitk.Image | None) -> dict[str, Any]:
    """Every score of one method on one case (see the module docstring)."""
    from intermodal.data.realistic import DICE_LABELS, expected_mapping

    reference_transform = None
    if reference is not None:
        reference_transform = sitk.DisplacementFieldTransform(sitk.Image(reference))
    expected = expected_mapping(case, reference_transform)
    scores: dict[str, Any] = {
        "mapping": mapping_error(
            recovered, expected, case.body, mm_per_unit=case.moving_mm_per_unit
        ),
        "jacobian": jacobian_scores(recovered, case.body),
    }
    if case.fixed_labels is not None:
        transform = sitk.DisplacementFieldTransform(sitk.Image(recovered))
        scores.update(
            label_scores(
                case.fixed_labels, case.moving_labels, case.label_region, transform, DICE_LABELS
            )
        )
    return scores


# --------------------------------------------------------------------------- the methods


def _set_threads(threads: int) -> None:
    """The thread count for every library, in this process and the ones it starts."""
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"):
        os.environ[name] = str(threads)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)


def _percentile_scaled(image: sitk.Image) -> sitk.Image:
    """``image`` scaled by its 0.5 / 99.5 percentiles to [0, 1], clipped (float32)."""
    array = sitk.GetArrayFromImage(image).astype(np.float32)
    low, high = np.percentile(array, [0.5, 99.5])
    scaled = np.clip((array - low) / max(float(high - low), 1e-6), 0.0, 1.0)
    out = sitk.GetImageFromArray(scaled.astype(np.float32))
    out.CopyInformation(image)
    return out


def _ants_chain(paths: Sequence[str], ndim: int) -> sitk.Transform:
    """antspyx's ``fwdtransforms`` ([warp,] affine) as one fixed -> moving sitk transform."""
    composite = sitk.CompositeTransform(ndim)
    # p maps to affine(p + warp(p)); a composite applies the transform added last first.
    for path in reversed(paths):
        if path.endswith(".mat"):
            composite.AddTransform(sitk.ReadTransform(path))
        else:
            field = sitk.ReadImage(path, sitk.sitkVectorFloat64)
            composite.AddTransform(sitk.DisplacementFieldTransform(field))
    return composite


def _ants(fixed: sitk.Image, moving: sitk.Image, kind: str, folder: Path) -> sitk.Transform:
    import ants

    for name, image in (("fixed", fixed), ("moving", moving)):
        sitk.WriteImage(_percentile_scaled(image), str(folder / f"{name}_scaled.nii.gz"))
    fixed_a = ants.image_read(str(folder / "fixed_scaled.nii.gz"))
    moving_a = ants.image_read(str(folder / "moving_scaled.nii.gz"))
    metric = {} if "SyNQuick" in kind else {"aff_metric": "mattes", "syn_metric": "mattes"}
    result = ants.registration(
        fixed_a,
        moving_a,
        type_of_transform=kind,
        outprefix=str(folder / "ants_"),
        **metric,
    )
    return _ants_chain(result["fwdtransforms"], fixed.GetDimension())


def _convexadam(fixed: sitk.Image, moving: sitk.Image, folder: Path) -> sitk.Transform:
    import torch
    from convexAdam.convex_adam_MIND import convex_adam_pt

    if fixed.GetDimension() != 3:
        raise NotImplementedError("convexadam registers 3D images only")
    affine = _ants(fixed, moving, "Affine", folder)
    fixed_s = _percentile_scaled(fixed)
    moving_s = sitk.Resample(_percentile_scaled(moving), fixed, affine, sitk.sitkLinear, 0.0)
    fixed_a = sitk.GetArrayFromImage(fixed_s)
    moving_a = sitk.GetArrayFromImage(moving_s)
    shape = fixed_a.shape
    padded = [int(np.ceil(n / 6) * 6) for n in shape]
    pad = [(0, p - n) for n, p in zip(shape, padded)]
    displacement = convex_adam_pt(
        np.pad(fixed_a, pad),
        np.pad(moving_a, pad),
        dtype=torch.float32,
        device=torch.device("cpu"),
    )  # (z, y, x, 3) voxels, components along the array axes
    displacement = displacement[: shape[0], : shape[1], : shape[2]]
    spacing = np.array(fixed.GetSpacing())
    direction = np.array(fixed.GetDirection()).reshape(3, 3)
    physical = (displacement[..., ::-1] * spacing) @ direction.T
    field = sitk.GetImageFromArray(physical.astype(np.float64), isVector=True)
    field.CopyInformation(fixed)
    composite = sitk.CompositeTransform(3)
    composite.AddTransform(affine)
    composite.AddTransform(sitk.DisplacementFieldTransform(field))
    return composite


def _elastix(fixed: sitk.Image, moving: sitk.Image, threads: int, folder: Path) -> sitk.Transform:
    import itk

    def to_itk(image: sitk.Image):
        scaled = _percentile_scaled(image)
        out = itk.GetImageFromArray(sitk.GetArrayFromImage(scaled))
        out.SetSpacing(scaled.GetSpacing())
        out.SetOrigin(scaled.GetOrigin())
        ndim = scaled.GetDimension()
        direction = np.array(scaled.GetDirection()).reshape(ndim, ndim)
        out.SetDirection(itk.matrix_from_array(direction))
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
        number_of_threads=threads,
    )
    field = itk.transformix_deformation_field(
        moving_i, transform_parameters, output_directory=str(folder)
    )
    displacement = sitk.GetImageFromArray(
        itk.GetArrayFromImage(field).astype(np.float64), isVector=True
    )
    displacement.CopyInformation(fixed)
    return sitk.DisplacementFieldTransform(displacement)


def _intermodal(fixed: sitk.Image, moving: sitk.Image, model_none: bool) -> tuple[Any, dict]:
    from intermodal.registration import Settings, register

    settings = Settings(model="none") if model_none else None
    result = register(fixed, moving, settings)
    report = result.report
    info = {
        "timings_s": report.get("timings_s"),
        "model_path": report.get("model_path"),
        "initial_transform": report.get("initial_transform", {}).get("type"),
        "nmi": report.get("nmi"),
        "warnings": report.get("warnings"),
    }
    return result.transform, info


def run_method(method: str, fixed_path: str, moving_path: str, out_path: str, threads: int):
    """Register in this (spawned) process; write the mapping's field to ``out_path``.

    Returns:
        ``{"seconds", "peak_rss_mib", "info"}``, or ``{"error": ...}`` when the method failed.
    """
    _set_threads(threads)
    import torch

    torch.set_num_threads(threads)
    from intermodal.io import read_image

    info: dict[str, Any] = {}
    try:
        with tempfile.TemporaryDirectory() as temporary:
            folder = Path(temporary)
            start = time.perf_counter()
            fixed = read_image(fixed_path)
            moving = read_image(moving_path)
            if method in ("intermodal", "intermodal_none"):
                transform, info = _intermodal(fixed, moving, method == "intermodal_none")
            elif method == "ants_rigid":
                transform = _ants(fixed, moving, "Rigid", folder)
            elif method == "ants_synra":
                transform = _ants(fixed, moving, "SyNRA", folder)
            elif method == "ants_synquick":
                transform = _ants(fixed, moving, "antsRegistrationSyNQuick[s]", folder)
            elif method == "convexadam":
                transform = _convexadam(fixed, moving, folder)
            elif method == "elastix":
                transform = _elastix(fixed, moving, threads, folder)
            else:
                raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
            field = dense_field(transform, fixed)
            seconds = time.perf_counter() - start
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            sitk.WriteImage(sitk.Cast(field, sitk.sitkVectorFloat32), out_path)
    except NotImplementedError as err:
        return {"error": f"not applicable: {err}"}
    except Exception as err:  # a peer's failure is a result to record, not a crash
        return {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}
    return {"seconds": seconds, "peak_rss_mib": peak, "info": info}


# --------------------------------------------------------------------------- the run


def _write_inputs(fixed: sitk.Image, moving: sitk.Image, folder: Path, name: str):
    """The pair as a user would have it on disk: PNG for pictures, else NIfTI."""
    paths = []
    for role, image in (("fixed", fixed), ("moving", moving)):
        picture = image.GetNumberOfComponentsPerPixel() == 3
        path = folder / f"{name}_{role}.{'png' if picture else 'nii.gz'}"
        sitk.WriteImage(image, str(path))
        paths.append(str(path))
    return paths


def _run_one(pool, method, fixed_path, moving_path, out_path, threads) -> dict[str, Any]:
    future = pool.submit(run_method, method, fixed_path, moving_path, out_path, threads)
    return future.result()


def _versions() -> dict[str, str]:
    from importlib import metadata

    versions = {}
    for package in ("intermodal", "antspyx", "convexadam", "itk-elastix", "SimpleITK", "torch"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def _provenance() -> dict[str, Any]:
    """Which intermodal ran: its source folder, the checkout's commit and its edited files.

    Others edit the pipeline in the same checkout, so a run may import intermodal from a
    clean export of a commit instead (``PYTHONPATH=<export>/src``); its folder says which.
    """
    import subprocess

    import intermodal

    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True
            ).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return "unknown"

    return {
        "intermodal_source": str(Path(intermodal.__file__).resolve().parent),
        "checkout_commit": git("rev-parse", "HEAD"),
        "checkout_edited_src": git("status", "--porcelain", "--", "src").splitlines(),
        "source_commit": os.environ.get("INTERMODAL_SOURCE_COMMIT", "the checkout"),
    }


def run(
    set_name: str,
    split: str,
    cases: int,
    methods: Sequence[str],
    threads: int,
    first: int = 0,
    tag: str | None = None,
) -> Path:
    """Run ``methods`` on cases ``first..first+cases-1`` of a set's split; update its JSON.

    ``tag``: recorded under ``<method>@<tag>`` (e.g. a commit), beside untagged rows.
    """
    from intermodal.data import realistic

    MEASURED.mkdir(parents=True, exist_ok=True)
    path = MEASURED / f"{set_name}_{split}.json"
    record = json.loads(path.read_text()) if path.exists() else {"runs": [], "results": {}}
    run_info = {
        "date": time.strftime("%Y-%m-%dT%H:%M%z"),
        "command": "benchmarks/realistic.py " + " ".join(sys.argv[1:]),
        "threads": threads,
        "tag": tag,
        "cpus": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "versions": _versions(),
        **_provenance(),
    }
    record["runs"].append(run_info)
    context = get_context("spawn")
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        references: dict[tuple[str, str], sitk.Image | None] = {}
        for index in range(first, first + cases):
            case = realistic.make_case(set_name, split, index)
            fixed_path, moving_path = _write_inputs(case.fixed, case.moving, folder, case.name)
            for method in methods:
                reference = None
                if case.reference_key is not None:
                    key = (method, case.reference_key)
                    label = method if tag is None else f"{method}@{tag}"
                    if key not in references:
                        pair = realistic.reference_pair(case.reference_key)
                        name = "reference_" + case.reference_key.replace("/", "_")
                        ref_paths = _write_inputs(*pair, folder, name)
                        out = str(folder / f"{name}_{method}.nii.gz")
                        with ProcessPoolExecutor(1, mp_context=context) as pool:
                            outcome = _run_one(pool, method, *ref_paths, out, threads)
                        references[key] = (
                            None
                            if "error" in outcome
                            else sitk.ReadImage(out, sitk.sitkVectorFloat64)
                        )
                        record.setdefault("references", {})[f"{label}/{case.reference_key}"] = (
                            outcome
                        )
                    reference = references[key]
                out = str(folder / f"{case.name}_{method}.nii.gz")
                with ProcessPoolExecutor(1, mp_context=context) as pool:
                    outcome = _run_one(pool, method, fixed_path, moving_path, out, threads)
                row: dict[str, Any] = {"kind": case.kind, "params": case.params, **outcome}
                if "error" not in outcome:
                    if case.reference_key is not None and reference is None:
                        row["error"] = "no reference: the method failed on the unmoved pair"
                    else:
                        recovered = sitk.Cast(sitk.ReadImage(out), sitk.sitkVectorFloat64)
                        row["scores"] = score_case(case, recovered, reference)
                label = method if tag is None else f"{method}@{tag}"
                record["results"].setdefault(label, {})[case.name] = row
                _log(label, case.name, row)
                path.write_text(json.dumps(record, indent=1, default=_json_default) + "\n")
    return path


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot store {type(value).__name__} in JSON")


def _log(method: str, case: str, row: Mapping[str, Any]) -> None:
    if "error" in row:
        print(f"{case} {method}: {row['error'].splitlines()[0]}", flush=True)
        return
    scores = row["scores"]
    dice = scores.get("dice")
    mean_dice = f" dice {np.nanmean(list(dice.values())):.3f}" if dice else ""
    print(
        f"{case} {method}: {row['seconds']:.1f} s, {row['peak_rss_mib']:.0f} MiB,"
        f" error median {scores['mapping']['median_mm']:.2f} mm,"
        f" p95 {scores['mapping']['p95_mm']:.2f} mm{mean_dice},"
        f" sdlogj {scores['jacobian']['sdlogj']:.3f}",
        flush=True,
    )


# --------------------------------------------------------------------------- the table


def summarise(rows: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """One method's rows (case name -> row) summarised: counts, means and medians."""
    scored = [row["scores"] for row in rows.values() if "scores" in row]
    out: dict[str, Any] = {"cases": len(rows), "scored": len(scored)}
    out["errors"] = sum("error" in row for row in rows.values())
    if not scored:
        return out
    medians = [s["mapping"]["median_mm"] for s in scored]
    out["error_median_mm"] = float(np.nanmedian(medians))
    out["error_p95_mm"] = float(np.nanmedian([s["mapping"]["p95_mm"] for s in scored]))
    out["capture_failures"] = int(sum(s["mapping"].get("capture_failure", False) for s in scored))
    out["sdlogj"] = float(np.nanmean([s["jacobian"]["sdlogj"] for s in scored]))
    out["folding_percent"] = 100 * float(
        np.nanmean([s["jacobian"]["folding_fraction"] for s in scored])
    )
    if "dice" in scored[0]:
        out["dice"] = float(np.nanmean([np.nanmean(list(s["dice"].values())) for s in scored]))
        out["dice_per_label"] = {
            name: float(np.nanmean([s["dice"][name] for s in scored])) for name in scored[0]["dice"]
        }
        out["hd95_mm"] = float(
            np.nanmean([np.nanmean(list(s["hd95_mm"].values())) for s in scored])
        )
    timed = [row for row in rows.values() if "seconds" in row]
    out["seconds_median"] = float(np.median([row["seconds"] for row in timed]))
    out["peak_rss_mib_max"] = float(max(row["peak_rss_mib"] for row in timed))
    return out


def markdown_table(record: Mapping[str, Any]) -> str:
    """A markdown table of every method in a set's record."""
    lines = [
        "| method | cases | mean Dice | fat / soft / bone | HD95 mm | error median mm "
        "| error p95 mm | capture failures | SDlogJ | folding % | time s (median) "
        "| peak RSS MiB |",
        "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]

    def number(value: Any, digits: int) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    for method, rows in record["results"].items():
        s = summarise(rows)
        per_label = s.get("dice_per_label")
        labels = " / ".join(f"{v:.3f}" for v in per_label.values()) if per_label else "-"
        failed = f" ({s['errors']} failed)" if s["errors"] else ""
        lines.append(
            f"| {method} | {s['scored']}{failed} | {number(s.get('dice'), 3)} | {labels} "
            f"| {number(s.get('hd95_mm'), 2)} | {number(s.get('error_median_mm'), 2)} "
            f"| {number(s.get('error_p95_mm'), 2)} | {s.get('capture_failures', '-')} "
            f"| {number(s.get('sdlogj'), 3)} | {number(s.get('folding_percent'), 3)} "
            f"| {number(s.get('seconds_median'), 1)} | {number(s.get('peak_rss_mib_max'), 0)} |"
        )
    return "\n".join(lines)


def _parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--set", dest="set_name", default="rendered",
        choices=("real_motion", "rendered", "robustness", "slices_2d"),
    )  # fmt: skip
    parser.add_argument("--split", default="heldout", choices=("tuning", "heldout"))
    parser.add_argument("--cases", type=int, default=20, help="number of cases (from --first)")
    parser.add_argument("--first", type=int, default=0, help="index of the first case")
    parser.add_argument(
        "--methods", default="intermodal,intermodal_none,ants_synra,convexadam",
        help=f"comma-separated, from {','.join(METHODS)}",
    )  # fmt: skip
    parser.add_argument("--threads", type=int, default=1, help="threads for every method")
    parser.add_argument("--tag", help="record the methods as <method>@<tag> (e.g. a commit)")
    parser.add_argument("--table", action="store_true", help="print the tables from the JSON")
    args = parser.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        parser.error(f"unknown methods {unknown}; choose from {','.join(METHODS)}")
    if args.cases < 1 or args.first < 0 or args.threads < 1:
        parser.error("--cases and --threads must be >= 1 and --first >= 0")
    args.methods = methods
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    if args.table:
        for path in sorted(MEASURED.glob("*.json")):
            record = json.loads(path.read_text())
            print(f"### {path.stem}\n")
            print(markdown_table(record) + "\n")
        return 0
    _set_threads(args.threads)
    from intermodal.data.realistic import RealPairMissing

    try:
        path = run(
            args.set_name,
            args.split,
            args.cases,
            args.methods,
            args.threads,
            args.first,
            args.tag,
        )
    except RealPairMissing as err:
        print(f"skipped: {err}", file=sys.stderr)
        return 2
    record = json.loads(path.read_text())
    print(f"\n{path.relative_to(ROOT)}\n\n{markdown_table(record)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
