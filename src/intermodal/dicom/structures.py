"""RT Structure Sets: read, rasterise on an image grid, contour masks, write.

Contours are closed planar polygons in LPS mm. Rasterising fills, slice by slice, the voxels
whose centres lie inside a polygon (several polygons on one slice are combined by exclusive
or, so that an inner contour makes a hole). Contouring is the reverse: scikit-image's marching
squares at level 0.5 on each slice of a mask, whose polygons pass half-way between voxel
centres inside and outside, so that filling them gives the mask back.
"""

from __future__ import annotations

import datetime as _dt
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import SimpleITK as sitk

from intermodal.dicom._common import (
    DicomError,
    SeriesInfo,
    base_dataset,
    ds_numbers,
    image_references,
    new_uid,
    pydicom_module,
    save_dataset,
)

if TYPE_CHECKING:
    from pydicom import Dataset

logger = logging.getLogger(__name__)

RT_STRUCTURE_SET = "1.2.840.10008.5.1.4.1.1.481.3"
_STUDY_SOP_CLASS = "1.2.840.10008.3.1.2.3.1"  # as RT Referenced Study Sequence items name it
_SLICE_TOLERANCE = 0.25  # voxels: how far off a slice plane a contour point may lie
_DEGENERATE_WIDTH_MM = 0.01  # a contour narrower than this on average encloses nothing


@dataclass
class Roi:
    """One region of interest of a structure set.

    Attributes:
        number: ROINumber.
        name: ROIName.
        colour: ROIDisplayColor (R, G, B in 0-255), or ``None``.
        contours: closed planar polygons, each ``(N, 3)`` LPS mm.
        interpreted_type: RTROIInterpretedType of its observation ("" if none).
    """

    number: int
    name: str
    colour: tuple[int, int, int] | None
    contours: list[np.ndarray] = field(default_factory=list)
    interpreted_type: str = ""


@dataclass
class StructureSet:
    """What an RT Structure Set holds that contour propagation needs."""

    path: Path
    patient_id: str
    frame_of_reference_uid: str
    series_uids: list[str]
    rois: list[Roi]


def read_structure_set(path: str | Path) -> StructureSet:
    """Read the ROIs and the referenced series of an RT Structure Set file.

    Raises:
        DicomError: not readable, not an RT Structure Set, or no referenced series.
    """
    pydicom = pydicom_module()
    path = Path(path)
    try:
        ds = pydicom.dcmread(path)
    except (pydicom.errors.InvalidDicomError, OSError, ValueError, EOFError) as err:
        raise DicomError(f"{path}: not a readable DICOM file ({err})") from err
    if str(ds.get("SOPClassUID", "")) != RT_STRUCTURE_SET:
        raise DicomError(f"{path}: not an RT Structure Set (SOP class {ds.get('SOPClassUID')})")
    series_uids, frame_uid = [], ""
    for frame in ds.get("ReferencedFrameOfReferenceSequence", []):
        frame_uid = frame_uid or str(frame.get("FrameOfReferenceUID", ""))
        for study in frame.get("RTReferencedStudySequence", []):
            for series in study.get("RTReferencedSeriesSequence", []):
                series_uids.append(str(series.SeriesInstanceUID))
    if not series_uids:
        raise DicomError(
            f"{path}: references no image series (ReferencedFrameOfReferenceSequence > "
            f"RTReferencedStudySequence > RTReferencedSeriesSequence is empty)"
        )
    names = {
        int(item.ROINumber): str(item.get("ROIName", f"ROI {item.ROINumber}"))
        for item in ds.get("StructureSetROISequence", [])
    }
    colours, contours = {}, {}
    for item in ds.get("ROIContourSequence", []):
        number = int(item.ReferencedROINumber)
        if "ROIDisplayColor" in item:
            colours[number] = tuple(int(v) for v in item.ROIDisplayColor)
        where = f"{path}: ROI {number} {names.get(number, f'ROI {number}')!r}"
        contours[number] = [
            _contour_points(contour, f"{where}, contour {index}")
            for index, contour in enumerate(item.get("ContourSequence", []), start=1)
            if contour.get("ContourGeometricType", "CLOSED_PLANAR") == "CLOSED_PLANAR"
        ]
    types = {
        int(item.ReferencedROINumber): str(item.get("RTROIInterpretedType", ""))
        for item in ds.get("RTROIObservationsSequence", [])
    }
    rois = [
        Roi(
            number=int(item.ROINumber),
            name=str(item.get("ROIName", f"ROI {item.ROINumber}")),
            colour=colours.get(int(item.ROINumber)),
            contours=contours.get(int(item.ROINumber), []),
            interpreted_type=types.get(int(item.ROINumber), ""),
        )
        for item in ds.get("StructureSetROISequence", [])
    ]
    return StructureSet(path, str(ds.get("PatientID", "")), frame_uid, series_uids, rois)


