"""Grid runner of the nodule-detection study (Fig 3b): regimes × nodule sizes × seeds, resumable, in workers; and the
data-scarcity runner (Fig 3c, beyond the paper: real only and pretrain + fine-tune with a share of the real training
volumes, ``scarcity.jsonl``).

Regimes ``real`` / ``synthetic`` / ``pretrain_finetune`` (see :mod:`ctsgan_lib.experiments`). One JSON line per
finished (regime, size, seed) in ``results.jsonl`` with config, data sources, the design counts, metrics (overall and
per kind of positive), the per-scan test predictions and hardware; a rerun skips the
cells whose line is there for the same config (:func:`cell_key`) and inputs (:func:`data_key`). Independent cells run
in parallel processes when ``classifier.workers > 1``; under ``torchrun`` the ranks split the work instead.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import multiprocessing as mp
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from ..config import Config
from ..errors import CTSGANError
from ..models.squeezenet3d import SqueezeNet3D
from ..synthesis.conditional import conditional_training_set, latest_conditional_checkpoint
from ..eval.classification import binary_metrics
from ..train.classifier_loop import predict, train_classifier
from ..utils.atomic import file_sha256
from ..utils.checkpoint import latest_checkpoint
from ..utils.hardware import default_device, git_commit, hardware_info, hardware_label
from ..utils.logs import append_jsonl, read_jsonl
from .cells import (BaseSet, CellData, build_cell_data, injector_tag, item_kinds, load_injector, load_real_base,
                    load_real_cohort, load_synthetic_base, load_synthetic_cohort, real_base_root)
from .streamed import ERASED, CLEAN, INJECTED, NATIVE

REGIMES = ("real", "synthetic", "pretrain_finetune", "cond_pretrain_finetune")
#: the fourth regime (issue 26, ours, opt-in): pretrain on conditional CT-SGAN volumes, no injector, then fine-tune
COND_REGIME = "cond_pretrain_finetune"
RESULTS = "results.jsonl"
SCARCITY = "scarcity.jsonl"
SCARCITY_REGIMES = ("real", "pretrain_finetune")


def cell_key(cfg: Config) -> str:
    """Hash of every setting that changes a cell's result other than (regime, size, seed)."""
    c = dataclasses.asdict(cfg.classifier)
    # the data path (in memory or streamed, and in how many loader workers) gives the same items: not part of the key
    # nor do the Fig 3c settings (its lines carry their own size and real fraction)
    for k in ("sizes", "seeds", "regimes", "stream_threshold_gib", "loader_workers", "real_fractions",
              "scarcity_size"):
        c.pop(k, None)
    blob = json.dumps({"classifier": c, "size": cfg.data.size, "hu": [cfg.data.hu_min, cfg.data.hu_max],
                       "profile": cfg.profile}, sort_keys=True, default=list)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def distributed_run() -> bool:
    return dist.is_available() and dist.is_initialized()


def is_main() -> bool:
    """Rank 0 under torchrun (only it writes result lines); True without torch.distributed."""
    return not distributed_run() or dist.get_rank() == 0


def make_model(cfg: Config, seed: int) -> SqueezeNet3D:
    torch.manual_seed(seed)  # paper §4.2: the seed initialises the classifier
    return SqueezeNet3D(in_channels=cfg.classifier.in_channels, num_classes=2, dropout=cfg.classifier.dropout,
                        head_init=cfg.classifier.head_init, stem_stride=tuple(cfg.classifier.stem_stride))


def cell_dir(out: Path, key: str, regime: str, size: float, seed: int) -> Path:
    return out / "cells" / key / f"{regime}_d{size:g}_s{seed}"  # key = "<cell_key>-<data_key>"


def fingerprint(origin: str | Path) -> str:
    m = Path(origin) / "manifest.csv"
    return file_sha256(m)[:16] if m.is_file() else str(origin)


def data_key(cfg: Config, real: BaseSet | None, synthetic: BaseSet | None, injector, need_syn: bool,
             conditional: Path | None = None) -> str:
    """Hash of the inputs (cohort manifests, injector checkpoint, and the conditional CT-SGAN checkpoint of the fourth
    regime when it runs): a rebuilt cohort, new injector or new conditional model reruns cells."""
    r = real.origin if real is not None else str(real_base_root(cfg))
    syn = "-"
    if need_syn:
        syn = synthetic.origin if synthetic is not None else str(cfg.data_dir / "synthetic" / "ctsgan")
    if injector is not None:
        inj = json.dumps(injector_tag(injector), sort_keys=True)
    else:
        ck = latest_checkpoint(cfg.runs_dir / "nodules" / "injector")
        inj = file_sha256(ck)[:16] if ck is not None else "none"
    key = f"{fingerprint(r)}|{fingerprint(syn)}|{inj}"
    if conditional is not None:   # only then: keys of runs without the fourth regime stay as they were
        key += f"|cond:{file_sha256(conditional)[:16]}"
    return hashlib.sha1(key.encode()).hexdigest()[:12]


