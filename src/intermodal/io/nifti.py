"""A displacement field written to NIfTI-1 a slab of one component at a time, on any grid.

ITK's NIfTI writer needs the whole vector image in memory and, because NIfTI stores the
components of a vector image slowest (``x, y, z, t, c``) where ITK interleaves them, it makes
a second full copy to reorder them: 2 x 12 bytes per voxel for a float32 3D field. On a
512x512x400 CT that is 2.5 GiB on top of the field itself. :func:`write_displacement_nifti`
samples one component on the target grid a slab of rows at a time
(:func:`intermodal.grids.sample_rows`) and streams it out, so a field that lives on a coarse
grid can be written on the fixed image's full grid in a slab's memory. ``.nii.gz`` is
deflated with zlib's run-length strategy: on float32 displacements it gave the default
strategy's size (within 1 %, zero runs included) in about 0.4x the time. The file is the one
ITK would write for the same float32 vector image (the same header fields:
NIFTI_INTENT_VECTOR, qform and sform both "scanner", LPS turned to RAS), which
``tests/io/test_io_nifti.py`` checks against ITK byte for byte apart from the quaternion's
last bits.

:func:`write_float32_nifti` writes a scalar float32 image (the warped image, the Jacobian)
as ITK would, deflated the same way.
"""

from __future__ import annotations

import math
import os
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from intermodal.errors import IntermodalError
from intermodal.grids import sample_rows, slab_rows

__all__ = ["write_displacement_nifti", "write_float32_nifti"]

_HEADER_BYTES = 348
_DATA_OFFSET = 352  # the header plus the 4-byte extension flag (no extensions)
_INTENT_VECTOR = 1007
_FLOAT32 = 16
_UNITS_MM_S = 2 | 8  # NIFTI_UNITS_MM | NIFTI_UNITS_SEC, as ITK writes them
_SCANNER = 1


def _quaternion(rotation: np.ndarray) -> tuple[float, float, float, float]:
    """``(b, c, d, qfac)`` of a 3x3 orthonormal matrix, as NIfTI-1's qform stores it.

    A matrix with determinant -1 is stored as ``qfac = -1`` and its third column negated.
    The quaternion ``(a, b, c, d)`` is taken with ``a >= 0`` (NIfTI keeps only b, c, d).
    """
    r = np.array(rotation, dtype=np.float64)
    qfac = 1.0
    if np.linalg.det(r) < 0:
        qfac = -1.0
        r[:, 2] = -r[:, 2]
    trace = r[0, 0] + r[1, 1] + r[2, 2] + 1.0
    if trace > 0.5:
        a = 0.5 * math.sqrt(trace)
        b = 0.25 * (r[2, 1] - r[1, 2]) / a
        c = 0.25 * (r[0, 2] - r[2, 0]) / a
        d = 0.25 * (r[1, 0] - r[0, 1]) / a
    else:  # the largest diagonal term gives the stable branch
        xd = 1.0 + r[0, 0] - (r[1, 1] + r[2, 2])
        yd = 1.0 + r[1, 1] - (r[0, 0] + r[2, 2])
        zd = 1.0 + r[2, 2] - (r[0, 0] + r[1, 1])
        if xd > 1.0:
            b = 0.5 * math.sqrt(xd)
            c = 0.25 * (r[0, 1] + r[1, 0]) / b
            d = 0.25 * (r[0, 2] + r[2, 0]) / b
            a = 0.25 * (r[2, 1] - r[1, 2]) / b
        elif yd > 1.0:
            c = 0.5 * math.sqrt(yd)
            b = 0.25 * (r[0, 1] + r[1, 0]) / c
            d = 0.25 * (r[1, 2] + r[2, 1]) / c
            a = 0.25 * (r[0, 2] - r[2, 0]) / c
        else:
            d = 0.5 * math.sqrt(zd)
            b = 0.25 * (r[0, 2] + r[2, 0]) / d
            c = 0.25 * (r[1, 2] + r[2, 1]) / d
            a = 0.25 * (r[1, 0] - r[0, 1]) / d
        if a < 0.0:
            b, c, d = -b, -c, -d
    return b, c, d, qfac


def nifti_header(reference: sitk.Image, components: int) -> bytes:
    """The 352 bytes before the data of a float32 NIfTI-1 file on ``reference``'s grid.

    Args:
        reference: the grid (2D or 3D; its pixels are not read).
        components: vector components per voxel (``ndim`` for a displacement field), or 1
            for a scalar image (written as ITK writes one: no intent, ``ndim`` dimensions).
    """
    ndim = reference.GetDimension()
    size = list(reference.GetSize()) + [1] * (3 - ndim)
    spacing = list(reference.GetSpacing()) + [1.0] * (3 - ndim)
    origin = list(reference.GetOrigin()) + [0.0] * (3 - ndim)
    direction = np.eye(3)
    direction[:ndim, :ndim] = np.array(reference.GetDirection()).reshape(ndim, ndim)
    # ITK is LPS, NIfTI RAS: negate the first two rows of the direction and of the origin.
    lps_to_ras = np.diag([-1.0, -1.0, 1.0])
    rotation = lps_to_ras @ direction
    offset = lps_to_ras @ np.array(origin)
    b, c, d, qfac = _quaternion(rotation)
    affine = rotation @ np.diag(spacing)
    header = bytearray(_HEADER_BYTES)
    struct.pack_into("<i", header, 0, _HEADER_BYTES)
    header[38:39] = b"r"
    if components == 1:
        struct.pack_into("<8h", header, 40, ndim, *size, 1, 1, 1, 1)
        struct.pack_into("<hhh", header, 68, 0, _FLOAT32, 32)
    else:
        struct.pack_into("<8h", header, 40, 5, *size, 1, components, 1, 1)
        struct.pack_into("<hhh", header, 68, _INTENT_VECTOR, _FLOAT32, 32)
    struct.pack_into("<8f", header, 76, qfac, *spacing, 0.0, 0.0, 0.0, 0.0)
    struct.pack_into("<fff", header, 108, float(_DATA_OFFSET), 1.0, 0.0)
    header[123] = _UNITS_MM_S
    struct.pack_into("<hh", header, 252, _SCANNER, _SCANNER)
    struct.pack_into("<6f", header, 256, b, c, d, *offset)
    for row in range(3):
        struct.pack_into("<4f", header, 280 + 16 * row, *affine[row], offset[row])
    header[344:348] = b"n+1\0"
    return bytes(header) + b"\0\0\0\0"


