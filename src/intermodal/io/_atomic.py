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
        raise OutputExistsError(
            f"{path}: already exists (pass --overwrite, overwrite=True in Python, to replace it)"
        )


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
                    f"{path}: already exists "
                    f"(pass --overwrite, overwrite=True in Python, to replace it)"
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


def write_files_atomic(files: dict[Path, bytes], *, overwrite: bool = True) -> list[Path]:
    """Write several files that belong together (e.g. model weights and their card).

    Every file is first written in full to a temporary file beside its target; only when all
    of them are written are they moved into place, one ``os.replace`` each. So a write that
    fails (a full disk) leaves no temporary file and every target as it was. The moves
    themselves do not fail for lack of space; a crash between two moves can still leave a new
    file beside an old one, which is why model cards carry a checksum of their weights.

    Raises:
        OutputExistsError: a target exists and ``overwrite`` is false.
        IntermodalError: a write failed; the message names the file.
    """
    paths = [Path(path) for path in files]
    for path in paths:
        check_output_path(path, overwrite=overwrite)
    temps: dict[Path, Path] = {}
    current = paths[0]
    try:
        for path, data in zip(paths, files.values()):
            current = path
            path.parent.mkdir(parents=True, exist_ok=True)
            temps[path] = path.parent / f".{path.name}.tmp-{secrets.token_hex(6)}"
            temps[path].write_bytes(data)
        for path in paths:
            current = path
            os.replace(temps[path], path)
    except OSError as err:
        raise IntermodalError(f"{current}: cannot write: {err.strerror or err}") from err
    finally:
        for tmp in temps.values():
            tmp.unlink(missing_ok=True)
    return paths


def write_bytes_atomic(path: str | os.PathLike, data: bytes, *, overwrite: bool = True) -> Path:
    """Write ``data`` to ``path`` through a temporary file (see :func:`atomic_write`)."""
    path = Path(path)
    return atomic_write(path, lambda tmp: tmp.write_bytes(data), suffix="", overwrite=overwrite)


def write_text_atomic(path: str | os.PathLike, text: str, *, overwrite: bool = True) -> Path:
    """Write UTF-8 ``text`` to ``path`` through a temporary file (see :func:`atomic_write`)."""
    return write_bytes_atomic(path, text.encode("utf-8"), overwrite=overwrite)
