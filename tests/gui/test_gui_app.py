"""``intermodal gui``: the app starts and quits cleanly in a fresh process, and renders screenshots.

A clean exit code matters: PySide6-Essentials 6.12.0 with pyqtgraph 0.14.0 crashed at
interpreter exit after the window had worked, which only a separate process shows.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("PySide6", reason="the gui extra (PySide6) is not installed")
pytest.importorskip("pyqtgraph", reason="the gui extra (pyqtgraph) is not installed")

from intermodal.cli import main  # noqa: E402


def _gui(args: list[str], tmp_path) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "QT_QPA_PLATFORM": "offscreen",
        "XDG_CONFIG_HOME": str(tmp_path / "config"),  # recent files stay out of the user's home
        "OMP_NUM_THREADS": "1",
    }
    return subprocess.run(
        [sys.executable, "-m", "intermodal", "gui", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def _picture(path) -> np.ndarray:
    from PySide6.QtGui import QImage

    image = QImage(str(path)).convertToFormat(QImage.Format.Format_RGB888)
    assert not image.isNull(), f"{path} is not a readable PNG"
    width, height = image.width(), image.height()
    row_bytes = image.bytesPerLine()
    # copy while the QImage is alive: the buffer is its memory
    data = np.frombuffer(image.constBits(), np.uint8, count=row_bytes * height).copy()
    return data.reshape(height, row_bytes)[:, : width * 3].reshape(height, width, 3)


def test_the_app_starts_and_quits_with_exit_code_0(tmp_path):
    shot = tmp_path / "empty.png"
    done = _gui(["--screenshot", str(shot), "--size", "900", "600"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert _picture(shot).shape == (600, 900, 3)


def test_screenshot_after_registering_a_2d_pair(tmp_path, pair_2d_files):
    shot = tmp_path / "jacobian.png"
    done = _gui(
        [
            "--fixed",
            str(pair_2d_files["ct"]),
            "--moving",
            str(pair_2d_files["mr"]),
            "--register",
            "--refine",
            "10",
            "--model",
            "none",
            "--view",
            "jacobian",
            "--screenshot",
            str(shot),
        ],
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "propagateSizeHints" not in done.stderr
    picture = _picture(shot)
    assert picture.shape == (900, 1400, 3)
    # the view on the right holds the coloured Jacobian map, not an empty or gray view (a gray
    # pixel has red = blue; the default field is smooth, det near 1, so the tint is light)
    view = picture[100:800, 500:1300].astype(int)
    colourful = np.abs(view[..., 0] - view[..., 2]) > 10
    assert colourful.mean() > 0.05
    assert not (tmp_path / "config").exists() or not any((tmp_path / "config").rglob("*.conf"))


def test_interactive_run_opens_the_files_and_returns_0_on_close(qapp, pair_2d_files):
    """The interactive path (no --screenshot): files opened, event loop run, clean return."""
    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication

    from intermodal.gui.app import run
    from intermodal.gui.window import MainWindow

    seen = {}

    def inspect_and_close():
        windows = [w for w in QApplication.topLevelWidgets() if isinstance(w, MainWindow)]
        window = windows[-1]
        seen["fixed"] = window.scene.fixed.source
        seen["moving"] = window.scene.moving.source
        seen["mode"] = window.views["slice"].mode
        window.remember = False
        window.close()

    QTimer.singleShot(300, inspect_and_close)
    code = run(
        fixed=pair_2d_files["ct"],
        moving=pair_2d_files["mr"],
        view="checkerboard",
        registration={"model": "none"},
    )
    assert code == 0
    assert seen == {
        "fixed": str(pair_2d_files["ct"]),
        "moving": str(pair_2d_files["mr"]),
        "mode": "checkerboard",
    }


def test_screenshot_of_a_saved_result(qapp, tmp_path, pair_2d_files, small_pair_2d):
    from intermodal.registration import Settings, register
    from intermodal.report import save_result

    result = register(small_pair_2d.ct, small_pair_2d.mr, Settings(model=None, refine=10))
    paths = {"fixed": str(pair_2d_files["ct"]), "moving": str(pair_2d_files["mr"])}
    save_result(result, tmp_path / "out", extra_report={"inputs_paths": paths})
    shot = tmp_path / "result.png"
    args = ["gui", "--result", str(tmp_path / "out"), "--view", "blend", "--screenshot", str(shot)]
    assert main(args) == 0
    assert _picture(shot).std() > 10
    assert main(["gui", "--result", str(tmp_path), "--screenshot", str(shot)]) == 2


def test_no_display_is_one_line_not_an_abort(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env.pop("QT_QPA_PLATFORM", None)
    done = subprocess.run(
        [sys.executable, "-m", "intermodal", "gui"],
        capture_output=True,
        text=True,
        env={**env, "XDG_CONFIG_HOME": str(tmp_path)},
        timeout=120,
    )
    if sys.platform.startswith("linux"):
        assert done.returncode == 2
        assert done.stderr.strip().startswith("intermodal: error: no display")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--view", "sepia"], "--view must be one of"),
        (["--register"], "--register needs --screenshot"),
        (["--screenshot", "{tmp}/a.jpg"], "the screenshot must be a .png file"),
        (["--screenshot", "{tmp}/a.png", "--fixed", "{tmp}/absent.nii.gz"], "absent.nii.gz"),
    ],
)
def test_bad_arguments_end_in_one_line(capsys, tmp_path, args, message):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    assert main(["gui", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("intermodal: error:") and message in err and "\n" not in err
    assert not (tmp_path / "a.png").exists()


def test_gui_help_does_not_import_qt_or_torch():
    code = (
        "import sys\n"
        "from intermodal.cli import main\n"
        "try:\n    main(['gui', '--help'])\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('torch', 'PySide6', 'pyqtgraph') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip().endswith("[]"), done.stderr


def test_a_missing_result_folder_is_one_line_once(tmp_path):
    done = _gui(
        ["--result", str(tmp_path / "none"), "--screenshot", str(tmp_path / "s.png")], tmp_path
    )
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "error:" in lines[0] and "result folder not found" in lines[0], (
        done.stderr
    )
