"""Export a registration result to DICOM: warped series, spatial registration, structures.

:func:`export_dicom` reads an output folder of ``intermodal register`` (``warped.nii.gz``,
``displacement.nii.gz``, ``inverse_displacement.nii.gz``, ``affine.mat``, ``transform.h5``,
``report.json``) and the two DICOM series it came from, checks everything it needs first, and
writes ``dicom/`` inside the result folder through a staging folder renamed into place, so
that the folder appears whole or not at all.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from intermodal import __version__
from intermodal.dicom._common import (
    DicomError,
    SeriesInfo,
    affine_matrix,
    check_grid_matches,
    check_same_patient,
    read_series_info,
)
from intermodal.dicom.series import check_source_series, write_image_series
from intermodal.dicom.spatial_registration import (
    write_deformable_registration,
    write_matrix_registration,
)
from intermodal.dicom.structures import (
    StructureSet,
    rasterise,
    read_structure_set,
    warp_mask,
    write_structure_set,
)
from intermodal.errors import IntermodalError

logger = logging.getLogger(__name__)

DEFORMABLE_TOLERANCE_MM = 1e-6
"""A displacement no larger than this anywhere counts as none: a matrix registration is written."""


@dataclass
class RoiAgreement:
    """Agreement of a propagated ROI with the same ROI drawn on the target image."""

    name: str
    dice: float
    mean_distance_mm: float
    hd95_mm: float


@dataclass
class ExportSummary:
    """What :func:`export_dicom` wrote, and the contour agreement it could measure."""

    folder: Path
    series_uid: str
    series_files: list[Path]
    registration: Path
    deformable: bool
    structure_sets: list[Path] = field(default_factory=list)
    skipped_rois: list[str] = field(default_factory=list)
    agreement: list[RoiAgreement] = field(default_factory=list)
    propagated: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)


def check_dicom_inputs(
    fixed: str | os.PathLike,
    moving: str | os.PathLike,
    *,
    fixed_series: str | None = None,
    moving_series: str | None = None,
    structures: tuple[str | os.PathLike, ...] = (),
    allow_different_patients: bool = False,
    images: dict[str, sitk.Image] | None = None,
) -> tuple[SeriesInfo, SeriesInfo, list[StructureSet]]:
    """Read and check what a DICOM export needs, before any work is done.

    Args:
        fixed, moving: the DICOM series folders.
        fixed_series, moving_series: SeriesInstanceUIDs, when a folder holds several.
        structures: RT Structure Set files, each on the fixed or the moving series.
        allow_different_patients: accept inputs whose PatientID or PatientName differ.
        images: ``{"fixed": image, "moving": image}`` as read; when given, every ROI is
            rasterised on its image's grid too, so that a contour outside it is found now.

    Returns:
        The two series' headers and the structure sets read.

    Raises:
        DicomError: an input is not a DICOM series or lacks a tag the output needs; the
            moving series is neither MR nor CT, or is MR without the attributes the MR Image
            IOD of the warped series needs (ScanningSequence, SequenceVariant); the two
            series are of different patients (unless ``allow_different_patients``); a
            structure set is malformed (e.g. ContourData not in x, y, z triples), references
            neither series or is of another patient; with ``images``, a contour lies outside
            its image.
    """
    fixed_info = read_series_info(fixed, fixed_series)
    moving_info = read_series_info(moving, moving_series)
    check_same_patient(fixed_info, moving_info, allow=allow_different_patients)
    check_source_series(moving_info)
    sets = []
    for path in structures:
        structure_set = read_structure_set(path)
        if not {fixed_info.series_uid, moving_info.series_uid} & set(structure_set.series_uids):
            raise DicomError(
                f"{path}: references series {', '.join(structure_set.series_uids)}, not the "
                f"moving series {moving_info.series_uid} (nor the fixed one)"
            )
        patient = str(fixed_info.patient["PatientID"]).strip()
        if not allow_different_patients and structure_set.patient_id.strip() != patient:
            raise DicomError(
                f"{path}: PatientID {structure_set.patient_id!r} differs from {patient!r} of "
                f"{fixed_info.directory}: the structures are of another patient"
            )
        if images is not None:
            on_moving = moving_info.series_uid in structure_set.series_uids
            grid = images["moving" if on_moving else "fixed"]
            for roi in structure_set.rois:
                rasterise(roi, grid, structure_set.path, warn=False)  # warned when exported
        sets.append(structure_set)
    return fixed_info, moving_info, sets


def _read_result(result_dir: Path) -> dict[str, Any]:
    names = ("warped.nii.gz", "displacement.nii.gz", "inverse_displacement.nii.gz",
             "jacobian.nii.gz", "affine.mat", "transform.h5", "report.json")  # fmt: skip
    for name in names:
        if not (result_dir / name).is_file():
            raise IntermodalError(
                f"{result_dir}: no {name}; is it an output folder of 'intermodal register'?"
            )
    try:
        report = json.loads((result_dir / "report.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise IntermodalError(f"{result_dir / 'report.json'}: not readable JSON ({err})") from err
    return report


def _check_registered_series(
    result_dir: Path,
    report: dict[str, Any],
    role: str,
    info: SeriesInfo,
    image: sitk.Image | None,
) -> None:
    """Refuse a series that is not the ``role`` input the result in ``result_dir`` came from.

    ``report.json`` records the grid of each input as it was read (``inputs.<role>``: size in
    voxels, spacing and origin in mm, direction) and may record its SeriesInstanceUID
    (``inputs_series.<role>``). Whatever it records must match; a result written without
    them is not checked here.

    Args:
        result_dir: the output folder of ``intermodal register``.
        report: its ``report.json``.
        role: ``"fixed"`` or ``"moving"``.
        info: the headers of the series chosen for ``role``.
        image: that series as read by :func:`intermodal.io.read_image`, or ``None`` to
            compare the SeriesInstanceUID alone.

    Raises:
        DicomError: the series' UID or grid differs from what ``report.json`` records.
        IntermodalError: ``report.json`` records a grid that is not a grid.
    """
    registered_from = (report.get("inputs_paths") or {}).get(role)
    hint = (
        f"; pass the {role} series registered, from {registered_from} (--{role}, "
        f"--{role}-series)" if registered_from else f"; pass the {role} series registered"
    )  # fmt: skip
    where = f"{info.directory}: series {info.series_uid} is not the {role} series {result_dir}"
    uid = (report.get("inputs_series") or {}).get(role)
    if uid and str(uid) != info.series_uid:
        raise DicomError(f"{where} was registered from (report.json names series {uid}){hint}")
    recorded = (report.get("inputs") or {}).get(role)
    if image is None or not isinstance(recorded, dict):
        return
    problems = []
    try:
        size = [int(n) for n in recorded.get("size", image.GetSize())]
        if size != list(image.GetSize()):
            problems.append("size")
        for key, actual, tolerance in (
            ("spacing", image.GetSpacing(), 1e-4),
            ("origin", image.GetOrigin(), 1e-2),
            ("direction", image.GetDirection(), 1e-3),
        ):
            value = np.asarray(recorded.get(key, actual), dtype=np.float64)
            if value.shape != (len(actual),) or np.abs(value - actual).max() > tolerance:
                problems.append(key)
    except (TypeError, ValueError) as err:
        raise IntermodalError(
            f"{result_dir / 'report.json'}: inputs.{role} is not a size, spacing, origin and "
            f"direction ({err})"
        ) from err
    if problems:
        voxels = "x".join(str(n) for n in image.GetSize())
        registered = "x".join(str(n) for n in size)
        raise DicomError(
            f"{where} was registered from: its grid differs from report.json's inputs.{role} "
            f"({', '.join(problems)}; {voxels} voxels against {registered}){hint}"
        )


def _description(report: dict[str, Any], deformable: bool) -> str:
    settings = report.get("settings", {})
    nmi = report.get("nmi", {})
    kind = "affine + deformable (displacement field)" if deformable else "affine"
    text = f"intermodal {report.get('intermodal_version', __version__)} {kind} registration"
    if settings.get("model") is not None:
        text += f", model {settings.get('model')}"
    if "before" in nmi and "after" in nmi:
        text += f", NMI {nmi['before']:.3f} -> {nmi['after']:.3f}"
    return text


def export_dicom(
    result_dir: str | os.PathLike,
    *,
    fixed: str | os.PathLike | None = None,
    moving: str | os.PathLike | None = None,
    fixed_series: str | None = None,
    moving_series: str | None = None,
    structures: tuple[str | os.PathLike, ...] = (),
    overwrite: bool = False,
    allow_different_patients: bool = False,
    landmarks: tuple[str | os.PathLike, str | os.PathLike] | None = None,
) -> ExportSummary:
    """Write ``result_dir/dicom/``: the warped series, a spatial registration, structures.

    Args:
        result_dir: an output folder of ``intermodal register``.
        fixed, moving: the DICOM series folders registered; by default those named in
            ``report.json``.
        fixed_series, moving_series: SeriesInstanceUIDs, when a folder holds several.
        structures: RT Structure Set files on the moving series (propagated to the fixed) or
            on the fixed series (propagated to the moving through the inverse). When the same
            ROI name is on both, its agreement (Dice, mean distance, HD95) is measured.
        overwrite: replace an existing ``dicom/``.
        allow_different_patients: go on when the inputs' PatientID or PatientName differ.
        landmarks: CSV files of corresponding fixed and moving landmarks (mm), for the TRE.

    The ROI agreement and the TRE are added to the folder's ``report.html`` (``qa.json``).

    Returns:
        What was written, and the ROI agreement measured.

    Raises:
        OutputExistsError: ``dicom/`` exists and ``overwrite`` is false.
        DicomError: see :func:`check_dicom_inputs`; a contour outside its image; the result
            is not on the fixed series' grid; the moving series is not the one registered
            (its grid, or a series UID ``report.json`` records, differs from the result's
            ``report.json``). Nothing is written then.
    """
    from intermodal.report import OutputDirectory

    result_dir = Path(result_dir)
    report = _read_result(result_dir)
    out = result_dir / "dicom"
    if out.exists() and not overwrite:
        from intermodal.errors import OutputExistsError

        raise OutputExistsError(f"{out}: output directory exists; pass --overwrite to replace it")
    paths = report.get("inputs_paths", {})
    fixed = fixed if fixed is not None else paths.get("fixed")
    moving = moving if moving is not None else paths.get("moving")
    if not fixed or not moving:
        raise IntermodalError(
            f"{result_dir / 'report.json'}: names no fixed and moving input; pass them"
        )
    for name, path in (("fixed", fixed), ("moving", moving)):
        if not Path(path).is_dir():
            raise DicomError(f"{path}: the {name} input is not a DICOM series folder")
    fixed_info, moving_info, sets = check_dicom_inputs(
        fixed, moving, fixed_series=fixed_series, moving_series=moving_series,
        structures=structures, allow_different_patients=allow_different_patients,
    )  # fmt: skip

    _check_registered_series(result_dir, report, "fixed", fixed_info, None)

    from intermodal.io import read_image, read_transform

    warped = read_image(result_dir / "warped.nii.gz")
    check_grid_matches(warped, fixed_info, "warped.nii.gz")
    displacement = sitk.ReadImage(str(result_dir / "displacement.nii.gz"), sitk.sitkVectorFloat64)
    affine_transform = read_transform(result_dir / "affine.mat", 3)
    affine = affine_matrix(affine_transform)
    largest = float(np.abs(sitk.GetArrayViewFromImage(displacement)).max())
    deformable = largest > DEFORMABLE_TOLERANCE_MM
    description = _description(report, deformable)

    # Everything that can fail on the inputs is done before the first file is written.
    forward = read_transform(result_dir / "transform.h5", 3)
    moving_grid = read_image(moving_info.directory, series=moving_info.series_uid)
    check_grid_matches(moving_grid, moving_info, "the moving image")
    _check_registered_series(result_dir, report, "moving", moving_info, moving_grid)
    landmark_rows = None
    if landmarks is not None:
        from intermodal.io import read_points
        from intermodal.qa_report import landmark_measures, largest_voxel

        fixed_points, moving_points = (read_points(path) for path in landmarks)
        landmark_rows = landmark_measures(
            forward, fixed_points, moving_points,
            largest_voxel(warped, moving_grid),
        )  # fmt: skip
    inverse = sitk.CompositeTransform(3)
    inverse_field = sitk.ReadImage(
        str(result_dir / "inverse_displacement.nii.gz"), sitk.sitkVectorFloat64
    )
    inverse.AddTransform(sitk.DisplacementFieldTransform(inverse_field))
    inverse.AddTransform(affine_transform.GetInverse())
    propagated: dict[str, dict[str, np.ndarray]] = {"fixed": {}, "moving": {}}
    drawn: dict[str, dict[str, np.ndarray]] = {"fixed": {}, "moving": {}}
    outputs: list[tuple[StructureSet, str, list]] = []
    skipped = []
    for structure_set in sets:
        on_moving = moving_info.series_uid in structure_set.series_uids
        grid, target = (moving_grid, warped) if on_moving else (warped, moving_grid)
        transform = forward if on_moving else inverse
        side, other = ("fixed", "moving") if on_moving else ("moving", "fixed")
        rois = []
        for roi in structure_set.rois:
            mask = rasterise(roi, grid, structure_set.path)
            if mask is None:
                skipped.append(f"{structure_set.path.name}: {roi.name}")
                continue
            drawn[other][roi.name] = mask
            moved = warp_mask(mask, grid, target, transform)
            if not moved.any():
                logger.warning(
                    "%s: ROI %d %r covers no voxel of the %s image once registered (it lies "
                    "outside the image, or is thinner than its voxels); it is written without "
                    "contours", structure_set.path, roi.number, roi.name, side,
                )  # fmt: skip
            propagated[side][roi.name] = moved
            rois.append((roi, moved))
        if not rois:  # a structure set needs one ROI or more (its sequences are type 1)
            logger.warning("%s: every ROI is skipped; no structure set is written for it",
                           structure_set.path)  # fmt: skip
            continue
        outputs.append((structure_set, side, rois))

    with OutputDirectory(out, overwrite=overwrite) as staging:
        series_dir = staging / "series"
        series_dir.mkdir()
        written = write_image_series(
            warped, series_dir, source=moving_info, frame=fixed_info, description=description
        )
        if deformable:
            registration = write_deformable_registration(
                staging / "registration.dcm", affine=affine, displacement=displacement,
                fixed=fixed_info, moving=moving_info, description=description,
            )  # fmt: skip
        else:
            registration = write_matrix_registration(
                staging / "registration.dcm", affine=affine, fixed=fixed_info,
                moving=moving_info, description=description,
            )  # fmt: skip
        names = []
        for number, (_, side, rois) in enumerate(outputs, start=1):
            info, image = (fixed_info, warped) if side == "fixed" else (moving_info, moving_grid)
            name = f"structures_{number}_on_{info.modality}.dcm"
            write_structure_set(
                staging / name, rois, image=image, frame=info,
                description=f"propagated by {description}"[:64],
            )  # fmt: skip
            names.append(name)
    agreement = roi_agreement(propagated, drawn, warped, moving_grid)
    if agreement or landmark_rows is not None:
        _update_qa_report(result_dir, warped, moving_grid, agreement, landmark_rows)
    return ExportSummary(
        folder=out,
        series_uid=written.series_uid,
        series_files=[out / "series" / path.name for path in written.files],
        registration=out / registration.name,
        deformable=deformable,
        structure_sets=[out / name for name in names],
        skipped_rois=skipped,
        agreement=agreement,
        propagated=propagated,
    )


def _update_qa_report(
    result_dir: Path,
    fixed: sitk.Image,
    moving: sitk.Image,
    agreement: list[RoiAgreement],
    landmarks: dict[str, Any] | None,
) -> None:
    """Add the ROI agreement and TRE to ``report.html``; the rest from ``qa.json`` or files."""
    from intermodal.qa_report import largest_voxel, write_qa_report

    jacobian = None
    if not (result_dir / "qa.json").is_file():  # a result written before qa.json existed
        jacobian = sitk.ReadImage(str(result_dir / "jacobian.nii.gz"), sitk.sitkFloat32)
    write_qa_report(
        result_dir, jacobian=jacobian, largest_voxel_mm=largest_voxel(fixed, moving),
        agreement=agreement or None, landmarks=landmarks,
    )  # fmt: skip


def roi_agreement(
    propagated: dict[str, dict[str, np.ndarray]],
    drawn: dict[str, dict[str, np.ndarray]],
    fixed: sitk.Image,
    moving: sitk.Image,
) -> list[RoiAgreement]:
    """Dice, mean distance to agreement and HD95 of each propagated ROI drawn on its target.

    ``propagated[side][name]`` is an ROI carried onto ``side`` ("fixed" or "moving");
    ``drawn[side][name]`` the same-named ROI drawn there. Distances in mm.
    """
    from intermodal.metrics import dice, directed_surface_distances, hd95

    results = []
    for side, image in (("fixed", fixed), ("moving", moving)):
        spacing = image.GetSpacing()[::-1]
        for name, moved in propagated[side].items():
            reference = drawn[side].get(name)
            if reference is None or not reference.any() or not moved.any():
                continue
            distances = np.concatenate([
                directed_surface_distances(moved, reference, spacing),
                directed_surface_distances(reference, moved, spacing),
            ])  # fmt: skip
            results.append(
                RoiAgreement(
                    name=f"{name} (on {side})",
                    dice=dice(reference, moved),
                    mean_distance_mm=float(distances.mean()),
                    hd95_mm=hd95(reference, moved, spacing),
                )
            )
    return results
