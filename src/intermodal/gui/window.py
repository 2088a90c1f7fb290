"""The main window: open images, register in a worker thread, inspect the result, export it."""

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
from PySide6.QtGui import QAction, QDragEnterEvent, QDropEvent, QGuiApplication, QKeySequence
from PySide6.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QMainWindow,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSlider,
    QSpinBox,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from intermodal import __version__
from intermodal.classical import INIT_CHOICES
from intermodal.errors import IntermodalError
from intermodal.gui import display
from intermodal.gui.display import MODE_TITLES, VIEW_MODES, RenderOptions, SliceLayers
from intermodal.gui.scene import (
    Layer,
    ResultLayers,
    Scene,
    metrics_rows,
    read_layer,
    read_result_folder,
    result_layers,
    same_grid,
)
from intermodal.gui.views import SliceView
from intermodal.gui.worker import JobThread, error_line
from intermodal.presets import PRESET_NAMES, PRESETS

logger = logging.getLogger(__name__)

ROLES = ("fixed", "moving")
DEVICE_CHOICES = ("auto", "cpu", "cuda")
DEFAULT_REFINE = 80
"""The default of :attr:`intermodal.registration.Settings.refine` (a test keeps them equal)."""
DEFAULT_INIT = "rigid"
MAX_RECENT = 10
WINDOW_CHOICES = ("auto", "soft tissue", "bone", "lung", "full range", "custom")
MOVING_STATE_TITLES = {
    "before": "before (as read)",
    "initial": "initial alignment",
    "after": "registered",
}
IMAGE_FILTER = (
    "Images (*.nii *.nii.gz *.mha *.mhd *.nrrd *.nhdr *.dcm *.png *.jpg *.jpeg *.tif *.tiff);;"
    "All files (*)"
)


def model_choices() -> tuple[list[str], str]:
    """The model choices offered, and the default (the library's: none)."""
    try:
        from intermodal.models import BUNDLED
    except ImportError:
        return ["none"], "none"
    return ["none", "auto", *BUNDLED], "none"


def _has_report(path: Path) -> bool:
    return path.is_dir() and (path / "report.json").is_file()


