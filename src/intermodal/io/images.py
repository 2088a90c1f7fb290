"""Reading and writing images: one entry for every format, float32 out, geometry kept."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from intermodal.errors import ImageReadError, IntermodalError
from intermodal.io._atomic import atomic_write
from intermodal.io._integrity import check_file, check_written
from intermodal.io._itk import itk_reason
from intermodal.io.dicom import (
    MODALITY_KEY,
    SERIES_KEY,
    check_dicom_file,
    clean_modality,
    read_dicom_series,
    read_modality,
)

VOLUME_EXTENSIONS = (".nii", ".nii.gz", ".mha", ".mhd", ".nrrd", ".nhdr", ".dcm")
PICTURE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
READ_EXTENSIONS = VOLUME_EXTENSIONS + PICTURE_EXTENSIONS
"""File extensions :func:`read_image` accepts (a directory is read as a DICOM series)."""
WRITE_EXTENSIONS = (".nii.gz", ".nii", ".mha", ".nrrd")
"""File extensions :func:`write_image` accepts (single-file formats, so writes can be atomic)."""

_LUMINANCE = np.array([0.299, 0.587, 0.114])


def _extension(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    return path.suffix.lower()


def read_image(path: str | os.PathLike[str], *, series: str | None = None) -> sitk.Image:
    """Read an image file or a DICOM directory as a float32 scalar SimpleITK image.

    Origin, spacing (mm) and direction are kept as stored. Formats: NIfTI (``.nii``,
    ``.nii.gz``), MetaImage (``.mha``, ``.mhd``), NRRD (``.nrrd``, ``.nhdr``), a single DICOM file
    (``.dcm``), a directory holding a DICOM series, and 2D pictures (``.png``, ``.jpg``,
    ``.jpeg``, ``.tif``, ``.tiff``; RGB(A) becomes luminance ``0.299 R + 0.587 G + 0.114 B``,
    alpha ignored, 16-bit values kept). For DICOM the Modality tag is stored in the image's
    metadata under ``"intermodal:modality"`` (``img.GetMetaData("intermodal:modality")``).

    Args:
        path: the file or DICOM directory.
        series: for a DICOM directory holding several series, the SeriesInstanceUID to read;
            by default the series with most slices is read (and a warning lists the others).

    Returns:
        A 2D or 3D image of pixel type ``sitkFloat32``. A 3D file with one slice stays 3D.

    Raises:
        ImageReadError: a missing, truncated, corrupt or unsupported file; a header that
            contradicts itself or declares more voxels than the file can hold; an empty, 4D
            or multi-component image; NaN or infinite values; zero or negative spacing; a
            non-finite, singular or sheared orientation; complex values, or float64 values
            beyond float32; a DICOM series whose slices cannot be stacked faithfully (see
            :mod:`intermodal.io.dicom`: mixed orientations, gantry tilt, conflicting
            duplicates, a gap too wide to interpolate); a multi-frame DICOM file whose frames
            are out of order, uneven, doubled or of several rescales; MONOCHROME1 pixels.
            An uneven DICOM series is resampled onto a regular grid with a logged warning
            naming the gaps. The message is one line and names the file.

    Example:
        >>> fixed = read_image("ct.nii.gz")
        >>> moving = read_image("mr_dicom/", series="1.2.840.113619.2.5...")
    """
    path = Path(path)
    if not path.exists():
        raise ImageReadError(f"{path}: file or directory not found")
    modality = series_uid = None
    if path.is_dir():
        image, modality = read_dicom_series(path, series)
        series_uid = image.GetMetaData(SERIES_KEY)
    else:
        if series is not None:
            raise ImageReadError(
                f"{path}: series={series!r} applies to a DICOM directory, not to a file"
            )
        ext = _extension(path)
        if ext not in READ_EXTENSIONS:
            raise ImageReadError(
                f"{path}: unsupported file extension {ext or '(none)'!r}; supported: "
                f"{', '.join(READ_EXTENSIONS)} or a DICOM directory"
            )
        check_file(path, ext)
        if ext == ".dcm":
            check_dicom_file(path)
        try:
            image = sitk.ReadImage(str(path))
        except RuntimeError as err:
            raise ImageReadError(f"{path}: {_read_failure(err, ext)}") from err
        if ext == ".dcm":
            modality = read_modality(path)
        elif image.HasMetaDataKey(MODALITY_KEY):
            try:  # NRRD keeps what write_image stored; a damaged file may hold anything
                modality = clean_modality(image.GetMetaData(MODALITY_KEY))
            except (UnicodeError, RuntimeError):
                modality = None
    image = _to_float32_scalar(image, path)
    if modality:
        image.SetMetaData(MODALITY_KEY, modality)
    if series_uid:
        image.SetMetaData(SERIES_KEY, series_uid)
    return image


_ORTHONORMAL_TOLERANCE = 1e-3
"""Largest entry of ``D^T D - I`` accepted for a direction matrix ``D``: headers store
cosines to a few decimals (DICOM's ImageOrientationPatient often to 6)."""


def _read_failure(err: RuntimeError, ext: str) -> str:
    """Why SimpleITK could not read a file, in words a user can act on."""
    reason = itk_reason(err)
    if "Unable to determine ImageIO reader" in reason:
        return f"not a readable {ext} image (corrupt, or not the format its extension says)"
    if ext == ".png" and "Unknown PixelType" in reason:
        return "cannot read a gray+alpha PNG; save it as grayscale or RGB"
    return f"cannot read image ({reason})"


def _to_float32_scalar(image: sitk.Image, path: Path) -> sitk.Image:
    """Check a freshly read image and convert it to float32 scalar; raise ImageReadError."""
    ndim = image.GetDimension()
    size = tuple(image.GetSize())
    if ndim > 3:
        raise ImageReadError(f"{path}: {ndim}D images are not supported: got size {size}")
    if 0 in size:
        raise ImageReadError(f"{path}: empty image: size {size}")
    spacing = tuple(image.GetSpacing())
    if not all(np.isfinite(s) and s > 0 for s in spacing):
        raise ImageReadError(f"{path}: spacing must be positive, got {spacing}")
    origin = np.array(image.GetOrigin())
    direction = np.array(image.GetDirection()).reshape(ndim, ndim)
    if not (np.isfinite(origin).all() and np.isfinite(direction).all()):
        raise ImageReadError(
            f"{path}: origin {tuple(origin)} or direction {tuple(direction.ravel())} is not "
            f"finite (corrupt header)"
        )
    if abs(np.linalg.det(direction)) < 1e-3:
        raise ImageReadError(
            f"{path}: the direction matrix {tuple(direction.ravel())} is singular (corrupt header)"
        )
    # a sheared grid: NIfTI's qform cannot hold it, and readers disagree about its sform
    if np.abs(direction.T @ direction - np.eye(ndim)).max() > _ORTHONORMAL_TOLERANCE:
        raise ImageReadError(
            f"{path}: the direction matrix {tuple(np.round(direction.ravel(), 4))} is not "
            "orthonormal (a sheared grid); resample the image onto an orthogonal grid first"
        )
    if "complex" in image.GetPixelIDTypeAsString():
        raise ImageReadError(f"{path}: complex-valued images are not supported")
    components = image.GetNumberOfComponentsPerPixel()
    if components > 1:
        if ndim != 2 or components not in (3, 4) or "complex" in image.GetPixelIDTypeAsString():
            raise ImageReadError(
                f"{path}: images with {components} components per voxel are not supported "
                f"(only 2D RGB/RGBA pictures are converted to grayscale); got size {size}"
            )
        rgb = sitk.GetArrayViewFromImage(image)[..., :3].astype(np.float64)
        gray = sitk.GetImageFromArray((rgb @ _LUMINANCE).astype(np.float32))
        gray.CopyInformation(image)
        image = gray
    else:
        stored = image
        image = sitk.Cast(image, sitk.sitkFloat32)
        if stored.GetPixelID() == sitk.sitkFloat64:
            _check_float32_range(stored, path)
    values = sitk.GetArrayViewFromImage(image)
    bad = int(np.count_nonzero(~np.isfinite(values)))
    if bad:
        nan = int(np.count_nonzero(np.isnan(values)))
        raise ImageReadError(
            f"{path}: {bad} of {values.size} voxels are not finite ({nan} NaN, {bad - nan} "
            f"infinite)"
        )
    # a constant image is read as it is: a mask may hold only ones, and register refuses a
    # constant image to register, naming it
    return image


def _check_float32_range(image: sitk.Image, path: Path) -> None:
    """Refuse float64 values that are finite but beyond float32, where they would turn infinite."""
    values = sitk.GetArrayViewFromImage(image)
    finite = np.isfinite(values)
    if not finite.all():
        return  # reported as NaN or infinite values, as in any image
    largest = float(np.abs(values).max())
    if largest > float(np.finfo(np.float32).max):
        raise ImageReadError(
            f"{path}: values up to {largest:.3g} exceed the float32 range (3.4e38) that "
            "images are processed in; rescale the image"
        )


def write_image(
    image: sitk.Image, path: str | os.PathLike[str], *, overwrite: bool = False
) -> Path:
    """Write ``image`` to NIfTI (``.nii``, ``.nii.gz``), MetaImage (``.mha``) or NRRD (``.nrrd``).

    The file is written to a hidden temporary file in the same folder, checked to be complete
    (ITK's NIfTI writer does not report a full disk) and then moved into place, so ``path``
    never holds a partial image; on failure nothing is left behind and an existing ``path`` is
    left as it was. ``.nii.gz`` is
    gzip-compressed. Missing parent folders are created. The pixel type is written as it is.

    Args:
        image: any SimpleITK image (scalar or vector, e.g. a displacement field).
        path: the output file; its extension picks the format.
        overwrite: replace an existing file. Without it an existing ``path`` is an error.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        OutputExistsError: ``path`` exists and ``overwrite`` is false.
        IntermodalError: an unsupported extension, or the write failed.
    """
    path = Path(path)
    if not isinstance(image, sitk.Image):
        raise IntermodalError(
            f"{path}: write_image needs a SimpleITK image, got {type(image).__name__}"
        )
    if 0 in image.GetSize():
        raise IntermodalError(f"{path}: cannot write an empty image: size {image.GetSize()}")
    ext = _extension(path)
    if ext not in WRITE_EXTENSIONS:
        raise IntermodalError(
            f"{path}: cannot write {ext or 'files without an extension'!r}; supported: "
            f"{', '.join(WRITE_EXTENSIONS)}"
        )

    def write(tmp: Path) -> None:
        try:
            sitk.WriteImage(image, str(tmp), useCompression=ext == ".nii.gz")
        except RuntimeError as err:
            raise IntermodalError(f"{path}: cannot write image ({itk_reason(err)})") from err
        try:
            check_written(tmp, ext)
        except (ImageReadError, OSError) as err:
            raise IntermodalError(
                f"{path}: cannot write image: the written file is incomplete (disk full?)"
            ) from err

    return atomic_write(path, write, suffix=ext, overwrite=overwrite)


def geometry(image: sitk.Image) -> dict[str, Any]:
    """The grid of ``image`` as plain JSON-serialisable values, for reports.

    Returns:
        ``{"ndim": int, "size": [x, y, (z)] voxels, "spacing": [...] mm, "origin": [...] mm
        (LPS), "direction": [...]}``; ``direction`` is the ``ndim x ndim`` matrix flattened
        row by row, as ``image.GetDirection()`` gives it (so ``SetDirection`` accepts it).
        All axes are in physical order ``(x, y, z)``.
    """
    return {
        "ndim": int(image.GetDimension()),
        "size": [int(s) for s in image.GetSize()],
        "spacing": [float(s) for s in image.GetSpacing()],
        "origin": [float(o) for o in image.GetOrigin()],
        "direction": [float(d) for d in image.GetDirection()],
    }
