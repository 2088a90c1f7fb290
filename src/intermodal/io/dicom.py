"""Reading a DICOM series from a directory (GDCM, through SimpleITK)."""

from __future__ import annotations

import logging
from pathlib import Path

import SimpleITK as sitk

from intermodal.errors import ImageReadError
from intermodal.io._itk import itk_reason

logger = logging.getLogger(__name__)

MODALITY_KEY = "intermodal:modality"
"""Metadata key under which :func:`read_image` stores the DICOM Modality (``"CT"``, ``"MR"``...)."""

_MODALITY_TAG = "0008|0060"


def read_dicom_series(directory: Path, series: str | None = None) -> tuple[sitk.Image, str | None]:
    """Read one DICOM series from ``directory`` (not recursive).

    Args:
        directory: a folder holding the slices of one or more series.
        series: the SeriesInstanceUID to read. ``None`` takes the series with most slices
            and logs a warning naming the others when there are several.

    Returns:
        The image as GDCM returns it (pixel type not converted, rescale slope and intercept
        applied) and the Modality tag (0008,0060) of its first slice, or ``None`` if absent.

    Raises:
        ImageReadError: no series in ``directory``, an unknown ``series`` or unreadable slices.
    """
    if not any(p.is_file() for p in directory.iterdir()):
        raise ImageReadError(f"{directory}: no DICOM series found (the directory has no files)")
    try:
        uids = list(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(directory)))
    except RuntimeError as err:
        raise ImageReadError(f"{directory}: cannot list DICOM series ({itk_reason(err)})") from err
    if not uids:
        raise ImageReadError(f"{directory}: no DICOM series found in the directory")
    files = {
        uid: list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(directory), uid))
        for uid in uids
    }
    if series is None:
        chosen = max(uids, key=lambda uid: len(files[uid]))
        if len(uids) > 1:
            others = ", ".join(f"{uid} ({len(files[uid])} slices)" for uid in uids if uid != chosen)
            logger.warning(
                "%s: %d DICOM series found; reading %s (%d slices), the largest. Others: %s. "
                "Pass series=UID to choose one.",
                directory, len(uids), chosen, len(files[chosen]), others,
            )  # fmt: skip
    elif series in files:
        chosen = series
    else:
        raise ImageReadError(
            f"{directory}: no DICOM series with UID {series}; available: {', '.join(uids)}"
        )
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files[chosen])
    try:
        image = reader.Execute()
    except RuntimeError as err:
        raise ImageReadError(
            f"{directory}: cannot read DICOM series {chosen} ({itk_reason(err)})"
        ) from err
    return image, read_modality(Path(files[chosen][0]))


def read_modality(path: Path) -> str | None:
    """Return the Modality tag (0008,0060) of one DICOM file, or ``None`` if it has none."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return None
    if not reader.HasMetaDataKey(_MODALITY_TAG):
        return None
    return reader.GetMetaData(_MODALITY_TAG).strip() or None
