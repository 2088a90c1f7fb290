"""The paper's pre-alignment: each subject's MR registered onto its own CT, then both resampled.

For every subject the MR is aligned to its CT classically (Mattes MI affine, then a B-spline),
and CT, MR and label maps are resampled onto one common training grid (identity direction,
one size for all subjects, centred on each CT) with intensities scaled to ``[0, 1]``. The
result is a *prepared* manifest that :func:`intermodal.training.train` reads.

The step is resumable: a subject's ``done.json`` is written last, and a subject that has one is
skipped. A subject that fails is reported and the others still run.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from intermodal import classical, preprocess
from intermodal.data.manifest import Manifest, SubjectEntry, load_manifest, write_manifest
from intermodal.errors import IntermodalError, OutputExistsError
from intermodal.io import read_image, write_image
from intermodal.losses import nmi

logger = logging.getLogger(__name__)

DEFORMABLE_CHOICES = ("bspline", "none")
GRID_MULTIPLE = 16


@dataclass
class PrepareSummary:
    """What :func:`prepare_dataset` did: the prepared manifest and each subject's fate."""

    manifest: Path
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


def _write_text_atomic(path: Path, text: str) -> None:
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as stream:
            stream.write(text)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def common_grid_size(ct: sitk.Image, spacing: Sequence[float]) -> list[int]:
    """Grid size (x, y[, z]) covering ``ct``'s extent at ``spacing``, rounded up to 16s."""
    extent = [n * s for n, s in zip(ct.GetSize(), ct.GetSpacing())]
    return [
        math.ceil(math.ceil(e / s - 1e-6) / GRID_MULTIPLE) * GRID_MULTIPLE
        for e, s in zip(extent, spacing)
    ]


def _grid_for(ct: sitk.Image, size: Sequence[int], spacing: Sequence[float]) -> sitk.Image:
    """An identity-direction grid of ``size`` and ``spacing`` centred on ``ct``'s centre."""
    ndim = ct.GetDimension()
    centre = np.asarray(
        ct.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in ct.GetSize()])
    )
    origin = centre - (np.asarray(size) - 1) / 2 * np.asarray(spacing)
    grid = sitk.Image([int(n) for n in size], sitk.sitkFloat32)
    grid.SetSpacing([float(s) for s in spacing])
    grid.SetOrigin([float(o) for o in origin])
    grid.SetDirection(np.eye(ndim).ravel().tolist())
    return grid


