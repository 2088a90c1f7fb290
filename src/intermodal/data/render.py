"""Render realistic CT and MR images from tissue label maps, and draw known motions.

The building blocks of the realistic validation sets (:mod:`intermodal.data.realistic`) and of
the training-data generator: tissue classes from a real CT by Hounsfield ranges, a CT and an MR
painted from any label map (texture, noise, partial volume, bias field, slice thickness, partial
field of view), a CT couch, and known rigid and smooth diffeomorphic motions.

Conventions, everywhere in this module:

- arrays are in numpy order, ``(z, y, x)`` in 3D and ``(y, x)`` in 2D, as
  ``sitk.GetArrayFromImage`` returns them;
- ``spacing`` is in millimetres in ITK order, ``(x, y[, z])``, as ``sitk.Image.GetSpacing``
  returns it;
- images are taken to be in LPS with an identity direction, so increasing ``y`` index is
  posterior (the couch side of a supine patient);
- every random draw comes from the ``np.random.Generator`` passed in: the same seed gives the
  same image, bit for bit.

Example:
    >>> rng = np.random.default_rng(0)
    >>> labels = tissue_classes_from_ct(ct_hu)
    >>> mr = render_mr(labels, rng, spacing=(2.0, 2.0, 2.0), contrast="t2", slice_thickness_mm=5)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

__all__ = [
    "TISSUE_NAMES",
    "HU_THRESHOLDS",
    "tissue_classes_from_ct",
    "render_ct",
    "render_mr",
    "add_couch",
    "random_rigid",
    "random_smooth_displacement",
    "displacement_image",
    "displacement_jacobian",
    "smooth_noise",
]

TISSUE_NAMES = ("air", "fat", "soft_tissue", "bone")
"""Tissue classes; the index of a name is its label (air 0, fat 1, soft tissue 2, bone 3)."""

HU_THRESHOLDS = (-400.0, -30.0, 200.0)
"""Upper bounds (HU, exclusive) of air, fat and soft tissue; bone is everything from 200 HU up.

Where they come from:

- fat/soft tissue at -30 HU: the upper end of the adipose window -190..-30 HU used in body
  composition CT (Kvist et al., Am J Clin Nutr 1988; Mourtzakis et al., Appl Physiol Nutr Metab
  2008), whose muscle window starts at -29 HU;
- air/fat at -400 HU: halfway between air (-1000 HU) and the fat window's lower end (-190 HU),
  so that fat blurred against air by partial volume stays fat and lung-like air (-900..-500 HU)
  is air; a threshold near -400..-500 HU is the usual body/air cut (e.g. body outlines in
  radiotherapy planning systems);
- soft tissue/bone at 200 HU: above contrast-free soft tissue and blood (< 100 HU) and below
  cancellous bone (~300 HU and up), the common lower threshold for bone segmentation in CT.
