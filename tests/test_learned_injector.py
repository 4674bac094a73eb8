"""The learned (Jin et al.) injector: shapes not fixed by the size condition, size control, paste-back, the eraser
trained on its pairs, and the matched realism VOIs."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from ctsgan_lib.config import load_profile
from ctsgan_lib.data.cohort import Cohort
from ctsgan_lib.errors import CTSGANError
from ctsgan_lib.nodules import (NoduleEraser, NoduleInjector, centre_feather_weight, erasure_check, extract_voi,
                                measure_nodule, noise_touch_up, paste_voi, robust_sd, scan_detail,
                                train_nodule_gan)
from ctsgan_lib.nodules.realism import (experiment_size_check, load_realism, realism_vois, run_realism,
                                        save_realism)
from ctsgan_lib.reporting.nodules import save_realism_figure, write_realism_report

from nodule_fixtures import make_cohort

SIZE_MAE_VOX = 1.0     # stated size control at smoke (docs/nodules.md): mean |measured - requested| per size
SIZE_MAX_VOX = 1.5     # ... and for every single nodule


@pytest.fixture(scope="module")
def learned(tmp_path_factory):
    """Toy cohort (12 nodule-bearing scans, about 18 nodules of 3-5 voxels), a learned injector trained 300 steps of
    batch 8 at smoke size, a sphere injector (24 steps) and an eraser trained on pairs made by the learned injector
    (60 steps). With test_nodule_gan.py this file took 3.6 min on the shared 2-core CPU under contention."""
    root = tmp_path_factory.mktemp("learned")
    cohort_dir, truth = make_cohort(root / "cohort", n_lidc=12, n_nlst=4)
    cfg = load_profile("smoke", **{"nodules.iterations": 300, "nodules.batch": 8, "nodules.ckpt_every": 300})
    train_nodule_gan(cfg, "injector", cohort_dir, root / "inj", device="cpu", progress=False)
    train_nodule_gan(cfg.replace(**{"nodules.injector": "sphere"}), "injector", cohort_dir, root / "sph",
                     device="cpu", iterations=24, progress=False)
    train_nodule_gan(cfg, "eraser", cohort_dir, root / "era", device="cpu", injector_dir=root / "inj",
                     iterations=60, progress=False)
    return {"root": root, "cohort": Cohort(cohort_dir), "truth": truth, "cfg": cfg,
            "inj": NoduleInjector.from_checkpoint(root / "inj"),
            "sph": NoduleInjector.from_checkpoint(root / "sph"),
            "era": NoduleEraser.from_checkpoint(root / "era")}


def _free_scans(c: Cohort):
    for rid in c.ids(has_nodule=0):
        hu, _ = c.read(rid)
        yield rid, hu, c.read_label(rid) == 3


def _blob(hu: np.ndarray, center, d: float) -> np.ndarray:
    """The bright blob at ``center`` (voxels > -400 HU connected to it), in a 9³ box."""
    v = extract_voi(hu, center, 9) > -400
    lab, _ = ndi.label(v)
    return lab == lab[4, 4, 4] if lab[4, 4, 4] else np.zeros_like(v)


def test_checkpoint_records_the_kind_and_the_sphere_stays_available(learned):
    assert learned["inj"].kind == "learned" and learned["sph"].kind == "sphere"
    assert learned["inj"].generator.in_channels == 5 and learned["sph"].generator.in_channels == 3
    with pytest.raises(CTSGANError, match="pass --fresh"):
        train_nodule_gan(learned["cfg"].replace(**{"nodules.injector": "sphere"}), "injector",
                         learned["cohort"].root, learned["root"] / "inj", device="cpu", progress=False)


def test_same_size_gives_different_shapes_across_vois_and_seeds(learned):
    """Not a function of the sphere alone: the same requested size gives different nodules in different VOIs and
    with different noise, whereas the sphere injector's nodule voxels are the same ball every time."""
    inj, sph = learned["inj"], learned["sph"]
    blobs, seed_diffs, sphere_blobs = [], [], []
    for rid, hu, lung in _free_scans(learned["cohort"]):
        c = [int(v) for v in np.argwhere(ndi.binary_erosion(lung, iterations=4))[0]]
        a = inj.inject_at(hu, c, 4.0, rng=np.random.default_rng(1))
        b = inj.inject_at(hu, c, 4.0, rng=np.random.default_rng(2))
        seed_diffs.append(float(np.abs(a - b).max()))
        blobs.append(_blob(a, c, 4.0))
        sphere_blobs.append(_blob(sph.inject_at(hu, c, 4.0), c, 4.0))
    pairs = [(i, j) for i in range(len(blobs)) for j in range(i + 1, len(blobs))]
    assert all(blobs[i].any() for i in range(len(blobs)))
    assert any(not np.array_equal(blobs[i], blobs[j]) for i, j in pairs)          # shape depends on the VOI
    assert max(seed_diffs) > 1.0                                                   # ... and on the noise
    sizes = [int(b.sum()) for b in blobs]
    print(f"learned blob sizes {sizes}, seed differences {np.round(seed_diffs, 1)} HU; "
          f"sphere blob sizes {[int(b.sum()) for b in sphere_blobs]}")


