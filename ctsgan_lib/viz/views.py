"""Static views of volumes for the notebooks and figures: orthogonal three-view grids and slab strips.

Volumes are float32 HU arrays with axis order ``(z, y, x)`` and ``spacing_mm = (dz, dy, dx)`` beside them, in the
in-memory LPS+ layout of ``docs/architecture.md`` (x toward the patient's left, y posterior, z superior). The views
follow the radiological convention: axial with anterior up and the patient's right on the image's left; coronal
with superior up and the patient's right on the left; sagittal with superior up and anterior on the left. Panes are
drawn in voxel coordinates with the aspect taken from the spacing, so anisotropic volumes are not distorted.

Figures are built on :class:`matplotlib.figure.Figure` directly (not ``pyplot``): nothing is shown twice, nothing
leaks between cells, and the same code runs headless. In a notebook, make the figure the cell's last expression
(or ``display(fig)``) to show it.
"""
from __future__ import annotations

import json
import math
from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Ellipse

from ..data.views import VIEWS
from ..errors import CTSGANError

#: HU display windows as ``(min, max)``: the usual chest-CT presets (level/width -600/1500, 40/400, 300/1500).
WINDOWS: dict[str, tuple[float, float]] = {
    "lung": (-1350.0, 150.0),
    "mediastinum": (-160.0, 240.0),
    "bone": (-450.0, 1050.0),
}

#: imshow origin per view for the LPS+ layout: row 0 of an axial slice is the most anterior row (top); rows of
#: coronal and sagittal slices are z, which increases toward superior (so row 0 goes at the bottom).
VIEW_ORIGIN = {"axial": "upper", "coronal": "lower", "sagittal": "lower"}
_CROSSHAIR = dict(color="#ffd400", lw=0.8, alpha=0.8)
_NODULE = dict(edgecolor="#7cfc00", facecolor="none", lw=1.4)
_MASK_COLOUR = "#00c8ff"
_MASK_ALPHA = 0.35


# --------------------------------------------------------------------------------------------------- inputs
def resolve_window(window: str | Sequence[float]) -> tuple[float, float]:
    """Turn a preset name or a ``(min, max)`` pair into a ``(min_hu, max_hu)`` tuple.

    Examples
    --------
    >>> resolve_window("mediastinum")
    (-160.0, 240.0)
    >>> resolve_window((-1000, 400))
    (-1000.0, 400.0)
    """
    if isinstance(window, str):
        if window not in WINDOWS:
            raise CTSGANError(f"unknown HU window preset {window!r} (choose from {', '.join(WINDOWS)})")
        return WINDOWS[window]
    try:
        lo, hi = (float(v) for v in window)
    except (TypeError, ValueError):
        raise CTSGANError(f"HU window must be a preset name or a (min, max) pair, got {window!r}") from None
    if not lo < hi:
        raise CTSGANError(f"HU window ({lo}, {hi}): min must be below max")
    return lo, hi