"""

# Plausible ranges per tissue class, drawn once per label.
_CT_HU_RANGE = {0: (-1010.0, -980.0), 1: (-120.0, -80.0), 2: (20.0, 60.0), 3: (350.0, 1000.0)}
_CT_TEXTURE_HU = {0: 3.0, 1: 10.0, 2: 8.0, 3: 120.0}
# T2-weighted spin echo: fluid-rich soft tissue bright, fat intermediate-bright, bone and air dark.
_T2_RANGE = {0: (0.0, 0.02), 1: (0.45, 0.7), 2: (0.7, 1.0), 3: (0.05, 0.2)}


def _check_spacing(spacing: Sequence[float], ndim: int) -> tuple[float, ...]:
    """Spacing in array order ``(z, y, x)`` from ITK order ``(x, y, z)``, checked."""
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != ndim:
        raise ValueError(f"spacing must have {ndim} values (x, y[, z]) in mm, not {spacing}")
    if not all(s > 0 and math.isfinite(s) for s in spacing):
        raise ValueError(f"spacing must be positive and finite, not {spacing}")
    return spacing[::-1]


def _check_labels(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim not in (2, 3):
        raise ValueError(f"labels must be a 2D or 3D array, not of shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be an integer array, not {labels.dtype}")
    if labels.size and labels.min() < 0:
        raise ValueError(f"labels must be non-negative, not down to {labels.min()}")
    return labels


def _tissue_lookup(labels: np.ndarray, tissue_of_label: Mapping[int, int] | None) -> np.ndarray:
    """Tissue class of every label value present: an array indexed by label."""
    present = np.unique(labels)
    lookup = np.zeros(int(present.max()) + 1 if present.size else 1, np.int64)
    for label in present:
        label = int(label)
        tissue = label if tissue_of_label is None else tissue_of_label.get(label)
        if tissue is None:
            raise ValueError(f"tissue_of_label has no entry for label {label}")
        if not 0 <= tissue < len(TISSUE_NAMES):
            raise ValueError(
                f"label {label} maps to tissue class {tissue}; expected 0..{len(TISSUE_NAMES) - 1}"
                f" {TISSUE_NAMES}"
            )
        lookup[label] = tissue
    return lookup


def smooth_noise(
    shape: Sequence[int], spacing_zyx: Sequence[float], scale_mm: float, rng: np.random.Generator
) -> np.ndarray:
    """A smooth random field of zero mean and unit standard deviation.

    White noise on a coarse grid of spacing ``scale_mm`` (two knots of margin beyond each
    side), summed with Gaussian weights (sigma one knot) at every voxel, one axis at a time: fast
    at any scale, where a Gaussian filter of a large sigma on the full grid is not.

    Args:
        shape: ``(z, y, x)`` or ``(y, x)`` voxels.
        spacing_zyx: voxel size in mm, in array order.
        scale_mm: correlation length in mm (> 0).
        rng: the source of randomness.

    Returns:
        float32 array of ``shape``.
    """
    if scale_mm <= 0:
        raise ValueError(f"scale_mm must be positive, not {scale_mm}")
    knots = [math.ceil(n * s / scale_mm) + 5 for n, s in zip(shape, spacing_zyx)]
    field = rng.standard_normal(knots)
    for axis, (n, s, k) in enumerate(zip(shape, spacing_zyx, knots)):
        position = (np.arange(n) + 0.5) * s / scale_mm + 2.0  # in knots
        weights = np.exp(-0.5 * (position[:, None] - np.arange(k)[None, :]) ** 2)
        field = np.moveaxis(np.tensordot(weights, field, axes=(1, axis)), 0, axis)
    field = field - field.mean()
    std = field.std()
    return (field / std if std > 0 else field).astype(np.float32)


def _cubic_resize(image: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Resize by Keys cubic convolution (a = -0.5), cell-centred, edges clamped; separable."""
    out = image
    for axis, n in enumerate(shape):
        c = image.shape[axis]
        position = (np.arange(n) + 0.5) * c / n - 0.5
        weights = np.zeros((n, c))
        base = np.floor(position).astype(int)
        for offset in (-1, 0, 1, 2):
            t = np.abs(position - (base + offset))
            w = np.where(t <= 1, 1.5 * t**3 - 2.5 * t**2 + 1, -0.5 * t**3 + 2.5 * t**2 - 4 * t + 2)
            np.add.at(weights, (np.arange(n), np.clip(base + offset, 0, c - 1)), w)
        out = np.moveaxis(np.tensordot(weights, out, axes=(1, axis)), 0, axis)
    return out


def _gaussian_blur(image: np.ndarray, sigma_mm: float, spacing_zyx: Sequence[float]) -> np.ndarray:
    return ndimage.gaussian_filter(image, [sigma_mm / s for s in spacing_zyx], truncate=3.0)


def tissue_classes_from_ct(hu: np.ndarray) -> np.ndarray:
    """Tissue class of every voxel of a CT by Hounsfield ranges (see :data:`HU_THRESHOLDS`).

    Args:
        hu: CT in Hounsfield units, any shape.

    Returns:
        uint8 array of the same shape: 0 air (< -400 HU), 1 fat (-400..-30 HU), 2 soft tissue
        (-30..200 HU), 3 bone (>= 200 HU); see :data:`TISSUE_NAMES`.

    Raises:
        ValueError: if ``hu`` holds NaN.
    """
    hu = np.asarray(hu)
    if np.issubdtype(hu.dtype, np.floating) and np.isnan(hu).any():
        raise ValueError("hu holds NaN; a CT in Hounsfield units has none")
    return np.digitize(hu, HU_THRESHOLDS).astype(np.uint8)


