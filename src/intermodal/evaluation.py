"""Evaluating registrations of test pairs: metrics per pair and label, a summary and box plots.

Every method is judged the same way, from its output folder (the contract is in
:mod:`intermodal.batch`): ``transform.h5`` maps the fixed image's points to the moving image's,
and everything is recomputed from it and the manifest's files, on the fixed image's own grid:

- **Dice** and **HD95** (mm) per label: the moving subject's ``mr_labels`` resampled through the
  transform (nearest neighbour) against the fixed subject's ``labels``. As Learn2Reg does, a
  label absent from the fixed or the moving label map is not scored (NaN). See
  :func:`intermodal.metrics.hausdorff_distance` for a label the warp lost (HD95 is then the
  fixed grid's diagonal). ``*_before`` columns use no transform at all (the images' own
  physical placement).
- **TRE** (mm): the mean over landmarks of ``|T(f) - m|``, fixed landmarks ``f`` in CT space
  and moving landmarks ``m`` in MR space; ``tre_before_mm`` is ``|f - m|``.
- **Jacobian**: from ``displacement.nii.gz`` (the deformable part; the affine is left out, as
  in Learn2Reg, which scores the displacement field), over the whole fixed grid: the share of
  determinants ``<= 0`` and SDlogJ (:func:`intermodal.metrics.sdlogj`). NaN when the folder
  has no displacement.
- **NMI** before and after, on the fixed grid with 32 bins: each image scaled to ``[0, 1]`` as
  ``register`` scales it (modality detected the same way; a CT by the HU window -1000..1000 HU,
  an MR by its 0.5/99.5 percentiles), the moving image resampled linearly with no transform
  (before) and through ``transform.h5`` (after), 0 outside its field of view; counted over
  :func:`intermodal.preprocess.data_mask` of the fixed image (a CT's voxels above -1500 HU, so
  the scanner's padding is left out). This is computed here, not copied from ``report.json``,
  so that every method is scored alike; ``register``'s report uses the same definition on its
  working grid (2 mm in 3D by default), so the two differ only by that resampling.
- **Run time** (s): ``timings_s.total`` from the folder's ``report.json`` (NaN without one).

The summary gives, per metric, the mean, the (population) standard deviation and the mean of
the worst 30 % of cases, as Learn2Reg reports them (:func:`intermodal.metrics.worst_cases_mean`):
the lowest Dice and NMI, the highest HD95, TRE, folding, SDlogJ and run time. Label metrics
count one case per pair and label; "all labels" counts one case per pair (its mean over
labels); pair metrics count one case per pair.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from intermodal import metrics
from intermodal.batch import (
    REQUIRED_OUTPUT,
    RUN_FILE,
    Pair,
    PairMethod,
    PairOutcome,
    load_pairs,
    read_done,
    run_batch,
)
from intermodal.errors import IntermodalError, OutputExistsError
from intermodal.io import read_transform, write_bytes_atomic, write_text_atomic

CSV_FILE = "metrics.csv"
SUMMARY_FILE = "summary.md"
PLOT_FILES = {"dice": "boxplot_dice.png", "hd95": "boxplot_hd95.png", "pairs": "boxplot_pairs.png"}
OUTPUT_FILES = (CSV_FILE, SUMMARY_FILE, *PLOT_FILES.values())
"""Every file :func:`write_evaluation` writes into its folder."""

REGISTRATIONS_DIR = "registrations"
"""Where :func:`run_evaluation` puts the registrations of a method it runs."""

COLUMNS = (
    "pair",
    "fixed",
    "moving",
    "intra_subject",
    "label",
    "label_value",
    "dice_before",
    "dice",
    "hd95_before_mm",
    "hd95_mm",
    "landmarks",
    "tre_before_mm",
    "tre_mm",
    "nonpositive_jacobian_fraction",
    "sdlogj",
    "nmi_before",
    "nmi_after",
    "runtime_s",
)
"""Columns of ``metrics.csv``: one row per pair and label (one row with an empty label for a
pair without labels). Pair-level values repeat on each of the pair's rows."""

