"""Classifier: metrics vs scikit-learn, the training loop (learns, selects, resumes), the grid and the shortcut control.

The grid tests use in-memory nodule-free bases and a sphere-painting injector (a test double with the injector's
``inject(hu, diameters_vox, rng, lung=None)`` interface), so they exercise the runner without the nodule GANs. Reading
the cohorts from disk is covered by ``test_grid_reads_cohorts_from_disk``; the trained injector checkpoint is used for
real by notebook 06 (nbval, after notebook 02).
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, balanced_accuracy_score, confusion_matrix, roc_auc_score

from ctsgan_lib.config import load_profile
from ctsgan_lib.errors import CTSGANError
from ctsgan_lib.eval.classification import balanced_indices, binary_metrics, check_classes, roc_auc
from ctsgan_lib.experiments import (BaseSet, BaseVolume, build_cell_data, current_records, run_grid,
                                    run_shortcut_control)
from ctsgan_lib.models.squeezenet3d import SqueezeNet3D
from ctsgan_lib.reporting.classifier import grid_table, regime_ordering, shortcut_table
from ctsgan_lib.train.classifier_loop import ClassifierDataset, evaluate, train_classifier
from ctsgan_lib.utils.logs import read_jsonl

S = 16  # tiny volumes keep the CPU budget (SqueezeNet works at any S)



# ------------------------------------------------------------------------------------------------ metrics
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 57)
    p = np.clip(0.3 * y + rng.random(57) * 0.7, 0, 1)
    p[:10] = np.round(p[:10], 1)  # ties
    m = binary_metrics(y, p)
    pred = (p >= 0.5).astype(int)
    tn, fp, fn, tp = confusion_matrix(y, pred, labels=[0, 1]).ravel()
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert m["auc"] == pytest.approx(roc_auc_score(y, p))
    assert m["sensitivity"] == pytest.approx(tp / (tp + fn))
    assert m["specificity"] == pytest.approx(tn / (tn + fp))
    assert (m["tp"], m["tn"], m["fp"], m["fn"]) == (tp, tn, fp, fn)


def test_auc_edge_cases():
    assert roc_auc([0, 1], [0.2, 0.9]) == 1.0
    assert roc_auc([0, 1], [0.9, 0.2]) == 0.0
    assert roc_auc([0, 0, 1, 1], [0.5] * 4) == 0.5
    assert np.isnan(roc_auc([1, 1], [0.2, 0.3]))


def test_empty_class_and_unbalanceable_errors():
    with pytest.raises(CTSGANError, match="split 'val'.*no nodule-bearing"):
        check_classes([0, 0, 0], "cohort: split 'val'")
    with pytest.raises(CTSGANError, match="no nodule-free"):
        check_classes([1, 1], "cohort: split 'train'")
    with pytest.raises(CTSGANError, match="cannot be balanced"):
        balanced_indices([1, 1, 1], np.random.default_rng(0), "cohort: split 'test'")
    keep = balanced_indices([1, 1, 1, 0, 0, 1, 1], np.random.default_rng(0), "t")
    y = np.array([1, 1, 1, 0, 0, 1, 1])[keep]
    assert (y == 1).sum() == (y == 0).sum() == 2


# ------------------------------------------------------------------------------------------------ fixtures
def _base(rid: str, domain: str, split: str, seed: int) -> BaseVolume:
    """A crude chest: body at 0 HU, two lungs at -800 HU, domain-dependent noise (the 'scanner')."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[:S, :S, :S]
    hu = np.full((S, S, S), -1000.0)
    body = ((y - S / 2) / (0.45 * S)) ** 2 + ((x - S / 2) / (0.48 * S)) ** 2 <= 1
    hu[body] = 20.0
    lung = body & (np.abs(x - S / 2) > 1.5) & (((y - S / 2) / (0.35 * S)) ** 2 +
                                               ((np.abs(x - S / 2) - 0.24 * S) / (0.2 * S)) ** 2 <= 1)
    hu[lung] = -800.0
    noise = 25.0 if domain == "lidc-like" else 90.0
    hu = hu + rng.normal(0, noise, hu.shape)
    return BaseVolume(rid, np.rint(hu).astype(np.int16), domain, split, "phantom", lung)


