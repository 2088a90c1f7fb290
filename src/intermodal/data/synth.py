"""Synthetic pelvis subjects: per-subject anatomy rendered as a CT and a T2-weighted MR.

Each subject draws its own anatomy from its seed: a body outline with subcutaneous fat and
muscle, pelvic bones (iliac wings, pubic rami, symphysis, ischia, sacrum, femoral heads and
necks) with a cortical shell around marrow, a bladder of random filling, the prostate below it
and the rectum behind them, sometimes with gas. The anatomy is rendered twice:

- **CT**: Hounsfield units per tissue (with small per-subject offsets), partial volume (rendered
  at twice the resolution and averaged) and Gaussian noise. Stored as int16 HU.
- **MR** (T2-like): another contrast (urine and fat bright, muscle and bone dark), a smooth
  multiplicative bias field (a quadratic polynomial, at most +-20 %), Rician noise, its own grid
  and field of view, and in 3D thick anisotropic slices (each slice averages 3 sub-slices).

Between the two scans the anatomy moves by a known smooth transform: the bladder filling
differs (a radial push around the bladder centre that fades with distance, so neighbours move
too) and the patient lies a few millimetres and degrees differently. ``params["deformation"]``
gives it exactly: the MR scanner point ``p`` (mm) shows the CT anatomy at

    u = R^T (p - t),    q = u - a (u - c) exp(-|u - c|^2 / (2 sigma^2)),   a = 1 - 1/s

where ``R``/``t`` are the rigid rotation and translation, ``c`` the bladder centre, ``sigma`` the
fall-off and ``s`` the bladder scale (``s > 1``: fuller bladder on the MR). In 2D the rotation is
about z and the push acts in the slice plane only. The CT's physical space is the anatomy's own,
so ``q`` is a CT physical point: the map ``p -> q`` is the MR-to-CT transform.

All coordinates are physical LPS millimetres, ``(x, y, z)``: +x patient left, +y posterior,
+z superior. Arrays are in SimpleITK array order ``(z, y, x)``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from intermodal.data.parallel import check_jobs, in_processes
from intermodal.errors import IntermodalError, OutputExistsError
from intermodal.io import write_text_atomic

LABELS = {"body": 1, "bone": 2, "bladder": 3, "prostate": 4, "rectum": 5}
"""Label values in ``ct_labels`` and ``mr_labels`` (0 is background), as in the phantom."""

TISSUES = (
    "air",
    "fat",
    "muscle",
    "cortical_bone",
    "marrow",
    "urine",
    "prostate",
    "rectal_wall",
    "rectal_content",
    "gas",
)
"""Tissue classes the renderer paints; their index is the tissue code."""

# Label of each tissue code (fat and muscle are "body"; the whole rectum, gas included, is 5).
_TISSUE_LABEL = np.array([0, 1, 1, 2, 2, 3, 4, 5, 5, 5], np.uint8)

CT_HU = {
    "air": -1000.0,
    "fat": -100.0,
    "muscle": 40.0,
    "cortical_bone": 700.0,
    "marrow": 300.0,
    "urine": 10.0,
    "prostate": 40.0,
    "rectal_wall": 35.0,
    "rectal_content": 20.0,
    "gas": -900.0,
}
"""Nominal CT values (HU) per tissue; each subject offsets them a little (``params["ct"]``)."""

_CT_OFFSET_SD = {
    "air": 0.0,
    "fat": 8.0,
    "muscle": 4.0,
    "cortical_bone": 40.0,
    "marrow": 30.0,
    "urine": 3.0,
    "prostate": 4.0,
    "rectal_wall": 4.0,
    "rectal_content": 8.0,
    "gas": 30.0,
}

MR_T2 = {
    "air": 0.0,
    "fat": 0.8,
    "muscle": 0.3,
    "cortical_bone": 0.05,
    "marrow": 0.15,
    "urine": 1.0,
    "prostate": 0.55,
    "rectal_wall": 0.3,
    "rectal_content": 0.2,
    "gas": 0.0,
}
"""Nominal T2-weighted MR signal per tissue (arbitrary units, urine = 1); scaled per subject."""

# Default grids, physical order (x, y, z). The MR's grid follows the CT's: with another CT
# shape or spacing, its spacing scales by the same factor and its field of view keeps the ratio.
_CT_SIZE = {3: (96, 96, 80), 2: (160, 160)}
_CT_SPACING = {3: (2.5, 2.5, 2.5), 2: (1.5, 1.5)}
_MR_SIZE = {3: (112, 112, 40), 2: (128, 128)}
_MR_SPACING = {3: (2.0, 2.0, 5.0), 2: (2.0, 2.0)}
# Supersampling per physical axis (x, y, z): the partial volume and the MR's slice profile.
_CT_SUPERSAMPLING = {3: (2, 2, 2), 2: (2, 2, 1)}
_MR_SUPERSAMPLING = {3: (2, 2, 3), 2: (2, 2, 3)}
# Slice thickness of a 2D image (mm): 2D subjects are one axial slice of the 3D anatomy.
_SLICE_THICKNESS_2D = {"ct": 1.5, "mr": 5.0}
_CT_CENTRE_Z = 10.0  # mm; the 3D CT covers the iliac crests down to below the symphysis
_BIAS_MAX = 0.2
SEED_STRIDE = 100003
"""Subject ``k`` of a dataset with seed ``S`` has seed ``S * 100003 + k``."""


@dataclass
class Subject:
    """One synthetic subject: a CT and an MR of the same anatomy, with label maps.

    Attributes:
        ct: CT in HU (int16), the anatomy's own physical space.
        mr: T2-like MR (float32) on its own grid; the anatomy moved by the known deformation.
        ct_labels: labels on the CT grid (uint8, values per :data:`LABELS`).
        mr_labels: labels on the MR grid (uint8).
        params: every drawn parameter, JSON-serialisable: ``seed``, ``dim``, ``anatomy``,
            ``ct`` and ``mr`` (grids, tissue values, noise, bias field), ``deformation`` (the
            known MR-to-CT transform, see the module docstring) and, in 2D, ``slice_z_mm``.
    """

    ct: sitk.Image
    mr: sitk.Image
    ct_labels: sitk.Image
    mr_labels: sitk.Image
    params: dict[str, Any]


# ---------------------------------------------------------------------------------------------
# Geometry: primitives evaluated at anatomy points q, a tuple of three broadcastable arrays
# (x, y, z) in mm. Each has a bounding sphere so the renderer only evaluates it near itself.


def _rotation(degrees: Sequence[float]) -> np.ndarray:
    """Rotation matrix ``Rz @ Ry @ Rx`` for angles (degrees) about x, y and z."""
    ax, ay, az = np.radians(degrees)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


class _Ellipsoid:
    def __init__(self, centre, radii, degrees=(0.0, 0.0, 0.0)):
        self.centre = np.asarray(centre, float)
        self.radii = np.asarray(radii, float)
        self.axes = _rotation(degrees)  # columns: the ellipsoid's own axes

    def bound(self) -> tuple[np.ndarray, float]:
        return self.centre, float(self.radii.max())

    def inside(self, q, shrink: float = 0.0) -> np.ndarray:
        total = 0.0
        for i in range(3):
            local = sum(self.axes[j, i] * (q[j] - self.centre[j]) for j in range(3))
            total = total + (local / max(self.radii[i] - shrink, 0.5)) ** 2
        return total <= 1.0


class _Capsule:
    """Points within ``radius`` of the segment from ``start`` to ``end`` (a tube, round ends)."""

    def __init__(self, start, end, radius):
        self.start = np.asarray(start, float)
        self.end = np.asarray(end, float)
        self.radius = float(radius)

    def bound(self) -> tuple[np.ndarray, float]:
        half = float(np.linalg.norm(self.end - self.start)) / 2
        return (self.start + self.end) / 2, half + self.radius

    def inside(self, q, shrink: float = 0.0) -> np.ndarray:
        d = self.end - self.start
        w = [q[j] - self.start[j] for j in range(3)]
        h = np.clip(sum(w[j] * d[j] for j in range(3)) / float(d @ d), 0.0, 1.0)
        dist2 = sum((w[j] - h * d[j]) ** 2 for j in range(3))
        return dist2 <= max(self.radius - shrink, 0.5) ** 2


class _BodyOutline:
    """An elliptic cylinder along z whose radius carries a few low-frequency harmonics."""

    def __init__(self, centre, semi_axes, harmonics, taper):
        self.centre = np.asarray(centre, float)
        self.semi_axes = np.asarray(semi_axes, float)
        self.harmonics = harmonics
        self.taper = float(taper)

    def inside(self, q, shrink: float = 0.0) -> np.ndarray:
        scale = 1.0 + self.taper * q[2] / 100.0
        x = (q[0] - self.centre[0]) / (self.semi_axes[0] * scale - shrink)
        y = (q[1] - self.centre[1]) / (self.semi_axes[1] * scale - shrink)
        angle = np.arctan2(y, x)
        radius = 1.0
        for k, amplitude, phase in self.harmonics:
            radius = radius + amplitude * np.cos(k * angle + phase)
        return x * x + y * y <= radius * radius


class _View:
    """A supersampled scanner grid seen in anatomy space, evaluated box by box.

    The scanner point ``p`` shows the anatomy at ``q = push(R^T (p - t))`` (see the module
    docstring); without a rotation, translation and push, ``q = p``.
    """

    def __init__(self, origin, spacing, size, factor, deformation=None):
        self.axes = [
            (origin[i] + ((np.arange(size[i] * factor[i]) + 0.5) / factor[i] - 0.5) * spacing[i])
            for i in range(3)
        ]
        self.shape = tuple(len(a) for a in self.axes[::-1])
        self.rotation = np.eye(3)
        self.translation = np.zeros(3)
        self.push = None
        if deformation is not None:
            self.rotation = _rotation(deformation["rotation_deg"])
            self.translation = np.asarray(deformation["translation_mm"], float)
            a = 1.0 - 1.0 / deformation["bladder_scale"]
            self.push = (
                a,
                np.asarray(deformation["centre_mm"], float),
                float(deformation["sigma_mm"]),
                int(deformation["axes"]),
            )
        # The push moves points by at most |a| sigma exp(-1/2); boxes are padded by that.
        self.pad = 0.0 if self.push is None else abs(self.push[0]) * self.push[2] * 0.61
        self.pad += max(float(np.max(np.diff(a))) if len(a) > 1 else 0.0 for a in self.axes)

    def box(self, centre, radius) -> tuple[slice, ...] | None:
        """Array-order slices of the grid that may hold anatomy within ``radius`` of ``centre``."""
        where = self.rotation @ np.asarray(centre, float) + self.translation
        slices = []
        for i in range(3):
            lo = np.searchsorted(self.axes[i], where[i] - radius - self.pad)
            hi = np.searchsorted(self.axes[i], where[i] + radius + self.pad, side="right")
            if lo >= hi:
                return None
            slices.append(slice(int(lo), int(hi)))
        return tuple(slices[::-1])

    def points(self, box: tuple[slice, ...]) -> tuple[np.ndarray, ...]:
        """Anatomy coordinates ``(x, y, z)`` (mm, float32, broadcastable) of the grid in ``box``."""
        sz, sy, sx = box
        p = (
            self.axes[0][sx].astype(np.float32)[None, None, :] - np.float32(self.translation[0]),
            self.axes[1][sy].astype(np.float32)[None, :, None] - np.float32(self.translation[1]),
            self.axes[2][sz].astype(np.float32)[:, None, None] - np.float32(self.translation[2]),
        )
        if self.push is None and np.array_equal(self.rotation, np.eye(3)):
            return p
        r = self.rotation.astype(np.float32)
        u = [sum(r[j, i] * p[j] for j in range(3)) for i in range(3)]
        u = [np.broadcast_to(c, np.broadcast_shapes(*(x.shape for x in p))) for c in u]
        if self.push is not None:
            a, centre, sigma, axes = self.push
            offset = [u[i] - np.float32(centre[i]) for i in range(axes)]
            fall = np.exp(sum(o * o for o in offset) / np.float32(-2 * sigma**2))
            for i in range(axes):
                u[i] = u[i] - np.float32(a) * offset[i] * fall
        return tuple(u)

    def full(self) -> tuple[slice, ...]:
        return tuple(slice(0, n) for n in self.shape)


# ---------------------------------------------------------------------------------------------
# The anatomy: drawn from a generator into plain JSON values, then built into primitives.


def _u(rng: np.random.Generator, low: float, high: float) -> float:
    return float(rng.uniform(low, high))


def _draw_anatomy(rng: np.random.Generator) -> dict[str, Any]:
    ax, ay = _u(rng, 85, 97), _u(rng, 64, 77)
    body = {
        "centre_mm": [0.0, _u(rng, -3, 3)],
        "semi_axes_mm": [ax, ay],
        "harmonics": [
            [k, float(np.clip(rng.normal(0, 0.025), -0.05, 0.05)), _u(rng, 0, 2 * np.pi)]
            for k in (2, 3, 4)
        ],
        "taper_per_100mm": _u(rng, -0.05, 0.05),
        "fat_mm": _u(rng, 8, 20),
    }
    pelvic_fat = {
        "centre_mm": [0.0, _u(rng, 5, 12), _u(rng, -5, 15)],
        "radii_mm": [_u(rng, 42, 52), _u(rng, 32, 40), _u(rng, 55, 75)],
    }
    head_r, head_x, head_y = _u(rng, 16, 20), ax * _u(rng, 0.5, 0.56), _u(rng, 0, 8)
    wing_x, wing_y, wing_z = ax * _u(rng, 0.5, 0.57), _u(rng, 5, 15), _u(rng, 50, 65)
    wing_r = [_u(rng, 7, 10), _u(rng, 30, 38), _u(rng, 35, 45)]
    wing_deg = _u(rng, 20, 35)
    sym_y, sym_z = -ay * _u(rng, 0.55, 0.66), _u(rng, -30, -20)
    ramus_r, ischium_r = _u(rng, 6, 8), _u(rng, 8, 10)
    ellipsoids, capsules = [], []
    for side in (-1, 1):  # -1: patient right (LPS -x)
        head = [side * (head_x + rng.normal(0, 1.5)), head_y + rng.normal(0, 1.5), rng.normal(0, 2)]
        head = [float(v) for v in head]
        neck = [side * (head_x + 22), head_y + 3, -30.0]
        ellipsoids.append({"centre_mm": head, "radii_mm": [head_r] * 3, "degrees": [0, 0, 0]})
        capsules.append({"start_mm": head, "end_mm": neck, "radius_mm": 0.6 * head_r})
        capsules.append(
            {
                "start_mm": neck,
                "end_mm": [side * (head_x + 26), head_y + 5, -150.0],
                "radius_mm": 0.55 * head_r,
            }
        )
        wing = [side * wing_x, wing_y, wing_z]
        ellipsoids.append(
            {"centre_mm": wing, "radii_mm": wing_r, "degrees": [0, 0, side * wing_deg]}
        )
        capsules.append(
            {
                "start_mm": [side * head_x * 0.95, head_y + 4, head_r * 0.6],
                "end_mm": [side * wing_x, wing_y, wing_z - 0.5 * wing_r[2]],
                "radius_mm": 11.0,
            }
        )
        capsules.append(
            {
                "start_mm": [side * head_x * 0.75, head_y - 0.7 * head_r, -8.0],
                "end_mm": [side * 5.0, sym_y, sym_z],
                "radius_mm": ramus_r,
            }
        )
        capsules.append(
            {
                "start_mm": [side * head_x * 0.8, head_y + 0.6 * head_r, -10.0],
                "end_mm": [side * head_x * 0.75, head_y + 22, -45.0],
                "radius_mm": ischium_r,
            }
        )
        ellipsoids.append(
            {"centre_mm": [side * 5.0, sym_y, sym_z], "radii_mm": [6, 9, 16], "degrees": [0, 0, 0]}
        )
    sac_y, sac_z = ay * _u(rng, 0.62, 0.72), _u(rng, 45, 60)
    sac_r = [_u(rng, 32, 42), _u(rng, 11, 15), _u(rng, 38, 50)]
    ellipsoids.append(
        {"centre_mm": [0.0, sac_y, sac_z], "radii_mm": sac_r, "degrees": [_u(rng, 15, 30), 0, 0]}
    )
    capsules.append(
        {
            "start_mm": [0.0, sac_y - 2, sac_z - 0.9 * sac_r[2]],
            "end_mm": [0.0, sac_y - 8, sac_z - sac_r[2] - 35],
            "radius_mm": 5.0,
        }
    )

    rect_r, rect_y = _u(rng, 9, 13), _u(rng, 26, 33)
    rectum = {
        "start_mm": [float(rng.normal(0, 2)), rect_y, -90.0],
        "end_mm": [float(rng.normal(0, 4)), rect_y + _u(rng, -3, 5), 45.0],
        "radius_mm": rect_r,
        "wall_mm": _u(rng, 2.5, 4),
        "gas": None,
    }
    lumen = rect_r - rectum["wall_mm"]
    if rng.random() < 0.5:
        rectum["gas"] = {
            "centre_mm": [rectum["start_mm"][0], rect_y - 0.35 * lumen, _u(rng, -40, 30)],
            "radii_mm": [0.8 * lumen, 0.6 * lumen, _u(rng, 8, 20)],
        }
    pr = [_u(rng, 16, 22), _u(rng, 12, 16), _u(rng, 14, 19)]
    prostate = {
        "centre_mm": [
            float(rng.normal(0, 1.5)),
            rect_y - rect_r - pr[1] + _u(rng, 0, 3),
            _u(rng, -22, -12),
        ],
        "radii_mm": pr,
    }
    volume_ml = _u(rng, 60, 250)
    shape = np.array([1.15, 0.95, 0.9])
    r = (3 * volume_ml * 1000 / (4 * np.pi * shape.prod())) ** (1 / 3)
    bladder_r = [float(v) for v in r * shape]
    bladder = {
        "volume_ml": volume_ml,
        "centre_mm": [
            float(rng.normal(0, 2)),
            prostate["centre_mm"][1] - _u(rng, 4, 12),
            prostate["centre_mm"][2] + 0.7 * pr[2] + 0.85 * bladder_r[2],
        ],
        "radii_mm": bladder_r,
    }
    return {
        "body": body,
        "pelvic_fat": pelvic_fat,
        "bone": {"cortex_mm": _u(rng, 2, 3.5), "ellipsoids": ellipsoids, "capsules": capsules},
        "bladder": bladder,
        "prostate": prostate,
        "rectum": rectum,
    }


def _render_tissue(view: _View, anatomy: dict[str, Any]) -> np.ndarray:
    """Tissue codes (uint8, indices of :data:`TISSUES`) on the view's supersampled grid."""
    code = {name: np.uint8(i) for i, name in enumerate(TISSUES)}
    tissue = np.zeros(view.shape, np.uint8)
    q = view.points(view.full())
    b = anatomy["body"]
    outline = _BodyOutline(b["centre_mm"], b["semi_axes_mm"], b["harmonics"], b["taper_per_100mm"])
    body = np.broadcast_to(outline.inside(q), view.shape)
    tissue[body] = code["fat"]
    tissue[np.broadcast_to(outline.inside(q, shrink=b["fat_mm"]), view.shape)] = code["muscle"]

    def paint(shape, name, shrink=0.0, within=None):
        box = view.box(*shape.bound())
        if box is None:
            return
        mask = np.broadcast_to(shape.inside(view.points(box), shrink), tissue[box].shape)
        mask = mask & body[box]
        if within is not None:
            mask &= within[box]
        tissue[box][mask] = code[name]

    def mask_of(shape, shrink=0.0):
        mask = np.zeros(view.shape, bool)
        box = view.box(*shape.bound())
        if box is not None:
            mask[box] = np.broadcast_to(shape.inside(view.points(box), shrink), mask[box].shape)
        return mask

    f = anatomy["pelvic_fat"]
    paint(_Ellipsoid(f["centre_mm"], f["radii_mm"]), "fat")
    bones = [
        _Ellipsoid(e["centre_mm"], e["radii_mm"], e["degrees"])
        for e in anatomy["bone"]["ellipsoids"]
    ]
    bones += [
        _Capsule(c["start_mm"], c["end_mm"], c["radius_mm"]) for c in anatomy["bone"]["capsules"]
    ]
    for bone in bones:  # every shell first, then every interior: a union with marrow inside
        paint(bone, "cortical_bone")
    for bone in bones:
        paint(bone, "marrow", shrink=anatomy["bone"]["cortex_mm"])
    bl = anatomy["bladder"]
    paint(_Ellipsoid(bl["centre_mm"], bl["radii_mm"]), "urine")
    r = anatomy["rectum"]
    tube = _Capsule(r["start_mm"], r["end_mm"], r["radius_mm"])
    paint(tube, "rectal_wall")
    lumen = mask_of(tube, shrink=r["wall_mm"])
    tissue[lumen & body] = code["rectal_content"]
    if r["gas"] is not None:
        paint(_Ellipsoid(r["gas"]["centre_mm"], r["gas"]["radii_mm"]), "gas", within=lumen)
    p = anatomy["prostate"]
    paint(_Ellipsoid(p["centre_mm"], p["radii_mm"]), "prostate")
    return tissue


