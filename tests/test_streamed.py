"""Streamed classifier data (issue 22): the streamed cell dataset yields exactly the in-memory items, and a grid cell
reaches exactly the same results either way (same machine: bit-identity is the contract here)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from ctsgan_lib.config import ConfigError
from ctsgan_lib.experiments import (StreamedPairedDataset, build_cell_data, cell_key, load_real_base,
                                    load_synthetic_base, run_grid, should_stream)
from ctsgan_lib.train.classifier_loop import ClassifierDataset
from ctsgan_lib.utils.logs import read_jsonl
from test_classifier import S, SphereInjector, _bases, _cfg, _syn, _write_cohort


class PickyInjector(SphereInjector):
    """Refuses (no nodule placed) when the lung is small, so the drop-with-twin path is exercised too."""

    def inject(self, hu, diameters_vox, rng, lung=None):
        if lung is not None and lung.sum() < 300:
            return np.array(hu, dtype=np.float32), []
        return super().inject(hu, diameters_vox, rng, lung)


def _cohorts(cfg):
    real = _bases((6, 3, 3))
    small = real.volumes[2]
    small.lung = np.zeros_like(small.lung)
    small.lung[4:9, 4:9, 3:6] = True                      # 75 voxels: a lung, but too small for PickyInjector
    _write_cohort(cfg.data_dir / "debiased", real, with_labels=True)
    _write_cohort(cfg.data_dir / "synthetic" / "ctsgan", _syn(4), with_labels=True)


def _items(ds):
    return [(x.numpy(), y) for x, y in (ds[i] for i in range(len(ds)))]


def _same(a, b):
    assert a.ids == b.ids and np.array_equal(a.labels, b.labels)
    for (xa, ya), (xb, yb) in zip(_items(a), _items(b)):
        assert ya == yb and xa.dtype == xb.dtype == np.float32 and np.array_equal(xa, xb)


def test_streamed_items_equal_in_memory_items(tmp_root):
    cfg = _cfg(**{"data.size": S, "classifier.n_synthetic": 8})
    _cohorts(cfg)
    mem_real, str_real = load_real_base(cfg, progress=False, stream=False), load_real_base(cfg, progress=False,
                                                                                          stream=True)
    assert all(v.hu is not None for v in mem_real.volumes) and all(v.hu is None for v in str_real.volumes)
    assert [v.lung_fallback for v in mem_real.volumes] == [v.lung_fallback for v in str_real.volumes]
    mem_syn = load_synthetic_base(cfg, progress=False, stream=False)
    str_syn = load_synthetic_base(cfg, progress=False, stream=True)
    for d, seed in ((4.0, 0), (6.0, 3)):
        a = build_cell_data(mem_real, mem_syn, d, seed, PickyInjector(), cfg)
        b = build_cell_data(str_real, str_syn, d, seed, PickyInjector(), cfg)
        assert a.dropped == b.dropped and a.dropped["train"] == 1    # the small-lung base went, with its twin
        for name in ("train", "val", "test", "synthetic"):
            ma, sb = getattr(a, name), getattr(b, name)
            assert isinstance(ma, ClassifierDataset) and isinstance(sb, StreamedPairedDataset) and sb.nbytes == 0
            _same(ma, sb)


def test_streamed_items_are_the_same_in_loader_workers(tmp_root):
    cfg = _cfg(**{"data.size": S, "classifier.loader_workers": 2})
    _cohorts(cfg)
    data = build_cell_data(load_real_base(cfg, progress=False, stream=True), None, 4.0, 1, SphereInjector(), cfg)
    assert data.train.loader_workers == 2
    direct = torch.stack([data.train[i][0] for i in range(len(data.train))])
    loaded = torch.cat([x for x, _ in DataLoader(data.train, batch_size=3, num_workers=2)])
    assert torch.equal(direct, loaded)


def test_a_cell_reaches_the_same_results_streamed_or_in_memory(tmp_root):
    """The whole cell (three regimes, with pretraining) gives identical metrics and model selection either way."""
    cfg = _cfg(**{"data.size": S, "classifier.n_synthetic": 8, "classifier.epochs": 2,
                  "classifier.finetune_epochs": 1})
    _cohorts(cfg)
    recs = {}
    for name, threshold, workers in (("memory", 100.0, 0), ("streamed", 0.0, 2)):
        c = cfg.replace(**{"classifier.stream_threshold_gib": threshold, "classifier.loader_workers": workers})
        path = run_grid(c, tmp_root / name, progress=False, injector=SphereInjector(), device="cpu", sizes=[4.0])
        recs[name] = {r["regime"]: r for r in read_jsonl(path)}
        assert cell_key(c) == cell_key(cfg)          # the data path is not part of a cell's identity
    assert set(recs["memory"]) == {"real", "synthetic", "pretrain_finetune"}
    for regime, r in recs["memory"].items():
        s = recs["streamed"][regime]
        assert r["metrics"] == s["metrics"] and r["selection"] == s["selection"]
        assert {k: v for k, v in r["data"].items() if k != "build_s"} == \
               {k: v for k, v in s["data"].items() if k != "build_s"}


def test_one_rule_decides_by_size(tmp_root):
    cfg = _cfg(**{"data.size": S})
    _cohorts(cfg)
    per_base = S ** 3 * 7                                       # int16 + mask + two float16 twins
    assert not should_stream(cfg.replace(**{"classifier.stream_threshold_gib": 12 * per_base / 2 ** 30}), 12)
    assert should_stream(cfg.replace(**{"classifier.stream_threshold_gib": 11 * per_base / 2 ** 30}), 12)
    assert should_stream(cfg.replace(**{"classifier.stream_threshold_gib": 0.0}), 1)
    small = load_real_base(cfg.replace(**{"classifier.stream_threshold_gib": 11 * per_base / 2 ** 30}),
                           progress=False)
    assert all(v.hu is None and v.root for v in small.volumes)   # 12 bases: over the limit, streamed
    assert all(v.hu is not None for v in load_real_base(cfg, progress=False).volumes)   # default 8 GiB: in memory
    with pytest.raises(ConfigError, match="classifier.stream_threshold_gib"):
        cfg.replace(**{"classifier.stream_threshold_gib": -1})
    with pytest.raises(ConfigError, match="classifier.loader_workers"):
        cfg.replace(**{"classifier.loader_workers": -1})


def test_synthetic_regime_from_the_generator_equals_the_stored_cohort(tmp_root):
    """classifier.synthetic_source=generator: the same volumes as the stored cohort, nothing read from disk."""
    from ctsgan_lib.models.ctsgan import build_ctsgan
    from ctsgan_lib.synthesis import generate_cohort
    from ctsgan_lib.utils.checkpoint import save_checkpoint

    cfg = _cfg(**{"data.size": S, "classifier.n_synthetic": 8, "generate.n_volumes": 10, "generate.batch": 2,
                  "generate.inject_fraction": 0.0, "classifier.sizes": "[4.0]"})
    _cohorts(cfg)
    torch.manual_seed(0)
    gen = build_ctsgan(S, cfg.ctsgan)["generator"]
    ck = cfg.runs_dir / "ctsgan" / "ckpt_000001.pt"
    save_checkpoint(ck, kind="ctsgan", step=1, config=cfg.to_dict(), models={"rv": gen.rv, "gslice": gen.gslice},
                    extra={"spacing_mm": (6.0, 6.0, 6.0)})
    g = cfg.generate
    generate_cohort(ck, g.n_volumes, g.seed, cfg.data_dir / "synthetic" / "ctsgan", inject_fraction=0.0,
                    batch=g.batch, progress=False)
    disk = load_synthetic_base(cfg, progress=False, stream=False)
    stream_cfg = cfg.replace(**{"classifier.synthetic_source": "generator"})
    made = load_synthetic_base(stream_cfg, progress=False)
    assert [v.id for v in disk.volumes] == [v.id for v in made.volumes] == [f"syn-{i:06d}" for i in range(4)]
    assert all(v.maker is not None and v.hu is None for v in made.volumes)
    assert [v.lung_fallback for v in disk.volumes] == [v.lung_fallback for v in made.volumes]
    real = load_real_base(cfg, progress=False)
    a = build_cell_data(real, disk, 4.0, 0, SphereInjector(), cfg)
    b = build_cell_data(real, made, 4.0, 0, SphereInjector(), stream_cfg)
    _same(a.synthetic, b.synthetic)
    recs = {}
    for name, c in (("disk", cfg), ("generator", stream_cfg)):
        path = run_grid(c, tmp_root / name, progress=False, injector=SphereInjector(), device="cpu",
                        regimes=["synthetic", "pretrain_finetune"])
        recs[name] = {r["regime"]: r for r in read_jsonl(path)}
    for regime in ("synthetic", "pretrain_finetune"):
        r, s = recs["disk"][regime], recs["generator"][regime]
        assert r["metrics"] == s["metrics"] and r["selection"] == s["selection"]
        assert s["data"]["synthetic_source"].startswith("generator:") and s["data"]["n_synthetic"] == 8


def test_shortcut_control_streamed_equals_in_memory(tmp_root):
    from ctsgan_lib.experiments import run_shortcut_control
    from test_classifier import _bases as bases

    cfg = _cfg(**{"data.size": S, "classifier.epochs": 1})
    _write_cohort(cfg.data_dir / "debiased", bases((8, 4, 4)), with_labels=True)
    out = {}
    for name, stream in (("memory", False), ("streamed", True)):
        real = load_real_base(cfg, progress=False, stream=stream)
        path = run_shortcut_control(cfg, tmp_root / name, progress=False, real=real, injector=SphereInjector(),
                                    device="cpu")
        out[name] = {r["train_cohort"]: r["metrics"] for r in read_jsonl(path)}
    assert out["memory"] == out["streamed"] and set(out["memory"]) == {"biased", "debiased"}