def _as_volumes(volumes, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Validate volumes (one array, a list, or a name -> array dict): 3-D, all the same shape."""
    if isinstance(volumes, Mapping):
        out = dict(volumes)
    elif isinstance(volumes, np.ndarray) or hasattr(volumes, "__array__") and not isinstance(volumes, (list, tuple)):
        out = {(names[0] if names else "volume"): volumes}
    elif isinstance(volumes, (list, tuple)):
        names = list(names) if names else [f"volume {i + 1}" for i in range(len(volumes))]
        if len(names) != len(volumes):
            raise CTSGANError(f"{len(names)} labels for {len(volumes)} volumes")
        out = dict(zip(names, volumes))
    else:
        raise CTSGANError(f"volumes must be a numpy array, a list of arrays or a dict of arrays, "
                          f"got {type(volumes).__name__}")
    if not out:
        raise CTSGANError("no volumes to show")
    shape = None
    for name, vol in out.items():
        arr = np.asarray(vol)
        if arr.ndim != 3:
            raise CTSGANError(f"volume {name!r}: expected a 3-D (z, y, x) array, got shape {arr.shape}")
        if shape is not None and arr.shape != shape:
            raise CTSGANError(f"volume {name!r} has shape {arr.shape}, the others {shape}: "
                              "side-by-side views need volumes on the same grid")
        shape = arr.shape
        out[name] = arr
    return out


def _per_volume(obj, names: Sequence[str], what: str) -> dict[str, Any]:
    """``None`` -> nothing; a dict keyed by volume name -> as given; anything else -> the same for every volume."""
    if obj is None or (isinstance(obj, Mapping) and not obj):
        return {n: None for n in names}
    if isinstance(obj, Mapping) and set(obj) <= set(names) and obj:
        return {n: obj.get(n) for n in names}
    if isinstance(obj, Mapping):
        raise CTSGANError(f"{what}: keys {sorted(obj)} do not match the volume names {list(names)}")
    return {n: obj for n in names}


def _spacing(spacing_mm) -> tuple[float, float, float]:
    if spacing_mm is None:
        return (1.0, 1.0, 1.0)
    try:
        dz, dy, dx = (float(s) for s in spacing_mm)
    except (TypeError, ValueError):
        raise CTSGANError(f"spacing_mm must be (dz, dy, dx) in mm, got {spacing_mm!r}") from None
    if min(dz, dy, dx) <= 0:
        raise CTSGANError(f"spacing_mm must be positive, got {spacing_mm!r}")
    return dz, dy, dx


def clamp_position(position, shape) -> tuple[int, int, int]:
    if position is None:
        return tuple(n // 2 for n in shape)
    if len(position) != 3:
        raise CTSGANError(f"position must be (z, y, x) voxel indices, got {position!r}")
    return tuple(int(np.clip(round(p), 0, n - 1)) for p, n in zip(position, shape))


def _nodule_list(nodules) -> list[dict]:
    """Accept the manifest's ``nodules`` column: a JSON string or a list of dicts with ``center_vox``."""
    if nodules is None:
        return []
    if isinstance(nodules, str):
        nodules = json.loads(nodules) if nodules.strip() else []
    out = []
    for nod in nodules:
        if not isinstance(nod, Mapping) or "center_vox" not in nod:
            raise CTSGANError(f"nodule {nod!r}: expected a dict with center_vox [z, y, x] "
                              "and diameter_mm or diameter_vox (the manifest's format)")
        out.append(nod)
    return out


# ----------------------------------------------------------------------------------------- view geometry
def view_slice(volume: np.ndarray, view: str, position: Sequence[int]) -> np.ndarray:
    """The 2-D slice of ``volume`` for ``view`` through ``position`` as ``(rows, cols)`` (show with
    ``origin=VIEW_ORIGIN[view]``).

    axial: rows y, cols x; coronal: rows z, cols x; sagittal: rows z, cols y.
    """
    z, y, x = position
    if view == "axial":
        return volume[z, :, :]
    if view == "coronal":
        return volume[:, y, :]
    if view == "sagittal":
        return volume[:, :, x]
    raise CTSGANError(f"unknown view {view!r} (choose from {', '.join(VIEWS)})")


def view_aspect(view: str, spacing_mm) -> float:
    """Row spacing over column spacing (matplotlib's ``aspect``) so a view shows true physical proportions."""
    dz, dy, dx = _spacing(spacing_mm)
    return {"axial": dy / dx, "coronal": dz / dx, "sagittal": dz / dy}[view]


def _view_axes(view: str) -> tuple[int, int, int]:
    """(slice axis, row axis, column axis) of ``view`` in (z, y, x) numbering."""
    return {"axial": (0, 1, 2), "coronal": (1, 0, 2), "sagittal": (2, 0, 1)}[view]


def _physical_size(view: str, shape, spacing) -> tuple[float, float]:
    """(width_mm, height_mm) of a view."""
    _, r, c = _view_axes(view)
    return shape[c] * spacing[c], shape[r] * spacing[r]


def _nodule_ellipses(nodules: list[dict], view: str, position, spacing) -> list[tuple[float, float, float, float]]:
    """Cross-sections of nodule spheres with the current plane: (col, row, width_vox, height_vox)."""
    s, r, c = _view_axes(view)
    out = []
    for nod in nodules:
        centre = [float(v) for v in nod["center_vox"]]
        if "diameter_mm" in nod and nod["diameter_mm"] is not None:
            radius_mm = float(nod["diameter_mm"]) / 2.0
        else:  # diameter in in-plane voxels (the manifest's diameter_vox)
            radius_mm = float(nod.get("diameter_vox", 3.0)) * spacing[1] / 2.0
        off_mm = abs(position[s] - centre[s]) * spacing[s]
        if off_mm > radius_mm + 0.5 * spacing[s]:
            continue
        # A slab of one voxel still shows the nodule's rim, so never shrink below a third of its radius.
        cut_mm = max(math.sqrt(max(radius_mm ** 2 - off_mm ** 2, 0.0)), radius_mm / 3.0)
        out.append((centre[c], centre[r], 2 * cut_mm / spacing[c], 2 * cut_mm / spacing[r]))
    return out


def _mask_style(mask: np.ndarray) -> dict:
    """A boolean mask is one colour; an integer label map (e.g. the phantom's 0-9 labels) gets tab10/tab20."""
    values = np.unique(mask)
    if mask.dtype == bool or set(values.tolist()) <= {0, 1}:
        return dict(cmap=ListedColormap([_MASK_COLOUR]), vmin=0.5, vmax=1.5)
    top = int(values.max())
    cmap = "tab10" if top <= 9 else "tab20"
    return dict(cmap=cmap, vmin=-0.5, vmax=(9.5 if top <= 9 else max(19.5, top + 0.5)))


def _masked(slice2d: np.ndarray) -> np.ma.MaskedArray:
    return np.ma.masked_equal(np.asarray(slice2d, dtype=np.int32), 0)


# ------------------------------------------------------------------------------------- the three-view grid
class ThreeViewGrid:
    """Draws rows = volumes x columns = axial/coronal/sagittal on a Figure and redraws it at a new position.

    The static :func:`show_three_views` draws it once; :class:`VolumeViewer` keeps it and calls :meth:`update`.
    """

    def __init__(self, fig: Figure, volumes: dict[str, np.ndarray], spacing, position, window, masks, nodules,
                 crosshair: bool, views: Sequence[str] = VIEWS):
        self.fig, self.volumes, self.spacing, self.views = fig, volumes, spacing, tuple(views)
        self.masks = masks
        self.nodules = nodules
        self.crosshair = crosshair
        self.show_masks = True
        self.show_nodules = True
        names = list(volumes)
        shape = next(iter(volumes.values())).shape
        widths = [_physical_size(v, shape, spacing)[0] for v in self.views]
        grid = fig.add_gridspec(len(names), len(self.views), width_ratios=widths)
        self.axes: dict[tuple[str, str], Any] = {}
        self.images: dict[tuple[str, str], Any] = {}
        self.overlays: dict[tuple[str, str], Any] = {}
        self.lines: dict[tuple[str, str], tuple[Any, Any]] = {}
        self.patches: dict[tuple[str, str], list] = {}
        self.position = position
        lo, hi = window
        for i, name in enumerate(names):
            vol = volumes[name]
            for j, view in enumerate(self.views):
                ax = fig.add_subplot(grid[i, j])
                key = (name, view)
                img = view_slice(vol, view, position)
                self.images[key] = ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, origin=VIEW_ORIGIN[view],
                                             interpolation="nearest", aspect=view_aspect(view, spacing))
                mask = masks.get(name)
                if mask is not None:
                    self.overlays[key] = ax.imshow(_masked(view_slice(mask, view, position)),
                                                   origin=VIEW_ORIGIN[view], interpolation="nearest",
                                                   alpha=_MASK_ALPHA, aspect=view_aspect(view, spacing),
                                                   **_mask_style(mask))
                if crosshair:
                    self.lines[key] = (ax.axvline(0, **_CROSSHAIR), ax.axhline(0, **_CROSSHAIR))
                self.patches[key] = []
                ax.set_xticks([])
                ax.set_yticks([])
                if j == 0:
                    ax.set_ylabel(name)
                self.axes[key] = ax
        self.update(position)

    def view_of(self, ax) -> tuple[str, str] | None:
        for key, a in self.axes.items():
            if a is ax:
                return key
        return None

    def update(self, position=None, window=None) -> None:
        if position is not None:
            self.position = tuple(int(p) for p in position)
        pos = self.position
        z, y, x = pos
        for (name, view), ax in self.axes.items():
            key = (name, view)
            self.images[key].set_data(view_slice(self.volumes[name], view, pos))
            if window is not None:
                self.images[key].set_clim(*window)
            if key in self.overlays:
                self.overlays[key].set_data(_masked(view_slice(self.masks[name], view, pos)))
                self.overlays[key].set_visible(self.show_masks)
            if key in self.lines:
                col, row = {"axial": (x, y), "coronal": (x, z), "sagittal": (y, z)}[view]
                vline, hline = self.lines[key]
                vline.set_xdata([col, col])
                hline.set_ydata([row, row])
            for p in self.patches[key]:
                p.remove()
            self.patches[key] = []
            if self.show_nodules:
                for col, row, w, h in _nodule_ellipses(self.nodules.get(name) or [], view, pos, self.spacing):
                    self.patches[key].append(ax.add_patch(Ellipse((col, row), w, h, **_NODULE)))
            index_name, index = {"axial": ("z", z), "coronal": ("y", y), "sagittal": ("x", x)}[view]
            ax.set_title(f"{view} {index_name}={index}", fontsize=9)


