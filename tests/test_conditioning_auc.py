"""Conditioning AUC (issue 26): about 0.5 for a generator that ignores the condition, high for one that draws the
requested nodule; the measured blob size follows the requested size; the detector and training-set helpers."""
from __future__ import annotations

from dataclasses import asdict

import numpy as np
import pytest
import torch

from ctsgan_lib.config import load_profile
from ctsgan_lib.errors import MissingInputError
from ctsgan_lib.eval.classification import roc_auc
from ctsgan_lib.eval.conditioning import (auc_interval, conditioning_auc, largest_blob_diameter_vox,
                                          size_agreement)
from ctsgan_lib.models.ctsgan_cond import build_ctsgan_cond
from ctsgan_lib.models.squeezenet3d import SqueezeNet3D
from ctsgan_lib.reporting.conditional import (conditioning_table, figC1_conditional_views, figC2_conditioning_auc,
                                              write_conditioning)
from ctsgan_lib.synthesis.conditional import (conditional_training_set, detector_scorer, generator_maker,
                                              load_detector, measure_conditioning, real_only_detector)
from ctsgan_lib.train.classifier_loop import ClassifierDataset, predict
from ctsgan_lib.utils.checkpoint import save_checkpoint

from test_ctsgan_train import TINY, _volumes

SIZE = 32
LUNG_CENTRE = (SIZE // 2, SIZE // 2, int(SIZE * 0.68))   # inside the right lung of the toy volumes


def _sphere(d: float) -> np.ndarray:
    z, y, x = np.mgrid[:SIZE, :SIZE, :SIZE]
    c = LUNG_CENTRE
    return (z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2 <= (d / 2) ** 2


def painting_maker(n_nodules, diameter_vox, start, n):
    """A constructed 'generator' that obeys the condition: toy CT, plus a solid nodule when asked for one."""
    vols = _volumes(n, SIZE, seed=1000 + start)
    if n_nodules:
        for v in vols:
            v[_sphere(diameter_vox)] = 40.0
    return list(vols)


def lung_max_scorer(vols):
    """A simple detector: the densest voxel inside the lung region (high when a solid nodule sits there)."""
    z, y, x = np.mgrid[:SIZE, :SIZE, :SIZE] / SIZE - 0.5
    lungs = (((x - 0.18) / 0.12) ** 2 + (y / 0.25) ** 2 < 1) | (((x + 0.18) / 0.12) ** 2 + (y / 0.25) ** 2 < 1)
    return np.array([float(v[lungs].max()) for v in vols])


def _ignoring_generator():
    """A conditional generator whose condition encoder outputs zero: it ignores the condition."""
    cfg = load_profile("smoke", **TINY)
    torch.manual_seed(0)
    gen = build_ctsgan_cond(SIZE, cfg.ctsgan)["generator"].eval()
    with torch.no_grad():
        gen.gcond.net[-1].weight.zero_()
        gen.gcond.net[-1].bias.zero_()
    return gen


def test_conditioning_auc_and_its_interval():
    r = conditioning_auc([0.9, 0.8, 0.7], [0.1, 0.2, 0.3], n_boot=200)
    assert r["auc"] == 1.0 and r["ci_low"] == 1.0 and r["n_with"] == 3
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=400), rng.normal(size=400)
    r = conditioning_auc(a, b, n_boot=300)
    assert r["ci_low"] < 0.5 < r["ci_high"] and abs(r["auc"] - 0.5) < 0.06
    y, s = np.r_[np.ones(50), np.zeros(50)], np.r_[rng.normal(1, 1, 50), rng.normal(0, 1, 50)]
    lo, hi = auc_interval(y, s, n_boot=400)
    assert lo < roc_auc(y, s) < hi and 0.05 < hi - lo < 0.4   # binormal d'=1: AUC 0.76, SE ≈ 0.05 at 50 + 50


def test_blob_size_follows_the_requested_diameter():
    base = _volumes(1, SIZE, seed=3)[0]
    for d in (3.0, 4.0, 5.0, 6.0):   # the toy lung is 7-8 voxels wide
        v = base.copy()
        v[_sphere(d)] = 40.0
        assert largest_blob_diameter_vox(v) == pytest.approx(d, abs=1.0)
    assert largest_blob_diameter_vox(base) < 2.0
    s = size_agreement(6.0, [5.5, 6.5, 6.0], [0.0, 1.0])
    assert s["measured_median_vox"] == 6.0 and s["median_abs_error_vox"] == 0.5 and s["baseline_median_vox"] == 0.5


def test_constructed_generator_that_obeys_the_condition_gives_a_high_auc():
    recs = measure_conditioning(painting_maker, lambda d: lung_max_scorer, [4.0, 6.0], n_per_group=12, n_boot=200)
    assert [r["diameter_vox"] for r in recs] == [4.0, 6.0]
    for r in recs:
        assert r["auc"] > 0.95 and r["ci_low"] > 0.8
        assert r["size"]["measured_median_vox"] == pytest.approx(r["diameter_vox"], abs=1.0)
        assert r["size"]["baseline_median_vox"] < 2.0


def test_generator_that_ignores_the_condition_gives_about_one_half():
    gen = _ignoring_generator()
    make = generator_maker(gen, seed=0, batch=8)
    a, b = make(0, 0.0, 0, 3), make(2, 6.0, 0, 3)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))           # it does ignore the condition
    recs = measure_conditioning(make, lambda d: lambda vols: np.array([float(np.mean(v)) for v in vols]),
                                [6.0], n_per_group=30, n_boot=300)
    r = recs[0]
    assert r["ci_low"] < 0.5 < r["ci_high"] and abs(r["auc"] - 0.5) < 0.2


