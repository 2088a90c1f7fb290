"""A self-contained HTML quality-assurance report per registration, after AAPM TG-132.

Brock et al., "Use of image registration and fusion algorithms and techniques in radiotherapy:
Report of the AAPM Radiation Therapy Committee Task Group No. 132", Med Phys 44(7), 2017, asks
a clinic to check each deformable registration before use. ``report.html`` shows, each beside
its TG-132 tolerance and marked *pass* or *check*:

* the Jacobian determinant: minimum, maximum, folding fraction and a histogram; tolerance:
  positive throughout;
* the inverse consistency error, ``|u(p + d(p)) + d(p)|`` for the forward displacement ``d``
  and its inverse ``u`` (mean, 95th percentile, maximum, mm): TG-132 sets no number for it,
  so it is shown for information;
* per ROI, when structures or labels exist on both images: Dice (tolerance 0.8 to 0.9: at
  least 0.8 passes), mean distance to agreement (tolerance: the largest voxel dimension,
  taken within 2 to 3 mm) and HD95 (for information);
* when landmarks are given: the target registration error (tolerance: the largest voxel
  dimension of the two images; the largest error is compared).

The page holds its figures as base64 PNG and its style inline: no script, no network.
The numbers are also written to ``qa.json``, so that a later ``intermodal export-dicom`` can
add the ROI agreement it measures without recomputing the rest.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from intermodal.errors import IntermodalError

DICE_TOLERANCE = (0.8, 0.9)
"""TG-132's expected Dice range; a value of at least the lower bound passes."""
MDA_TOLERANCE_MM = (2.0, 3.0)
"""TG-132's mean distance to agreement tolerance, the largest voxel dimension within this."""
HISTOGRAM_BINS = 60

_STYLE = """
body{font-family:sans-serif;margin:2em;max-width:1100px;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #bbb;padding:.3em .7em;
text-align:left}th{background:#f0f0f0}.pass{background:#d8f5d0;font-weight:bold}
.check{background:#ffd9c9;font-weight:bold}.info{background:#eef;color:#333}
img{max-width:100%;border:1px solid #ddd}.note{color:#555;font-size:.9em}
"""


def _verdict(passed: bool | None, detail: str = "") -> str:
    """A table cell marked pass, check or info; ``detail`` follows the word."""
    word, kind = ("info", "info") if passed is None else (
        ("pass", "pass") if passed else ("check", "check")
    )  # fmt: skip
    return f'<td class="{kind}">{word}{" " + detail if detail else ""}</td>'


def jacobian_measures(jacobian: sitk.Image) -> dict[str, Any]:
    """Minimum, maximum, folding fraction and a histogram of a Jacobian determinant image."""
    values = sitk.GetArrayViewFromImage(jacobian).ravel()
    low, high = float(values.min()), float(values.max())
    edges = np.linspace(min(low, 0.0), max(high, 2.0), HISTOGRAM_BINS + 1)
    counts, _ = np.histogram(values, bins=edges)
    return {
        "min": low,
        "max": high,
        "folding_fraction": float(np.count_nonzero(values <= 0)) / values.size,
        "histogram": {"edges": edges.tolist(), "counts": counts.tolist()},
        "passed": low > 0,
    }


def inverse_consistency(field: sitk.Image, inverse_field: sitk.Image) -> dict[str, Any]:
    """Forward then inverse: ``|d(p) + u(p + d(p))|`` in mm over ``field``'s grid.

    Args:
        field: the forward displacement ``d`` (3-vector image, LPS mm).
        inverse_field: its inverse ``u``, on any grid of the same space.

    Returns:
        ``mean_mm``, ``p95_mm``, ``max_mm`` over the voxels whose ``p + d(p)`` lies inside
        ``inverse_field``'s grid, and how many those are.
    """
    forward = sitk.Cast(field, sitk.sitkVectorFloat64)
    transform = sitk.DisplacementFieldTransform(sitk.Image(forward))
    inverse = sitk.Cast(inverse_field, sitk.sitkVectorFloat64)
    pulled = sitk.Resample(inverse, forward, transform, sitk.sitkLinear, 0.0)
    vectors = sitk.GetArrayViewFromImage(forward)
    error = np.linalg.norm(vectors + sitk.GetArrayViewFromImage(pulled), axis=-1)
    error = error[_lands_inside(forward, inverse)]
    if error.size == 0:
        raise IntermodalError("inverse consistency: the forward field leaves the inverse's grid")
    return {
        "mean_mm": float(error.mean()),
        "p95_mm": float(np.percentile(error, 95)),
        "max_mm": float(error.max()),
        "voxels": int(error.size),
    }


