"""The paper's design of the nodule-detection study (issue 20): what a cell holds, seeds, intervals, Fig 3c.

Smoke-size in-memory cohorts with the four kinds of volume of Fig 3a (native and injected positives, erased and clean
negatives) and the sphere-painting injector of ``test_classifier``; the debiased cohort is also read from disk.
"""
from __future__ import annotations

import numpy as np
import pytest

from ctsgan_lib.errors import CTSGANError
from ctsgan_lib.experiments import (BaseSet, build_cell_data, item_kinds, load_real_cohort, run_grid, run_scarcity,
                                    scarce_subset)
from ctsgan_lib.utils.logs import read_jsonl
from test_classifier import S, SphereInjector, _base, _cfg

KINDS_PER_SPLIT = {"train": 3, "val": 1, "test": 2}   # volumes of each kind per split


def _paper_real(per_split=KINDS_PER_SPLIT) -> BaseSet:
    """Per split: native positives (a real 3-voxel nodule painted in), erased and clean negatives, injected bases."""
    vols, k = [], 0
    for split, n in per_split.items():
        for role, domain in (("native", "lidc-like"), ("erased", "lidc-like"), ("injected", "nlst-like"),
                             ("clean", "nlst-like")):
            for _ in range(n):
                v = _base(f"{role[:3]}{k:03d}", domain, split, k)
                if role == "native":
                    hu, _ = SphereInjector().inject(v.hu, [3.0], np.random.default_rng(k), lung=v.lung)
                    v.hu = np.rint(hu).astype(np.int16)
                v.role = role
                vols.append(v)
                k += 1
    return BaseSet(vols, "memory:test-debiased", ["phantom"])


def _paper_syn(n=6) -> BaseSet:
    vols = []
    for i in range(n):
        v = _base(f"syn-{i:06d}", "synthetic", "train", 200 + i)
        v.role = "injected" if i % 2 else "clean"
        vols.append(v)
    return BaseSet(vols, "memory:test-syn", ["ctsgan"])


def _pcfg(**over):
    return _cfg(**{"classifier.design": "paper", **over})


def test_each_split_holds_the_four_kinds_in_the_recorded_counts():
    real, syn = _paper_real(), _paper_syn()
    data = build_cell_data(real, syn, 4.0, 0, SphereInjector(), _pcfg())
    counts = data.counts()
    for split in ("train", "val"):
        n = KINDS_PER_SPLIT[split]
        assert counts[split] == {"native": n, "injected": n, "erased": n, "clean": n}
    # the recorded counts are the items, read back from ids and labels independently of item_kinds
    ds = data.train
    native_ids = {v.id for v in real.volumes if v.role == "native" and v.split == "train"}
    assert sum(1 for i, y in zip(ds.ids, ds.labels) if y == 1 and i.removesuffix("+nod") in native_ids) == 3
    assert counts["test"] == {"native": 2, "injected": 2, "erased": 2, "clean": 2}
    assert counts["synthetic"] == {"native": 0, "injected": 3, "erased": 0, "clean": 3}


def test_test_split_is_balanced_and_native_positives_train_and_test():
    # an unbalanced test split (3 positives of each kind, 1 negative of each) is balanced by dropping positives
    real = _paper_real()
    extra = _paper_real({"test": 3})
    real.volumes += [v for v in extra.volumes if v.role in ("native", "injected")]
    for v in real.volumes[-6:]:
        v.id = "x" + v.id
    data = build_cell_data(real, None, 4.0, 0, SphereInjector(), _pcfg())
    y = data.test.labels
    assert (y == 1).sum() == (y == 0).sum() == 4
    kinds = item_kinds(data.test, data.roles)
    assert "native" in kinds and "injected" in kinds
    assert data.counts()["train"]["native"] == 3 and data.counts()["test"]["native"] >= 1


