"""Analytic FLOP counting from module shapes, and the peak FLOP rate of the device it is compared with.

The counter walks the modules a forward pass actually calls (forward hooks) and computes multiply-accumulates (MACs)
from each call's input/output shapes, so it counts what really runs (a generator called once per slice chunk is
counted once per call). Only the layers that dominate a GAN's cost are counted: ``Conv1d/2d/3d``,
``ConvTranspose1d/2d/3d``, ``Linear``, ``LSTM``/``GRU``/``RNN`` (and their cells). Normalisation layers, activations and
elementwise ops are left out; they are memory-bound and a few percent of the FLOPs. One MAC = 2 FLOPs.
"""
from __future__ import annotations

import math
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch
from torch import nn


def conv_macs(module: nn.modules.conv._ConvNd, inp: torch.Tensor, out: torch.Tensor) -> int:
    """MACs of one convolution or transposed convolution call.

    Every output element of a convolution is a dot product of length ``C_in / groups × prod(kernel)``. A transposed
    convolution scatters every *input* element into ``C_out / groups × prod(kernel)`` outputs, so its count uses the
    input's spatial size instead (that is what the hardware computes; the output's border crop is free).

    Parameters
    ----------
    module : nn.Conv*d or nn.ConvTranspose*d
    inp, out : torch.Tensor
        The call's input and output, shaped ``(B, C, *spatial)``.

    Returns
    -------
    int
    """
    k = math.prod(module.kernel_size)
    g = module.groups
    if module.transposed:
        spatial_in = math.prod(inp.shape[2:])
        return int(inp.shape[0] * spatial_in * module.in_channels * (module.out_channels // g) * k)
    spatial_out = math.prod(out.shape[2:])
    return int(out.shape[0] * spatial_out * module.out_channels * (module.in_channels // g) * k)


def linear_macs(module: nn.Linear, inp: torch.Tensor, out: torch.Tensor) -> int:
    """MACs of one ``Linear`` call: ``rows × in_features × out_features``."""
    rows = out.numel() // module.out_features
    return int(rows * module.in_features * module.out_features)


_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1, "LSTMCell": 4, "GRUCell": 3, "RNNCell": 1}


def rnn_macs(module: nn.Module, inp: torch.Tensor) -> int:
    """MACs of one recurrent call (``LSTM``/``GRU``/``RNN`` or a cell).

    Per time step, layer and direction a gated RNN computes ``gates × hidden × (input + hidden)`` MACs (the input and
    recurrent matrix products); layers above the first take ``directions × hidden`` (or ``proj_size``) as input.
    """
    gates = _GATES[type(module).__name__]
    h = module.hidden_size
    if isinstance(module, nn.RNNCellBase):
        batch = inp.shape[0] if inp.dim() == 2 else 1
        return int(batch * gates * h * (module.input_size + h))
    # full sequence module
    if inp.dim() == 2:                       # unbatched (L, H_in)
        seq, batch = inp.shape[0], 1
    elif module.batch_first:
        batch, seq = inp.shape[0], inp.shape[1]
    else:
        seq, batch = inp.shape[0], inp.shape[1]
    dirs = 2 if module.bidirectional else 1
    proj = getattr(module, "proj_size", 0) or 0
    h_out = proj or h
    total = 0
    for layer in range(module.num_layers):
        d_in = module.input_size if layer == 0 else dirs * h_out
        per_step = gates * h * (d_in + h_out) + (h * proj if proj else 0)
        total += dirs * seq * batch * per_step
    return int(total)


@dataclass
class FlopCount:
    """MACs per module kind, filled by :func:`count_macs`."""

    by_kind: dict[str, int] = field(default_factory=dict)
    calls: int = 0

    @property
    def macs(self) -> int:
        return sum(self.by_kind.values())

    @property
    def flops(self) -> int:
        """FLOPs = 2 × MACs (one multiply and one add)."""
        return 2 * self.macs

    def add(self, kind: str, macs: int) -> None:
        self.by_kind[kind] = self.by_kind.get(kind, 0) + macs
        self.calls += 1


def _module_macs(module: nn.Module, inputs: tuple, output) -> int | None:
    inp = inputs[0] if inputs else None
    if isinstance(inp, nn.utils.rnn.PackedSequence):   # pragma: no cover - not used by our models
        return None
    if isinstance(module, nn.modules.conv._ConvNd):
        out = output[0] if isinstance(output, tuple) else output
        return conv_macs(module, inp, out)
    if isinstance(module, nn.Linear):
        out = output[0] if isinstance(output, tuple) else output
        return linear_macs(module, inp, out)
    if type(module).__name__ in _GATES:
        return rnn_macs(module, inp)
    return None


@contextmanager
def count_macs(model: nn.Module) -> Iterator[FlopCount]:
    """Count MACs of every forward call made on ``model``'s sub-modules inside the ``with`` block.

    Example
    -------
    >>> net = nn.Linear(8, 4)
    >>> with count_macs(net) as c:
    ...     _ = net(torch.zeros(3, 8))
    >>> c.macs
    96
    """
    counter = FlopCount()

    def hook(module, inputs, output):
        macs = _module_macs(module, inputs, output)
        if macs is not None:
            counter.add(type(module).__name__, macs)

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)) or type(m).__name__ in _GATES]
    try:
        yield counter
    finally:
        for h in handles:
            h.remove()


