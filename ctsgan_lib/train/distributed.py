"""Data-parallel helpers for ``torchrun`` (NCCL on GPUs, gloo on CPUs).

We follow stylegan2-ada/stylegan3: every rank holds full replicas, computes gradients on its own share of the batch,
and gradients are averaged with ``all_reduce`` before each optimizer step. This is what DDP does, but done explicitly
so that it also works with the gradient penalty's double backward and with several forward passes per update (DDP's
reducer expects exactly one forward per backward).

Launch::

    torchrun --nproc_per_node 2 -m ctsgan_lib.cli train ctsgan --profile demo
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterable

import torch
import torch.distributed as dist

from ..errors import CTSGANError


@dataclass
class DistContext:
    """Where this process stands: ``rank``, ``world_size``, ``local_rank`` and whether we set up the group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


BACKEND_ENV = "CTSGAN_DIST_BACKEND"


def cuda_device_for(local_rank: int) -> str:
    """``cuda:<local_rank>``, wrapped onto the visible GPUs when ranks outnumber them.

    Several ranks may share a GPU for generation shards (no collectives) or for gloo training; NCCL refuses it, which
    :func:`choose_backend` reports before the group is created.
    """
    n = torch.cuda.device_count()
    return f"cuda:{local_rank % n}" if n else f"cuda:{local_rank}"


def choose_backend(device: str, local_world: int, n_gpus: int | None = None) -> str:
    """The process-group backend: ``$CTSGAN_DIST_BACKEND`` if set, else NCCL for CUDA devices and gloo otherwise.

    Raises
    ------
    CTSGANError
        An unknown backend name, or NCCL with more ranks on this node than GPUs (NCCL cannot put two ranks on one
        GPU; gloo can, slowly: use it for multi-process checks on a single GPU).
    """
    env = os.environ.get(BACKEND_ENV, "").strip().lower()
    if env and env not in ("nccl", "gloo"):
        raise CTSGANError(f"{BACKEND_ENV}={env!r}: choose nccl or gloo")
    backend = env or ("nccl" if device.startswith("cuda") else "gloo")
    n_gpus = torch.cuda.device_count() if n_gpus is None else n_gpus
    if backend == "nccl" and local_world > n_gpus:
        raise CTSGANError(f"{local_world} processes per node but {n_gpus} GPU(s) visible: NCCL needs one GPU per "
                          f"process. Launch with --nproc_per_node {max(n_gpus, 1)}, or set {BACKEND_ENV}=gloo to "
                          f"share GPUs between processes (slower; for checks).")
    return backend


def init_from_env(device: str) -> DistContext:
    """Join the process group when launched by ``torchrun`` (``WORLD_SIZE`` > 1); otherwise a single-process context.

    Backend: :func:`choose_backend` (NCCL for CUDA devices, gloo otherwise, ``$CTSGAN_DIST_BACKEND`` to override).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    owns = False
    if not dist.is_initialized():
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
        backend = choose_backend(device, local_world)
        if device.startswith("cuda"):
            torch.cuda.set_device(cuda_device_for(local_rank))
        dist.init_process_group(backend=backend)
        owns = True
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, owns_group=owns)


def shutdown(ctx: DistContext) -> None:
    """Leave the process group if :func:`init_from_env` created it."""
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def broadcast_module(module: torch.nn.Module, ctx: DistContext, src: int = 0) -> None:
    """Make every rank's parameters and buffers equal to rank ``src``'s (at start-up and after resume)."""
    if not ctx.enabled:
        return
    for t in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(t.data, src=src)


def all_reduce_grads(params: Iterable[torch.nn.Parameter], ctx: DistContext) -> None:
    """Average gradients over ranks (one flat all_reduce; missing grads count as zero)."""
    if not ctx.enabled:
        return
    params = [p for p in params if p.requires_grad]
    if not params:
        return
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in params])
    dist.all_reduce(flat)
    flat /= ctx.world_size
    offset = 0
    for p in params:
        n = p.numel()
        g = flat[offset:offset + n].view_as(p)
        if p.grad is None:
            p.grad = g.clone()
        else:
            p.grad.copy_(g)
        offset += n


def average_buffers(module: torch.nn.Module, ctx: DistContext) -> None:
    """Average floating buffers (BatchNorm running statistics) so replicas stay identical."""
    if not ctx.enabled:
        return
    for b in module.buffers():
        if b.is_floating_point():
            dist.all_reduce(b.data)
            b.data /= ctx.world_size


def all_reduce_max(value: float, ctx: DistContext, device: str = "cpu") -> float:
    """Max of a scalar over ranks (used to stop every rank when one sees a NaN)."""
    if not ctx.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def gather_objects(obj: Any, ctx: DistContext) -> list[Any]:
    """Every rank's ``obj`` as a list indexed by rank (used for per-rank RNG states in checkpoints)."""
    if not ctx.enabled:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def params_fingerprint(modules: Iterable[torch.nn.Module]) -> float:
    """A float summary of all parameters; equal across ranks iff replicas agree (to rounding)."""
    total = 0.0
    for m in modules:
        for p in m.parameters():
            total += float(p.detach().double().abs().sum())
    return total


def check_in_sync(modules: Iterable[torch.nn.Module], ctx: DistContext) -> None:
    """Raise if replicas drifted apart (a broken gradient average would show up here)."""
    if not ctx.enabled:
        return
    fps = gather_objects(params_fingerprint(modules), ctx)
    if max(fps) - min(fps) > 1e-6 * max(1.0, abs(fps[0])):
        raise RuntimeError(f"data-parallel replicas are out of sync (parameter fingerprints {fps})")


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


__all__ = ["DistContext", "BACKEND_ENV", "cuda_device_for", "choose_backend", "init_from_env", "shutdown", "broadcast_module", "all_reduce_grads", "average_buffers",
           "all_reduce_max", "gather_objects", "params_fingerprint", "check_in_sync", "barrier"]