class SphereInjector:
    """Test double for the nodule injector: paints solid spheres (+40 HU) at seeded lung positions."""

    def inject(self, hu, diameters_vox, rng, lung=None):
        out = np.array(hu, dtype=np.float32, copy=True)
        cand = np.argwhere(lung) if lung is not None else np.argwhere(np.ones_like(out, bool))
        z, y, x = np.mgrid[:out.shape[0], :out.shape[1], :out.shape[2]]
        nods = []
        for d in diameters_vox:
            c = cand[rng.integers(len(cand))]
            ball = (z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2 <= (d / 2) ** 2
            out[ball] = 40.0
            nods.append({"center_vox": [int(v) for v in c], "diameter_vox": float(d), "action": "injected"})
        return out, nods


def _bases(n_per_split=(6, 2, 2)) -> BaseSet:
    vols, k = [], 0
    for split, n in zip(("train", "val", "test"), n_per_split):
        for i in range(n):
            dom = "lidc-like" if i % 2 else "nlst-like"
            vols.append(_base(f"p{k:03d}", dom, split, k))
            k += 1
    return BaseSet(vols, "memory:test-real", ["phantom"])


def _syn(n=4) -> BaseSet:
    return BaseSet([_base(f"s{i:03d}", "synthetic", "train", 100 + i) for i in range(n)], "memory:test-syn",
                   ["ctsgan"])


def _cfg(**over):
    base = {"classifier.design": "paired", "classifier.epochs": 2, "classifier.finetune_epochs": 1, "classifier.batch": 4,
            "classifier.sizes": "[4.0, 6.0]", "classifier.seeds": "[0]", "classifier.max_nodules": 2}
    base.update(over)
    return load_profile("smoke", **base)


def test_real_train_cap_takes_the_first_bases_and_leaves_val_test_alone():
    cfg = _cfg(**{"classifier.n_real_train": 3})
    data = build_cell_data(_bases((8, 4, 4)), None, 6.0, 0, SphereInjector(), cfg)
    assert len(data.train) == 6 and data.train.labels.sum() == 3   # 3 bases, each clean and injected
    assert len(data.val) == 8
    full = build_cell_data(_bases((8, 4, 4)), None, 6.0, 0, SphereInjector(), _cfg())
    assert data.train.ids == full.train.ids[:6]


# ------------------------------------------------------------------------------------------------ training loop
def test_training_learns_and_resumes(tmp_root):
    cfg = _cfg(**{"classifier.lr": 1e-3, "classifier.patience": 10})
    data = build_cell_data(_bases((8, 4, 4)), None, 6.0, 0, SphereInjector(), cfg)
    assert len(data.train) == 16 and data.train.labels.sum() == 8 and data.train.unit[0].dtype == np.float16
    assert 0.0 <= min(u.min() for u in data.train.unit) and max(u.max() for u in data.train.unit) <= 1.0
    torch.manual_seed(0)
    model = SqueezeNet3D(1, 2)
    out = tmp_root / "cls"
    r = train_classifier(model, data.train, data.val, cfg, out, seed=0, epochs=6, progress=False)
    losses = [h["train_loss"] for h in r["history"]]
    assert losses[-1] < losses[0], losses          # the loss moves down
    assert (out / "final.pt").is_file() and not list(out.glob("ckpt_*.pt"))
    assert 1 <= r["best_epoch"] <= 6
    assert r["best_val_loss"] == pytest.approx(min(h["val_loss"] for h in r["history"]))
    # the model holds the selected weights: its val loss is the best one
    assert evaluate(model, data.val, "cpu")["loss"] == pytest.approx(r["best_val_loss"], rel=1e-4)
    # resume from final: nothing retrains, same weights
    m2 = SqueezeNet3D(1, 2)
    r2 = train_classifier(m2, data.train, data.val, cfg, out, seed=0, epochs=6, progress=False)
    assert r2["resumed"] == "final" and r2["best_epoch"] == r["best_epoch"]
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), m2.state_dict().values()))