def _contour_points(contour: Dataset, where: str) -> np.ndarray:
    """The points ``(N, 3)`` (LPS mm) of a ContourSequence item's ContourData.

    Raises:
        DicomError: ContourData holds a value that is not a finite number, or a number of
            values that is not a multiple of 3 (``where`` names the file, ROI and contour).
    """
    data = contour.get("ContourData")
    if data is None:
        values: list = []
    elif isinstance(data, (str, bytes)) or not hasattr(data, "__iter__"):
        values = [data]  # a single value (VM 1) is not a list
    else:
        values = list(data)
    try:
        points = np.array([float(v) for v in values], dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise DicomError(
            f"{where}: ContourData holds a value that is not a number ({err})"
        ) from err
    if points.size % 3:
        raise DicomError(
            f"{where}: ContourData has {points.size} values, not a multiple of 3 (x, y, z of "
            f"each point); the structure set is malformed"
        )
    if not np.isfinite(points).all():
        raise DicomError(f"{where}: ContourData holds a value that is not finite (NaN or inf)")
    return points.reshape(-1, 3)


def _is_degenerate(points: np.ndarray) -> bool:
    """Whether a planar polygon ``(N, 3)`` (mm) has fewer than 3 points or encloses no area.

    No area: narrower, on average, than :data:`_DEGENERATE_WIDTH_MM` over its length, so
    that points on a line written to a few decimals still count as a line.
    """
    if len(points) < 3:
        return True
    # the vector area (mm^2) of the closed polygon, whatever the plane it lies in
    area = 0.5 * np.linalg.norm(np.cross(points, np.roll(points, -1, axis=0)).sum(axis=0))
    length = float(np.ptp(points, axis=0).max())
    return area <= _DEGENERATE_WIDTH_MM * length


def _index_of(image: sitk.Image, points: np.ndarray) -> np.ndarray:
    """Continuous voxel indices ``(N, 3)`` (x, y, z) of LPS points ``(N, 3)``."""
    direction = np.array(image.GetDirection()).reshape(3, 3)
    scaled = direction * np.array(image.GetSpacing())[None, :]
    return (points - np.array(image.GetOrigin())) @ np.linalg.inv(scaled).T


def _to_physical(image: sitk.Image, index: np.ndarray) -> np.ndarray:
    """LPS points ``(N, 3)`` of continuous voxel indices ``(N, 3)`` (x, y, z)."""
    direction = np.array(image.GetDirection()).reshape(3, 3)
    scaled = direction * np.array(image.GetSpacing())[None, :]
    return np.array(image.GetOrigin()) + index @ scaled.T


def rasterise(roi: Roi, image: sitk.Image, source: Path, *, warn: bool = True) -> np.ndarray | None:
    """Fill ``roi``'s contours on ``image``'s grid.

    A contour of fewer than 3 points, or one enclosing no area, outlines nothing: it is left
    out (with a warning). An ROI left with no contour, or whose contours enclose no voxel
    centre, is skipped.

    Args:
        roi: the region, its contours in LPS mm.
        image: the grid (3D); only its geometry is used.
        source: the structure set's file, named in messages.
        warn: log a warning for each contour left out and each ROI skipped (``False`` where
            the ROI is only being checked and will be rasterised again).

    Returns:
        A boolean mask ``(z, y, x)``, or ``None`` (with a warning) when the ROI has no
        contour, only degenerate ones, or none that encloses a voxel centre.

    Raises:
        DicomError: a contour lies outside the image, or off the image's slice planes.
    """
    from skimage.draw import polygon

    degenerate = [points for points in roi.contours if _is_degenerate(points)]
    polygons = [points for points in roi.contours if not _is_degenerate(points)]
    if not roi.contours:
        if warn:
            logger.warning("%s: ROI %d %r has no contour; it is skipped", source, roi.number,
                           roi.name)  # fmt: skip
        return None
    if not polygons:
        if warn:
            logger.warning(
                "%s: ROI %d %r has only degenerate contours (%s points, enclosing no area); "
                "it is skipped", source, roi.number, roi.name,
                ", ".join(str(len(points)) for points in degenerate),
            )  # fmt: skip
        return None
    if degenerate and warn:
        logger.warning(
            "%s: ROI %d %r: %d degenerate contour(s) (fewer than 3 points or no area) left out",
            source, roi.number, roi.name, len(degenerate),
        )  # fmt: skip
    size = image.GetSize()
    mask = np.zeros(size[::-1], dtype=bool)
    for points in polygons:
        index = _index_of(image, points)
        low, high = index.min(axis=0), index.max(axis=0)
        if (low < -0.5 - 1e-3).any() or (high > np.array(size) - 0.5 + 1e-3).any():
            worst = points[np.argmax(np.max(np.maximum(-0.5 - index, index - (np.array(size)
                                                        - 0.5)), axis=1))]  # fmt: skip
            raise DicomError(
                f"{source}: ROI {roi.number} {roi.name!r} has a contour outside the image "
                f"(point {tuple(round(float(v), 2) for v in worst)} mm lies outside the "
                f"{size[0]}x{size[1]}x{size[2]} grid)"
            )
        k = float(np.median(index[:, 2]))
        if np.abs(index[:, 2] - round(k)).max() > _SLICE_TOLERANCE:
            raise DicomError(
                f"{source}: ROI {roi.number} {roi.name!r} has a contour off the image's slice "
                f"planes (at slice index {k:.2f}); contours must lie on the image's slices"
            )
        rows, columns = polygon(index[:, 1], index[:, 0], shape=mask.shape[1:])
        filled = np.zeros(mask.shape[1:], dtype=bool)
        filled[rows, columns] = True
        mask[round(k)] ^= filled
    if not mask.any():
        if warn:
            logger.warning("%s: ROI %d %r encloses no voxel centre of the image; it is skipped",
                           source, roi.number, roi.name)  # fmt: skip
        return None
    return mask


def contour(mask: np.ndarray, image: sitk.Image) -> list[tuple[int, np.ndarray]]:
    """Closed polygons around a mask, slice by slice (scikit-image's marching squares).

    Args:
        mask: boolean ``(z, y, x)`` on ``image``'s grid.
        image: the grid.

    Returns:
        ``(slice index, points (N, 3) LPS mm)`` per polygon, the closing point not repeated.
    """
    from skimage import measure

    contours = []
    for k in np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1)):
        padded = np.pad(mask[k].astype(np.float32), 1)
        for path in measure.find_contours(padded, 0.5):
            path = path[:-1] - 1.0  # closed: last == first; undo the padding
            if len(path) < 3:
                continue
            index = np.column_stack([path[:, 1], path[:, 0], np.full(len(path), float(k))])
            contours.append((int(k), _to_physical(image, index)))
    return contours


