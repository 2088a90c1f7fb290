"""Small DICOM series and RT Structure Sets built with pydicom from synthetic volumes."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
RTSTRUCT_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"


def rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    """Rotation matrix about ``axis`` by ``angle`` radians (Rodrigues)."""
    axis = np.asarray(axis, dtype=np.float64) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)


def phantom(
    shape: tuple[int, int, int] = (10, 24, 20),
    spacing: tuple[float, float, float] = (2.0, 2.0, 4.0),
    *,
    direction: np.ndarray | None = None,
    origin: tuple[float, float, float] = (-20.0, -24.0, -18.0),
    modality: str = "CT",
) -> sitk.Image:
    """A box-shaped body with a bright ball: HU-like integers for CT, a float MR contrast.

    ``shape`` is array order (z, y, x); ``spacing`` ITK order (x, y, z) in mm.
    """
    z, y, x = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    centre = (np.array(shape) - 1) / 2
    ball = ((z - centre[0]) / 3.0) ** 2 + ((y - centre[1]) / 6) ** 2 + ((x - centre[2]) / 5) ** 2
    body = (np.abs(y - centre[1]) < shape[1] * 0.4) & (np.abs(x - centre[2]) < shape[2] * 0.4)
    if modality == "CT":
        values = np.where(body, 40.0, -1000.0) + np.where(ball < 1, 900.0, 0.0)
    else:
        values = np.where(body, 300.5, 0.0) + np.where(ball < 1, -200.25, 0.0) + 0.1 * x
    image = sitk.GetImageFromArray(values.astype(np.float32))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    if direction is not None:
        image.SetDirection(np.asarray(direction).ravel().tolist())
    return image


def write_series(
    image: sitk.Image,
    directory: Path,
    *,
    modality: str = "CT",
    patient_id: str = "PAT001",
    patient_name: str = "Test^Patient",
    study_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    skip_slices: tuple[int, ...] = (),
    drop: tuple[str, ...] = (),
) -> dict[str, object]:
    """Write ``image`` as a single-frame series (int16 with a rescale); return its UIDs."""
    directory.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or generate_uid()
    series_uid = generate_uid()
    frame_uid = frame_of_reference_uid or generate_uid()
    values = sitk.GetArrayFromImage(image).astype(np.float64)
    intercept = 0.0 if modality == "CT" else -100.0
    # MR: a rescale that leaves no stored value outside int16 (at least 0.05 per step)
    slope = 1.0 if modality == "CT" else max(0.05, (float(values.max()) - intercept) / 32000)
    stored = np.round((values - intercept) / slope).astype(np.int16)
    direction = np.array(image.GetDirection()).reshape(3, 3)
    spacing = image.GetSpacing()
    sop_uids = []
    for k in range(values.shape[0]):
        if k in skip_slices:
            continue
        sop_class = CT_STORAGE if modality == "CT" else MR_STORAGE
        ds = _base(sop_class, patient_id, patient_name, study_uid)
        sop_uids.append(ds.SOPInstanceUID)
        ds.Modality = modality
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = 1 if modality == "CT" else 2
        ds.FrameOfReferenceUID = frame_uid
        ds.PositionReferenceIndicator = ""
        ds.Laterality = ""
        ds.PatientPosition = "HFS"
        ds.InstanceNumber = k + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL" if modality == "CT" else "OTHER"]
        position = np.array(image.GetOrigin()) + k * spacing[2] * direction[:, 2]
        ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in direction[:, :2].T.ravel()]
        ds.PixelSpacing = [f"{spacing[1]:g}", f"{spacing[0]:g}"]
        ds.SliceThickness = f"{spacing[2]:g}"
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = values.shape[1], values.shape[2]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = f"{slope:g}", f"{intercept:g}"
        ds.PixelData = stored[k].astype("<i2").tobytes()
        if modality == "MR":
            ds.ScanningSequence = "SE"
            ds.SequenceVariant = "NONE"
            ds.ScanOptions = ""
            ds.MRAcquisitionType = "2D"
            ds.EchoTime = "90"
            ds.RepetitionTime = "3000"
            ds.EchoTrainLength = "1"
        else:
            ds.KVP = "120"
            ds.AcquisitionNumber = 1
        for keyword in drop:
            if keyword in ds:
                delattr(ds, keyword)
        ds.save_as(directory / f"{modality}_{k:03d}.dcm", enforce_file_format=True)
    return {
        "study_uid": study_uid,
        "series_uid": series_uid,
        "frame_uid": frame_uid,
        "sop_uids": sop_uids,
        "sop_class": CT_STORAGE if modality == "CT" else MR_STORAGE,
    }


def _base(sop_class: str, patient_id: str, patient_name: str, study_uid: str) -> Dataset:
    meta = FileMetaDataset()
    sop_uid = generate_uid()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = "20260101"
    ds.StudyTime = "120000"
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    ds.Manufacturer = "test"
    return ds


def slice_contours(image: sitk.Image, mask: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """Closed polygons (LPS mm, ``(N, 3)``) around ``mask``'s pixels, slice by slice.

    Each polygon follows the pixel centres of a boundary at half a pixel outside them, so
    that filling it gives the mask back.
    """
    from skimage import measure

    contours = []
    for k in range(mask.shape[0]):
        if not mask[k].any():
            continue
        padded = np.pad(mask[k].astype(float), 1)
        for path in measure.find_contours(padded, 0.5):
            rows, cols = path[:, 0] - 1, path[:, 1] - 1
            points = [
                image.TransformContinuousIndexToPhysicalPoint((float(c), float(r), float(k)))
                for r, c in zip(rows, cols)
            ]
            contours.append((k, np.array(points[:-1])))
    return contours


def write_rtstruct(
    path: Path,
    image: sitk.Image,
    series: dict[str, object],
    rois: dict[str, tuple[int, tuple[int, int, int], list[tuple[int, np.ndarray]]]],
    *,
    patient_id: str = "PAT001",
    referenced_series_uid: str | None = None,
) -> Path:
    """An RT Structure Set on ``series``: ROI name -> (number, colour, contours)."""
    ds = _base(RTSTRUCT_STORAGE, patient_id, "Test^Patient", str(series["study_uid"]))
    ds.Modality = "RTSTRUCT"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 5
    ds.StructureSetLabel = "test"
    ds.StructureSetDate = "20260101"
    ds.StructureSetTime = "120000"
    frame = Dataset()
    frame.FrameOfReferenceUID = series["frame_uid"]
    study = Dataset()
    study.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
    study.ReferencedSOPInstanceUID = series["study_uid"]
    referenced = Dataset()
    referenced.SeriesInstanceUID = referenced_series_uid or series["series_uid"]
    images = []
    for uid in series["sop_uids"]:
        item = Dataset()
        item.ReferencedSOPClassUID = series["sop_class"]
        item.ReferencedSOPInstanceUID = uid
        images.append(item)
    referenced.ContourImageSequence = images
    study.RTReferencedSeriesSequence = [referenced]
    frame.RTReferencedStudySequence = [study]
    ds.ReferencedFrameOfReferenceSequence = [frame]
    ds.StructureSetROISequence = []
    ds.ROIContourSequence = []
    ds.RTROIObservationsSequence = []
    for name, (number, colour, contours) in rois.items():
        roi = Dataset()
        roi.ROINumber = number
        roi.ReferencedFrameOfReferenceUID = series["frame_uid"]
        roi.ROIName = name
        roi.ROIGenerationAlgorithm = "MANUAL"
        ds.StructureSetROISequence.append(roi)
        roi_contour = Dataset()
        roi_contour.ROIDisplayColor = list(colour)
        roi_contour.ReferencedROINumber = number
        items = []
        for _, points in contours:
            contour = Dataset()
            contour.ContourGeometricType = "CLOSED_PLANAR"
            contour.NumberOfContourPoints = len(points)
            contour.ContourData = [f"{v:.4f}" for v in points.ravel()]
            items.append(contour)
        if items:
            roi_contour.ContourSequence = items
        ds.ROIContourSequence.append(roi_contour)
        observation = Dataset()
        observation.ObservationNumber = number
        observation.ReferencedROINumber = number
        observation.RTROIInterpretedType = "ORGAN"
        observation.ROIInterpreter = ""
        ds.RTROIObservationsSequence.append(observation)
    ds.save_as(path, enforce_file_format=True)
    return path


def dciodvfy_errors(path: Path) -> list[str]:
    """The ``Error`` lines dciodvfy prints for ``path`` (skips the test when not installed)."""
    tool = shutil.which("dciodvfy")
    if tool is None:
        pytest.skip("dciodvfy (Debian package dicom3tools) is not installed")
    run = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=120)
    lines = (run.stdout + run.stderr).splitlines()
    return [line for line in lines if line.startswith("Error")]
