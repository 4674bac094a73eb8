"""Saving figures: PNG + PDF written atomically, each with its provenance caption."""
from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from ..utils.atomic import atomic_path
from ..utils.hardware import hardware_label


def figure_caption(profile: str, data_source: str, seed: int | None = None, extra: str | None = None,
                   hardware: str | None = None) -> str:
    """The provenance line every saved figure carries: profile, data source, seed, hardware (+ anything else).

    Examples
    --------
    >>> figure_caption("smoke", "phantom", 0, hardware="cpu: test (2 cores)")
    'profile=smoke · data=phantom · seed=0 · cpu: test (2 cores)'
    """
    if hardware is None:
        hardware = hardware_label()
    parts = [f"profile={profile}", f"data={data_source}"]
    if seed is not None:
        parts.append(f"seed={seed}")
    if extra:
        parts.append(extra)
    parts.append(hardware)
    return " · ".join(parts)


def save_figure(fig: Figure, path_without_suffix: str | Path, caption: str | None = None,
                dpi: int = 150) -> list[Path]:
    """Save ``fig`` as PNG and PDF, both atomically (a reader never sees a half-written or mismatched pair).

    Parameters
    ----------
    fig : matplotlib.figure.Figure
    path_without_suffix : str or Path
        ``figures/fig2`` writes ``figures/fig2.png`` and ``figures/fig2.pdf`` (a ``.png``/``.pdf`` suffix is dropped).
    caption : str, optional
        Provenance text (see :func:`figure_caption`) drawn under the figure and stored in the PDF's metadata.
        Saving again replaces the previous caption rather than stacking a second one.
    dpi : int
        PNG resolution.

    Returns
    -------
    list[Path]
        ``[png, pdf]``.
    """
    base = Path(path_without_suffix)
    if base.suffix.lower() in (".png", ".pdf"):
        base = base.with_suffix("")
    old = getattr(fig, "_ctsgan_caption", None)
    if old is not None:
        old.remove()
        fig._ctsgan_caption = None
    if caption:
        fig._ctsgan_caption = fig.text(0.5, -0.01, caption, ha="center", va="top", fontsize=7, color="0.3",
                                       wrap=True)
    png, pdf = base.with_name(base.name + ".png"), base.with_name(base.name + ".pdf")
    # No CreationDate: regenerating an unchanged figure gives the same bytes (no churn in committed figures/).
    meta_pdf = {"Creator": "ctsgan_lib.viz", "Subject": caption or "", "CreationDate": None}
    # Both are rendered to temporary files first; only when both succeed are they renamed into place.
    with atomic_path(png) as tmp_png, atomic_path(pdf) as tmp_pdf:
        fig.savefig(tmp_png, format="png", dpi=dpi, bbox_inches="tight",
                    metadata={"Software": "ctsgan_lib.viz", "Description": caption or ""})
        fig.savefig(tmp_pdf, format="pdf", bbox_inches="tight", metadata=meta_pdf)
    return [png, pdf]