def figure_size(shape, spacing, n_rows: int, views=VIEWS, width_in: float = 9.5,
                 height_in: float | None = None) -> tuple[float, float]:
    """Figure size that keeps physical proportions: ``width_in`` wide unless that would exceed ``height_in``."""
    widths, heights = zip(*(_physical_size(v, shape, spacing) for v in views))
    height_in = height_in if height_in is not None else 4.2 * n_rows
    title_in = 0.45  # per row: pane titles
    inch_per_mm = min(width_in / sum(widths), (height_in - 0.3 - n_rows * title_in) / (n_rows * max(heights)))
    return max(sum(widths) * inch_per_mm, 4.0), n_rows * (max(heights) * inch_per_mm + title_in) + 0.3


def prepare_views(volumes, spacing_mm, position, window, masks, nodules, names=None):
    vols = _as_volumes(volumes, names)
    spacing = _spacing(spacing_mm)
    shape = next(iter(vols.values())).shape
    mask_map = _per_volume(masks, list(vols), "masks")
    for name, m in mask_map.items():
        if m is not None:
            m = np.asarray(m)
            if m.shape != shape:
                raise CTSGANError(f"mask for {name!r} has shape {m.shape}, the volume {shape}")
            mask_map[name] = m
    nod_map = {n: _nodule_list(v) for n, v in _per_volume(nodules, list(vols), "nodules").items()}
    return vols, spacing, clamp_position(position, shape), resolve_window(window), mask_map, nod_map


