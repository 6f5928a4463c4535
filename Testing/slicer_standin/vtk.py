"""Stand-in for the few ``vtk`` names the module uses: observers, ``vtkMatrix4x4`` and ``vtk.reference``."""

from __future__ import annotations

import itertools
from typing import Any, Callable

__all__ = ["vtkCommand", "vtkObject", "vtkMatrix4x4", "vtkStringArray", "reference"]


class vtkCommand:
    ModifiedEvent = 33


class vtkObject:
    """Observer bookkeeping like VTK's: ``AddObserver(event, callback) -> tag``, ``InvokeEvent`` calls
    ``callback(caller, eventName)``."""

    _tags = itertools.count(1)

    def __init__(self) -> None:
        self._observers: dict[int, tuple[Any, Callable]] = {}

    def AddObserver(self, event: Any, callback: Callable, priority: float = 0.0) -> int:
        tag = next(vtkObject._tags)
        self._observers[tag] = (event, callback)
        return tag

    def RemoveObserver(self, tag: int) -> None:
        self._observers.pop(tag, None)

    def InvokeEvent(self, event: Any, callData: Any = None) -> None:
        for observed, callback in list(self._observers.values()):
            if observed == event:
                callback(self, event)

    def IsA(self, className: str) -> bool:
        return any(cls.__name__ == className for cls in type(self).__mro__)

    def GetClassName(self) -> str:
        return type(self).__name__


class vtkMatrix4x4(vtkObject):
    def __init__(self) -> None:
        super().__init__()
        self._m = [[1.0 if r == c else 0.0 for c in range(4)] for r in range(4)]

    def GetElement(self, row: int, col: int) -> float:
        return self._m[row][col]

    def SetElement(self, row: int, col: int, value: float) -> None:
        self._m[row][col] = float(value)

    def DeepCopy(self, other: "vtkMatrix4x4") -> None:
        self._m = [row[:] for row in other._m]


class vtkStringArray(vtkObject):
    def __init__(self) -> None:
        super().__init__()
        self._values: list[str] = []

    def InsertNextValue(self, value: str) -> int:
        self._values.append(str(value))
        return len(self._values) - 1

    def GetNumberOfValues(self) -> int:
        return len(self._values)

    def GetValue(self, index: int) -> str:
        return self._values[index]


class reference:
    """``vtk.reference(value)``: an out-parameter for wrapped C++ methods taking ``T&``."""

    def __init__(self, value: Any) -> None:
        self._value = value

    def get(self) -> Any:
        return self._value

    def set(self, value: Any) -> None:
        self._value = value

    def __str__(self) -> str:
        return str(self._value)
