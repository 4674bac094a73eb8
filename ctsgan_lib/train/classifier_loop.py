"""Training loop for the 3D-SqueezeNet nodule-detection classifier (paper §4.2).

Adam (lr 1e-4, betas 0.9/0.999), cross-entropy on two logits, whole volumes mapped to [0, 1] with
:func:`ctsgan_lib.data.intensity.hu_to_unit`. Model selection / early stopping on the validation split (lowest
validation loss, ``patience`` epochs). One checkpoint per epoch (only the newest is kept) holds model, optimizer,
epoch, RNG, the best state so far and the history, so an interrupted run resumes where it stopped; ``final.pt`` holds
the selected model. With ``torch.distributed`` initialised the loop uses a ``DistributedSampler`` and DDP.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler
from tqdm.auto import tqdm

from ..data.intensity import hu_to_unit
from ..eval.classification import binary_metrics
from ..utils.hardware import default_device
from ..utils.checkpoint import latest_checkpoint, load_checkpoint, load_state_strict, save_checkpoint, set_rng_state
from ..utils.logs import CSVLog
from ..utils.precision import autocast

KIND = "classifier"
LOG_FIELDS = ("step", "train_loss", "val_loss", "val_accuracy", "val_auc", "lr", "wall_s")


class ClassifierDataset(Dataset):
    """Whole volumes held in memory as float16 in [0, 1], with binary labels.

    float16 halves the memory of a per-cell dataset (paper scale: 224³ × 2 bytes = 22 MB a volume); items are
    returned as float32 ``(1, z, y, x)`` tensors.

    Parameters
    ----------
    unit : array (N, z, y, x) or list of arrays
        Intensities in [0, 1] (use :meth:`from_hu` for HU volumes).
    labels : sequence of {0, 1}
        1 = nodule present.
    ids : sequence of str, optional
        Volume ids (kept for reporting).
    """

    def __init__(self, unit, labels: Sequence[int], ids: Sequence[str] | None = None):
        self.unit = [np.asarray(u, dtype=np.float16) for u in unit]
        self.labels = np.asarray(labels, dtype=np.int64).ravel()
        if len(self.unit) != len(self.labels):
            raise ValueError(f"{len(self.unit)} volumes but {len(self.labels)} labels")
        self.ids = list(ids) if ids is not None else [str(i) for i in range(len(self.unit))]

    @classmethod
    def from_hu(cls, volumes_hu, labels, ids=None, hu_min: float = -1000.0, hu_max: float = 400.0
                ) -> "ClassifierDataset":
        """Build from HU volumes (float32 ``(z, y, x)``), normalised with ``hu_to_unit``."""
        return cls([hu_to_unit(np.asarray(v, dtype=np.float32), hu_min, hu_max).astype(np.float16)
                    for v in volumes_hu], labels, ids)

    def __len__(self) -> int:
        return len(self.unit)

    def __getitem__(self, i: int):
        return torch.from_numpy(self.unit[i].astype(np.float32))[None], int(self.labels[i])

    def subset(self, idx) -> "ClassifierDataset":
        idx = [int(i) for i in idx]
        return ClassifierDataset([self.unit[i] for i in idx], self.labels[idx], [self.ids[i] for i in idx])

    def concat(self, other: "ClassifierDataset") -> "ClassifierDataset":
        return ClassifierDataset(self.unit + other.unit, np.concatenate([self.labels, other.labels]),
                             self.ids + other.ids)

    @property
    def nbytes(self) -> int:
        return int(sum(u.nbytes for u in self.unit))


def loader_workers(ds: Dataset) -> int:
    """DataLoader worker processes for ``ds``: what a streamed dataset asks for (items made on demand), else 0.

    The order of items is drawn in this process either way, so the number of workers never changes a result.
    """
    return int(getattr(ds, "loader_workers", 0))


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


@torch.no_grad()
def predict(model: nn.Module, ds: Dataset, device: str | torch.device | None = None, batch: int = 8
            ) -> tuple[np.ndarray, np.ndarray, float]:
    """Probabilities of "nodule present", the labels, and the mean cross-entropy over ``ds``.

    The model is put in eval mode (dropout off, BatchNorm running statistics) and restored afterwards.
    """
    device = torch.device(device or default_device())
    was_training = model.training
    model.eval()
    probs, labels, loss_sum = [], [], 0.0
    for x, y in DataLoader(ds, batch_size=batch, shuffle=False, num_workers=loader_workers(ds)):
        x, y = x.to(device), y.to(device)
        with autocast(device.type, bf16=True):   # bf16 on CUDA only (paper scale); CPU stays float32
            logits = model(x)
        logits = logits.float()
        loss_sum += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
        probs.append(torch.softmax(logits, 1)[:, 1].cpu().numpy())
        labels.append(y.cpu().numpy())
    model.train(was_training)
    return np.concatenate(probs), np.concatenate(labels), loss_sum / max(1, len(ds))


def evaluate(model: nn.Module, ds: Dataset, device: str | torch.device | None = None, batch: int = 8
             ) -> dict[str, float]:
    """:func:`~ctsgan_lib.eval.classification.binary_metrics` of ``model`` on ``ds`` plus its mean ``loss``."""
    p, y, loss = predict(model, ds, device, batch)
    return {**binary_metrics(y, p), "loss": loss}


def train_classifier(model: nn.Module, train_ds: Dataset, val_ds: Dataset | None, cfg: Any, out_dir: str | Path,
                     seed: int, epochs: int, resume: bool = True, device: str | torch.device | None = None,
                     init_state: dict[str, torch.Tensor] | None = None, progress: bool = True,
                     desc: str = "classifier") -> dict[str, Any]:
    """Train ``model`` and leave the selected (best-validation) weights in it.

    Parameters
    ----------
    model : nn.Module
        E.g. :class:`~ctsgan_lib.models.squeezenet3d.SqueezeNet3D`; initialised by the caller (seed first).
    train_ds, val_ds : Dataset
        Items ``(x (1, z, y, x) float in [0, 1], label)``. ``val_ds=None``: no model selection, the last epoch is kept.
    cfg : Config or ClassifierConfig
        Uses ``lr``, ``betas``, ``batch``, ``patience`` of the classifier section.
    out_dir : str or Path
        Checkpoints (``ckpt_<epoch>.pt``, newest only), ``final.pt`` and ``log.csv``.
    seed : int
        Data order and dropout (the model's initialisation is the caller's, also seeded).
    epochs : int
        Upper bound on epochs (early stopping may end sooner).
    resume : bool
        Continue from ``final.pt`` (returns at once) or the newest checkpoint in ``out_dir``; False starts afresh.
    device : str, optional
        Default: CUDA when available.
    init_state : dict, optional
        Weights to start from (pretrain → fine-tune); ignored when resuming from a checkpoint.

    Returns
    -------
    dict
        ``best_epoch, best_val_loss, epochs_run, stopped_early, history`` (one dict per epoch), ``resumed``.
    """
    ccfg = getattr(cfg, "classifier", cfg)
    out_dir = Path(out_dir)
    device = torch.device(device or default_device())
    if _distributed() and device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())  # torchrun: one GPU per rank (LOCAL_RANK)
    rank0 = not _distributed() or dist.get_rank() == 0
    final = out_dir / "final.pt"
    model.to(device)

    if not resume and rank0:
        for p in [*out_dir.glob("ckpt_*.pt"), final]:
            p.unlink(missing_ok=True)
    if resume and final.is_file():
        ck = load_checkpoint(final, kind=KIND, map_location=device)
        load_state_strict(model, ck["models"]["model"], str(final))
        return {**ck["extra"]["summary"], "resumed": "final"}

    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=ccfg.lr, betas=tuple(ccfg.betas))
    start, history = 0, []
    best = {"epoch": 0, "val_loss": float("inf"), "state": None}
    bad_epochs, resumed = 0, None
    last = latest_checkpoint(out_dir) if resume else None
    if last is not None:
        ck = load_checkpoint(last, kind=KIND, map_location=device)
        load_state_strict(model, ck["models"]["model"], str(last))
        opt.load_state_dict(ck["optimizers"]["opt"])
        ex = ck["extra"]
        start, history, bad_epochs = ck["step"], list(ex["history"]), int(ex["bad_epochs"])
        best = {"epoch": int(ex["best_epoch"]), "val_loss": float(ex["best_val_loss"]),
                "state": ex.get("best_state")}
        if ck.get("rng") is not None:
            set_rng_state(ck["rng"])
        resumed = last.name
    elif init_state is not None:
        load_state_strict(model, init_state, "init_state")

    net: nn.Module = model
    sampler = None
    if _distributed():
        sampler = DistributedSampler(train_ds, shuffle=True, seed=seed)
        net = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    gen = torch.Generator().manual_seed(seed)
    log = CSVLog(out_dir / "log.csv", LOG_FIELDS, resume_step=start if resumed else None) if rank0 else None
    stopped_early = False
    bar = tqdm(range(start, epochs), desc=desc, disable=not (progress and rank0), leave=False)
    for epoch in bar:
        t0 = time.perf_counter()
        if sampler is not None:
            sampler.set_epoch(epoch)
        else:
            gen.manual_seed(seed * 1000 + epoch)  # data order depends on (seed, epoch) only: resume-exact
        loader = DataLoader(train_ds, batch_size=ccfg.batch, shuffle=sampler is None, sampler=sampler,
                            generator=gen if sampler is None else None, drop_last=len(train_ds) > ccfg.batch,
                            num_workers=loader_workers(train_ds))
        net.train()
        tot, n = 0.0, 0
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            with autocast(device.type, bf16=True):   # bf16 on CUDA only (paper scale); CPU stays float32
                logits = net(x)
            loss = nn.functional.cross_entropy(logits.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tot += float(loss.detach()) * len(y)
            n += len(y)
        row = {"step": epoch + 1, "train_loss": tot / max(1, n), "lr": ccfg.lr}
        if val_ds is not None:
            vm = evaluate(net, val_ds, device, ccfg.batch)
            row.update(val_loss=vm["loss"], val_accuracy=vm["accuracy"], val_auc=vm["auc"])
            improved = vm["loss"] < best["val_loss"] - 1e-6
        else:
            improved = True  # no validation split: keep the last epoch
        row["wall_s"] = round(time.perf_counter() - t0, 3)
        history.append(row)
        if improved:
            best = {"epoch": epoch + 1, "val_loss": row.get("val_loss", float("nan")),
                    "state": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}}
            bad_epochs = 0
        else:
            bad_epochs += 1
        if log is not None:
            log.write(**row)
        bar.set_postfix(train=f"{row['train_loss']:.3f}", val=f"{row.get('val_loss', float('nan')):.3f}")
        if rank0:
            save_checkpoint(out_dir / f"ckpt_{epoch + 1:06d}.pt", kind=KIND, step=epoch + 1, config=_plain_cfg(ccfg),
                            models={"model": model}, optimizers={"opt": opt},
                            extra={"history": history, "bad_epochs": bad_epochs, "best_epoch": best["epoch"],
                                   "best_val_loss": best["val_loss"], "best_state": best["state"]})
            for old in out_dir.glob("ckpt_*.pt"):
                if old.name != f"ckpt_{epoch + 1:06d}.pt":
                    old.unlink(missing_ok=True)
        if _distributed():
            dist.barrier()
        if val_ds is not None and bad_epochs >= ccfg.patience:
            stopped_early = True
            break
    if log is not None:
        log.close()
    if best["state"] is not None:
        load_state_strict(model, best["state"], "best validation state")
    summary = {"best_epoch": best["epoch"], "best_val_loss": best["val_loss"], "epochs_run": len(history),
               "stopped_early": stopped_early, "history": history}
    if rank0:
        save_checkpoint(final, kind=KIND, step=len(history), config=_plain_cfg(ccfg), models={"model": model},
                        extra={"summary": summary}, with_rng=False)
        for old in out_dir.glob("ckpt_*.pt"):
            old.unlink(missing_ok=True)
    if _distributed():
        dist.barrier()
    return {**summary, "resumed": resumed}


def _plain_cfg(ccfg: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(ccfg):
        d = dataclasses.asdict(ccfg)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}
    return dict(getattr(ccfg, "__dict__", {}))
