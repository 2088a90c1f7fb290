"""Starting the application, interactively or to render one screenshot off screen."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from intermodal.errors import IntermodalError

logger = logging.getLogger(__name__)


# Qt's offscreen platform reports every window resize it cannot pass on; nothing to act on.
_QUIET_QT_MESSAGES = ("This plugin does not support propagateSizeHints()",)


def _qt_message(mode, context, message: str) -> None:
    if message in _QUIET_QT_MESSAGES:
        return
    logger.warning("Qt: %s", message)


def _no_display() -> bool:
    """On Linux without X11 or Wayland, Qt would abort the process instead of raising."""
    if not sys.platform.startswith("linux") or os.environ.get("QT_QPA_PLATFORM"):
        return False
    return not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def _application(argv: Sequence[str] | None):
    from PySide6.QtCore import qInstallMessageHandler
    from PySide6.QtWidgets import QApplication

    qInstallMessageHandler(_qt_message)

    app = QApplication.instance()
    if app is None:
        app = QApplication(list(argv) if argv is not None else sys.argv[:1])
        app.setApplicationName("intermodal")
        app.setOrganizationName("intermodal")
    return app


def run(
    *,
    fixed: str | os.PathLike | None = None,
    moving: str | os.PathLike | None = None,
    labels: str | os.PathLike | None = None,
    result: str | os.PathLike | None = None,
    screenshot: str | os.PathLike | None = None,
    register: bool = False,
    view: str | None = None,
    size: Sequence[int] = (1400, 900),
    registration: dict[str, Any] | None = None,
    argv: Sequence[str] | None = None,
) -> int:
    """Open the window, optionally with images, and run until it is closed.

    With ``screenshot``, nothing is interactive: the window is rendered off screen (the Qt
    ``offscreen`` platform unless ``QT_QPA_PLATFORM`` says otherwise), the images are opened,
    the registration runs when ``register`` is true, and the window is saved as a PNG.

    Args:
        fixed: the fixed image (file or DICOM folder).
        moving: the moving image.
        labels: a label map in the moving image's space.
        result: an output folder of ``intermodal register`` to open (after the images).
        screenshot: PNG path to write instead of running interactively.
        register: register once the images are open (screenshot mode only).
        view: the view mode of every view, one of
            :data:`~intermodal.gui.display.VIEW_MODES`.
        size: window width and height in pixels.
        registration: settings panel values (model, refine, init, device).
        argv: arguments for QApplication.

    Returns:
        The exit code: 0 after a normal quit.

    Raises:
        IntermodalError: in screenshot mode, an image that cannot be read or a registration
            that fails (interactively these are dialogs).
    """
    from intermodal.gui.display import VIEW_MODES

    if view is not None and view not in VIEW_MODES:
        raise IntermodalError(f"--view must be one of {', '.join(VIEW_MODES)}, not {view!r}")
    if register and screenshot is None:
        raise IntermodalError("--register needs --screenshot (interactively, press Register)")
    if register and (fixed is None or moving is None):
        raise IntermodalError("--register needs --fixed and --moving")
    if register and result is not None:
        raise IntermodalError("--register and --result exclude each other")
    if screenshot is not None:
        if Path(screenshot).suffix.lower() != ".png":
            raise IntermodalError(f"{screenshot}: the screenshot must be a .png file")
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    elif _no_display():
        raise IntermodalError(
            "no display to open the window on (DISPLAY and WAYLAND_DISPLAY are unset); use "
            "--screenshot, or set QT_QPA_PLATFORM (e.g. offscreen)"
        )
    app = _application(argv)
    from intermodal.gui.window import MainWindow

    window = MainWindow(remember=screenshot is None)
    window.resize(int(size[0]), int(size[1]))
    if registration:
        window.set_registration_options(registration)
    if screenshot is not None:
        return _screenshot(app, window, fixed, moving, labels, result, screenshot, register, view)
    window.show()
    for role, path in (("fixed", fixed), ("moving", moving), ("labels", labels)):
        if path is not None:
            window.open_path(role, path)
    if result is not None:
        window.open_result(result)
    if view is not None:
        window.set_mode_all(view)
    return int(app.exec())


def _screenshot(app, window, fixed, moving, labels, result, screenshot, register, view) -> int:
    from intermodal.gui.scene import read_layer

    errors: list[str] = []
    window.error_handler = errors.append
    window.log_errors = False  # an error that ends the run is raised: one line, not two
    window.show()
    app.processEvents()
    for role, path in (("fixed", fixed), ("moving", moving)):
        if path is not None:
            window.set_layer(role, read_layer(path))
    if labels is not None:
        from intermodal.io import read_image

        window.set_labels(read_image(labels), source=str(labels))
    if result is not None and not window.open_result(result):
        window.close()
        raise IntermodalError(errors[-1])
    if register and window.register_and_wait() != "succeeded":
        window.close()
        raise IntermodalError(errors[-1] if errors else "registration did not finish")
    if view is not None:
        window.set_mode_all(view)
    app.processEvents()
    window.save_screenshot(screenshot)
    window.close()
    app.processEvents()
    return 0