def render_ct(
    labels: np.ndarray,
    rng: np.random.Generator,
    *,
    spacing: Sequence[float],
    tissue_of_label: Mapping[int, int] | None = None,
) -> np.ndarray:
    """A CT in HU painted from a label map.

    Each label gets one HU value drawn within its tissue class's plausible range (air about
    -1000, fat -120..-80, soft tissue 20..60, bone 350..1000), then a smooth texture (a few HU
    in soft tissue, about 100 HU in bone), partial volume (a Gaussian blur of 0.5..0.9 mm) and
    scanner noise (Gaussian, 5..15 HU).

    Args:
        labels: integer label map, ``(z, y, x)`` or ``(y, x)``.
        rng: the source of randomness.
        spacing: voxel size in mm, ``(x, y[, z])``.
        tissue_of_label: tissue class (0..3, :data:`TISSUE_NAMES`) of every label present;
            None means the labels are tissue classes.

    Returns:
        float32 HU, the shape of ``labels``.

    Raises:
        ValueError: for a non-integer or negative label map, a spacing of the wrong length or
            not positive, or a label without a tissue class.
    """
    labels = _check_labels(labels)
    spacing_zyx = _check_spacing(spacing, labels.ndim)
    lookup = _tissue_lookup(labels, tissue_of_label)
    hu_of_label = np.zeros(lookup.size, np.float32)
    texture_of_label = np.zeros(lookup.size, np.float32)
    for label in np.unique(labels):
        tissue = int(lookup[label])
        hu_of_label[label] = rng.uniform(*_CT_HU_RANGE[tissue])
        texture_of_label[label] = _CT_TEXTURE_HU[tissue] * rng.uniform(0.5, 1.5)
    texture = smooth_noise(labels.shape, spacing_zyx, rng.uniform(4.0, 10.0), rng)
    ct = hu_of_label[labels] + texture_of_label[labels] * texture
    ct = _gaussian_blur(ct, rng.uniform(0.5, 0.9), spacing_zyx)
    ct += rng.normal(0.0, rng.uniform(5.0, 15.0), labels.shape).astype(np.float32)
    return ct.astype(np.float32)


