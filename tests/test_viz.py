"""ctsgan_lib.viz: three-view geometry on anisotropic volumes, windows, saving, and the VolumeViewer's two modes."""
from __future__ import annotations

import numpy as np
import pytest
from matplotlib.figure import Figure
from matplotlib.patches import Ellipse

from ctsgan_lib import viz
from ctsgan_lib.errors import CTSGANError

SHAPE = (12, 20, 28)          # (z, y, x): every axis a different length, so a swapped axis shows up
SPACING = (2.5, 0.8, 0.6)     # anisotropic, as in thick-slice CT


def _volume(seed: int = 0) -> np.ndarray:
    """A volume whose value encodes its own voxel index: v = 10000 z + 100 y + x (exact in float32)."""
    z, y, x = np.meshgrid(*(np.arange(n) for n in SHAPE), indexing="ij")
    return (10000 * z + 100 * y + x).astype(np.float32)


def _panes(fig):
    """{(row label, view): axes} from a show_three_views figure."""
    out = {}
    axes = fig.axes
    for i, ax in enumerate(axes):
        row = axes[i - i % 3].get_ylabel()
        view = ax.get_title().split()[0]
        out[(row, view)] = ax
    return out


def test_three_views_slices_orientation_and_aspect():
    vol = _volume()
    fig = viz.show_three_views({"real": vol, "generated": vol + 1}, spacing_mm=SPACING, position=(3, 7, 11),
                               window="mediastinum", title="t")
    panes = _panes(fig)
    assert set(panes) == {(r, v) for r in ("real", "generated") for v in viz.VIEWS}
    ax_img = panes[("real", "axial")].images[0].get_array()
    cor_img = panes[("real", "coronal")].images[0].get_array()
    sag_img = panes[("real", "sagittal")].images[0].get_array()
    # axial: rows y, cols x at z=3; coronal: rows z, cols x at y=7; sagittal: rows z, cols y at x=11
    assert ax_img.shape == (20, 28) and np.all(ax_img == vol[3])
    assert cor_img.shape == (12, 28) and np.all(cor_img == vol[:, 7, :])
    assert sag_img.shape == (12, 20) and np.all(sag_img == vol[:, :, 11])
    assert np.all(panes[("generated", "axial")].images[0].get_array() == vol[3] + 1)
    # aspect = row spacing / column spacing, so each pane has true physical proportions
    assert panes[("real", "axial")].get_aspect() == pytest.approx(0.8 / 0.6)
    assert panes[("real", "coronal")].get_aspect() == pytest.approx(2.5 / 0.6)
    assert panes[("real", "sagittal")].get_aspect() == pytest.approx(2.5 / 0.8)
    # drawn box: height/width in display pixels equals the physical height/width in mm
    fig.draw_without_rendering()  # runs the constrained layout and applies the aspects
    fig_w, fig_h = fig.get_size_inches()
    for view, (w_mm, h_mm) in {"axial": (28 * 0.6, 20 * 0.8), "coronal": (28 * 0.6, 12 * 2.5),
                               "sagittal": (20 * 0.8, 12 * 2.5)}.items():
        box = panes[("real", view)].get_position(original=False)
        assert (box.height * fig_h) / (box.width * fig_w) == pytest.approx(h_mm / w_mm, rel=0.03)
    # radiological convention on the LPS+ layout: axial row 0 (most anterior) on top, z (superior) up elsewhere
    assert [panes[("real", v)].images[0].origin for v in viz.VIEWS] == ["upper", "lower", "lower"]
    assert panes[("real", "axial")].images[0].get_clim() == viz.WINDOWS["mediastinum"]
    assert panes[("real", "axial")].get_title() == "axial z=3"
    assert fig._suptitle.get_text() == "t"


def test_centre_default_and_position_clipping():
    vol = _volume()
    fig = viz.show_three_views(vol)
    assert [ax.get_title() for ax in fig.axes] == ["axial z=6", "coronal y=10", "sagittal x=14"]
    fig = viz.show_three_views(vol, position=(99, -5, 3))
    assert [ax.get_title() for ax in fig.axes] == ["axial z=11", "coronal y=0", "sagittal x=3"]