def show_three_views(volumes, spacing_mm=None, position=None, window="lung", masks=None, nodules=None,
                     title: str | None = None, crosshair: bool = False, dpi: int = 100) -> Figure:
    """Axial, coronal and sagittal slices of one or more volumes through one point.

    Parameters
    ----------
    volumes : ndarray or dict[str, ndarray]
        One ``(z, y, x)`` HU volume, or several on the same grid keyed by a display name (one row each).
    spacing_mm : (dz, dy, dx), optional
        Voxel spacing in mm; sets each pane's aspect so anisotropic volumes keep their true proportions
        (default isotropic).
    position : (z, y, x), optional
        Voxel indices the three planes pass through (default: the centre).
    window : str or (min_hu, max_hu)
        A preset from :data:`WINDOWS` (``"lung"``, ``"mediastinum"``, ``"bone"``) or an explicit HU range.
    masks : ndarray or dict[str, ndarray], optional
        Lung mask (bool) or label map (int, 0 = none) overlaid in colour; one for all rows or one per name.
    nodules : list of dict or dict[str, list], optional
        Nodules in the manifest's format (``center_vox`` [z, y, x], ``diameter_mm`` or ``diameter_vox``), drawn
        as green circles where the plane cuts them. A JSON string (the manifest column) is accepted too.
    title : str, optional
        Figure title (state profile, data source and seed here or in :func:`save_figure`'s caption).
    crosshair : bool
        Draw where the other two planes cut each pane.

    Returns
    -------
    matplotlib.figure.Figure
    """
    vols, spacing, pos, win, mask_map, nod_map = prepare_views(volumes, spacing_mm, position, window, masks, nodules)
    shape = next(iter(vols.values())).shape
    fig = Figure(figsize=figure_size(shape, spacing, len(vols)), dpi=dpi, layout="constrained")
    ThreeViewGrid(fig, vols, spacing, pos, win, mask_map, nod_map, crosshair)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


