"""What every DICOM writer here shares: reading a series' headers, the patient rule, new UIDs.

pydicom reads and writes every object; it is imported lazily (``import intermodal`` and the
command line's ``--help`` never load it) and a missing install is reported as an error that
names the package to install.
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import SimpleITK as sitk

from intermodal import __version__
from intermodal.errors import IntermodalError

if TYPE_CHECKING:
    from pydicom import Dataset

MANUFACTURER = "intermodal"
"""Written as Manufacturer (0008,0070) and Manufacturer's Model Name of every object."""

PATIENT_KEYWORDS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex")
"""The Patient Module attributes copied from the inputs (all type 2)."""

STUDY_KEYWORDS = (
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
    "StudyDescription",
)
"""General Study Module attributes copied with the StudyInstanceUID (the last is type 3)."""

# An image series needs these in every slice for any output to be written.
_REQUIRED_IMAGE_TAGS = (
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "FrameOfReferenceUID",
    "Modality",
    "ImagePositionPatient",
    "ImageOrientationPatient",
)
_TAG_NUMBERS = {
    "SOPClassUID": "(0008,0016)",
    "SOPInstanceUID": "(0008,0018)",
    "StudyInstanceUID": "(0020,000D)",
    "SeriesInstanceUID": "(0020,000E)",
    "FrameOfReferenceUID": "(0020,0052)",
    "Modality": "(0008,0060)",
    "ImagePositionPatient": "(0020,0032)",
    "ImageOrientationPatient": "(0020,0037)",
}


class DicomError(IntermodalError):
    """A DICOM input cannot be used for, or an output cannot be made from, the given data."""


def pydicom_module() -> Any:
    """Import pydicom, or raise an error that says how to install it."""
    try:
        import pydicom
    except ImportError as err:  # pragma: no cover - pydicom is a dependency
        raise DicomError(
            "DICOM output needs pydicom 3: pip install 'pydicom>=3.0' (or reinstall intermodal)"
        ) from err
    return pydicom


def new_uid() -> str:
    """A new UID under pydicom's root, unique to this call."""
    return str(pydicom_module().uid.generate_uid())


@dataclass
class Instance:
    """One image of a series, as its references and position need it."""

    sop_class_uid: str
    sop_instance_uid: str
    position: np.ndarray  # (3,) LPS mm, ImagePositionPatient
    depth: float  # mm along the slice normal


@dataclass
class SeriesInfo:
    """The headers of one DICOM image series that the outputs copy or reference.

    Attributes:
        directory: the folder read.
        series_uid, study_uid, frame_of_reference_uid, modality: of the series.
        instances: one per slice, sorted along the slice normal.
        first: the first slice's header (no pixels): patient, study and modality modules.
    """

    directory: Path
    series_uid: str
    study_uid: str
    frame_of_reference_uid: str
    modality: str
    orientation: np.ndarray  # (6,) row then column direction cosines
    instances: list[Instance] = field(default_factory=list)
    first: Dataset | None = None

    @property
    def patient(self) -> dict[str, Any]:
        """The Patient Module attributes of the series (empty where absent)."""
        return {k: self.first.get(k, "") if self.first else "" for k in PATIENT_KEYWORDS}

    def instance_at(self, point: np.ndarray, tolerance: float) -> Instance | None:
        """The slice whose plane holds ``point`` (LPS mm) within ``tolerance`` mm, if any."""
        normal = slice_normal(self.orientation)
        depth = float(np.asarray(point) @ normal)
        best = min(self.instances, key=lambda inst: abs(inst.depth - depth))
        return best if abs(best.depth - depth) <= tolerance else None


def slice_normal(orientation: np.ndarray) -> np.ndarray:
    """The unit normal ``row x column`` of an ImageOrientationPatient ``(6,)``."""
    normal = np.cross(orientation[:3], orientation[3:])
    return normal / np.linalg.norm(normal)


