"""The Display panel: the view mode of every view, which moving image is shown, the blend,
checkerboard and grid sizes, and each image's window (level and width)."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QSlider,
    QWidget,
)

from intermodal.gui.display import MODE_TITLES, VIEW_MODES, RenderOptions
from intermodal.gui.images_panel import ROLES

WINDOW_CHOICES = ("auto", "soft tissue", "bone", "lung", "full range", "custom")
MOVING_STATE_TITLES = {
    "before": "before (as read)",
    "initial": "initial alignment",
    "after": "registered",
}


class DisplayPanel(QGroupBox):
    """How the views draw the images.

    The blend, tile and grid controls write into the shared ``options``
    (:class:`~intermodal.gui.display.RenderOptions`) and emit ``options_changed``.

    Signals:
        mode_chosen(mode): a view mode for every view was chosen.
        state_chosen(state): a moving image state (``before``, ``initial``, ``after``).
        options_changed: the blend, checkerboard tile or grid spacing changed.
        window_chosen(role, name): a window preset (:data:`WINDOW_CHOICES`) for an image.
        levels_edited(role, low, high): the level and width typed in for an image.
    """

    mode_chosen = Signal(str)
    state_chosen = Signal(str)
    options_changed = Signal()
    window_chosen = Signal(str, str)
    levels_edited = Signal(str, float, float)

    def __init__(self, options: RenderOptions, parent: QWidget | None = None) -> None:
        super().__init__("Display", parent)
        self.options = options
        form = QFormLayout(self)
        self.mode_box = QComboBox()
        for mode in VIEW_MODES:
            self.mode_box.addItem(MODE_TITLES[mode], mode)
        self.mode_box.currentIndexChanged.connect(
            lambda _i: self.mode_chosen.emit(self.mode_box.currentData())
        )
        form.addRow("All views", self.mode_box)
        self.state_box = QComboBox()
        self.state_box.currentIndexChanged.connect(self._on_state_box)
        form.addRow("Moving shown", self.state_box)
        self.blend_slider = QSlider(Qt.Orientation.Horizontal)
        self.blend_slider.setRange(0, 100)
        self.blend_slider.setValue(int(round(100 * options.blend)))
        self.blend_slider.valueChanged.connect(self._on_blend)
        form.addRow("Blend", self.blend_slider)
        self.tile_spin = QDoubleSpinBox()
        self.tile_spin.setRange(1.0, 500.0)
        self.tile_spin.setSuffix(" mm")
        self.tile_spin.setValue(options.tile_mm)
        self.tile_spin.valueChanged.connect(self._on_tile)
        form.addRow("Checker tile", self.tile_spin)
        self.grid_spin = QDoubleSpinBox()
        self.grid_spin.setRange(1.0, 500.0)
        self.grid_spin.setSuffix(" mm")
        self.grid_spin.setValue(options.grid_mm)
        self.grid_spin.valueChanged.connect(self._on_grid)
        form.addRow("Grid spacing", self.grid_spin)
        self.window_boxes: dict[str, QComboBox] = {}
        self.level_spins: dict[str, tuple[QDoubleSpinBox, QDoubleSpinBox]] = {}
        for role in ROLES:
            box = QComboBox()
            box.addItems(list(WINDOW_CHOICES))
            box.currentTextChanged.connect(
                lambda name, role=role: self.window_chosen.emit(role, name)
            )
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

    def mode(self) -> str | None:
        """The view mode chosen for every view."""
        return self.mode_box.currentData()

    def show_mode(self, mode: str) -> None:
        """Show ``mode`` as chosen, without emitting ``mode_chosen``."""
        index = self.mode_box.findData(mode)
        if self.mode_box.currentIndex() != index:
            self.mode_box.blockSignals(True)
            self.mode_box.setCurrentIndex(index)
            self.mode_box.blockSignals(False)

    def show_states(self, states: tuple[str, ...] | list[str], current: str) -> None:
        """Offer the moving image's ``states``, ``current`` chosen, without a signal."""
        self.state_box.blockSignals(True)
        self.state_box.clear()
        for state in states:
            self.state_box.addItem(MOVING_STATE_TITLES[state], state)
        self.state_box.setCurrentIndex(max(0, self.state_box.findData(current)))
        self.state_box.blockSignals(False)

    def show_window(self, role: str, name: str) -> None:
        """Show window preset ``name`` as the role's, without emitting ``window_chosen``."""
        box = self.window_boxes[role]
        if box.currentText() != name:
            box.blockSignals(True)
            box.setCurrentText(name)
            box.blockSignals(False)

    def show_levels(self, role: str, low: float, high: float) -> None:
        """Show ``[low, high]`` as the role's level and width, without a signal."""
        level_spin, width_spin = self.level_spins[role]
        for spin, value in ((level_spin, (low + high) / 2), (width_spin, high - low)):
            spin.blockSignals(True)
            spin.setDecimals(3 if abs(high - low) < 10 else 1)
            spin.setValue(value)
            spin.blockSignals(False)

    def _on_state_box(self, _index: int) -> None:
        state = self.state_box.currentData()
        if state:
            self.state_chosen.emit(state)

    def _on_level_edit(self, role: str) -> None:
        level_spin, width_spin = self.level_spins[role]
        level, width = level_spin.value(), max(width_spin.value(), 1e-3)
        self.levels_edited.emit(role, level - width / 2, level + width / 2)

    def _on_blend(self, value: int) -> None:
        self.options.blend = value / 100.0
        self.options_changed.emit()

    def _on_tile(self, value: float) -> None:
        self.options.tile_mm = float(value)
        self.options_changed.emit()

    def _on_grid(self, value: float) -> None:
        self.options.grid_mm = float(value)
        self.options_changed.emit()
