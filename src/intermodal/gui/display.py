"""Slice geometry and the view modes, as pure NumPy: no Qt, no torch.

Every view shows a 2D slice of arrays that all lie on the fixed image's grid, in SimpleITK
array order ``(z, y, x)`` (``(y, x)`` in 2D). A slice is oriented for display, rows top to
bottom and columns left to right:

- axial: rows along y, columns along x (patient anterior at the top, patient left on the
  right for an LPS image with identity direction: the radiological convention);
- coronal: rows along z, flipped so that superior is at the top; columns along x;
- sagittal: rows along z, flipped; columns along y;
- a 2D image has one view, ``"slice"``: rows along y, columns along x.

Images are shown as displayed in array order; a non-identity direction is not re-oriented.
The compositing functions take slices already mapped to ``[0, 1]`` by a window (see
:func:`to_unit`) and return ``(H, W, 3)`` uint8 RGB arrays.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from intermodal.report import checkerboard

PLANES_3D = ("axial", "coronal", "sagittal")
PLANE_2D = "slice"

VIEW_MODES = (
    "fixed",
    "moving",
    "blend",
    "checkerboard",
    "difference",
    "edges",
    "grid",
    "jacobian",
    "labels",
)
"""Every view mode, in menu order (shortcuts 1-9 follow it)."""

MODE_TITLES = {
    "fixed": "Fixed",
    "moving": "Moving",
    "blend": "Blend",
    "checkerboard": "Checkerboard",
    "difference": "Difference",
    "edges": "Edge overlay",
    "grid": "Deformation grid",
    "jacobian": "Jacobian determinant",
    "labels": "Label outlines",
}

WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "soft tissue": (40.0, 400.0),
    "bone": (400.0, 1800.0),
    "lung": (-600.0, 1500.0),
}
"""CT window presets as ``(level, width)`` in HU."""

AUTO_PERCENTILES = (0.5, 99.5)
"""Percentiles of the whole volume that auto-levels maps to black and white."""

# Planes of a 3D volume: (slice axis, row axis, column axis, rows flipped).
_PLANE_AXES = {
    "axial": (0, 1, 2, False),
    "coronal": (1, 0, 2, True),
    "sagittal": (2, 0, 1, True),
}

JACOBIAN_LOG2_RANGE = 1.0
"""The Jacobian map saturates at det = 2**-1 (blue) and det = 2**1 (red)."""

FOLDING_COLOUR = (0, 255, 0)
EDGE_COLOUR = (255, 60, 40)
GRID_COLOUR = (255, 210, 0)
_SHRINK_COLOUR = np.array([0.10, 0.35, 1.00])
_EXPAND_COLOUR = np.array([1.00, 0.15, 0.10])
_LABEL_PALETTE = np.array(
    [
        (230, 25, 75),
        (60, 180, 75),
        (255, 225, 25),
        (0, 130, 200),
        (245, 130, 48),
        (145, 30, 180),
        (70, 240, 240),
        (240, 50, 230),
        (210, 245, 60),
        (250, 190, 212),
    ],
    dtype=np.uint8,
)


def preset_range(name: str) -> tuple[float, float]:
    """The ``(low, high)`` display range of a CT preset, in HU.

    Raises:
        KeyError: ``name`` is not one of :data:`WINDOW_PRESETS`.
    """
    level, width = WINDOW_PRESETS[name]
    return level - width / 2, level + width / 2


def auto_levels(
    values: np.ndarray, percentiles: Sequence[float] = AUTO_PERCENTILES
) -> tuple[float, float]:
    """A display range from percentiles of ``values`` (MR auto-levels).

    Large volumes are subsampled to about a million values. A constant image gets a range of
    width 1 around its value, so that it still displays.
    """
    flat = np.asarray(values).ravel()
    flat = flat[:: max(1, flat.size // 1_000_000)]
    low, high = (float(v) for v in np.percentile(flat, percentiles))
    if not high > low:
        low, high = low - 0.5, low + 0.5
    return low, high


def to_unit(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map ``[low, high]`` linearly to ``[0, 1]``, clipped; float32 out."""
    scale = 1.0 / (high - low) if high > low else 1.0
    return np.clip((np.asarray(values, np.float32) - low) * scale, 0.0, 1.0)