def test_native_positives_are_not_injected_and_injected_ones_are():
    real = _paper_real()
    data = build_cell_data(real, None, 6.0, 0, SphereInjector(), _pcfg())
    by_id = {v.id: v for v in real.volumes}
    for unit, rid, y in zip(data.train.unit, data.train.ids, data.train.labels):
        base = by_id[rid.removesuffix("+nod")]
        clean = np.clip((base.hu.astype(np.float32) + 1000) / 1400, 0, 1)   # the profile's HU window, rescaled
        changed = np.abs(unit.astype(np.float32) - clean.astype(np.float16).astype(np.float32)) > 1e-2
        assert changed.any() == (base.role == "injected"), (rid, base.role)


def test_synthetic_set_is_exactly_the_injected_half():
    syn = _paper_syn(8)
    data = build_cell_data(_paper_real(), syn, 4.0, 0, SphereInjector(), _pcfg())
    pos = {i.removesuffix("+nod") for i, y in zip(data.synthetic.ids, data.synthetic.labels) if y == 1}
    neg = {i for i, y in zip(data.synthetic.ids, data.synthetic.labels) if y == 0}
    assert pos == {v.id for v in syn.volumes if v.role == "injected"}
    assert neg == {v.id for v in syn.volumes if v.role == "clean"}
    assert len(data.synthetic) == 8   # each volume once (the paired design would use each twice)


def test_seeds_change_nodule_placement_and_count_not_the_negatives():
    real, syn = _paper_real(), _paper_syn()
    extra = [v for v in _paper_real({"test": 3}).volumes if v.role in ("erased", "clean")]
    for v in extra:   # more test negatives than positives: balancing drops some, and never by the seed
        v.id = "x" + v.id
    real.volumes += extra
    cfg = _pcfg(**{"classifier.max_nodules": 3})
    a = build_cell_data(real, syn, 4.0, 0, SphereInjector(), cfg)
    b = build_cell_data(real, syn, 4.0, 1, SphereInjector(), cfg)
    for split in ("train", "test", "synthetic"):
        da, db = getattr(a, split), getattr(b, split)
        assert da.ids == db.ids                             # same volumes, same order
        ka = item_kinds(da, a.roles)
        for ua, ub, k in zip(da.unit, db.unit, ka):
            if k in ("native", "erased", "clean"):
                assert np.array_equal(ua, ub), (split, k)   # negatives (and native positives) untouched
        inj = [i for i, k in enumerate(ka) if k == "injected"]
        assert any(not np.array_equal(da.unit[i], db.unit[i]) for i in inj), split


def test_paper_design_refuses_bases_without_roles():
    from test_classifier import _bases

    with pytest.raises(CTSGANError, match="design 'paper' needs"):
        build_cell_data(_bases((2, 2, 2)), None, 4.0, 0, SphereInjector(), _pcfg())


def test_scarce_subset_is_stratified_nested_and_seed_free():
    train = _paper_real({"train": 10}).volumes
    small, big = scarce_subset(train, 0.2), scarce_subset(train, 0.5)
    assert {v.id for v in small} <= {v.id for v in big}
    for role in ("native", "injected", "erased", "clean"):
        assert sum(v.role == role for v in small) == 2 and sum(v.role == role for v in big) == 5
    assert scarce_subset(train, 1.0) == train


def test_grid_records_design_counts_and_per_kind_metrics(tmp_root):
    cfg = _pcfg(**{"classifier.sizes": "[4.0]", "classifier.epochs": 1})
    path = run_grid(cfg, tmp_root / "g", progress=False, real=_paper_real(), synthetic=_paper_syn(),
                    injector=SphereInjector(), device="cpu")
    recs = read_jsonl(path)
    assert {r["regime"] for r in recs} == {"real", "synthetic", "pretrain_finetune"}
    for r in recs:
        d = r["data"]
        assert d["design"].startswith("paper") and d["nodule_count"] == "lidc"
        assert d["counts"]["train"] == {"native": 3, "injected": 3, "erased": 3, "clean": 3}
        bk = r["metrics"]["by_kind"]
        assert bk["native"]["n_positive"] == 2 and bk["injected"]["n_positive"] == 2
        assert bk["native"]["n_negative"] == 4
        tp = r["test_predictions"]
        y, p, k = np.array(tp["y"]), np.array(tp["p"]), np.array(tp["kinds"])
        sel = k != "injected"   # native vs negatives, recomputed from the stored predictions
        assert bk["native"]["accuracy"] == pytest.approx(np.mean((p[sel] >= 0.5) == y[sel]))
        assert r["metrics"]["accuracy"] == pytest.approx(np.mean((p >= 0.5) == y), abs=1e-6)


