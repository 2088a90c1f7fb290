"""One slice view: an RGB slice drawn to scale in millimetres, a crosshair and a mode selector.

Left click or drag moves the crosshair, the wheel moves through slices (Ctrl + wheel zooms),
the middle button pans and the right button drags to zoom.
"""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QPointF, QRectF, Qt, Signal
from PySide6.QtWidgets import QComboBox, QFrame, QHBoxLayout, QLabel, QVBoxLayout, QWidget

from intermodal.gui.display import GRID_COLOUR, MODE_TITLES, VIEW_MODES

MODE_LEGENDS = {
    "fixed": "fixed image",
    "moving": "moving image on the fixed grid",
    "blend": "blend: the slider goes from fixed (0) to moving (1)",
    "checkerboard": "tiles alternate fixed (top left) and moving",
    "difference": "fixed − moving: mid-gray where they agree",
    "edges": "red: edges of the moving image over the fixed",
    "grid": "yellow: a regular grid bent by the deformable displacement",
    "jacobian": "blue det < 1 (shrinks), red det > 1, green det ≤ 0 (folding)",
    "labels": "outlines of the moving label map",
}

CROSSHAIR_PEN = pg.mkPen((0, 200, 255, 170), width=1, style=Qt.PenStyle.DashLine)


class _SliceViewBox(pg.ViewBox):
    """A ViewBox whose wheel moves through slices and whose left button places the cursor."""

    scrolled = Signal(int)
    pointed = Signal(QPointF)

    def wheelEvent(self, ev, axis=None) -> None:  # noqa: N802 - Qt naming
        if ev.modifiers() & Qt.KeyboardModifier.ControlModifier:
            super().wheelEvent(ev, axis)
            return
        delta = ev.delta()
        if delta:
            self.scrolled.emit(1 if delta > 0 else -1)
        ev.accept()

    def mouseClickEvent(self, ev) -> None:  # noqa: N802 - Qt naming
        if ev.button() == Qt.MouseButton.LeftButton:
            ev.accept()
            self.pointed.emit(self.mapSceneToView(ev.scenePos()))
            return
        super().mouseClickEvent(ev)

    def mouseDragEvent(self, ev, axis=None) -> None:  # noqa: N802 - Qt naming
        if ev.button() == Qt.MouseButton.LeftButton:
            ev.accept()
            self.pointed.emit(self.mapSceneToView(ev.scenePos()))
            return
        super().mouseDragEvent(ev, axis)