@dataclass(frozen=True)
class Grid:
    """The fixed image's voxel grid and how each view cuts it.

    Attributes:
        shape: array shape, ``(z, y, x)`` or ``(y, x)``.
        spacing: voxel size in mm, in the same (array) order.
    """

    shape: tuple[int, ...]
    spacing: tuple[float, ...]

    @property
    def ndim(self) -> int:
        """2 or 3."""
        return len(self.shape)

    @property
    def planes(self) -> tuple[str, ...]:
        """The views this grid gets: three planes in 3D, one in 2D."""
        return PLANES_3D if self.ndim == 3 else (PLANE_2D,)

    def _axes(self, plane: str) -> tuple[int | None, int, int, bool]:
        if self.ndim == 2:
            if plane != PLANE_2D:
                raise ValueError(f"a 2D grid has only the {PLANE_2D!r} view, not {plane!r}")
            return None, 0, 1, False
        if plane not in _PLANE_AXES:
            raise ValueError(f"plane must be one of {PLANES_3D}, not {plane!r}")
        return _PLANE_AXES[plane]

    def slice_count(self, plane: str) -> int:
        """How many slices ``plane`` has (1 for the 2D view)."""
        axis = self._axes(plane)[0]
        return 1 if axis is None else self.shape[axis]

    def pixel_spacing(self, plane: str) -> tuple[float, float]:
        """``(row, column)`` pixel size of a slice of ``plane``, in mm."""
        _, row, col, _ = self._axes(plane)
        return self.spacing[row], self.spacing[col]

    def slice_shape(self, plane: str) -> tuple[int, int]:
        """``(rows, columns)`` of a slice of ``plane``."""
        _, row, col, _ = self._axes(plane)
        return self.shape[row], self.shape[col]

    def extract(self, array: np.ndarray, plane: str, index: int) -> np.ndarray:
        """Slice ``index`` of ``plane`` from ``array`` (shape :attr:`shape`), display-oriented."""
        axis, _, _, flipped = self._axes(plane)
        view = array if axis is None else np.take(array, index, axis=axis)
        return view[::-1] if flipped else view

    def vectors(self, field: np.ndarray, plane: str, index: int) -> tuple[np.ndarray, np.ndarray]:
        """In-plane components of a voxel displacement field, in display pixels.

        Args:
            field: ``(ndim, *shape)`` displacement in voxels, channel ``i`` along array axis
                ``i`` (the layout of ``docs/conventions.md``).
            plane: the view.
            index: the slice.

        Returns:
            ``(u_row, u_col)``: displacement along display rows (positive downwards) and
            columns, each of the slice's shape.
        """
        _, row, col, flipped = self._axes(plane)
        u_row = self.extract(field[row], plane, index)
        u_col = self.extract(field[col], plane, index)
        return (-u_row if flipped else u_row), u_col

    def to_display(self, plane: str, voxel: Sequence[int]) -> tuple[int, int, int]:
        """``(slice, row, column)`` of array-order ``voxel`` in ``plane``."""
        axis, row, col, flipped = self._axes(plane)
        index = 0 if axis is None else int(voxel[axis])
        r = int(voxel[row])
        return index, (self.shape[row] - 1 - r if flipped else r), int(voxel[col])

    def to_voxel(self, plane: str, index: int, row: int, column: int) -> tuple[int, ...]:
        """The array-order voxel at ``(row, column)`` of slice ``index`` of ``plane``.

        Positions outside the grid are clamped to its edge.
        """
        axis, row_axis, col_axis, flipped = self._axes(plane)
        voxel = [0] * self.ndim
        if axis is not None:
            voxel[axis] = index
        voxel[row_axis] = self.shape[row_axis] - 1 - row if flipped else row
        voxel[col_axis] = column
        return tuple(int(np.clip(v, 0, n - 1)) for v, n in zip(voxel, self.shape))

    def centre(self) -> tuple[int, ...]:
        """The central voxel."""
        return tuple(n // 2 for n in self.shape)


def gray(unit: np.ndarray) -> np.ndarray:
    """``(H, W)`` values in ``[0, 1]`` -> ``(H, W, 3)`` uint8 gray."""
    value = np.round(np.clip(unit, 0.0, 1.0) * 255).astype(np.uint8)
    return np.repeat(value[..., None], 3, axis=-1)


def blend(fixed: np.ndarray, moving: np.ndarray, alpha: float) -> np.ndarray:
    """``(1 - alpha) * fixed + alpha * moving``: 0 shows the fixed image, 1 the moving one."""
    alpha = float(np.clip(alpha, 0.0, 1.0))
    return (1.0 - alpha) * fixed + alpha * moving


def difference(fixed: np.ndarray, moving: np.ndarray) -> np.ndarray:
    """``fixed - moving`` shown on gray: mid-gray is no difference, black is moving brighter."""
    return np.clip(0.5 + 0.5 * (fixed - moving), 0.0, 1.0)


def edge_mask(unit: np.ndarray, percentile: float = 90.0) -> np.ndarray:
    """Thin edges: pixels whose gradient magnitude is in the top ``100 - percentile`` % of the
    slice and is a local maximum across the edge (along the row or the column, whichever the
    gradient points along more), so that an outline is about one pixel wide."""
    if min(unit.shape) < 3:
        return np.zeros(unit.shape, bool)
    grad_row, grad_col = np.gradient(unit.astype(np.float32))
    magnitude = np.hypot(grad_row, grad_col)
    if not magnitude.any():
        return np.zeros(unit.shape, bool)
    threshold = max(float(np.percentile(magnitude, percentile)), 1e-3)
    padded = np.pad(magnitude, 1, mode="edge")
    # ">=" on one side and ">" on the other: of a two-pixel plateau, only one pixel is kept
    peak_rows = (magnitude >= padded[:-2, 1:-1]) & (magnitude > padded[2:, 1:-1])
    peak_cols = (magnitude >= padded[1:-1, :-2]) & (magnitude > padded[1:-1, 2:])
    peak = np.where(np.abs(grad_row) >= np.abs(grad_col), peak_rows, peak_cols)
    return (magnitude >= threshold) & peak


def grid_lines(
    u_row: np.ndarray, u_col: np.ndarray, spacing: Sequence[float], grid_mm: float
) -> tuple[np.ndarray, np.ndarray]:
    """Polylines of a regular grid on the fixed image, each point moved by the displacement.

    Lines run along pixel rows and columns every ``grid_mm`` mm (nearest pixel centre); each
    of their points ``x`` is drawn at ``x + u(x)``, the position in the moving image that the
    fixed point is taken from. With zero displacement the lines are straight and evenly
    spaced; a deformation bends them.

    Args:
        u_row: displacement along rows, in pixels, ``(H, W)``.
        u_col: displacement along columns, in pixels, ``(H, W)``.
        spacing: ``(row, column)`` pixel size in mm.
        grid_mm: distance between lines in mm.

    Returns:
        ``(x, y)`` in mm from the slice's top-left corner (x along columns, y along rows),
        one point per pixel along each line; lines are separated by a NaN.
    """
    if not grid_mm > 0:
        raise ValueError(f"grid spacing must be positive (mm), not {grid_mm}")
    height, width = u_row.shape
    row_step, col_step = float(spacing[0]), float(spacing[1])
    rows = np.unique(np.round(np.arange(0.0, height * row_step, grid_mm) / row_step))
    cols = np.unique(np.round(np.arange(0.0, width * col_step, grid_mm) / col_step))
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    gap = np.array([np.nan])
    all_cols = np.arange(width, dtype=np.float64)
    all_rows = np.arange(height, dtype=np.float64)
    for row in rows.astype(int):
        row = min(row, height - 1)
        xs += [(all_cols + 0.5 + u_col[row]) * col_step, gap]
        ys += [(row + 0.5 + u_row[row]) * row_step, gap]
    for col in cols.astype(int):
        col = min(col, width - 1)
        xs += [(col + 0.5 + u_col[:, col]) * col_step, gap]
        ys += [(all_rows + 0.5 + u_row[:, col]) * row_step, gap]
    return np.concatenate(xs), np.concatenate(ys)


def overlay(base: np.ndarray, mask: np.ndarray, colour: Sequence[int]) -> np.ndarray:
    """``base`` RGB with ``colour`` painted where ``mask`` is true (a copy)."""
    out = base.copy()
    out[mask] = np.asarray(colour, np.uint8)
    return out


def jacobian_colours(base: np.ndarray, det: np.ndarray, opacity: float = 0.6) -> np.ndarray:
    """The Jacobian determinant as a heat map over ``base``, folding in bright green.

    ``log2(det)`` is clipped to ``[-1, 1]``: blue where the transform shrinks the moving image
    into the fixed (det < 1), red where it expands it (det > 1), clear at det = 1. Voxels with
    ``det <= 0`` (folding) are painted :data:`FOLDING_COLOUR`, opaque.

    Args:
        base: ``(H, W)`` fixed image in ``[0, 1]``.
        det: ``(H, W)`` Jacobian determinant.
        opacity: weight of the colour at saturation.
    """
    det = np.asarray(det, np.float64)
    log_det = np.log2(np.clip(det, 1e-6, None)) / JACOBIAN_LOG2_RANGE
    strength = (np.clip(np.abs(log_det), 0.0, 1.0) * opacity)[..., None]
    colour = np.where((log_det < 0)[..., None], _SHRINK_COLOUR, _EXPAND_COLOUR)
    rgb = base[..., None] * (1.0 - strength) + colour * strength
    out = np.round(np.clip(rgb, 0.0, 1.0) * 255).astype(np.uint8)
    out[det <= 0] = FOLDING_COLOUR
    return out


def label_colour(label: int) -> tuple[int, int, int]:
    """The outline colour of label value ``label`` (> 0)."""
    r, g, b = _LABEL_PALETTE[(int(label) - 1) % len(_LABEL_PALETTE)]
    return int(r), int(g), int(b)


def label_outlines(base: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Outline every label (> 0) of a 2D label map on ``base`` RGB, each in its colour.

    A pixel is on an outline when it belongs to a label and a 4-neighbour has another value.
    """
    labels = np.asarray(labels).astype(np.int64)
    boundary = np.zeros(labels.shape, bool)
    boundary[1:, :] |= labels[1:, :] != labels[:-1, :]
    boundary[:-1, :] |= labels[:-1, :] != labels[1:, :]
    boundary[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    boundary[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    boundary &= labels > 0
    out = base.copy()
    for value in np.unique(labels[boundary]):
        out[boundary & (labels == value)] = label_colour(int(value))
    return out


@dataclass
class SliceLayers:
    """What one view has to draw: slices of the layers on the fixed grid.

    Attributes:
        fixed: the fixed image, windowed to ``[0, 1]``.
        moving: the moving image on the fixed grid (before or after registration), windowed,
            or ``None``.
        spacing: ``(row, column)`` pixel size in mm.
        jacobian: Jacobian determinant, or ``None`` without a result.
        u_row: displacement along rows in pixels, or ``None`` without a result.
        u_col: displacement along columns in pixels, or ``None``.
        labels: moving label map on the fixed grid, or ``None``.
    """

    fixed: np.ndarray
    moving: np.ndarray | None
    spacing: tuple[float, float]
    jacobian: np.ndarray | None = None
    u_row: np.ndarray | None = None
    u_col: np.ndarray | None = None
    labels: np.ndarray | None = None


@dataclass
class RenderOptions:
    """Settings of the view modes.

    Attributes:
        blend: 0 shows the fixed image, 1 the moving one.
        tile_mm: checkerboard tile size in mm.
        grid_mm: deformation grid line spacing in mm.
    """

    blend: float = 0.5
    tile_mm: float = 20.0
    grid_mm: float = 10.0


def available(mode: str, layers: SliceLayers) -> bool:
    """Whether ``layers`` holds what ``mode`` needs (else the fixed image is shown alone)."""
    if mode == "fixed":
        return True
    if mode == "grid":
        return layers.u_row is not None and layers.u_col is not None
    if mode == "jacobian":
        return layers.jacobian is not None
    if mode == "labels":
        return layers.labels is not None
    return layers.moving is not None


def render(mode: str, layers: SliceLayers, options: RenderOptions | None = None) -> np.ndarray:
    """Compose one view: ``(H, W, 3)`` uint8 RGB of ``layers`` in view ``mode``.

    A mode whose layer is missing (no moving image, no result, no labels) shows the fixed
    image alone; :func:`available` tells which.

    Raises:
        ValueError: ``mode`` is not one of :data:`VIEW_MODES`.
    """
    if mode not in VIEW_MODES:
        raise ValueError(f"view mode must be one of {VIEW_MODES}, not {mode!r}")
    options = options or RenderOptions()
    fixed, moving = layers.fixed, layers.moving
    if not available(mode, layers):
        return gray(fixed)
    if mode == "fixed":
        return gray(fixed)
    if mode == "moving":
        return gray(moving)
    if mode == "blend":
        return gray(blend(fixed, moving, options.blend))
    if mode == "checkerboard":
        return gray(checkerboard(fixed, moving, options.tile_mm, layers.spacing))
    if mode == "difference":
        return gray(difference(fixed, moving))
    if mode == "edges":
        return overlay(gray(fixed), edge_mask(moving), EDGE_COLOUR)
    if mode == "grid":  # the lines are drawn over it as vectors: see grid_lines
        return gray(fixed)
    if mode == "jacobian":
        return jacobian_colours(fixed, layers.jacobian)
    return label_outlines(gray(fixed), layers.labels)
