"""The Registration panel: the preset and the settings that override it, Register and Cancel,
and the running registration's progress."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QWidget,
)

from intermodal.errors import IntermodalError
from intermodal.presets import INIT_CHOICES, PRESET_NAMES, PRESETS

# Copies of the library's (intermodal.registration), which imports torch: the window must open
# without waiting for it. tests/gui/test_gui_window.py keeps them equal.
DEVICE_CHOICES = ("auto", "cpu", "cuda")
DEFAULT_REFINE = 80
"""The default of :attr:`intermodal.registration.Settings.refine`."""
DEFAULT_INIT = "rigid"
"""The default of :attr:`intermodal.registration.Settings.init`."""
DEFAULT_SEARCH_ORIENTATION = True
"""The default of :attr:`intermodal.registration.Settings.search_orientation`."""
OPTION_NAMES = ("preset", "model", "refine", "init", "search_orientation", "device")
"""The keys of :meth:`RegistrationPanel.options`."""


def model_default_in_words() -> str:
    """What ``"default"`` loads, from the library (:data:`intermodal.models.DEFAULT_MODELS`)."""
    try:
        from intermodal.models import default_models_in_words
    except ImportError:
        return "the library's choice for the images' dimension"
    return default_models_in_words()


def model_choices() -> tuple[list[str], str]:
    """The model choices offered, and the default (the library's: ``"default"``)."""
    try:
        from intermodal.models import BUNDLED
    except ImportError:
        return ["default", "none"], "default"
    return ["default", "none", "auto", *BUNDLED], "default"


class RegistrationPanel(QGroupBox):
    """The registration's settings, its buttons and its progress.

    Signals:
        register_requested: the Register button was pressed.
        cancel_requested: the Cancel button was pressed.
        browse_model_requested: the model's … button was pressed.
    """

    register_requested = Signal()
    cancel_requested = Signal()
    browse_model_requested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Registration", parent)
        self.ndim = 3
        """The fixed image's dimension, whose preset values the panel shows."""
        self._preset_ndim = 3  # the dimension whose preset values fill the panel
        form = QFormLayout(self)
        self.preset_box = QComboBox()
        self.preset_box.addItems(list(PRESET_NAMES))
        self.preset_box.setToolTip(
            "default: the one preset, accurate and fast. Choosing it fills the model, steps "
            "and alignment below, which then override it"
        )
        self.preset_box.currentTextChanged.connect(lambda _name: self.fill_from_preset())
        form.addRow("Preset", self.preset_box)
        model_row = QHBoxLayout()
        self.model_edit = QComboBox()
        self.model_edit.setEditable(True)
        choices, default = model_choices()
        self.model_edit.addItems(choices)
        self.model_edit.setCurrentText(default)
        self.model_edit.setToolTip(
            f"default: {model_default_in_words()}; none: refinement alone; auto: the bundled "
            "model for the images' dimension; or a .safetensors model path. A model's field "
            "is kept only if it improves the similarity"
        )
        self.model_edit.setMinimumContentsLength(8)
        self.model_edit.setSizeAdjustPolicy(
            QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon
        )
        browse = QPushButton("…")
        browse.setMaximumWidth(32)
        browse.clicked.connect(self.browse_model_requested)
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
        self.turns_box = QCheckBox("also try the moving image turned 180°")
        self.turns_box.setChecked(DEFAULT_SEARCH_ORIENTATION)
        self.turns_box.setToolTip(
            "3D: also try the moving image turned 180 degrees about each axis, as a scan "
            "placed feet first against head first lies; a turn that fits better is kept, "
            "with a warning. Off: trust the stored orientations (--trust-orientation)"
        )
        form.addRow("Orientation", self.turns_box)
        self.device_box = QComboBox()
        self.device_box.addItems(list(DEVICE_CHOICES))
        form.addRow("Device", self.device_box)
        buttons = QHBoxLayout()
        self.register_button = QPushButton("Register")
        self.register_button.clicked.connect(self.register_requested)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancel_requested)
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

    # ----------------------------------------------------------------------------- settings

    def options(self) -> dict[str, Any]:
        """The settings shown: ``preset`` and the keyword arguments that override it."""
        model = self.model_edit.currentText().strip()
        return {
            "preset": self.preset_box.currentText(),
            "model": None if model.lower() in ("", "none") else model,
            "refine": int(self.refine_spin.value()),
            "init": self.init_box.currentText(),
            "search_orientation": self.turns_box.isChecked(),
            "device": self.device_box.currentText(),
        }

    def set_options(self, options: dict[str, Any]) -> None:
        """Show ``options`` (keys among :data:`OPTION_NAMES`).

        A preset fills model, refine and init first, so the other keys override it.

        Raises:
            IntermodalError: an unknown key or preset.
        """
        unknown = sorted(set(options) - set(OPTION_NAMES))
        if unknown:
            raise IntermodalError(f"unknown registration option(s) {unknown}")
        if "preset" in options:
            if options["preset"] not in PRESETS:
                raise IntermodalError(
                    f"unknown preset {options['preset']!r}; presets are {', '.join(PRESETS)}"
                )
            self.preset_box.setCurrentText(options["preset"])
            self.fill_from_preset()
        if "model" in options:
            self.model_edit.setCurrentText(options["model"] or "none")  # None: no model
        if "refine" in options:
            self.refine_spin.setValue(int(options["refine"]))
        if "init" in options:
            self.init_box.setCurrentText(options["init"])
        if "search_orientation" in options:
            self.turns_box.setChecked(bool(options["search_orientation"]))
        if "device" in options:
            self.device_box.setCurrentText(options["device"])

    def fill_from_preset(self) -> None:
        """Model, steps and alignment from the chosen preset, for the images' dimension."""
        self._preset_ndim = self.ndim
        values = PRESETS[self.preset_box.currentText()][self.ndim]
        self.model_edit.setCurrentText(values.get("model", "default") or "none")
        self.refine_spin.setValue(int(values.get("refine", DEFAULT_REFINE)))
        self.init_box.setCurrentText(values.get("init", DEFAULT_INIT))

    def set_dimension(self, ndim: int) -> None:
        """A fixed image of ``ndim`` dimensions was opened: show the preset's values for it,
        when they differ from the other dimension's that the panel holds."""
        self.ndim = ndim
        values = PRESETS[self.preset_box.currentText()]
        if ndim != self._preset_ndim and values[2] != values[3]:
            self.fill_from_preset()

    # ----------------------------------------------------------------------------- progress

    def set_state(self, *, ready: bool, busy: bool) -> None:
        """Enable Register when both images are open and nothing runs; Cancel while a
        registration runs, when the settings are locked."""
        self.register_button.setEnabled(ready and not busy)
        self.cancel_button.setEnabled(busy)
        for widget in (
            self.preset_box,
            self.model_edit,
            self.refine_spin,
            self.init_box,
            self.turns_box,
            self.device_box,
        ):
            widget.setEnabled(not busy)

    def show_started(self) -> None:
        """A registration started: a busy bar until its first step."""
        self.progress.setRange(0, 0)
        self.stage_label.setText("starting")

    def show_progress(self, stage: str, step: int, total: int) -> None:
        """``step`` of ``total`` in ``stage``; a busy bar for a stage without steps."""
        if total > 0:
            self.progress.setRange(0, total)
            self.progress.setValue(step)
            self.stage_label.setText(f"{stage}: step {step} of {total}")
        else:
            self.progress.setRange(0, 0)
            self.stage_label.setText(stage)

    def show_finished(self, succeeded: bool) -> None:
        """The registration ended: a full bar if it succeeded, else an empty one."""
        self.progress.setRange(0, 1)
        self.progress.setValue(1 if succeeded else 0)
