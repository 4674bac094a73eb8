"""Device-shortcut control of the nodule-detection study (beyond the paper).

The same classifier trained on a *biased* cohort (nodules only in lidc-like volumes) and on a *debiased* one (half of
each domain carries nodules), both evaluated on a *domain-swapped* test set (nodules only in nlst-like volumes), on a
paired debiased test set and on a biased one. A classifier that learned the scanner domain instead of the nodule
scores near 0 on the swapped set. The control uses only real nodule-free bases of both domains (re-split per domain
with a seeded draw, since it never touches the synthetic data) and the largest grid size. One JSON line per
(train cohort, seed) in ``shortcut.jsonl``.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

from tqdm.auto import tqdm

from ..config import Config
from ..data.cohort import SPLITS
from ..errors import CTSGANError
from ..eval.classification import check_classes
from ..train.classifier_loop import ClassifierDataset, evaluate, train_classifier
from ..utils.hardware import default_device
from ..utils.logs import append_jsonl
from .cells import (BaseSet, BaseVolume, cell_rng, injector_tag, load_injector, load_real_base, nodule_count_fn,
                    paired_dataset)
from .grid import cell_dir, cell_key, data_key, done_keys, is_main, make_model, make_record

SHORTCUT = "shortcut.jsonl"


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
        order = cell_rng(seed, "shortcut", domain).permutation(len(vols))
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
    count_fn = nodule_count_fn()
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
            order += [ids[i] for i in cell_rng(seed, "half", s, dom).permutation(len(ids))]
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
    done = done_keys(path, "shortcut", key, dkey)
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
            model = make_model(cfg, seed)
            summary = train_classifier(model, sets[f"{cohort}_train"], sets[f"{cohort}_val"], cfg,
                                       cell_dir(out, ckey, f"shortcut_{cohort}", d, seed), seed, ccfg.epochs,
                                       device=device, progress=progress, desc=f"shortcut {cohort} s={seed}")
            metrics = {t: evaluate(model, sets[f"test_{t}"], device, ccfg.batch)
                       for t in ("swapped", "debiased", "biased")}
            rec = make_record(cfg, "shortcut", key, device, data_key=dkey, train_cohort=cohort, size_vox=d, seed=seed,
                          metrics=metrics,
                          selection={k: summary.get(k) for k in ("best_epoch", "best_val_loss", "epochs_run")},
                          data={"real_source": real.origin, "real_sources": real.sources,
                                "injector": injector_tag(injector), "n_train": len(sets[f"{cohort}_train"]),
                                "n_test": {t: len(sets[f"test_{t}"]) for t in ("swapped", "debiased", "biased")},
                                "split": "seeded per-domain re-split of nodule-free bases"},
                          wall_s=round(time.perf_counter() - t0, 2))
            if is_main():
                append_jsonl(path, rec)
            done.add((cohort, d, seed))
    return path
