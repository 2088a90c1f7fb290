"""Reading a DICOM series from a directory, slice by slice, with its geometry checked.

GDCM (through SimpleITK) reads each slice; the stacking is done here, because
``sitk.ImageSeriesReader`` stacks whatever it is given: a series with a missing slice or uneven
spacing comes out stretched onto the mean spacing (with at most a warning printed by ITK),
slices of another orientation are stacked as if parallel, and duplicated slices are kept. Here
the slices are sorted along their normal and:

* slices of different orientations, sizes or pixel spacings, and stacks whose slices are
  shifted in-plane (gantry tilt) are refused;
* two identical slices at one position are de-duplicated with a warning; two different ones
  are refused;
* uneven spacing (a missing slice, an irregular gap) is resampled by linear interpolation onto
  a regular grid as fine as the finest gap, with a warning naming every wider gap and its
  positions in mm; a gap wider than :data:`MAX_GAP_RATIO` times the finest is refused instead
  (too much to fill by interpolation).
"""

from __future__ import annotations

import logging
import string
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from intermodal.errors import ImageReadError
from intermodal.io._integrity import check_dicom_size
from intermodal.io._itk import itk_reason

logger = logging.getLogger(__name__)

MODALITY_KEY = "intermodal:modality"
SERIES_KEY = "intermodal:series_uid"
"""Metadata key of the SeriesInstanceUID an image was read from (a DICOM series folder)."""
"""Metadata key under which :func:`read_image` stores the DICOM Modality (``"CT"``, ``"MR"``...)."""

MAX_GAP_RATIO = 3.0
"""Widest gap between neighbouring slices, in units of the series' finest gap (its spacing),
that is filled by interpolation (3: up to two consecutive missing slices). Wider is refused."""

_MODALITY_TAG = "0008|0060"
_POSITION_TAG = "0020|0032"  # ImagePositionPatient: LPS mm of the first voxel of the slice
_ORIENTATION_TAG = "0020|0037"  # ImageOrientationPatient: row then column direction cosines
# Tolerances. Direction cosines are written with ~6-10 decimals, positions in mm with ~3-6.
_ORIENTATION_TOL = 1e-3  # per direction cosine (about 0.06 degrees)
_SPACING_RTOL = 0.01  # gaps within 1% of each other (of their median) are even
_POSITION_TOL_MM = 1e-3


@dataclass
class _Slice:
    file: Path
    pixels: np.ndarray  # (rows, columns) float32, rescale slope and intercept applied
    position: np.ndarray  # (3,) LPS mm
    orientation: np.ndarray  # (6,) row then column direction cosines
    spacing: tuple[float, float]  # mm, (column spacing x, row spacing y) as ITK orders them


