"""Paper figures a reader can put in a talk: at least two patients per model in Fig 1 / A.1 / A.2, and one caption
format (profile, data source, extractor, seeds) on every figure, with no machine path."""
from __future__ import annotations

import json

import pytest
from PIL import Image

from ctsgan_lib.config import load_profile
from ctsgan_lib.reporting import figures
from nodule_fixtures import make_cohort


@pytest.fixture
def cohorts(tmp_root):
    cfg = load_profile("smoke")
    make_cohort(cfg.data_dir / "cohort", n_lidc=4, n_nlst=4, seed=0)
    for i, kind in enumerate(("ctsgan", "gan3d"), 1):
        make_cohort(cfg.data_dir / "synthetic" / kind, n_lidc=2, n_nlst=3, seed=i)
    return cfg


def _spy(monkeypatch, name):
    seen = []
    real = getattr(figures, name)

    def spy(*args, **kwargs):
        seen.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(figures, name, spy)
    return seen


def _per_source(labels):
    return {src: sum(str(lab).startswith(src) for lab in labels) for src in ("real", "CT-SGAN", "3D GAN")}


def test_fig1_and_figA2_show_two_patients_per_model(cohorts, tmp_path, monkeypatch):
    three = _spy(monkeypatch, "show_three_views")
    grid = _spy(monkeypatch, "_axial_grid")
    figures.fig1_three_views(cohorts, tmp_path)
    figures.figA1_middle_region(cohorts, tmp_path)
    figures.figA2_regions(cohorts, tmp_path)
    assert _per_source(three[0]) == {"real": 2, "CT-SGAN": 2, "3D GAN": 2}
    a1, a2 = grid
    assert all(len(row) >= 2 for row in a1.values()) and len(a1) == 3        # one column per volume
    assert _per_source(a2) == {"real": 2, "CT-SGAN": 2, "3D GAN": 2}          # one row per volume
    assert len({label.split("\n")[1] for label in a2 if label.startswith("real")}) == 2   # two different patients


def test_every_caption_has_profile_data_extractor_and_seeds(cohorts, tmp_path):
    rec = {"extractor": "domain-ct-2d", "seed": 7}
    (cohorts.runs_dir / "fidelity").mkdir(parents=True)
    (cohorts.runs_dir / "fidelity" / "metrics.jsonl").write_text(json.dumps(rec) + "\n")
    paths = (figures.fig1_three_views(cohorts, tmp_path) + figures.figA2_regions(cohorts, tmp_path)
             + figures.figB3_radius_distribution(cohorts, tmp_path))
    for png in (p for p in paths if p.suffix == ".png"):
        with Image.open(png) as im:
            caption = im.text["Description"]
        for needle in ("profile=smoke", "data=", "extractor=domain-ct-2d",
                       "seeds: global 0, generation 1234, fidelity 7, classifier [0]"):
            assert needle in caption, (png.name, caption)
        assert str(cohorts.root) not in caption