def render_mr(
    labels: np.ndarray,
    rng: np.random.Generator,
    *,
    spacing: Sequence[float],
    contrast: str = "random",
    slice_thickness_mm: float | None = None,
    bias_strength: float = 0.3,
    noise: float = 0.03,
    gamma_range: tuple[float, float] = (0.7, 1.4),
    field_of_view: float | None = None,
    tissue_of_label: Mapping[int, int] | None = None,
) -> np.ndarray:
    """An MR painted from a label map, with the artefacts of a real acquisition.

    In order: one intensity per label (``contrast``), a smooth texture (about 5 %), a random
    gamma, partial volume (Gaussian blur of 0.5..1 mm), the slice profile (an average along
    ``z`` over ``slice_thickness_mm``, sampled at slice centres and interpolated back, so thick
    slices look stepped as in a real thick-slice series), a multiplicative bias field
    ``exp(bias_strength * b)`` with ``b`` smooth (correlation length 80..160 mm) and of unit
    standard deviation, Rician noise of standard deviation ``noise`` (relative to the brightest
    tissue, 1), and a partial field of view.

    Args:
        labels: integer label map, ``(z, y, x)`` or ``(y, x)``.
        rng: the source of randomness.
        spacing: voxel size in mm, ``(x, y[, z])``.
        contrast: ``"t2"``: T2-weighted values per tissue class (soft tissue 0.7..1, fat
            0.45..0.7, bone 0.05..0.2, air ~0); ``"random"``: a uniform random value in
            [0, 1] per label, whatever its tissue (as SynthSeg does).
        slice_thickness_mm: slice thickness along ``z`` (3D only); None or not above the
            ``z`` spacing: none.
        bias_strength: standard deviation of the log bias field (0: none).
        noise: standard deviation of each Gaussian channel of the Rician noise (0: none).
        gamma_range: the gamma exponent is drawn uniformly in this range.
        field_of_view: fraction (0, 1] of the ``z`` extent (3D) or ``y`` extent (2D) kept, a
            centred slab; zero outside. None: all.
        tissue_of_label: tissue class of every label present, for ``contrast="t2"``; None
            means the labels are tissue classes.

    Returns:
        float32 array >= 0, the shape of ``labels``.

    Raises:
        ValueError: for a bad label map or spacing, an unknown contrast, or an argument out of
            its range.
    """
    labels = _check_labels(labels)
    spacing_zyx = _check_spacing(spacing, labels.ndim)
    if contrast not in ("t2", "random"):
        raise ValueError(f"contrast must be 't2' or 'random', not {contrast!r}")
    if bias_strength < 0 or noise < 0:
        raise ValueError(f"bias_strength and noise must be >= 0, not {bias_strength} and {noise}")
    low, high = gamma_range
    if not 0 < low <= high:
        raise ValueError(f"gamma_range must be (low, high) with 0 < low <= high, not {gamma_range}")
    if field_of_view is not None and not 0 < field_of_view <= 1:
        raise ValueError(f"field_of_view must be in (0, 1], not {field_of_view}")
    if slice_thickness_mm is not None and slice_thickness_mm <= 0:
        raise ValueError(f"slice_thickness_mm must be positive, not {slice_thickness_mm}")

    size = int(labels.max()) + 1 if labels.size else 1
    value_of_label = np.zeros(size, np.float32)
    if contrast == "t2":
        lookup = _tissue_lookup(labels, tissue_of_label)
        for label in np.unique(labels):
            value_of_label[label] = rng.uniform(*_T2_RANGE[int(lookup[label])])
    else:
        for label in np.unique(labels):
            value_of_label[label] = rng.uniform(0.0, 1.0)
    texture = smooth_noise(labels.shape, spacing_zyx, rng.uniform(4.0, 10.0), rng)
    mr = value_of_label[labels] * (1.0 + 0.05 * texture)
    mr = np.clip(mr, 0.0, None) ** rng.uniform(low, high)
    mr = _gaussian_blur(mr, rng.uniform(0.5, 1.0), spacing_zyx)
    if slice_thickness_mm is not None and labels.ndim == 3:
        mr = _slice_profile(mr, slice_thickness_mm / spacing_zyx[0])
    # The bias field is drawn whatever its strength, so that the same seed gives the same
    # anatomy and noise with and without it.
    bias = smooth_noise(labels.shape, spacing_zyx, rng.uniform(80.0, 160.0), rng)
    mr = mr * np.exp(bias_strength * bias)
    real = mr + noise * rng.standard_normal(labels.shape, dtype=np.float32)
    imaginary = noise * rng.standard_normal(labels.shape, dtype=np.float32)
    mr = np.sqrt(real * real + imaginary * imaginary)
    if field_of_view is not None:
        mr = _keep_centred_slab(mr, field_of_view)
    return mr.astype(np.float32)


def _slice_profile(image: np.ndarray, thickness_voxels: float) -> np.ndarray:
    """Average along axis 0 over ``thickness_voxels``, sample at slice centres, interpolate back."""
    if thickness_voxels <= 1.0:
        return image
    averaged = ndimage.uniform_filter1d(image, max(1, round(thickness_voxels)), axis=0)
    n = image.shape[0]
    centres = np.arange(thickness_voxels / 2 - 0.5, n, thickness_voxels)
    slices = ndimage.map_coordinates(
        averaged,
        np.meshgrid(centres, *[np.arange(m) for m in image.shape[1:]], indexing="ij"),
        order=1,
        mode="nearest",
    )
    position = np.clip((np.arange(n) - centres[0]) / thickness_voxels, 0, len(centres) - 1)
    below = np.floor(position).astype(int)
    above = np.minimum(below + 1, len(centres) - 1)
    weight = (position - below).reshape((-1,) + (1,) * (image.ndim - 1)).astype(image.dtype)
    return slices[below] * (1 - weight) + slices[above] * weight