def read_series_info(directory: str | Path, series_uid: str | None = None) -> SeriesInfo:
    """Read the headers (not the pixels) of one image series in ``directory``.

    The series chosen is ``series_uid`` or, as :func:`intermodal.io.read_image` chooses, the
    one with most files. Files that are not DICOM are ignored.

    Raises:
        DicomError: no DICOM series in the folder, an unknown ``series_uid``, or a slice
            lacking an attribute the outputs need (the message names the file and the tag).
    """
    pydicom = pydicom_module()
    directory = Path(directory)
    if not directory.is_dir():
        raise DicomError(f"{directory}: not a directory holding a DICOM series")
    by_series: dict[str, list[tuple[Path, Dataset]]] = {}
    for path in sorted(p for p in directory.iterdir() if p.is_file()):
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True)
        except (pydicom.errors.InvalidDicomError, OSError, ValueError, EOFError):
            continue
        if "PixelSpacing" not in header and "ImagePositionPatient" not in header:
            continue  # not an image (an RT Structure Set, a registration): not a slice
        by_series.setdefault(str(header.get("SeriesInstanceUID", "")), []).append((path, header))
    if not by_series:
        raise DicomError(f"{directory}: no DICOM image series found in the directory")
    if series_uid is None:
        series_uid = max(by_series, key=lambda uid: len(by_series[uid]))
    elif series_uid not in by_series:
        raise DicomError(
            f"{directory}: no DICOM series with UID {series_uid}; available: {', '.join(by_series)}"
        )
    files = by_series[series_uid]
    for path, header in files:
        for keyword in _REQUIRED_IMAGE_TAGS:
            if not str(header.get(keyword, "")).strip():
                raise DicomError(
                    f"{path}: lacks {keyword} {_TAG_NUMBERS[keyword]}, which the DICOM output needs"
                )
    first = files[0][1]
    orientation = np.array([float(v) for v in first.ImageOrientationPatient])
    normal = slice_normal(orientation)
    instances = []
    for _, header in files:
        position = np.array([float(v) for v in header.ImagePositionPatient])
        instances.append(
            Instance(str(header.SOPClassUID), str(header.SOPInstanceUID), position,
                     float(position @ normal))
        )  # fmt: skip
    instances.sort(key=lambda inst: inst.depth)
    return SeriesInfo(
        directory=directory,
        series_uid=series_uid,
        study_uid=str(first.StudyInstanceUID),
        frame_of_reference_uid=str(first.FrameOfReferenceUID),
        modality=str(first.Modality),
        orientation=orientation,
        instances=instances,
        first=first,
    )


def check_same_patient(fixed: SeriesInfo, moving: SeriesInfo, *, allow: bool = False) -> None:
    """Refuse two series of different patients (PatientID or PatientName differ).

    Raises:
        DicomError: the patients differ and ``allow`` is false.
    """
    if allow:
        return
    for keyword in ("PatientID", "PatientName"):
        a, b = str(fixed.patient[keyword]).strip(), str(moving.patient[keyword]).strip()
        if a != b:
            raise DicomError(
                f"{moving.directory}: {keyword} {b!r} differs from {a!r} of {fixed.directory}: "
                f"the inputs are of different patients (pass --allow-different-patients to "
                f"go on)"
            )


def check_grid_matches(image: sitk.Image, series: SeriesInfo, name: str) -> None:
    """Check that ``image`` lies on ``series``' slices: same orientation, in-plane grid, start.

    The slice spacing is not compared: a series with a missing slice is read onto a finer,
    regular grid (see :mod:`intermodal.io.dicom`).

    Raises:
        DicomError: ``image`` (called ``name`` in the message) is not on the series' grid.
    """
    first = series.first
    direction = np.array(image.GetDirection()).reshape(3, 3)
    columns_rows = (int(first.Columns), int(first.Rows)) if "Rows" in first else None
    pixel = [float(v) for v in first.get("PixelSpacing", [math.nan, math.nan])]
    problems = []
    if np.abs(direction[:, 0] - series.orientation[:3]).max() > 1e-3 or (
        np.abs(direction[:, 1] - series.orientation[3:]).max() > 1e-3
    ):
        problems.append("orientation")
    if columns_rows is not None and tuple(image.GetSize()[:2]) != columns_rows:
        problems.append("columns and rows")
    if not np.allclose(image.GetSpacing()[:2], (pixel[1], pixel[0]), rtol=1e-4, atol=1e-4):
        problems.append("pixel spacing")
    if np.linalg.norm(np.array(image.GetOrigin()) - series.instances[0].position) > 1e-2:
        problems.append("first slice position")
    if problems:
        raise DicomError(
            f"{series.directory}: {name} is not on this series' grid ({', '.join(problems)} "
            f"differ); is it the series the registration used?"
        )


def base_dataset(sop_class_uid: str, sop_instance_uid: str, *, template: SeriesInfo) -> Dataset:
    """A dataset with file meta, SOP Common, Patient and General Study modules filled.

    The patient and study come from ``template`` (the series whose study the output joins).
    """
    pydicom = pydicom_module()
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = pydicom.uid.PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = f"INTERMODAL_{__version__}"[:16]
    ds = Dataset()
    ds.file_meta = meta
    source = template.first
    if source is not None and "SpecificCharacterSet" in source:
        ds.SpecificCharacterSet = source.SpecificCharacterSet
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = sop_instance_uid
    now = _dt.datetime.now()
    ds.InstanceCreationDate = now.strftime("%Y%m%d")
    ds.InstanceCreationTime = now.strftime("%H%M%S")
    for keyword in PATIENT_KEYWORDS:
        setattr(ds, keyword, template.patient[keyword])
    ds.StudyInstanceUID = template.study_uid
    for keyword in STUDY_KEYWORDS:
        value = source.get(keyword, "") if source is not None else ""
        if keyword == "StudyDescription" and not value:
            continue
        setattr(ds, keyword, value)
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = MANUFACTURER
    ds.SoftwareVersions = __version__
    return ds