def read_dicom_series(directory: Path, series: str | None = None) -> tuple[sitk.Image, str | None]:
    """Read one DICOM series from ``directory`` (not recursive) onto a regular grid.

    Args:
        directory: a folder holding the slices of one or more series.
        series: the SeriesInstanceUID to read. ``None`` takes the series with most slices
            and logs a warning naming the others when there are several.

    Returns:
        The image (float32 for a series of several slices, GDCM's pixel type for a single
        file; rescale slope and intercept applied) and the Modality tag (0008,0060) of its
        first slice, or ``None`` if absent. The slice axis is the slice normal
        ``row x column``; its spacing (mm) is that of the slice positions, after resampling
        when they are uneven (a warning is logged, naming each irregular gap).

    Raises:
        ImageReadError: no series in ``directory``, an unknown ``series``, an unreadable
            slice, slices without position or orientation, of mixed orientation, size or
            pixel spacing, an in-plane shift between slices (gantry tilt), two different
            slices at one position, or a gap over :data:`MAX_GAP_RATIO` times the spacing.
    """
    try:
        has_files = any(p.is_file() for p in directory.iterdir())
    except OSError as err:
        raise ImageReadError(f"{directory}: cannot list the directory ({err.strerror})") from err
    if not has_files:
        inner = sorted(p.name for p in directory.iterdir() if p.is_dir())
        hint = (
            f"; it holds the folder(s) {', '.join(inner[:3])}{', ...' if len(inner) > 3 else ''}"
            ": pass the one that holds the series' files"
            if inner
            else ""
        )
        raise ImageReadError(
            f"{directory}: no DICOM series found (the directory has no files{hint})"
        )
    # GDCM prints a two-line "No Series were found" warning of its own; the error below says it
    warnings_shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        uids = list(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(directory)))
        files = {
            uid: list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(directory), uid))
            for uid in uids
        }
    except RuntimeError as err:
        raise ImageReadError(f"{directory}: cannot list DICOM series ({itk_reason(err)})") from err
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(warnings_shown)
    files = {uid: names for uid, names in files.items() if names}
    uids = list(files)
    if not uids:
        raise ImageReadError(f"{directory}: no DICOM series found in the directory")
    if series is None:
        chosen = max(uids, key=lambda uid: len(files[uid]))
        if len(uids) > 1:
            others = ", ".join(f"{uid} ({len(files[uid])} slices)" for uid in uids if uid != chosen)
            logger.warning(
                "%s: %d DICOM series found; reading %s (%d slices), the largest. Others: %s. "
                "Choose one with --fixed-series or --moving-series (series=UID in Python).",
                directory, len(uids), chosen, len(files[chosen]), others,
            )  # fmt: skip
    elif series in files:
        chosen = series
    else:
        raise ImageReadError(
            f"{directory}: no DICOM series with UID {series}; available: {', '.join(uids)}"
        )
    paths = [Path(name) for name in files[chosen]]
    if len(paths) == 1:
        image, modality = _read_file(directory, paths[0])
    else:
        slices = []
        modality = None
        for path in paths:
            slice_, slice_modality = _read_slice(directory, path)
            slices.append(slice_)
            modality = modality or slice_modality
        image = _stack(directory, slices)
    image.SetMetaData(SERIES_KEY, chosen)
    return image, modality


