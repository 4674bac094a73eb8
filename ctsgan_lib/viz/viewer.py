"""The interactive volume viewer (ipywidgets + an ipympl canvas) and the notebook display hooks.

IPython, ipywidgets and ipympl are imported inside the functions that need them: they are front-end dependencies
(ipywidgets alone took 0.66 s to import here), the module must import in plain Python and under pytest, and the
tests patch ``IPython.display.display``, which a name bound at import time would bypass.
"""
from __future__ import annotations

import itertools
import os
import sys
import warnings
from typing import Mapping

import numpy as np
from matplotlib.figure import Figure

from ..errors import CTSGANError
from .views import (WINDOWS, ThreeViewGrid, clamp_position, figure_size, prepare_views, resolve_window,
                    show_three_views)

#: Environment variable that forces the viewer mode (``static`` or ``widget``) for a whole session or run.
MODE_ENV = "CTSGAN_VIEWER"
_viewer_numbers = itertools.count(1000)


def _ipython_shell():
    ip = sys.modules.get("IPython")  # never import IPython just to ask
    return ip.get_ipython() if ip is not None and hasattr(ip, "get_ipython") else None


def register_figure_display() -> bool:
    """Let IPython show a bare :class:`~matplotlib.figure.Figure` as PNG. Returns whether one was registered.

    IPython only learns to render figures as images when ``pyplot`` activates the inline backend. The figures here
    never touch ``pyplot``, so without this a kernel that has not imported ``pyplot`` (or runs with
    ``MPLBACKEND=Agg``) would show ``<Figure size ...>`` text instead of the picture. Called on import of this
    module inside a kernel; an existing formatter (the inline backend's) is left alone.
    """
    shell = _ipython_shell()
    if shell is None or not hasattr(shell, "display_formatter"):
        return False
    png = shell.display_formatter.formatters.get("image/png")
    if png is None:
        return False
    try:
        png.lookup_by_type(Figure)
        return False
    except KeyError:
        from IPython.core.pylabtools import print_figure  # front-end dependency (module docstring)

        png.for_type(Figure, lambda fig: print_figure(fig, "png", bbox_inches="tight"))
        return True


register_figure_display()


def widget_frontend() -> tuple[bool, str]:
    """Whether a live widget front end (JupyterLab, Notebook 7, VS Code) can show ipywidgets + ipympl here.

    Returns ``(available, reason)``. The checks, in order:

    1. ``$CTSGAN_VIEWER`` = ``static`` or ``widget`` decides outright (``ctsgan reproduce`` and CI can pin it).
    2. Not inside an IPython kernel (plain ``python``, pytest) -> static.
    3. ``ipywidgets`` or ``ipympl`` not importable -> static.
    4. The front end's widget manager has opened the ``jupyter.widget.control`` comm to this kernel -> widget.
       JupyterLab's widget manager opens it as soon as it connects to a kernel.
    5. The kernel was started by a Jupyter server for an interactive session: the server sets
       ``$JPY_SESSION_NAME`` for those; papermill, nbval and nbclient never do -> widget.
    6. Otherwise (papermill, nbval, ``jupyter nbconvert --execute``) -> static.
    """
    forced = os.environ.get(MODE_ENV, "").strip().lower()
    if forced in ("static", "widget"):
        return forced == "widget", f"${MODE_ENV}={forced}"
    shell = _ipython_shell()
    if shell is None or getattr(shell, "kernel", None) is None:
        return False, "not running in a Jupyter kernel"
    try:
        import ipympl  # noqa: F401  - only asking whether it is installed
        from ipywidgets import Widget  # front-end dependency (module docstring)
    except ImportError as exc:
        return False, f"{exc.name} is not installed"
    if getattr(Widget, "_control_comm", None) is not None:
        return True, "a widget front end is connected to this kernel"
    if os.environ.get("JPY_SESSION_NAME"):
        return True, "kernel started by a Jupyter server for an interactive session"
    return False, "headless execution (papermill / nbval / nbclient): no widget front end"


