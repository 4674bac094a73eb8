"""Conditional CT-SGAN volumes for measurement and for the detection study (ours, issue 26).

- :func:`generator_maker`: volumes of a conditional checkpoint under a requested condition, by volume index (volume
  ``i`` depends on ``(seed, i, condition)`` only, as in a generated cohort).
- :func:`measure_conditioning`: the conditioning AUC per requested size (a detector trained on real data only scores
  volumes generated with and without nodules) and the measured size of the generated nodules
  (:mod:`ctsgan_lib.eval.conditioning` does the arithmetic).
- :func:`real_only_detector`: the real-only detector of the Fig 3b grid for one size and seed.
- :func:`conditional_training_set`: the synthetic training set of a detection-study cell made by the conditional
  model (nodules by condition, no injector), in the form the grid's synthetic set takes (a paired
  :class:`~ctsgan_lib.train.classifier_loop.ClassifierDataset`): the fourth regime of Fig 3b.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..config import Config
from ..errors import CTSGANError, MissingInputError
from ..eval.conditioning import conditioning_auc, largest_blob_diameter_vox, size_agreement
from ..models.ctsgan_cond import CondCTSGANGenerator, condition_vector, condition_with_z
from ..models.squeezenet3d import SqueezeNet3D
from ..train.classifier_loop import ClassifierDataset, predict
from ..utils.checkpoint import latest_checkpoint, load_checkpoint, load_state_strict
from .sampling import generate_volumes, load_generator

#: ``make(n_nodules, diameter_vox, start, n)`` → ``n`` HU volumes (z, y, x), volume indices ``start .. start + n − 1``
VolumeMaker = Callable[[int, float, int, int], list]
#: ``score(volumes_hu)`` → one "nodule present" score per volume
Scorer = Callable[[Sequence[np.ndarray]], np.ndarray]


def load_conditional_generator(generator_or_ckpt, device: str = "cpu") -> CondCTSGANGenerator:
    """A conditional CT-SGAN generator from a ``ctsgan_cond`` checkpoint (or one already loaded)."""
    gen = load_generator(generator_or_ckpt, device) if isinstance(generator_or_ckpt, (str, Path)) \
        else generator_or_ckpt
    if not isinstance(gen, CondCTSGANGenerator):
        where = getattr(gen, "meta", {}).get("checkpoint", "in memory")
        raise CTSGANError(f"{where}: not a conditional CT-SGAN (train one with `ctsgan train ctsgan_cond`)")
    return gen


def generator_maker(generator_or_ckpt, seed: int, batch: int = 4, device: str = "cpu") -> VolumeMaker:
    """A :data:`VolumeMaker` over a conditional generator: every volume of a call under the same condition (a
    ``cond_z`` model puts the nodules at the middle of the depth)."""
    gen = load_conditional_generator(generator_or_ckpt, device)

    def make(n_nodules: int, diameter_vox: float, start: int, n: int) -> list[np.ndarray]:
        if gen.cond_z:
            mid = [(gen.size - 1) / 2.0] * int(n_nodules)
            cond = condition_with_z(n_nodules, diameter_vox, mid, gen.size - 2)[None].expand(n, -1, -1)
        else:
            cond = condition_vector(n_nodules, diameter_vox)[None].expand(n, -1)
        with torch.inference_mode():
            return [hu for hu, _ in generate_volumes(gen, n, seed, batch=batch, device=device, start=start,
                                                     conditions=cond)]

    return make


def load_detector(path: str | Path, device: str = "cpu") -> SqueezeNet3D:
    """The 3D SqueezeNet of a classifier checkpoint (``final.pt`` of a grid cell), in eval mode."""
    ck = load_checkpoint(path, kind="classifier", map_location="cpu")
    c = ck["config"]
    model = SqueezeNet3D(in_channels=int(c.get("in_channels", 1)), num_classes=2, dropout=float(c.get("dropout", 0.5)),
                         head_init=c.get("head_init", "small"), stem_stride=tuple(c.get("stem_stride", (1, 2, 2))))
    load_state_strict(model, ck["models"]["model"], str(path))
    return model.to(device).eval()


def real_only_detector(cfg: Config, diameter_vox: float, seed: int, root: str | Path | None = None) -> Path:
    """``final.pt`` of the real-only regime of the Fig 3b grid for this size and seed (the newest, if the grid ran
    under several settings).

    Raises
    ------
    MissingInputError
        Notebook 06 (``ctsgan classify``) has not trained it.
    """
    root = Path(root) if root is not None else cfg.runs_dir / "classifier"
    # the grid's cell folders: cells/<cell_key>-<data_key>/real_d<size>_s<seed>/ (experiments.grid.cell_dir)
    hits = sorted((root / "cells").glob(f"*/real_d{float(diameter_vox):g}_s{int(seed)}/final.pt"),
                  key=lambda p: p.stat().st_mtime)
    if not hits:
        raise MissingInputError(f"missing input {root}/cells/*/real_d{float(diameter_vox):g}_s{int(seed)}/final.pt: "
                                f"run 06_nodule_detection.ipynb (or `ctsgan classify`) first")
    return hits[-1]


def detector_scorer(model: torch.nn.Module, hu_min: float, hu_max: float, device: str = "cpu",
                    batch: int = 4) -> Scorer:
    """A :data:`Scorer`: the detector's probability of "nodule present", volumes normalised as in its training."""

    def score(volumes_hu: Sequence[np.ndarray]) -> np.ndarray:
        ds = ClassifierDataset.from_hu(list(volumes_hu), np.zeros(len(volumes_hu), int), hu_min=hu_min,
                                       hu_max=hu_max)
        return predict(model, ds, device, batch)[0]

    return score


