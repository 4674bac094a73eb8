"""Numeric precision of forward passes: bf16 autocast on CUDA when asked, float32 elsewhere."""
from __future__ import annotations

import contextlib

import torch


def autocast(device: str, bf16: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA when enabled; a no-op on CPU (CPU runs stay float32 and bit-reproducible)."""
    if bf16 and device.startswith("cuda"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