class DropLabel(QLabel):
    """A label that takes a dropped file or folder and emits its path."""

    dropped = Signal(str)

    def __init__(self, text: str, parent: QWidget | None = None) -> None:
        super().__init__(text, parent)
        self.setAcceptDrops(True)
        self.setWordWrap(True)
        self.setFrameShape(QLabel.Shape.StyledPanel)
        self.setMinimumHeight(36)

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:  # noqa: N802 - Qt naming
        if event.mimeData().hasUrls():
            event.acceptProposedAction()

    def dropEvent(self, event: QDropEvent) -> None:  # noqa: N802 - Qt naming
        paths = [u.toLocalFile() for u in event.mimeData().urls() if u.isLocalFile()]
        if paths:
            event.acceptProposedAction()
            self.dropped.emit(paths[0])


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
        self.views: dict[str, SliceView] = {}
        self.job: JobThread | None = None
        self.last_error: str | None = None
        self.error_handler: Callable[[str], None] = self._error_dialog
        self._planes: tuple[str, ...] = ()
        self._outcome = ""
        self._failure = ""

        self.setWindowTitle("intermodal")
        self.setAcceptDrops(True)
        self._build_panel()
        self._build_views_area()
        splitter = QSplitter()
        splitter.addWidget(self.panel_scroll)
        splitter.addWidget(self.views_area)
        splitter.setStretchFactor(1, 1)
        splitter.setSizes([self.panel_scroll.minimumWidth(), 1000])
        self.setCentralWidget(splitter)
        self._build_actions()
        self._build_menus()
        self.statusBar().showMessage(
            "Open a fixed and a moving image (Ctrl+O, Ctrl+M) or drop them on the window"
        )
        self._update_enabled()

    # ----------------------------------------------------------------------------- layout

    def _build_panel(self) -> None:
        panel = QWidget()
        layout = QVBoxLayout(panel)

        images = QGroupBox("Images")
        grid = QGridLayout(images)
        self.drop_labels: dict[str, DropLabel] = {}
        for row, role in enumerate((*ROLES, "labels")):
            title = "Labels (moving space)" if role == "labels" else role.capitalize()
            label = DropLabel(f"<b>{title}</b>: drop a file here")
            label.setObjectName(f"drop_{role}")
            label.dropped.connect(lambda path, role=role: self._on_dropped(role, path))
            self.drop_labels[role] = label
            grid.addWidget(label, 2 * row, 0, 1, 2)
            open_button = QPushButton("Open…")
            open_button.clicked.connect(lambda _=False, role=role: self.choose_file(role))
            grid.addWidget(open_button, 2 * row + 1, 0)
            if role != "labels":
                dicom_button = QPushButton("DICOM folder…")
                dicom_button.clicked.connect(lambda _=False, role=role: self.choose_folder(role))
                grid.addWidget(dicom_button, 2 * row + 1, 1)
        layout.addWidget(images)

        registration = QGroupBox("Registration")
        form = QFormLayout(registration)
        self.preset_box = QComboBox()
        self.preset_box.addItems(list(PRESET_NAMES))
        self.preset_box.setToolTip(
            "default: the one preset, accurate and fast. Choosing it fills the model, steps "
            "and alignment below, which then override it"
        )
        self._preset_ndim = 3  # the dimension whose preset values fill the panel
        self.preset_box.currentTextChanged.connect(lambda _name: self._fill_from_preset())
        form.addRow("Preset", self.preset_box)
        model_row = QHBoxLayout()
        self.model_edit = QComboBox()
        self.model_edit.setEditable(True)
        choices, default = model_choices()
        self.model_edit.addItems(choices)
        self.model_edit.setCurrentText(default)
        self.model_edit.setToolTip(
            "none: refinement alone (the default); auto: the bundled model for the images' "
            "dimension, kept only if it improves the similarity; or a .safetensors model path"
        )
        self.model_edit.setMinimumContentsLength(8)
        self.model_edit.setSizeAdjustPolicy(
            QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon
        )
        browse = QPushButton("…")
        browse.setMaximumWidth(32)
        browse.clicked.connect(self.choose_model)
        model_row.addWidget(self.model_edit)
        model_row.addWidget(browse)
        form.addRow("Model", model_row)
        self.refine_spin = QSpinBox()
        self.refine_spin.setRange(0, 10000)
        self.refine_spin.setValue(DEFAULT_REFINE)
        self.refine_spin.setToolTip("test-time optimisation steps (MIND-SSC)")
        form.addRow("Refinement steps", self.refine_spin)
        self.init_box = QComboBox()
        self.init_box.addItems(list(INIT_CHOICES))
        self.init_box.setCurrentText(DEFAULT_INIT)
        form.addRow("Initial alignment", self.init_box)
        self.device_box = QComboBox()
        self.device_box.addItems(list(DEVICE_CHOICES))
        form.addRow("Device", self.device_box)
        buttons = QHBoxLayout()
        self.register_button = QPushButton("Register")
        self.register_button.clicked.connect(self.start_registration)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancel_registration)
        buttons.addWidget(self.register_button)
        buttons.addWidget(self.cancel_button)
        form.addRow(buttons)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setTextVisible(True)
        self.stage_label = QLabel("idle")
        form.addRow(self.progress)
        form.addRow(self.stage_label)
        layout.addWidget(registration)

        view = QGroupBox("Display")
        form = QFormLayout(view)
        self.mode_box = QComboBox()
        for mode in VIEW_MODES:
            self.mode_box.addItem(MODE_TITLES[mode], mode)
        self.mode_box.currentIndexChanged.connect(
            lambda _i: self.set_mode_all(self.mode_box.currentData())
        )
        form.addRow("All views", self.mode_box)
        self.state_box = QComboBox()
        self.state_box.currentIndexChanged.connect(self._on_state_box)
        form.addRow("Moving shown", self.state_box)
        self.blend_slider = QSlider(Qt.Orientation.Horizontal)
        self.blend_slider.setRange(0, 100)
        self.blend_slider.setValue(int(round(100 * self.options.blend)))
        self.blend_slider.valueChanged.connect(self._on_blend)
        form.addRow("Blend", self.blend_slider)
        self.tile_spin = QDoubleSpinBox()
        self.tile_spin.setRange(1.0, 500.0)
        self.tile_spin.setSuffix(" mm")
        self.tile_spin.setValue(self.options.tile_mm)
        self.tile_spin.valueChanged.connect(self._on_tile)
        form.addRow("Checker tile", self.tile_spin)
        self.grid_spin = QDoubleSpinBox()
        self.grid_spin.setRange(1.0, 500.0)
        self.grid_spin.setSuffix(" mm")
        self.grid_spin.setValue(self.options.grid_mm)
        self.grid_spin.valueChanged.connect(self._on_grid)
        form.addRow("Grid spacing", self.grid_spin)
        self.window_boxes: dict[str, QComboBox] = {}
        self.level_spins: dict[str, tuple[QDoubleSpinBox, QDoubleSpinBox]] = {}
        for role in ROLES:
            box = QComboBox()
            box.addItems(list(WINDOW_CHOICES))
            box.currentTextChanged.connect(lambda name, role=role: self.set_window(role, name))
            self.window_boxes[role] = box
            level, width = QDoubleSpinBox(), QDoubleSpinBox()
            for spin, name in ((level, "level"), (width, "width")):
                spin.setRange(-1e5 if name == "level" else 1e-3, 1e5)
                spin.setMaximumWidth(120)
                spin.setDecimals(1)
                spin.setPrefix("L " if name == "level" else "W ")
                spin.editingFinished.connect(lambda role=role: self._on_level_edit(role))
            self.level_spins[role] = (level, width)
            form.addRow(f"{role.capitalize()} window", box)
            row = QHBoxLayout()
            row.addWidget(level)
            row.addWidget(width)
            form.addRow("", row)
        layout.addWidget(view)

        metrics = QGroupBox("Metrics (report.json)")
        metrics_layout = QVBoxLayout(metrics)
        self.metrics_table = QTableWidget(0, 2)
        self.metrics_table.setHorizontalHeaderLabels(["figure", "value"])
        self.metrics_table.verticalHeader().setVisible(False)
        self.metrics_table.horizontalHeader().setSectionResizeMode(
            0, QHeaderView.ResizeMode.Stretch
        )
        self.metrics_table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.metrics_table.setMinimumHeight(220)
        metrics_layout.addWidget(self.metrics_table)
        layout.addWidget(metrics)
        layout.addStretch(1)

        self.panel_scroll = QScrollArea()
        self.panel_scroll.setWidget(panel)
        self.panel_scroll.setWidgetResizable(True)
        self.panel_scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        # Room for the widest state of the panel (long level values), so nothing is cut off.
        scrollbar = self.panel_scroll.verticalScrollBar().sizeHint().width()
        self.panel_scroll.setMinimumWidth(max(panel.minimumSizeHint().width(), 380) + scrollbar)

    def _build_views_area(self) -> None:
        self.views_area = QWidget()
        self.views_grid = QGridLayout(self.views_area)
        self.views_grid.setContentsMargins(0, 0, 0, 0)
        self.info_label = QLabel()
        self.info_label.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        self.info_label.setWordWrap(True)
        self.info_label.setMargin(8)
        self._rebuild_views(("axial", "coronal", "sagittal"))

    def _rebuild_views(self, planes: tuple[str, ...]) -> None:
        if planes == self._planes:
            return
        modes = {plane: view.mode for plane, view in self.views.items()}
        default = self.mode_box.currentData() or "fixed"
        for view in self.views.values():
            self.views_grid.removeWidget(view)
            view.hide()
            view.setParent(None)
            view.deleteLater()
        self.views_grid.removeWidget(self.info_label)
        self.views = {}
        positions = ((0, 0), (0, 1), (1, 0))
        for plane, (row, column) in zip(planes, positions):
            view = SliceView(plane)
            view.set_mode(modes.get(plane, default))
            view.pointed.connect(self._on_pointed)
            view.scrolled.connect(self._on_scrolled)
            view.hovered.connect(self._on_hovered)
            view.mode_changed.connect(lambda _plane, _mode: self.refresh())
            self.views[plane] = view
            if len(planes) == 1:
                self.views_grid.addWidget(view, 0, 0, 2, 2)
            else:
                self.views_grid.addWidget(view, row, column)
        if len(planes) == 1:
            self.info_label.hide()
        else:
            self.info_label.show()
            self.views_grid.addWidget(self.info_label, 1, 1)
        for index in range(2):
            self.views_grid.setRowStretch(index, 1)
            self.views_grid.setColumnStretch(index, 1)
        self._planes = planes

    def _action(
        self,
        text: str,
        slot: Callable[[], Any],
        shortcut: str | QKeySequence | None = None,
        *,
        in_views: bool = False,
    ) -> QAction:
        """An action with its shortcut; ``in_views``: the shortcut works only while the focus
        is in the views (the arrow keys still step spin boxes and lists in the panel)."""
        action = QAction(text, self)
        if shortcut is not None:
            action.setShortcut(QKeySequence(shortcut))
        action.triggered.connect(lambda _checked=False: slot())
        if in_views:
            action.setShortcutContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
            self.views_area.addAction(action)
        else:
            self.addAction(action)
        return action

    def _build_actions(self) -> None:
        self.actions_by_name: dict[str, QAction] = {}
        add = self.actions_by_name.__setitem__
        add("open_fixed", self._action("Open &Fixed…", lambda: self.choose_file("fixed"), "Ctrl+O"))
        add(
            "open_moving",
            self._action("Open &Moving…", lambda: self.choose_file("moving"), "Ctrl+M"),
        )
        add(
            "open_fixed_dicom",
            self._action(
                "Open Fixed DICOM Folder…", lambda: self.choose_folder("fixed"), "Ctrl+Shift+O"
            ),
        )
        add(
            "open_moving_dicom",
            self._action(
                "Open Moving DICOM Folder…", lambda: self.choose_folder("moving"), "Ctrl+Shift+M"
            ),
        )
        add(
            "open_labels",
            self._action("Open Moving &Labels…", lambda: self.choose_file("labels"), "Ctrl+L"),
        )
        add("open_result", self._action("Open &Result…", self.choose_result, "Ctrl+Shift+R"))
        add("export", self._action("&Export Result…", self.choose_export, "Ctrl+E"))
        add("screenshot", self._action("Save Screenshot…", self.choose_screenshot, "Ctrl+Shift+S"))
        add("quit", self._action("&Quit", self.close, "Ctrl+Q"))
        add("register", self._action("&Register", self.start_registration, "Ctrl+R"))
        add("cancel", self._action("&Cancel Registration", self.cancel_registration, "Esc"))
        add("toggle_state", self._action("Toggle Before/After", self.toggle_state, "Ctrl+B"))
        add("reset_zoom", self._action("Reset Zoom", self.reset_zoom, "Ctrl+0"))
        for name, text, steps, key in (
            ("next_slice", "Next Slice", 1, "Up"),
            ("previous_slice", "Previous Slice", -1, "Down"),
            ("page_up", "Ten Slices On", 10, "PgUp"),
            ("page_down", "Ten Slices Back", -10, "PgDown"),
        ):
            action = self._action(text, lambda s=steps: self.step_slice(s), key, in_views=True)
            add(name, action)
        for number, mode in enumerate(VIEW_MODES, start=1):
            add(
                f"mode_{mode}",
                self._action(MODE_TITLES[mode], lambda m=mode: self.set_mode_all(m), str(number)),
            )
        add("shortcuts", self._action("&Keyboard Shortcuts", self.show_shortcuts, "F1"))
        add("about", self._action("&About intermodal", self.show_about))

    def _build_menus(self) -> None:
        a = self.actions_by_name
        menu = self.menuBar().addMenu("&File")
        for name in ("open_fixed", "open_moving", "open_fixed_dicom", "open_moving_dicom"):
            menu.addAction(a[name])
        menu.addAction(a["open_labels"])
        self.recent_menus = {role: menu.addMenu(f"Recent {role.capitalize()}") for role in ROLES}
        self._update_recent_menus()
        menu.addSeparator()
        for name in ("open_result", "export", "screenshot"):
            menu.addAction(a[name])
        menu.addSeparator()
        menu.addAction(a["quit"])
        menu = self.menuBar().addMenu("&Registration")
        menu.addAction(a["register"])
        menu.addAction(a["cancel"])
        menu = self.menuBar().addMenu("&View")
        for mode in VIEW_MODES:
            menu.addAction(a[f"mode_{mode}"])
        menu.addSeparator()
        for name in ("toggle_state", "reset_zoom", "next_slice", "previous_slice"):
            menu.addAction(a[name])
        menu = self.menuBar().addMenu("&Help")
        menu.addAction(a["shortcuts"])
        menu.addAction(a["about"])

    # ----------------------------------------------------------------------------- errors

    def _error_dialog(self, message: str) -> None:
        QMessageBox.critical(self, "intermodal", message)

    def show_error(self, message: str) -> None:
        """Report a problem in one line (a dialog by default) and log it."""
        self.last_error = message
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
            self.model_edit.setCurrentText(path)

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
            values = PRESETS[self.preset_box.currentText()]
            if layer.image.GetDimension() != self._preset_ndim and values[2] != values[3]:
                self._fill_from_preset()  # the panel held the other dimension's preset values
            grid = self.scene.grid
            self._rebuild_views(grid.planes)
            self.cursor = grid.centre()
            if self.scene.moving is None:
                self.drop_labels["moving"].setText("<b>Moving</b>: drop a file here")
            if self.scene.labels is None:
                self.drop_labels["labels"].setText("<b>Labels (moving space)</b>: drop a file here")
        else:
            self.scene.set_moving(layer)
        self.moving_state = "before"
        self.drop_labels[role].setText(
            f"<b>{role.capitalize()}</b>: {layer.name} ({layer.modality.upper()}, "
            f"{'×'.join(str(s) for s in layer.image.GetSize())})"
        )
        self.drop_labels[role].setToolTip(layer.source or "")
        default = "soft tissue" if layer.modality == "ct" else "auto"
        self.set_window(role, default)
        self._show_metrics(None)
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
        self.drop_labels["labels"].setText(f"<b>Labels (moving space)</b>: {name}")
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
        box = self.window_boxes[role]
        if box.currentText() != name:
            box.blockSignals(True)
            box.setCurrentText(name)
            box.blockSignals(False)
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
        level_spin, width_spin = self.level_spins[role]
        for spin, value in ((level_spin, (low + high) / 2), (width_spin, high - low)):
            spin.blockSignals(True)
            spin.setDecimals(3 if abs(high - low) < 10 else 1)
            spin.setValue(value)
            spin.blockSignals(False)
        if preset == "custom":
            self.window_boxes[role].blockSignals(True)
            self.window_boxes[role].setCurrentText("custom")
            self.window_boxes[role].blockSignals(False)
        self.refresh()

    def _on_level_edit(self, role: str) -> None:
        level_spin, width_spin = self.level_spins[role]
        level, width = level_spin.value(), max(width_spin.value(), 1e-3)
        if self.levels.get(role) != (level - width / 2, level + width / 2):
            self.set_levels(role, level - width / 2, level + width / 2)

    def set_mode_all(self, mode: str) -> None:
        """Show view ``mode`` in every view."""
        if mode not in VIEW_MODES:
            raise ValueError(f"view mode must be one of {VIEW_MODES}, not {mode!r}")
        for view in self.views.values():
            view.set_mode(mode)
        index = self.mode_box.findData(mode)
        if self.mode_box.currentIndex() != index:
            self.mode_box.blockSignals(True)
            self.mode_box.setCurrentIndex(index)
            self.mode_box.blockSignals(False)
        self.refresh()

    def set_moving_state(self, state: str) -> None:
        """Show the moving image ``"before"``, after the ``"initial"`` alignment, or ``"after"``."""
        if state not in self.scene.states():
            raise IntermodalError(
                f"the moving image cannot be shown {state!r} now; available: "
                f"{', '.join(self.scene.states()) or 'none'}"
            )
        self.moving_state = state
        self._sync_state_box()
        self.refresh()

    def toggle_state(self) -> None:
        """Switch between the moving image before and after registration."""
        states = self.scene.states()
        if "after" in states:
            self.set_moving_state("before" if self.moving_state == "after" else "after")

    def _on_state_box(self, _index: int) -> None:
        state = self.state_box.currentData()
        if state and state != self.moving_state and state in self.scene.states():
            self.moving_state = state
            self.refresh()

    def _sync_state_box(self) -> None:
        self.state_box.blockSignals(True)
        self.state_box.clear()
        for state in self.scene.states():
            self.state_box.addItem(MOVING_STATE_TITLES[state], state)
        self.state_box.setCurrentIndex(max(0, self.state_box.findData(self.moving_state)))
        self.state_box.blockSignals(False)

    def _on_blend(self, value: int) -> None:
        self.options.blend = value / 100.0
        self.refresh()

    def _on_tile(self, value: float) -> None:
        self.options.tile_mm = float(value)
        self.refresh()

    def _on_grid(self, value: float) -> None:
        self.options.grid_mm = float(value)
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
            summary = "<br>".join(f"{name}: {value}" for name, value in _headline(result.report))
            lines.append(f"<b>Result</b> ({origin})<br>{summary}")
        if self.scene.moving is not None:
            lines.append(f"Moving shown: {MOVING_STATE_TITLES[self.moving_state]}")
        self.info_label.setText("<br><br>".join(lines))
        title = "intermodal"
        if self.scene.fixed is not None:
            title += f" — {self.scene.fixed.name}"
            if self.scene.moving is not None:
                title += f" ← {self.scene.moving.name}"
        self.setWindowTitle(title)

    def _after_scene_change(self) -> None:
        if self.moving_state not in self.scene.states():
            self.moving_state = "before"
        self._sync_state_box()
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

    def _show_metrics(self, report: dict | None) -> None:
        rows = metrics_rows(report) if report else []
        self.metrics_table.setRowCount(len(rows))
        for index, (name, value) in enumerate(rows):
            self.metrics_table.setItem(index, 0, QTableWidgetItem(name))
            self.metrics_table.setItem(index, 1, QTableWidgetItem(value))

    def metrics(self) -> dict[str, str]:
        """The metrics panel's rows, ``{figure: value}``."""
        table = self.metrics_table
        return {table.item(i, 0).text(): table.item(i, 1).text() for i in range(table.rowCount())}

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
        self.register_button.setEnabled(ready and not self.busy)
        a["cancel"].setEnabled(self.busy)
        self.cancel_button.setEnabled(self.busy)
        exportable = self.scene.result is not None and self.scene.result.result is not None
        a["export"].setEnabled(exportable and not self.busy)
        a["toggle_state"].setEnabled("after" in self.scene.states())
        panel = (self.preset_box, self.model_edit, self.refine_spin, self.init_box, self.device_box)
        for widget in panel:
            widget.setEnabled(not self.busy)
        for label in self.drop_labels.values():
            label.setAcceptDrops(not self.busy)

    # ----------------------------------------------------------------------------- registration

    def registration_options(self) -> dict[str, Any]:
        """The settings panel: ``preset`` and the keyword arguments that override it."""
        model = self.model_edit.currentText().strip()
        return {
            "preset": self.preset_box.currentText(),
            "model": None if model.lower() in ("", "none") else model,
            "refine": int(self.refine_spin.value()),
            "init": self.init_box.currentText(),
            "device": self.device_box.currentText(),
        }

    def set_registration_options(self, options: dict[str, Any]) -> None:
        """Fill the settings panel (keys: preset, model, refine, init, device).

        A preset fills model, refine and init first, so the other keys override it.
        """
        unknown = sorted(set(options) - {"preset", "model", "refine", "init", "device"})
        if unknown:
            raise IntermodalError(f"unknown registration option(s) {unknown}")
        if "preset" in options:
            if options["preset"] not in PRESETS:
                raise IntermodalError(
                    f"unknown preset {options['preset']!r}; presets are {', '.join(PRESETS)}"
                )
            self.preset_box.setCurrentText(options["preset"])
            self._fill_from_preset()
        if "model" in options:
            self.model_edit.setCurrentText(options["model"] or "none")
        if "refine" in options:
            self.refine_spin.setValue(int(options["refine"]))
        if "init" in options:
            self.init_box.setCurrentText(options["init"])
        if "device" in options:
            self.device_box.setCurrentText(options["device"])

    def _fill_from_preset(self) -> None:
        """Model, steps and alignment from the chosen preset, for the fixed image's dimension."""
        fixed = self.scene.fixed
        ndim = 3 if fixed is None else fixed.image.GetDimension()
        self._preset_ndim = ndim
        values = PRESETS[self.preset_box.currentText()][ndim]
        self.model_edit.setCurrentText(values.get("model") or "none")
        self.refine_spin.setValue(int(values.get("refine", DEFAULT_REFINE)))
        self.init_box.setCurrentText(values.get("init", DEFAULT_INIT))

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
        self.progress.setRange(0, 0)
        self.stage_label.setText("starting")
        self._update_enabled()
        self.job.start()
        return True

    def cancel_registration(self) -> None:
        """Stop the running registration at its next step."""
        if self.job is not None:
            self.job.cancel()
            self.stage_label.setText("cancelling…")

    def _on_progress(self, stage: str, step: int, total: int) -> None:
        if self.job is None or self.job.cancel_requested:
            return
        if total > 0:
            self.progress.setRange(0, total)
            self.progress.setValue(step)
            self.stage_label.setText(f"{stage}: step {step} of {total}")
        else:
            self.progress.setRange(0, 0)
            self.stage_label.setText(stage)

    def show_result(self, layers: ResultLayers) -> None:
        """Show a result: the registered moving image, the report in the metrics panel."""
        self.scene.set_result(layers)
        self.moving_state = "after" if "after" in self.scene.states() else "before"
        self._show_metrics(layers.report)
        self._after_scene_change()

    def _on_succeeded(self, layers: ResultLayers) -> None:
        self.show_result(layers)
        seconds = layers.report.get("timings_s", {}).get("total", float("nan"))
        self.stage_label.setText(f"registered in {seconds:.1f} s")
        self._outcome = "succeeded"

    def _on_failed(self, message: str) -> None:
        self.stage_label.setText("failed")
        self._outcome = "failed"
        self._failure = message

    def _on_cancelled(self) -> None:
        self.stage_label.setText("cancelled")
        self._outcome = "cancelled"

    def _on_job_finished(self) -> None:
        job, self.job = self.job, None
        if job is not None:
            job.deleteLater()
        self.progress.setRange(0, 1)
        outcome = self._outcome or "failed"
        self._outcome = ""
        self.progress.setValue(1 if outcome == "succeeded" else 0)
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
            {k: recorded[k] for k in ("model", "refine", "init", "device") if k in recorded}
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
        lines = []
        for action in self.actions_by_name.values():
            key = action.shortcut().toString(QKeySequence.SequenceFormat.NativeText)
            if key:
                lines.append(f"{key}\t{action.text().replace('&', '')}")
        lines.append("Wheel\tnext or previous slice (Ctrl + wheel zooms)")
        lines.append("Left click or drag\tmove the crosshair")
        return "\n".join(lines)

    def show_shortcuts(self) -> None:
        """List the keyboard shortcuts."""
        QMessageBox.information(self, "Keyboard shortcuts", self.shortcuts_text())

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt naming
        """Cancel a running registration and wait for its thread before closing."""
        if self.job is not None:
            self.job.cancel()
            self.job.wait()
        super().closeEvent(event)


def _headline(report: dict) -> list[tuple[str, str]]:
    """The few figures the information panel repeats from the metrics panel."""
    rows = []
    nmi = report.get("nmi") or {}
    if "before" in nmi and "after" in nmi:
        rows.append(("NMI", f"{nmi['before']:.3f} → {nmi['after']:.3f}"))
    jacobian = report.get("jacobian") or {}
    if "nonpositive_fraction" in jacobian:
        rows.append(("folding (det ≤ 0)", f"{100 * jacobian['nonpositive_fraction']:.3f} %"))
    if "sdlogj" in jacobian:
        rows.append(("SDlogJ", f"{jacobian['sdlogj']:.3f}"))
    total = (report.get("timings_s") or {}).get("total")
    if total is not None:
        rows.append(("time", f"{total:.1f} s"))
    return rows


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