def test_scarcity_runs_real_and_finetune_per_fraction(tmp_root):
    cfg = _pcfg(**{"classifier.sizes": "[4.0]", "classifier.epochs": 1})
    real, syn = _paper_real({"train": 4, "val": 1, "test": 1}), _paper_syn()
    path = run_scarcity(cfg, tmp_root / "g", progress=False, real=real, synthetic=syn, injector=SphereInjector(),
                        device="cpu", fractions=[0.25, 1.0])
    recs = read_jsonl(path)
    assert path.name == "scarcity.jsonl" and len(recs) == 4
    n = {(r["regime"], r["real_fraction"]): sum(r["data"]["counts"]["train"].values()) for r in recs}
    assert n[("real", 0.25)] == 4 and n[("real", 1.0)] == 16 and n[("pretrain_finetune", 0.25)] == 4
    assert all(r["data"]["counts"]["test"] == recs[0]["data"]["counts"]["test"] for r in recs)  # test stays whole
    mtime = path.stat().st_mtime_ns   # a rerun trains nothing
    run_scarcity(cfg, tmp_root / "g", progress=False, real=real, synthetic=syn, injector=SphereInjector(),
                 device="cpu", fractions=[0.25, 1.0])
    assert path.stat().st_mtime_ns == mtime


def test_real_cohort_is_read_from_the_debiased_cohort_on_disk(tmp_root):
    """Roles come from the manifest's debias_action; an injected volume is read from its clean source scan."""
    from ctsgan_lib.data.cohort import CohortWriter

    cfg = _pcfg(**{"data.size": S})
    real = _paper_real({"train": 1, "val": 1, "test": 1})
    action = {"native": "none", "erased": "erased", "injected": "injected", "clean": "none"}
    painted = {}
    with CohortWriter(cfg.data_dir / "cohort", compress=True) as src, \
            CohortWriter(cfg.data_dir / "debiased", compress=True) as deb:
        for v in real.volumes:
            label = np.where(v.lung, 3, 1).astype(np.uint8)
            has = int(v.role in ("native", "injected"))
            src.write(v.id, v.hu.astype(np.float32), (2.0, 2.0, 2.0), label=label, source="phantom",
                      domain=v.domain, split=v.split, nodules=[], has_nodule=int(v.role in ("native", "erased")))
            hu = v.hu.astype(np.float32)
            if v.role == "injected":   # the debiased cohort holds the injected version; the design re-injects
                hu = hu + 50.0
                painted[v.id] = hu
            nods = [{"center_vox": [8, 8, 8], "diameter_mm": 6.0 + len(painted), "diameter_vox": 3.0},
                    {"center_vox": [4, 8, 8], "diameter_mm": 30.0, "action": "erased"}] if v.role == "native" else []
            deb.write(v.id, hu, (2.0, 2.0, 2.0), label=label, source="phantom", domain=v.domain, split=v.split,
                      nodules=nods, has_nodule=has, source_id=v.id, debias_action=action[v.role], shortfall=0)
    got = load_real_cohort(cfg, progress=False)
    assert {v.id: v.role for v in got.volumes} == {v.id: v.role for v in real.volumes}
    by_id = {v.id: v for v in got.volumes}
    for rid in painted:
        assert np.array_equal(by_id[rid].hu, next(v.hu for v in real.volumes if v.id == rid))   # the clean scan
    # streamed (references, items made on demand) gives the in-memory items bit for bit, roles and sizes included
    streamed = load_real_cohort(cfg, progress=False, stream=True)
    assert all(v.hu is None for v in streamed.volumes)
    a, b = (build_cell_data(r, None, 4.0, 0, SphereInjector(), cfg) for r in (got, streamed))
    for split in ("train", "val", "test"):
        da, db = getattr(a, split), getattr(b, split)
        assert da.ids == db.ids and list(da.labels) == list(db.labels)
        assert all(np.array_equal(da.unit[i], db.unit(i)) for i in range(len(da)))
    assert a.counts() == b.counts() and a.native_mm == b.native_mm
    path = run_grid(cfg, progress=False, injector=SphereInjector(), device="cpu", sizes=[4.0], regimes=["real"])
    d = read_jsonl(path)[0]["data"]
    assert d["real_source"].endswith("debiased")
    assert d["counts"]["val"] == {"native": 1, "injected": 1, "erased": 1, "clean": 1}
    assert d["voxel_mm"] == pytest.approx(2.0)   # the cohort's spacing, for the mm axis label (Fig B.3)
    # native positives carry the size of their largest kept nodule (an erased one does not count): size bins
    assert sorted(v.native_mm for v in got.volumes if v.role == "native") == [6.0, 7.0, 8.0]
    from ctsgan_lib.reporting.classifier import native_size_table
    rec = read_jsonl(path)[0]
    tp = rec["test_predictions"]
    assert [m for m, k in zip(tp["native_mm"], tp["kinds"]) if k == "native"] == [8.0]
    t = native_size_table([rec])
    assert list(t["native_diameter_mm"]) == ["5–10"] and t["n_native_scans"].iloc[0] == 1
    p_native = [p for p, k in zip(tp["p"], tp["kinds"]) if k == "native"][0]
    assert t["detected"].iloc[0] == float(p_native >= 0.5)


# ------------------------------------------------------------------------------------------------ intervals
def test_bootstrap_interval_on_constructed_examples():
    from ctsgan_lib.eval.classification import paired_bootstrap_difference, roc_auc

    y = np.array([0] * 10 + [1] * 10)
    wrong, right = np.where(y == 1, 0.2, 0.8), np.where(y == 1, 0.8, 0.2)
    # b always right, a always wrong: every resample gives +1 (accuracy and AUC alike); swapped: -1; same: 0
    for metric in ("accuracy", "auc"):
        r = paired_bootstrap_difference([(y, wrong, right)] * 3, metric, n_boot=300)
        assert (r["estimate"], r["low"], r["high"]) == (1.0, 1.0, 1.0)
        r = paired_bootstrap_difference([(y, right, wrong)], metric, n_boot=300)
        assert (r["estimate"], r["low"], r["high"]) == (-1.0, -1.0, -1.0)
        r = paired_bootstrap_difference([(y, right, right)], metric, n_boot=300)
        assert (r["estimate"], r["low"], r["high"]) == (0.0, 0.0, 0.0)
    # many scans, one seed: the percentile interval of a mean of paired differences approaches the normal one,
    # mean ± 1.96 sd / sqrt(n) (n = 4000: the two differ by far less than the 0.005 allowed)
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 2000)
    ca, cb = rng.random(4000) < 0.60, rng.random(4000) < 0.70     # which scans each model gets right
    pa, pb = np.where(ca == (y == 1), 0.9, 0.1), np.where(cb == (y == 1), 0.9, 0.1)
    d = cb.astype(float) - ca
    r = paired_bootstrap_difference([(y, pa, pb)], "accuracy", n_boot=4000, seed=1)
    half = 1.96 * d.std(ddof=1) / np.sqrt(len(d))
    assert r["estimate"] == pytest.approx(d.mean())
    assert r["low"] == pytest.approx(d.mean() - half, abs=0.005) and r["high"] == pytest.approx(d.mean() + half,
                                                                                             abs=0.005)
    # the estimate is the mean over seeds of the per-seed difference, AUC as roc_auc computes it
    p1, p2 = rng.random(20), rng.random(20)
    y20 = np.array([0, 1] * 10)
    r = paired_bootstrap_difference([(y20, p1, p2), (y20, p2, p1)], "auc", n_boot=10)
    assert r["estimate"] == pytest.approx(0.0, abs=1e-12)
    r = paired_bootstrap_difference([(y20, p1, p2)], "auc", n_boot=10)
    assert r["estimate"] == pytest.approx(roc_auc(y20, p2) - roc_auc(y20, p1))