# ---------------------------------------------------------------------------------------------
# Rendering to images


def _pool(array: np.ndarray, factor: Sequence[int]) -> np.ndarray:
    """Mean over blocks of ``factor`` (physical order x, y, z) of a ``(z, y, x)`` array."""
    fx, fy, fz = factor
    nz, ny, nx = array.shape[0] // fz, array.shape[1] // fy, array.shape[2] // fx
    return array.reshape(nz, fz, ny, fy, nx, fx).mean(axis=(1, 3, 5), dtype=np.float32)


def _majority_labels(tissue: np.ndarray, factor: Sequence[int]) -> np.ndarray:
    """The label most of each block's sub-voxels carry (ties: the lower label)."""
    fine = _TISSUE_LABEL[tissue]
    counts = np.stack([_pool(fine == label, factor) for label in range(6)])
    return counts.argmax(axis=0).astype(np.uint8)


def _to_image(array: np.ndarray, origin, spacing, dim: int) -> sitk.Image:
    if dim == 2:
        array = array[0]
    image = sitk.GetImageFromArray(array)
    image.SetOrigin(tuple(float(v) for v in origin[:dim]))
    image.SetSpacing(tuple(float(v) for v in spacing[:dim]))
    return image


def _grid(size, spacing, centre) -> list[float]:
    """Origin (centre of voxel 0) of a grid of ``size`` voxels centred on ``centre``."""
    return [float(c - (n - 1) / 2 * s) for n, s, c in zip(size, spacing, centre)]


