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
from dataclasses import dataclass
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
# happens on CT, so it separates the two when no metadata says which.
_CT_LOW_PERCENTILE_HU = -500.0
CT_STORED_OFFSET = 1024.0
"""The offset of a CT stored without its rescale (values HU + 1024, the usual DICOM
RescaleIntercept of -1024), which :func:`decide_modality` recognises from the intensities."""
# Soft tissue and fat lie within 150 HU of water: in a CT stored with the offset, that band
# holds most of the voxels above -500 HU (83 % on the real pork CT); in an MR the same band of
# scanner units is arbitrary (at most 16 % on the real T2 MR at any scaling tried).
_WATER_BAND_HU = 150.0
_WATER_BAND_SHARE = 0.5
# metadata keys that name the modality: ours (from a DICOM series), MetaImage's Modality and
# NRRD/NIfTI free-text fields, matched case-insensitively
_MODALITY_KEYS = ("intermodal:modality", "Modality", "modality", "descrip")


@dataclass(frozen=True)
class ModalityDecision:
    """What an image is and how that was decided.

    Attributes:
        modality: ``"ct"`` or ``"mr"``.
        decided_by: ``"user"`` (asked for), ``"metadata"`` (a DICOM Modality or a header
            field) or ``"intensities"`` (the fallback).
        hu_offset: what the stored CT values add to HU (0, or :data:`CT_STORED_OFFSET` for a
            CT stored with an offset and no rescale); 0 for an MR.
    """

    modality: Modality
    decided_by: str
    hu_offset: float = 0.0


def _modality_from_metadata(image: sitk.Image) -> Modality | None:
    for key in _MODALITY_KEYS:
        if not image.HasMetaDataKey(key):
            continue
        # "CT", MetaImage's "MET_MOD_CT", a description such as "CT pelvis" or "T2 MR"
        words = set(image.GetMetaData(key).upper().replace("_", " ").replace(":", " ").split())
        if "CT" in words:
            return "ct"
        if words & {"MR", "MRI"}:
            return "mr"
    return None


def _stored_with_offset(values: np.ndarray) -> bool:
    """Whether non-negative values look like a CT stored as HU + 1024 (see the constants)."""
    if values.size == 0 or float(values.min()) < -100 or float(values.max()) < CT_STORED_OFFSET:
        return False
    if not np.all(np.equal(np.mod(values, 1), 0)):
        return False
    body = values[values > CT_STORED_OFFSET + _CT_LOW_PERCENTILE_HU]
    if body.size == 0:
        return False
    band = np.abs(body - CT_STORED_OFFSET) < _WATER_BAND_HU
    return float(band.mean()) >= _WATER_BAND_SHARE