def slab_strip(volume, axis: str = "sagittal", n: int = 8, positions: Sequence[int] | None = None,
               spacing_mm=None, window="lung", title: str | None = None, dpi: int = 100) -> Figure:
    """A strip of ``n`` parallel slices: the slice-to-slice consistency view.

    A volume made slice by slice shows its inter-slice (in)consistency in the coronal and sagittal planes, where
    every image row comes from a different axial slice (paper §3 and Fig 2). Several volumes (a dict) give one row
    each, so real and generated volumes can be compared.

    Parameters
    ----------
    volume : ndarray or dict[str, ndarray]
        ``(z, y, x)`` HU volume(s) on the same grid.
    axis : {"sagittal", "coronal", "axial"}
        Orientation of the slices.
    n : int
        Number of slices, evenly spaced over the middle 70% of that axis (ignored when ``positions`` is given).
    positions : sequence of int, optional
        Explicit slice indices along the axis.
    spacing_mm, window, title :
        As in :func:`show_three_views`.

    Returns
    -------
    matplotlib.figure.Figure
    """
    if axis not in VIEWS:
        raise CTSGANError(f"unknown axis {axis!r} (choose from {', '.join(VIEWS)})")
    vols = _as_volumes(volume)
    spacing = _spacing(spacing_mm)
    lo, hi = resolve_window(window)
    shape = next(iter(vols.values())).shape
    s, r, c = _view_axes(axis)
    if positions is None:
        if n < 1:
            raise CTSGANError(f"n must be at least 1, got {n}")
        n = min(n, shape[s])
        positions = np.unique(np.round(np.linspace(0.15 * (shape[s] - 1), 0.85 * (shape[s] - 1), n)).astype(int))
    positions = [int(p) for p in positions]
    bad = [p for p in positions if not 0 <= p < shape[s]]
    if bad:
        raise CTSGANError(f"slice positions {bad} are outside 0..{shape[s] - 1} along {axis}")
    w_mm, h_mm = _physical_size(axis, shape, spacing)
    width_in = min(1.6 * len(positions), 14.0)
    panel_w = width_in / len(positions)
    fig = Figure(figsize=(width_in, len(vols) * (panel_w * h_mm / w_mm + 0.35) + 0.3), dpi=dpi,
                 layout="constrained")
    axes = fig.subplots(len(vols), len(positions), squeeze=False)
    idx_name = "zyx"[s]
    for i, (name, vol) in enumerate(vols.items()):
        for j, p in enumerate(positions):
            pos = [0, 0, 0]
            pos[s] = p
            ax = axes[i, j]
            ax.imshow(view_slice(vol, axis, pos), cmap="gray", vmin=lo, vmax=hi, origin=VIEW_ORIGIN[axis],
                      interpolation="nearest", aspect=view_aspect(axis, spacing))
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{idx_name}={p}", fontsize=8)
            if j == 0:
                ax.set_ylabel(name)
    fig.suptitle(title or f"{axis} slab strip", fontsize=11)
    return fig


def panel_grid(rows: Sequence[Sequence[Any]], window: str | Sequence[float] = "lung", cmap: str = "gray",
               title: str | None = None, row_labels: Sequence[str] | None = None,
               col_titles: Sequence[str] | None = None, panel_in: tuple[float, float] = (2.4, 2.4)) -> Figure:
    """A grid of 2-D images (slices, VOI centre slices) in one HU window, without ticks.

    Parameters
    ----------
    rows : sequence of rows
        Each panel is an image, ``(image, title)`` or ``(image, title, window, cmap)`` (e.g. a difference image in
        its own window and colour map); a shorter row leaves its last panels blank.
    window : str or (min, max)
        A :data:`WINDOWS` preset or an HU range, for every panel that does not give its own.
    row_labels, col_titles : sequence of str, optional
        Labels on the left of each row / titles above the first row's panels.
    panel_in : (width, height)
        Inches per panel.

    Returns
    -------
    Figure
    """
    lo, hi = resolve_window(window)
    n_rows, n_cols = len(rows), max((len(r) for r in rows), default=0)
    if not n_rows or not n_cols:
        raise CTSGANError("panel_grid: nothing to show (no panels)")
    fig = Figure(figsize=(panel_in[0] * n_cols, panel_in[1] * n_rows + (0.5 if title else 0.0)), layout="constrained")
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    for i, row in enumerate(rows):
        for j in range(n_cols):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j < len(row):
                panel = row[j] if isinstance(row[j], tuple) else (row[j],)
                w = resolve_window(panel[2]) if len(panel) > 2 and panel[2] is not None else (lo, hi)
                ax.imshow(np.asarray(panel[0]), cmap=panel[3] if len(panel) > 3 else cmap, vmin=w[0], vmax=w[1],
                          interpolation="nearest")
                if len(panel) > 1 and panel[1]:
                    ax.set_title(panel[1], fontsize=9)
            if row_labels is not None and j == 0:
                ax.set_ylabel(row_labels[i], fontsize=9)
            if col_titles is not None and i == 0 and j < len(col_titles):
                ax.set_title(col_titles[j], fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig
