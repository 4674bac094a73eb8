"""Conditional CT-SGAN from the shell (issue 26): `ctsgan train ctsgan_cond` on a cohort's manifest nodules, then
`ctsgan generate --nodules K --nodule-diameters D`: the manifest records the condition, generation is deterministic
per (seed, condition), lung masks and sanity flags are there."""
from __future__ import annotations

import json

import numpy as np
import pytest

from ctsgan_lib.cli import main
from ctsgan_lib.config import load_profile
from ctsgan_lib.errors import CTSGANError
from ctsgan_lib.data.cohort import Cohort, CohortWriter
from ctsgan_lib.synthesis import generate_cohort, load_generator
from ctsgan_lib.train import ctsgan_loop

from cli_checks import assert_one_line_error
from test_ctsgan_cond import cond_volumes
from test_ctsgan_train import TINY


@pytest.fixture(scope="module")
def cond_ckpt(tmp_path_factory):
    """A 3-step conditional checkpoint trained by `ctsgan train ctsgan_cond` on data/smoke/cohort (its manifest)."""
    root = tmp_path_factory.mktemp("condroot")
    mp = pytest.MonkeyPatch()
    mp.setenv("CTSGAN_ROOT", str(root))
    vols, nods = cond_volumes(4)
    w = CohortWriter(root / "data" / "smoke" / "cohort", compress=False)
    for i, (v, n) in enumerate(zip(vols, nods)):
        w.write(f"p{i}", v, (1.0, 1.0, 1.0), split="train", source="phantom",
                domain="lidc-like" if n else "nlst-like", nodules=n)
    w.write("pv", vols[0], (1.0, 1.0, 1.0), split="val", source="phantom", domain="nlst-like")   # not trained on
    w.close()
    sets = [a for k, v in {**TINY, "ctsgan.iterations": 3}.items() for a in ("--set", f"{k}={v}")]
    assert main(["train", "ctsgan_cond", "--no-progress", "--device", "cpu", *sets]) == 0
    ck = root / "runs" / "smoke" / "ctsgan_cond" / "ckpt_000003.pt"
    yield root, ck
    mp.undo()


def _volumes_of(folder):
    c = Cohort(folder)
    return {rid: c.read(rid)[0] for rid in c.ids()}


def test_train_cond_reads_the_manifest_nodules(cond_ckpt):
    root, ck = cond_ckpt
    opts = json.loads((ck.parent / "training_options.json").read_text())
    assert opts["kind"] == "ctsgan_cond" and opts["extra"]["n_volumes"] == 4
    assert opts["extra"]["n_with_nodules"] == 2
    assert load_generator(ck).meta["kind"] == "ctsgan_cond"


def test_generate_records_the_condition_and_is_deterministic_per_seed_and_condition(cond_ckpt, tmp_path, capsys):
    _, ck = cond_ckpt
    args = ["generate", "--checkpoint", str(ck), "--n", "3", "--device", "cpu", "--no-progress", "--batch", "2"]
    a, b = tmp_path / "a", tmp_path / "b"
    assert main([*args, "--seed", "4", "--out", str(a), "--nodules", "2", "--nodule-diameters", "5"]) == 0
    assert "3 volumes" in capsys.readouterr().out
    assert main([*args, "--seed", "4", "--out", str(b), "--nodules", "2", "--nodule-diameters", "5"]) == 0
    m = Cohort(a).manifest
    assert m["condition_nodules"].astype(int).tolist() == [2, 2, 2]
    assert m["condition_diameter_vox"].astype(float).tolist() == [5.0, 5.0, 5.0]
    assert m["has_nodule"].tolist() == [1, 1, 1] and "lung_flags" in m and "lung_volume_ml" in m
    settings = json.loads((a / "cohort.json").read_text())
    assert "2" in json.dumps(settings) and settings["profile"] == "smoke"
    va, vb = _volumes_of(a), _volumes_of(b)
    assert all(np.array_equal(va[k], vb[k]) for k in va)                 # same (seed, condition): same volumes

    c0, s5 = tmp_path / "c0", tmp_path / "s5"
    assert main([*args, "--seed", "4", "--out", str(c0), "--nodules", "0"]) == 0
    assert main([*args, "--seed", "5", "--out", str(s5), "--nodules", "2", "--nodule-diameters", "5"]) == 0
    assert Cohort(c0).manifest["has_nodule"].tolist() == [0, 0, 0]
    assert Cohort(c0).manifest["condition_nodules"].astype(int).tolist() == [0, 0, 0]
    v0, v5 = _volumes_of(c0), _volumes_of(s5)
    assert all(not np.array_equal(va[k], v0[k]) for k in va)             # another condition: other volumes
    assert all(not np.array_equal(va[k], v5[k]) for k in va)             # another seed: other volumes