def measure_conditioning(make: VolumeMaker, scorer_for_size: Callable[[float], Scorer], sizes: Sequence[float],
                         n_per_group: int, n_nodules: int = 1, n_boot: int = 1000, seed: int = 0,
                         spacing_mm: Sequence[float] | None = None) -> list[dict[str, Any]]:
    """Conditioning AUC and measured nodule size per requested diameter.

    The volumes without nodules are indices ``0 .. n − 1``; those of size ``sizes[k]`` are indices
    ``(k + 1)·n ..``: every group has its own noise, so an ignored condition gives two samples of one distribution
    (AUC ≈ 0.5) and never identical twins.

    Parameters
    ----------
    make : VolumeMaker
        E.g. :func:`generator_maker`.
    scorer_for_size : callable
        ``d → Scorer``; the real-only detector of size ``d`` (:func:`real_only_detector`, :func:`detector_scorer`).
    sizes : sequence of float
        Requested diameters (voxels).
    n_per_group : int
        Volumes with, and volumes without, nodules per size.
    n_nodules : int
        The count in the nodule condition.
    n_boot, seed : int
        Bootstrap of the AUC interval.
    spacing_mm : sequence of float, optional
        For the lung mask of the size measurement (default: radii in voxels).

    Returns
    -------
    list of dict
        One record per size: ``diameter_vox``, ``n_nodules``, the :func:`~ctsgan_lib.eval.conditioning.conditioning_auc`
        fields, ``size`` (:func:`~ctsgan_lib.eval.conditioning.size_agreement`), ``scores_with``, ``scores_without``.
    """
    if n_per_group < 2:
        raise CTSGANError(f"conditioning AUC needs at least 2 volumes per group (got {n_per_group})")
    without = make(0, 0.0, 0, n_per_group)
    blobs_without = [largest_blob_diameter_vox(v, spacing_mm) for v in without]
    records = []
    for k, d in enumerate(sizes):
        with_ = make(int(n_nodules), float(d), (k + 1) * n_per_group, n_per_group)
        score = scorer_for_size(float(d))
        s_with, s_without = np.asarray(score(with_)), np.asarray(score(without))
        blobs = [largest_blob_diameter_vox(v, spacing_mm) for v in with_]
        records.append({"diameter_vox": float(d), "n_nodules": int(n_nodules),
                        **conditioning_auc(s_with, s_without, n_boot, seed),
                        "size": size_agreement(float(d), blobs, blobs_without),
                        "scores_with": [float(x) for x in s_with], "scores_without": [float(x) for x in s_without]})
    return records


def conditional_training_set(cfg: Config, generator_or_ckpt, diameter_vox: float, seed: int, n: int | None = None,
                             n_nodules: int = 1, batch: int = 4, device: str = "cpu") -> ClassifierDataset:
    """The synthetic training set of one (size, seed) cell of Fig 3b made by the conditional CT-SGAN.

    Paired, as the injector-based synthetic set (``experiments.cells.paired_dataset``): each of ``n`` noise draws
    (volume indices ``0 .. n − 1`` of the run seeded ``seed``) is generated twice, under "no nodules" (label 0, id
    ``cond-<i>``) and under ``n_nodules`` nodules of ``diameter_vox`` (label 1, id ``cond-<i>+nod``), so the
    condition is all that separates the classes. No injector is involved.

    Parameters
    ----------
    cfg : Config
        ``data.hu_min``/``hu_max`` (normalisation, as every grid dataset) and ``classifier.n_synthetic`` (default
        ``n`` = half of it, as the injector-based set takes ``n_synthetic // 2`` bases).
    generator_or_ckpt
        A ``ctsgan_cond`` checkpoint or generator.
    diameter_vox : float
        The cell's nodule size.
    seed : int
        The cell's seed (the generation seed of its volumes).

    Returns
    -------
    ClassifierDataset
        ``2n`` items, labels 0/1 alternating by pair, ``dropped_ids`` empty (nothing is injected, nothing drops).
    """
    n = max(1, cfg.classifier.n_synthetic // 2) if n is None else int(n)
    make = generator_maker(generator_or_ckpt, seed, batch, device)
    clean, nod = make(0, 0.0, 0, n), make(int(n_nodules), float(diameter_vox), 0, n)
    units, labels, ids = [], [], []
    for i, (a, b) in enumerate(zip(clean, nod)):
        units += [a, b]
        labels += [0, 1]
        ids += [f"cond-{i:06d}", f"cond-{i:06d}+nod"]
    ds = ClassifierDataset.from_hu(units, labels, ids, cfg.data.hu_min, cfg.data.hu_max)
    ds.dropped_ids = []
    return ds


def latest_conditional_checkpoint(cfg: Config) -> Path:
    """The newest checkpoint under ``runs/<P>/ctsgan_cond`` (MissingInputError naming what to run first)."""
    folder = cfg.runs_dir / "ctsgan_cond"
    ck = latest_checkpoint(folder)
    if ck is None:
        raise MissingInputError(f"missing input {folder}/ckpt_*.pt: run 09_conditional_ctsgan.ipynb's training cell "
                                f"(or `ctsgan train ctsgan_cond`) first")
    return ck


__all__ = ["VolumeMaker", "Scorer", "load_conditional_generator", "generator_maker", "load_detector",
           "real_only_detector", "detector_scorer", "measure_conditioning", "conditional_training_set",
           "latest_conditional_checkpoint"]
