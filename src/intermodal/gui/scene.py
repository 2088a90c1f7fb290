"""What the window shows, without Qt: the loaded images and a result, as arrays on the fixed grid.

A :class:`Scene` holds the fixed image, the moving image, an optional moving-space label map,
and either an in-memory :class:`~intermodal.registration.RegistrationResult` (which can be
exported) or a result read back from an output folder. Every array it hands to the views lies
on the fixed image's grid, in array order.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import SimpleITK as sitk

from intermodal import grids
from intermodal.errors import IntermodalError
from intermodal.gui.display import Grid

if TYPE_CHECKING:
    from intermodal.registration import RegistrationResult

MOVING_STATES = ("before", "initial", "after")
"""How the moving image is shown: as read (identity), after the initial alignment, registered."""

RESULT_FILES = {
    "report": "report.json",
    "warped": "warped.nii.gz",
    "jacobian": "jacobian.nii.gz",
    "displacement": "displacement.nii.gz",
    "affine": "affine.mat",
    "warped_labels": "warped_labels.nii.gz",
}


@dataclass
class Layer:
    """One loaded image.

    Attributes:
        image: the image as :func:`intermodal.io.read_image` returned it.
        array: its voxels in array order (float32).
        modality: ``"ct"`` or ``"mr"``.
        source: the file or folder it was read from (``None`` when made in memory).
    """

    image: sitk.Image
    array: np.ndarray
    modality: str
    source: str | None = None

    @property
    def unit(self) -> str:
        """The unit of the voxel values: HU for CT, scanner units for MR."""
        return "HU" if self.modality == "ct" else "a.u."

    @property
    def name(self) -> str:
        """A short name for titles: the file name, or ``"(in memory)"``."""
        return Path(self.source).name if self.source else "(in memory)"


def make_layer(image: sitk.Image, source: str | os.PathLike | None = None) -> Layer:
    """Wrap an image read by :func:`intermodal.io.read_image` (modality from its tag or values)."""
    from intermodal.preprocess import detect_modality

    array = sitk.GetArrayFromImage(image).astype(np.float32, copy=False)
    return Layer(image, array, detect_modality(image), None if source is None else str(source))


def read_layer(path: str | os.PathLike) -> Layer:
    """Read a file or DICOM folder.

    Raises:
        IntermodalError: a one-line message naming ``path`` and the problem.
    """
    from intermodal.io import read_image

    return make_layer(read_image(path), path)


def resample_onto(
    image: sitk.Image,
    reference: sitk.Image,
    transform: sitk.Transform | None = None,
    *,
    labels: bool = False,
) -> np.ndarray:
    """``image`` resampled onto ``reference``'s grid (identity by default), as an array.

    Linear interpolation with the image's minimum outside its field of view, or nearest
    neighbour with 0 for label maps.
    """
    transform = transform or sitk.Transform(reference.GetDimension(), sitk.sitkIdentity)
    if labels:
        out = sitk.Resample(image, reference, transform, sitk.sitkNearestNeighbor, 0.0)
        return sitk.GetArrayFromImage(out)
    low = float(sitk.GetArrayViewFromImage(image).min())
    out = sitk.Resample(image, reference, transform, sitk.sitkLinear, low, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(out)


def displacement_voxels(displacement: sitk.Image) -> np.ndarray:
    """An LPS-mm displacement image -> ``(ndim, *shape)`` voxel displacement, array order.

    The inverse of the conversion in ``docs/conventions.md``: a physical vector ``d`` (mm) is
    ``D^T d / spacing`` in index units (``D`` the direction matrix), then the axes are reversed
    into array order.
    """
    ndim = displacement.GetDimension()
    vectors = sitk.GetArrayFromImage(displacement).astype(np.float64)  # (*shape, ndim), xyz mm
    direction = np.asarray(displacement.GetDirection()).reshape(ndim, ndim)
    index = vectors @ direction / np.asarray(displacement.GetSpacing())
    return np.moveaxis(index[..., ::-1], -1, 0).astype(np.float32)


# images that the app reads back from files (float32 NIfTI headers) count as on one grid
# within this many mm (and direction cosines within as much)
FILE_GRID_TOLERANCE = 1e-3


def same_grid(a: sitk.Image, b: sitk.Image) -> bool:
    """:func:`intermodal.grids.same_grid` to :data:`FILE_GRID_TOLERANCE`."""
    return grids.same_grid(a, b, FILE_GRID_TOLERANCE)


@dataclass
class ResultLayers:
    """A registration result as arrays on the fixed grid.

    Attributes:
        report: the ``report.json`` contents.
        warped: the registered moving image.
        jacobian: the Jacobian determinant of the deformable part.
        displacement: ``(ndim, *shape)`` voxel displacement of the deformable part.
        affine: the initial transform (``None`` when unknown).
        warped_labels: the moving label map after registration, or ``None``.
        result: the in-memory result when it was computed here (exportable), else ``None``.
        folder: the output folder it was read from, else ``None``.
    """

    report: dict[str, Any]
    warped: np.ndarray
    jacobian: np.ndarray
    displacement: np.ndarray
    affine: sitk.Transform | None = None
    warped_labels: np.ndarray | None = None
    result: RegistrationResult | None = None
    folder: Path | None = None


def result_layers(result: RegistrationResult, labels: sitk.Image | None = None) -> ResultLayers:
    """Arrays of an in-memory result, with ``labels`` (moving space) warped when given."""
    warped_labels = None
    if labels is not None:
        warped_labels = sitk.GetArrayFromImage(result.warp_image(labels, labels=True))
    return ResultLayers(
        report=result.report,
        warped=sitk.GetArrayFromImage(result.warped).astype(np.float32, copy=False),
        jacobian=sitk.GetArrayFromImage(result.jacobian).astype(np.float32, copy=False),
        displacement=displacement_voxels(result.displacement),
        affine=result.affine,
        warped_labels=warped_labels,
        result=result,
    )


@dataclass
class SavedResult:
    """An output folder of ``intermodal register`` read back.

    Attributes:
        folder: the folder.
        report: ``report.json``.
        warped: ``warped.nii.gz``.
        jacobian: ``jacobian.nii.gz``.
        displacement: ``displacement.nii.gz``.
        affine: ``affine.mat``, or ``None`` when absent.
        warped_labels: ``warped_labels.nii.gz``, or ``None`` when absent.
    """

    folder: Path
    report: dict[str, Any]
    warped: sitk.Image
    jacobian: sitk.Image
    displacement: sitk.Image
    affine: sitk.Transform | None = None
    warped_labels: sitk.Image | None = None

    def input_path(self, role: str) -> Path | None:
        """The fixed or moving image the folder came from, when it still exists.

        Looks at ``inputs_paths`` in the report (written by ``intermodal register`` and by the
        app's export; relative paths are taken from the folder's parent) and then at the
        ``fixed_*``/``moving_*`` images ``intermodal demo`` writes into the folder.
        """
        recorded = (self.report.get("inputs_paths") or {}).get(role)
        if recorded:
            path = Path(recorded)
            for candidate in (path, self.folder.parent / path):
                if candidate.exists():
                    return candidate
        found = sorted(self.folder.glob(f"{role}_*.nii.gz"))
        return found[0] if found else None

    def layers(self, fixed: sitk.Image) -> ResultLayers:
        """The arrays on ``fixed``'s grid.

        Raises:
            IntermodalError: ``fixed`` is not the grid the result was written on.
        """
        if not same_grid(fixed, self.warped):
            raise IntermodalError(
                f"{self.folder}: the result lies on a {self.warped.GetSize()} grid that does not "
                f"match the fixed image ({fixed.GetSize()}); open the fixed image it was made with"
            )
        labels = None
        if self.warped_labels is not None:
            labels = sitk.GetArrayFromImage(self.warped_labels)
        return ResultLayers(
            report=self.report,
            warped=sitk.GetArrayFromImage(self.warped).astype(np.float32, copy=False),
            jacobian=sitk.GetArrayFromImage(self.jacobian).astype(np.float32, copy=False),
            displacement=displacement_voxels(self.displacement),
            affine=self.affine,
            warped_labels=labels,
            folder=self.folder,
        )


def read_result_folder(folder: str | os.PathLike) -> SavedResult:
    """Read an output folder written by ``intermodal register`` (or by the app's Export).

    Raises:
        IntermodalError: the folder is missing, lacks one of ``report.json``, ``warped.nii.gz``,
            ``jacobian.nii.gz``, ``displacement.nii.gz``, or one of them cannot be read.
    """
    from intermodal.io import read_image

    folder = Path(folder)
    if not folder.is_dir():
        raise IntermodalError(f"{folder}: result folder not found")
    required = ("report", "warped", "jacobian", "displacement")
    missing = [RESULT_FILES[k] for k in required if not (folder / RESULT_FILES[k]).is_file()]
    if missing:
        raise IntermodalError(
            f"{folder}: not an intermodal output folder (missing {', '.join(missing)})"
        )
    report_path = folder / RESULT_FILES["report"]
    try:
        report = json.loads(report_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise IntermodalError(f"{report_path}: not a readable JSON report ({error})") from None
    if not isinstance(report, dict):
        raise IntermodalError(f"{report_path}: expected a JSON object")
    displacement_path = folder / RESULT_FILES["displacement"]
    try:
        displacement = sitk.ReadImage(str(displacement_path), sitk.sitkVectorFloat64)
    except RuntimeError:
        raise IntermodalError(f"{displacement_path}: not a readable displacement field") from None
    affine = None
    affine_path = folder / RESULT_FILES["affine"]
    if affine_path.is_file():
        try:
            affine = sitk.ReadTransform(str(affine_path))
        except RuntimeError:
            raise IntermodalError(f"{affine_path}: not a readable ITK transform") from None
    labels_path = folder / RESULT_FILES["warped_labels"]
    warped_labels = sitk.ReadImage(str(labels_path)) if labels_path.is_file() else None
    return SavedResult(
        folder=folder,
        report=report,
        warped=read_image(folder / RESULT_FILES["warped"]),
        jacobian=read_image(folder / RESULT_FILES["jacobian"]),
        displacement=displacement,
        affine=affine,
        warped_labels=warped_labels,
    )


@dataclass
class Scene:
    """The images and the result the window shows.

    Attributes:
        fixed: the fixed image, or ``None``.
        moving: the moving image, or ``None``.
        labels: a label map in the moving image's space, or ``None``.
        result: the current result, or ``None``.
    """

    fixed: Layer | None = None
    moving: Layer | None = None
    labels: sitk.Image | None = None
    result: ResultLayers | None = None
    _cache: dict[str, np.ndarray | None] = field(default_factory=dict, repr=False)

    @property
    def grid(self) -> Grid | None:
        """The fixed image's grid, or ``None`` before a fixed image is loaded."""
        if self.fixed is None:
            return None
        spacing = tuple(float(s) for s in self.fixed.image.GetSpacing()[::-1])
        return Grid(tuple(self.fixed.array.shape), spacing)

    def set_fixed(self, layer: Layer) -> None:
        """Replace the fixed image; the result is dropped, and so are the moving image and
        labels when they do not have the new image's dimension (a new pair is being opened)."""
        ndim = layer.image.GetDimension()
        if self.moving is not None and self.moving.image.GetDimension() != ndim:
            self.moving = None
        if self.labels is not None and self.labels.GetDimension() != ndim:
            self.labels = None
        self.fixed = layer
        self.result = None
        self._cache.clear()

    def _check_dimension(self, image: sitk.Image, what: str, source: str | None) -> None:
        if self.fixed is not None and image.GetDimension() != self.fixed.image.GetDimension():
            raise IntermodalError(
                f"{source or what}: the {what} is {image.GetDimension()}D but the fixed image "
                f"is {self.fixed.image.GetDimension()}D; both must be 2D or both 3D"
            )

    def set_moving(self, layer: Layer) -> None:
        """Replace the moving image; the result is dropped.

        Raises:
            IntermodalError: the moving image is 2D and the fixed 3D, or the other way round.
        """
        self._check_dimension(layer.image, "moving image", layer.source)
        self.moving = layer
        self.result = None
        self._cache.clear()

    def set_labels(self, labels: sitk.Image, source: str | None = None) -> None:
        """Set the moving-space label map (its warped copy is made on the next result).

        Raises:
            IntermodalError: the label map's dimension is not the fixed image's.
        """
        self._check_dimension(labels, "label map", source)
        self.labels = labels
        self._cache.pop("labels:before", None)
        self._cache.pop("labels:initial", None)

    def set_result(self, result: ResultLayers | None) -> None:
        """Show ``result`` (or none)."""
        self.result = result
        self._cache.pop("moving:initial", None)
        self._cache.pop("labels:initial", None)

    def states(self) -> tuple[str, ...]:
        """The moving states that can be shown now."""
        if self.moving is None or self.fixed is None:
            return ()
        if self.result is None:
            return ("before",)
        return MOVING_STATES if self.result.affine is not None else ("before", "after")

    def _transform(self, state: str) -> sitk.Transform | None:
        if state == "initial" and self.result is not None:
            return self.result.affine
        return None

    def moving_on_fixed(self, state: str) -> np.ndarray | None:
        """The moving image on the fixed grid in ``state`` (raw values), or ``None``."""
        if self.fixed is None or self.moving is None:
            return None
        if state == "after":
            return None if self.result is None else self.result.warped
        if state == "initial" and (self.result is None or self.result.affine is None):
            return None
        key = f"moving:{state}"
        if key not in self._cache:
            self._cache[key] = resample_onto(
                self.moving.image, self.fixed.image, self._transform(state)
            )
        return self._cache[key]

    def labels_on_fixed(self, state: str) -> np.ndarray | None:
        """The label map on the fixed grid in ``state``, or ``None``."""
        if self.fixed is None:
            return None
        if state == "after":
            return None if self.result is None else self.result.warped_labels
        if self.labels is None or (state == "initial" and self._transform(state) is None):
            return None
        key = f"labels:{state}"
        if key not in self._cache:
            self._cache[key] = resample_onto(
                self.labels, self.fixed.image, self._transform(state), labels=True
            )
        return self._cache[key]

    def physical_point(self, voxel: tuple[int, ...]) -> tuple[float, ...]:
        """LPS mm ``(x, y[, z])`` of an array-order voxel of the fixed image."""
        if self.fixed is None:
            raise IntermodalError("no fixed image is loaded")
        return self.fixed.image.TransformIndexToPhysicalPoint([int(v) for v in voxel[::-1]])

    def describe(self, voxel: tuple[int, ...], state: str) -> str:
        """The status-bar readout at ``voxel``: position in mm and the values under it.

        Example: ``"(12.5, -30.0, 4.0) mm  fixed 40 HU  moving 312.4 a.u.  J 1.03"``.
        """
        if self.fixed is None:
            return ""
        point = ", ".join(f"{c:.1f}" for c in self.physical_point(voxel))
        parts = [f"({point}) mm", f"fixed {_value(self.fixed.array[voxel])} {self.fixed.unit}"]
        moving = self.moving_on_fixed(state)
        if moving is not None and self.moving is not None:
            parts.append(f"moving {_value(moving[voxel])} {self.moving.unit}")
        if self.result is not None:
            parts.append(f"J {float(self.result.jacobian[voxel]):.3f}")
        return "  ".join(parts)


def _value(value: float) -> str:
    value = float(value)
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.1f}"