@pytest.mark.portable
def test_interrupted_training_resumes_exactly(tmp_root, monkeypatch):
    import ctsgan_lib.train.classifier_loop as loop

    cfg = _cfg(**{"classifier.patience": 10})
    data = build_cell_data(_bases((4, 2, 2)), None, 6.0, 0, SphereInjector(), cfg)
    torch.manual_seed(1)
    full = SqueezeNet3D(1, 2)
    init = {k: v.clone() for k, v in full.state_dict().items()}
    r_full = train_classifier(full, data.train, data.val, cfg, tmp_root / "a", seed=3, epochs=3, progress=False)

    # a run killed after its epoch-2 checkpoint, before final.pt
    real_save = loop.save_checkpoint

    def dying_save(path, **kw):
        if str(path).endswith("final.pt"):
            raise KeyboardInterrupt
        return real_save(path, **kw)

    part = SqueezeNet3D(1, 2)
    part.load_state_dict(init)
    monkeypatch.setattr(loop, "save_checkpoint", dying_save)
    with pytest.raises(KeyboardInterrupt):
        train_classifier(part, data.train, data.val, cfg, tmp_root / "b", seed=3, epochs=2, progress=False)
    monkeypatch.setattr(loop, "save_checkpoint", real_save)
    assert [p.name for p in (tmp_root / "b").glob("ckpt_*.pt")] == ["ckpt_000002.pt"]

    resumed = SqueezeNet3D(1, 2)  # other init: everything must come from the checkpoint
    r_res = train_classifier(resumed, data.train, data.val, cfg, tmp_root / "b", seed=3, epochs=3, progress=False)
    assert r_res["resumed"] == "ckpt_000002.pt"
    assert [h["train_loss"] for h in r_res["history"]] == pytest.approx([h["train_loss"] for h in r_full["history"]],
                                                                        rel=1e-5)
    assert r_res["best_epoch"] == r_full["best_epoch"]
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6)
    log = (tmp_root / "b" / "log.csv").read_text().splitlines()
    assert len(log) == 1 + 3  # header + one row per epoch, no duplicate rows after resume


# ------------------------------------------------------------------------------------------------ grid
def test_grid_runs_resumes_and_reports(tmp_root):
    cfg = _cfg()
    out = tmp_root / "runs" / "smoke" / "classifier"
    real, syn, inj = _bases((4, 2, 2)), _syn(3), SphereInjector()
    path = run_grid(cfg, out, progress=False, real=real, synthetic=syn, injector=inj, device="cpu")
    recs = read_jsonl(path)
    assert len(recs) == 2 * 1 * 3
    assert {(r["regime"], r["size_vox"]) for r in recs} == {(g, d) for g in ("real", "synthetic",
                                                                             "pretrain_finetune") for d in (4.0, 6.0)}
    r0 = recs[0]
    assert r0["profile"] == "smoke" and r0["config"]["classifier"]["epochs"] == 2
    assert r0["data"]["n_test"] == 4 and r0["data"]["test_positives"] == 2 and r0["data"]["n_synthetic"] == 6
    assert "cpu" in r0["hardware_label"] and set(r0["metrics"]) >= {"accuracy", "balanced_accuracy", "auc",
                                                                     "sensitivity", "specificity"}
    ft = [r for r in recs if r["regime"] == "pretrain_finetune"][0]
    assert ft["selection"]["epochs_run"] <= cfg.classifier.finetune_epochs
    # finished cells are skipped: a rerun appends nothing and trains nothing
    mtime = path.stat().st_mtime_ns
    run_grid(cfg, out, progress=False, real=real, synthetic=syn, injector=inj, device="cpu")
    assert len(read_jsonl(path)) == 6 and path.stat().st_mtime_ns == mtime
    # one more seed: only the new cells run
    run_grid(cfg, out, progress=False, real=real, synthetic=syn, injector=inj, device="cpu", seeds=[1],
             sizes=[6.0], regimes=["real"])
    assert len(read_jsonl(path)) == 7
    table = grid_table(read_jsonl(path))
    row = table[(table.regime == "real") & (table.size_vox == 6.0)].iloc[0]
    assert row.n_seeds == 2 and row.seeds == "0,1"
    accs = [r["metrics"]["accuracy"] for r in read_jsonl(path) if r["regime"] == "real" and r["size_vox"] == 6.0]
    assert row.accuracy_mean == pytest.approx(np.mean(accs)) and row.accuracy_std == pytest.approx(np.std(accs))
    assert regime_ordering(table) == "no intervals: no ordering is claimed"   # means alone are never ranked
    # other inputs (here: another injector) are other cells: they rerun, and the newest line per cell is reported
    class OtherInjector(SphereInjector):
        pass

    run_grid(cfg, out, progress=False, real=real, synthetic=syn, injector=OtherInjector(), device="cpu",
             sizes=[4.0], regimes=["real"])
    lines = read_jsonl(path)
    assert len(lines) == 8 and lines[-1]["data_key"] != lines[0]["data_key"]
    cur = current_records(cfg, path)
    assert len(cur) == 7 and lines[-1] in cur and lines[0] not in cur


