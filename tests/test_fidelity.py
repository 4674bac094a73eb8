"""FID / IS (paper §4.2, Table 1): equality with torch-fidelity, the feature cache, the pair protocol, weights checks,
the offline fallback extractor and bad input.

Images are small (32×32 slices: torch-fidelity resizes to 299 internally, so the cost is per slice, ~0.1–0.3 s on a
2-core CPU); the fallback weights file is built once per session.
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from ctsgan_lib.data.cohort import Cohort, CohortWriter
from ctsgan_lib.errors import CTSGANError, InputFileError, MissingInputError
from ctsgan_lib.eval import fidelity as F
from ctsgan_lib.reporting.fidelity import write_tables
from ctsgan_lib.eval import inception as I

SEED = 3


def chest(rng: np.random.Generator, size: int = 32, shift_hu: float = 0.0) -> np.ndarray:
    """A crude chest-CT-like HU volume: air, an elliptic soft-tissue body, two lungs, noise."""
    z, y, x = np.mgrid[:size, :size, :size].astype(np.float32) / size - 0.5
    hu = np.full((size,) * 3, -1000.0, np.float32)
    a, b = 0.42 + 0.04 * rng.standard_normal(), 0.32 + 0.03 * rng.standard_normal()
    hu[(x / a) ** 2 + (y / b) ** 2 < 1] = 40.0
    for cx in (-0.17, 0.17):
        r = 0.11 + 0.02 * rng.standard_normal()
        lung = ((x - cx + 0.02 * rng.standard_normal()) / r) ** 2 + (y / (r * 1.5)) ** 2 < 1 - 2 * z ** 2
        hu[lung] = -850.0
    return hu + rng.normal(0, 30, hu.shape).astype(np.float32) + shift_hu


def write_cohort(root, n: int, seed: int, size: int = 32, shift_hu: float = 0.0, source: str = "phantom") -> Cohort:
    """A cohort on disk in the contract format (CohortWriter), 60/20/20 train/val/test."""
    rng = np.random.default_rng(seed)
    with CohortWriter(root, compress=False) as w:
        for i in range(n):
            split = "train" if i < max(1, round(n * 0.6)) else ("val" if i < round(n * 0.8) else "test")
            w.write(f"{source}{i:03d}", chest(rng, size, shift_hu), (1.0, 1.0, 1.0), source=source,
                    domain="synthetic", split=split, nodules=[])
    return Cohort(root)


@pytest.fixture(autouse=True)
def _no_hub(tmp_path_factory, monkeypatch):
    """No official weights in the hub cache: tests exercise lookup and fallback deterministically."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path_factory.mktemp("torch_home")))


@pytest.fixture(scope="session")
def fallback(tmp_path_factory) -> I.Extractor:
    """Fallback weights calibrated on 8 chest slices (session-wide)."""
    path = tmp_path_factory.mktemp("weights") / "fallback.pth"
    return I.build_fallback_weights(_calibration(), seed=0, out_path=path, description="8 test chest slices")


def _calibration() -> np.ndarray:
    rng = np.random.default_rng(100)
    return np.concatenate([F.volume_slices(chest(rng), "axial", 4) for _ in range(2)])


@pytest.fixture(scope="session")
def runner(fallback) -> F.FeatureRunner:
    return F.FeatureRunner(fallback, batch=16, device="cpu")


@pytest.fixture(scope="session")
def two_volumes(tmp_path_factory):
    return write_cohort(tmp_path_factory.mktemp("pair") / "cohort", 2, seed=5)


@pytest.fixture(scope="session")
def direct(two_volumes, fallback):
    """One direct torch_fidelity.calculate_metrics call (FID + IS) on two slice stacks with the same weights file."""
    import torch_fidelity

    a = F.volume_slices(two_volumes.read("phantom000")[0], "axial", 8)
    b = F.volume_slices(two_volumes.read("phantom001")[0], "axial", 8)
    m = torch_fidelity.calculate_metrics(
        input1=F.SliceStack(a), input2=F.SliceStack(b), fid=True, isc=True, isc_splits=2, rng_seed=SEED,
        feature_extractor="inception-v3-compat", feature_extractor_weights_path=fallback.weights_path,
        cuda=False, batch_size=16, save_cpu_ram=True, cache=False, verbose=False)
    return m


@pytest.fixture(scope="session")
def feature_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("features")


