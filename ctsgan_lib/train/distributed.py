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


def init_from_env(device: str) -> DistContext:
    """Join the process group when launched by ``torchrun`` (``WORLD_SIZE`` > 1); otherwise a single-process context.

    Backend: NCCL for CUDA devices, gloo otherwise.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    owns = False
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
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


__all__ = ["DistContext", "init_from_env", "shutdown", "broadcast_module", "all_reduce_grads", "average_buffers",
           "all_reduce_max", "gather_objects", "params_fingerprint", "check_in_sync", "barrier"]