_PAIR_METRICS = (
    # column, title, higher is worse, scale for display
    ("tre_before_mm", "TRE before (mm)", True, 1.0),
    ("tre_mm", "TRE (mm)", True, 1.0),
    ("nonpositive_jacobian_fraction", "non-positive Jacobian (%)", True, 100.0),
    ("sdlogj", "SDlogJ", True, 1.0),
    ("nmi_before", "NMI before", False, 1.0),
    ("nmi_after", "NMI after", False, 1.0),
    ("runtime_s", "run time (s)", True, 1.0),
)

NAN = float("nan")


@dataclass
class Evaluation:
    """The metrics of a set of pairs.

    Attributes:
        rows: one dict per pair and label, keyed by :data:`COLUMNS`.
        pairs: the pairs evaluated.
        missing: pair -> why it has no result (no folder, not finished).
        failed: pair -> why its registration failed (when the method ran here).
        source: what was evaluated (a results folder or a method), for the summary.
    """

    rows: list[dict[str, Any]] = field(default_factory=list)
    pairs: list[Pair] = field(default_factory=list)
    missing: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    source: str = ""


# ---------------------------------------------------------------------------------------------
# One pair


def _read_labels(path: Path) -> sitk.Image:
    from intermodal.io import read_image

    return sitk.Cast(sitk.Round(read_image(path)), sitk.sitkInt32)


def _read_runtime(folder: Path) -> float:
    path = folder / "report.json"
    if not path.is_file():
        return NAN
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
        return float(report["timings_s"]["total"])
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError):
        raise IntermodalError(f"{path}: unreadable, or holds no timings_s.total") from None


def _jacobian(folder: Path, fixed: sitk.Image) -> tuple[float, float]:
    path = folder / "displacement.nii.gz"
    if not path.is_file():
        return NAN, NAN
    try:
        displacement = sitk.ReadImage(str(path), sitk.sitkVectorFloat64)
    except RuntimeError:
        raise IntermodalError(f"{path}: not a readable displacement field") from None
    if displacement.GetSize() != fixed.GetSize():
        raise IntermodalError(
            f"{path}: displacement grid {displacement.GetSize()} is not the fixed image's "
            f"{fixed.GetSize()}"
        )
    try:
        det = metrics.image_jacobian_det(displacement)
    except IntermodalError as err:
        raise IntermodalError(f"{path}: {err}") from None
    statistics = metrics.jacobian_statistics(det)
    return statistics["nonpositive_fraction"], statistics["sdlogj"]


def _tre(pair: Pair, transform: sitk.Transform) -> tuple[int, float, float]:
    from intermodal.io import read_points

    if pair.fixed_landmarks is None or pair.moving_landmarks is None:
        return 0, NAN, NAN
    fixed_points = read_points(pair.fixed_landmarks)
    moving_points = read_points(pair.moving_landmarks)
    if fixed_points.shape != moving_points.shape:
        raise IntermodalError(
            f"pair {pair.name}: {pair.fixed_landmarks} holds {fixed_points.shape[0]} points "
            f"({fixed_points.shape[1]}D) but {pair.moving_landmarks} holds "
            f"{moving_points.shape[0]} ({moving_points.shape[1]}D); they must correspond row "
            "by row"
        )
    if len(fixed_points) == 0:
        return 0, NAN, NAN
    ndim = transform.GetDimension()
    identity = sitk.Transform(ndim, sitk.sitkIdentity)
    try:
        after = metrics.target_registration_error(transform, fixed_points, moving_points)
        before = metrics.target_registration_error(identity, fixed_points, moving_points)
    except IntermodalError as err:
        raise IntermodalError(f"pair {pair.name}: landmarks: {err}") from None
    return len(fixed_points), float(before.mean()), float(after.mean())


def _label_names(label_names: Mapping[int, str], fixed_labels: sitk.Image) -> dict[str, int]:
    """name -> value of the labels to score: the manifest's, else every value in the map."""
    named = {name: value for value, name in sorted(label_names.items()) if value != 0}
    if named:
        return named
    values = np.unique(sitk.GetArrayViewFromImage(fixed_labels))
    return {str(int(v)): int(v) for v in values if v != 0}