def metrics_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    """The figures of a ``report.json`` for the metrics panel, as ``(name, value)`` rows.

    The warnings first (e.g. a moving image found turned), then the times (s) per stage and
    in total, NMI before, after the initial alignment and after, and the Jacobian statistics
    (non-positive fraction in %, SDlogJ, min, max, mean). Absent entries are left out.
    """
    rows: list[tuple[str, str]] = [("warning", text) for text in report.get("warnings") or []]
    turn = ((report.get("stages") or {}).get("align") or {}).get("half_turn_deg")
    if turn:
        turned = [axis for axis, angle in zip("xyz", turn, strict=False) if angle]
        axes = " and ".join(f"180° about {axis}" for axis in turned)
        rows.append(("moving image turned", axes))
    nmi = report.get("nmi") or {}
    for key, name in (
        ("before", "NMI before"),
        ("after_initial", "NMI initial"),
        ("after", "NMI after"),
    ):
        if key in nmi:
            rows.append((name, f"{nmi[key]:.4f}"))
    jacobian = report.get("jacobian") or {}
    if "nonpositive_fraction" in jacobian:
        rows.append(("Folding (det ≤ 0)", f"{100 * jacobian['nonpositive_fraction']:.3f} %"))
    for key, name in (("sdlogj", "SDlogJ"), ("min", "det min"), ("max", "det max")):
        if key in jacobian:
            rows.append((name, f"{jacobian[key]:.3f}"))
    if "mean" in jacobian:
        rows.append(("det mean", f"{jacobian['mean']:.4f}"))
    timings = report.get("timings_s") or {}
    for key, value in timings.items():
        if key != "total":
            rows.append((f"time {key.replace('_', ' ')}", f"{value:.2f} s"))
    if "total" in timings:
        rows.append(("time total", f"{timings['total']:.2f} s"))
    if report.get("device"):
        rows.append(("device", str(report["device"])))
    if "model_path" in report:
        rows.append(("model", Path(report["model_path"]).name if report["model_path"] else "none"))
    return rows