def _lands_inside(forward: sitk.Image, grid: sitk.Image) -> np.ndarray:
    """Where ``p + d(p)`` lies within ``grid``'s outer voxel centres (1e-6 voxel leeway), for
    every voxel ``p`` of the displacement image ``forward``, in array order.

    The continuous index of ``p + d(p)`` along each axis of ``grid`` is the sum of a constant,
    one term per axis of ``forward`` (its index, broadcast) and the displacement's components:
    one axis at a time, without a table of every voxel's index and position (two ``(N, 3)``
    float64 arrays, 90 MB on a 2 mm pelvis grid).
    """
    ndim = forward.GetDimension()
    vectors = sitk.GetArrayViewFromImage(forward)  # (*array shape, ndim), x y z components
    to_mm = np.array(forward.GetDirection()).reshape(ndim, ndim) * np.array(forward.GetSpacing())
    to_index = np.linalg.inv(
        np.array(grid.GetDirection()).reshape(ndim, ndim) * np.array(grid.GetSpacing())
    )
    index_to_index = to_index @ to_mm
    offset = to_index @ (np.array(forward.GetOrigin()) - np.array(grid.GetOrigin()))
    shape = vectors.shape[:-1]
    inside = np.ones(shape, dtype=bool)
    for axis in range(ndim):  # axis of the grid, in x y z order
        landed = vectors @ to_index[axis] + offset[axis]
        for k in range(ndim):  # x y z index of forward: array axis ndim - 1 - k
            line = np.arange(shape[ndim - 1 - k], dtype=np.float64) * index_to_index[axis, k]
            landed += line.reshape([-1 if a == ndim - 1 - k else 1 for a in range(ndim)])
        inside &= (landed >= -1e-6) & (landed <= grid.GetSize()[axis] - 1 + 1e-6)
    return inside


def landmark_measures(
    transform: sitk.Transform,
    fixed_points: np.ndarray,
    moving_points: np.ndarray,
    largest_voxel_mm: float,
) -> dict[str, Any]:
    """TRE (mm) of landmark pairs through ``transform`` (fixed -> moving), against TG-132."""
    from intermodal.metrics import target_registration_error

    errors = target_registration_error(transform, fixed_points, moving_points)
    return {
        "count": int(errors.size),
        "mean_mm": float(errors.mean()),
        "max_mm": float(errors.max()),
        "tolerance_mm": float(largest_voxel_mm),
        "passed": bool(errors.max() <= largest_voxel_mm),
    }


def roi_measures(agreement: list[Any], largest_voxel_mm: float) -> list[dict[str, Any]]:
    """Rows of ROI agreement (objects with name, dice, mean_distance_mm, hd95_mm) judged."""
    mda_tolerance = min(max(largest_voxel_mm, MDA_TOLERANCE_MM[0]), MDA_TOLERANCE_MM[1])
    rows = []
    for item in agreement:
        rows.append({
            "name": item.name,
            "dice": float(item.dice),
            "dice_passed": bool(item.dice >= DICE_TOLERANCE[0]),
            "mean_distance_mm": float(item.mean_distance_mm),
            "mda_tolerance_mm": mda_tolerance,
            "mda_passed": bool(item.mean_distance_mm <= mda_tolerance),
            "hd95_mm": float(item.hd95_mm),
        })  # fmt: skip
    return rows


def _histogram_png(histogram: dict[str, list]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    edges = np.asarray(histogram["edges"])
    counts = np.asarray(histogram["counts"])
    figure, axis = plt.subplots(figsize=(6, 2.6))
    colours = ["#c0392b" if right <= 0 else "#2e86c1" for right in edges[1:]]
    axis.bar(edges[:-1], counts, width=np.diff(edges), align="edge", color=colours)
    axis.axvline(0.0, color="#c0392b", linestyle="--", linewidth=1)
    axis.axvline(1.0, color="#555", linestyle=":", linewidth=1)
    axis.set_yscale("log")
    axis.set_xlabel("Jacobian determinant (red: folding, det <= 0)")
    axis.set_ylabel("voxels")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    plt.close(figure)
    return buffer.getvalue()


def _img(data: bytes, alt: str) -> str:
    encoded = base64.b64encode(data).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{encoded}">'


def _fmt(value: float, digits: int = 3) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}g}"


