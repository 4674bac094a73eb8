"""Stage 06, nodule-detection experiments: the Fig 3b grid (paper §3, §4.2) and the device-shortcut control (beyond the paper).

**Grid.** Regimes ``real`` / ``synthetic`` / ``pretrain_finetune`` × nodule sizes (``cfg.classifier.sizes``, diameters
in voxels at S³ of the *injected* nodules) × seeds. ``classifier.design`` says what a cell holds:

- ``paper`` (default; paper §3.1, Fig 3a, §4.2): the real train/val/test splits are the debiased cohort's own, each
  volume once: native positives (lidc-like scans that keep their real nodules), injected positives (the nlst-like
  half, injected here with nodules of the cell's size), erased negatives and clean negatives; the test split is
  balanced. The synthetic training set is the generated cohort (``n_synthetic`` volumes): the half ``ctsgan
  generate`` injected gets nodules of the cell's size, the other half stays clean. Every result line records the four
  counts per split and the test metrics of native and of injected positives separately.
- ``paired`` (ours, the earlier design): only nodule-free volumes, each twice, clean (label 0) and injected (label 1),
  so nothing but the injected nodule separates the classes; it measures whether a detector finds the injector's own
  nodules.

The number of injected nodules in a positive volume is drawn from the LIDC per-scan distribution (capped at
``max_nodules``); the seed sets it, the nodule locations and the classifier's initialisation (paper §4.2), never the
negatives. Validation and test are always real. ``pretrain_finetune`` starts from the model the ``synthetic`` regime
selected (same seed, same data: pretraining is that run) and fine-tunes on real.

**Data scarcity (Fig 3c, beyond the paper).** ``real`` and ``pretrain_finetune`` at one size with a share
(``classifier.real_fractions``) of the real training volumes, per kind (:func:`run_scarcity`, ``scarcity.jsonl``).

**Shortcut control.** The same classifier trained on a *biased* cohort (nodules only in lidc-like volumes) and on a
*debiased* one (half of each domain carries nodules), both evaluated on a *domain-swapped* test set (nodules only in
nlst-like volumes), on a paired debiased test set and on a biased one. A classifier that learned the scanner domain
instead of the nodule scores near 0 on the swapped set. The control uses only real nodule-free bases of both domains
(re-split per domain with a seeded draw, since it never touches the synthetic data) and the largest grid size.

Results are JSON lines (``results.jsonl``, ``shortcut.jsonl``) with config, data sources, metrics and hardware; a rerun
skips finished cells. Modules, lowest first: :mod:`~.streamed` (one item made on demand; the streamed dataset that keeps a cell's
memory flat at paper scale), :mod:`~.cells` (base volumes, cell datasets), :mod:`~.grid` (the grid
runner), :mod:`~.shortcut` (the control). Tables, captions and plots of the records: :mod:`ctsgan_lib.reporting.classifier`.
"""
from .cells import (DESIGNS, KINDS, MIN_LUNG_VOXELS, BaseSet, BaseVolume, CellData, build_cell_data, central_mask,
                    cell_rng, debias_role, inject_volume, injector_tag, item_kinds, kind_counts, load_injector,
                    load_real_base, load_real_cohort, load_synthetic_base, load_synthetic_cohort, nodule_count_fn,
                    paired_dataset, real_base_root, scarce_subset)
from .streamed import StreamedPairedDataset, should_stream
from .grid import (REGIMES, RESULTS, SCARCITY, SCARCITY_REGIMES, cell_key, current_records, data_key, kind_metrics,
                   load_bases, make_model, run_grid, run_scarcity, scarcity_size)
from .shortcut import SHORTCUT, run_shortcut_control, shortcut_datasets, shortcut_split

__all__ = [
    "DESIGNS", "KINDS", "debias_role", "item_kinds", "kind_counts", "load_real_cohort", "load_synthetic_cohort",
    "scarce_subset", "load_bases", "SCARCITY", "SCARCITY_REGIMES", "kind_metrics", "run_scarcity", "scarcity_size",
    "MIN_LUNG_VOXELS", "BaseSet", "BaseVolume", "CellData", "build_cell_data", "central_mask", "cell_rng",
    "inject_volume", "injector_tag", "load_injector", "load_real_base", "load_synthetic_base", "nodule_count_fn",
    "paired_dataset", "real_base_root", "REGIMES", "RESULTS", "cell_key", "current_records", "data_key", "make_model",
    "run_grid", "StreamedPairedDataset", "should_stream", "SHORTCUT", "run_shortcut_control", "shortcut_datasets", "shortcut_split",
]
