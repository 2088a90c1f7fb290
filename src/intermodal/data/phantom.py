"""A small analytic pelvis phantom: a CT and a T2-like MR of one anatomy, with labels.

The MR is the same anatomy seen through a known transform: a rotation, a shift, and a smooth
local deformation (the bladder fills and pushes its neighbours). It exists so that ``demo`` and
the tests have a pair whose right answer is known; the full synthetic pelvis generator, with
per-subject anatomy, belongs to :mod:`intermodal.data.synth`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

LABELS = {"body": 1, "bone": 2, "bladder": 3, "prostate": 4, "rectum": 5}
ORGANS = ("bone", "bladder", "prostate", "rectum")

# Tissue values. CT in HU; MR in arbitrary T2-like units (urine and fat bright, bone dark).
_CT = {
    "air": -1000.0,
    "fat": -100.0,
    "body": 40.0,
    "bone": 700.0,
    "bladder": 10.0,
    "prostate": 45.0,
    "rectum": 35.0,
    "gas": -900.0,
}
_MR = {
    "air": 0.0,
    "fat": 800.0,
    "body": 300.0,
    "bone": 120.0,
    "bladder": 1000.0,
    "prostate": 550.0,
    "rectum": 250.0,
    "gas": 0.0,
}


_BLADDER_CENTRE = (0.0, -10.0, 10.0)


@dataclass
class PhantomPair:
    """A fixed CT and a moving MR with their label maps (labels per :data:`LABELS`)."""

    ct: sitk.Image
    mr: sitk.Image
    ct_labels: sitk.Image
    mr_labels: sitk.Image


def _ellipsoid(coords: np.ndarray, centre, radii) -> np.ndarray:
    """Boolean mask of points inside an axis-aligned ellipsoid; ``coords`` is ``(ndim, ...)``."""
    total = np.zeros(coords.shape[1:])
    for axis, (c, r) in enumerate(zip(centre, radii)):
        total += ((coords[axis] - c) / r) ** 2
    return total <= 1.0


def _render(coords: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Label map and both contrasts at physical coordinates ``coords`` (mm, (x, y[, z]))."""
    ndim = coords.shape[0]

    def at(*values):  # place a 3D (x, y, z) triple in 2D or 3D
        return values[:ndim]

    labels = np.zeros(coords.shape[1:], np.uint8)
    tissue = np.full(coords.shape[1:], "air", dtype=object)
    body = _ellipsoid(coords, at(0, 0, 0), at(85, 60, 70))
    inner = _ellipsoid(coords, at(0, 0, 0), at(75, 50, 70))
    tissue[body] = "fat"
    tissue[inner] = "body"
    labels[body] = LABELS["body"]
    for side in (-1, 1):
        femur = _ellipsoid(coords, at(side * 48, 5, -10), at(14, 14, 16))
        ilium = _ellipsoid(coords, at(side * 55, 18, 35), at(10, 22, 30))
        bone = femur | ilium
        tissue[bone] = "bone"
        labels[bone] = LABELS["bone"]
    bladder = _ellipsoid(coords, _BLADDER_CENTRE[:ndim], at(26, 20, 22))
    prostate = _ellipsoid(coords, at(0, -6, -22), at(14, 11, 12))
    rectum = _ellipsoid(coords, at(0, 28, -5), at(13, 12, 40))
    gas = _ellipsoid(coords, at(0, 28, 0), at(5, 5, 12))
    for name, mask in (("rectum", rectum), ("prostate", prostate), ("bladder", bladder)):
        tissue[mask] = name
        labels[mask] = LABELS[name]
    tissue[gas & rectum] = "gas"
    ct = np.vectorize(_CT.__getitem__, otypes=[np.float32])(tissue)
    mr = np.vectorize(_MR.__getitem__, otypes=[np.float32])(tissue)
    return labels, ct, mr


def _grid_coords(shape: tuple[int, ...], spacing: float) -> np.ndarray:
    """Physical (x, y[, z]) coordinates of a centred grid of array ``shape`` (z, y, x)."""
    axes = [(np.arange(n) - (n - 1) / 2) * spacing for n in shape]
    mesh = np.meshgrid(*axes, indexing="ij")  # array order (z, y, x)
    return np.stack(mesh[::-1])


def _to_image(array: np.ndarray, spacing: float) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((spacing,) * array.ndim)
    image.SetOrigin(tuple(-(n - 1) / 2 * spacing for n in array.shape[::-1]))
    return image


def make_phantom_pair(
    shape: tuple[int, ...] = (64, 80, 80),
    spacing: float = 2.5,
    *,
    rotation_deg: float = 10.0,
    shift_mm: tuple[float, ...] = (6.0, -4.0, 3.0),
    bladder_scale: float = 1.25,
    noise: float = 0.02,
    seed: int = 0,
) -> PhantomPair:
    """Build the phantom pair.

    Args:
        shape: array shape ``(z, y, x)`` or ``(y, x)`` of both images.
        spacing: isotropic voxel size in mm.
        rotation_deg: in-plane (about z) rotation of the MR's anatomy.
        shift_mm: translation of the MR's anatomy, (x, y, z) mm.
        bladder_scale: the MR's bladder is about this much larger (filling) than the CT's,
            by a smooth deformation that also moves its neighbours.
        noise: Gaussian noise as a fraction of each image's intensity range.
        seed: noise seed.

    Returns:
        A :class:`PhantomPair`; the CT is the natural fixed image.
    """
    ndim = len(shape)
    rng = np.random.default_rng(seed)
    coords = _grid_coords(shape, spacing)
    ct_labels, ct, _ = _render(coords)
    # The MR's anatomy is moved: the MR voxel at p shows the anatomy at R^T (p - t).
    angle = np.radians(rotation_deg)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    moved = coords.copy()
    shifted = coords[:2] - np.asarray(shift_mm[:2]).reshape(2, *([1] * ndim))
    moved[:2] = np.einsum("ji,j...->i...", rotation, shifted)
    if ndim == 3:
        moved[2] = coords[2] - shift_mm[2]
    # Filling: a smooth radial push away from the bladder centre that fades with distance, so
    # the bladder grows and its neighbours move with it (q -> q - s(q) with s = a r exp(...)).
    offset = moved - np.asarray(_BLADDER_CENTRE[:ndim]).reshape(ndim, *([1] * ndim))
    falloff = np.exp(-np.sum(offset**2, axis=0) / (2 * 30.0**2))
    moved -= (1 - 1 / bladder_scale) * offset * falloff
    mr_labels, _, mr = _render(moved)
    ct += rng.normal(0, noise * 1700, ct.shape).astype(np.float32)
    mr += rng.normal(0, noise * 1000, mr.shape).astype(np.float32)
    mr = np.abs(mr)
    return PhantomPair(
        ct=_to_image(ct, spacing),
        mr=_to_image(mr, spacing),
        ct_labels=_to_image(ct_labels, spacing),
        mr_labels=_to_image(mr_labels, spacing),
    )
