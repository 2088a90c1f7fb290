"""Modality-aware intensity scaling and the working grid.

CT is clipped to a Hounsfield window and mapped to ``[0, 1]``; MR, whose units are arbitrary, is
mapped by robust percentiles. Both images are then resampled onto a *working grid*: the fixed
image's physical extent and direction at a working spacing, padded at the high end of each axis
so that the network's size constraints hold. The padding never moves the origin, so physical
positions on the working grid are those of the fixed image.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import SimpleITK as sitk

from intermodal.errors import IntermodalError

logger = logging.getLogger(__name__)

Modality = Literal["ct", "mr"]
MODALITY_CHOICES = ("ct", "mr", "auto")
DEFAULT_HU_WINDOW = (-1000.0, 1000.0)
DEFAULT_MR_PERCENTILES = (0.5, 99.5)
DEFAULT_SPACING_3D = 2.0
# CT scanners fill the voxels outside their circular field of view with a padding value far
# below air (-1000 HU): -2048 or -3024 HU on most. Voxels under this hold no scan.
CT_PADDING_HU = -1500.0

# CT air sits near -1000 HU; MR magnitudes are non-negative. A first percentile this low only
# happens on CT, so it separates the two when no DICOM Modality tag is available.
_CT_LOW_PERCENTILE_HU = -500.0


def detect_modality(image: sitk.Image, requested: str = "auto") -> Modality:
    """Decide whether ``image`` is a CT or an MR.

    Args:
        image: the image as read by :func:`intermodal.io.read_image`.
        requested: ``"ct"``, ``"mr"`` or ``"auto"``. ``"auto"`` uses the DICOM Modality tag when
            the reader stored one, and otherwise the intensity distribution (CT holds air near
            -1000 HU, MR is non-negative).

    Returns:
        ``"ct"`` or ``"mr"``.

    Raises:
        IntermodalError: if ``requested`` is not one of the choices.
    """
    requested = requested.lower()
    if requested not in MODALITY_CHOICES:
        raise IntermodalError(f"modality must be one of {MODALITY_CHOICES}, not {requested!r}")
    if requested != "auto":
        return requested  # type: ignore[return-value]
    if image.HasMetaDataKey("intermodal:modality"):
        tag = image.GetMetaData("intermodal:modality").strip().upper()
        if tag == "CT":
            return "ct"
        if tag in ("MR", "MRI"):
            return "mr"
    values = sitk.GetArrayViewFromImage(image)
    low = float(np.percentile(values[:: max(1, values.size // 1_000_000 + 1)], 1.0))
    return "ct" if low < _CT_LOW_PERCENTILE_HU else "mr"


def normalize_intensity(
    image: sitk.Image,
    modality: Modality,
    *,
    hu_window: Sequence[float] = DEFAULT_HU_WINDOW,
    percentiles: Sequence[float] = DEFAULT_MR_PERCENTILES,
) -> sitk.Image:
    """Map intensities to ``[0, 1]``: a HU window for CT, robust percentiles for MR.

    Args:
        image: scalar image in HU (CT) or scanner units (MR).
        modality: ``"ct"`` or ``"mr"``.
        hu_window: ``(low, high)`` in HU; values outside are clipped.
        percentiles: ``(low, high)`` percentiles of the MR intensities mapped to 0 and 1.

    Returns:
        A float32 image on the same grid with values in ``[0, 1]``.

    Raises:
        IntermodalError: if the window or the percentiles are not increasing.
    """
    if modality == "ct":
        low, high = (float(v) for v in hu_window)
        if not high > low:
            raise IntermodalError(f"HU window must be increasing, not {tuple(hu_window)}")
    elif modality == "mr":
        p_low, p_high = (float(v) for v in percentiles)
        if not 0.0 <= p_low < p_high <= 100.0:
            raise IntermodalError(
                f"MR percentiles must satisfy 0 <= low < high <= 100, not {tuple(percentiles)}"
            )
        values = sitk.GetArrayViewFromImage(image)
        low, high = (float(v) for v in np.percentile(values, [p_low, p_high]))
        if not high > low:
            high = low + 1.0
    else:
        raise IntermodalError(f"modality must be 'ct' or 'mr', not {modality!r}")
    # in place on one float32 copy: on a 512x512x400 CT each temporary would be 400 MiB
    array = sitk.GetArrayFromImage(image).astype(np.float32, copy=False)
    array -= np.float32(low)
    array /= np.float32(high - low)
    np.clip(array, 0.0, 1.0, out=array)
    scaled = sitk.GetImageFromArray(array)
    scaled.CopyInformation(image)
    return scaled


def default_spacing(fixed: sitk.Image) -> tuple[float, ...]:
    """The default working spacing: 2 mm isotropic in 3D, the fixed image's coarsest in 2D."""
    if fixed.GetDimension() == 3:
        return (DEFAULT_SPACING_3D,) * 3
    return (max(fixed.GetSpacing()),) * fixed.GetDimension()


