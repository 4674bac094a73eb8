"""Synthetic cohorts: planning, sharding equals a single run, resume after a kill, injection, NIfTI/DICOM export."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pydicom
import pytest

from ctsgan_lib.config import load_profile
from ctsgan_lib.data.cohort import Cohort
from ctsgan_lib.data.io import read_nifti
from ctsgan_lib.errors import CTSGANError
from ctsgan_lib.nodules import train_nodule_gan
from ctsgan_lib.utils.atomic import file_sha256
from ctsgan_lib.synthesis import (VolumePlan, finish_volume, generate_cohort, merge_shards, parse_shard,
                                  plan_volumes, shard_indices, summarize_cohort)
from killing import killed_at
from nodule_fixtures import make_cohort

SPACING = (6.0, 6.0, 6.0)




def test_plan_is_deterministic_and_exact():
    a = plan_volumes(40, seed=3, inject_fraction=0.5, diameters_vox=[3.0, 5.0])
    b = plan_volumes(40, seed=3, inject_fraction=0.5, diameters_vox=[3.0, 5.0])
    assert a == b
    assert sum(p.inject for p in a) == 20
    assert all(set(p.diameters_vox) <= {3.0, 5.0} and len(p.diameters_vox) >= 1 for p in a if p.inject)
    assert all(not p.diameters_vox for p in a if not p.inject)
    assert [sum(p.split == s for p in a) for s in ("train", "val", "test")] == [30, 5, 5]
    assert plan_volumes(40, seed=4, inject_fraction=0.5) != a
    lidc = plan_volumes(200, seed=0, inject_fraction=1.0, spacing_mm=1.0, max_diameter_vox=20)
    d = np.concatenate([p.diameters_vox for p in lidc])
    assert d.max() <= 20 and d.min() >= 1.0 and np.median(d) > 3   # LIDC-distributed (mm at 1 mm/voxel)
    with pytest.raises(CTSGANError, match="inject-fraction"):
        plan_volumes(4, 0, inject_fraction=1.5)


def test_shards_partition_the_run():
    parts = [shard_indices(23, 4, i, 3) for i in range(3)]
    flat = sorted(i for p in parts for i in p)
    assert flat == list(range(23)) and sum(map(len, parts)) == 23
    assert parse_shard("1/4") == (1, 4) and parse_shard(None) == (0, 1)
    with pytest.raises(CTSGANError):
        parse_shard("4/4")


@pytest.mark.portable
def test_two_shards_equal_one_run(ctsgan_ckpt, tmp_path):
    kw = dict(n=6, seed=11, inject_fraction=0.0, batch=2, progress=False)
    single = generate_cohort(ctsgan_ckpt, out=tmp_path / "single", **kw)
    for i in range(2):
        generate_cohort(ctsgan_ckpt, out=tmp_path / "sharded", shard=(i, 2), **kw)
    merge_shards(tmp_path / "sharded", 2)
    a, b = Cohort(single), Cohort(tmp_path / "sharded")
    assert a.ids() == b.ids() == [f"syn-{i:06d}" for i in range(6)]
    for rid in a.ids():
        np.testing.assert_array_equal(a.read(rid)[0], b.read(rid)[0])
        assert b.verify(rid)
        assert a.row(rid)["lung_flags"] == b.row(rid)["lung_flags"]
    row = a.row("syn-000000")
    assert row["source"] == "ctsgan" and row["domain"] == "synthetic" and len(row["checkpoint_sha256"]) == 64
    assert summarize_cohort(single)["volumes"] == 6


def test_killed_run_resumes_to_the_complete_set(ctsgan_ckpt, tmp_path):
    out = tmp_path / "killed"
    args = ["-m", "ctsgan_lib.cli", "generate", "--checkpoint", str(ctsgan_ckpt), "--n", "10",
            "--seed", "5", "--out", str(out), "--batch", "1", "--inject-fraction", "0", "--device", "cpu"]
    cmd = [sys.executable, *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    killed_at("syn-*.nii.gz", 4, args, env)          # dies with the 4th volume written but not yet renamed
    assert len(list((out / "volumes").glob("syn-*.nii.gz"))) == 3
    assert list(out.rglob(".*.part*")), "the kill should leave the 4th volume's temporary file behind"
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    resumed = Cohort(out)
    assert resumed.ids() == [f"syn-{i:06d}" for i in range(10)]
    assert all(resumed.verify(r) for r in resumed.ids())
    assert not list(out.rglob("*.part*")), "no half-written file may remain"
    ref = generate_cohort(ctsgan_ckpt, 10, 5, tmp_path / "ref", inject_fraction=0.0, batch=1, progress=False)
    for rid in resumed.ids():
        np.testing.assert_array_equal(resumed.read(rid)[0], Cohort(ref).read(rid)[0])


def test_injection_lands_in_the_lung_at_requested_diameters(tmp_path):
    from ctsgan_lib.data.phantom import make_patient
    from ctsgan_lib.data.preprocess import lung_mask
    from ctsgan_lib.nodules import NoduleInjector, train_nodule_gan
    from nodule_fixtures import make_cohort

    cohort, _ = make_cohort(tmp_path / "toy")
    cfg = load_profile("smoke")
    res = train_nodule_gan(cfg, "injector", cohort_dir=cohort, out_dir=tmp_path / "inj", iterations=2,
                           progress=False)
    inj = NoduleInjector.from_checkpoint(res["checkpoint"])
    ph = make_patient(3, "nlst-like", size=48, spacing_mm=7.0)
    plan = VolumePlan(index=0, inject=True, diameters_vox=[3.0, 5.0, 3.0])
    hu, fields = finish_volume(plan, ph.hu, ph.spacing_mm, inj, seed=0)
    lung = lung_mask(ph.hu, ph.spacing_mm)
    assert fields["lung_flags"] == "" and fields["lung_volume_ml"] > 100
    assert len(fields["nodules"]) + fields["nodule_shortfall"] == 3 and fields["nodules"]
    for nod in fields["nodules"]:
        assert lung[tuple(nod["center_vox"])], "nodule centre outside the lung mask"
        assert nod["diameter_vox"] in (3.0, 5.0) and nod["action"] == "injected"
    # outside every injected nodule's VOI the volume is unchanged
    changed = np.argwhere(hu != ph.hu)
    centers = np.array([n["center_vox"] for n in fields["nodules"]])
    dist = np.abs(changed[:, None, :] - centers[None]).max(-1).min(-1)
    assert dist.max() <= inj.voi_size // 2
    # a flagged (lung-less) volume is reported, not injected
    hu2, f2 = finish_volume(plan, np.full((32, 32, 32), 40.0, np.float32), (8.0, 8.0, 8.0), inj, seed=0)
    assert "empty" in f2["lung_flags"] and "not_injected" in f2["lung_flags"] and not f2["nodules"]


def test_another_injector_rebuilds_the_cohort(ctsgan_ckpt, tmp_path):
    """A cohort records the injector's SHA-256 and paste-back: a retrained injector does not resume the old nodules
    (the 2026-11-30 demo rerun found a retrained injector silently skipped, the settings knew only its step)."""
    cohort, _ = make_cohort(tmp_path / "toy")
    cfg = load_profile("smoke", **{"nodules.ckpt_every": 1})
    first = train_nodule_gan(cfg, "injector", cohort_dir=cohort, out_dir=tmp_path / "a", iterations=2,
                             progress=False)["checkpoint"]
    kw = dict(n=2, seed=5, inject_fraction=1.0, progress=False)
    out = generate_cohort(ctsgan_ckpt, out=tmp_path / "syn", injector=first, **kw)
    settings = json.loads((out / "cohort.json").read_text())
    assert settings["injector_sha256"] == file_sha256(first)
    assert settings["injector_paste"] == {"paste": "centre", "touchup_sigma_vox": 1.0}
    def stamps():
        return {p.name: p.stat().st_mtime_ns for p in (out / "volumes").iterdir()}

    before = stamps()
    generate_cohort(ctsgan_ckpt, out=out, injector=first, **kw)               # same injector: resumed, untouched
    assert stamps() == before
    second = train_nodule_gan(cfg.replace(**{"nodules.touchup_sigma_vox": 0.0}), "injector", cohort_dir=cohort,
                              out_dir=tmp_path / "b", iterations=2, progress=False)["checkpoint"]
    generate_cohort(ctsgan_ckpt, out=out, injector=second, **kw)
    assert json.loads((out / "cohort.json").read_text())["injector_sha256"] == file_sha256(second)
    after = stamps()
    assert after.keys() == before.keys() and all(after[k] != before[k] for k in after)   # every volume rewritten


def test_nifti_and_dicom_export_read_back(ctsgan_ckpt, tmp_path):
    out = generate_cohort(ctsgan_ckpt, 1, 2, tmp_path / "exp", inject_fraction=0.0, dicom=True, progress=False)
    c = Cohort(out)
    rid = c.ids()[0]
    hu, spacing = c.read(rid)
    hu2, spacing2, _ = read_nifti(out / c.row(rid)["path"])
    np.testing.assert_array_equal(hu, hu2)
    assert spacing == spacing2 == SPACING
    files = sorted((out / "dicom" / rid).glob("*.dcm")) or sorted((out / "dicom" / rid).iterdir())
    dss = sorted((pydicom.dcmread(f) for f in files), key=lambda d: float(d.ImagePositionPatient[2]))
    assert len(dss) == hu.shape[0]
    vol = np.stack([d.pixel_array * float(d.RescaleSlope) + float(d.RescaleIntercept) for d in dss])
    np.testing.assert_array_equal(vol, np.round(hu))   # int16 HU, same voxels
    assert [float(v) for v in dss[0].PixelSpacing] == [SPACING[1], SPACING[2]]
    assert abs(float(dss[1].ImagePositionPatient[2]) - float(dss[0].ImagePositionPatient[2])) == SPACING[0]
    assert "DERIVED" in dss[0].ImageType and dss[0].PatientName == "ANONYMOUS"


def test_torchrun_fills_one_shard_per_process_and_merges(ctsgan_ckpt, tmp_path):
    """`torchrun --nproc_per_node 2 … generate` = two shards (one per rank) merged by rank 0 = one single run."""
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "0",
           "-m", "ctsgan_lib.cli", "generate", "--checkpoint", str(ctsgan_ckpt), "--n-volumes", "5", "--seed", "3",
           "--out", str(out), "--batch", "2", "--inject-fraction", "0", "--device", "cpu"]
    r = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert sorted(p.name for p in (out / "shards").iterdir()) == ["shard-000-of-002", "shard-001-of-002"]
    ref = generate_cohort(ctsgan_ckpt, 5, 3, tmp_path / "ref", inject_fraction=0.0, batch=2, progress=False)
    a, b = Cohort(out), Cohort(ref)
    assert a.ids() == b.ids()
    for rid in a.ids():
        np.testing.assert_array_equal(a.read(rid)[0], b.read(rid)[0])
