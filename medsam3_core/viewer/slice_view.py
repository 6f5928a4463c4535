"""One slice view: the image in radiological orientation with the coloured label overlay, and a slice slider.

Rendering is numpy → ``QImage``: the slice is cut with :class:`~medsam3_core.io.planes.Plane`, windowed by the
same :class:`~medsam3_core.engine.preprocess.IntensityNormalizer` the model uses, coloured with
:func:`~medsam3_core.io.overlay.blend` (the colours of the CLI pictures and the Slicer module), and scaled to the
physical aspect ratio with nearest-neighbour sampling so voxels stay crisp. Mouse wheel scrolls slices; dragging with
the right button changes window/level (horizontal: width, vertical: level), as in most radiology viewers.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
from qtpy.QtCore import QPoint, QSize, Qt, Signal
from qtpy.QtGui import QImage, QPixmap
from qtpy.QtWidgets import QHBoxLayout, QLabel, QSizePolicy, QSlider, QVBoxLayout, QWidget

from medsam3_core.io.geometry import Volume
from medsam3_core.io.overlay import blend
from medsam3_core.windows import IntensityNormalizer
from medsam3_core.io.planes import Plane, plane_for

__all__ = ["SliceView", "to_qimage"]


def to_qimage(rgb: np.ndarray) -> QImage:
    """A deep-copied ``QImage`` of a uint8 (H, W, 3) array (the array may be freed afterwards)."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    height, width = rgb.shape[:2]
    return QImage(rgb.data, width, height, 3 * width, QImage.Format_RGB888).copy()


class _ImageLabel(QLabel):
    """The picture area: forwards wheel steps and right-button drags to its :class:`SliceView`."""

    wheel_steps = Signal(int)
    dragged = Signal(int, int)
    resized = Signal()

    def __init__(self) -> None:
        super().__init__()
        self.setAlignment(Qt.AlignCenter)
        self.setMinimumSize(160, 160)
        self.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Expanding)
        self.setStyleSheet("background-color: black;")
        self._last: Optional[QPoint] = None

    def wheelEvent(self, event) -> None:  # noqa: N802 (Qt override)
        steps = event.angleDelta().y() // 120
        if steps:
            self.wheel_steps.emit(int(steps))

    def mousePressEvent(self, event) -> None:  # noqa: N802
        self._last = event.pos() if event.button() == Qt.RightButton else None

    def mouseMoveEvent(self, event) -> None:  # noqa: N802
        if self._last is not None:
            delta = event.pos() - self._last
            self._last = event.pos()
            self.dragged.emit(delta.x(), delta.y())

    def mouseReleaseEvent(self, event) -> None:  # noqa: N802
        self._last = None

    def resizeEvent(self, event) -> None:  # noqa: N802
        super().resizeEvent(event)
        self.resized.emit()


class SliceView(QWidget):
    """Axial, coronal or sagittal view of a volume with an optional label overlay.

    Signals:
        window_dragged(dx, dy): right-button drag in screen pixels (the window owns window/level).
    """

    window_dragged = Signal(int, int)

    def __init__(self, view: str, parent: Optional[QWidget] = None) -> None:
        super().__init__(parent)
        self.view = view
        self.plane: Optional[Plane] = None
        self._volume: Optional[Volume] = None
        self._normalizer: Optional[IntensityNormalizer] = None
        self._labels: Optional[np.ndarray] = None
        self._n_labels = 0
        self._opacity = 0.45
        self.title = QLabel(view.capitalize())
        self.title.setStyleSheet("font-weight: bold;")
        self.image = _ImageLabel()
        self.slider = QSlider(Qt.Horizontal)
        self.slider.setObjectName(f"{view}Slider")
        self.position = QLabel("-")
        self.position.setMinimumWidth(70)
        self.position.setAlignment(Qt.AlignRight | Qt.AlignVCenter)
        row = QHBoxLayout()
        row.addWidget(self.slider, 1)
        row.addWidget(self.position)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.addWidget(self.title)
        layout.addWidget(self.image, 1)
        layout.addLayout(row)
        self.slider.valueChanged.connect(self.refresh)
        self.image.wheel_steps.connect(lambda steps: self.slider.setValue(self.slider.value() + steps))
        self.image.dragged.connect(self.window_dragged)
        self.image.resized.connect(self.refresh)

    # -- state ---------------------------------------------------------------------------------------------------
    def set_volume(self, volume: Volume, normalizer: IntensityNormalizer) -> None:
        """Show a new volume (labels are cleared) starting at its middle slice."""
        self._volume, self._normalizer, self._labels = volume, normalizer, None
        self.plane = plane_for(volume, self.view)
        self.slider.blockSignals(True)
        self.slider.setRange(0, self.plane.count - 1)
        self.slider.setValue(self.plane.count // 2)
        self.slider.blockSignals(False)
        self.refresh()

    def set_normalizer(self, normalizer: IntensityNormalizer) -> None:
        self._normalizer = normalizer
        self.refresh()

    def set_labels(self, labels: Optional[np.ndarray], n_labels: int = 0, opacity: Optional[float] = None) -> None:
        """Overlay a ``[k, j, i]`` label map on the volume's grid (``None`` removes it)."""
        self._labels = None if labels is None else np.asarray(labels)
        self._n_labels = n_labels
        if opacity is not None:
            self._opacity = opacity
        self.refresh()

    def set_opacity(self, opacity: float) -> None:
        self._opacity = opacity
        self.refresh()

    @property
    def index(self) -> int:
        return int(self.slider.value())

    def set_index(self, index: int) -> None:
        self.slider.setValue(int(index))

    # -- drawing -------------------------------------------------------------------------------------------------
    def rendered(self) -> Optional[np.ndarray]:
        """The current slice as displayed before scaling: uint8 (H, W, 3), or ``None`` with no volume."""
        if self._volume is None or self.plane is None or self._normalizer is None:
            return None
        grey = self._normalizer(self.plane.extract(self._volume.array, self.index))
        if self._labels is None:
            labels = np.zeros(grey.shape[:2], np.int64)
        else:
            labels = np.ascontiguousarray(self.plane.extract(self._labels, self.index)).astype(np.int64)
        return blend(grey, labels, self._n_labels, self._opacity)

    def refresh(self) -> None:
        rgb = self.rendered()
        if rgb is None or self.plane is None:
            self.image.clear()
            self.position.setText("-")
            return
        self.position.setText(f"{self.index + 1} / {self.plane.count}")
        height, width = rgb.shape[:2]
        physical = QSize(max(1, round(width * self.plane.col_spacing * 100)),
                         max(1, round(height * self.plane.row_spacing * 100)))
        target = physical.scaled(self.image.size(), Qt.KeepAspectRatio)
        pixmap = QPixmap.fromImage(to_qimage(rgb)).scaled(target, Qt.IgnoreAspectRatio, Qt.FastTransformation)
        self.image.setPixmap(pixmap)
