"""Reading ITK transform files (``transform.h5``, ``affine.mat``), checked, in one line."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import SimpleITK as sitk

from intermodal.errors import IntermodalError


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """Send what C libraries write to file descriptor 2 to the null device for a while.

    HDF5 prints its whole error stack there (two dozen ``HDF5-DIAG`` lines) before ITK turns
    the failure into an exception, which is reported in one line instead.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def read_transform(path: str | os.PathLike[str], ndim: int | None = None) -> sitk.Transform:
    """Read an ITK transform file, as SimpleITK does, with a one-line error for a bad one.

    Args:
        path: a file ITK writes (``.h5``, ``.mat``, ``.txt``, ``.tfm``).
        ndim: the dimension the transform must have (``None``: any).

    Returns:
        The transform.

    Raises:
        IntermodalError: a missing or unreadable file, or a transform of another dimension.
    """
    path = Path(path)
    if not path.is_file():
        raise IntermodalError(f"{path}: transform file not found")
    try:
        with _native_stderr_silenced():
            transform = sitk.ReadTransform(str(path))
    except RuntimeError:
        raise IntermodalError(f"{path}: not a readable ITK transform file") from None
    if ndim is not None and transform.GetDimension() != ndim:
        raise IntermodalError(
            f"{path}: transform is {transform.GetDimension()}D, the fixed image is {ndim}D"
        )
    return transform