@pytest.mark.portable
def test_pair_fid_from_cache_equals_direct_torch_fidelity(two_volumes, runner, direct, feature_dir):
    cache = F.FeatureCache(feature_dir, runner, max_slices=8)
    cache.get(two_volumes, "phantom000"), cache.get(two_volumes, "phantom001")
    assert cache.misses + cache.hits == 2 and len(list(feature_dir.glob("*.npz"))) == 2
    # read back from disk through a fresh cache: the per-pair FID is computed from cached features
    cache2 = F.FeatureCache(feature_dir, runner, max_slices=8)
    done = runner.slices_done
    fa2, fb2 = cache2.get(two_volumes, "phantom000"), cache2.get(two_volumes, "phantom001")
    assert cache2.hits == 2 and runner.slices_done == done
    ours = F.fid_from_features(fa2[F.FID_LAYER], fb2[F.FID_LAYER])
    assert ours == pytest.approx(direct["frechet_inception_distance"], rel=1e-5)
    assert ours > 1e-3  # not the degenerate random-network FID ≈ 0


@pytest.mark.portable
def test_inception_score_equals_direct_torch_fidelity(two_volumes, runner, direct, feature_dir):
    cache = F.FeatureCache(feature_dir, runner, max_slices=8)  # shares the FID test's cached features
    ours = F.is_from_logits(cache.get(two_volumes, "phantom000")[F.IS_LAYER], splits=2, seed=SEED)
    assert ours == pytest.approx(direct["inception_score_mean"], rel=1e-6)


def test_lowrank_fid_matches_torch_fidelity_statistics():
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

    rng = np.random.default_rng(0)  # 256-d features keep torch-fidelity's eigen-decomposition cheap
    a = (rng.standard_normal((12, 256)) * rng.random(256) * 3).astype(np.float32)
    b = (rng.standard_normal((9, 256)) + 0.2).astype(np.float32)
    ref = fid_statistics_to_metric(fid_features_to_statistics(torch.from_numpy(a)),
                                   fid_features_to_statistics(torch.from_numpy(b)), False)
    assert F.fid_from_features(a, b) == pytest.approx(ref["frechet_inception_distance"], rel=1e-6)
    assert F.fid_from_features(a, a) == pytest.approx(0.0, abs=1e-3)


def test_fallback_extractor_separates_distributions(runner):
    rng = np.random.default_rng(7)
    vols = [chest(rng) for _ in range(2)]
    same_a, same_b = (F.volume_slices(v, "axial", 5) for v in vols)
    shifted = F.volume_slices(chest(rng, shift_hu=400.0), "axial", 5)
    noise = F.volume_slices(rng.uniform(-1000, 400, (32, 32, 32)).astype(np.float32), "axial", 5)
    fa, fb, fs, fn = (runner(x)[F.FID_LAYER] for x in (same_a, same_b, shifted, noise))
    same = F.fid_from_features(fa, fb)
    assert np.std(fa) > 1e-3  # BN recalibration: features are not degenerate
    assert F.fid_from_features(fa, fs) > 3 * same
    assert F.fid_from_features(fa, fn) > 3 * same


def test_bare_random_network_is_degenerate_and_fallback_is_recorded(fallback, tmp_path):
    net = I.seeded_inception(0, tmp_path)
    with torch.no_grad():
        feats = net(torch.from_numpy(F.volume_slices(chest(np.random.default_rng(1)), "axial", 2)))[0]
    assert float(feats.std()) < 1e-4  # why the fallback recalibrates BatchNorm
    meta = json.loads(open(fallback.weights_path + ".json").read())
    assert meta["seed"] == 0 and meta["calibration"] == "8 test chest slices" and meta["sha256"] == fallback.sha256
    assert not fallback.comparable_to_paper and "NOT ImageNet" in fallback.note


def test_fallback_is_deterministic(fallback, tmp_path):
    again = I.build_fallback_weights(_calibration(), seed=0, out_path=tmp_path / "again.pth", description="x")
    assert again.sha256 == fallback.sha256  # same seed + same calibration slices -> the same weights file


def test_cache_key_has_checksum_view_and_weights(two_volumes, runner):
    cache = F.FeatureCache("unused", runner, max_slices=8)
    checksum = two_volumes.row("phantom000")["checksum"]
    key = cache.key(checksum, "axial")
    assert key.startswith(checksum[:24]) and runner.extractor.sha256[:16] in key and "axial" in key
    other = F.FeatureRunner(I.Extractor("x.pth", "f" * 64, "fallback", False, "n"))
    assert F.FeatureCache("unused", other, max_slices=8).key(checksum, "axial") != key
    assert cache.key(checksum, "coronal") != key