def test_window_presets_and_errors():
    assert viz.resolve_window("lung") == (-1350.0, 150.0)
    assert viz.resolve_window("bone") == (-450.0, 1050.0)
    assert viz.resolve_window([-1000, 400]) == (-1000.0, 400.0)
    for name, (lo, hi) in viz.WINDOWS.items():
        assert lo < hi, name
    with pytest.raises(CTSGANError, match="unknown HU window preset 'liver'"):
        viz.resolve_window("liver")
    with pytest.raises(CTSGANError, match="min must be below max"):
        viz.resolve_window((400, -1000))
    with pytest.raises(CTSGANError, match=r"expected a 3-D \(z, y, x\) array"):
        viz.show_three_views(np.zeros((4, 4)))
    with pytest.raises(CTSGANError, match="same grid"):
        viz.show_three_views({"a": np.zeros((4, 4, 4)), "b": np.zeros((4, 4, 5))})


def test_overlays_masks_and_nodules():
    vol = _volume()
    lung = np.zeros(SHAPE, bool)
    lung[:, 5:15, 5:20] = True
    nodule = {"center_vox": [6, 10, 14], "diameter_mm": 4.0}
    fig = viz.show_three_views(vol, spacing_mm=SPACING, masks=lung, nodules=[nodule])
    for ax in fig.axes:
        assert len(ax.images) == 2                       # CT + mask overlay
        overlay = ax.images[1].get_array()
        assert overlay.mask.any() and (~overlay.mask).any()
    circles = [p for ax in fig.axes for p in ax.patches if isinstance(p, Ellipse)]
    assert len(circles) == 3                             # the centre plane cuts the nodule in every view
    axial_circle = fig.axes[0].patches[0]
    assert axial_circle.center == (14, 10)
    assert axial_circle.width == pytest.approx(4.0 / 0.6) and axial_circle.height == pytest.approx(4.0 / 0.8)
    # a plane 3 slices (7.5 mm) away misses a 4 mm nodule; the manifest's JSON string is accepted as well
    fig = viz.show_three_views(vol, spacing_mm=SPACING, position=(9, 10, 14),
                               nodules='[{"center_vox": [6, 10, 14], "diameter_mm": 4.0}]')
    assert len(fig.axes[0].patches) == 0 and len(fig.axes[1].patches) == 1
    with pytest.raises(CTSGANError, match="center_vox"):
        viz.show_three_views(vol, nodules=[{"z": 1}])


def test_slab_strip_positions_and_rows():
    vol = _volume()
    fig = viz.slab_strip({"real": vol, "gen": vol}, axis="sagittal", n=5, spacing_mm=SPACING)
    assert len(fig.axes) == 10
    xs = [int(ax.get_title().split("=")[1]) for ax in fig.axes[:5]]
    assert xs == sorted(xs) and len(set(xs)) == 5 and 0 < xs[0] and xs[-1] < SHAPE[2] - 1
    first = fig.axes[0].images[0].get_array()
    assert first.shape == (12, 20) and np.all(first == vol[:, :, xs[0]])
    assert fig.axes[0].get_aspect() == pytest.approx(2.5 / 0.8)
    fig = viz.slab_strip(vol, axis="coronal", positions=[0, 19])
    assert np.all(fig.axes[1].images[0].get_array() == vol[:, 19, :])
    with pytest.raises(CTSGANError, match="outside"):
        viz.slab_strip(vol, axis="coronal", positions=[20])


def test_save_figure_writes_png_and_pdf_atomically(tmp_path):
    fig = viz.show_three_views(_volume(), spacing_mm=SPACING)
    caption = viz.figure_caption("smoke", "phantom", seed=3, hardware="cpu: test (2 cores)")
    assert caption == "profile=smoke · data=phantom · seed=3 · cpu: test (2 cores)"
    paths = viz.save_figure(fig, tmp_path / "figs" / "three.png", caption=caption)
    assert paths == [tmp_path / "figs" / "three.png", tmp_path / "figs" / "three.pdf"]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert paths[1].read_bytes()[:5] == b"%PDF-"
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == ["three.pdf", "three.png"]  # no temp files
    # saving again replaces the caption instead of stacking a second one
    viz.save_figure(fig, tmp_path / "figs" / "three", caption="second")
    texts = [t.get_text() for t in fig.texts]
    assert texts == ["second"]

    # a failing render leaves the earlier pair untouched and no partial files behind
    before = [p.read_bytes() for p in paths]

    class Boom(Exception):
        pass

    def broken_savefig(*a, **k):
        raise Boom()

    fig.savefig = broken_savefig
    with pytest.raises(Boom):
        viz.save_figure(fig, tmp_path / "figs" / "three")
    assert [p.read_bytes() for p in paths] == before
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == ["three.pdf", "three.png"]


