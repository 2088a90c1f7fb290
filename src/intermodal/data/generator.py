"""Training pairs generated on the fly: random label maps, random contrasts, known motion.

No dataset on disk. Each sample is drawn from ``(seed, index)`` alone, so the same index gives
the same pair in any process, on any machine, and a resumed run sees what an uninterrupted one
would have seen:

1. **A label map** ``L_i`` from one of three sources, picked with the configured weights:

   - ``shapes``: random smooth shapes, as SynthMorph draws them (Hoffmann et al., IEEE TMI
     2022): the argmax of ``shape_labels`` smooth random noise fields, warped by a random
     smooth deformation, inside a random smooth body outline (label 0 outside);
   - ``pelvis``: the synthetic pelvis of :mod:`intermodal.data.synth` (its ten tissues, from
     air to rectal gas, as labels 0-9), each sample a new anatomy in a random pose;
   - ``ct``: the tissue classes (air, fat, soft tissue, bone) of a CT the user gives, a random
     region of it in a random pose.

2. **Subject j**: ``L_j = L_i o phi`` with ``phi(x) = c + A (x + u(x) - c) + t`` (voxels,
   ``c`` the grid centre): a random affine ``(A, t)`` after the exponential ``u`` of a random
   stationary velocity field with two scales, a large one (coarse control points, large
   amplitude) and a small one. The pair returns ``phi - id`` as ``displacement``, so that
   ``warp(moving_labels, displacement, mode="nearest", padding_mode="zeros") ==
   fixed_labels`` exactly.

3. **Images**: subject i's CT and MR are rendered from the one map ``L_i`` (so they are exactly
   aligned, the pre-alignment Cao et al.'s loss assumes), subject j's from ``L_j``, by
   :mod:`intermodal.data.render`: plausible HU per tissue class for the CT, a random contrast
   for the MR (bias field, Rician noise, blur, gamma, thick slices, a partial field of view).
   The CTs may get a couch and a cropped field of view. The two MRs of a pair share their
   contrast (same sequence, as in a real training set), not their noise or bias.

Images come back scaled as :mod:`intermodal.preprocess` scales real data: the CT's HU window
to [0, 1], the MR's percentiles to [0, 1].

Example:
    >>> config = GeneratorConfig(shape=[32, 32], spacing=6.0)
    >>> pair = PairGenerator(config).pair(0, seed=0)  # doctest: +SKIP
    >>> pair.moving_ct.shape, pair.displacement.shape  # doctest: +SKIP
    (torch.Size([32, 32]), torch.Size([2, 32, 32]))
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from intermodal.data import render
from intermodal.errors import IntermodalError
from intermodal.preprocess import DEFAULT_HU_WINDOW, DEFAULT_MR_PERCENTILES
from intermodal.spatial import identity_grid, integrate_velocity, resize_displacement, warp

__all__ = [
    "SOURCES",
    "GeneratedPair",
    "GeneratedPairs",
    "GeneratorConfig",
    "PairGenerator",
    "collate_pairs",
    "pair_displacement",
]

SOURCES = ("shapes", "pelvis", "ct")
"""Label-map sources, in the order of their ``<source>_weight`` keys."""

MR_CONTRASTS = ("random", "t2")

# Tissue class (index into render.TISSUE_NAMES: air, fat, soft tissue, bone) of each synth
# tissue code: air, fat, muscle, cortical bone, marrow, urine, prostate, rectal wall and
# content, gas.
_PELVIS_TISSUE_CLASS = (0, 1, 2, 3, 3, 2, 2, 2, 2, 0)
# Chance that a random shape is air, fat, soft tissue or bone.
_SHAPE_TISSUE_PROBABILITY = (0.05, 0.2, 0.6, 0.15)
_INTEGRATION_STEPS = 7
_MAX_VOXELS = 256**3
# Air between the two subjects rendered side by side: 3D, slices (wider than the blur and the
# thick-slice profile); 2D, the distance between the two slices (mm): 4 correlation lengths of
# the renderer's texture (4-10 mm) and far beyond its blur, but not so far that its smooth
# noise grids grow (their cost rises with the distance).
_GAP_SLICES = 4
_IMAGE_NAMES = ("moving_ct", "moving_mr", "fixed_ct", "fixed_mr")
_GAP_2D_MM = 40.0


@dataclass
class GeneratorConfig:
    """What :class:`PairGenerator` draws; the ``[generator]`` table of a training config.

    Attributes:
        shape: the grid, array order ``(z, y, x)`` or ``(y, x)``, voxels; its length is the
            dimension.
        spacing: isotropic voxel size, mm.
        seed: the training stream: sample ``k`` is drawn from ``(seed, k)``.
        validation_seed: the held-out validation stream; must differ from ``seed``.
        validation_pairs: pairs in the fixed validation set (0: no validation).
        validation_sources: label sources of the validation pairs, taken in turn; empty: drawn
            with the training weights. A source that training does not use (weight 0) is a
            held-out anatomy: scored apart, never used to pick the best checkpoint.
        workers: generator processes feeding training (0: generate in the training process).
        shapes_weight, pelvis_weight, ct_weight: how often each label-map source is picked
            (relative; at least one positive).
        ct_files: CT images (any format :func:`intermodal.io.read_image` reads, HU) whose
            tissue classes the ``ct`` source uses; needed when ``ct_weight > 0``.
        shape_labels: labels of a random-shape map (label 0, outside the body, excluded).
        shape_feature_mm: range of the random shapes' size, mm ``[low, high]``.
        affine_degrees: largest rotation of subject j, degrees about each axis (in-plane in 2D).
        affine_scale: largest relative scaling per axis (0.1: 0.9 to 1.1).
        affine_shift_mm: largest translation per axis, mm.
        large_velocity_mm, large_spacing_mm: the large-scale velocity: its largest standard
            deviation (mm) and its control-point spacing (mm).
        small_velocity_mm, small_spacing_mm: the same for the small scale.
        mr_contrast: ``random`` (a random intensity per label) or ``t2``.
        couch_probability: chance that a CT shows a couch.
        crop_probability: chance that an image's field of view is cropped.
        thick_slice_probability: chance that an MR (3D) has slices of 2-3 voxels.
        artefacts_in_loss: also put the couch and the crops into the images the loss
            compares; by default only the network's inputs have them (see
            :class:`GeneratedPair`).
    """

    shape: list[int] = field(default_factory=lambda: [48, 48, 48])
    spacing: float = 5.0
    seed: int = 0
    validation_seed: int = 1
    validation_pairs: int = 16
    validation_sources: list[str] = field(default_factory=list)
    workers: int = 1
    shapes_weight: float = 1.0
    pelvis_weight: float = 1.0
    ct_weight: float = 0.0
    ct_files: list[str] = field(default_factory=list)
    shape_labels: int = 12
    shape_feature_mm: list[float] = field(default_factory=lambda: [16.0, 48.0])
    affine_degrees: float = 10.0
    affine_scale: float = 0.1
    affine_shift_mm: float = 12.0
    large_velocity_mm: float = 8.0
    large_spacing_mm: float = 64.0
    small_velocity_mm: float = 2.0
    small_spacing_mm: float = 16.0
    mr_contrast: str = "random"
    couch_probability: float = 0.5
    crop_probability: float = 0.25
    thick_slice_probability: float = 0.3
    artefacts_in_loss: bool = False

    @property
    def dim(self) -> int:
        """2 or 3, the length of :attr:`shape`."""
        return len(self.shape)

    @property
    def weights(self) -> tuple[float, ...]:
        """The source weights, in the order of :data:`SOURCES`."""
        return (self.shapes_weight, self.pelvis_weight, self.ct_weight)

    def validate(self, prefix: str = "generator.", multiple: int = 1) -> GeneratorConfig:
        """Check every value; return ``self``.

        Args:
            prefix: put before the key in messages (``generator.`` in a training config).
            multiple: every entry of ``shape`` must be a multiple of this (the network's).

        Raises:
            IntermodalError: naming the first key whose value is impossible.
        """

        def check(ok: bool, key: str, expected: str, got: Any) -> None:
            if not ok:
                raise IntermodalError(f"config: {prefix}{key} must be {expected}, not {got!r}")

        shape = self.shape
        check(
            len(shape) in (2, 3) and all(isinstance(n, int) and n >= 8 for n in shape),
            "shape",
            "2 or 3 voxel counts >= 8 (array order)",
            shape,
        )
        check(math.prod(shape) <= _MAX_VOXELS, "shape", f"at most {_MAX_VOXELS} voxels", shape)
        check(
            all(n % multiple == 0 for n in shape),
            "shape",
            f"a multiple of {multiple} along every axis (the network's levels)",
            shape,
        )
        check(_positive(self.spacing), "spacing", "a number of mm > 0", self.spacing)
        check(self.seed >= 0, "seed", "an int >= 0", self.seed)
        check(self.validation_seed >= 0, "validation_seed", "an int >= 0", self.validation_seed)
        check(
            self.validation_seed != self.seed,
            "validation_seed",
            f"another seed than generator.seed ({self.seed}), so validation is held out",
            self.validation_seed,
        )
        check(self.validation_pairs >= 0, "validation_pairs", "an int >= 0", self.validation_pairs)
        check(
            all(name in SOURCES for name in self.validation_sources),
            "validation_sources",
            f"a list of {SOURCES}",
            self.validation_sources,
        )
        check(self.workers >= 0, "workers", "an int >= 0", self.workers)
        for name in SOURCES:
            value = getattr(self, f"{name}_weight")
            check(_non_negative(value), f"{name}_weight", "a number >= 0", value)
        check(
            sum(self.weights) > 0,
            "shapes_weight",
            "> 0, or pelvis_weight or ct_weight (the label sources are empty)",
            self.shapes_weight,
        )
        check(
            (self.ct_weight == 0 and "ct" not in self.validation_sources) or len(self.ct_files) > 0,
            "ct_files",
            "a non-empty list of CT images when ct_weight > 0 or validation uses the ct source",
            self.ct_files,
        )
        missing = [p for p in self.ct_files if not Path(p).exists()]
        check(
            not missing, "ct_files", "existing CT images (relative to the working folder)", missing
        )
        check(self.shape_labels >= 2, "shape_labels", "an int >= 2", self.shape_labels)
        low_high = self.shape_feature_mm
        check(
            len(low_high) == 2 and 0 < low_high[0] <= low_high[1],
            "shape_feature_mm",
            "[low, high] mm with 0 < low <= high",
            low_high,
        )
        check(
            _non_negative(self.affine_degrees) and self.affine_degrees <= 90,
            "affine_degrees",
            "a number in [0, 90]",
            self.affine_degrees,
        )
        check(0 <= self.affine_scale < 1, "affine_scale", "a number in [0, 1)", self.affine_scale)
        for key in ("affine_shift_mm", "large_velocity_mm", "small_velocity_mm"):
            check(_non_negative(getattr(self, key)), key, "a number >= 0", getattr(self, key))
        for key in ("large_spacing_mm", "small_spacing_mm"):
            check(_positive(getattr(self, key)), key, "a number of mm > 0", getattr(self, key))
        check(
            self.mr_contrast in MR_CONTRASTS,
            "mr_contrast",
            f"one of {MR_CONTRASTS}",
            self.mr_contrast,
        )
        for key in ("couch_probability", "crop_probability", "thick_slice_probability"):
            value = getattr(self, key)
            check(0 <= value <= 1, key, "a number in [0, 1]", value)
        return self


def _positive(value: float) -> bool:
    return math.isfinite(value) and value > 0


def _non_negative(value: float) -> bool:
    return math.isfinite(value) and value >= 0


@dataclass
class GeneratedPair:
    """One generated sample: subject i (moving) and subject j (fixed).

    Images are float32 ``(*shape)`` in [0, 1]; labels int64 ``(*shape)``.

    The images the loss compares and the images the network sees differ by the acquisition
    artefacts that do not move with the anatomy: a CT's couch and the cropped fields of view.
    An intra-modality loss rewards aligning a couch with a couch or a crop edge with a crop
    edge, which moves the anatomy apart; so, unless ``artefacts_in_loss`` is set, the loss's
    images have neither, and the network learns to ignore them from its inputs alone.

    Attributes:
        moving_ct, moving_mr: subject i's CT and MR, both rendered from ``moving_labels``,
            for the loss.
        fixed_ct, fixed_mr: subject j's, both rendered from ``fixed_labels``, for the loss.
        acquired: the same four images (same keys) as acquired: with the couch and crops, for
            the network.
        moving_labels, fixed_labels: ``L_i`` and ``L_j = L_i o phi``.
        displacement: ``(ndim, *shape)`` float32, voxels: ``phi - id``, so that
            ``warp(moving_labels, displacement, mode="nearest", padding_mode="zeros")`` gives
            ``fixed_labels``.
        source: which label-map source drew ``L_i``.
        seconds: time taken to generate the pair.
    """

    moving_ct: Tensor
    moving_mr: Tensor
    fixed_ct: Tensor
    fixed_mr: Tensor
    acquired: dict[str, Tensor]
    moving_labels: Tensor
    fixed_labels: Tensor
    displacement: Tensor
    source: str
    seconds: float


# --------------------------------------------------------------------------- random fields


def _rng(seed: int, index: int, stream: int = 0) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(index), int(stream)]))


def _linear_mode(ndim: int) -> str:
    return "bilinear" if ndim == 2 else "trilinear"


def _smooth_noise(
    rng: np.random.Generator, channels: int, shape: Sequence[int], feature_voxels: float
) -> Tensor:
    """``(1, channels, *shape)`` N(0, 1) draws on a grid of ``feature_voxels``, upsampled."""
    coarse = [max(2, round(n / max(feature_voxels, 1.0)) + 1) for n in shape]
    noise = torch.from_numpy(rng.standard_normal((1, channels, *coarse), dtype=np.float32))
    return F.interpolate(
        noise, size=tuple(shape), mode=_linear_mode(len(shape)), align_corners=True
    )


def _random_velocity(
    rng: np.random.Generator, shape: Sequence[int], control_voxels: float, sd_voxels: float
) -> Tensor:
    """``(1, ndim, *shape)`` smooth velocity in voxels: control-point draws, upsampled."""
    return sd_voxels * _smooth_noise(rng, len(shape), shape, control_voxels)


def _random_displacement(
    rng: np.random.Generator,
    shape: Sequence[int],
    scales: Sequence[tuple[float, float]],
) -> Tensor:
    """``(1, ndim, *shape)`` voxels: the exponential of a sum of random velocities.

    Each scale is ``(control spacing, largest standard deviation)`` in voxels of ``shape``;
    its standard deviation is drawn uniformly below the largest. The velocity is integrated on
    a grid of half the resolution (it is smooth at both scales) and resized.
    """
    ndim = len(shape)
    half = [max(2, (n + 1) // 2) for n in shape]
    # voxels of the half grid per voxel of the full grid, along each axis (about 1/2)
    factor = torch.tensor([(h - 1) / (n - 1) for h, n in zip(half, shape)])
    velocity = torch.zeros(1, ndim, *half)
    for control, largest in scales:
        sd = float(rng.uniform(0, largest))
        velocity = velocity + _random_velocity(rng, half, control * float(factor.mean()), sd)
    velocity = velocity * factor.view(1, ndim, *[1] * ndim)
    coarse = integrate_velocity(velocity, steps=_INTEGRATION_STEPS)
    return resize_displacement(coarse, tuple(shape))


def _rotation(rng: np.random.Generator, ndim: int, degrees: float) -> np.ndarray:
    """A random rotation, at most ``degrees`` about each axis, array order."""
    angles = np.radians(rng.uniform(-degrees, degrees, 1 if ndim == 2 else 3))
    if ndim == 2:
        c, s = math.cos(angles[0]), math.sin(angles[0])
        return np.array([[c, -s], [s, c]])
    rotation = np.eye(3)
    for axis, angle in enumerate(angles):
        a, b = [k for k in range(3) if k != axis]
        plane = np.eye(3)
        plane[a, a] = plane[b, b] = math.cos(angle)
        plane[a, b], plane[b, a] = -math.sin(angle), math.sin(angle)
        rotation = plane @ rotation
    return rotation


def pair_displacement(
    rng: np.random.Generator, shape: Sequence[int], spacing: float, config: GeneratorConfig
) -> Tensor:
    """The displacement ``phi - id`` that makes subject j from subject i.

    ``phi(x) = c + A (x + u(x) - c) + t``: the exponential ``u`` of a two-scale random
    stationary velocity field, then a random affine ``(A, t)`` about the grid centre ``c``.

    Args:
        rng: draws everything.
        shape: the grid, array order.
        spacing: its isotropic voxel size, mm.
        config: the affine and velocity ranges.

    Returns:
        ``(ndim, *shape)`` float32, voxels, channel ``i`` along array axis ``i``.
    """
    ndim = len(shape)
    scales = [
        (config.large_spacing_mm / spacing, config.large_velocity_mm / spacing),
        (config.small_spacing_mm / spacing, config.small_velocity_mm / spacing),
    ]
    svf = _random_displacement(rng, shape, scales)[0]
    linear = _rotation(rng, ndim, config.affine_degrees) @ np.diag(
        rng.uniform(1 - config.affine_scale, 1 + config.affine_scale, ndim)
    )
    shift = rng.uniform(-config.affine_shift_mm, config.affine_shift_mm, ndim) / spacing
    grid = identity_grid(shape)
    centre = torch.tensor([(n - 1) / 2 for n in shape]).view(ndim, *[1] * ndim)
    offsets = (grid + svf - centre).reshape(ndim, -1)
    matrix = torch.from_numpy(linear).float()
    mapped = matrix @ offsets + torch.from_numpy(shift).float().view(ndim, 1)
    return (mapped.view(ndim, *shape) + centre - grid).contiguous()


# --------------------------------------------------------------------------- label sources


def _shapes_labels(
    rng: np.random.Generator, config: GeneratorConfig
) -> tuple[np.ndarray, dict[int, int]]:
    """Random smooth shapes in a random body outline; labels ``0..shape_labels``."""
    shape, spacing, ndim = config.shape, config.spacing, config.dim
    feature = float(rng.uniform(*config.shape_feature_mm)) / spacing
    noise = _smooth_noise(rng, config.shape_labels, shape, feature)
    labels = (noise.argmax(dim=1, keepdim=True) + 1).to(torch.int64)
    # the SynthMorph step: warp the argmax so that the shapes are not polygons of the grid
    deformation = _random_displacement(rng, shape, [(2 * feature, 0.5 * feature)])
    labels = warp(labels, deformation, mode="nearest")
    if rng.random() < 0.8:
        axes = [torch.linspace(-1, 1, n) for n in shape]
        coords = torch.meshgrid(*axes, indexing="ij")
        radii = rng.uniform(0.55, 0.95, ndim)
        centre = rng.uniform(-0.1, 0.1, ndim)
        radius = sum(((c - float(m)) / float(r)) ** 2 for c, m, r in zip(coords, centre, radii))
        radius = radius + 0.3 * _smooth_noise(rng, 1, shape, max(shape) / 3)[0, 0]
        labels[0, 0][radius > 1] = 0
    tissue = rng.choice(4, size=config.shape_labels, p=_SHAPE_TISSUE_PROBABILITY)
    tissue_of_label = {0: 0, **{k + 1: int(t) for k, t in enumerate(tissue)}}
    return labels[0, 0].numpy().astype(np.uint8), tissue_of_label


def _pelvis_labels(
    rng: np.random.Generator, config: GeneratorConfig
) -> tuple[np.ndarray, dict[int, int]]:
    """A new synthetic pelvis in a random pose; labels are its tissue codes 0-9."""
    from intermodal.data import synth

    anatomy = synth._draw_anatomy(rng)
    ndim = config.dim
    size = list(config.shape[::-1]) + ([1] if ndim == 2 else [])
    # a random zoom of the anatomy: the grid's spacing in anatomy millimetres
    spacing = [config.spacing * float(rng.uniform(0.85, 1.15))] * 3
    centre = [0.0, 0.0, float(rng.uniform(-20, 40)) if ndim == 3 else float(rng.uniform(-40, 50))]
    origin = [c - (n - 1) / 2 * s for c, n, s in zip(centre, size, spacing)]
    bladder = anatomy["bladder"]
    pose = {
        "rotation_deg": [float(rng.uniform(-8, 8)) for _ in range(3)]
        if ndim == 3
        else [0.0, 0.0, float(rng.uniform(-15, 15))],
        "translation_mm": [float(rng.uniform(-15, 15)) for _ in range(2)] + [0.0],
        "bladder_scale": float(rng.uniform(0.8, 1.25)),
        "centre_mm": list(bladder["centre_mm"]),
        "sigma_mm": float(np.mean(bladder["radii_mm"])),
        "axes": 3,
    }
    view = synth._View(origin, spacing, size, (1, 1, 1), pose)
    tissue = synth._render_tissue(view, anatomy)
    labels = tissue[0] if ndim == 2 else tissue
    return labels.astype(np.uint8), dict(enumerate(_PELVIS_TISSUE_CLASS))


class _CtSource:
    """The user's CTs, read on first use and kept (each process keeps its own copy)."""

    def __init__(self, paths: Sequence[str]) -> None:
        self.paths = [str(p) for p in paths]
        self.images: dict[int, Any] = {}

    def image(self, k: int) -> tuple[Any, np.ndarray, np.ndarray]:
        """The CT, and the physical box (mm) of its voxels above -500 HU (the body)."""
        if k not in self.images:
            import SimpleITK as sitk

            from intermodal.io import read_image

            image = read_image(self.paths[k])
            if image.GetDimension() != 3:
                raise IntermodalError(
                    f"config: generator.ct_files: {self.paths[k]} is "
                    f"{image.GetDimension()}D; the ct source needs 3D CTs"
                )
            body = np.argwhere(sitk.GetArrayViewFromImage(image) > -500)
            if len(body) == 0:
                body = np.array([[0, 0, 0], [n - 1 for n in image.GetSize()[::-1]]])
            corners = [
                image.TransformContinuousIndexToPhysicalPoint([float(v) for v in index[::-1]])
                for index in (body.min(axis=0), body.max(axis=0))
            ]
            low, high = np.min(corners, axis=0), np.max(corners, axis=0)
            self.images[k] = (image, low, high)
        return self.images[k]

    def labels(
        self, rng: np.random.Generator, config: GeneratorConfig
    ) -> tuple[np.ndarray, dict[int, int]]:
        """Tissue classes of a random region of a random CT, in a random pose."""
        import SimpleITK as sitk

        image, low, high = self.image(int(rng.integers(len(self.paths))))
        ndim = config.dim
        centre = low + (high - low) * rng.uniform(0.3, 0.7, 3)
        size = list(config.shape[::-1]) + ([1] if ndim == 2 else [])
        spacing = [config.spacing * float(rng.uniform(0.85, 1.15))] * 3
        if ndim == 2:
            spacing[2] = config.spacing
        transform = sitk.Euler3DTransform()
        transform.SetCenter([float(c) for c in centre])
        angles = np.radians(rng.uniform(-8, 8, 3)) if ndim == 3 else [0, 0, 0]
        angles[2] = float(np.radians(rng.uniform(-15, 15)))
        transform.SetRotation(*[float(a) for a in angles])
        origin = [c - (n - 1) / 2 * s for c, n, s in zip(centre, size, spacing)]
        resampled = sitk.Resample(
            image,
            [int(n) for n in size],
            transform,
            sitk.sitkLinear,
            [float(o) for o in origin],
            [float(s) for s in spacing],
            [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
            -1000.0,
            sitk.sitkFloat32,
        )
        hu = sitk.GetArrayFromImage(resampled)
        if ndim == 2:
            hu = hu[0]
        return render.tissue_classes_from_ct(hu).astype(np.uint8), {k: k for k in range(4)}


# --------------------------------------------------------------------------- images


def _ct_unit(hu: np.ndarray) -> np.ndarray:
    low, high = DEFAULT_HU_WINDOW
    return np.clip((hu - low) / (high - low), 0, 1).astype(np.float32)


def _mr_unit(mr: np.ndarray) -> np.ndarray:
    low, high = np.percentile(mr, DEFAULT_MR_PERCENTILES)
    if high <= low:
        return np.zeros_like(mr, dtype=np.float32)
    return np.clip((mr - low) / (high - low), 0, 1).astype(np.float32)


def _crop(rng: np.random.Generator, image: np.ndarray, background: float) -> np.ndarray:
    """The image with everything outside a random box (60-100 % per axis) set to background."""
    cropped = np.full_like(image, background)
    box = []
    for n in image.shape:
        width = int(round(n * rng.uniform(0.6, 1.0)))
        start = int(rng.integers(0, n - width + 1))
        box.append(slice(start, start + width))
    cropped[tuple(box)] = image[tuple(box)]
    return cropped


# --------------------------------------------------------------------------- the generator


class PairGenerator:
    """Draws :class:`GeneratedPair` samples from a :class:`GeneratorConfig`.

    Args:
        config: the settings; checked here.

    Raises:
        IntermodalError: a setting out of range (naming its key).
    """

    def __init__(self, config: GeneratorConfig) -> None:
        self.config = config.validate()
        self._ct = _CtSource(config.ct_files)

    def labels(self, rng: np.random.Generator, source: str) -> tuple[np.ndarray, dict[int, int]]:
        """A label map ``(*shape)`` uint8 from ``source``, and each label's tissue class."""
        if source == "shapes":
            return _shapes_labels(rng, self.config)
        if source == "pelvis":
            return _pelvis_labels(rng, self.config)
        return self._ct.labels(rng, self.config)

    def _render(
        self,
        moving_labels: np.ndarray,
        fixed_labels: np.ndarray,
        tissue_of_label: Mapping[int, int],
        rng: np.random.Generator,
    ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Subject i's CT and MR, then subject j's, each pair from its own label map, in [0, 1].

        Returned twice: without and with the couch and the crops (see :class:`GeneratedPair`).

        The two subjects are rendered in one call per modality, side by side along the first
        axis with a gap of air, so that they share their contrast (the intensity of each
        label, the gamma, the texture's scale) as two scans of one protocol do, but not their
        noise, texture or bias field.
        """
        config = self.config
        spacing = (float(config.spacing),) * config.dim
        if config.dim == 3:
            gap = np.zeros((_GAP_SLICES, *moving_labels.shape[1:]), moving_labels.dtype)
            joint = np.concatenate([moving_labels, gap, fixed_labels])
            joint_spacing = spacing
            start = moving_labels.shape[0] + _GAP_SLICES
        else:
            # two slices far apart: nothing blurs or correlates from one to the other
            joint = np.stack([moving_labels, fixed_labels])
            joint_spacing = (*spacing, _GAP_2D_MM)
            start = 1

        def split(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            if config.dim == 3:
                return image[: moving_labels.shape[0]], image[start:]
            return image[0], image[start]

        hu = render.render_ct(joint, rng, spacing=joint_spacing, tissue_of_label=tissue_of_label)
        thickness = None
        if config.dim == 3 and rng.random() < config.thick_slice_probability:
            thickness = config.spacing * float(rng.uniform(2, 3))
        mr = render.render_mr(
            joint,
            rng,
            spacing=joint_spacing,
            contrast=config.mr_contrast,
            slice_thickness_mm=thickness,
            tissue_of_label=tissue_of_label,
        )
        anatomy, acquired = [], []
        for ct_part, mr_part in zip(split(hu), split(mr)):
            anatomy += [_ct_unit(ct_part), _mr_unit(mr_part)]
            if rng.random() < config.couch_probability and (ct_part > -500).any():
                ct_part = render.add_couch(ct_part, rng, spacing=spacing)
            if rng.random() < config.crop_probability:
                ct_part = _crop(rng, ct_part, DEFAULT_HU_WINDOW[0])
            if rng.random() < config.crop_probability:
                mr_part = _crop(rng, mr_part, 0.0)
            acquired += [_ct_unit(ct_part), _mr_unit(mr_part)]
        return anatomy, acquired

    def pair(self, index: int, seed: int, source: str | None = None) -> GeneratedPair:
        """Sample ``index`` of the stream ``seed``; the same arguments give the same pair.

        ``source`` forces the label source; by default it is drawn with the weights.
        """
        started = time.perf_counter()
        config = self.config
        rng = _rng(seed, index)
        weights = np.asarray(config.weights, float)
        drawn = SOURCES[int(rng.choice(len(SOURCES), p=weights / weights.sum()))]
        source = source or drawn
        moving_labels, tissue_of_label = self.labels(rng, source)
        displacement = pair_displacement(rng, config.shape, config.spacing, config)
        moving = torch.from_numpy(moving_labels.astype(np.int64))
        fixed = warp(moving[None, None], displacement[None], mode="nearest", padding_mode="zeros")[
            0, 0
        ]
        fixed_labels = fixed.numpy().astype(np.uint8)
        anatomy, acquired = self._render(moving_labels, fixed_labels, tissue_of_label, rng)
        acquired_images = dict(zip(_IMAGE_NAMES, (torch.from_numpy(a) for a in acquired)))
        images = acquired_images
        if not config.artefacts_in_loss:
            images = dict(zip(_IMAGE_NAMES, (torch.from_numpy(a) for a in anatomy)))
        return GeneratedPair(
            **images,
            acquired=acquired_images,
            moving_labels=moving,
            fixed_labels=fixed,
            displacement=displacement,
            source=source,
            seconds=time.perf_counter() - started,
        )


class GeneratedPairs(torch.utils.data.Dataset):
    """Generated pairs as a map-style dataset: item ``k`` is :meth:`PairGenerator.pair` ``k``.

    Args:
        config: the generator's settings.
        seed: the stream (``config.seed`` for training, ``config.validation_seed`` for
            validation).
        length: the number of items (any index is valid; this is only ``len()``).
        direction: ``mr_to_ct`` (the network sees ``(CT_j, MR_i)``), ``ct_to_mr``
            (``(MR_j, CT_i)``) or ``both``: even items MR to CT, odd items CT to MR.
        sources: if given, item ``k`` takes its label map from ``sources[k % len(sources)]``
            instead of a weighted draw.

    Items are dicts of tensors: ``moving_ct``, ``moving_mr``, ``fixed_ct``, ``fixed_mr``
    (the loss's images) and ``network_fixed``, ``network_moving`` (the acquired images the
    network sees, per the direction) ``(1, *shape)`` float32, ``moving_labels``,
    ``fixed_labels`` ``(1, *shape)`` int64, ``displacement`` ``(ndim, *shape)`` voxels,
    ``ct_moving`` (bool), ``source`` (the label source's name) and ``seconds``.
    """

    def __init__(
        self,
        config: GeneratorConfig,
        *,
        seed: int,
        length: int,
        direction: str = "both",
        sources: Sequence[str] | None = None,
    ) -> None:
        if direction not in ("mr_to_ct", "ct_to_mr", "both"):
            raise IntermodalError(
                f"direction must be mr_to_ct, ct_to_mr or both, not {direction!r}"
            )
        self.generator = PairGenerator(config)
        self.seed = seed
        self.length = length
        self.direction = direction
        self.sources = list(sources or ())

    def __len__(self) -> int:
        return self.length

    def ct_moving(self, index: int) -> bool:
        """Whether item ``index`` shows the network ``(MR_j, CT_i)``."""
        return self.direction == "ct_to_mr" or (self.direction == "both" and index % 2 == 1)

    def __getitem__(self, index: int) -> dict[str, Any]:
        source = self.sources[index % len(self.sources)] if self.sources else None
        pair = self.generator.pair(index, self.seed, source)
        item: dict[str, Any] = {
            name: getattr(pair, name)[None]
            for name in (
                "moving_ct",
                "moving_mr",
                "fixed_ct",
                "fixed_mr",
                "moving_labels",
                "fixed_labels",
            )
        }
        ct_moving = self.ct_moving(index)
        seen = pair.acquired
        item["network_fixed"] = (seen["fixed_mr"] if ct_moving else seen["fixed_ct"])[None]
        item["network_moving"] = (seen["moving_ct"] if ct_moving else seen["moving_mr"])[None]
        item["displacement"] = pair.displacement
        item["ct_moving"] = ct_moving
        item["source"] = pair.source
        item["seconds"] = pair.seconds
        return item


def collate_pairs(items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Stack dataset items into a batch: tensors gain a first axis, flags become a tensor."""
    batch: dict[str, Any] = {}
    for name, value in items[0].items():
        values = [item[name] for item in items]
        if isinstance(value, Tensor):
            batch[name] = torch.stack(values)
        elif isinstance(value, bool):
            batch[name] = torch.tensor(values)
        else:
            batch[name] = values
    return batch


def worker_init(worker_id: int) -> None:
    """One thread per generator process: the cores belong to training and to each other."""
    torch.set_num_threads(1)