def row_key(r: dict) -> tuple:
    key = (r.get("regime") or r.get("train_cohort"), float(r["size_vox"]), int(r["seed"]))
    return key + (float(r["real_fraction"]),) if "real_fraction" in r else key   # Fig 3c lines


def done_keys(path: Path, kind: str, key: str, dkey: str) -> set[tuple]:
    return {row_key(r) for r in read_jsonl(path)
            if r.get("kind") == kind and r.get("cell_key") == key and r.get("data_key") == dkey}


def current_records(cfg: Config, path: str | Path, kind: str = "grid") -> list[dict]:
    """Result lines of this config (``cell_key``), the newest line per (regime or cohort, size, seed)."""
    key = cell_key(cfg)
    latest: dict[tuple, dict] = {}
    for r in read_jsonl(path):
        if r.get("kind") == kind and r.get("cell_key") == key:
            latest[row_key(r)] = r
    return list(latest.values())


def make_record(cfg: Config, kind: str, key: str, device: str, **fields: Any) -> dict[str, Any]:
    return {"kind": kind, "profile": cfg.profile, "cell_key": key, **fields,
            "config": {"classifier": cfg.to_dict()["classifier"], "data_size": cfg.data.size,
                       "hu_window": [cfg.data.hu_min, cfg.data.hu_max]},
            "hardware": hardware_info(device), "hardware_label": hardware_label(device),
            "commit": git_commit(Path(__file__).resolve().parents[2]),  # the code's checkout, not CTSGAN_ROOT
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def load_bases(cfg: Config, real: BaseSet | None, synthetic: BaseSet | None, need_syn: bool, progress: bool
               ) -> tuple[BaseSet, BaseSet | None]:
    """The real and (``need_syn``) synthetic bases of ``cfg.classifier.design``, unless given."""
    paper = cfg.classifier.design == "paper"
    if real is None:
        real = load_real_cohort(cfg, progress=progress) if paper else load_real_base(cfg, progress=progress)
    if need_syn and synthetic is None:
        synthetic = (load_synthetic_cohort if paper else load_synthetic_base)(cfg, progress=progress)
    return real, synthetic if need_syn else None


def run_grid(cfg: Config, out: str | Path | None = None, progress: bool = True, *, real: BaseSet | None = None,
             synthetic: BaseSet | None = None, injector=None, device: str | None = None,
             sizes: Sequence[float] | None = None, seeds: Sequence[int] | None = None,
             regimes: Sequence[str] | None = None) -> Path:
    """Run (or resume) the Fig 3b grid; one JSON line per finished cell in ``<out>/results.jsonl``.

    Parameters
    ----------
    cfg : Config
    out : path, optional
        Default ``runs/<P>/classifier``.
    progress : bool
        tqdm bars.
    real, synthetic : BaseSet, optional
        Default: read by ``classifier.design`` (paper: :func:`~.cells.load_real_cohort` and
        :func:`~.cells.load_synthetic_cohort`; paired: the nodule-free bases of ``data/<P>/debiased`` (or
        ``cohort``) and ``data/<P>/synthetic/ctsgan``).
    injector : object with ``inject(hu, diameters_vox, rng, lung=None) -> (hu, nodules)``, optional
        Default: the newest checkpoint under ``runs/<P>/nodules/injector``.
    device : str, optional
    sizes, seeds, regimes : optional
        Subsets of the profile's (default: all of ``cfg.classifier``).

    Returns
    -------
    Path
        ``results.jsonl``.
    """
    ccfg = cfg.classifier
    sizes = [float(s) for s in (sizes if sizes is not None else ccfg.sizes)]
    regimes = list(regimes if regimes is not None else ccfg.regimes)
    bad = [r for r in regimes if r not in REGIMES]
    if bad:
        raise CTSGANError(f"classifier.regimes: unknown regime(s) {bad}; choose from {', '.join(REGIMES)}")
    return _run(cfg, out, progress, real, synthetic, injector, device, sizes, seeds, regimes, "grid", RESULTS, 1.0)


def scarcity_size(cfg: Config) -> float:
    """The Fig 3c nodule size: ``classifier.scarcity_size``, or the largest grid size when it is 0."""
    return float(cfg.classifier.scarcity_size or max(cfg.classifier.sizes))


def run_scarcity(cfg: Config, out: str | Path | None = None, progress: bool = True, *, real: BaseSet | None = None,
                 synthetic: BaseSet | None = None, injector=None, device: str | None = None,
                 fractions: Sequence[float] | None = None, size: float | None = None,
                 seeds: Sequence[int] | None = None) -> Path:
    """Data-scarcity curve (Fig 3c, beyond the paper): real-only vs pretrain + fine-tune at one size, over the grid's
    seeds, with ``fractions`` (default ``classifier.real_fractions``) of the real training volumes
    (:func:`~.cells.scarce_subset`); validation and test stay whole. One line per (regime, fraction, seed) in
    ``<out>/scarcity.jsonl``; the pretraining is the grid's ``synthetic`` cell (reused when it has finished).
    """
    fractions = [float(f) for f in (fractions if fractions is not None else cfg.classifier.real_fractions)]
    size = float(size) if size is not None else scarcity_size(cfg)
    path = None
    for f in fractions:
        path = _run(cfg, out, progress, real, synthetic, injector, device, [size], seeds, list(SCARCITY_REGIMES),
                    "scarcity", SCARCITY, f)
    return path


def _run(cfg: Config, out, progress: bool, real, synthetic, injector, device, sizes: list, seeds, regimes: list,
         kind: str, file: str, fraction: float) -> Path:
    ccfg = cfg.classifier
    out = Path(out) if out is not None else cfg.runs_dir / "classifier"
    out.mkdir(parents=True, exist_ok=True)
    device = device or default_device()
    seeds = [int(s) for s in (seeds if seeds is not None else ccfg.seeds)]
    key = cell_key(cfg)
    results = out / file
    need_syn = any(r in ("synthetic", "pretrain_finetune") for r in regimes)
    # the fourth regime's generator: found before any cell runs (MissingInputError naming notebook 09)
    conditional = latest_conditional_checkpoint(cfg) if COND_REGIME in regimes else None
    dkey = data_key(cfg, real, synthetic, injector, need_syn, conditional)
    done = done_keys(results, kind, key, dkey)
    job_tag = (lambda r, d, s: (r, d, s, fraction)) if kind == "scarcity" else (lambda r, d, s: (r, d, s))
    todo = [(d, s) for d in sizes for s in seeds if any(job_tag(r, d, s) not in done for r in regimes)]
    if not todo:
        return results
    real, synthetic = load_bases(cfg, real, synthetic, need_syn, progress)
    injector = injector if injector is not None else load_injector(cfg)
    job = _GridJob(cfg, regimes, real, synthetic, injector, out, key, dkey, device, kind, fraction, conditional)
    workers = max(1, min(int(getattr(ccfg, "workers", 1)), len(todo)))
    if distributed_run():
        workers = 1  # under torchrun the ranks already split the work
    bar = tqdm(total=len(todo), desc=f"classifier {kind}" + (f" {fraction:g}" if kind == "scarcity" else ""),
               disable=not progress)
    if workers == 1:
        emit = (lambda rec: append_jsonl(results, rec)) if is_main() else (lambda rec: None)
        for d, seed in todo:
            job.run_cell(d, seed, done, progress, emit)  # each regime's line is written as soon as it finishes
            bar.update()
    else:
        # independent (size, seed) cells in parallel processes, the cores split between them: on a small CPU this
        # beats one process with all threads (single-threaded data building, small 3D convs scale poorly)
        threads = max(1, torch.get_num_threads() // workers)
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_init_grid_worker,
                                 initargs=(job, threads)) as pool:
            futures = [pool.submit(_grid_worker_cell, d, seed, done) for d, seed in todo]
            for fut in as_completed(futures):
                for rec in fut.result():  # a failed cell raises here, after the finished ones were written
                    append_jsonl(results, rec)
                bar.update()
    bar.close()
    return results


def kind_metrics(y, p, kinds: Sequence[str]) -> dict[str, dict | None]:
    """Test metrics of native positives and of injected positives, each against all negatives (erased and clean).

    ``None`` for a kind the test set does not hold. ``detected`` is the share of that kind's positives called
    positive (sensitivity), ``accuracy`` and ``auc`` are on that kind's positives plus every negative.
    """
    y, p, kinds = np.asarray(y), np.asarray(p), np.asarray(kinds)
    neg = np.isin(kinds, (ERASED, CLEAN))
    out: dict[str, dict | None] = {}
    for kind in (NATIVE, INJECTED):
        pos = kinds == kind
        if not pos.any() or not neg.any():
            out[kind] = None
            continue
        m = binary_metrics(y[pos | neg], p[pos | neg])
        out[kind] = {"accuracy": m["accuracy"], "balanced_accuracy": m["balanced_accuracy"], "auc": m["auc"],
                     "detected": m["sensitivity"], "n_positive": int(pos.sum()), "n_negative": int(neg.sum())}
    return out


def score_test_split(model, data: CellData, device: str, batch: int) -> tuple[dict, dict]:
    """Metrics on the (balanced) test split, overall and per positive kind, and the per-scan predictions (ids,
    kinds, labels, probabilities) that the paired bootstrap of the report resamples."""
    p, y, loss = predict(model, data.test, device, batch)
    kinds = item_kinds(data.test, data.roles)
    metrics = {**binary_metrics(y, p), "loss": loss, "by_kind": kind_metrics(y, p, kinds)}
    preds = {"ids": list(data.test.ids), "kinds": kinds, "y": [int(v) for v in y],
             "p": [round(float(v), 6) for v in p],
             # native positives: their largest own nodule (mm), for detection by size bin; 0 for every other scan
             "native_mm": [round(data.native_mm.get(i.removesuffix("+nod"), 0.0), 2) if k == NATIVE else 0.0
                           for i, k in zip(data.test.ids, kinds)]}
    return metrics, preds


@dataclass
class _GridJob:
    """Everything one (size, seed) cell of the grid needs; pickled once into each worker process."""

    cfg: Config
    regimes: list
    real: "BaseSet"
    synthetic: "BaseSet | None"
    injector: Any
    out: Path
    key: str
    dkey: str
    device: str
    kind: str = "grid"
    fraction: float = 1.0                 # share of the real training volumes (Fig 3c; 1 in the grid)
    conditional: Path | None = None       # ctsgan_cond checkpoint of the fourth regime (issue 26)

    def tag(self, regime: str, d: float, seed: int) -> tuple:
        return (regime, d, seed, self.fraction) if self.kind == "scarcity" else (regime, d, seed)

    def run_cell(self, d: float, seed: int, done: set, progress: bool,
                 emit: Callable[[dict], None] | None = None) -> list[dict]:
        """Train and test every regime of cell (d, seed) not yet in ``done``; returns their result records, and
        hands each to ``emit`` as soon as its regime finishes (so an interrupted cell keeps its finished regimes)."""
        cfg, ccfg, regimes, out = self.cfg, self.cfg.classifier, self.regimes, self.out
        real, synthetic, injector, device = self.real, self.synthetic, self.injector, self.device
        # checkpoint folders carry config and data keys: a config or data change never reuses old weights
        key, dkey, ckey = self.key, self.dkey, f"{self.key}-{self.dkey}"
        need_syn, inj = synthetic is not None, injector_tag(injector)
        scarce = self.kind == "scarcity"
        # Fig 3c cells train in their own folders; at 100 % the cell *is* the grid's (same data, seed): its final.pt
        # is reused instead of training it twice
        sub = f"_f{self.fraction:g}" if scarce and self.fraction < 1.0 else ""
        records: list[dict] = []
        t_data = time.perf_counter()
        data = build_cell_data(real, synthetic if need_syn else None, d, seed, injector, cfg, self.fraction)
        t_data = time.perf_counter() - t_data
        design = ("paper (Fig 3a cohort: native + injected positives, erased + clean negatives; synthetic: the "
                  "injected half)" if data.design == "paper" else "paired (ours: each base clean and injected)")
        info = {"real_source": real.origin, "real_sources": real.sources,
                "synthetic_source": synthetic.origin if need_syn else None,
                "synthetic_sources": synthetic.sources if need_syn else None,
                "synthetic_notes": synthetic.notes if need_syn else None, "injector": inj,
                "n_train": len(data.train), "n_val": len(data.val), "n_test": len(data.test),
                "n_synthetic": len(data.synthetic) if data.synthetic is not None else 0,
                "test_positives": int(data.test.labels.sum()), "design": design,
                "counts": data.counts(), "nodule_count": data.nodule_count,
                "size_applies_to": "injected nodules only (native nodules keep their own size)",
                "voxel_mm": real.voxel_mm,
                "dropped_lung_too_small": data.dropped,
                "lung_mask_fallback": {"real": sum(v.lung_fallback for v in real.volumes),
                                       "synthetic": sum(v.lung_fallback for v in synthetic.volumes) if need_syn
                                       else 0},
                "build_s": round(t_data, 2)}
        if self.conditional is not None:
            info["conditional_checkpoint_sha256"] = file_sha256(self.conditional)
        extra = {"real_fraction": self.fraction} if scarce else {}
        pretrained = cond_state = None
        for regime in regimes:
            if self.tag(regime, d, seed) in done:
                continue
            t0 = time.perf_counter()
            if regime == COND_REGIME:
                if cond_state is None:
                    # paired conditional volumes: each noise draw under "no nodules" and under one nodule of size d
                    cond_set = conditional_training_set(cfg, self.conditional, d, seed, device=device)
                    info["n_conditional_synthetic"] = len(cond_set)
                    cond_model = make_model(cfg, seed)
                    train_classifier(cond_model, cond_set, data.val, cfg, cell_dir(out, ckey, "cond_synthetic", d, seed),
                                     seed, ccfg.epochs, device=device, progress=progress,
                                     desc=f"conditional synthetic d={d:g} s={seed}")
                    cond_state = {k: v.detach().cpu().clone() for k, v in cond_model.state_dict().items()}
                model = make_model(cfg, seed)
                summary = train_classifier(model, data.train, data.val, cfg,
                                           cell_dir(out, ckey, COND_REGIME + sub, d, seed), seed,
                                           ccfg.finetune_epochs, device=device, init_state=cond_state,
                                           progress=progress, desc=f"cond finetune{sub} d={d:g} s={seed}")
                records.append(self._record(model, data, summary, info, extra, regime, d, seed, t0))
                done.add(self.tag(regime, d, seed))
                if emit is not None:
                    emit(records[-1])
                continue
            if regime in ("synthetic", "pretrain_finetune") and pretrained is None:
                # the synthetic regime *is* the pretraining run; resume=True reuses its final.pt when it exists
                # (Fig 3c reuses the grid's: the synthetic data do not depend on the real fraction)
                syn_model = make_model(cfg, seed)
                pre = train_classifier(syn_model, data.synthetic, data.val, cfg,
                                       cell_dir(out, ckey, "synthetic", d, seed), seed, ccfg.epochs, device=device,
                                       progress=progress, desc=f"synthetic d={d:g} s={seed}")
                pretrained = (syn_model, pre, {k: v.detach().cpu().clone() for k, v in syn_model.state_dict().items()})
            if regime == "synthetic":
                model, summary = pretrained[0], pretrained[1]
            elif regime == "real":
                model = make_model(cfg, seed)
                summary = train_classifier(model, data.train, data.val, cfg,
                                           cell_dir(out, ckey, "real" + sub, d, seed), seed, ccfg.epochs,
                                           device=device, progress=progress, desc=f"real{sub} d={d:g} s={seed}")
            else:
                model = make_model(cfg, seed)
                summary = train_classifier(model, data.train, data.val, cfg,
                                           cell_dir(out, ckey, "pretrain_finetune" + sub, d, seed), seed,
                                           ccfg.finetune_epochs, device=device, init_state=pretrained[2],
                                           progress=progress, desc=f"finetune{sub} d={d:g} s={seed}")
            records.append(self._record(model, data, summary, info, extra, regime, d, seed, t0))
            done.add(self.tag(regime, d, seed))
            if emit is not None:
                emit(records[-1])
        return records

    def _record(self, model, data: CellData, summary: dict, info: dict, extra: dict, regime: str, d: float,
                seed: int, t0: float) -> dict:
        """The result line of one trained regime: test metrics, per-scan predictions, selection and data record."""
        metrics, preds = score_test_split(model, data, self.device, self.cfg.classifier.batch)
        return make_record(self.cfg, self.kind, self.key, self.device, data_key=self.dkey, regime=regime, size_vox=d,
                           seed=seed, **extra, metrics=metrics,
                           selection={k: summary.get(k) for k in ("best_epoch", "best_val_loss", "epochs_run",
                                                                   "stopped_early")},
                           data=dict(info), test_predictions=preds, wall_s=round(time.perf_counter() - t0, 2))


_WORKER_JOB: _GridJob | None = None


def _init_grid_worker(job: _GridJob, threads: int) -> None:
    global _WORKER_JOB
    torch.set_num_threads(threads)
    _WORKER_JOB = job


def _grid_worker_cell(d: float, seed: int, done: set) -> list[dict]:
    return _WORKER_JOB.run_cell(d, seed, set(done), progress=False)
