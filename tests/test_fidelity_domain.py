"""Issue 21: the CT domain feature extractor (versioned weights, torch-fidelity registration, equality with
``calculate_metrics``), the sensitivity suite at smoke size (monotone in severity, and a control that fails), KID /
3D metrics / relative FD in Table 1, Rv's random initial state, and the 3D GAN's critic schedule.

One smoke phantom cohort (the smoke profile's 24 patients, 32³; 6 held out) is built per module and the extractors
are trained once at the profile's settings (about two minutes on the 2-core CPU together).
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from ctsgan_lib.config import load_profile
from ctsgan_lib.data.cohort import Cohort
from ctsgan_lib.data.sources import build_cohort
from ctsgan_lib.eval import domain as DM
from ctsgan_lib.eval import fidelity as F
from ctsgan_lib.eval import sensitivity as S
from ctsgan_lib.eval.distances import kid_from_features, msssim_3d
from ctsgan_lib.reporting.fidelity import ordering_lines, relative_fd_difference, relative_fd_interval

STEPS = 200  # the profile default


@pytest.fixture(autouse=True)
def _no_hub(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path_factory.mktemp("torch_home")))


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """A smoke-profile phantom cohort and its config, with the domain extractors trained once."""
    root = tmp_path_factory.mktemp("root")
    mp = pytest.MonkeyPatch()
    mp.setenv("CTSGAN_ROOT", str(root))
    cfg = load_profile("smoke", **{"fidelity.domain_steps": STEPS, "fidelity.seed": 0})
    build_cohort(cfg, source="phantom", progress=False)
    cohort = Cohort(cfg.data_dir / "cohort")
    d2 = DM.domain_for_config(cfg, cohort, 2)
    d3 = DM.domain_for_config(cfg, cohort, 3)
    yield cfg, cohort, d2, d3
    mp.undo()


def test_weights_are_versioned_cached_and_loaded_safely(smoke, monkeypatch):
    cfg, cohort, d2, _ = smoke
    path = DM.Path(d2.weights_path)
    assert path.parent == cfg.runs_dir / "fidelity" / "extractor"
    meta = json.loads(DM.Path(str(path) + ".json").read_text())
    assert meta["sha256"] == d2.sha256 == DM.file_sha256(path)
    assert meta["training_data_digest"].startswith(path.stem.split("-")[-1])
    assert meta["config"]["steps"] == STEPS and meta["config"]["dims"] == 2
    train_ids = set(cohort.ids(split="train"))
    assert meta["n_training_volumes"] == len(train_ids)  # the real train split only
    state = torch.load(path, weights_only=True)  # plain tensors
    assert "head.weight" in state and "feat_mu" in state
    # cached: a second resolve does not train
    monkeypatch.setattr(DM, "train_domain_net", lambda *a, **k: pytest.fail("retrained a cached extractor"))
    again = DM.domain_for_config(cfg, cohort, 2)
    assert again.sha256 == d2.sha256
    # another training set (or config) is another file
    assert DM.training_digest(["x"], DM.DomainTrainConfig(), -1000, 400) != meta["training_data_digest"]
    # a tampered file is refused by its recorded hash
    bad = path.parent / "tampered.pt"
    shutil.copy(path, bad)
    with open(bad, "ab") as fh:
        fh.write(b"x")
    with pytest.raises(DM.InputFileError, match="checksum mismatch"):
        DM.load_domain_state(bad, d2.sha256)


def test_domain_extractor_through_torch_fidelity_calculate_metrics(smoke):
    """FID, KID and IS of the registered extractor from calculate_metrics equal ours from cached features."""
    import torch_fidelity

    cfg, cohort, d2, _ = smoke
    ex = d2.as_extractor()
    ids = sorted(cohort.ids())
    a = F.volume_slices(cohort.read(ids[0])[0], "axial")
    b = F.volume_slices(cohort.read(ids[1])[0], "axial")
    DM.register()
    m = torch_fidelity.calculate_metrics(
        input1=F.SliceStack(a), input2=F.SliceStack(b), fid=True, kid=True, isc=True, isc_splits=2,
        kid_subsets=20, kid_subset_size=len(a), rng_seed=3, feature_extractor=DM.DOMAIN2D_NAME,
        feature_extractor_weights_path=ex.weights_path, cuda=False, batch_size=16, save_cpu_ram=True, cache=False,
        verbose=False)
    runner = F.FeatureRunner(ex, 16, "cpu")
    fa, fb = runner(a), runner(b)
    assert fa["feat"].shape == (len(a), DM.FEAT_DIM + len(DM.INTENSITY_Q) + len(DM.GRADIENT_Q))
    assert F.fid_from_features(fa["feat"], fb["feat"]) == pytest.approx(m["frechet_inception_distance"], rel=1e-4)
    assert kid_from_features(fa["feat"], fb["feat"], 20, 3) == pytest.approx(m["kernel_inception_distance_mean"],
                                                                            rel=1e-4)
    assert F.is_from_logits(fa["logits_unbiased"], 2, 3) == pytest.approx(m["inception_score_mean"], rel=1e-5)
    # the region head covers the anatomy: IS over a volume's axial slices is well above 1 (Inception fallback: ~1.0)
    assert F.is_from_logits(fa["logits_unbiased"], 1, 3) > 2.0


def test_region_targets_follow_the_lung_field():
    hu = np.full((20, 8, 8), 40.0, np.float32)
    hu[5:15, 2:6, 2:6] = -800.0
    assert DM.lung_field_extent(hu) == (5, 14)
    t = DM.region_targets(20, (5, 14), 4)
    assert t[:6].tolist() == [0] * 6 and t[-6:].tolist() == [3] * 6 and (np.diff(t) >= 0).all()


def _suite(smoke, space):
    cfg, cohort, _, _ = smoke
    held = sorted(cohort.ids(split="val")) + sorted(cohort.ids(split="test"))
    vols = [np.asarray(cohort.read(v)[0], np.float32) for v in held]
    return S.summarise_suite(S.run_suite(space, vols, cohort.read(held[0])[1], n_corrupted=3, seed=0))


def test_sensitivity_suite_is_monotone_for_the_domain_extractor(smoke):
    """Acceptance (issue 21): every corruption, graded, rises monotonically above the real–real baseline, for the
    chosen offline extractor: the paper's axial protocol and the 3D encoder (which sees z order)."""
    cfg, cohort, d2, d3 = smoke
    rows = _suite(smoke, S.slice_space(d2.as_extractor(), ("axial",), 0, cfg.data.hu_min, cfg.data.hu_max, "cpu"))
    rows += _suite(smoke, S.volume_space(d3, cfg.data.hu_min, cfg.data.hu_max, "cpu"))
    seen = {(r["variant"], r["corruption"]) for r in rows}
    assert seen == ({("axial", k) for k in S.SEVERITIES if S.corruption_applies(k, "axial")}
                    | {("3d", k) for k in S.SEVERITIES})
    bad = [(r["variant"], r["corruption"], [round(m, 2) for m in r["means"]]) for r in rows if not r["monotone"]]
    assert not bad, f"not monotone in severity: {bad}"
    for r in rows:
        assert r["spearman"] > 0 and r["relative_fd"][-1] > 1.0


