"""Quality-control figure and the written outputs of a registration."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import SimpleITK as sitk

from intermodal.errors import IntermodalError, OutputExistsError

if TYPE_CHECKING:
    from intermodal.registration import RegistrationResult

logger = logging.getLogger(__name__)

PLANES = ("axial", "coronal", "sagittal")


def _slices(volume: np.ndarray, centre: tuple[int, ...]) -> list[np.ndarray]:
    """Tri-planar slices of a ``(z, y, x)`` array through ``centre``; a 2D array is one view."""
    if volume.ndim == 2:
        return [volume]
    z, y, x = centre
    return [volume[z], volume[:, y, :][::-1], volume[:, :, x][::-1]]


def _planes_through(
    moving: sitk.Image, reference: sitk.Image, transform: sitk.Transform, centre: tuple[int, ...]
) -> list[np.ndarray]:
    """``moving`` through ``transform`` on the planes of ``reference`` that :func:`_slices`
    takes at ``centre`` (array order), each resampled alone; the same arrays, same order."""
    ndim = reference.GetDimension()
    if ndim == 2:
        return [sitk.GetArrayFromImage(sitk.Resample(moving, reference, transform,
                                                      sitk.sitkLinear, 0.0))]  # fmt: skip
    planes = []
    for array_axis in range(3):  # axial (z), coronal (y), sagittal (x)
        index_axis = 2 - array_axis
        size = list(reference.GetSize())
        size[index_axis] = 1
        start = [0, 0, 0]
        start[index_axis] = centre[array_axis]
        origin = reference.TransformIndexToPhysicalPoint(start)
        plane = sitk.Resample(
            moving, size, transform, sitk.sitkLinear, origin, reference.GetSpacing(),
            reference.GetDirection(), 0.0, moving.GetPixelID(),
        )  # fmt: skip
        array = np.take(sitk.GetArrayFromImage(plane), 0, axis=array_axis)
        planes.append(array if array_axis == 0 else array[::-1])
    return planes


def checkerboard(
    a: np.ndarray,
    b: np.ndarray,
    tile: float | None = None,
    spacing: Sequence[float] | None = None,
) -> np.ndarray:
    """Square tiles alternating ``a`` (the tile at index 0) and ``b``, in any dimension.

    The one checkerboard of the QC figures, ``prepare``'s QC images and the GUI.

    Args:
        a: image, array order (``(y, x)`` or ``(z, y, x)``).
        b: image of the same shape.
        tile: side of a tile: in mm when ``spacing`` is given, in voxels otherwise. None
            (without ``spacing``): an eighth of the longest axis, at least one voxel.
        spacing: voxel size per array axis in mm, so that tiles are square on screen whatever
            the voxel size.

    Returns:
        An array of ``a``'s shape.

    Raises:
        ValueError: the shapes differ, ``tile`` is not positive, ``spacing`` does not give one
            size per axis, or ``spacing`` is given without ``tile``.
    """
    if a.shape != b.shape:
        raise ValueError(f"a and b must have one shape, but a is {a.shape} and b is {b.shape}")
    if tile is None:
        if spacing is not None:
            raise ValueError("a spacing needs a tile size in mm")
        tile = max(1, max(a.shape) // 8)
    if not tile > 0:
        raise ValueError(f"tile size must be positive, not {tile}")
    steps = [1.0] * a.ndim if spacing is None else [float(s) for s in spacing]
    if len(steps) != a.ndim:
        raise ValueError(f"spacing needs {a.ndim} sizes (one per axis), not {tuple(spacing)}")
    parity = sum(
        ((np.arange(n) * step // tile).astype(np.int64)).reshape(
            [n if axis == k else 1 for k in range(a.ndim)]
        )
        for axis, (n, step) in enumerate(zip(a.shape, steps))
    )
    return np.where(parity % 2 == 0, a, b)


def _edges(image: np.ndarray) -> np.ndarray:
    gy, gx = np.gradient(image.astype(np.float64))
    magnitude = np.hypot(gx, gy)
    threshold = np.percentile(magnitude, 92) if magnitude.any() else 1.0
    return magnitude > max(threshold, 1e-6)


def qc_figure(result: RegistrationResult, path: str | os.PathLike) -> None:
    """Save tri-planar views of the fixed image with the moving one before and after.

    Rows: checkerboard before, outline overlay before, checkerboard after, outline overlay
    after. "Before" is the moving image on the fixed grid with no transform at all.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fixed = result.fixed_normalized
    moving = result.moving_normalized
    if fixed is None or moving is None:
        raise IntermodalError("the result holds no normalised images for the QC figure")
    identity = sitk.Transform(fixed.GetDimension(), sitk.sitkIdentity)
    fixed_a = sitk.GetArrayViewFromImage(fixed)
    centre = tuple(n // 2 for n in fixed_a.shape)
    spacing = fixed.GetSpacing()[::-1]
    # Only the planes shown are resampled: on a 512x512x400 CT two whole resampled volumes
    # and their array copies would be 2 GiB for three slices.
    views = list(
        zip(
            _slices(fixed_a, centre),
            _planes_through(moving, fixed, identity, centre),
            _planes_through(moving, fixed, result.transform, centre),
        )
    )
    aspects = (
        [1.0]
        if fixed_a.ndim == 2
        else [spacing[1] / spacing[2], spacing[0] / spacing[2], spacing[0] / spacing[1]]
    )
    if fixed_a.ndim == 2:
        aspects = [spacing[0] / spacing[1]]
    kinds = ("checkerboard, before", "outlines, before", "checkerboard, after", "outlines, after")
    # 3D: one row per kind, one column per plane; 2D: the four kinds on a 2 x 2 grid.
    rows, columns = (4, 3) if fixed_a.ndim == 3 else (2, 2)
    figure, axes = plt.subplots(
        rows, columns, figsize=(3.2 * max(columns, 2), 3.2 * rows), squeeze=False
    )
    for column, ((f, b, a), aspect) in enumerate(zip(views, aspects)):
        for index, (title, moved) in enumerate(zip(kinds, (b, b, a, a))):
            axis = axes[index, column] if fixed_a.ndim == 3 else axes.flat[index]
            if "checkerboard" in title:
                axis.imshow(checkerboard(f, moved), cmap="gray", vmin=0, vmax=1, aspect=aspect)
            else:
                axis.imshow(f, cmap="gray", vmin=0, vmax=1, aspect=aspect)
                outline = np.ma.masked_where(~_edges(moved), np.ones_like(moved))
                axis.imshow(outline, cmap="autumn", alpha=0.9, aspect=aspect)
            plane = PLANES[column] if fixed_a.ndim == 3 else "slice"
            axis.set_title(f"{plane}: {title}", fontsize=8)
            axis.axis("off")
    nmi = result.report.get("nmi", {})
    figure.suptitle(
        f"fixed with moving (red: moving's edges)\nNMI {nmi.get('before', float('nan')):.3f} "
        f"-> {nmi.get('after', float('nan')):.3f}",
        fontsize=9,
    )
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, (tuple, set)):
        return list(value)
    return str(value)