def _keep_centred_slab(image: np.ndarray, fraction: float) -> np.ndarray:
    """Zero outside a centred slab covering ``fraction`` of axis 0."""
    n = image.shape[0]
    kept = max(1, round(fraction * n))
    start = (n - kept) // 2
    out = np.zeros_like(image)
    out[start : start + kept] = image[start : start + kept]
    return out


def add_couch(
    ct_hu: np.ndarray, rng: np.random.Generator, *, spacing: Sequence[float]
) -> np.ndarray:
    """A CT with a treatment couch under the body.

    The couch is a curved carbon-fibre shell (two skins of 2..3 mm at 200..500 HU) around a foam
    core (-900..-750 HU) of 20..45 mm, 0..8 mm below the lowest (most posterior, highest ``y``)
    body voxel (> -500 HU), its sides curving up by up to 15 mm but never above that voxel. It
    spans 70..95 % of the ``x`` extent and the whole ``z`` extent, is painted only over air
    (< -500 HU), and is clipped where it leaves the array.

    Args:
        ct_hu: CT in HU, ``(z, y, x)`` or ``(y, x)``, LPS (higher ``y`` index posterior).
        rng: the source of randomness.
        spacing: voxel size in mm, ``(x, y[, z])``.

    Returns:
        A new float32 array: the CT with its couch.

    Raises:
        ValueError: for a CT that is not 2D or 3D, a bad spacing, or a CT with no body.
    """
    ct_hu = np.asarray(ct_hu)
    if ct_hu.ndim not in (2, 3):
        raise ValueError(f"ct_hu must be a 2D or 3D array, not of shape {ct_hu.shape}")
    spacing_zyx = _check_spacing(spacing, ct_hu.ndim)
    body = ct_hu > -500
    if not body.any():
        raise ValueError("ct_hu has no body (no voxel above -500 HU) to put a couch under")
    sy, sx = spacing_zyx[-2], spacing_zyx[-1]
    ny, nx = ct_hu.shape[-2:]
    rows = np.nonzero(body.reshape(-1, ny, nx).any(axis=(0, 2)))[0]
    columns = np.nonzero(body.reshape(-1, ny, nx).any(axis=(0, 1)))[0]
    bottom_mm = (rows[-1] + 1) * sy  # the body's posterior edge
    top_mm = bottom_mm + rng.uniform(0.0, 8.0)
    skin_mm = rng.uniform(2.0, 3.0)
    core_mm = rng.uniform(20.0, 45.0)
    half_width_mm = rng.uniform(0.35, 0.475) * nx * sx
    centre_x_mm = (columns[0] + columns[-1] + 1) / 2 * sx + rng.uniform(-5.0, 5.0)
    sag_mm = rng.uniform(0.0, 15.0)  # how much the couch's edges rise above its centre
    shell_hu, core_hu = rng.uniform(200.0, 500.0), rng.uniform(-900.0, -750.0)

    y_mm = (np.arange(ny)[:, None] + 0.5) * sy
    x_mm = (np.arange(nx)[None, :] + 0.5) * sx
    across = (x_mm - centre_x_mm) / half_width_mm
    # The couch's upper surface (mm) at each x: curved up at its sides, never above the body.
    surface = np.maximum(top_mm - sag_mm * across**2, bottom_mm)
    depth = y_mm - surface
    inside = np.abs(across) <= 1.0
    couch = np.full((ny, nx), np.nan, np.float32)
    couch[inside & (depth >= 0) & (depth < 2 * skin_mm + core_mm)] = shell_hu
    couch[inside & (depth >= skin_mm) & (depth < skin_mm + core_mm)] = core_hu
    out = ct_hu.astype(np.float32, copy=True)
    paint = np.broadcast_to(~np.isnan(couch), out.shape) & (out < -500)
    out[paint] = np.broadcast_to(couch, out.shape)[paint]
    return out