def write_displacement_nifti(
    field: sitk.Image,
    reference: sitk.Image,
    path: str | os.PathLike,
    *,
    compresslevel: int = 6,
) -> Path:
    """Write ``field`` sampled on ``reference``'s grid as a float32 vector NIfTI-1 file.

    The field (a vector image of LPS mm, on any grid that covers the reference; zero outside
    it) is linearly interpolated onto the reference grid one component and a slab of rows at a
    time, so the peak memory is a slab (:data:`intermodal.grids.SLAB_VOXELS`). ``.nii.gz`` is
    gzip (deflate, run-length strategy) with no name and a modification time of 0, so the same
    field gives the same bytes. The file is written in place: callers that need all-or-nothing
    write into a staging folder (as :func:`intermodal.report.save_result` does).

    Args:
        field: vector image with one component per dimension.
        reference: the grid of the file (e.g. the fixed image).
        path: ``.nii`` or ``.nii.gz``.
        compresslevel: gzip level for ``.nii.gz``.

    Returns:
        The path written.

    Raises:
        IntermodalError: a field whose dimension or component count does not match, or a
            path that is not ``.nii``/``.nii.gz``.
    """
    path = Path(path)
    ndim = reference.GetDimension()
    if field.GetDimension() != ndim or field.GetNumberOfComponentsPerPixel() != ndim:
        raise IntermodalError(
            f"{path}: a {ndim}D displacement field needs {ndim} components on a {ndim}D grid, "
            f"not {field.GetNumberOfComponentsPerPixel()} on a {field.GetDimension()}D one"
        )
    name = path.name.lower()
    if not name.endswith((".nii", ".nii.gz")):
        raise IntermodalError(f"{path}: a displacement field is written as .nii or .nii.gz")
    _write_stream(path, compresslevel, lambda write: _write_body(write, field, reference))
    return path


def write_float32_nifti(
    image: sitk.Image, path: str | os.PathLike, *, compresslevel: int = 6
) -> Path:
    """Write a scalar float32 image as ``sitk.WriteImage`` would, deflated as fields are.

    The same header and data as ITK's NIfTI writer (checked in ``tests/io/test_io_nifti.py``),
    with ``.nii.gz`` compressed by zlib's run-length strategy, as the displacement fields are:
    on the warped MR and the Jacobian of a 1 mm CT, the default strategy's size within a few
    per cent in about half the time.

    Raises:
        IntermodalError: not a scalar float32 image, or a path that is not ``.nii``/``.nii.gz``.
    """
    path = Path(path)
    if image.GetPixelID() != sitk.sitkFloat32:
        raise IntermodalError(
            f"{path}: write_float32_nifti writes scalar float32 images, not "
            f"{image.GetPixelIDTypeAsString()}"
        )
    if not path.name.lower().endswith((".nii", ".nii.gz")):
        raise IntermodalError(f"{path}: write_float32_nifti writes .nii or .nii.gz")

    def body(write: Callable[[bytes], object]) -> None:
        write(nifti_header(image, 1))
        # array order (z, y, x) in C order is NIfTI's x-fastest order
        write(memoryview(np.ascontiguousarray(sitk.GetArrayViewFromImage(image))).cast("B"))

    _write_stream(path, compresslevel, body)
    return path


def _write_stream(
    path: Path, compresslevel: int, body: Callable[[Callable[[bytes], object]], None]
) -> None:
    """Open ``path`` and let ``body`` write into it, through deflate for ``.nii.gz``."""
    with open(path, "wb") as raw:
        if path.name.lower().endswith(".gz"):
            # wbits 31: a gzip wrapper (no name, mtime 0); Z_RLE: see the module's docstring
            deflate = zlib.compressobj(compresslevel, zlib.DEFLATED, 31, 9, zlib.Z_RLE)
            body(lambda data: raw.write(deflate.compress(data)))
            raw.write(deflate.flush())
        else:
            body(raw.write)


def _write_body(write: Callable[[bytes], object], field: sitk.Image, reference: sitk.Image) -> None:
    ndim = reference.GetDimension()
    write(nifti_header(reference, ndim))
    # array order (z, y, x) in C order is NIfTI's x-fastest order
    rows, step = reference.GetSize()[-1], slab_rows(reference)
    for component in range(ndim):
        for low in range(0, rows, step):
            # in float64, then rounded to float32 as ITK's resampling does; the float64 values
            # agree with ITK's to about 1e-14, so a float32 value is ITK's or one rounding
            # step from it (benchmarks/RESULTS.md, output_writing)
            high = min(low + step, rows)
            slab = sample_rows(field, reference, low, high, component=component)
            write(memoryview(np.ascontiguousarray(slab, dtype=np.float32)).cast("B"))
