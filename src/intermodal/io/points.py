"""Landmark points as CSV: a header row ``x,y,z`` (or ``x,y``), then one point per row in mm."""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import numpy as np

from intermodal.errors import IntermodalError
from intermodal.io._atomic import atomic_write

_HEADERS = {("x", "y"): 2, ("x", "y", "z"): 3}


def read_points(path: str | os.PathLike[str]) -> np.ndarray:
    """Read landmarks from a CSV file with a header row ``x,y,z`` (3D) or ``x,y`` (2D).

    Coordinates are physical positions in millimetres, LPS, as ITK uses them (the same space
    as ``image.TransformIndexToPhysicalPoint``). Blank lines are ignored.

    Returns:
        A float64 array ``(N, ndim)``; ``N`` may be 0.

    Raises:
        IntermodalError: a missing file, a missing or wrong header, or a row that is not
            ``ndim`` finite numbers (the message gives the line number).
    """
    path = Path(path)
    try:
        handle = open(path, newline="", encoding="utf-8-sig")
    except OSError as err:
        raise IntermodalError(f"{path}: cannot open points file: {err.strerror}") from err
    ndim = 0
    points: list[list[float]] = []
    with handle:
        reader = csv.reader(handle)
        try:
            for row in reader:
                cells = [cell.strip() for cell in row]
                if not any(cells):
                    continue
                line = reader.line_num
                if not ndim:
                    ndim = _HEADERS.get(tuple(cell.lower() for cell in cells), 0)
                    if not ndim:
                        raise IntermodalError(
                            f"{path}, line {line}: expected the header 'x,y,z' (3D) or 'x,y' "
                            f"(2D), got {','.join(cells)!r}"
                        )
                    continue
                points.append(_parse_row(path, line, cells, ndim))
        except (csv.Error, UnicodeDecodeError) as err:
            raise IntermodalError(
                f"{path}, line {reader.line_num}: not a readable CSV file ({err})"
            ) from err
    if not ndim:
        raise IntermodalError(f"{path}: empty points file, expected a header row 'x,y,z' or 'x,y'")
    return np.array(points, dtype=np.float64).reshape(-1, ndim)


def _parse_row(path: Path, line: int, cells: list[str], ndim: int) -> list[float]:
    names = "x,y,z"[: 2 * ndim - 1]
    if len(cells) != ndim:
        raise IntermodalError(
            f"{path}, line {line}: expected {ndim} values ({names}), got {len(cells)}"
        )
    try:
        values = [float(cell) for cell in cells]
    except ValueError:
        raise IntermodalError(
            f"{path}, line {line}: expected {ndim} numbers ({names}), got {','.join(cells)!r}"
        ) from None
    if not all(math.isfinite(v) for v in values):
        raise IntermodalError(f"{path}, line {line}: coordinates must be finite, got {values}")
    return values


def write_points(
    path: str | os.PathLike[str], points: np.ndarray, *, overwrite: bool = False
) -> Path:
    """Write landmarks ``(N, 2)`` or ``(N, 3)`` in mm (LPS) to CSV, atomically.

    Values are written with full precision, so :func:`read_points` gives them back exactly.

    Raises:
        IntermodalError: ``points`` is not ``(N, 2)`` or ``(N, 3)`` finite numbers.
        OutputExistsError: ``path`` exists and ``overwrite`` is false.
    """
    path = Path(path)
    array = np.asarray(points, dtype=np.float64)
    if array.ndim != 2 or array.shape[1] not in (2, 3):
        raise IntermodalError(
            f"{path}: points must be an array (N, 2) or (N, 3), got shape {array.shape}"
        )
    if not np.isfinite(array).all():
        raise IntermodalError(f"{path}: points must be finite, got NaN or infinite values")
    header = "x,y,z" if array.shape[1] == 3 else "x,y"
    text = "".join(",".join(repr(float(v)) for v in row) + "\n" for row in array)

    def write(tmp: Path) -> None:
        tmp.write_text(header + "\n" + text, encoding="utf-8")

    return atomic_write(path, write, suffix=path.suffix, overwrite=overwrite)
