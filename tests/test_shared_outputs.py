"""Figures, tables and manifests that people share carry no absolute machine paths (issue 17).

The committed ``figures/`` are scanned as text (md, csv, json, txt) and through the text a PNG or PDF carries in its
metadata (every figure writes its provenance footer there as well as drawing it). A footer drawn into pixels can only
be checked through that metadata, so figures written before the footer went into the metadata are listed below.
"""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from ctsgan_lib.reporting import classifier as reporting_classifier
from ctsgan_lib.utils.paths import shareable_path

REPO = Path(__file__).resolve().parents[1]
FIGURES = REPO / "figures"
TEXT_SUFFIXES = {".md", ".csv", ".json", ".txt"}
# An absolute POSIX path of two or more components after a space, quote, bracket, '=' or the line start, a home
# folder, or a Windows drive path. ('mm/s', 'LIDC/NLST' and URLs do not match.)
ABSOLUTE = re.compile(r"(?:^|[\s\"'(\[=,])(/[\w.+-]+/[\w.+/-]+)|~/[\w.-]+|\b[A-Za-z]:\\[\w.\\ -]+", re.M)

# Figures committed without their footer in the metadata (none since the demo run of 2026-11-30 rewrote Fig 3b).
KNOWN_COMMITTED_WITHOUT_METADATA: set[str] = set()


def _pdf_text(path: Path) -> str:
    """Metadata strings (Subject, Title, ...) of a PDF, decoded from PDF text strings (UTF-16 or Latin-1)."""
    raw = path.read_bytes()
    out = []
    for m in re.finditer(rb"/(?:Subject|Title|Author|Keywords|Creator|Producer) \((.*?)(?<!\\)\)", raw, re.S):
        s = m.group(1).replace(rb"\(", b"(").replace(rb"\)", b")").replace(rb"\\", b"\\")
        out.append(s[2:].decode("utf-16-be", "replace") if s.startswith(b"\xfe\xff") else s.decode("latin-1"))
    return "\n".join(out)


def _shared_text(path: Path) -> str:
    if path.suffix in TEXT_SUFFIXES:
        return path.read_text(errors="replace")
    if path.suffix == ".png":
        with Image.open(path) as im:
            return "\n".join(f"{k}: {v}" for k, v in im.text.items())
    if path.suffix == ".pdf":
        return _pdf_text(path)
    return ""


def _footer(path: Path) -> str:
    """The provenance footer a figure stores in its metadata ('' when it stores none)."""
    if path.suffix == ".png":
        with Image.open(path) as im:
            return im.text.get("Description", "")
    m = re.search(r"profile[= ]\S+", _pdf_text(path))
    return m.group(0) if m else ""


def _offenders(text: str) -> list[str]:
    return [m.group(1) or m.group(0).strip() for m in ABSOLUTE.finditer(text)]


def test_the_scanner_finds_what_it_must_and_nothing_else():
    assert _offenders("real data /work/main/data/demo/debiased (phantom)") == ["/work/main/data/demo/debiased"]
    assert _offenders('"executed": "/home/a/x.ipynb"') == ['/home/a/x.ipynb']
    assert _offenders(r"C:\Users\me\data") and _offenders("see ~/ctsgan/figures")
    assert not _offenders("FID 64 mm/s · LIDC/NLST · data/demo/debiased · https://example.org/a/b · 0.5/1.0")


@pytest.mark.parametrize("path", sorted(p for p in FIGURES.rglob("*") if p.is_file()),
                         ids=lambda p: str(p.relative_to(FIGURES)))
def test_committed_figures_hold_no_machine_paths(path):
    rel = path.relative_to(FIGURES).as_posix()
    assert not _offenders(_shared_text(path)), f"figures/{rel}: absolute path in {_offenders(_shared_text(path))}"
    if path.suffix in (".png", ".pdf"):
        if rel in KNOWN_COMMITTED_WITHOUT_METADATA:
            assert not _footer(path), f"figures/{rel} now carries its footer: remove it from the known list"
        else:
            assert _footer(path), f"figures/{rel}: no provenance footer in its metadata, so it cannot be checked"


def test_shareable_path_is_relative_to_the_project_root(tmp_root):
    assert shareable_path(tmp_root / "data" / "demo" / "debiased") == "data/demo/debiased"
    assert shareable_path("data/demo/cohort") == "data/demo/cohort"
    with tempfile.TemporaryDirectory() as elsewhere:
        assert shareable_path(Path(elsewhere) / "cohort") == ".../cohort"


def test_fig3b_footer_and_metadata_use_project_relative_paths(tmp_root):
    import matplotlib.pyplot as plt

    record = {"profile": "smoke", "seed": 0, "hardware_label": "cpu: test (2 cores)",
              "config": {"data_size": 32},
              "data": {"real_source": str(tmp_root / "data" / "smoke" / "debiased"), "real_sources": ["phantom"],
                       "synthetic_source": str(tmp_root / "data" / "smoke" / "synthetic" / "ctsgan"),
                       "injector": {"checkpoint": str(tmp_root / "runs" / "smoke" / "nodules" / "injector" / "c.pt")}}}
    note = reporting_classifier.classifier_caption([record], "Fig 3b")
    assert "real data data/smoke/debiased" in note and "synthetic data/smoke/synthetic/ctsgan" in note
    assert not _offenders(note) and os.sep + tmp_root.name not in note
    table = pd.DataFrame({"regime": ["real", "real"], "size_vox": [4.0, 6.0], "accuracy_mean": [0.5, 0.6],
                          "accuracy_std": [0.1, 0.1]})
    fig, (png, pdf) = reporting_classifier.plot_fig3b(table, tmp_root / "fig3b", note=note)
    plt.close(fig)
    assert _footer(png) == note and note.split(" | ")[1] in _pdf_text(pdf)
