"""Figures for the notebooks: orthogonal three-view plots, slab strips, saving, and an interactive volume viewer.

Modules: :mod:`~.views` (static figures), :mod:`~.saving` (PNG + PDF with a provenance caption), :mod:`~.viewer` (the
live ipywidgets viewer and the notebook display hook, registered on import inside a kernel).

Public API
----------
``WINDOWS``, ``VIEWS``, :func:`resolve_window`, :func:`show_three_views`, :func:`slab_strip`, :func:`panel_grid`,
:func:`save_figure`, :func:`figure_caption`, :func:`widget_frontend`, :func:`register_figure_display` and
:class:`VolumeViewer`.
"""
from ..data.views import VIEWS
from .saving import figure_caption, save_figure
from .viewer import MODE_ENV, VolumeViewer, register_figure_display, widget_frontend
from .views import (VIEW_ORIGIN, WINDOWS, panel_grid, resolve_window, show_three_views, slab_strip, view_aspect,
                    view_slice)

__all__ = ["VIEWS", "WINDOWS", "VIEW_ORIGIN", "MODE_ENV", "resolve_window", "show_three_views", "slab_strip", "panel_grid",
           "view_slice", "view_aspect", "figure_caption", "save_figure", "VolumeViewer", "register_figure_display",
           "widget_frontend"]