def test_seed_sets_nodule_placement_and_count():
    cfg = _cfg(**{"classifier.max_nodules": 3})
    real = _bases((2, 2, 2))
    a = build_cell_data(real, None, 4.0, 0, SphereInjector(), cfg)
    b = build_cell_data(real, None, 4.0, 0, SphereInjector(), cfg)
    c = build_cell_data(real, None, 4.0, 1, SphereInjector(), cfg)
    pos = [i for i, y in enumerate(a.train.labels) if y == 1]
    assert all(np.array_equal(a.train.unit[i], b.train.unit[i]) for i in pos)
    assert any(not np.array_equal(a.train.unit[i], c.train.unit[i]) for i in pos)
    neg = [i for i, y in enumerate(a.train.labels) if y == 0]
    assert all(np.array_equal(a.train.unit[i], c.train.unit[i]) for i in neg)  # clean bases untouched


def test_grid_errors_on_empty_split(tmp_root):
    cfg = _cfg()
    with pytest.raises(CTSGANError, match="split 'test'"):
        build_cell_data(_bases((2, 2, 0)), None, 4.0, 0, SphereInjector(), cfg)
    with pytest.raises(CTSGANError, match="unknown regime"):
        run_grid(cfg, tmp_root / "x", progress=False, real=_bases((2, 2, 2)), synthetic=_syn(2),
                 injector=SphereInjector(), regimes=["nope"])


def _write_cohort(root, bases: BaseSet, with_labels: bool) -> None:
    from ctsgan_lib.data.cohort import CohortWriter

    with CohortWriter(root, compress=True) as w:
        for v in bases.volumes:
            label = None
            if with_labels:
                label = np.where(v.lung, 3, 1).astype(np.uint8)
            w.write(v.id, v.hu.astype(np.float32), (2.0, 2.0, 2.0), label=label, source=v.source or "phantom",
                    domain=v.domain, split=v.split, nodules=[], has_nodule=0)