# ------------------------------------------------------------------------------------------- VolumeViewer
@pytest.fixture
def no_frontend(monkeypatch):
    """A context with no widget front end and no forced mode (as under pytest, papermill or nbval)."""
    for var in (viz.MODE_ENV, "JPY_SESSION_NAME"):
        monkeypatch.delenv(var, raising=False)


def test_viewer_falls_back_to_static_without_a_front_end(no_frontend, monkeypatch):
    import IPython.display

    shown = []
    monkeypatch.setattr(IPython.display, "display", lambda obj, **kw: shown.append(obj))
    vol = _volume()
    viewer = viz.VolumeViewer({"real": vol, "generated": vol}, spacing_mm=SPACING, position=(2, 3, 4))
    assert viewer.resolve_mode() == "static"
    assert viewer.mode_reason == "not running in a Jupyter kernel"
    viewer.show()
    (fig,) = shown
    assert isinstance(fig, Figure) and len(fig.axes) == 6
    assert fig.axes[0].get_title() == "axial z=2" and np.all(fig.axes[0].images[0].get_array() == vol[2])
    assert viewer._widget is None                       # no widget was built


class _FakeEvents:
    def register(self, *args, **kwargs):   # ipympl registers a post-execute hook when first imported
        pass


class _FakeShell:
    kernel = object()
    events = _FakeEvents()


@pytest.mark.parametrize("env, expect", [
    ({}, ("static", "headless execution")),                                  # papermill / nbval / nbclient
    ({"JPY_SESSION_NAME": "/nb/01.ipynb"}, ("widget", "Jupyter server")),   # JupyterLab started this kernel
    ({"JPY_SESSION_NAME": "/nb/01.ipynb", "CTSGAN_VIEWER": "static"}, ("static", "CTSGAN_VIEWER")),
    ({"CTSGAN_VIEWER": "widget"}, ("widget", "CTSGAN_VIEWER")),
])
def test_auto_mode_decision_inside_a_kernel(no_frontend, monkeypatch, env, expect):
    import IPython

    monkeypatch.setattr(IPython, "get_ipython", lambda: _FakeShell())
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    viewer = viz.VolumeViewer(_volume())
    assert viewer.resolve_mode() == expect[0]
    assert expect[1] in viewer.mode_reason
    assert viz.VolumeViewer(_volume(), mode="static").resolve_mode() == "static"


def test_viewer_is_static_in_a_real_headless_kernel(no_frontend, tmp_path):
    """A real kernel run by nbclient (what papermill and nbval use) gets the static PNG, not a widget."""
    import nbclient
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(
        "import numpy as np\nfrom ctsgan_lib.viz import VolumeViewer\n"
        "v = VolumeViewer(np.zeros((8, 8, 8), np.float32))\nv.show()\nprint(v.resolve_mode(), '|', v.mode_reason)")]
    nbclient.NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
                            ).execute()
    outputs = nb.cells[0].outputs
    assert [o.output_type for o in outputs] == ["display_data", "stream"]
    assert "image/png" in outputs[0].data
    assert "application/vnd.jupyter.widget-view+json" not in outputs[0].data
    assert outputs[1].text.startswith("static | headless execution")


