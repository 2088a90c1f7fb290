"""The views area: one slice view per plane (three in 3D, one in 2D) and an information box."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QGridLayout, QLabel, QWidget

from intermodal.gui.views import SliceView


class ViewsArea(QWidget):
    """The slice views on a 2 x 2 grid, the fourth cell the information box.

    Signals (forwarded from every view):
        pointed(plane, row, column): a click or drag in a view.
        scrolled(plane, steps): the wheel turned over a view.
        hovered(plane, row, column): the mouse moved over a view (row -1: it left).
        mode_changed(plane, mode): a view's own mode was changed.
    """

    pointed = Signal(str, int, int)
    scrolled = Signal(str, int)
    hovered = Signal(str, int, int)
    mode_changed = Signal(str, str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.grid = QGridLayout(self)
        self.grid.setContentsMargins(0, 0, 0, 0)
        self.info_label = QLabel()
        self.info_label.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        self.info_label.setWordWrap(True)
        self.info_label.setMargin(8)
        self.views: dict[str, SliceView] = {}
        self.planes: tuple[str, ...] = ()

    def rebuild(self, planes: tuple[str, ...], default_mode: str) -> None:
        """One view per plane; a plane kept keeps its mode, a new one gets ``default_mode``."""
        if planes == self.planes:
            return
        modes = {plane: view.mode for plane, view in self.views.items()}
        for view in self.views.values():
            self.grid.removeWidget(view)
            view.hide()
            view.setParent(None)
            view.deleteLater()
        self.grid.removeWidget(self.info_label)
        self.views = {}
        positions = ((0, 0), (0, 1), (1, 0))
        for plane, (row, column) in zip(planes, positions):
            view = SliceView(plane)
            view.set_mode(modes.get(plane, default_mode))
            view.pointed.connect(self.pointed)
            view.scrolled.connect(self.scrolled)
            view.hovered.connect(self.hovered)
            view.mode_changed.connect(self.mode_changed)
            self.views[plane] = view
            if len(planes) == 1:
                self.grid.addWidget(view, 0, 0, 2, 2)
            else:
                self.grid.addWidget(view, row, column)
        if len(planes) == 1:
            self.info_label.hide()
        else:
            self.info_label.show()
            self.grid.addWidget(self.info_label, 1, 1)
        for index in range(2):
            self.grid.setRowStretch(index, 1)
            self.grid.setColumnStretch(index, 1)
        self.planes = planes