def _bias_field(view_axes, dim: int, rng: np.random.Generator, fov_centre, half_width):
    """A quadratic multiplicative field on the MR grid, rescaled to stay within +-20 %."""
    names = ["x", "y", "z"][:dim]
    coefficients = {n: float(rng.choice([-1, 1]) * rng.uniform(0.05, 0.1)) for n in names}
    for i, a in enumerate(names):
        for b in names[i:]:
            coefficients[a + b] = float(rng.normal(0, 0.05))
    norm = [
        ((view_axes[i] - fov_centre[i]) / half_width[i]).reshape(
            [-1 if j == i else 1 for j in range(3)][::-1]
        )
        for i in range(dim)
    ]
    field = 0.0
    for name, c in coefficients.items():
        term = c
        for letter in name:
            term = term * norm["xyz".index(letter)]
        field = field + term
    field = np.broadcast_to(field, tuple(len(a) for a in view_axes[::-1])).astype(np.float32)
    peak = float(np.abs(field).max())
    if peak > _BIAS_MAX:
        scale = _BIAS_MAX / peak
        field = field * np.float32(scale)
        coefficients = {k: v * scale for k, v in coefficients.items()}
    field = 1.0 + field
    spec = {
        "formula": "1 + sum_k c_k * monomial_k((p - centre) / half_width)",
        "centre_mm": [float(v) for v in fov_centre[:dim]],
        "half_width_mm": [float(v) for v in half_width[:dim]],
        "coefficients": coefficients,
        "range": [float(field.min()), float(field.max())],
    }
    return field, spec


