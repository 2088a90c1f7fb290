"""The main window under pytest-qt, off screen: loading, views, registration, export, errors."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("PySide6", reason="the gui extra (PySide6) is not installed")
pytest.importorskip("pyqtgraph", reason="the gui extra (pyqtgraph) is not installed")
pytest.importorskip("pytestqt", reason="pytest-qt is not installed")

from PySide6.QtCore import QMimeData, QPoint, QPointF, Qt, QUrl  # noqa: E402
from PySide6.QtGui import QDropEvent  # noqa: E402

from intermodal import __version__  # noqa: E402
from intermodal.errors import IntermodalError  # noqa: E402
from intermodal.gui.display import VIEW_MODES  # noqa: E402
from intermodal.gui.scene import result_layers  # noqa: E402
from intermodal.gui.window import MainWindow  # noqa: E402

REGISTER_OUTPUTS = {
    "affine.mat",
    "displacement.nii.gz",
    "inverse_displacement.nii.gz",
    "jacobian.nii.gz",
    "qa.json",
    "qc.png",
    "report.html",
    "report.json",
    "transform.h5",
    "warped.nii.gz",
}

FAST = {"refine": 10, "model": None}


@pytest.fixture(scope="module")
def registered_2d(small_pair_2d):
    """One registration of the 2D pair, shared by the view tests (the worker has its own test)."""
    from intermodal.registration import Settings, register

    return register(small_pair_2d.ct, small_pair_2d.mr, Settings(**FAST))


def _open_pair(window, files: dict[str, Path]) -> None:
    assert window.open_path("fixed", files["ct"])
    assert window.open_path("moving", files["mr"])


def _drop(target, paths) -> None:
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(p)) for p in paths])
    event = QDropEvent(
        QPointF(5, 5),
        Qt.DropAction.CopyAction,
        mime,
        Qt.MouseButton.LeftButton,
        Qt.KeyboardModifier.NoModifier,
    )
    target.dropEvent(event)


def test_defaults_match_the_library():
    from intermodal import registration
    from intermodal.gui import registration_panel as panel

    settings = registration.Settings()
    assert panel.DEFAULT_REFINE == settings.refine
    assert panel.DEFAULT_INIT == settings.init
    assert panel.DEFAULT_SEARCH_ORIENTATION == settings.search_orientation
    default_model = panel.model_choices()[1]
    assert (None if default_model == "none" else default_model) == settings.model
    assert panel.DEVICE_CHOICES == registration.DEVICE_CHOICES


def test_open_two_3d_images_gives_three_linked_views(window, small_pair_files, dialogs):
    _open_pair(window, small_pair_files)
    assert dialogs == []
    assert set(window.views) == {"axial", "coronal", "sagittal"}
    for view in window.views.values():
        shown = view.displayed()
        assert shown is not None and shown.ndim == 3 and shown.std() > 0
    assert window.scene.fixed.modality == "ct" and window.scene.moving.modality == "mr"
    assert "ct.nii.gz" in window.windowTitle() and "mr.nii.gz" in window.windowTitle()
    # clicking in the axial view moves the crosshair, and the other views follow
    before = window.cursor
    window.views["axial"].pointed.emit("axial", 3, 5)
    assert window.cursor == (before[0], 3, 5)
    sagittal = window.views["sagittal"]
    assert sagittal.vline.value() == pytest.approx((3 + 0.5) * 5.0)  # column = y, 5 mm
    assert "Sagittal</b> 6/40" in sagittal.title.text()  # x = 5 is slice 6 of 40


def test_wheel_scrolls_through_slices_and_ctrl_wheel_zooms(window, small_pair_files):
    _open_pair(window, small_pair_files)
    z = window.cursor[0]

    class Wheel:
        def __init__(self, delta, modifiers=Qt.KeyboardModifier.NoModifier):
            self._delta, self._modifiers, self.accepted = delta, modifiers, False

        def delta(self):
            return self._delta

        def modifiers(self):
            return self._modifiers

        def accept(self):
            self.accepted = True

        def ignore(self):
            pass

        def pos(self):
            return QPointF(10, 10)

    box = window.views["axial"].box
    box.wheelEvent(Wheel(120))
    assert window.cursor[0] == z + 1
    box.wheelEvent(Wheel(-120))
    box.wheelEvent(Wheel(-120))
    assert window.cursor[0] == z - 1
    box.wheelEvent(Wheel(120, Qt.KeyboardModifier.ControlModifier))
    assert window.cursor[0] == z - 1  # a zoom, not a slice step
    window.actions_by_name["page_up"].trigger()
    assert window.cursor[0] == z + 9


def test_a_2d_image_gets_one_view(window, pair_2d_files):
    _open_pair(window, pair_2d_files)
    assert list(window.views) == ["slice"]
    assert window.views["slice"].displayed().shape[:2] == (64, 64)


def test_drag_and_drop(window, pair_2d_files, small_pair_files):
    _drop(window, [pair_2d_files["ct"], pair_2d_files["mr"]])
    assert window.scene.fixed.source == str(pair_2d_files["ct"])
    assert window.scene.moving.source == str(pair_2d_files["mr"])
    _drop(window.images_panel.drop_labels["labels"], [pair_2d_files["mr_labels"]])
    assert window.scene.labels is not None
    _drop(window.images_panel.drop_labels["moving"], [pair_2d_files["ct"]])
    assert window.scene.moving.source == str(pair_2d_files["ct"])
    _drop(window.images_panel.drop_labels["fixed"], [small_pair_files["ct"]])
    assert window.scene.fixed.source == str(small_pair_files["ct"])


def test_recent_files_are_remembered(qtbot, window, store, pair_2d_files):
    _open_pair(window, pair_2d_files)
    expected = [str(pair_2d_files["mr"].absolute()), str(pair_2d_files["ct"].absolute())]
    assert window.recent_files()[:2] == expected
    again = MainWindow(store)
    qtbot.addWidget(again)
    assert again.recent_files()[:2] == expected
    entries = [a.text() for a in again.recent_menus["moving"].actions()]
    assert entries[:2] == expected
    again.recent_menus["moving"].actions()[1].trigger()  # open the CT from the recent list
    assert again.scene.moving.source == expected[1]


def test_window_presets_and_auto_levels(window, pair_2d_files):
    _open_pair(window, pair_2d_files)
    assert window.display_panel.window_boxes["fixed"].currentText() == "soft tissue"
    assert window.levels["fixed"] == (-160.0, 240.0)
    assert window.display_panel.window_boxes["moving"].currentText() == "auto"
    window.display_panel.window_boxes["fixed"].setCurrentText("bone")
    assert window.levels["fixed"] == (-500.0, 1300.0)
    window.display_panel.window_boxes["fixed"].setCurrentText("lung")
    assert window.levels["fixed"] == (-1350.0, 150.0)
    mr = window.scene.moving.array
    low, high = window.levels["moving"]
    assert mr.min() <= low < high <= mr.max()
    level, width = window.display_panel.level_spins["fixed"]
    level.setValue(100.0)
    width.setValue(50.0)
    level.editingFinished.emit()
    assert window.levels["fixed"] == (75.0, 125.0)
    assert window.display_panel.window_boxes["fixed"].currentText() == "custom"


def test_status_bar_shows_values_and_position(window, pair_2d_files):
    _open_pair(window, pair_2d_files)
    window.views["slice"].hovered.emit("slice", 10, 20)
    message = window.statusBar().currentMessage()
    x, y = window.scene.physical_point((10, 20))
    assert message.startswith(f"({x:.1f}, {y:.1f}) mm")
    value = window.scene.fixed.array[10, 20]
    assert f"fixed {value:.0f} HU" in message or f"fixed {value:.1f} HU" in message
    assert "a.u." in message


def test_registration_runs_in_the_worker_to_completion(qtbot, window, pair_2d_files, dialogs):
    _open_pair(window, pair_2d_files)
    window.open_path("labels", pair_2d_files["mr_labels"])
    window.set_registration_options(FAST)
    steps = []
    with qtbot.waitSignal(window.registration_finished, timeout=120_000) as finished:
        assert window.start_registration()
        window.job.progressed.connect(lambda stage, step, total: steps.append((stage, step)))
        assert window.busy and not window.registration_panel.register_button.isEnabled()
        assert window.registration_panel.cancel_button.isEnabled()
        qtbot.wait(1)  # the event loop runs while the worker does: the window stays responsive
    assert finished.args == ["succeeded"]
    assert dialogs == []
    assert not window.busy and window.registration_panel.register_button.isEnabled()
    assert ("refine", 10) in steps
    assert window.moving_state == "after"
    assert window.scene.result is not None and window.scene.result.warped_labels is not None
    metrics = window.metrics()
    assert {"NMI before", "NMI after", "SDlogJ", "Folding (det ≤ 0)", "time total"} <= set(metrics)
    nmi = window.scene.result.report["nmi"]
    assert metrics["NMI after"] == f"{nmi['after']:.4f}"
    assert window.actions_by_name["export"].isEnabled()


def test_cancel_a_running_registration(qtbot, window, pair_2d_files, dialogs):
    _open_pair(window, pair_2d_files)
    window.set_registration_options({"refine": 100_000, "model": None})

    def cancel_once_refining(stage, step, total):
        if stage == "refine" and step >= 2:
            window.cancel_registration()

    with qtbot.waitSignal(window.registration_finished, timeout=120_000) as finished:
        window.start_registration()
        window.job.progressed.connect(cancel_once_refining)
    assert finished.args == ["cancelled"]
    assert dialogs == []
    assert window.scene.result is None and not window.busy
    assert window.registration_panel.stage_label.text() == "cancelled"
    assert window.registration_panel.register_button.isEnabled()


@pytest.mark.parametrize(
    "options, message",
    [
        ({"refine": 10, "model": "/nonexistent/model.safetensors"}, "model weights file not found"),
    ],
)
def test_a_failing_registration_shows_one_line_and_the_window_survives(
    qtbot, window, pair_2d_files, dialogs, options, message
):
    _open_pair(window, pair_2d_files)
    window.set_registration_options(options)
    with qtbot.waitSignal(window.registration_finished, timeout=60_000) as finished:
        window.start_registration()
    assert finished.args == ["failed"]
    assert len(dialogs) == 1 and message in dialogs[0] and "\n" not in dialogs[0]
    assert not window.busy and window.registration_panel.register_button.isEnabled()
    window.set_mode_all("blend")  # still works
    assert window.views["slice"].displayed() is not None


def test_2d_with_3d_is_refused_with_a_dialog(window, pair_2d_files, small_pair_files, dialogs):
    window.open_path("fixed", pair_2d_files["ct"])
    assert not window.open_path("moving", small_pair_files["mr"])
    assert dialogs == [
        f"{small_pair_files['mr']}: the moving image is 3D but the fixed image is 2D; "
        "both must be 2D or both 3D"
    ]
    assert not window.open_path("labels", small_pair_files["mr_labels"])
    assert "label map is 3D" in dialogs[-1]
    assert window.scene.moving is None and window.scene.labels is None
    # a 3D fixed image replaces a 2D pair: the 2D moving image goes with it
    window.open_path("moving", pair_2d_files["mr"])
    assert window.open_path("fixed", small_pair_files["ct"])
    assert window.scene.moving is None and set(window.views) == {"axial", "coronal", "sagittal"}
    assert not window.registration_panel.register_button.isEnabled()


@pytest.mark.parametrize(
    "name, content, problem",
    [
        ("corrupt.nii.gz", gzip.compress(b"definitely not a nifti header" * 20), "corrupt.nii.gz"),
        ("notes.txt", b"hello", "unsupported file extension"),
        ("missing.nii.gz", None, "file or directory not found"),
    ],
)
def test_bad_file_gives_an_error_dialog_and_the_app_survives(
    window, tmp_path, pair_2d_files, dialogs, name, content, problem
):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    window.open_path("fixed", pair_2d_files["ct"])
    assert not window.open_path("moving", path)
    assert len(dialogs) == 1
    assert problem in dialogs[0] and str(path) in dialogs[0] and "\n" not in dialogs[0]
    assert window.scene.moving is None and window.scene.fixed is not None
    assert window.open_path("moving", pair_2d_files["mr"])  # and it goes on working
    assert len(dialogs) == 1


def test_empty_dicom_folder_gives_an_error_dialog(window, tmp_path, dialogs):
    assert not window.open_path("fixed", tmp_path)
    assert "no DICOM series found" in dialogs[0]


def test_every_view_mode_on_every_plane(window, small_pair, small_pair_files, dialogs):
    """Each mode differs from the fixed image alone (grid: lines drawn), in every 3D plane."""
    from intermodal.registration import Settings, register

    _open_pair(window, small_pair_files)
    window.set_labels(small_pair.mr_labels, source="labels")
    result = register(window.scene.fixed.image, window.scene.moving.image, Settings(**FAST))
    window.show_result(result_layers(result, small_pair.mr_labels))
    assert window.moving_state == "after"
    window.set_mode_all("fixed")
    fixed_only = {plane: view.displayed().copy() for plane, view in window.views.items()}
    for mode in VIEW_MODES:
        window.set_mode_all(mode)
        for plane, view in window.views.items():
            assert view.mode == mode
            assert "not available" not in view.title.text(), (mode, plane)
            assert view.lines.isVisible() == (mode == "grid")
            if mode in ("fixed", "grid"):
                np.testing.assert_array_equal(view.displayed(), fixed_only[plane])
            else:
                assert not np.array_equal(view.displayed(), fixed_only[plane]), (mode, plane)
    # each view can show its own mode
    window.views["coronal"].mode_box.setCurrentIndex(VIEW_MODES.index("jacobian"))
    assert window.views["coronal"].mode == "jacobian" and window.views["axial"].mode == "labels"
    assert dialogs == []


def test_a_result_with_a_warning_says_so_on_the_window(window, pair_2d_files, registered_2d):
    _open_pair(window, pair_2d_files)
    layers = result_layers(registered_2d)
    layers.report = {**layers.report, "warnings": ["the moving image fits turned: check"]}
    window._on_succeeded(layers)
    assert window.registration_panel.stage_label.text().endswith("1 warning(s): see Metrics")
    assert window.statusBar().currentMessage() == "the moving image fits turned: check"
    assert window.metrics()["warning"] == "the moving image fits turned: check"


def test_view_settings_change_the_picture(window, pair_2d_files, registered_2d):
    _open_pair(window, pair_2d_files)
    window.show_result(result_layers(registered_2d))
    view = window.views["slice"]
    window.set_mode_all("blend")
    window.display_panel.blend_slider.setValue(0)
    fixed_only = view.displayed().copy()
    window.display_panel.blend_slider.setValue(100)
    moving_only = view.displayed().copy()
    window.set_mode_all("moving")
    np.testing.assert_array_equal(view.displayed(), moving_only)
    window.set_mode_all("checkerboard")
    window.display_panel.tile_spin.setValue(30.0)
    coarse = view.displayed().copy()
    window.display_panel.tile_spin.setValue(9.0)
    assert not np.array_equal(view.displayed(), coarse)
    window.set_mode_all("grid")
    lines = view.lines.getData()[0].size
    window.display_panel.grid_spin.setValue(30.0)
    assert view.lines.getData()[0].size < lines
    window.set_mode_all("blend")
    window.display_panel.blend_slider.setValue(50)
    after = view.displayed().copy()
    window.actions_by_name["toggle_state"].trigger()
    assert window.moving_state == "before"
    assert not np.array_equal(view.displayed(), after)
    assert not np.array_equal(fixed_only, moving_only)


def test_shortcuts_for_the_common_actions(window, pair_2d_files):
    keys = {name: action.shortcut().toString() for name, action in window.actions_by_name.items()}
    assert keys["open_fixed"] == "Ctrl+O" and keys["open_moving"] == "Ctrl+M"
    assert keys["register"] == "Ctrl+R" and keys["export"] == "Ctrl+E"
    assert keys["cancel"] == "Esc" and keys["open_result"] == "Ctrl+Shift+R"
    assert [keys[f"mode_{mode}"] for mode in VIEW_MODES] == [str(i) for i in range(1, 10)]
    assert "Ctrl+R\tRegister" in window.shortcuts_text()
    _open_pair(window, pair_2d_files)
    window.actions_by_name["mode_checkerboard"].trigger()
    assert window.views["slice"].mode == "checkerboard"


def test_about_box_has_the_version_and_the_model_card(window, pair_2d_files, registered_2d):
    window.set_registration_options({"model": None})
    text = window.about_text()
    assert f"intermodal {__version__}" in text and "No model in use" in text
    window.set_registration_options({"model": "/nowhere/m.safetensors"})
    assert "model weights file not found" in window.about_text()
    _open_pair(window, pair_2d_files)
    layers = result_layers(registered_2d)
    layers.report = {**layers.report, "model_card": {"network": {"ndim": 2}, "name": "tiny"}}
    window.show_result(layers)
    text = window.about_text()
    assert "Model card" in text and "&quot;" not in text and '"name": "tiny"' in text


def test_export_writes_what_register_writes_and_open_result_reads_it(
    qtbot, window, store, pair_2d_files, registered_2d, tmp_path, dialogs
):
    from intermodal.cli import main

    _open_pair(window, pair_2d_files)
    window.open_path("labels", pair_2d_files["mr_labels"])
    window.show_result(result_layers(registered_2d, window.scene.labels))
    assert window.export_result(tmp_path / "exported")
    exported = {p.name for p in (tmp_path / "exported").iterdir()}
    cli_out = tmp_path / "cli"
    code = main(
        [
            "register",
            "--fixed",
            str(pair_2d_files["ct"]),
            "--moving",
            str(pair_2d_files["mr"]),
            "--labels",
            str(pair_2d_files["mr_labels"]),
            "--out",
            str(cli_out),
            "--refine",
            "10",
            "--model",
            "none",
            "--quiet",
        ]
    )
    assert code == 0
    assert (
        exported
        == {p.name for p in cli_out.iterdir()}
        == REGISTER_OUTPUTS | {"warped_labels.nii.gz"}
    )
    # not over an existing folder unless asked
    assert not window.export_result(tmp_path / "exported")
    assert "output directory exists" in dialogs[-1]

    fresh = MainWindow(store)
    qtbot.addWidget(fresh)
    assert fresh.open_result(tmp_path / "exported")
    assert fresh.scene.fixed.source == str(pair_2d_files["ct"])
    assert fresh.scene.moving.source == str(pair_2d_files["mr"])
    assert fresh.moving_state == "after"
    assert fresh.registration_options() == {
        **FAST,
        "preset": "default",
        "init": "rigid",
        "search_orientation": True,
        "device": "auto",
    }
    np.testing.assert_allclose(
        fresh.scene.result.warped, window.scene.result.warped, rtol=1e-5, atol=1e-3
    )
    assert fresh.scene.result.warped_labels is not None
    assert fresh.metrics()["NMI after"] == f"{registered_2d.report['nmi']['after']:.4f}"
    assert not fresh.actions_by_name["export"].isEnabled()  # already on disk
    # a CLI output folder opens too (its report names the inputs)
    assert fresh.open_result(cli_out)
    for mode in VIEW_MODES:
        fresh.set_mode_all(mode)
        assert "not available" not in fresh.views["slice"].title.text(), mode


def test_open_result_errors(window, tmp_path, pair_2d_files, small_pair_files, dialogs):
    assert not window.open_result(tmp_path)
    assert "not an intermodal output folder" in dialogs[-1]
    window.open_path("fixed", pair_2d_files["ct"])
    assert window.export_result(tmp_path / "x") is False
    assert "no registration to export" in dialogs[-1]


def test_dropping_a_result_folder_opens_it(window, pair_2d_files, registered_2d, tmp_path):
    from intermodal.report import save_result

    save_result(
        registered_2d,
        tmp_path / "out",
        extra_report={"inputs_paths": {"fixed": str(pair_2d_files["ct"])}},
    )
    _drop(window, [tmp_path / "out"])
    assert window.scene.result is not None and window.scene.result.folder == tmp_path / "out"
    assert window.scene.moving is None and window.moving_state == "before"
    window.set_mode_all("jacobian")
    assert "not available" not in window.views["slice"].title.text()


def test_screenshot_is_a_png(window, pair_2d_files, tmp_path):
    _open_pair(window, pair_2d_files)
    (tmp_path / "shots").mkdir()
    path = window.save_screenshot(tmp_path / "shots" / "shot.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in path.parent.iterdir()] == ["shot.png"]  # no temporary left behind
    with pytest.raises(IntermodalError, match="cannot write the screenshot"):
        window.save_screenshot(tmp_path / "absent" / "folder" / "shot.png")


def test_click_in_a_real_view(qtbot, window, pair_2d_files):
    """A real mouse click reaches the crosshair (the mapping from screen to voxel)."""
    _open_pair(window, pair_2d_files)
    view = window.views["slice"]
    qtbot.waitUntil(lambda: view.graphics.viewport().width() > 100)
    centre = view.box.mapViewToScene(QPointF(32 * 3.0 + 1.0, 10 * 3.0 + 1.0))
    point = view.graphics.mapFromScene(centre)
    qtbot.mouseClick(view.graphics.viewport(), Qt.MouseButton.LeftButton, pos=QPoint(point))
    assert window.cursor == (10, 32)


def test_keys_step_slices_in_the_views_and_spin_boxes_in_the_panel(qtbot, window, small_pair_files):
    _open_pair(window, small_pair_files)
    window.activateWindow()
    qtbot.waitUntil(window.isActiveWindow)
    z = window.cursor[0]
    refine = window.registration_panel.refine_spin.value()
    window.registration_panel.refine_spin.setFocus()
    qtbot.keyClick(window.registration_panel.refine_spin, Qt.Key.Key_Up)
    assert window.registration_panel.refine_spin.value() == refine + 1 and window.cursor[0] == z
    graphics = window.views["axial"].graphics
    graphics.setFocus()
    qtbot.keyClick(graphics, Qt.Key.Key_Up)
    assert window.cursor[0] == z + 1
    qtbot.keyClick(graphics, Qt.Key.Key_8)
    assert {view.mode for view in window.views.values()} == {"jacobian"}


def _write_dicom_series(folder: Path, slices: int = 6, shape=(16, 20)) -> Path:
    """A small axial CT series: slice k holds -1000 + 100 k HU, 2.5 mm apart."""
    import SimpleITK as sitk

    folder.mkdir(parents=True)
    uid = "1.2.826.0.1.3680043.8.498.4242"
    for k in range(slices):
        image = sitk.GetImageFromArray(np.full(shape, -1000 + 100 * k, np.int16))
        tags = {
            "0008|0016": "1.2.840.10008.5.1.4.1.1.2",
            "0008|0018": f"{uid}.2.{k + 1}",
            "0008|0060": "CT",
            "0020|000d": f"{uid}.1",
            "0020|000e": f"{uid}.3",
            "0020|0013": str(k + 1),
            "0020|0032": f"0\\0\\{2.5 * k:.3f}",
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0028|0030": "1.5\\1.5",
        }
        for tag, value in tags.items():
            image.SetMetaData(tag, value)
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        writer.SetFileName(str(folder / f"slice{k:02d}.dcm"))
        writer.Execute(image)
    return folder


def test_open_from_dialogs_and_a_dicom_folder(window, tmp_path, small_pair_files, monkeypatch):
    from PySide6.QtWidgets import QFileDialog

    series = _write_dicom_series(tmp_path / "ct_series")
    monkeypatch.setattr(QFileDialog, "getExistingDirectory", lambda *a, **k: str(series))
    window.choose_folder("fixed")
    assert window.scene.fixed.source == str(series)
    assert window.scene.fixed.modality == "ct"  # from the DICOM Modality tag
    assert window.scene.grid.shape == (6, 16, 20)
    assert set(window.views) == {"axial", "coronal", "sagittal"}
    assert "Axial</b> 4/6" in window.views["axial"].title.text()
    chosen = str(small_pair_files["mr"])
    monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *a, **k: (chosen, ""))
    window.choose_file("moving")
    assert window.scene.moving.source == chosen
    monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *a, **k: ("", ""))
    window.choose_file("moving")  # a cancelled dialog changes nothing
    assert window.scene.moving.source == chosen


def test_a_preset_fills_the_panel_for_the_fixed_image_and_options_override_it(
    qtbot, window, pair_2d_files, dialogs
):
    window.set_registration_options({"preset": "default"})  # no image yet: the 3D values
    options = window.registration_options()
    assert (options["preset"], options["model"], options["refine"]) == ("default", "default", 80)
    assert options["init"] == "rigid"
    _open_pair(window, pair_2d_files)  # a 2D fixed image: the panel takes the 2D values
    options = window.registration_options()
    assert (options["model"], options["refine"], options["init"]) == ("default", 80, "rigid")
    window.set_registration_options({"refine": 4})  # an edit beats the preset
    with qtbot.waitSignal(window.registration_finished, timeout=120_000) as finished:
        assert window.start_registration()
    assert finished.args == ["succeeded"] and dialogs == []
    settings = window.scene.result.report["settings"]
    assert (settings["refine"], settings["init"]) == (4, "rigid")
    assert settings["sampling"] == 0.25  # the preset's
    window.set_registration_options({"preset": "default"})
    assert window.registration_options()["refine"] == 80
    with pytest.raises(IntermodalError, match="unknown preset 'quick'"):
        window.set_registration_options({"preset": "quick"})
