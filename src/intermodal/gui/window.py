"""The main window: open images, register in a worker thread, inspect the result, export it.

The window composes its panels (:mod:`~intermodal.gui.images_panel`,
:mod:`~intermodal.gui.registration_panel`, :mod:`~intermodal.gui.display_panel`,
:mod:`~intermodal.gui.metrics_panel`) and the views (:mod:`~intermodal.gui.views_area`), and
holds what they share: the scene, the cursor, the display levels and the running job.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PySide6.QtCore import (
    QBuffer,
    QByteArray,
    QEventLoop,
    QIODevice,
    QSaveFile,
    QSettings,
    Qt,
    Signal,
)
from PySide6.QtGui import QDragEnterEvent, QDropEvent, QGuiApplication
from PySide6.QtWidgets import (
    QFileDialog,
    QMainWindow,
    QMessageBox,
    QScrollArea,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from intermodal import __version__
from intermodal.errors import IntermodalError
from intermodal.gui import display
from intermodal.gui.actions import build_actions, build_menus, shortcuts_text
from intermodal.gui.display import VIEW_MODES, RenderOptions, SliceLayers
from intermodal.gui.display_panel import MOVING_STATE_TITLES, DisplayPanel
from intermodal.gui.images_panel import ROLES, ImagesPanel
from intermodal.gui.metrics_panel import MetricsPanel, headline
from intermodal.gui.registration_panel import OPTION_NAMES, RegistrationPanel
from intermodal.gui.scene import (
    Layer,
    ResultLayers,
    Scene,
    read_layer,
    read_result_folder,
    result_layers,
    same_grid,
)
from intermodal.gui.views import SliceView
from intermodal.gui.views_area import ViewsArea
from intermodal.gui.worker import JobThread, error_line

logger = logging.getLogger(__name__)

MAX_RECENT = 10
IMAGE_FILTER = (
    "Images (*.nii *.nii.gz *.mha *.mhd *.nrrd *.nhdr *.dcm *.png *.jpg *.jpeg *.tif *.tiff);;"
    "All files (*)"
)


def _has_report(path: Path) -> bool:
    return path.is_dir() and (path / "report.json").is_file()


class MainWindow(QMainWindow):
    """The application window.

    Args:
        store: where recent files are remembered (default: the user's QSettings).
        remember: whether opening a file adds it to the recent files.
        parent: parent widget.

    Signals:
        registration_finished(outcome): ``"succeeded"``, ``"failed"`` or ``"cancelled"``.
    """

    registration_finished = Signal(str)

    def __init__(
        self,
        store: QSettings | None = None,
        *,
        remember: bool = True,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.store = store if store is not None else QSettings("intermodal", "intermodal")
        self.remember = remember
        self.scene = Scene()
        self.options = RenderOptions()
        self.cursor: tuple[int, ...] | None = None
        self.active_plane: str | None = None
        self.moving_state = "before"
        self.levels: dict[str, tuple[float, float]] = {}
        self.job: JobThread | None = None
        self.last_error: str | None = None
        self.error_handler: Callable[[str], None] = self._error_dialog
        # show_error logs each message too, unless the caller reports it another way
        self.log_errors = True
        self._outcome = ""
        self._failure = ""

        self.setWindowTitle("intermodal")
        self.setAcceptDrops(True)
        self._build_panel()
        self.views_area = ViewsArea()
        self.views_area.pointed.connect(self._on_pointed)
        self.views_area.scrolled.connect(self._on_scrolled)
        self.views_area.hovered.connect(self._on_hovered)
        self.views_area.mode_changed.connect(lambda _plane, _mode: self.refresh())
        self.views_area.rebuild(("axial", "coronal", "sagittal"), self._default_mode())
        splitter = QSplitter()
        splitter.addWidget(self.panel_scroll)
        splitter.addWidget(self.views_area)
        splitter.setStretchFactor(1, 1)
        splitter.setSizes([self.panel_scroll.minimumWidth(), 1000])
        self.setCentralWidget(splitter)
        self.actions_by_name = build_actions(self)
        self.recent_menus = build_menus(self, self.actions_by_name)
        self._update_recent_menus()
        self.statusBar().showMessage(
            "Open a fixed and a moving image (Ctrl+O, Ctrl+M) or drop them on the window"
        )
        self._update_enabled()

    # ----------------------------------------------------------------------------- layout

    def _build_panel(self) -> None:
        self.images_panel = ImagesPanel()
        self.images_panel.open_file.connect(self.choose_file)
        self.images_panel.open_folder.connect(self.choose_folder)
        self.images_panel.dropped.connect(self._on_dropped)
        self.registration_panel = RegistrationPanel()
        self.registration_panel.register_requested.connect(self.start_registration)
        self.registration_panel.cancel_requested.connect(self.cancel_registration)
        self.registration_panel.browse_model_requested.connect(self.choose_model)
        self.display_panel = DisplayPanel(self.options)
        self.display_panel.mode_chosen.connect(self.set_mode_all)
        self.display_panel.state_chosen.connect(self._on_state_chosen)
        self.display_panel.options_changed.connect(self.refresh)
        self.display_panel.window_chosen.connect(self.set_window)
        self.display_panel.levels_edited.connect(self._on_levels_edited)
        self.metrics_panel = MetricsPanel()

        panel = QWidget()
        layout = QVBoxLayout(panel)
        for box in (
            self.images_panel,
            self.registration_panel,
            self.display_panel,
            self.metrics_panel,
        ):
            layout.addWidget(box)
        layout.addStretch(1)
        self.panel_scroll = QScrollArea()
        self.panel_scroll.setWidget(panel)
        self.panel_scroll.setWidgetResizable(True)
        self.panel_scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        # Room for the widest state of the panel (long level values), so nothing is cut off.
        scrollbar = self.panel_scroll.verticalScrollBar().sizeHint().width()
        self.panel_scroll.setMinimumWidth(max(panel.minimumSizeHint().width(), 380) + scrollbar)

    @property
    def views(self) -> dict[str, SliceView]:
        """The slice views by plane."""
        return self.views_area.views

    def _default_mode(self) -> str:
        return self.display_panel.mode() or "fixed"

    # ----------------------------------------------------------------------------- errors

    def _error_dialog(self, message: str) -> None:
        QMessageBox.critical(self, "intermodal", message)

    def show_error(self, message: str) -> None:
        """Report a problem in one line (a dialog by default) and log it."""
        self.last_error = message
        if self.log_errors:
            logger.warning("%s", message)
        self.statusBar().showMessage(message, 10000)
        self.error_handler(message)

    # ----------------------------------------------------------------------------- loading

    @property
    def busy(self) -> bool:
        """Whether a registration is running."""
        return self.job is not None

    def choose_file(self, role: str) -> None:
        """Ask for an image file (``role``: fixed, moving or labels) and open it."""
        path, _ = QFileDialog.getOpenFileName(
            self, f"Open {role} image", self._last_folder(), IMAGE_FILTER
        )
        if path:
            self.open_path(role, path)

    def choose_folder(self, role: str) -> None:
        """Ask for a DICOM series folder and open it as the ``role`` image."""
        path = QFileDialog.getExistingDirectory(
            self, f"Open {role} DICOM folder", self._last_folder()
        )
        if path:
            self.open_path(role, path)

    def choose_model(self) -> None:
        """Ask for model weights."""
        path, _ = QFileDialog.getOpenFileName(
            self, "Model weights", self._last_folder(), "Models (*.safetensors);;All files (*)"
        )
        if path:
            self.registration_panel.model_edit.setCurrentText(path)

    def _last_folder(self) -> str:
        recent = self.recent_files()
        return str(Path(recent[0]).parent) if recent else str(Path.cwd())

    def open_path(self, role: str, path: str | os.PathLike) -> bool:
        """Open ``path`` as the fixed or moving image or the moving labels.

        A problem is reported in a dialog naming the file; the window goes on as before.

        Returns:
            Whether the image was opened.
        """
        if self.busy:
            self.show_error("a registration is running: wait for it or cancel it first")
            return False
        QGuiApplication.setOverrideCursor(Qt.CursorShape.WaitCursor)
        try:
            if role == "labels":
                from intermodal.io import read_image

                self.set_labels(read_image(path), source=str(path))
            else:
                self.set_layer(role, read_layer(path))
        except Exception as error:  # a bad file must never take the window down
            self.show_error(error_line(error))
            return False
        finally:
            QGuiApplication.restoreOverrideCursor()
        self.add_recent(str(path))
        return True

    def set_layer(self, role: str, layer: Layer) -> None:
        """Show ``layer`` as the fixed or moving image (drops any result)."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, not {role!r}")
        if role == "fixed":
            self.scene.set_fixed(layer)
            self.registration_panel.set_dimension(layer.image.GetDimension())
            grid = self.scene.grid
            self.views_area.rebuild(grid.planes, self._default_mode())
            self.cursor = grid.centre()
            if self.scene.moving is None:
                self.images_panel.describe("moving")
            if self.scene.labels is None:
                self.images_panel.describe("labels")
        else:
            self.scene.set_moving(layer)
        self.moving_state = "before"
        size = "×".join(str(s) for s in layer.image.GetSize())
        self.images_panel.describe(
            role, f"{layer.name} ({layer.modality.upper()}, {size})", layer.source or ""
        )
        default = "soft tissue" if layer.modality == "ct" else "auto"
        self.set_window(role, default)
        self.metrics_panel.show_report(None)
        self._after_scene_change()

    def set_labels(self, labels, source: str | None = None) -> None:
        """Use ``labels`` (a SimpleITK label map in the moving image's space).

        When a result is shown, the warped labels are made at once.
        """
        self.scene.set_labels(labels, source)
        result = self.scene.result
        if result is not None and result.result is not None:
            self.scene.set_result(result_layers(result.result, labels))
        name = Path(source).name if source else "(in memory)"
        self.images_panel.describe("labels", name)
        self._after_scene_change()

    def _on_dropped(self, role: str, path: str) -> None:
        if role != "labels" and _has_report(Path(path)):
            self.open_result(path)
        else:
            self.open_path(role, path)

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:  # noqa: N802 - Qt naming
        if event.mimeData().hasUrls():
            event.acceptProposedAction()

    def dropEvent(self, event: QDropEvent) -> None:  # noqa: N802 - Qt naming
        """Files dropped on the window: an output folder opens as a result; otherwise two
        files are the fixed then the moving image, and one file fills the fixed image first,
        then the moving one."""
        paths = [u.toLocalFile() for u in event.mimeData().urls() if u.isLocalFile()]
        if not paths:
            return
        event.acceptProposedAction()
        if len(paths) == 1 and _has_report(Path(paths[0])):
            self.open_result(paths[0])
            return
        if len(paths) >= 2:
            if self.open_path("fixed", paths[0]):
                self.open_path("moving", paths[1])
            return
        self.open_path("fixed" if self.scene.fixed is None else "moving", paths[0])

    # ----------------------------------------------------------------------------- recent

    def recent_files(self) -> list[str]:
        """The remembered files, most recent first."""
        value = self.store.value("recent_files", [])
        if isinstance(value, str):  # QSettings returns a lone entry as a string
            value = [value]
        return [str(v) for v in (value or [])]

    def add_recent(self, path: str) -> None:
        """Remember ``path`` at the top of the recent files."""
        if not self.remember:
            return
        path = str(Path(path).absolute())
        recent = [path, *(p for p in self.recent_files() if p != path)][:MAX_RECENT]
        self.store.setValue("recent_files", recent)
        self.store.sync()
        self._update_recent_menus()

    def _update_recent_menus(self) -> None:
        for role, menu in self.recent_menus.items():
            menu.clear()
            recent = self.recent_files()
            for path in recent:
                action = menu.addAction(path)
                action.triggered.connect(lambda _c=False, r=role, p=path: self.open_path(r, p))
            menu.setEnabled(bool(recent))

    # ----------------------------------------------------------------------------- display

    def set_window(self, role: str, name: str) -> None:
        """Apply a window preset to the fixed or moving image.

        ``name``: ``"auto"`` (percentiles, the MR default), a CT preset of
        :data:`~intermodal.gui.display.WINDOW_PRESETS`, ``"full range"``, or ``"custom"``
        (keeps the current levels).
        """
        layer = self.scene.fixed if role == "fixed" else self.scene.moving
        self.display_panel.show_window(role, name)
        if layer is None or name == "custom":
            return
        if name == "auto":
            levels = display.auto_levels(layer.array)
        elif name == "full range":
            levels = (float(layer.array.min()), float(layer.array.max()))
        else:
            levels = display.preset_range(name)
        self.set_levels(role, *levels, preset=name)

    def set_levels(self, role: str, low: float, high: float, *, preset: str = "custom") -> None:
        """Display ``[low, high]`` of the ``role`` image's values from black to white."""
        self.levels[role] = (float(low), float(high))
        self.display_panel.show_levels(role, low, high)
        if preset == "custom":
            self.display_panel.show_window(role, "custom")
        self.refresh()

    def _on_levels_edited(self, role: str, low: float, high: float) -> None:
        if self.levels.get(role) != (low, high):
            self.set_levels(role, low, high)

    def set_mode_all(self, mode: str) -> None:
        """Show view ``mode`` in every view."""
        if mode not in VIEW_MODES:
            raise ValueError(f"view mode must be one of {VIEW_MODES}, not {mode!r}")
        for view in self.views.values():
            view.set_mode(mode)
        self.display_panel.show_mode(mode)
        self.refresh()

    def set_moving_state(self, state: str) -> None:
        """Show the moving image ``"before"``, after the ``"initial"`` alignment, or ``"after"``."""
        if state not in self.scene.states():
            raise IntermodalError(
                f"the moving image cannot be shown {state!r} now; available: "
                f"{', '.join(self.scene.states()) or 'none'}"
            )
        self.moving_state = state
        self.display_panel.show_states(self.scene.states(), self.moving_state)
        self.refresh()

    def toggle_state(self) -> None:
        """Switch between the moving image before and after registration."""
        states = self.scene.states()
        if "after" in states:
            self.set_moving_state("before" if self.moving_state == "after" else "after")

    def _on_state_chosen(self, state: str) -> None:
        if state != self.moving_state and state in self.scene.states():
            self.moving_state = state
            self.refresh()

    def slice_layers(self, plane: str) -> SliceLayers | None:
        """What the ``plane`` view draws at the cursor, or ``None`` with no fixed image."""
        grid = self.scene.grid
        if grid is None or self.cursor is None:
            return None
        index = grid.to_display(plane, self.cursor)[0]
        fixed = self.scene.fixed
        layers = SliceLayers(
            fixed=display.to_unit(grid.extract(fixed.array, plane, index), *self.levels["fixed"]),
            moving=None,
            spacing=grid.pixel_spacing(plane),
        )
        moving = self.scene.moving_on_fixed(self.moving_state)
        if moving is not None and "moving" in self.levels:
            layers.moving = display.to_unit(
                grid.extract(moving, plane, index), *self.levels["moving"]
            )
        result = self.scene.result
        if result is not None:
            layers.jacobian = grid.extract(result.jacobian, plane, index)
            layers.u_row, layers.u_col = grid.vectors(result.displacement, plane, index)
        labels = self.scene.labels_on_fixed(self.moving_state)
        if labels is not None:
            layers.labels = grid.extract(labels, plane, index)
        return layers

    def refresh(self) -> None:
        """Redraw every view at the cursor."""
        grid = self.scene.grid
        for plane, view in self.views.items():
            layers = self.slice_layers(plane)
            if layers is None:
                view.clear()
                continue
            rgb = display.render(view.mode, layers, self.options)
            view.set_image(rgb, layers.spacing)
            lines = None
            if view.mode == "grid" and display.available("grid", layers):
                lines = display.grid_lines(
                    layers.u_row, layers.u_col, layers.spacing, self.options.grid_mm
                )
            view.set_lines(lines)
            index, row, column = grid.to_display(plane, self.cursor)
            view.set_crosshair(row, column)
            note = "" if display.available(view.mode, layers) else "  (not available: fixed shown)"
            count = grid.slice_count(plane)
            where = f" {index + 1}/{count}" if count > 1 else ""
            view.title.setText(f"<b>{plane.capitalize()}</b>{where}{note}")
        self._update_info()

    def _update_info(self) -> None:
        lines = []
        for role, layer in (("Fixed", self.scene.fixed), ("Moving", self.scene.moving)):
            if layer is not None:
                spacing = " × ".join(f"{s:g}" for s in layer.image.GetSpacing())
                lines.append(
                    f"<b>{role}</b>: {layer.name}<br>{layer.modality.upper()}, "
                    f"{' × '.join(str(s) for s in layer.image.GetSize())} voxels of {spacing} mm"
                )
        result = self.scene.result
        if result is not None:
            origin = f"from {result.folder}" if result.folder else "computed here"
            summary = "<br>".join(f"{name}: {value}" for name, value in headline(result.report))
            lines.append(f"<b>Result</b> ({origin})<br>{summary}")
        if self.scene.moving is not None:
            lines.append(f"Moving shown: {MOVING_STATE_TITLES[self.moving_state]}")
        self.views_area.info_label.setText("<br><br>".join(lines))
        title = "intermodal"
        if self.scene.fixed is not None:
            title += f" — {self.scene.fixed.name}"
            if self.scene.moving is not None:
                title += f" ← {self.scene.moving.name}"
        self.setWindowTitle(title)

    def _after_scene_change(self) -> None:
        if self.moving_state not in self.scene.states():
            self.moving_state = "before"
        self.display_panel.show_states(self.scene.states(), self.moving_state)
        self._update_enabled()
        self.refresh()

    def _on_pointed(self, plane: str, row: int, column: int) -> None:
        grid = self.scene.grid
        if grid is None or self.cursor is None:
            return
        index = grid.to_display(plane, self.cursor)[0]
        self.cursor = grid.to_voxel(plane, index, row, column)
        self.active_plane = plane
        self.refresh()
        self.statusBar().showMessage(self.scene.describe(self.cursor, self.moving_state))

    def _on_scrolled(self, plane: str, steps: int) -> None:
        self.active_plane = plane
        self.step_slice(steps, plane)

    def step_slice(self, steps: int, plane: str | None = None) -> None:
        """Move ``steps`` slices through ``plane`` (default: the last view used, else axial)."""
        grid = self.scene.grid
        if grid is None or self.cursor is None:
            return
        plane = plane or self.active_plane or grid.planes[0]
        if plane not in grid.planes or grid.slice_count(plane) == 1:
            return
        index, row, column = grid.to_display(plane, self.cursor)
        index = int(np.clip(index + steps, 0, grid.slice_count(plane) - 1))
        self.cursor = grid.to_voxel(plane, index, row, column)
        self.refresh()

    def _on_hovered(self, plane: str, row: int, column: int) -> None:
        grid = self.scene.grid
        if grid is None or self.cursor is None or row < 0:
            return
        index = grid.to_display(plane, self.cursor)[0]
        voxel = grid.to_voxel(plane, index, row, column)
        self.statusBar().showMessage(self.scene.describe(voxel, self.moving_state))

    def reset_zoom(self) -> None:
        """Fit every view."""
        for view in self.views.values():
            view.reset_zoom()

    def metrics(self) -> dict[str, str]:
        """The metrics panel's rows, ``{figure: value}``."""
        return self.metrics_panel.rows()

    def _update_enabled(self) -> None:
        ready = self.scene.fixed is not None and self.scene.moving is not None
        a = self.actions_by_name
        for name in (
            "open_fixed",
            "open_moving",
            "open_fixed_dicom",
            "open_moving_dicom",
            "open_labels",
            "open_result",
        ):
            a[name].setEnabled(not self.busy)
        a["register"].setEnabled(ready and not self.busy)
        a["cancel"].setEnabled(self.busy)
        exportable = self.scene.result is not None and self.scene.result.result is not None
        a["export"].setEnabled(exportable and not self.busy)
        a["toggle_state"].setEnabled("after" in self.scene.states())
        self.registration_panel.set_state(ready=ready, busy=self.busy)
        self.images_panel.set_busy(self.busy)

    # ----------------------------------------------------------------------------- registration

    def registration_options(self) -> dict[str, Any]:
        """The settings panel: ``preset`` and the keyword arguments that override it."""
        return self.registration_panel.options()

    def set_registration_options(self, options: dict[str, Any]) -> None:
        """Fill the settings panel (keys: preset, model, refine, init, device).

        A preset fills model, refine and init first, so the other keys override it.
        """
        self.registration_panel.set_options(options)

    def start_registration(self) -> bool:
        """Register the moving image onto the fixed one in a worker thread.

        Returns:
            Whether a registration was started.
        """
        if self.busy:
            return False
        if self.scene.fixed is None or self.scene.moving is None:
            self.show_error("open a fixed and a moving image before registering")
            return False
        fixed, moving = self.scene.fixed.image, self.scene.moving.image
        labels = self.scene.labels
        options = self.registration_options()

        def job(progress) -> ResultLayers:
            # torch is imported here, in the worker, so that the window never waits for it
            from intermodal.registration import preset_settings, register

            settings = preset_settings(options.pop("preset"), fixed.GetDimension(), **options)
            result = register(fixed, moving, settings, progress=progress)
            progress("display", 0, 0)
            return result_layers(result, labels)

        self.job = JobThread(job, self)
        self.job.progressed.connect(self._on_progress)
        self.job.succeeded.connect(self._on_succeeded)
        self.job.failed.connect(self._on_failed)
        self.job.cancelled.connect(self._on_cancelled)
        self.job.finished.connect(self._on_job_finished)
        self.registration_panel.show_started()
        self._update_enabled()
        self.job.start()
        return True

    def cancel_registration(self) -> None:
        """Stop the running registration at its next step."""
        if self.job is not None:
            self.job.cancel()
            self.registration_panel.stage_label.setText("cancelling…")

    def _on_progress(self, stage: str, step: int, total: int) -> None:
        if self.job is None or self.job.cancel_requested:
            return
        self.registration_panel.show_progress(stage, step, total)

    def show_result(self, layers: ResultLayers) -> None:
        """Show a result: the registered moving image, the report in the metrics panel."""
        self.scene.set_result(layers)
        self.moving_state = "after" if "after" in self.scene.states() else "before"
        self.metrics_panel.show_report(layers.report)
        self._after_scene_change()

    def _on_succeeded(self, layers: ResultLayers) -> None:
        self.show_result(layers)
        seconds = layers.report.get("timings_s", {}).get("total", float("nan"))
        warnings = layers.report.get("warnings") or []
        text = f"registered in {seconds:.1f} s"
        if warnings:
            # e.g. the moving image was found turned: the user should see it, not only the file
            text += f", {len(warnings)} warning(s): see Metrics"
            self.statusBar().showMessage(warnings[0], 30000)
        self.registration_panel.stage_label.setText(text)
        self._outcome = "succeeded"

    def _on_failed(self, message: str) -> None:
        self.registration_panel.stage_label.setText("failed")
        self._outcome = "failed"
        self._failure = message

    def _on_cancelled(self) -> None:
        self.registration_panel.stage_label.setText("cancelled")
        self._outcome = "cancelled"

    def _on_job_finished(self) -> None:
        job, self.job = self.job, None
        if job is not None:
            job.deleteLater()
        outcome = self._outcome or "failed"
        self._outcome = ""
        self.registration_panel.show_finished(outcome == "succeeded")
        self._after_scene_change()
        if outcome == "failed":
            self.show_error(self._failure or "registration failed")
        self.registration_finished.emit(outcome)

    def register_and_wait(self, timeout_ms: int = 0) -> str:
        """Start a registration and run the event loop until it ends (for scripted use).

        Returns:
            ``"succeeded"``, ``"failed"`` or ``"cancelled"``.
        """
        outcome: list[str] = []
        loop = QEventLoop()

        def done(value: str) -> None:
            outcome.append(value)
            loop.quit()

        self.registration_finished.connect(done)
        try:
            if not self.start_registration():
                return "failed"
            if not outcome:
                loop.exec()
        finally:
            self.registration_finished.disconnect(done)
        return outcome[0]

    # ----------------------------------------------------------------------------- results

    def choose_result(self) -> None:
        """Ask for an output folder of ``intermodal register`` and open it."""
        path = QFileDialog.getExistingDirectory(self, "Open result folder", self._last_folder())
        if path:
            self.open_result(path)

    def open_result(self, folder: str | os.PathLike) -> bool:
        """Show an earlier output folder, with its report in the metrics panel.

        The fixed image is the one open now when the grids match; otherwise the one recorded in
        the report (or written beside the outputs by ``intermodal demo``) is opened, and the
        moving image too when none is open.

        Returns:
            Whether the result was opened.
        """
        if self.busy:
            self.show_error("a registration is running: wait for it or cancel it first")
            return False
        QGuiApplication.setOverrideCursor(Qt.CursorShape.WaitCursor)
        try:
            saved = read_result_folder(folder)
            fixed = self.scene.fixed
            if fixed is None or not same_grid(fixed.image, saved.warped):
                path = saved.input_path("fixed")
                if path is None:
                    raise IntermodalError(
                        f"{folder}: the fixed image is not recorded in report.json; open the "
                        "fixed image it was registered on first"
                    )
                self.set_layer("fixed", read_layer(path))
                if self.scene.moving is None or self.scene.moving.source is None:
                    moving_path = saved.input_path("moving")
                    if moving_path is not None:
                        self.set_layer("moving", read_layer(moving_path))
            elif self.scene.moving is None:
                moving_path = saved.input_path("moving")
                if moving_path is not None:
                    self.set_layer("moving", read_layer(moving_path))
            layers = saved.layers(self.scene.fixed.image)
        except Exception as error:
            self.show_error(error_line(error))
            return False
        finally:
            QGuiApplication.restoreOverrideCursor()
        self.show_result(layers)
        recorded = layers.report.get("settings") or {}
        self.set_registration_options(
            {k: recorded[k] for k in OPTION_NAMES if k != "preset" and k in recorded}
        )
        self.statusBar().showMessage(f"opened result {folder}", 10000)
        return True

    def choose_export(self) -> None:
        """Ask for an output folder and export the result into it."""
        path = QFileDialog.getExistingDirectory(self, "Export into folder", self._last_folder())
        if not path:
            return
        folder = Path(path)
        if folder.exists() and any(folder.iterdir()):
            answer = QMessageBox.question(
                self, "intermodal", f"{folder} is not empty. Replace its contents?"
            )
            if answer != QMessageBox.StandardButton.Yes:
                return
        self.export_result(folder, overwrite=True)

    def export_result(self, folder: str | os.PathLike, *, overwrite: bool = False) -> bool:
        """Write the result's files, as ``intermodal register`` does, into ``folder``.

        The folder appears complete or not at all (see
        :class:`intermodal.report.OutputDirectory`).

        Returns:
            Whether the export was written.
        """
        result = self.scene.result
        if result is None or result.result is None:
            self.show_error("no registration to export: run one first (Ctrl+R)")
            return False
        QGuiApplication.setOverrideCursor(Qt.CursorShape.WaitCursor)
        try:
            from intermodal.report import save_result

            extra = {
                "inputs_paths": {
                    "fixed": self.scene.fixed.source,
                    "moving": self.scene.moving.source,
                    "labels": None,
                    "points": None,
                }
            }
            save_result(
                result.result,
                folder,
                overwrite=overwrite,
                labels=self.scene.labels,
                extra_report=extra,
            )
        except Exception as error:
            self.show_error(error_line(error))
            return False
        finally:
            QGuiApplication.restoreOverrideCursor()
        self.statusBar().showMessage(f"exported to {folder}", 10000)
        return True

    # ----------------------------------------------------------------------------- misc

    def grab_png(self) -> bytes:
        """The window as PNG bytes."""
        data = QByteArray()
        buffer = QBuffer(data)
        buffer.open(QIODevice.OpenModeFlag.WriteOnly)
        self.grab().save(buffer, "PNG")
        buffer.close()
        return bytes(data.data())

    def save_screenshot(self, path: str | os.PathLike) -> Path:
        """Write the window as a PNG to ``path``, atomically (a temporary file renamed into
        place by QSaveFile, so torch, which ``intermodal.io`` imports, is not needed).

        Raises:
            IntermodalError: the file cannot be written.
        """
        path = Path(path)
        if path.is_dir():
            raise IntermodalError(f"{path}: is a directory, expected a .png file name")
        data = self.grab_png()
        target = QSaveFile(str(path))
        if not target.open(QIODevice.OpenModeFlag.WriteOnly):
            raise IntermodalError(f"{path}: cannot write the screenshot ({target.errorString()})")
        target.write(QByteArray(data))
        if not target.commit():
            raise IntermodalError(f"{path}: cannot write the screenshot ({target.errorString()})")
        return path

    def choose_screenshot(self) -> None:
        """Ask for a file name and save a screenshot of the window."""
        path, _ = QFileDialog.getSaveFileName(
            self, "Save screenshot", self._last_folder(), "PNG (*.png)"
        )
        if path:
            try:
                self.save_screenshot(path)
            except Exception as error:
                self.show_error(error_line(error))

    def model_card(self) -> dict | None:
        """The model card of the model in use: the result's, else the chosen model's.

        Raises:
            IntermodalError: the chosen model or its card cannot be found or read.
        """
        if self.scene.result is not None and "model_card" in self.scene.result.report:
            return self.scene.result.report["model_card"]
        path = self.registration_options()["model"]
        if path is None:
            return None
        try:
            from intermodal.models import resolve_model
        except ImportError:  # a version without bundled models: the setting is a path
            pass
        else:
            ndim = self.scene.grid.ndim if self.scene.grid is not None else 3
            path = resolve_model(path, ndim)
            if path is None:
                return None
        from intermodal.checkpoint import read_card

        return read_card(path)

    def about_text(self) -> str:
        """The About box: version, Qt version and the model card (HTML)."""
        from PySide6 import __version__ as pyside_version

        try:
            card = self.model_card()
        except IntermodalError as error:
            card_html = f"<p>Model card: {error}</p>"
        else:
            if card is None:
                card_html = (
                    "<p>No model in use: the deformation comes from test-time refinement "
                    "alone (instance optimisation on MIND-SSC).</p>"
                )
            else:
                text = json.dumps(card, indent=1, default=str)
                if len(text) > 3000:
                    text = text[:3000] + "\n…"
                card_html = f"<p><b>Model card</b></p><pre>{_escape(text)}</pre>"
        return (
            f"<h3>intermodal {__version__}</h3>"
            "<p>Deformable CT/MR registration supervised by intra-modality similarity.</p>"
            f"<p>PySide6 {pyside_version} (Qt 6, LGPL)</p>{card_html}"
        )

    def show_about(self) -> None:
        """The About box."""
        QMessageBox.about(self, "About intermodal", self.about_text())

    def shortcuts_text(self) -> str:
        """Every action with a keyboard shortcut, one per line."""
        return shortcuts_text(self.actions_by_name)

    def show_shortcuts(self) -> None:
        """List the keyboard shortcuts."""
        QMessageBox.information(self, "Keyboard shortcuts", self.shortcuts_text())

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt naming
        """Cancel a running registration and wait for its thread before closing."""
        if self.job is not None:
            self.job.cancel()
            self.job.wait()
        super().closeEvent(event)


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