def working_grid(
    fixed: sitk.Image, spacing: float | Sequence[float] | None = None, multiple: int = 1
) -> sitk.Image:
    """An empty reference image covering the fixed image's extent at ``spacing``.

    The grid keeps the fixed origin and direction; its size is rounded up so that every axis is
    a multiple of ``multiple`` (the extra voxels lie beyond the fixed image's far corner).

    Args:
        fixed: the fixed image.
        spacing: working spacing in mm, one number or one per axis in (x, y, z) order.
            ``None`` picks :func:`default_spacing`.
        multiple: each axis length is padded up to a multiple of this.

    Returns:
        A float32 image of zeros with the working geometry.

    Raises:
        IntermodalError: if a spacing is not positive or ``multiple`` is below 1.
    """
    ndim = fixed.GetDimension()
    if spacing is None:
        spacing = default_spacing(fixed)
    elif isinstance(spacing, (int, float)):
        spacing = (float(spacing),) * ndim
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != ndim or any(not s > 0 for s in spacing):
        raise IntermodalError(
            f"working spacing must be {ndim} positive numbers in mm, not {spacing}"
        )
    if multiple < 1:
        raise IntermodalError(f"grid multiple must be at least 1, not {multiple}")
    extent = [n * s for n, s in zip(fixed.GetSize(), fixed.GetSpacing())]
    size = [max(1, math.ceil(e / s - 1e-6)) for e, s in zip(extent, spacing)]
    size = [math.ceil(n / multiple) * multiple for n in size]
    # Keep the corner of the first voxel where the fixed image's is, so the two grids share
    # their physical extent even when the spacings differ.
    direction = np.asarray(fixed.GetDirection()).reshape(ndim, ndim)
    shift = direction @ (0.5 * (np.asarray(spacing) - np.asarray(fixed.GetSpacing())))
    origin = tuple(float(o) for o in np.asarray(fixed.GetOrigin()) + shift)
    grid = sitk.Image([int(n) for n in size], sitk.sitkFloat32)
    grid.SetSpacing(spacing)
    grid.SetOrigin(origin)
    grid.SetDirection(fixed.GetDirection())
    return grid


def resample(
    image: sitk.Image,
    reference: sitk.Image,
    transform: sitk.Transform | None = None,
    *,
    interpolator: int = sitk.sitkLinear,
    default_value: float = 0.0,
) -> sitk.Image:
    """Resample ``image`` onto ``reference``'s grid through ``transform`` (reference -> image)."""
    if transform is None:
        transform = sitk.Transform(reference.GetDimension(), sitk.sitkIdentity)
    return sitk.Resample(
        image, reference, transform, interpolator, default_value, image.GetPixelID()
    )


def data_mask(image: sitk.Image, modality: Modality) -> sitk.Image:
    """A uint8 mask on ``image``'s grid: 1 where it holds scanned data.

    For a CT, the voxels above :data:`CT_PADDING_HU` (the scanner's padding outside its
    circular field of view is left out); for an MR, every voxel. This is the mask of every NMI
    intermodal reports (``register``'s report, ``intermodal evaluate``, the benchmarks), so that
    padding, which both images show as 0 after scaling, does not count as agreement.
    """
    if modality == "ct":
        return sitk.Cast(sitk.Cast(image, sitk.sitkFloat32) > CT_PADDING_HU, sitk.sitkUInt8)
    ones = sitk.Image(image.GetSize(), sitk.sitkUInt8) + 1
    ones.CopyInformation(image)
    return ones


def field_of_view_mask(
    image: sitk.Image, reference: sitk.Image, transform: sitk.Transform | None = None
) -> sitk.Image:
    """A uint8 mask on ``reference``'s grid: 1 where ``transform`` lands inside ``image``."""
    ones = sitk.Image(image.GetSize(), sitk.sitkUInt8) + 1
    ones.CopyInformation(image)
    return resample(ones, reference, transform, interpolator=sitk.sitkNearestNeighbor)