def test_volume_slices_views_and_dtype():
    hu = np.zeros((4, 5, 6), np.float32)
    hu[1] = 400.0
    ax = F.volume_slices(hu, "axial")
    assert ax.dtype == np.uint8 and ax.shape == (4, 3, 5, 6)
    assert ax[1].min() == 255 and ax[0].max() == round(1000 / 1400 * 255)  # 0 HU in the [-1000, 400] window
    assert F.volume_slices(hu, "coronal").shape == (5, 3, 4, 6)
    assert F.volume_slices(hu, "sagittal", max_slices=3).shape == (3, 3, 4, 5)
    assert list(F.slice_indices(10, 4)) == [0, 3, 6, 9]
    with pytest.raises(CTSGANError, match="unknown view"):
        F.volume_slices(hu, "oblique")


def test_draw_pairs_protocol():
    ids = [f"p{i}" for i in range(5)]
    pairs = F.draw_pairs(ids, ids, 50, seed=1, same_source=True)
    assert len(pairs) == 50 and all(a != b for a, b in pairs)
    assert pairs == F.draw_pairs(ids, ids, 50, seed=1, same_source=True)
    assert pairs != F.draw_pairs(ids, ids, 50, seed=2, same_source=True)
    cross = F.draw_pairs(ids, ["s0", "s1"], 10, seed=1, same_source=False)
    assert all(a in ("s0", "s1") and b in ids for a, b in cross)
    with pytest.raises(CTSGANError, match="two different patients"):
        F.draw_pairs(["only"], ["only"], 3, seed=0, same_source=True)
    with pytest.raises(CTSGANError, match="empty"):
        F.draw_pairs([], ["s0"], 3, seed=0, same_source=False)


def test_is_needs_enough_slices():
    with pytest.raises(CTSGANError, match="isc_splits"):
        F.is_from_logits(np.zeros((3, 1008), np.float32), splits=10)


