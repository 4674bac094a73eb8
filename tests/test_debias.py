"""Debiased cohort (Fig 3a) and nodule-free CT-SGAN training set: actions, labels, idempotence, domain leakage."""
from __future__ import annotations

import numpy as np
import pytest

from ctsgan_lib.config import load_profile
from ctsgan_lib.data.cohort import Cohort
from ctsgan_lib.nodules import (NoduleEraser, NoduleInjector, build_debiased_cohort, build_nodule_free_cohort,
                                domain_leakage, train_nodule_gan)

from nodule_fixtures import make_cohort


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("debias")
    cohort_dir, _ = make_cohort(root / "cohort", n_lidc=8, n_nlst=8, seed=1)
    cfg = load_profile("smoke", **{"nodules.iterations": 10, "nodules.ckpt_every": 10, "data.compress": False})
    train_nodule_gan(cfg, "injector", cohort_dir, root / "inj", device="cpu", progress=False)
    train_nodule_gan(cfg, "eraser", cohort_dir, root / "era", device="cpu", injector_dir=root / "inj",
                     progress=False)
    return {"root": root, "cfg": cfg, "src": Cohort(cohort_dir), "inj": NoduleInjector.from_checkpoint(root / "inj"),
            "era": NoduleEraser.from_checkpoint(root / "era")}


def test_debiased_cohort_balances_nodules_across_domains(setup):
    src, root = setup["src"], setup["root"]
    out = build_debiased_cohort(setup["cfg"], setup["inj"], setup["era"], out=root / "deb", cohort_dir=src.root,
                                progress=False)
    deb = Cohort(out)
    m = deb.manifest.set_index("id")
    assert sorted(m.index) == sorted(src.ids())
    lidc, nlst = src.ids(domain="lidc-like"), src.ids(domain="nlst-like")
    erased = m.index[m["debias_action"] == "erased"]
    injected = m.index[m["debias_action"] == "injected"]
    assert set(erased) <= set(lidc) and set(injected) <= set(nlst)
    assert abs(len(erased) - len(lidc) / 2) <= 1 and abs(len(injected) - len(nlst) / 2) <= 1
    for rid in erased:
        assert m.loc[rid, "has_nodule"] == 0 and (deb.read_label(rid) != 7).all()
        assert all(n["action"] == "erased" for n in m.loc[rid, "nodules"])
    for rid in injected:
        nods = [n for n in m.loc[rid, "nodules"] if n["action"] == "injected"]
        assert m.loc[rid, "has_nodule"] == 1 and nods
        lab = deb.read_label(rid)
        src_lab = src.read_label(rid)
        for n in nods:
            assert src_lab[tuple(n["center_vox"])] == 3 and lab[tuple(n["center_vox"])] == 7   # inside the lung
        hu_src, _ = src.read(rid)
        hu_new, _ = deb.read(rid)
        far = np.ones(hu_src.shape, bool)
        for n in nods:
            far[tuple(slice(max(c - 8, 0), c + 8) for c in n["center_vox"])] = False
        assert np.array_equal(hu_new[far], hu_src[far])            # untouched away from the nodules
    for rid in set(src.ids()) - set(erased) - set(injected):
        assert np.array_equal(deb.read(rid)[0], src.read(rid)[0])
        assert deb.path(rid).stat().st_ino == src.path(rid).stat().st_ino   # unchanged: a link, no second copy
    before, after = domain_leakage(src), domain_leakage(deb)
    assert before["phi"] == pytest.approx(-1.0) and before["accuracy"] == 1.0
    assert abs(after["phi"]) < 0.6 and after["accuracy"] < 0.8 and after["p_value"] > 0.05


def test_debiasing_is_idempotent(setup):
    out = setup["root"] / "deb2"
    args = (setup["cfg"], setup["inj"], setup["era"])
    build_debiased_cohort(*args, out=out, cohort_dir=setup["src"].root, progress=False)
    first = {p.name: p.stat().st_mtime_ns for p in (out / "volumes").iterdir()}
    sums = Cohort(out).manifest["checksum"].tolist()
    build_debiased_cohort(*args, out=out, cohort_dir=setup["src"].root, progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in (out / "volumes").iterdir()} == first
    build_debiased_cohort(*args, out=out, cohort_dir=setup["src"].root, seed=5, progress=False)  # other seed: rebuilt
    assert Cohort(out).manifest["checksum"].tolist() != sums
    assert all(setup["src"].verify(r) for r in setup["src"].ids())   # rewriting a linked scan left the source alone


def test_nodule_free_training_set(setup):
    src = setup["src"]
    out = build_nodule_free_cohort(setup["cfg"], setup["era"], out=setup["root"] / "free", cohort_dir=src.root,
                                   progress=False)
    free = Cohort(out)
    assert sorted(free.ids()) == sorted(src.ids(split="train"))
    assert (free.manifest["has_nodule"] == 0).all() and (free.manifest["split"] == "train").all()
    for rid in free.ids():
        assert (free.read_label(rid) != 7).all()
        if src.row(rid)["has_nodule"]:
            assert free.row(rid)["debias_action"] == "erased"
            assert not np.array_equal(free.read(rid)[0], src.read(rid)[0])
        else:
            assert np.array_equal(free.read(rid)[0], src.read(rid)[0])
            assert free.path(rid).stat().st_ino == src.path(rid).stat().st_ino
