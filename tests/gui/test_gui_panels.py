"""Each panel of the window on its own, under pytest-qt, off screen: what it shows and what it
signals, without a window or images around it."""

from __future__ import annotations

import pytest

pytest.importorskip("PySide6", reason="the gui extra (PySide6) is not installed")
pytest.importorskip("pyqtgraph", reason="the gui extra (pyqtgraph) is not installed")
pytest.importorskip("pytestqt", reason="pytest-qt is not installed")

from intermodal.errors import IntermodalError  # noqa: E402
from intermodal.gui.display import RenderOptions  # noqa: E402
from intermodal.gui.display_panel import DisplayPanel  # noqa: E402
from intermodal.gui.images_panel import ImagesPanel  # noqa: E402
from intermodal.gui.metrics_panel import MetricsPanel, headline  # noqa: E402
from intermodal.gui.registration_panel import DEFAULT_REFINE, RegistrationPanel  # noqa: E402


def test_images_panel_describes_each_role_and_signals_its_buttons(qtbot):
    panel = ImagesPanel()
    qtbot.addWidget(panel)
    assert set(panel.drop_labels) == {"fixed", "moving", "labels"}
    assert "drop a file here" in panel.drop_labels["labels"].text()
    panel.describe("fixed", "ct.nii.gz (CT, 64×64)", "/data/ct.nii.gz")
    assert panel.drop_labels["fixed"].text() == "<b>Fixed</b>: ct.nii.gz (CT, 64×64)"
    assert panel.drop_labels["fixed"].toolTip() == "/data/ct.nii.gz"
    with qtbot.waitSignal(panel.dropped) as dropped:
        panel.drop_labels["moving"].dropped.emit("/data/mr.nii.gz")
    assert dropped.args == ["moving", "/data/mr.nii.gz"]
    panel.set_busy(True)
    assert not any(label.acceptDrops() for label in panel.drop_labels.values())


def test_registration_panel_options_round_trip_and_lock_while_busy(qtbot):
    panel = RegistrationPanel()
    qtbot.addWidget(panel)
    assert panel.options() == {
        "preset": "default",
        "model": "default",  # the library's (DEFAULT_MODELS): none today
        "refine": DEFAULT_REFINE,
        "init": "rigid",
        "search_orientation": True,
        "device": "auto",
    }
    chosen = {
        "model": "weights.safetensors",
        "refine": 12,
        "init": "affine",
        "search_orientation": False,
        "device": "cpu",
    }
    panel.set_options(chosen)
    assert panel.options() == {"preset": "default", **chosen}
    panel.set_state(ready=True, busy=True)
    assert not panel.register_button.isEnabled() and panel.cancel_button.isEnabled()
    assert not panel.refine_spin.isEnabled() and not panel.turns_box.isEnabled()
    panel.set_state(ready=True, busy=False)
    assert panel.register_button.isEnabled() and not panel.cancel_button.isEnabled()
    panel.show_progress("refine", 3, 12)
    assert panel.stage_label.text() == "refine: step 3 of 12"
    assert (panel.progress.value(), panel.progress.maximum()) == (3, 12)
    panel.show_finished(succeeded=False)
    assert (panel.progress.value(), panel.progress.maximum()) == (0, 1)


@pytest.mark.parametrize(
    ("options", "message"),
    [({"steps": 3}, "unknown registration option"), ({"preset": "fast"}, "unknown preset")],
)
def test_bad_registration_panel_options(qtbot, options, message):
    panel = RegistrationPanel()
    qtbot.addWidget(panel)
    with pytest.raises(IntermodalError, match=message):
        panel.set_options(options)


def test_display_panel_signals_what_the_user_changes_and_not_what_it_is_told(qtbot):
    options = RenderOptions()
    panel = DisplayPanel(options)
    qtbot.addWidget(panel)
    with qtbot.waitSignal(panel.options_changed):
        panel.blend_slider.setValue(25)
    assert options.blend == 0.25
    with qtbot.waitSignal(panel.mode_chosen) as chosen:
        panel.mode_box.setCurrentIndex(panel.mode_box.findData("checkerboard"))
    assert chosen.args == ["checkerboard"]
    with qtbot.assertNotEmitted(panel.mode_chosen), qtbot.assertNotEmitted(panel.window_chosen):
        panel.show_mode("blend")
        panel.show_window("fixed", "bone")
    assert panel.mode() == "blend" and panel.window_boxes["fixed"].currentText() == "bone"
    panel.show_levels("fixed", -160.0, 240.0)
    level, width = panel.level_spins["fixed"]
    assert (level.value(), width.value()) == (40.0, 400.0)
    with qtbot.waitSignal(panel.levels_edited) as edited:
        level.editingFinished.emit()
    assert edited.args == ["fixed", -160.0, 240.0]
    panel.show_states(["before", "after"], "after")
    assert [panel.state_box.itemData(i) for i in range(2)] == ["before", "after"]
    assert panel.state_box.currentData() == "after"


def test_metrics_panel_and_headline_show_a_report(qtbot):
    report = {
        "nmi": {"before": 1.1, "after_initial": 1.15, "after": 1.2},
        "jacobian": {"nonpositive_fraction": 0.0, "sdlogj": 0.05},
        "timings_s": {"total": 3.25},
    }
    panel = MetricsPanel()
    qtbot.addWidget(panel)
    panel.show_report(report)
    rows = panel.rows()
    assert rows and all(isinstance(value, str) for value in rows.values())
    assert "warning" not in rows and "moving image turned" not in rows
    panel.show_report(None)
    assert panel.rows() == {}
    # a turn the alignment kept is shown, with its warning, not only written to the file
    turned = {
        **report,
        "warnings": ["turned: check"],
        "stages": {"align": {"half_turn_deg": [0, 180, 0]}},
    }
    panel.show_report(turned)
    rows = panel.rows()
    assert rows["warning"] == "turned: check" and rows["moving image turned"] == "180° about y"
    assert headline(report) == [
        ("NMI", "1.100 → 1.200"),
        ("folding (det ≤ 0)", "0.000 %"),
        ("SDlogJ", "0.050"),
        ("time", "3.2 s"),
    ]