# ------------------------------------------------------------------------------------------------ weights checks
def test_corrupted_weights_refused(fallback, tmp_path):
    bad = tmp_path / "weights.pth"
    shutil.copy(fallback.weights_path, bad)
    (tmp_path / "weights.pth.sha256").write_text(f"{fallback.sha256}  weights.pth\n")
    assert I.verify_weights(bad, I.recorded_sha256(bad)) == fallback.sha256
    data = bytearray(bad.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    with pytest.raises(InputFileError, match="checksum mismatch"):
        I.verify_weights(bad, I.recorded_sha256(bad))
    with pytest.raises(InputFileError, match="checksum mismatch"):  # never silently replaced by the fallback
        I.resolve_extractor("smoke", weights_path=str(bad))
    (tmp_path / "weights.pth.sha256").unlink()
    with pytest.raises(InputFileError, match="no recorded SHA-256"):
        I.verify_weights(bad, I.recorded_sha256(bad))


def test_unsafe_or_foreign_weights_refused(tmp_path):
    import hashlib

    evil = tmp_path / "evil.pth"
    torch.save({"fc.weight": torch.zeros(2), "note": object()}, evil)  # needs unsafe unpickling
    sha = hashlib.sha256(evil.read_bytes()).hexdigest()
    with pytest.raises(InputFileError, match="safe load failed|state dict"):
        I.verify_weights(evil, sha)
    foreign = tmp_path / "foreign.pth"
    torch.save({"fc.weight": torch.zeros(2)}, foreign)
    with pytest.raises(InputFileError, match="not torch-fidelity InceptionV3"):
        I.verify_weights(foreign, hashlib.sha256(foreign.read_bytes()).hexdigest())


def test_paper_profile_without_weights_says_what_to_fetch(tmp_path):
    with pytest.raises(MissingInputError) as exc:
        I.resolve_extractor("paper", fallback_path=tmp_path / "fb.pth", calibration_fn=lambda: None)
    msg = str(exc.value)
    assert I.OFFICIAL_WEIGHTS_URL in msg and str(I.hub_weights_path()) in msg and "sha256" in msg.lower()
    with pytest.raises(InputFileError, match="does not exist"):
        I.resolve_extractor("paper", weights_path=str(tmp_path / "nope.pth"))


def test_torch_hub_hash_convention_is_a_sha256_prefix(tmp_path):
    """The name suffix 6726825d follows torch hub's convention: hub checks it as the file's SHA-256 prefix."""
    import hashlib
    import re

    import torch.hub

    assert I.OFFICIAL_SHA256_PREFIX == "6726825d"
    assert torch.hub.HASH_REGEX.search(I.OFFICIAL_WEIGHTS_NAME).group(1) == I.OFFICIAL_SHA256_PREFIX
    # torch hub's own check: a local file downloaded with a wrong prefix is refused, with the right one kept
    src = tmp_path / "w.bin"
    src.write_bytes(b"not weights")
    sha = hashlib.sha256(src.read_bytes()).hexdigest()
    torch.hub.download_url_to_file(src.as_uri(), str(tmp_path / "ok.bin"), hash_prefix=sha[:8], progress=False)
    with pytest.raises(RuntimeError, match="invalid hash value"):
        torch.hub.download_url_to_file(src.as_uri(), str(tmp_path / "bad.bin"), hash_prefix="6726825d",
                                       progress=False)
    assert re.fullmatch("[0-9a-f]{8}", I.OFFICIAL_SHA256_PREFIX)


def test_fallback_weights_at_hub_path_are_refused_the_imagenet_label(fallback, tmp_path):
    hub = I.hub_weights_path()
    hub.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(fallback.weights_path, hub)
    with pytest.raises(InputFileError, match="no recorded SHA-256"):
        I.resolve_extractor("smoke")
    # even with its (correct) hash recorded, a file whose SHA-256 lacks hub's prefix is not the official weights
    assert not fallback.sha256.startswith(I.OFFICIAL_SHA256_PREFIX)
    with pytest.raises(InputFileError, match="not the official"):
        I.resolve_extractor("smoke", weights_sha256=fallback.sha256)
    hub.unlink()
    # passed explicitly, the same file is usable, but labelled custom and not comparable
    ex = I.resolve_extractor("smoke", weights_path=fallback.weights_path, weights_sha256=fallback.sha256)
    assert ex.kind == "custom" and not ex.comparable_to_paper
    assert I.is_official_sha256("6726825d" + "0" * 56) and not I.is_official_sha256(fallback.sha256)


# ------------------------------------------------------------------------------------------------ whole protocol
def _cfg(**extra):
    from ctsgan_lib.config import load_profile

    base = {"fidelity.n_pairs": 2, "fidelity.volumes_per_source": 2, "fidelity.max_slices": 2,
            "fidelity.views": "axial,sagittal", "fidelity.pooled_volumes": 2, "fidelity.isc_splits": 1,
            "fidelity.calibration_slices": 4, "fidelity.batch": 16, "fidelity.metrics_3d": False,
            "fidelity.kid_subsets": 5}
    return load_profile("smoke", **{**base, **extra})


def test_run_fidelity_tables_and_json_lines(tmp_root, fallback):
    cfg = _cfg()
    real = write_cohort(cfg.data_dir / "cohort", 3, seed=11)
    ct = write_cohort(cfg.data_dir / "synthetic" / "ctsgan", 2, seed=12, source="ctsgan")
    g3 = write_cohort(cfg.data_dir / "synthetic" / "gan3d", 2, seed=13, shift_hu=300.0, source="gan3d")
    recs = F.run_fidelity(cfg, F.Source("real", real, "cohort"),
                          [F.Source("real", real, "cohort"), F.Source("gan3d", g3, "gan3d"),
                           F.Source("ctsgan", ct, "ctsgan")], extractor=fallback, device="cpu", progress=False)
    lines = [json.loads(x) for x in (cfg.runs_dir / "fidelity" / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == len(recs) > 0
    for r in lines:
        assert r["weights_sha256"] == fallback.sha256 and r["seed"] == cfg.fidelity.seed
        assert r["extractor"] == "inception-v3-compat" and r["protocol"] in ("pair", "pooled", "volume")
        assert "protocol_desc" in r and r["comparable_to_paper"] is False
    rr = [r for r in lines if r["row"] == "real" and r["protocol"] == "pair"]
    assert all(r["a"] != r["b"] for r in rr) and {r["view"] for r in rr} == {"axial", "sagittal"}
    out = write_tables(recs, cfg.runs_dir / "fidelity")
    t1 = out["table1"]
    assert list(t1["Data Source"]) == [F.PAPER_TABLE1[k]["label"] for k in ("real", "gan3d", "ctsgan")]
    assert t1.loc[0, "FID (↓) paper"] == "130.72 ± 31.05" and t1.loc[2, "IS (↑) paper"] == "2.37 ± 0.19"
    # a clearly different source (HU shifted by +300) is reported far from real; the ordering is measured, not assumed
    assert t1.loc[1, "fid_mean"] > 3 * t1.loc[0, "fid_mean"]
    md = (cfg.runs_dir / "fidelity" / "table1.md").read_text()
    assert "NOT COMPARABLE TO THE PAPER" in md and fallback.sha256 in md and "seed: 7" in md and "hardware" in md
    csv = (cfg.runs_dir / "fidelity" / "table1.csv").read_text()
    assert "weights_sha256" in csv and "smoke" in csv
    assert (cfg.runs_dir / "fidelity" / "table_2p5d.md").is_file()
    assert (cfg.runs_dir / "fidelity" / "table_pooled.csv").is_file()


def test_bad_cohorts_fail_before_any_extraction(tmp_root, fallback):
    cfg = _cfg()
    real = write_cohort(cfg.data_dir / "cohort", 3, seed=11)
    small = write_cohort(tmp_root / "small", 2, seed=1, size=16, source="ctsgan")
    one = write_cohort(tmp_root / "one", 1, seed=2)
    with CohortWriter(tmp_root / "empty", compress=False):
        pass
    empty = Cohort(tmp_root / "empty")
    run = lambda ref, rows: F.run_fidelity(cfg, ref, rows, extractor=fallback, device="cpu", progress=False)
    with pytest.raises(CTSGANError, match="size mismatch"):
        run(F.Source("real", real, "cohort"), [F.Source("ctsgan", small, "small")])
    with pytest.raises(CTSGANError, match="two different patients"):
        run(F.Source("real", one, "one"), [F.Source("real", one, "one")])
    with pytest.raises(CTSGANError, match="empty"):
        run(F.Source("real", real, "cohort"), [F.Source("ctsgan", empty, "empty")])
    with pytest.raises(CTSGANError, match="empty"):
        run(F.Source("real", empty, "empty"), [F.Source("real", empty, "empty")])
    with pytest.raises(CTSGANError, match="isc_splits"):
        F.run_fidelity(_cfg(**{"fidelity.isc_splits": 3}), F.Source("real", real, "cohort"),
                       [F.Source("real", real, "cohort")], extractor=fallback, device="cpu", progress=False)
    assert not (cfg.runs_dir / "fidelity" / "features").exists()


def test_cli_fid_real_vs_real_and_errors(tmp_root, capsys):
    from ctsgan_lib.cli import main

    cfg = _cfg()
    real = write_cohort(cfg.data_dir / "cohort", 3, seed=21)
    one = write_cohort(tmp_root / "one", 1, seed=2)
    out = tmp_root / "m.jsonl"
    sets = ["--set", "fidelity.n_pairs=2", "--set", "fidelity.volumes_per_source=2", "--set",
            "fidelity.max_slices=4", "--set", "fidelity.pooled_volumes=1", "--set", "fidelity.isc_splits=1",
            "--set", "fidelity.calibration_slices=4", "--set", "fidelity.domain_steps=10", "--set",
            "fidelity.kid_subsets=5"]
    rc = main(["fid", str(real.root), str(real.root), "--profile", "smoke", "--out", str(out), "--views", "axial",
               "--tables", *sets])
    assert rc == 0, capsys.readouterr().err
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert {r["protocol"] for r in lines} == {"pair", "pooled", "volume", "within"}
    assert {r["metric"] for r in lines} == {"fid", "kid", "is", "fid3d", "mmd3d", "msssim"}
    # the offline default is the domain extractor, named in every line and in the printout
    assert all(r["row"] == "real" and r["weights_kind"] == "domain" and r["extractor"] == "ctsgan-domain2d"
               and r["extractor_3d"] == "ctsgan-domain3d" for r in lines)
    printed = capsys.readouterr().out
    assert "not comparable to the paper" in printed and "relative FD 1.00" in printed and "KID" in printed
    assert "3D FID" in printed and "MS-SSIM" in printed and "ctsgan-domain2d" in printed
    assert "ctsgan-domain2d" in (tmp_root / "table1.md").read_text()
    weights = sorted(p.name.split("-")[0] for p in (cfg.runs_dir / "fidelity" / "extractor").glob("*.pt"))
    assert weights == ["domain2d", "domain3d"]
    assert main(["fid", str(one.root), str(one.root), "--out", str(out), *sets]) == 2
    assert "two different patients" in capsys.readouterr().err
    assert main(["fid", str(tmp_root / "missing"), str(real.root), "--out", str(out)]) == 2
    assert "manifest" in capsys.readouterr().err