def test_grid_reads_cohorts_from_disk(tmp_root):
    """The default wiring: nodule-free bases come from data/<P>/debiased and data/<P>/synthetic/ctsgan on disk."""
    from ctsgan_lib.errors import MissingInputError
    from ctsgan_lib.experiments import load_injector, load_real_base

    cfg = _cfg(**{"data.size": S, "classifier.epochs": 1, "classifier.n_synthetic": 4})
    with pytest.raises(MissingInputError, match="02_nodule_gans"):
        load_real_base(cfg)
    with pytest.raises(MissingInputError, match="ctsgan nodules"):
        load_injector(cfg)
    _write_cohort(cfg.data_dir / "debiased", _bases((2, 1, 1)), with_labels=True)
    syn = _syn(3)
    for v in syn.volumes:
        v.hu[:] = -1000  # no lungs at all: the central-box fallback must kick in and be reported
    _write_cohort(cfg.data_dir / "synthetic" / "ctsgan", syn, with_labels=False)
    real = load_real_base(cfg, progress=False)
    assert len(real.volumes) == 4 and real.origin.endswith("debiased") and real.sources == ["phantom"]
    assert all(v.lung is not None and not v.lung_fallback for v in real.volumes)
    path = run_grid(cfg, progress=False, injector=SphereInjector(), device="cpu", sizes=[4.0],
                    regimes=["real", "synthetic"])
    recs = read_jsonl(path)
    assert path == cfg.runs_dir / "classifier" / "results.jsonl" and len(recs) == 2
    d = recs[0]["data"]
    assert d["real_source"].endswith("debiased") and d["synthetic_source"].endswith("ctsgan")
    assert d["n_synthetic"] == 4 and d["lung_mask_fallback"] == {"real": 0, "synthetic": 2}
    assert d["n_train"] == 4 and d["n_test"] == 2


def test_shortcut_control(tmp_root):
    cfg = _cfg(**{"classifier.epochs": 2})
    real = _bases((8, 4, 4))  # 8 per domain
    path = run_shortcut_control(cfg, tmp_root / "cls", progress=False, real=real, injector=SphereInjector(),
                                device="cpu")
    recs = read_jsonl(path)
    assert sorted(r["train_cohort"] for r in recs) == ["biased", "debiased"]
    for r in recs:
        assert set(r["metrics"]) == {"swapped", "debiased", "biased"}
        assert r["size_vox"] == 6.0
        sw = r["metrics"]["swapped"]
        assert sw["n_pos"] > 0 and sw["n_neg"] > 0
    t = shortcut_table(recs)
    assert set(t.test_set) == {"swapped", "debiased", "biased"} and len(t) == 6
    # rerun skips
    run_shortcut_control(cfg, tmp_root / "cls", progress=False, real=real, injector=SphereInjector(), device="cpu")
    assert len(read_jsonl(path)) == 2
    with pytest.raises(CTSGANError, match="at least 4 nodule-free lidc-like"):
        run_shortcut_control(cfg, tmp_root / "cls2", progress=False, injector=SphereInjector(),
                             real=BaseSet([v for v in real.volumes if v.domain == "nlst-like"], "mem", []))


# ------------------------------------------------------------------------------------------------ DDP
def _ddp_worker(rank: int, world: int, port: int, out: str, data: ClassifierDataset, cfg, q) -> None:
    import os

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        model = SqueezeNet3D(1, 2)
        r = train_classifier(model, data, data, cfg, out, seed=0, epochs=2, device="cpu", progress=False)
        q.put((rank, r["epochs_run"], float(sum(p.double().sum() for p in model.state_dict().values()))))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two spawned interpreters importing torch: ~15 s idle, ~60 s on a loaded 2-core machine
def test_ddp_two_ranks_gloo(tmp_root):
    """Two CPU ranks (gloo): DistributedSampler + DDP, replicas stay identical, rank 0 writes the checkpoint."""
    import socket

    import torch.multiprocessing as mp

    cfg = _cfg(**{"classifier.batch": 2})
    data = build_cell_data(_bases((2, 2, 2)), None, 6.0, 0, SphereInjector(), cfg).train
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    mp.start_processes(_ddp_worker, args=(2, port, str(tmp_root / "ddp"), data, cfg, q), nprocs=2, join=True,
                       start_method="spawn")
    res = sorted(q.get(timeout=10) for _ in range(2))
    assert [r[0] for r in res] == [0, 1] and res[0][1] == res[1][1] == 2
    assert res[0][2] == pytest.approx(res[1][2], rel=1e-9)     # same weights on both ranks
    assert (tmp_root / "ddp" / "final.pt").is_file()
    log = (tmp_root / "ddp" / "log.csv").read_text().splitlines()
    assert len(log) == 3  # one writer: header + 2 epochs


