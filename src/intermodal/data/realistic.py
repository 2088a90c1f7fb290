"""Realistic validation sets, kept out of tuning: known motions on real images and renderings.

Four sets, each generated on demand from the real CT/T2 MR pair of the MRI-DIR pork phantom
(``../shared/data/mridir`` beside the repository, CC BY 4.0; see its NOTICE.md: the files are
never copied into the repository, and everything that needs them raises
:class:`RealPairMissing` with the reason when they are absent):

- ``"real_motion"`` (a): the real CT fixed; the real T2 MR moved by a known random rigid motion
  (up to 30 degrees and 30 mm, about the MR's body centre) after a known smooth diffeomorphic
  deformation (up to 10 mm). The truth is relative: a method's mapping on a case should equal
  the known motion composed with what the same method returns on the unmoved pair (its
  *reference*), so the score isolates the capture of the known motion.
- ``"rendered"`` (b): anatomy from the real CT. Each case varies the CT (a random sub-volume,
  left-right and head-foot flips, an elastic deformation of up to 8 mm) and adds a couch; the
  tissue map of the varied CT (air, fat, soft tissue, bone by HU ranges) is moved by a known
  rigid + smooth motion and rendered as a T2-like MR (bias field, Rician noise, 2.5..5 mm slices,
  60..100 % field of view). Labels: fat 1, soft tissue 2, bone 3. The truth is absolute.
- ``"robustness"`` (c): the rendered set's recipe, milder, with one stress per case, in turn
  (:data:`ROBUSTNESS_KINDS`): an MR covering a third of the CT along z; a CT with a couch; a
  30 degree initial rotation; 5 mm MR slices; a strong bias field; a CT stored as unsigned
  ``HU + 1024`` (0..4095) with no metadata saying CT.
- ``"slices_2d"`` (d): one axial CT slice and one axial MR slice of the real pair (the MR's from
  the MR turned to the CT's orientation, :func:`turned_mr`), the MR moved
  by a known 2D rigid (up to 30 degrees, 30 mm) + smooth (up to 10 mm) motion; in turn
  (:data:`SLICE_KINDS`) plain, with a CT couch, with the MR cut to a smaller field of view, and
  as 8-bit RGB pictures without spacing (1 unit per pixel; errors are converted back to mm). The
  truth is relative, as in (a), to the method's result on the unmoved pair of the same kind.

Splits: every case is drawn from ``np.random.default_rng([set id, split id, index])``, so the
``"tuning"`` and ``"heldout"`` splits are disjoint draws of the same recipe. Nothing is ever
chosen on ``"heldout"``, and no set is used to pick parameters by search: ``"tuning"`` is for
looking at failures while developing, ``"heldout"`` for the figures that are reported.

Geometry: every transform maps fixed physical points (mm) to moving physical points, as
``sitk.Resample`` uses it; arrays are ``(z, y, x)``; the real images are at 2 mm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from intermodal.data import render

__all__ = [
    "SETS",
    "SPLITS",
    "ROBUSTNESS_KINDS",
    "SLICE_KINDS",
    "DICE_LABELS",
    "REAL_PAIR_DIR",
    "RealPairMissing",
    "Case",
    "real_pair_dir",
    "load_real_pair",
    "turned_mr",
    "make_case",
    "reference_pair",
    "expected_mapping",
]

SETS = {"real_motion": 1, "rendered": 2, "robustness": 3, "slices_2d": 4}
"""Set name -> set id (the first word of every case's seed)."""

SPLITS = {"tuning": 0, "heldout": 1}
"""Split name -> split id (the second word of every case's seed)."""

ROBUSTNESS_KINDS = ("fov_third", "couch", "rotation_30", "slices_5mm", "strong_bias", "ct_offset")
"""The stresses of the robustness set; case ``i`` has kind ``ROBUSTNESS_KINDS[i % 6]``."""

SLICE_KINDS = ("plain", "couch", "fov", "png")
"""The 2D variants; case ``i`` has kind ``SLICE_KINDS[i % 4]``."""

DICE_LABELS = {"fat": 1, "soft_tissue": 2, "bone": 3}
"""Labels scored by Dice in the rendered and robustness sets (tissue classes of the real CT)."""

REAL_PAIR_DIR = Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "mridir"
"""Where the real pair lies in a checkout: ``../shared/data/mridir`` beside the repository."""

_CT_FILE, _MR_FILE = "ct_2mm.nii.gz", "mr_t2_2mm.nii.gz"
BODY_HU = -500.0
"""CT voxels above this (HU) are the body, where mapping errors are scored."""


class RealPairMissing(FileNotFoundError):
    """The real CT/MR pair is not where it was looked for."""


@dataclass
class Case:
    """One validation case: a fixed CT and a moving MR, with what is known about the truth.

    Attributes:
        name: ``"<set>-<split>-<index:03d>"``.
        set: one of :data:`SETS`.
        split: one of :data:`SPLITS`.
        index: the case's number within its split.
        kind: the variant: ``"standard"``, or one of :data:`ROBUSTNESS_KINDS` or
            :data:`SLICE_KINDS`.
        fixed: the CT, as a user would pass it (HU, or stored as ``HU + 1024`` for
            ``"ct_offset"``, or an 8-bit RGB picture for ``"png"``).
        moving: the MR (scanner-like units, or an 8-bit RGB picture for ``"png"``).
        body: uint8 mask on the fixed grid, 1 where mapping errors (and Jacobians) are scored:
            the CT body (> -500 HU), and for rendered cases only where the true mapping lands in
            the MR's field of view.
        truth: for rendered cases the true fixed -> moving mapping; None otherwise.
        motion_inverse: for relative cases (``"real_motion"``, ``"slices_2d"``), the inverse of
            the known motion: unmoved moving space -> moved moving space, so that the expected
            mapping is ``motion_inverse(reference(p))`` (:func:`expected_mapping`).
        motion: the known motion itself, moved (moving) space -> source space: what
            ``sitk.Resample`` used to make the moving image (its inverse is ``truth`` or
            ``motion_inverse``).
        reference_key: for relative cases, the key of the unmoved pair (:func:`reference_pair`).
        fixed_labels: uint8 tissue labels on the fixed grid (:data:`DICE_LABELS`), or None.
        moving_labels: uint8 tissue labels on the moving grid, or None.
        label_region: uint8 mask on the fixed grid where labels are scored (the fixed voxels
            whose true mapping lands in the MR's field of view), or None.
        moving_mm_per_unit: millimetres per unit of the moving image's physical space (2 for the
            2 mm pictures of ``"png"`` stored with 1 unit per pixel; else 1).
        params: the parameters drawn for the case (for the record).
    """

    name: str
    set: str
    split: str
    index: int
    kind: str
    fixed: sitk.Image
    moving: sitk.Image
    body: sitk.Image
    truth: sitk.Transform | None = None
    motion_inverse: sitk.Transform | None = None
    motion: sitk.Transform | None = None
    reference_key: str | None = None
    fixed_labels: sitk.Image | None = None
    moving_labels: sitk.Image | None = None
    label_region: sitk.Image | None = None
    moving_mm_per_unit: float = 1.0
    params: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- the real pair


def real_pair_dir(data_dir: str | Path | None = None) -> Path:
    """The folder of the real pair, checked.

    Args:
        data_dir: the folder holding ``ct_2mm.nii.gz`` and ``mr_t2_2mm.nii.gz``; None:
            :data:`REAL_PAIR_DIR`.

    Raises:
        RealPairMissing: a file is missing, with the path looked at.
    """
    folder = Path(data_dir) if data_dir is not None else REAL_PAIR_DIR
    for name in (_CT_FILE, _MR_FILE):
        if not (folder / name).is_file():
            raise RealPairMissing(
                f"the real CT/MR pair is not available: {folder.resolve() / name} does not exist "
                "(the MRI-DIR pair is expected in ../shared/data/mridir beside the repository)"
            )
    return folder


_PAIR_CACHE: dict[Path, tuple[sitk.Image, sitk.Image]] = {}


def load_real_pair(data_dir: str | Path | None = None) -> tuple[sitk.Image, sitk.Image]:
    """The real CT (float32 HU) and T2 MR (float32 scanner units), 2 mm, read once per folder.

    Raises:
        RealPairMissing: see :func:`real_pair_dir`.
    """
    folder = real_pair_dir(data_dir).resolve()
    if folder not in _PAIR_CACHE:
        ct = sitk.ReadImage(str(folder / _CT_FILE), sitk.sitkFloat32)
        mr = sitk.ReadImage(str(folder / _MR_FILE), sitk.sitkFloat32)
        _PAIR_CACHE[folder] = (ct, mr)
    ct, mr = _PAIR_CACHE[folder]
    return sitk.Image(ct), sitk.Image(mr)


# --------------------------------------------------------------------------- known motions


def _foreground_centre(image: sitk.Image, threshold: float) -> tuple[float, ...]:
    """Physical centre (mm) of the voxels above ``threshold``."""
    array = sitk.GetArrayViewFromImage(image)
    index = np.argwhere(array > threshold).mean(axis=0)[::-1]  # (x, y[, z])
    return image.TransformContinuousIndexToPhysicalPoint([float(i) for i in index])


def _mr_threshold(image: sitk.Image) -> float:
    """A foreground threshold for an MR: 10 % of its 99th percentile."""
    return 0.1 * float(np.percentile(sitk.GetArrayViewFromImage(image), 99))


def _motion(
    rng: np.random.Generator,
    grid: sitk.Image,
    centre: tuple[float, ...],
    *,
    max_rotation_deg: float,
    max_translation_mm: float,
    max_deformation_mm: float,
    exact_rotation_deg: float | None = None,
    mm_per_unit: float = 1.0,
) -> tuple[sitk.Transform, sitk.Transform, dict[str, Any]]:
    """A known motion ``q -> rigid(q + u(q))`` on ``grid``, and its inverse.

    Returns:
        ``(motion, inverse, params)``: ``motion`` maps points of the moved image's space to the
        source image's space (what ``sitk.Resample`` needs to make the moved image);
        ``inverse`` maps source points back; ``params`` records the draws.
    """
    ndim = grid.GetDimension()
    rigid = render.random_rigid(
        rng,
        ndim,
        max_rotation_deg=max_rotation_deg,
        max_translation_mm=max_translation_mm / mm_per_unit,
        centre=centre,
    )
    if exact_rotation_deg is not None:
        axis = rng.standard_normal(3)
        angle = math.radians(exact_rotation_deg)
        versor = sitk.VersorTransform(tuple(axis / np.linalg.norm(axis)), angle)
        rigid.SetMatrix(versor.GetMatrix())
    scale_mm = float(rng.uniform(30.0, 60.0))
    displacement = render.random_smooth_displacement(
        grid.GetSize()[::-1],
        grid.GetSpacing(),
        rng,
        max_mm=max_deformation_mm / mm_per_unit,
        scale_mm=scale_mm / mm_per_unit,
    )
    field_image = render.displacement_image(displacement, grid)
    inverse_field = render.displacement_image(
        _inverse_displacement(displacement, grid.GetSpacing()), grid
    )
    motion = sitk.CompositeTransform(ndim)
    motion.AddTransform(rigid)
    motion.AddTransform(sitk.DisplacementFieldTransform(field_image))
    inverse = sitk.CompositeTransform(ndim)
    inverse.AddTransform(sitk.DisplacementFieldTransform(inverse_field))
    inverse.AddTransform(rigid.GetInverse())
    matrix = np.array(rigid.GetMatrix()).reshape(ndim, ndim)
    angle = math.degrees(math.acos(np.clip((np.trace(matrix) - (ndim - 2)) / 2, -1.0, 1.0)))
    params = {
        "rotation_deg": round(angle, 3),
        "translation_mm": round(float(np.linalg.norm(rigid.GetTranslation())) * mm_per_unit, 3),
        "deformation_max_mm": round(
            float(np.sqrt((displacement**2).sum(axis=0)).max()) * mm_per_unit, 3
        ),
        "deformation_scale_mm": round(scale_mm, 3),
    }
    return motion, inverse, params


def _inverse_displacement(
    displacement: np.ndarray, spacing: tuple[float, ...], iterations: int = 20
) -> np.ndarray:
    """The inverse ``w`` of a smooth displacement ``u``: ``w(y) = -u(y + w(y))``.

    Fixed-point iteration (a contraction while ``u``'s gradient stays below 1, as it does for
    the smooth, bounded fields drawn here) on every second voxel, interpolated back linearly.

    Args:
        displacement: ``(ndim, *shape)`` mm, components ``(x, y[, z])`` along the grid axes.
        spacing: ``(x, y[, z])`` mm.
        iterations: fixed-point steps.

    Returns:
        ``(ndim, *shape)`` mm, the same layout.
    """
    ndim = displacement.shape[0]
    coarse = displacement[(slice(None),) + (slice(None, None, 2),) * ndim].astype(np.float64)
    coarse_zyx = coarse[::-1]  # components along array axes
    step = 2.0 * np.array(spacing[::-1]).reshape((ndim,) + (1,) * ndim)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in coarse.shape[1:]], indexing="ij"))
    inverse = -coarse_zyx
    for _ in range(iterations):
        where = grid + inverse / step
        inverse = -np.stack(
            [ndimage.map_coordinates(c, where, order=1, mode="nearest") for c in coarse_zyx]
        )
    fine = np.stack(
        np.meshgrid(*[np.arange(n) / 2.0 for n in displacement.shape[1:]], indexing="ij")
    )
    return np.stack(
        [ndimage.map_coordinates(c, fine, order=1, mode="nearest") for c in inverse[::-1]]
    ).astype(np.float32)