def test_size_control_within_the_stated_error(learned):
    errs: dict[float, list[float]] = {3.0: [], 5.0: []}
    for k, (rid, hu, lung) in enumerate(_free_scans(learned["cohort"])):
        for seed in (1, 2):
            out, nods = learned["inj"].inject(hu, [3.0, 5.0], np.random.default_rng([k, seed]), lung=lung)
            for n in nods:
                m = measure_nodule(out, n["center_vox"], n["diameter_vox"] / 2 + 1)
                errs[n["diameter_vox"]].append(abs(m["diameter_vox"] - n["diameter_vox"]))
    mae = {d: float(np.mean(e)) for d, e in errs.items()}
    print(f"learned injector diameter MAE (vox) per requested size: {mae}")
    assert all(len(e) >= 6 for e in errs.values())
    assert all(v <= SIZE_MAE_VOX for v in mae.values()), mae
    assert max(max(e) for e in errs.values()) <= SIZE_MAX_VOX, errs


def test_paste_back_leaves_everything_outside_the_voi_bit_identical(learned):
    inj = learned["inj"]
    for rid, hu, lung in _free_scans(learned["cohort"]):
        out, nods = inj.inject(hu, [3.0, 4.0, 5.0], np.random.default_rng(0), lung=lung)
        near = np.zeros(hu.shape, bool)
        support = np.zeros(hu.shape, bool)
        for n in nods:
            lo = [v - inj.voi_size // 2 for v in n["center_vox"]]
            near[tuple(slice(max(l, 0), l + inj.voi_size) for l in lo)] = True
            w = inj.paste_weight(n["diameter_vox"])
            support |= paste_voi(np.zeros(hu.shape, np.float32), np.ones_like(w), n["center_vox"], w) > 0
        assert np.array_equal(out[~near], hu[~near])
        assert np.array_equal(out[~support], hu[~support])                       # not even inside the VOI's rim
        assert not np.array_equal(out, hu)


def _detail_sd(vol: np.ndarray, centre, half: int) -> float:
    """Robust SD of the fine detail (σ = 1 voxel), i.e. the grain, over the cube of half-side ``half``."""
    box = tuple(slice(c - half, c + half + 1) for c in centre)
    return robust_sd(scan_detail(vol, 1.0)[box])


def test_noise_touch_up_gives_the_pasted_centre_the_scans_grain(learned, monkeypatch):
    """inject_at applies the touch-up recorded in the checkpoint. On this toy cohort of white noise the trained
    generator already draws most of the grain (little is added); made smooth, as the demo's is, its pasted centre
    gets the scan's grain back."""
    on = learned["inj"]
    assert on.touchup_sigma_vox == 1.0                                            # the profile's default, recorded
    off = NoduleInjector.from_checkpoint(learned["root"] / "inj", touchup_sigma_vox=0.0)
    half = on.mask_size // 2 - 1
    for smooth in (False, True):
        if smooth:
            for inj in (on, off):
                gen = inj.generate_voi
                monkeypatch.setattr(inj, "generate_voi", lambda v, d, rng=None, gen=gen:
                                    ndi.gaussian_filter(gen(v, d, rng), 2.0))
        ratios = {"on": [], "off": []}
        for rid, hu, lung in _free_scans(learned["cohort"]):
            c = [int(v) for v in np.argwhere(ndi.binary_erosion(lung, iterations=4))[0]]
            ref = _detail_sd(hu, c, half)
            for name, inj in (("on", on), ("off", off)):
                ratios[name].append(_detail_sd(inj.inject_at(hu, c, 3.0, rng=np.random.default_rng(1)), c, half)
                                    / ref)
        med = {k: float(np.median(v)) for k, v in ratios.items()}
        print(f"grain in the pasted centre / the scan's (generator {'smoothed' if smooth else 'as trained'}): "
              f"touch-up {np.round(ratios['on'], 2)}, none {np.round(ratios['off'], 2)}")
        if smooth:
            assert med["off"] < 0.6 and med["on"] > med["off"] + 0.2 and med["on"] < 1.15   # the grain is back
        else:                                                                     # grain of its own: little added
            assert all(a >= b - 0.02 for a, b in zip(ratios["on"], ratios["off"])) and med["on"] < 1.6


def test_noise_touch_up_adds_only_the_missing_detail():
    rng = np.random.default_rng(0)
    scan = rng.normal(-850, 40, (16, 16, 16)).astype(np.float32)
    inside = np.ones(scan.shape, bool)
    smooth = np.full_like(scan, -850.0)
    grainy = (-850 + rng.normal(0, 40, scan.shape)).astype(np.float32)
    half = (-850 + rng.normal(0, 40 * np.sqrt(0.5), scan.shape)).astype(np.float32)
    sd = {name: robust_sd(scan_detail(noise_touch_up(g, scan, inside, 1.0), 1.0)[3:-3, 3:-3, 3:-3])
          for name, g in (("smooth", smooth), ("grainy", grainy), ("half", half))}
    ref = robust_sd(scan_detail(scan, 1.0)[3:-3, 3:-3, 3:-3])
    assert np.array_equal(noise_touch_up(smooth, scan, inside, 0.0), smooth)  # σ 0: off
    for name, v in sd.items():
        assert 0.9 * ref < v < 1.1 * ref, (name, v, ref)                         # topped up to the scan's level
    # a vessel wall in the scan is anatomy, not grain: its edge is not copied onto a smooth generated centre
    wall = scan.copy()
    wall[:, :, 8:] += 890.0
    out = noise_touch_up(smooth, wall, inside, 1.0)
    edge = np.abs(scan_detail(wall, 1.0)) > 3 * robust_sd(scan_detail(wall, 1.0))
    assert edge.sum() > 100 and np.all(out[edge] == smooth[edge])


def test_scan_detail_keeps_noise_and_drops_smooth_anatomy():
    rng = np.random.default_rng(0)
    z, y, x = np.meshgrid(*(np.arange(24.0),) * 3, indexing="ij")
    smooth = 30.0 * np.sin(2 * np.pi * x / 16) + 2.0 * z                         # anatomy: 16-voxel period, a ramp
    noise = rng.normal(0, 20, smooth.shape)
    d = scan_detail(smooth + noise, 1.0)[4:-4, 4:-4, 4:-4]
    n = noise[4:-4, 4:-4, 4:-4]
    assert np.array_equal(scan_detail(smooth, 0.0), np.zeros_like(smooth, dtype=np.float32))
    assert np.abs(scan_detail(smooth, 1.0)[4:-4, 4:-4, 4:-4]).max() < 0.1 * 30   # the sine and ramp are gone
    assert 0.8 < d.std() / n.std() < 1.0 and np.corrcoef(d.ravel(), n.ravel())[0, 1] > 0.9


def test_ctgan_paste_only_adds_density_where_the_generator_paints_it(learned):
    """CT-GAN's paste-back (nodules.paste: ctgan): nothing outside the centre's feather changes, nothing gets
    darker, and lung-density output is gated out (the scan's own lung stays), unlike Jin et al.'s centre paste."""
    ct = NoduleInjector.from_checkpoint(learned["root"] / "inj", paste="ctgan")
    centre = NoduleInjector.from_checkpoint(learned["root"] / "inj", paste="centre")
    for rid, hu, lung in _free_scans(learned["cohort"]):
        c = [int(v) for v in np.argwhere(ndi.binary_erosion(lung, iterations=4))[0]]
        a = ct.inject_at(hu, c, 4.0, rng=np.random.default_rng(1))
        b = centre.inject_at(hu, c, 4.0, rng=np.random.default_rng(1))
        support = paste_voi(np.zeros(hu.shape, np.float32), np.ones((ct.voi_size,) * 3, np.float32), c,
                            ct.paste_weight(4.0)) > 0
        assert np.array_equal(a[~support], hu[~support]) and np.all(a >= hu)
        dark = support & (b < -700) & (hu < -700)                                 # lung in both the output and scan
        assert np.abs(a[dark] - hu[dark]).mean() < 0.5 * np.abs(b[dark] - hu[dark]).mean()
        assert (a - hu).max() > 100                                               # ... yet a nodule is painted


def test_feather_weight_is_one_inside_the_mask_and_zero_on_the_voi_faces():
    for v, m in ((16, 8), (32, 16), (64, 32)):
        w = centre_feather_weight(v, m)
        c = v // 2
        r = int(m / 2 - max(2, m / 4) / 2)
        assert np.all(w[c - r:c + r + 1, c - r:c + r + 1, c - r:c + r + 1] == 1.0)
        for face in (w[0], w[-1], w[:, 0], w[:, -1], w[:, :, 0], w[:, :, -1]):
            assert np.all(face == 0.0)
        prof = w[c, c, c:]
        assert np.all(np.diff(prof) <= 0) and 0 < prof[m // 2] < 1               # falls across the mask border


def test_eraser_trained_on_learned_pairs_reduces_the_error_on_nodules(learned):
    df = erasure_check(learned["era"], learned["cohort"], lambda row: learned["truth"][row["id"]])
    means = df.drop(columns=["scan"]).mean()
    print("eraser (learned-injector pairs) MAE vs truth, HU:", means.round(1).to_dict())
    assert means["mae_nodule_after"] < 0.5 * means["mae_nodule_before"]


def test_realism_vois_are_matched_sites_of_the_held_out_truth(learned):
    c, truth = learned["cohort"], learned["truth"]
    data = realism_vois(c, {"learned": learned["inj"], "sphere": learned["sph"]}, learned["inj"].mask_size,
                        truth_fn=lambda row: truth[row["id"]], splits=("test",))
    n_test = sum(len(c.row(r)["nodules"]) for r in c.ids(split="test", has_nodule=1))
    assert len(data.native) == n_test and data.injected["learned"].shape == data.native.shape
    assert set(data.rows["source"]) == {"native", "learned", "sphere"}
    # away from the rewritten centre the injected VOI is the truth, the native one the scan: they share context
    rid = c.ids(split="test", has_nodule=1)[0]
    cen = c.row(rid)["nodules"][0]["center_vox"]
    t = extract_voi(truth[rid], cen, data.native.shape[1])
    assert np.array_equal(data.injected["learned"][0][0], t[0])


def test_realism_record_round_trips_into_the_report_and_figure(learned, tmp_path):
    c, truth = learned["cohort"], learned["truth"]
    cfg = learned["cfg"].replace(**{"nodules.realism_steps": 10, "nodules.realism_folds": 2,
                                    "nodules.realism_bootstrap": 20})
    inj = {"learned": learned["inj"], "sphere": learned["sph"]}
    res = run_realism(cfg, inj, c, truth_fn=lambda row: truth[row["id"]], splits=("train", "test"), max_sites=12)
    res["experiment_sizes"] = experiment_size_check(inj, c, [3.0, 5.0], n_scans=2)
    save_realism(res, tmp_path / "rec", note="test run")
    rec = load_realism(tmp_path / "rec")
    assert rec["auc"]["learned"]["auc"] == pytest.approx(res["auc"]["learned"]["auc"])
    assert set(rec["experiment_sizes"]["source"]) == {"learned", "sphere"}
    paths = write_realism_report(rec, tmp_path / "fig", "caption") + save_realism_figure(rec, tmp_path / "fig")
    md = (tmp_path / "fig" / "nodule_realism.md").read_text()
    assert "Run: test run" in md and f"{rec['auc']['sphere']['auc']:.3f}" in md and "study's sizes" in md
    assert all(p.is_file() and p.stat().st_size > 0 for p in paths)