def test_forced_widget_mode_builds_linked_widgets_without_a_front_end():
    import ipywidgets as W
    from ipympl.backend_nbagg import Canvas
    from matplotlib.backend_bases import MouseEvent

    vol = _volume()
    lung = np.zeros(SHAPE, bool)
    lung[:, 5:15, 5:20] = True
    viewer = viz.VolumeViewer({"real": vol, "generated": vol + 1}, spacing_mm=SPACING, masks=lung,
                              nodules={"real": [{"center_vox": [6, 10, 14], "diameter_vox": 5}]}, mode="widget")
    assert viewer.resolve_mode() == "widget"
    box = viewer.widget()
    assert isinstance(box, W.VBox) and "ctsgan-volume-viewer" in box._dom_classes
    assert isinstance(viewer.canvas, Canvas) and viewer.canvas in box.children
    assert [s.value for s in viewer.sliders.values()] == [6, 10, 14]
    assert isinstance(viewer.window_slider, W.FloatRangeSlider) and viewer.presets.value == "lung"
    assert "real: 61014 HU, generated: 61015 HU" in viewer.readout.value
    grid = viewer._grid
    assert len(grid.patches[("real", "axial")]) == 1 and len(grid.patches[("generated", "axial")]) == 0

    # click the real volume's coronal pane at (x=3, z=9): the axial and sagittal planes follow (linked crosshairs)
    viewer.canvas.draw()
    ax = grid.axes[("real", "coronal")]
    px, py = ax.transData.transform((3, 9))
    viewer.canvas.callbacks.process("button_press_event", MouseEvent("button_press_event", viewer.canvas, px, py, 1))
    assert viewer.position == (9, 10, 3)
    assert [s.value for s in viewer.sliders.values()] == [9, 10, 3]
    assert np.all(grid.images[("generated", "axial")].get_array() == vol[9] + 1)
    assert np.all(grid.images[("real", "sagittal")].get_array() == vol[:, :, 3])
    assert grid.lines[("real", "axial")][0].get_xdata()[0] == 3    # axial crosshair moved to x=3
    assert len(grid.patches[("real", "axial")]) == 0                # z=9 is 7.5 mm from the nodule: no marker

    # sliders, presets and the HU range slider stay in step
    viewer.sliders["z"].value = 6
    assert np.all(grid.images[("real", "axial")].get_array() == vol[6])
    viewer.presets.value = "bone"
    assert viewer.window_slider.value == viz.WINDOWS["bone"]
    assert grid.images[("real", "coronal")].get_clim() == viz.WINDOWS["bone"]
    viewer.window_slider.value = (-1000.0, 400.0)
    assert viewer.presets.value is None and grid.images[("real", "axial")].get_clim() == (-1000.0, 400.0)
    viewer.show_masks.value = False
    assert not grid.overlays[("real", "axial")].get_visible()
    viewer.show_nodules.value = False
    viewer.set_position((6, 10, 14))
    assert len(grid.patches[("real", "axial")]) == 0


def test_viewer_rejects_label_maps_as_labels():
    with pytest.raises(CTSGANError, match="pass label maps or lung masks as masks="):
        viz.VolumeViewer(_volume(), labels=np.zeros(SHAPE, np.int16))
    with pytest.raises(CTSGANError, match="mode must be one of"):
        viz.VolumeViewer(_volume(), mode="interactive")
    viewer = viz.VolumeViewer([_volume(), _volume()], labels=["real", "CT-SGAN"])
    assert list(viewer.volumes) == ["real", "CT-SGAN"]


@pytest.mark.portable
def test_saving_an_unchanged_figure_again_gives_the_same_pdf_bytes(tmp_path):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1, 4])
    _, pdf_a = viz.save_figure(fig, tmp_path / "a", caption="profile=smoke")
    _, pdf_b = viz.save_figure(fig, tmp_path / "b", caption="profile=smoke")
    plt.close(fig)
    assert pdf_a.read_bytes() == pdf_b.read_bytes() and b"CreationDate" not in pdf_a.read_bytes()


def test_panel_grid_shows_each_panel_in_its_window():
    a, b = np.zeros((6, 6)), np.ones((6, 6))
    fig = viz.panel_grid([[(a, "a"), (b, "diff", (-5, 5), "coolwarm")], [a]], window=(-1000, 400), title="t",
                         row_labels=["r1", "r2"])
    axes = fig.axes
    assert len(axes) == 4                                                      # 2 × 2, the short row left blank
    assert axes[0].images[0].get_clim() == (-1000.0, 400.0) and axes[0].get_title() == "a"
    assert axes[1].images[0].get_clim() == (-5.0, 5.0) and axes[1].images[0].get_cmap().name == "coolwarm"
    assert not axes[3].images and axes[2].get_ylabel() == "r2"
    with pytest.raises(CTSGANError):
        viz.panel_grid([])