def _resample(
    image: sitk.Image, grid: sitk.Image, transform: sitk.Transform, *, labels: bool = False
) -> sitk.Image:
    interpolator = sitk.sitkNearestNeighbor if labels else sitk.sitkLinear
    return sitk.Resample(image, grid, transform, interpolator, 0.0, image.GetPixelID())


def _mask_image(array: np.ndarray, grid: sitk.Image) -> sitk.Image:
    mask = sitk.GetImageFromArray(array.astype(np.uint8))
    mask.CopyInformation(grid)
    return mask


def expected_mapping(case: Case, reference: sitk.Transform | None = None) -> sitk.Transform:
    """The fixed -> moving mapping a method should return on ``case``.

    Args:
        case: a case.
        reference: for a relative case, the method's own mapping on the unmoved pair
            (:func:`reference_pair`); ignored for a rendered case.

    Returns:
        ``case.truth`` for a rendered case; ``motion_inverse ∘ reference`` for a relative one.

    Raises:
        ValueError: a relative case without its reference.
    """
    if case.truth is not None:
        return case.truth
    if reference is None:
        raise ValueError(
            f"{case.name} is scored against the method's own result on the unmoved pair "
            f"{case.reference_key!r}; pass it as reference"
        )
    composite = sitk.CompositeTransform(case.fixed.GetDimension())
    composite.AddTransform(case.motion_inverse)
    composite.AddTransform(reference)
    return composite


# --------------------------------------------------------------------------- set (a)


def _real_motion(rng: np.random.Generator, data_dir: str | Path | None) -> dict[str, Any]:
    ct, mr = load_real_pair(data_dir)
    centre = _foreground_centre(mr, _mr_threshold(mr))
    motion, inverse, params = _motion(
        rng, mr, centre, max_rotation_deg=30.0, max_translation_mm=30.0, max_deformation_mm=10.0
    )
    moved = _resample(mr, mr, motion)
    body = sitk.GetArrayViewFromImage(ct) > BODY_HU
    return {
        "kind": "standard",
        "fixed": ct,
        "moving": moved,
        "body": _mask_image(body, ct),
        "motion_inverse": inverse,
        "motion": motion,
        "reference_key": "real_motion",
        "params": params,
    }


# --------------------------------------------------------------------------- sets (b), (c)


def _varied_ct(
    rng: np.random.Generator, data_dir: str | Path | None
) -> tuple[np.ndarray, tuple[float, float, float], dict[str, Any]]:
    """The real CT varied: a random sub-volume, flips and an elastic deformation (HU array)."""
    ct, _ = load_real_pair(data_dir)
    hu = sitk.GetArrayFromImage(ct)  # (z, y, x) = (128, 100, 100) at 2 mm
    spacing = ct.GetSpacing()
    nz, ny, nx = hu.shape
    depth = int(rng.integers(64, min(nz, 96) + 1))
    z0 = int(rng.integers(0, nz - depth + 1))
    x_margin = [int(m) for m in rng.integers(0, 9, 2)]
    y_top = int(rng.integers(0, 9))
    hu = hu[z0 : z0 + depth, y_top:, x_margin[0] : nx - x_margin[1]]
    flips = {"x": bool(rng.random() < 0.5), "z": bool(rng.random() < 0.5)}
    if flips["x"]:
        hu = hu[:, :, ::-1]
    if flips["z"]:
        hu = hu[::-1]
    elastic_mm = float(rng.uniform(3.0, 8.0))
    variation = render.random_smooth_displacement(
        hu.shape, spacing, rng, max_mm=elastic_mm, scale_mm=float(rng.uniform(40.0, 70.0))
    )
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in hu.shape], indexing="ij"))
    where = grid + variation[::-1] / np.array(spacing[::-1]).reshape(3, 1, 1, 1)
    hu = ndimage.map_coordinates(
        np.ascontiguousarray(hu), where, order=1, mode="constant", cval=-1000.0
    )
    params = {
        "crop_zyx": [z0, y_top, x_margin[0]],
        "shape_zyx": list(hu.shape),
        "flips": flips,
        "elastic_mm": round(elastic_mm, 3),
    }
    return hu.astype(np.float32), spacing, params