def render_html(measures: dict[str, Any], qc_png: bytes | None = None) -> str:
    """The report page for ``measures`` (as :func:`write_qa_report` gathers them)."""
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<title>intermodal registration QA</title>",
        f"<style>{_STYLE}</style></head><body>",
        "<h1>Registration quality assurance (AAPM TG-132)</h1>",
    ]
    summary = measures.get("summary", {})
    if summary:
        parts.append("<table>")
        for key, value in summary.items():
            parts.append(f"<tr><th>{html.escape(key)}</th><td>{html.escape(str(value))}</td></tr>")
        parts.append("</table>")
    if qc_png:
        parts += ["<h2>Visual check</h2>", _img(qc_png, "QC figure: before and after")]
    jac = measures["jacobian"]
    parts += [
        "<h2>Jacobian determinant</h2><table><tr><th>measure</th><th>value</th>",
        "<th>TG-132 tolerance</th><th>result</th></tr>",
        f"<tr><td>minimum</td><td>{_fmt(jac['min'], 4)}</td><td>&gt; 0 throughout</td>",
        f"{_verdict(jac['passed'])}</tr>",
        f"<tr><td>maximum</td><td>{_fmt(jac['max'], 4)}</td><td>-</td>{_verdict(None)}</tr>",
        f"<tr><td>folding fraction (det &le; 0)</td><td>{100 * jac['folding_fraction']:.4f} %",
        f"</td><td>0 %</td>{_verdict(jac['folding_fraction'] == 0)}</tr></table>",
        _img(_histogram_png(jac["histogram"]), "Jacobian determinant histogram"),
    ]
    ic = measures.get("inverse_consistency")
    if ic:
        parts += [
            "<h2>Inverse consistency (forward then inverse)</h2><table>",
            "<tr><th>mean</th><th>95th percentile</th><th>maximum</th><th>result</th></tr>",
            f"<tr><td>{ic['mean_mm']:.3f} mm</td><td>{ic['p95_mm']:.3f} mm</td>",
            f"<td>{ic['max_mm']:.3f} mm</td>{_verdict(None)}</tr></table>",
            "<p class='note'>TG-132 sets no tolerance for it; shown for information.</p>",
        ]
    rois = measures.get("rois")
    if rois:
        parts += [
            "<h2>Contour agreement per ROI</h2><table><tr><th>ROI</th><th>Dice</th>",
            f"<th>tolerance &ge; {DICE_TOLERANCE[0]} (expected {DICE_TOLERANCE[0]}&ndash;",
            f"{DICE_TOLERANCE[1]})</th><th>mean distance to agreement</th><th>tolerance</th>",
            "<th>HD95 (info)</th></tr>",
        ]
        for row in rois:
            tolerance = f"(&le; {row['mda_tolerance_mm']:.1f} mm)"
            parts.append(
                f"<tr><td>{html.escape(row['name'])}</td><td>{row['dice']:.3f}</td>"
                f"{_verdict(row['dice_passed'])}<td>{row['mean_distance_mm']:.2f} mm</td>"
                f"{_verdict(row['mda_passed'], tolerance)}"
                f"<td>{row['hd95_mm']:.2f} mm</td></tr>"
            )
        parts.append("</table>")
    landmarks = measures.get("landmarks")
    if landmarks:
        parts += [
            "<h2>Target registration error</h2><table><tr><th>landmarks</th><th>mean</th>",
            "<th>maximum</th><th>tolerance (largest voxel dimension)</th><th>result</th></tr>",
            f"<tr><td>{landmarks['count']}</td><td>{landmarks['mean_mm']:.2f} mm</td>",
            f"<td>{landmarks['max_mm']:.2f} mm</td><td>{landmarks['tolerance_mm']:.2f} mm</td>",
            f"{_verdict(landmarks['passed'])}</tr></table>",
        ]
    parts.append(
        "<p class='note'>pass: within the TG-132 tolerance; check: outside it, review before "
        "clinical use; info: no TG-132 tolerance. Written by intermodal.</p></body></html>"
    )
    return "\n".join(parts)


