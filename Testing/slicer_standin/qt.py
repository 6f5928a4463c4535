"""Stand-in for Slicer's PythonQt ``qt`` module: every QtCore/QtGui/QtWidgets name in one namespace (via qtpy)."""

from qtpy.QtCore import *  # noqa: F401,F403
from qtpy.QtGui import *  # noqa: F401,F403
from qtpy.QtWidgets import *  # noqa: F401,F403