def evaluate_pair(
    pair: Pair, folder: str | os.PathLike[str], label_names: Mapping[int, str]
) -> list[dict[str, Any]]:
    """The metrics of one registered pair (definitions in the module docstring).

    Args:
        pair: the pair, with its files.
        folder: its output folder, holding at least ``transform.h5``.
        label_names: label value -> name (the manifest's ``labels``); value 0 is background
            and not scored. Empty: every non-zero value of the fixed label map, by number.

    Returns:
        One row per label (keyed by :data:`COLUMNS`), or a single row with an empty label when
        the pair has no label maps.

    Raises:
        IntermodalError: an unreadable or mismatched input or output file (named).
    """
    from intermodal.io import read_image

    folder = Path(folder)
    fixed = read_image(pair.fixed)
    moving = read_image(pair.moving)
    transform = read_transform(folder / REQUIRED_OUTPUT, fixed.GetDimension())
    if moving.GetDimension() != fixed.GetDimension():
        raise IntermodalError(
            f"pair {pair.name}: fixed {pair.fixed} is {fixed.GetDimension()}D but moving "
            f"{pair.moving} is {moving.GetDimension()}D"
        )
    landmarks, tre_before, tre_after = _tre(pair, transform)
    folding, sdlogj = _jacobian(folder, fixed)
    score = metrics.NMIScorer(fixed, moving)
    nmi_before, nmi_after = score(None), score(transform)
    shared = {
        "pair": pair.name,
        "fixed": pair.fixed_id,
        "moving": pair.moving_id,
        "intra_subject": pair.intra_subject,
        "landmarks": landmarks,
        "tre_before_mm": tre_before,
        "tre_mm": tre_after,
        "nonpositive_jacobian_fraction": folding,
        "sdlogj": sdlogj,
        "nmi_before": nmi_before,
        "nmi_after": nmi_after,
        "runtime_s": _read_runtime(folder),
    }
    empty = {
        "label": "",
        "label_value": "",
        "dice_before": NAN,
        "dice": NAN,
        "hd95_before_mm": NAN,
        "hd95_mm": NAN,
    }
    if pair.fixed_labels is None or pair.moving_labels is None:
        return [{**shared, **empty}]
    fixed_labels = _read_labels(pair.fixed_labels)
    moving_labels = _read_labels(pair.moving_labels)
    if fixed_labels.GetSize() != fixed.GetSize():
        raise IntermodalError(
            f"pair {pair.name}: labels {pair.fixed_labels} are {fixed_labels.GetSize()} voxels, "
            f"the fixed image {pair.fixed} {fixed.GetSize()}; they must share a grid"
        )
    identity = sitk.Transform(fixed.GetDimension(), sitk.sitkIdentity)
    before = sitk.Resample(moving_labels, fixed, identity, sitk.sitkNearestNeighbor, 0)
    after = sitk.Resample(moving_labels, fixed, transform, sitk.sitkNearestNeighbor, 0)
    # Label maps on the fixed grid keep the fixed image's spacing (for HD95 in mm).
    fixed_labels.CopyInformation(fixed)
    fixed_array = sitk.GetArrayViewFromImage(fixed_labels)
    moving_array = sitk.GetArrayViewFromImage(moving_labels)
    spacing = fixed.GetSpacing()[::-1]
    rows = []
    for name, value in _label_names(label_names, fixed_labels).items():
        row = {**shared, **empty, "label": name, "label_value": value}
        if (fixed_array == value).any() and (moving_array == value).any():
            reference = fixed_array == value
            for key, warped in (("before", before), ("", after)):
                candidate = sitk.GetArrayViewFromImage(warped) == value
                suffix = f"_{key}" if key else ""
                row[f"dice{suffix}"] = metrics.dice(reference, candidate)
                row[f"hd95{suffix}_mm"] = metrics.hd95(reference, candidate, spacing)
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------
# Many pairs