def test_generate_mixed_cohort_by_fraction_matches_single_volumes(cond_ckpt, tmp_path):
    """--inject-fraction 0.5 with a conditional checkpoint: half the volumes under the nodule condition; each volume
    equals the one generated alone under its condition (volume i depends on (seed, i, condition) only)."""
    _, ck = cond_ckpt
    out = generate_cohort(ck, 4, 1, tmp_path / "mix", inject_fraction=0.5, nodule_diameters_vox=[4.0], nodules=1,
                          batch=2, compress=False, progress=False)
    m = Cohort(out).manifest.set_index("id")
    assert sorted(m["condition_nodules"].astype(int).tolist()) == [0, 0, 1, 1]
    alone = generate_cohort(ck, 4, 1, tmp_path / "alone", inject_fraction=0.5, nodule_diameters_vox=[4.0],
                            nodules=1, batch=2, shard=(1, 2), compress=False, progress=False)
    va, vb = _volumes_of(out), _volumes_of(alone)
    assert vb and all(np.array_equal(va[k], vb[k]) for k in vb)


def test_generate_refuses_mixed_up_inputs(cond_ckpt, tmp_path, capsys):
    root, ck = cond_ckpt
    base = ["generate", "--n", "1", "--device", "cpu", "--no-progress"]
    rc = main([*base, "--checkpoint", str(ck), "--out", str(tmp_path / "x"), "--nodules", "-1"])
    assert_one_line_error(rc, capsys.readouterr().err, "--nodules")
    rc = main([*base, "--checkpoint", str(ck), "--out", str(tmp_path / "y"), "--injector", str(ck)])
    assert_one_line_error(rc, capsys.readouterr().err, "makes its own nodules")
    assert not (tmp_path / "y").exists()          # nothing half-written
    rc = main([*base, "--checkpoint", str(ck), "--out", str(tmp_path / "z"), "--nodules", "1", "--fast"])
    assert_one_line_error(rc, capsys.readouterr().err, "fast generation path")   # issue 25's path is unconditional
    assert not list((tmp_path / "z").glob("volumes/*.nii*"))


def test_nodules_needs_a_conditional_checkpoint(tmp_root, tmp_path, capsys):
    cfg = load_profile("smoke", **{**TINY, "ctsgan.iterations": 1})
    vols, _ = cond_volumes(2)
    ck = ctsgan_loop.train_ctsgan(cfg, volumes_hu=vols, out_dir=tmp_path / "unc", progress=False)["checkpoint"]
    rc = main(["generate", "--checkpoint", str(ck), "--n", "1", "--out", str(tmp_path / "o"), "--nodules", "1",
               "--device", "cpu", "--no-progress", "--inject-fraction", "0"])
    assert_one_line_error(rc, capsys.readouterr().err, "--nodules needs a conditional CT-SGAN checkpoint")
    assert not (tmp_path / "o").exists()


def test_manifest_nodules_without_diameter_are_refused(tmp_root):
    cfg = load_profile("smoke", **TINY)
    vols, nods = cond_volumes(4)
    nods[1] = [{"center_vox": [1.0, 2.0, 3.0], "diameter_mm": 4.0}]
    with pytest.raises(CTSGANError, match="diameter_vox"):
        ctsgan_loop.train_ctsgan_cond(cfg, volumes_hu=vols, nodules=nods, out_dir=tmp_root / "x", progress=False)


def test_cond_z_generation_records_and_follows_the_z_position(tmp_root, tmp_path, cond_ckpt, capsys):
    cfg = load_profile("smoke", **{**TINY, "ctsgan.cond_z": True, "ctsgan.iterations": 2})
    vols, nods = cond_volumes(4)
    ck = ctsgan_loop.train_ctsgan_cond(cfg, volumes_hu=vols, nodules=nods, out_dir=tmp_path / "z",
                                       progress=False)["checkpoint"]
    kw = dict(nodules=1, nodule_diameters_vox=[5.0], batch=2, compress=False, progress=False)
    mid = generate_cohort(ck, 2, 3, tmp_path / "mid", nodule_z_frac=0.5, **kw)
    top = generate_cohort(ck, 2, 3, tmp_path / "top", nodule_z_frac=0.9, **kw)
    drawn = generate_cohort(ck, 2, 3, tmp_path / "drawn", **kw)
    assert Cohort(mid).manifest["condition_z_vox"].astype(str).tolist() == ["15.5", "15.5"]
    zs = [float(z) for z in Cohort(drawn).manifest["condition_z_vox"].astype(str)]
    assert all(0.3 * 31 <= z <= 0.7 * 31 for z in zs)
    again = generate_cohort(ck, 2, 3, tmp_path / "drawn2", **kw)
    vm, vt, vd, va = (_volumes_of(f) for f in (mid, top, drawn, again))
    assert all(np.array_equal(vd[k], va[k]) for k in vd)              # same (seed, condition, z): same volumes
    assert all(not np.array_equal(vm[k], vt[k]) for k in vm)          # another z: other volumes
    _, plain = cond_ckpt                                              # a conditional model without cond_z
    rc = main(["generate", "--checkpoint", str(plain), "--n", "1", "--out", str(tmp_path / "o"), "--nodules", "1",
               "--nodule-z", "0.5", "--device", "cpu", "--no-progress"])
    assert_one_line_error(rc, capsys.readouterr().err, "--nodule-z needs")
