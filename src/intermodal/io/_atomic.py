"""Atomic file output: write to a hidden temporary file beside the target, then move it in place."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path

from intermodal.errors import IntermodalError, OutputExistsError


def check_output_path(path: Path, *, overwrite: bool) -> None:
    """Raise if ``path`` is a directory, or exists and ``overwrite`` is false."""
    if path.is_dir():
        raise IntermodalError(f"{path}: is a directory, expected a file name")
    if not overwrite and path.exists():
        raise OutputExistsError(f"{path}: already exists (pass overwrite=True to replace it)")


def atomic_write(
    path: Path, write: Callable[[Path], None], *, suffix: str, overwrite: bool
) -> Path:
    """Call ``write(tmp)`` on a temporary path in ``path``'s folder, then move it to ``path``.

    The temporary name keeps ``suffix`` (the real extension, e.g. ``.nii.gz``) because writers
    such as ITK choose the format and compression from it. Readers never see a half-written
    ``path``; on any failure the temporary file is removed and ``path`` is left as it was.
    Without ``overwrite``, the final step is a hard link, which fails if another process created
    ``path`` in the meantime (a check-then-replace would silently clobber it).
    """
    check_output_path(path, overwrite=overwrite)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise IntermodalError(f"{path}: cannot create the output folder: {err.strerror}") from err
    stem = path.name[: len(path.name) - len(suffix)] if suffix else path.name
    tmp = path.parent / f".{stem}.tmp-{secrets.token_hex(6)}{suffix}"
    try:
        write(tmp)
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise OutputExistsError(
                    f"{path}: already exists (pass overwrite=True to replace it)"
                ) from None
            except OSError:
                # Filesystems without hard links: fall back to check-then-replace.
                check_output_path(path, overwrite=False)
                os.replace(tmp, path)
    except OSError as err:
        raise IntermodalError(f"{path}: cannot write: {err.strerror or err}") from err
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_bytes_atomic(path: str | os.PathLike, data: bytes, *, overwrite: bool = True) -> Path:
    """Write ``data`` to ``path`` through a temporary file (see :func:`atomic_write`)."""
    path = Path(path)
    return atomic_write(path, lambda tmp: tmp.write_bytes(data), suffix="", overwrite=overwrite)


def write_text_atomic(path: str | os.PathLike, text: str, *, overwrite: bool = True) -> Path:
    """Write UTF-8 ``text`` to ``path`` through a temporary file (see :func:`atomic_write`)."""
    return write_bytes_atomic(path, text.encode("utf-8"), overwrite=overwrite)
