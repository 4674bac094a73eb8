"""The three orthogonal views of a ``(z, y, x)`` volume and the array axis each one slices along."""
from __future__ import annotations

#: The three orthogonal views, in column order of every three-view figure.
VIEWS: tuple[str, str, str] = ("axial", "coronal", "sagittal")
#: Axis of a ``(z, y, x)`` array that a view's slices are taken along.
VIEW_AXIS = {"axial": 0, "coronal": 1, "sagittal": 2}