def _rendered(
    rng: np.random.Generator, data_dir: str | Path | None, kind: str = "standard"
) -> dict[str, Any]:
    """A rendered case (set b), or a robustness case of ``kind`` (set c)."""
    hu, spacing, params = _varied_ct(rng, data_dir)
    grid = sitk.GetImageFromArray(hu)
    grid.SetSpacing(spacing)
    tissues = render.tissue_classes_from_ct(hu)
    robust = kind != "standard"
    couch = kind == "couch" or not robust
    fixed_hu = render.add_couch(hu, rng, spacing=spacing) if couch else hu
    tissue_image = _mask_image(tissues, grid)
    centre = _foreground_centre(grid, BODY_HU)
    motion, inverse, motion_params = _motion(
        rng,
        grid,
        centre,
        max_rotation_deg=10.0 if robust else 20.0,
        max_translation_mm=10.0 if robust else 20.0,
        max_deformation_mm=5.0 if robust else 10.0,
        exact_rotation_deg=30.0 if kind == "rotation_30" else None,
    )
    moving_tissues = sitk.GetArrayFromImage(_resample(tissue_image, grid, motion, labels=True))
    mr_params = {
        "slice_thickness_mm": 3.0 if robust else float(rng.uniform(2.5, 5.0)),
        "bias_strength": 0.2 if robust else float(rng.uniform(0.1, 0.4)),
        "noise": float(rng.uniform(0.01, 0.04)),
        "field_of_view": 1.0 if robust else float(rng.uniform(0.6, 1.0)),
    }
    if kind == "fov_third":
        mr_params["field_of_view"] = 1 / 3
    elif kind == "slices_5mm":
        mr_params["slice_thickness_mm"] = 5.0
    elif kind == "strong_bias":
        mr_params["bias_strength"] = 0.8
    mr = render.render_mr(moving_tissues, rng, spacing=spacing, contrast="t2", **mr_params)
    scanner_scale = float(rng.uniform(500.0, 3000.0))
    moving = sitk.GetImageFromArray(mr * scanner_scale)
    moving.CopyInformation(grid)

    # Where the MR sees: its field-of-view slab. Labels outside it are unknown to any method,
    # so they are scored nowhere: moving labels zeroed there, and fixed voxels that truly map
    # there left out of the body mask and of the fixed labels.
    seen = np.zeros(moving_tissues.shape, bool)
    n = seen.shape[0]
    kept = max(1, round(mr_params["field_of_view"] * n))
    seen[(n - kept) // 2 : (n - kept) // 2 + kept] = True
    seen_in_fixed = sitk.GetArrayFromImage(
        _resample(_mask_image(seen, grid), grid, inverse, labels=True)
    ).astype(bool)
    scored = seen_in_fixed & (hu > BODY_HU)
    moving_labels = np.where(seen, moving_tissues, 0)
    fixed_labels = np.where(seen_in_fixed, tissues, 0)

    if kind == "ct_offset":
        stored = np.clip(np.rint(fixed_hu + 1024.0), 0, 4095).astype(np.uint16)
        fixed = sitk.GetImageFromArray(stored)
    else:
        fixed = sitk.GetImageFromArray(fixed_hu.astype(np.float32))
    fixed.CopyInformation(grid)
    return {
        "kind": kind,
        "fixed": fixed,
        "moving": moving,
        "body": _mask_image(scored, grid),
        "truth": inverse,
        "motion": motion,
        "fixed_labels": _mask_image(fixed_labels, grid),
        "moving_labels": _mask_image(moving_labels, grid),
        "label_region": _mask_image(seen_in_fixed, grid),
        "params": {
            **params,
            **motion_params,
            **{k: round(v, 4) for k, v in mr_params.items()},
            "couch": couch,
            "mr_scanner_scale": round(scanner_scale, 2),
        },
    }


# --------------------------------------------------------------------------- set (d)


def _axial_slice(image: sitk.Image, z_index: int) -> sitk.Image:
    """One axial slice as a 2D image with its in-plane spacing and origin."""
    size = list(image.GetSize())
    size[2] = 0
    return sitk.Extract(image, size, [0, 0, z_index])


def _centre_slice_index(image: sitk.Image, threshold: float) -> int:
    array = sitk.GetArrayViewFromImage(image)
    return int(round(np.argwhere(array > threshold)[:, 0].mean()))


def _as_picture(image: sitk.Image, low: float, high: float) -> sitk.Image:
    """An 8-bit RGB picture of ``image`` (``low``..``high`` -> 0..255), 1 unit per pixel."""
    array = sitk.GetArrayFromImage(image).astype(np.float64)
    gray = np.clip(np.rint((array - low) / (high - low) * 255.0), 0, 255).astype(np.uint8)
    return sitk.GetImageFromArray(np.stack([gray] * 3, axis=-1), isVector=True)


def reference_pair(key: str, data_dir: str | Path | None = None) -> tuple[sitk.Image, sitk.Image]:
    """The unmoved pair of a relative case: ``(fixed, moving)``.

    Args:
        key: ``case.reference_key``: ``"real_motion"`` or ``"slices_2d/<kind>"``.
        data_dir: the real pair's folder (None: :data:`REAL_PAIR_DIR`).

    Raises:
        ValueError: an unknown key.
        RealPairMissing: see :func:`real_pair_dir`.
    """
    if key == "real_motion":
        return load_real_pair(data_dir)
    if key.startswith("slices_2d/") and key.split("/", 1)[1] in SLICE_KINDS:
        fixed, moving, _ = _slice_pair(key.split("/", 1)[1], data_dir)
        return fixed, moving
    raise ValueError(f"unknown reference key {key!r}; expected 'real_motion' or 'slices_2d/<kind>'")


def turned_mr(mr: sitk.Image) -> sitk.Image:
    """The pair's MR turned 180 degrees about y, about its grid's centre: the CT's orientation.

    (Any 3D image turns so: its voxels in reversed x and z order on the same grid.)

    The MRI-DIR files store the phantom turned 180 degrees about y (anterior-posterior) in the
    MR against the CT, as a scan head first against one feet first would be: the bone runs
    the other way, and each axial MR slice is the mirror image of the CT's. ``register``
    finds that turn itself (its orientation search); a 2D registration cannot, because in
    one slice the turn is a mirror. The 2D slices therefore take the MR's slice from this
    image, the same voxels on the same grid in reversed x and z order.
    """
    turned = sitk.GetImageFromArray(sitk.GetArrayViewFromImage(mr)[::-1, :, ::-1].copy())
    turned.CopyInformation(mr)
    return turned


def _slice_pair(
    kind: str, data_dir: str | Path | None
) -> tuple[sitk.Image, sitk.Image, dict[str, Any]]:
    """The unmoved 2D pair of ``kind``: the same for every case of that kind."""
    ct, mr = load_real_pair(data_dir)
    mr = turned_mr(mr)
    ct_slice = _axial_slice(ct, _centre_slice_index(ct, BODY_HU))
    mr_slice = _axial_slice(mr, _centre_slice_index(mr, _mr_threshold(mr)))
    info: dict[str, Any] = {}
    if kind == "couch":
        couch_rng = np.random.default_rng([SETS["slices_2d"], 99, 0])
        array = render.add_couch(
            sitk.GetArrayFromImage(ct_slice), couch_rng, spacing=ct_slice.GetSpacing()
        )
        with_couch = sitk.GetImageFromArray(array)
        with_couch.CopyInformation(ct_slice)
        ct_slice = with_couch
    elif kind == "fov":
        # The MR sees a smaller window: 70 % of its width and 55 % of its height, centred on
        # its body.
        size = mr_slice.GetSize()
        window = [int(0.7 * size[0]), int(0.55 * size[1])]
        centre = np.argwhere(sitk.GetArrayViewFromImage(mr_slice) > _mr_threshold(mr))
        centre = centre.mean(axis=0)[::-1]
        start = [int(np.clip(round(c - w / 2), 0, s - w)) for c, w, s in zip(centre, window, size)]
        mr_slice = sitk.RegionOfInterest(mr_slice, window, start)
        info["mr_window_xy"] = [start, window]
    elif kind == "png":
        mr_high = float(np.percentile(sitk.GetArrayViewFromImage(mr_slice), 99.5))
        ct_slice = _as_picture(ct_slice, -1000.0, 1000.0)
        mr_slice = _as_picture(mr_slice, 0.0, mr_high)
        info["picture_windows"] = {"ct_hu": [-1000.0, 1000.0], "mr": [0.0, round(mr_high, 2)]}
    return ct_slice, mr_slice, info


def _slices_2d(rng: np.random.Generator, data_dir: str | Path | None, kind: str) -> dict[str, Any]:
    """A 2D case: the unmoved pair of ``kind`` with its MR moved by a known 2D motion."""
    fixed, moving, info = _slice_pair(kind, data_dir)
    ct, mr = load_real_pair(data_dir)
    mm_per_unit = 1.0
    if kind == "png":
        mm_per_unit = mr.GetSpacing()[0]
        scalar = sitk.VectorIndexSelectionCast(moving, 0)
    else:
        scalar = moving
    centre = _foreground_centre(scalar, _mr_threshold(scalar))
    motion, inverse, params = _motion(
        rng,
        scalar,
        centre,
        max_rotation_deg=30.0,
        max_translation_mm=30.0,
        max_deformation_mm=10.0,
        mm_per_unit=mm_per_unit,
    )
    if kind == "png":
        moved_gray = _resample(sitk.Cast(scalar, sitk.sitkFloat32), scalar, motion)
        moved = _as_picture(moved_gray, 0.0, 255.0)
    else:
        moved = _resample(moving, moving, motion)
    ct_slice = _axial_slice(ct, _centre_slice_index(ct, BODY_HU))
    body = sitk.GetArrayViewFromImage(ct_slice) > BODY_HU
    return {
        "kind": kind,
        "fixed": fixed,
        "moving": moved,
        "body": _mask_image(body, fixed if kind != "png" else _scalar_grid(fixed)),
        "motion_inverse": inverse,
        "motion": motion,
        "reference_key": f"slices_2d/{kind}",
        "moving_mm_per_unit": mm_per_unit,
        "params": {**params, **info},
    }


def _scalar_grid(image: sitk.Image) -> sitk.Image:
    grid = sitk.Image(image.GetSize(), sitk.sitkUInt8)
    grid.CopyInformation(image)
    return grid


# --------------------------------------------------------------------------- entry


def make_case(set_name: str, split: str, index: int, *, data_dir: str | Path | None = None) -> Case:
    """Generate case ``index`` of ``set_name``'s ``split`` (deterministic).

    Args:
        set_name: one of :data:`SETS`.
        split: ``"tuning"`` or ``"heldout"``.
        index: 0 or more; any number of cases can be drawn (20 or more per split are meant).
        data_dir: the real pair's folder (None: :data:`REAL_PAIR_DIR`).

    Returns:
        The :class:`Case`.

    Raises:
        ValueError: an unknown set or split, or a negative index.
        RealPairMissing: the real pair is absent (see :func:`real_pair_dir`).

    Example:
        >>> case = make_case("rendered", "heldout", 0)
        >>> case.fixed.GetSize(), case.params["slice_thickness_mm"]
    """
    if set_name not in SETS:
        raise ValueError(f"set must be one of {tuple(SETS)}, not {set_name!r}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {tuple(SPLITS)}, not {split!r}")
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise ValueError(f"index must be a whole number >= 0, not {index!r}")
    rng = np.random.default_rng([SETS[set_name], SPLITS[split], index])
    if set_name == "real_motion":
        parts = _real_motion(rng, data_dir)
    elif set_name == "rendered":
        parts = _rendered(rng, data_dir)
    elif set_name == "robustness":
        parts = _rendered(rng, data_dir, ROBUSTNESS_KINDS[index % len(ROBUSTNESS_KINDS)])
    else:
        parts = _slices_2d(rng, data_dir, SLICE_KINDS[index % len(SLICE_KINDS)])
    return Case(
        name=f"{set_name}-{split}-{index:03d}", set=set_name, split=split, index=index, **parts
    )
