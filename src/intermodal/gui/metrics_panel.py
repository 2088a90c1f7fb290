"""The Metrics panel: the figures of a result's report.json, and the few the views repeat."""

from __future__ import annotations

from PySide6.QtWidgets import (
    QGroupBox,
    QHeaderView,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from intermodal.gui.scene import metrics_rows


class MetricsPanel(QGroupBox):
    """A table of figure and value, from a registration report."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Metrics (report.json)", parent)
        layout = QVBoxLayout(self)
        self.table = QTableWidget(0, 2)
        self.table.setHorizontalHeaderLabels(["figure", "value"])
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.table.setMinimumHeight(220)
        layout.addWidget(self.table)

    def show_report(self, report: dict | None) -> None:
        """Show a report's figures (:func:`~intermodal.gui.scene.metrics_rows`); None: none."""
        rows = metrics_rows(report) if report else []
        self.table.setRowCount(len(rows))
        for index, (name, value) in enumerate(rows):
            self.table.setItem(index, 0, QTableWidgetItem(name))
            self.table.setItem(index, 1, QTableWidgetItem(value))

    def rows(self) -> dict[str, str]:
        """The rows shown, ``{figure: value}``."""
        table = self.table
        return {table.item(i, 0).text(): table.item(i, 1).text() for i in range(table.rowCount())}


def headline(report: dict) -> list[tuple[str, str]]:
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