def test_sensitivity_check_fails_for_a_blind_feature_space(smoke):
    """The check can fail: features that ignore the image (seeded noise per call) are not monotone."""
    rng = np.random.default_rng(0)
    blind = S.FeatureSpace("blind", lambda hu, v: rng.standard_normal((16, 8)).astype(np.float32), ("axial",), {})
    rows = _suite(smoke, blind)
    assert not all(r["monotone"] for r in rows)


def test_corruptions_are_graded_and_deterministic():
    rng = np.random.default_rng(1)
    hu = rng.normal(-500, 300, (16, 16, 16)).astype(np.float32)
    for kind, levels in S.SEVERITIES.items():
        if kind == "lung_to_soft":
            continue  # needs anatomy (covered by the suite on phantoms)
        outs = [S.corrupt(hu, kind, lv, seed=4) for lv in levels]
        assert all(np.array_equal(o, S.corrupt(hu, kind, lv, seed=4)) for o, lv in zip(outs, levels))
        dist = [float(np.abs(o - hu).mean()) for o in outs]
        assert dist[0] > 0 and all(d1 <= d2 + 1e-6 for d1, d2 in zip(dist, dist[1:])), (kind, dist)
    with pytest.raises(F.CTSGANError, match="unknown corruption"):
        S.corrupt(hu, "nope", 1.0)


def test_msssim_diversity_against_independent_skimage_free_checks():
    rng = np.random.default_rng(2)
    a = rng.normal(-500, 300, (32, 32, 32)).astype(np.float32)
    assert msssim_3d(a, a, -1000, 400) == pytest.approx(1.0, abs=1e-5)
    near = msssim_3d(a, a + rng.normal(0, 30, a.shape).astype(np.float32), -1000, 400)
    far = msssim_3d(a, rng.normal(-500, 300, a.shape).astype(np.float32), -1000, 400)
    assert 1.0 > near > far >= 0.0


def test_table1_has_relative_fd_kid_3d_columns_and_names_the_extractor(smoke, tmp_path):
    from ctsgan_lib.reporting.fidelity import PAPER_RELATIVE_FD, write_tables

    cfg, cohort, _, _ = smoke
    cfg = cfg.replace(**{"fidelity.n_pairs": 2, "fidelity.volumes_per_source": 3, "fidelity.max_slices": 8,
                         "fidelity.views": ["axial"], "fidelity.pooled_volumes": 2, "fidelity.isc_splits": 2,
                         "fidelity.kid_subsets": 10})
    shifted = tmp_path / "shifted"
    from ctsgan_lib.data.cohort import CohortWriter

    with CohortWriter(shifted, compress=False) as w:
        for vid in sorted(cohort.ids())[:3]:
            hu, sp = cohort.read(vid)
            w.write(f"s{vid}", S.corrupt(hu, "blur", 1.2), sp, source="ctsgan", domain="synthetic",
                    split="train", nodules=[])
    real = F.Source("real", cohort, "cohort")
    recs = F.run_fidelity(cfg, real, [real, F.Source("ctsgan", Cohort(shifted), "shifted")],
                          out=tmp_path / "m.jsonl", progress=False)
    metrics = {r["metric"] for r in recs}
    assert {"fid", "kid", "is", "fid3d", "mmd3d", "msssim"} <= metrics
    assert all(r["extractor"] == DM.DOMAIN2D_NAME and r["extractor_3d"] == DM.DOMAIN3D_NAME for r in recs)
    t = write_tables(recs, tmp_path, {"ctsgan": "30 G steps × 1 critic updates (configured)"})
    t1 = t["table1"]
    real_row, syn = t1.iloc[0], t1.iloc[1]
    assert real_row["relative_fd"] == pytest.approx(1.0)
    assert syn["relative_fd"] == pytest.approx(syn["fid_mean"] / real_row["fid_mean"])
    assert syn["relative_fd"] > 1.0 and syn["fid3d_mean"] > real_row["fid3d_mean"]
    assert PAPER_RELATIVE_FD["ctsgan"] == pytest.approx(1.11, abs=0.005)
    assert PAPER_RELATIVE_FD["gan3d"] == pytest.approx(1.58, abs=0.005)
    md = (tmp_path / "table1.md").read_text()
    for col in ("relative FD paper", "relative FD ours [95 % CI]", "KID", "3D FID", "3D MMD", "MS-SSIM", "extractor",
                "training budget", "NOT COMPARABLE TO THE PAPER", DM.DOMAIN2D_NAME, "1.11"):
        assert col in md, col


# ------------------------------------------------------------------------------------------ fair Table 1: models
def test_rv_random_initial_state_per_volume_and_old_checkpoints_load():
    from ctsgan_lib.models.ctsgan import build_ctsgan

    cfg = load_profile("smoke")
    assert cfg.ctsgan.rv_init == "random"
    gen = build_ctsgan(32, cfg.ctsgan)["generator"]
    assert "h0" not in gen.rv.state_dict()  # nothing learned: the state is drawn per volume
    pn, sn = gen.sample_noise(2, generator=torch.Generator().manual_seed(0))
    same_eps = sn[:1].expand(2, -1, -1)
    with torch.no_grad():
        codes = gen.rv(same_eps, pn)
        assert not torch.allclose(codes[0], codes[1])  # same ε_i, different patients → different h0 → other codes
        assert torch.equal(gen.rv(same_eps, pn), codes)  # a function of the volume's noise: reproducible
    # an old checkpoint (learned h0/c0, config without rv_init) still loads strictly
    old_cfg = {k: v for k, v in cfg.to_dict()["ctsgan"].items() if k != "rv_init"}
    old = build_ctsgan(32, {**old_cfg, "rv_init": "learned"})["generator"]
    with torch.no_grad():
        old.rv.h0.fill_(0.3)
    state = {k: v.clone() for k, v in old.rv.state_dict().items()}
    rebuilt = build_ctsgan(32, old_cfg)["generator"]
    rebuilt.rv.load_state_dict(state, strict=True)
    assert rebuilt.rv.init == "learned" and torch.equal(rebuilt.rv.h0, old.rv.h0)
    with pytest.raises(RuntimeError):
        gen.rv.load_state_dict(state, strict=True)  # the random variant has no h0/c0 to take