def _read_file(directory: Path, path: Path) -> tuple[sitk.Image, str | None]:
    check_dicom_size(path)
    check_dicom_file(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        image = reader.Execute()
    except RuntimeError as err:
        raise ImageReadError(
            f"{directory}: cannot read DICOM file {path.name} ({itk_reason(err)})"
        ) from err
    return image, _modality(reader)


def _read_slice(directory: Path, path: Path) -> tuple[_Slice, str | None]:
    """Read one single-frame slice of a series with its position and orientation."""
    check_dicom_size(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        image = reader.Execute()
    except RuntimeError as err:
        raise ImageReadError(
            f"{directory}: cannot read DICOM slice {path.name} ({itk_reason(err)})"
        ) from err
    if _photometric(reader) == "MONOCHROME1":
        raise ImageReadError(f"{directory}: {path.name}: {_MONOCHROME1}")
    size = tuple(image.GetSize())
    if image.GetDimension() == 3 and size[2] != 1:
        raise ImageReadError(
            f"{directory}: {path.name} holds {size[2]} frames; a series of several files must "
            f"have one slice per file"
        )
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ImageReadError(
            f"{directory}: {path.name} has {image.GetNumberOfComponentsPerPixel()} components "
            f"per pixel; only grayscale DICOM series are supported"
        )
    position = _tag_numbers(reader, _POSITION_TAG, 3)
    orientation = _tag_numbers(reader, _ORIENTATION_TAG, 6)
    if position is None or orientation is None:
        missing = "ImagePositionPatient" if position is None else "ImageOrientationPatient"
        raise ImageReadError(
            f"{directory}: {path.name} lacks a valid {missing}, so the slice order and spacing "
            f"cannot be told"
        )
    row, column = orientation[:3], orientation[3:]
    if (
        abs(np.linalg.norm(row) - 1) > 0.01
        or abs(np.linalg.norm(column) - 1) > 0.01
        or abs(row @ column) > 0.01
    ):
        raise ImageReadError(
            f"{directory}: {path.name} has an invalid ImageOrientationPatient "
            f"{_fmt(orientation)} (not two orthogonal unit vectors)"
        )
    pixels = sitk.GetArrayFromImage(image).astype(np.float32).reshape(size[1], size[0])
    spacing = tuple(float(s) for s in image.GetSpacing()[:2])
    return _Slice(path, pixels, position, orientation, spacing), _modality(reader)


def _stack(directory: Path, slices: list[_Slice]) -> sitk.Image:
    """Sort slices along their normal, check them, and stack them onto a regular grid."""
    first = slices[0]
    for other in slices[1:]:
        if np.abs(other.orientation - first.orientation).max() > _ORIENTATION_TOL:
            raise ImageReadError(
                f"{directory}: mixed slice orientations in one series: {first.file.name} has "
                f"{_fmt(first.orientation)}, {other.file.name} has {_fmt(other.orientation)}"
            )
        if other.pixels.shape != first.pixels.shape:
            raise ImageReadError(
                f"{directory}: slices of different sizes in one series: {first.file.name} is "
                f"{first.pixels.shape[::-1]}, {other.file.name} is {other.pixels.shape[::-1]} "
                f"(columns, rows)"
            )
        if not np.allclose(other.spacing, first.spacing, rtol=1e-4, atol=0):
            raise ImageReadError(
                f"{directory}: slices with different pixel spacing in one series: "
                f"{first.file.name} has {first.spacing} mm, {other.file.name} has {other.spacing}"
            )
    row, column = first.orientation[:3], first.orientation[3:]
    normal = np.cross(row, column)
    normal /= np.linalg.norm(normal)
    depths = np.array([s.position @ normal for s in slices])
    order = np.argsort(depths, kind="stable")
    slices = [slices[k] for k in order]
    depths = depths[order]

    in_plane = np.array([s.position - d * normal for s, d in zip(slices, depths)])
    shift = np.linalg.norm(in_plane - in_plane[0], axis=1)
    worst = int(np.argmax(shift))
    if shift[worst] > max(0.05 * min(first.spacing), _POSITION_TOL_MM):
        raise ImageReadError(
            f"{directory}: slices are not stacked along their normal (gantry tilt or a sheared "
            f"stack): {slices[worst].file.name} is shifted {shift[worst]:.3f} mm in-plane from "
            f"{slices[0].file.name}; resample it to an orthogonal grid first"
        )

    slices, depths = _drop_duplicates(directory, slices, depths)
    if len(slices) == 1:
        spacing_z = 1.0
        volume = slices[0].pixels[None]
    else:
        volume, spacing_z = _regular_grid(directory, slices, depths)
    image = sitk.GetImageFromArray(volume)
    image.SetSpacing((*slices[0].spacing, spacing_z))
    image.SetOrigin(tuple(float(p) for p in slices[0].position))
    image.SetDirection(tuple(float(v) for v in np.column_stack([row, column, normal]).ravel()))
    return image


def _drop_duplicates(
    directory: Path, slices: list[_Slice], depths: np.ndarray
) -> tuple[list[_Slice], np.ndarray]:
    """Drop slices identical to their neighbour at the same position; refuse differing ones."""
    gaps = np.diff(depths)
    positive = gaps[gaps > _POSITION_TOL_MM]
    tol = max(_POSITION_TOL_MM, 0.01 * float(np.median(positive))) if positive.size else 1e-3
    keep = [0]
    for k in range(1, len(slices)):
        previous = slices[keep[-1]]
        if depths[k] - depths[keep[-1]] > tol:
            keep.append(k)
            continue
        if not np.array_equal(previous.pixels, slices[k].pixels):
            raise ImageReadError(
                f"{directory}: two different slices at the same position {depths[k]:.3f} mm "
                f"along the slice normal: {previous.file.name} and {slices[k].file.name} "
                f"(several acquisitions in one series?)"
            )
        logger.warning(
            "%s: %s duplicates %s (same position %.3f mm, same pixels); it is ignored",
            directory, slices[k].file.name, previous.file.name, depths[k],
        )  # fmt: skip
    return [slices[k] for k in keep], depths[keep]


def _regular_grid(
    directory: Path, slices: list[_Slice], depths: np.ndarray
) -> tuple[np.ndarray, float]:
    """Stack sorted slices; resample along the normal if they are unevenly spaced.

    Returns:
        The volume ``(slices, rows, columns)`` float32 and its slice spacing in mm.
    """
    gaps = np.diff(depths)
    # The finest gap is the acquisition's spacing: the others are it, or a multiple where
    # slices are missing, or irregular. Resampling onto it keeps every acquired slice's detail.
    finest = float(gaps.min())
    extent = float(depths[-1] - depths[0])
    stack = np.stack([s.pixels for s in slices])
    tol = max(_SPACING_RTOL * float(np.median(gaps)), _POSITION_TOL_MM)
    if gaps.max() - finest <= tol:
        return stack, extent / (len(slices) - 1)
    uneven = np.flatnonzero(gaps - finest > tol)
    described = "; ".join(
        f"{gaps[k]:.3f} mm between {slices[k].file.name} at {depths[k]:.3f} mm and "
        f"{slices[k + 1].file.name} at {depths[k + 1]:.3f} mm"
        for k in uneven[:5]
    ) + (f"; and {uneven.size - 5} more" if uneven.size > 5 else "")
    widest = int(np.argmax(gaps))
    if gaps[widest] > MAX_GAP_RATIO * finest + tol:
        raise ImageReadError(
            f"{directory}: a gap of {gaps[widest]:.3f} mm between slices at "
            f"{depths[widest]:.3f} mm and {depths[widest + 1]:.3f} mm along the slice normal, "
            f"over {MAX_GAP_RATIO:g} times the slice spacing {finest:.3f} mm: slices are "
            f"missing; refusing to fill it by interpolation"
        )
    count = int(round(extent / finest)) + 1
    spacing = extent / (count - 1)
    targets = depths[0] + spacing * np.arange(count)
    below = np.clip(np.searchsorted(depths, targets, side="right") - 1, 0, len(slices) - 2)
    weight = np.clip((targets - depths[below]) / gaps[below], 0.0, 1.0)
    weight = weight[:, None, None]
    volume = (1 - weight) * stack[below] + weight * stack[below + 1].astype(np.float64)
    logger.warning(
        "%s: uneven slice spacing (finest gap %.3f mm): %s. Resampled by linear "
        "interpolation along the slice normal onto %d slices %.3f mm apart (%.3f to %.3f mm)",
        directory, finest, described, count, spacing, depths[0], depths[-1],
    )  # fmt: skip
    return volume.astype(np.float32), spacing


def _tag_numbers(reader: sitk.ImageFileReader, tag: str, count: int) -> np.ndarray | None:
    """The ``count`` finite numbers of a backslash-separated DICOM tag, or ``None``."""
    text = _meta(reader, tag)
    if text is None:
        return None
    try:
        values = np.array([float(v) for v in text.split("\\")])
    except ValueError:
        return None
    if values.shape != (count,) or not np.isfinite(values).all():
        return None
    return values


def _meta(reader: sitk.ImageFileReader, tag: str) -> str | None:
    """The text of a DICOM tag, or ``None`` if absent or not decodable."""
    try:
        return reader.GetMetaData(tag) if reader.HasMetaDataKey(tag) else None
    except (UnicodeError, RuntimeError):
        return None


def _modality(reader: sitk.ImageFileReader) -> str | None:
    """The Modality code string (upper case, digits, ``_``, at most 16) or ``None``."""
    return clean_modality(_meta(reader, _MODALITY_TAG))


def clean_modality(value: str | None) -> str | None:
    """``value`` if it is a DICOM code string (upper case, digits, ``_``, at most 16 long)."""
    value = (value or "").strip()
    allowed = set(string.ascii_uppercase + string.digits + "_ ")
    if not value or len(value) > 16 or not set(value) <= allowed:
        return None
    return value


def _fmt(values: np.ndarray) -> str:
    return "(" + ", ".join(f"{v:.4f}" for v in values) + ")"


_MONOCHROME1 = (
    "MONOCHROME1 (inverted grey) pixels are not supported: the reader inverts them before the "
    "rescale, which would turn air into bone; store the image as MONOCHROME2"
)
_FRAME_SPACING_TOLERANCE = 0.01
"""Largest relative spread of a multi-frame file's frame spacing that counts as even."""


def _photometric(reader: sitk.ImageFileReader) -> str:
    key = "0028|0004"
    return reader.GetMetaData(key).strip() if reader.HasMetaDataKey(key) else ""


def check_dicom_file(path: Path) -> None:
    """Refuse a single DICOM file whose pixels GDCM would read wrongly, without a word.

    GDCM reads a multi-frame (enhanced) file as one volume: frames in their stored order, a
    spacing of 1 mm where the frames' positions are uneven, and the first frame's rescale for
    all. So the frames' per-frame positions (PlanePositionSequence) must run along the slice
    normal in order at an even spacing, one frame a position, and the frames must share one
    rescale (PixelValueTransformationSequence). MONOCHROME1 pixels are refused as in a series.
    A tester's files of interleaved, uneven, dual-echo and per-frame-rescaled frames were
    each read wrongly before these checks.

    Raises:
        ImageReadError: one line naming the file and what it cannot hold.
    """
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception:  # noqa: BLE001 - not for us to judge here: SimpleITK reports it
        return
    if str(ds.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1":
        raise ImageReadError(f"{path}: {_MONOCHROME1}")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    groups = ds.get("PerFrameFunctionalGroupsSequence")
    if frames < 2 or not groups:
        return
    shared = (ds.get("SharedFunctionalGroupsSequence") or [None])[0]

    def attribute(frame, sequence: str, keyword: str):
        for group in (frame, shared):
            if group is not None and sequence in group and group[sequence].value:
                item = group[sequence].value[0]
                if keyword in item:
                    return item[keyword].value
        return None

    rescales = {
        (
            float(attribute(f, "PixelValueTransformationSequence", "RescaleSlope") or 1),
            float(attribute(f, "PixelValueTransformationSequence", "RescaleIntercept") or 0),
        )
        for f in groups
    }
    if len(rescales) > 1:
        raise ImageReadError(
            f"{path}: its {frames} frames have {len(rescales)} different rescale slopes or "
            "intercepts, which this reader cannot apply frame by frame; export the image as a "
            "series of single-frame files"
        )
    positions = [attribute(f, "PlanePositionSequence", "ImagePositionPatient") for f in groups]
    orientation = attribute(groups[0], "PlaneOrientationSequence", "ImageOrientationPatient")
    if any(p is None for p in positions) or orientation is None:
        return
    row, column = np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)
    along = np.asarray(positions, float) @ np.cross(row, column)
    steps = np.diff(along)
    problem = None
    if np.any(np.abs(steps) < 1e-3):
        problem = "several frames lie at one position (e.g. two echoes or two stacks)"
    elif np.any(steps > 0) and np.any(steps < 0):
        problem = "the frames are not stored in the order of their positions"
    elif np.ptp(np.abs(steps)) > _FRAME_SPACING_TOLERANCE * np.abs(steps).mean():
        problem = (
            f"the frames lie {np.abs(steps).min():.3g} to {np.abs(steps).max():.3g} mm apart, "
            "not at one spacing"
        )
    if problem:
        raise ImageReadError(
            f"{path}: a multi-frame file in which {problem}; this reader would stack its frames "
            "wrongly: export the image as a series of single-frame files"
        )


def read_modality(path: Path) -> str | None:
    """Return the Modality tag (0008,0060) of one DICOM file, or ``None`` if it has none."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return None
    return _modality(reader)