def write_json(data: dict[str, Any], path: str | os.PathLike) -> None:
    """Write ``data`` as indented JSON."""
    Path(path).write_text(
        json.dumps(data, indent=2, default=_json_default) + "\n", encoding="utf-8"
    )


# OutputDirectory's staging folders: ".<destination name>.<tempfile.mkdtemp's 8 characters>",
# and that name + ".old" for an earlier output while it is being replaced
STAGING_NAME = re.compile(r"\.(?P<name>.+)\.[a-z0-9_]{8}(?P<old>\.old)?")
_OWNER_FILE = ".intermodal-owner.json"  # in a staging folder: the process writing it


def _process_is_gone(pid: int) -> bool:
    """True only when no process ``pid`` exists on this machine (unsure: False)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # e.g. alive under another user
        return False
    return False


def remove_stale_staging(destination: str | os.PathLike) -> list[Path]:
    """Remove the staging folders that killed runs left beside ``destination``.

    A staging folder (``.<name>.<8 characters>``) records the process writing it. It is stale
    when that process ran on this machine and no longer exists: a run killed by SIGKILL or
    the machine's out-of-memory killer had no chance to remove it. Folders of live
    processes, of other machines or without a record are left alone, and so are ``...old``
    folders (an earlier output being replaced).

    Returns:
        The folders removed.
    """
    target = Path(destination).absolute()
    if not target.parent.is_dir():
        return []
    removed, host = [], socket.gethostname()
    for path in target.parent.iterdir():
        match = STAGING_NAME.fullmatch(path.name)
        if not match or match["name"] != target.name or match["old"] or path.is_symlink():
            continue
        try:
            owner = json.loads((path / _OWNER_FILE).read_text(encoding="utf-8"))
            stale = owner["host"] == host and _process_is_gone(int(owner["pid"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if stale:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def check_destination(
    destination: str | os.PathLike,
    *,
    overwrite: bool = False,
    inputs: Sequence[str | os.PathLike | None] = (),
) -> Path:
    """Refuse, before any work is done, an output folder that could not be written or replaced.

    The checks :class:`OutputDirectory` relies on, made up front so that a long registration
    does not end in an error: the folder must not exist (unless ``overwrite``) or must be a
    folder; it must not be the current folder or one that holds it (replacing it would pull
    the ground from under the process); its parent must be a folder in which a staging folder
    can be made (tried, then removed); and with ``overwrite``, no input may lie inside it,
    since replacing the folder would delete that input.

    Args:
        destination: the output folder.
        overwrite: an existing folder may be replaced.
        inputs: paths read by the run (``None`` entries are skipped).

    Returns:
        ``destination`` as an absolute path, ``.`` and ``..`` removed (symbolic links kept).

    Raises:
        OutputExistsError: the folder exists and ``overwrite`` is false.
        IntermodalError: any other reason the folder cannot be written.
    """
    if not str(destination).strip():
        raise IntermodalError("the output folder's name is empty")
    given = Path(destination)
    target = Path(os.path.abspath(given))
    try:
        exists = target.exists()
    except OSError as error:  # e.g. a name too long for the file system
        raise IntermodalError(f"{given}: cannot write there ({error.strerror})") from error
    if exists and not target.is_dir():
        raise IntermodalError(f"{given}: exists and is not a directory")
    if exists and not overwrite:
        raise OutputExistsError(f"{given}: output directory exists; pass --overwrite to replace it")
    resolved, here = target.resolve(), Path.cwd().resolve()
    if resolved == here or resolved in here.parents:
        raise IntermodalError(
            f"{given}: is the current folder or holds it, which cannot be replaced; "
            "write the outputs into a folder inside it"
        )
    parent = target.parent
    if not parent.is_dir():
        problem = "does not exist" if not parent.exists() else "is not a directory"
        raise IntermodalError(f"{given}: parent directory {parent} {problem}")
    if exists:
        for path in inputs:
            if path is None:
                continue
            found = Path(path).resolve()
            if found == resolved or resolved in found.parents:
                raise IntermodalError(
                    f"{path}: lies inside the output folder {given}, which --overwrite would "
                    "replace; write the outputs elsewhere"
                )
    try:
        os.rmdir(tempfile.mkdtemp(prefix=f".{target.name}.", dir=parent))
    except OSError as error:
        raise IntermodalError(f"{given}: cannot write in {parent} ({error.strerror})") from error
    return target


class OutputDirectory:
    """An output folder that appears complete or not at all.

    Files are written into a hidden sibling folder; :meth:`commit` renames it into place (and
    only then removes an older folder when ``overwrite`` was asked for). On any error before
    that, the partial folder is deleted and the destination is left as it was. A run killed
    outright cannot clean up: its staging folder records the process, and the next run into
    the same destination removes it (:func:`remove_stale_staging`).

    Example:
        >>> with OutputDirectory("out", overwrite=False) as staging:   # doctest: +SKIP
        ...     sitk.WriteImage(image, str(staging / "warped.nii.gz"))
    """

    def __init__(self, destination: str | os.PathLike, *, overwrite: bool = False) -> None:
        self.destination = check_destination(destination, overwrite=overwrite)
        self.overwrite = overwrite
        self.staging: Path | None = None

    def __enter__(self) -> Path:
        parent = self.destination.parent
        for path in remove_stale_staging(self.destination):
            logger.info("removed %s, left by a run that was killed", path)
        self.staging = Path(tempfile.mkdtemp(prefix=f".{self.destination.name}.", dir=parent))
        owner = {"pid": os.getpid(), "host": socket.gethostname()}
        (self.staging / _OWNER_FILE).write_text(json.dumps(owner), encoding="utf-8")
        return self.staging

    def __exit__(self, kind, value, traceback) -> None:
        assert self.staging is not None
        if kind is not None:
            shutil.rmtree(self.staging, ignore_errors=True)
            return
        (self.staging / _OWNER_FILE).unlink(missing_ok=True)
        os.chmod(self.staging, 0o755)
        if self.destination.exists():
            retired = self.staging.with_name(self.staging.name + ".old")
            os.replace(self.destination, retired)
            os.replace(self.staging, self.destination)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(self.staging, self.destination)


def save_result(
    result: RegistrationResult,
    out_dir: str | os.PathLike,
    *,
    overwrite: bool = False,
    labels: sitk.Image | None = None,
    points: np.ndarray | None = None,
    extra_report: dict[str, Any] | None = None,
    extra_images: dict[str, sitk.Image] | None = None,
) -> Path:
    """Write every output of a registration into ``out_dir``, all or nothing.

    Files: ``warped.nii.gz``, ``displacement.nii.gz``, ``inverse_displacement.nii.gz``,
    ``jacobian.nii.gz``, ``transform.h5``, ``report.json``, ``qc.png``, the TG-132 QA page
    ``report.html`` with its numbers in ``qa.json`` (:mod:`intermodal.qa_report`), and
    ``warped_labels.nii.gz`` / ``points.csv`` when labels or points are given.

    Returns:
        The output directory.
    """
    from intermodal.io import write_points
    from intermodal.io.nifti import write_displacement_nifti, write_float32_nifti

    with OutputDirectory(out_dir, overwrite=overwrite) as staging:
        if result.warped.GetPixelID() == sitk.sitkFloat32:
            write_float32_nifti(result.warped, staging / "warped.nii.gz")
        else:
            sitk.WriteImage(result.warped, str(staging / "warped.nii.gz"), useCompression=True)
        # The fields go onto the fixed grid one component at a time (float32), never whole.
        write_displacement_nifti(result.field, result.fixed, staging / "displacement.nii.gz")
        write_displacement_nifti(
            result.inverse_field, result.fixed, staging / "inverse_displacement.nii.gz"
        )
        write_float32_nifti(result.jacobian, staging / "jacobian.nii.gz")
        sitk.WriteTransform(result.transform, str(staging / "transform.h5"))
        # The initial affine on its own, so that tools taking a chain of files can rebuild the
        # transform: ANTs as `-t displacement.nii.gz -t affine.mat`.
        sitk.WriteTransform(result.affine, str(staging / "affine.mat"))
        outputs = [
            "warped.nii.gz",
            "displacement.nii.gz",
            "inverse_displacement.nii.gz",
            "jacobian.nii.gz",
            "transform.h5",
            "affine.mat",
            "qc.png",
            "report.json",
        ]
        if labels is not None:
            warped_labels = result.warp_image(labels, labels=True)
            sitk.WriteImage(
                warped_labels, str(staging / "warped_labels.nii.gz"), useCompression=True
            )
            outputs.append("warped_labels.nii.gz")
        if points is not None:
            write_points(staging / "points.csv", result.map_points(points))
            outputs.append("points.csv")
        for name, image in (extra_images or {}).items():
            sitk.WriteImage(image, str(staging / name), useCompression=True)
            outputs.append(name)
        qc_figure(result, staging / "qc.png")
        from intermodal.qa_report import write_result_qa  # TG-132 QA page beside report.json

        outputs += write_result_qa(result, staging)
        report = {**result.report, **(extra_report or {}), "outputs": sorted(outputs)}
        write_json(report, staging / "report.json")
    return Path(out_dir)