def result_folder(results_dir: str | os.PathLike[str], pair: Pair) -> tuple[Path, str]:
    """The output folder of ``pair`` under ``results_dir``, and why it is unusable (or "").

    In a ``register-batch`` folder (one with ``batch.json``) a pair counts only once its
    ``done.json`` is written; elsewhere its folder must hold ``transform.h5``.
    """
    results_dir = Path(results_dir)
    folder = results_dir / pair.name
    if not folder.is_dir():
        return folder, f"no folder {folder}"
    if (results_dir / RUN_FILE).is_file() and read_done(folder, pair) is None:
        return folder, f"{folder}: not finished (no done.json for these inputs)"
    if not (folder / REQUIRED_OUTPUT).is_file():
        return folder, f"{folder}: no {REQUIRED_OUTPUT}"
    return folder, ""


def evaluate_results(
    pairs: Sequence[Pair],
    results_dir: str | os.PathLike[str],
    label_names: Mapping[int, str],
    *,
    skip_missing: bool = False,
    failed: Mapping[str, str] | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> Evaluation:
    """Evaluate the output folders of ``pairs`` found under ``results_dir``.

    Args:
        pairs: the pairs (:func:`intermodal.batch.load_pairs`).
        results_dir: a folder with one subfolder per pair named ``<fixed id>--<moving id>``,
            e.g. the ``--out`` of ``register-batch``.
        label_names: label value -> name (the manifest's ``labels``).
        skip_missing: evaluate the pairs that have results and list the others in the
            summary; otherwise a missing pair is an error.
        failed: pairs whose registration failed, with the reason; they are listed in the
            summary, not evaluated.
        progress: optional callback ``("evaluate", pairs finished, total)``.

    Returns:
        An :class:`Evaluation`.

    Raises:
        IntermodalError: pairs without results (unless ``skip_missing``), naming them; or an
            unreadable file.
    """
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise IntermodalError(f"{results_dir}: results folder not found")
    evaluation = Evaluation(source=str(results_dir), failed=dict(failed or {}))
    found: list[tuple[Pair, Path]] = []
    not_found: dict[str, str] = {}
    for pair in pairs:
        if pair.name in evaluation.failed:
            continue
        folder, problem = result_folder(results_dir, pair)
        if problem:
            not_found[pair.name] = problem
        else:
            found.append((pair, folder))
    if not_found and not skip_missing:
        names = list(not_found)
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        raise IntermodalError(
            f"{results_dir}: {len(names)} of {len(pairs)} pairs have no result ({shown}; first: "
            f"{not_found[names[0]]}); pass --skip-missing to evaluate the others"
        )
    evaluation.missing.update(not_found)
    if not found:
        why = ""
        if evaluation.failed:
            first = next(iter(evaluation.failed.items()))
            why = f" ({len(evaluation.failed)} failed to register; {first[0]}: {first[1]})"
        raise IntermodalError(
            f"{results_dir}: none of the {len(pairs)} pairs has a result to evaluate{why}"
        )
    if progress:
        progress("evaluate", 0, len(found))
    for number, (pair, folder) in enumerate(found, start=1):
        evaluation.rows.extend(evaluate_pair(pair, folder, label_names))
        evaluation.pairs.append(pair)
        if progress:
            progress("evaluate", number, len(found))
    return evaluation


# ---------------------------------------------------------------------------------------------
# Summary statistics and outputs


@dataclass(frozen=True)
class Statistic:
    """Mean, standard deviation and worst-30 % mean of one metric over ``n`` finite cases."""

    n: int
    mean: float
    sd: float
    worst: float


def statistic(values: Sequence[float], *, higher_is_worse: bool) -> Statistic:
    """Summary of ``values``, ignoring NaN (SD divided by n, as NumPy's ``std``)."""
    array = np.asarray(values, dtype=np.float64)
    array = array[~np.isnan(array)]
    if array.size == 0:
        return Statistic(0, NAN, NAN, NAN)
    worst = metrics.worst_cases_mean(array, higher_is_worse=higher_is_worse)
    return Statistic(int(array.size), float(array.mean()), float(array.std()), worst)


def _per_pair(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The first row of every pair (pair-level values repeat on each label row)."""
    seen: dict[str, Mapping[str, Any]] = {}
    for row in rows:
        seen.setdefault(row["pair"], row)
    return list(seen.values())


def _label_rows(rows: Sequence[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    labels: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        if row["label"] != "":
            labels.setdefault(str(row["label"]), []).append(row)
    return labels


def _pair_means(rows: Sequence[Mapping[str, Any]], column: str) -> list[float]:
    """Per pair, the mean of ``column`` over its scored labels (NaN when none is)."""
    values: dict[str, list[float]] = {}
    for row in rows:
        if row["label"] != "":
            values.setdefault(row["pair"], []).append(float(row[column]))
    return [
        float(np.mean([v for v in vs if not math.isnan(v)]))
        if any(not math.isnan(v) for v in vs)
        else NAN
        for vs in values.values()
    ]


def _cell(value: float, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def summary_markdown(evaluation: Evaluation, title: str = "") -> str:
    """The Markdown summary: tables per label and per pair, and the pairs without results."""
    rows = evaluation.rows
    pairs = evaluation.pairs
    intra = sum(pair.intra_subject for pair in pairs)
    lines = [
        f"# Evaluation{': ' + title if title else ''}",
        "",
        f"{len(pairs)} pairs evaluated ({intra} intra-subject, {len(pairs) - intra} "
        f"inter-subject), from {evaluation.source}.",
        "",
        "Worst 30 %: the mean of the ceil(0.3 n) worst cases — the lowest Dice and NMI, the "
        "highest HD95, TRE, folding, SDlogJ and run time. SD: population standard deviation. "
        "Labels absent from the fixed or the moving label map are not scored.",
        "",
    ]
    labels = _label_rows(rows)
    if labels:
        lines += [
            "## Labels",
            "",
            "| label | n | Dice before | Dice | Dice SD | Dice worst 30 % | HD95 before (mm) "
            "| HD95 (mm) | HD95 SD | HD95 worst 30 % |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        columns = ("dice_before", "dice", "hd95_before_mm", "hd95_mm")
        groups = [
            (name, *([float(r[c]) for r in group] for c in columns))
            for name, group in labels.items()
        ]
        groups.append(
            (
                "**all labels** (per-pair mean)",
                _pair_means(rows, "dice_before"),
                _pair_means(rows, "dice"),
                _pair_means(rows, "hd95_before_mm"),
                _pair_means(rows, "hd95_mm"),
            )
        )
        for name, dice_before, dice, hd_before, hd in groups:
            d = statistic(dice, higher_is_worse=False)
            h = statistic(hd, higher_is_worse=True)
            db = statistic(dice_before, higher_is_worse=False)
            hb = statistic(hd_before, higher_is_worse=True)
            lines.append(
                f"| {name} | {d.n} | {_cell(db.mean)} | {_cell(d.mean)} | {_cell(d.sd)} | "
                f"{_cell(d.worst)} | {_cell(hb.mean, 2)} | {_cell(h.mean, 2)} | "
                f"{_cell(h.sd, 2)} | {_cell(h.worst, 2)} |"
            )
        lines.append("")
    per_pair = _per_pair(rows)
    lines += [
        "## Pairs",
        "",
        "| metric | n | mean | SD | worst 30 % |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for column, title_, higher_is_worse, scale in _PAIR_METRICS:
        s = statistic([scale * float(r[column]) for r in per_pair], higher_is_worse=higher_is_worse)
        digits = 2 if column.endswith(("_mm", "_s")) else 4
        lines.append(
            f"| {title_} | {s.n} | {_cell(s.mean, digits)} | {_cell(s.sd, digits)} | "
            f"{_cell(s.worst, digits)} |"
        )
    lines.append("")
    if evaluation.failed or evaluation.missing:
        lines += ["## Pairs without a result", ""]
        lines += [
            f"- {name}: registration failed: {why}" for name, why in evaluation.failed.items()
        ]
        lines += [f"- {name}: {why}" for name, why in evaluation.missing.items()]
        lines.append("")
    return "\n".join(lines)


def headline(evaluation: Evaluation) -> str:
    """One line: pairs evaluated, mean Dice and HD95 over labels, TRE and folding."""
    rows = evaluation.rows
    per_pair = _per_pair(rows)
    parts = [f"{len(evaluation.pairs)} pairs"]
    dice = statistic(_pair_means(rows, "dice"), higher_is_worse=False)
    if dice.n:
        hd95 = statistic(_pair_means(rows, "hd95_mm"), higher_is_worse=True)
        parts.append(f"Dice {dice.mean:.3f} (worst 30 % {dice.worst:.3f})")
        parts.append(f"HD95 {hd95.mean:.2f} mm")
    tre = statistic([float(r["tre_mm"]) for r in per_pair], higher_is_worse=True)
    if tre.n:
        parts.append(f"TRE {tre.mean:.2f} mm")
    folding = statistic(
        [float(r["nonpositive_jacobian_fraction"]) for r in per_pair], higher_is_worse=True
    )
    if folding.n:
        parts.append(f"non-positive Jacobian {100 * folding.mean:.3f} %")
    if evaluation.failed:
        parts.append(f"{len(evaluation.failed)} failed to register")
    if evaluation.missing:
        parts.append(f"{len(evaluation.missing)} without a result")
    return ", ".join(parts)


def metrics_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """``rows`` as CSV text with the header :data:`COLUMNS`; NaN is written as ``nan``."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(
            {
                key: repr(float(value))
                if isinstance(value, float) or isinstance(value, np.floating)
                else value
                for key, value in row.items()
            }
        )
    return buffer.getvalue()


def _boxplot(groups: Mapping[str, Sequence[float]], ylabel: str, title: str) -> bytes | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = {
        name: [v for v in values if math.isfinite(v)]
        for name, values in groups.items()
        if any(math.isfinite(v) for v in values)
    }
    if not data:
        return None
    figure, axis = plt.subplots(figsize=(max(4.0, 1.1 * len(data) + 1.5), 4.0))
    axis.boxplot(list(data.values()))
    axis.set_xticks(range(1, len(data) + 1), list(data), rotation=30, ha="right")
    axis.set_ylabel(ylabel)
    axis.set_title(title, fontsize=10)
    axis.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    plt.close(figure)
    return buffer.getvalue()


def _pair_plot(per_pair: Sequence[Mapping[str, Any]]) -> bytes | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = []
    for column, title, _, scale in _PAIR_METRICS:
        values = [scale * float(r[column]) for r in per_pair]
        values = [v for v in values if math.isfinite(v)]
        if values:
            panels.append((title, values))
    if not panels:
        return None
    figure, axes = plt.subplots(1, len(panels), figsize=(2.2 * len(panels) + 0.5, 3.8))
    for axis, (title, values) in zip(np.atleast_1d(axes), panels):
        axis.boxplot([values])
        axis.set_xticks([])
        axis.set_title(title, fontsize=9)
        axis.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    plt.close(figure)
    return buffer.getvalue()


def check_outputs(out_dir: str | os.PathLike[str], *, overwrite: bool) -> Path:
    """Check that :func:`write_evaluation` may write into ``out_dir``; returns it.

    Raises:
        OutputExistsError: one of :data:`OUTPUT_FILES` exists and ``overwrite`` is false.
        IntermodalError: ``out_dir`` is a file.
    """
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise IntermodalError(f"{out}: output is a file, expected a folder")
    if not overwrite:
        existing = [name for name in OUTPUT_FILES if (out / name).exists()]
        if existing:
            raise OutputExistsError(
                f"{out}: already holds {', '.join(existing)}; pass --overwrite to replace them"
            )
    return out


def write_evaluation(
    evaluation: Evaluation,
    out_dir: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    title: str = "",
) -> list[Path]:
    """Write ``metrics.csv``, ``summary.md`` and the box plots into ``out_dir``.

    Each file is written to a temporary name and moved into place. Box plots: Dice and HD95
    per label (``boxplot_dice.png``, ``boxplot_hd95.png``, when there are labels) and the
    pair metrics (``boxplot_pairs.png``).

    Returns:
        The paths written.

    Raises:
        OutputExistsError: an output exists and ``overwrite`` is false.
    """
    out = check_outputs(out_dir, overwrite=overwrite)
    written = [
        write_text_atomic(out / CSV_FILE, metrics_csv(evaluation.rows), overwrite=overwrite),
        write_text_atomic(
            out / SUMMARY_FILE, summary_markdown(evaluation, title), overwrite=overwrite
        ),
    ]
    labels = _label_rows(evaluation.rows)
    plots = {
        "dice": _boxplot(
            {name: [float(r["dice"]) for r in group] for name, group in labels.items()},
            "Dice",
            "Dice per label, after registration",
        ),
        "hd95": _boxplot(
            {name: [float(r["hd95_mm"]) for r in group] for name, group in labels.items()},
            "HD95 (mm)",
            "HD95 per label, after registration",
        ),
        "pairs": _pair_plot(_per_pair(evaluation.rows)),
    }
    for key, png in plots.items():
        if png is not None:
            written.append(write_bytes_atomic(out / PLOT_FILES[key], png, overwrite=overwrite))
    return written


def run_evaluation(
    manifest_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    results: str | os.PathLike[str] | None = None,
    method: PairMethod | None = None,
    pairs: str | os.PathLike[str] | None = None,
    split: str = "test",
    overwrite: bool = False,
    skip_missing: bool = False,
    progress: Callable[[str, int, int], None] | None = None,
    batch_progress: Callable[[PairOutcome | None, int, int], None] | None = None,
) -> Evaluation:
    """Evaluate a folder of results, or run a method on the pairs and evaluate it.

    Args:
        manifest_path: the dataset manifest (JSON or CSV).
        out_dir: where the evaluation is written; with ``method``, its registrations go to
            ``out_dir/registrations`` (a ``register-batch`` folder, so a second call resumes).
        results: a folder of output folders, one per pair (exclusive with ``method``).
        method: a :class:`~intermodal.batch.PairMethod` to run (exclusive with ``results``).
        pairs: which pairs (see :func:`intermodal.batch.load_pairs`).
        split: the split the pairs come from.
        overwrite: replace earlier evaluation files (and, with ``method``, redo the
            registrations).
        skip_missing: with ``results``, evaluate the pairs that have results and list the rest.
        progress: optional callback ``("evaluate", pairs finished, total)``.
        batch_progress: optional callback for the registrations (see
            :func:`intermodal.batch.run_batch`).

    Returns:
        The :class:`Evaluation`; failed registrations are in ``failed``.

    Raises:
        ManifestError: problems in the manifest or the pair list.
        OutputExistsError: evaluation files exist and ``overwrite`` is false.
        IntermodalError: neither or both of ``results`` and ``method``; missing results.
    """
    from intermodal.data.manifest import load_manifest

    if (results is None) == (method is None):
        raise IntermodalError("give either a results folder or a method to run, not both")
    out = check_outputs(out_dir, overwrite=overwrite)
    manifest = load_manifest(manifest_path, required_splits=())
    pair_list = load_pairs(manifest, pairs, split=split)
    failed: dict[str, str] = {}
    if method is not None:
        results = out / REGISTRATIONS_DIR
        summary = run_batch(
            pair_list, results, method, overwrite=overwrite, progress=batch_progress
        )
        failed = dict(summary.failed)
    evaluation = evaluate_results(
        pair_list,
        results,
        manifest.labels,
        skip_missing=skip_missing,
        failed=failed,
        progress=progress,
    )
    if method is not None:
        evaluation.source = f"method {method.name} (registrations in {results})"
    write_evaluation(evaluation, out, overwrite=overwrite, title=manifest.name)
    return evaluation