def _check_grid(dim, shape, spacing) -> tuple[tuple[int, ...], tuple[float, ...]]:
    size = _CT_SIZE[dim] if shape is None else shape
    try:
        size = tuple(int(n) for n in size)
    except (TypeError, ValueError):
        raise IntermodalError(
            f"shape must be {dim} voxel counts (x, y[, z]), not {shape!r}"
        ) from None
    if len(size) != dim or min(size) < 4:
        raise IntermodalError(f"shape must be {dim} voxel counts >= 4 (x, y[, z]), not {shape!r}")
    if spacing is None:
        spacing = _CT_SPACING[dim]
    elif np.isscalar(spacing):
        spacing = (spacing,) * dim
    try:
        spacing = tuple(float(s) for s in spacing)
    except (TypeError, ValueError):
        raise IntermodalError(
            f"spacing must be {dim} positive numbers (mm), not {spacing!r}"
        ) from None
    if len(spacing) != dim or not all(np.isfinite(s) and s > 0 for s in spacing):
        raise IntermodalError(f"spacing must be {dim} positive numbers (mm), not {spacing!r}")
    return size, spacing


def _check_int(name: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise IntermodalError(f"{name} must be an integer >= {low}, not {value!r}")
    return int(value)


def _check_dim(dim) -> int:
    if isinstance(dim, bool) or dim not in (2, 3):
        raise IntermodalError(f"dim must be 2 or 3, not {dim!r}")
    return int(dim)


def generate_subject(
    seed: int,
    *,
    dim: int = 3,
    shape: Sequence[int] | None = None,
    spacing: float | Sequence[float] | None = None,
) -> Subject:
    """Draw one subject's anatomy from ``seed`` and render its CT, MR and label maps.

    The same seed gives byte-identical images; different seeds give different anatomy. A 2D
    subject is one axial slice of the same kind of anatomy, at the level of the femoral heads
    and the bladder base (``params["slice_z_mm"]``), so every label is present.

    Args:
        seed: non-negative integer; ``numpy.random.default_rng(seed)`` draws everything.
        dim: 3 for volumes, 2 for one axial slice.
        shape: the CT's size in voxels, SimpleITK order ``(x, y, z)`` or ``(x, y)``. Default
            ``(96, 96, 80)`` in 3D, ``(160, 160)`` in 2D.
        spacing: the CT's voxel size in mm (one number or one per axis). Default 2.5 mm in 3D,
            1.5 mm in 2D. The MR's defaults are ``(112, 112, 40)`` voxels of
            ``(2.0, 2.0, 5.0)`` mm in 3D and ``(128, 128)`` of 2.0 mm in 2D; with another CT
            grid its spacing scales like the CT's and its field of view keeps the same ratio
            to the CT's.

    Returns:
        A :class:`Subject`. Images have identity direction; origins are LPS mm.

    Raises:
        IntermodalError: a negative or non-integer seed, ``dim`` not 2 or 3, a bad shape or
            spacing.

    Example:
        >>> subject = generate_subject(7, dim=2)
        >>> subject.ct.GetSize(), subject.mr.GetSpacing()
        ((160, 160), (2.0, 2.0))
    """
    seed = _check_int("seed", seed, 0)
    dim = _check_dim(dim)
    ct_size, ct_spacing = _check_grid(dim, shape, spacing)
    rng = np.random.default_rng(seed)
    anatomy = _draw_anatomy(rng)

    # Grids. Physical order; in 2D a third axis of one slice of the drawn thickness.
    scale = [ct_spacing[i] / _CT_SPACING[dim][i] for i in range(dim)]
    fov_ratio = [
        _MR_SIZE[dim][i] * _MR_SPACING[dim][i] / (_CT_SIZE[dim][i] * _CT_SPACING[dim][i])
        for i in range(dim)
    ]
    mr_spacing = [_MR_SPACING[dim][i] * scale[i] for i in range(dim)]
    mr_size = [
        max(4, round(ct_size[i] * ct_spacing[i] * fov_ratio[i] / mr_spacing[i])) for i in range(dim)
    ]
    p = anatomy["prostate"]
    slice_z = p["centre_mm"][2] + 0.85 * p["radii_mm"][2]
    ct_centre = [0.0, 0.0, _CT_CENTRE_Z if dim == 3 else slice_z]
    mr_centre = [
        _u(rng, -5, 5),
        _u(rng, -5, 5),
        ct_centre[2] + (_u(rng, -10, 10) if dim == 3 else 0),
    ]
    if dim == 2:
        ct_grid = (list(ct_size) + [1], list(ct_spacing) + [_SLICE_THICKNESS_2D["ct"]])
        mr_grid = (list(mr_size) + [1], list(mr_spacing) + [_SLICE_THICKNESS_2D["mr"]])
    else:
        ct_grid = (list(ct_size), list(ct_spacing))
        mr_grid = (list(mr_size), list(mr_spacing))
    ct_origin = _grid(*ct_grid, ct_centre)
    mr_origin = _grid(*mr_grid, mr_centre)

    # The known deformation between the scans (MR scanner point -> CT anatomy point).
    magnitude = _u(rng, 0.12, 0.3)
    bladder_scale = 1 + magnitude if rng.random() < 0.5 else 1 / (1 + magnitude)
    bl = anatomy["bladder"]
    centre = list(bl["centre_mm"]) if dim == 3 else [*bl["centre_mm"][:2], slice_z]
    deformation = {
        "formula": "q = u - a (u - c) exp(-|u - c|^2 / (2 sigma^2)), u = R^T (p - t), "
        "a = 1 - 1/bladder_scale; p MR (mm) -> q CT (mm); R = Rz Ry Rx",
        "bladder_scale": float(bladder_scale),
        "centre_mm": [float(v) for v in centre],
        "sigma_mm": float(np.mean(bl["radii_mm"]) * _u(rng, 1.0, 1.3)),
        "axes": dim,
        "rotation_deg": (
            [_u(rng, -4, 4) for _ in range(3)] if dim == 3 else [0.0, 0.0, _u(rng, -4, 4)]
        ),
        "translation_mm": [_u(rng, -6, 6) for _ in range(dim)] + [0.0] * (3 - dim),
    }

    # CT: tissue values with per-subject offsets, partial volume, Gaussian noise.
    ct_hu = {t: CT_HU[t] + float(rng.normal(0, _CT_OFFSET_SD[t])) for t in TISSUES}
    ct_noise = _u(rng, 8, 20)
    ct_factor = _CT_SUPERSAMPLING[dim]
    tissue = _render_tissue(_View(ct_origin, ct_grid[1], ct_grid[0], ct_factor), anatomy)
    ct_lut = np.array([ct_hu[t] for t in TISSUES], np.float32)
    ct = _pool(ct_lut[tissue], ct_factor)
    ct_labels = _majority_labels(tissue, ct_factor)
    ct += rng.normal(0, ct_noise, ct.shape).astype(np.float32)
    ct = np.clip(np.rint(ct), -1024, 3071).astype(np.int16)

    # MR: its own grid through the deformation, T2 contrast, slice profile, bias, Rician noise.
    mr_t2 = {t: MR_T2[t] * _u(rng, 0.93, 1.07) for t in TISSUES}
    mr_noise = _u(rng, 0.02, 0.04)
    mr_factor = _MR_SUPERSAMPLING[dim]
    view = _View(mr_origin, mr_grid[1], mr_grid[0], mr_factor, deformation)
    tissue = _render_tissue(view, anatomy)
    mr_lut = np.array([mr_t2[t] for t in TISSUES], np.float32)
    mr = _pool(mr_lut[tissue], mr_factor)
    mr_labels = _majority_labels(tissue, mr_factor)
    del tissue
    mr_axes = [o + s * np.arange(n) for o, s, n in zip(mr_origin, mr_grid[1], mr_grid[0])]
    half_width = [n * s / 2 for n, s in zip(mr_grid[0], mr_grid[1])]
    bias, bias_spec = _bias_field(mr_axes, dim, rng, mr_centre, half_width)
    mr *= bias
    real = mr + rng.normal(0, mr_noise, mr.shape).astype(np.float32)
    imaginary = rng.normal(0, mr_noise, mr.shape).astype(np.float32)
    mr = np.sqrt(real * real + imaginary * imaginary).astype(np.float32)

    params: dict[str, Any] = {
        "seed": seed,
        "dim": dim,
        "anatomy": anatomy,
        "ct": {
            "size": list(ct_size),
            "spacing_mm": list(ct_spacing),
            "origin_mm": ct_origin[:dim],
            "supersampling": list(ct_factor[:dim]),
            "hu": ct_hu,
            "noise_sd_hu": ct_noise,
        },
        "mr": {
            "size": [int(n) for n in mr_size],
            "spacing_mm": [float(s) for s in mr_spacing],
            "origin_mm": mr_origin[:dim],
            "supersampling": list(mr_factor[:dim]),
            "t2": mr_t2,
            "rician_sd": mr_noise,
            "bias_field": bias_spec,
        },
        "deformation": deformation,
    }
    if dim == 2:
        params["slice_z_mm"] = float(slice_z)
        params["slice_thickness_mm"] = dict(_SLICE_THICKNESS_2D)
    return Subject(
        ct=_to_image(ct, ct_origin, ct_grid[1], dim),
        mr=_to_image(mr, mr_origin, mr_grid[1], dim),
        ct_labels=_to_image(ct_labels, ct_origin, ct_grid[1], dim),
        mr_labels=_to_image(mr_labels, mr_origin, mr_grid[1], dim),
        params=params,
    )


# ---------------------------------------------------------------------------------------------
# Datasets on disk


def _write_subject(k: int, *, out: Path, seed: int, dim: int, overwrite: bool) -> dict[str, Any]:
    """Generate subject ``k`` of dataset ``seed``, write its files; return its manifest entry."""
    from intermodal.io import write_image  # io pulls in DICOM support; only needed here

    subject_seed = seed * SEED_STRIDE + k
    subject = generate_subject(subject_seed, dim=dim)
    name = f"subject_{k:03d}"
    files = {
        "ct": subject.ct,
        "mr": subject.mr,
        "labels": subject.ct_labels,
        "mr_labels": subject.mr_labels,
    }
    entry: dict[str, Any] = {"id": name}
    for key, image in files.items():
        write_image(image, out / name / f"{key}.nii.gz", overwrite=overwrite)
        entry[key] = f"{name}/{key}.nii.gz"
    write_text_atomic(out / name / "params.json", json.dumps(subject.params, indent=1))
    entry["params"] = f"{name}/params.json"
    entry["seed"] = subject_seed
    return entry


def _splits(ids: list[str]) -> dict[str, list[str]]:
    """About 70/15/15 in subject order; at least one in each split from three subjects on."""
    n = len(ids)
    if n < 3:
        return {"training": ids, "validation": [], "test": []}
    n_val = max(1, round(0.15 * n))
    n_test = max(1, round(0.15 * n))
    n_train = n - n_val - n_test
    return {
        "training": ids[:n_train],
        "validation": ids[n_train : n_train + n_val],
        "test": ids[n_train + n_val :],
    }


def write_dataset(
    out_dir: str | os.PathLike[str],
    subjects: int,
    *,
    seed: int = 0,
    dim: int = 3,
    overwrite: bool = False,
    jobs: int = 1,
) -> Path:
    """Generate ``subjects`` subjects and write them with a Learn2Reg-style manifest.

    Layout: ``out_dir/subject_{k:03d}/{ct,mr,labels,mr_labels}.nii.gz`` (``labels`` on the CT
    grid), ``params.json`` (the subject's drawn parameters, the known deformation included)
    and ``out_dir/dataset.json`` with paths relative to it and ``training``/``validation``/
    ``test`` splits of about 70/15/15 %. Subject ``k`` has seed ``seed * 100003 + k``, so
    datasets with different seeds never share a subject. Every file is written to a temporary
    name beside it and moved into place.

    Args:
        out_dir: the dataset folder; created if missing. It must be empty unless ``overwrite``.
        subjects: how many subjects, 1 to 100003.
        seed: the dataset's seed (>= 0).
        dim: 3 for volumes, 2 for axial slices.
        overwrite: write into an existing non-empty folder, replacing files of the same name.
        jobs: subjects generated at once, each in its own process (the result is the same).
            The processes are spawned, so a script calling this with ``jobs`` > 1 needs the
            usual ``if __name__ == "__main__":`` guard.

    Returns:
        The path of ``dataset.json``.

    Raises:
        OutputExistsError: ``out_dir`` exists, is not empty and ``overwrite`` is false.
        IntermodalError: a bad argument, ``out_dir`` is a file, or a write failed.
    """
    subjects = _check_int("subjects", subjects, 1)
    if subjects > SEED_STRIDE:
        raise IntermodalError(f"subjects must be at most {SEED_STRIDE}, not {subjects}")
    seed = _check_int("seed", seed, 0)
    dim = _check_dim(dim)
    jobs = check_jobs(jobs)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise IntermodalError(f"{out}: out_dir is a file, expected a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise OutputExistsError(
            f"{out}: folder exists and is not empty "
            f"(pass --overwrite, overwrite=True in Python, to write into it)"
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise IntermodalError(f"{out}: cannot create the folder: {err.strerror}") from err

    write = partial(_write_subject, out=out, seed=seed, dim=dim, overwrite=overwrite)
    died = f"{out}: a synth process died; run it again with overwrite"
    written = dict(in_processes(write, range(subjects), jobs, died))
    entries = [written[k] for k in range(subjects)]

    ids = [e["id"] for e in entries]
    manifest = {
        "name": "intermodal-synthetic-pelvis",
        "description": "Synthetic pelvis CT/MR pairs from intermodal.data.synth",
        "tensorImageSize": {"0": f"{dim}D"},
        "modality": {"0": "CT", "1": "MR"},
        "labels": {"0": "background", **{str(v): k for k, v in LABELS.items()}},
        "seed": seed,
        "numSubjects": subjects,
        "subjects": entries,
        **_splits(ids),
    }
    path = out / "dataset.json"
    write_text_atomic(path, json.dumps(manifest, indent=2))
    return path