# ------------------------------------------------------------------------------------------------ reporting and CLI
def test_figure_and_tables_are_written(tmp_root):
    from ctsgan_lib.reporting.classifier import annotate_table, classifier_caption, plot_fig3b, save_table

    recs = []
    for regime in ("real", "synthetic", "pretrain_finetune"):
        for d in (4.0, 6.0):
            for seed, acc in ((0, 0.5), (1, 0.75)):
                recs.append({"kind": "grid", "profile": "smoke", "regime": regime, "size_vox": d, "seed": seed,
                             "metrics": {"accuracy": acc, "balanced_accuracy": acc, "auc": acc, "sensitivity": 1.0,
                                         "specificity": 0.0, "n": 4},
                             "data": {"real_source": "data/smoke/debiased", "real_sources": ["phantom"],
                                      "injector": {"checkpoint": "", "model": "SphereInjector"}},
                             "config": {"data_size": 32}, "hardware_label": "cpu: test"})
    table = annotate_table(grid_table(recs), recs)
    assert len(table) == 6 and set(table["accuracy_mean"]) == {0.625} and set(table["accuracy_std"]) == {0.125}
    assert table["vs_paper"].iloc[0].startswith("NOT comparable to the paper")
    title = classifier_caption(recs, "Fig 3b")
    assert "profile smoke" in title and "seeds [0, 1]" in title and "cpu: test" in title
    fig, paths = plot_fig3b(table, tmp_root / "fig3b", note=title)
    import matplotlib.pyplot as plt
    plt.close(fig)
    assert [p.suffix for p in paths] == [".png", ".pdf"] and all(p.stat().st_size > 1000 for p in paths)
    csv_p, md_p = save_table(table, tmp_root / "fig3b_table", title)
    assert md_p.read_text().startswith(title) and "pretrain_finetune" in csv_p.read_text()


