"""The Images panel: where the fixed, moving and label images are opened or dropped."""

from __future__ import annotations

from PySide6.QtCore import Signal
from PySide6.QtGui import QDragEnterEvent, QDropEvent
from PySide6.QtWidgets import QGridLayout, QGroupBox, QLabel, QPushButton, QWidget

ROLES = ("fixed", "moving")
"""The two images of a registration."""
TITLES = {"fixed": "Fixed", "moving": "Moving", "labels": "Labels (moving space)"}
EMPTY = "drop a file here"


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


class ImagesPanel(QGroupBox):
    """A drop area and open buttons for each image: fixed, moving and the moving labels.

    Signals:
        open_file(role): the role's Open… button was pressed.
        open_folder(role): the role's DICOM folder… button was pressed (fixed, moving).
        dropped(role, path): a file or folder was dropped on the role's area.
    """

    open_file = Signal(str)
    open_folder = Signal(str)
    dropped = Signal(str, str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Images", parent)
        grid = QGridLayout(self)
        self.drop_labels: dict[str, DropLabel] = {}
        for row, role in enumerate(TITLES):
            label = DropLabel(f"<b>{TITLES[role]}</b>: {EMPTY}")
            label.setObjectName(f"drop_{role}")
            label.dropped.connect(lambda path, role=role: self.dropped.emit(role, path))
            self.drop_labels[role] = label
            grid.addWidget(label, 2 * row, 0, 1, 2)
            open_button = QPushButton("Open…")
            open_button.clicked.connect(lambda _=False, role=role: self.open_file.emit(role))
            grid.addWidget(open_button, 2 * row + 1, 0)
            if role != "labels":
                dicom_button = QPushButton("DICOM folder…")
                dicom_button.clicked.connect(lambda _=False, role=role: self.open_folder.emit(role))
                grid.addWidget(dicom_button, 2 * row + 1, 1)

    def describe(self, role: str, description: str = EMPTY, source: str | None = None) -> None:
        """Describe what the role holds (``source``: the file, shown as the tooltip)."""
        self.drop_labels[role].setText(f"<b>{TITLES[role]}</b>: {description}")
        if source is not None:
            self.drop_labels[role].setToolTip(source)

    def set_busy(self, busy: bool) -> None:
        """Refuse drops while a registration runs."""
        for label in self.drop_labels.values():
            label.setAcceptDrops(not busy)
