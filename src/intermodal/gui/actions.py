"""The window's actions (with their keyboard shortcuts) and its menus."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import Qt
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import QMenu

from intermodal.gui.display import MODE_TITLES, VIEW_MODES
from intermodal.gui.images_panel import ROLES

if TYPE_CHECKING:
    from intermodal.gui.window import MainWindow


def _action(
    window: MainWindow,
    text: str,
    slot: Callable[[], Any],
    shortcut: str | QKeySequence | None = None,
    *,
    in_views: bool = False,
) -> QAction:
    """An action with its shortcut; ``in_views``: the shortcut works only while the focus
    is in the views (the arrow keys still step spin boxes and lists in the panel)."""
    action = QAction(text, window)
    if shortcut is not None:
        action.setShortcut(QKeySequence(shortcut))
    action.triggered.connect(lambda _checked=False: slot())
    if in_views:
        action.setShortcutContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
        window.views_area.addAction(action)
    else:
        window.addAction(action)
    return action


def build_actions(window: MainWindow) -> dict[str, QAction]:
    """Every action of the window by name, each with its shortcut."""
    actions: dict[str, QAction] = {}
    add = actions.__setitem__
    add(
        "open_fixed", _action(window, "Open &Fixed…", lambda: window.choose_file("fixed"), "Ctrl+O")
    )
    add(
        "open_moving",
        _action(window, "Open &Moving…", lambda: window.choose_file("moving"), "Ctrl+M"),
    )
    add(
        "open_fixed_dicom",
        _action(
            window,
            "Open Fixed DICOM Folder…",
            lambda: window.choose_folder("fixed"),
            "Ctrl+Shift+O",
        ),
    )
    add(
        "open_moving_dicom",
        _action(
            window,
            "Open Moving DICOM Folder…",
            lambda: window.choose_folder("moving"),
            "Ctrl+Shift+M",
        ),
    )
    add(
        "open_labels",
        _action(window, "Open Moving &Labels…", lambda: window.choose_file("labels"), "Ctrl+L"),
    )
    add("open_result", _action(window, "Open &Result…", window.choose_result, "Ctrl+Shift+R"))
    add("export", _action(window, "&Export Result…", window.choose_export, "Ctrl+E"))
    add("screenshot", _action(window, "Save Screenshot…", window.choose_screenshot, "Ctrl+Shift+S"))
    add("quit", _action(window, "&Quit", window.close, "Ctrl+Q"))
    add("register", _action(window, "&Register", window.start_registration, "Ctrl+R"))
    add("cancel", _action(window, "&Cancel Registration", window.cancel_registration, "Esc"))
    add("toggle_state", _action(window, "Toggle Before/After", window.toggle_state, "Ctrl+B"))
    add("reset_zoom", _action(window, "Reset Zoom", window.reset_zoom, "Ctrl+0"))
    for name, text, steps, key in (
        ("next_slice", "Next Slice", 1, "Up"),
        ("previous_slice", "Previous Slice", -1, "Down"),
        ("page_up", "Ten Slices On", 10, "PgUp"),
        ("page_down", "Ten Slices Back", -10, "PgDown"),
    ):
        action = _action(window, text, lambda s=steps: window.step_slice(s), key, in_views=True)
        add(name, action)
    for number, mode in enumerate(VIEW_MODES, start=1):
        add(
            f"mode_{mode}",
            _action(window, MODE_TITLES[mode], lambda m=mode: window.set_mode_all(m), str(number)),
        )
    add("shortcuts", _action(window, "&Keyboard Shortcuts", window.show_shortcuts, "F1"))
    add("about", _action(window, "&About intermodal", window.show_about))
    return actions


def build_menus(window: MainWindow, actions: dict[str, QAction]) -> dict[str, QMenu]:
    """The menu bar; returns the Recent menus by role, which the window fills."""
    menu = window.menuBar().addMenu("&File")
    for name in ("open_fixed", "open_moving", "open_fixed_dicom", "open_moving_dicom"):
        menu.addAction(actions[name])
    menu.addAction(actions["open_labels"])
    recent_menus = {role: menu.addMenu(f"Recent {role.capitalize()}") for role in ROLES}
    menu.addSeparator()
    for name in ("open_result", "export", "screenshot"):
        menu.addAction(actions[name])
    menu.addSeparator()
    menu.addAction(actions["quit"])
    menu = window.menuBar().addMenu("&Registration")
    menu.addAction(actions["register"])
    menu.addAction(actions["cancel"])
    menu = window.menuBar().addMenu("&View")
    for mode in VIEW_MODES:
        menu.addAction(actions[f"mode_{mode}"])
    menu.addSeparator()
    for name in ("toggle_state", "reset_zoom", "next_slice", "previous_slice"):
        menu.addAction(actions[name])
    menu = window.menuBar().addMenu("&Help")
    menu.addAction(actions["shortcuts"])
    menu.addAction(actions["about"])
    return recent_menus


def shortcuts_text(actions: dict[str, QAction]) -> str:
    """Every action with a keyboard shortcut, one per line, and the mouse's gestures."""
    lines = []
    for action in actions.values():
        key = action.shortcut().toString(QKeySequence.SequenceFormat.NativeText)
        if key:
            lines.append(f"{key}\t{action.text().replace('&', '')}")
    lines.append("Wheel\tnext or previous slice (Ctrl + wheel zooms)")
    lines.append("Left click or drag\tmove the crosshair")
    return "\n".join(lines)