class SliceView(QFrame):
    """A view of one plane.

    Signals:
        pointed(plane, row, column): a left click or drag at a pixel of the slice.
        scrolled(plane, steps): the wheel, one step per notch (+1 forward).
        hovered(plane, row, column): the mouse is over a pixel (-1, -1 when outside).
        mode_changed(plane, mode): the user picked another view mode.
    """

    pointed = Signal(str, int, int)
    scrolled = Signal(str, int)
    hovered = Signal(str, int, int)
    mode_changed = Signal(str, str)

    def __init__(self, plane: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.plane = plane
        self.setFrameShape(QFrame.Shape.StyledPanel)
        self._spacing = (1.0, 1.0)
        self._shape: tuple[int, int] | None = None

        self.title = QLabel(plane.capitalize())
        self.title.setObjectName(f"title_{plane}")
        self.mode_box = QComboBox()
        self.mode_box.setObjectName(f"mode_{plane}")
        for mode in VIEW_MODES:
            self.mode_box.addItem(MODE_TITLES[mode], mode)
        self.mode_box.currentIndexChanged.connect(self._on_mode_box)
        self.legend = QLabel(MODE_LEGENDS["fixed"])
        self.legend.setStyleSheet("color: gray;")

        self.box = _SliceViewBox(lockAspect=True, invertY=True, enableMenu=False)
        self.box.setBackgroundColor((0, 0, 0))
        self.graphics = pg.GraphicsView(background="k")
        self.graphics.setCentralItem(self.box)
        self.image = pg.ImageItem(axisOrder="row-major")
        self.box.addItem(self.image)
        self.vline = pg.InfiniteLine(angle=90, movable=False, pen=CROSSHAIR_PEN)
        self.hline = pg.InfiniteLine(angle=0, movable=False, pen=CROSSHAIR_PEN)
        for line in (self.vline, self.hline):
            line.setVisible(False)
            self.box.addItem(line, ignoreBounds=True)
        self.lines = pg.PlotCurveItem(pen=pg.mkPen(GRID_COLOUR, width=1.5), connect="finite")
        self.lines.setVisible(False)
        self.box.addItem(self.lines, ignoreBounds=True)
        self.box.scrolled.connect(lambda steps: self.scrolled.emit(self.plane, steps))
        self.box.pointed.connect(self._on_pointed)
        self.graphics.scene().sigMouseMoved.connect(self._on_mouse_moved)

        header = QHBoxLayout()
        header.setContentsMargins(4, 2, 4, 0)
        header.addWidget(self.title, 1)
        header.addWidget(self.mode_box)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.setSpacing(2)
        layout.addLayout(header)
        layout.addWidget(self.graphics, 1)
        layout.addWidget(self.legend)

    @property
    def mode(self) -> str:
        """The current view mode, one of :data:`~intermodal.gui.display.VIEW_MODES`."""
        return self.mode_box.currentData()

    def set_mode(self, mode: str) -> None:
        """Show ``mode`` (without emitting :attr:`mode_changed`)."""
        index = self.mode_box.findData(mode)
        if index < 0:
            raise ValueError(f"view mode must be one of {VIEW_MODES}, not {mode!r}")
        self.mode_box.blockSignals(True)
        self.mode_box.setCurrentIndex(index)
        self.mode_box.blockSignals(False)
        self.legend.setText(MODE_LEGENDS[mode])

    def _on_mode_box(self, _index: int) -> None:
        self.legend.setText(MODE_LEGENDS[self.mode])
        self.mode_changed.emit(self.plane, self.mode)

    def _pixel(self, point: QPointF) -> tuple[int, int] | None:
        if self._shape is None:
            return None
        row = int(np.floor(point.y() / self._spacing[0]))
        col = int(np.floor(point.x() / self._spacing[1]))
        if 0 <= row < self._shape[0] and 0 <= col < self._shape[1]:
            return row, col
        return None

    def _on_pointed(self, point: QPointF) -> None:
        if self._shape is None:
            return
        row = int(np.clip(np.floor(point.y() / self._spacing[0]), 0, self._shape[0] - 1))
        col = int(np.clip(np.floor(point.x() / self._spacing[1]), 0, self._shape[1] - 1))
        self.pointed.emit(self.plane, row, col)

    def _on_mouse_moved(self, scene_pos) -> None:
        pixel = self._pixel(self.box.mapSceneToView(scene_pos))
        row, col = pixel if pixel is not None else (-1, -1)
        self.hovered.emit(self.plane, row, col)

    def set_image(self, rgb: np.ndarray, spacing: tuple[float, float]) -> None:
        """Show ``rgb`` (``(H, W, 3)`` uint8) with pixels of ``spacing`` = ``(row, col)`` mm."""
        reset = self._shape != rgb.shape[:2] or self._spacing != tuple(spacing)
        self._shape = (int(rgb.shape[0]), int(rgb.shape[1]))
        self._spacing = (float(spacing[0]), float(spacing[1]))
        self.image.setImage(rgb, autoLevels=False, levels=(0, 255))
        height = self._shape[0] * self._spacing[0]
        width = self._shape[1] * self._spacing[1]
        self.image.setRect(QRectF(0.0, 0.0, width, height))
        if reset:
            self.box.autoRange(padding=0.0)

    def set_crosshair(self, row: int, col: int) -> None:
        """Put the crosshair on the centre of pixel ``(row, col)``."""
        self.hline.setPos((row + 0.5) * self._spacing[0])
        self.vline.setPos((col + 0.5) * self._spacing[1])
        self.hline.setVisible(True)
        self.vline.setVisible(True)

    def set_lines(self, lines: tuple[np.ndarray, np.ndarray] | None) -> None:
        """Draw polylines ``(x, y)`` in mm (NaN between lines) over the slice, or none."""
        if lines is None:
            self.lines.setVisible(False)
            return
        self.lines.setData(*lines)
        self.lines.setVisible(True)

    def reset_zoom(self) -> None:
        """Fit the slice to the view."""
        self.box.autoRange(padding=0.0)

    def clear(self) -> None:
        """Show nothing."""
        self.image.clear()
        self.set_lines(None)
        self._shape = None
        self.hline.setVisible(False)
        self.vline.setVisible(False)

    def displayed(self) -> np.ndarray | None:
        """The RGB array shown now (``None`` when empty); for checks and tests."""
        return self.image.image