def test_cli_missing_inputs_is_one_line_error(tmp_root, capsys):
    from ctsgan_lib.cli import main

    assert main(["classify", "--profile", "smoke", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: missing input") and "02_nodule_gans" in err and "\n" not in err


def test_grid_cells_in_worker_processes_match_the_sequential_run(tmp_root):
    # the same cells, one process vs two spawned workers (one torch thread each in both runs): identical records
    real, syn, inj = _bases((4, 2, 2)), _syn(3), SphereInjector()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        seq = run_grid(_cfg(), tmp_root / "seq", progress=False, real=real, synthetic=syn, injector=inj, device="cpu")
        par = run_grid(_cfg(**{"classifier.workers": 2}), tmp_root / "par", progress=False, real=real,
                       synthetic=syn, injector=inj, device="cpu")
    finally:
        torch.set_num_threads(threads)
    a = {_cell(r): r for r in read_jsonl(seq)}
    b = {_cell(r): r for r in read_jsonl(par)}
    assert len(a) == 6 and set(a) == set(b)
    for k in a:
        assert a[k]["metrics"] == b[k]["metrics"] and a[k]["data"]["n_train"] == b[k]["data"]["n_train"]
    assert (tmp_root / "par" / "cells").is_dir()  # the workers wrote their checkpoints where the parent looks


def _cell(r: dict) -> tuple:
    return r["regime"], r["size_vox"], r["seed"]


def test_an_interrupted_cell_keeps_its_finished_regimes(tmp_root, monkeypatch):
    import ctsgan_lib.experiments.grid as X   # the grid runner looks train_classifier up in its own module

    real, syn, inj = _bases((4, 2, 2)), _syn(3), SphereInjector()
    train = X.train_classifier

    def stop_at_finetune(*a, desc="", **kw):
        if desc.startswith("finetune"):
            raise KeyboardInterrupt
        return train(*a, desc=desc, **kw)

    monkeypatch.setattr(X, "train_classifier", stop_at_finetune)
    with pytest.raises(KeyboardInterrupt):
        run_grid(_cfg(), tmp_root / "g", progress=False, real=real, synthetic=syn, injector=inj, device="cpu",
                 sizes=[4.0])
    assert {_cell(r) for r in read_jsonl(tmp_root / "g" / "results.jsonl")} == {("real", 4.0, 0),
                                                                               ("synthetic", 4.0, 0)}
    monkeypatch.setattr(X, "train_classifier", train)
    run_grid(_cfg(), tmp_root / "g", progress=False, real=real, synthetic=syn, injector=inj, device="cpu",
             sizes=[4.0])                                   # the rerun trains only the missing regime
    assert [_cell(r)[0] for r in read_jsonl(tmp_root / "g" / "results.jsonl")] == ["real", "synthetic",
                                                                                   "pretrain_finetune"]


def test_fourth_regime_pretrains_on_conditional_volumes_and_is_compared(tmp_root):
    """Issue 26: `cond_pretrain_finetune` pretrains on a conditional CT-SGAN's paired volumes (no injector), fine-tunes
    on real, records the checkpoint, and the effect table compares it with real only and the injector pretraining."""
    from ctsgan_lib.cli import main
    from ctsgan_lib.data.cohort import CohortWriter
    from ctsgan_lib.errors import MissingInputError
    from ctsgan_lib.reporting.classifier import effect_table
    from test_ctsgan_cond import cond_volumes
    from test_ctsgan_train import TINY

    S_COND = 32
    cfg = _cfg(**{"classifier.sizes": "[5.0]", "classifier.n_synthetic": 4})
    real, syn, inj = _bases((4, 2, 2)), _syn(3), SphereInjector()
    with pytest.raises(MissingInputError, match="09_conditional_ctsgan"):
        run_grid(cfg, tmp_root / "g0", progress=False, real=real, synthetic=syn, injector=inj, device="cpu",
                 regimes=["real", "cond_pretrain_finetune"])
    vols, nods = cond_volumes(4, size=S_COND)
    with CohortWriter(tmp_root / "data" / "smoke" / "cohort", compress=False) as w:
        for i, (v, n) in enumerate(zip(vols, nods)):
            w.write(f"c{i}", v, (1.0, 1.0, 1.0), split="train", source="phantom",
                    domain="lidc-like" if n else "nlst-like", nodules=n)
    sets = [a for k, v in {**TINY, "ctsgan.iterations": 2, "data.size": S_COND}.items() for a in ("--set", f"{k}={v}")]
    assert main(["train", "ctsgan_cond", "--no-progress", "--device", "cpu", *sets]) == 0
    out = tmp_root / "g1"
    path = run_grid(cfg, out, progress=False, real=real, synthetic=syn, injector=inj, device="cpu",
                    regimes=["real", "pretrain_finetune", "cond_pretrain_finetune"])
    recs = read_jsonl(path)
    assert sorted(r["regime"] for r in recs) == ["cond_pretrain_finetune", "pretrain_finetune", "real"]
    cond = [r for r in recs if r["regime"] == "cond_pretrain_finetune"][0]
    assert len(cond["data"]["conditional_checkpoint_sha256"]) == 64 and cond["data"]["n_conditional_synthetic"] == 4
    assert any("cond_synthetic" in str(p) for p in out.rglob("*.pt")), "the conditional pretraining checkpoint"
    assert cond["test_predictions"]["ids"] == [r for r in recs if r["regime"] == "real"][0]["test_predictions"]["ids"]
    comps = set(effect_table(recs, n_boot=50)["comparison"])
    assert {"cond_pretrain_finetune − real", "cond_pretrain_finetune − pretrain_finetune"} <= comps
    # a rerun trains nothing
    mtime = path.stat().st_mtime_ns
    run_grid(cfg, out, progress=False, real=real, synthetic=syn, injector=inj, device="cpu",
             regimes=["real", "pretrain_finetune", "cond_pretrain_finetune"])
    assert path.stat().st_mtime_ns == mtime
