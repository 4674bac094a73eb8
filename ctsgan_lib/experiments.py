"""Nodule-detection experiments: the Fig 3b grid (paper §3, §4.2) and the device-shortcut control (beyond the paper).

**Grid.** Regimes ``real`` / ``synthetic`` / ``pretrain_finetune`` × nodule sizes (``cfg.classifier.sizes``, diameters
in voxels at S³) × seeds. For every (size, seed) the datasets are built from *nodule-free base volumes* and the
trained nodule injector, so the size of a cell controls the injected size in the real and in the synthetic data alike:

- real: the nodule-free volumes of the debiased cohort (``data/<P>/debiased``; the prepared ``cohort`` when there is
  no debiased one), per split;
- synthetic: the nodule-free volumes of ``data/<P>/synthetic/ctsgan`` (at most ``n_synthetic / 2`` of them).

Each base volume appears twice, once as it is (label 0) and once with nodules of the cell's size injected (label 1).
This *paired* design keeps every split exactly balanced (the paper reports accuracy on a balanced test set), gives
900/150/150 volumes from 450/75/75 bases at paper scale, and means that nothing but the nodule separates the classes
(domain, patient and erasure traces appear on both sides). The number of nodules in a positive volume is drawn from the
LIDC per-scan distribution (capped at ``max_nodules``); the seed sets it, the nodule locations and the classifier's
initialisation (paper §4.2). Validation and test are always the real val/test splits. ``pretrain_finetune`` starts
from the model the ``synthetic`` regime selected (same seed, same data: pretraining is that run) and fine-tunes on real.

**Shortcut control.** The same classifier trained on a *biased* cohort (nodules only in lidc-like volumes) and on a
*debiased* one (half of each domain carries nodules), both evaluated on a *domain-swapped* test set (nodules only in
nlst-like volumes), on a paired debiased test set and on a biased one. A classifier that learned the scanner domain
instead of the nodule scores near 0 on the swapped set. The control uses only real nodule-free bases of both domains
(re-split per domain with a seeded draw, since it never touches the synthetic data) and the largest grid size.

Results are JSON lines (``results.jsonl``, ``shortcut.jsonl``) with config, data sources, metrics and hardware; a rerun
skips finished cells.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
import warnings
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

from .config import Config
from .errors import CTSGANError, InputFileError, MissingInputError
from .eval.classification import balanced_indices, check_classes
from .models.squeezenet3d import SqueezeNet3D
from .utils.atomic import file_sha256
from .utils.checkpoint import latest_checkpoint
from .train.classifier_loop import ClassifierDataset, evaluate, train_classifier
from .utils.hardware import default_device, git_commit, hardware_info, hardware_label
from .utils.logs import append_jsonl, read_jsonl

REGIMES = ("real", "synthetic", "pretrain_finetune")
SPLITS = ("train", "val", "test")
RESULTS = "results.jsonl"
SHORTCUT = "shortcut.jsonl"


# ------------------------------------------------------------------------------------------------ base volumes
@dataclass
class BaseVolume:
    """A nodule-free volume that a cell injects into (or keeps clean)."""

    id: str
    hu: np.ndarray                      # int16 HU (z, y, x): half the memory of float32, exact for HU
    domain: str = ""
    split: str = ""
    source: str = ""
    lung: np.ndarray | None = None      # bool lung mask, or None (the injector then computes one)
    lung_fallback: bool = False         # True when no usable lung mask was found (central box used instead)


@dataclass
class BaseSet:
    """Nodule-free base volumes of one data source, with where they came from."""

    volumes: list[BaseVolume]
    origin: str                         # folder (or description) they were read from
    sources: list[str] = field(default_factory=list)

    def split(self, name: str) -> list[BaseVolume]:
        return [v for v in self.volumes if v.split == name]


MIN_LUNG_VOXELS = 64  # below this a lung mask cannot host even a few small nodules


def central_mask(shape: Sequence[int]) -> np.ndarray:
    """The central half-size box: where nodules go when a volume has no usable lung mask."""
    m = np.zeros(shape, dtype=bool)
    m[tuple(slice(n // 4, n - n // 4) for n in shape)] = True
    return m


def _lung(hu: np.ndarray, label: np.ndarray | None) -> tuple[np.ndarray, bool]:
    """Lung mask (phantom label when there is one, else the classical mask) and whether it fell back.

    A barely trained generator (smoke profile) can produce volumes without lungs; they get the central box so the
    grid still runs, and the number of such volumes is reported with every result.
    """
    from .nodules.geometry import lung_of

    lung = np.asarray(lung_of(hu, label), dtype=bool)
    if lung.sum() < MIN_LUNG_VOXELS:
        return central_mask(hu.shape), True
    return lung, False


def _read_bases(root: Path, ids: Sequence[str], size: int, progress: bool, desc: str) -> list[BaseVolume]:
    from tqdm.auto import tqdm

    from .data.cohort import Cohort

    c = Cohort(root)
    out = []
    for rid in tqdm(ids, desc=desc, disable=not progress, leave=False):
        row = c.row(rid)
        hu, _ = c.read(rid)
        if hu.shape != (size, size, size):
            raise InputFileError(c.path(rid), f"volume shape {hu.shape} is not the profile's {size}³ "
                                              f"(data.size={size}); rebuild the cohort for this profile")
        lung, fallback = _lung(hu, c.read_label(rid))
        out.append(BaseVolume(rid, np.clip(np.rint(hu), -32768, 32767).astype(np.int16), str(row["domain"]),
                              str(row["split"]), str(row["source"]), lung, fallback))
    return out


def real_base_root(cfg: Config) -> Path:
    """The debiased cohort when it exists, else the prepared cohort."""
    for name in ("debiased", "cohort"):
        if (cfg.data_dir / name / "manifest.csv").is_file():
            return cfg.data_dir / name
    raise MissingInputError(f"missing input {cfg.data_dir / 'debiased'} (and {cfg.data_dir / 'cohort'}): run "
                            f"02_nodule_gans.ipynb (or `ctsgan nodules`) first")


def load_real_base(cfg: Config, root: str | Path | None = None, progress: bool = True) -> BaseSet:
    """Nodule-free volumes of the real (debiased) cohort, all splits."""
    from .data.cohort import Cohort

    root = Path(root) if root is not None else real_base_root(cfg)
    c = Cohort(root)
    ids = c.ids(has_nodule=0)
    if not ids:
        raise InputFileError(root / "manifest.csv", "no nodule-free volumes (has_nodule=0): nothing to inject into")
    vols = _read_bases(root, ids, cfg.data.size, progress, "real base")
    return BaseSet(vols, str(root), sorted({v.source for v in vols}))


def load_synthetic_base(cfg: Config, root: str | Path | None = None, progress: bool = True) -> BaseSet:
    """Nodule-free volumes of the CT-SGAN synthetic cohort (first ``n_synthetic // 2`` by id)."""
    from .data.cohort import Cohort

    root = Path(root) if root is not None else cfg.data_dir / "synthetic" / "ctsgan"
    if not (root / "manifest.csv").is_file():
        raise MissingInputError(f"missing input {root}: run 04_synthetic_cohort.ipynb (or `ctsgan generate`) first")
    c = Cohort(root)
    ids = c.ids(has_nodule=0)[: max(1, cfg.classifier.n_synthetic // 2)]
    if not ids:
        raise InputFileError(root / "manifest.csv", "no nodule-free synthetic volumes (has_nodule=0)")
    vols = _read_bases(root, ids, cfg.data.size, progress, "synthetic base")
    for v in vols:
        v.split = "train"  # synthetic volumes only ever train (validation and test stay real)
    return BaseSet(vols, str(root), sorted({v.source for v in vols}))


def load_injector(cfg: Config, device: str = "cpu"):
    """The newest nodule injector checkpoint under ``runs/<P>/nodules/injector``."""
    from .nodules.inference import NoduleInjector

    folder = cfg.runs_dir / "nodules" / "injector"
    ck = latest_checkpoint(folder)
    if ck is None:
        raise MissingInputError(f"missing input {folder}/ckpt_*.pt: run 02_nodule_gans.ipynb (or `ctsgan nodules`) "
                                f"first")
    return NoduleInjector.from_checkpoint(ck, device=device)


def injector_tag(injector) -> dict[str, Any]:
    """What injected the nodules (checkpoint file, step and SHA-256, or the class name of a test double)."""
    src = getattr(injector, "source", "")
    if src and Path(src).is_file():
        return {"checkpoint": str(src), "step": int(getattr(injector, "step", 0)), "sha256": file_sha256(src)}
    return {"checkpoint": "", "model": type(injector).__name__}


def _count_fn() -> Callable[[np.random.Generator], int]:
    try:
        from .data.lidc import sample_nodule_count
        sample_nodule_count(np.random.default_rng(0))  # the LIDC table may be missing: fall back below
        return lambda rng: int(sample_nodule_count(rng, at_least_one=True))
    except Exception:  # noqa: BLE001 - no LIDC statistics available: one nodule per positive volume
        return lambda rng: 1


# ------------------------------------------------------------------------------------------------ cell datasets
def _rng(*keys: Any) -> np.random.Generator:
    """Seeded RNG from a tuple of keys (strings hashed): independent of order and of skipped items."""
    return np.random.default_rng([zlib.crc32(str(k).encode()) if not isinstance(k, int) else k for k in keys])


def inject_volume(base: BaseVolume, diameter_vox: float, seed: int, injector, max_nodules: int,
                  count_fn: Callable[[np.random.Generator], int]) -> tuple[np.ndarray, list[dict]]:
    """The base with nodules of ``diameter_vox`` injected; count and places depend on (seed, id, size) only."""
    rng = _rng(int(seed), base.id, f"{float(diameter_vox):g}")
    n = max(1, min(int(count_fn(rng)), int(max_nodules)))
    hu = base.hu.astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a placement shortfall (fewer nodules than drawn) is fine: >= 1 is checked
        new, nods = injector.inject(hu, [float(diameter_vox)] * n, rng, lung=base.lung)
    if not nods:
        raise CTSGANError(f"{base.id}: no nodule of {diameter_vox:g} vox fits in its lung mask; the volume cannot "
                          f"serve as a positive")
    return new, nods


def paired_dataset(bases: Sequence[BaseVolume], diameter_vox: float, seed: int, injector, cfg: Config,
                   count_fn: Callable | None = None, positive: Callable[[BaseVolume], bool] | None = None,
                   negative: Callable[[BaseVolume], bool] | None = None) -> ClassifierDataset:
    """Float16 [0, 1] dataset from bases: each base clean (label 0) and/or injected (label 1).

    ``positive``/``negative`` choose which bases appear in each role (default: every base in both, the paired design).
    """
    count_fn = count_fn or _count_fn()
    positive = positive or (lambda b: True)
    negative = negative or (lambda b: True)
    hu_min, hu_max = cfg.data.hu_min, cfg.data.hu_max
    from .data.intensity import hu_to_unit

    units, labels, ids, dropped = [], [], [], []
    for b in bases:
        pos = None
        if positive(b):
            try:
                pos, _ = inject_volume(b, diameter_vox, seed, injector, cfg.classifier.max_nodules, count_fn)
            except CTSGANError:
                # A lung too small for this size cannot give a positive; drop its clean twin too, so the paired
                # design stays balanced. The count is reported with the cell's results.
                dropped.append(b.id)
                continue
        if negative(b):
            units.append(hu_to_unit(b.hu.astype(np.float32), hu_min, hu_max).astype(np.float16))
            labels.append(0)
            ids.append(b.id)
        if pos is not None:
            units.append(hu_to_unit(pos, hu_min, hu_max).astype(np.float16))
            labels.append(1)
            ids.append(f"{b.id}+nod")
    ds = ClassifierDataset(units, labels, ids)
    ds.dropped_ids = dropped
    return ds


@dataclass
class CellData:
    """The datasets of one (size, seed) cell, shared by its three regimes."""

    train: ClassifierDataset
    val: ClassifierDataset
    test: ClassifierDataset
    synthetic: ClassifierDataset | None
    dropped: dict[str, int] = field(default_factory=dict)   # bases whose lung cannot hold a nodule of this size


def build_cell_data(real: BaseSet, synthetic: BaseSet | None, diameter_vox: float, seed: int, injector,
                    cfg: Config) -> CellData:
    """Inject nodules of ``diameter_vox`` into the bases of every split (and the synthetic bases), checking classes.

    Raises
    ------
    CTSGANError
        A split with an empty class, or a test set that cannot be balanced.
    """
    count_fn = _count_fn()
    sets = {}
    for split in SPLITS:
        bases = real.split(split)
        if split == "train" and cfg.classifier.n_real_train > 0:
            bases = bases[: cfg.classifier.n_real_train]  # the scarce-real-data setting: first N in cohort order, every cell alike
        sets[split] = paired_dataset(bases, diameter_vox, seed, injector, cfg, count_fn)
        check_classes(sets[split].labels, f"{real.origin}: split {split!r} (nodule-free bases: "
                                          f"{len(real.split(split))})")
    keep = balanced_indices(sets["test"].labels, _rng(seed, "balance"), f"{real.origin}: split 'test'")
    test = sets["test"].subset(keep)
    syn = None
    if synthetic is not None:
        syn = paired_dataset(synthetic.volumes, diameter_vox, seed, injector, cfg, count_fn)
        check_classes(syn.labels, f"{synthetic.origin}: synthetic training set")
    dropped = {k: len(v.dropped_ids) for k, v in {**sets, "synthetic": syn}.items() if v is not None}
    return CellData(sets["train"], sets["val"], test, syn, dropped)


# ------------------------------------------------------------------------------------------------ grid runner
def cell_key(cfg: Config) -> str:
    """Hash of every setting that changes a cell's result other than (regime, size, seed)."""
    c = dataclasses.asdict(cfg.classifier)
    for k in ("sizes", "seeds", "regimes"):
        c.pop(k, None)
    blob = json.dumps({"classifier": c, "size": cfg.data.size, "hu": [cfg.data.hu_min, cfg.data.hu_max],
                       "profile": cfg.profile}, sort_keys=True, default=list)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def _distributed_run() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def _is_main() -> bool:
    """Rank 0 under torchrun (only it writes result lines); True without torch.distributed."""
    import torch.distributed as dist

    return not _distributed_run() or dist.get_rank() == 0


def _make_model(cfg: Config, seed: int) -> SqueezeNet3D:
    torch.manual_seed(seed)  # paper §4.2: the seed initialises the classifier
    return SqueezeNet3D(in_channels=cfg.classifier.in_channels, num_classes=2, dropout=cfg.classifier.dropout,
                        head_init=cfg.classifier.head_init, stem_stride=tuple(cfg.classifier.stem_stride))


def _cell_dir(out: Path, key: str, regime: str, size: float, seed: int) -> Path:
    return out / "cells" / key / f"{regime}_d{size:g}_s{seed}"  # key = "<cell_key>-<data_key>"


def _fingerprint(origin: str | Path) -> str:
    m = Path(origin) / "manifest.csv"
    return file_sha256(m)[:16] if m.is_file() else str(origin)


def data_key(cfg: Config, real: BaseSet | None, synthetic: BaseSet | None, injector, need_syn: bool) -> str:
    """Hash of the inputs (cohort manifests, injector checkpoint): a rebuilt cohort or new injector reruns cells."""
    r = real.origin if real is not None else str(real_base_root(cfg))
    syn = "-"
    if need_syn:
        syn = synthetic.origin if synthetic is not None else str(cfg.data_dir / "synthetic" / "ctsgan")
    if injector is not None:
        inj = json.dumps(injector_tag(injector), sort_keys=True)
    else:
        ck = latest_checkpoint(cfg.runs_dir / "nodules" / "injector")
        inj = file_sha256(ck)[:16] if ck is not None else "none"
    return hashlib.sha1(f"{_fingerprint(r)}|{_fingerprint(syn)}|{inj}".encode()).hexdigest()[:12]


def _row_key(r: dict) -> tuple:
    return (r.get("regime") or r.get("train_cohort"), float(r["size_vox"]), int(r["seed"]))


def _done(path: Path, kind: str, key: str, dkey: str) -> set[tuple]:
    return {_row_key(r) for r in read_jsonl(path)
            if r.get("kind") == kind and r.get("cell_key") == key and r.get("data_key") == dkey}


def current_records(cfg: Config, path: str | Path, kind: str = "grid") -> list[dict]:
    """Result lines of this config (``cell_key``), the newest line per (regime or cohort, size, seed)."""
    key = cell_key(cfg)
    latest: dict[tuple, dict] = {}
    for r in read_jsonl(path):
        if r.get("kind") == kind and r.get("cell_key") == key:
            latest[_row_key(r)] = r
    return list(latest.values())


def _record(cfg: Config, kind: str, key: str, device: str, **fields: Any) -> dict[str, Any]:
    return {"kind": kind, "profile": cfg.profile, "cell_key": key, **fields,
            "config": {"classifier": cfg.to_dict()["classifier"], "data_size": cfg.data.size,
                       "hu_window": [cfg.data.hu_min, cfg.data.hu_max]},
            "hardware": hardware_info(device), "hardware_label": hardware_label(device),
            "commit": git_commit(Path(__file__).resolve().parents[1]),  # the code's checkout, not CTSGAN_ROOT
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")}


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
        Nodule-free bases; default read from ``data/<P>/debiased`` (or ``cohort``) and ``data/<P>/synthetic/ctsgan``.
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
    from tqdm.auto import tqdm

    ccfg = cfg.classifier
    out = Path(out) if out is not None else cfg.runs_dir / "classifier"
    out.mkdir(parents=True, exist_ok=True)
    device = device or default_device()
    sizes = [float(s) for s in (sizes if sizes is not None else ccfg.sizes)]
    seeds = [int(s) for s in (seeds if seeds is not None else ccfg.seeds)]
    regimes = list(regimes if regimes is not None else ccfg.regimes)
    bad = [r for r in regimes if r not in REGIMES]
    if bad:
        raise CTSGANError(f"classifier.regimes: unknown regime(s) {bad}; choose from {', '.join(REGIMES)}")
    key = cell_key(cfg)
    results = out / RESULTS
    need_syn = any(r in ("synthetic", "pretrain_finetune") for r in regimes)
    dkey = data_key(cfg, real, synthetic, injector, need_syn)
    done = _done(results, "grid", key, dkey)
    todo = [(d, s) for d in sizes for s in seeds if any((r, d, s) not in done for r in regimes)]
    if not todo:
        return results
    real = real if real is not None else load_real_base(cfg, progress=progress)
    if need_syn and synthetic is None:
        synthetic = load_synthetic_base(cfg, progress=progress)
    injector = injector if injector is not None else load_injector(cfg)
    job = _GridJob(cfg, regimes, real, synthetic if need_syn else None, injector, out, key, dkey, device)
    workers = max(1, min(int(getattr(ccfg, "workers", 1)), len(todo)))
    if _distributed_run():
        workers = 1  # under torchrun the ranks already split the work
    bar = tqdm(total=len(todo), desc="classifier grid", disable=not progress)
    if workers == 1:
        emit = (lambda rec: append_jsonl(results, rec)) if _is_main() else (lambda rec: None)
        for d, seed in todo:
            job.run_cell(d, seed, done, progress, emit)  # each regime's line is written as soon as it finishes
            bar.update()
    else:
        # independent (size, seed) cells in parallel processes, the cores split between them: on a small CPU this
        # beats one process with all threads (single-threaded data building, small 3D convs scale poorly)
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

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

    def run_cell(self, d: float, seed: int, done: set, progress: bool,
                 emit: Callable[[dict], None] | None = None) -> list[dict]:
        """Train and test every regime of cell (d, seed) not yet in ``done``; returns their result records, and
        hands each to ``emit`` as soon as its regime finishes (so an interrupted cell keeps its finished regimes)."""
        cfg, ccfg, regimes, out = self.cfg, self.cfg.classifier, self.regimes, self.out
        real, synthetic, injector, device = self.real, self.synthetic, self.injector, self.device
        # checkpoint folders carry config and data keys: a config or data change never reuses old weights
        key, dkey, ckey = self.key, self.dkey, f"{self.key}-{self.dkey}"
        need_syn, inj = synthetic is not None, injector_tag(injector)
        records: list[dict] = []
        t_data = time.perf_counter()
        data = build_cell_data(real, synthetic if need_syn else None, d, seed, injector, cfg)
        t_data = time.perf_counter() - t_data
        info = {"real_source": real.origin, "real_sources": real.sources,
                "synthetic_source": synthetic.origin if need_syn else None,
                "synthetic_sources": synthetic.sources if need_syn else None, "injector": inj,
                "n_train": len(data.train), "n_val": len(data.val), "n_test": len(data.test),
                "n_synthetic": len(data.synthetic) if data.synthetic is not None else 0,
                "test_positives": int(data.test.labels.sum()), "design": "paired (each base clean and injected)",
                "dropped_lung_too_small": data.dropped,
                "lung_mask_fallback": {"real": sum(v.lung_fallback for v in real.volumes),
                                       "synthetic": sum(v.lung_fallback for v in synthetic.volumes) if need_syn
                                       else 0},
                "build_s": round(t_data, 2)}
        pretrained = None
        for regime in regimes:
            if (regime, d, seed) in done:
                continue
            t0 = time.perf_counter()
            if regime in ("synthetic", "pretrain_finetune") and pretrained is None:
                # the synthetic regime *is* the pretraining run; resume=True reuses its final.pt when it exists
                syn_model = _make_model(cfg, seed)
                pre = train_classifier(syn_model, data.synthetic, data.val, cfg,
                                       _cell_dir(out, ckey, "synthetic", d, seed), seed, ccfg.epochs, device=device,
                                       progress=progress, desc=f"synthetic d={d:g} s={seed}")
                pretrained = (syn_model, pre, {k: v.detach().cpu().clone() for k, v in syn_model.state_dict().items()})
            if regime == "synthetic":
                model, summary = pretrained[0], pretrained[1]
            elif regime == "real":
                model = _make_model(cfg, seed)
                summary = train_classifier(model, data.train, data.val, cfg, _cell_dir(out, ckey, "real", d, seed),
                                           seed, ccfg.epochs, device=device, progress=progress,
                                           desc=f"real d={d:g} s={seed}")
            else:
                model = _make_model(cfg, seed)
                summary = train_classifier(model, data.train, data.val, cfg,
                                           _cell_dir(out, ckey, "pretrain_finetune", d, seed), seed,
                                           ccfg.finetune_epochs, device=device, init_state=pretrained[2],
                                           progress=progress, desc=f"finetune d={d:g} s={seed}")
            metrics = evaluate(model, data.test, device, ccfg.batch)
            rec = _record(cfg, "grid", key, device, data_key=dkey, regime=regime, size_vox=d, seed=seed,
                          metrics=metrics,
                          selection={k: summary.get(k) for k in ("best_epoch", "best_val_loss", "epochs_run",
                                                                  "stopped_early")},
                          data=info, wall_s=round(time.perf_counter() - t0, 2))
            records.append(rec)
            done.add((regime, d, seed))
            if emit is not None:
                emit(rec)
        return records


_WORKER_JOB: _GridJob | None = None


def _init_grid_worker(job: _GridJob, threads: int) -> None:
    global _WORKER_JOB
    torch.set_num_threads(threads)
    _WORKER_JOB = job


def _grid_worker_cell(d: float, seed: int, done: set) -> list[dict]:
    return _WORKER_JOB.run_cell(d, seed, set(done), progress=False)


# ------------------------------------------------------------------------------------------------ shortcut control
def shortcut_split(real: BaseSet, seed: int, fractions: Sequence[float] = (0.75, 0.125, 0.125)
                   ) -> dict[str, list[BaseVolume]]:
    """Seeded per-domain train/val/test split of the nodule-free bases (at least 2/1/1 per domain).

    Raises
    ------
    CTSGANError
        When a domain is missing or has fewer than 4 nodule-free volumes.
    """
    out: dict[str, list[BaseVolume]] = {s: [] for s in SPLITS}
    for domain in ("lidc-like", "nlst-like"):
        vols = sorted((v for v in real.volumes if v.domain == domain), key=lambda v: v.id)
        if len(vols) < 4:
            raise CTSGANError(f"{real.origin}: the shortcut control needs at least 4 nodule-free {domain} volumes, "
                              f"found {len(vols)} (domains present: {sorted({v.domain for v in real.volumes})})")
        order = _rng(seed, "shortcut", domain).permutation(len(vols))
        n_val = max(1, int(round(fractions[1] * len(vols))))
        n_test = max(1, int(round(fractions[2] * len(vols))))
        n_train = len(vols) - n_val - n_test
        if n_train < 2:
            n_train, n_val, n_test = 2, 1, len(vols) - 3
        idx = {"train": order[:n_train], "val": order[n_train:n_train + n_val], "test": order[n_train + n_val:]}
        for s in SPLITS:
            out[s] += [vols[i] for i in sorted(idx[s])]
    return out


def shortcut_datasets(split: dict[str, list[BaseVolume]], diameter_vox: float, seed: int, injector, cfg: Config
                      ) -> dict[str, ClassifierDataset]:
    """Training/validation sets of the biased and debiased conditions and the three test sets.

    - ``biased_*``: nodules in every lidc-like volume, none in nlst-like ones;
    - ``debiased_*``: nodules in a seeded half of each domain (same number of volumes as biased);
    - ``test_swapped``: nodules in every nlst-like test volume, none in lidc-like ones;
    - ``test_debiased``: every test base clean and injected (paired);
    - ``test_biased``: like the biased training data.
    """
    count_fn = _count_fn()
    lidc = lambda b: b.domain == "lidc-like"  # noqa: E731
    nlst = lambda b: b.domain == "nlst-like"  # noqa: E731
    sets: dict[str, ClassifierDataset] = {}
    for s in ("train", "val"):
        sets[f"biased_{s}"] = paired_dataset(split[s], diameter_vox, seed, injector, cfg, count_fn,
                                             positive=lidc, negative=nlst)
        # alternate labels along (domain, seeded order): each domain is as close to half-positive as its count
        # allows and the split as a whole stays balanced (a 1-volume domain does not take the same label twice)
        order = []
        for dom in ("lidc-like", "nlst-like"):
            ids = sorted(b.id for b in split[s] if b.domain == dom)
            order += [ids[i] for i in _rng(seed, "half", s, dom).permutation(len(ids))]
        half = set(order[0::2])
        sets[f"debiased_{s}"] = paired_dataset(split[s], diameter_vox, seed, injector, cfg, count_fn,
                                               positive=lambda b: b.id in half, negative=lambda b: b.id not in half)
    sets["test_swapped"] = paired_dataset(split["test"], diameter_vox, seed, injector, cfg, count_fn,
                                          positive=nlst, negative=lidc)
    sets["test_debiased"] = paired_dataset(split["test"], diameter_vox, seed, injector, cfg, count_fn)
    sets["test_biased"] = paired_dataset(split["test"], diameter_vox, seed, injector, cfg, count_fn,
                                         positive=lidc, negative=nlst)
    for name, ds in sets.items():
        check_classes(ds.labels, f"shortcut control: {name}")
    return sets


def run_shortcut_control(cfg: Config, out: str | Path | None = None, progress: bool = True, *,
                         real: BaseSet | None = None, injector=None, device: str | None = None,
                         size_vox: float | None = None, seeds: Sequence[int] | None = None) -> Path:
    """Train on the biased and on the debiased cohort; evaluate both on the domain-swapped (and other) test sets.

    One JSON line per (train cohort, seed) in ``<out>/shortcut.jsonl``; finished lines are skipped on a rerun.

    Parameters
    ----------
    size_vox : float, optional
        Injected diameter; default the largest of ``classifier.sizes`` (the easiest nodules, so a failure on the
        swapped set is the shortcut, not the size).
    """
    from tqdm.auto import tqdm

    ccfg = cfg.classifier
    out = Path(out) if out is not None else cfg.runs_dir / "classifier"
    out.mkdir(parents=True, exist_ok=True)
    device = device or default_device()
    d = float(size_vox if size_vox is not None else max(ccfg.sizes))
    seeds = [int(s) for s in (seeds if seeds is not None else ccfg.seeds)]
    key = cell_key(cfg)
    path = out / SHORTCUT
    dkey = data_key(cfg, real, None, injector, need_syn=False)
    ckey = f"{key}-{dkey}"
    done = _done(path, "shortcut", key, dkey)
    todo = [s for s in seeds if any((c, d, s) not in done for c in ("biased", "debiased"))]
    if not todo:
        return path
    real = real if real is not None else load_real_base(cfg, progress=progress)
    injector = injector if injector is not None else load_injector(cfg)
    for seed in tqdm(todo, desc="shortcut control", disable=not progress):
        split = shortcut_split(real, seed, cfg.data.split_fractions)
        sets = shortcut_datasets(split, d, seed, injector, cfg)
        for cohort in ("biased", "debiased"):
            if (cohort, d, seed) in done:
                continue
            t0 = time.perf_counter()
            model = _make_model(cfg, seed)
            summary = train_classifier(model, sets[f"{cohort}_train"], sets[f"{cohort}_val"], cfg,
                                       _cell_dir(out, ckey, f"shortcut_{cohort}", d, seed), seed, ccfg.epochs,
                                       device=device, progress=progress, desc=f"shortcut {cohort} s={seed}")
            metrics = {t: evaluate(model, sets[f"test_{t}"], device, ccfg.batch)
                       for t in ("swapped", "debiased", "biased")}
            rec = _record(cfg, "shortcut", key, device, data_key=dkey, train_cohort=cohort, size_vox=d, seed=seed,
                          metrics=metrics,
                          selection={k: summary.get(k) for k in ("best_epoch", "best_val_loss", "epochs_run")},
                          data={"real_source": real.origin, "real_sources": real.sources,
                                "injector": injector_tag(injector), "n_train": len(sets[f"{cohort}_train"]),
                                "n_test": {t: len(sets[f"test_{t}"]) for t in ("swapped", "debiased", "biased")},
                                "split": "seeded per-domain re-split of nodule-free bases"},
                          wall_s=round(time.perf_counter() - t0, 2))
            if _is_main():
                append_jsonl(path, rec)
            done.add((cohort, d, seed))
    return path


# ------------------------------------------------------------------------------------------------ reporting
def comparability_note(records: Iterable[dict]) -> str:
    """``"comparable ..."`` only for paper-profile runs on real LIDC/NLST data; otherwise says why not."""
    records = list(records)
    if not records:
        return "no results"
    profiles = sorted({r["profile"] for r in records})
    sources = sorted({s for r in records for s in (r["data"].get("real_sources") or [])})
    size = records[0]["config"]["data_size"]
    if profiles == ["paper"] and sources and set(sources) <= {"lidc", "nlst"}:
        return f"paper profile on real {'/'.join(sources)} data at {size}³ (comparable in setting to Fig 3b)"
    return (f"NOT comparable to the paper: profile {'/'.join(profiles)}, {'/'.join(sources) or 'unknown'} data, "
            f"{size}³ volumes")


def grid_table(records: Iterable[dict]):
    """Fig 3b numbers: one row per (regime, size) with mean ± std over seeds of the test metrics."""
    import pandas as pd

    rows = [{"regime": r["regime"], "size_vox": r["size_vox"], "seed": r["seed"], **{
        k: r["metrics"][k] for k in ("accuracy", "balanced_accuracy", "auc", "sensitivity", "specificity")},
        "n_test": r["metrics"]["n"]} for r in records if r.get("kind") == "grid"]
    cols = ["regime", "size_vox", "n_seeds", "seeds", "accuracy_mean", "accuracy_std", "balanced_accuracy_mean",
            "auc_mean", "sensitivity_mean", "specificity_mean", "n_test"]
    if not rows:
        return pd.DataFrame(columns=cols)
    df = pd.DataFrame(rows)
    g = df.groupby(["regime", "size_vox"], sort=False)
    out = g.agg(n_seeds=("seed", "nunique"), seeds=("seed", lambda s: ",".join(str(int(v)) for v in sorted(s))),
                accuracy_mean=("accuracy", "mean"), accuracy_std=("accuracy", lambda s: float(np.std(s, ddof=0))),
                balanced_accuracy_mean=("balanced_accuracy", "mean"), auc_mean=("auc", "mean"),
                sensitivity_mean=("sensitivity", "mean"), specificity_mean=("specificity", "mean"),
                n_test=("n_test", "first")).reset_index()
    order = {r: i for i, r in enumerate(REGIMES)}
    out = out.sort_values(["regime", "size_vox"], key=lambda c: c.map(order) if c.name == "regime" else c)
    return out.reset_index(drop=True)[cols]


def regime_ordering(table) -> str:
    """Regimes ranked by mean accuracy over all sizes, as found (e.g. ``"pretrain_finetune > real > synthetic"``)."""
    if len(table) == 0:
        return "no results"
    means = table.groupby("regime")["accuracy_mean"].mean().sort_values(ascending=False)
    parts = [f"{r} ({m:.3f})" for r, m in means.items()]
    out = parts[0]
    for (r_prev, m_prev), (r, m), p in zip(means.items(), list(means.items())[1:], parts[1:]):
        out += (" = " if math.isclose(m, m_prev, abs_tol=1e-9) else " > ") + p
    return out


def shortcut_table(records: Iterable[dict]):
    """Shortcut control: rows = training cohort, columns = test set accuracy (mean ± std over seeds)."""
    import pandas as pd

    rows = []
    for r in records:
        if r.get("kind") != "shortcut":
            continue
        for t, m in r["metrics"].items():
            rows.append({"train_cohort": r["train_cohort"], "test_set": t, "seed": r["seed"],
                         "accuracy": m["accuracy"], "auc": m["auc"], "size_vox": r["size_vox"]})
    if not rows:
        return pd.DataFrame(columns=["train_cohort", "test_set", "accuracy_mean", "accuracy_std", "auc_mean",
                                     "n_seeds", "size_vox"])
    df = pd.DataFrame(rows)
    out = df.groupby(["train_cohort", "test_set"]).agg(
        accuracy_mean=("accuracy", "mean"), accuracy_std=("accuracy", lambda s: float(np.std(s, ddof=0))),
        auc_mean=("auc", "mean"), n_seeds=("seed", "nunique"), size_vox=("size_vox", "first")).reset_index()
    return out


def caption(records: Sequence[dict], what: str) -> str:
    """One line: profile, data source, injector, seeds, hardware, comparability."""
    if not records:
        return f"{what}: no results"
    r0 = records[0]
    seeds = sorted({int(r["seed"]) for r in records})
    hw = sorted({r["hardware_label"] for r in records})
    inj = r0["data"]["injector"]
    inj_s = Path(inj["checkpoint"]).name if inj.get("checkpoint") else inj.get("model", "?")
    syn = r0["data"].get("synthetic_source")
    return (f"{what} | profile {r0['profile']} | real data {r0['data']['real_source']} "
            f"({'/'.join(r0['data'].get('real_sources') or [])})" + (f" | synthetic {syn}" if syn else "") +
            f" | injector {inj_s} | seeds {seeds} | hardware {'; '.join(hw)} | {comparability_note(records)}")


def annotate_table(table, records: Sequence[dict]):
    """Add provenance columns (profile, data, injector, hardware, comparability) so the table says it itself."""
    t = table.copy()
    if not records:
        return t
    r0 = records[0]
    inj = r0["data"]["injector"]
    t["profile"] = r0["profile"]
    t["real_data"] = "/".join(r0["data"].get("real_sources") or []) + f" ({Path(r0['data']['real_source']).name})"
    t["injector"] = Path(inj["checkpoint"]).name if inj.get("checkpoint") else inj.get("model", "?")
    t["hardware"] = "; ".join(sorted({r["hardware_label"] for r in records}))
    t["vs_paper"] = comparability_note(records)
    return t


def save_table(table, path_base: str | Path, title: str = "") -> list[Path]:
    """Write ``<base>.csv`` and ``<base>.md`` (with ``title`` as its first line) atomically."""
    from .utils.atomic import atomic_write_text

    path_base = Path(path_base)
    csv_p, md_p = path_base.with_suffix(".csv"), path_base.with_suffix(".md")
    atomic_write_text(csv_p, table.to_csv(index=False))
    body = table.to_markdown(index=False, floatfmt=".3f") if _has_tabulate() else table.to_string(index=False)
    atomic_write_text(md_p, (f"{title}\n\n" if title else "") + body + "\n")
    return [csv_p, md_p]


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
        return True
    except ImportError:
        return False


def plot_fig3b(table, path_base: str | Path, title: str = "", note: str = ""):
    """Accuracy vs nodule size, one line per regime, mean ± std over seeds; saved as ``<base>.png`` and ``.pdf``.

    Returns ``(figure, [png, pdf])``; the figure stays open so a notebook shows it (close it elsewhere).
    """
    import matplotlib.pyplot as plt

    from .utils.atomic import atomic_path

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    labels = {"real": "real only", "synthetic": "synthetic only",
              "pretrain_finetune": "synthetic pretrain + real fine-tune"}
    sizes = sorted(set(table["size_vox"]))
    dodge = 0.02 * ((sizes[-1] - sizes[0]) or 1.0)  # small x offsets so equal lines stay visible
    for i, regime in enumerate([r for r in REGIMES if r in set(table["regime"])]):
        t = table[table["regime"] == regime].sort_values("size_vox")
        ax.errorbar(t["size_vox"] + (i - 1) * dodge, t["accuracy_mean"], yerr=t["accuracy_std"], marker="o", capsize=3,
                    label=labels.get(regime, regime))
    ax.set_xticks(sizes)
    ax.set_xlabel("injected nodule diameter (voxels; lines offset slightly for visibility)")
    ax.set_ylabel("test accuracy (balanced test set)")
    ax.set_ylim(-0.02, 1.02)
    ax.axhline(0.5, color="0.6", lw=0.8, ls=":")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(title or "Fig 3b: nodule detection accuracy vs nodule size", fontsize=10)
    if note:
        fig.text(0.01, 0.005, note, fontsize=6, ha="left", va="bottom", wrap=True)
        fig.subplots_adjust(bottom=0.22)
    path_base = Path(path_base)
    paths = []
    for ext in ("png", "pdf"):
        p = path_base.with_suffix(f".{ext}")
        with atomic_path(p) as tmp:
            fig.savefig(tmp, dpi=150, format=ext)
        paths.append(p)
    return fig, paths