def _random_axis(rng: np.random.Generator, ndim: int) -> np.ndarray:
    axis = rng.standard_normal(ndim)
    return axis / np.linalg.norm(axis)


def random_rigid(
    rng: np.random.Generator,
    ndim: int,
    *,
    max_rotation_deg: float,
    max_translation_mm: float,
    centre: Sequence[float],
) -> sitk.Euler3DTransform | sitk.Euler2DTransform:
    """A random rigid transform: a rotation of up to ``max_rotation_deg`` and a shift of up to
    ``max_translation_mm``.

    3D: a rotation axis uniform on the sphere and an angle uniform in [0, max]; 2D: an angle
    uniform in [-max, max]. The translation has a uniform direction and a length uniform in
    [0, max].

    Args:
        rng: the source of randomness.
        ndim: 2 or 3.
        max_rotation_deg: largest rotation angle (degrees, >= 0).
        max_translation_mm: largest translation length (mm, >= 0).
        centre: the centre of rotation, a physical point (mm, ``(x, y[, z])``).

    Returns:
        An ITK transform mapping physical points (mm) to physical points, as ``sitk.Resample``
        uses it (fixed -> moving).

    Raises:
        ValueError: for ``ndim`` not 2 or 3, a negative bound, or a centre of the wrong length.
    """
    if ndim not in (2, 3):
        raise ValueError(f"ndim must be 2 or 3, not {ndim}")
    if max_rotation_deg < 0 or max_translation_mm < 0:
        raise ValueError(
            "max_rotation_deg and max_translation_mm must be >= 0, not "
            f"{max_rotation_deg} and {max_translation_mm}"
        )
    centre = tuple(float(c) for c in centre)
    if len(centre) != ndim:
        raise ValueError(f"centre must have {ndim} coordinates (mm), not {centre}")
    if ndim == 3:
        angle = math.radians(rng.uniform(0.0, max_rotation_deg))
        rotation = sitk.VersorTransform(tuple(_random_axis(rng, 3)), angle).GetMatrix()
        transform = sitk.Euler3DTransform()
        transform.SetCenter(centre)
        transform.SetMatrix(rotation)
    else:
        transform = sitk.Euler2DTransform()
        transform.SetCenter(centre)
        transform.SetAngle(math.radians(rng.uniform(-max_rotation_deg, max_rotation_deg)))
    shift = _random_axis(rng, ndim) * rng.uniform(0.0, max_translation_mm)
    transform.SetTranslation(tuple(float(t) for t in shift))
    return transform