def content_date_time(ds: Dataset) -> None:
    """Set ContentDate and ContentTime to now."""
    now = _dt.datetime.now()
    ds.ContentDate = now.strftime("%Y%m%d")
    ds.ContentTime = now.strftime("%H%M%S")


def image_references(instances: Iterable[Instance]) -> list[Dataset]:
    """Items of an Image SOP Instance Reference Macro, one per instance."""
    from pydicom.dataset import Dataset

    items = []
    for inst in instances:
        item = Dataset()
        item.ReferencedSOPClassUID = inst.sop_class_uid
        item.ReferencedSOPInstanceUID = inst.sop_instance_uid
        items.append(item)
    return items


def common_instance_reference(ds: Dataset, series: Iterable[SeriesInfo]) -> None:
    """Fill the Common Instance Reference Module: every instance of ``series``.

    Series of the dataset's own study go in ReferencedSeriesSequence; the others under
    StudiesContainingOtherReferencedInstancesSequence, grouped by study.
    """
    from pydicom.dataset import Dataset

    own, others = [], {}
    for info in series:
        item = Dataset()
        item.SeriesInstanceUID = info.series_uid
        item.ReferencedInstanceSequence = image_references(info.instances)
        if info.study_uid == ds.StudyInstanceUID:
            own.append(item)
        else:
            others.setdefault(info.study_uid, []).append(item)
    if own:
        ds.ReferencedSeriesSequence = own
    if others:
        studies = []
        for study_uid, items in others.items():
            study = Dataset()
            study.StudyInstanceUID = study_uid
            study.ReferencedSeriesSequence = items
            studies.append(study)
        ds.StudiesContainingOtherReferencedInstancesSequence = studies


def save_dataset(ds: Dataset, path: Path) -> Path:
    """Write ``ds`` as a DICOM Part 10 file (pydicom's encoder, explicit VR little endian)."""
    ds.save_as(path, enforce_file_format=True)
    return path


def affine_matrix(transform: sitk.Transform) -> np.ndarray:
    """The 4x4 homogeneous matrix of a 3D affine ``transform`` (mm to mm).

    Found by mapping the origin and the three unit points, so that any linear ITK transform
    (Euler, similarity, affine, a composite of them) gives its matrix.

    Raises:
        DicomError: the transform is not 3D or not affine (a sixth point does not agree).
    """
    if transform.GetDimension() != 3:
        raise DicomError(f"the transform is {transform.GetDimension()}D; DICOM output needs 3D")
    origin = np.array(transform.TransformPoint((0.0, 0.0, 0.0)))
    matrix = np.eye(4)
    matrix[:3, 3] = origin
    for axis in range(3):
        unit = [0.0, 0.0, 0.0]
        unit[axis] = 100.0
        matrix[:3, axis] = (np.array(transform.TransformPoint(tuple(unit))) - origin) / 100.0
    probe = np.array([37.0, -81.0, 123.0])
    if (
        np.linalg.norm(
            np.array(transform.TransformPoint(tuple(probe))) - (matrix[:3, :3] @ probe + origin)
        )
        > 1e-4
    ):
        raise DicomError("the initial transform is not affine; it cannot be a DICOM matrix")
    return matrix


def matrix_type(matrix: np.ndarray) -> str:
    """FrameOfReferenceTransformationMatrixType of a 4x4 matrix: RIGID, RIGID_SCALE or AFFINE."""
    linear = matrix[:3, :3]
    gram = linear.T @ linear
    if np.allclose(gram, np.eye(3), atol=1e-6) and np.linalg.det(linear) > 0:
        return "RIGID"
    if np.allclose(gram, np.diag(np.diag(gram)), atol=1e-6) and np.linalg.det(linear) > 0:
        return "RIGID_SCALE"
    return "AFFINE"


def ds_numbers(values: Iterable[float]) -> list[str]:
    """Numbers as Decimal String values (at most 16 characters each)."""
    return [_ds(float(v)) for v in values]


def _ds(value: float) -> str:
    if value == 0 or not math.isfinite(value):
        return "0"
    for digits in range(12, 0, -1):
        text = f"{value:.{digits}g}"
        if len(text) <= 16:
            return text
    return f"{value:.6e}"[:16]
