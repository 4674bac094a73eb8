"""ctsgan_lib.viz: three-view geometry on anisotropic volumes, windows, saving, and the VolumeViewer's two modes."""
from __future__ import annotations

import numpy as np
import pytest
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