def largest_voxel(*images: sitk.Image) -> float:
    """The largest voxel dimension (mm) of ``images``."""
    return max(max(image.GetSpacing()) for image in images)


def write_qa_report(
    folder: str | os.PathLike,
    *,
    jacobian: sitk.Image | None = None,
    field: sitk.Image | None = None,
    inverse_field: sitk.Image | None = None,
    largest_voxel_mm: float | None = None,
    summary: dict[str, Any] | None = None,
    agreement: list[Any] | None = None,
    landmarks: dict[str, Any] | None = None,
) -> Path:
    """Write ``qa.json`` and ``report.html`` into ``folder`` (beside ``qc.png``).

    Measures not given are taken from an earlier ``qa.json`` in ``folder``: the registration
    writes the Jacobian and inverse consistency; a DICOM export adds the ROI agreement.

    Args:
        folder: the result folder.
        jacobian: the Jacobian determinant image.
        field, inverse_field: forward and inverse displacement (for inverse consistency).
        largest_voxel_mm: largest voxel dimension of the two images (tolerances).
        summary: a few lines for the page's head (inputs, method, NMI).
        agreement: ROI agreement rows (name, dice, mean_distance_mm, hd95_mm).
        landmarks: the output of :func:`landmark_measures`.

    Returns:
        The path of ``report.html``.

    Raises:
        IntermodalError: no Jacobian given and no earlier ``qa.json`` to take it from, or an
            earlier ``qa.json`` that is not JSON.
    """
    from intermodal.io._atomic import write_text_atomic

    folder = Path(folder)
    previous: dict[str, Any] = {}
    if (folder / "qa.json").is_file():
        try:
            previous = json.loads((folder / "qa.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise IntermodalError(f"{folder / 'qa.json'}: not readable JSON ({err})") from err
    measures = dict(previous)
    if jacobian is not None:
        measures["jacobian"] = jacobian_measures(jacobian)
    if field is not None and inverse_field is not None:
        measures["inverse_consistency"] = inverse_consistency(field, inverse_field)
    if largest_voxel_mm is not None:
        measures["largest_voxel_mm"] = float(largest_voxel_mm)
    if summary is not None:
        measures["summary"] = summary
    if agreement is not None:
        measures["rois"] = roi_measures(agreement, measures.get("largest_voxel_mm", 0.0))
    if landmarks is not None:
        measures["landmarks"] = landmarks
    if "jacobian" not in measures:
        raise IntermodalError(f"{folder}: no Jacobian for the QA report (and no qa.json)")
    qc = folder / "qc.png"
    page = render_html(measures, qc.read_bytes() if qc.is_file() else None)
    write_text_atomic(folder / "qa.json", json.dumps(measures, indent=2) + "\n")
    return write_text_atomic(folder / "report.html", page)


def write_result_qa(result: Any, folder: str | os.PathLike) -> list[str]:
    """The QA report of a fresh registration result (a :class:`RegistrationResult`).

    The Jacobian is the result's; inverse consistency is measured on the working grid, where
    the fields were computed (``result.field`` and ``result.inverse_field``).

    Returns:
        The names of the files written into ``folder``: ``qa.json`` and ``report.html``.
    """
    report = result.report
    nmi = report.get("nmi", {})
    inputs = report.get("inputs", {})
    summary = {
        f"{role} image": f"{inputs.get(role, {}).get('modality') or 'unknown modality'}, "
        f"{'x'.join(str(n) for n in image.GetSize())} voxels of "
        f"{'x'.join(f'{s:.3g}' for s in image.GetSpacing())} mm"
        for role, image in (("fixed", result.fixed), ("moving", result.moving))
    }
    if "before" in nmi and "after" in nmi:
        summary["NMI before -> after"] = f"{nmi['before']:.4f} -> {nmi['after']:.4f}"
    summary["intermodal"] = str(report.get("intermodal_version", ""))
    write_qa_report(
        folder,
        jacobian=result.jacobian,
        field=result.field,
        inverse_field=result.inverse_field,
        largest_voxel_mm=largest_voxel(result.fixed, result.moving),
        summary=summary,
    )
    return ["qa.json", "report.html"]