def test_gan3d_critic_schedule_follows_ctsgan(monkeypatch):
    from ctsgan_lib.train import distributed as D
    from ctsgan_lib.train.gan3d_loop import critic_steps, gan3d_step
    from ctsgan_lib.train.gan_common import build_gan
    from ctsgan_lib.train.volumes import VolumeDataset

    cfg = load_profile("smoke", **{"ctsgan.d_steps": 3})
    assert cfg.gan3d.d_steps == 0 and critic_steps(cfg) == 3
    assert critic_steps(cfg.replace(**{"gan3d.d_steps": 2})) == 2
    g3 = cfg.gan3d
    ctx = D.DistContext()
    nets, opts = build_gan("gan3d", cfg.data.size, g3, "cpu", ctx, seed=0)
    calls = {"d": 0, "g": 0}
    for k in ("d", "g"):
        orig = opts[k].step

        def counted(*a, _k=k, _orig=orig, **kw):
            calls[_k] += 1
            return _orig(*a, **kw)
        monkeypatch.setattr(opts[k], "step", counted)
    vols = np.random.default_rng(0).uniform(-1000, 400, (2, g3.size, g3.size, g3.size)).astype(np.float32)
    data = VolumeDataset(vols)
    gan3d_step(nets, opts, data, g3, 1, "cpu", ctx, critic_steps(cfg))
    assert calls == {"d": 3, "g": 1}


def test_relative_fd_interval_known_answers():
    # constant pairs: no spread, so the interval collapses onto the ratio
    assert relative_fd_interval([4.0] * 10, [2.0] * 10) == pytest.approx((2.0, 2.0, 2.0))
    # the estimate is the ratio of means; the interval holds it and widens with the spread of either side
    rng = np.random.default_rng(3)
    row, real = rng.normal(12.0, 3.0, 15), rng.normal(6.0, 3.0, 15)
    est, lo, hi = relative_fd_interval(row, real, n_boot=4000, seed=1)
    assert est == pytest.approx(row.mean() / real.mean())
    assert lo < est < hi
    # independent check: a normal approximation of the ratio (delta method) agrees on the width within 35 %
    se = est * np.sqrt((row.std(ddof=1) / row.mean()) ** 2 / len(row) + (real.std(ddof=1) / real.mean()) ** 2 / len(real))
    assert (hi - lo) == pytest.approx(2 * 1.96 * se, rel=0.35)
    _, lo2, hi2 = relative_fd_interval(row, real * 0 + real.mean(), n_boot=4000, seed=1)
    assert hi2 - lo2 < hi - lo            # a spread-free reference narrows it
    assert all(np.isnan(relative_fd_interval([], real)))


def test_relative_fd_difference_orders_rows():
    assert relative_fd_difference([3.0] * 8, [5.0] * 8, [2.0] * 8) == pytest.approx((-1.0, -1.0, -1.0))
    rng = np.random.default_rng(0)
    real, near, far = rng.normal(6, 2, 15), rng.normal(7, 2, 15), rng.normal(14, 3, 15)
    est, lo, hi = relative_fd_difference(near, far, real)
    assert est == pytest.approx((near.mean() - far.mean()) / real.mean()) and lo < est < hi < 0
    recs = [{"row": row, "metric": "fid", "protocol": "pair", "view": "axial", "value": float(v)}
            for row, vals in (("real", real), ("ctsgan", near), ("gan3d", far)) for v in vals]
    (line,) = ordering_lines(recs)
    assert "CT-SGAN closer to real" in line and "paper (slice-wise): -0.47" in line
    swapped = [dict(r, row={"ctsgan": "gan3d", "gan3d": "ctsgan"}.get(r["row"], r["row"])) for r in recs]
    assert "3D GAN closer to real" in ordering_lines(swapped)[0]
