"""Stage 06, nodule-detection experiments: the Fig 3b grid (paper §3, §4.2) and the device-shortcut control (beyond the paper).

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
skips finished cells. Modules, lowest first: :mod:`~.streamed` (one item made on demand; the streamed dataset that keeps a cell's
memory flat at paper scale), :mod:`~.cells` (base volumes, cell datasets), :mod:`~.grid` (the grid
runner), :mod:`~.shortcut` (the control). Tables, captions and plots of the records: :mod:`ctsgan_lib.reporting.classifier`.
"""
from .cells import (MIN_LUNG_VOXELS, BaseSet, BaseVolume, CellData, build_cell_data, central_mask, cell_rng,
                    inject_volume, injector_tag, load_injector, load_real_base, load_synthetic_base, nodule_count_fn,
                    paired_dataset, real_base_root)
from .streamed import StreamedPairedDataset, should_stream
from .grid import REGIMES, RESULTS, cell_key, current_records, data_key, make_model, run_grid
from .shortcut import SHORTCUT, run_shortcut_control, shortcut_datasets, shortcut_split

__all__ = [
    "MIN_LUNG_VOXELS", "BaseSet", "BaseVolume", "CellData", "build_cell_data", "central_mask", "cell_rng",
    "inject_volume", "injector_tag", "load_injector", "load_real_base", "load_synthetic_base", "nodule_count_fn",
    "paired_dataset", "real_base_root", "REGIMES", "RESULTS", "cell_key", "current_records", "data_key", "make_model",
    "run_grid", "StreamedPairedDataset", "should_stream", "SHORTCUT", "run_shortcut_control", "shortcut_datasets", "shortcut_split",
]