def test_untrained_conditional_generator_does_not_ignore_the_condition():
    """A freshly initialised conditional generator's output moves with the condition (so "ignored" in the test
    above is the zeroed encoder, not just a lack of training)."""
    cfg = load_profile("smoke", **TINY)
    torch.manual_seed(0)
    make = generator_maker(build_ctsgan_cond(SIZE, cfg.ctsgan)["generator"].eval(), seed=0)
    a, b = make(0, 0.0, 0, 2), make(2, 6.0, 0, 2)
    assert all(np.abs(x - y).max() > 0.1 for x, y in zip(a, b))


def test_detector_helpers(tmp_path):
    cfg = load_profile("smoke")
    torch.manual_seed(0)
    model = SqueezeNet3D(in_channels=1, num_classes=2, dropout=cfg.classifier.dropout,
                         head_init=cfg.classifier.head_init, stem_stride=tuple(cfg.classifier.stem_stride))
    with pytest.raises(MissingInputError, match="06_nodule_detection"):
        real_only_detector(cfg, 5.0, 0, root=tmp_path / "classifier")
    final = tmp_path / "classifier" / "cells" / "abc-def" / "real_d5_s0" / "final.pt"
    final.parent.mkdir(parents=True)
    save_checkpoint(final, kind="classifier", step=1, config=asdict(cfg.classifier), models={"model": model})
    assert real_only_detector(cfg, 5.0, 0, root=tmp_path / "classifier") == final
    loaded = load_detector(final)
    vols = painting_maker(1, 6.0, 0, 3)
    got = detector_scorer(loaded, cfg.data.hu_min, cfg.data.hu_max)(vols)
    want = predict(model, ClassifierDataset.from_hu(vols, [1, 1, 1], hu_min=cfg.data.hu_min,
                                                    hu_max=cfg.data.hu_max), "cpu")[0]
    assert got.shape == (3,) and np.array_equal(got, want)


def test_conditional_training_set_is_paired_by_condition():
    cfg = load_profile("smoke", **TINY)
    torch.manual_seed(0)
    gen = build_ctsgan_cond(SIZE, cfg.ctsgan)["generator"].eval()
    ds = conditional_training_set(cfg, gen, 5.0, seed=3, n=3)
    assert len(ds) == 6 and ds.labels.tolist() == [0, 1] * 3 and ds.dropped_ids == []
    assert ds.ids[:2] == ["cond-000000", "cond-000000+nod"]
    ref = ClassifierDataset.from_hu(generator_maker(gen, 3)(1, 5.0, 0, 3), [1] * 3, hu_min=cfg.data.hu_min,
                                    hu_max=cfg.data.hu_max)
    assert all(np.array_equal(ds.unit[2 * i + 1], ref.unit[i]) for i in range(3))
    x, y = ds[1]
    assert x.shape == (1, SIZE, SIZE, SIZE) and y == 1


def test_report_table_figures_and_json(tmp_root):
    recs = measure_conditioning(painting_maker, lambda d: lung_max_scorer, [3.0, 5.0], n_per_group=4, n_boot=50)
    t = conditioning_table(recs)
    assert t["requested diameter (vox)"].tolist() == [3.0, 5.0] and (t["AUC"] == [r["auc"] for r in recs]).all()
    out = tmp_root / "figures" / "smoke"
    paths = figC2_conditioning_auc(recs, out, "smoke", "toy", 0)
    paths += figC1_conditional_views({"no nodules": painting_maker(0, 0, 0, 1)[0],
                                      "1 nodule, 5 vox": painting_maker(1, 5.0, 0, 1)[0]}, out, "smoke", "toy", 0)
    assert sorted(p.name for p in paths) == ["figC1_conditional_views.pdf", "figC1_conditional_views.png",
                                             "figC2_conditioning_auc.pdf", "figC2_conditioning_auc.png"]
    assert all(p.stat().st_size > 0 for p in paths)
    j = write_conditioning(recs, tmp_root / "runs" / "c.json", checkpoint=tmp_root / "runs" / "x.pt",
                           detectors={"3.0": tmp_root / "runs" / "d.pt"})
    text = j.read_text()
    assert str(tmp_root) not in text and '"runs/x.pt"' in text and '"runs/d.pt"' in text