def _qc(path: Path, ct: np.ndarray, before: np.ndarray, after: np.ndarray) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from intermodal.report import checkerboard

    def middle(volume: np.ndarray) -> np.ndarray:
        return volume[volume.shape[0] // 2] if volume.ndim == 3 else volume

    figure, axes = plt.subplots(1, 2, figsize=(6, 3.2))
    for axis, moved, title in zip(axes, (before, after), ("before", "after pre-alignment")):
        axis.imshow(checkerboard(middle(ct), middle(moved)), cmap="gray", vmin=0, vmax=1)
        axis.set_title(f"CT / MR {title}", fontsize=8)
        axis.axis("off")
    figure.tight_layout()
    handle, temp = tempfile.mkstemp(prefix=".qc.", suffix=".png", dir=path.parent)
    os.close(handle)
    try:
        figure.savefig(temp, dpi=80)
        os.replace(temp, path)
    finally:
        plt.close(figure)
        Path(temp).unlink(missing_ok=True)


def prepare_subject(
    entry: SubjectEntry,
    folder: Path,
    size: Sequence[int],
    spacing: Sequence[float],
    deformable: str = "bspline",
) -> dict[str, Any]:
    """Pre-align one subject and write its files into ``folder``; returns its record."""
    start = time.perf_counter()
    ct, mr = read_image(entry.ct), read_image(entry.mr)
    if ct.GetDimension() != mr.GetDimension():
        raise IntermodalError(
            f"{entry.mr}: MR is {mr.GetDimension()}D but CT is {ct.GetDimension()}D"
        )
    ct_n = preprocess.normalize_intensity(ct, "ct")
    mr_n = preprocess.normalize_intensity(mr, "mr")
    affine = classical.initial_alignment(ct_n, mr_n, "affine")
    transform = affine
    if deformable == "bspline":
        transform = classical.bspline_registration(ct_n, mr_n, affine)
    grid = _grid_for(ct, size, spacing)
    ct_g = preprocess.resample(ct_n, grid)
    mr_g = preprocess.resample(mr_n, grid, transform)
    mask = sitk.GetArrayFromImage(preprocess.field_of_view_mask(ct, grid)) > 0
    arrays = {
        "ct": sitk.GetArrayFromImage(ct_g),
        "before": sitk.GetArrayFromImage(preprocess.resample(mr_n, grid)),
        "affine": sitk.GetArrayFromImage(preprocess.resample(mr_n, grid, affine)),
        "after": sitk.GetArrayFromImage(mr_g),
    }
    scores = {
        f"nmi_{name}": nmi(arrays["ct"], arrays[name], mask=mask)
        for name in ("before", "affine", "after")
    }
    folder.mkdir(parents=True, exist_ok=True)
    files = {"ct": "ct.nii.gz", "mr": "mr.nii.gz"}
    write_image(ct_g, folder / "ct.nii.gz", overwrite=True)
    write_image(mr_g, folder / "mr.nii.gz", overwrite=True)
    nearest = sitk.sitkNearestNeighbor
    if entry.labels is not None:
        labels = sitk.ReadImage(str(entry.labels))
        write_image(
            sitk.Resample(labels, grid, sitk.Transform(), nearest, 0, labels.GetPixelID()),
            folder / "labels.nii.gz",
            overwrite=True,
        )
        files["labels"] = "labels.nii.gz"
    if entry.mr_labels is not None:
        mr_labels = sitk.ReadImage(str(entry.mr_labels))
        write_image(
            sitk.Resample(mr_labels, grid, transform, nearest, 0, mr_labels.GetPixelID()),
            folder / "mr_labels.nii.gz",
            overwrite=True,
        )
        files["mr_labels"] = "mr_labels.nii.gz"
    _qc(folder / "qc.png", arrays["ct"], arrays["before"], arrays["after"])
    record = {"id": entry.id, "files": files, **scores, "seconds": time.perf_counter() - start}
    _write_text_atomic(folder / "done.json", json.dumps(record, indent=2) + "\n")
    return record


def prepare_dataset(
    manifest_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    spacing: float | None = None,
    deformable: str = "bspline",
    overwrite: bool = False,
    progress: Callable[[str, int, int], None] | None = None,
) -> PrepareSummary:
    """Pre-align every subject of a manifest and write a prepared manifest.

    Args:
        manifest_path: the raw dataset's manifest.
        out_dir: where the prepared subjects, ``dataset.json`` and ``summary.md`` go.
        spacing: isotropic grid spacing in mm; default 2.5 mm in 3D, the first CT's
            coarsest spacing in 2D.
        deformable: ``"bspline"`` (affine then B-spline, the default) or ``"none"`` (affine).
        overwrite: allow writing into a folder prepared from another manifest.
        progress: callback ``("prepare", done, total)``.

    Returns:
        A :class:`PrepareSummary`.

    Raises:
        IntermodalError: bad arguments, a folder prepared from another manifest, or, after
            everything else is written, any subject that failed (naming them).
    """
    if deformable not in DEFORMABLE_CHOICES:
        raise IntermodalError(f"deformable must be one of {DEFORMABLE_CHOICES}, not {deformable!r}")
    manifest = load_manifest(manifest_path)
    source = str(Path(manifest_path).resolve())
    out = Path(out_dir)
    prepared_path = out / "dataset.json"
    if prepared_path.exists() and not overwrite:
        previous = json.loads(prepared_path.read_text()).get("prepared", {})
        if previous.get("source") != source:
            raise OutputExistsError(
                f"{out}: holds a dataset prepared from {previous.get('source')}; "
                "pass --overwrite to replace it"
            )
    first = read_image(manifest.split("training")[0].ct)
    ndim = first.GetDimension()
    if spacing is None:
        spacing = 2.5 if ndim == 3 else max(first.GetSpacing())
    if not spacing > 0:
        raise IntermodalError(f"--spacing must be positive (mm), not {spacing}")
    spacings = [float(spacing)] * ndim
    size = common_grid_size(first, spacings)
    out.mkdir(parents=True, exist_ok=True)

    summary = PrepareSummary(manifest=prepared_path)
    records: dict[str, dict[str, Any]] = {}
    for number, entry in enumerate(manifest.subjects):
        folder = out / entry.id
        done = folder / "done.json"
        if done.is_file():
            records[entry.id] = json.loads(done.read_text())
            summary.skipped.append(entry.id)
        else:
            try:
                records[entry.id] = prepare_subject(entry, folder, size, spacings, deformable)
                summary.done.append(entry.id)
            except (IntermodalError, RuntimeError) as error:
                message = str(error).strip().splitlines()[0] if str(error).strip() else "failed"
                summary.failed[entry.id] = message
                logger.warning("subject %s failed: %s", entry.id, message)
        if progress:
            progress("prepare", number + 1, len(manifest.subjects))

    subjects = [
        SubjectEntry(
            id=entry.id,
            **{key: out / entry.id / name for key, name in records[entry.id]["files"].items()},
            extra={"source_id": entry.id},
        )
        for entry in manifest.subjects
        if entry.id in records
    ]
    kept = {s.id for s in subjects}
    prepared = Manifest(
        path=prepared_path,
        name=f"{manifest.name} (prepared)",
        labels=manifest.labels,
        subjects=subjects,
        splits={k: [i for i in v if i in kept] for k, v in manifest.splits.items()},
    )
    write_manifest(prepared, prepared_path)
    data = json.loads(prepared_path.read_text())
    data["prepared"] = {
        "source": source,
        "spacing": spacings,
        "shape": size[::-1],
        "deformable": deformable,
        "normalisation": {
            "ct": "HU window -1000..1000 -> [0, 1]",
            "mr": "percentiles 0.5..99.5 -> [0, 1]",
        },
    }
    _write_text_atomic(prepared_path, json.dumps(data, indent=2) + "\n")
    lines = [
        "| subject | NMI before | NMI affine | NMI after | s | status |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for entry in manifest.subjects:
        if entry.id in records:
            r = records[entry.id]
            lines.append(
                f"| {entry.id} | {r['nmi_before']:.4f} | {r['nmi_affine']:.4f} | "
                f"{r['nmi_after']:.4f} | {r['seconds']:.1f} | ok |"
            )
        else:
            lines.append(f"| {entry.id} | - | - | - | - | failed: {summary.failed[entry.id]} |")
    _write_text_atomic(out / "summary.md", "\n".join(lines) + "\n")
    if summary.failed:
        raise IntermodalError(
            f"{len(summary.failed)} subject(s) failed ({', '.join(summary.failed)}); the others "
            f"are prepared in {prepared_path}, see {out / 'summary.md'}"
        )
    return summary
