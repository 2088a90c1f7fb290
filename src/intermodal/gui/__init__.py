"""The Qt desktop application: load a fixed and a moving image, register, inspect, export.

The window calls the public API only (:func:`intermodal.io.read_image`,
:func:`intermodal.registration.register`, :func:`intermodal.report.save_result`) and holds no
model logic. It needs the ``gui`` extra (PySide6 and pyqtgraph); importing this package does
not import Qt, so the pure display code in :mod:`intermodal.gui.display` and
:mod:`intermodal.gui.scene` can be used and tested without it.

Example:
    >>> from intermodal.gui import run_gui          # doctest: +SKIP
    >>> run_gui(fixed="ct.nii.gz", moving="mr.nii.gz")   # doctest: +SKIP
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence

from intermodal.errors import IntermodalError

GUI_REQUIREMENTS = ("PySide6", "pyqtgraph")


def require_qt() -> None:
    """Raise a one-line :class:`IntermodalError` naming the extra when Qt is not installed."""
    missing = [name for name in GUI_REQUIREMENTS if importlib.util.find_spec(name) is None]
    if missing:
        raise IntermodalError(
            f"the desktop app needs {' and '.join(missing)}: install the gui extra, "
            "pip install 'intermodal[gui]'"
        )


def run_gui(
    *,
    fixed: str | os.PathLike | None = None,
    moving: str | os.PathLike | None = None,
    labels: str | os.PathLike | None = None,
    result: str | os.PathLike | None = None,
    screenshot: str | os.PathLike | None = None,
    register: bool = False,
    view: str | None = None,
    size: Sequence[int] = (1400, 900),
    registration: dict | None = None,
    argv: Sequence[str] | None = None,
) -> int:
    """Start the application; see :func:`intermodal.gui.app.run` for the arguments.

    Returns:
        The process exit code (0 on a normal quit).
    """
    require_qt()
    from intermodal.gui.app import run

    return run(
        fixed=fixed,
        moving=moving,
        labels=labels,
        result=result,
        screenshot=screenshot,
        register=register,
        view=view,
        size=size,
        registration=registration,
        argv=argv,
    )


__all__ = ["GUI_REQUIREMENTS", "require_qt", "run_gui"]
