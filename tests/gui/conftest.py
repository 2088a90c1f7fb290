"""Fixtures for the desktop app's tests: Qt off screen, a private settings store, 2D files.

``QT_QPA_PLATFORM`` is set before anything imports Qt, so the tests need no display. Modules
that need Qt skip themselves (``pytest.importorskip``) when the ``gui`` extra is absent.
"""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import SimpleITK as sitk  # noqa: E402


@pytest.fixture(autouse=True)
def _keep_the_c_locale():
    """Something in the Qt stack resets the process's C locale to "C" (measured: after the
    window tests ``locale.setlocale(LC_ALL)`` read "C"), which makes later ``open()`` calls
    without an encoding read ASCII; restore it so no GUI test changes the tests after it."""
    import locale

    before = locale.setlocale(locale.LC_ALL)
    yield
    locale.setlocale(locale.LC_ALL, before)


@pytest.fixture(scope="session")
def pair_2d_files(tmp_path_factory, small_pair_2d) -> dict[str, Path]:
    """The 2D phantom pair on disk: ct, mr and the MR's labels (fast to register)."""
    folder = tmp_path_factory.mktemp("pair2d")
    images = {"ct": small_pair_2d.ct, "mr": small_pair_2d.mr, "mr_labels": small_pair_2d.mr_labels}
    paths = {}
    for name, image in images.items():
        paths[name] = folder / f"{name}.nii.gz"
        sitk.WriteImage(image, str(paths[name]))
    return paths


@pytest.fixture
def store(tmp_path):
    """A QSettings store in a temporary file, so tests never touch the user's recent files."""
    from PySide6.QtCore import QSettings

    return QSettings(str(tmp_path / "intermodal.ini"), QSettings.Format.IniFormat)


@pytest.fixture
def dialogs(monkeypatch) -> list[str]:
    """Every error dialog's message, recorded instead of shown (a modal dialog would block)."""
    from PySide6.QtWidgets import QMessageBox

    shown: list[str] = []

    def critical(parent, title, text, *args, **kwargs):
        shown.append(text)
        return QMessageBox.StandardButton.Ok

    monkeypatch.setattr(QMessageBox, "critical", critical)
    return shown


@pytest.fixture
def window(qtbot, store, dialogs):
    """A shown main window with a private store; error dialogs land in ``dialogs``."""
    from intermodal.gui.window import MainWindow

    main = MainWindow(store)
    qtbot.addWidget(main)
    main.resize(1100, 750)
    main.show()
    yield main
    if main.job is not None:
        main.job.cancel()
        main.job.wait()