def _records(effect_by_size: dict, n=40, seeds=(0, 1, 2)):
    """Grid lines whose stored predictions give pretrain_finetune an accuracy edge ``effect_by_size[size]``."""
    recs = []
    y = np.repeat([0, 1], n // 2)
    for size, edge in effect_by_size.items():
        for seed in seeds:
            rng = np.random.default_rng(seed)
            right = np.where(y == 1, 0.9, 0.1)
            wrong = 1 - right
            k = int(round(edge * n))
            real = np.where(np.arange(n) < n // 2, right, wrong) if k else right    # 50 % (or all) right
            ft = real.copy()
            ft[n // 2: n // 2 + k] = right[n // 2: n // 2 + k]                     # k more right
            perm = rng.permutation(n)
            for regime, p in (("real", real), ("pretrain_finetune", ft), ("synthetic", real)):
                recs.append({"kind": "grid", "regime": regime, "size_vox": size, "seed": seed,
                             "test_predictions": {"ids": [f"t{i}" for i in perm], "y": y[perm].tolist(),
                                                  "p": p[perm].tolist(), "kinds": ["clean"] * n}})
    return recs


def test_effect_table_and_ordering_say_only_what_the_intervals_support():
    from ctsgan_lib.reporting.classifier import effect_table, regime_ordering

    t = effect_table(_records({4.0: 0.0, 6.0: 0.25}), n_boot=500)
    ft = t[t.comparison == "pretrain_finetune − real"].set_index("size_vox")
    assert ft.loc[6.0, "accuracy_diff"] == pytest.approx(0.25)
    assert ft.loc[6.0, "accuracy_low"] > 0 and ft.loc[6.0, "supported"] == "pretrain_finetune > real"
    assert (ft.loc[4.0, "accuracy_low"], ft.loc[4.0, "accuracy_high"]) == (0.0, 0.0)
    assert ft.loc[4.0, "supported"] == "no difference shown" and "paired bootstrap" in ft.loc[4.0, "interval"]
    assert set(t.n_seeds) == {3} and set(t.n_test_scans) == {40}
    assert ft.loc[6.0, "auc_supported"] == "pretrain_finetune > real" and ft.loc[4.0, "auc_diff"] == 0.0
    text = regime_ordering(t)
    assert "pretrain_finetune > real at size 6" in text and "no difference shown at size 4" in text
    assert "pretrain_finetune > real at size 4" not in text


def test_smoke_figures_3b_3c_and_tables_carry_the_note(tmp_root):
    import matplotlib.pyplot as plt
    from ctsgan_lib.reporting import figures

    cfg = _pcfg(**{"classifier.sizes": "[4.0]", "classifier.epochs": 1, "classifier.real_fractions": "[0.5, 1.0]"})
    out = cfg.runs_dir / "classifier"
    real, syn = _paper_real({"train": 2, "val": 1, "test": 1}), _paper_syn()
    run_grid(cfg, out, progress=False, real=real, synthetic=syn, injector=SphereInjector(), device="cpu")
    run_scarcity(cfg, out, progress=False, real=real, synthetic=syn, injector=SphereInjector(), device="cpu")
    dest = tmp_root / "figs"
    dest.mkdir()
    paths = figures.fig3b_accuracy_vs_size(cfg, dest) + figures.fig3c_data_scarcity(cfg, dest)
    plt.close("all")
    names = {p.name for p in paths}
    assert {"fig3b_accuracy_vs_size.png", "fig3c_data_scarcity.png", "fig3c_data_scarcity.pdf", "fig3b_effects.md",
            "fig3b_by_kind.md", "fig3b_design.md", "fig3b_table.md", "fig3c_table.md"} <= names
    for p in paths:
        if p.suffix == ".md":
            assert "NOT comparable to the paper" in p.read_text(), p.name
    from PIL import Image
    assert "NOT comparable" in Image.open(dest / "fig3c_data_scarcity.png").info["Description"]
    design = (dest / "fig3b_design.csv").read_text()
    assert "train,2,2,2,2,4,4,True" in design.replace(".0", "")


def test_synthetic_cohort_on_disk_gives_its_injected_half_regenerated_clean(tmp_root):
    """The stored cohort's injected half is made again nodule-free by the checkpoint it records; the untouched half is
    read from disk; the set is exactly those two halves."""
    import torch
    from ctsgan_lib.data.cohort import CohortWriter
    from ctsgan_lib.experiments import load_synthetic_cohort
    from ctsgan_lib.models.ctsgan import build_ctsgan
    from ctsgan_lib.synthesis import GeneratorSource, plan_volumes
    from ctsgan_lib.utils.atomic import file_sha256
    from ctsgan_lib.utils.checkpoint import save_checkpoint

    cfg = _pcfg(**{"data.size": S, "classifier.n_synthetic": 4})
    torch.manual_seed(0)
    gen = build_ctsgan(S, cfg.ctsgan)["generator"]
    ck = cfg.runs_dir / "ctsgan" / "ckpt_000001.pt"
    save_checkpoint(ck, kind="ctsgan", step=1, config=cfg.to_dict(), models={"rv": gen.rv, "gslice": gen.gslice},
                    extra={"spacing_mm": (6.0, 6.0, 6.0)})
    n, seed = 8, 3
    src = GeneratorSource(ck, n, seed, 2, 0.5)
    plans = plan_volumes(n, seed, 0.5)
    settings = {"checkpoint_sha256": file_sha256(ck), "n": n, "seed": seed, "batch": 2, "inject_fraction": 0.5}
    root = cfg.data_dir / "synthetic" / "ctsgan"
    first_injected = next(p.index for p in plans if p.inject)
    with CohortWriter(root, compress=True, settings=settings) as w:
        for p in plans:
            rid = f"syn-{p.index:06d}"
            hu, _ = src.read(rid)
            # +300 HU marks "injected as stored"; the first planned one failed generate's lung check (not injected)
            done = p.inject and p.index != first_injected
            w.write(rid, hu + (300.0 if done else 0.0), (6.0, 6.0, 6.0), source="ctsgan", domain="synthetic",
                    split="train", nodules=[], has_nodule=int(done))
    got = load_synthetic_cohort(cfg, progress=False, stream=False)
    injected = [f"syn-{p.index:06d}" for p in plans if p.inject][:2]
    clean = [f"syn-{p.index:06d}" for p in plans if not p.inject][:2]
    assert [(v.id, v.role) for v in got.volumes] == [(i, "injected") for i in injected] + [(i, "clean") for i in clean]
    assert got.notes == {"stored_without_nodules": 1}   # still in the injected half, and said so
    for v in got.volumes:
        expect, _ = src.read(v.id)   # regenerated clean anatomy, never the stored injected version
        assert np.array_equal(v.hu, np.rint(expect).astype(np.int16)), v.id
    data = build_cell_data(_paper_real(), got, 4.0, 0, SphereInjector(), cfg)
    assert data.counts()["synthetic"] == {"native": 0, "injected": 2, "erased": 0, "clean": 2}
    streamed = load_synthetic_cohort(cfg, progress=False, stream=True)
    assert all(v.hu is None for v in streamed.volumes) and [v.role for v in streamed.volumes] == [v.role for v in
                                                                                                  got.volumes]
    ck.write_bytes(b"other")   # the recorded checkpoint is gone: a one-line error naming the folder
    from ctsgan_lib.errors import MissingInputError
    with pytest.raises(MissingInputError, match="SHA-256"):
        load_synthetic_cohort(cfg, progress=False)