# --------------------------------------------------------------------------------------------------------------
# Device peak FLOP rates

#: Dense peak TFLOP/s by GPU name fragment: (fp32 non-tensor, bf16 tensor core). Vendor data sheets (SXM parts,
#: dense, no sparsity); PCIe parts are slower, so a name containing "PCIe" uses its own row.
GPU_PEAK_TFLOPS: tuple[tuple[str, float, float], ...] = (
    ("H200", 67.0, 989.0),
    ("H100 PCIe", 51.0, 756.0),
    ("H100", 67.0, 989.0),
    ("A100", 19.5, 312.0),
)


def cpu_peak_flops(cores: int | None = None, info: dict | None = None) -> dict:
    """Estimate a CPU's FP32 peak: ``cores × clock × FLOPs/cycle/core``.

    Assumption (stated in every record): two FMA units per core, each working on a full vector register, so
    FLOPs/cycle/core = 2 units × 2 (FMA) × lanes, with 16 FP32 lanes for AVX-512, 8 for AVX2, 4 for SSE. The clock is
    the ``cpu MHz`` that ``/proc/cpuinfo`` reports (often the base clock; turbo makes the real peak higher, virtual
    machines may report a nominal value).

    Parameters
    ----------
    cores : int, optional
        Cores the workload may use (default: ``torch.get_num_threads()``).
    info : dict, optional
        ``{"mhz": float, "flags": set}`` to use instead of reading ``/proc/cpuinfo`` (for tests).

    Returns
    -------
    dict
        ``peak_flops`` (FLOP/s, or None when the clock is unknown) and ``peak_assumption`` (text).
    """
    if info is None:
        info = {"mhz": None, "flags": set()}
        try:
            text = Path("/proc/cpuinfo").read_text()
            m = re.search(r"^cpu MHz\s*:\s*([\d.]+)", text, re.M)
            f = re.search(r"^flags\s*:\s*(.*)$", text, re.M)
            info = {"mhz": float(m.group(1)) if m else None, "flags": set(f.group(1).split()) if f else set()}
        except OSError:
            pass
    flags = info["flags"]
    lanes, isa = (16, "AVX-512") if "avx512f" in flags else (8, "AVX2") if "avx2" in flags else (4, "SSE")
    fma = "fma" in flags or lanes == 16
    per_cycle = 2 * (2 if fma else 1) * lanes
    cores = cores or torch.get_num_threads()
    mhz = info["mhz"]
    peak = cores * mhz * 1e6 * per_cycle if mhz else None
    return {
        "peak_flops": peak,
        "peak_assumption": (f"CPU FP32 peak = {cores} cores x {mhz or '?'} MHz x {per_cycle} FLOP/cycle "
                            f"({isa}, 2 {'FMA' if fma else 'mul+add'} units/core assumed)"),
    }


def gpu_peak_flops(name: str, bf16: bool) -> dict:
    """Dense peak FLOP/s of a known GPU (H100/H200/A100), else ``None``.

    Parameters
    ----------
    name : str
        ``torch.cuda.get_device_name()``.
    bf16 : bool
        True when the workload runs under bf16 autocast (tensor cores), else FP32.
    """
    for key, fp32, tc in GPU_PEAK_TFLOPS:
        if key.lower() in name.lower():
            t = tc if bf16 else fp32
            return {"peak_flops": t * 1e12,
                    "peak_assumption": f"{key} dense {'BF16 tensor-core' if bf16 else 'FP32'} peak {t} TFLOP/s "
                                       "(vendor data sheet)"}
    return {"peak_flops": None, "peak_assumption": f"unknown peak for GPU {name!r}"}


def device_peak_flops(device: str, bf16: bool = False) -> dict:
    """Peak FLOP/s of ``device`` (``"cpu"`` or ``"cuda"``) with the assumption behind it."""
    if device.startswith("cuda") and torch.cuda.is_available():
        return gpu_peak_flops(torch.cuda.get_device_name(0), bf16)
    return cpu_peak_flops()
