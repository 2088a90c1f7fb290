"""The warped moving image as a DICOM image series in the fixed image's Frame of Reference."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from intermodal.dicom._common import (
    DicomError,
    SeriesInfo,
    base_dataset,
    content_date_time,
    ds_numbers,
    image_references,
    new_uid,
    save_dataset,
)

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
_SOP_CLASS = {"MR": MR_IMAGE_STORAGE, "CT": CT_IMAGE_STORAGE}

# MR Image Module: copied from the source series. Type 1 ones must be there; the type 2 ones
# are written empty when the source lacks them.
_MR_TYPE1 = ("ScanningSequence", "SequenceVariant")
_MR_TYPE2 = ("ScanOptions", "MRAcquisitionType", "EchoTime", "EchoTrainLength")
_MR_COPIED = (
    "RepetitionTime",
    "InversionTime",
    "SequenceName",
    "MagneticFieldStrength",
    "ImagedNucleus",
    "FlipAngle",
)
_CT_TYPE2 = ("KVP",)

_INT16 = 32767


@dataclass
class WrittenSeries:
    """What :func:`write_image_series` wrote."""

    series_uid: str
    files: list[Path]
    slope: float
    intercept: float


def quantise(volume: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Integers and a rescale that keeps the values: ``value = slope * stored + intercept``.

    Whole numbers within int16 are kept as they are (slope 1, intercept 0: CT in HU stays in
    HU). Anything else is spread over the int16 range, so the error is at most half a step,
    ``(max - min) / 65534 / 2``.

    Returns:
        int16 array of ``volume``'s shape, the slope and the intercept.
    """
    values = np.asarray(volume, dtype=np.float64)
    low, high = float(values.min()), float(values.max())
    if np.array_equal(values, np.round(values)) and low >= -_INT16 - 1 and high <= _INT16:
        return values.astype(np.int16), 1.0, 0.0
    slope = (high - low) / (2 * _INT16) if high > low else 1.0
    intercept = (high + low) / 2
    stored = np.clip(np.round((values - intercept) / slope), -_INT16, _INT16).astype(np.int16)
    return stored, slope, intercept


def check_source_series(source: SeriesInfo) -> None:
    """Refuse a series a warped series cannot be written from, before anything is written.

    Args:
        source: the series the warped pixels come from (the moving series).

    Raises:
        DicomError: ``source`` is neither MR nor CT, or is an MR series lacking an attribute
            the MR Image IOD requires (ScanningSequence, SequenceVariant): the message names
            the folder and the attribute.
    """
    if source.modality not in _SOP_CLASS:
        raise DicomError(
            f"{source.directory}: Modality {source.modality!r}; a warped series can be written "
            f"for MR or CT only"
        )
    if source.modality == "MR":
        for keyword in _MR_TYPE1:
            if not str(source.first.get(keyword, "")).strip():
                raise DicomError(
                    f"{source.directory}: the MR series lacks {keyword}, which the MR Image "
                    f"IOD of the warped series needs"
                )


def write_image_series(
    image: sitk.Image,
    out_dir: Path,
    *,
    source: SeriesInfo,
    frame: SeriesInfo,
    description: str,
    series_number: int = 901,
) -> WrittenSeries:
    """Write ``image`` as one single-frame DICOM file per slice into ``out_dir``.

    The series is of ``source``'s modality (MR or CT), gets a new SeriesInstanceUID and new
    SOPInstanceUIDs, and joins ``frame``'s study and Frame of Reference (the grid it lies on);
    the patient module is ``frame``'s. Each slice is DERIVED\\SECONDARY, says how it was made
    in DerivationDescription, and references every image of ``source`` in SourceImageSequence.

    Args:
        image: a 3D scalar image on ``frame``'s grid (LPS mm geometry).
        out_dir: an existing folder; files are named ``<prefix>_0001.dcm`` ...
        source: the series the pixels came from (e.g. the moving MR).
        frame: the series whose Frame of Reference and study the output joins (the fixed CT).
        description: DerivationDescription, e.g. the registration that made the image.
        series_number: SeriesNumber of the new series.

    Returns:
        The new series UID, the files, and the rescale slope and intercept.

    Raises:
        DicomError: ``source`` is neither MR nor CT, or lacks an MR attribute the MR Image
            IOD requires (ScanningSequence, SequenceVariant).
    """
    check_source_series(source)
    modality = source.modality
    if image.GetDimension() != 3:
        raise DicomError(f"the warped image is {image.GetDimension()}D; DICOM output needs 3D")
    header = source.first
    stored, slope, intercept = quantise(sitk.GetArrayViewFromImage(image))
    direction = np.array(image.GetDirection()).reshape(3, 3)
    spacing = image.GetSpacing()
    series_uid = new_uid()
    sources = image_references(source.instances)
    files = []
    for k in range(stored.shape[0]):
        sop_uid = new_uid()
        ds = base_dataset(_SOP_CLASS[modality], sop_uid, template=frame)
        ds.Modality = modality
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = series_number
        ds.SeriesDescription = f"{modality} registered to {frame.modality} (intermodal)"[:64]
        ds.FrameOfReferenceUID = frame.frame_of_reference_uid
        ds.PositionReferenceIndicator = frame.first.get("PositionReferenceIndicator", "")
        ds.Laterality = frame.first.get("Laterality", "")
        ds.PatientPosition = frame.first.get("PatientPosition", "")
        ds.InstanceNumber = k + 1
        content_date_time(ds)
        # Value 3 is required for CT and MR: AXIAL (CT's defined term for a slice stack),
        # OTHER for MR (none of MR's terms, such as T1 MAP or MPR, describes a warped image)
        ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL" if modality == "CT" else "OTHER"]
        ds.DerivationDescription = description[:1024]
        ds.SourceImageSequence = sources
        position = np.array(image.GetOrigin()) + k * spacing[2] * direction[:, 2]
        ds.ImagePositionPatient = ds_numbers(position)
        ds.ImageOrientationPatient = ds_numbers(np.concatenate([direction[:, 0], direction[:, 1]]))
        ds.PixelSpacing = ds_numbers((spacing[1], spacing[0]))  # row spacing, column spacing
        ds.SliceThickness = ds_numbers([spacing[2]])[0]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = stored.shape[1], stored.shape[2]
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleIntercept = ds_numbers([intercept])[0]
        ds.RescaleSlope = ds_numbers([slope])[0]
        ds.RescaleType = "HU" if modality == "CT" else "US"
        ds.PixelData = np.ascontiguousarray(stored[k]).astype("<i2").tobytes()
        if modality == "MR":
            for keyword in _MR_TYPE1 + _MR_COPIED:
                if keyword in header:
                    setattr(ds, keyword, header[keyword].value)
            for keyword in _MR_TYPE2:
                setattr(ds, keyword, header[keyword].value if keyword in header else "")
        else:
            for keyword in _CT_TYPE2:
                setattr(ds, keyword, header[keyword].value if keyword in header else "")
            ds.AcquisitionNumber = header.get("AcquisitionNumber", "")
        files.append(save_dataset(ds, out_dir / f"{modality}_{k + 1:04d}.dcm"))
    return WrittenSeries(series_uid, files, slope, intercept)
