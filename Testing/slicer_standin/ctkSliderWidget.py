"""Stand-in for CTK's ``ctkSliderWidget`` (slider + spin box) with its ``value``/range/``decimals`` properties."""

from qtpy.QtCore import Property, Signal
from qtpy.QtWidgets import QDoubleSpinBox


class ctkSliderWidget(QDoubleSpinBox):
    """Only the spin box half: the module reads ``value`` and listens to ``valueChanged(double)``."""

    valueChanged = Signal(float)

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        super().valueChanged[float].connect(self.valueChanged.emit)

    def _value(self) -> float:
        return QDoubleSpinBox.value(self)

    value = Property(float, _value, QDoubleSpinBox.setValue)