def decide_modality(image: sitk.Image, requested: str = "auto") -> ModalityDecision:
    """Decide whether ``image`` is a CT or an MR, and whether a CT carries an offset.

    The metadata decides first: the DICOM Modality that :func:`intermodal.io.read_image`
    stores, or a header field (MetaImage's ``Modality``, a NIfTI ``descrip`` or NRRD field
    naming CT or MR). Only without it do the intensities decide: a first percentile below
    -500 is a CT in HU; non-negative whole numbers whose voxels above 524 mostly lie within
    150 of 1024 are a CT stored as HU + 1024 without its rescale; anything else is an MR.

    Args:
        image: the image as read by :func:`intermodal.io.read_image`.
        requested: ``"ct"``, ``"mr"`` or ``"auto"``.

    Returns:
        A :class:`ModalityDecision`; a CT's offset is looked for even when the user named it.

    Raises:
        IntermodalError: if ``requested`` is not one of the choices.
    """
    requested = requested.lower()
    if requested not in MODALITY_CHOICES:
        raise IntermodalError(f"modality must be one of {MODALITY_CHOICES}, not {requested!r}")
    values = sitk.GetArrayViewFromImage(image)
    sample = np.asarray(values).ravel()[:: max(1, values.size // 1_000_000 + 1)]
    low = float(np.percentile(sample, 1.0))

    def ct(decided_by: str) -> ModalityDecision:
        # _stored_with_offset holds only where the first percentile is at -100 or above
        offset = CT_STORED_OFFSET if _stored_with_offset(sample) else 0.0
        return ModalityDecision("ct", decided_by, offset)

    if requested != "auto":
        return ct("user") if requested == "ct" else ModalityDecision("mr", "user")
    found = _modality_from_metadata(image)
    if found is not None:
        return ct("metadata") if found == "ct" else ModalityDecision("mr", "metadata")
    if low < _CT_LOW_PERCENTILE_HU:
        return ModalityDecision("ct", "intensities")
    if _stored_with_offset(sample):
        return ModalityDecision("ct", "intensities", CT_STORED_OFFSET)
    return ModalityDecision("mr", "intensities")


def detect_modality(image: sitk.Image, requested: str = "auto") -> Modality:
    """``"ct"`` or ``"mr"``: the modality of :func:`decide_modality`."""
    return decide_modality(image, requested).modality


def normalize_intensity(
    image: sitk.Image,
    modality: Modality,
    *,
    hu_window: Sequence[float] = DEFAULT_HU_WINDOW,
    percentiles: Sequence[float] = DEFAULT_MR_PERCENTILES,
    hu_offset: float = 0.0,
) -> sitk.Image:
    """Map intensities to ``[0, 1]``: a HU window for CT, robust percentiles for MR.

    Args:
        image: scalar image in HU (CT) or scanner units (MR).
        modality: ``"ct"`` or ``"mr"``.
        hu_window: ``(low, high)`` in HU; values outside are clipped.
        percentiles: ``(low, high)`` percentiles of the MR intensities mapped to 0 and 1.
        hu_offset: what a CT's stored values add to HU (see :class:`ModalityDecision`).

    Returns:
        A float32 image on the same grid with values in ``[0, 1]``.

    Raises:
        IntermodalError: if the window or the percentiles are not increasing.
    """
    if modality == "ct":
        low, high = (float(v) for v in hu_window)
        if not high > low:
            raise IntermodalError(f"HU window must be increasing, not {tuple(hu_window)}")
        low, high = low + hu_offset, high + hu_offset
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
    # in place on one float32 copy: on a 512x512x400 CT each temporary would be 400 MiB (read
    # through a view, so that an integer image is copied once, straight to float32)
    array = sitk.GetArrayViewFromImage(image).astype(np.float32)
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


MAX_GRID_VOXELS = 4e9
"""Voxels beyond which a working grid is refused outright, before any memory is taken: 16 GB of
float32 for the grid alone (a 0.3 mm grid over a 500 mm cube is 4.6e9)."""


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
    if math.prod(size) > MAX_GRID_VOXELS:
        raise IntermodalError(
            f"a working spacing of {spacing} mm gives a grid of {size} voxels over the fixed "
            f"image's {tuple(round(e, 1) for e in extent)} mm, more than {MAX_GRID_VOXELS:.0e}; "
            "choose a coarser spacing"
        )
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


def data_mask(image: sitk.Image, modality: Modality, hu_offset: float = 0.0) -> sitk.Image:
    """A uint8 mask on ``image``'s grid: 1 where it holds scanned data.

    For a CT, the voxels above :data:`CT_PADDING_HU` (the scanner's padding outside its
    circular field of view is left out). For an MR, the box spanned by its non-zero voxels:
    slices or rows that are exactly 0 throughout lie outside the acquired field of view (an MR
    padded onto a larger grid, or a slab acquisition), and carry no information; the zero
    background *inside* the box (air around the body) is kept, since it shows the outline.
    This is the mask of the similarity and of every NMI intermodal reports, so that padding,
    which both images show as 0 after scaling, does not count as agreement.
    """
    if modality == "ct":
        floor = CT_PADDING_HU + hu_offset
        return sitk.Cast(sitk.Cast(image, sitk.sitkFloat32) > floor, sitk.sitkUInt8)
    values = sitk.GetArrayViewFromImage(image)
    box = np.zeros(values.shape, dtype=np.uint8)
    box[nonzero_box(values)] = 1
    mask = sitk.GetImageFromArray(box)
    mask.CopyInformation(image)
    return mask


def nonzero_box(values: np.ndarray) -> tuple[slice, ...]:
    """The smallest box (one slice per array axis) that holds every non-zero value.

    Empty slices (``slice(0, 0)``) when there is none.
    """
    nonzero = values != 0
    spans = []
    for axis in range(values.ndim):
        others = tuple(a for a in range(values.ndim) if a != axis)
        used = np.flatnonzero(nonzero.any(axis=others))
        spans.append(slice(int(used[0]), int(used[-1]) + 1) if used.size else slice(0, 0))
    return tuple(spans)


def field_of_view_mask(
    image: sitk.Image, reference: sitk.Image, transform: sitk.Transform | None = None
) -> sitk.Image:
    """A uint8 mask on ``reference``'s grid: 1 where ``transform`` lands inside ``image``."""
    ones = sitk.Image(image.GetSize(), sitk.sitkUInt8) + 1
    ones.CopyInformation(image)
    return resample(ones, reference, transform, interpolator=sitk.sitkNearestNeighbor)
