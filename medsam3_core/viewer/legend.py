"""The legend: one row per prompt with its colour, the concept the model was asked, volume, confidence and extent.

Clicking a row emits the segment's label so the window can centre the slice views on it.
"""

from __future__ import annotations

from typing import Optional, Sequence

from qtpy.QtCore import Qt, Signal
from qtpy.QtGui import QColor
from qtpy.QtWidgets import QAbstractItemView, QHeaderView, QTableWidget, QTableWidgetItem, QWidget

from medsam3_core.io.colors import segment_color
from medsam3_core.segmenter import SegmentInfo

__all__ = ["SegmentLegend", "COLUMNS"]

COLUMNS = ("", "Prompt", "Concept", "Volume (mL)", "Score", "Slices")


class SegmentLegend(QTableWidget):
    """Read-only table of :class:`~medsam3_core.segmenter.SegmentInfo`; ``segment_clicked(label)`` on selection."""

    segment_clicked = Signal(int)

    def __init__(self, parent: Optional[QWidget] = None) -> None:
        super().__init__(0, len(COLUMNS), parent)
        self.setObjectName("segmentLegend")
        self.setHorizontalHeaderLabels(COLUMNS)
        self.verticalHeader().setVisible(False)
        self.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.setSelectionMode(QAbstractItemView.SingleSelection)
        header = self.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeToContents)
        header.setStretchLastSection(True)
        self.setMinimumHeight(120)
        self._labels: list[int] = []
        self.cellClicked.connect(lambda row, _col: self.segment_clicked.emit(self._labels[row]))

    def set_segments(self, segments: Sequence[SegmentInfo], planar: bool = False) -> None:
        """Fill the table; ``planar`` (a single 2D image) shows areas in pixels instead of volumes in mL."""
        self.setRowCount(0)
        self.setHorizontalHeaderItem(3, QTableWidgetItem("Area (px)" if planar else COLUMNS[3]))
        self._labels = [s.label for s in segments]
        for row, seg in enumerate(segments):
            self.insertRow(row)
            swatch = QTableWidgetItem("")
            swatch.setBackground(QColor(*segment_color(seg.label)))
            rng = f"{seg.slice_range[0]}–{seg.slice_range[1]}" if seg.slice_range else "none"
            cells = [swatch, QTableWidgetItem(seg.prompt), QTableWidgetItem(seg.concept),
                     QTableWidgetItem(str(seg.voxels) if planar else f"{seg.volume_ml:.1f}"),
                     QTableWidgetItem(f"{seg.score:.2f}"),
                     QTableWidgetItem(rng)]
            for col in (3, 4):
                cells[col].setTextAlignment(int(Qt.AlignRight | Qt.AlignVCenter))
            if seg.voxels == 0:
                cells[1].setToolTip("Nothing was found for this prompt.")
            for col, item in enumerate(cells):
                self.setItem(row, col, item)

    def rows(self) -> list[list[str]]:
        """The table's text, row by row (for tests and the clipboard)."""
        return [[self.item(r, c).text() for c in range(self.columnCount())] for r in range(self.rowCount())]