def write_structure_set(
    path: Path,
    rois: list[tuple[Roi, np.ndarray]],
    *,
    image: sitk.Image,
    frame: SeriesInfo,
    description: str,
    label: str = "PROPAGATED",
) -> Path:
    """Write masks on ``frame``'s grid as an RT Structure Set referencing ``frame``.

    Args:
        path: the file to write.
        rois: each source ROI (name, number, colour, type are kept) with its mask
            ``(z, y, x)`` on ``image``'s grid.
        image: the grid of the masks, ``frame``'s (as read, possibly resampled along z).
        frame: the series the structures are drawn on: its study, Frame of Reference,
            patient; contours reference its slice at the same position, where there is one.
        description: ROIGenerationDescription: how the contours were made.
        label: StructureSetLabel.

    Returns:
        ``path``.
    """
    from pydicom.dataset import Dataset

    ds = base_dataset(RT_STRUCTURE_SET, new_uid(), template=frame)
    ds.Modality = "RTSTRUCT"
    ds.SeriesInstanceUID = new_uid()
    ds.SeriesNumber = 903
    ds.SeriesDescription = "structures propagated by intermodal"
    ds.OperatorsName = ""
    ds.FrameOfReferenceUID = frame.frame_of_reference_uid
    ds.PositionReferenceIndicator = frame.first.get("PositionReferenceIndicator", "")
    ds.InstanceNumber = 1
    ds.StructureSetLabel = label[:16]
    now = _dt.datetime.now()
    ds.StructureSetDate = now.strftime("%Y%m%d")
    ds.StructureSetTime = now.strftime("%H%M%S")
    referenced_series = Dataset()
    referenced_series.SeriesInstanceUID = frame.series_uid
    referenced_series.ContourImageSequence = image_references(frame.instances)
    study = Dataset()
    study.ReferencedSOPClassUID = _STUDY_SOP_CLASS
    study.ReferencedSOPInstanceUID = frame.study_uid
    study.RTReferencedSeriesSequence = [referenced_series]
    frame_item = Dataset()
    frame_item.FrameOfReferenceUID = frame.frame_of_reference_uid
    frame_item.RTReferencedStudySequence = [study]
    ds.ReferencedFrameOfReferenceSequence = [frame_item]

    tolerance = 0.25 * image.GetSpacing()[2]
    structure_rois, roi_contours, observations = [], [], []
    for roi, mask in rois:
        item = Dataset()
        item.ROINumber = roi.number
        item.ReferencedFrameOfReferenceUID = frame.frame_of_reference_uid
        item.ROIName = roi.name
        item.ROIGenerationAlgorithm = "AUTOMATIC"
        item.ROIGenerationDescription = description[:64]
        structure_rois.append(item)
        roi_contour = Dataset()
        roi_contour.ReferencedROINumber = roi.number
        roi_contour.ROIDisplayColor = list(roi.colour or (255, 0, 0))
        items = []
        for number, (_, points) in enumerate(contour(mask, image), start=1):
            item = Dataset()
            instance = frame.instance_at(points[0], tolerance)
            if instance is not None:
                item.ContourImageSequence = image_references([instance])
            item.ContourNumber = number
            item.ContourGeometricType = "CLOSED_PLANAR"
            item.NumberOfContourPoints = len(points)
            item.ContourData = ds_numbers(np.round(points, 4).ravel())
            items.append(item)
        if items:
            roi_contour.ContourSequence = items
        roi_contours.append(roi_contour)
        observation = Dataset()
        observation.ObservationNumber = roi.number
        observation.ReferencedROINumber = roi.number
        observation.RTROIInterpretedType = roi.interpreted_type
        observation.ROIInterpreter = ""
        observations.append(observation)
    ds.StructureSetROISequence = structure_rois
    ds.ROIContourSequence = roi_contours
    ds.RTROIObservationsSequence = observations
    return save_dataset(ds, path)


def warp_mask(
    mask: np.ndarray, grid: sitk.Image, target: sitk.Image, transform: sitk.Transform
) -> np.ndarray:
    """Carry a mask on ``grid`` onto ``target``'s grid through ``transform`` (target -> grid).

    The mask is resampled as a fraction (linear interpolation) and thresholded at one half,
    which keeps a smoother, less biased boundary than nearest neighbour.

    Returns:
        Boolean ``(z, y, x)`` on ``target``'s grid.
    """
    image = sitk.GetImageFromArray(mask.astype(np.float32))
    image.CopyInformation(grid)
    warped = sitk.Resample(image, target, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(warped) >= 0.5