def random_smooth_displacement(
    shape: Sequence[int],
    spacing: Sequence[float],
    rng: np.random.Generator,
    *,
    max_mm: float,
    scale_mm: float,
) -> np.ndarray:
    """A smooth, diffeomorphic random displacement field.

    A stationary velocity field (smooth noise of correlation length ``scale_mm`` per component,
    scaled so its largest magnitude is ``max_mm``) integrated by scaling and squaring on a grid of
    about ``scale_mm / 4``, then resized to ``shape`` by cubic convolution. The flow of a
    velocity never travels further than the velocity's largest magnitude, so the displacement is
    at most ``max_mm`` long (checked, and scaled back by the last fraction of a percent that
    interpolation may add). Each squaring step moves points by under a quarter of a coarse
    voxel, which keeps the Jacobian determinant positive; with ``scale_mm`` well above
    ``max_mm`` (e.g. 40 mm against 10 mm) it stays near 1.

    Args:
        shape: ``(z, y, x)`` or ``(y, x)`` voxels.
        spacing: voxel size in mm, ``(x, y[, z])``.
        rng: the source of randomness.
        max_mm: largest displacement length (mm, >= 0).
        scale_mm: correlation length of the velocity (mm, > 0).

    Returns:
        float32 array ``(ndim, *shape)``: the displacement in mm, its components in ITK order
        ``(x, y[, z])``, along the image axes (for an identity direction, the physical axes). A
        point ``p`` maps to ``p + d(p)``; :func:`displacement_image` makes an ITK field of it.

    Raises:
        ValueError: for a bad shape or spacing, a negative ``max_mm`` or a ``scale_mm`` <= 0.
    """
    shape = tuple(int(n) for n in shape)
    if len(shape) not in (2, 3) or min(shape) < 1:
        raise ValueError(f"shape must be 2 or 3 positive sizes, not {shape}")
    ndim = len(shape)
    spacing_zyx = np.array(_check_spacing(spacing, ndim))
    if max_mm < 0:
        raise ValueError(f"max_mm must be >= 0, not {max_mm}")
    if scale_mm <= 0:
        raise ValueError(f"scale_mm must be positive, not {scale_mm}")
    extent = np.array(shape) * spacing_zyx
    coarse_shape = tuple(
        int(min(n, max(4, math.ceil(e / (scale_mm / 4))))) for n, e in zip(shape, extent)
    )
    coarse_spacing = extent / np.array(coarse_shape)  # array order, mm
    # Velocity components in array order (z, y, x), in mm.
    velocity = np.stack([smooth_noise(coarse_shape, coarse_spacing, scale_mm, rng) for _ in shape])
    largest = np.sqrt((velocity**2).sum(axis=0)).max()
    if largest == 0 or max_mm == 0:
        return np.zeros((ndim, *shape), np.float32)
    velocity *= max_mm / largest
    steps = max(0, math.ceil(math.log2(max_mm / (0.25 * coarse_spacing.min()))))
    displacement = (velocity / 2**steps).astype(np.float64)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in coarse_shape], indexing="ij"))
    scale = coarse_spacing.reshape((-1,) + (1,) * ndim)
    for _ in range(steps):
        where = grid + displacement / scale
        displacement = displacement + np.stack(
            [ndimage.map_coordinates(c, where, order=1, mode="nearest") for c in displacement]
        )
    fine = np.stack([_cubic_resize(c, shape) for c in displacement])
    length = np.sqrt((fine**2).sum(axis=0)).max()
    if length > max_mm:
        fine *= max_mm / length
    return fine[::-1].astype(np.float32)  # components (x, y[, z])


def displacement_image(displacement: np.ndarray, reference: sitk.Image) -> sitk.Image:
    """An ITK displacement field image on ``reference``'s grid.

    Args:
        displacement: ``(ndim, *shape)`` mm, components ``(x, y[, z])`` along ``reference``'s
            axes, as :func:`random_smooth_displacement` returns it.
        reference: the grid (size, spacing, origin, direction) the field lives on.

    Returns:
        A float64 vector image, components physical ``(x, y[, z])`` mm, for
        ``sitk.DisplacementFieldTransform`` (rotated by the reference's direction).

    Raises:
        ValueError: if the field's shape does not match the reference.
    """
    ndim = reference.GetDimension()
    expected = (ndim, *reference.GetSize()[::-1])
    if displacement.shape != expected:
        raise ValueError(
            f"displacement must have shape {expected} for this reference, not {displacement.shape}"
        )
    direction = np.array(reference.GetDirection()).reshape(ndim, ndim)
    physical = np.tensordot(direction, displacement.astype(np.float64), axes=1)
    field = sitk.GetImageFromArray(np.moveaxis(physical, 0, -1), isVector=True)
    field.CopyInformation(reference)
    return field


def displacement_jacobian(displacement: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Jacobian determinant of ``p -> p + d(p)`` by central differences.

    Args:
        displacement: ``(ndim, *shape)`` mm, components ``(x, y[, z])``.
        spacing: voxel size in mm, ``(x, y[, z])``.

    Returns:
        float64 array of ``shape``: 1 where volume is kept, <= 0 where the map folds.
    """
    ndim = displacement.shape[0]
    spacing_zyx = _check_spacing(spacing, ndim)
    # gradient[i][j] = d(component i) / d(array axis j); reorder both to (x, y, z).
    gradient = np.stack(
        [np.stack(np.gradient(c, *spacing_zyx), axis=0)[::-1] for c in displacement]
    )
    matrix = np.moveaxis(gradient, (0, 1), (-2, -1)) + np.eye(ndim)
    return np.linalg.det(matrix)