class VolumeViewer:
    """Interactive viewer for one or two volumes side by side (e.g. real vs generated).

    In a live Jupyter front end :meth:`show` displays ipywidgets + an ipympl canvas: axial, coronal and sagittal
    panes per volume with linked crosshairs (click any pane to move the other planes there), z/y/x slice sliders, an
    HU window range slider with lung / mediastinum / bone presets, overlay toggles for masks and nodule markers, and a
    readout of the HU value under the crosshair. Without a widget front end (papermill, nbval, plain python) it shows
    the static :func:`show_three_views` figure instead, so headless runs keep working.

    Parameters
    ----------
    volumes : ndarray, list of ndarray or dict[str, ndarray]
        ``(z, y, x)`` HU volumes on the same grid; dict keys (or ``labels``) name the rows.
    spacing_mm : (dz, dy, dx), optional
        Voxel spacing in mm (default isotropic).
    masks : ndarray or dict[str, ndarray], optional
        Lung mask (bool) or tissue label map (int, 0 = none); one for all volumes or one per name.
    labels : list of str, optional
        Display names when ``volumes`` is an array or a list (not label maps: pass those as ``masks``).
    nodules : list of dict or dict[str, list], optional
        Nodule markers in the manifest's format (``center_vox``, ``diameter_mm``/``diameter_vox``).
    window : str or (min_hu, max_hu)
        Initial HU window, a :data:`WINDOWS` preset or a range.
    position : (z, y, x), optional
        Initial crosshair (default: the centre).
    mode : {"auto", "widget", "static"}
        ``auto`` decides with :func:`widget_frontend`; the others force a mode.

    Examples
    --------
    >>> VolumeViewer({"real": real_hu, "CT-SGAN": fake_hu}, spacing_mm=(1, 1, 1), masks=lung).show()  # doctest: +SKIP
    """

    MODES = ("auto", "widget", "static")

    def __init__(self, volumes, spacing_mm=None, masks=None, labels=None, nodules=None, window="lung",
                 position=None, mode: str = "auto"):
        if mode not in self.MODES:
            raise CTSGANError(f"mode must be one of {', '.join(self.MODES)}, got {mode!r}")
        if labels is not None and (isinstance(labels, (str, Mapping)) or hasattr(labels, "shape")):
            raise CTSGANError("labels are display names (a list of str); pass label maps or lung masks as masks=")
        self.mode = mode
        (self.volumes, self.spacing_mm, self.position, self.window, self.masks,
         self.nodules) = prepare_views(volumes, spacing_mm, position, window, masks, nodules, labels)
        self.shape = next(iter(self.volumes.values())).shape
        self.preset = window if isinstance(window, str) else None
        self._widget = None
        self._grid: ThreeViewGrid | None = None
        self.mode_reason = ""

    # -- mode -------------------------------------------------------------------------------------------
    def resolve_mode(self) -> str:
        """``"widget"`` or ``"static"``; sets :attr:`mode_reason` to say why."""
        if self.mode != "auto":
            self.mode_reason = f"mode={self.mode!r} requested"
            return self.mode
        live, self.mode_reason = widget_frontend()
        return "widget" if live else "static"

    def show(self) -> None:
        """Display the viewer: live widgets in a widget front end, else the static three-view figure."""
        from IPython.display import display  # front-end dependency (module docstring)

        if self.resolve_mode() == "widget":
            display(self.widget())
        else:
            register_figure_display()
            display(self.static_figure())

    def _ipython_display_(self) -> None:  # a bare ``VolumeViewer(...)`` as a cell's last line shows it too
        self.show()

    def static_figure(self, title: str | None = None) -> Figure:
        """The headless fallback: :func:`show_three_views` at the current position and window."""
        return show_three_views(self.volumes, self.spacing_mm, self.position, self.window, self.masks,
                                self.nodules, title=title, crosshair=True)

    # -- widget -------------------------------------------------------------------------------------------
    def widget(self):
        """Build (once) and return the ipywidgets tree. Works without a front end, e.g. in tests."""
        if self._widget is None:
            self._widget = self._build_widget()
        return self._widget

    def _build_widget(self):
        import ipywidgets as W  # front-end dependency (module docstring)
        from ipympl.backend_nbagg import Canvas, FigureManager  # front-end dependency (module docstring)

        # Sized to fit a laptop screen below the controls (about 900 x 620 px).
        fig = Figure(figsize=figure_size(self.shape, self.spacing_mm, len(self.volumes), width_in=9.0,
                                          height_in=6.2), dpi=100,
                     layout="constrained")
        # An ipympl canvas for this one figure only: the notebook's matplotlib backend stays as it was.
        self.canvas = Canvas(fig)
        with warnings.catch_warnings():  # ipympl's Toolbar passes traitlets an argument it deprecates; harmless
            warnings.simplefilter("ignore", DeprecationWarning)
            self.manager = FigureManager(self.canvas, next(_viewer_numbers))
        self.canvas.header_visible = False
        self.canvas.footer_visible = False
        self.canvas.resizable = False
        self.canvas.toolbar_position = "right"
        self.canvas.layout = W.Layout(width="auto")
        self._grid = ThreeViewGrid(fig, self.volumes, self.spacing_mm, self.position, self.window, self.masks,
                                    self.nodules, crosshair=True)
        nz, ny, nx = self.shape
        slider = dict(continuous_update=True, layout=W.Layout(width="32%"))
        self.sliders = {
            "z": W.IntSlider(value=self.position[0], min=0, max=nz - 1, description="axial z", **slider),
            "y": W.IntSlider(value=self.position[1], min=0, max=ny - 1, description="coronal y", **slider),
            "x": W.IntSlider(value=self.position[2], min=0, max=nx - 1, description="sagittal x", **slider),
        }
        lo, hi = self.window
        self.window_slider = W.FloatRangeSlider(value=(lo, hi), min=min(-1500.0, lo), max=max(2000.0, hi), step=10,
                                                description="HU window", continuous_update=True, readout_format=".0f",
                                                layout=W.Layout(width="55%"))
        self.presets = W.ToggleButtons(options=list(WINDOWS), value=self.preset, tooltips=[
            f"{name}: {a:.0f} to {b:.0f} HU" for name, (a, b) in WINDOWS.items()])
        self.presets.style.button_width = "112px"
        self.show_masks = W.Checkbox(value=True, description="masks", indent=False,
                                     disabled=all(m is None for m in self.masks.values()),
                                     layout=W.Layout(width="90px"))
        self.show_nodules = W.Checkbox(value=True, description="nodules", indent=False,
                                       disabled=not any(self.nodules.values()), layout=W.Layout(width="90px"))
        self.readout = W.HTML()
        self._busy = False

        for s in self.sliders.values():
            s.observe(self._on_slider, names="value")
        self.window_slider.observe(self._on_window, names="value")
        self.presets.observe(self._on_preset, names="value")
        self.show_masks.observe(self._on_overlay, names="value")
        self.show_nodules.observe(self._on_overlay, names="value")
        self.canvas.mpl_connect("button_press_event", self._on_click)
        self._update_readout()

        controls = W.VBox([
            W.HBox(list(self.sliders.values())),
            W.HBox([self.window_slider, self.presets]),
            W.HBox([self.show_masks, self.show_nodules, self.readout]),
        ])
        box = W.VBox([controls, self.canvas])
        box.add_class("ctsgan-volume-viewer")  # a stable hook for the browser test and for styling
        return box

    def set_position(self, position) -> None:
        """Move the crosshair to ``(z, y, x)`` (clipped to the volume) and redraw every pane once."""
        pos = clamp_position(position, self.shape)
        self.position = pos
        if self._grid is None:
            return
        self._busy = True  # the three slider updates below trigger one redraw, not three
        try:
            for key, value in zip("zyx", pos):
                self.sliders[key].value = value
        finally:
            self._busy = False
        self._redraw()

    def set_window(self, window) -> None:
        """Set the HU window (preset name or range) and redraw."""
        self.window = resolve_window(window)
        self.preset = window if isinstance(window, str) else None
        if self._grid is not None:
            self.window_slider.value = self.window

    def _redraw(self) -> None:
        self._grid.show_masks = self.show_masks.value
        self._grid.show_nodules = self.show_nodules.value
        self._grid.update(self.position, self.window)
        self._update_readout()
        self.canvas.draw_idle()

    def _update_readout(self) -> None:
        z, y, x = self.position
        values = ", ".join(f"{name}: {float(vol[z, y, x]):.0f} HU" for name, vol in self.volumes.items())
        self.readout.value = f"<code>(z, y, x) = ({z}, {y}, {x}) &nbsp; {values}</code>"

    def _on_slider(self, change) -> None:
        self.position = tuple(self.sliders[k].value for k in "zyx")
        if not self._busy:
            self._redraw()

    def _on_window(self, change) -> None:
        self.window = tuple(float(v) for v in change["new"])
        matching = [name for name, w in WINDOWS.items() if np.allclose(w, self.window)]
        self._busy_preset = True  # moving the toggle must not push the preset's range back onto the slider
        try:
            self.presets.value = matching[0] if matching else None
        finally:
            self._busy_preset = False
        self._redraw()

    def _on_preset(self, change) -> None:
        if change["new"] is not None and not getattr(self, "_busy_preset", False):
            self.window_slider.value = WINDOWS[change["new"]]

    def _on_overlay(self, change) -> None:
        self._redraw()

    def _on_click(self, event) -> None:
        """Click in a pane: move the other two planes through the clicked point (linked crosshairs)."""
        if event.inaxes is None or event.xdata is None or getattr(self.canvas.toolbar, "mode", ""):
            return  # outside the panes, or the toolbar's zoom/pan tool owns the click
        key = self._grid.view_of(event.inaxes)
        if key is None:
            return
        col, row = int(round(event.xdata)), int(round(event.ydata))
        z, y, x = self.position
        view = key[1]
        if view == "axial":
            x, y = col, row
        elif view == "coronal":
            x, z = col, row
        else:
            y, z = col, row
        self.set_position((z, y, x))
